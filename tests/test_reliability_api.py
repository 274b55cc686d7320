# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""RELIABILITY.md section C: bad inputs and lifecycle of the public API (map in
test_reliability)."""

from __future__ import annotations

import itertools
import logging
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.sync.server import ServerConnection

from tests.support.rawserver import RawConnection, RawServer
from tests.support.recorder import (
    FAST,
    Recorder,
    _no_engine_left_running,  # noqa: F401 (autouse)
    fast,
    first_close_code,
    stop_and_check,
    wait_open,
)
from tests.support.servers import WsServer, echo_handler, run_ws_server, wait_for
from wsengine import (
    CloseMessage,
    ConfigError,
    EngineStartError,
    EngineState,
    HandshakeResponse,
    Message,
    MessageType,
    Session,
    WebsocketEngine,
)
from wsengine.adapters.websocket_client import WebsocketClientAdapter

ROOT = Path(__file__).resolve().parent.parent

C1_BAD_URLS: list[object] = [
    "", None, b"ws://x", "http://x", "ws://", "ws:///p", "wss://:443", "ws://h:99999",
    "ws://h:abc", "ws://h/p\r\nX-Evil: 1", "ws://h/ p",
]


def refusing_n_times(count: dict[str, int]) -> Any:
    """A process_request refusing with 503 while ``count["left"]`` is positive."""

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        if count["left"] > 0:
            count["left"] -= 1
            return Response(503, "Service Unavailable", Headers(), b"")
        return None

    return process_request


# -- C1-C4: arguments --------------------------------------------------------------------


@pytest.mark.parametrize("url", C1_BAD_URLS, ids=repr)
def test_c1_bad_url_is_refused_at_construction(url: object) -> None:
    """C1: each bad URL raises ConfigError (a ValueError) naming url when the engine is
    built, before any thread exists."""
    with pytest.raises(ConfigError) as raised:
        WebsocketEngine(url, Recorder())  # type: ignore[arg-type]
    assert isinstance(raised.value, ValueError)
    assert "url" in str(raised.value)
    assert "\r" not in str(raised.value) and "\n" not in str(raised.value)


def test_c1_bad_url_from_a_callable_fails_start_not_a_thread(echo_server: WsServer) -> None:
    """C1: a URL callable returning a bad URL fails start() with a ConfigError cause; on a
    reconnect it is a failed attempt (on_restart_error), never a crash in a thread."""
    answers = iter(["ws://h/p\r\nX-Evil: 1", echo_server.url, "http://x", echo_server.url])
    client = Recorder()
    engine = WebsocketEngine(lambda: next(answers), client, config=FAST)
    with pytest.raises(EngineStartError) as raised:
        engine.start()
    assert isinstance(raised.value.__cause__, ConfigError)
    engine.start()
    session = engine.session
    assert session is not None
    session.restart()
    wait_open(engine, client, 2)
    stop_and_check(engine)
    ((error, count),) = client.details("restart_error")
    assert isinstance(error, ConfigError) and count == 1


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), True, "1"], ids=repr)
def test_c3_call_timeouts_are_checked(echo_server: WsServer, bad: object) -> None:
    """C3: a start() or stop() timeout of 0, negative, NaN, infinite, bool or str is a
    ConfigError; the engine is left as it was."""
    client = Recorder()
    engine = WebsocketEngine(echo_server.url, client, config=FAST)
    with pytest.raises(ConfigError):
        engine.start(timeout=bad)  # type: ignore[arg-type]
    assert engine.state is EngineState.IDLE and client.events == []
    engine.start()
    with pytest.raises(ConfigError):
        engine.stop(timeout=bad)  # type: ignore[arg-type]
    assert engine.state is EngineState.OPEN
    stop_and_check(engine)
    assert client.names() == ["open", "close"]


def test_c4_more_bad_constructor_arguments(echo_server: WsServer) -> None:
    """C4: a class instead of an instance, or a bad meter_provider, is a ConfigError."""
    with pytest.raises(ConfigError, match="client"):
        WebsocketEngine(echo_server.url, Recorder)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="adapter"):
        WebsocketEngine(echo_server.url, Recorder(),
                        adapter=WebsocketClientAdapter)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="meter_provider"):
        WebsocketEngine(echo_server.url, Recorder(), meter_provider="x")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="config"):
        WebsocketEngine(echo_server.url, Recorder(), config=FAST.__class__)  # type: ignore[arg-type]


# -- C5-C8: callbacks that raise ---------------------------------------------------------


class AppError(Exception):
    """An application's own exception."""


class AppRuntimeError(RuntimeError):
    """A subclass of a built-in exception."""


def worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("wsengine-worker")]


def test_c5_raising_on_message_keeps_every_worker(
    echo_server: WsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """C5: on_message raising ValueError and Exception subclasses is logged at ERROR with
    the traceback each time; the next message arrives; no worker is lost (the pool starts
    with one thread and may only grow, up to workers)."""
    raising = {"value": ValueError, "app": AppError, "runtime": AppRuntimeError}

    class Raising(Recorder):
        def on_message(self, session: Session, message: Message) -> None:
            kind = raising.get(str(message.data))
            if kind is not None:
                self.record("raised", kind)
                raise kind(f"bad {message.data}")
            super().on_message(session, message)

    client = Raising()
    engine = WebsocketEngine(echo_server.url, client, config=fast(workers=2))
    engine.start()
    before = worker_threads()
    assert len(before) == 1
    for data in ("value", "app", "runtime", "fine"):
        engine.send(data)
    client.wait_count("message", 1)
    client.wait_count("raised", 3)
    assert all(thread.is_alive() for thread in before)
    assert 1 <= len(worker_threads()) <= 2
    engine.send("still fine")
    client.wait_count("message", 2)
    stop_and_check(engine)
    errors = [r for r in caplog.records if r.name == "wsengine" and r.levelno == logging.ERROR]
    caught = sorted(type(r.exc_info[1]).__name__ for r in errors if r.exc_info)
    assert caught == ["AppError", "AppRuntimeError", "ValueError"]


def test_c6_raising_on_close_still_sends_the_default_close(echo_server: WsServer) -> None:
    """C6: on_close raising on stop() still sends the default close frame (1000)."""

    class Raising(Recorder):
        def on_close(self, session: Session, close: CloseMessage | None) -> CloseMessage | None:
            super().on_close(session, close)
            raise AppError("on_close failed")

    client = Raising()
    engine = WebsocketEngine(echo_server.url, client, config=FAST)
    engine.start()
    stop_and_check(engine)
    wait_for(lambda: first_close_code(echo_server) == 1000)
    assert client.details("close") == [None]


def test_c6_raising_on_close_after_a_server_close_still_reconnects() -> None:
    """C6: on_close raising after the server closed does not stop the reconnect."""
    numbers = itertools.count(1)

    def close_first(ws: ServerConnection) -> None:
        if next(numbers) == 1:
            ws.close(1012, "restarting")
        else:
            echo_handler(ws)

    class Raising(Recorder):
        def on_close(self, session: Session, close: CloseMessage | None) -> CloseMessage | None:
            super().on_close(session, close)
            raise AppError("on_close failed")

    client = Raising()
    with run_ws_server(close_first) as server:
        engine = WebsocketEngine(server.url, client, config=FAST)
        engine.start()
        wait_open(engine, client, 2)
        stop_and_check(engine)
    assert client.details("close") == [CloseMessage(1012, "restarting"), None]


class FlakyAdapter(WebsocketClientAdapter):
    """The default adapter, with one read error or one failing close() on demand."""

    def __init__(self) -> None:
        super().__init__()
        self.read_failures = 0
        self.close_failures = 0

    def read_available(self, max_messages: int) -> list[Message]:
        if self.read_failures:
            self.read_failures -= 1
            raise OSError("a transient read error")
        return super().read_available(max_messages)

    def close(self, code: int = 1000, reason: str = "", timeout: float | None = None) -> None:
        if self.close_failures:
            self.close_failures -= 1
            raise OSError("close failed")
        super().close(code, reason, timeout)


def test_c6_raising_on_read_error_keeps_the_connection(echo_server: WsServer) -> None:
    """C6: on_read_error raising does not stop the reader: the next message arrives on
    the same connection."""

    class Raising(Recorder):
        def on_read_error(self, session: Session, error: Exception) -> None:
            super().on_read_error(session, error)
            raise AppError("on_read_error failed")

    adapter = FlakyAdapter()
    client = Raising()
    engine = WebsocketEngine(echo_server.url, client, adapter=adapter, config=FAST)
    engine.start()
    adapter.read_failures = 1
    engine.send("after the read error")
    client.wait_count("message", 1)
    stop_and_check(engine)
    assert client.count("read_error") == 1
    assert client.names("open", "close") == ["open", "close"]


def test_c6_raising_on_close_error_does_not_stop_the_reconnect(echo_server: WsServer) -> None:
    """C6: close() failing and on_close_error raising: the socket is aborted and the
    restart goes on."""

    class Raising(Recorder):
        def on_close_error(self, error: Exception) -> None:
            super().on_close_error(error)
            raise AppError("on_close_error failed")

    adapter = FlakyAdapter()
    client = Raising()
    engine = WebsocketEngine(echo_server.url, client, adapter=adapter, config=FAST)
    engine.start()
    adapter.close_failures = 1
    session = engine.session
    assert session is not None
    session.restart()
    wait_open(engine, client, 2)
    engine.send("reconnected")
    client.wait_count("message", 1)
    stop_and_check(engine)
    (error,) = client.details("close_error")
    assert isinstance(error, OSError)


def test_c6_raising_on_restart_error_does_not_stop_the_retries() -> None:
    """C6: on_restart_error raising does not end the retry loop."""
    refusals = {"left": 0}

    class Raising(Recorder):
        def on_restart_error(self, error: Exception, retry_count: int, exit: Any) -> None:
            super().on_restart_error(error, retry_count, exit)
            raise AppError("on_restart_error failed")

    client = Raising()
    with run_ws_server(echo_handler, process_request=refusing_n_times(refusals)) as server:
        engine = WebsocketEngine(server.url, client, config=FAST)
        engine.start()
        refusals["left"] = 2
        session = engine.session
        assert session is not None
        session.restart()
        wait_open(engine, client, 2)
        stop_and_check(engine)
    assert [count for _, count in client.details("restart_error")] == [1, 2]


def test_c6_raising_on_open_while_restarting_is_a_failed_retry(echo_server: WsServer) -> None:
    """C6: on_open raising on a restart counts as a failed attempt (on_restart_error gets
    its exception) and the engine tries again."""
    failures = {"left": 2}

    class Raising(Recorder):
        def on_open(self, session: Session, response: HandshakeResponse,
                    restarting: bool) -> None:
            super().on_open(session, response, restarting)
            if restarting and failures["left"] > 0:
                failures["left"] -= 1
                raise AppError("not ready")

    client = Raising()
    engine = WebsocketEngine(echo_server.url, client, config=FAST)
    engine.start()
    session = engine.session
    assert session is not None
    session.restart()
    wait_open(engine, client, 4)
    engine.send("third time lucky")
    client.wait_count("message", 1)
    stop_and_check(engine)
    errors = client.details("restart_error")
    assert [count for _, count in errors] == [1, 2]
    assert all(isinstance(error, AppError) for error, _ in errors)
    # Each handshake the server completed runs its handler, maybe a moment later.
    wait_for(lambda: len(echo_server.connections) == 4)


def test_c7_system_exit_in_a_callback_stops_and_reaches_run_forever(
    echo_server: WsServer,
) -> None:
    """C7: SystemExit raised by on_message stops the engine and is re-raised by
    run_forever()."""

    class Exiting(Recorder):
        def on_open(self, session: Session, response: HandshakeResponse,
                    restarting: bool) -> None:
            super().on_open(session, response, restarting)
            session.send("go")

        def on_message(self, session: Session, message: Message) -> None:
            super().on_message(session, message)
            raise SystemExit(3)

    client = Exiting()
    engine = WebsocketEngine(echo_server.url, client, config=FAST)
    with pytest.raises(SystemExit) as raised:
        engine.run_forever()
    assert raised.value.code == 3
    stop_and_check(engine)
    assert client.names("open", "close") == ["open", "close"]
    wait_for(lambda: first_close_code(echo_server) == 1000)


# -- C9-C16: stop, restart and exit from everywhere --------------------------------------


def test_c9_concurrent_stops_send_exactly_one_close_frame() -> None:
    """C9: stop() from three threads at once, then again: all return, on_close runs once,
    and the server receives exactly one close frame."""
    frames: list[int] = []
    done = threading.Event()

    def count_frames(conn: RawConnection) -> None:
        try:
            while True:
                _, opcode, payload = conn.recv_frame(10)
                frames.append(opcode)
                if opcode == 0x8:
                    conn.send_frame(0x8, payload[:2])
        except (EOFError, TimeoutError, OSError):
            done.set()

    client = Recorder()
    with RawServer(count_frames) as raw:
        engine = WebsocketEngine(raw.url, client, config=FAST)
        engine.start()
        threads = [threading.Thread(target=engine.stop) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(5)
        assert not any(thread.is_alive() for thread in threads)
        stop_and_check(engine)
        assert done.wait(5)  # the client closed TCP: every frame it sent was counted
    assert frames.count(0x8) == 1
    assert client.names() == ["open", "close"]


def test_c11_stop_inside_on_restart_error_does_not_deadlock() -> None:
    """C11: stop() called in on_restart_error returns at once; an outside wait() returns
    True; on_close ran once."""
    returned = threading.Event()
    engines: list[WebsocketEngine] = []
    refusals = {"left": 0}

    class Stopper(Recorder):
        def on_restart_error(self, error: Exception, retry_count: int, exit: Any) -> None:
            super().on_restart_error(error, retry_count, exit)
            engines[0].stop()
            returned.set()

    client = Stopper()
    with run_ws_server(echo_handler, process_request=refusing_n_times(refusals)) as server:
        engine = WebsocketEngine(server.url, client, config=FAST)
        engines.append(engine)
        engine.start()
        refusals["left"] = 100
        session = engine.session
        assert session is not None
        session.restart()
        assert engine.wait(5) is True
        assert returned.is_set()
        stop_and_check(engine)
    assert client.names() == ["open", "close", "restart_error"]


def test_c16_restart_twice_from_on_message_reconnects_once(echo_server: WsServer) -> None:
    """C16: session.restart() twice from a callback gives one 1001 close and one
    reconnect, with no second on_close."""

    class Restarter(Recorder):
        def on_message(self, session: Session, message: Message) -> None:
            super().on_message(session, message)
            if message.data == "restart":
                session.restart()
                session.restart()

    client = Restarter()
    engine = WebsocketEngine(echo_server.url, client, config=FAST)
    engine.start()
    engine.send("restart")
    wait_open(engine, client, 2)
    engine.send("after")
    client.wait_until(lambda: Message(MessageType.TEXT, "after") in client.messages)
    assert client.names("open", "close") == ["open", "close", "open"]
    stop_and_check(engine)
    wait_for(lambda: first_close_code(echo_server) == 1001)
    assert len(echo_server.connections) == 2


def test_c16_exit_twice_from_on_message_stops_once(echo_server: WsServer) -> None:
    """C16: session.exit() twice from a callback stops the engine once, with a 1000
    close."""

    class Exiter(Recorder):
        def on_message(self, session: Session, message: Message) -> None:
            super().on_message(session, message)
            session.exit()
            session.exit()

    client = Exiter()
    engine = WebsocketEngine(echo_server.url, client, config=FAST)
    engine.start()
    engine.send("exit")
    assert engine.wait(5) is True
    stop_and_check(engine)
    wait_for(lambda: first_close_code(echo_server) == 1000)
    assert client.names("open", "close") == ["open", "close"]
    assert len(echo_server.connections) == 1


def test_c16_exit_twice_during_the_retry_loop_stops_once() -> None:
    """C16: the retry loop's exit() called twice stops the engine once; no more
    attempts."""

    class Quitter(Recorder):
        def on_restart_error(self, error: Exception, retry_count: int, exit: Any) -> None:
            super().on_restart_error(error, retry_count, exit)
            exit()
            exit()

    refusals = {"left": 0}
    client = Quitter()
    with run_ws_server(echo_handler, process_request=refusing_n_times(refusals)) as server:
        engine = WebsocketEngine(server.url, client, config=FAST)
        engine.start()
        refusals["left"] = 100
        session = engine.session
        assert session is not None
        session.restart()
        assert engine.wait(5) is True
        stop_and_check(engine)
    assert client.names() == ["open", "close", "restart_error"]
    assert refusals["left"] == 99


def test_c16_restart_of_an_ended_session_during_the_retry_loop_is_a_noop() -> None:
    """C16: restart() on the old session while the engine retries changes nothing: one
    reconnect, one on_close for that session."""
    refusals = {"left": 0}
    stale: list[Session] = []

    class Meddler(Recorder):
        def on_restart_error(self, error: Exception, retry_count: int, exit: Any) -> None:
            super().on_restart_error(error, retry_count, exit)
            stale[0].restart()
            stale[0].restart()

    client = Meddler()
    with run_ws_server(echo_handler, process_request=refusing_n_times(refusals)) as server:
        engine = WebsocketEngine(server.url, client, config=FAST)
        engine.start()
        session = engine.session
        assert session is not None
        stale.append(session)
        refusals["left"] = 2
        session.restart()
        wait_open(engine, client, 2)
        engine.send("settled")
        client.wait_count("message", 1)
        assert client.names("open", "close") == ["open", "close", "open"]
        stop_and_check(engine)
    assert [count for _, count in client.details("restart_error")] == [1, 2]


def test_c17_illegal_close_code_from_on_close_is_logged(
    echo_server: WsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """C17: a close code not legal on the wire returned by on_close is replaced by 1000
    and a warning names it."""
    client = Recorder()
    client.close_answer = CloseMessage(1005)
    engine = WebsocketEngine(echo_server.url, client, config=FAST)
    engine.start()
    stop_and_check(engine)
    wait_for(lambda: first_close_code(echo_server) == 1000)
    warnings = [r.getMessage() for r in caplog.records
                if r.name == "wsengine" and r.levelno == logging.WARNING]
    assert any("1005" in message for message in warnings)


# -- C21: an engine nobody stopped -------------------------------------------------------


FORGOTTEN = """
import gc, sys, threading
from wsengine import EngineConfig, WebsocketClient, WebsocketEngine

class Client(WebsocketClient):
    def on_message(self, session, message):
        got.set()

got = threading.Event()
engine = WebsocketEngine(sys.argv[1], Client(),
                         config=EngineConfig(ping_interval=None, stop_timeout=1.0))
engine.start()
engine.send("x")
got.wait(5)
del engine
gc.collect()
print("main done", flush=True)
"""


def test_c21_forgotten_engine_warns_resource_warning(echo_server: WsServer) -> None:
    """C21: an engine dropped without stop() is reported with a ResourceWarning; the
    interpreter still exits and the server gets a close frame."""
    process = subprocess.run(
        [sys.executable, "-W", "always::ResourceWarning", "-c", textwrap.dedent(FORGOTTEN),
         echo_server.url],
        cwd=ROOT, capture_output=True, text=True, timeout=20,
    )
    assert process.returncode == 0, process.stderr
    assert "main done" in process.stdout
    wait_for(lambda: first_close_code(echo_server) == 1000)
    assert "ResourceWarning" in process.stderr

