# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""RELIABILITY.md sections A-C: shared helpers, the row map, and the fault proxy's own tests.

The rows are tested in three files: ``test_reliability_open.py`` (A, opening the
connection), ``test_reliability_faults.py`` (B, faults on an open connection) and
``test_reliability_api.py`` (C, public API). Each test's docstring starts with its row id.

Rows whose exact test lives elsewhere (not repeated here):

- A1: ``test_engine.py::test_connection_refused_fails_start_fast``
- A9: ``test_engine.py::test_on_open_raising_fails_start_with_its_exception``
- A10 (late ``on_open``): ``test_engine.py::test_start_timeout_abandons_a_late_on_open``
  (the late dial is ``test_reliability_open.py::test_a10_late_dial_leaves_nothing_behind``)
- B10: ``test_engine.py::test_backpressure_bounds_the_queue_and_loses_nothing`` (RSS:
  ``test_soak.py``)
- B11: ``test_engine.py::test_pause_lock_under_a_flood_stops_delivery_until_released``
- B12: ``test_engine.py::test_pause_lock_is_acquired_promptly_on_a_silent_server``
- C2: ``test_telemetry.py::test_nothing_secret_reaches_spans_events_or_logs`` and
  ``test_url.py::test_error_shows_the_url_redacted``
- C3: ``test_config.py::test_bad_value_raises_config_error_naming_field_and_value`` and
  ``test_config.py::test_assignment_raises_frozen_instance_error`` (the timeouts given to
  ``start()``/``stop()``: ``test_reliability_api.py::test_c3_call_timeouts_are_checked``)
- C4: ``test_engine.py::test_bad_constructor_arguments_raise_config_error`` (the rest:
  ``test_reliability_api.py::test_c4_more_bad_constructor_arguments``)
- C5 (log, span):
  ``test_engine.py::test_raising_on_message_is_logged_and_the_next_message_arrives``,
  ``test_telemetry.py::test_raising_callback_marks_its_span_error``
- C7 (KeyboardInterrupt):
  ``test_engine.py::test_keyboard_interrupt_in_a_callback_stops_run_forever``
- C8: ``test_engine.py::test_stuck_on_message_does_not_block_stop`` and
  ``test_exit.py::test_stuck_callback_does_not_block_interpreter_exit``
- C10: ``test_engine.py::test_stop_before_start_and_twice_is_a_noop`` and
  ``test_engine.py::test_start_twice_raises_and_restart_after_stop_works``
- C11 (on_message, on_open, on_close):
  ``test_engine.py::test_stop_from_inside_a_callback_does_not_deadlock``
- C12: ``test_engine.py::test_stop_while_another_thread_holds_the_pause_lock``
- C13: ``test_engine.py::test_stop_from_the_thread_holding_the_pause_lock``
- C14: ``test_engine.py::test_send_rules``
- C15: ``test_engine.py::test_concurrent_sends_arrive_intact``
- C17 (codes sent): ``test_engine.py::test_on_close_answer_is_sent_only_if_legal``
- C18: ``test_engine.py::test_context_manager_stops_even_when_the_body_raises``
- C19: ``test_exit.py::test_ctrl_c_in_run_forever_stops_gracefully``
- C20: ``test_engine.py::test_wait_rules``
- C21 (exit): ``test_exit.py::test_forgotten_stop_still_exits_and_closes_cleanly``
- E7: ``test_telemetry.py::test_dropped_engines_are_collected``
- E8: ``test_reliability_engine.py::test_e8_a_stale_on_close_cannot_touch_the_restarted_engine``
  (the engine-side rough edges of issue 16 are in the same file)
"""

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

from tests.support.proxy import Direction, FaultProxy, Scope
from tests.support.rawserver import RawConnection
from tests.support.rawserver import encode_frame as server_frame
from tests.support.servers import WsServer, echo_handler, run_ws_server, wait_for
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


# -- the fault proxy's own tests: each mode does what the fault tests rely on --------------


def test_proxy_passes_bytes_and_counts_them() -> None:
    """The proxy forwards both ways in pass mode and counts links and bytes."""
    client = Recorder()
    with run_ws_server(echo_handler) as server, FaultProxy(server.port) as proxy:
        engine = WebsocketEngine(proxy.url, client, config=FAST)
        engine.start()
        engine.send("through the proxy")
        client.wait_count("message", 1)
        stop_and_check(engine)
        proxy.wait(lambda: proxy.active == 0)
    assert client.messages[0].data == "through the proxy"
    assert proxy.connections == 1
    link = proxy.link(1)
    assert link.bytes_up > 17 and link.bytes_down > 17 and link.closed
    assert proxy.bytes_up == link.bytes_up and proxy.bytes_down == link.bytes_down


def test_proxy_latency_delays_and_keeps_order() -> None:
    """Latency mode delays each chunk by about its setting, in order."""
    client = Recorder()
    with run_ws_server(echo_handler) as server, FaultProxy(server.port, seed=7) as proxy:
        engine = WebsocketEngine(proxy.url, client, config=fast(workers=1))
        engine.start()
        proxy.latency(0.1, 0.02)
        began = time.monotonic()
        for number in range(20):
            engine.send(str(number))
        client.wait_count("message", 20)
        took = time.monotonic() - began
        stop_and_check(engine)
    assert [m.data for m in client.messages] == [str(n) for n in range(20)]
    assert 0.16 <= took < 1.5  # two crossings of 0.1 +- 0.02 s


def test_proxy_black_hole_and_heal() -> None:
    """Black hole forwards nothing and keeps the link open; heal lets bytes through again."""
    client = Recorder()
    with run_ws_server(echo_handler) as server, FaultProxy(server.port) as proxy:
        engine = WebsocketEngine(proxy.url, client, config=FAST)
        engine.start()
        proxy.black_hole()
        down = proxy.bytes_down
        engine.send("lost")
        proxy.wait(lambda: proxy.dropped[Direction.UP] > 0)
        hold(0.2)
        assert proxy.bytes_down == down and client.messages == []
        assert proxy.active == 1
        proxy.heal()
        # The dropped frame was whole, so the stream stays in step: what comes next is
        # echoed.
        engine.send("found")
        client.wait_until(lambda: any(m.data == "found" for m in client.messages))
        stop_and_check(engine)
    assert [m.data for m in client.messages] == ["found"]


def test_proxy_slice_splits_into_tiny_chunks() -> None:
    """Slice mode delivers data in 1-3 byte sends, intact."""
    client = Recorder()
    with run_ws_server(echo_handler) as server, FaultProxy(server.port) as proxy:
        engine = WebsocketEngine(proxy.url, client, config=FAST)
        engine.start()
        proxy.slice(1, 3, 0.0005, Direction.DOWN)
        engine.send("s" * 300)
        client.wait_count("message", 1)
        stop_and_check(engine)
    assert client.messages[0].data == "s" * 300


def test_proxy_reset_sends_rst_and_limit_data_closes() -> None:
    """reset() resets the client's connection; limit_data closes a link after N bytes."""
    with run_ws_server(echo_handler) as server, FaultProxy(server.port) as proxy:
        first = socket.create_connection(("127.0.0.1", proxy.port))
        try:
            proxy.wait(lambda: proxy.active == 1)
            proxy.reset()
            first.settimeout(5)
            try:
                data = first.recv(10)
            except ConnectionResetError:
                data = None
            assert data is None
        finally:
            first.close()
        proxy.limit_data(5, Direction.DOWN, Scope.NEW)
        second = socket.create_connection(("127.0.0.1", proxy.port))
        try:
            second.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            second.settimeout(5)
            received = b""
            while chunk := second.recv(100):
                received += chunk
        finally:
            second.close()
        assert len(received) == 5
        proxy.wait(lambda: proxy.active == 0)
