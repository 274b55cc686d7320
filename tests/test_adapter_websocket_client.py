# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""WebsocketClientAdapter against real servers on 127.0.0.1: a websockets server for the
well-behaved cases, RawServer for the protocol violations (RELIABILITY A5-A8, A12, B8,
B13-B20, B22, B26)."""

from __future__ import annotations

import email.utils
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from websockets.http11 import Request, Response
from websockets.sync.server import ServerConnection

from tests.conftest import TlsMaterial
from tests.support.rawserver import RawConnection, RawServer, accept_key
from tests.support.rawserver import encode_frame as server_frame
from tests.support.servers import WsServer, echo_handler, run_ws_server, wait_for
from wsengine.adapters.websocket_client import WebsocketClientAdapter
from wsengine.errors import ConfigError, ConnectionClosedError, HandshakeError, ProtocolError
from wsengine.types import Message, MessageType

TEXT = MessageType.TEXT
BINARY = MessageType.BINARY


@pytest.fixture
def adapter() -> Iterator[WebsocketClientAdapter]:
    """An adapter that is aborted after the test, whatever happened."""
    conn = WebsocketClientAdapter()
    yield conn
    conn.abort()


def server_close_code(server: WsServer) -> int | None:
    """The close code the server's first connection received, None until then."""
    return server.connections[0].close_code if server.connections else None


def close_frame(code: int, reason: bytes = b"") -> bytes:
    """A server close frame carrying ``code`` and ``reason``."""
    return server_frame(0x8, struct.pack("!H", code) + reason)


def test_dial_returns_the_handshake_response(
    echo_server: WsServer, adapter: WebsocketClientAdapter
) -> None:
    """dial() returns status 101 and the headers, looked up case-insensitively."""
    response = adapter.dial(echo_server.url, 5)
    assert response.status == 101
    assert response.headers["UPGRADE"].lower() == "websocket"
    assert response.subprotocol is None


def test_dial_negotiates_a_subprotocol(adapter: WebsocketClientAdapter) -> None:
    """Options are passed to websocket-client: the subprotocol chosen is reported."""
    with run_ws_server(echo_handler, subprotocols=["chat.v2"]) as server:
        conn = WebsocketClientAdapter(subprotocols=["chat.v2"])
        try:
            assert conn.dial(server.url, 5).subprotocol == "chat.v2"
        finally:
            conn.abort()


def test_http_403_raises_handshake_error_with_status(adapter: WebsocketClientAdapter) -> None:
    """A 403 answer is HandshakeError(status=403), without header values in the message."""

    def refuse(conn: ServerConnection, request: Request) -> Response:
        response = conn.respond(403, "forbidden")
        response.headers["X-Secret"] = "hunter2"
        return response

    with (
        run_ws_server(echo_handler, process_request=refuse) as server,
        pytest.raises(HandshakeError) as info,
    ):
        adapter.dial(server.url, 5)
    assert info.value.status == 403
    assert info.value.retry_after is None
    assert "hunter2" not in str(info.value)
    assert info.value.__cause__ is None


def test_http_429_retry_after_seconds(adapter: WebsocketClientAdapter) -> None:
    """Retry-After in seconds on a 429 is reported as retry_after."""

    def slow_down(conn: ServerConnection, request: Request) -> Response:
        response = conn.respond(429, "slow down")
        response.headers["Retry-After"] = "7"
        return response

    with (
        run_ws_server(echo_handler, process_request=slow_down) as server,
        pytest.raises(HandshakeError) as info,
    ):
        adapter.dial(server.url, 5)
    assert info.value.status == 429
    assert info.value.retry_after == 7.0


def test_http_503_retry_after_http_date(adapter: WebsocketClientAdapter) -> None:
    """Retry-After as an HTTP date on a 503 becomes the seconds until that date."""
    when = datetime.now(UTC) + timedelta(seconds=120)

    def unavailable(conn: ServerConnection, request: Request) -> Response:
        response = conn.respond(503, "later")
        response.headers["Retry-After"] = email.utils.format_datetime(when, usegmt=True)
        return response

    with (
        run_ws_server(echo_handler, process_request=unavailable) as server,
        pytest.raises(HandshakeError) as info,
    ):
        adapter.dial(server.url, 5)
    assert info.value.status == 503
    assert info.value.retry_after is not None
    assert 100 <= info.value.retry_after <= 121


def test_junk_instead_of_http_is_a_handshake_error(adapter: WebsocketClientAdapter) -> None:
    """A server answering with an SMTP banner fails the dial at once (A5)."""
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


def test_bad_accept_key_is_a_handshake_error(adapter: WebsocketClientAdapter) -> None:
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

    with (
        RawServer(bad_accept, handshake=False) as server,
        pytest.raises(HandshakeError) as info,
    ):
        adapter.dial(server.url, 5)
    assert info.value.status is None


def test_connection_dropped_mid_handshake(adapter: WebsocketClientAdapter) -> None:
    """A server closing TCP after the request is HandshakeError(status=None) (A7)."""

    def drop(conn: RawConnection) -> None:
        conn.read_request()
        conn.send_raw(b"HTTP/1.1 101 Switching")
        conn.close()

    with (
        RawServer(drop, handshake=False) as server,
        pytest.raises(HandshakeError) as info,
    ):
        adapter.dial(server.url, 5)
    assert info.value.status is None


def test_handshake_timeout_raises_timeout_error(adapter: WebsocketClientAdapter) -> None:
    """A server that never answers makes dial() raise the built-in TimeoutError."""
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


def test_connection_refused_propagates_as_oserror(adapter: WebsocketClientAdapter) -> None:
    """No listener: the ConnectionRefusedError propagates for the engine to chain."""
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(ConnectionRefusedError):
        adapter.dial(f"ws://127.0.0.1:{port}/", 5)


def test_frame_in_the_same_segment_as_the_101_is_delivered(
    adapter: WebsocketClientAdapter,
) -> None:
    """A frame sent with the 101 response in one sendall is the first message (A12)."""

    def idle(conn: RawConnection) -> None:
        conn.wait_eof(5)

    with RawServer(idle, response_extra=server_frame(0x1, b"early bird")) as server:
        adapter.dial(server.url, 5)
        assert adapter.read(5) == Message(TEXT, "early bird")


def test_tls_echo_with_a_trusted_ca(tls: TlsMaterial, wss_echo_server: WsServer) -> None:
    """wss:// works when the CA is trusted; the certificate is verified."""
    conn = WebsocketClientAdapter(sslopt={"ca_certs": tls.ca_path})
    try:
        conn.dial(wss_echo_server.url, 5)
        conn.write("secure")
        assert conn.read(5) == Message(TEXT, "secure")
        conn.close(timeout=5)
    finally:
        conn.abort()


def test_tls_untrusted_certificate_is_refused(
    wss_echo_server: WsServer, adapter: WebsocketClientAdapter
) -> None:
    """By default an unknown CA fails the dial with SSLCertVerificationError (A8)."""
    with pytest.raises(ssl.SSLCertVerificationError):
        adapter.dial(wss_echo_server.url, 5)


def test_tls_frame_buffered_in_the_ssl_object_is_seen(tls: TlsMaterial) -> None:
    """A frame decrypted with the 101 response (SSL pending) wakes wait_readable (A12)."""

    def idle(conn: RawConnection) -> None:
        conn.wait_eof(5)

    extra = server_frame(0x1, b"tls early")
    with RawServer(idle, response_extra=extra, ssl_context=tls.server_context) as server:
        conn = WebsocketClientAdapter(sslopt={"ca_certs": tls.ca_path})
        try:
            conn.dial(server.url, 5)
            assert conn.wait_readable(2.0)
            assert conn.read_available(10) == [Message(TEXT, "tls early")]
        finally:
            conn.abort()


def test_tls_peer_vanishing_is_1006(tls: TlsMaterial) -> None:
    """A TLS server that drops TCP without close_notify gives 1006 (B26)."""

    def vanish(ws: ServerConnection) -> None:
        ws.recv()
        ws.socket.shutdown(socket.SHUT_RDWR)

    with run_ws_server(vanish, ssl=tls.server_context) as server:
        conn = WebsocketClientAdapter(sslopt={"ca_certs": tls.ca_path})
        try:
            conn.dial(server.url, 5)
            conn.write("bye")
            with pytest.raises(ConnectionClosedError) as info:
                conn.read(5)
            assert info.value.code == 1006
        finally:
            conn.abort()


def test_echo_text_and_binary(echo_server: WsServer, adapter: WebsocketClientAdapter) -> None:
    """str goes out as TEXT and bytes-likes as BINARY, and come back with their type."""
    adapter.dial(echo_server.url, 5)
    adapter.write("héllo")
    adapter.write(b"\x00\x01")
    adapter.write(bytearray(b"ba"))
    adapter.write(memoryview(b"mv"))
    received = [adapter.read(5) for _ in range(4)]
    assert received == [
        Message(TEXT, "héllo"),
        Message(BINARY, b"\x00\x01"),
        Message(BINARY, b"ba"),
        Message(BINARY, b"mv"),
    ]


def test_write_rejects_other_types(
    echo_server: WsServer, adapter: WebsocketClientAdapter
) -> None:
    """write() raises TypeError for data that is neither str nor bytes."""
    adapter.dial(echo_server.url, 5)
    with pytest.raises(TypeError):
        adapter.write(42)  # type: ignore[arg-type]


def test_large_message_with_max_size_raised() -> None:
    """A 16 MiB message goes out and back intact when max_size allows it."""
    payload = bytes(range(256)) * (16 * 4096)
    with run_ws_server(echo_handler, max_size=None) as server:
        conn = WebsocketClientAdapter(max_size=2**25)
        try:
            conn.dial(server.url, 5)
            conn.write(payload)
            message = conn.read(20)
            assert message is not None
            assert message.data == payload
        finally:
            conn.abort()


def test_read_timeout_returns_none(
    echo_server: WsServer, adapter: WebsocketClientAdapter
) -> None:
    """read() returns None when nothing arrives within the timeout."""
    adapter.dial(echo_server.url, 5)
    started = time.monotonic()
    assert adapter.read(0.1) is None
    assert 0.09 <= time.monotonic() - started < 2


def test_read_timeout_mid_frame_loses_nothing(adapter: WebsocketClientAdapter) -> None:
    """A read timing out on half a frame resumes it whole on the next read (B8)."""
    frame = server_frame(0x2, bytes(range(200)) * 10)
    half_sent = threading.Event()
    send_rest = threading.Event()

    def halves(conn: RawConnection) -> None:
        conn.send_raw(frame[:1000])
        half_sent.set()
        send_rest.wait(5)
        conn.send_raw(frame[1000:])
        conn.wait_eof(5)

    with RawServer(halves) as server:
        adapter.dial(server.url, 5)
        assert half_sent.wait(5)
        wait_for(adapter.has_pending_data)
        assert adapter.read(0.05) is None
        send_rest.set()
        assert adapter.read(5) == Message(BINARY, bytes(range(200)) * 10)


def test_last_received_moves_when_data_arrives(
    echo_server: WsServer, adapter: WebsocketClientAdapter
) -> None:
    """last_received is the monotonic time of the latest bytes received."""
    adapter.dial(echo_server.url, 5)
    before = time.monotonic()
    adapter.write("x")
    assert adapter.read(5) is not None
    assert adapter.last_received >= before


def test_read_available_returns_a_batch(
    echo_server: WsServer, adapter: WebsocketClientAdapter
) -> None:
    """read_available gives up to max_messages at once, never blocking."""
    adapter.dial(echo_server.url, 5)
    assert adapter.read_available(10) == []
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
    echo_server: WsServer, adapter: WebsocketClientAdapter
) -> None:
    """wait_readable is False on timeout, returns early on wake_reader, True on data."""
    adapter.dial(echo_server.url, 5)
    assert adapter.wait_readable(0.05) is False
    waker = threading.Timer(0.05, adapter.wake_reader)
    waker.name = "test-waker"
    started = time.monotonic()
    waker.start()
    try:
        assert adapter.wait_readable(10) is False
        assert time.monotonic() - started < 5
    finally:
        waker.join()
    adapter.write("ready")
    assert adapter.wait_readable(5) is True
    assert adapter.read_available(5) == [Message(TEXT, "ready")]
    assert adapter.has_pending_data() is False


def test_wait_readable_true_when_frames_are_left_buffered(
    adapter: WebsocketClientAdapter,
) -> None:
    """Frames left buffered by a read make wait_readable return at once."""

    def burst(conn: RawConnection) -> None:
        conn.send_raw(server_frame(0x1, b"one") + server_frame(0x1, b"two"))
        conn.wait_eof(5)

    with RawServer(burst) as server:
        adapter.dial(server.url, 5)
        wait_for(lambda: adapter.read_available(1) != [])
        assert adapter.wait_readable(0) is True
        assert adapter.read_available(10)[-1] == Message(TEXT, "two")


def test_ping_gets_a_pong(echo_server: WsServer, adapter: WebsocketClientAdapter) -> None:
    """ping() sends a ping; the server's pong updates last_pong while reading."""
    adapter.dial(echo_server.url, 5)
    before = time.monotonic()
    adapter.ping(b"rtt")
    wait_for(lambda: adapter.read(0.01) is None and adapter.last_pong >= before)


def test_ping_payload_over_125_bytes_is_refused(
    echo_server: WsServer, adapter: WebsocketClientAdapter
) -> None:
    """ping() with a 126-byte payload raises ValueError."""
    adapter.dial(echo_server.url, 5)
    with pytest.raises(ValueError):
        adapter.ping(b"x" * 126)


def test_server_ping_is_answered(adapter: WebsocketClientAdapter) -> None:
    """A server's ping is answered with a pong while the client reads."""

    def pinger(ws: ServerConnection) -> None:
        pong = ws.ping(b"are you there")
        ws.send("pong received" if pong.wait(5) else "no pong")

    with run_ws_server(pinger) as server:
        adapter.dial(server.url, 5)
        assert adapter.read(5) == Message(TEXT, "pong received")
        adapter.close(timeout=5)


def test_ping_inside_a_fragmented_message_is_answered_at_once(
    adapter: WebsocketClientAdapter,
) -> None:
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


def test_client_close_handshake(echo_server: WsServer, adapter: WebsocketClientAdapter) -> None:
    """close() sends its code and reason, gets the reply, and later calls raise."""
    adapter.dial(echo_server.url, 5)
    adapter.close(4001, "done here", timeout=5)
    wait_for(lambda: server_close_code(echo_server) == 4001)
    assert echo_server.connections[0].close_reason == "done here"
    with pytest.raises(ConnectionClosedError):
        adapter.read(1)
    with pytest.raises(ConnectionClosedError):
        adapter.write("late")
    adapter.close()  # idempotent


def test_close_rejects_codes_not_legal_on_the_wire(
    echo_server: WsServer, adapter: WebsocketClientAdapter
) -> None:
    """close(1005) and close(999) raise ConfigError and leave the connection open."""
    adapter.dial(echo_server.url, 5)
    for code in (1005, 1006, 999, 5000):
        with pytest.raises(ConfigError):
            adapter.close(code)
    adapter.write("still open")
    assert adapter.read(5) == Message(TEXT, "still open")


def test_close_reason_is_cut_at_a_character_boundary(
    echo_server: WsServer, adapter: WebsocketClientAdapter
) -> None:
    """A reason over 123 bytes of UTF-8 is cut without splitting a character."""
    adapter.dial(echo_server.url, 5)
    adapter.close(1000, "é" * 100, timeout=5)
    wait_for(lambda: server_close_code(echo_server) is not None)
    assert echo_server.connections[0].close_reason == "é" * 61


def test_server_close_is_reported_with_its_code(
    adapter: WebsocketClientAdapter,
) -> None:
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


def test_empty_close_is_1005_and_never_sent_back(adapter: WebsocketClientAdapter) -> None:
    """An empty close reads as 1005; the reply is an empty close, not 1005 (B17)."""
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


def test_server_keeping_tcp_open_after_close_is_cut_off(
    adapter: WebsocketClientAdapter,
) -> None:
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
    assert closed_by_client == [True]


def test_client_close_returns_on_the_reply_without_waiting_for_fin(
    adapter: WebsocketClientAdapter,
) -> None:
    """A close we started ends at the peer's reply, even if the peer keeps TCP open."""
    closed_by_client: list[bool] = []

    def reply_only(conn: RawConnection) -> None:
        conn.expect_close(5)
        conn.send_frame(0x8, struct.pack("!H", 1000))
        closed_by_client.append(conn.wait_eof(5))

    with RawServer(reply_only) as server:
        adapter.dial(server.url, 5)
        started = time.monotonic()
        adapter.close(timeout=5)
        assert time.monotonic() - started < 2
        wait_for(lambda: bool(closed_by_client))
    assert closed_by_client == [True]


def test_data_after_close_is_ignored(adapter: WebsocketClientAdapter) -> None:
    """A message before the close is delivered; the one after it never is (B20)."""

    def late(conn: RawConnection) -> None:
        conn.send_raw(
            server_frame(0x1, b"before") + close_frame(1000) + server_frame(0x1, b"after")
        )
        conn.expect_close(5)
        conn.send_frame(0x1, b"much later")

    with RawServer(late) as server:
        adapter.dial(server.url, 5)
        assert adapter.read(5) == Message(TEXT, "before")
        for _ in range(2):
            with pytest.raises(ConnectionClosedError) as info:
                adapter.read(0.2)
            assert info.value.code == 1000


def test_dropped_tcp_is_1006(adapter: WebsocketClientAdapter) -> None:
    """A server closing TCP without a close frame makes read raise 1006."""

    def drop(conn: RawConnection) -> None:
        conn.close()

    with RawServer(drop) as server:
        adapter.dial(server.url, 5)
        with pytest.raises(ConnectionClosedError) as info:
            adapter.read(5)
        assert info.value.code == 1006
        with pytest.raises(ConnectionClosedError):
            adapter.write("into the void")


def test_connection_reset_is_1006(adapter: WebsocketClientAdapter) -> None:
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


VIOLATIONS: list[tuple[str, bytes, int]] = [
    ("rsv1", server_frame(0x1, b"x", rsv=4), 1002),
    ("opcode-3", server_frame(0x3, b""), 1002),
    ("opcode-0xB", server_frame(0xB, b""), 1002),
    ("fragmented-ping", server_frame(0x9, b"x", fin=False), 1002),
    ("ping-126", server_frame(0x9, b"x" * 126), 1002),
    ("masked", server_frame(0x1, b"x", mask=True), 1002),
    ("continuation-first", server_frame(0x0, b"x"), 1002),
    (
        "data-inside-fragments",
        server_frame(0x1, b"a", fin=False) + server_frame(0x1, b"b"),
        1002,
    ),
    ("close-1-byte", server_frame(0x8, b"\x03"), 1002),
    *[(f"close-code-{code}", close_frame(code), 1002) for code in (0, 999, 1004, 1005, 1006)],
    *[(f"close-code-{code}", close_frame(code), 1002) for code in (1016, 2999, 5000)],
    ("close-reason-not-utf8", close_frame(1000, b"\xff"), 1007),
    ("invalid-utf8", server_frame(0x1, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xff"), 1007),
    (
        "invalid-utf8-across-fragments",
        server_frame(0x1, b"\xce", fin=False) + server_frame(0x0, b"A"),
        1007,
    ),
    ("truncated-utf8", server_frame(0x1, b"ok\xe2\x82"), 1007),
    ("header-2-62", bytes((0x82, 127)) + struct.pack("!Q", 2**62), 1009),
    ("length-top-bit", bytes((0x82, 127)) + struct.pack("!Q", 2**63), 1002),
]


@pytest.mark.parametrize(
    ("bad", "code"), [(v[1], v[2]) for v in VIOLATIONS], ids=[v[0] for v in VIOLATIONS]
)
def test_protocol_violation_fails_the_connection(
    adapter: WebsocketClientAdapter, bad: bytes, code: int
) -> None:
    """The adapter sends close ``code``, drops TCP and raises ProtocolError (B13-B15, B18)."""
    seen: list[tuple[int | None, bool]] = []

    def violate(conn: RawConnection) -> None:
        conn.send_raw(bad)
        sent_code, _ = conn.expect_close(5)
        seen.append((sent_code, conn.wait_eof(5)))

    with RawServer(violate) as server:
        adapter.dial(server.url, 5)
        with pytest.raises(ProtocolError) as info:
            adapter.read(5)
        assert info.value.code == code
        wait_for(lambda: bool(seen))
        with pytest.raises(ProtocolError) as later:
            adapter.read(1)
        assert later.value.code == code
    assert seen == [(code, True)]


def test_message_over_max_size_is_1009(echo_server: WsServer) -> None:
    """A real server's message of max_size + 1 bytes fails the connection with 1009 (B13)."""
    conn = WebsocketClientAdapter(max_size=1024)
    try:
        conn.dial(echo_server.url, 5)
        conn.write(b"x" * 1024)
        assert conn.read(5) == Message(BINARY, b"x" * 1024)
        conn.write(b"x" * 1025)
        with pytest.raises(ProtocolError) as info:
            conn.read(5)
        assert info.value.code == 1009
        wait_for(lambda: server_close_code(echo_server) == 1009)
    finally:
        conn.abort()


def test_messages_before_a_violation_are_delivered(adapter: WebsocketClientAdapter) -> None:
    """Messages that arrived before a bad frame are returned before the error."""

    def good_then_bad(conn: RawConnection) -> None:
        conn.send_raw(server_frame(0x1, b"ok 1") + server_frame(0x1, b"ok 2") + b"\xf3\x00")
        conn.expect_close(5)

    with RawServer(good_then_bad) as server:
        adapter.dial(server.url, 5)
        wait_for(adapter.has_pending_data)
        assert adapter.read_available(10) == [Message(TEXT, "ok 1"), Message(TEXT, "ok 2")]
        with pytest.raises(ProtocolError) as info:
            adapter.read_available(10)
        assert info.value.code == 1002


def run_threads(count: int, target: Callable[[int], None], name: str) -> list[threading.Thread]:
    """Start ``count`` threads running ``target(i)``."""
    threads = [
        threading.Thread(target=target, args=(i,), name=f"test-{name}-{i}") for i in range(count)
    ]
    for thread in threads:
        thread.start()
    return threads


def test_concurrent_writers_arrive_intact(
    echo_server: WsServer, adapter: WebsocketClientAdapter
) -> None:
    """8 threads x 1000 messages all come back intact, each thread's in order."""
    adapter.dial(echo_server.url, 5)
    errors: list[BaseException] = []

    def writer(index: int) -> None:
        try:
            for seq in range(1000):
                adapter.write(f"{index}:{seq}:" + "p" * (seq % 300))
        except BaseException as error:
            errors.append(error)

    threads = run_threads(8, writer, "writer")
    received: dict[int, list[int]] = {i: [] for i in range(8)}
    deadline = time.monotonic() + 20
    total = 0
    while total < 8000 and time.monotonic() < deadline:
        for message in adapter.read_available(256) or ([m] if (m := adapter.read(1)) else []):
            index, seq, padding = str(message.data).split(":")
            assert padding == "p" * (int(seq) % 300)
            received[int(index)].append(int(seq))
            total += 1
    for thread in threads:
        thread.join(5)
    assert errors == []
    assert all(seqs == list(range(1000)) for seqs in received.values())


def test_abort_unblocks_a_blocked_reader(
    echo_server: WsServer, adapter: WebsocketClientAdapter
) -> None:
    """abort() from another thread makes a read(None) raise ConnectionClosedError."""
    adapter.dial(echo_server.url, 5)
    outcome: list[Any] = []
    started = threading.Event()

    def reader(_: int) -> None:
        started.set()
        try:
            outcome.append(adapter.read(None))
        except ConnectionClosedError as error:
            outcome.append(error)

    (thread,) = run_threads(1, reader, "reader")
    assert started.wait(5)
    wait_for(adapter._read_mutex.locked)
    adapter.abort()
    thread.join(5)
    assert not thread.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], ConnectionClosedError)
    assert outcome[0].code == 1006


def test_close_unblocks_a_blocked_reader(
    echo_server: WsServer, adapter: WebsocketClientAdapter
) -> None:
    """close() while another thread waits in read(None): the reader raises, close returns."""
    adapter.dial(echo_server.url, 5)
    outcome: list[Any] = []

    def reader(_: int) -> None:
        try:
            outcome.append(adapter.read(None))
        except ConnectionClosedError as error:
            outcome.append(error)

    (thread,) = run_threads(1, reader, "reader")
    wait_for(adapter._read_mutex.locked)
    adapter.close(1000, timeout=5)
    thread.join(5)
    assert not thread.is_alive()
    assert isinstance(outcome[0], ConnectionClosedError)
    wait_for(lambda: server_close_code(echo_server) == 1000)


def test_abort_unblocks_a_writer_blocked_on_a_full_window(
    adapter: WebsocketClientAdapter,
) -> None:
    """A writer stuck on a peer that does not read raises soon after abort() (B22)."""
    release = threading.Event()
    outcome: list[BaseException | None] = []

    def not_reading(conn: RawConnection) -> None:
        release.wait(10)

    def writer(_: int) -> None:
        try:
            adapter.write(b"\x00" * (32 * 2**20))
            outcome.append(None)
        except BaseException as error:
            outcome.append(error)

    with RawServer(not_reading) as server:
        try:
            adapter.dial(server.url, 5)
            (thread,) = run_threads(1, writer, "blocked-writer")
            wait_for(adapter._write_mutex.locked)
            started = time.monotonic()
            adapter.abort()
            thread.join(5)
            assert time.monotonic() - started < 2
            assert not thread.is_alive()
        finally:
            release.set()
    assert len(outcome) == 1
    assert isinstance(outcome[0], ConnectionClosedError)


def test_adapter_is_reusable_after_close_and_abort(
    echo_server: WsServer, adapter: WebsocketClientAdapter
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
    wait_for(lambda: len(echo_server.connections) == 3)


def test_not_connected_adapter_raises(adapter: WebsocketClientAdapter) -> None:
    """Before dial, reads and writes raise ConnectionClosedError; close/abort are no-ops."""
    assert adapter.underlying is None
    with pytest.raises(ConnectionClosedError):
        adapter.read(0.01)
    with pytest.raises(ConnectionClosedError):
        adapter.write("x")
    assert adapter.wait_readable(0) is True
    assert adapter.has_pending_data() is False
    adapter.close()
    adapter.abort()


def test_invalid_max_size_is_a_config_error() -> None:
    """max_size must be a positive int or None; reserved options are refused."""
    for bad in (0, -1, 1.5, True, "1"):
        with pytest.raises(ConfigError):
            WebsocketClientAdapter(max_size=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        WebsocketClientAdapter(timeout=3)


def open_sockets(conn: WebsocketClientAdapter) -> list[socket.socket]:
    """The adapter's TCP socket and wake-up pair that are still open."""
    sockets = [conn._sock, conn._wake_r, conn._wake_w]
    return [s for s in sockets if s is not None and s.fileno() != -1]


@pytest.mark.parametrize("ending", ["close", "abort", "peer-drop", "violation"])
def test_every_socket_is_released(adapter: WebsocketClientAdapter, ending: str) -> None:
    """However the connection ends, its socket and wake-up pair end up closed."""

    def script(conn: RawConnection) -> None:
        if ending == "peer-drop":
            conn.close()
        elif ending == "violation":
            conn.send_frame(0x3)
            conn.expect_close(5)
        elif ending == "abort":
            conn.wait_eof(5)
        else:
            # The server closes TCP first after the closing handshake (RFC 6455 7.1.1).
            conn.expect_close(5)
            conn.send_frame(0x8, struct.pack("!H", 1000))

    with RawServer(script) as server:
        adapter.dial(server.url, 5)
        assert len(open_sockets(adapter)) == 3
        if ending == "close":
            adapter.close(timeout=5)
        elif ending == "abort":
            adapter.abort()
        else:
            with pytest.raises(ConnectionClosedError):
                adapter.read(5)
        assert open_sockets(adapter) == []


def test_partial_frame_buffered_is_not_pending_data(adapter: WebsocketClientAdapter) -> None:
    """has_pending_data() ignores a partial frame already received: a peer that stops in
    the middle of a frame must look as dead to the keepalive as a silent one."""
    sent = threading.Event()

    def half(conn: RawConnection) -> None:
        conn.send_raw(server_frame(0x1, b"0123456789")[:6])
        sent.set()
        conn.wait_eof(5)

    with RawServer(half) as server:
        adapter.dial(server.url, 5)
        assert sent.wait(5)
        wait_for(lambda: adapter.read(timeout=0.01) is None and not adapter.has_pending_data())
        assert adapter.read_available(1) == []
        assert adapter.has_pending_data() is False


def test_credentials_do_not_follow_a_redirect_to_another_origin() -> None:
    """A redirect to another origin drops Authorization and Cookie; one to the same
    origin keeps them (websocket-client would send them anywhere)."""

    seen: list[tuple[str | None, str | None]] = []

    def record(conn: ServerConnection, request: Request) -> None:
        seen.append((request.headers.get("Authorization"), request.headers.get("Cookie")))

    with run_ws_server(echo_handler, process_request=record) as target:

        landed: list[str | None] = []

        def redirect(conn: ServerConnection, request: Request) -> Response | None:
            if request.path == "/same":
                landed.append(request.headers.get("Authorization"))
                return None
            response = conn.respond(302, "moved\n")
            response.headers["Location"] = target.url if request.path == "/away" else "/same"
            return response

        with run_ws_server(echo_handler, process_request=redirect) as origin:
            adapter = WebsocketClientAdapter(
                header={"Authorization": "Bearer secret-1"}, cookie="session=secret-2"
            )
            try:
                adapter.dial(origin.url + "away", 5)
                adapter.close(timeout=1)
                adapter.dial(origin.url + "here", 5)
            finally:
                adapter.close(timeout=1)
    assert seen == [(None, None)]
    assert landed == ["Bearer secret-1"]
