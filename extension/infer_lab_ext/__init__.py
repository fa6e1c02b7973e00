"""infer-lab's JupyterLab extension: lab navigator, inference monitor, hardware status.

The frontend ships prebuilt in ``labextension/``; the server part adds three read-only
routes (:mod:`.handlers`). Telemetry from kernels does not pass through the server
routes: it travels over a Jupyter comm (see ``infer_lab/telemetry.py``).
"""

from __future__ import annotations

from typing import Any

try:
    from ._version import __version__
except ImportError:  # a source checkout that was never built
    __version__ = "dev"


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "infer-lab-ext"}]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "infer_lab_ext"}]


def _load_jupyter_server_extension(server_app: Any) -> None:
    from .handlers import setup_handlers

    setup_handlers(server_app.web_app, server_app.root_dir)
    server_app.log.info("infer_lab_ext: routes under %sinfer-lab/",
                        server_app.web_app.settings["base_url"])
