# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""The sending side of flow control (issue 11, points 3-5; RELIABILITY E14): the send rate
limit, ``send(timeout=...)``, and the send buffer, against real servers on both adapters."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection

from tests.support.rawserver import RawConnection, RawServer
from tests.support.servers import run_ws_server, wait_for
from tests.test_reliability import (
    Recorder,
    _no_engine_left_running,  # noqa: F401 (autouse)
    fast,
    stop_and_check,
    wait_open,
)
from wsengine import (
    ConnectionClosedError,
    EngineStateError,
    Message,
    Session,
    WebsocketEngine,
)
from wsengine.adapters.base import ConnectionAdapter
from wsengine.adapters.websocket_client import WebsocketClientAdapter
from wsengine.adapters.websockets_sync import WebsocketsAdapter
from wsengine.types import CloseMessage, HandshakeResponse

ADAPTERS: list[Callable[[], ConnectionAdapter]] = [WebsocketClientAdapter, WebsocketsAdapter]


@pytest.fixture(params=ADAPTERS, ids=["websocket-client", "websockets"])
def make_adapter(request: pytest.FixtureRequest) -> Callable[[], ConnectionAdapter]:
    return request.param  # type: ignore[no-any-return]


class Collector:
    """A websockets handler that records what each connection received, with times."""

    def __init__(self) -> None:
        self.received: list[tuple[int, str | bytes, float]] = []
        self.changed = threading.Condition()
        self.connections = 0

    def __call__(self, ws: ServerConnection) -> None:
        with self.changed:
            self.connections += 1
            number = self.connections
        try:
            for message in ws:
                with self.changed:
                    self.received.append((number, message, time.monotonic()))
                    self.changed.notify_all()
        except ConnectionClosed:
            pass

    def wait_count(self, count: int, timeout: float = 5.0) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.received) >= count, timeout), (
                f"server got {len(self.received)} of {count}: {self.received}"
            )

    def messages(self) -> list[str | bytes]:
        with self.changed:
            return [m for _, m, _ in self.received]


# -- send_rate / send_burst ---------------------------------------------------------------


def test_send_rate_spaces_messages_out(make_adapter: Callable[[], ConnectionAdapter]) -> None:
    """10 sends at 20 messages/s with a burst of 2: the first two go at once, the rest one
    per 50 ms, so the last arrives no sooner than 8 * 50 ms after the first."""
    rate, burst, count = 20.0, 2, 10
    collector = Collector()
    client = Recorder()
    with run_ws_server(collector) as server:
        engine = WebsocketEngine(server.url, client, adapter=make_adapter(),
                                 config=fast(send_rate=rate, send_burst=burst))
        engine.start()
        began = time.monotonic()
        for index in range(count):
            engine.send(f"m{index}")
        took = time.monotonic() - began
        collector.wait_count(count)
        assert collector.messages() == [f"m{i}" for i in range(count)]
        assert took >= (count - burst) / rate * 0.9
        times = [t for _, _, t in collector.received]
        assert times[-1] - times[0] >= (count - burst) / rate * 0.8
        stop_and_check(engine)


def test_send_from_on_message_with_a_rate_does_not_deadlock(
    make_adapter: Callable[[], ConnectionAdapter],
) -> None:
    """workers=1, send_rate set: on_message answers each of 6 messages with session.send;
    every answer reaches the server and the engine stops cleanly."""
    count = 6
    answers: list[str] = []
    done = threading.Event()

    def handler(ws: ServerConnection) -> None:
        for index in range(count):
            ws.send(f"q{index}")
        try:
            for message in ws:
                answers.append(str(message))
                if len(answers) == count:
                    done.set()
        except ConnectionClosed:
            pass

    class Answerer(Recorder):
        def on_message(self, session: Session, message: Message) -> None:
            session.send(f"a{message.data!s}")
            super().on_message(session, message)

    client = Answerer()
    with run_ws_server(handler) as server:
        engine = WebsocketEngine(server.url, client, adapter=make_adapter(),
                                 config=fast(workers=1, send_rate=25.0, send_burst=1))
        engine.start()
        assert done.wait(10), f"answers so far: {answers}"
        assert answers == [f"aq{i}" for i in range(count)]
        stop_and_check(engine)


def test_stop_wakes_senders_waiting_for_a_token(
    make_adapter: Callable[[], ConnectionAdapter],
) -> None:
    """send_rate=0.1/s: a second engine.send and a session.send wait ~10 s for their
    token; stop(timeout=2) returns within it and they raise EngineStateError and
    ConnectionClosedError at once, and neither message was sent."""
    collector = Collector()
    client = Recorder()
    with run_ws_server(collector) as server:
        engine = WebsocketEngine(server.url, client, adapter=make_adapter(),
                                 config=fast(send_rate=0.1, send_burst=1))
        engine.start()
        engine.send("first")
        session = engine.session
        assert session is not None
        errors: dict[str, BaseException | None] = {}

        def send(name: str, action: Callable[[], None]) -> None:
            try:
                action()
            except BaseException as error:  # recorded for the test
                errors[name] = error
            else:
                errors[name] = None

        threads = [
            threading.Thread(target=send, args=("engine", lambda: engine.send("late-e")),
                             name="test-sender-engine", daemon=True),
            threading.Thread(target=send, args=("session", lambda: session.send("late-s")),
                             name="test-sender-session", daemon=True),
        ]
        for thread in threads:
            thread.start()
        collector.wait_count(1)
        began = time.monotonic()
        engine.stop(timeout=2)
        took = time.monotonic() - began
        for thread in threads:
            thread.join(2)
            assert not thread.is_alive()
        assert took < 2.5
        assert isinstance(errors["engine"], EngineStateError)
        assert isinstance(errors["session"], ConnectionClosedError)
        assert collector.messages() == ["first"]
        stop_and_check(engine)


def test_send_timeout_bounds_the_rate_limit_wait(
    make_adapter: Callable[[], ConnectionAdapter],
) -> None:
    """A send whose token is 10 s away raises TimeoutError after its 0.3 s timeout; the
    connection stays open and the message is not sent."""
    collector = Collector()
    client = Recorder()
    with run_ws_server(collector) as server:
        engine = WebsocketEngine(server.url, client, adapter=make_adapter(),
                                 config=fast(send_rate=0.1, send_burst=1))
        engine.start()
        engine.send("first")
        began = time.monotonic()
        with pytest.raises(TimeoutError):
            engine.send("second", timeout=0.3)
        took = time.monotonic() - began
        assert 0.25 <= took < 1.5
        collector.wait_count(1)
        assert engine.session is not None and not engine.session.closed
        assert client.count("close") == 0
        assert collector.messages() == ["first"]
        stop_and_check(engine)


# -- send(timeout=...) into a peer that never reads (E14) ---------------------------------


def silent_first(release: threading.Event) -> Callable[[RawConnection], None]:
    """First connection: never read nor write until released; later ones: idle server."""
    numbers = iter(range(1, 1000))

    def script(conn: RawConnection) -> None:
        if next(numbers) == 1:
            release.wait(30)
            return
        try:
            while True:
                _, opcode, payload = conn.recv_frame(20)
                if opcode == 0x9:
                    conn.send_frame(0xA, payload)
                elif opcode == 0x8:
                    conn.send_frame(0x8, payload[:2])
                    return
        except (EOFError, TimeoutError, OSError):
            return

    return script


@pytest.mark.timeout(60)
def test_e14_send_timeout_into_a_peer_that_never_reads(
    make_adapter: Callable[[], ConnectionAdapter],
) -> None:
    """E14: 1 MiB sends with timeout=0.5 into a peer that reads nothing: TimeoutError
    within the timeout; the frame was partly written, so the connection is failed
    (on_close gets 1006) and the engine reconnects."""
    client = Recorder()
    release = threading.Event()
    try:
        with RawServer(silent_first(release)) as raw:
            engine = WebsocketEngine(raw.url, client, adapter=make_adapter(), config=fast())
            engine.start()
            wait_open(engine, client, 1)
            took = None
            for _ in range(200):  # the kernel's buffers take a few MiB first
                began = time.monotonic()
                try:
                    engine.send(bytes(2**20), timeout=0.5)
                except TimeoutError:
                    took = time.monotonic() - began
                    break
            assert took is not None, "no send ever timed out"
            assert took < 1.5
            client.wait_count("close", 1)
            assert client.details("close")[0].code == 1006
            client.wait_count("open", 2)
            release.set()
            stop_and_check(engine)
    finally:
        release.set()


# -- send_buffer ------------------------------------------------------------------------------


class Buffering(Recorder):
    """on_open sends "open-N" itself, then queues through engine.send (CONNECTING)."""

    def __init__(self, queued: list[str]) -> None:
        super().__init__()
        self.engine: WebsocketEngine | None = None
        self.queued = queued
        self.refused: list[BaseException] = []
        self.opens = 0

    def on_open(self, session: Session, response: HandshakeResponse, restarting: bool) -> None:
        self.opens += 1
        session.send(f"open-{self.opens}")
        assert self.engine is not None
        if self.opens == 1:
            for data in self.queued:
                try:
                    self.engine.send(data)
                except EngineStateError as error:
                    self.refused.append(error)
        super().on_open(session, response, restarting)


def test_send_buffer_sends_after_on_open_in_order(
    make_adapter: Callable[[], ConnectionAdapter],
) -> None:
    """engine.send during on_open (CONNECTING) queues; the queue goes out right after
    on_open's own sends and before a later send; one past the buffer is refused."""
    collector = Collector()
    client = Buffering(["b1", "b2", "b3"])
    with run_ws_server(collector) as server:
        engine = WebsocketEngine(server.url, client, adapter=make_adapter(),
                                 config=fast(send_buffer=2))
        client.engine = engine
        engine.start()
        engine.send("later")
        collector.wait_count(4)
        assert collector.messages() == ["open-1", "b1", "b2", "later"]
        assert len(client.refused) == 1 and "full" in str(client.refused[0])
        assert engine.dropped_sends == 0
        stop_and_check(engine)


def test_send_buffer_while_reconnecting_goes_to_the_next_session(
    make_adapter: Callable[[], ConnectionAdapter],
) -> None:
    """A send from on_close of a lost session (RECONNECTING) is sent on the next session,
    after that session's on_open sends."""
    received: list[tuple[int, str | bytes]] = []
    got = threading.Condition()
    numbers = iter(range(1, 100))

    def handler(ws: ServerConnection) -> None:
        number = next(numbers)
        try:
            for message in ws:
                with got:
                    received.append((number, message))
                    got.notify_all()
                if number == 1:
                    ws.close(1011, "bye")
        except ConnectionClosed:
            pass

    class OnClose(Buffering):
        def on_close(self, session: Session, close: CloseMessage | None) -> CloseMessage | None:
            assert self.engine is not None
            self.engine.send("from-on-close")
            return super().on_close(session, close)

    client = OnClose([])
    with run_ws_server(handler) as server:
        engine = WebsocketEngine(server.url, client, adapter=make_adapter(),
                                 config=fast(send_buffer=4))
        client.engine = engine
        engine.start()
        with got:
            assert got.wait_for(lambda: len(received) >= 3, 5), received
        assert received[:3] == [(1, "open-1"), (2, "open-2"), (2, "from-on-close")]
        stop_and_check(engine)


def test_send_buffer_dropped_and_counted_at_a_final_stop(
    make_adapter: Callable[[], ConnectionAdapter],
) -> None:
    """Messages queued while RECONNECTING are never sent once the engine stops for good:
    engine.dropped_sends counts them, and the server never sees them."""
    collector = Collector()
    queued = threading.Event()

    class Queue(Recorder):
        engine: Any = None

        def on_close(self, session: Session, close: CloseMessage | None) -> CloseMessage | None:
            self.engine.send("q1")
            self.engine.send("q2")
            queued.set()
            return super().on_close(session, close)

    client = Queue()
    with run_ws_server(collector) as server:
        engine = WebsocketEngine(
            server.url, client, adapter=make_adapter(),
            config=fast(send_buffer=4, reconnect_delay_initial=20.0, reconnect_delay_max=20.0,
                        reconnect_jitter=0.0),
        )
        client.engine = engine
        engine.start()
        engine.send("live")
        collector.wait_count(1)
        server.connections[0].close(1011, "drop it")
        assert queued.wait(5)
        stop_and_check(engine)
        assert engine.dropped_sends == 2
        assert collector.messages() == ["live"]
        with pytest.raises(EngineStateError):
            engine.send("after stop")


def test_send_buffer_zero_keeps_the_old_behaviour(
    make_adapter: Callable[[], ConnectionAdapter],
) -> None:
    client = Buffering(["b1"])
    collector = Collector()
    with run_ws_server(collector) as server:
        engine = WebsocketEngine(server.url, client, adapter=make_adapter(), config=fast())
        client.engine = engine
        engine.start()
        assert len(client.refused) == 1
        wait_for(lambda: collector.messages() == ["open-1"])
        stop_and_check(engine)


def test_a_revoked_session_refuses_sends_on_the_fast_path(
    make_adapter: Callable[[], ConnectionAdapter],
) -> None:
    """The inline send path (no timeout, no send_rate) keeps the lease's word and the
    errors' shapes: once the session's lease is revoked (here while the engine still says
    OPEN, as when the session ends during a send), engine.send raises EngineStateError
    with the ConnectionClosedError (1006) as its cause, session.send raises that error,
    and neither message reaches the server; sends before it arrive in order."""
    collector = Collector()
    client = Recorder()
    with run_ws_server(collector) as server:
        engine = WebsocketEngine(server.url, client, adapter=make_adapter(), config=fast())
        engine.start()
        session = engine.session
        assert session is not None
        engine.send("e1")
        session.send(b"s2")
        collector.wait_count(2)
        session.conn.lease.revoke()  # type: ignore[attr-defined]
        with pytest.raises(EngineStateError) as raised:
            engine.send("late-engine")
        cause = raised.value.__cause__
        assert isinstance(cause, ConnectionClosedError)
        assert cause.code == 1006
        with pytest.raises(ConnectionClosedError) as closed:
            session.send("late-session")
        assert closed.value.code == 1006
        assert collector.messages() == ["e1", b"s2"]
        engine._adapter.abort()  # the revoked view's close would do nothing
        stop_and_check(engine)
