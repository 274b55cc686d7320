# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""RELIABILITY.md section A: faults while opening the connection (map in test_reliability)."""

from __future__ import annotations

import itertools
import logging
import socket
import ssl
import sys
import time
from typing import Any

import pytest
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.sync.server import ServerConnection

from tests.conftest import TlsMaterial
from tests.support.proxy import Direction, FaultProxy, Scope
from tests.support.rawserver import RawConnection, RawServer
from tests.support.rawserver import encode_frame as server_frame
from tests.support.recorder import (
    FAST,
    Recorder,
    _no_engine_left_running,  # noqa: F401 (autouse)
    fast,
    serve_idle,
    stop_and_check,
    wait_open,
)
from tests.support.servers import echo_handler, run_ws_server, wait_for
from wsengine import ConnectionAdapter, EngineStartError, EngineState, WebsocketEngine
from wsengine.adapters.websocket_client import WebsocketClientAdapter
from wsengine.errors import HandshakeError

SECRET = "s3cr3t-0f-the-server"


@pytest.mark.parametrize("via", ["raw-silent", "proxy-black-hole"])
def test_a2_unanswered_handshake_times_out(via: str) -> None:
    """A2: TCP accepted but the upgrade never answered: start() raises EngineStartError
    caused by TimeoutError within open_timeout, and the socket is closed."""
    eofs: list[bool] = []
    client = Recorder()
    config = fast(open_timeout=0.5)
    if via == "raw-silent":
        with RawServer(lambda conn: eofs.append(conn.wait_eof(5)), handshake=False) as raw:
            engine = WebsocketEngine(raw.url, client, config=config)
            began = time.monotonic()
            with pytest.raises(EngineStartError) as raised:
                engine.start()
            took = time.monotonic() - began
            wait_for(lambda: eofs == [True], timeout=3)
    else:
        with run_ws_server(echo_handler) as server, FaultProxy(server.port) as proxy:
            proxy.black_hole(Direction.UP)
            engine = WebsocketEngine(proxy.url, client, config=config)
            began = time.monotonic()
            with pytest.raises(EngineStartError) as raised:
                engine.start()
            took = time.monotonic() - began
            proxy.wait(lambda: proxy.link(1).client_gone, timeout=3)
    assert isinstance(raised.value.__cause__, TimeoutError)
    assert took < 0.5 * 3
    assert client.events == []
    stop_and_check(engine)


def refusing(status: int) -> Any:
    """A websockets process_request that refuses with ``status`` and secret headers."""

    def process_request(connection: ServerConnection, request: Request) -> Response:
        headers = Headers([
            ("WWW-Authenticate", f'Bearer realm="{SECRET}"'),
            ("Set-Cookie", f"session={SECRET}"),
        ])
        return Response(status, "Refused", headers, SECRET.encode())

    return process_request


@pytest.mark.parametrize("status", [401, 403, 404])
def test_a3_http_refusal_exposes_the_status_not_the_headers(
    status: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A3: an HTTP 401/403/404 answer fails start(); the cause carries the status; no header
    value appears in the error or the logs."""
    caplog.set_level(logging.DEBUG, logger="wsengine")
    client = Recorder()
    with run_ws_server(echo_handler, process_request=refusing(status)) as server:
        engine = WebsocketEngine(server.url, client, config=FAST)
        with pytest.raises(EngineStartError) as raised:
            engine.start()
    cause = raised.value.__cause__
    assert isinstance(cause, HandshakeError) and cause.status == status
    texts = [str(raised.value), repr(raised.value), str(cause), repr(cause)]
    texts += [record.getMessage() for record in caplog.records]
    assert not any(SECRET in text for text in texts)
    assert client.events == []
    stop_and_check(engine)


def test_a4_503_while_restarting_is_retried_until_the_server_recovers() -> None:
    """A4: N refusals with 503 while restarting give on_restart_error with retry_count
    1..N, then on_open(restarting=True)."""
    refusals = {"left": 0}

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        if refusals["left"] > 0:
            refusals["left"] -= 1
            return Response(503, "Service Unavailable", Headers(), b"")
        return None

    client = Recorder()
    with run_ws_server(echo_handler, process_request=process_request) as server:
        engine = WebsocketEngine(server.url, client, config=FAST)
        engine.start()
        refusals["left"] = 4
        session = engine.session
        assert session is not None
        session.restart()
        wait_open(engine, client, 2)
        stop_and_check(engine)
    assert client.names("open", "restart_error")[1:] == ["restart_error"] * 4 + ["open"]
    assert [count for _, count in client.details("restart_error")] == [1, 2, 3, 4]
    assert all(
        isinstance(error, HandshakeError) and error.status == 503
        for error, _ in client.details("restart_error")
    )
    assert client.details("open") == [False, True]


@pytest.mark.parametrize(
    "answer",
    [b"220 smtp.invalid ESMTP\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"],
    ids=["smtp-banner", "http-200"],
)
def test_a5_junk_instead_of_an_upgrade_fails_fast(answer: bytes) -> None:
    """A5: a server answering with something else than a 101 fails start() with a clear
    EngineStartError at once, not after open_timeout."""

    def junk(conn: RawConnection) -> None:
        conn.send_raw(answer)
        conn.wait_eof(5)

    client = Recorder()
    with RawServer(junk, handshake=False) as raw:
        engine = WebsocketEngine(raw.url, client, config=fast(open_timeout=5.0))
        began = time.monotonic()
        with pytest.raises(EngineStartError) as raised:
            engine.start()
        took = time.monotonic() - began
    assert took < 1.0
    assert isinstance(raised.value.__cause__, HandshakeError)
    assert "HTTP" in str(raised.value)
    assert client.events == []
    stop_and_check(engine)


def altered_response(change: str) -> Any:
    """A websockets process_response that breaks the 101 response."""

    def process_response(
        connection: ServerConnection, request: Request, response: Response
    ) -> Response:
        if change == "accept-missing":
            del response.headers["Sec-WebSocket-Accept"]
        elif change == "accept-wrong":
            del response.headers["Sec-WebSocket-Accept"]
            response.headers["Sec-WebSocket-Accept"] = "dGhlIHNhbXBsZSBub25jZQ=="
        else:
            response.headers["Sec-WebSocket-Protocol"] = "superchat"
        return response

    return process_response


@pytest.mark.parametrize(
    ("change", "requested"),
    [
        ("accept-missing", None),
        ("accept-wrong", None),
        ("subprotocol-not-requested", None),
        ("subprotocol-other-than-requested", ["chat"]),
    ],
)
def test_a6_bad_handshake_response_fails_start(change: str, requested: list[str] | None) -> None:
    """A6: a missing or wrong Sec-WebSocket-Accept, or a subprotocol the client did not
    ask for, fails start() with EngineStartError; on_open never runs."""
    options = {} if requested is None else {"subprotocols": requested}
    client = Recorder()
    with run_ws_server(echo_handler, process_response=altered_response(change)) as server:
        engine = WebsocketEngine(
            server.url, client, adapter=WebsocketClientAdapter(**options), config=FAST
        )
        try:
            with pytest.raises(EngineStartError):
                engine.start()
        finally:
            engine.stop()
    assert client.events == []
    stop_and_check(engine)


def shut_down_during_handshake(connection: ServerConnection, request: Request) -> None:
    """A websockets process_request that drops TCP before answering."""
    connection.socket.shutdown(socket.SHUT_RDWR)


@pytest.mark.parametrize("via", ["ws-shutdown", "proxy-limit-data"])
def test_a7_drop_during_the_handshake_fails_start(via: str) -> None:
    """A7: the server dropping TCP during the handshake fails start() with an
    EngineStartError whose cause is a retryable handshake error (no HTTP status)."""
    client = Recorder()
    if via == "ws-shutdown":
        with run_ws_server(echo_handler, process_request=shut_down_during_handshake) as server:
            engine = WebsocketEngine(server.url, client, config=FAST)
            with pytest.raises(EngineStartError) as raised:
                engine.start()
    else:
        with run_ws_server(echo_handler) as server, FaultProxy(server.port) as proxy:
            proxy.limit_data(20, Direction.DOWN)
            engine = WebsocketEngine(proxy.url, client, config=FAST)
            with pytest.raises(EngineStartError) as raised:
                engine.start()
    cause = raised.value.__cause__
    assert isinstance(cause, (HandshakeError, ConnectionError)), repr(cause)
    assert getattr(cause, "status", None) is None
    assert client.events == []
    stop_and_check(engine)


def test_a7_drop_during_the_handshake_is_retried_on_restart() -> None:
    """A7: on restart, a handshake cut after 20 bytes counts as a failed attempt and the
    engine retries until the path heals."""
    proxy_box: list[FaultProxy] = []

    class Healing(Recorder):
        def on_restart_error(self, error: Exception, retry_count: int, exit: Any) -> None:
            super().on_restart_error(error, retry_count, exit)
            if retry_count == 3:
                proxy_box[0].heal()

    client = Healing()
    with run_ws_server(echo_handler) as server, FaultProxy(server.port) as proxy:
        proxy_box.append(proxy)
        engine = WebsocketEngine(proxy.url, client, config=FAST)
        engine.start()
        proxy.limit_data(20, Direction.DOWN, Scope.NEW)
        session = engine.session
        assert session is not None
        session.restart()
        wait_open(engine, client, 2)
        engine.send("after the heal")
        client.wait_count("message", 1)
        stop_and_check(engine)
    assert [count for _, count in client.details("restart_error")] == [1, 2, 3]
    assert client.details("open") == [False, True]


def test_a8_untrusted_certificate_fails_start(wss_echo_server: Any) -> None:
    """A8: a certificate from an unknown CA fails start() with SSLCertVerificationError;
    no websocket connection is made (no downgrade)."""
    client = Recorder()
    engine = WebsocketEngine(wss_echo_server.url, client, config=FAST)
    with pytest.raises(EngineStartError) as raised:
        engine.start()
    assert isinstance(raised.value.__cause__, ssl.SSLCertVerificationError)
    assert wss_echo_server.connections == [] and client.events == []
    stop_and_check(engine)


def test_a8_wrong_hostname_fails_start(tls: TlsMaterial) -> None:
    """A8: a trusted certificate for another host name fails start() with
    SSLCertVerificationError."""
    cert = tls.ca.issue_cert("wrong.example")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(context)
    client = Recorder()
    with run_ws_server(echo_handler, ssl=context) as server:
        adapter = WebsocketClientAdapter(sslopt={"ca_certs": tls.ca_path})
        engine = WebsocketEngine(server.url, client, adapter=adapter, config=FAST)
        with pytest.raises(EngineStartError) as raised:
            engine.start()
        assert server.connections == []
    cause = raised.value.__cause__
    assert isinstance(cause, ssl.SSLCertVerificationError)
    assert "hostname" in str(cause).lower() or "ip address" in str(cause).lower()
    assert client.events == []
    stop_and_check(engine)


def test_a8_tls_eof_during_the_tls_handshake_fails_start(tls: TlsMaterial) -> None:
    """A8: a server closing TCP right after the ClientHello fails start() with a TLS EOF
    (SSLEOFError), never a plain-text fallback."""
    hellos: list[bytes] = []

    def close_after_hello(conn: RawConnection) -> None:
        conn.sock.settimeout(5)
        hellos.append(conn.sock.recv(65536))

    client = Recorder()
    with RawServer(close_after_hello, handshake=False) as raw:
        adapter = WebsocketClientAdapter(sslopt={"ca_certs": tls.ca_path})
        engine = WebsocketEngine(f"wss://127.0.0.1:{raw.port}/", client, adapter=adapter,
                                 config=FAST)
        with pytest.raises(EngineStartError) as raised:
            engine.start()
    assert hellos and hellos[0][:1] == b"\x16"  # a TLS handshake record, not HTTP
    cause = raised.value.__cause__
    assert isinstance(cause, (ssl.SSLEOFError, ssl.SSLZeroReturnError)), repr(cause)
    assert client.events == []
    stop_and_check(engine)


def test_a10_late_dial_leaves_nothing_behind() -> None:
    """A10: a dial slower than start()'s timeout (PROXY latency 0.4 s each way, timeout
    0.3 s) fails start() in time; whatever the late handshake does afterwards, no engine
    runs, every socket of that attempt ends closed and nothing is delivered (the gowse
    orphan)."""

    def greet(ws: ServerConnection) -> None:
        ws.send("hello from a connection nobody wants")
        echo_handler(ws)

    client = Recorder()
    with run_ws_server(greet) as server, FaultProxy(server.port) as proxy:
        proxy.latency(0.4)
        engine = WebsocketEngine(proxy.url, client, config=fast(open_timeout=3.0))
        began = time.monotonic()
        with pytest.raises(EngineStartError) as raised:
            engine.start(timeout=0.3)
        took = time.monotonic() - began
        assert isinstance(raised.value.__cause__, TimeoutError)
        assert 0.25 <= took < 0.9
        assert engine.state is EngineState.STOPPED
        # The request reaches the server 0.4 s after the dial began and its answer comes
        # back 0.4 s later: by then the engine must have dropped the attempt, so the
        # proxy's link ends closed on both sides.
        proxy.wait(lambda: proxy.connections == 1 and proxy.link(1).closed, timeout=4)
        wait_for(lambda: all(c.close_code is not None for c in server.connections),
                 timeout=4)
        assert engine.state is EngineState.STOPPED
    assert client.events == []
    assert engine.session is None
    stop_and_check(engine)


def make_adapter(kind: str) -> ConnectionAdapter:
    if kind == "websocket-client":
        return WebsocketClientAdapter()
    from wsengine.adapters.websockets_sync import WebsocketsAdapter

    return WebsocketsAdapter()


@pytest.mark.parametrize("kind", ["websocket-client", "websockets"])
def test_a11_redirect_is_followed(kind: str) -> None:
    """A11: both adapters follow a 302 to another websocket server (documented for the
    websockets adapter; websocket-client's behaviour for the default one)."""
    client = Recorder()
    with run_ws_server(echo_handler) as target:

        def redirect(connection: ServerConnection, request: Request) -> Response:
            return Response(302, "Found", Headers([("Location", target.url)]), b"")

        with run_ws_server(echo_handler, process_request=redirect) as origin:
            engine = WebsocketEngine(origin.url, client, adapter=make_adapter(kind),
                                     config=FAST)
            engine.start()
            engine.send("where am I")
            client.wait_count("message", 1)
            stop_and_check(engine)
            assert origin.connections == []
        assert len(target.connections) == 1
    assert client.details("open") == [False]


@pytest.mark.parametrize(("kind", "requests"), [("websocket-client", 4), ("websockets", 10)])
def test_a11_redirect_loop_fails_start(kind: str, requests: int) -> None:
    """A11: a redirect loop is followed a bounded number of times (websocket-client: 3
    redirects; websockets: 10 requests), then start() fails with a HandshakeError."""
    numbers = itertools.count()
    seen: list[int] = []
    client = Recorder()

    def loop(connection: ServerConnection, request: Request) -> Response:
        seen.append(next(numbers))
        return Response(302, "Found", Headers([("Location", url)]), b"")

    with run_ws_server(echo_handler, process_request=loop) as origin:
        url = origin.url
        engine = WebsocketEngine(origin.url, client, adapter=make_adapter(kind), config=FAST)
        began = time.monotonic()
        with pytest.raises(EngineStartError) as raised:
            engine.start()
        assert time.monotonic() - began < 1.5
    assert isinstance(raised.value.__cause__, HandshakeError)
    assert len(seen) == requests
    assert client.events == []
    stop_and_check(engine)


def test_a11_redirect_behaviour_is_documented() -> None:
    """A11: the default adapter documents what it does with a redirect."""
    docs = " ".join(
        doc or "" for doc in (
            WebsocketClientAdapter.__doc__, WebsocketClientAdapter.dial.__doc__,
            sys.modules[WebsocketClientAdapter.__module__].__doc__,
        )
    )
    assert "redirect" in docs.lower()


def test_a12_frame_in_the_101_segment_is_the_first_message() -> None:
    """A12: frames sent in the same segment as the 101 response are delivered first."""
    early = server_frame(0x1, b"early bird") + server_frame(0x2, b"\x00second")
    client = Recorder()
    with RawServer(serve_idle, response_extra=early) as raw:
        engine = WebsocketEngine(raw.url, client, config=fast(workers=1))
        engine.start()
        client.wait_count("message", 2)
        stop_and_check(engine)
    assert [m.data for m in client.messages] == ["early bird", b"\x00second"]

