"""The review page's doors (cli/review/doors.py) on real aiohttp and wslink servers, without a browser.

Each rule has a request that it must refuse; without the rule (the middleware not installed, the check
removed) the request goes through and the test fails. The same middleware guards `diffreg review`
(test_review_page.py checks the running page answers 403 too)."""
import asyncio

import msgpack
import pytest

aiohttp = pytest.importorskip("aiohttp", reason="the review extra (aiohttp, trame) is not installed")
from aiohttp import web  # noqa: E402
from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from DiffusionRegistrationLib.cli.review.doors import (REVIEWER_COOKIE, TOKEN_COOKIE, Doors,  # noqa: E402
                                                       close_wslink_doors, page_text)

TOKEN = "s3cret-token"


async def _page(request):
    return web.Response(text="the page")


async def _websocket(request):
    socket = web.WebSocketResponse()
    await socket.prepare(request)
    async for message in socket:
        await socket.send_str(message.data)
    return socket


def _client(doors: Doors) -> TestClient:
    app = web.Application(middlewares=[doors.middleware])
    app.router.add_get("/index.html", _page)
    app.router.add_get("/ws", _websocket)
    return TestClient(TestServer(app, host="127.0.0.1", port=doors.port))


def _run(scenario, doors: Doors):
    async def main():
        async with _client(doors) as client:
            doors.port = client.port  # the port the test server got
            return await scenario(client)
    return asyncio.run(main())


def _doors(token=TOKEN, host="0.0.0.0", **kwargs) -> Doors:
    return Doors(host, 0, token, **kwargs)


def test_a_server_beyond_loopback_refuses_the_page_and_the_websocket_without_the_token():
    async def scenario(client):
        page = await client.get("/index.html")
        wrong = await client.get("/index.html", params={"secret": "guess"})
        upgrade = await client.get("/ws", headers={"Connection": "Upgrade", "Upgrade": "websocket",
                                                   "Sec-WebSocket-Version": "13",
                                                   "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
        return page.status, await page.text(), wrong.status, upgrade.status

    page, text, wrong, upgrade = _run(scenario, _doors())
    assert (page, wrong, upgrade) == (403, 403, 403)
    assert text.startswith("refused: a valid token is required") and "Traceback" not in text


def test_the_token_in_the_address_opens_the_page_and_its_cookie_the_websocket():
    async def scenario(client):
        page = await client.get("/index.html", params={"secret": TOKEN})
        cookie = page.cookies[TOKEN_COOKIE]
        socket = await client.ws_connect("/ws")
        await socket.send_str("hello")
        echoed = await socket.receive_str()
        await socket.close()
        return page.status, await page.text(), cookie["httponly"], cookie["samesite"], echoed

    assert _run(scenario, _doors()) == (200, "the page", True, "Strict", "hello")


def test_a_reload_without_the_token_in_the_address_gets_it_back_for_the_hello_secret():
    async def scenario(client):
        await client.get("/index.html", params={"secret": TOKEN})  # the cookie
        reload = await client.get("/index.html", allow_redirects=False)
        return reload.status, reload.headers["Location"]

    assert _run(scenario, _doors()) == (302, f"/index.html?secret={TOKEN}")


def test_a_loopback_server_without_token_refuses_other_host_names_dns_rebinding():
    async def scenario(client):
        own = await client.get("/index.html")
        rebound = await client.get("/index.html", headers={"Host": f"evil.example:{client.port}"})
        return own.status, rebound.status

    assert _run(scenario, _doors(token=None, host="127.0.0.1")) == (200, 403)


def test_a_cross_origin_websocket_is_refused():
    async def scenario(client):
        await client.get("/index.html")
        same = await client.ws_connect("/ws", origin=f"http://127.0.0.1:{client.port}")
        await same.close()
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect("/ws", origin="http://evil.example")
        return refused.value.status

    assert _run(scenario, _doors(token=None, host="127.0.0.1")) == 403


def test_a_second_browser_is_refused_while_the_first_reviews_and_then_starts_afresh():
    forgotten = []

    async def scenario(client):
        await client.get("/index.html")
        first = await client.ws_connect("/ws")
        async with aiohttp.ClientSession(cookies={REVIEWER_COOKIE: "another-browser"}) as other:
            during = (await other.get(client.make_url("/index.html"))).status
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await other.ws_connect(client.make_url("/ws"))
            await first.close()
            await asyncio.sleep(0.05)
            second = await other.ws_connect(client.make_url("/ws"))
            await second.close()
        return during, refused.value.status, len(forgotten)

    assert _run(scenario, _doors(token=None, host="127.0.0.1", on_new_reviewer=lambda: forgotten.append(1))) \
        == (409, 409, 1)


def test_a_running_registration_keeps_the_session_for_its_reviewer():
    async def scenario(client):
        await client.get("/index.html")
        first = await client.ws_connect("/ws")
        await first.close()
        await asyncio.sleep(0.05)
        return (await client.get("/index.html", cookies={REVIEWER_COOKIE: "another-browser"})).status

    assert _run(scenario, _doors(token=None, host="127.0.0.1", busy=lambda: True)) == 409


def test_no_token_beyond_loopback_is_refused_at_construction():
    with pytest.raises(ValueError, match="token is required"):
        Doors("0.0.0.0", 8080, None)


def _call(rpc_id: str, method: str, args=()) -> bytes:
    from wslink.chunking import generate_chunks

    message = msgpack.packb({"wslink": "1.0", "id": rpc_id, "method": method, "args": list(args), "kwargs": {}})
    return list(generate_chunks(message, 1 << 20))


def test_wslink_remote_calls_cannot_stop_the_server_and_errors_carry_no_traceback():
    from wslink import register as export_rpc
    from wslink.backends.aiohttp import WebAppServer
    from wslink.chunking import UnChunker
    from wslink.websocket import LinkProtocol, ServerProtocol

    class Failing(LinkProtocol):
        @export_rpc("test.fail")
        def fail(self):
            raise ValueError("secret detail at /srv/private/path.py")

    class Protocol(ServerProtocol):
        def initialize(self):
            self.registerLinkProtocol(Failing())
            self.updateSecret("hello-secret")

    async def main():
        web_server = WebAppServer({"ws": {"ws": Protocol()}, "host": "127.0.0.1", "port": 0})
        close_wslink_doors(web_server)
        async with TestClient(TestServer(web_server.app)) as client:
            socket = await client.ws_connect("/ws")
            unchunker = UnChunker()

            async def ask(rpc_id, method, args=()):
                for chunk in _call(rpc_id, method, args):
                    await socket.send_bytes(chunk)
                while True:
                    answer = unchunker.process_chunk((await socket.receive()).data)
                    if answer is not None:
                        return answer

            await ask("system:c0:0", "wslink.hello", [{"secret": "hello-secret"}])
            failed = await ask("rpc:c0:1", "test.fail")
            stop = await ask("rpc:c0:2", "application.exit")
            await socket.close()
            return failed, stop, web_server.completion.done()

    failed, stop, stopped = asyncio.run(main())
    assert "data" not in failed["error"] and "/srv" not in str(failed) and "secret detail" not in str(failed)
    assert stop["error"]["message"] == "Unregistered method called" and not stopped


def test_page_text_removes_server_paths_and_tracebacks(tmp_path):
    root = tmp_path / "data"
    assert page_text(f"fixed image {root}/sub/a.nii.gz: bad header", root) == "fixed image sub/a.nii.gz: bad header"
    assert page_text(f"could not write {tmp_path}/data-evil/out.h5: disk full.", root) == \
        "could not write out.h5: disk full."
    trace = 'Traceback (most recent call last):\n  File "/srv/x.py", line 3\nValueError: no /etc/passwd here'
    assert page_text(trace, root) == "ValueError: no passwd here"
