"""Benchmarks that print the numbers a lab argues from: ``python -m infer_lab.bench CMD``.

Each command is a sibling module with two functions:

    add_arguments(parser)   its own options (``--json PATH`` and ``--quick`` are common)
    run(args) -> dict       measures, prints a table, returns its figures, including a
                            top-level ``ratios`` object {name: number} and ``timings``
                            {row: [seconds of each repeat]} for every timed row

and one line in :data:`COMMANDS`. A benchmark measures; it never asserts speed. It does
say when its timings are suspect: :func:`main` reads the load average before and after
the run and checks each row's repeats (:mod:`infer_lab.bench.load`), adding ``load`` and
``warnings`` to the figures and printing the warnings under the table.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from . import load

# Command name -> module. Later benchmarks (quant, speculative, serving, compress) add a
# sibling module and one line here.
COMMANDS: dict[str, str] = {
    "decode": "infer_lab.bench.decode",
    "quant": "infer_lab.bench.quant",
    "speculative": "infer_lab.bench.speculative",
    "compress": "infer_lab.bench.compress",
    "serving": "infer_lab.bench.serving",
    "labs-memory": "infer_lab.bench.labs_memory",
    "telemetry": "infer_lab.bench.telemetry",
    "kernels": "infer_lab.bench.kernels",
    "runtimes": "infer_lab.bench.runtimes",
    "app": "infer_lab.bench.app",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m infer_lab.bench",
                                     description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=(mod.__doc__ or "").split("\n", 1)[0])
        p.add_argument("--json", type=Path, default=None, metavar="PATH",
                       help="also write the figures to PATH as JSON")
        p.add_argument("--quick", action="store_true",
                       help="tiny sizes, for tests: checks the plumbing, not the speed")
        mod.add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, run the command, write ``--json`` if asked; return the figures.

    The load average is read here, around the command, so that every command gets the
    busy-machine check without code of its own; "before" is read first thing, while
    this process has done nothing but import.
    """
    before = load.load_average()
    args = build_parser().parse_args(argv)
    mod = importlib.import_module(COMMANDS[args.command])
    t0 = time.perf_counter()
    figures = mod.run(args)
    record = load.LoadRecord(before, load.load_average(), load.usable_cores(),
                             torch.get_num_threads(), time.perf_counter() - t0)
    result = {"command": args.command, "quick": args.quick, "machine": machine_info(),
              **figures}
    if "ratios" not in result:
        raise RuntimeError(f"bench {args.command!r} returned no 'ratios'")
    result.setdefault("timings", {})  # labs-memory times no repeated rows
    result["load"] = record.as_dict()
    result["spread"] = {"threshold": load.SPREAD_THRESHOLD,
                        "rows": load.spreads(result["timings"])}
    result["warnings"] = load.warnings(record, result["timings"])
    print(load.summary_line(record))
    for line in result["warnings"]:
        print(f"WARNING: {line}")
    if result["warnings"]:
        print("WARNING: these timings are suspect; rerun on a quiet machine")
    if args.json is not None:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return result


# -- helpers shared by the commands ------------------------------------------------------
def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: a figure without this is not reproducible."""
    from ..hardware import default_device, device_name

    dev = default_device()
    return {"device": dev.type, "device_name": device_name(dev),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def interleaved_times(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1,
                      device: torch.device | str | None = None, progress=None
                      ) -> dict[str, list[float]]:
    """Seconds of each call, alternating the contenders: A B A B ... after warm-up.

    Alternating spreads slow phases of a busy machine (another process, thermal
    throttling) over all contenders instead of letting them land on one.
    """
    from ..metrics import Timer

    for fn in fns.values():
        for _ in range(warmup):
            fn()
            _tick(progress)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            with Timer(device) as t:
                fn()
            times[name].append(t.elapsed)
            _tick(progress)
    return times


def _tick(progress) -> None:
    if progress is not None:
        progress.update(1)


def format_table(rows: list[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain-text table with right-aligned numbers."""
    def cell(x: Any) -> str:
        if isinstance(x, float):
            return "nan" if math.isnan(x) else f"{x:,.2f}" if abs(x) < 1000 else f"{x:,.0f}"
        return str(x)

    cells = [[cell(x) for x in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                               for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, cells)])


def write_json(path: str | Path, result: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=_jsonable) + "\n")


def _jsonable(x: Any) -> Any:
    if isinstance(x, (torch.dtype, torch.device, Path)):
        return str(x)
    raise TypeError(f"not JSON serializable: {type(x).__name__}")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
