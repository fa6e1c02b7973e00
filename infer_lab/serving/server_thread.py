"""Run an ASGI app (:func:`infer_lab.serving.server.build_app`) on 127.0.0.1 in a
background thread, for tests and labs that talk to a real server over HTTP."""

from __future__ import annotations

import threading
import time

from starlette.applications import Starlette


class ServerThread:
    """Run uvicorn on 127.0.0.1 in a background thread: ``with ServerThread(app) as s: s.url``."""

    def __init__(self, app: Starlette, port: int = 0, host: str = "127.0.0.1"):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port,
                                                    log_level="warning", lifespan="on",
                                                    timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)
        self.url = ""

    def __enter__(self) -> ServerThread:  # noqa: PYI034
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
