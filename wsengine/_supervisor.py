# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""The supervisor: one run of an engine, from ``start()`` to stopped for good.

A :class:`Supervisor` owns the run's state (its threads, its current session and
dispatcher, the backoff, the stop deadline) and runs the open -> serve -> close ->
reconnect loop on its own thread, ``wsengine-supervisor-N``:

- open: dial through the run's view of the adapter, run ``on_open``, publish the session
  (the engine's state reads ``OPEN`` only then), start the session's workers;
- serve: keep the connection alive until the session ends: keepalive pings, and, while
  every worker is in ``on_message``, the backstop reader (``Dispatcher.backstop``), so
  that pings are answered and a close or a dead peer is noticed however slow the
  callbacks (``_Serving``);
- close: drain and join the workers, run ``on_close``, send the close frame;
- reconnect: wait the backoff delay, dial again, ``on_restart_error`` on failure.

The thread ends when the run stops for good. A callback that raises KeyboardInterrupt or
SystemExit starts one ``wsengine-stopper`` thread, which stops this run like ``stop()``
would (a callback cannot wait for its own supervisor); it is joined by whoever waits for
the run (``stop()``, ``wait()``).

The engine (:mod:`wsengine.engine`) is the facade: it creates a supervisor per
``start()``, and the supervisor changes the engine's public state only through the
engine's ``_publish``, ``_closing``, ``_unpublish`` and ``_finish_run``.
"""

from __future__ import annotations

import inspect
import logging
import random
import secrets
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from wsengine._dispatch import Dispatcher, make_deliver, stuck_callbacks
from wsengine._keepalive import Keepalive
from wsengine._reconnect import backoff_delay, is_fatal_status, retry_wait
from wsengine.errors import ConnectionClosedError, EngineStateError, HandshakeError
from wsengine.session import AdapterLease, EndKind, LeasedConnection, Session, SessionEnd
from wsengine.telemetry import (
    EVENT_MESSAGES_DROPPED,
    SPAN_CLOSE,
    SPAN_DIAL,
    SPAN_RESTART,
    SPAN_SESSION,
    mark_error,
    scrub,
)
from wsengine.types import (
    CloseMessage,
    Message,
    is_sendable_close_code,
    truncate_close_reason,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from wsengine.engine import WebsocketEngine

__all__ = ["Supervisor"]

logger = logging.getLogger("wsengine")

#: Seconds between two tries of the backstop reader to take the read turn (how late, at
#: most, it starts reading once every worker is busy).
BACKSTOP_TICK = 0.1

#: Bytes the backstop reader holds back when the adapter says no ``max_size``.
DEFAULT_HOLD_LIMIT = 2**20

#: At most one WARNING (and span event) about dropped messages per this many seconds.
DROP_WARNING_INTERVAL = 10.0

#: Close codes that end a session span without an error status.
_CLEAN_CLOSE_CODES = frozenset({1000, 1001, 1005, 1012})

_run_numbers = iter(range(1, 2**63))


class Supervisor:
    """One run of an engine: its state, and the loop its thread runs.

    Args:
        engine: the engine this run belongs to (the facade whose state it updates).
    """

    def __init__(self, engine: WebsocketEngine) -> None:
        self._engine = engine
        self._config = engine._config
        self._client = engine._client
        self._telemetry = engine._telemetry
        self._adapter = engine._adapter
        self._pause = engine._pause
        self.pause_lock = engine.pause_lock
        # The engine's state lock: guards the engine's state and this run's session,
        # dispatcher, dialing and abandoned fields; held for a few statements only.
        self._state_lock = engine._state_lock
        self.number = next(_run_numbers)
        # Every adapter call of this run goes through ``conn`` (or a session's child view):
        # the next start() revokes ``lease``, after which a thread of this run left behind
        # (an on_close that stop() gave up on) can no longer reach the shared adapter.
        self.lease = AdapterLease()
        self.conn = LeasedConnection(engine._adapter, self.lease)
        self.dialing = False  # a dial is under way (guarded by the state lock)
        # Set by stop(), exit(), a fatal refusal or giving up; every wait of the supervisor
        # ends on it. Never cleared: the next start() makes a new Supervisor.
        self.stop_requested = threading.Event()
        # Set once when the run is over (by the supervisor, or by stop() giving up on stuck
        # threads); wait() and stop() wait on it.
        self.stopped = threading.Event()
        self.stop_deadline: float | None = None
        self.abandoned = False  # start() timed out: what the supervisor opens late is closed
        self.session: Session | None = None
        self.dispatcher: Dispatcher | None = None
        # Engine threads, to spot calls from our own threads. Changed only by start() and
        # the supervisor; others read snapshots (list() copies a set atomically).
        self.threads: set[threading.Thread] = set()
        # The wsengine-stopper thread, once a callback raised KeyboardInterrupt/SystemExit;
        # joined by stop() and wait() after the run stopped.
        self.stopper: threading.Thread | None = None
        self.interrupt: BaseException | None = None  # KeyboardInterrupt/SystemExit in a callback
        self.attempt = 0  # backoff exponent k; back to 0 after a connection lived long enough
        # Bytes the backstop reader may hold back with overflow="block": the adapter's
        # max_size (a message can be that big anyway), or 1 MiB when it has none.
        self._hold_limit = _hold_limit(engine._adapter)
        # Whether the adapter's write takes the ``timeout`` keyword (the shipped ones do; a
        # 0.1 adapter does not, and then send(timeout=) bounds only the rate-limit wait).
        self._write_timeout = _accepts_timeout(engine._adapter.write)
        self.rng = random.Random()

    def remaining(self, default: float | None) -> float | None:
        """Seconds left before the stop deadline, or ``default`` when not stopping."""
        if self.stop_deadline is None:
            return default
        return max(0.0, self.stop_deadline - time.monotonic())

    def supervise(self, opened: Future[Session], ctx: otel_context.Context) -> None:
        """The supervisor thread's body: open, then serve, close and reconnect until the
        self ends; ``opened`` gets the first session (or why there is none)."""
        token = otel_context.attach(ctx)
        try:
            try:
                first = self._open(restarting=False)
            except BaseException as error:
                opened.set_exception(error)
                return
            if first is None:
                opened.set_exception(EngineStateError("stopped while starting"))
                return
            opened.set_result(first)
            session: Session | None = first
            while session is not None:
                end = self._serve(session)
                self._close_session(session, end)
                session = self._next_session(session, end)
        except BaseException:  # pragma: no cover - a bug: report it, never die silently
            logger.critical("wsengine supervisor crashed", exc_info=True)
        finally:
            otel_context.detach(token)
            self._engine._finish_run(self)

    def _open(self, *, restarting: bool) -> Session | None:
        """Dial, run ``on_open`` and start the workers; None if the run was abandoned.

        Raises:
            Exception: dial, handshake or ``on_open`` failed (the connection is closed).
        """
        url = self._engine._resolve_url()
        started = time.monotonic()
        attributes = self._engine._target_attributes(url)
        with self._state_lock:
            self.dialing = not self.stop_requested.is_set()
        if not self.dialing:
            return None
        try:
            with self._telemetry.operation(SPAN_DIAL, attributes):
                headers = self._engine._resolve_headers()
                if headers:
                    response = self.conn.dial(url, self._config.open_timeout, headers=headers)
                else:
                    response = self.conn.dial(url, self._config.open_timeout)
        finally:
            with self._state_lock:
                self.dialing = False
        if self.abandoned or self.stop_requested.is_set():
            # start() gave up, or stop() came during the dial: nobody wants this connection.
            self.conn.abort()
            return None
        session = Session(
            secrets.token_hex(8), LeasedConnection(self._adapter, self.lease.child()),
            self.pause_lock, lambda ended, how: self._session_ended(ended, how),
        )
        span = self._telemetry.tracer.start_span(
            SPAN_SESSION, attributes={**attributes, "wsengine.session.id": session.id}
        )
        session_ctx = trace.set_span_in_context(span)
        session._core.span = span
        session._core.otel_ctx = session_ctx
        core = session._core
        core.count_sent = self._telemetry.count_sent
        core.limiter = self._engine._limiter
        core.write_timeout = self._write_timeout
        core.stopping = self.stop_requested.is_set
        core.send_timed_out = lambda: self._telemetry.send_timed_out(span)
        session._resolve_lane()  # the limiter is known now
        try:
            self._in_session(session, "on_open", self._client.on_open, session, response, restarting
            )
            limit = self._config.open_timeout
            if restarting and limit is not None and time.monotonic() - started > limit:
                raise TimeoutError(f"on_open outlasted open_timeout ({limit} s)")
        except BaseException as error:
            self._fail_open(session, error)
            raise
        publish, stopping = self._engine._publish(self, session)
        if not publish:
            # Nobody is told it is open: close it (a no-op if the lease was revoked).
            self._close_quietly(session, 1001, "start() timed out")
            _release(session)
            session._core.span.end()
            return None
        self._telemetry.connection_opened(1)
        if restarting:
            self._telemetry.count_reconnect()
        if stopping:
            session._core.end(SessionEnd(EndKind.STOP))
        if not session._core.ended.is_set():
            self._start_workers(session, session_ctx)
        return session

    def _start_workers(self, session: Session, session_ctx: otel_context.Context
    ) -> None:
        dispatcher = Dispatcher(
            session.conn, self._pause,
            workers=self._config.workers,
            queue_size=self._config.queue_size,
            deliver=make_deliver(
                session, self._client.on_message, self._telemetry,
                lambda name, error: self._interrupted(name, error),
            ),
            read_error=lambda error: self._read_error(session, error),
            lost=lambda error: self._lost(session, error),
            received=self._count_received if self._telemetry.metrics_live else None,
            name=f"wsengine-worker-{self.number}",
            otel_ctx=session_ctx,
            overflow=self._config.overflow,
            hold_limit=self._hold_limit,
            dropped=lambda count: self._count_dropped(session, count),
            # Workers that grow later are engine threads too (stop() from on_message).
            on_thread=self.threads.add,
        )
        with self._state_lock:
            self.dispatcher = dispatcher
        # Forget the threads of sessions that ended, or a long run's set grows with every
        # reconnect (seen by the soak test: 4.5 KiB per reconnect).
        self.threads.difference_update([t for t in list(self.threads) if not t.is_alive()])
        early, session._core.early = session._core.early, []
        # Returns once the first worker thread runs (more grow when messages wait for them;
        # on_thread adds each to self.threads before it runs a callback).
        dispatcher.start(early)
        if self._config.workers == 1:
            # request() from on_message refuses to wait for itself on the only worker.
            session._core.worker_idents = frozenset(
                t.ident for t in dispatcher.threads if t.ident
            )
        session._core.lend_reader = dispatcher.lend_reader
        session._core.serving = True

    def _fail_open(self, session: Session, error: BaseException) -> None:
        """on_open raised: the connection goes with a 1011 (best effort)."""
        session._core.end(SessionEnd(EndKind.LOST, CloseMessage(1011, "on_open failed")))
        session._core.mark_closed()
        self._close_quietly(session, 1011, "on_open failed")
        _release(session)
        mark_error(session._core.span, error)
        session._core.span.end()

    def _close_quietly(self, session: Session, code: int, reason: str) -> None:
        try:
            session.conn.close(code, reason, timeout=min(1.0, self._config.stop_timeout or 1.0))
        except Exception:
            session.conn.abort()

    def _session_ended(self, session: Session, how: SessionEnd) -> None:
        """Called once per session, from whichever thread ended it: stop its reader."""
        if how.kind is EndKind.EXIT:
            self.stop_requested.set()
        limiter = self._engine._limiter
        if limiter is not None:
            limiter.wake()  # its senders waiting for a token give up
        dispatcher = self.dispatcher
        if dispatcher is not None and self.session is session:
            dispatcher.drain()

    def _serve(self, session: Session) -> SessionEnd:
        """Wait until the session ends, keeping the connection alive meanwhile: keepalive
        pings, and the backstop reader while every worker is busy (see ``_Serving``)."""
        interval = self._config.ping_interval
        timeout = self._config.ping_timeout
        dispatcher = self.dispatcher
        ended = session._core.ended
        serving = _Serving(ended, dispatcher) if dispatcher is not None else ended
        try:
            if interval is None or timeout is None:
                while not serving.wait(None):
                    pass
            else:
                keepalive = Keepalive(
                    session.conn, interval, timeout,
                    paused=self._paused,
                    reading=lambda: dispatcher is not None and (
                        dispatcher.waiting_for_data or dispatcher.backstop_reading
                    ),
                    rtt=self._telemetry.record_rtt,
                )
                if keepalive.watch(serving):
                    session._core.end(
                        SessionEnd(EndKind.LOST, CloseMessage(1006, "keepalive timeout"))
                    )
                    session.conn.abort()
        finally:
            if dispatcher is not None:
                dispatcher.release_backstop()
        end = session._core.end_reason
        assert end is not None
        return end

    def _count_dropped(self, session: Session, count: int) -> None:
        """The overflow policy discarded ``count`` messages (backstop reader's thread):
        count them; warn, and note it on the session's span, at most every 10 s."""
        engine = self._engine
        engine._dropped += count
        self._telemetry.count_dropped(count)
        engine._drops_unreported += count
        now = time.monotonic()
        if now - engine._drops_reported_at < DROP_WARNING_INTERVAL:
            return
        unreported, engine._drops_unreported = engine._drops_unreported, 0
        engine._drops_reported_at = now
        logger.warning(
            "overflow=%r: %d message(s) dropped since the last warning (%d in all); "
            "on_message is slower than the peer sends", self._config.overflow, unreported,
            engine._dropped,
        )
        span = session._core.span
        if span.is_recording():
            span.add_event(EVENT_MESSAGES_DROPPED, {"wsengine.dropped.count": unreported})

    def _paused(self) -> bool:
        return self._pause.wanted > 0

    def _close_session(self, session: Session, end: SessionEnd) -> None:
        """Deliver what was read, run ``on_close``, close the connection, end the span."""
        stopping = not self._reconnects_after(end)
        self._engine._closing(self, stopping)
        budget = self._config.stop_timeout
        deadline = None if budget is None else time.monotonic() + budget
        dispatcher = self.dispatcher
        if dispatcher is not None:
            dispatcher.drain()
            waited = _until(self, deadline)
            # Shuts the session's executor down, then joins its threads within the budget.
            stuck = dispatcher.join(waited)
            if stuck:
                logger.warning(
                    "workers still busy after %s s: %s; they are left behind",
                    "no limit" if waited is None else f"{waited:.3g}",
                    ", ".join(stuck_callbacks(stuck)),
                )
        self.dispatcher = None
        # No worker reads any more: a request() from on_close reads the connection itself.
        session._core.serving = False
        answer = self._in_session(session, "on_close", self._client.on_close, session, end.close
        )
        if end.close is None:
            default = 1001 if end.kind is EndKind.RESTART else 1000
            frame = _close_frame(answer, default)
            with self._telemetry.operation(
                SPAN_CLOSE, {"wsengine.close.code": frame.code, "wsengine.session.id": session.id}
            ):
                try:
                    session.conn.close(frame.code, frame.reason, timeout=_until(self, deadline))
                except Exception as error:
                    session.conn.abort()
                    self._in_session(session, "on_close_error", self._client.on_close_error, error
                    )
        elif end.close.code == 1006:
            session.conn.abort()
        else:
            try:
                session.conn.close(timeout=_until(self, deadline))
            except Exception as error:
                session.conn.abort()
                self._in_session(session, "on_close_error", self._client.on_close_error, error
                )
        session._core.mark_closed()
        # The session's view of the adapter goes with it: a worker or user thread that
        # still holds session.conn cannot reach the next session's connection.
        _release(session)
        self._engine._unpublish(self, session)
        self._telemetry.connection_opened(-1)
        span = session._core.span
        if end.close is not None and span.is_recording():
            span.set_attribute("wsengine.close.code", end.close.code)
            if end.close.reason:
                span.set_attribute("wsengine.close.reason", end.close.reason[:123])
            if end.close.code not in _CLEAN_CLOSE_CODES:
                span.set_attribute("error.type", str(end.close.code))
                span.set_status(Status(StatusCode.ERROR, f"closed with {end.close.code}"))
        span.end()

    def _next_session(self, previous: Session, end: SessionEnd) -> Session | None:
        """Reconnect when the policy says so; None when the engine stops."""
        if not self._reconnects_after(end):
            if (end.kind is EndKind.LOST and end.close is not None
                    and end.close.code in self._config.stop_on_close_codes):
                logger.warning("the peer closed with %d, one of stop_on_close_codes: "
                               "stopping for good", end.close.code)
            return None
        if time.monotonic() - previous._core.opened_at >= self._config.reconnect_reset_after:
            self.attempt = 0
        return self._reconnect()

    def _reconnects_after(self, end: SessionEnd) -> bool:
        """Tell whether the policy reconnects after a session that ended so (decided once
        the session ended, so that the state reads CLOSING, not RECONNECTING, on the way
        to a stop)."""
        if self.stop_requested.is_set() or end.kind in (EndKind.STOP, EndKind.EXIT):
            return False
        if (
            end.kind is EndKind.LOST
            and end.close is not None
            and end.close.code in self._config.stop_on_close_codes
        ):
            # A refusal such as an auth failure (4001): reconnecting would only loop.
            return False
        return end.kind is not EndKind.LOST or self._config.auto_reconnect

    def _reconnect(self) -> Session | None:
        """Wait the backoff delay, dial, repeat on failure; None when the engine stops."""
        config = self._config
        failures = 0
        retry_after: float | None = None
        while True:
            delay = retry_wait(
                backoff_delay(config, self.attempt, self.rng),
                retry_after,
                config.reconnect_delay_max,
            )
            self.attempt += 1
            if self.stop_requested.wait(delay):
                return None
            exited = threading.Event()
            attempt = {"wsengine.retry.count": failures}
            with self._telemetry.operation(SPAN_RESTART, attempt) as span:
                try:
                    return self._open(restarting=True)
                except Exception as error:
                    failures += 1
                    mark_error(span, error)
                    fatal = isinstance(error, HandshakeError) and is_fatal_status(error.status)
                    retry_after = error.retry_after if isinstance(error, HandshakeError) else None
                    logger.info("reconnection attempt %d failed: %s: %s", failures,
                                type(error).__name__, scrub(str(error)))
                    self._call("on_restart_error", self._client.on_restart_error,
                        error, failures, exited.set,
                    )
                except BaseException:
                    # KeyboardInterrupt/SystemExit from on_open: recorded for run_forever()
                    # and a stop is under way (see _interrupted).
                    self.stop_requested.set()
                    return None
            limit = config.reconnect_max_attempts
            if exited.is_set() or fatal or (limit is not None and failures >= limit):
                if fatal:
                    logger.warning("handshake refused with a fatal status: giving up")
                elif not exited.is_set():
                    logger.warning("giving up after %d failed reconnection attempts", failures)
                self.stop_requested.set()
                return None

    # -- callbacks ----------------------------------------------------------------------

    def _count_received(self, batch: list[Message]) -> None:
        """Count one read batch (called once per batch, not per message)."""
        self._telemetry.count_received(len(batch), sum(len(message.data) for message in batch))

    @staticmethod
    def _lost(session: Session, error: ConnectionClosedError) -> None:
        session._core.end(SessionEnd(EndKind.LOST, CloseMessage(error.code, error.reason)))

    def _read_error(self, session: Session, error: Exception) -> None:
        self._in_session(session, "on_read_error", self._client.on_read_error, session,
                         error)

    def _in_session(self, session: Session, name: str,
                    function: Callable[..., object], *args: object) -> object:
        """Run a callback with the session's span as parent (see ``_call``)."""
        ctx = session._core.otel_ctx
        token = otel_context.attach(ctx) if ctx is not None else None
        try:
            return self._call(name, function, *args, reraise=name == "on_open")
        finally:
            if token is not None:
                otel_context.detach(token)

    def _call(self, name: str, function: Callable[..., object], *args: object,
              reraise: bool = False) -> object:
        """Run a callback under its span; log what it raises (with the traceback) and go on.

        KeyboardInterrupt and SystemExit stop the engine and reach ``run_forever``.
        """
        try:
            return self._telemetry.callback(name, function, *args)
        except Exception:
            if reraise:
                raise
            logger.exception("%s raised; the engine goes on", name)
        except BaseException as error:
            self._interrupted(name, error)
            if reraise:
                raise
        return None

    def _interrupted(self, name: str, error: BaseException) -> None:
        logger.warning("%s raised %s: stopping the engine", name, type(error).__name__)
        self.interrupt = error
        if self.stopper is not None:
            return  # a stop of this run is under way already
        # Stops this run only: a callback of an old run must not stop a newer one. Its own
        # thread, since a callback cannot wait for its supervisor; daemon, joined by stop()
        # and wait() once the run stopped.
        stopper = threading.Thread(
            target=self._engine._stop_run, args=(self, self._config.stop_timeout),
            name="wsengine-stopper", daemon=True,
        )
        self.stopper = stopper
        stopper.start()


class _Serving(threading.Event):
    """What the supervisor waits on while a session is served: the session's ``ended``
    event, whose ``wait`` runs the dispatcher's backstop reader meanwhile.

    Someone must read while every worker is in ``on_message`` (the slow callback that
    would otherwise cost the connection its pings): the supervisor, which only waits
    between keepalive pings, does it. Every ``BACKSTOP_TICK`` it tries the read turn; when
    no worker holds it, it reads (``Dispatcher.backstop``) until a worker wants the turn
    back. Its own flag is unused: ``wait`` and ``is_set`` are the session's.
    """

    def __init__(self, ended: threading.Event, dispatcher: Dispatcher) -> None:
        super().__init__()
        self._ended = ended
        self._dispatcher = dispatcher

    def is_set(self) -> bool:
        return self._ended.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the session ended (True) or ``timeout`` passed (False)."""
        ended = self._ended
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if ended.is_set():
                return True
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            until = now + BACKSTOP_TICK if deadline is None else min(deadline, now + BACKSTOP_TICK)
            if not self._dispatcher.backstop(until):
                ended.wait(max(0.0, until - time.monotonic()))


def _hold_limit(adapter: object) -> int:
    """The backstop's hold-back bound for ``adapter`` (its ``max_size``, or 1 MiB)."""
    for name in ("max_size", "_max_size"):
        value = getattr(adapter, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return DEFAULT_HOLD_LIMIT


def _accepts_timeout(write: Callable[..., object]) -> bool:
    """Tell whether an adapter's ``write`` takes a ``timeout`` keyword."""
    try:
        parameters = inspect.signature(write).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        p.kind is inspect.Parameter.VAR_KEYWORD
        or (p.name == "timeout" and p.kind is not inspect.Parameter.POSITIONAL_ONLY)
        for p in parameters
    )


def _release(session: Session) -> None:
    """Revoke the session's own lease on the adapter (see ``AdapterLease``)."""
    conn = session.conn
    if isinstance(conn, LeasedConnection):
        conn.lease.revoke()


def _until(run: Supervisor, deadline: float | None) -> float | None:
    """Seconds to the nearer of ``deadline`` and the run's stop deadline."""
    stop_left = run.remaining(None)
    left = None if deadline is None else max(0.0, deadline - time.monotonic())
    if stop_left is None:
        return left
    return stop_left if left is None else min(left, stop_left)


def _close_frame(answer: object, default: int) -> CloseMessage:
    """The close frame to send, from what ``on_close`` returned."""
    if answer is None:
        return CloseMessage(default)
    if not isinstance(answer, CloseMessage):
        logger.warning("on_close returned %s, not a CloseMessage: sending %d",
                       type(answer).__name__, default)
        return CloseMessage(default)
    if not is_sendable_close_code(answer.code):
        logger.warning("on_close asked for close code %r, which is not legal on the wire: "
                       "sending %d", answer.code, default)
        return CloseMessage(default, truncate_close_reason(answer.reason))
    return CloseMessage(answer.code, truncate_close_reason(answer.reason))
