# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""One connection's handle for user code: send, request, restart, exit."""

from __future__ import annotations

import enum
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import trace

from wsengine.errors import ConfigError, ConnectionClosedError, EngineStateError
from wsengine.types import CloseMessage, Message

if TYPE_CHECKING:
    from wsengine.adapters.base import ConnectionAdapter

__all__ = ["MatchFunction", "Session"]

logger = logging.getLogger("wsengine")

#: Tells whether a received message answers a :meth:`Session.request`.
MatchFunction = Callable[[Message], bool]


def _ignore(count: int) -> None:
    return None


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


class Session:
    """One connection: created by the engine for each (re)connection.

    Attributes:
        id: unique per connection.
        conn: the adapter serving this connection; hold ``pause_lock`` to read from it
            directly (``on_open`` may use it freely: nothing else reads yet).
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
        self.opened_at = time.monotonic()
        self._on_end = on_end
        # Guards _end (the first end wins); held for a few statements by whoever ends it.
        self._end_lock = threading.Lock()
        self._end: SessionEnd | None = None
        # Set once with _end; the engine's supervisor waits on it while the session runs.
        self.ended = threading.Event()
        self._closed = False
        # Pending request() calls, scanned by workers before on_message. Mutated in place
        # (workers keep a reference) under _requests_lock; requesters and workers take it.
        self._requests: list[_PendingRequest] = []
        self._requests_lock = threading.Lock()
        # Messages read by request() during on_open (no worker reads yet): delivered first.
        self._early: list[Message] = []
        # Set by the engine once workers read for this session; before that, request()
        # reads the connection itself.
        self._serving = False
        self._worker_idents: frozenset[int] = frozenset()
        # The engine's span for this connection and the context that makes it current.
        self.span: trace.Span = trace.INVALID_SPAN
        self.otel_ctx: otel_context.Context | None = None
        # Counts a sent message (the engine's messages-sent counter).
        self.count_sent: Callable[[int], None] = _ignore

    def __repr__(self) -> str:
        return f"<Session {self.id} {'closed' if self._closed else 'open'}>"

    @property
    def closed(self) -> bool:
        """True once the connection is closed (or its closing has begun)."""
        return self._closed

    def send(self, data: str | bytes) -> None:
        """Send a TEXT (``str``) or BINARY (``bytes``) message. Thread-safe; blocks until
        the data is handed to the kernel.

        Raises:
            TypeError: ``data`` is neither ``str`` nor bytes-like.
            ConnectionClosedError: the connection is closed.
        """
        if not isinstance(data, str | bytes | bytearray | memoryview):
            raise TypeError(f"send() takes str or bytes, not {type(data).__name__}")
        if self._closed:
            raise ConnectionClosedError(self._closed_code(), "session closed")
        self.conn.write(data)
        self.count_sent(1)

    def restart(self) -> None:
        """Close this connection (1001 unless ``on_close`` says otherwise) and reconnect.

        Does not block; idempotent; a no-op once the session has ended.
        """
        self.end(SessionEnd(EndKind.RESTART))

    def exit(self) -> None:
        """Close this connection (1000 unless ``on_close`` says otherwise) and stop the
        engine for good. Does not block; idempotent."""
        self.end(SessionEnd(EndKind.EXIT))

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
        if self._serving and self._worker_idents == {threading.get_ident()}:
            raise EngineStateError(
                "request() from on_message with workers=1 would wait for itself; "
                "use more workers or send() and answer in on_message"
            )
        pending = _PendingRequest(match)
        with self._requests_lock:
            if self._closed:
                raise ConnectionClosedError(self._closed_code(), "session closed")
            self._requests.append(pending)
        try:
            self.send(data)
            if not self._serving:
                return self._read_for(pending, timeout)
            if not pending.answered.wait(timeout):
                raise TimeoutError(f"no matching message within {timeout} s")
            return self._answer(pending)
        finally:
            with self._requests_lock:
                if pending in self._requests:
                    self._requests.remove(pending)

    def _read_for(self, pending: _PendingRequest, timeout: float) -> Message:
        """Read the connection ourselves until ``pending`` is answered (on_open only)."""
        deadline = time.monotonic() + timeout
        while not pending.answered.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no matching message within {timeout} s")
            with self.pause_lock:
                message = self.conn.read(remaining)
            if message is not None and not self.offer(message):
                self._early.append(message)
        return self._answer(pending)

    @staticmethod
    def _answer(pending: _PendingRequest) -> Message:
        if pending.error is not None:
            raise pending.error
        assert pending.message is not None
        return pending.message

    def offer(self, message: Message) -> bool:
        """Give ``message`` to the first pending request it matches; True if taken."""
        with self._requests_lock:
            for pending in self._requests:
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
            if self._end is not None:
                return False
            self._end = how
        self.ended.set()
        self._on_end(self, how)
        return True

    @property
    def end_reason(self) -> SessionEnd | None:
        """How the session ended, once it has."""
        return self._end

    def mark_closed(self) -> None:
        """Refuse new sends and requests; fail the pending requests."""
        with self._requests_lock:
            self._closed = True
            error = ConnectionClosedError(self._closed_code(), "session closed")
            for pending in self._requests:
                if not pending.answered.is_set():
                    pending.error = error
                    pending.answered.set()

    def _closed_code(self) -> int:
        end = self._end
        if end is not None and end.close is not None:
            return end.close.code
        return 1000 if end is not None and end.kind is not EndKind.LOST else 1006
