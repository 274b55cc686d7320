# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""WebsocketEngine: owns a connection, its workers, reconnects and keepalive.

Threads of one running engine (all daemon, all named ``wsengine-...``):

- the supervisor (``wsengine-supervisor-N``): dials, runs ``on_open``/``on_close`` and
  ``on_restart_error``, keeps the connection alive (keepalive pings), closes sessions and
  reconnects. It ends when the engine stops for good.
- the workers of the current session (``wsengine-worker-N_i``, see ``_dispatch``): the
  threads of the session's ``ThreadPoolExecutor`` (``max_workers=workers``), each hosting
  one leader/followers loop that reads and runs ``on_message``. Daemon and kept out of the
  stdlib's exit join of executor threads (plain daemon threads where that cannot be
  done). They end with their session, when ``_close_session`` shuts the executor down.

``stop()`` never takes the pause lock, and never waits for the thread that calls it.
"""

from __future__ import annotations

import atexit
import logging
import math
import random
import secrets
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from types import TracebackType
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import Status, StatusCode

from wsengine import _fork, _signals
from wsengine._dispatch import Dispatcher, stuck_callbacks
from wsengine._keepalive import Keepalive
from wsengine._pause import PauseLock
from wsengine._reconnect import backoff_delay, is_fatal_status, retry_wait
from wsengine._url import redact_url, url_target, validate_url
from wsengine.adapters.base import ConnectionAdapter
from wsengine.client import WebsocketClient
from wsengine.config import EngineConfig
from wsengine.errors import (
    ConfigError,
    ConnectionClosedError,
    EngineStartError,
    EngineStateError,
    HandshakeError,
)
from wsengine.session import AdapterLease, EndKind, LeasedConnection, Session, SessionEnd
from wsengine.telemetry import (
    SPAN_CALLBACK_PREFIX,
    SPAN_CLOSE,
    SPAN_DIAL,
    SPAN_RECEIVE,
    SPAN_RESTART,
    SPAN_SESSION,
    SPAN_START,
    SPAN_STOP,
    AttributeValue,
    Telemetry,
    mark_error,
    scrub,
)
from wsengine.types import (
    CloseMessage,
    EngineState,
    Message,
    is_sendable_close_code,
    truncate_close_reason,
)

__all__ = ["UrlSource", "WebsocketEngine"]

logger = logging.getLogger("wsengine")

#: A URL, or a function returning one, called before every dial (fresh tokens).
UrlSource = str | Callable[[], str]

#: Seconds between wake-ups of ``run_forever()``'s wait, so Ctrl-C is acted on promptly.
SIGNAL_CHECK_INTERVAL = 0.25

#: Seconds at most, of ``stop()``'s timeout, kept for threads to end after the socket is
#: aborted (``min(ABORT_GRACE, timeout / 4)``); also how long ``start()`` waits for a call
#: of the previous run to leave the adapter.
ABORT_GRACE = 1.0

#: Close codes that end a session span without an error status.
_CLEAN_CLOSE_CODES = frozenset({1000, 1001, 1005, 1012})

_RUNNING_STATES = frozenset(
    {EngineState.CONNECTING, EngineState.OPEN, EngineState.RECONNECTING, EngineState.CLOSING}
)

# Engines started and not yet stopped, stopped at interpreter exit. Weak, so the registry
# keeps nothing alive; the engine's own threads keep a running engine alive.
_running_engines: weakref.WeakSet[WebsocketEngine] = weakref.WeakSet()
_run_numbers = iter(range(1, 2**63))


def _stop_running_engines() -> None:
    """Stop what the program forgot to stop, at interpreter exit, saying so like an
    unclosed file would (a ResourceWarning, shown with ``-W default``)."""
    for engine in list(_running_engines):
        warnings.warn(f"{engine!r} was never stopped; stopping it at interpreter exit",
                      ResourceWarning, stacklevel=1)
        try:
            engine.stop()
        except Exception:  # pragma: no cover - exit must go on
            logger.exception("stopping an engine at interpreter exit failed")


atexit.register(_stop_running_engines)
# In a forked child, the running engines forget the parent's connections (see _fork).
_fork.watch(_running_engines)


class _Run:
    """One cycle from ``start()`` to stopped for good."""

    def __init__(self, adapter: ConnectionAdapter) -> None:
        self.number = next(_run_numbers)
        # Every adapter call of this run goes through ``conn`` (or a session's child view):
        # the next start() revokes ``lease``, after which a thread of this run left behind
        # (an on_close that stop() gave up on) can no longer reach the shared adapter.
        self.lease = AdapterLease()
        self.conn = LeasedConnection(adapter, self.lease)
        self.dialing = False  # a dial is under way (guarded by the engine's state lock)
        # Set by stop(), exit(), a fatal refusal or giving up; every wait of the supervisor
        # ends on it. Never cleared: the next start() makes a new _Run.
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
        self.interrupt: BaseException | None = None  # KeyboardInterrupt/SystemExit in a callback
        self.attempt = 0  # backoff exponent k; back to 0 after a connection lived long enough
        self.rng = random.Random()

    def remaining(self, default: float | None) -> float | None:
        """Seconds left before the stop deadline, or ``default`` when not stopping."""
        if self.stop_deadline is None:
            return default
        return max(0.0, self.stop_deadline - time.monotonic())


class WebsocketEngine:
    """A WebSocket client that runs a :class:`WebsocketClient`'s callbacks on its threads.

    Args:
        url: ``ws://`` or ``wss://`` URL with a host, or a callable returning one, called
            before every dial.
        client: the callbacks.
        adapter: the websocket library to use; default ``WebsocketClientAdapter()``.
        config: default ``EngineConfig()``.
        tracer_provider: OpenTelemetry tracer provider; default the global one.
        meter_provider: OpenTelemetry meter provider; default the global one.
        name: the value of the ``wsengine.engine.name`` attribute on every metric point,
            so that engines sharing a meter provider report separate series; default the
            URL without credentials, query or fragment (for a callable URL, its name).
            Keep it stable and free of secrets: each value is a series of its own.

    Raises:
        ConfigError: a bad argument (the message names it; credentials are redacted).
    """

    def __init__(
        self,
        url: UrlSource,
        client: WebsocketClient,
        *,
        adapter: ConnectionAdapter | None = None,
        config: EngineConfig | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        name: str | None = None,
    ) -> None:
        if callable(url):
            self._url_source: UrlSource = url
            self._display_url = f"<url from {getattr(url, '__qualname__', 'a callable')}>"
        else:
            self._url_source = validate_url(url)
            self._display_url = redact_url(self._url_source)
        if not isinstance(client, WebsocketClient):
            raise ConfigError(f"client must be a WebsocketClient, got {type(client).__name__}")
        if adapter is None:
            from wsengine.adapters.websocket_client import WebsocketClientAdapter

            adapter = WebsocketClientAdapter()
        elif not isinstance(adapter, ConnectionAdapter):
            raise ConfigError(f"adapter must be a ConnectionAdapter, got {type(adapter).__name__}")
        if config is None:
            config = EngineConfig()
        elif not isinstance(config, EngineConfig):
            raise ConfigError(f"config must be an EngineConfig, got {type(config).__name__}")
        if tracer_provider is not None and not isinstance(tracer_provider, trace.TracerProvider):
            raise ConfigError(
                f"tracer_provider must be a TracerProvider, got {type(tracer_provider).__name__}"
            )
        if meter_provider is not None and not isinstance(meter_provider, MeterProvider):
            raise ConfigError(
                f"meter_provider must be a MeterProvider, got {type(meter_provider).__name__}"
            )
        if name is None:
            name = (self._display_url if callable(self._url_source)
                    else _default_name(self._url_source))
        elif not isinstance(name, str) or not name:
            raise ConfigError(f"name must be a non-empty str or None, got {name!r}")
        self._client = client
        self._adapter = adapter
        self._config = config
        self._telemetry = Telemetry(tracer_provider, meter_provider, self.queue_depth, name)
        #: Hold it (``with engine.pause_lock:``) to stop the engine reading, e.g. to read
        #: ``session.conn`` by hand. The engine's reader holds it only around non-blocking
        #: reads; stop() never needs it.
        self._pause = PauseLock()
        self.pause_lock: threading.RLock = self._pause
        # Guards _state, _session and _run (and a run's session/abandoned fields); held for
        # a few statements by start(), stop(), the supervisor and session ends.
        self._state_lock = threading.Lock()
        self._state = EngineState.IDLE
        self._session: Session | None = None
        self._run: _Run | None = None
        # The parent's pid while this is a forked child's copy of a running engine (set by
        # _fork, cleared by start()); send() then says so.
        self._forked_from: int | None = None

    def __repr__(self) -> str:
        return f"<WebsocketEngine {self._display_url} {self._state.name}>"

    @property
    def state(self) -> EngineState:
        """Where the engine is in its life."""
        return self._state

    @property
    def running(self) -> bool:
        """True from ``start()`` until the engine has stopped for good."""
        return self._state in _RUNNING_STATES

    @property
    def session(self) -> Session | None:
        """The open session, or None (also while ``on_open`` runs)."""
        return self._session

    @property
    def config(self) -> EngineConfig:
        """The engine's configuration."""
        return self._config

    @property
    def adapter(self) -> ConnectionAdapter:
        """The adapter serving the connection."""
        return self._adapter

    # -- lifecycle -------------------------------------------------------------------

    def start(self, timeout: float | None = None) -> None:
        """Connect, run ``on_open``, start the workers, then return.

        Blocks the caller for at most ``timeout`` seconds (default ``open_timeout``). A start
        that fails or times out leaves nothing behind: if ``on_open`` returns late, its
        connection is closed and no message is delivered.

        In a child process forked while the engine ran, the engine is ``STOPPED`` and
        ``start()`` opens a connection of the child's own.

        Raises:
            EngineStartError: dial, handshake or ``on_open`` failed or timed out
                (the cause is ``__cause__``); no retry on a first start.
            EngineStateError: the engine is already running.
        """
        limit = _check_timeout("start() timeout", timeout, self._config.open_timeout)
        run = _Run(self._adapter)
        with self._state_lock:
            if self._state in _RUNNING_STATES:
                raise EngineStateError(f"start() on a running engine ({self._state.name})")
            previous = self._run
            self._run = run
            self._state = EngineState.CONNECTING
            self._session = None
            self._forked_from = None
        if previous is not None and not self._fence(previous):
            self._finish_run(run)
            raise EngineStartError(
                "start() found a call of the previous run still inside the adapter"
            ) from TimeoutError(f"it outlasted an abort by {ABORT_GRACE} s")
        opened: Future[Session] = Future()
        with self._telemetry.operation(SPAN_START, self._target_attributes()):
            supervisor = threading.Thread(
                target=self._supervise,
                args=(run, opened, otel_context.get_current()),
                name=f"wsengine-supervisor-{run.number}",
                daemon=True,  # a stuck callback must not block interpreter exit
            )
            run.threads.add(supervisor)
            _running_engines.add(self)
            supervisor.start()
            try:
                opened.result(timeout=limit)
            except FutureTimeoutError:
                with self._state_lock:
                    late = run.session is None
                    run.abandoned = late
                if late:
                    self._abandon(run)
                    raise EngineStartError(
                        f"start() timed out after {limit} s connecting to {self._display_url}"
                    ) from TimeoutError(f"open_timeout of {limit} s passed")
            except KeyboardInterrupt:
                # Ctrl-C while starting: close whatever opened, then let the interrupt go on.
                self.stop()
                raise
            except BaseException as error:
                supervisor.join(ABORT_GRACE)
                raise EngineStartError(
                    f"start() failed connecting to {self._display_url}: "
                    f"{type(error).__name__}: {scrub(str(error))}"
                ) from error

    def _fence(self, previous: _Run) -> bool:
        """Cut the previous run off the adapter before a new run uses it; False if one of
        its calls is still inside the adapter after an abort.

        Threads of that run may outlive it (a callback that ``stop()`` gave up on); they
        are not waited for: once the lease is revoked and its calls in flight have left,
        none of them can close, read or write what the new run opens (issue 16, defect 8).
        """
        previous.lease.revoke()
        if previous.lease.wait_idle(ABORT_GRACE):
            return True
        # A call still inside (a read the stop did not cut): nothing new uses the adapter
        # yet, so aborting hurts no one.
        self._adapter.abort()
        return previous.lease.wait_idle(ABORT_GRACE)

    def _abandon(self, run: _Run) -> None:
        """Give up on a start that timed out; the supervisor closes what it opens late."""
        run.stop_requested.set()
        run.conn.abort()
        self._finish_run(run)

    def stop(self, timeout: float | None = None) -> None:
        """Stop for good: read no more frames, deliver those already read, run
        ``on_close``, send the close frame, end the threads.

        Blocks the caller up to ``timeout`` seconds (default ``stop_timeout``; None: no
        limit) and returns within it, give or take the few milliseconds its last steps
        take: the last ``min(ABORT_GRACE, timeout / 4)`` seconds of it are kept for the
        end, so the socket is aborted that long before the timeout (unblocking any I/O)
        and callbacks that did not return by the timeout are named in a warning and left
        behind. A dial under way is aborted at once (there is nothing to close
        gracefully yet). Idempotent; a no-op before ``start()``; safe from any thread, from
        a callback (it then returns at once without waiting for itself), and while another
        thread holds the pause lock (it never takes it).
        """
        limit = _check_timeout("stop() timeout", timeout, self._config.stop_timeout)
        self._stop_run(None, limit)

    def _stop_run(self, only: _Run | None, limit: float | None) -> None:
        """``stop()`` of the current run, or of ``only`` if it is still the current run."""
        started = time.monotonic()
        # The graceful part: the supervisor's close handshake gives up at its end, and so
        # does the wait below before it aborts the socket.
        graceful = math.inf if limit is None else limit - min(ABORT_GRACE, limit / 4)
        with self._state_lock:
            run = self._run
            if run is None or run.stopped.is_set() or (only is not None and run is not only):
                return
            run.stop_requested.set()
            if run.stop_deadline is None:
                run.stop_deadline = started + graceful
            session = run.session
            dialing = run.dialing
            if self._state in _RUNNING_STATES:
                self._state = EngineState.CLOSING
        with self._telemetry.operation(SPAN_STOP, self._target_attributes()):
            if dialing:
                # No session to close gracefully: cut the dial (or handshake) now rather
                # than wait for it to give up.
                run.conn.abort()
            if session is not None:
                session._core.end(SessionEnd(EndKind.STOP))
            if threading.current_thread() in run.threads:
                return
            if limit is None:
                run.stopped.wait()
                self._join_supervisor(run, None)
                return
            end = started + limit
            abort_at = min(started + graceful, run.stop_deadline)
            if run.stopped.wait(max(0.0, abort_at - time.monotonic())):
                self._join_supervisor(run, end - time.monotonic())
                return
            # Past the graceful part: drop the connection so that blocked I/O returns.
            run.conn.abort()
            if run.stopped.wait(max(0.0, end - time.monotonic())):
                self._join_supervisor(run, end - time.monotonic())
                return
            stuck = [t for t in list(run.threads) if t.is_alive()]
            logger.warning(
                "stop() gave up after %s s; still running: %s. Those daemon threads are "
                "left behind and will not block interpreter exit.",
                limit, ", ".join(stuck_callbacks(stuck)) or "nothing",
            )
            self._finish_run(run)

    @staticmethod
    def _join_supervisor(run: _Run, timeout: float | None) -> None:
        """Wait for the supervisor to leave (it has set ``stopped``: a few statements)."""
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        for thread in list(run.threads):
            if thread.name.startswith("wsengine-supervisor") and thread.is_alive():
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the engine has stopped for good; True if it has.

        Raises:
            EngineStateError: called from an engine thread without a timeout (it would wait
                for itself).
        """
        run = self._run
        if run is None:
            return True
        if timeout is None and threading.current_thread() in run.threads:
            raise EngineStateError("wait() from an engine thread would wait for itself")
        return run.stopped.wait(timeout)

    def run_forever(self) -> None:
        """``start()``, then ``wait()``. Ctrl-C stops gracefully and returns normally.

        Called from the main thread, SIGTERM does the same (close frame sent, normal
        return): its handler is replaced while this runs, and the previous one put back on
        return. From another thread, signal handlers are left alone.

        Raises:
            EngineStartError: as ``start()``.
            KeyboardInterrupt, SystemExit: a callback raised it (the engine stopped first).
        """
        with _signals.sigterm_interrupts() as disarm:
            try:
                self.start()
                # Wait in slices: a signal the OS delivers to another thread only sets a
                # flag, and the main thread runs Python signal handlers when it wakes.
                while not self.wait(SIGNAL_CHECK_INTERVAL):
                    pass
            except KeyboardInterrupt as interrupt:
                disarm()  # a second SIGTERM must not cut the graceful stop short
                logger.info("interrupted (%s): stopping", str(interrupt) or "Ctrl-C")
                self.stop()
                return
        run = self._run
        if run is not None and run.interrupt is not None:
            raise run.interrupt

    def send(self, data: str | bytes) -> None:
        """Send on the current session: TEXT for ``str``, BINARY for ``bytes``. Thread-safe;
        blocks until the data is handed to the kernel.

        Whatever the moment in a reconnect, a send that finds no open session raises the
        same error: ``EngineStateError`` (never ``ConnectionClosedError``), so callers
        handle one exception.

        Raises:
            EngineStateError: no open session: ``CONNECTING`` (also while ``on_open``
                runs), ``RECONNECTING``, ``CLOSING``, ``STOPPED``, or the session closed
                during the call (the ``ConnectionClosedError`` is chained as
                ``__cause__``), or this is a child process forked while the engine ran
                (the message says how to fix it).
            TypeError: ``data`` is neither str nor bytes.
        """
        session = self._session
        if session is None or self._state is not EngineState.OPEN:
            parent = self._forked_from
            if parent is not None:
                raise EngineStateError(_fork.forked_send_message(parent, self._display_url))
            raise EngineStateError(f"send() with no open session ({self._state.name})")
        try:
            session.send(data)
        except ConnectionClosedError as error:
            raise EngineStateError(
                f"send() with no open session: the connection closed ({error.code})"
            ) from error

    def __enter__(self) -> WebsocketEngine:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the supervisor ---------------------------------------------------------------

    def _supervise(self, run: _Run, opened: Future[Session], ctx: otel_context.Context) -> None:
        token = otel_context.attach(ctx)
        try:
            try:
                first = self._open(run, restarting=False)
            except BaseException as error:
                opened.set_exception(error)
                return
            if first is None:
                opened.set_exception(EngineStateError("stopped while starting"))
                return
            opened.set_result(first)
            session: Session | None = first
            while session is not None:
                end = self._serve(run, session)
                self._close_session(run, session, end)
                session = self._next_session(run, session, end)
        except BaseException:  # pragma: no cover - a bug: report it, never die silently
            logger.critical("wsengine supervisor crashed", exc_info=True)
        finally:
            otel_context.detach(token)
            self._finish_run(run)

    def _finish_run(self, run: _Run) -> None:
        with self._state_lock:
            current = self._run is run
            if current:
                self._state = EngineState.STOPPED
                self._session = None
        run.stopped.set()
        if current:
            _running_engines.discard(self)

    def _open(self, run: _Run, *, restarting: bool) -> Session | None:
        """Dial, run ``on_open`` and start the workers; None if the run was abandoned.

        Raises:
            Exception: dial, handshake or ``on_open`` failed (the connection is closed).
        """
        url = self._resolve_url()
        started = time.monotonic()
        attributes = self._target_attributes(url)
        with self._state_lock:
            run.dialing = not run.stop_requested.is_set()
        if not run.dialing:
            return None
        try:
            with self._telemetry.operation(SPAN_DIAL, attributes):
                response = run.conn.dial(url, self._config.open_timeout)
        finally:
            with self._state_lock:
                run.dialing = False
        if run.abandoned or run.stop_requested.is_set():
            # start() gave up, or stop() came during the dial: nobody wants this connection.
            run.conn.abort()
            return None
        session = Session(
            secrets.token_hex(8), LeasedConnection(self._adapter, run.lease.child()),
            self.pause_lock, lambda ended, how: self._session_ended(run, ended, how),
        )
        span = self._telemetry.tracer.start_span(
            SPAN_SESSION, attributes={**attributes, "wsengine.session.id": session.id}
        )
        session_ctx = trace.set_span_in_context(span)
        session._core.span = span
        session._core.otel_ctx = session_ctx
        session._core.count_sent = self._telemetry.count_sent
        try:
            self._in_session(
                run, session, "on_open", self._client.on_open, session, response, restarting
            )
            limit = self._config.open_timeout
            if restarting and limit is not None and time.monotonic() - started > limit:
                raise TimeoutError(f"on_open outlasted open_timeout ({limit} s)")
        except BaseException as error:
            self._fail_open(session, error)
            raise
        with self._state_lock:
            if run.abandoned or self._run is not run:
                # start() gave up on us, or a newer run owns the engine.
                publish = False
            else:
                publish = True
                run.session = session
                self._session = session
                if self._state is not EngineState.CLOSING:
                    self._state = EngineState.OPEN
            stopping = run.stop_requested.is_set()
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
            self._start_workers(run, session, session_ctx)
        return session

    def _start_workers(
        self, run: _Run, session: Session, session_ctx: otel_context.Context
    ) -> None:
        dispatcher = Dispatcher(
            session.conn, self._pause,
            workers=self._config.workers,
            queue_size=self._config.queue_size,
            deliver=self._make_deliver(run, session),
            read_error=lambda error: self._read_error(run, session, error),
            lost=lambda error: self._lost(session, error),
            received=self._count_received if self._telemetry.metrics_live else None,
            name=f"wsengine-worker-{run.number}",
            otel_ctx=session_ctx,
        )
        with self._state_lock:
            run.dispatcher = dispatcher
        # Forget the threads of sessions that ended, or a long run's set grows with every
        # reconnect (seen by the soak test: 4.5 KiB per reconnect).
        run.threads.difference_update([t for t in list(run.threads) if not t.is_alive()])
        early, session._core.early = session._core.early, []
        # Returns once every worker thread runs, so that the bookkeeping below sees them all.
        dispatcher.start(early)
        run.threads.update(dispatcher.threads)
        session._core.worker_idents = frozenset(t.ident for t in dispatcher.threads if t.ident)
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

    def _session_ended(self, run: _Run, session: Session, how: SessionEnd) -> None:
        """Called once per session, from whichever thread ended it: stop its reader."""
        if how.kind is EndKind.EXIT:
            run.stop_requested.set()
        dispatcher = run.dispatcher
        if dispatcher is not None and run.session is session:
            dispatcher.drain()

    def _serve(self, run: _Run, session: Session) -> SessionEnd:
        """Wait until the session ends, keeping the connection alive meanwhile."""
        interval = self._config.ping_interval
        timeout = self._config.ping_timeout
        if interval is None or timeout is None:
            session._core.ended.wait()
        else:
            keepalive = Keepalive(
                session.conn, interval, timeout,
                paused=self._paused,
                reading=lambda: run.dispatcher is not None and run.dispatcher.waiting_for_data,
                rtt=self._telemetry.record_rtt,
            )
            if keepalive.watch(session._core.ended):
                session._core.end(SessionEnd(EndKind.LOST, CloseMessage(1006, "keepalive timeout")))
                session.conn.abort()
        end = session._core.end_reason
        assert end is not None
        return end

    def _paused(self) -> bool:
        return self._pause.wanted > 0

    def _close_session(self, run: _Run, session: Session, end: SessionEnd) -> None:
        """Deliver what was read, run ``on_close``, close the connection, end the span."""
        stopping = not self._reconnects_after(run, end)
        with self._state_lock:
            if self._run is run and self._state in _RUNNING_STATES:
                self._state = EngineState.CLOSING if stopping else EngineState.RECONNECTING
        budget = self._config.stop_timeout
        deadline = None if budget is None else time.monotonic() + budget
        dispatcher = run.dispatcher
        if dispatcher is not None:
            dispatcher.drain()
            waited = _until(run, deadline)
            # Shuts the session's executor down, then joins its threads within the budget.
            stuck = dispatcher.join(waited)
            if stuck:
                logger.warning(
                    "workers still busy after %s s: %s; they are left behind",
                    "no limit" if waited is None else f"{waited:.3g}",
                    ", ".join(stuck_callbacks(stuck)),
                )
        run.dispatcher = None
        # No worker reads any more: a request() from on_close reads the connection itself.
        session._core.serving = False
        answer = self._in_session(
            run, session, "on_close", self._client.on_close, session, end.close
        )
        if end.close is None:
            default = 1001 if end.kind is EndKind.RESTART else 1000
            frame = _close_frame(answer, default)
            with self._telemetry.operation(
                SPAN_CLOSE, {"wsengine.close.code": frame.code, "wsengine.session.id": session.id}
            ):
                try:
                    session.conn.close(frame.code, frame.reason, timeout=_until(run, deadline))
                except Exception as error:
                    session.conn.abort()
                    self._in_session(
                        run, session, "on_close_error", self._client.on_close_error, error
                    )
        elif end.close.code == 1006:
            session.conn.abort()
        else:
            try:
                session.conn.close(timeout=_until(run, deadline))
            except Exception as error:
                session.conn.abort()
                self._in_session(
                    run, session, "on_close_error", self._client.on_close_error, error
                )
        session._core.mark_closed()
        # The session's view of the adapter goes with it: a worker or user thread that
        # still holds session.conn cannot reach the next session's connection.
        _release(session)
        with self._state_lock:
            if self._session is session:
                self._session = None
            run.session = None
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

    def _next_session(self, run: _Run, previous: Session, end: SessionEnd) -> Session | None:
        """Reconnect when the policy says so; None when the engine stops."""
        if not self._reconnects_after(run, end):
            return None
        if time.monotonic() - previous._core.opened_at >= self._config.reconnect_reset_after:
            run.attempt = 0
        return self._reconnect(run)

    def _reconnects_after(self, run: _Run, end: SessionEnd) -> bool:
        """Tell whether the policy reconnects after a session that ended so (decided once
        the session ended, so that the state reads CLOSING, not RECONNECTING, on the way
        to a stop)."""
        if run.stop_requested.is_set() or end.kind in (EndKind.STOP, EndKind.EXIT):
            return False
        return end.kind is not EndKind.LOST or self._config.auto_reconnect

    def _reconnect(self, run: _Run) -> Session | None:
        """Wait the backoff delay, dial, repeat on failure; None when the engine stops."""
        config = self._config
        failures = 0
        retry_after: float | None = None
        while True:
            delay = retry_wait(
                backoff_delay(config, run.attempt, run.rng), retry_after, config.reconnect_delay_max
            )
            run.attempt += 1
            if run.stop_requested.wait(delay):
                return None
            exited = threading.Event()
            attempt = {"wsengine.retry.count": failures}
            with self._telemetry.operation(SPAN_RESTART, attempt) as span:
                try:
                    return self._open(run, restarting=True)
                except Exception as error:
                    failures += 1
                    mark_error(span, error)
                    fatal = isinstance(error, HandshakeError) and is_fatal_status(error.status)
                    retry_after = error.retry_after if isinstance(error, HandshakeError) else None
                    logger.info("reconnection attempt %d failed: %s: %s", failures,
                                type(error).__name__, scrub(str(error)))
                    self._call(
                        run, "on_restart_error", self._client.on_restart_error,
                        error, failures, exited.set,
                    )
                except BaseException:
                    # KeyboardInterrupt/SystemExit from on_open: recorded for run_forever()
                    # and a stop is under way (see _interrupted).
                    run.stop_requested.set()
                    return None
            limit = config.reconnect_max_attempts
            if exited.is_set() or fatal or (limit is not None and failures >= limit):
                if fatal:
                    logger.warning("handshake refused with a fatal status: giving up")
                elif not exited.is_set():
                    logger.warning("giving up after %d failed reconnection attempts", failures)
                run.stop_requested.set()
                return None

    # -- callbacks ----------------------------------------------------------------------

    def _make_deliver(self, run: _Run, session: Session) -> Callable[[Message], None]:
        """The per-message function workers call: the hot path, in three variants.

        Plain: no span and no clock per message (nothing records). Timed: the meter records,
        so on_message is timed. Traced: the session's span records (sampled), so each
        message gets a ``wsengine.receive`` span with ``wsengine.callback.on_message``
        inside.
        """
        on_message = self._client.on_message
        requests = session._core.requests  # mutated in place, never rebound
        offer = session._core.offer
        telemetry = self._telemetry
        duration = telemetry.callback_duration
        attributes = telemetry.callback_attributes("on_message")

        if session._core.span.is_recording():
            start_span = telemetry.tracer.start_span
            session_ctx = session._core.otel_ctx
            callback_name = SPAN_CALLBACK_PREFIX + "on_message"

            def deliver_traced(message: Message) -> None:
                # Two SDK spans per message cost most of the time here, so they are made
                # without start_as_current_span's layers: the receive span is the explicit
                # parent, and only the callback's span is attached (made current).
                receive = start_span(
                    SPAN_RECEIVE,
                    context=session_ctx,
                    attributes={
                        "wsengine.message.type": message.type.name,
                        "wsengine.message.size": len(message.data),
                    },
                )
                try:
                    if requests and offer(message):
                        return
                    span = start_span(callback_name, context=trace.set_span_in_context(receive))
                    token = otel_context.attach(trace.set_span_in_context(span))
                    started = time.perf_counter()
                    try:
                        on_message(session, message)
                    except Exception as error:
                        mark_error(span, error)
                        logger.exception("on_message raised; the engine goes on")
                    except BaseException as error:
                        mark_error(span, error)
                        self._interrupted(run, "on_message", error)
                    finally:
                        otel_context.detach(token)
                        span.end()
                        duration.record(time.perf_counter() - started, attributes)
                finally:
                    receive.end()

            return deliver_traced

        if telemetry.metrics_live:

            def deliver_timed(message: Message) -> None:
                if requests and offer(message):
                    return
                started = time.perf_counter()
                try:
                    on_message(session, message)
                except Exception:
                    logger.exception("on_message raised; the engine goes on")
                except BaseException as error:
                    self._interrupted(run, "on_message", error)
                finally:
                    duration.record(time.perf_counter() - started, attributes)

            return deliver_timed

        def deliver(message: Message) -> None:
            if requests and offer(message):
                return
            try:
                on_message(session, message)
            except Exception:
                logger.exception("on_message raised; the engine goes on")
            except BaseException as error:
                self._interrupted(run, "on_message", error)

        return deliver

    def _count_received(self, batch: list[Message]) -> None:
        """Count one read batch (called once per batch, not per message)."""
        self._telemetry.count_received(len(batch), sum(len(message.data) for message in batch))

    @staticmethod
    def _lost(session: Session, error: ConnectionClosedError) -> None:
        session._core.end(SessionEnd(EndKind.LOST, CloseMessage(error.code, error.reason)))

    def _read_error(self, run: _Run, session: Session, error: Exception) -> None:
        self._in_session(run, session, "on_read_error", self._client.on_read_error, session,
                         error)

    def _in_session(self, run: _Run, session: Session, name: str,
                    function: Callable[..., object], *args: object) -> object:
        """Run a callback with the session's span as parent (see ``_call``)."""
        ctx = session._core.otel_ctx
        token = otel_context.attach(ctx) if ctx is not None else None
        try:
            return self._call(run, name, function, *args, reraise=name == "on_open")
        finally:
            if token is not None:
                otel_context.detach(token)

    def _call(self, run: _Run, name: str, function: Callable[..., object], *args: object,
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
            self._interrupted(run, name, error)
            if reraise:
                raise
        return None

    def _interrupted(self, run: _Run, name: str, error: BaseException) -> None:
        logger.warning("%s raised %s: stopping the engine", name, type(error).__name__)
        run.interrupt = error
        # Stops this run only: a callback of an old run must not stop a newer one.
        threading.Thread(target=self._stop_run, args=(run, self._config.stop_timeout),
                         name="wsengine-stopper", daemon=True).start()

    # -- helpers --------------------------------------------------------------------------

    def _resolve_url(self) -> str:
        source = self._url_source
        if callable(source):
            return validate_url(source())
        return source

    def _target_attributes(self, url: str | None = None) -> dict[str, AttributeValue]:
        if url is None:
            source = self._url_source
            if callable(source):
                return {"network.protocol.name": "websocket"}
            url = source
        scheme, host, port = url_target(url)
        return {
            "server.address": host,
            "server.port": port,
            "url.full": redact_url(url),
            "url.scheme": scheme,
            "network.protocol.name": "websocket",
            "network.transport": "tcp",
        }

    def queue_depth(self) -> int:
        """Messages read but not yet taken by a worker (0 with no session)."""
        run = self._run
        dispatcher = run.dispatcher if run is not None else None
        return dispatcher.depth if dispatcher is not None else 0


def _release(session: Session) -> None:
    """Revoke the session's own lease on the adapter (see ``AdapterLease``)."""
    conn = session.conn
    if isinstance(conn, LeasedConnection):
        conn.lease.revoke()


def _default_name(url: str) -> str:
    """The engine's default metric name: scheme, host, port and path, nothing else (no
    credentials, no query: its values may be secret, or change per dial)."""
    scheme, host, port = url_target(url)
    path = urlsplit(url).path or "/"
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}{path}"


def _until(run: _Run, deadline: float | None) -> float | None:
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


def _check_timeout(name: str, value: float | None, default: float | None) -> float | None:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
        math.isfinite(value) and value > 0
    ):
        raise ConfigError(f"{name} must be a positive number or None, got {value!r}")
    return float(value)


