"""Labs as nbgrader assignments (infer_lab.grading): each exercise cell becomes a solution
cell plus a one-point autograded test cell; with nbgrader installed, the whole course loop
(generate, submit, autograde, export) runs offline and scores a right and a wrong answer."""

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from infer_lab import grading
from infer_lab.exercises import EXERCISES, lab_exercises
from infer_lab.exercises.kernel_checker import KernelExercise

LABS = Path(__file__).resolve().parents[1] / "labs"

STUB = ("def weight_bytes(n_params, bits):\n    # YOUR CODE HERE\n    raise NotImplementedError\n"
        "\ncheck_weight_bytes(weight_bytes)")


def _nb(*sources: str) -> dict:
    cells = [{"cell_type": "code", "id": f"c{k}", "metadata": {}, "execution_count": None,
              "outputs": [], "source": s} for k, s in enumerate(sources)]
    return {"cells": cells, "metadata": {"kernelspec": {"name": "python3", "language": "python",
                                                        "display_name": "Python 3"}},
            "nbformat": 4, "nbformat_minor": 5}


def test_an_exercise_cell_becomes_solution_and_test(capsys):
    src, graded = grading.to_nbgrader(_nb("from infer_lab.exercises import check_weight_bytes",
                                          STUB))
    assert graded == ["weight_bytes"]
    imports, solution, test = src["cells"]
    assert imports["metadata"]["nbgrader"]["locked"] and not imports["metadata"]["nbgrader"]["grade"]
    meta = solution["metadata"]["nbgrader"]
    assert meta["solution"] and not meta["locked"] and not meta["grade"]
    assert "### BEGIN SOLUTION" in solution["source"] and "### END SOLUTION" in solution["source"]
    assert test["metadata"]["nbgrader"]["grade"] and test["metadata"]["nbgrader"]["points"] == 1
    ns: dict = {}
    exec(imports["source"], ns)  # noqa: S102 - the instructor's version must pass its own test
    exec(solution["source"], ns)  # noqa: S102
    exec(test["source"], ns)  # noqa: S102
    assert "✅ weight_bytes" in capsys.readouterr().out


@pytest.mark.parametrize("nb_path", sorted(LABS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_every_function_exercise_of_a_lab_is_graded(nb_path):
    src, graded = grading.to_nbgrader(json.loads(nb_path.read_text()))
    functions = [n for n in lab_exercises(nb_path.stem)
                 if not isinstance(EXERCISES[n], KernelExercise)]  # kernels: not bridged
    assert sorted(graded) == sorted(functions), (graded, functions)
    for cell in src["cells"]:
        code = "".join(cell["source"])
        if cell["cell_type"] == "code" and not code.lstrip().startswith(("%", "!")):
            compile(code, nb_path.name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def _nbgrader() -> Path | None:
    found = os.environ.get("INFER_LAB_NBGRADER") or shutil.which("nbgrader")
    return Path(found) if found else None


@pytest.mark.skipif(_nbgrader() is None, reason="nbgrader is not installed (pip install nbgrader; "
                    "or INFER_LAB_NBGRADER=/path/to/bin/nbgrader)")
def test_nbgrader_autogrades_a_right_and_a_wrong_answer(tmp_path):
    nbgrader = _nbgrader()
    course = tmp_path / "course"
    nb = tmp_path / "demo.ipynb"
    nb.write_text(json.dumps(_nb("from infer_lab.exercises import check_weight_bytes", STUB)))
    assert grading.main([str(nb), "--course", str(course), "--assignment", "demo"]) == 0
    kernel = tmp_path / "kernels" / "python3"
    kernel.mkdir(parents=True)  # nbgrader's own environment may lack torch: run ours
    kernel.joinpath("kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "infer-lab", "language": "python"}))
    env = {**os.environ, "JUPYTER_PATH": str(tmp_path), "INFER_LAB_HOME": str(tmp_path / "home"),
           "PATH": f"{nbgrader.parent}{os.pathsep}{os.environ['PATH']}"}
    course.joinpath("nbgrader_config.py").write_text(
        'c = get_config()\nc.CourseDirectory.course_id = "demo"\nc.CourseDirectory.root = "."\n')
    run = lambda *a: subprocess.run([str(nbgrader), *a], cwd=course, env=env, check=True,
                                    capture_output=True, text=True, timeout=300)
    run("db", "assignment", "add", "demo")
    run("generate_assignment", "demo", "--force")
    released = json.loads((course / "release" / "demo" / "demo.ipynb").read_text())
    assert "return n_params" not in json.dumps(released)  # the solution is stripped
    for student, answer in (("alice", "return n_params * bits / 8"),
                            ("bob", "return n_params * bits")):
        sub = course / "submitted" / student / "demo"
        sub.mkdir(parents=True)
        mine = json.loads(json.dumps(released))
        for cell in mine["cells"]:
            s = "".join(cell["source"])
            if "def weight_bytes" in s:
                cell["source"] = s.replace("raise NotImplementedError()", answer)
        (sub / "demo.ipynb").write_text(json.dumps(mine))
        run("db", "student", "add", student)
    run("autograde", "demo", "--force")
    run("export")
    rows = (course / "grades.csv").read_text().splitlines()
    scores = {r.split(",")[3]: float(r.split(",")[-2]) for r in rows[1:]}
    assert scores == {"alice": 1.0, "bob": 0.0}
