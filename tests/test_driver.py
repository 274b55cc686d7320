# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""The socket driver (adapters/_driver.py), seen through the default adapter: waiting,
buffering, waking blocked threads, and releasing every socket however a connection ends.
The driver serves both shipped adapters; the contract suite runs the shared behaviour on
both, these tests look inside (its mutexes and sockets)."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import TlsMaterial
from tests.support.rawserver import RawConnection, RawServer, close_frame
from tests.support.rawserver import encode_frame as server_frame
from tests.support.servers import WsServer, server_close_code, wait_for
from wsengine.adapters.websocket_client import WebsocketClientAdapter
from wsengine.errors import ConnectionClosedError
from wsengine.types import Message, MessageType

TEXT = MessageType.TEXT
BINARY = MessageType.BINARY


@pytest.fixture
def adapter() -> Iterator[WebsocketClientAdapter]:
    """An adapter that is aborted after the test, whatever happened."""
    conn = WebsocketClientAdapter()
    yield conn
    conn.abort()


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


def run_threads(count: int, target: Callable[[int], None], name: str) -> list[threading.Thread]:
    """Start ``count`` threads running ``target(i)``."""
    threads = [
        threading.Thread(target=target, args=(i,), name=f"test-{name}-{i}") for i in range(count)
    ]
    for thread in threads:
        thread.start()
    return threads


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
    wait_for(adapter._driver._read_mutex.locked)
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
    wait_for(adapter._driver._read_mutex.locked)
    adapter.close(1000, timeout=5)
    thread.join(5)
    assert not thread.is_alive()
    assert isinstance(outcome[0], ConnectionClosedError)
    wait_for(lambda: server_close_code(echo_server) == 1000)


def open_sockets(conn: WebsocketClientAdapter) -> list[socket.socket]:
    """The driver's TCP socket and wake-up pair that are still open."""
    driver = conn._driver
    sockets = [driver._sock, driver._wake_r, driver._wake_w]
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



def test_connections_reading_at_once_each_get_their_own_bytes() -> None:
    """Plain connections read through a few shared buffers (recv_into, then a copy out):
    three readers at once, on frames from 1 byte to past the buffer's 256 KiB, each get
    exactly their own stream, whole and in order."""
    sizes = [6, 1, 30, 125, 126, 1000, 65535, 65536, 70000, 300_000, 5, 2000] * 6
    ids = iter(range(3))
    ids_lock = threading.Lock()

    def payload(conn_id: int, seq: int, size: int) -> bytes:
        head = struct.pack("!HI", conn_id, seq)
        return (head * (size // 6 + 1))[:size]

    def flood(conn: RawConnection) -> None:
        with ids_lock:
            conn_id = next(ids)
        conn.send_raw(b"".join(server_frame(0x2, payload(conn_id, seq, size))
                               for seq, size in enumerate(sizes)))
        conn.wait_eof(10)

    results: dict[int, list[Message]] = {}
    errors: list[BaseException] = []

    def reader(index: int) -> None:
        conn = WebsocketClientAdapter()
        try:
            conn.dial(server.url, 5)
            got: list[Message] = []
            deadline = time.monotonic() + 20
            while len(got) < len(sizes) and time.monotonic() < deadline:
                got.extend(conn.read_available(16))
                if len(got) < len(sizes):
                    conn.wait_readable(0.5)
            results[index] = got
        except BaseException as error:
            errors.append(error)
        finally:
            conn.abort()

    with RawServer(flood) as server:
        for thread in run_threads(3, reader, "test-pooled-reader"):
            thread.join(30)
    assert not errors
    assert len(results) == 3
    seen = set()
    for got in results.values():
        conn_id = struct.unpack("!H", got[0].data[:2])[0]
        seen.add(conn_id)
        assert got == [Message(BINARY, payload(conn_id, seq, size))
                       for seq, size in enumerate(sizes)]
    assert seen == {0, 1, 2}


def test_read_available_acts_on_a_ping_between_data_frames(
    adapter: WebsocketClientAdapter,
) -> None:
    """read_available parses buffered data frames without the state mutex, and stops at
    a control frame: the ping between them is answered, and every message comes out
    once, in order, at most ``max_messages`` per call."""
    big = bytes(range(256)) * 2  # a 16-bit length
    pongs: list[tuple[bool, int, bytes]] = []

    def script(conn: RawConnection) -> None:
        conn.send_raw(b"".join([
            server_frame(0x1, b"one"), server_frame(0x2, big), server_frame(0x9, b"p1"),
            server_frame(0x1, b"two"), server_frame(0x9, b"p2"), server_frame(0x2, b"three"),
        ]))
        pongs.append(conn.recv_frame(5))
        pongs.append(conn.recv_frame(5))
        conn.wait_eof(5)

    with RawServer(script) as server:
        adapter.dial(server.url, 5)
        got: list[Message] = []
        calls: list[int] = []
        deadline = time.monotonic() + 5
        while len(got) < 4 and time.monotonic() < deadline:
            batch = adapter.read_available(2)
            calls.append(len(batch))
            got.extend(batch)
            if not batch:
                adapter.wait_readable(0.5)
        assert got == [Message(TEXT, "one"), Message(BINARY, big), Message(TEXT, "two"),
                       Message(BINARY, b"three")]
        assert max(calls) <= 2
        wait_for(lambda: len(pongs) == 2)
        adapter.abort()
    assert pongs == [(True, 0xA, b"p1"), (True, 0xA, b"p2")]
