# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""Forward proxies on 127.0.0.1 for the proxy tests: HTTP CONNECT and SOCKS (4, 4a, 5).

Each server accepts on its own thread and serves each client on a thread of its own: it
reads the client's request (a CONNECT, a SOCKS greeting), records it, checks the
credentials if it requires some, connects to the target and then relays bytes both ways
until either side closes. Leaving the ``with`` block closes every socket and joins every
thread.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import select
import socket
import struct
import threading
from dataclasses import dataclass, field
from types import TracebackType

__all__ = ["ConnectProxy", "ProxyRequest", "SocksProxy"]

#: Seconds a proxy gives its threads to end when it exits.
JOIN_DEADLINE = 5.0
_RECV_SIZE = 65536


@dataclass
class ProxyRequest:
    """One request a proxy received, as it came."""

    #: ``CONNECT`` for HTTP; ``socks4``, ``socks4a`` or ``socks5``.
    kind: str
    #: The target as the client named it: a host name or an address.
    host: str
    port: int
    #: ``domain`` when the client sent a name for the proxy to resolve, else ``ip``.
    address_type: str = "ip"
    #: The HTTP request headers (HTTP CONNECT only).
    headers: dict[str, str] = field(default_factory=dict)
    #: The credentials the client gave (None: none).
    username: str | None = None
    password: str | None = None
    #: What the proxy answered: an HTTP status, or 0 for a granted SOCKS request and 1
    #: for a refused one.
    answer: int = 0


class _ProxyServer:
    """The accept loop, the relays and their teardown; subclasses speak the protocol."""

    def __init__(self, credentials: tuple[str, str] | None = None) -> None:
        self.credentials = credentials
        self.requests: list[ProxyRequest] = []
        self.tunnels = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.host, self.port = self._listener.getsockname()[:2]
        # Guards requests, tunnels, _sockets and _threads; held for a few statements.
        self._state_lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._closing = threading.Event()
        # Owned by the server; ends when close() shuts the listener down; joined there.
        self._acceptor = threading.Thread(target=self._accept, name="test-proxy-accept",
                                          daemon=True)

    def __enter__(self) -> _ProxyServer:
        self._acceptor.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def url(self, scheme: str, credentials: tuple[str, str] | None = None) -> str:
        """This proxy's URL with ``scheme``, and ``user:password@`` if given."""
        auth = f"{credentials[0]}:{credentials[1]}@" if credentials else ""
        return f"{scheme}://{auth}{self.host}:{self.port}"

    def close(self) -> None:
        """Close every socket and join every thread. Idempotent."""
        self._closing.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._state_lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._acceptor.is_alive():
            self._acceptor.join(JOIN_DEADLINE)
        with self._state_lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(JOIN_DEADLINE)
            assert not thread.is_alive(), f"{thread.name} did not end"
        for sock in sockets:
            sock.close()

    def _track(self, sock: socket.socket) -> socket.socket:
        with self._state_lock:
            self._sockets.append(sock)
        if self._closing.is_set():
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        return sock

    def _record(self, request: ProxyRequest) -> None:
        with self._state_lock:
            self.requests.append(request)

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._track(client)
            # One per client; ends when the client or the target closes, or close()
            # shuts their sockets down; joined by close().
            thread = threading.Thread(target=self._serve_safely, args=(client,),
                                      name="test-proxy-link", daemon=True)
            with self._state_lock:
                self._threads.append(thread)
            thread.start()

    def _serve_safely(self, client: socket.socket) -> None:
        with contextlib.suppress(OSError, ConnectionError, ValueError, struct.error):
            upstream = self._serve(client)
            if upstream is not None:
                with self._state_lock:
                    self.tunnels += 1
                self._relay(client, upstream)
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_RDWR)

    def _serve(self, client: socket.socket) -> socket.socket | None:
        """Read the client's request, answer it; the connected target, or None."""
        raise NotImplementedError

    def _connect(self, host: str, port: int) -> socket.socket:
        return self._track(socket.create_connection((host, port), timeout=5))

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        """Copy bytes both ways until one side ends; then end both."""
        client.settimeout(None)
        upstream.settimeout(None)
        peers = {client: upstream, upstream: client}
        try:
            while not self._closing.is_set():
                readable, _, _ = select.select(list(peers), [], [], 0.2)
                for sock in readable:
                    data = sock.recv(_RECV_SIZE)
                    if not data:
                        return
                    peers[sock].sendall(data)
        finally:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the client went away")
        data += chunk
    return data


def _read_until(sock: socket.socket, end: bytes) -> bytes:
    data = b""
    while not data.endswith(end):
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("the client went away")
        data += chunk
    return data


class ConnectProxy(_ProxyServer):
    """An HTTP proxy that answers CONNECT (RFC 9110 9.3.6) and nothing else.

    Args:
        credentials: (user, password) required in ``Proxy-Authorization: Basic``; a
            request without them, or with others, is answered 407.
        refuse_with: answer every CONNECT with this status instead of a tunnel (may be
            changed while the proxy runs).
        stall: set this event once a request is read, then never answer it (until the
            proxy closes).
    """

    def __init__(
        self,
        credentials: tuple[str, str] | None = None,
        refuse_with: int | None = None,
        stall: threading.Event | None = None,
    ) -> None:
        super().__init__(credentials)
        self.refuse_with = refuse_with
        self.stall = stall

    def __enter__(self) -> ConnectProxy:
        super().__enter__()
        return self

    def _serve(self, client: socket.socket) -> socket.socket | None:
        client.settimeout(5)
        head = _read_until(client, b"\r\n\r\n").decode("iso-8859-1")
        request_line, *lines = head.split("\r\n")
        method, target, _ = request_line.split(" ", 2)
        headers = {}
        for line in lines:
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        host, _, port = target.rpartition(":")
        request = ProxyRequest("CONNECT", host.strip("[]"), int(port), "domain", headers)
        authorization = headers.get("proxy-authorization", "")
        if authorization.startswith("Basic "):
            user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
            request.username, request.password = user, password
        if method != "CONNECT":
            status = 405
        elif self.refuse_with is not None:
            status = self.refuse_with
        elif self.credentials is not None and (
            (request.username, request.password) != self.credentials
        ):
            status = 407
        else:
            status = 200
        if self.stall is not None:
            self._record(request)
            self.stall.set()
            self._closing.wait()
            return None
        request.answer = status
        self._record(request)
        if status != 200:
            client.sendall(
                f"HTTP/1.1 {status} Refused\r\nProxy-Authenticate: Basic realm=\"test\"\r\n"
                "Content-Length: 7\r\nConnection: close\r\n\r\nrefused".encode()
            )
            return None
        upstream = self._connect(request.host, request.port)
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        return upstream


class SocksProxy(_ProxyServer):
    """A SOCKS proxy: SOCKS5 (RFC 1928: no authentication, or user/password by RFC 1929
    when ``credentials`` are set) and SOCKS4/4a, CONNECT only."""

    def __enter__(self) -> SocksProxy:
        super().__enter__()
        return self

    def _serve(self, client: socket.socket) -> socket.socket | None:
        client.settimeout(5)
        version = _read_exactly(client, 1)[0]
        if version == 4:
            return self._serve_socks4(client)
        if version != 5:
            return None
        methods = _read_exactly(client, _read_exactly(client, 1)[0])
        request = ProxyRequest("socks5", "", 0)
        if self.credentials is None:
            if 0 not in methods:
                client.sendall(b"\x05\xff")
                return None
            client.sendall(b"\x05\x00")
        else:
            if 2 not in methods:
                client.sendall(b"\x05\xff")
                return None
            client.sendall(b"\x05\x02")
            _read_exactly(client, 1)  # subnegotiation version 1
            request.username = _read_exactly(client, _read_exactly(client, 1)[0]).decode()
            request.password = _read_exactly(client, _read_exactly(client, 1)[0]).decode()
            if (request.username, request.password) != self.credentials:
                request.answer = 1
                self._record(request)
                client.sendall(b"\x01\x01")
                return None
            client.sendall(b"\x01\x00")
        _, command, _, address_type = _read_exactly(client, 4)
        if address_type == 1:
            request.host = str(ipaddress.IPv4Address(_read_exactly(client, 4)))
        elif address_type == 4:
            request.host = str(ipaddress.IPv6Address(_read_exactly(client, 16)))
        else:
            request.host = _read_exactly(client, _read_exactly(client, 1)[0]).decode()
            request.address_type = "domain"
        request.port = struct.unpack("!H", _read_exactly(client, 2))[0]
        self._record(request)
        if command != 1:
            client.sendall(b"\x05\x07\x00\x01" + bytes(6))
            return None
        try:
            upstream = self._connect(request.host, request.port)
        except OSError:
            request.answer = 1
            client.sendall(b"\x05\x05\x00\x01" + bytes(6))
            return None
        client.sendall(b"\x05\x00\x00\x01" + bytes(6))
        return upstream

    def _serve_socks4(self, client: socket.socket) -> socket.socket | None:
        command = _read_exactly(client, 1)[0]
        port = struct.unpack("!H", _read_exactly(client, 2))[0]
        address = _read_exactly(client, 4)
        user = _read_until(client, b"\0")[:-1].decode()
        request = ProxyRequest("socks4", str(ipaddress.IPv4Address(address)), port,
                               username=user or None)
        if address[:3] == b"\0\0\0" and address[3]:
            request.kind, request.address_type = "socks4a", "domain"
            request.host = _read_until(client, b"\0")[:-1].decode()
        self._record(request)
        if command != 1:
            client.sendall(b"\x00\x5b" + bytes(6))
            return None
        upstream = self._connect(request.host, request.port)
        client.sendall(b"\x00\x5a" + bytes(6))
        return upstream
