# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""The workers: leader/followers loops hosted by one ThreadPoolExecutor per session."""

from __future__ import annotations

import concurrent.futures.thread as futures_thread
import dataclasses
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from opentelemetry import context as otel_context
from websockets.sync.server import ServerConnection

from tests.support.servers import WsServer, echo_handler, run_ws_server, wait_for
from wsengine import (
    EngineConfig,
    HandshakeResponse,
    Message,
    Session,
    WebsocketClient,
    WebsocketEngine,
    _dispatch,
)
from wsengine._dispatch import Dispatcher
from wsengine._pause import PauseLock
from wsengine.adapters.websocket_client import WebsocketClientAdapter

FAST = EngineConfig(
    reconnect_delay_initial=0.01,
    reconnect_delay_max=0.05,
    ping_interval=None,
    stop_timeout=3.0,
    open_timeout=3.0,
)


def in_executor_worker() -> bool:
    """True when the calling thread runs under ``concurrent.futures.thread._worker``."""
    frame = sys._getframe()
    while frame is not None:
        code = frame.f_code
        if code.co_name == "_worker" and code.co_filename == futures_thread.__file__:
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


@dataclasses.dataclass
class Seen:
    """What one on_message call saw of its thread."""

    data: str | bytes
    thread: threading.Thread
    executor: ThreadPoolExecutor | None
    in_worker: bool


class Watcher(WebsocketClient):
    """Records, for each message, the thread it ran on and the session's executor."""

    def __init__(self, engine_ref: Callable[[], WebsocketEngine]) -> None:
        self.engine_ref = engine_ref
        self.seen: list[Seen] = []
        self.changed = threading.Condition()
        self.barrier: threading.Barrier | None = None

    def on_open(self, session: Session, response: HandshakeResponse, restarting: bool) -> None:
        session.send("go")

    def on_message(self, session: Session, message: Message) -> None:
        run = self.engine_ref()._run
        dispatcher = run.dispatcher if run is not None else None
        executor = dispatcher.executor if dispatcher is not None else None
        if self.barrier is not None:
            self.barrier.wait()  # breaks (raises) unless enough calls overlap
        with self.changed:
            self.seen.append(
                Seen(message.data, threading.current_thread(), executor, in_executor_worker())
            )
            self.changed.notify_all()

    def wait_count(self, count: int, timeout: float = 10.0) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.seen) >= count, timeout), self.seen


def run_engine(handler: Callable[[ServerConnection], None], workers: int,
               count: int, barrier: threading.Barrier | None = None) -> list[Seen]:
    """Run an engine with ``workers`` against ``handler`` until ``count`` messages came."""
    holder: list[WebsocketEngine] = []
    client = Watcher(lambda: holder[0])
    client.barrier = barrier
    with run_ws_server(handler) as server:
        engine = WebsocketEngine(
            server.url, client, config=dataclasses.replace(FAST, workers=workers)
        )
        holder.append(engine)
        engine.start()
        try:
            client.wait_count(count)
        finally:
            engine.stop()
    with client.changed:
        return list(client.seen)


def sender(count: int) -> Callable[[ServerConnection], None]:
    def handler(ws: ServerConnection) -> None:
        ws.recv()  # "go"
        for number in range(count):
            ws.send(str(number))
        ws.recv()  # until the engine closes

    return handler


def assert_hosted(seen: list[Seen]) -> None:
    """Every call ran on a daemon thread of its session's executor, out of the exit join."""
    for item in seen:
        assert item.executor is not None, item
        assert item.in_worker, item
        assert item.thread in item.executor._threads, item
        assert item.thread.daemon, item
        assert item.thread not in futures_thread._threads_queues, item
        assert item.thread.name.startswith("wsengine-worker-"), item


def test_on_message_runs_on_a_thread_of_the_session_executor() -> None:
    """on_message runs inside a ThreadPoolExecutor worker thread of the session's own
    executor; after stop() that executor is shut down and its threads are gone."""
    seen = run_engine(sender(20), workers=2, count=20)
    assert_hosted(seen)
    executors = {id(item.executor): item.executor for item in seen}
    assert len(executors) == 1
    (executor,) = executors.values()
    assert executor is not None
    assert executor._shutdown
    assert not any(thread.is_alive() for thread in executor._threads)


def test_one_worker_keeps_arrival_order_on_one_executor_thread() -> None:
    """workers=1: 500 messages arrive in order, all on the executor's single thread."""
    seen = run_engine(sender(500), workers=1, count=500)
    assert [item.data for item in seen] == [str(n) for n in range(500)]
    assert_hosted(seen)
    assert len({item.thread for item in seen}) == 1
    executor = seen[0].executor
    assert executor is not None and len(executor._threads) == 1


def test_n_workers_run_n_callbacks_at_once_on_n_executor_threads() -> None:
    """workers=4: four on_message calls overlap (a barrier of 4 passes), each on its own
    thread of the one executor, which has exactly four threads."""
    seen = run_engine(sender(4), workers=4, count=4, barrier=threading.Barrier(4, timeout=5))
    assert sorted(item.data for item in seen) == ["0", "1", "2", "3"]
    assert_hosted(seen)
    assert len({item.thread for item in seen}) == 4
    executor = seen[0].executor
    assert executor is not None and set(executor._threads) == {item.thread for item in seen}


# -- the Dispatcher on its own, over a real connection ------------------------------------


@pytest.fixture
def conn(echo_server: WsServer) -> Iterator[WebsocketClientAdapter]:
    adapter = WebsocketClientAdapter()
    adapter.dial(echo_server.url, 5)
    try:
        yield adapter
    finally:
        adapter.abort()


class Delivered:
    def __init__(self, fail: bool = False) -> None:
        self.messages: list[tuple[Message, threading.Thread]] = []
        self.changed = threading.Condition()
        self.fail = fail

    def __call__(self, message: Message) -> None:
        with self.changed:
            self.messages.append((message, threading.current_thread()))
            self.changed.notify_all()
        if self.fail:
            raise RuntimeError("a bug in the deliver function")

    def wait_count(self, count: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.messages) >= count, 5), self.messages


def make_dispatcher(conn: WebsocketClientAdapter, deliver: Delivered, workers: int) -> Dispatcher:
    def unexpected(error: BaseException) -> None:
        raise AssertionError(f"unexpected {error!r}")

    return Dispatcher(
        conn, PauseLock(), workers=workers, queue_size=8, deliver=deliver,
        read_error=unexpected, lost=unexpected, name="wsengine-worker-test",
        otel_ctx=otel_context.get_current(),
    )


def echo_once_and_end(conn: WebsocketClientAdapter, dispatcher: Dispatcher,
                      deliver: Delivered) -> None:
    conn.write("ping me")
    deliver.wait_count(1)
    dispatcher.drain()
    assert dispatcher.join(5) == []
    assert not any(thread.is_alive() for thread in dispatcher.threads)


def test_workers_started_from_a_non_daemon_thread_are_daemon(
    conn: WebsocketClientAdapter,
) -> None:
    """Executor threads inherit the daemon flag of the submitting thread; started (and the
    pool grown) from the (non-daemon) main thread, the workers are still daemon, hosted
    and unlisted."""
    assert not threading.current_thread().daemon
    deliver = Delivered()
    dispatcher = make_dispatcher(conn, deliver, workers=2)
    dispatcher.start()
    assert len(dispatcher.threads) == 1  # the pool grows when messages wait
    dispatcher._grow()
    assert dispatcher.executor is not None
    assert set(dispatcher.threads) == set(dispatcher.executor._threads)
    assert len(dispatcher.threads) == 2
    assert all(thread.daemon for thread in dispatcher.threads)
    assert not any(thread in futures_thread._threads_queues for thread in dispatcher.threads)
    echo_once_and_end(conn, dispatcher, deliver)
    assert deliver.messages[0][1] in dispatcher.threads
    assert dispatcher.executor._shutdown


def test_non_daemon_executor_threads_fall_back_to_plain_daemon_threads(
    conn: WebsocketClientAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Were the executor's threads non-daemon (submitted here from the main thread, as a
    Python that ignored the creator's flag would do), the session runs plain daemon
    threads instead: a stuck callback must never block exit."""
    monkeypatch.setattr(_dispatch, "_on_daemon_thread", lambda action, name: action())
    deliver = Delivered()
    dispatcher = make_dispatcher(conn, deliver, workers=2)
    dispatcher.start()
    dispatcher._grow()
    assert dispatcher.executor is None
    assert len(dispatcher.threads) == 2
    assert all(thread.daemon for thread in dispatcher.threads)
    echo_once_and_end(conn, dispatcher, deliver)
    assert deliver.messages[0][1] in dispatcher.threads


@pytest.mark.parametrize("missing", ["listing", "exit hook", "exiting"])
def test_without_the_stdlib_internals_workers_are_plain_daemon_threads(
    conn: WebsocketClientAdapter, monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    """No ``_threads_queues``, no threading exit hook, or the interpreter already exiting:
    the documented fallback, plain daemon threads, still delivers."""
    if missing == "listing":
        monkeypatch.setattr(_dispatch, "_exit_join_listing", lambda: None)
    elif missing == "exit hook":
        monkeypatch.setattr(_dispatch, "HOSTED", False)
    else:
        monkeypatch.setattr(_dispatch, "_interpreter_exiting", True)
    deliver = Delivered()
    dispatcher = make_dispatcher(conn, deliver, workers=1)
    dispatcher.start()
    assert dispatcher.executor is None
    assert [thread.daemon for thread in dispatcher.threads] == [True]
    assert dispatcher.threads[0].name.startswith("wsengine-worker-")
    echo_once_and_end(conn, dispatcher, deliver)
    assert deliver.messages[0][1] is dispatcher.threads[0]


def test_a_crashing_worker_loop_is_logged_critical_not_swallowed(
    conn: WebsocketClientAdapter, caplog: pytest.LogCaptureFixture
) -> None:
    """A hosted loop that raises (a bug) is logged at CRITICAL with its traceback; the
    Future is not the only place that knows."""
    deliver = Delivered(fail=True)
    dispatcher = make_dispatcher(conn, deliver, workers=1)
    with caplog.at_level(logging.CRITICAL, logger="wsengine"):
        dispatcher.start()
        conn.write("crash")
        (future,) = dispatcher.futures
        error = future.exception(timeout=5)
    assert isinstance(error, RuntimeError)
    crashes = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert [r.getMessage() for r in crashes] == ["wsengine worker crashed"]
    assert crashes[0].exc_info is not None and crashes[0].exc_info[0] is RuntimeError
    dispatcher.drain()
    assert dispatcher.join(5) == []
    wait_for(lambda: not any(t.is_alive() for t in dispatcher.threads), timeout=5)


# -- lazy growth (issue 15) ----------------------------------------------------------------


def engine_threads(engine: WebsocketEngine) -> list[threading.Thread]:
    """The live threads of the engine's current run (supervisor and workers)."""
    run = engine._run
    assert run is not None
    return [thread for thread in list(run.threads) if thread.is_alive()]


def test_an_idle_engine_with_four_workers_holds_two_threads() -> None:
    """workers=4 and no traffic: the supervisor and one worker, nothing more (the pool
    grows when messages wait for a worker)."""
    client = WebsocketClient()

    def quiet(ws: ServerConnection) -> None:
        ws.recv()  # until the engine closes

    with run_ws_server(quiet) as server:
        engine = WebsocketEngine(server.url, client, config=dataclasses.replace(FAST, workers=4))
        engine.start()
        try:
            run = engine._run
            assert run is not None and run.dispatcher is not None
            workers = [t for t in engine_threads(engine) if t.name.startswith("wsengine-worker-")]
            assert len(workers) == 1, workers
            assert len(engine_threads(engine)) == 2
            assert run.dispatcher.threads == workers
        finally:
            engine.stop()


class Blocking(WebsocketClient):
    """on_message of "stuck" blocks until released; the others are recorded (with whether
    their thread is one of the run's engine threads) and may wait at a barrier."""

    def __init__(self, engine_ref: Callable[[], WebsocketEngine],
                 barrier: threading.Barrier | None = None) -> None:
        self.engine_ref = engine_ref
        self.barrier = barrier
        self.release = threading.Event()
        self.seen: list[tuple[str | bytes, threading.Thread, bool]] = []
        self.changed = threading.Condition()

    def on_message(self, session: Session, message: Message) -> None:
        if message.data == "stuck":
            self.release.wait(10)
            return
        run = self.engine_ref()._run
        engine_thread = run is not None and threading.current_thread() in run.threads
        if self.barrier is not None:
            self.barrier.wait()  # breaks (raises) unless enough calls overlap
        with self.changed:
            self.seen.append((message.data, threading.current_thread(), engine_thread))
            self.changed.notify_all()

    def wait_count(self, count: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.seen) >= count, 10), self.seen


def run_blocking(messages: list[str], client_of: Callable[[Callable[[], WebsocketEngine]],
                 Blocking], count: int) -> tuple[Blocking, int]:
    """Run a workers=4 engine that receives ``messages`` in one burst until ``count`` were
    recorded; return the client and the number of worker threads the session had.

    The engine is paused while the server sends, so that one read takes the whole burst
    (the messages behind the first one wait in the hand-off, not on the socket)."""
    holder: list[WebsocketEngine] = []
    client = client_of(lambda: holder[0])
    sent = threading.Event()

    def burst(ws: ServerConnection) -> None:
        ws.recv()  # "go"
        for data in messages:
            ws.send(data)
        sent.set()
        ws.recv()  # until the engine closes

    with run_ws_server(burst) as server:
        engine = WebsocketEngine(server.url, client, config=dataclasses.replace(FAST, workers=4))
        holder.append(engine)
        engine.start()
        try:
            run = engine._run
            assert run is not None and run.dispatcher is not None
            dispatcher = run.dispatcher
            assert len(dispatcher.threads) == 1  # before any traffic
            assert engine.session is not None
            with engine.pause_lock:
                engine.session.send("go")
                assert sent.wait(5)
            client.wait_count(count)
            grown = len(dispatcher.threads)
        finally:
            client.release.set()
            engine.stop()
    return client, grown


def test_slow_callbacks_grow_the_pool_to_workers_and_run_at_once() -> None:
    """Four callbacks that wait for each other (a barrier of 4): the pool grows from one
    thread to four, all four run on_message at once, each one an engine thread of the
    run (so stop() or wait() from it knows it is one)."""
    client, grown = run_blocking(
        ["0", "1", "2", "3"], lambda ref: Blocking(ref, threading.Barrier(4, timeout=5)), 4
    )
    assert grown == 4
    assert sorted(data for data, _, _ in client.seen) == ["0", "1", "2", "3"]
    assert len({thread for _, thread, _ in client.seen}) == 4
    assert all(engine_thread for _, _, engine_thread in client.seen), client.seen


def test_a_stuck_callback_does_not_keep_the_messages_behind_it() -> None:
    """The first message's callback blocks until the test ends; the messages read with it
    (one burst) still reach on_message, on another worker the pool grew for."""
    client, grown = run_blocking(["stuck", "a", "b", "c"], Blocking, 3)
    assert sorted(data for data, _, _ in client.seen) == ["a", "b", "c"]
    assert 2 <= grown <= 4


def test_an_adapter_raising_in_has_pending_data_does_not_end_a_worker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The worker loop asks the adapter whether bytes wait before it hands the socket to
    another worker; a third-party adapter raising there loses no message and no worker."""

    class Raising(WebsocketClientAdapter):
        def has_pending_data(self) -> bool:
            raise RuntimeError("has_pending_data is broken")

    got: list[str | bytes] = []
    arrived = threading.Condition()

    class Client(WebsocketClient):
        def on_message(self, session: Session, message: Message) -> None:
            with arrived:
                got.append(message.data)
                arrived.notify_all()

    with run_ws_server(echo_handler) as server, caplog.at_level(logging.CRITICAL):
        engine = WebsocketEngine(
            server.url, Client(), adapter=Raising(), config=dataclasses.replace(FAST, workers=2)
        )
        engine.start()
        try:
            for data in ("one", "two", "three"):
                engine.send(data)
                with arrived:
                    assert arrived.wait_for(lambda d=data: d in got, timeout=5), got
        finally:
            engine.stop()
    assert got == ["one", "two", "three"]
    assert not [r for r in caplog.records if r.levelno >= logging.CRITICAL]


def test_request_from_on_message_hands_the_reading_to_another_worker_at_once() -> None:
    """A worker about to block in request() lends the reading before it waits: the pool
    grows by one there and then (not at the supervisor's next tick), and the answer is
    read by the other worker."""
    seen: dict[str, object] = {}
    done = threading.Event()

    def answering(ws: ServerConnection) -> None:
        for data in ws:
            ws.send("answer" if data == "ask" else data)

    class Client(WebsocketClient):
        def on_message(self, session: Session, message: Message) -> None:
            if message.data != "go":
                return
            run = engine._run
            assert run is not None and run.dispatcher is not None
            dispatcher = run.dispatcher
            lend = session._core.lend_reader

            def spy() -> None:
                seen["before"] = len(dispatcher.threads)
                lend()
                seen["after"] = len(dispatcher.threads)

            session._core.lend_reader = spy
            answer_threads: list[threading.Thread] = []

            def match(reply: Message) -> bool:
                answer_threads.append(threading.current_thread())
                return reply.data == "answer"

            seen["answer"] = session.request("ask", match, timeout=5).data
            seen["answered_elsewhere"] = threading.current_thread() not in answer_threads
            done.set()

    with run_ws_server(answering) as server:
        engine = WebsocketEngine(
            server.url, Client(), config=dataclasses.replace(FAST, workers=3)
        )
        engine.start()
        try:
            run = engine._run
            assert run is not None and run.dispatcher is not None
            # From a thread that is not a worker it does nothing.
            run.dispatcher.lend_reader()
            assert len(run.dispatcher.threads) == 1
            engine.send("go")
            assert done.wait(5)
        finally:
            engine.stop()
    assert seen["before"] == 1 and seen["after"] == 2, seen
    assert seen["answer"] == "answer"
    assert seen["answered_elsewhere"] is True
