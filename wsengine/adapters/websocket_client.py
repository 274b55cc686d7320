# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""The default adapter: websocket-client opens the connection, wsengine speaks the frames.

websocket-client does the opening handshake, TLS and proxies. After that its socket is
taken over: it is made non-blocking, waited on with ``poll`` (per-read socket timeouts cost
16-20% of throughput) and read and written with the sans-I/O frame code of
:mod:`wsengine.adapters._frames`, because websocket-client's own frame reader is slow and
accepts a text message that ends in a truncated UTF-8 sequence.
"""

from __future__ import annotations

import contextlib
import math
import select
import socket
import ssl
import threading
import time
from typing import Any, Final, cast
from urllib.parse import urljoin

import websocket

from wsengine._reconnect import parse_retry_after
from wsengine._url import url_target, validate_url
from wsengine.adapters._frames import (
    OP_BINARY,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameError,
    FrameParser,
    encode_close,
    encode_frame,
)
from wsengine.adapters.base import ConnectionAdapter, check_adapter_arguments
from wsengine.errors import ConfigError, ConnectionClosedError, HandshakeError, ProtocolError
from wsengine.types import (
    HandshakeResponse,
    Message,
    is_sendable_close_code,
    truncate_close_reason,
)

__all__ = ["WebsocketClientAdapter"]

_RECV_SIZE: Final = 65536
# A writer blocked on a full TCP window wakes this often to see whether abort() ran.
_WRITE_SLICE: Final = 0.1
# Longest wait for the write mutex when replying to a close or failing the connection: a
# writer stuck on a peer that does not read must not hold the reader forever.
_CONTROL_SEND_TIMEOUT: Final = 1.0
# Longest wait, in teardown, for readers and writers (already woken) to leave the socket
# before its file descriptor is closed under them.
_TEARDOWN_GRACE: Final = 2.0
_POLLIN: Final = select.POLLIN
_POLLOUT: Final = select.POLLOUT
# Options this adapter sets itself when it calls websocket.create_connection.
_RESERVED_OPTIONS: Final = frozenset(
    {"timeout", "skip_utf8_validation", "enable_multithread", "class_"}
)


#: Redirects followed by default, as websocket-client does.
_REDIRECT_LIMIT: Final = 3
_REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
#: Request headers that must not follow a redirect to another origin.
_CREDENTIAL_HEADERS: Final = frozenset({"authorization", "cookie", "proxy-authorization"})


class _Redirect(Exception):
    """A 3xx answer to one handshake, for ``dial`` to follow or refuse."""

    def __init__(self, status: int, location: str | None) -> None:
        super().__init__(status)
        self.status = status
        self.location = location


def _origin(url: str) -> tuple[str, str, int]:
    return url_target(url)


def _without_credentials(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` without cookies and credential headers (for another origin)."""
    kept = {name: value for name, value in options.items() if name != "cookie"}
    header = options.get("header")
    if isinstance(header, dict):
        kept["header"] = {
            name: value for name, value in header.items()
            if name.lower() not in _CREDENTIAL_HEADERS
        }
    elif header is not None:
        kept["header"] = [
            line for line in header
            if line.partition(":")[0].strip().lower() not in _CREDENTIAL_HEADERS
        ]
    return kept


def _poll_ms(seconds: float | None) -> int | None:
    """Convert a wait in seconds to poll()'s milliseconds, rounding up (no busy loop)."""
    if seconds is None:
        return None
    return max(0, math.ceil(seconds * 1000))


def _dial_error(error: websocket.WebSocketException) -> Exception:
    """Map a websocket-client handshake failure to the error dial() raises.

    The messages never quote the server's headers: they may carry cookies or tokens.
    """
    if isinstance(error, websocket.WebSocketBadStatusException):
        status = error.status_code
        return HandshakeError(
            f"server rejected the opening handshake with HTTP {status}",
            status=status,
            retry_after=parse_retry_after((error.resp_headers or {}).get("retry-after")),
        )
    if isinstance(error, websocket.WebSocketTimeoutException):
        return TimeoutError("timed out during the opening handshake")
    if isinstance(error, websocket.WebSocketAddressException):
        cause = error.args[0] if error.args else None
        if isinstance(cause, OSError):
            return cause
        return HandshakeError("cannot resolve the server address")
    if isinstance(error, websocket.WebSocketConnectionClosedException):
        return HandshakeError("connection closed during the opening handshake")
    if isinstance(error, websocket.WebSocketProxyException):
        return HandshakeError("the proxy refused or failed the connection")
    text = str(error)
    if text.startswith("Invalid status line") or text.startswith("Invalid header"):
        return HandshakeError("the server did not answer with HTTP")
    if text.startswith("Invalid WebSocket Header"):
        return HandshakeError(
            "invalid handshake response (Upgrade, Connection, Sec-WebSocket-Accept "
            "or subprotocol)"
        )
    return HandshakeError(f"opening handshake failed ({type(error).__name__})")


class WebsocketClientAdapter(ConnectionAdapter):
    """A :class:`ConnectionAdapter` on websocket-client, with wsengine's own frame code.

    Safe for one reader (the engine's reader, or a user reading by hand under the engine's
    pause lock) plus any number of writers. Reusable: ``dial`` after ``close``/``abort``
    opens a fresh connection.

    Args:
        max_size: largest message accepted, in bytes (None: no limit). A larger message
            fails the connection with 1009, from its frame header, before the payload is
            read.
        **options: passed to ``websocket.create_connection`` (``header``,
            ``subprotocols``, ``sslopt``, ``http_proxy_host``...). TLS certificates are
            verified unless ``sslopt`` says otherwise.

    Redirects: a 3xx answer to the handshake is followed, up to ``redirect_limit`` times
    (default 3, as websocket-client), to the ``Location`` given. A redirect to another
    origin (scheme, host or port) drops the ``Authorization``, ``Cookie`` and
    ``Proxy-Authorization`` headers and the ``cookie`` option, and one from ``wss://`` to
    ``ws://`` is refused. A longer chain (``status`` None), or a 3xx without ``Location``
    (``status`` the 3xx), fails ``dial`` with a :class:`~wsengine.errors.HandshakeError`.

    Raises:
        ConfigError: ``max_size`` is not a positive int or None, or an option is one the
            adapter sets itself (``timeout``, ``skip_utf8_validation``,
            ``enable_multithread``).
    """

    def __init__(self, max_size: int | None = 2**20, **options: Any) -> None:
        check_adapter_arguments(max_size, options, _RESERVED_OPTIONS)
        self._max_size = max_size
        self._options = options
        # Held by the one thread reading (read, read_available, close waiting for the
        # peer's close); other readers wait on it; teardown takes it (bounded) before
        # closing the socket. Order: read mutex, then wait mutex, then write mutex.
        self._read_mutex = threading.Lock()
        # Held by wait_readable around its poll so teardown does not close the polled fds
        # under it; teardown waits for it (bounded) after waking the poller.
        self._wait_mutex = threading.Lock()
        # Held while one frame is written (writers, the reader's pongs and close replies);
        # others wait on it; a writer blocked on a full window lets go when abort() runs.
        self._write_mutex = threading.Lock()
        # Guards the closing flags below; held for a few statements only, never during I/O.
        self._state_mutex = threading.Lock()
        self._recv_buffer = bytearray(_RECV_SIZE)
        self._recv_view = memoryview(self._recv_buffer)
        self._ws: websocket.WebSocket | None = None
        # The WebSocket of a dial in progress (so abort() can cut its handshake); set and
        # cleared by the dialing thread, read by abort().
        self._dialing: list[websocket.WebSocket] = []
        self._sock: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._reset(None, None)
        #: ``time.monotonic()`` of the last pong received (0.0 before any), for RTT.
        self.last_pong = 0.0

    def _reset(self, ws: websocket.WebSocket | None, sock: socket.socket | None) -> None:
        """Set up the per-connection state for ``sock`` (None: not connected)."""
        self._ws = ws
        self._sock = sock
        self._is_ssl = isinstance(sock, ssl.SSLSocket)
        self._parser = FrameParser(self._max_size)
        self._last_received = time.monotonic()
        self.last_pong = 0.0
        # Set once the connection is no longer usable; reads and writes raise it.
        self._closed_error: ConnectionClosedError | None = (
            None if sock is not None else ConnectionClosedError(1006, "not connected")
        )
        # True once a close frame was sent (no frame may follow it).
        self._close_sent = False
        # True once teardown began: the socket is shut down, closed or being closed.
        self._torn_down = sock is None
        # Why the last _recv_once() returned -1.
        self._recv_error = ""
        # One poll object per waiting role (read mutex, wait mutex, write mutex holders):
        # poll() must not run concurrently on one object.
        self._read_poll = select.poll()
        self._wait_poll = select.poll()
        self._write_poll = select.poll()
        if sock is None:
            self._wake_r = self._wake_w = None
            return
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._read_poll.register(sock, _POLLIN)
        self._wait_poll.register(sock, _POLLIN)
        self._wait_poll.register(self._wake_r, _POLLIN)

    def dial(self, url: str, timeout: float | None) -> HandshakeResponse:
        """Open a connection to ``url`` and complete the opening handshake.

        A connection still open is aborted first. Blocks the calling thread; ``timeout``
        bounds each socket operation of the handshake (None: no limit).

        Raises:
            HandshakeError: HTTP error status (with ``status`` and ``retry_after``), bad
                handshake response, or connection dropped during the handshake.
            TimeoutError: the handshake timed out.
            OSError: the TCP or TLS connection failed (``ssl.SSLError`` for TLS).
        """
        if self._sock is not None:
            self.abort()
        options = dict(self._options)
        hops_left = options.pop("redirect_limit", _REDIRECT_LIMIT)
        target = url
        while True:
            try:
                ws = self._handshake(target, timeout, options)
                break
            except _Redirect as redirect:
                status, location = redirect.status, redirect.location
            # Redirects are followed here, not by websocket-client, which would send the
            # same headers (Authorization included) to any host it is sent to.
            if not location:
                raise HandshakeError(f"redirect ({status}) without a Location header", status)
            if hops_left <= 0:
                # No status, as with the websockets adapter: the loop is the failure, not
                # the server's answer.
                raise HandshakeError(f"too many redirects (last status {status})")
            hops_left -= 1
            following = urljoin(target, location)
            try:
                following = validate_url(following, "redirect Location")
            except ConfigError as error:
                raise HandshakeError(str(error), status) from None
            if _origin(following) != _origin(target):
                if target.lower().startswith("wss:") and not following.lower().startswith("wss:"):
                    raise HandshakeError("redirect from wss:// to ws:// refused", status)
                options = _without_credentials(options)
            target = following
        sock = ws.sock
        if sock is None:  # pragma: no cover - create_connection returns connected
            raise HandshakeError("websocket-client returned no socket")
        headers = {name.lower() for name in ws.getheaders() or {}}
        if "sec-websocket-protocol" in headers and not self._options.get("subprotocols"):
            # websocket-client checks the answer only when subprotocols were asked for;
            # RFC 6455 4.1: a subprotocol the client did not request fails the connection.
            ws.close(timeout=0)
            raise HandshakeError("the server chose a subprotocol that was not requested")
        try:
            sock.settimeout(0.0)
            self._reset(ws, sock)
        except BaseException:
            sock.close()
            raise
        return HandshakeResponse(
            status=ws.getstatus() or 101,
            headers=dict(ws.getheaders() or {}),
            subprotocol=ws.getsubprotocol(),
        )

    def _handshake(
        self, url: str, timeout: float | None, options: dict[str, Any]
    ) -> websocket.WebSocket:
        """One TCP/TLS connection and opening handshake, cuttable by ``abort()``."""
        dialing: list[websocket.WebSocket] = []

        def make_websocket(**arguments: Any) -> websocket.WebSocket:
            # create_connection builds the WebSocket through this: keep it reachable so
            # that abort() can cut a handshake that hangs (the engine's stop()).
            made = websocket.WebSocket(**arguments)
            dialing.append(made)
            return made

        self._dialing = dialing
        try:
            return websocket.create_connection(
                url,
                timeout=timeout,
                # Called like a factory; typed as a class by websocket-client.
                class_=cast(type[websocket.WebSocket], make_websocket),
                skip_utf8_validation=True,
                enable_multithread=True,
                redirect_limit=0,
                **options,
            )
        except websocket.WebSocketException as error:
            # With redirect_limit=0, websocket-client raises on a 3xx; its WebSocket still
            # holds the response.
            answer = dialing[-1].handshake_response if dialing else None
            if answer is not None and answer.status in _REDIRECT_STATUSES:
                location = (answer.headers or {}).get("location")
                raise _Redirect(answer.status, location) from None
            # from None: the original message quotes the response headers.
            raise _dial_error(error) from None
        finally:
            self._dialing = []

    def read(self, timeout: float | None = None) -> Message | None:
        """Return the next data message, or None when ``timeout`` passes first.

        Blocks the calling thread up to ``timeout`` (None: no limit). A partly received
        frame stays buffered for the next call. Pings are answered on the way.

        Raises:
            ConnectionClosedError: the connection is closed (the peer's code and reason
                when it sent a close frame, 1006 when it dropped).
            ProtocolError: the peer broke RFC 6455; the connection was failed with its code.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._read_mutex.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            return None
        try:
            out: list[Message] = []
            self._read_into(out, 1, deadline, True)
            if self._parser.has_frame():
                # Frames left buffered: a wait_readable polling the socket would miss them.
                self.wake_reader()
            return out[0] if out else None
        finally:
            self._read_mutex.release()

    def write(self, data: str | bytes | bytearray | memoryview) -> None:
        """Send one message: TEXT for ``str``, BINARY for bytes-like data. Thread-safe.

        Blocks until the frame is handed to the kernel; ``abort()`` from another thread
        ends the wait within about 0.1 s.

        Raises:
            ConnectionClosedError: the connection is closed, or closed while blocked.
            TypeError: ``data`` is neither ``str`` nor bytes-like.
        """
        if isinstance(data, str):
            frame = encode_frame(OP_TEXT, data.encode("utf-8"))
        elif isinstance(data, bytes | bytearray | memoryview):
            frame = encode_frame(OP_BINARY, data)
        else:
            raise TypeError(f"data must be str or bytes, not {type(data).__name__}")
        self._send_frame(frame)

    def ping(self, payload: bytes = b"") -> None:
        """Send a ping frame; does not wait for the pong (see :attr:`last_pong`).

        Raises:
            ValueError: ``payload`` is longer than 125 bytes.
            ConnectionClosedError: the connection is closed.
        """
        if len(payload) > 125:
            raise ValueError(f"ping payload is {len(payload)} bytes; 125 at most")
        self._send_frame(encode_frame(OP_PING, payload))

    def close(self, code: int = 1000, reason: str = "", timeout: float | None = None) -> None:
        """Close the connection: send a close frame, wait for the peer's, close the socket.

        Blocks the calling thread up to ``timeout`` seconds in all (None: no limit) waiting
        for the peer's close frame, discarding data meanwhile; if the peer closed first, it
        waits instead for the peer to close TCP. Then it closes the socket anyway (a server
        that keeps TCP open is cut off). Idempotent; safe while another thread is blocked in
        ``read`` or ``write``, which then raise ``ConnectionClosedError``. A reason longer
        than 123 bytes of UTF-8 is cut at a character boundary.

        Raises:
            ConfigError: ``code`` may not be sent on the wire.
        """
        if isinstance(code, bool) or not isinstance(code, int) or not is_sendable_close_code(code):
            raise ConfigError(f"close code {code!r} may not be sent on the wire")
        reason = truncate_close_reason(reason)
        if self._torn_down:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        peer_closed_first = self._parser.close is not None
        self._send_close(
            encode_close(code, reason), ConnectionClosedError(code, reason), deadline
        )
        remaining = self._remaining(deadline)
        if not self._read_mutex.acquire(timeout=-1 if remaining is None else remaining):
            self._teardown()
            return
        try:
            self._await_peer_close(deadline, peer_closed_first)
        finally:
            try:
                self._teardown(holding_read=True)
            finally:
                self._read_mutex.release()

    def abort(self) -> None:
        """Drop the TCP connection now, without a closing handshake. Idempotent.

        Safe from any thread: readers, writers and ``wait_readable`` blocked on the socket
        are woken and leave (raising ``ConnectionClosedError`` or returning). A ``dial``
        waiting for the server's handshake answer fails at once.
        """
        for dialing in list(self._dialing):
            sock = dialing.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self._teardown()

    def forget_after_fork(self) -> None:
        """Let go of the parent's connection in a child made by ``os.fork()``.

        Closes this process's copies of the socket (and of a socket still in its opening
        handshake) and of the wake-up pair; writes nothing and shuts nothing down, so the
        parent's connection goes on. Then the adapter is as new: reads and writes raise
        ``ConnectionClosedError``, ``dial`` opens a fresh connection. Called in the child's
        only thread; takes none of the old locks, which a vanished thread may hold.
        """
        inherited = [self._sock, self._wake_r, self._wake_w]
        inherited += [made.sock for made in self._dialing]
        for sock in inherited:
            if sock is not None:
                # detach() lets go of the descriptor without closing or shutting down
                # anything (an SSLSocket drops its TLS state unsent); close(2) alone ends
                # nothing while the parent holds its own copy.
                with contextlib.suppress(OSError):
                    fd = sock.detach()
                    if fd >= 0:
                        socket.close(fd)
        self._read_mutex = threading.Lock()
        self._wait_mutex = threading.Lock()
        self._write_mutex = threading.Lock()
        self._state_mutex = threading.Lock()
        self._dialing = []
        self._reset(None, None)

    @property
    def last_received(self) -> float:
        """``time.monotonic()`` when bytes last arrived from the peer (any frame)."""
        return self._last_received

    @property
    def underlying(self) -> object:
        """websocket-client's ``WebSocket`` (only its handshake results are meaningful)."""
        return self._ws

    def read_available(self, max_messages: int) -> list[Message]:
        """Return up to ``max_messages`` messages without waiting for the network.

        Parses what is buffered and reads the socket (non-blocking) while no whole message
        is buffered; may return ``[]``.

        Raises:
            ConnectionClosedError: as :meth:`read`, once the messages parsed before the
                close or the error were returned.
        """
        out: list[Message] = []
        with self._read_mutex:
            self._read_into(out, max_messages, None, False)
        return out

    def wait_readable(self, timeout: float | None) -> bool:
        """Block until data may be read, ``timeout`` passes or :meth:`wake_reader` runs.

        Returns:
            True when a whole frame is buffered, the socket is readable, errored or hung
            up, or the connection is closed (so ``read_available`` raises); False on
            timeout or when woken by ``wake_reader``.
        """
        if self._closed_error is not None or self._parser.has_frame():
            return True
        sock = self._sock
        if self._is_ssl and sock is not None and self._ssl_pending(sock):
            return True
        wait_ms = _poll_ms(timeout)
        if not self._wait_mutex.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            return False
        try:
            if self._torn_down:
                return True
            events = self._wait_poll.poll(wait_ms)
            wake_fd = self._wake_r.fileno() if self._wake_r is not None else -1
            ready = False
            for fd, _ in events:
                if fd == wake_fd:
                    self._drain_wake()
                else:
                    ready = True
            return ready
        finally:
            self._wait_mutex.release()

    def wake_reader(self) -> None:
        """Make a :meth:`wait_readable` blocked in another thread return now."""
        wake_w = self._wake_w
        if wake_w is None:
            return
        # BlockingIOError: a wake-up is pending already. Other errors: torn down.
        with contextlib.suppress(OSError):
            wake_w.send(b"\0")

    def has_pending_data(self) -> bool:
        """Tell whether bytes from the peer wait on the socket, not yet received.

        Bytes already buffered do not count: a peer that stops in the middle of a frame is
        as dead as a silent one, and the keepalive must be able to say so.
        """
        sock = self._sock
        if sock is None or self._torn_down:
            return False
        if self._is_ssl and self._ssl_pending(sock):
            return True
        poller = select.poll()
        try:
            poller.register(sock, _POLLIN)
        except (OSError, ValueError):
            return False
        return bool(poller.poll(0))

    def _read_into(
        self, out: list[Message], limit: int, deadline: float | None, blocking: bool
    ) -> None:
        """Fill ``out`` with up to ``limit`` messages; the read mutex must be held.

        Non-blocking: returns when no whole message is buffered and the socket has no
        data. Blocking: waits for data until ``deadline`` (None: forever).
        """
        assert self._read_mutex.locked()
        while True:
            if self._closed_error is not None:
                if out:
                    return
                raise self._closed()
            self._parse(out, limit)
            if out:
                # Messages parsed before a close frame or an error go out first; the next
                # call raises.
                return
            if self._closed_error is not None:
                continue
            received = self._recv_once()
            if received > 0:
                continue
            if received < 0:
                self._lost(self._recv_error)
                continue
            if not blocking:
                return
            remaining = self._remaining(deadline)
            if remaining is not None and remaining <= 0:
                return
            if self._is_ssl and self._sock is not None and self._ssl_pending(self._sock):
                continue
            self._read_poll.poll(_poll_ms(remaining))

    def _parse(self, out: list[Message], limit: int) -> None:
        """Parse buffered frames into ``out``, acting on control frames as they come."""
        parser = self._parser
        while True:
            try:
                control = parser.parse(out, limit)
            except FrameError as error:
                self._fail(error.code, error.reason)
                return
            if control is None:
                return
            opcode, payload = control
            if opcode == OP_PING:
                if not self._close_sent:
                    # If the connection is gone, the reading side sees it next.
                    with contextlib.suppress(ConnectionClosedError):
                        self._send_frame(encode_frame(OP_PONG, payload))
            elif opcode == OP_PONG:
                self.last_pong = time.monotonic()
            else:
                self._on_peer_close()
                return

    def _recv_once(self) -> int:
        """Read once from the socket without blocking; the read mutex must be held.

        Returns:
            The number of bytes fed to the parser, 0 if none were available, -1 when the
            connection ended (EOF or a socket error, described in ``_recv_error``).
        """
        sock = self._sock
        if sock is None or self._torn_down:
            self._recv_error = "connection closed"
            return -1
        view = self._recv_view
        try:
            size = sock.recv_into(view)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return 0
        except (OSError, ValueError) as error:
            # ECONNRESET, SSLEOFError, SSLZeroReturnError, EBADF after abort()...: all mean
            # the connection is gone (1006).
            self._recv_error = f"connection lost ({type(error).__name__})"
            return -1
        if not size:
            self._recv_error = "connection closed by the peer without a close frame"
            return -1
        self._last_received = time.monotonic()
        self._parser.feed(bytes(view[:size]))
        return size

    def _on_peer_close(self) -> None:
        """Reply to the peer's close frame (echoing its code) and mark the connection
        closed with it. The socket stays open for close()/abort() to finish."""
        close = self._parser.close
        assert close is not None
        code, reason = close
        # Echo the code; an empty close gets an empty reply: 1005 never goes on the wire.
        reply = encode_close(None if code == 1005 else code)
        self._send_close(reply, ConnectionClosedError(code, reason), self._control_deadline())

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection for a protocol violation: send a close frame with ``code``,
        then drop TCP. Later reads and writes raise ``ProtocolError(code, reason)``."""
        self._send_close(
            encode_close(code, truncate_close_reason(reason)),
            ProtocolError(code, reason),
            self._control_deadline(),
        )
        self._teardown(holding_read=True)

    def _lost(self, reason: str) -> None:
        """The connection dropped: record 1006 and release the socket."""
        with self._state_mutex:
            if self._closed_error is None:
                self._closed_error = ConnectionClosedError(1006, reason)
        self._teardown(holding_read=True)

    def _await_peer_close(self, deadline: float | None, peer_closed_first: bool) -> None:
        """Discard frames until the peer's close frame or ``deadline``; the read mutex must
        be held.

        When the peer closed first (its close frame came before ours went out), wait for
        its TCP FIN instead, as RFC 6455 section 7.1.1 has the server close TCP first.
        """
        parser = self._parser
        discarded: list[Message] = []
        while not self._torn_down:
            if parser.close is None:
                try:
                    control = parser.parse(discarded, 1 << 30)
                except FrameError:
                    return
                discarded.clear()
                if control is not None:
                    if control[0] == OP_PONG:
                        self.last_pong = time.monotonic()
                    continue
            elif not peer_closed_first:
                # Our close was answered: the handshake is complete.
                return
            received = self._recv_once()
            if received < 0:
                return
            if received > 0:
                continue
            remaining = self._remaining(deadline)
            if remaining is not None and remaining <= 0:
                return
            if self._is_ssl and self._sock is not None and self._ssl_pending(self._sock):
                continue
            self._read_poll.poll(_poll_ms(remaining))

    def _send_frame(self, frame: bytes) -> None:
        """Send one frame unless the connection is closed."""
        with self._write_mutex:
            if self._closed_error is not None:
                raise self._closed()
            self._send_all(frame, None)

    def _send_close(
        self, frame: bytes, error: ConnectionClosedError, deadline: float | None
    ) -> None:
        """Mark the connection closed with ``error`` (unless it already is) and send the
        close ``frame`` unless one was sent; best effort, gives up at ``deadline``."""
        remaining = self._remaining(deadline)
        got_write = self._write_mutex.acquire(timeout=-1 if remaining is None else remaining)
        try:
            # Under the write mutex, so that no data frame follows the close frame.
            with self._state_mutex:
                if self._closed_error is None:
                    self._closed_error = error
                send = got_write and not self._close_sent and not self._torn_down
                if send:
                    self._close_sent = True
            # A reader blocked in wait_readable must come and see the connection closed,
            # whichever thread closed it (a user reading by hand, close() from a callback).
            self.wake_reader()
            if send:
                with contextlib.suppress(ConnectionClosedError, TimeoutError):
                    self._send_all(frame, deadline)
        finally:
            if got_write:
                self._write_mutex.release()

    def _send_all(self, frame: bytes, deadline: float | None) -> None:
        """Write all of ``frame``; the write mutex must be held.

        Waits for the socket in slices of at most 0.1 s, checking for a teardown between
        them.

        Raises:
            ConnectionClosedError: the connection dropped or was torn down.
            TimeoutError: ``deadline`` passed.
        """
        assert self._write_mutex.locked()
        sock = self._sock
        if sock is None:
            raise ConnectionClosedError(1006, "not connected")
        total = len(frame)
        sent = 0
        view: memoryview | None = None
        while sent < total:
            if self._torn_down:
                raise self._closed()
            try:
                if sent == 0:
                    sent = sock.send(frame)
                else:
                    if view is None:
                        view = memoryview(frame)
                    sent += sock.send(view[sent:])
                continue
            except (BlockingIOError, ssl.SSLWantWriteError):
                events = _POLLOUT
            except ssl.SSLWantReadError:
                events = _POLLIN
            except (OSError, ValueError) as error:
                self._write_failed(error)
                raise self._closed() from None
            wait = _WRITE_SLICE
            remaining = self._remaining(deadline)
            if remaining is not None:
                if remaining <= 0:
                    raise TimeoutError("timed out writing a frame")
                wait = min(wait, remaining)
            try:
                self._write_poll.register(sock, events)
                self._write_poll.poll(_poll_ms(wait))
            except (OSError, ValueError):
                # The socket was closed under us: the next round raises.
                if not self._torn_down:
                    raise
        if view is not None:
            view.release()

    def _write_failed(self, error: BaseException) -> None:
        """A write hit a dead socket: record 1006 and wake the reader, which cleans up."""
        with self._state_mutex:
            if self._closed_error is None:
                self._closed_error = ConnectionClosedError(
                    1006, f"connection lost ({type(error).__name__})"
                )
        self._shutdown_socket()

    def _teardown(self, *, holding_read: bool = False) -> None:
        """Shut the socket down, wake every thread waiting on it, then close it and the
        wake-up pair once those threads left (or after a grace period). Idempotent."""
        with self._state_mutex:
            if self._torn_down:
                return
            self._torn_down = True
            if self._closed_error is None:
                self._closed_error = ConnectionClosedError(1006, "connection aborted")
            sock, wake_r, wake_w, ws = self._sock, self._wake_r, self._wake_w, self._ws
        self._shutdown_socket()
        self.wake_reader()
        got_read = holding_read or self._read_mutex.acquire(timeout=_TEARDOWN_GRACE)
        got_wait = self._wait_mutex.acquire(timeout=_TEARDOWN_GRACE)
        got_write = self._write_mutex.acquire(timeout=_TEARDOWN_GRACE)
        try:
            for resource in (sock, wake_r, wake_w):
                if resource is not None:
                    resource.close()
            if ws is not None:
                ws.connected = False
        finally:
            if got_write:
                self._write_mutex.release()
            if got_wait:
                self._wait_mutex.release()
            if got_read and not holding_read:
                self._read_mutex.release()

    def _shutdown_socket(self) -> None:
        """Shut TCP down both ways: wakes every poll on the socket. Takes no lock."""
        sock = self._sock
        if sock is None:
            return
        # socket.socket.shutdown, not SSLSocket.shutdown: the latter drops the SSL object,
        # which a reader in another thread may be using right now.
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def _drain_wake(self) -> None:
        """Empty the wake-up socket; the wait mutex must be held."""
        wake_r = self._wake_r
        if wake_r is None:
            return
        try:
            while wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _closed(self) -> ConnectionClosedError:
        """A fresh copy of the error that closed the connection, to raise (re-raising one
        instance from several threads would tangle its traceback)."""
        error = self._closed_error
        if error is None:
            return ConnectionClosedError(1006, "connection aborted")
        return type(error)(error.code, error.reason)

    @staticmethod
    def _ssl_pending(sock: socket.socket) -> bool:
        """Tell whether the TLS layer holds decrypted bytes that poll() cannot see."""
        try:
            return bool(sock.pending())  # type: ignore[attr-defined]
        except (OSError, ValueError, AttributeError):
            return False

    @staticmethod
    def _remaining(deadline: float | None) -> float | None:
        """Seconds left until ``deadline`` (None: no deadline), at least 0."""
        if deadline is None:
            return None
        return max(0.0, deadline - time.monotonic())

    @staticmethod
    def _control_deadline() -> float:
        return time.monotonic() + _CONTROL_SEND_TIMEOUT
