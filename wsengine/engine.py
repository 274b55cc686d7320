# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""WebsocketEngine: owns a connection, its workers, reconnects and keepalive.

Threads of one running engine (all daemon, all named ``wsengine-...``):

- the supervisor (``wsengine-supervisor-N``, see ``_supervisor``): dials, runs
  ``on_open``/``on_close`` and ``on_restart_error``, sends what ``send_buffer`` queued,
  keeps the connection alive (keepalive pings, and reading while every worker is busy:
  the backstop reader of ``_dispatch``), closes sessions and reconnects. It ends when the
  engine stops for good.
- the stopper (``wsengine-stopper``), only when a callback raised KeyboardInterrupt or
  SystemExit: it stops that run as ``stop()`` would, and is joined by ``stop()`` and
  ``wait()``.
- the workers of the current session (``wsengine-worker-N_i``, see ``_dispatch``): the
  threads of the session's ``ThreadPoolExecutor`` (``max_workers=workers``), each hosting
  one leader/followers loop that reads and runs ``on_message``. The pool starts with one
  and grows, up to ``workers``, only while messages wait for a free worker (slow
  callbacks); grown threads stay, idle, until the session ends. Daemon and kept out of the
  stdlib's exit join of executor threads (plain daemon threads where that cannot be
  done). They end with their session, when ``_close_session`` shuts the executor down.

``stop()`` never takes the pause lock, and never waits for the thread that calls it.
"""

from __future__ import annotations

import atexit
import collections
import logging
import math
import re
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from types import TracebackType
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.metrics import MeterProvider

from wsengine import _fork, _signals
from wsengine._dispatch import stuck_callbacks
from wsengine._pause import PauseLock
from wsengine._supervisor import Supervisor
from wsengine._url import redact_url, url_target, validate_url
from wsengine.adapters.base import ConnectionAdapter
from wsengine.client import WebsocketClient
from wsengine.config import EngineConfig
from wsengine.errors import (
    ConfigError,
    ConnectionClosedError,
    EngineStartError,
    EngineStateError,
)
from wsengine.session import (
    _REVOKED,
    _SENDABLE,
    EndKind,
    Session,
    SessionEnd,
    TokenBucket,
    send_deadline,
)
from wsengine.telemetry import (
    SPAN_START,
    SPAN_STOP,
    AttributeValue,
    Telemetry,
    scrub,
)
from wsengine.types import (
    EngineState,
)

__all__ = ["HeadersSource", "UrlSource", "WebsocketEngine"]

logger = logging.getLogger("wsengine")

#: A URL, or a function returning one, called before every dial (fresh tokens).
UrlSource = str | Callable[[], str]

#: Extra handshake headers, or a function returning them, called before every dial.
HeadersSource = Mapping[str, str] | Callable[[], Mapping[str, str]]

# A header name is an RFC 9110 token.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")

#: Seconds between wake-ups of ``run_forever()``'s wait, so Ctrl-C is acted on promptly.
SIGNAL_CHECK_INTERVAL = 0.25

#: Seconds at most, of ``stop()``'s timeout, kept for threads to end after the socket is
#: aborted (``min(ABORT_GRACE, timeout / 4)``); also how long ``start()`` waits for a call
#: of the previous run to leave the adapter.
ABORT_GRACE = 1.0

_RUNNING_STATES = frozenset(
    {EngineState.CONNECTING, EngineState.OPEN, EngineState.RECONNECTING, EngineState.CLOSING}
)

# Engines started and not yet stopped, stopped at interpreter exit. Weak, so the registry
# keeps nothing alive; the engine's own threads keep a running engine alive.
_running_engines: weakref.WeakSet[WebsocketEngine] = weakref.WeakSet()


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


class WebsocketEngine:
    """A WebSocket client that runs a :class:`WebsocketClient`'s callbacks on its threads.

    Args:
        url: ``ws://`` or ``wss://`` URL with a host, or a callable returning one, called
            before every dial.
        client: the callbacks.
        headers: extra headers for the opening handshake (a mapping), or a callable
            returning them, called before every dial, after ``url`` when that is callable
            too: fresh tokens on every reconnect. Header values never appear in errors,
            logs or spans. Passed to the adapter as ``dial(url, timeout, headers=...)``,
            and only when there are some, so an adapter written for 0.1 keeps working.
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
        headers: HeadersSource | None = None,
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
        if headers is not None and not callable(headers):
            headers = _check_headers(headers)
        self._headers_source: HeadersSource | None = headers
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
        self._run: Supervisor | None = None
        # The parent's pid while this is a forked child's copy of a running engine (set by
        # _fork, cleared by start()); send() then says so.
        self._forked_from: int | None = None
        # Messages send() queued while no session was open (config.send_buffer); guarded
        # by _state_lock; emptied by the supervisor after the next on_open, or dropped
        # (and counted) when a run stops for good.
        self._send_buffer: collections.deque[str | bytes] = collections.deque()
        self._dropped_sends = 0
        # The send rate limit over every session of every run (None: no limit).
        self._limiter: TokenBucket | None = (
            None if config.send_rate is None else TokenBucket(config.send_rate, config.send_burst)
        )
        # Messages discarded by the overflow policy since the engine was created; added to
        # by the reader of the moment only (one thread at a time), read by anyone.
        self._dropped = 0
        # The rate-limited drop warning: when it was last given, and drops since then
        # (supervisor thread only).
        self._drops_reported_at = -math.inf
        self._drops_unreported = 0

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
    def dropped(self) -> int:
        """Messages read and discarded by the ``overflow`` policy since the engine was
        created (always 0 with ``"block"``)."""
        return self._dropped

    @property
    def dropped_sends(self) -> int:
        """Messages queued by ``send()`` (``send_buffer``) that were never sent because
        the engine stopped for good first."""
        return self._dropped_sends

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
        run = Supervisor(self)
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
                target=run.supervise,
                args=(opened, otel_context.get_current()),
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

    def _fence(self, previous: Supervisor) -> bool:
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

    def _abandon(self, run: Supervisor) -> None:
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

    def _stop_run(self, only: Supervisor | None, limit: float | None) -> None:
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
        if self._limiter is not None:
            self._limiter.wake()  # senders waiting for a token see the stop and give up
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
    def _join_supervisor(run: Supervisor, timeout: float | None) -> None:
        """Wait for the supervisor and the stopper, if any, to leave (the run has set
        ``stopped``: a few statements are left to them)."""
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        current = threading.current_thread()
        threads = [t for t in list(run.threads) if t.name.startswith("wsengine-supervisor")]
        if run.stopper is not None:
            threads.append(run.stopper)
        for thread in threads:
            if thread.is_alive() and thread is not current:
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
        if not run.stopped.wait(timeout):
            return False
        if threading.current_thread() not in run.threads:
            self._join_supervisor(run, ABORT_GRACE)
        return True

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

    def send(self, data: str | bytes, timeout: float | None = None) -> None:
        """Send on the current session: TEXT for ``str``, BINARY for ``bytes``. Thread-safe;
        blocks until the data is handed to the kernel (after waiting for a token when
        ``send_rate`` is set).

        ``timeout`` bounds the whole send in seconds, as :meth:`Session.send` says (None:
        no limit); past it ``TimeoutError`` is raised, and a frame partly written fails
        the connection (1006, then a reconnect as usual).

        With ``send_buffer`` > 0, a send while no session is open (``CONNECTING``, also
        while ``on_open`` runs, or ``RECONNECTING``) queues the message and returns at
        once; queued messages go out in order right after the next ``on_open`` returns,
        before any later send.

        Whatever the moment in a reconnect, a send that finds no open session raises the
        same error: ``EngineStateError`` (never ``ConnectionClosedError``), so callers
        handle one exception.

        Raises:
            EngineStateError: no open session: ``CONNECTING`` (also while ``on_open``
                runs), ``RECONNECTING``, ``CLOSING``, ``STOPPED``, or the session closed
                during the call (the ``ConnectionClosedError`` is chained as
                ``__cause__``), or the engine stopped while the send waited for its
                token, or the send buffer is full, or this is a child process forked
                while the engine ran (the message says how to fix it).
            TimeoutError: ``timeout`` passed.
            TypeError: ``data`` is neither str nor bytes.
            ConfigError: ``timeout`` is not a positive number or None.
        """
        session = self._session
        if session is None or self._state is not _OPEN:
            parent = self._forked_from
            if parent is not None:
                raise EngineStateError(_fork.forked_send_message(parent, self._display_url))
            session = self._queue_or_session(data, timeout)
            if session is None:
                return
        core = session._core
        lane = session._lane
        if timeout is not None or lane is None or core.closed or not isinstance(
            data, _SENDABLE
        ):
            try:
                session.send(data, timeout)
            except ConnectionClosedError as error:
                raise _no_session(error) from error
            return
        # Session.send's fast path, inline (one call less per message): register, then
        # check the lease (see AdapterLease), then the connection's own write.
        busy = lane._busy
        busy.append(None)
        try:
            for lease in lane._chain:
                if lease._revoked:
                    raise ConnectionClosedError(1006, _REVOKED)
            lane._direct(data)
        except ConnectionClosedError as error:
            raise _no_session(error) from error
        finally:
            busy.pop()
            if not busy and lane._root._idle_waiters:
                lane._lease.notify_idle()
        core.count_sent(1)

    def _queue_or_session(self, data: str | bytes, timeout: float | None) -> Session | None:
        """``send()`` found no open session: queue ``data`` (``send_buffer``) and return
        None, or return the session that opened meanwhile.

        Raises:
            EngineStateError: nothing to queue into (see ``send()``).
        """
        limit = self._config.send_buffer
        if limit:
            if not isinstance(data, str | bytes | bytearray | memoryview):
                raise TypeError(f"send() takes str or bytes, not {type(data).__name__}")
            send_deadline("send()", timeout)  # a bad timeout is refused here too
        with self._state_lock:
            state = self._state
            session = self._session
            run = self._run
            if state is EngineState.OPEN and session is not None:
                return session
            if limit and state in (EngineState.CONNECTING, EngineState.RECONNECTING) and (
                run is not None and not run.stop_requested.is_set()
            ):
                if len(self._send_buffer) >= limit:
                    raise EngineStateError(
                        f"send() with no open session ({state.name}) and the send buffer "
                        f"full ({limit} messages)"
                    )
                # A copy: the caller may reuse a bytearray once send() returned.
                self._send_buffer.append(
                    data if isinstance(data, str | bytes) else bytes(data)
                )
                return None
        raise EngineStateError(f"send() with no open session ({state.name})")

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

    # -- the state the supervisor changes ------------------------------------------------

    def _finish_run(self, run: Supervisor) -> None:
        with self._state_lock:
            current = self._run is run
            if current:
                self._state = EngineState.STOPPED
                self._session = None
                # Stopped for good: what send() queued will never go out.
                dropped = len(self._send_buffer)
                self._send_buffer.clear()
                self._dropped_sends += dropped
            else:
                dropped = 0
        if dropped:
            logger.warning("stopped with %d queued send(s) never sent (send_buffer)", dropped)
        run.stopped.set()
        if current:
            _running_engines.discard(self)

    def _publish(self, run: Supervisor, session: Session) -> tuple[bool, bool]:
        """``on_open`` returned: send what ``send()`` queued meanwhile, then make
        ``session`` the engine's, unless ``start()`` gave up on ``run`` or a newer run owns
        the engine. Returns ``(published, stopping)``.

        Runs on the supervisor thread. The buffer is emptied and the session published
        in one critical section, so a ``send()`` either queues before the last message is
        taken or finds the session open: nothing queued is overtaken.
        """
        flushing = True
        while True:
            with self._state_lock:
                stopping = run.stop_requested.is_set()
                if run.abandoned or self._run is not run:
                    return False, stopping
                buffer = self._send_buffer
                if not flushing or not buffer or stopping:
                    run.session = session
                    self._session = session
                    if self._state is not EngineState.CLOSING:
                        self._state = EngineState.OPEN
                    return True, stopping
                data = buffer.popleft()
            try:
                session.send(data)
            except Exception as error:
                # The connection failed (the reader will say so) or the engine is
                # stopping: keep the message for the next session, or for the count of
                # dropped sends.
                with self._state_lock:
                    buffer.appendleft(data)
                logger.info("sending the queued messages stopped: %s: %s",
                            type(error).__name__, scrub(str(error)))
                flushing = False

    def _closing(self, run: Supervisor, stopping: bool) -> None:
        """``run``'s session is closing: the state says whether a reconnect follows."""
        with self._state_lock:
            if self._run is run and self._state in _RUNNING_STATES:
                self._state = EngineState.CLOSING if stopping else EngineState.RECONNECTING

    def _unpublish(self, run: Supervisor, session: Session) -> None:
        """``session`` is closed: the engine has no session until the next one opens."""
        with self._state_lock:
            if self._session is session:
                self._session = None
            run.session = None

    # -- helpers --------------------------------------------------------------------------

    def _resolve_url(self) -> str:
        source = self._url_source
        if callable(source):
            return validate_url(source())
        return source

    def _resolve_headers(self) -> dict[str, str] | None:
        """The extra headers for the next dial, or None when there are none.

        Raises:
            ConfigError: the headers callable returned something that is not a mapping of
                valid header names to str values (the values are not shown).
        """
        source = self._headers_source
        if source is None:
            return None
        headers = _check_headers(source() if callable(source) else source)
        return headers or None

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


# EngineState.OPEN, looked up once: an enum member read through its class costs send()
# about 60 ns.
_OPEN = EngineState.OPEN


def _no_session(error: ConnectionClosedError) -> EngineStateError:
    """What ``send()`` raises (from ``error``) when the session closed during the call."""
    return EngineStateError(f"send() with no open session: the connection closed ({error.code})")


def _default_name(url: str) -> str:
    """The engine's default metric name: scheme, host, port and path, nothing else (no
    credentials, no query: its values may be secret, or change per dial)."""
    scheme, host, port = url_target(url)
    path = urlsplit(url).path or "/"
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}{path}"


def _check_headers(headers: object) -> dict[str, str]:
    """``headers`` as a dict, checked: names are tokens, values are str without CR, LF or
    NUL. Errors name the header, never its value (it may be a token)."""
    if not isinstance(headers, Mapping):
        raise ConfigError(
            f"headers must be a mapping or a callable returning one, got {type(headers).__name__}"
        )
    checked: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise ConfigError(f"headers: {name!r} is not a valid header name")
        if not isinstance(value, str) or any(c in value for c in "\r\n\0"):
            raise ConfigError(f"headers: the value of {name} must be a str without CR, LF or NUL")
        checked[name] = value
    return checked


def _check_timeout(name: str, value: float | None, default: float | None) -> float | None:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
        math.isfinite(value) and value > 0
    ):
        raise ConfigError(f"{name} must be a positive number or None, got {value!r}")
    return float(value)


