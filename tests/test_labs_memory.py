"""bench labs-memory: runs a tiny generated notebook and reports its kernel's peak memory."""

from __future__ import annotations

import json

import nbformat
import pytest

from infer_lab.bench import build_parser, main
from infer_lab.bench.labs_memory import LabMemory, measure_notebook, read_vm_hwm, report


def write_notebook(path, *sources):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# a tiny lab"),
                *(nbformat.v4.new_code_cell(s) for s in sources)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, path)
    return path


def test_parser_defaults_and_options():
    args = build_parser().parse_args(["labs-memory", "a.ipynb", "--scale", "ci",
                                      "--limit-mib", "100"])
    assert [str(p) for p in args.notebooks] == ["a.ipynb"]
    assert args.scale == "ci" and args.limit_mib == 100 and args.cell_timeout == 1800
    args = build_parser().parse_args(["labs-memory"])
    assert args.notebooks == [] and args.scale is None and args.limit_mib == 2048


def test_report_flags_errors_and_notebooks_over_the_limit():
    ok = LabMemory("labs/00_a.ipynb", "laptop", wall_s=12.5, peak_mib=300.0, cells=4,
                   peak_cell=3)
    big = LabMemory("labs/01_b.ipynb", "laptop", wall_s=2.0, peak_mib=2500.0, cells=2,
                    peak_cell=1, error="cell 2: MemoryError: ")
    lines = report([ok, big], limit_mib=2048).splitlines()
    assert lines[0].split()[:3] == ["notebook", "peak", "MiB"]
    row_ok, row_big = lines[2], lines[3]
    assert row_ok.startswith("00_a.ipynb") and "300.00" in row_ok and "OVER" not in row_ok
    assert row_ok.rstrip().endswith("ok")
    assert "OVER" in row_big and "error: cell 2: MemoryError" in row_big and not big.ok


@pytest.mark.skipif(read_vm_hwm(1) is None and read_vm_hwm(0) is None,
                    reason="needs Linux /proc/<pid>/status")
def test_measures_a_notebook_that_allocates(tmp_path, capsys):
    nb = write_notebook(tmp_path / "00_tiny.ipynb",
                        "import os\nassert os.environ['INFER_LAB_SCALE'] == 'ci'\n"
                        "assert 'infer-lab-memory-' in os.environ['INFER_LAB_HOME']",
                        "block = b'x' * (96 << 20)  # 96 MiB, written, so resident",
                        "del block")
    out = tmp_path / "mem.json"
    result = main(["labs-memory", "--quick", str(nb), "--json", str(out)])
    (r,) = result["results"]
    assert r["error"] is None and r["cells"] == 3 and result["scale"] == "ci"
    # the peak is reached in the allocating cell (notebook index 2) and includes its 96 MiB
    assert r["peak_cell"] == 2
    assert r["cell_peaks_mib"][1] - r["cell_peaks_mib"][0] >= 90
    assert r["peak_mib"] == max(r["cell_peaks_mib"]) and r["wall_s"] > 0
    assert r["tree_peak_mib"] > 0
    assert json.loads(out.read_text())["ratios"]["max_peak_mib"] == pytest.approx(r["peak_mib"])
    assert "00_tiny.ipynb" in capsys.readouterr().out
    assert nbformat.read(nb, as_version=4).cells[1].outputs == []  # file left as it was


def test_a_failing_cell_is_reported_not_raised(tmp_path):
    nb = write_notebook(tmp_path / "bad.ipynb", "x = 1", "raise ValueError('boom')",
                        "never = 1")
    r = measure_notebook(nb, scale="ci")
    assert not r.ok and r.error.startswith("cell 2: ValueError: boom"), r.error
    assert r.cells == 2 and r.peak_mib > 0
