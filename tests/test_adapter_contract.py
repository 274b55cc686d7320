# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""The ConnectionAdapter contract (API.md), run on every adapter wsengine ships.

Each test runs once per adapter through the parametrized ``kind`` fixture, against real
servers on 127.0.0.1: a websockets server for the well-behaved cases, RawServer for
hand-built frames (RELIABILITY A5-A8, A11, A12, B8, B13-B20, B22, B25, B26). Where the
adapters legitimately differ, the test says so and checks each documented behaviour.
"""

from __future__ import annotations

import contextlib
import email.utils
import os
import random
import select
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from websockets.http11 import Request, Response
from websockets.sync.server import ServerConnection

from tests.conftest import TlsMaterial
from tests.support.rawserver import RawConnection, RawServer, accept_key, close_frame
from tests.support.rawserver import encode_frame as server_frame
from tests.support.recorder import Recorder, fast, stop_and_check
from tests.support.servers import (
    WsServer,
    echo_handler,
    run_ws_server,
    server_close_code,
    wait_for,
)
from wsengine import CloseMessage, EngineState, WebsocketEngine
from wsengine.adapters.base import ConnectionAdapter
from wsengine.adapters.websocket_client import WebsocketClientAdapter
from wsengine.adapters.websockets_sync import WebsocketsAdapter
from wsengine.errors import ConfigError, ConnectionClosedError, HandshakeError, ProtocolError
from wsengine.types import Message, MessageType

TEXT = MessageType.TEXT
BINARY = MessageType.BINARY

#: Options every adapter offers, each spelled the adapter's own way.
AdapterFactory = Callable[..., ConnectionAdapter]


def build_websocket_client(
    *,
    headers: dict[str, str] | None = None,
    subprotocols: list[str] | None = None,
    tls: TlsMaterial | None = None,
    **options: Any,
) -> ConnectionAdapter:
    """A WebsocketClientAdapter: ``header`` lines, ``sslopt`` with the CA file."""
    if headers:
        options["header"] = [f"{name}: {value}" for name, value in headers.items()]
    if subprotocols:
        options["subprotocols"] = subprotocols
    if tls is not None:
        options["sslopt"] = {"ca_certs": tls.ca_path}
    return WebsocketClientAdapter(**options)


def build_websockets(
    *,
    headers: dict[str, str] | None = None,
    subprotocols: list[str] | None = None,
    tls: TlsMaterial | None = None,
    **options: Any,
) -> ConnectionAdapter:
    """A WebsocketsAdapter: ``additional_headers``, ``ssl`` with a context trusting the CA."""
    if headers:
        options["additional_headers"] = headers
    if subprotocols:
        options["subprotocols"] = subprotocols
    if tls is not None:
        options["ssl"] = tls.client_context
    return WebsocketsAdapter(**options)


@dataclass(frozen=True)
class AdapterKind:
    """One adapter class under test."""

    name: str
    build: AdapterFactory
    #: Most redirects followed in a row (A11).
    max_redirects: int


KINDS = [
    AdapterKind("websocket-client", build_websocket_client, max_redirects=3),
    AdapterKind("websockets", build_websockets, max_redirects=9),
]


@pytest.fixture(params=KINDS, ids=[kind.name for kind in KINDS])
def kind(request: pytest.FixtureRequest) -> AdapterKind:
    """Each adapter in turn."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def make_adapter(kind: AdapterKind) -> Iterator[AdapterFactory]:
    """Build adapters of the kind under test; every one is aborted after the test."""
    made: list[ConnectionAdapter] = []

    def make(**options: Any) -> ConnectionAdapter:
        adapter = kind.build(**options)
        made.append(adapter)
        return adapter

    yield make
    for adapter in made:
        adapter.abort()


@pytest.fixture
def adapter(make_adapter: AdapterFactory) -> ConnectionAdapter:
    """An adapter with default options."""
    return make_adapter()


def start_thread(target: Callable[[], None], name: str) -> threading.Thread:
    thread = threading.Thread(target=target, name=f"test-{name}", daemon=True)
    thread.start()
    return thread


def inside(thread: threading.Thread, function: str) -> bool:
    """Tell whether ``thread`` is running a wsengine adapter function named ``function``."""
    frame = sys._current_frames().get(thread.ident or -1)
    while frame is not None:
        if frame.f_code.co_name == function and "wsengine" in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


class ReaderThread:
    """Runs ``adapter.read(timeout)`` in a thread and keeps what it returned or raised."""

    def __init__(self, adapter: ConnectionAdapter, timeout: float | None) -> None:
        self.outcome: list[Any] = []
        self._adapter = adapter
        self._timeout = timeout
        self.thread = start_thread(self._run, "reader")

    def _run(self) -> None:
        try:
            self.outcome.append(self._adapter.read(self._timeout))
        except BaseException as error:
            self.outcome.append(error)


# -- opening handshake -------------------------------------------------------------------


def test_dial_returns_the_handshake_response(
    echo_server: WsServer, adapter: ConnectionAdapter
) -> None:
    """dial() returns status 101 and the headers, looked up case-insensitively."""
    response = adapter.dial(echo_server.url, 5)
    assert response.status == 101
    assert response.headers["UPGRADE"].lower() == "websocket"
    assert response.headers["sec-websocket-accept"]
    assert response.subprotocol is None


def test_dial_negotiates_a_subprotocol(make_adapter: AdapterFactory) -> None:
    """The subprotocol the server chose is reported."""
    with run_ws_server(echo_handler, subprotocols=["chat.v2"]) as server:
        conn = make_adapter(subprotocols=["chat.v1", "chat.v2"])
        assert conn.dial(server.url, 5).subprotocol == "chat.v2"
        conn.abort()


def test_options_reach_the_server(make_adapter: AdapterFactory) -> None:
    """Library options are passed through: an extra request header reaches the server."""
    seen: list[dict[str, str]] = []

    def record(conn: RawConnection) -> None:
        seen.append(conn.request_headers)
        conn.wait_eof(5)

    with RawServer(record) as server:
        conn = make_adapter(headers={"X-Tenant": "blue"})
        conn.dial(server.url, 5)
        wait_for(lambda: bool(seen))
        conn.abort()
    assert seen[0]["x-tenant"] == "blue"


def refusing(status: int, **headers: str) -> Callable[[ServerConnection, Request], Response]:
    """A process_request hook answering ``status`` with ``headers``."""

    def refuse(conn: ServerConnection, request: Request) -> Response:
        response = conn.respond(status, "no\n")
        for name, value in headers.items():
            response.headers[name.replace("_", "-")] = value
        return response

    return refuse


def test_http_403_raises_handshake_error_with_status(adapter: ConnectionAdapter) -> None:
    """A 403 is HandshakeError(status=403), without header values in the message."""
    refuse = refusing(403, X_Secret="hunter2")
    with (
        run_ws_server(echo_handler, process_request=refuse) as server,
        pytest.raises(HandshakeError) as info,
    ):
        adapter.dial(server.url, 5)
    assert info.value.status == 403
    assert info.value.retry_after is None
    assert "hunter2" not in str(info.value)
    assert info.value.__cause__ is None


def test_http_429_retry_after_seconds(adapter: ConnectionAdapter) -> None:
    """Retry-After in seconds on a 429 is reported as retry_after."""
    with (
        run_ws_server(echo_handler, process_request=refusing(429, Retry_After="7")) as server,
        pytest.raises(HandshakeError) as info,
    ):
        adapter.dial(server.url, 5)
    assert (info.value.status, info.value.retry_after) == (429, 7.0)


def test_http_503_retry_after_http_date(adapter: ConnectionAdapter) -> None:
    """Retry-After as an HTTP date on a 503 becomes the seconds until that date."""
    when = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    with (
        run_ws_server(echo_handler, process_request=refusing(503, Retry_After=when)) as server,
        pytest.raises(HandshakeError) as info,
    ):
        adapter.dial(server.url, 5)
    assert info.value.status == 503
    assert info.value.retry_after is not None
    assert 100 <= info.value.retry_after <= 121


def test_junk_instead_of_http_is_a_handshake_error(adapter: ConnectionAdapter) -> None:
    """A server answering with an SMTP banner fails the dial (A5)."""
    release = threading.Event()

    def smtp(conn: RawConnection) -> None:
        conn.send_raw(b"220 smtp.invalid ESMTP\r\n")
        release.wait(5)

    with RawServer(smtp, handshake=False) as server:
        try:
            with pytest.raises(HandshakeError) as info:
                adapter.dial(server.url, 5)
        finally:
            release.set()
    assert info.value.status is None


def test_bad_accept_key_is_a_handshake_error(adapter: ConnectionAdapter) -> None:
    """A 101 with a wrong Sec-WebSocket-Accept is HandshakeError(status=None) (A6)."""

    def bad_accept(conn: RawConnection) -> None:
        conn.read_request()
        conn.send_raw(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
            + accept_key("not-the-key").encode()
            + b"\r\n\r\n"
        )
        conn.wait_eof(5)

    with RawServer(bad_accept, handshake=False) as server, pytest.raises(HandshakeError) as info:
        adapter.dial(server.url, 5)
    assert info.value.status is None


def test_connection_dropped_mid_handshake(adapter: ConnectionAdapter) -> None:
    """A server closing TCP in the middle of its response is HandshakeError (A7)."""

    def drop(conn: RawConnection) -> None:
        conn.read_request()
        conn.send_raw(b"HTTP/1.1 101 Switching")
        conn.close()

    with RawServer(drop, handshake=False) as server, pytest.raises(HandshakeError) as info:
        adapter.dial(server.url, 5)
    assert info.value.status is None


def test_handshake_timeout_raises_timeout_error(adapter: ConnectionAdapter) -> None:
    """A server that never answers makes dial() raise the built-in TimeoutError in time."""
    release = threading.Event()

    def silent(conn: RawConnection) -> None:
        conn.read_request()
        release.wait(5)

    with RawServer(silent, handshake=False) as server:
        try:
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                adapter.dial(server.url, 0.3)
            assert time.monotonic() - started < 3
        finally:
            release.set()


def test_connection_refused_propagates_as_oserror(adapter: ConnectionAdapter) -> None:
    """No listener: the ConnectionRefusedError propagates for the engine to chain."""
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(ConnectionRefusedError):
        adapter.dial(f"ws://127.0.0.1:{port}/", 5)


def test_frame_in_the_same_segment_as_the_101_is_delivered(adapter: ConnectionAdapter) -> None:
    """A frame sent with the 101 response in one sendall is the first message (A12)."""

    def idle(conn: RawConnection) -> None:
        conn.wait_eof(5)

    with RawServer(idle, response_extra=server_frame(0x1, b"early bird")) as server:
        adapter.dial(server.url, 5)
        assert adapter.read(5) == Message(TEXT, "early bird")


def redirecting(target: Callable[[], str]) -> Callable[[ServerConnection, Request], Response]:
    """A process_request hook answering 302 with ``Location: target()``."""

    def redirect(conn: ServerConnection, request: Request) -> Response:
        response = conn.respond(302, "moved\n")
        response.headers["Location"] = target()
        return response

    return redirect


def test_redirect_is_followed(echo_server: WsServer, adapter: ConnectionAdapter) -> None:
    """A 302 to another websocket server is followed: both adapters do (A11)."""
    with run_ws_server(echo_handler, process_request=redirecting(lambda: echo_server.url)) as hop:
        assert adapter.dial(hop.url, 5).status == 101
    # Only the echo server answers: the hop refuses every upgrade with its 302.
    adapter.write("landed")
    assert adapter.read(5) == Message(TEXT, "landed")
    assert echo_server.connections


def test_redirect_loop_is_a_handshake_error(
    kind: AdapterKind, make_adapter: AdapterFactory
) -> None:
    """Redirects are followed up to the adapter's default limit (websocket-client: 3;
    websockets: 9, as websockets' own client, which makes 10 requests at most), then the
    dial fails with HandshakeError(status=None) (A11)."""
    marker = f"loop-{time.monotonic_ns()}"
    hops: list[str | None] = []
    urls: list[str] = []

    def again(conn: ServerConnection, request: Request) -> Response:
        hops.append(request.headers.get("X-Test-Run"))
        response = conn.respond(302, "again\n")
        response.headers["Location"] = urls[0]
        return response

    with run_ws_server(echo_handler, process_request=again) as loop:
        urls.append(loop.url)
        with pytest.raises(HandshakeError) as info:
            make_adapter(headers={"X-Test-Run": marker}).dial(loop.url, 10)
    assert info.value.status is None
    # Counted by marker: a stray client of another process may land on a reused port.
    assert hops.count(marker) == kind.max_redirects + 1


# -- TLS ---------------------------------------------------------------------------------


def test_tls_untrusted_certificate_is_refused(
    wss_echo_server: WsServer, adapter: ConnectionAdapter
) -> None:
    """By default certificates are verified: a self-signed server fails the dial (A8)."""
    with pytest.raises(ssl.SSLCertVerificationError):
        adapter.dial(wss_echo_server.url, 5)


def test_tls_with_the_ca_trusted_through_the_adapter_options(
    tls: TlsMaterial, wss_echo_server: WsServer, make_adapter: AdapterFactory
) -> None:
    """Trusting the CA with the adapter's own TLS option makes wss:// work."""
    conn = make_adapter(tls=tls)
    conn.dial(wss_echo_server.url, 5)
    conn.write("secure")
    assert conn.read(5) == Message(TEXT, "secure")
    conn.close(timeout=5)


def test_tls_peer_vanishing_is_1006(tls: TlsMaterial, make_adapter: AdapterFactory) -> None:
    """A TLS server that drops TCP without close_notify gives 1006 (B26)."""

    def vanish(ws: ServerConnection) -> None:
        ws.recv()
        ws.socket.shutdown(socket.SHUT_RDWR)

    with run_ws_server(vanish, ssl=tls.server_context) as server:
        conn = make_adapter(tls=tls)
        conn.dial(server.url, 5)
        conn.write("bye")
        with pytest.raises(ConnectionClosedError) as info:
            conn.read(5)
        assert info.value.code == 1006


# -- data --------------------------------------------------------------------------------


def test_text_and_binary_round_trip(echo_server: WsServer, adapter: ConnectionAdapter) -> None:
    """str goes out as TEXT and bytes-likes as BINARY, and come back with their type."""
    adapter.dial(echo_server.url, 5)
    # bytearray and memoryview are bytes-like: accepted although the hint says bytes.
    sent: list[Any] = ["héllo", b"\x00\x01", bytearray(b"ba"), memoryview(b"mv"), "", b""]
    for data in sent:
        adapter.write(data)
    received = [adapter.read(5) for _ in range(6)]
    assert received == [
        Message(TEXT, "héllo"),
        Message(BINARY, b"\x00\x01"),
        Message(BINARY, b"ba"),
        Message(BINARY, b"mv"),
        Message(TEXT, ""),
        Message(BINARY, b""),
    ]
    assert all(type(m.data) is (str if m.type is TEXT else bytes) for m in received if m)


def test_write_rejects_other_types(echo_server: WsServer, adapter: ConnectionAdapter) -> None:
    """write() raises TypeError for data that is neither str nor bytes."""
    adapter.dial(echo_server.url, 5)
    with pytest.raises(TypeError):
        adapter.write(42)  # type: ignore[arg-type]


def test_fragmented_message_is_returned_whole(adapter: ConnectionAdapter) -> None:
    """Fragments, text split inside a character included, come out as one message."""
    snowman = "☃".encode()

    def fragments(conn: RawConnection) -> None:
        conn.send_raw(
            server_frame(0x1, b"a" + snowman[:1], fin=False)
            + server_frame(0x0, snowman[1:], fin=False)
            + server_frame(0x0, b"", fin=False)
            + server_frame(0x0, b"z")
            + server_frame(0x2, b"\x01", fin=False)
            + server_frame(0x0, b"\x02")
        )
        conn.wait_eof(5)

    with RawServer(fragments) as server:
        adapter.dial(server.url, 5)
        assert adapter.read(5) == Message(TEXT, "a☃z")
        assert adapter.read(5) == Message(BINARY, b"\x01\x02")


def test_read_timeout_returns_none(echo_server: WsServer, adapter: ConnectionAdapter) -> None:
    """read() returns None when nothing arrives within the timeout."""
    adapter.dial(echo_server.url, 5)
    started = time.monotonic()
    assert adapter.read(0.1) is None
    assert 0.09 <= time.monotonic() - started < 2


@pytest.mark.parametrize("split", ["mid-frame", "between-fragments"])
def test_read_timeout_mid_message_loses_nothing(adapter: ConnectionAdapter, split: str) -> None:
    """A read timing out on part of a message resumes it whole on the next read (B8)."""
    payload = bytes(range(200)) * 10
    if split == "mid-frame":
        frame = server_frame(0x2, payload)
        first, rest = frame[:1000], frame[1000:]
    else:
        first = server_frame(0x2, payload[:700], fin=False)
        rest = server_frame(0x0, payload[700:])
    first_sent = threading.Event()
    send_rest = threading.Event()

    def halves(conn: RawConnection) -> None:
        conn.send_raw(first)
        first_sent.set()
        send_rest.wait(5)
        conn.send_raw(rest)
        conn.wait_eof(5)

    with RawServer(halves) as server:
        adapter.dial(server.url, 5)
        assert first_sent.wait(5)
        assert adapter.read(0.2) is None
        send_rest.set()
        assert adapter.read(5) == Message(BINARY, payload)


def test_max_size_none_accepts_a_16_mib_message(make_adapter: AdapterFactory) -> None:
    """With max_size=None a 16 MiB message goes out and back intact (B25)."""
    payload = bytes(range(256)) * (16 * 4096)
    with run_ws_server(echo_handler, max_size=None) as server:
        conn = make_adapter(max_size=None)
        conn.dial(server.url, 5)
        conn.write(payload)
        message = conn.read(30)
        conn.abort()
        assert message is not None
        assert message.data == payload


def test_message_over_max_size_is_1009(echo_server: WsServer, make_adapter: AdapterFactory) -> None:
    """A real server's message of max_size + 1 bytes fails the connection with 1009 (B13)."""
    conn = make_adapter(max_size=1024)
    conn.dial(echo_server.url, 5)
    conn.write(b"x" * 1024)
    assert conn.read(5) == Message(BINARY, b"x" * 1024)
    conn.write(b"x" * 1025)
    with pytest.raises(ProtocolError) as info:
        conn.read(5)
    assert info.value.code == 1009
    wait_for(lambda: server_close_code(echo_server) == 1009)


# -- control frames ----------------------------------------------------------------------


def test_pong_moves_last_received(echo_server: WsServer, adapter: ConnectionAdapter) -> None:
    """ping() does not wait; the server's pong moves last_received (the engine's
    keepalive relies on it) while the reader waits."""
    adapter.dial(echo_server.url, 5)
    before = time.monotonic()
    adapter.ping(b"rtt")
    wait_for(lambda: adapter.read(0.01) is None and adapter.last_received >= before)


def test_ping_payload_over_125_bytes_is_refused(
    echo_server: WsServer, adapter: ConnectionAdapter
) -> None:
    """ping() with a 126-byte payload raises ValueError."""
    adapter.dial(echo_server.url, 5)
    with pytest.raises(ValueError):
        adapter.ping(b"x" * 126)


def test_repeated_pings_without_pongs_are_sent(adapter: ConnectionAdapter) -> None:
    """ping() twice with the same payload, no pong in between, sends two pings."""
    pings: list[tuple[bool, int, bytes]] = []

    def no_pong(conn: RawConnection) -> None:
        pings.extend(conn.recv_frame(5) for _ in range(2))
        conn.wait_eof(5)

    with RawServer(no_pong) as server:
        adapter.dial(server.url, 5)
        adapter.ping()
        adapter.ping()
        wait_for(lambda: len(pings) == 2)
    assert pings == [(True, 0x9, b"")] * 2


def test_server_ping_is_answered(adapter: ConnectionAdapter) -> None:
    """A server's ping is answered with a pong carrying its payload."""

    def pinger(ws: ServerConnection) -> None:
        pong = ws.ping(b"are you there")
        ws.send("pong received" if pong.wait(5) else "no pong")

    with run_ws_server(pinger) as server:
        adapter.dial(server.url, 5)
        assert adapter.read(5) == Message(TEXT, "pong received")
        adapter.close(timeout=5)


def test_ping_inside_a_fragmented_message_is_answered_at_once(adapter: ConnectionAdapter) -> None:
    """The pong goes out before the fragmented message completes, which stays intact (B16)."""
    pongs: list[tuple[bool, int, bytes]] = []

    def fragmented(conn: RawConnection) -> None:
        conn.send_frame(0x1, b"Hello, ", fin=False)
        conn.send_frame(0x9, b"mid-message")
        pongs.append(conn.recv_frame(5))
        conn.send_frame(0x0, b"world!")
        conn.wait_eof(5)

    with RawServer(fragmented) as server:
        adapter.dial(server.url, 5)
        assert adapter.read(5) == Message(TEXT, "Hello, world!")
    assert pongs == [(True, 0xA, b"mid-message")]


# -- closing -----------------------------------------------------------------------------


def test_client_close_handshake(echo_server: WsServer, adapter: ConnectionAdapter) -> None:
    """close() sends its code and reason, gets the reply, and later calls raise."""
    adapter.dial(echo_server.url, 5)
    adapter.close(4001, "done here", timeout=5)
    wait_for(lambda: server_close_code(echo_server) == 4001)
    assert echo_server.connections[0].close_reason == "done here"
    calls: list[Callable[[], object]] = [
        lambda: adapter.read(1),
        lambda: adapter.write("late"),
        lambda: adapter.ping(),
    ]
    for call in calls:
        with pytest.raises(ConnectionClosedError) as info:
            call()
        assert info.value.code == 4001


def test_close_rejects_codes_not_legal_on_the_wire(
    echo_server: WsServer, adapter: ConnectionAdapter
) -> None:
    """close(1005) and other reserved codes raise ConfigError and leave the connection open."""
    adapter.dial(echo_server.url, 5)
    for code in (1005, 1006, 1015, 999, 5000):
        with pytest.raises(ConfigError):
            adapter.close(code)
    adapter.write("still open")
    assert adapter.read(5) == Message(TEXT, "still open")


def test_close_reason_is_cut_at_a_character_boundary(
    echo_server: WsServer, adapter: ConnectionAdapter
) -> None:
    """A reason over 123 bytes of UTF-8 is cut without splitting a character."""
    adapter.dial(echo_server.url, 5)
    adapter.close(1000, "é" * 100, timeout=5)
    wait_for(lambda: server_close_code(echo_server) is not None)
    assert echo_server.connections[0].close_reason == "é" * 61


def test_close_and_abort_are_idempotent(echo_server: WsServer, adapter: ConnectionAdapter) -> None:
    """close() and abort() may be called again, in any order, without effect or error."""
    adapter.dial(echo_server.url, 5)
    adapter.close(1000, timeout=5)
    adapter.close(1001, timeout=5)
    adapter.abort()
    adapter.abort()
    adapter.close()
    wait_for(lambda: server_close_code(echo_server) == 1000)


def test_server_close_is_reported_with_its_code(adapter: ConnectionAdapter) -> None:
    """The server's close code and reason come out of read(); the reply echoes the code."""

    def closer(ws: ServerConnection) -> None:
        ws.close(4000, "maintenance")

    with run_ws_server(closer) as server:
        adapter.dial(server.url, 5)
        with pytest.raises(ConnectionClosedError) as info:
            adapter.read(5)
        assert (info.value.code, info.value.reason) == (4000, "maintenance")
        assert not isinstance(info.value, ProtocolError)
        adapter.close(timeout=5)
        wait_for(lambda: server_close_code(server) == 4000)
    with pytest.raises(ConnectionClosedError) as later:
        adapter.read(1)
    assert later.value.code == 4000


def test_empty_close_is_1005_and_never_sent_back(adapter: ConnectionAdapter) -> None:
    """An empty close reads as 1005; the reply is an empty close, never 1005 (B17)."""
    replies: list[tuple[int | None, str]] = []

    def empty_close(conn: RawConnection) -> None:
        conn.send_frame(0x8, b"")
        replies.append(conn.expect_close(5))

    with RawServer(empty_close) as server:
        adapter.dial(server.url, 5)
        with pytest.raises(ConnectionClosedError) as info:
            adapter.read(5)
        assert info.value.code == 1005
        adapter.close(timeout=2)
    assert replies == [(None, "")]


def test_close_in_the_middle_of_a_fragmented_message(adapter: ConnectionAdapter) -> None:
    """A close frame between two fragments ends the connection cleanly: the half message
    is dropped and the close code echoed (Autobahn 7.1.5)."""
    replies: list[tuple[int | None, str]] = []

    def close_mid_message(conn: RawConnection) -> None:
        conn.send_raw(server_frame(0x1, b"fragment1", fin=False) + close_frame(1000))
        replies.append(conn.expect_close(5))
        conn.send_frame(0x0, b"fragment2")

    with RawServer(close_mid_message) as server:
        adapter.dial(server.url, 5)
        with pytest.raises(ConnectionClosedError) as info:
            adapter.read(5)
        assert info.value.code == 1000
        assert not isinstance(info.value, ProtocolError)
        adapter.close(timeout=2)
    assert replies == [(1000, "")]


def test_server_keeping_tcp_open_after_close_is_cut_off(adapter: ConnectionAdapter) -> None:
    """After the server's close, close() drops TCP within its timeout (B19)."""
    closed_by_client: list[bool] = []

    def no_fin(conn: RawConnection) -> None:
        conn.send_frame(0x8, struct.pack("!H", 1000))
        conn.expect_close(5)
        closed_by_client.append(conn.wait_eof(5))

    with RawServer(no_fin) as server:
        adapter.dial(server.url, 5)
        with pytest.raises(ConnectionClosedError):
            adapter.read(5)
        started = time.monotonic()
        adapter.close(timeout=0.3)
        assert time.monotonic() - started < 1.5
        wait_for(lambda: bool(closed_by_client))
    assert closed_by_client == [True]


def test_data_after_close_is_ignored(adapter: ConnectionAdapter) -> None:
    """A message before the close is delivered; one after it never is (B20)."""

    def late(conn: RawConnection) -> None:
        conn.send_raw(
            server_frame(0x1, b"before") + close_frame(1000) + server_frame(0x1, b"after")
        )
        conn.expect_close(5)
        conn.send_frame(0x1, b"much later")
        conn.wait_eof(5)

    with RawServer(late) as server:
        adapter.dial(server.url, 5)
        assert adapter.read(5) == Message(TEXT, "before")
        for _ in range(2):
            with pytest.raises(ConnectionClosedError) as info:
                adapter.read(0.2)
            assert info.value.code == 1000


def test_dropped_tcp_is_1006(adapter: ConnectionAdapter) -> None:
    """A server closing TCP without a close frame makes read and write raise 1006."""

    def drop(conn: RawConnection) -> None:
        conn.close()

    with RawServer(drop) as server:
        adapter.dial(server.url, 5)
        with pytest.raises(ConnectionClosedError) as info:
            adapter.read(5)
        assert info.value.code == 1006
        with pytest.raises(ConnectionClosedError) as later:
            adapter.write("into the void")
        assert later.value.code == 1006


def test_connection_reset_is_1006(adapter: ConnectionAdapter) -> None:
    """A TCP reset is ConnectionClosedError(1006), never a ConnectionResetError."""

    def reset(conn: RawConnection) -> None:
        conn.recv_frame(5)
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    with RawServer(reset) as server:
        adapter.dial(server.url, 5)
        adapter.write("trigger")
        with pytest.raises(ConnectionClosedError) as info:
            adapter.read(5)
        assert info.value.code == 1006


# -- protocol violations -----------------------------------------------------------------

VIOLATIONS: list[tuple[str, bytes, int]] = [
    ("rsv1", server_frame(0x1, b"x", rsv=4), 1002),
    ("rsv3-on-ping", server_frame(0x9, b"x", rsv=1), 1002),
    ("opcode-3", server_frame(0x3, b""), 1002),
    ("opcode-0xB", server_frame(0xB, b""), 1002),
    ("fragmented-ping", server_frame(0x9, b"x", fin=False), 1002),
    ("ping-126", server_frame(0x9, b"x" * 126), 1002),
    ("masked", server_frame(0x1, b"x", mask=True), 1002),
    ("continuation-first", server_frame(0x0, b"x"), 1002),
    ("data-inside-fragments", server_frame(0x1, b"a", fin=False) + server_frame(0x1, b"b"), 1002),
    ("close-1-byte", server_frame(0x8, b"\x03"), 1002),
    *[
        (f"close-code-{code}", close_frame(code), 1002)
        for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000)
    ],
    ("close-reason-not-utf8", close_frame(1000, b"\xff"), 1007),
    ("invalid-utf8", server_frame(0x1, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xff"), 1007),
    (
        "invalid-utf8-across-fragments",
        server_frame(0x1, b"\xce", fin=False) + server_frame(0x0, b"A"),
        1007,
    ),
    ("truncated-utf8", server_frame(0x1, b"ok\xe2\x82"), 1007),
    # The message never ends: only validating each fragment as it comes catches it.
    (
        "invalid-utf8-fails-fast",
        server_frame(0x1, b"ok", fin=False) + server_frame(0x0, b"\xff", fin=False),
        1007,
    ),
    ("header-2-62", bytes((0x82, 127)) + struct.pack("!Q", 2**62), 1009),
]


@pytest.mark.parametrize(
    ("bad", "code"), [(v[1], v[2]) for v in VIOLATIONS], ids=[v[0] for v in VIOLATIONS]
)
def test_protocol_violation_fails_the_connection(
    adapter: ConnectionAdapter, bad: bytes, code: int
) -> None:
    """The adapter sends close ``code`` and raises ProtocolError, also on later reads; TCP
    is closed once the server closed its side (B13-B15, B18)."""
    sent: list[int | None] = []

    def violate(conn: RawConnection) -> None:
        conn.send_raw(bad)
        sent.append(conn.expect_close(5)[0])
        # Then the server closes TCP, as RFC 6455 7.1.1 says it should.

    with RawServer(violate) as server:
        adapter.dial(server.url, 5)
        with pytest.raises(ProtocolError) as info:
            adapter.read(5)
        assert info.value.code == code
        wait_for(lambda: bool(sent))
        with pytest.raises(ProtocolError) as later:
            adapter.read(1)
        assert later.value.code == code
        with pytest.raises(ConnectionClosedError):
            adapter.write("after the failure")
        adapter.close(timeout=2)
    assert sent == [code]


def test_messages_before_a_violation_are_delivered(adapter: ConnectionAdapter) -> None:
    """Messages that arrived before a bad frame are returned before the error."""

    def good_then_bad(conn: RawConnection) -> None:
        conn.send_raw(server_frame(0x1, b"ok 1") + server_frame(0x1, b"ok 2") + b"\xf3\x00")
        conn.expect_close(5)

    with RawServer(good_then_bad) as server:
        adapter.dial(server.url, 5)
        assert adapter.read(5) == Message(TEXT, "ok 1")
        assert adapter.read(5) == Message(TEXT, "ok 2")
        with pytest.raises(ProtocolError) as info:
            adapter.read(5)
        assert info.value.code == 1002


# -- concurrency -------------------------------------------------------------------------


def test_concurrent_writers_arrive_intact(
    echo_server: WsServer, adapter: ConnectionAdapter
) -> None:
    """8 threads x 500 messages all come back intact, each thread's in order."""
    adapter.dial(echo_server.url, 5)
    errors: list[BaseException] = []

    def writer(index: int) -> Callable[[], None]:
        def run() -> None:
            try:
                for seq in range(500):
                    adapter.write(f"{index}:{seq}:" + "p" * (seq % 300))
            except BaseException as error:
                errors.append(error)

        return run

    threads = [start_thread(writer(i), f"writer-{i}") for i in range(8)]
    received: dict[int, list[int]] = {i: [] for i in range(8)}
    deadline = time.monotonic() + 30
    total = 0
    while total < 4000 and time.monotonic() < deadline:
        message = adapter.read(1)
        if message is None:
            continue
        index, seq, padding = str(message.data).split(":")
        assert padding == "p" * (int(seq) % 300)
        received[int(index)].append(int(seq))
        total += 1
    for thread in threads:
        thread.join(5)
    assert errors == []
    assert all(seqs == list(range(500)) for seqs in received.values())


@pytest.mark.parametrize("how", ["abort", "close"])
def test_closing_unblocks_a_blocked_reader(
    echo_server: WsServer, adapter: ConnectionAdapter, how: str
) -> None:
    """abort() or close() from another thread makes a read(None) raise, promptly."""
    adapter.dial(echo_server.url, 5)
    reader = ReaderThread(adapter, None)
    thread = reader.thread
    wait_for(lambda: inside(thread, "read"))
    started = time.monotonic()
    if how == "abort":
        adapter.abort()
    else:
        adapter.close(1000, timeout=5)
    thread.join(5)
    assert not thread.is_alive()
    assert time.monotonic() - started < 3
    outcome = reader.outcome
    assert len(outcome) == 1
    assert isinstance(outcome[0], ConnectionClosedError)
    assert outcome[0].code == (1006 if how == "abort" else 1000)
    if how == "close":
        wait_for(lambda: server_close_code(echo_server) == 1000)


def test_abort_unblocks_a_writer_blocked_on_a_full_window(adapter: ConnectionAdapter) -> None:
    """A writer stuck on a peer that does not read raises soon after abort() (B22)."""
    release = threading.Event()
    outcome: list[BaseException | None] = []

    def not_reading(conn: RawConnection) -> None:
        release.wait(10)

    def writer() -> None:
        try:
            adapter.write(b"\x00" * (32 * 2**20))
            outcome.append(None)
        except BaseException as error:
            outcome.append(error)

    with RawServer(not_reading) as server:
        try:
            adapter.dial(server.url, 5)
            thread = start_thread(writer, "blocked-writer")
            wait_for(lambda: inside(thread, "write"))
            started = time.monotonic()
            adapter.abort()
            thread.join(5)
            assert time.monotonic() - started < 2
            assert not thread.is_alive()
        finally:
            release.set()
    assert len(outcome) == 1
    assert isinstance(outcome[0], ConnectionClosedError)


# -- reuse -------------------------------------------------------------------------------


def test_adapter_is_reusable_after_close_and_abort(
    echo_server: WsServer, adapter: ConnectionAdapter
) -> None:
    """dial() after close() or abort() opens a fresh, working connection."""
    for finish in ("close", "abort", "close"):
        adapter.dial(echo_server.url, 5)
        adapter.write(finish)
        assert adapter.read(5) == Message(TEXT, finish)
        if finish == "close":
            adapter.close(timeout=5)
        else:
            adapter.abort()
        with pytest.raises(ConnectionClosedError):
            adapter.write("closed")
    # At least: a stray client of another process may land on a reused port too.
    wait_for(lambda: len(echo_server.connections) >= 3)


def test_dial_on_an_open_connection_replaces_it(
    echo_server: WsServer, adapter: ConnectionAdapter
) -> None:
    """dial() while connected drops the old connection and opens a new one."""
    adapter.dial(echo_server.url, 5)
    adapter.dial(echo_server.url, 5)
    adapter.write("second")
    assert adapter.read(5) == Message(TEXT, "second")
    # The server records connections when their handlers start: in either order.
    wait_for(lambda: len(echo_server.connections) >= 2)
    wait_for(lambda: any(c.close_code is not None for c in echo_server.connections))


def test_not_connected_adapter_raises(adapter: ConnectionAdapter) -> None:
    """Before dial, reads and writes raise ConnectionClosedError; close/abort are no-ops."""
    with pytest.raises(ConnectionClosedError):
        adapter.read(0.01)
    with pytest.raises(ConnectionClosedError):
        adapter.write("x")
    with pytest.raises(ConnectionClosedError):
        adapter.read_available(1)
    assert adapter.wait_readable(0) is True
    assert adapter.has_pending_data() is False
    adapter.close()
    adapter.abort()


def test_invalid_max_size_is_a_config_error(kind: AdapterKind) -> None:
    """max_size must be a positive int or None."""
    for bad in (0, -1, 1.5, True, "1"):
        with pytest.raises(ConfigError):
            kind.build(max_size=bad)


# -- the engine's fast path ----------------------------------------------------------------


def test_read_available_returns_a_batch_without_blocking(
    echo_server: WsServer, adapter: ConnectionAdapter
) -> None:
    """read_available gives up to max_messages at once, and [] at once when none is in."""
    adapter.dial(echo_server.url, 5)
    started = time.monotonic()
    assert adapter.read_available(10) == []
    assert time.monotonic() - started < 0.5
    for i in range(20):
        adapter.write(str(i))
    got: list[Message] = []
    deadline = time.monotonic() + 5
    while len(got) < 20 and time.monotonic() < deadline:
        if adapter.wait_readable(1.0):
            batch = adapter.read_available(7)
            assert len(batch) <= 7
            got += batch
    assert [m.data for m in got] == [str(i) for i in range(20)]


def test_wait_readable_times_out_and_wakes(
    echo_server: WsServer, adapter: ConnectionAdapter
) -> None:
    """wait_readable is False on timeout, returns early on wake_reader, True on data."""
    adapter.dial(echo_server.url, 5)
    assert adapter.wait_readable(0.05) is False
    waiter_done = threading.Event()

    def waiter() -> None:
        adapter.wait_readable(10)
        waiter_done.set()

    thread = start_thread(waiter, "waiter")
    wait_for(lambda: inside(thread, "wait_readable"))
    adapter.wake_reader()
    assert waiter_done.wait(5)
    thread.join(5)
    adapter.write("ready")
    assert adapter.wait_readable(5) is True
    assert adapter.read_available(5) == [Message(TEXT, "ready")]


def test_wait_readable_is_true_while_messages_are_left(adapter: ConnectionAdapter) -> None:
    """After reading one of two messages sent together, wait_readable is True at once."""

    def burst(conn: RawConnection) -> None:
        conn.send_raw(server_frame(0x1, b"one") + server_frame(0x1, b"two"))
        conn.wait_eof(5)

    with RawServer(burst) as server:
        adapter.dial(server.url, 5)
        assert adapter.read(5) == Message(TEXT, "one")
        started = time.monotonic()
        assert adapter.wait_readable(5) is True
        assert time.monotonic() - started < 1
        assert adapter.read_available(10) == [Message(TEXT, "two")]


def test_wait_readable_returns_when_the_peer_closes(adapter: ConnectionAdapter) -> None:
    """A close frame from the peer ends a wait_readable(None), and read_available raises."""
    closing = threading.Event()

    def closer(conn: RawConnection) -> None:
        closing.wait(5)
        conn.send_raw(close_frame(1001, b"bye"))
        conn.expect_close(5)

    with RawServer(closer) as server:
        adapter.dial(server.url, 5)
        done = threading.Event()

        def waiter() -> None:
            adapter.wait_readable(None)
            done.set()

        thread = start_thread(waiter, "waiter")
        wait_for(lambda: inside(thread, "wait_readable"))
        closing.set()
        assert done.wait(5)
        thread.join(5)
        with pytest.raises(ConnectionClosedError) as info:
            adapter.read_available(10)
        assert (info.value.code, info.value.reason) == (1001, "bye")


def test_a_reader_by_hand_is_served_while_the_engine_waits(adapter: ConnectionAdapter) -> None:
    """With the engine's reader blocked in wait_readable, a user reading by hand (under
    the pause lock) gets the next message as soon as it comes."""
    send = threading.Event()

    def answer_later(conn: RawConnection) -> None:
        send.wait(5)
        conn.send_frame(0x1, b"for the user")
        conn.wait_eof(5)

    with RawServer(answer_later) as server:
        adapter.dial(server.url, 5)

        def engine_reader() -> None:
            adapter.wait_readable(10)

        thread = start_thread(engine_reader, "engine-reader")
        wait_for(lambda: inside(thread, "wait_readable"))
        send.set()
        started = time.monotonic()
        assert adapter.read(5) == Message(TEXT, "for the user")
        assert time.monotonic() - started < 1
        adapter.wake_reader()
        thread.join(5)
        assert not thread.is_alive()


# -- regressions under load and stalls (issue 16) -------------------------------------------

MIB = 2**20


def read_all(
    adapter: ConnectionAdapter, count: int, deadline: float, out: list[Message]
) -> Callable[[], None]:
    """A reader loop for a thread: ``count`` messages into ``out`` before ``deadline``."""

    def run() -> None:
        while len(out) < count and time.monotonic() < deadline:
            message = adapter.read(0.5)
            if message is not None:
                out.append(message)

    return run


def test_one_thread_sending_200_mib_to_an_echo_server_gets_all_back(
    make_adapter: AdapterFactory,
) -> None:
    """Issue 16 defect 3, RELIABILITY E3: 200 x 1 MiB sent by one thread while another
    reads all come back intact and in order, within a deadline; the keepalive's pings
    keep being answered meanwhile (the pong is not stuck behind the load)."""
    count = 200
    # No compression: the load is in bytes on the wire, windows filling up.
    with run_ws_server(echo_handler, compression=None) as server:
        conn = make_adapter()
        conn.dial(server.url, 5)
        deadline = time.monotonic() + 45
        received: list[Message] = []
        reader = start_thread(read_all(conn, count, deadline, received), "reader")
        errors: list[BaseException] = []
        pongs: list[float] = []
        sending = threading.Event()
        sending.set()

        def ping_while_sending() -> None:
            # The keepalive's view: each ping sent while the load runs.
            while sending.is_set() and time.monotonic() < deadline:
                try:
                    conn.ping()
                except ConnectionClosedError:
                    return
                pongs.append(float(getattr(conn, "last_pong", 0.0)))
                reader.join(0.1)

        pinger = start_thread(ping_while_sending, "pinger")
        filler = b"\xa5" * (MIB - 8)
        try:
            for seq in range(count):
                conn.write(struct.pack("!Q", seq) + filler)
        except BaseException as error:
            errors.append(error)
        reader.join(max(0.0, deadline - time.monotonic()) + 1)
        sending.clear()
        pinger.join(5)
        alive = reader.is_alive()
        conn.abort()
        reader.join(5)
    assert errors == []
    assert not alive, f"deadlock: {len(received)} of {count} echoed in time"
    assert len(received) == count
    for seq, message in enumerate(received):
        assert message.type is BINARY
        assert message.data == struct.pack("!Q", seq) + filler
    # Pongs kept coming while the load ran: last_pong moved more than once.
    assert len(set(pongs)) >= 3


def test_eight_threads_sending_up_to_1_mib_to_an_echo_server_get_all_back(
    make_adapter: AdapterFactory,
) -> None:
    """Issue 16 defect 3, RELIABILITY E3: 8 threads x 10 rounds of 1 B-1 MiB messages
    come back intact, each thread's in order, with no deadlock."""
    threads_count, rounds = 8, 10
    rng = random.Random(16)
    sizes = [[rng.randint(1, MIB) for _ in range(rounds)] for _ in range(threads_count)]

    def payload(index: int, seq: int) -> bytes:
        size = sizes[index][seq]
        head = struct.pack("!BB", index, seq)[:size]
        return head + bytes([(index * rounds + seq) & 0xFF]) * (size - len(head))

    # No compression: the load is in bytes on the wire, windows filling up.
    with run_ws_server(echo_handler, compression=None) as server:
        conn = make_adapter()
        conn.dial(server.url, 5)
        deadline = time.monotonic() + 40
        received: list[Message] = []
        total = threads_count * rounds
        reader = start_thread(read_all(conn, total, deadline, received), "reader")
        errors: list[BaseException] = []

        def writer(index: int) -> Callable[[], None]:
            def run() -> None:
                try:
                    for seq in range(rounds):
                        conn.write(payload(index, seq))
                except BaseException as error:
                    errors.append(error)

            return run

        writers = [start_thread(writer(i), f"writer-{i}") for i in range(threads_count)]
        for thread in writers:
            thread.join(max(0.0, deadline - time.monotonic()) + 1)
        reader.join(max(0.0, deadline - time.monotonic()) + 1)
        stuck = [t.name for t in [*writers, reader] if t.is_alive()]
        conn.abort()
        for thread in [*writers, reader]:
            thread.join(5)
    assert errors == []
    assert stuck == [], f"deadlock: {len(received)} of {total} echoed in time"
    by_thread: dict[int, list[int]] = {i: [] for i in range(threads_count)}
    for message in received:
        data = message.data
        assert isinstance(data, bytes)
        if len(data) == 1:
            # Too short for a header: find the one message it can be.
            matches = [(i, s) for i in range(threads_count) for s in range(rounds)
                       if sizes[i][s] == 1 and payload(i, s) == data]
            assert matches
            continue
        index, seq = data[0], data[1]
        assert data == payload(index, seq)
        by_thread[index].append(seq)
    assert len(received) == total
    for index, seqs in by_thread.items():
        expected = [s for s in range(rounds) if sizes[index][s] > 1]
        assert seqs == expected


def test_reading_goes_on_while_a_write_is_blocked(adapter: ConnectionAdapter) -> None:
    """Issue 16 defect 3, the cause, made deterministic: with a writer blocked on a peer
    that does not read, the reader still gets the message the peer sends meanwhile (a
    library holding one mutex across its sendall and its reads deadlocks an echo server
    under load; on loopback the load tests above hit it only now and then)."""
    send_now = threading.Event()
    release = threading.Event()
    outcome: list[BaseException | None] = []

    def not_reading(conn: RawConnection) -> None:
        send_now.wait(10)
        # The write's bytes are arriving: the writer is in its send (64 MiB cannot fit in
        # the socket buffers), holding whatever it holds while it sends.
        select.select([conn.sock], [], [], 10)
        conn.send_frame(0x1, b"while you write")
        release.wait(10)

    def writer() -> None:
        try:
            adapter.write(b"\x00" * (64 * MIB))
            outcome.append(None)
        except BaseException as error:
            outcome.append(error)

    with RawServer(not_reading) as server:
        try:
            adapter.dial(server.url, 5)
            thread = start_thread(writer, "blocked-writer")
            wait_for(lambda: inside(thread, "write"))
            send_now.set()
            started = time.monotonic()
            assert adapter.read(5) == Message(TEXT, "while you write")
            assert time.monotonic() - started < 2
            assert thread.is_alive()  # still blocked: the peer reads nothing
        finally:
            adapter.abort()
            release.set()
        thread.join(5)
    assert len(outcome) == 1
    assert isinstance(outcome[0], ConnectionClosedError)


def test_peer_stalling_mid_frame_is_1006_within_the_keepalive(kind: AdapterKind) -> None:
    """Issue 16 defect 4, RELIABILITY E4: a peer that sends half a frame and then stays
    silent, TCP open, is declared dead (1006) within ping_interval + ping_timeout: bytes of
    a partial frame are no sign of life."""
    release = threading.Event()
    half_sent = threading.Event()
    half_frame = server_frame(0x2, b"z" * 1000)[:500]

    def stall(conn: RawConnection) -> None:
        conn.send_raw(half_frame)
        half_sent.set()
        release.wait(15)

    client = Recorder()
    config = fast(ping_interval=0.5, ping_timeout=0.5, auto_reconnect=False)
    with RawServer(stall) as server:
        engine = WebsocketEngine(server.url, client, adapter=kind.build(), config=config)
        try:
            engine.start()
            assert half_sent.wait(5)
            started = time.monotonic()
            client.wait_count("close", 1, timeout=6)
            took = time.monotonic() - started
        finally:
            release.set()
            stop_and_check(engine)
    close = client.details("close")[0]
    assert isinstance(close, CloseMessage)
    assert close.code == 1006
    assert client.messages == []
    # 0.5 + 0.5, plus scheduling slack on a loaded machine.
    assert took < 1.0 + 1.0


def open_fds() -> int | None:
    """File descriptors this process holds (None where /proc is not available)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def test_stop_during_a_slow_handshake_then_start_is_never_served_by_the_old_dial(
    kind: AdapterKind,
) -> None:
    """Issue 16 defect 9, RELIABILITY E9: stop() while the server holds its 101 back, then
    start() again. The old server answers (101 and a message) once the new dial is under
    way: the new session gets only the new connection's message, no spurious close, and
    no socket is left open."""
    old_requested = threading.Event()
    new_requested = threading.Event()
    old_answered = threading.Event()
    old_outcome: list[bool] = []

    def script(conn: RawConnection) -> None:
        headers = conn.read_request()
        response = (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
            + accept_key(headers.get("sec-websocket-key", "")).encode()
            + b"\r\n\r\n"
        )
        if not old_requested.is_set():
            old_requested.set()
            new_requested.wait(10)
            # OSError: the old dial was cut, nobody listens any more.
            with contextlib.suppress(OSError):
                conn.send_raw(response + server_frame(0x1, b"from the old connection"))
            old_answered.set()
            old_outcome.append(conn.wait_eof(10))
            return
        new_requested.set()
        old_answered.wait(10)
        conn.send_raw(response + server_frame(0x1, b"from the new connection"))
        conn.wait_eof(10)

    client = Recorder()
    config = fast(open_timeout=10.0, auto_reconnect=False)
    fds_before = open_fds()
    with RawServer(script, handshake=False) as server:
        engine = WebsocketEngine(server.url, client, adapter=kind.build(), config=config)
        first_start: list[BaseException] = []

        def start_first() -> None:
            try:
                engine.start()
            except BaseException as error:
                first_start.append(error)

        starter = start_thread(start_first, "first-start")
        try:
            assert old_requested.wait(5)
            began = time.monotonic()
            engine.stop(timeout=0.2)
            assert time.monotonic() - began < 0.2 + 1.5
            starter.join(5)
            assert not starter.is_alive()
            assert len(first_start) == 1
            engine.start()
            client.wait_count("message", 1, timeout=5)
            assert old_answered.wait(5)
            # Anything the old connection could still bring would come now.
            with pytest.raises(AssertionError):
                client.wait_until(lambda: len(client.events) > 2, timeout=0.5)
            assert engine.state is EngineState.OPEN
        finally:
            stop_and_check(engine)
    assert client.names() == ["open", "message", "close"]
    assert client.messages == [Message(TEXT, "from the new connection")]
    # The old connection's socket was closed by the client (EOF seen by the server).
    assert old_outcome == [True]
    fds_after = open_fds()
    if fds_before is not None and fds_after is not None:
        assert fds_after <= fds_before
