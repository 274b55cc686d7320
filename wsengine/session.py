# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""One connection's handle for user code: send, request, restart, exit."""

from __future__ import annotations

import collections
import enum
import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace

from wsengine.adapters._driver import DrivenAdapter
from wsengine.adapters.base import ConnectionAdapter
from wsengine.errors import ConfigError, ConnectionClosedError, EngineStateError
from wsengine.types import CloseMessage, HandshakeResponse, Message

__all__ = ["AdapterLease", "LeasedConnection", "MatchFunction", "Session", "TokenBucket"]

_T = TypeVar("_T")

logger = logging.getLogger("wsengine")

# What send() takes. A tuple, not ``str | bytes | ...``: that union is built anew on every
# call, which costs a send about 0.15 us.
_SENDABLE = (str, bytes, bytearray, memoryview)

#: Tells whether a received message answers a :meth:`Session.request`.
MatchFunction = Callable[[Message], bool]


def _ignore(count: int) -> None:
    return None


def _ignore_nothing() -> None:
    return None


def _never() -> bool:
    return False


def send_deadline(name: str, timeout: float | None) -> float | None:
    """The ``time.monotonic()`` deadline of a send bounded by ``timeout`` (None: none).

    Raises:
        ConfigError: ``timeout`` is not a positive finite number or None.
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not (
        math.isfinite(timeout) and timeout > 0
    ):
        raise ConfigError(f"{name} timeout must be a positive number or None, got {timeout!r}")
    return time.monotonic() + timeout


class TokenBucket:
    """The engine's send rate limit: ``rate`` tokens a second, at most ``burst`` saved.

    One per engine, shared by every session of every run (the limit is on the engine's
    output, whichever session sends). Thread-safe.
    """

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp = time.monotonic()
        # Guards the tokens; senders wait on it for their token, woken by time or by
        # wake() (a stop, a session's end). Held for a few statements; waits release it.
        self._cond = threading.Condition(threading.Lock())

    def take(self, deadline: float | None, halted: Callable[[], bool]) -> bool:
        """Take a token, waiting for it until ``deadline``; False (no token taken) once
        ``halted()`` says the send must not happen any more (checked on every wake-up).

        Blocks the calling thread. Raises TimeoutError when ``deadline`` passes first.
        """
        with self._cond:
            while True:
                if halted():
                    return False
                now = time.monotonic()
                self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
                self._stamp = now
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return True
                wait = (1.0 - self._tokens) / self._rate
                if deadline is not None:
                    left = deadline - now
                    if left <= 0:
                        raise TimeoutError("timed out waiting for the send rate limit")
                    wait = min(wait, left)
                self._cond.wait(wait)

    def wake(self) -> None:
        """Make every waiting sender look again at its ``halted`` (does not block long)."""
        with self._cond:
            self._cond.notify_all()


#: Raised by a connection view whose lease was revoked (its session closed, or a newer
#: run of the engine took the adapter).
_REVOKED = "connection closed (its session or engine run is over)"


class AdapterLease:
    """The right of one engine run, or one of its sessions, to use the shared adapter.

    Why: one adapter serves an engine's successive runs, and a thread of an old run (an
    ``on_close`` that ``stop()`` gave up on, a late dial, a stuck worker) may wake up
    while the adapter already serves the next run. Every adapter call of a run goes
    through a :class:`LeasedConnection`; ``start()`` revokes the previous run's lease
    and then waits for the calls already inside the adapter to leave, so from then on
    nothing of the old run can reach the adapter. A check-then-call without that count
    would race: the old thread could pass the check, then close the new connection.

    The count is kept without a lock, for the read path's sake (two calls per read turn):
    a call registers first (an ``append`` to the root's deque, atomic under the GIL) and
    checks the revoked flags after; ``revoke()`` sets its flag first and ``wait_idle()``
    looks at the count after. Either the call sees the flag and backs out, or
    ``wait_idle()`` sees the call and waits for it to leave.

    A session's lease is a child of its run's: revoking the run's revokes every session's,
    and a session's alone is revoked once that session is closed. Children share the
    root's count.
    """

    def __init__(self, parent: AdapterLease | None = None) -> None:
        self._parent = parent
        self._root: AdapterLease = self if parent is None else parent._root
        # This lease and its ancestors: a call checks each one's flag.
        self._chain: tuple[AdapterLease, ...] = (self,) if parent is None else (
            self, *parent._chain
        )
        self._revoked = False
        # One item per call inside the adapter, on the root only: appended on entry and
        # popped on exit by the calling thread (both atomic under the GIL); wait_idle()
        # waits for it to be empty. Shared by the root's children.
        self._busy: collections.deque[None] = (
            collections.deque() if parent is None else parent._busy
        )
        # Guards _idle_waiters; wait_idle() waits on _idle (built on it), notified by the
        # call that empties _busy while someone waits. Held for a few statements.
        self._lock: threading.Lock = threading.Lock() if parent is None else parent._lock
        self._idle: threading.Condition = (
            threading.Condition(self._lock) if parent is None else parent._idle
        )
        self._idle_waiters = 0  # threads in wait_idle(), on the root only

    def child(self) -> AdapterLease:
        """A lease revoked with this one, or on its own."""
        return AdapterLease(self)

    @property
    def revoked(self) -> bool:
        """True once this lease or an ancestor was revoked."""
        return any(lease._revoked for lease in self._chain)

    def enter(self) -> bool:
        """Count one call into the adapter; False (nothing counted) if revoked."""
        busy = self._busy
        busy.append(None)  # register first, then check: see the class docstring
        for lease in self._chain:
            if lease._revoked:
                self.leave()
                return False
        return True

    def leave(self) -> None:
        """End a call counted by :meth:`enter`."""
        busy = self._busy
        busy.pop()
        if not busy and self._root._idle_waiters:
            self.notify_idle()

    def notify_idle(self) -> None:
        """Wake the threads in :meth:`wait_idle` (the last call just left)."""
        with self._lock:
            self._idle.notify_all()

    def revoke(self) -> None:
        """Refuse every later call through this lease and its children. Idempotent; does
        not block."""
        self._revoked = True

    def wait_idle(self, timeout: float | None) -> bool:
        """Block until no call of the whole run is inside the adapter; False on timeout."""
        root = self._root
        busy = self._busy
        with self._lock:
            root._idle_waiters += 1
            try:
                return self._idle.wait_for(lambda: not busy, timeout)
            finally:
                root._idle_waiters -= 1


class LeasedConnection(ConnectionAdapter):
    """A view of the engine's adapter that acts only while its lease holds.

    Once the lease is revoked, ``read``, ``write``, ``ping``, ``read_available``, ``dial``
    and ``underlying`` raise :class:`ConnectionClosedError` (1006); ``close``, ``abort`` and
    ``wake_reader`` do nothing (the connection they meant is gone), ``wait_readable``
    returns True at once (the next read then raises), ``has_pending_data`` says False.
    Attributes of the adapter not in the interface are passed through; methods among them
    are fenced like the rest.

    The read path's methods (``wait_readable``, ``read_available``) and ``write`` spell
    the lease out inline rather than through a generic wrapper: they run twice per read
    turn, or once per message sent.
    """

    def __init__(self, adapter: ConnectionAdapter, lease: AdapterLease) -> None:
        self._adapter = adapter
        self._lease = lease
        # The lease's parts the inline paths use (fixed for the lease's life).
        self._busy = lease._busy
        self._chain = lease._chain
        self._root = lease._root
        # What write() calls with the data alone: the connection's own write when the
        # adapter offers it (DrivenAdapter.direct_write: one frame less per message, and
        # bound to the connection open now, so it can only ever reach that one), else the
        # adapter's. Resolved again by dial(). The send paths of Session and the engine
        # call it inline, after the same register-then-check of the lease.
        self._direct: Callable[..., None] = self._resolve_direct()

    @property
    def adapter(self) -> ConnectionAdapter:
        """The adapter behind this view (the engine's ``adapter``)."""
        return self._adapter

    @property
    def lease(self) -> AdapterLease:
        """The lease this view acts under."""
        return self._lease

    def _resolve_direct(self) -> Callable[..., None]:
        adapter = self._adapter
        direct = adapter.direct_write() if isinstance(adapter, DrivenAdapter) else None
        return adapter.write if direct is None else direct

    def _call(self, function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        lease = self._lease
        if not lease.enter():
            raise ConnectionClosedError(1006, _REVOKED)
        try:
            return function(*args, **kwargs)
        finally:
            lease.leave()

    def _quiet(self, function: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        lease = self._lease
        if not lease.enter():
            return
        try:
            function(*args, **kwargs)
        finally:
            lease.leave()

    def dial(
        self, url: str, timeout: float | None, headers: Mapping[str, str] | None = None
    ) -> HandshakeResponse:
        # The keyword goes on only when given: an adapter written for 0.1 lacks it.
        try:
            if headers is None:
                return self._call(self._adapter.dial, url, timeout)
            return self._call(self._adapter.dial, url, timeout, headers=headers)
        finally:
            # Whatever the outcome, write() follows the connection the adapter has now.
            self._direct = self._resolve_direct()

    def read(self, timeout: float | None = None) -> Message | None:
        return self._call(self._adapter.read, timeout)

    def write(self, data: str | bytes, *args: Any, **kwargs: Any) -> None:
        busy = self._busy
        busy.append(None)  # AdapterLease.enter, inline: the send path runs it per message
        try:
            for lease in self._chain:
                if lease._revoked:
                    raise ConnectionClosedError(1006, _REVOKED)
            if args or kwargs:
                self._direct(data, *args, **kwargs)
            else:
                self._direct(data)
        finally:
            busy.pop()  # AdapterLease.leave, inline
            if not busy and self._root._idle_waiters:
                self._lease.notify_idle()

    def ping(self, payload: bytes = b"") -> None:
        self._call(self._adapter.ping, payload)

    def close(self, code: int = 1000, reason: str = "", timeout: float | None = None) -> None:
        self._quiet(self._adapter.close, code, reason, timeout=timeout)

    def abort(self) -> None:
        self._quiet(self._adapter.abort)

    @property
    def last_received(self) -> float:
        return self._adapter.last_received

    @property
    def underlying(self) -> object:
        return self._call(getattr, self._adapter, "underlying")

    def wait_readable(self, timeout: float | None) -> bool:
        busy = self._busy
        busy.append(None)  # AdapterLease.enter, inline
        try:
            for lease in self._chain:
                if lease._revoked:
                    return True
            return self._adapter.wait_readable(timeout)
        finally:
            busy.pop()  # AdapterLease.leave, inline
            if not busy and self._lease._root._idle_waiters:
                self._lease.notify_idle()

    def wake_reader(self) -> None:
        self._quiet(self._adapter.wake_reader)

    def read_available(self, max_messages: int) -> list[Message]:
        busy = self._busy
        busy.append(None)  # AdapterLease.enter, inline
        try:
            for lease in self._chain:
                if lease._revoked:
                    raise ConnectionClosedError(1006, _REVOKED)
            return self._adapter.read_available(max_messages)
        finally:
            busy.pop()  # AdapterLease.leave, inline
            if not busy and self._lease._root._idle_waiters:
                self._lease.notify_idle()

    def has_pending_data(self) -> bool:
        if self._lease.revoked:
            return False
        return self._adapter.has_pending_data()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in (
            "_adapter", "_lease", "_busy", "_chain", "_root", "_direct"
        ):
            raise AttributeError(name)
        value = getattr(self._adapter, name)
        if callable(value):
            return functools.partial(self._call, value)
        return value

    def __repr__(self) -> str:
        state = "revoked" if self._lease.revoked else "live"
        return f"<LeasedConnection {state} of {self._adapter!r}>"


class EndKind(enum.Enum):
    """Why a session ends."""

    STOP = "stop"  # engine.stop(): close 1000, no reconnect
    EXIT = "exit"  # session.exit(): close 1000, stop for good
    RESTART = "restart"  # session.restart(): close 1001, reconnect
    LOST = "lost"  # peer close, drop, protocol error or dead peer: reconnect if configured


@dataclass(frozen=True, slots=True)
class SessionEnd:
    """How a session ended: ``close`` is what ``on_close`` receives."""

    kind: EndKind
    close: CloseMessage | None = None


class _PendingRequest:
    """One :meth:`Session.request` waiting for its answer."""

    __slots__ = ("answered", "error", "match", "message")

    def __init__(self, match: MatchFunction) -> None:
        self.match = match
        self.message: Message | None = None
        self.error: BaseException | None = None
        # Set once, by the worker that matched a message or by the session's end; waited
        # on by the requesting thread.
        self.answered = threading.Event()


class _SessionCore:
    """The engine's side of a :class:`Session`: how it ends, its requests, its span.

    Kept apart so that a session's public surface is exactly the contract's (``id``,
    ``conn``, ``pause_lock``, ``send``, ``restart``, ``exit``, ``closed``, ``request``).
    The supervisor and the workers use this object; users never need it.
    """

    def __init__(self, session: Session, on_end: Callable[[Session, SessionEnd], None]) -> None:
        self._session = session
        self._on_end = on_end
        self.opened_at = time.monotonic()
        # Guards end (the first end wins); held for a few statements by whoever ends it.
        self._end_lock = threading.Lock()
        self.end_reason: SessionEnd | None = None
        # Set once with end_reason; the supervisor waits on it while the session runs.
        self.ended = threading.Event()
        self.closed = False
        # Pending request() calls, scanned by workers before on_message. Mutated in place
        # (workers keep a reference) under requests_lock; requesters and workers take it.
        self.requests: list[_PendingRequest] = []
        self.requests_lock = threading.Lock()
        # Messages read by request() during on_open (no worker reads yet): delivered first.
        self.early: list[Message] = []
        # Set by the engine once workers read for this session; before that, request()
        # reads the connection itself.
        self.serving = False
        self.worker_idents: frozenset[int] = frozenset()
        # Set by the supervisor with the workers: request() calls it before waiting, so
        # that a worker blocked in on_message hands the reading to another one.
        self.lend_reader: Callable[[], None] = _ignore_nothing
        # The engine's span for this connection and the context that makes it current.
        self.span: trace.Span = trace.INVALID_SPAN
        self.otel_ctx: otel_context.Context | None = None
        # Counts a sent message (the engine's messages-sent counter).
        self.count_sent: Callable[[int], None] = _ignore
        # Set by the supervisor: the engine's rate limit, whether the adapter's write takes
        # a timeout, what a send that timed out reports, and whether the engine is
        # stopping (a send waiting for its token then gives up).
        self.limiter: TokenBucket | None = None
        self.write_timeout = False
        self.send_timed_out: Callable[[], None] = lambda: None
        self.stopping: Callable[[], bool] = _never

    def halted(self) -> bool:
        """True once a send on this session must not go out any more."""
        return self.closed or self.ended.is_set() or self.stopping()

    def offer(self, message: Message) -> bool:
        """Give ``message`` to the first pending request it matches; True if taken."""
        with self.requests_lock:
            for pending in self.requests:
                if pending.answered.is_set():
                    continue
                try:
                    matched = pending.match(message)
                except Exception:
                    logger.exception("a request() match function raised; message not matched")
                    continue
                if matched:
                    pending.message = message
                    pending.answered.set()
                    return True
        return False

    def end(self, how: SessionEnd) -> bool:
        """Record how the session ends (the first call wins) and tell the engine.

        Returns:
            True if this call ended the session.
        """
        with self._end_lock:
            if self.end_reason is not None:
                return False
            self.end_reason = how
        self.ended.set()
        self._on_end(self._session, how)
        return True

    def mark_closed(self) -> None:
        """Refuse new sends and requests; fail the pending requests."""
        with self.requests_lock:
            self.closed = True
            error = ConnectionClosedError(self.closed_code(), "session closed")
            for pending in self.requests:
                if not pending.answered.is_set():
                    pending.error = error
                    pending.answered.set()

    def closed_code(self) -> int:
        """The code a send on the closed session reports."""
        end = self.end_reason
        if end is not None and end.close is not None:
            return end.close.code
        return 1000 if end is not None and end.kind is not EndKind.LOST else 1006


class Session:
    """One connection: created by the engine for each (re)connection.

    Attributes:
        id: unique per connection.
        conn: this connection's view of the engine's adapter (a
            :class:`LeasedConnection`); hold ``pause_lock`` to read from it directly
            (``on_open`` may use it freely: nothing else reads yet). Once the session is
            closed it acts no more (reads and writes raise ``ConnectionClosedError``,
            ``close``/``abort`` do nothing), so a reference kept past the session can
            never reach a later connection.
        pause_lock: the engine's pause lock (``engine.pause_lock``).
    """

    def __init__(
        self,
        session_id: str,
        conn: ConnectionAdapter,
        pause_lock: threading.RLock,
        on_end: Callable[[Session, SessionEnd], None],
    ) -> None:
        self.id = session_id
        self.conn = conn
        self.pause_lock = pause_lock
        self._core = _SessionCore(self, on_end)
        # The send fast path (send() with no timeout): the leased view whose lease check
        # and write send() spells out inline, or None when the session has no such view or
        # the engine has a send_rate (then every send takes the full path). Set here and
        # by the supervisor (_resolve_lane) once the session's limiter is known.
        self._lane: LeasedConnection | None = None
        self._resolve_lane()

    def _resolve_lane(self) -> None:
        """Choose the send fast path from ``conn`` and the limiter; the supervisor calls
        it again after setting up the session's send path. Does not block."""
        conn = self.conn
        fast = isinstance(conn, LeasedConnection) and self._core.limiter is None
        self._lane = conn if fast else None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Session {self.id} {'closed' if self._core.closed else 'open'}>"

    @property
    def closed(self) -> bool:
        """True once the connection is closed (or its closing has begun)."""
        return self._core.closed

    def send(self, data: str | bytes, timeout: float | None = None) -> None:
        """Send a TEXT (``str``) or BINARY (``bytes``) message. Thread-safe; blocks until
        the data is handed to the kernel, after waiting for a token when the engine has a
        ``send_rate``.

        ``timeout`` bounds the whole send in seconds (None: no limit): the wait for the
        rate limiter and for the kernel to take the frame. If part of the frame had
        already gone out, the connection is failed (aborted: ``on_close`` gets 1006 and
        the engine reconnects as usual). With an adapter whose ``write`` takes no
        ``timeout`` keyword (the 0.1 contract), only the rate-limiter wait is bounded.

        Raises:
            TypeError: ``data`` is neither ``str`` nor bytes-like.
            ConnectionClosedError: the connection is closed, or closed (or the engine
                stopped) while the send waited for its token.
            TimeoutError: ``timeout`` passed.
            ConfigError: ``timeout`` is not a positive number or None.
        """
        if not isinstance(data, _SENDABLE):
            raise TypeError(f"send() takes str or bytes, not {type(data).__name__}")
        core = self._core
        if core.closed:
            raise ConnectionClosedError(core.closed_code(), "session closed")
        lane = self._lane
        if timeout is None and lane is not None:
            # The common case, kept short: LeasedConnection.write inline (register, then
            # check the lease; see AdapterLease), straight into the connection's write.
            # engine.send() has the same lines.
            busy = lane._busy
            busy.append(None)
            try:
                for lease in lane._chain:
                    if lease._revoked:
                        raise ConnectionClosedError(1006, _REVOKED)
                lane._direct(data)
            finally:
                busy.pop()
                if not busy and lane._root._idle_waiters:
                    lane._lease.notify_idle()
            core.count_sent(1)
            return
        limiter = core.limiter
        if timeout is None and limiter is None:
            self.conn.write(data)
            core.count_sent(1)
            return
        deadline = send_deadline("send()", timeout)
        try:
            if limiter is not None and not limiter.take(deadline, core.halted):
                code = core.closed_code() if core.ended.is_set() else 1001
                raise ConnectionClosedError(code, "session closed while the send waited")
            if deadline is not None and core.write_timeout:
                # The shipped adapters' write takes a timeout; the 0.1 contract's has none.
                write: Callable[..., None] = self.conn.write
                write(data, timeout=max(0.0, deadline - time.monotonic()))
            else:
                self.conn.write(data)
        except TimeoutError:
            core.send_timed_out()
            raise
        core.count_sent(1)

    def restart(self) -> None:
        """Close this connection (1001 unless ``on_close`` says otherwise) and reconnect.

        Does not block; idempotent; a no-op once the session has ended.
        """
        self._core.end(SessionEnd(EndKind.RESTART))

    def exit(self) -> None:
        """Close this connection (1000 unless ``on_close`` says otherwise) and stop the
        engine for good. Does not block; idempotent."""
        self._core.end(SessionEnd(EndKind.EXIT))

    def request(self, data: str | bytes, match: MatchFunction, timeout: float) -> Message:
        """Send ``data``, then return the first message of this session that ``match``
        accepts; that message goes to the caller instead of ``on_message``.

        Blocks the calling thread up to ``timeout`` seconds while the engine goes on
        delivering other messages. From ``on_open`` it reads the connection itself and
        keeps the other messages for ``on_message``. From ``on_message`` it occupies that
        worker, so with ``workers == 1`` it would wait for itself: that raises.

        Raises:
            TimeoutError: no matching message within ``timeout``.
            ConnectionClosedError: the connection closed first.
            EngineStateError: called from the only worker thread.
            ConfigError: ``timeout`` is not a positive finite number.
        """
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not (
            math.isfinite(timeout) and timeout > 0
        ):
            raise ConfigError(f"request() timeout must be a positive number, got {timeout!r}")
        if not callable(match):
            raise TypeError("request() match must be callable")
        core = self._core
        if core.serving and core.worker_idents == {threading.get_ident()}:
            raise EngineStateError(
                "request() from on_message with workers=1 would wait for itself; "
                "use more workers or send() and answer in on_message"
            )
        pending = _PendingRequest(match)
        with core.requests_lock:
            if core.closed:
                raise ConnectionClosedError(core.closed_code(), "session closed")
            core.requests.append(pending)
        try:
            self.send(data)
            if not core.serving:
                return self._read_for(pending, timeout)
            core.lend_reader()
            if not pending.answered.wait(timeout):
                raise TimeoutError(f"no matching message within {timeout} s")
            return self._answer(pending)
        finally:
            with core.requests_lock:
                if pending in core.requests:
                    core.requests.remove(pending)

    def _read_for(self, pending: _PendingRequest, timeout: float) -> Message:
        """Read the connection ourselves until ``pending`` is answered (on_open only)."""
        deadline = time.monotonic() + timeout
        core = self._core
        while not pending.answered.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no matching message within {timeout} s")
            with self.pause_lock:
                message = self.conn.read(remaining)
            if message is not None and not core.offer(message):
                core.early.append(message)
        return self._answer(pending)

    @staticmethod
    def _answer(pending: _PendingRequest) -> Message:
        if pending.error is not None:
            raise pending.error
        assert pending.message is not None
        return pending.message
