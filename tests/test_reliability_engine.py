# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""RELIABILITY.md E8 and the engine-side rough edges of issue 16: a stale run cannot touch
a restarted engine, stop() keeps its timeout, cuts a hanging dial, and the state and the
errors seen during a reconnect are the documented ones."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.proxy import FaultProxy
from tests.support.rawserver import RawConnection, RawServer
from tests.support.recorder import (
    Recorder,
    _no_engine_left_running,  # noqa: F401 (autouse)
    fast,
    stop_and_check,
    wait_open,
)
from tests.support.servers import echo_handler, run_ws_server
from wsengine import (
    CloseMessage,
    ConnectionAdapter,
    ConnectionClosedError,
    EngineStartError,
    EngineState,
    EngineStateError,
    Message,
    Session,
    WebsocketEngine,
)
from wsengine.adapters.websocket_client import WebsocketClientAdapter
from wsengine.adapters.websockets_sync import WebsocketsAdapter

ROOT = Path(__file__).resolve().parent.parent

ADAPTERS: dict[str, Callable[[], ConnectionAdapter]] = {
    "websocket_client": WebsocketClientAdapter,
    "websockets": WebsocketsAdapter,
}


class StuckFirstClose(Recorder):
    """Records callbacks with their session; the first on_close blocks until ``release``."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.first_close_thread: threading.Thread | None = None
        self.sessions: list[Session] = []

    def on_open(self, session: Session, response: Any, restarting: bool) -> None:
        self.sessions.append(session)
        super().on_open(session, response, restarting)

    def on_message(self, session: Session, message: Message) -> None:
        self.record("message", (session, message.data))

    def on_close(self, session: Session, close: CloseMessage | None) -> CloseMessage | None:
        first = self.first_close_thread is None
        if first:
            self.first_close_thread = threading.current_thread()
        self.record("close", (session, close))
        if first:
            self.release.wait(20)
        return None


@pytest.mark.parametrize("kind", list(ADAPTERS))
def test_e8_a_stale_on_close_cannot_touch_the_restarted_engine(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """E8: stop() gives up on a stuck on_close, start() opens a new connection, then the
    old on_close returns: the new connection is not closed, gets no stray delivery and
    the engine's state does not change."""
    client = StuckFirstClose()
    with run_ws_server(echo_handler) as server:
        engine = WebsocketEngine(server.url, client, adapter=ADAPTERS[kind](),
                                 config=fast(stop_timeout=0.4))
        engine.start()
        wait_open(engine, client, 1)
        with caplog.at_level(logging.WARNING, logger="wsengine"):
            engine.stop()
        assert "gave up" in caplog.text and "on_close" in caplog.text
        assert engine.state is EngineState.STOPPED

        engine.start()
        wait_open(engine, client, 2)
        new_session = engine.session
        assert new_session is client.sessions[1]
        engine.send("before")
        client.wait_until(lambda: ("message" in client.names()))

        old_thread = client.first_close_thread
        assert old_thread is not None and old_thread.is_alive()
        client.release.set()
        old_thread.join(5)
        assert not old_thread.is_alive()

        engine.send("after")
        client.wait_count("message", 2)
        assert engine.state is EngineState.OPEN
        assert engine.session is new_session and not new_session.closed
        assert [s for s, _ in client.details("message")] == [new_session, new_session]
        assert [s for s, _ in client.details("close")] == [client.sessions[0]]
        assert len(server.connections) == 2
        assert server.connections[1].close_code is None
        stop_and_check(engine)
    assert [s for s, _ in client.details("close")] == client.sessions


def test_stop_returns_within_its_timeout_against_a_stuck_on_close() -> None:
    """stop(timeout) returns within the timeout (plus a small margin), not the timeout
    plus the abort grace, when on_close never returns."""
    client = StuckFirstClose()
    with run_ws_server(echo_handler) as server:
        engine = WebsocketEngine(server.url, client, config=fast())
        engine.start()
        wait_open(engine, client, 1)
        began = time.monotonic()
        engine.stop(timeout=1.0)
        took = time.monotonic() - began
        client.release.set()
        assert client.first_close_thread is not None
        client.first_close_thread.join(5)
        stop_and_check(engine)
    assert 0.9 <= took < 1.0 + 0.15, took


def test_workers_warning_names_the_time_actually_waited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The "workers still busy" warning gives the time stop() let them have, not
    config.stop_timeout."""
    release = threading.Event()

    class Stuck(Recorder):
        def on_message(self, session: Session, message: Message) -> None:
            super().on_message(session, message)
            release.wait(20)

    client = Stuck()
    with run_ws_server(echo_handler) as server:
        engine = WebsocketEngine(server.url, client, config=fast(stop_timeout=30.0))
        engine.start()
        engine.send("x")
        client.wait_count("message", 1)
        with caplog.at_level(logging.WARNING, logger="wsengine"):
            engine.stop(timeout=0.8)
        release.set()
        stop_and_check(engine)
    busy = [r.getMessage() for r in caplog.records if "workers still busy" in r.getMessage()]
    assert len(busy) == 1, caplog.text
    assert "after 30" not in busy[0]
    seconds = float(busy[0].split("after ", 1)[1].split(" s", 1)[0])
    assert 0 < seconds <= 0.8


def hang_handshake(requested: threading.Event) -> Callable[[RawConnection], None]:
    """A RawServer script: read the upgrade request, never answer, wait for the client
    to leave."""

    def script(conn: RawConnection) -> None:
        conn.read_request()
        requested.set()
        conn.wait_eof(timeout=15)

    return script


def test_stop_cuts_a_hanging_first_dial_at_once() -> None:
    """stop() while start() waits for a handshake that never comes aborts the dial at
    once (there is no session to close gracefully) instead of waiting its timeout."""
    requested = threading.Event()
    failures: list[BaseException] = []
    with RawServer(hang_handshake(requested), handshake=False) as server:
        engine = WebsocketEngine(server.url, Recorder(),
                                 config=fast(open_timeout=20.0, stop_timeout=10.0))

        def start() -> None:
            try:
                engine.start()
            except BaseException as error:  # recorded for the test
                failures.append(error)

        starter = threading.Thread(target=start, name="test-starter")
        starter.start()
        assert requested.wait(5)
        began = time.monotonic()
        engine.stop()
        took = time.monotonic() - began
        starter.join(5)
        stop_and_check(engine)
    assert took < 1.0, took
    assert len(failures) == 1 and isinstance(failures[0], EngineStartError)


def test_stop_cuts_a_hanging_reconnect_dial_at_once() -> None:
    """stop() while a reconnection's handshake hangs returns at once, and the state read
    CLOSING, then STOPPED."""
    requested = threading.Event()
    connections = iter(range(1_000))

    def script(conn: RawConnection) -> None:
        if next(connections) == 0:
            conn.handshake()
            return  # closes TCP: the engine reconnects
        hang_handshake(requested)(conn)

    client = Recorder()
    with RawServer(script, handshake=False) as server:
        engine = WebsocketEngine(server.url, client,
                                 config=fast(open_timeout=20.0, stop_timeout=10.0))
        engine.start()
        assert requested.wait(5)
        assert engine.state is EngineState.RECONNECTING
        began = time.monotonic()
        engine.stop()
        took = time.monotonic() - began
        stop_and_check(engine)
    assert took < 1.0, took


CTRL_C_SCRIPT = """
import sys
from wsengine import EngineConfig, WebsocketClient, WebsocketEngine

engine = WebsocketEngine(sys.argv[1], WebsocketClient(),
                         config=EngineConfig(ping_interval=None))
print("running", flush=True)
engine.run_forever()
print("returned", engine.state.name, flush=True)
"""


def test_ctrl_c_during_a_hanging_handshake_in_run_forever_is_prompt() -> None:
    """Ctrl-C while run_forever() waits for a handshake that never comes returns within
    a second (the dial is cut), not after stop_timeout (10 s)."""
    requested = threading.Event()
    with RawServer(hang_handshake(requested), handshake=False) as server:
        process = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(CTRL_C_SCRIPT), server.url],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            assert requested.wait(20)
            began = time.monotonic()
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=20)
            took = time.monotonic() - began
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert process.returncode == 0, err
    assert "returned STOPPED" in out
    assert took < 2.0, took


def test_state_reads_closing_when_a_lost_connection_is_not_reconnected() -> None:
    """With auto_reconnect=False, a connection the peer closes ends the engine: state is
    CLOSING during on_close, never RECONNECTING."""
    seen: list[EngineState] = []
    box: list[WebsocketEngine] = []

    class Watcher(Recorder):
        def on_close(self, session: Session, close: CloseMessage | None) -> CloseMessage | None:
            seen.append(box[0].state)
            return super().on_close(session, close)

    def close_at_once(ws: Any) -> None:
        ws.close(1001, "going away")

    client = Watcher()
    with run_ws_server(close_at_once) as server:
        engine = WebsocketEngine(server.url, client, config=fast(auto_reconnect=False))
        box.append(engine)
        engine.start()
        assert engine.wait(5)
        stop_and_check(engine)
    assert seen == [EngineState.CLOSING]
    assert client.details("close") == [CloseMessage(1001, "going away")]


@pytest.mark.parametrize("kind", list(ADAPTERS))
def test_engine_send_raises_engine_state_error_once_the_connection_is_gone(kind: str) -> None:
    """engine.send() on a connection that died before the engine noticed raises
    EngineStateError (the ConnectionClosedError chained), as it does in RECONNECTING:
    one exception for "no open session"."""
    client = Recorder()
    with run_ws_server(echo_handler) as server, FaultProxy(server.port) as proxy:
        engine = WebsocketEngine(proxy.url, client, adapter=ADAPTERS[kind](), config=fast())
        engine.start()
        wait_open(engine, client, 1)
        # Holding the pause lock keeps the engine from reading, so it cannot notice the
        # reset: the state stays OPEN while the connection is gone.
        with engine.pause_lock:
            proxy.reset()
            proxy.wait(lambda: proxy.link(1).closed, timeout=5)
            deadline = time.monotonic() + 5
            raised: BaseException | None = None
            while raised is None and time.monotonic() < deadline:
                assert engine.state is EngineState.OPEN
                try:
                    engine.send("x" * 65536)
                except Exception as error:
                    raised = error
        assert isinstance(raised, EngineStateError), repr(raised)
        assert isinstance(raised.__cause__, ConnectionClosedError)
        client.wait_count("open", 2)
        stop_and_check(engine)


@pytest.mark.parametrize("kind", list(ADAPTERS))
def test_a_closed_sessions_conn_cannot_reach_the_next_connection(kind: str) -> None:
    """session.conn kept past its session (here across a restart) refuses to write or
    read, and its close() and abort() leave the next connection alone."""
    client = Recorder()
    with run_ws_server(echo_handler) as server:
        engine = WebsocketEngine(server.url, client, adapter=ADAPTERS[kind](), config=fast())
        engine.start()
        wait_open(engine, client, 1)
        old = engine.session
        assert old is not None
        old.restart()
        wait_open(engine, client, 2)
        assert engine.session is not old
        with pytest.raises(ConnectionClosedError):
            old.conn.write("stale")
        with engine.pause_lock, pytest.raises(ConnectionClosedError):
            old.conn.read(timeout=0.1)
        old.conn.close()
        old.conn.abort()
        engine.send("fresh")
        client.wait_count("message", 1)
        assert [m.data for m in client.messages] == ["fresh"]
        assert engine.state is EngineState.OPEN and client.count("close") == 1
        stop_and_check(engine)
