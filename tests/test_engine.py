# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""The engine against real servers on 127.0.0.1: lifecycle, callbacks, stop rules."""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.sync.server import ServerConnection

from tests.support.servers import WsServer, echo_handler, run_ws_server, wait_for
from wsengine import (
    CloseMessage,
    ConfigError,
    EngineConfig,
    EngineStartError,
    EngineState,
    EngineStateError,
    HandshakeResponse,
    Message,
    MessageType,
    Session,
    WebsocketClient,
    WebsocketEngine,
)

FAST = EngineConfig(
    reconnect_delay_initial=0.01,
    reconnect_delay_max=0.05,
    ping_interval=None,
    stop_timeout=3.0,
    open_timeout=3.0,
)


def workers(count: int) -> EngineConfig:
    """FAST with ``count`` workers."""
    return dataclasses.replace(FAST, workers=count)


class Recorder(WebsocketClient):
    """Records every callback as (name, details) and lets tests wait for them."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.messages: list[Message] = []
        self.changed = threading.Condition()

    def _record(self, name: str, detail: Any = None) -> None:
        with self.changed:
            self.events.append((name, detail))
            self.changed.notify_all()

    def names(self) -> list[str]:
        with self.changed:
            return [name for name, _ in self.events]

    def details(self, name: str) -> list[Any]:
        with self.changed:
            return [detail for event, detail in self.events if event == name]

    def wait_until(self, predicate: Any, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out; events: {self.events[-20:]}")
                self.changed.wait(left)

    def on_open(self, session: Session, response: HandshakeResponse, restarting: bool) -> None:
        self._record("open", restarting)

    def on_message(self, session: Session, message: Message) -> None:
        with self.changed:
            self.messages.append(message)
            self.changed.notify_all()

    def on_read_error(self, session: Session, error: Exception) -> None:
        self._record("read_error", error)

    def on_close(self, session: Session, close: CloseMessage | None) -> CloseMessage | None:
        self._record("close", close)
        return None

    def on_close_error(self, error: Exception) -> None:
        self._record("close_error", error)

    def on_restart_error(self, error: Exception, retry_count: int, exit: Any) -> None:
        self._record("restart_error", (type(error).__name__, retry_count))


@pytest.fixture
def echo() -> Iterator[WsServer]:
    with run_ws_server(echo_handler) as server:
        yield server


def first_close_code(server: WsServer) -> int | None:
    """The close code the server's first connection received, once it has one."""
    return server.connections[0].close_code if server.connections else None


def wait_open(engine: WebsocketEngine) -> None:
    """Wait until the engine has published its current session (after on_open)."""
    wait_for(lambda: engine.state is EngineState.OPEN and engine.session is not None)


def engine_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("wsengine")]


def test_start_send_receive_stop(echo: WsServer) -> None:
    """A started engine opens once, echoes a message, and stops with one on_close(None)."""
    client = Recorder()
    engine = WebsocketEngine(echo.url, client, config=FAST)
    assert engine.state is EngineState.IDLE
    engine.start()
    assert engine.state is EngineState.OPEN and engine.running
    assert isinstance(engine.session, Session)
    assert client.names() == ["open"] and client.details("open") == [False]
    engine.send("hello")
    engine.send(b"\x00\x01")
    client.wait_until(lambda: len(client.messages) == 2)
    assert Message(MessageType.TEXT, "hello") in client.messages
    assert Message(MessageType.BINARY, b"\x00\x01") in client.messages
    engine.stop()
    assert client.names() == ["open", "close"] and client.details("close") == [None]
    assert engine.state is EngineState.STOPPED and not engine.running
    assert engine.session is None
    assert engine.wait(0) is True
    wait_for(lambda: not engine_threads(), timeout=2)
    wait_for(lambda: first_close_code(echo) == 1000, timeout=2)


def test_stop_before_start_and_twice_is_a_noop(echo: WsServer) -> None:
    """stop() before start() does nothing; a second stop() after the first does nothing."""
    client = Recorder()
    engine = WebsocketEngine(echo.url, client, config=FAST)
    engine.stop()
    assert engine.state is EngineState.IDLE and client.events == []
    engine.start()
    engine.stop()
    engine.stop()
    assert client.names() == ["open", "close"]


def test_start_twice_raises_and_restart_after_stop_works(echo: WsServer) -> None:
    """A second start() raises EngineStateError; start() after stop() opens again."""
    client = Recorder()
    engine = WebsocketEngine(echo.url, client, config=FAST)
    engine.start()
    with pytest.raises(EngineStateError):
        engine.start()
    engine.stop()
    engine.start()
    engine.send("again")
    client.wait_until(lambda: len(client.messages) == 1)
    engine.stop()
    assert client.names() == ["open", "close", "open", "close"]
    # The server's handler records a connection on its own thread, possibly after the
    # client already closed it (the first one here closes at once).
    wait_for(lambda: len(echo.connections) == 2)


def test_connection_refused_fails_start_fast() -> None:
    """A1: start() against a closed port raises EngineStartError caused by a refusal."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    client = Recorder()
    engine = WebsocketEngine(f"ws://127.0.0.1:{port}/", client, config=FAST)
    began = time.monotonic()
    with pytest.raises(EngineStartError) as raised:
        engine.start()
    assert time.monotonic() - began < 1.0
    assert isinstance(raised.value.__cause__, ConnectionRefusedError)
    assert client.events == [] and engine.state is EngineState.STOPPED
    assert engine.wait(0) is True


def test_on_open_raising_fails_start_with_its_exception(echo: WsServer) -> None:
    """A9: an exception from on_open is the __cause__ of start()'s EngineStartError."""

    class Failing(Recorder):
        def on_open(self, session: Session, response: HandshakeResponse, restarting: bool) -> None:
            raise LookupError("no such account")

    engine = WebsocketEngine(echo.url, Failing(), config=FAST)
    with pytest.raises(EngineStartError) as raised:
        engine.start()
    assert isinstance(raised.value.__cause__, LookupError)
    wait_for(lambda: first_close_code(echo) in (1011, 1006, 1001))
    assert engine.state is EngineState.STOPPED


def test_start_timeout_abandons_a_late_on_open(echo: WsServer) -> None:
    """A10: start(timeout) gives up; when on_open returns late the connection closes unused."""
    release = threading.Event()

    class Slow(Recorder):
        def on_open(self, session: Session, response: HandshakeResponse, restarting: bool) -> None:
            release.wait(5)
            session.send("sent late")  # echoed back, but must never reach on_message

    client = Slow()
    engine = WebsocketEngine(echo.url, client, config=FAST)
    began = time.monotonic()
    with pytest.raises(EngineStartError) as raised:
        engine.start(timeout=0.3)
    assert 0.25 < time.monotonic() - began < 1.5
    assert isinstance(raised.value.__cause__, TimeoutError)
    assert engine.state is EngineState.STOPPED and engine.wait(0)
    release.set()
    wait_for(lambda: not engine_threads(), timeout=3)
    assert client.messages == []
    assert engine.session is None


def test_on_message_runs_in_arrival_order_with_one_worker() -> None:
    """With workers=1, 2000 messages reach on_message one at a time, in order."""

    def burst(ws: ServerConnection) -> None:
        for number in range(2000):
            ws.send(str(number))
        ws.recv()

    client = Recorder()
    concurrent = {"now": 0, "max": 0}
    lock = threading.Lock()
    original = client.on_message

    def counting(session: Session, message: Message) -> None:
        with lock:
            concurrent["now"] += 1
            concurrent["max"] = max(concurrent["max"], concurrent["now"])
        original(session, message)
        with lock:
            concurrent["now"] -= 1

    client.on_message = counting  # type: ignore[method-assign]
    with run_ws_server(burst) as server:
        engine = WebsocketEngine(server.url, client, config=workers(1))
        engine.start()
        client.wait_until(lambda: len(client.messages) == 2000)
        engine.stop()
    assert [m.data for m in client.messages] == [str(n) for n in range(2000)]
    assert concurrent["max"] == 1


def test_workers_run_on_message_concurrently() -> None:
    """With workers=4, four on_message calls run at the same time."""
    barrier = threading.Barrier(4, timeout=5)

    def four(ws: ServerConnection) -> None:
        for number in range(4):
            ws.send(str(number))
        ws.recv()

    class Meeting(Recorder):
        def on_message(self, session: Session, message: Message) -> None:
            barrier.wait()  # breaks (raises) unless four calls overlap
            super().on_message(session, message)

    client = Meeting()
    with run_ws_server(four) as server:
        engine = WebsocketEngine(server.url, client, config=workers(4))
        engine.start()
        client.wait_until(lambda: len(client.messages) == 4)
        engine.stop()
    assert sorted(m.data for m in client.messages) == ["0", "1", "2", "3"]


def test_raising_on_message_is_logged_and_the_next_message_arrives(
    echo: WsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """C5: on_message raising is logged with its traceback; the engine goes on."""

    class Raising(Recorder):
        def on_message(self, session: Session, message: Message) -> None:
            if message.data == "boom":
                raise ValueError("bad message")
            super().on_message(session, message)

    client = Raising()
    with WebsocketEngine(echo.url, client, config=workers(1)) as engine:
        engine.send("boom")
        engine.send("fine")
        client.wait_until(lambda: len(client.messages) == 1)
    assert client.messages[0].data == "fine"
    records = [r for r in caplog.records if r.name == "wsengine" and r.levelno == logging.ERROR]
    assert records and records[0].exc_info is not None
    assert isinstance(records[0].exc_info[1], ValueError)


def test_pause_lock_is_acquired_promptly_on_a_silent_server() -> None:
    """B12: the pause lock is free within 50 ms against a silent server, and the holder
    can do a request/response by hand on session.conn."""

    def silent_until_asked(ws: ServerConnection) -> None:
        for message in ws:
            ws.send(f"answer to {message}")

    client = Recorder()
    with run_ws_server(silent_until_asked) as server:
        engine = WebsocketEngine(server.url, client, config=FAST)
        engine.start()
        session = engine.session
        assert session is not None
        began = time.monotonic()
        with engine.pause_lock:
            took = time.monotonic() - began
            session.conn.write("question")
            answer = session.conn.read(timeout=2.0)
        engine.stop()
    assert took < 0.05
    assert answer == Message(MessageType.TEXT, "answer to question")
    assert client.messages == []


def test_pause_lock_under_a_flood_stops_delivery_until_released() -> None:
    """B11: against a flooding server, the pause lock is taken within 0.25 s, no message
    is delivered while it is held, and delivery resumes after."""
    stop_flood = threading.Event()

    def flood(ws: ServerConnection) -> None:
        while not stop_flood.is_set():
            ws.send("x" * 32)

    client = Recorder()
    with run_ws_server(flood) as server:
        engine = WebsocketEngine(server.url, client, config=workers(2))
        engine.start()
        client.wait_until(lambda: len(client.messages) > 100)
        waits = []
        for _ in range(5):
            began = time.monotonic()
            with engine.pause_lock:
                waits.append(time.monotonic() - began)
                # Let in-flight callbacks (started before we held the lock) finish.
                wait_for(lambda: engine.queue_depth() == 0 or True, timeout=0.1)
                count = len(client.messages)
                threading.Event().wait(0.05)  # a hold of some length, not an ordering
                held_count = len(client.messages)
            assert held_count - count <= engine.config.workers
        delivered = len(client.messages)
        client.wait_until(lambda: len(client.messages) > delivered + 100)
        stop_flood.set()
        engine.stop()
    assert max(waits) < 0.25


def test_backpressure_bounds_the_queue_and_loses_nothing() -> None:
    """B10: with on_message blocked, at most queue_size messages plus max_size bytes of
    held-back ones wait, the server's send stalls, and after release every message
    arrives once, in order."""
    # 40 MB: more than loopback's socket buffers can hold, however far they autotune.
    total = 20000
    sent = {"count": 0}
    release = threading.Event()

    def burst(ws: ServerConnection) -> None:
        for number in range(total):
            ws.send(f"{number:06d}" + "y" * 2000)
            sent["count"] = number + 1
        ws.recv()

    class Blocked(Recorder):
        def on_message(self, session: Session, message: Message) -> None:
            release.wait(10)
            super().on_message(session, message)

    client = Blocked()
    config = EngineConfig(workers=1, queue_size=8, ping_interval=None)
    # No compression: the point is bytes that fill the socket buffers.
    with run_ws_server(burst, compression=None) as server:
        engine = WebsocketEngine(server.url, client, config=config)
        engine.start()
        try:
            depths = []
            previous = -1
            # The server's send stalls: its count stops moving well before the total.
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                depths.append(engine.queue_depth())
                now = sent["count"]
                if now == previous:
                    break
                previous = now
                threading.Event().wait(0.2)
            assert sent["count"] < total
            # Release 0.2: besides the queue_size hand-off, the backstop reader holds
            # back at most max_size bytes (the adapter's default, 1 MiB) with "block",
            # one message past it at most, before TCP backpressure.
            assert max(depths) <= config.queue_size + 2**20 // 2006 + 1
        finally:
            release.set()
        client.wait_until(lambda: len(client.messages) == total, timeout=30)
        engine.stop()
    assert [m.data[:6] for m in client.messages] == [f"{n:06d}" for n in range(total)]


def test_request_returns_the_matching_message_and_keeps_others(echo: WsServer) -> None:
    """session.request() sends and returns the matching reply; it skips on_message."""
    client = Recorder()
    with WebsocketEngine(echo.url, client, config=FAST) as engine:
        session = engine.session
        assert session is not None
        engine.send("unrelated")
        reply = session.request("id=7", lambda m: m.data == "id=7", timeout=2)
        assert reply == Message(MessageType.TEXT, "id=7")
        client.wait_until(lambda: len(client.messages) == 1)
        with pytest.raises(TimeoutError):
            session.request("id=8", lambda m: m.data == "never", timeout=0.2)
        client.wait_until(lambda: len(client.messages) == 2)
    assert [m.data for m in client.messages] == ["unrelated", "id=8"]


def test_request_from_on_open_reads_the_connection_itself(echo: WsServer) -> None:
    """A request() made in on_open gets its answer; other messages still reach on_message."""
    answers = []

    class Login(Recorder):
        def on_open(self, session: Session, response: HandshakeResponse, restarting: bool) -> None:
            session.send("hello first")
            answers.append(session.request("login", lambda m: m.data == "login", timeout=2))
            super().on_open(session, response, restarting)

    client = Login()
    with WebsocketEngine(echo.url, client, config=FAST):
        client.wait_until(lambda: len(client.messages) == 1)
    assert answers == [Message(MessageType.TEXT, "login")]
    assert client.messages == [Message(MessageType.TEXT, "hello first")]


@pytest.mark.parametrize("where", ["on_message", "on_open", "on_close"])
def test_stop_from_inside_a_callback_does_not_deadlock(echo: WsServer, where: str) -> None:
    """C11: stop() inside a callback returns at once; on_close runs once; wait() is True."""
    engine_box: list[WebsocketEngine] = []
    returned = threading.Event()

    class Stopper(Recorder):
        def on_open(self, session: Session, response: HandshakeResponse, restarting: bool) -> None:
            super().on_open(session, response, restarting)
            if where == "on_open":
                engine_box[0].stop()
                returned.set()

        def on_message(self, session: Session, message: Message) -> None:
            super().on_message(session, message)
            if where == "on_message":
                engine_box[0].stop()
                returned.set()

        def on_close(self, session: Session, close: CloseMessage | None) -> CloseMessage | None:
            super().on_close(session, close)
            if where == "on_close":
                engine_box[0].stop()
                returned.set()
            return None

    client = Stopper()
    engine = WebsocketEngine(echo.url, client, config=FAST)
    engine_box.append(engine)
    engine.start()
    if where == "on_message":
        engine.send("stop please")
    elif where == "on_close":
        session = engine.session
        assert session is not None
        session.restart()
    assert engine.wait(5)
    assert returned.is_set()
    assert client.names().count("close") == 1
    wait_for(lambda: not engine_threads(), timeout=2)


def test_stop_while_another_thread_holds_the_pause_lock(echo: WsServer) -> None:
    """C12: stop() does not need the pause lock; the holder releases later without error."""
    client = Recorder()
    engine = WebsocketEngine(echo.url, client, config=FAST)
    engine.start()
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with engine.pause_lock:
            held.set()
            release.wait(5)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(2)
    began = time.monotonic()
    engine.stop()
    assert time.monotonic() - began < FAST.stop_timeout  # type: ignore[operator]
    assert client.names() == ["open", "close"]
    release.set()
    thread.join(2)
    wait_for(lambda: not engine_threads(), timeout=2)


def test_stop_from_the_thread_holding_the_pause_lock(echo: WsServer) -> None:
    """C13: stop() while the calling thread holds the (re-entrant) pause lock."""
    client = Recorder()
    engine = WebsocketEngine(echo.url, client, config=FAST)
    engine.start()
    with engine.pause_lock:
        engine.stop()
    assert engine.state is EngineState.STOPPED
    assert client.names() == ["open", "close"]


def test_stop_from_two_threads_sends_one_close_frame(echo: WsServer) -> None:
    """C9: two concurrent stop() calls both return; on_close runs once; one close frame."""
    client = Recorder()
    engine = WebsocketEngine(echo.url, client, config=FAST)
    engine.start()
    threads = [threading.Thread(target=engine.stop) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert not any(t.is_alive() for t in threads)
    assert client.names() == ["open", "close"]
    wait_for(lambda: first_close_code(echo) == 1000)


def test_server_close_is_reported_once_then_the_engine_reconnects() -> None:
    """B1: a server close (1012 + reason) reaches on_close once; the engine reconnects."""
    seen = []

    def close_first(ws: ServerConnection) -> None:
        seen.append(ws)
        if len(seen) == 1:
            ws.close(1012, "restarting")
        else:
            echo_handler(ws)

    client = Recorder()
    with run_ws_server(close_first) as server:
        engine = WebsocketEngine(server.url, client, config=FAST)
        engine.start()
        client.wait_until(lambda: client.names().count("open") == 2)
        assert client.details("close") == [CloseMessage(1012, "restarting")]
        assert client.details("open") == [False, True]
        wait_open(engine)  # published only once on_open has returned
        engine.send("after reconnect")
        client.wait_until(lambda: len(client.messages) == 1)
        engine.stop()
    assert client.names() == ["open", "close", "open", "close"]


def test_dropped_tcp_is_reported_as_1006_then_the_engine_reconnects() -> None:
    """B2: a TCP drop without a close frame is on_close(1006), then a reconnect."""
    seen = []

    def drop_first(ws: ServerConnection) -> None:
        seen.append(ws)
        if len(seen) == 1:
            ws.socket.shutdown(socket.SHUT_RDWR)
        else:
            echo_handler(ws)

    client = Recorder()
    with run_ws_server(drop_first) as server:
        engine = WebsocketEngine(server.url, client, config=FAST)
        engine.start()
        client.wait_until(lambda: client.names().count("open") == 2, timeout=3)
        engine.stop()
    closes = client.details("close")
    assert closes[0].code == 1006 and closes[1] is None
    assert "read_error" not in client.names()


def test_session_restart_closes_1001_and_reopens(echo: WsServer) -> None:
    """session.restart() closes with 1001 and reconnects (on_open restarting=True)."""
    client = Recorder()
    engine = WebsocketEngine(echo.url, client, config=FAST)
    engine.start()
    session = engine.session
    assert session is not None
    session.restart()
    session.restart()
    client.wait_until(lambda: client.names().count("open") == 2)
    assert session.closed
    wait_for(lambda: first_close_code(echo) == 1001)
    engine.stop()
    assert client.names() == ["open", "close", "open", "close"]
    assert client.details("open") == [False, True]


def test_session_exit_stops_the_engine_for_good(echo: WsServer) -> None:
    """session.exit() closes with 1000 and stops the engine; wait() returns True."""
    client = Recorder()
    engine = WebsocketEngine(echo.url, client, config=FAST)
    engine.start()
    session = engine.session
    assert session is not None
    session.exit()
    session.exit()
    assert engine.wait(5)
    assert engine.state is EngineState.STOPPED
    assert client.names() == ["open", "close"]
    wait_for(lambda: first_close_code(echo) == 1000)


@pytest.mark.parametrize(
    ("answer", "code", "reason_bytes"),
    [
        (CloseMessage(1005), 1000, 0),
        (CloseMessage(1006), 1000, 0),
        (CloseMessage(1015), 1000, 0),
        (CloseMessage(999), 1000, 0),
        (CloseMessage(5000), 1000, 0),
        (CloseMessage(4001, "é" * 100), 4001, 122),
    ],
)
def test_on_close_answer_is_sent_only_if_legal(
    echo: WsServer, answer: CloseMessage, code: int, reason_bytes: int
) -> None:
    """C17: illegal codes from on_close are replaced; reasons are cut at 123 bytes."""

    class Answering(Recorder):
        def on_close(self, session: Session, close: CloseMessage | None) -> CloseMessage | None:
            return answer

    engine = WebsocketEngine(echo.url, Answering(), config=FAST)
    engine.start()
    engine.stop()
    wait_for(lambda: first_close_code(echo) is not None)
    assert echo.connections[0].close_code == code
    reason = echo.connections[0].close_reason or ""
    assert len(reason.encode()) == reason_bytes


def test_send_rules(echo: WsServer) -> None:
    """C14: send() needs an open session and a str or bytes."""
    client = Recorder()
    engine = WebsocketEngine(echo.url, client, config=FAST)
    with pytest.raises(EngineStateError):
        engine.send("too early")
    engine.start()
    for bad in (123, {}, None):
        with pytest.raises(TypeError):
            engine.send(bad)  # type: ignore[arg-type]
    session = engine.session
    engine.stop()
    with pytest.raises(EngineStateError):
        engine.send("too late")
    assert session is not None
    with pytest.raises(Exception) as raised:
        session.send("on a closed session")
    assert type(raised.value).__name__ == "ConnectionClosedError"


def test_concurrent_sends_arrive_intact() -> None:
    """C15: 8 threads x 1000 sends reach the server as 8000 intact messages."""
    received: list[str] = []
    done = threading.Event()

    def collect(ws: ServerConnection) -> None:
        for message in ws:
            received.append(str(message))
            if len(received) == 8000:
                done.set()

    with run_ws_server(collect) as server:
        engine = WebsocketEngine(server.url, Recorder(), config=FAST)
        engine.start()

        def sender(number: int) -> None:
            for index in range(1000):
                engine.send(f"{number}:{index}:" + "z" * (index % 50))

        threads = [threading.Thread(target=sender, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        assert done.wait(10)
        engine.stop()
    assert sorted(received) == sorted(
        f"{n}:{i}:" + "z" * (i % 50) for n in range(8) for i in range(1000)
    )


def test_context_manager_stops_even_when_the_body_raises(echo: WsServer) -> None:
    """C18: leaving the with-block stops the engine; the exception propagates."""
    client = Recorder()
    engine = WebsocketEngine(echo.url, client, config=FAST)
    with pytest.raises(RuntimeError), engine:
        assert engine.state is EngineState.OPEN
        raise RuntimeError("body failed")
    assert engine.state is EngineState.STOPPED
    assert client.names() == ["open", "close"]


def test_url_callable_is_called_before_every_dial(echo: WsServer) -> None:
    """A callable url is called before each dial (fresh tokens on reconnect)."""
    calls = []

    def url() -> str:
        calls.append(1)
        return echo.url + f"?token=t{len(calls)}"

    client = Recorder()
    engine = WebsocketEngine(url, client, config=FAST)
    engine.start()
    session = engine.session
    assert session is not None
    session.restart()
    client.wait_until(lambda: client.names().count("open") == 2)
    engine.stop()
    assert len(calls) == 2


def test_bad_constructor_arguments_raise_config_error(echo: WsServer) -> None:
    """C4: client, adapter, config and providers of the wrong type are ConfigErrors."""
    with pytest.raises(ConfigError, match="client"):
        WebsocketEngine(echo.url, object())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="adapter"):
        WebsocketEngine(echo.url, Recorder(), adapter=object())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="config"):
        WebsocketEngine(echo.url, Recorder(), config={"workers": 1})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="tracer_provider"):
        WebsocketEngine(echo.url, Recorder(), tracer_provider="x")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="url"):
        WebsocketEngine("http://127.0.0.1/", Recorder())
    with pytest.raises(ConfigError):
        WebsocketEngine(echo.url, Recorder()).stop(timeout=-1)


def test_wait_rules(echo: WsServer) -> None:
    """C20: wait(0) and wait(0.1) are False while running; wait() inside a callback raises."""
    raised = []

    class Waiter(Recorder):
        def on_message(self, session: Session, message: Message) -> None:
            try:
                engine.wait()
            except EngineStateError as error:
                raised.append(error)
            super().on_message(session, message)

    client = Waiter()
    engine = WebsocketEngine(echo.url, client, config=FAST)
    assert engine.wait(0) is True
    engine.start()
    assert engine.wait(0) is False
    assert engine.wait(0.1) is False
    engine.send("x")
    client.wait_until(lambda: len(client.messages) == 1)
    engine.stop()
    assert engine.wait() is True
    assert len(raised) == 1


def test_handshake_refusals_while_restarting() -> None:
    """A4: a 503 while restarting is retried (retry_count 1..N) until the server recovers;
    a 403 is fatal and stops the engine after on_restart_error."""
    from websockets.datastructures import Headers
    from websockets.http11 import Response

    state = {"connections": 0, "refuse": 0, "status": 503}

    def process_request(connection: ServerConnection, request: Any) -> Response | None:
        if state["refuse"] > 0:
            state["refuse"] -= 1
            return Response(state["status"], "refused", Headers(), b"")
        return None

    client = Recorder()
    with run_ws_server(echo_handler, process_request=process_request) as server:
        engine = WebsocketEngine(server.url, client, config=FAST)
        engine.start()
        state["refuse"] = 3
        session = engine.session
        assert session is not None
        session.restart()
        client.wait_until(lambda: client.names().count("open") == 2)
        assert [d[1] for d in client.details("restart_error")] == [1, 2, 3]
        wait_open(engine)
        state["refuse"] = 100
        state["status"] = 403
        session = engine.session
        assert session is not None
        session.restart()
        assert engine.wait(5)
    assert [d[1] for d in client.details("restart_error")] == [1, 2, 3, 1]


def test_reconnect_gives_up_after_max_attempts() -> None:
    """After reconnect_max_attempts failed attempts in a row the engine stops for good."""
    client = Recorder()
    server_cm = run_ws_server(echo_handler)
    server = server_cm.__enter__()
    config = EngineConfig(
        reconnect_delay_initial=0.01, reconnect_delay_max=0.02, ping_interval=None,
        reconnect_max_attempts=3,
    )
    engine = WebsocketEngine(server.url, client, config=config)
    engine.start()
    server_cm.__exit__(None, None, None)
    assert engine.wait(5)
    assert [d[1] for d in client.details("restart_error")] == [1, 2, 3]
    assert engine.state is EngineState.STOPPED


def test_exit_from_on_restart_error_stops_the_engine() -> None:
    """Calling exit() in on_restart_error stops the retry loop and the engine."""

    class Quitter(Recorder):
        def on_restart_error(self, error: Exception, retry_count: int, exit: Any) -> None:
            super().on_restart_error(error, retry_count, exit)
            exit()

    client = Quitter()
    server_cm = run_ws_server(echo_handler)
    server = server_cm.__enter__()
    engine = WebsocketEngine(server.url, client, config=FAST)
    engine.start()
    server_cm.__exit__(None, None, None)
    assert engine.wait(5)
    assert len(client.details("restart_error")) == 1


def test_stuck_on_message_does_not_block_stop(
    echo: WsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """C8: stop(timeout) returns in about that long and names the stuck callback."""
    release = threading.Event()
    entered = threading.Event()

    class Stuck(Recorder):
        def on_message(self, session: Session, message: Message) -> None:
            entered.set()
            release.wait(30)

    engine = WebsocketEngine(echo.url, Stuck(), config=workers(1))
    engine.start()
    engine.send("hang")
    assert entered.wait(5)
    began = time.monotonic()
    engine.stop(timeout=0.5)
    took = time.monotonic() - began
    release.set()
    assert took < 3.0
    assert engine.state is EngineState.STOPPED
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("on_message" in warning for warning in warnings)
    wait_for(lambda: not engine_threads(), timeout=3)


def test_keyboard_interrupt_in_a_callback_stops_run_forever(echo: WsServer) -> None:
    """C7: KeyboardInterrupt raised by a callback stops the engine and leaves run_forever."""

    class Interrupting(Recorder):
        def on_open(self, session: Session, response: HandshakeResponse, restarting: bool) -> None:
            session.send("go")

        def on_message(self, session: Session, message: Message) -> None:
            raise KeyboardInterrupt

    engine = WebsocketEngine(echo.url, Interrupting(), config=FAST)
    with pytest.raises(KeyboardInterrupt):
        engine.run_forever()
    assert engine.state is EngineState.STOPPED


def test_request_from_on_close_reads_the_connection_itself(echo: WsServer) -> None:
    """A request() made in on_close(None) during stop() gets its answer (no worker reads
    any more, so the request reads the connection itself)."""
    answers = []

    class Goodbye(Recorder):
        def on_close(self, session: Session, close: CloseMessage | None) -> CloseMessage | None:
            answers.append(session.request("bye", lambda m: m.data == "bye", timeout=2))
            return super().on_close(session, close)

    client = Goodbye()
    engine = WebsocketEngine(echo.url, client, config=FAST)
    engine.start()
    engine.stop()
    assert answers == [Message(MessageType.TEXT, "bye")]
    assert client.names() == ["open", "close"]


def test_start_timeout_cuts_a_handshake_that_never_comes() -> None:
    """A2/A10: against a server that accepts TCP and never answers the handshake, start()
    times out and the dial is cut at once: no engine thread waits out open_timeout."""
    from tests.support.rawserver import RawConnection, RawServer

    release = threading.Event()

    def silent(conn: RawConnection) -> None:
        release.wait(10)

    with RawServer(silent, handshake=False) as server:
        config = dataclasses.replace(FAST, open_timeout=30.0)
        engine = WebsocketEngine(server.url, Recorder(), config=config)
        began = time.monotonic()
        with pytest.raises(EngineStartError) as raised:
            engine.start(timeout=0.3)
        assert isinstance(raised.value.__cause__, TimeoutError)
        wait_for(lambda: not engine_threads(), timeout=1.0)
        assert time.monotonic() - began < 1.5
        release.set()


def test_keyboard_interrupt_in_on_open_while_restarting_stops_run_forever(
    echo: WsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """C7: KeyboardInterrupt from on_open during a reconnect stops the engine cleanly (no
    'supervisor crashed') and reaches run_forever."""

    class InterruptOnRestart(Recorder):
        def on_open(self, session: Session, response: HandshakeResponse, restarting: bool) -> None:
            if restarting:
                raise KeyboardInterrupt
            session.restart()

    engine = WebsocketEngine(echo.url, InterruptOnRestart(), config=FAST)
    with pytest.raises(KeyboardInterrupt):
        engine.run_forever()
    assert engine.state is EngineState.STOPPED
    assert not [r for r in caplog.records if r.levelno >= logging.CRITICAL]
