"""The server routes, all under the server's base URL (``/user/<name>/`` on JupyterHub).

    GET {base_url}infer-lab/labs       the catalogue with progress, and where to continue
    GET {base_url}infer-lab/progress   progress only (cheap: no notebook is read)
    GET {base_url}infer-lab/hardware   device and memory in use, for the status bar

Every handler is a jupyter_server ``APIHandler`` behind ``tornado.web.authenticated``, so
a request without the server's token or cookie is refused (403), as for the contents API.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join

from . import hardware, labs, progress

NAMESPACE = "infer-lab"


class _Base(APIHandler):
    def initialize(self, root_dir: str) -> None:
        self.root = Path(root_dir).expanduser()

    def labs(self) -> list[dict[str, Any]]:
        labs_dir = labs.find_labs_dir(self.root)
        found = labs.catalogue(labs_dir, self.root) if labs_dir else []
        recorded = progress.read_store()
        for lab in found:
            lab["progress"] = progress.lab_progress(lab["exercises"], recorded.get(lab["id"], {}))
        return found


class LabsHandler(_Base):
    @tornado.web.authenticated
    def get(self) -> None:
        found = self.labs()
        self.finish({"labs": found, "continue": progress.continue_lab(found),
                     "progress_file": str(progress.progress_path())})


class ProgressHandler(_Base):
    @tornado.web.authenticated
    def get(self) -> None:
        recorded = progress.read_store()
        known = labs.registry()
        self.finish({"labs": {lab: progress.lab_progress(names, recorded.get(lab, {}))
                              for lab, names in known.items()}})


class HardwareHandler(APIHandler):
    @tornado.web.authenticated
    def get(self) -> None:
        self.finish(hardware.status())


def setup_handlers(web_app: Any, root_dir: str) -> None:
    base = web_app.settings["base_url"]
    kw = {"root_dir": root_dir}
    web_app.add_handlers(".*$", [
        (url_path_join(base, NAMESPACE, "labs"), LabsHandler, kw),
        (url_path_join(base, NAMESPACE, "progress"), ProgressHandler, kw),
        (url_path_join(base, NAMESPACE, "hardware"), HardwareHandler),
    ])
