"""The review page's doors: who may load the page and open its websocket, and what leaves the server.

A trame page is an aiohttp server plus a websocket that takes remote calls, and by default it trusts every
client (wslink 2.6: the hello secret protects only the websocket's calls, the page and its assets are plain
HTTP; an exception in a remote call goes back with its traceback, wslink/protocol.py `onCompleteMessage`; the
remote call `application.exit` stops the server, wslink/websocket.py `ServerProtocol.exit`; trame's state is
one dictionary shared by every client). `Doors` answers each of these:

- a token (`secret` in the page's address, then an HttpOnly cookie) on every HTTP request and on the
  websocket upgrade, required when the server listens beyond loopback and whenever one is given; the same
  token is wslink's hello secret (trame's client reads `secret` from the address);
- Host (without a token: only this machine's loopback names with this port, against DNS rebinding) and
  Origin (a browser's cross-site request or websocket is refused);
- one reviewer at a time: the first browser to open the page owns the session (a cookie); another browser
  is refused (409) while the owner is connected or a run is going, so it can neither see nor cancel those
  runs; a later reviewer starts a fresh session (`on_new_reviewer`);
- refusals are one plain line; errors of remote calls reach the page without traceback or data; the
  server-stopping remote calls are removed.
"""
from __future__ import annotations

import hmac
import ipaddress
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Awaitable, Callable, Optional

from aiohttp import web

TOKEN_COOKIE = "diffreg_review_token"
REVIEWER_COOKIE = "diffreg_reviewer"
TOKEN_PARAMETER = "secret"  # what trame's client reads from the address as wslink's hello secret
WEBSOCKET_PATH = "/ws"
SERVER_STOPPING_CALLS = ("application.exit", "application.exit.later")
EXCEPTION_ERROR = -32001  # wslink/protocol.py: the code of an exception raised in a remote call
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def is_loopback(host: str) -> bool:
    """Whether binding to `host` keeps the server on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    return secrets.token_urlsafe(24)


def _same(given: Optional[str], expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


@dataclass
class Doors:
    """The checks of one server (see the module docstring). `token` None: no token asked (loopback only)."""

    host: str
    port: int
    token: Optional[str] = None
    on_new_reviewer: Callable[[], None] = lambda: None
    busy: Callable[[], bool] = lambda: False  # a run is going: the owner keeps the session while it runs
    owner: Optional[str] = field(default=None, init=False)
    owner_connections: int = field(default=0, init=False)
    _had_owner: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.token is None and not is_loopback(self.host):
            raise ValueError(f"host {self.host} is not loopback: a token is required")

    # -- the checks, each a reason to refuse or None ----------------------------------------------------
    def host_problem(self, request: web.Request) -> Optional[str]:
        if self.token is not None:
            return None  # the token is what a rebinding attacker lacks; the server may have many names
        allowed = {f"{name}:{self.port}" for name in LOOPBACK_NAMES + (self.host,)}
        return None if request.host in allowed else "unknown host name"

    @staticmethod
    def origin_problem(request: web.Request) -> Optional[str]:
        origin = request.headers.get("Origin")  # browsers send it with websockets and cross-site requests
        if origin is None:
            return None
        scheme = "https" if request.secure else "http"
        return None if origin == f"{scheme}://{request.host}" else "cross-origin request"

    def token_problem(self, request: web.Request) -> Optional[str]:
        if self.token is None:
            return None
        if _same(request.cookies.get(TOKEN_COOKIE), self.token) or \
                _same(request.query.get(TOKEN_PARAMETER), self.token):
            return None
        return "a valid token is required (open the address the server printed)"

    def reviewer_problem(self, reviewer: Optional[str]) -> Optional[str]:
        if self.owner is None or reviewer == self.owner:
            return None
        if self.owner_connections > 0 or self.busy():
            return "this review is open in another browser; close it there or start another `diffreg review`"
        return None

    # -- the middleware ---------------------------------------------------------------------------------
    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        for problem in (self.host_problem(request), self.origin_problem(request), self.token_problem(request)):
            if problem:
                return _refusal(403, problem)
        reviewer = request.cookies.get(REVIEWER_COOKIE)
        problem = self.reviewer_problem(reviewer)
        if problem:
            return _refusal(409, problem)
        if _upgrade(request) or request.path == WEBSOCKET_PATH:
            return await self._websocket(request, handler, reviewer)
        if self.token is not None and _is_page(request) and request.query.get(TOKEN_PARAMETER) is None:
            # a reload: the address lost the token (trame's client strips it), the page needs it as hello secret
            raise web.HTTPFound(request.rel_url.update_query({TOKEN_PARAMETER: self.token}))
        response = await handler(request)
        if self.token is not None and request.query.get(TOKEN_PARAMETER) is not None:
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="Strict")
        if reviewer is None and _is_page(request):
            response.set_cookie(REVIEWER_COOKIE, secrets.token_urlsafe(16), httponly=True, samesite="Strict")
        return response

    async def _websocket(self, request: web.Request, handler, reviewer: Optional[str]) -> web.StreamResponse:
        if reviewer is None:
            return _refusal(403, "open the page first")
        if reviewer != self.owner:
            if self._had_owner:
                self.on_new_reviewer()  # the earlier reviewer's runs are not shown to this one
            self.owner, self._had_owner = reviewer, True
        self.owner_connections += 1
        try:
            return await handler(request)
        finally:
            self.owner_connections -= 1


def _upgrade(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


def _is_page(request: web.Request) -> bool:
    return request.method == "GET" and request.path in ("/", "/index.html")


def _refusal(status: int, reason: str) -> web.Response:
    return web.Response(status=status, text=f"refused: {reason}\n", content_type="text/plain")


def close_wslink_doors(web_server) -> None:
    """On the wslink web server (trame's `on_server_bind`): removes the remote calls that stop the server and
    strips tracebacks and exception text from the errors that remote calls send back."""
    for handler in getattr(web_server, "_ws_handlers", []):
        for name in SERVER_STOPPING_CALLS:
            handler.functionMap.pop(name, None)
        send = handler.sendWrappedError

        async def plain_error(rpcid, code, message, data=None, client_id=None, send=send):
            if code == EXCEPTION_ERROR:
                message, data = "the server could not do this; see its console", None
            return await send(rpcid, code, message, None if code == EXCEPTION_ERROR else data, client_id=client_id)

        handler.sendWrappedError = plain_error


_ABSOLUTE_PATH = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?[/\\][^\s'\"]*")


def page_text(message: str, data_root: Path) -> str:
    """One line for the page: no traceback, no server path. Paths below the data root become relative to
    it; any other absolute path is cut to its file name."""
    root = str(Path(data_root).resolve())
    line = " ".join(message.strip().splitlines()[-1:]) if "Traceback" in message else " ".join(message.split())
    line = re.sub(re.escape(root) + r"/(?=[^\s/])", "", line)
    line = re.sub(re.escape(root) + r"(?![\w.-])", "the data folder", line)
    return _ABSOLUTE_PATH.sub(_file_name, line)


def _file_name(match: re.Match) -> str:
    path = match.group(0).rstrip(".,:;)")
    return (PurePath(path).name or "a server path") + match.group(0)[len(path):]
