"""Fixtures for the server routes: a Jupyter server with infer_lab_ext enabled.

Every test runs twice, at the root base URL and under a JupyterHub-style prefix
(``/user/alice/``), with a temporary server root holding a copy of the repo's labs and a
temporary ``INFER_LAB_HOME``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

EXT = Path(__file__).resolve().parents[1]
REPO = EXT.parent
sys.path.insert(0, str(EXT))  # the source of infer_lab_ext, built or not

pytest_plugins = ["pytest_jupyter.jupyter_server"]


@pytest.fixture(params=["/", "/user/alice/"], ids=["root", "hub-prefix"])
def jp_base_url(request) -> str:
    return request.param


@pytest.fixture
def jp_server_config() -> dict:
    return {"ServerApp": {"jpserver_extensions": {"infer_lab_ext": True}}}


@pytest.fixture
def jp_root_dir(tmp_path) -> Path:
    root = tmp_path / "root_dir"
    shutil.copytree(REPO / "labs", root / "labs", ignore=shutil.ignore_patterns(".*"))
    return root


@pytest.fixture(autouse=True)
def lab_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "infer-lab-home"
    monkeypatch.setenv("INFER_LAB_HOME", str(home))
    return home
