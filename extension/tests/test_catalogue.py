"""The catalogue's parsers and the progress reader, without a server."""

from __future__ import annotations

import json
from pathlib import Path

from infer_lab_ext import labs, progress

from infer_lab.exercises import EXERCISES, LAB_MODULES


def test_the_ast_registry_equals_the_imported_one():
    found = labs.registry()
    assert found == {m.LAB: [e.name for e in m.EXERCISES] for m in LAB_MODULES}
    assert sum(map(len, found.values())) == len(EXERCISES)


def test_parse_intro():
    md = ("# Lab 07 · Kernels: Triton from scratch\n\n**What you will learn**\n\n"
          "1. One thing.\n2. Another *thing*.\n\nAfter the list.\n3. Not an objective.\n\n"
          "**Time:** about 35 minutes. **Hardware:** a GPU.")
    assert labs.parse_intro(md) == {"number": "07", "title": "Kernels: Triton from scratch",
                                    "objectives": ["One thing.", "Another *thing*."],
                                    "minutes": 35}
    assert labs.parse_intro("just text") == {"number": None, "title": None,
                                             "objectives": [], "minutes": None}


def notebook(path: Path, md: str, code: str = "") -> None:
    cells = [{"cell_type": "markdown", "source": md.splitlines(True), "metadata": {}}]
    if code:
        cells.append({"cell_type": "code", "source": code, "metadata": {}, "outputs": [],
                      "execution_count": None})
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4,
                                "nbformat_minor": 5}))


def test_unknown_labs_count_their_check_calls_and_bad_notebooks_still_list(tmp_path):
    d = tmp_path / "labs"
    d.mkdir()
    notebook(d / "42_extra.ipynb", "# Lab 42 · Extra\n",
             "check_foo(foo)\ncheck_bar(bar)\ncheck_foo(foo)\nfrom x import check_baz")
    (d / "43_broken.ipynb").write_text("{oops")
    (d / "notes.ipynb").write_text("{}")  # not a lab: no NN_ prefix
    assert labs.find_labs_dir(tmp_path) == d
    found = labs.catalogue(d, tmp_path)
    assert [lab["id"] for lab in found] == ["42_extra", "43_broken"]
    assert found[0]["exercises"] == ["foo", "bar"] and found[0]["title"] == "Extra"
    assert found[1]["title"] == "Broken" and found[1]["exercises"] == []
    assert found[0]["path"] == "labs/42_extra.ipynb"
    # A labs folder outside the server root is listed, but cannot be opened.
    assert labs.catalogue(d, tmp_path / "elsewhere")[0]["path"] is None


def test_progress_math_and_continue():
    rec = {"a": {"status": "passed", "updated": "2025-01-02T00:00:00+00:00"},
           "b": {"status": "failed", "updated": "2025-01-03T00:00:00+00:00"},
           "stray": {"status": "passed"}}  # recorded but no longer in the registry
    p = progress.lab_progress(["a", "b", "c"], rec)
    assert (p["passed"], p["total"], p["complete"]) == (1, 3, False)
    assert p["updated"] == "2025-01-03T00:00:00+00:00" and p["status"]["c"] == "not attempted"
    assert progress.lab_progress([], {})["complete"] is False  # no exercises: never "done"

    def lab(id_, complete, updated):
        return {"id": id_, "progress": {"complete": complete, "updated": updated}}

    assert progress.continue_lab([lab("0", True, "2"), lab("1", False, "1"),
                                  lab("2", False, None)]) == "1"
    assert progress.continue_lab([lab("0", True, "2"), lab("1", False, None)]) == "1"
    assert progress.continue_lab([lab("0", True, "2")]) is None


def test_read_store_tolerates_anything(tmp_path):
    f = tmp_path / "progress.json"
    assert progress.read_store(f) == {}
    for bad in ("", "[]", '{"labs": 3}', '{"labs": {"x": 1}}', "\xff"):
        f.write_text(bad)
        assert progress.read_store(f) == {}
    f.write_text('{"version": 1, "labs": {"l": {"exercises": {"e": {"status": "passed"}, '
                 '"junk": 5}}}}')
    assert progress.read_store(f) == {"l": {"e": {"status": "passed"}}}


def test_a_server_rooted_at_labs_lists_them_at_the_top(tmp_path):
    """`make lab` runs `jupyter lab labs/`: the labs are then the root's own notebooks."""
    notebook(tmp_path / "00_welcome.ipynb", "# Lab 00 · Welcome\n")
    assert labs.find_labs_dir(tmp_path) == tmp_path
    assert labs.catalogue(tmp_path, tmp_path)[0]["path"] == "00_welcome.ipynb"
    assert labs.find_labs_dir(tmp_path / "nowhere") is None
