# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""An adapter on the threading client of the websockets library.

websockets' ``ClientConnection`` runs one background thread per connection (its
``recv_events`` thread) that reads the socket, parses frames with the sans-I/O protocol,
answers pings and close frames, and queues data frames. The adapter plugs into it at
three points, through ``connect(create_connection=...)``:

- the frame queue is replaced with :class:`_MessageQueue`, which hands out whole messages,
  lets ``wait_readable`` wait without consuming anything, validates UTF-8 fragment by
  fragment (fail fast, 1007), and does not cap the number of fragments: websockets 17
  fails a message of more than 4096 fragments with 1009, which fails Autobahn 9.3 and
  9.4. Memory stays bounded by ``max_size``: fragments are appended to one buffer;
- ``process_event`` stamps every frame from the peer, control frames included, for
  ``last_received`` and ``last_pong``;
- ``send_data`` wakes a waiting reader when the connection stops being OPEN.

This module is the only one in wsengine that imports websockets. Those hooks rely on
websockets.sync's internals as of websockets 17 (checked at import).
"""

from __future__ import annotations

import codecs
import contextlib
import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Final

try:
    from websockets.client import ClientProtocol
    from websockets.exceptions import (
        ConnectionClosed,
        InvalidHandshake,
        InvalidProxy,
        InvalidStatus,
        InvalidURI,
        SecurityError,
    )
    from websockets.frames import Frame, Opcode
    from websockets.protocol import OPEN, Event, Protocol
    from websockets.sync.client import ClientConnection, connect
    from websockets.sync.messages import Assembler
    from websockets.sync.utils import Deadline
    from websockets.version import version as _websockets_version
except ImportError as error:  # pragma: no cover - exercised in a test with a fake import
    raise ImportError(
        "wsengine.adapters.websockets_sync needs the websockets package; "
        "install it with: pip install 'wsengine[websockets]'"
    ) from error

# The adapter hooks into websockets.sync's connection internals as they are in 17.x.
if int(_websockets_version.split(".")[0]) < 17:  # pragma: no cover - depends on install
    raise ImportError(
        f"wsengine.adapters.websockets_sync needs websockets 17 or later, not "
        f"{_websockets_version}; install it with: pip install 'wsengine[websockets]'"
    )

from wsengine.adapters._dial import parse_retry_after
from wsengine.adapters.base import ConnectionAdapter, check_adapter_arguments
from wsengine.errors import ConfigError, ConnectionClosedError, HandshakeError, ProtocolError
from wsengine.types import (
    HandshakeResponse,
    Message,
    MessageType,
    is_sendable_close_code,
    truncate_close_reason,
)

__all__ = ["WebsocketsAdapter"]

# Options the adapter sets itself when it calls websockets.sync.client.connect.
_RESERVED_OPTIONS: Final = frozenset({"open_timeout", "create_connection", "legacy"})
# Close codes websockets sends when it fails the connection for a protocol violation.
_PROTOCOL_ERROR_CODES: Final = frozenset({1002, 1007, 1009})
# Longest wait, in teardown, for websockets' background thread to end once its socket is
# closed (it ends at once unless the interpreter is starved).
_TEARDOWN_GRACE: Final = 2.0
# Longest wait for the protocol mutex when the reader fails the connection: a writer stuck
# on a peer that does not read must not hold the reader forever.
_CONTROL_SEND_TIMEOUT: Final = 1.0
_TEXT: Final = Opcode.TEXT
_PING: Final = Opcode.PING
_PONG: Final = Opcode.PONG
_CLOSE: Final = Opcode.CLOSE
_TEXT_MESSAGE: Final = MessageType.TEXT
_BINARY_MESSAGE: Final = MessageType.BINARY
_Utf8Decoder = codecs.getincrementaldecoder("utf-8")


def _remaining(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (None: no deadline), at least 0."""
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())


def _lock_timeout(seconds: float | None) -> float:
    """``Lock.acquire``'s timeout for a wait of ``seconds`` (None: forever)."""
    return -1 if seconds is None else seconds


def _dial_error(error: Exception) -> Exception:
    """Map a websockets handshake failure to the error ``dial()`` raises.

    The messages never quote the server's headers (they may carry cookies or tokens) nor
    the URL (it may carry credentials).
    """
    if isinstance(error, InvalidStatus):
        response = error.response
        status = response.status_code
        return HandshakeError(
            f"server rejected the opening handshake with HTTP {status}",
            status=status,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )
    if isinstance(error, SecurityError):
        return HandshakeError(
            f"opening handshake refused for safety ({type(error).__name__}: too many "
            "redirects, an unsafe redirect or an oversized response)"
        )
    if isinstance(error, InvalidURI):
        return HandshakeError("invalid URI (after a redirect?)")
    if isinstance(error, InvalidProxy):
        return ConfigError("invalid proxy option")
    return HandshakeError(f"opening handshake failed ({type(error).__name__})")


def _headers(items: list[tuple[str, str]]) -> dict[str, str]:
    """Response headers as a dict; repeated names are joined with ", " (RFC 9110 5.3)."""
    headers: dict[str, str] = {}
    names: dict[str, str] = {}
    for name, value in items:
        first = names.setdefault(name.lower(), name)
        headers[first] = f"{headers[first]}, {value}" if first in headers else value
    return headers


class _MessageQueue(Assembler):
    """websockets' frame queue, turned into a source of whole messages for one reader.

    websockets' thread calls ``put`` (data frames), ``finish`` (the peer's close frame)
    and ``close`` (end of the connection); the adapter's reader calls ``pop_into`` and
    ``wait``. Flow control is websockets': ``put`` pauses its thread above the high-water
    mark, ``pop_into`` resumes it below the low-water mark.

    ``put`` runs once per frame on the busiest thread, so it takes the mutex only to pause
    or to wake waiters, and wakes them once per wait, not once per frame. No wake-up is
    lost: a waiter counts itself in ``waiters``, clears ``notified`` and then checks the
    queue, all under the mutex, while ``put`` queues the frame and then reads ``waiters``
    and ``notified`` (the interpreter runs one of these steps at a time, in program order).
    """

    def __init__(
        self,
        high: int | None,
        low: int | None,
        pause: Callable[[], Any],
        resume: Callable[[], Any],
    ) -> None:
        super().__init__(high, low, pause=pause, resume=resume)
        # Waiters: wait() callers (the engine's reader in wait_readable, a reader by hand).
        # Notified under self.mutex by put(), finish(), close(), discard() and wake().
        self.readable = threading.Condition(self.mutex)
        # Threads in wait(), and whether they were notified since the last one began to
        # wait; changed under self.mutex.
        self.waiters = 0
        self.notified = False
        # Set once the peer's close frame was processed: no data frame follows it.
        self.finished = False
        # Set when the adapter closes or fails the connection: data frames are dropped.
        self.discarding = False
        # A wake() that no wakeable wait() has seen yet.
        self.wakeup = False
        # The fragmented message being assembled; touched by the reader only.
        self._opcode: Opcode | None = None
        self._buffer = bytearray()
        self._decoder: codecs.IncrementalDecoder | None = None

    # -- websockets' thread ---------------------------------------------------------

    def put(self, frame: Frame) -> None:
        """Queue a data frame (dropped once discarding). Never raises, never blocks."""
        if self.discarding:
            return
        frames = self.frames
        frames.put(frame)
        high = self.high
        if high is not None and not self.paused and frames.qsize() > high:
            with self.mutex:
                self.maybe_pause()
        if self.waiters and not self.notified:
            with self.mutex:
                self.notified = True
                self.readable.notify_all()

    def finish(self) -> None:
        """The peer's close frame came: once the queue is empty, ``pop_into`` raises
        EOFError."""
        with self.mutex:
            self.finished = True
            self.readable.notify_all()

    def close(self) -> None:
        """End of the connection: resume websockets' thread and wake the reader."""
        with self.mutex:
            if self.closed:
                return
            self.closed = True
            self._resume_reading()
            self.readable.notify_all()

    # -- the adapter ----------------------------------------------------------------

    def discard(self) -> None:
        """Drop queued frames and every frame from now on (the adapter is closing)."""
        with self.mutex:
            self.discarding = True
            with contextlib.suppress(queue.Empty):
                while True:
                    self.frames.get_nowait()
            self._resume_reading()
            self.readable.notify_all()

    def wake(self) -> None:
        """Make every ``wait`` return now; the next ``wait(wakeable=True)`` too."""
        with self.mutex:
            self.wakeup = True
            self.readable.notify_all()

    def wait(self, timeout: float | None, *, wakeable: bool) -> bool:
        """Block until a frame is queued, the stream ended, ``wake`` ran or ``timeout``
        passed; True if ``pop_into`` has something to return or raise.

        Only a ``wakeable`` wait (``wait_readable``) consumes a pending ``wake``: a reader
        re-checks its own conditions after any wake-up.
        """
        with self.mutex:
            self.waiters += 1
            self.notified = False
            try:
                if not self._ready() and not (wakeable and self.wakeup):
                    self.readable.wait(timeout)
            finally:
                self.waiters -= 1
            if wakeable:
                self.wakeup = False
            return self._ready()

    def pop_into(self, out: list[Message], limit: int) -> None:
        """Append whole messages to ``out`` until it holds ``limit`` or none is complete.
        Never blocks.

        Raises:
            EOFError: no message will come any more (and none is queued).
            UnicodeDecodeError: a text message is not valid UTF-8 (found as soon as the
                fragment that breaks it is queued); ``out`` keeps the messages before it.
        """
        frames = self.frames
        get = frames.get_nowait
        while len(out) < limit:
            try:
                frame = get()
            except queue.Empty:
                # Checked again under the mutex: finish() runs under it after the last
                # put(), so a frame queued just before the close frame is not missed.
                with self.mutex:
                    if not frames.empty():
                        continue
                    if self.closed or self.finished:
                        raise EOFError("no more messages") from None
                return
            if frame is None:  # pragma: no cover - only Assembler.close() queues None
                continue
            if self.paused:
                with self.mutex:
                    self.maybe_resume()
            if frame.fin and self._opcode is None:  # a message in one frame: most of them
                if frame.opcode is _TEXT:
                    out.append(Message(_TEXT_MESSAGE, str(frame.data, "utf-8")))
                else:
                    out.append(Message(_BINARY_MESSAGE, bytes(frame.data)))
                continue
            message = self._assemble(frame)
            if message is not None:
                out.append(message)

    def _assemble(self, frame: Frame) -> Message | None:
        """Add a fragment to the message in progress; return the message once whole.

        websockets' protocol has already checked the opcode sequence.
        """
        data = frame.data
        if self._opcode is None:
            self._opcode = frame.opcode
            self._buffer = bytearray(data)
            if frame.opcode is _TEXT:
                self._decoder = _Utf8Decoder()
                self._decoder.decode(data)  # validates; the text is decoded whole below
            return None
        self._buffer += data
        if self._decoder is not None:
            self._decoder.decode(data, frame.fin)
        if not frame.fin:
            return None
        opcode, buffer = self._opcode, self._buffer
        self._opcode, self._buffer, self._decoder = None, bytearray(), None
        if opcode is _TEXT:
            return Message(_TEXT_MESSAGE, buffer.decode("utf-8"))
        return Message(_BINARY_MESSAGE, bytes(buffer))

    def _ready(self) -> bool:
        assert self.mutex.locked()
        return not self.frames.empty() or self.closed or self.finished

    def _resume_reading(self) -> None:
        assert self.mutex.locked()
        if self.paused:
            self.paused = False
            self.resume()


def _allow_close_between_fragments(protocol: Protocol) -> None:
    """Let the peer close in the middle of a fragmented message.

    websockets fails a close frame that comes between two fragments with 1002
    ("incomplete fragmented message"), but RFC 6455 lets control frames come between
    fragments (5.4) and the peer close at any time (5.5.1): Autobahn 7.1.5 expects the
    close to be echoed with 1000. Forgetting the message in progress when the close frame
    comes lets websockets' own close handling run; the half message is dropped by
    :class:`_MessageQueue` (nothing can complete it). The sans-I/O protocol is built by
    ``connect()`` itself, hence the wrapper on this one instance.
    """
    recv_frame = protocol.recv_frame

    def recv_frame_allowing_close(frame: Frame) -> None:
        if frame.opcode is _CLOSE:
            protocol.current_size = None
        recv_frame(frame)

    setattr(protocol, "recv_frame", recv_frame_allowing_close)  # noqa: B010 - mypy: method


class _EngineConnection(ClientConnection):
    """websockets' ``ClientConnection`` with the hooks :class:`WebsocketsAdapter` needs.

    Made by ``connect(create_connection=_EngineConnection)``; all per-connection state of
    the adapter lives here, so a new connection starts afresh.
    """

    def __init__(self, sock: socket.socket, protocol: ClientProtocol, **kwargs: Any) -> None:
        # Set before super().__init__(), which starts the thread that calls the hooks.
        self.message_queue: _MessageQueue | None = None
        #: ``time.monotonic()`` of the last frame from the peer, control frames included.
        self.last_frame_at = time.monotonic()
        #: ``time.monotonic()`` of the last pong (0.0 before any).
        self.last_pong_at = 0.0
        #: What reads and writes raise once the adapter closed or failed the connection.
        self.closed_error: ConnectionClosedError | None = None
        # Guards torn_down/aborted; held for a few statements only.
        self.teardown_mutex = threading.Lock()
        self.torn_down = False
        self.aborted = False
        _allow_close_between_fragments(protocol)
        super().__init__(sock, protocol, **kwargs)
        # The adapter never uses connect() as a context manager: no deprecation warning.
        self.pending_legacy_warning = False
        # Replaced before the handshake request goes out, hence before any data frame.
        replaced = self.recv_messages
        self.message_queue = _MessageQueue(
            replaced.high,
            replaced.low,
            pause=self.recv_flow_control.acquire,
            resume=self.recv_flow_control.release,
        )
        self.recv_messages = self.message_queue

    def handshake(self, *args: Any, **kwargs: Any) -> None:
        """websockets' opening handshake; a server that spoke first fails it cleanly.

        A server that sends something that is not HTTP before it got our request (an SMTP
        banner, A5) makes websockets' thread reject the response while the request is
        still being sent, and websockets trips on an assertion; the rejection is the
        error that matters.
        """
        try:
            super().handshake(*args, **kwargs)
        except AssertionError:
            if self.protocol.handshake_exc is None:
                raise
            raise self.protocol.handshake_exc from None

    def maybe_raise_legacy_warning(self) -> None:
        """Never warn: the adapter owns the connection's life cycle."""
        return None

    def process_event(self, event: Event) -> None:
        """Stamp and route one frame from the peer (websockets' thread)."""
        if self.response is None or not isinstance(event, Frame):
            super().process_event(event)  # the handshake response
            return
        now = time.monotonic()
        self.last_frame_at = now
        opcode = event.opcode
        messages = self.message_queue
        assert messages is not None
        if opcode is _PONG:
            # Pongs are not matched to pings: the adapter's pings bypass pending_pings.
            self.last_pong_at = now
        elif opcode is _CLOSE:
            messages.finish()
        elif opcode is not _PING:  # pings were answered by the protocol already
            messages.put(event)

    def send_data(self) -> None:
        """websockets' ``send_data``, then wake whoever waits on a state change.

        websockets' thread calls it after each chunk of data it parsed, holding the
        protocol mutex.
        """
        super().send_data()
        if self.response is None:
            if self.protocol.handshake_exc is not None:
                # A response that is not HTTP fails the handshake at once; websockets would
                # wait for the server to close TCP, up to open_timeout (A5).
                self.response_rcvd.set()
            return
        messages = self.message_queue
        if messages is not None and self.state is not OPEN:
            messages.wake()


class WebsocketsAdapter(ConnectionAdapter):
    """A :class:`ConnectionAdapter` on ``websockets.sync.client``.

    Safe for one reader (the engine's reader, or a user reading by hand under the engine's
    pause lock) plus any number of writers. Reusable: ``dial`` after ``close``/``abort``
    opens a fresh connection.

    Differences from :class:`~wsengine.adapters.websocket_client.WebsocketClientAdapter`:

    - Redirects (A11): websockets 17 follows 301/302/303/307/308 with a ``Location``
      (relative ones too), making at most ``WEBSOCKETS_MAX_REDIRECTS`` requests (an
      environment variable read at import; default 10, so 9 redirects). It refuses a
      ``wss://`` to ``ws://`` downgrade and drops the ``Authorization``, ``Cookie`` and
      ``Proxy-Authorization`` headers on a cross-origin redirect. Too many redirects raise
      ``HandshakeError(status=None)``; a 3xx without ``Location`` raises
      ``HandshakeError`` with its status.
    - Keepalive: websockets' own is off (``ping_interval=None``) unless given as an
      option; the engine pings.
    - Closing: after a protocol error the adapter waits for the server to close TCP, as
      RFC 6455 7.1.1 asks of a client, at most websockets' ``close_timeout`` (default 10 s)
      or the timeout given to :meth:`close`.
    - permessage-deflate is negotiated by default (websockets' ``compression="deflate"``);
      pass ``compression=None`` to turn it off.

    Args:
        max_size: largest message accepted, in bytes (None: no limit). A larger message
            fails the connection with 1009, from its frame header, before the payload is
            read.
        **options: passed to ``websockets.sync.client.connect`` (``ssl``,
            ``additional_headers``, ``subprotocols``, ``compression``, ``proxy``,
            ``close_timeout``, ``max_queue``...). TLS certificates are verified unless
            ``ssl`` says otherwise.

    Raises:
        ConfigError: ``max_size`` is not a positive int or None, or an option is one the
            adapter sets itself (``open_timeout``, ``create_connection``, ``legacy``).
    """

    def __init__(self, max_size: int | None = 2**20, **options: Any) -> None:
        check_adapter_arguments(max_size, options, _RESERVED_OPTIONS)
        self._max_size = max_size
        self._options = options
        # Held by the one thread reading (read, read_available); other readers wait on it.
        # Never held while waiting for the network in read_available.
        self._read_mutex = threading.Lock()
        self._conn: _EngineConnection | None = None

    # -- ConnectionAdapter ---------------------------------------------------------------

    def dial(self, url: str, timeout: float | None) -> HandshakeResponse:
        """Open a connection to ``url`` and complete the opening handshake.

        A connection still open is aborted first. Blocks the calling thread for at most
        about ``timeout`` seconds in all (TCP, TLS, handshake, redirects; None: no limit).

        Raises:
            HandshakeError: HTTP error status (with ``status`` and ``retry_after``), bad
                handshake response, too many redirects, or connection dropped during the
                handshake.
            TimeoutError: the handshake timed out.
            OSError: the TCP or TLS connection failed (``ssl.SSLError`` for TLS).
            ConfigError: the ``proxy`` option is invalid.
        """
        if self._conn is not None:
            self.abort()
        options: dict[str, Any] = {"ping_interval": None, **self._options}
        options.update(
            max_size=self._max_size, open_timeout=timeout, create_connection=_EngineConnection
        )
        try:
            conn = connect(url, **options)
        except (InvalidHandshake, InvalidURI, InvalidProxy) as error:
            # from None: the original message may quote a header value or the URL.
            raise _dial_error(error) from None
        if not isinstance(conn, _EngineConnection):  # pragma: no cover - connect() contract
            raise HandshakeError("websockets returned an unexpected connection type")
        self._conn = conn
        response = conn.response
        assert response is not None
        return HandshakeResponse(
            status=response.status_code,
            headers=_headers(list(response.headers.raw_items())),
            subprotocol=conn.subprotocol,
        )

    def read(self, timeout: float | None = None) -> Message | None:
        """Return the next data message, or None when ``timeout`` passes first.

        Blocks the calling thread up to ``timeout`` (None: no limit). Fragments already
        received stay queued for the next call. Pings are answered by websockets' thread.

        Raises:
            ConnectionClosedError: the connection is closed (the peer's code and reason
                when it sent a close frame, 1006 when it dropped).
            ProtocolError: the peer broke RFC 6455; the connection was failed with its code.
        """
        conn = self._connected()
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._read_mutex.acquire(timeout=_lock_timeout(_remaining(deadline))):
            return None
        try:
            return self._receive(conn, deadline, blocking=True)
        finally:
            self._read_mutex.release()

    def write(self, data: str | bytes) -> None:
        """Send one message: TEXT for ``str``, BINARY for bytes-like data. Thread-safe.

        Blocks until the frame is handed to the kernel; ``abort()`` from another thread
        ends the wait.

        Raises:
            ConnectionClosedError: the connection is closed, or closed while blocked.
            TypeError: ``data`` is neither ``str`` nor bytes-like.
        """
        if not isinstance(data, str | bytes | bytearray | memoryview):
            raise TypeError(f"data must be str or bytes, not {type(data).__name__}")
        conn = self._writable()
        try:
            conn.send(data)
        except ConnectionClosed:
            raise self._closed_error(conn) from None

    def ping(self, payload: bytes = b"") -> None:
        """Send a ping frame; does not wait for the pong (see :attr:`last_pong`).

        Raises:
            ValueError: ``payload`` is longer than 125 bytes.
            ConnectionClosedError: the connection is closed.
        """
        if len(payload) > 125:
            raise ValueError(f"ping payload is {len(payload)} bytes; 125 at most")
        conn = self._writable()
        try:
            # Not conn.ping(): it refuses a payload whose pong is still awaited, and the
            # engine sends b"" every interval whether or not the last pong came.
            with conn.send_context():
                conn.protocol.send_ping(bytes(payload))
        except ConnectionClosed:
            raise self._closed_error(conn) from None

    def close(self, code: int = 1000, reason: str = "", timeout: float | None = None) -> None:
        """Close the connection: send a close frame, wait for the peer's, close the socket.

        Waits up to ``timeout`` seconds in all (None: no limit) for the peer's close frame
        and then for it to close TCP, discarding data meanwhile; then closes the socket
        anyway (a server that keeps TCP open is cut off). Idempotent; safe while another
        thread is blocked in ``read`` or ``write``, which then raise
        ``ConnectionClosedError``. A reason longer than 123 bytes of UTF-8 is cut at a
        character boundary.

        Raises:
            ConfigError: ``code`` may not be sent on the wire.
        """
        if isinstance(code, bool) or not isinstance(code, int) or not is_sendable_close_code(code):
            raise ConfigError(f"close code {code!r} may not be sent on the wire")
        reason = truncate_close_reason(reason)
        conn = self._conn
        if conn is None or conn.torn_down:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        if conn.closed_error is None and conn.state is OPEN:
            conn.closed_error = ConnectionClosedError(code, reason)
        messages = conn.message_queue
        assert messages is not None
        messages.discard()
        self._send_close(conn, code, reason, deadline)
        # websockets' thread ends when the server closes TCP after the closing handshake.
        conn.recv_events_thread.join(_remaining(deadline))
        self._teardown(conn)

    def abort(self) -> None:
        """Drop the TCP connection now, without a closing handshake. Idempotent.

        Safe from any thread: readers, writers and ``wait_readable`` blocked on the
        connection are woken and leave (raising ``ConnectionClosedError`` or returning).
        """
        conn = self._conn
        if conn is not None:
            self._teardown(conn, aborted=True)

    def forget_after_fork(self) -> None:
        """Let go of the parent's connection in a child made by ``os.fork()``.

        Closes this process's copies of the socket and of websockets' shutdown pair;
        writes nothing and shuts nothing down (websockets' ``close_socket`` would), so the
        parent's connection goes on. Then the adapter is as new: reads and writes raise
        ``ConnectionClosedError``, ``dial`` opens a fresh connection. Called in the child's
        only thread; takes none of the old locks, which a vanished thread may hold.
        """
        conn, self._conn = self._conn, None
        self._read_mutex = threading.Lock()
        if conn is None:
            return
        for sock in (conn.socket, conn.shutdown_watcher, conn.shutdown_notifier):
            # detach() lets go of the descriptor without closing or shutting down anything
            # (TLS through a proxy delegates it to the socket under it); close(2) alone
            # ends nothing while the parent holds its own copy.
            with contextlib.suppress(OSError):
                fd = sock.detach()
                if fd >= 0:
                    socket.close(fd)

    @property
    def last_received(self) -> float:
        """``time.monotonic()`` when the last frame from the peer arrived (any frame)."""
        conn = self._conn
        return conn.last_frame_at if conn is not None else 0.0

    @property
    def last_pong(self) -> float:
        """``time.monotonic()`` when the last pong arrived (0.0 before any), for RTT."""
        conn = self._conn
        return conn.last_pong_at if conn is not None else 0.0

    @property
    def underlying(self) -> object:
        """websockets' ``ClientConnection`` (None before the first dial)."""
        return self._conn

    # -- the engine's fast path ---------------------------------------------------------

    def read_available(self, max_messages: int) -> list[Message]:
        """Return up to ``max_messages`` messages already received; never waits.

        Raises:
            ConnectionClosedError: as :meth:`read`, once the messages received before the
                close or the error were returned.
        """
        conn = self._connected()
        messages = conn.message_queue
        assert messages is not None
        out: list[Message] = []
        with self._read_mutex:
            if conn.closed_error is None:
                try:
                    messages.pop_into(out, max_messages)
                except EOFError:
                    pass  # raised below, by _receive, once out is delivered
                except UnicodeDecodeError:
                    self._fail(conn, 1007, "invalid UTF-8 in a text message")
                if out:
                    return out  # after an error, the next call raises
            message = self._receive(conn, None, blocking=False)
        return [] if message is None else [message]

    def wait_readable(self, timeout: float | None) -> bool:
        """Block until a message may be read, ``timeout`` passes or :meth:`wake_reader`
        runs.

        Returns:
            True when frames are queued or the connection ended (so ``read_available``
            returns or raises); False on timeout or when woken.
        """
        conn = self._conn
        if conn is None or conn.closed_error is not None:
            return True
        messages = conn.message_queue
        assert messages is not None
        wait = timeout
        if conn.state is not OPEN:
            left = self._closing_left(conn)
            if left is not None:
                if left <= 0:
                    return True
                wait = left if wait is None else min(wait, left)
        return messages.wait(wait, wakeable=True)

    def wake_reader(self) -> None:
        """Make a :meth:`wait_readable` blocked in another thread return now."""
        conn = self._conn
        if conn is not None and conn.message_queue is not None:
            conn.message_queue.wake()

    def has_pending_data(self) -> bool:
        """Tell whether frames or bytes from the peer wait unread."""
        conn = self._conn
        if conn is None or conn.torn_down or conn.message_queue is None:
            return False
        if not conn.message_queue.frames.empty():
            return True
        # Part of a frame parsed by websockets' thread but not complete yet.
        reader = getattr(conn.protocol, "reader", None)
        return bool(getattr(reader, "buffer", b""))

    # -- internals -----------------------------------------------------------------------

    def _connected(self) -> _EngineConnection:
        conn = self._conn
        if conn is None:
            raise ConnectionClosedError(1006, "not connected")
        return conn

    def _writable(self) -> _EngineConnection:
        """The connection, if still OPEN; else raise what closed it, without waiting
        (websockets' send path would wait for the closing handshake first)."""
        conn = self._connected()
        if conn.closed_error is not None or conn.state is not OPEN or conn.torn_down:
            raise self._closed_error(conn)
        return conn

    def _receive(
        self, conn: _EngineConnection, deadline: float | None, blocking: bool
    ) -> Message | None:
        """Return the next message, waiting until ``deadline`` if ``blocking``; the read
        mutex must be held."""
        assert self._read_mutex.locked()
        messages = conn.message_queue
        assert messages is not None
        while True:
            if conn.closed_error is not None:
                raise self._closed_error(conn)
            out: list[Message] = []
            try:
                messages.pop_into(out, 1)
            except EOFError:
                raise self._closed_error(conn) from None
            except UnicodeDecodeError:
                raise self._fail(conn, 1007, "invalid UTF-8 in a text message") from None
            if out:
                return out[0]
            wait = _remaining(deadline)
            if conn.state is not OPEN:
                # Closing without a close frame from the peer yet (websockets failed the
                # connection): wait for the server's close frame or FIN until websockets'
                # close deadline, then cut it off as websockets would on its next send.
                left = self._closing_left(conn)
                if left is not None:
                    if left <= 0:
                        self._teardown(conn)
                        continue
                    wait = left if wait is None else min(wait, left)
            if not blocking or (wait is not None and wait <= 0):
                return None
            messages.wait(wait, wakeable=False)

    @staticmethod
    def _closing_left(conn: _EngineConnection) -> float | None:
        """Seconds left of websockets' closing handshake (None: no deadline set)."""
        deadline = conn.close_deadline
        return None if deadline is None else deadline.timeout(raise_if_elapsed=False)

    def _fail(self, conn: _EngineConnection, code: int, reason: str) -> ProtocolError:
        """Fail the connection for a violation found by the reader: send close ``code``,
        then wait (as websockets does) for the server to close TCP. Returns the error
        reads raise from now on."""
        error = ProtocolError(code, reason)
        if conn.closed_error is None:
            conn.closed_error = error
        messages = conn.message_queue
        assert messages is not None
        messages.discard()
        if not conn.protocol_mutex.acquire(timeout=_CONTROL_SEND_TIMEOUT):
            self._teardown(conn)
            return error
        try:
            protocol: Protocol = conn.protocol
            if protocol.state is OPEN:
                protocol.fail(code, reason)
                if conn.close_deadline is None:
                    conn.close_deadline = Deadline(conn.close_timeout)
                try:
                    conn.send_data()
                except Exception as exc:  # OSError, TimeoutError: the peer is gone
                    conn.set_connection_exc(exc)
        finally:
            conn.protocol_mutex.release()
        return error

    def _send_close(
        self, conn: _EngineConnection, code: int, reason: str, deadline: float | None
    ) -> None:
        """Send a close frame unless one was sent or received: websockets'
        ``send_context`` for ``close()``, with a bounded wait for the protocol mutex (a
        writer blocked on a full TCP window holds it)."""
        if not conn.protocol_mutex.acquire(timeout=_lock_timeout(_remaining(deadline))):
            return
        try:
            if conn.protocol.state is not OPEN:
                return
            conn.protocol.send_close(code, reason)
            if conn.close_deadline is None:
                conn.close_deadline = Deadline(_remaining(deadline))
            try:
                conn.send_data()
            except Exception as exc:  # OSError, TimeoutError: the teardown follows
                conn.set_connection_exc(exc)
        finally:
            conn.protocol_mutex.release()

    @staticmethod
    def _teardown(conn: _EngineConnection, *, aborted: bool = False) -> None:
        """Shut the socket down (waking a writer blocked in ``sendall``), close it (ending
        the stream of messages) and wait briefly for websockets' thread. Idempotent."""
        with conn.teardown_mutex:
            if conn.torn_down:
                return
            conn.torn_down = True
            conn.aborted = aborted
        # socket.socket.shutdown, not SSLSocket.shutdown: the latter drops the SSL object,
        # which websockets' thread may be using right now.
        with contextlib.suppress(OSError):
            socket.socket.shutdown(conn.socket, socket.SHUT_RDWR)
        conn.close_socket()
        if threading.current_thread() is not conn.recv_events_thread:
            conn.recv_events_thread.join(_TEARDOWN_GRACE)

    @staticmethod
    def _closed_error(conn: _EngineConnection) -> ConnectionClosedError:
        """A fresh error telling how the connection closed (re-raising one instance from
        several threads would tangle its traceback)."""
        error = conn.closed_error
        if error is not None:
            return type(error)(error.code, error.reason)
        protocol = conn.protocol
        sent, rcvd = protocol.close_sent, protocol.close_rcvd
        if sent is not None and sent is not rcvd:
            # A close frame of our own that close() did not send: websockets failed the
            # connection (when echoing the peer's, websockets sends the very same object).
            code = int(sent.code)
            if code in _PROTOCOL_ERROR_CODES:
                return ProtocolError(code, sent.reason)
            return ConnectionClosedError(code, sent.reason)
        if rcvd is not None:
            return ConnectionClosedError(int(rcvd.code), rcvd.reason)
        if conn.aborted:
            return ConnectionClosedError(1006, "connection aborted")
        cause = conn.connection_exc
        if cause is not None:
            return ConnectionClosedError(1006, f"connection lost ({type(cause).__name__})")
        return ConnectionClosedError(1006, "connection closed by the peer without a close frame")
