# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""What engine tests share: a recording client, fast configs, leak checks and small
raw-server scripts. Imported by the test modules of the engine, its supervisor, the
reliability rows and the flow control."""

from __future__ import annotations

import dataclasses
import itertools
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from websockets.sync.server import ServerConnection, serve

from tests.support.rawserver import RawConnection
from tests.support.rawserver import encode_frame as server_frame
from tests.support.servers import WsServer, wait_for
from wsengine import (
    CloseMessage,
    EngineConfig,
    EngineState,
    HandshakeResponse,
    Message,
    Session,
    WebsocketClient,
    WebsocketEngine,
)
from wsengine.engine import _running_engines

#: Small delays so that reconnects and stops take milliseconds; keepalive off unless a
#: test turns it on.
FAST = EngineConfig(
    reconnect_delay_initial=0.01,
    reconnect_delay_max=0.05,
    ping_interval=None,
    stop_timeout=2.0,
    open_timeout=2.0,
)


def fast(**changes: Any) -> EngineConfig:
    """FAST with ``changes``."""
    return dataclasses.replace(FAST, **changes)


@dataclasses.dataclass(frozen=True)
class Event:
    """One callback the engine made: its name, what it got, when, on which thread."""

    name: str
    detail: Any
    at: float
    thread: str


class Recorder(WebsocketClient):
    """Records every callback as an :class:`Event`; tests wait on ``changed``."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        # Notified under its lock whenever an event is recorded.
        self.changed = threading.Condition()
        #: What on_close returns.
        self.close_answer: CloseMessage | None = None

    def record(self, name: str, detail: Any = None) -> None:
        with self.changed:
            self.events.append(
                Event(name, detail, time.monotonic(), threading.current_thread().name)
            )
            self.changed.notify_all()

    def names(self, *only: str) -> list[str]:
        with self.changed:
            return [e.name for e in self.events if not only or e.name in only]

    def details(self, name: str) -> list[Any]:
        with self.changed:
            return [e.detail for e in self.events if e.name == name]

    def times(self, name: str) -> list[float]:
        with self.changed:
            return [e.at for e in self.events if e.name == name]

    def count(self, name: str) -> int:
        return len(self.details(name))

    @property
    def messages(self) -> list[Message]:
        return self.details("message")

    def wait_until(self, predicate: Callable[[], object], timeout: float = 5.0) -> None:
        """Wait until ``predicate()`` is true; AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out; last events: {self.events[-10:]}")
                self.changed.wait(left)

    def wait_count(self, name: str, count: int, timeout: float = 5.0) -> None:
        """Wait until ``name`` was recorded at least ``count`` times."""
        self.wait_until(lambda: sum(e.name == name for e in self.events) >= count, timeout)

    def on_open(self, session: Session, response: HandshakeResponse, restarting: bool) -> None:
        self.record("open", restarting)

    def on_message(self, session: Session, message: Message) -> None:
        self.record("message", message)

    def on_read_error(self, session: Session, error: Exception) -> None:
        self.record("read_error", error)

    def on_close(self, session: Session, close: CloseMessage | None) -> CloseMessage | None:
        self.record("close", close)
        return self.close_answer

    def on_close_error(self, error: Exception) -> None:
        self.record("close_error", error)

    def on_restart_error(self, error: Exception, retry_count: int, exit: Any) -> None:
        self.record("restart_error", (error, retry_count))


@pytest.fixture(autouse=True)
def _no_engine_left_running() -> Iterator[None]:
    """Fail a test that leaves an engine running, after stopping it: a test that fails
    half-way must not leave a reconnecting engine that fails every later test's thread
    check too. (Imported by the other reliability modules, so it applies there.)"""
    yield
    left = [engine for engine in list(_running_engines) if engine.running]
    for engine in left:
        engine.stop(timeout=1.0)
    if left:
        pytest.fail(f"engines left running after the test (now stopped): {left}")


def engine_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("wsengine") and t.is_alive()]


def stop_and_check(engine: WebsocketEngine, timeout: float | None = None) -> None:
    """Stop ``engine`` and check that it is stopped for good with no thread left."""
    engine.stop(timeout)
    assert engine.state is EngineState.STOPPED
    assert engine.wait(0) is True
    assert engine.session is None
    wait_for(lambda: not engine_threads(), timeout=3)


def wait_open(engine: WebsocketEngine, client: Recorder, count: int,
              timeout: float = 5.0) -> None:
    """Wait for the ``count``-th on_open and for its session to be published: the engine
    sets ``session`` and ``OPEN`` only after on_open returned, so a send() right after
    the callback could still find no session."""
    client.wait_count("open", count, timeout)
    wait_for(lambda: engine.state is EngineState.OPEN and engine.session is not None,
             timeout)


def first_close_code(server: WsServer) -> int | None:
    """The close code of the server's first connection; None until the server has seen
    one (its handler may run a moment after the client's handshake completed)."""
    return server.connections[0].close_code if server.connections else None


def closed_port() -> int:
    """A port on 127.0.0.1 with no listener (bound, then released)."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port: int = probe.getsockname()[1]
    probe.close()
    return port


def close_frame(code: int, reason: bytes = b"") -> bytes:
    """A server close frame with ``code`` and a raw ``reason``."""
    return server_frame(0x8, struct.pack("!H", code) + reason)


def serve_idle(conn: RawConnection, timeout: float = 20.0) -> None:
    """A well-behaved idle server on a RawConnection: answers pings, echoes a close frame
    and returns (the RawServer then closes TCP); returns too when the client leaves."""
    try:
        while True:
            _, opcode, payload = conn.recv_frame(timeout)
            if opcode == 0x9:
                conn.send_frame(0xA, payload)
            elif opcode == 0x8:
                conn.send_frame(0x8, payload[:2])
                return
    except (EOFError, TimeoutError, OSError):
        return


def first_then_idle(
    fault: Callable[[RawConnection], None], done: threading.Event | None = None
) -> Callable[[RawConnection], None]:
    """A RawServer script: the first connection runs ``fault`` (then sets ``done``, so a
    test can wait for the script's findings before the server closes everything); later
    ones (reconnects) are served by :func:`serve_idle`."""
    numbers = itertools.count(1)  # next() on a count is atomic in CPython

    def script(conn: RawConnection) -> None:
        if next(numbers) == 1:
            try:
                fault(conn)
            finally:
                if done is not None:
                    done.set()
        else:
            serve_idle(conn)

    return script


@contextmanager
def serve_on(port: int, handler: Callable[[ServerConnection], None]) -> Iterator[int]:
    """A websockets server on 127.0.0.1:``port`` (0: any) for the length of the block;
    yields its port. Unlike ``run_ws_server`` it keeps no connection objects."""
    server = serve(handler, "127.0.0.1", port, close_timeout=1.0)
    thread = threading.Thread(target=server.serve_forever, name="test-ws-serve-on", daemon=True)
    thread.start()
    try:
        yield server.socket.getsockname()[1]
    finally:
        server.shutdown()
        thread.join(5)
        assert not thread.is_alive()


def hold(seconds: float) -> None:
    """Let ``seconds`` pass: a duration a test needs (a pause held, an idle period),
    never a way to order events."""
    threading.Event().wait(seconds)


def thread_in(prefix: str, function: str) -> bool:
    """True if a thread whose name starts with ``prefix`` is running ``function`` now."""
    frames = sys._current_frames()
    for thread in threading.enumerate():
        if not thread.name.startswith(prefix):
            continue
        frame = frames.get(thread.ident or -1)
        while frame is not None:
            if frame.f_code.co_name == function:
                return True
            frame = frame.f_back
    return False
