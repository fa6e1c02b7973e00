"""The Jupyter server Galata starts: port 8888, no token (galata.configure_jupyter_server).

The server root is a fresh temporary folder with a copy of the repo's labs/, so the
navigator lists the real labs while the tests' notebooks never land in the repo, and
INFER_LAB_HOME is a fresh folder too, so the progress shown starts empty.
"""

import os
import shutil
import tempfile
from pathlib import Path

from jupyterlab.galata import configure_jupyter_server

REPO = Path(__file__).resolve().parents[2]

configure_jupyter_server(c)  # noqa: F821  (c is the config object jupyter passes in)

root = Path(tempfile.mkdtemp(prefix="infer-lab-galata-root-"))
shutil.copytree(REPO / "labs", root / "labs", ignore=shutil.ignore_patterns(".*"))
c.ServerApp.root_dir = str(root)  # noqa: F821
c.ServerApp.base_url = os.environ.get("GALATA_BASE_URL", "/")  # noqa: F821
c.ServerApp.allow_root = True  # noqa: F821  (CI machines run as root)
os.environ["INFER_LAB_HOME"] = tempfile.mkdtemp(prefix="infer-lab-galata-home-")
os.environ.setdefault("INFER_LAB_SCALE", "ci")
