"""A lab as an nbgrader assignment: the checkers become autograded test cells.

nbgrader (the grading tool of courses on JupyterHub) grades a notebook by running it and
awarding points for each "autograded test" cell that raises nothing. Our checkers already
decide pass or fail, so the bridge is small::

    python -m infer_lab.grading labs/02_quantization.ipynb --course course --assignment lab02
    cd course && nbgrader generate_assignment lab02     # release/: the learners' copy
    # learners submit into submitted/<student>/lab02/ (nbgrader collect, or by hand)
    nbgrader autograde lab02                           # autograded/ + gradebook.db

:func:`to_nbgrader` turns each exercise cell (a stub that raises ``NotImplementedError``
and calls ``check_<name>``) into an nbgrader *solution* cell holding the reference between
``### BEGIN SOLUTION`` / ``### END SOLUTION`` (``generate_assignment`` puts the stub back
for learners), followed by a locked test cell, one point, ``assert check(...)``. Every
other cell is locked read-only. nbgrader itself is not a dependency: ``pip install
nbgrader`` where a course grades with it.
"""

from __future__ import annotations

import argparse
import ast
import copy
import inspect
import json
import re
import textwrap
from pathlib import Path
from typing import Any

CHECK = re.compile(r"\bcheck_(\w+)\(\s*(\w+)")
DEF = re.compile(r"^def (\w+)\(", re.MULTILINE)


def _meta(grade_id: str, *, solution: bool, grade: bool, points: int = 0) -> dict[str, Any]:
    meta = {"grade": grade, "grade_id": grade_id, "locked": not solution,
            "schema_version": 3, "solution": solution, "task": False}
    if grade:
        meta["points"] = points
    return meta


def solution_source(stub: str, name: str, fn_name: str) -> str:
    """The stub cell with its function's body replaced by the reference's, fenced by
    nbgrader's solution markers; the cell's other lines (the check call) are kept."""
    from .exercises import exercise

    ref = textwrap.dedent(exercise(name).solution())
    ref = re.sub(r"^def \w+\(", f"def {fn_name}(", ref, count=1, flags=re.MULTILINE)
    first_body_line = ast.parse(ref).body[0].body[0].lineno  # 1-based; the docstring counts
    ref_lines = ref.splitlines()
    signature = "\n".join(ref_lines[:first_body_line - 1]) + "\n"
    ref_body = "\n".join(ref_lines[first_body_line - 1:])
    lines = stub.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"def {fn_name}("))
    end = next((i for i in range(start + 1, len(lines)) if lines[i] and not lines[i][0].isspace()),
               len(lines))
    fenced = (signature + "    ### BEGIN SOLUTION\n" + ref_body.rstrip("\n") + "\n"
              + "    ### END SOLUTION\n")
    return "\n".join([*lines[:start], fenced, *lines[end:]])


def to_nbgrader(nb: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """An nbgrader source notebook made from a lab notebook, and the exercises it grades."""
    out, graded = copy.deepcopy(nb), []
    cells = []
    for k, cell in enumerate(out["cells"]):
        src = "".join(cell["source"])
        hit = CHECK.search(src) if cell["cell_type"] == "code" else None
        defs = DEF.findall(src) if hit else []
        if hit and "NotImplementedError" in src and hit.group(2) in defs:
            name, fn_name = hit.group(1), hit.group(2)
            from .exercises import EXERCISES

            if name in EXERCISES and inspect.isfunction(getattr(EXERCISES[name], "reference",
                                                               None)):
                cell["source"] = solution_source(src, name, fn_name)
                cell.setdefault("metadata", {})["nbgrader"] = _meta(
                    f"{name}_solution", solution=True, grade=False)
                cells.append(cell)
                test_src = (f"# autograded: {name} (one point when the checker passes)\n"
                            f"from infer_lab.exercises import check\n"
                            f"assert check({name!r}, {fn_name}, verbose=False), "
                            f"\"{name} did not pass: run its cell for the verdict\"")
                cells.append({"cell_type": "code", "execution_count": None,
                              "id": f"nbgrader-{name}-{k}", "outputs": [], "source": test_src,
                              "metadata": {"nbgrader": _meta(f"{name}_test", solution=False,
                                                             grade=True, points=1)}})
                graded.append(name)
                continue
        cell.setdefault("metadata", {})["nbgrader"] = _meta(
            f"cell-{cell.get('id', k)}", solution=False, grade=False)
        cells.append(cell)
    out["cells"] = cells
    return out, graded


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m infer_lab.grading", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebook", type=Path, help="a lab notebook, e.g. labs/01_kv_cache.ipynb")
    ap.add_argument("--course", type=Path, default=Path("course"),
                    help="the nbgrader course folder (source/ is written inside it)")
    ap.add_argument("--assignment", default=None, help="assignment name (default: the lab's)")
    args = ap.parse_args(argv)
    nb = json.loads(args.notebook.read_text(encoding="utf-8"))
    src, graded = to_nbgrader(nb)
    name = args.assignment or args.notebook.stem
    dest = args.course / "source" / name / args.notebook.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(src, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {dest}: {len(graded)} autograded exercises ({', '.join(graded) or 'none'}), "
          f"one point each")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
