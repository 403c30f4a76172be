"""`diffreg review`: starts the review page's server with its doors (doors.py) and prints where to open it.

Rendering needs no display: VTK draws off screen through EGL (Mesa's llvmpipe on a CPU machine, the GPU's
driver on a GPU server) unless the caller chose another window class.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

from ...errors import RegistrationError
from .doors import TOKEN_PARAMETER, Doors, close_wslink_doors, is_loopback, new_token


def _checked_root(data: str) -> Path:
    root = Path(data).expanduser()
    if not root.is_dir():
        raise RegistrationError(f"--data {data}: no such folder. Give the folder that holds the images to review.")
    return root.resolve()


def address(host: str, port: int, token: Optional[str]) -> str:
    shown = f"[{host}]" if ":" in host else host
    query = f"?{TOKEN_PARAMETER}={token}" if token else ""
    return f"http://{shown}:{port}/{query}"


def build(data: str, host: str = "127.0.0.1", port: int = 8080, token: Optional[str] = None):
    """The page and its server, doors bound, not started: (page, doors)."""
    root = _checked_root(data)
    if token is None and not is_loopback(host):
        token = new_token()
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    from trame.app import get_server

    from .page import ReviewPage

    server = get_server(f"diffreg-review-{port}", client_type="vue3")
    page = ReviewPage(root, server=server)
    doors = Doors(host, port, token, on_new_reviewer=page.forget, busy=lambda: page.session.running)

    def bind(web_server) -> None:
        web_server.app.middlewares.append(doors.middleware)
        close_wslink_doors(web_server)
        if token is not None:
            server.protocol.updateSecret(token)

    server.controller.on_server_bind.add(bind)
    return page, doors


def serve(data: str, host: str = "127.0.0.1", port: int = 8080, token: Optional[str] = None) -> int:
    """Runs the page until Ctrl-C; prints the address (with the token) to open."""
    if token is None and not is_loopback(host):
        token = new_token()
    page, doors = build(data, host, port, token)

    def ready(**_) -> None:
        used = page.server.port
        doors.port = used
        print(f"review: open {address(host, used, token)}  (data folder {page.root})", flush=True)

    page.server.controller.on_server_ready.add(ready)
    argv, sys.argv = sys.argv, sys.argv[:1]  # trame parses sys.argv itself; `diffreg review`'s are not its
    try:
        page.server.start(host=host, port=port, open_browser=False, show_connection_info=False)
    finally:
        sys.argv = argv
    return 0
