# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""A raw TCP websocket server whose scripts write arbitrary bytes and frames.

It does the server side of the opening handshake (unless told not to), then hands the
connection to a script, so a test can send what no well-behaved library would: reserved
bits, lying lengths, half frames, close frames without a FIN.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from types import TracebackType

__all__ = ["RawConnection", "RawServer", "accept_key", "close_frame", "encode_frame"]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: Seconds a RawServer gives its threads to end when it exits.
JOIN_DEADLINE = 5.0

Script = Callable[["RawConnection"], None]


def accept_key(key: str) -> str:
    """Return the Sec-WebSocket-Accept value for a Sec-WebSocket-Key (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode()


def encode_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = False,
    length: int | None = None,
) -> bytes:
    """Encode one frame, faithfully or not.

    Args:
        opcode: any 4-bit value, reserved ones included.
        payload: the (unmasked) payload.
        fin: the FIN bit.
        rsv: the three RSV bits as a number (4: RSV1, 2: RSV2, 1: RSV3).
        mask: mask the payload with a random key (servers must not).
        length: the length written in the header, instead of ``len(payload)`` (a lie).
    """
    first = (0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 0x0F)
    size = len(payload) if length is None else length
    mask_bit = 0x80 if mask else 0
    if size < 126:
        header = bytes((first, mask_bit | size))
    elif size < 65536:
        header = struct.pack("!BBH", first, mask_bit | 126, size)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, size)
    if not mask:
        return header + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return header + key + masked


def close_frame(code: int, reason: bytes = b"") -> bytes:
    """A server close frame carrying ``code`` and ``reason``."""
    return encode_frame(0x8, struct.pack("!H", code) + reason)


class RawConnection:
    """One accepted TCP connection, with helpers to speak (and break) RFC 6455."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        #: The client's request headers, names in lower case (empty without handshake).
        self.request_headers: dict[str, str] = {}
        #: The request line's target, e.g. "/".
        self.path = ""
        self._buffer = bytearray()
        self._closed = False
        # Serializes close() between the script's thread and the server's exit.
        self._close_mutex = threading.Lock()

    def _recv_some(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no data from the client in time")
        # Over TLS, decrypted bytes may wait in the SSL object where select() can't see them.
        pending = isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()
        if not pending:
            readable, _, _ = select.select([self.sock], [], [], remaining)
            if not readable:
                raise TimeoutError("no data from the client in time")
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the client closed the TCP connection")
        self._buffer += data

    def _recv_exactly(self, size: int, deadline: float) -> bytes:
        while len(self._buffer) < size:
            self._recv_some(deadline)
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def read_request(self, timeout: float = 5.0) -> dict[str, str]:
        """Read the HTTP upgrade request; return its headers (names in lower case)."""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self._buffer:
            self._recv_some(deadline)
        head, _, rest = bytes(self._buffer).partition(b"\r\n\r\n")
        self._buffer = bytearray(rest)
        lines = head.decode("latin-1").split("\r\n")
        self.path = lines[0].split(" ")[1] if len(lines[0].split(" ")) > 1 else ""
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        self.request_headers = headers
        return headers

    def handshake(self, response_extra: bytes = b"", extra_headers: bytes = b"") -> None:
        """Read the request and answer 101, with ``response_extra`` in the same send."""
        headers = self.read_request()
        response = (
            b"HTTP/1.1 101 Switching Protocols\r\n"
            b"Upgrade: websocket\r\n"
            b"Connection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: "
            + accept_key(headers.get("sec-websocket-key", "")).encode()
            + b"\r\n"
            + extra_headers
            + b"\r\n"
        )
        self.sock.sendall(response + response_extra)

    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are."""
        self.sock.sendall(data)

    def send_frame(
        self,
        opcode: int,
        payload: bytes = b"",
        *,
        fin: bool = True,
        rsv: int = 0,
        mask: bool = False,
        length: int | None = None,
    ) -> None:
        """Send one frame; the arguments are those of :func:`encode_frame`."""
        self.sock.sendall(
            encode_frame(opcode, payload, fin=fin, rsv=rsv, mask=mask, length=length)
        )

    def recv_frame(self, timeout: float = 5.0) -> tuple[bool, int, bytes]:
        """Read one client frame; return ``(fin, opcode, unmasked payload)``.

        Raises:
            TimeoutError: no whole frame within ``timeout``.
            EOFError: the client closed the TCP connection.
            AssertionError: the client sent an unmasked frame.
        """
        deadline = time.monotonic() + timeout
        first, second = self._recv_exactly(2, deadline)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._recv_exactly(2, deadline))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._recv_exactly(8, deadline))
        if not second & 0x80:
            raise AssertionError("the client sent an unmasked frame")
        key = self._recv_exactly(4, deadline)
        payload = self._recv_exactly(length, deadline)
        if payload:
            full_key = (key * (length // 4 + 1))[:length]
            payload = (
                int.from_bytes(payload, "big") ^ int.from_bytes(full_key, "big")
            ).to_bytes(length, "big")
        return bool(first & 0x80), first & 0x0F, payload

    def expect_close(self, timeout: float = 5.0) -> tuple[int | None, str]:
        """Read client frames until a close frame; return its ``(code, reason)``.

        The code is None for an empty close frame.

        Raises:
            TimeoutError: no close frame within ``timeout``.
            EOFError: the client closed TCP without sending a close frame.
        """
        deadline = time.monotonic() + timeout
        while True:
            _, opcode, payload = self.recv_frame(max(deadline - time.monotonic(), 0.001))
            if opcode == 0x8:
                if not payload:
                    return None, ""
                return int.from_bytes(payload[:2], "big"), payload[2:].decode("utf-8")

    def wait_eof(self, timeout: float = 5.0) -> bool:
        """Discard what the client sends until it closes TCP; False after ``timeout``."""
        deadline = time.monotonic() + timeout
        self._buffer.clear()
        try:
            while True:
                self._recv_some(deadline)
                self._buffer.clear()
        except EOFError:
            return True
        except TimeoutError:
            return False
        except OSError:
            # A reset counts as closed too.
            return True

    def close(self) -> None:
        """Shut down and close the socket (wakes a thread blocked on it). Idempotent."""
        with self._close_mutex:
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()


class RawServer:
    """A TCP listener on 127.0.0.1:0 that runs ``script(conn)`` for each connection.

    Use it as a context manager. On exit it stops accepting, closes every connection
    and joins its threads; an exception raised by a script is re-raised there (unless the
    test already failed).

    Args:
        script: called on its own thread with each :class:`RawConnection`, after the
            opening handshake when ``handshake`` is true. The connection is closed when it
            returns.
        handshake: answer the upgrade request with a valid 101 before the script runs.
        response_extra: bytes sent right after the 101 response, in the same ``sendall``.
        extra_headers: raw header lines (each ending in CRLF) added to the 101 response.
        max_connections: connections accepted at most; later ones are closed at once.
        ssl_context: serve TLS with this server context (the URL becomes ``wss://``); a
            failed TLS handshake is recorded in ``tls_errors``, not raised.
    """

    def __init__(
        self,
        script: Script,
        *,
        handshake: bool = True,
        response_extra: bytes = b"",
        extra_headers: bytes = b"",
        max_connections: int = 32,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._script = script
        self._handshake = handshake
        self._response_extra = response_extra
        self._extra_headers = extra_headers
        self._max_connections = max_connections
        self._ssl_context = ssl_context
        self.host = "127.0.0.1"
        self.listener = socket.create_server((self.host, 0))
        self.port: int = self.listener.getsockname()[1]
        self.url = f"{'wss' if ssl_context else 'ws'}://{self.host}:{self.port}/"
        #: TLS handshakes that failed (the client refused the certificate, for instance).
        self.tls_errors: list[BaseException] = []
        #: Every connection accepted, in order.
        self.connections: list[RawConnection] = []
        #: Exceptions raised by scripts.
        self.errors: list[BaseException] = []
        # Set by __exit__; the accept thread polls the listener and this pair, and ends.
        self._stop_reader, self._stop_writer = socket.socketpair()
        # Owned by this server: the accept loop, and one thread per connection running
        # the script; all joined in __exit__.
        self._threads: list[threading.Thread] = []
        self._threads_mutex = threading.Lock()
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="test-rawserver-accept", daemon=True
        )

    def __enter__(self) -> RawServer:
        self._accept_thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop_writer.send(b"x")
        self._accept_thread.join(JOIN_DEADLINE)
        for conn in list(self.connections):
            conn.close()
        deadline = time.monotonic() + JOIN_DEADLINE
        with self._threads_mutex:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0.0))
        self.listener.close()
        self._stop_reader.close()
        self._stop_writer.close()
        alive = [t.name for t in threads if t.is_alive()]
        if self._accept_thread.is_alive():
            alive.append(self._accept_thread.name)
        if exc_type is None:
            if alive:
                raise AssertionError(f"RawServer threads still running: {alive}")
            if self.errors:
                raise self.errors[0]

    def _accept_loop(self) -> None:
        poller = select.poll()
        poller.register(self.listener, select.POLLIN)
        poller.register(self._stop_reader, select.POLLIN)
        while True:
            events = dict(poller.poll())
            if self._stop_reader.fileno() in events:
                return
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            if len(self.connections) >= self._max_connections:
                sock.close()
                continue
            conn = RawConnection(sock)
            self.connections.append(conn)
            thread = threading.Thread(
                target=self._run_script,
                args=(conn,),
                name=f"test-rawserver-conn-{len(self.connections)}",
                daemon=True,
            )
            with self._threads_mutex:
                self._threads.append(thread)
            thread.start()

    def _run_script(self, conn: RawConnection) -> None:
        if self._ssl_context is not None:
            try:
                conn.sock = self._ssl_context.wrap_socket(conn.sock, server_side=True)
            except OSError as error:
                self.tls_errors.append(error)
                conn.close()
                return
        try:
            if self._handshake:
                conn.handshake(self._response_extra, self._extra_headers)
            self._script(conn)
        except BaseException as error:
            # Once the server closed the connection on exit, the script's failure to use it
            # is expected; anything before that is a real error, re-raised by __exit__.
            if not conn._closed:
                self.errors.append(error)
        finally:
            conn.close()
