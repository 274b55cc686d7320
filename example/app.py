# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""The example's synchronous application, which embeds the client the way a script or a
worker process does.

- The main thread runs the application's own loop: a heartbeat line every few seconds
  with the engine's state and the client's counters, and the pauses below.
- The client runs on a background thread named ``example-client``
  (:class:`ClientThread`): ``engine.start()``, then ``engine.wait()``. The engine's own
  threads (``wsengine-...``) run the callbacks.
- Every ``pause_every`` echoes the client hands the application a
  :class:`~example.client.PauseRequest`; the application then takes
  ``with engine.pause_lock:``, writes a request on ``session.conn`` and reads the
  server's answer itself, lets the client's next message go out, holds the pause a
  little longer (the echo of that message waits, unread), and releases. The engine then
  delivers what arrived meanwhile: nothing is lost. The pause is an ``example.pause``
  span in the session's trace, under the ``on_message`` that asked for it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, StatusCode

from example.client import EchoClient, PauseRequest
from wsengine import ConnectionClosedError, EngineStartError, Session, WebsocketEngine

__all__ = ["ANSWER_TIMEOUT", "CLIENT_THREAD_NAME", "Application", "ClientThread"]

logger = logging.getLogger("example")

#: The name of the thread the client runs on.
CLIENT_THREAD_NAME = "example-client"

#: Seconds the application waits for the server's answer to its request by hand, and
#: for the messages held back by a pause to be delivered after it.
ANSWER_TIMEOUT = 5.0

#: Seconds the client thread gets to end once the engine stopped.
JOIN_TIMEOUT = 5.0

#: The main thread waits in slices this long (seconds), never in one untimed wait. A
#: signal may be taken by another thread (observed under load): the main thread then
#: runs the Python handler only when it next wakes, and an untimed wait never does.
SIGNAL_CHECK_INTERVAL = 0.25


class ClientThread:
    """Runs the engine on a background thread named ``example-client``: ``start()``,
    then ``wait()`` until the engine stops for good.

    Args:
        engine: the engine to run; stopped by whoever owns it (the application).
        url: where the engine connects, for the log (the example's URLs hold no secret).
    """

    def __init__(self, engine: WebsocketEngine, url: str) -> None:
        self.engine = engine
        self.url = url
        #: The failed start, if it failed.
        self.start_error: EngineStartError | None = None
        #: Set by the application before it stops the engine: a start that fails then
        #: was interrupted, not refused.
        self.stopping = threading.Event()
        # Started by start(); ends when the engine stopped for good or its start failed;
        # joined by join(). A daemon, so that a main thread that dies unexpectedly still
        # lets the interpreter exit (and its exit handler stop the engine).
        self._thread = threading.Thread(target=self._run, name=CLIENT_THREAD_NAME, daemon=True)

    def start(self) -> None:
        """Start the thread; returns at once."""
        self._thread.start()

    def is_alive(self) -> bool:
        """True until the engine stopped for good (or never started)."""
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        """Wait up to ``timeout`` seconds for the thread to end."""
        if self._thread.ident is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        logger.info("client thread started: connecting to %s", self.url)
        try:
            self.engine.start()
        except EngineStartError as error:
            self.start_error = error
            if self.stopping.is_set():
                logger.info("client thread: the stop interrupted the connection")
            else:
                logger.error("could not connect: %s", error)
            return
        # Untimed: signals are the main thread's business, not this one's.
        self.engine.wait()
        logger.info("client thread ends: the engine is %s", self.engine.state.name)


class Application:
    """The main-thread loop that embeds the client: heartbeats and pauses.

    Args:
        engine: the engine, not started yet.
        client: its callbacks.
        url: where it connects, for the log.
        heartbeat: seconds between two heartbeat lines; > 0.
        pause_for: seconds a pause lasts in all, from taking the lock; >= 0.
        tracer_provider: for the ``example.pause`` spans; default the global provider.
    """

    def __init__(
        self,
        engine: WebsocketEngine,
        client: EchoClient,
        url: str,
        *,
        heartbeat: float = 3.0,
        pause_for: float = 2.0,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self.engine = engine
        self.client = client
        self.heartbeat_interval = heartbeat
        self.pause_for = pause_for
        self.client_thread = ClientThread(engine, url)
        self._tracer = trace.get_tracer("example", tracer_provider=tracer_provider)
        # Read and written by the main thread only.
        self.pauses = 0
        self.held_back = 0
        self.delivered_after_release = 0
        # Never set: the main thread waits on it in slices while a pause lasts.
        self._never = threading.Event()

    def run(self) -> int:
        """Start the client thread and loop until the engine stops for good or Ctrl-C
        (SIGINT or SIGTERM, as ``KeyboardInterrupt``); returns the exit status.

        Blocks the calling (main) thread; the engine is stopped and the client thread
        joined on the way out in any case.
        """
        interrupted = False
        self.client_thread.start()
        next_beat = time.monotonic() + self.heartbeat_interval
        try:
            while self.client_thread.is_alive():
                wait = min(SIGNAL_CHECK_INTERVAL, max(0.0, next_beat - time.monotonic()))
                try:
                    request = self.client.pause_requests.get(timeout=wait)
                except queue.Empty:
                    pass
                else:
                    self.pause(request)
                if time.monotonic() >= next_beat:
                    self.heartbeat()
                    next_beat = time.monotonic() + self.heartbeat_interval
        except KeyboardInterrupt:
            interrupted = True
            logger.info("interrupted: stopping")
        finally:
            self.client_thread.stopping.set()
            # A no-op when the engine already stopped; stops one still connecting too.
            self.engine.stop()
            self.client.cancel()
            self.client_thread.join(JOIN_TIMEOUT)
            logger.info("client stopped: %s", self.client.snapshot())
        return 0 if interrupted else self._status()

    def _status(self) -> int:
        if self.client_thread.start_error is not None or self.client.gave_up.is_set():
            return 1
        if self.client.count and not self.client.done.is_set():
            logger.error("the engine stopped before %d echoes", self.client.count)
            return 1
        return 0

    def heartbeat(self) -> None:
        """Log one line with the engine's state and the counters (main thread)."""
        session = self.engine.session
        logger.info(
            "heartbeat: engine %s, session %s, %s; pauses=%d held_back=%d "
            "delivered_after_release=%d",
            self.engine.state.name, session.id if session is not None else "none",
            self.client.snapshot(), self.pauses, self.held_back, self.delivered_after_release,
        )

    def pause(self, request: PauseRequest) -> None:
        """Pause the engine, ask the server by hand, let the client go on, release.

        Blocks the main thread for about ``pause_for`` seconds, then until what arrived
        meanwhile was delivered (at most ``ANSWER_TIMEOUT``). A ``KeyboardInterrupt``
        releases the lock on its way out.
        """
        session = request.session
        if session.closed:
            logger.info("no pause after echo %d: its connection closed", request.echoes)
            return
        self.pauses += 1
        number = self.pauses
        with self._tracer.start_as_current_span(
            "example.pause",
            context=request.context,
            attributes={
                "example.pause.number": number,
                "example.pause.after_echo": request.echoes,
                "wsengine.session.id": session.id,
                "thread.name": threading.current_thread().name,
            },
            # An interrupt is not a failure of the pause: it gets an event, not ERROR.
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            asked = time.monotonic()
            with self.engine.pause_lock:
                locked = time.monotonic()
                lock_wait = locked - asked
                span.add_event("lock acquired", {"example.pause.lock_wait_ms": lock_wait * 1e3})
                logger.info(
                    "pause #%d after echo %d: took the pause lock in %.1f ms; "
                    "piloting the connection by hand",
                    number, request.echoes, lock_wait * 1e3,
                )
                try:
                    answer = self._ask_by_hand(session, number, span)
                    if not session.closed:
                        # The client's next message goes out while we hold the lock; its
                        # echo arrives and waits, unread, until the release.
                        self.client.schedule_next(session, otel_context.get_current())
                        self._hold_until(locked + self.pause_for)
                except KeyboardInterrupt:
                    span.add_event("interrupted")
                    logger.info("pause #%d interrupted: releasing the pause lock", number)
                    raise
                # Sent before the release and not delivered yet: their echoes arrived
                # meanwhile (a few microseconds away on a local network).
                counters = self.client.settled_snapshot()
                held_back = counters.sent - counters.received
                span.set_attribute("example.pause.held_back", held_back)
                span.add_event("lock released")
            held = time.monotonic() - locked
        self.held_back += held_back
        logger.info(
            "pause #%d over: released the lock after %.2f s (had waited %.1f ms for it); "
            "%s; %d message%s arrived meanwhile, delivered after the release",
            number, held, lock_wait * 1e3, answer, held_back, "" if held_back == 1 else "s",
        )
        self._await_delivery(number, held_back, counters.sent)

    def _ask_by_hand(self, session: Session, number: int, span: Span) -> str:
        """Write a request on ``session.conn`` and read the server's answer (pause lock
        held). Returns a phrase for the log."""
        question = f"pause #{number}: still there?"
        sent = time.monotonic()
        try:
            session.conn.write(question)
            answer = None
            deadline = sent + ANSWER_TIMEOUT
            while answer is None and time.monotonic() < deadline:
                # Slices, so that a signal is handled at once (see SIGNAL_CHECK_INTERVAL).
                answer = session.conn.read(
                    timeout=min(SIGNAL_CHECK_INTERVAL, max(0.0, deadline - time.monotonic()))
                )
        except ConnectionClosedError as error:
            span.set_status(StatusCode.ERROR, f"connection closed ({error.code})")
            return f"the connection closed before the server answered (code {error.code})"
        if answer is None:
            span.set_status(StatusCode.ERROR, "no answer")
            return f"the server did not answer {question!r} within {ANSWER_TIMEOUT} s"
        round_trip = time.monotonic() - sent
        span.add_event("answer read", {"example.pause.round_trip_ms": round_trip * 1e3})
        return f"the server answered {answer.data!r} in {round_trip * 1e3:.1f} ms"

    def _hold_until(self, deadline: float) -> None:
        while (remaining := deadline - time.monotonic()) > 0:
            self._never.wait(min(SIGNAL_CHECK_INTERVAL, remaining))

    def _await_delivery(self, number: int, held_back: int, target: int) -> None:
        """Wait until ``target`` echoes were delivered in all, the ``held_back`` of pause
        ``number`` included; warn if they were not within ``ANSWER_TIMEOUT``."""
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while not self.client.wait_received(target, SIGNAL_CHECK_INTERVAL):
            if time.monotonic() >= deadline or not self.engine.running:
                logger.warning(
                    "pause #%d: the %d message(s) it held back were not all delivered",
                    number, held_back,
                )
                return
        self.delivered_after_release += held_back
