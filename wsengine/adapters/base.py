# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""The interface between the engine and a websocket library."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping
from typing import Any

from wsengine.errors import ConfigError
from wsengine.types import HandshakeResponse, Message

__all__ = ["ConnectionAdapter"]


class ConnectionAdapter(ABC):
    """One websocket connection at a time, seen through a websocket library.

    Contract for implementers:

    - An adapter MUST serve one connection at a time and MUST be reusable: ``dial`` after
      ``close``/``abort`` opens a fresh connection.
    - An adapter MUST be safe for one reading thread plus any number of concurrent writers
      (``write``, ``ping``, ``close``, ``abort``).
    - ``read`` MUST return whole TEXT/BINARY messages only, handling fragmentation and
      control frames (answering pings) itself.
    - Once the connection is closed, ``read``, ``write`` and ``ping`` MUST raise
      :class:`~wsengine.ConnectionClosedError` (code 1006 when no close frame came).
    - Protocol violations MUST fail the connection with the matching close code (1002
      framing, 1007 invalid UTF-8, 1009 over ``max_size``) and raise
      :class:`~wsengine.errors.ProtocolError` carrying that code. Only codes legal on the
      wire may be sent.
    - ``close`` and ``abort`` MUST be idempotent and safe while another thread is blocked in
      ``read`` or ``write``, which then raise ``ConnectionClosedError``.
    - ``dial`` SHOULD raise :class:`~wsengine.errors.HandshakeError` (with ``status`` and
      ``retry_after``) when the server answers the handshake with an HTTP error, so the
      engine can tell fatal refusals (4xx) from transient ones.
    - ``forget_after_fork`` MUST, in a child process made by ``os.fork()``, let go of the
      parent's connection without a byte on the wire and without ``shutdown()``, and
      leave the adapter ready for a new ``dial``. The default does nothing, which is
      right only for an adapter that keeps no socket or lock of its own.

    The three methods after the abstract ones form the engine's fast path. Their defaults
    are built on ``read``; an adapter that can wait on a socket overrides them.
    """

    @abstractmethod
    def dial(
        self, url: str, timeout: float | None, headers: Mapping[str, str] | None = None
    ) -> HandshakeResponse:
        """Open the connection and complete the opening handshake.

        Blocks the calling thread for at most about ``timeout`` seconds (None: no limit).
        ``headers`` are extra request headers for this dial (the engine's ``headers=``);
        the engine passes the keyword only when there are some, so an adapter written
        for 0.1, whose ``dial`` does not take it, keeps working without them.

        Raises:
            HandshakeError: the server answered with an HTTP error or a bad handshake.
            OSError: the TCP or TLS connection failed (``TimeoutError`` on timeout).
        """

    @abstractmethod
    def read(self, timeout: float | None = None) -> Message | None:
        """Return the next whole data message, or None when ``timeout`` passes first.

        A later call resumes a partly received frame without loss.

        Raises:
            ConnectionClosedError: the connection is closed (ProtocolError when the adapter
                failed it for a protocol violation).
        """

    @abstractmethod
    def write(self, data: str | bytes) -> None:
        """Send one message: TEXT for ``str``, BINARY for ``bytes``. Thread-safe; blocks
        until the data is handed to the kernel.

        Raises:
            ConnectionClosedError: the connection is closed, or closed while blocked.
            TypeError: ``data`` is neither ``str`` nor ``bytes``.
        """

    @abstractmethod
    def ping(self, payload: bytes = b"") -> None:
        """Send a ping frame (payload of at most 125 bytes); does not wait for the pong."""

    @abstractmethod
    def close(self, code: int = 1000, reason: str = "", timeout: float | None = None) -> None:
        """Send a close frame, wait up to ``timeout`` for the peer's, then close the socket.

        Idempotent. Data messages that arrive meanwhile are discarded.
        """

    @abstractmethod
    def abort(self) -> None:
        """Drop the TCP connection at once, without a closing handshake. Idempotent."""

    @property
    @abstractmethod
    def last_received(self) -> float:
        """``time.monotonic()`` when the last frame (control frames included) arrived."""

    @property
    @abstractmethod
    def underlying(self) -> object:
        """The library's own connection object, for what the adapter does not expose."""

    def forget_after_fork(self) -> None:
        """Forget the connection inherited from the parent, in a child made by ``os.fork()``.

        The engine calls it in the child right after the fork, in the child's only thread,
        for an engine that was running in the parent. The connection still belongs to the
        parent, which goes on using it. An implementation MUST:

        - close the child's copies of the connection's file descriptors (socket, wake-up
          pipes) with ``close()`` alone: no close frame, no TLS ``close_notify``, and no
          ``shutdown()``, which would end the TCP connection for the parent as well;
        - replace its locks (a thread of the parent may have held one at the fork; that
          thread does not exist in the child, so the lock would stay held forever);
        - drop its per-connection state, so that ``read``, ``write`` and ``ping`` raise
          ``ConnectionClosedError`` and ``dial`` opens a fresh connection;
        - not block, log, or take a lock that existed before the fork.

        Default: no-op (for an adapter that holds no socket or lock of its own).
        """
        return None

    def wait_readable(self, timeout: float | None) -> bool:
        """Block until ``read_available`` may have something, ``timeout`` passes, or
        ``wake_reader`` is called; return False on timeout.

        The engine calls it without holding its pause lock, so it may block for long. The
        default returns True at once and leaves the waiting to ``read_available``.
        """
        return True

    def wake_reader(self) -> None:
        """Make a ``wait_readable`` blocked in another thread return now. Default: no-op."""
        return None

    def read_available(self, max_messages: int) -> list[Message]:
        """Return up to ``max_messages`` messages obtainable without waiting long.

        The engine calls it while holding its pause lock, so it must not block for more
        than a few milliseconds. The default does one ``read`` with a 20 ms timeout.

        Raises:
            ConnectionClosedError: as ``read``.
        """
        message = self.read(timeout=0.02)
        return [] if message is None else [message]

    def has_pending_data(self) -> bool:
        """Tell whether bytes from the peer wait on the connection, not yet received (the
        peer is alive even if nothing was parsed lately: the engine was not reading).
        Bytes of a partial frame already buffered do not count. The default says False."""
        return False


def check_adapter_arguments(
    max_size: object, options: Mapping[str, Any], reserved: Collection[str]
) -> None:
    """Check an adapter constructor's arguments (shared by the shipped adapters).

    Raises:
        ConfigError: ``max_size`` is not a positive int or None, or ``options`` holds an
            option the adapter sets itself (one of ``reserved``).
    """
    if max_size is not None and (
        not isinstance(max_size, int) or isinstance(max_size, bool) or max_size < 1
    ):
        raise ConfigError(f"max_size must be a positive int or None, got {max_size!r}")
    clashing = sorted(set(reserved).intersection(options))
    if clashing:
        raise ConfigError(f"option {clashing[0]} is set by the adapter; do not pass it")
