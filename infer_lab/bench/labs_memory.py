"""Peak memory and run time of each lab notebook, executed top to bottom in a fresh kernel.

Binder gives a session about 2 GB, so every lab must stay under that at ``laptop`` scale.
Each notebook runs in its own kernel (nbclient, the library under nbval and
``jupyter nbconvert --execute``), with ``INFER_LAB_SCALE`` set and exercise progress in a
throwaway folder. Memory is the kernel process's peak resident set size: Linux keeps it
as ``VmHWM`` in ``/proc/<pid>/status``, read after every cell, so the figure is exact and
the cell where it was reached is known. A sampler thread also adds up the RSS of the
kernel and any processes it starts (every 0.1 s) for the "tree" column; where there is no
``/proc`` that sample is the only figure. The Jupyter server and the browser are not
counted: on Binder the server comes on top (JupyterLab's took about 90 MiB here).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import format_table

MIB = 1024 * 1024
DEFAULT_LIMIT_MIB = 2048  # mybinder.org's memory per session


@dataclass
class LabMemory:
    """What one notebook cost: peak kernel memory, where it peaked, how long it ran."""

    notebook: str
    scale: str
    wall_s: float = 0.0
    peak_mib: float = 0.0  # kernel VmHWM (or the sampled peak where there is no /proc)
    tree_peak_mib: float = 0.0  # sampled RSS of the kernel and its children
    peak_cell: int | None = None  # index of the code cell during which the peak was reached
    cells: int = 0  # code cells executed
    error: str | None = None  # "cell 7: ValueError: ..." when a cell raised
    cell_peaks_mib: list[float] = field(default_factory=list)  # VmHWM after each code cell

    @property
    def ok(self) -> bool:
        return self.error is None


def read_vm_hwm(pid: int) -> float | None:
    """Peak resident set size of ``pid`` in MiB from ``/proc``, or None off Linux."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


class TreeSampler(threading.Thread):
    """Polls the summed RSS of a process and its descendants; keeps the maximum."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_mib = 0.0
        self._done = threading.Event()

    def sample(self) -> float:
        import psutil

        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0.0
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total / MIB

    def run(self) -> None:
        while not self._done.is_set():
            self.peak_mib = max(self.peak_mib, self.sample())
            self._done.wait(self.interval)

    def stop(self) -> float:
        self._done.set()
        self.join()
        return self.peak_mib


def measure_notebook(path: str | Path, scale: str = "laptop", cell_timeout: int = 1800,
                     home: str | Path | None = None) -> LabMemory:
    """Run ``path`` in a new kernel (this interpreter's) and return its :class:`LabMemory`.

    A cell that raises stops the run; the result then carries the error and the memory up
    to that cell. The notebook file is not modified.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    result = LabMemory(notebook=str(path), scale=scale)
    env = dict(os.environ, INFER_LAB_SCALE=scale)
    # Progress of the graded exercises goes to a throwaway store, not the learner's.
    env["INFER_LAB_HOME"] = str(home or tempfile.mkdtemp(prefix="infer-lab-memory-"))
    # jupyter_client starts the "python3" kernel with this interpreter (sys.executable).
    client = NotebookClient(nb, timeout=cell_timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent.resolve())}})
    state: dict[str, Any] = {}

    def on_start(notebook=None, **_: Any) -> None:
        pid = client.km.provisioner.pid
        state["pid"], state["sampler"] = pid, TreeSampler(pid)
        state["sampler"].start()

    def on_cell(cell=None, cell_index=None, **_: Any) -> None:
        if cell is None or cell.get("cell_type") != "code":
            return
        hwm = read_vm_hwm(state["pid"])
        if hwm is None:  # no /proc: the sampler's peak so far
            hwm = state["sampler"].peak_mib
        if hwm > (max(result.cell_peaks_mib) if result.cell_peaks_mib else 0.0):
            result.peak_cell = cell_index
        result.cell_peaks_mib.append(hwm)
        result.cells += 1
        state["last_cell"] = cell_index

    client.on_notebook_start = on_start
    client.on_cell_executed = on_cell
    t0 = time.perf_counter()
    try:
        client.execute(env=env)
    except CellExecutionError as e:
        name = getattr(e, "ename", type(e).__name__)
        value = str(getattr(e, "evalue", "")).strip().splitlines()
        where = f"cell {state['last_cell']}: " if "last_cell" in state else ""
        result.error = f"{where}{name}: {value[0] if value else ''}"[:200]
    except CellTimeoutError as e:
        result.error = f"timeout: {str(e).splitlines()[0] if str(e) else ''}"[:200]
    finally:
        result.wall_s = time.perf_counter() - t0
        if "sampler" in state:
            result.tree_peak_mib = state["sampler"].stop()
    result.peak_mib = max([*result.cell_peaks_mib, 0.0]) or result.tree_peak_mib
    return result


def default_notebooks() -> list[Path]:
    """``labs/*.ipynb`` of the current directory, else of the source checkout."""
    for labs in (Path.cwd() / "labs", Path(__file__).resolve().parents[2] / "labs"):
        found = sorted(labs.glob("[0-9][0-9]_*.ipynb"))
        if found:
            return found
    return []


def report(results: list[LabMemory], limit_mib: float) -> str:
    """The table this command prints."""
    rows = []
    for r in results:
        status = "ok" if r.ok else f"error: {r.error}"
        over = "OVER" if r.peak_mib > limit_mib else ""
        rows.append([Path(r.notebook).name, r.peak_mib, r.tree_peak_mib, r.wall_s,
                     r.cells, "" if r.peak_cell is None else r.peak_cell, over, status])
    return format_table(rows, ["notebook", "peak MiB", "tree MiB", "wall s", "cells",
                               "peak cell", f"> {limit_mib:g}", "status"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help="notebooks to run (default: labs/*.ipynb)")
    parser.add_argument("--scale", default=None,
                        help="INFER_LAB_SCALE for the kernels (default laptop; ci with --quick)")
    parser.add_argument("--limit-mib", type=float, default=DEFAULT_LIMIT_MIB,
                        help=f"flag notebooks whose peak exceeds this ({DEFAULT_LIMIT_MIB}: "
                             "Binder's memory)")
    parser.add_argument("--cell-timeout", type=int, default=1800,
                        help="seconds one cell may run (1800)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ..scale import scale_name

    scale = scale_name(args.scale or ("ci" if args.quick else "laptop"))
    notebooks = list(args.notebooks) or default_notebooks()
    if not notebooks:
        raise SystemExit("no notebooks given and no labs/ folder found")
    results = []
    for nb in notebooks:
        print(f"running {nb} at scale={scale} ...", file=sys.stderr, flush=True)
        r = measure_notebook(nb, scale=scale, cell_timeout=args.cell_timeout)
        print(f"  {r.peak_mib:.0f} MiB peak, {r.wall_s:.0f} s"
              + ("" if r.ok else f", {r.error}"), file=sys.stderr, flush=True)
        results.append(r)
    print(f"kernel peak RSS per notebook, INFER_LAB_SCALE={scale}, {sys.executable}")
    print(report(results, args.limit_mib))
    worst = max(results, key=lambda r: r.peak_mib)
    return {"scale": scale, "limit_mib": args.limit_mib,
            "results": [asdict(r) for r in results],
            "failed": [r.notebook for r in results if not r.ok],
            "over_limit": [r.notebook for r in results if r.peak_mib > args.limit_mib],
            "ratios": {"max_peak_mib": worst.peak_mib,
                       "max_peak_of_limit": worst.peak_mib / args.limit_mib,
                       "total_wall_s": sum(r.wall_s for r in results)}}
