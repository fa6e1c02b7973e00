"""The project's setup promises: what pyproject, the Makefile, CI and the README must say.

These read files only (no install, no network), so they run in a blink and fail when an
edit breaks one of the two commands (`make lab`, `make test`) or what they install.
"""

from __future__ import annotations

import fnmatch
import os
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # the dev extra installs tomli on 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = {"torch", "transformers", "tokenizers", "safetensors", "numpy", "plotly",
           "ipywidgets", "anywidget", "tqdm"}


@pytest.fixture(scope="module")
def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirements(reqs: list[str]) -> dict[str, Requirement]:
    return {Requirement(r).name.lower(): Requirement(r) for r in reqs}


def make_recipe(target: str) -> str:
    """The rule line and recipe of one Makefile target, as text."""
    text = (ROOT / "Makefile").read_text()
    m = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n|\n)*)", text, re.M)
    assert m, f"the Makefile has no '{target}' target"
    return m.group(0)


def test_pyproject_names_the_package_and_python(project):
    meta = project["project"]
    assert meta["name"] == "infer-lab"
    from packaging.specifiers import SpecifierSet

    python = SpecifierSet(meta["requires-python"])
    assert "3.10" in python and "3.11" in python and "3.9" not in python


def test_runtime_dependencies(project):
    deps = requirements(project["project"]["dependencies"])
    assert RUNTIME <= set(deps), f"missing: {RUNTIME - set(deps)}"
    # plotly.express would need pandas; the labs draw with graph_objects only.
    assert "pandas" not in deps


@pytest.mark.parametrize("version", ["2.13.0", "2.13.0+cpu"])
def test_torch_range_admits_the_local_cpu_build(project, version):
    torch = requirements(project["project"]["dependencies"])["torch"]
    assert torch.specifier.contains(Version(version), prereleases=False), (
        f"{torch} rejects torch {version}: pip would replace the CPU build with a CUDA download")


def test_extras(project):
    extras = project["project"]["optional-dependencies"]
    lab, dev = requirements(extras["lab"]), requirements(extras["dev"])
    assert {"jupyterlab", "ipykernel"} <= set(lab)
    assert {"pytest", "nbval", "hypothesis", "ipykernel", "pytest-timeout", "packaging"} <= set(dev)
    # the optional runtimes: the lab and dev installs include each extra
    for extra in ("kernels", "runtimes"):
        assert set(requirements(extras[extra])) <= set(lab) & set(dev), extra


def test_zoo_weights_ship_as_package_data(project):
    data = project["tool"]["setuptools"]["package-data"]["infer_lab.zoo"]
    assert "weights/*.safetensors" in data and "weights/*.json" in data
    assert "infer_lab*" in project["tool"]["setuptools"]["packages"]["find"]["include"]
    # Every file the zoo has now is covered by a pattern, so an install carries it.
    weights = ROOT / "infer_lab" / "zoo" / "weights"
    for f in weights.glob("*") if weights.is_dir() else []:
        rel = f"weights/{f.name}"
        assert any(fnmatch.fnmatch(rel, p) for p in data), f"{rel} would not be installed"


def test_version_comes_from_the_package(project):
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "infer_lab.__version__"}
    assert re.search(r'^__version__ = "[^"]+"$', (ROOT / "infer_lab/__init__.py").read_text(), re.M)


def test_make_test_runs_everything_at_ci_scale():
    recipe = make_recipe("test")
    assert "INFER_LAB_SCALE=ci" in recipe
    assert "--nbval-lax" in recipe
    assert re.search(r"-m pytest\b", recipe) and re.search(r"\btests labs\b", recipe)


def test_make_lab_opens_jupyterlab_on_the_labs():
    recipe = make_recipe("lab")
    assert re.search(r"jupyter lab labs/? ", recipe)
    assert "--ip=127.0.0.1" in recipe


def test_installs_are_skipped_when_nothing_changed():
    makefile = (ROOT / "Makefile").read_text()
    # lab and test depend on a stamp that is rebuilt only when pyproject or the Makefile change.
    assert make_recipe("lab").split("\n")[0].startswith("lab: $(STAMP)")
    assert make_recipe("test").split("\n")[0].startswith("test: $(STAMP)")
    stamp_rule = make_recipe("$(STAMP)").split("\n")[0]
    assert "pyproject.toml" in stamp_rule and "Makefile" in stamp_rule
    assert 'install -e ".[$(EXTRAS)]"' in makefile and re.search(r"^EXTRAS\s*\?=\s*lab,dev$",
                                                                   makefile, re.M)
    # torch is installed on its own first, with a spec that the local CPU wheel satisfies.
    assert re.search(r"^TORCH_SPEC\s*\?=\s*torch==2\.13\.0$", makefile, re.M)


def test_ci_runs_make_test():
    ci = ROOT / ".ci" / "run"
    text = ci.read_text()
    assert text.startswith("#!/usr/bin/env bash")
    assert "set -euo pipefail" in text
    assert re.search(r"^\s*make test\b", text, re.M)
    assert os.access(ci, os.X_OK), ".ci/run must be executable"


def test_readme_names_the_commands_and_links_every_lab():
    readme = (ROOT / "README.md").read_text()
    assert "make lab" in readme and "make test" in readme
    for nb in sorted((ROOT / "labs").glob("*.ipynb")):
        assert f"(labs/{nb.name})" in readme, f"README does not link labs/{nb.name}"


def test_make_gpu_check_refuses_without_a_gpu_and_names_its_steps():
    """`make gpu-check` is the prepared GPU run (issue 15): it must say why it stops on a
    machine without CUDA, and run the compiled kernel tests, the labs and both benches."""
    import subprocess

    import torch

    text = (ROOT / "Makefile").read_text()
    recipe = text[text.index("\ngpu-check:"):].split("\n\n", 1)[0]
    for step in ("TRITON_INTERPRET=0", "tests/test_kernels_basic.py",
                 "tests/test_kernels_real_shapes.py", "labs",
                 "infer_lab.bench kernels", "infer_lab.bench decode", "GPU_CHECK_DIR"):
        assert step in recipe, step
    if torch.cuda.is_available():
        return
    out = subprocess.run(["make", "-s", "gpu-check", "GPU_CHECK_DIR=/nonexistent/never"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode != 0 and "needs a CUDA GPU" in out.stderr + out.stdout
