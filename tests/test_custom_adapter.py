# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""A user's own ConnectionAdapter, with only the abstract methods, plugged into the engine.

``PipeAdapter`` speaks a tiny framing over a ``socket.socketpair()`` (one type byte, a
4-byte length, the payload), the way a user might wrap another transport. It relies on
the base class for the engine's fast path (``wait_readable``, ``read_available``...), so
these tests show that the defaults deliver messages, let ``stop()`` finish and honour the
pause lock.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.support.servers import wait_for
from wsengine import (
    CloseMessage,
    ConnectionAdapter,
    ConnectionClosedError,
    EngineConfig,
    EngineState,
    HandshakeResponse,
    Message,
    MessageType,
    Session,
    WebsocketClient,
    WebsocketEngine,
)

# Frame types of the pipe's framing.
TEXT, BINARY, PING, PONG, CLOSE = b"T", b"B", b"P", b"Q", b"C"
HEADER = struct.Struct("!cI")


def encode(kind: bytes, payload: bytes) -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


class PipeAdapter(ConnectionAdapter):
    """A minimal adapter: length-prefixed frames over a connected stream socket.

    ``connect`` makes the socket (here, one end of a socketpair); the URL is not used.
    One reader plus any number of writers; reusable after ``close``.
    """

    def __init__(self, connect: Callable[[], socket.socket]) -> None:
        self._connect = connect
        self._sock: socket.socket | None = None
        self._buffer = bytearray()
        self._closed: ConnectionClosedError | None = ConnectionClosedError(1006, "not connected")
        self._last_received = 0.0
        # One frame at a time on the wire; held for one sendall.
        self._write_mutex = threading.Lock()
        # One reader at a time; held for one read call.
        self._read_mutex = threading.Lock()

    def dial(self, url: str, timeout: float | None) -> HandshakeResponse:
        self.abort()
        self._sock = self._connect()
        self._buffer.clear()
        self._closed = None
        self._last_received = time.monotonic()
        return HandshakeResponse(101, {"X-Transport": "socketpair"}, None)

    def read(self, timeout: float | None = None) -> Message | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._read_mutex.acquire(timeout=-1 if timeout is None else timeout):
            return None
        try:
            while True:
                message = self._parse()
                if message is not None:
                    return message
                if self._closed is not None:
                    raise ConnectionClosedError(self._closed.code, self._closed.reason)
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                sock = self._sock
                try:
                    if sock is None:
                        raise OSError("aborted")
                    readable, _, _ = select.select([sock], [], [], left)
                    if not readable:
                        return None
                    data = sock.recv(65536)
                except (OSError, ValueError):  # closed under us by abort()
                    data = b""
                if not data:
                    self._closed = self._closed or ConnectionClosedError(1006, "dropped")
                    continue
                self._last_received = time.monotonic()
                self._buffer += data
        finally:
            self._read_mutex.release()

    def _parse(self) -> Message | None:
        """Take whole frames from the buffer; answer pings; return the first message."""
        while len(self._buffer) >= HEADER.size:
            kind, size = HEADER.unpack_from(self._buffer)
            if len(self._buffer) < HEADER.size + size:
                return None
            payload = bytes(self._buffer[HEADER.size : HEADER.size + size])
            del self._buffer[: HEADER.size + size]
            if kind == TEXT:
                return Message(MessageType.TEXT, payload.decode())
            if kind == BINARY:
                return Message(MessageType.BINARY, payload)
            if kind == PING:
                self._send(encode(PONG, payload))
            elif kind == CLOSE:
                (code,) = struct.unpack("!H", payload[:2])
                self._closed = ConnectionClosedError(code, payload[2:].decode())
        return None

    def write(self, data: str | bytes) -> None:
        if isinstance(data, str):
            self._send(encode(TEXT, data.encode()))
        else:
            self._send(encode(BINARY, bytes(data)))

    def ping(self, payload: bytes = b"") -> None:
        self._send(encode(PING, payload))

    def _send(self, frame: bytes) -> None:
        with self._write_mutex:
            if self._closed is not None or self._sock is None:
                raise ConnectionClosedError(1006, "closed")
            try:
                self._sock.sendall(frame)
            except OSError as error:
                raise ConnectionClosedError(1006, "dropped") from error

    def close(self, code: int = 1000, reason: str = "", timeout: float | None = None) -> None:
        if self._sock is not None and self._closed is None:
            with contextlib.suppress(ConnectionClosedError):
                self._send(encode(CLOSE, struct.pack("!H", code) + reason.encode()))
            self._closed = ConnectionClosedError(code, reason)
        self.abort()

    def abort(self) -> None:
        if self._closed is None:
            self._closed = ConnectionClosedError(1006, "aborted")
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a reader blocked in select
            sock.close()

    @property
    def last_received(self) -> float:
        return self._last_received

    @property
    def underlying(self) -> object:
        return self._sock


class Peer:
    """The far end of the pipe: sends frames, collects what the adapter sends."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []
        self.received: list[tuple[bytes, bytes]] = []
        self.changed = threading.Condition()
        self._threads: list[threading.Thread] = []

    def connect(self) -> socket.socket:
        """Called by PipeAdapter.dial: a new pair, the far end served by a thread."""
        ours, theirs = socket.socketpair()
        self.sockets.append(theirs)
        # Ends when the adapter closes its end (EOF); joined in close().
        thread = threading.Thread(target=self._serve, args=(theirs,), name="test-peer")
        self._threads.append(thread)
        thread.start()
        return ours

    def _serve(self, sock: socket.socket) -> None:
        buffer = bytearray()
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            buffer += data
            while len(buffer) >= HEADER.size:
                kind, size = HEADER.unpack_from(buffer)
                if len(buffer) < HEADER.size + size:
                    break
                payload = bytes(buffer[HEADER.size : HEADER.size + size])
                del buffer[: HEADER.size + size]
                with self.changed:
                    self.received.append((kind, payload))
                    self.changed.notify_all()

    def send(self, *frames: bytes) -> None:
        self.sockets[-1].sendall(b"".join(frames))

    def wait_until(self, predicate: Callable[[], bool]) -> None:
        with self.changed:
            assert self.changed.wait_for(predicate, 5), f"peer saw only {self.received}"

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        for thread in self._threads:
            thread.join(5)


class Collector(WebsocketClient):
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.closes: list[CloseMessage | None] = []
        self.changed = threading.Condition()

    def on_message(self, session: Session, message: Message) -> None:
        with self.changed:
            self.messages.append(message)
            self.changed.notify_all()

    def on_close(self, session: Session, close: CloseMessage | None) -> CloseMessage | None:
        self.closes.append(close)
        return None

    def wait_for_messages(self, count: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.messages) >= count, 5)


CONFIG = EngineConfig(workers=1, ping_interval=None, stop_timeout=3.0, open_timeout=3.0)
URL = "ws://pipe.invalid/"


@pytest.fixture
def peer() -> Iterator[Peer]:
    far_end = Peer()
    yield far_end
    far_end.close()


def test_messages_are_delivered_and_sent(peer: Peer) -> None:
    """Messages from the peer reach on_message in order; engine.send reaches the peer."""
    client = Collector()
    engine = WebsocketEngine(URL, client, adapter=PipeAdapter(peer.connect), config=CONFIG)
    engine.start()
    try:
        peer.send(encode(TEXT, b"one"), encode(BINARY, b"\x02"), encode(TEXT, "três".encode()))
        client.wait_for_messages(3)
        engine.send("to the peer")
        peer.wait_until(lambda: (TEXT, b"to the peer") in peer.received)
    finally:
        engine.stop()
    assert client.messages == [
        Message(MessageType.TEXT, "one"),
        Message(MessageType.BINARY, b"\x02"),
        Message(MessageType.TEXT, "três"),
    ]


def test_stop_closes_with_1000_and_ends_the_threads(peer: Peer) -> None:
    """stop() runs on_close, sends the close frame, and the engine ends for good."""
    client = Collector()
    engine = WebsocketEngine(URL, client, adapter=PipeAdapter(peer.connect), config=CONFIG)
    engine.start()
    started = time.monotonic()
    engine.stop()
    assert time.monotonic() - started < 2
    assert engine.state is EngineState.STOPPED
    assert client.closes == [None]
    peer.wait_until(lambda: peer.received == [(CLOSE, struct.pack("!H", 1000))])
    wait_for(lambda: not [t for t in threading.enumerate() if t.name.startswith("wsengine")])


def test_peer_close_is_reported_and_the_engine_reconnects(peer: Peer) -> None:
    """A close frame from the peer reaches on_close with its code; the engine dials again
    through the same adapter."""
    client = Collector()
    config = EngineConfig(
        workers=1, ping_interval=None, reconnect_delay_initial=0.01, reconnect_delay_max=0.02
    )
    engine = WebsocketEngine(URL, client, adapter=PipeAdapter(peer.connect), config=config)
    engine.start()
    try:
        peer.send(encode(CLOSE, struct.pack("!H", 4000) + b"later"))
        wait_for(lambda: len(peer.sockets) == 2)
        peer.send(encode(TEXT, b"on the second pipe"))
        client.wait_for_messages(1)
    finally:
        engine.stop()
    assert client.closes[0] == CloseMessage(4000, "later")
    assert client.messages == [Message(MessageType.TEXT, "on the second pipe")]


def test_pause_lock_stops_delivery_and_lets_the_holder_read(peer: Peer) -> None:
    """While a thread holds the pause lock the engine reads nothing: the holder reads the
    next message itself, and on_message never sees it; delivery resumes after."""
    client = Collector()
    engine = WebsocketEngine(URL, client, adapter=PipeAdapter(peer.connect), config=CONFIG)
    engine.start()
    try:
        session = engine.session
        assert session is not None
        began = time.monotonic()
        with engine.pause_lock:
            took = time.monotonic() - began
            peer.send(encode(TEXT, b"for the holder"))
            by_hand = session.conn.read(timeout=5)
        peer.send(encode(TEXT, b"for the engine"))
        client.wait_for_messages(1)
    finally:
        engine.stop()
    assert took < 0.5  # at most one 20 ms read of the base class's fast path, unloaded
    assert by_hand == Message(MessageType.TEXT, "for the holder")
    assert client.messages == [Message(MessageType.TEXT, "for the engine")]
