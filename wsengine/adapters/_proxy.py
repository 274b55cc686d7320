# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""Proxies for every dialer: the ``proxy=`` setting, the choice of a proxy for one URL,
and the transport to the server (direct, HTTP CONNECT or SOCKS, then TLS).

Both shipped adapters open their connection through :func:`open_transport`, so a proxy
is chosen, reached and refused the same way whichever library then writes the opening
handshake. Every socket is registered with the dial's
:class:`~wsengine.adapters._dial.DialGuard` as soon as it exists: ``abort()`` cuts the
proxy step and the TLS handshake too.

Proxy credentials live only in :class:`Proxy` (whose ``repr`` hides them) and in the
``Proxy-Authorization`` header or SOCKS greeting sent to the proxy; no error or log line
quotes them, nor a proxy URL unredacted.
"""

from __future__ import annotations

import base64
import importlib
import ipaddress
import socket
import ssl
import urllib.request
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import unquote

from wsengine._url import REDACTED
from wsengine.adapters._dial import DialAborted, DialGuard, handshake_time_left, refused
from wsengine.errors import ConfigError, HandshakeError

__all__ = [
    "SOCKS_EXTRA",
    "Proxy",
    "choose_proxy",
    "open_transport",
    "parse_proxy",
    "proxy_setting",
]

#: What to install for SOCKS proxies.
SOCKS_EXTRA: Final = "pip install 'wsengine[socks]'"
#: Proxy URL schemes and their default ports. ``socks5h`` and ``socks4a`` have the proxy
#: resolve the server's name; ``socks5`` and ``socks4`` resolve it here.
_SCHEMES: Final = {"http": 80, "socks5": 1080, "socks5h": 1080, "socks4": 1080, "socks4a": 1080}
#: Longest answer head accepted from an HTTP proxy to a CONNECT.
_MAX_CONNECT_ANSWER: Final = 65536
_END_OF_HEAD: Final = b"\r\n\r\n"

@dataclass(frozen=True)
class Proxy:
    """One proxy: where it is and how to speak to it. ``repr`` and :attr:`url` hide the
    credentials.

    Attributes:
        scheme: ``http`` (HTTP CONNECT), ``socks5``, ``socks5h``, ``socks4`` or
            ``socks4a``.
        host: the proxy's host name or address (an IPv6 address without brackets).
        port: the proxy's port.
        username: the user name sent to the proxy, or None.
        password: the password sent to the proxy, or None.
        bypass: host names (``no_proxy`` syntax: ``example.com``, ``.example.com``,
            ``*``) reached directly rather than through this proxy.
    """

    scheme: str
    host: str
    port: int
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    bypass: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        """The proxy's URL with any credentials replaced by ``REDACTED``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        auth = f"{REDACTED}@" if self.username is not None or self.password else ""
        return f"{self.scheme}://{auth}{host}:{self.port}"

    def __repr__(self) -> str:
        return f"Proxy({self.url!r})"

    @property
    def is_socks(self) -> bool:
        """True for a SOCKS proxy (which needs python-socks)."""
        return self.scheme != "http"

    def bypasses(self, host: str) -> bool:
        """Tell whether ``host`` is to be reached directly (it matches :attr:`bypass`)."""
        if not self.bypass:
            return False
        return bool(urllib.request.proxy_bypass_environment(  # type: ignore[attr-defined]
            host, {"no": ",".join(self.bypass)}
        ))


def _require_socks() -> Any:
    """python-socks' sync API.

    Raises:
        ConfigError: python-socks is not installed; the message names the extra.
    """
    try:
        return importlib.import_module("python_socks.sync")
    except ImportError:
        raise ConfigError(
            f"a SOCKS proxy needs the python-socks package: {SOCKS_EXTRA}"
        ) from None


def parse_proxy(value: str, what: str = "proxy") -> Proxy:
    """Parse a proxy URL: ``http://[user:password@]host:port``, ``socks5://``,
    ``socks5h://``, ``socks4://``, ``socks4a://``; without a scheme, ``http``. The port
    defaults to 80 (http) or 1080 (SOCKS).

    Raises:
        ConfigError: not such a URL, or a SOCKS URL without python-socks. The message
            names ``what`` and never shows the credentials.
    """
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a proxy URL, True, False or None, "
                          f"got a {type(value).__name__}")
    scheme, sep, rest = value.strip().partition("://")
    if not sep:
        scheme, rest = "http", value.strip()
    scheme = scheme.lower()
    credentials, at, hostport = rest.rpartition("@")
    shown = f"{scheme}://{REDACTED + '@' if at else ''}{hostport}"

    def bad(reason: str) -> ConfigError:
        return ConfigError(f"{what} is not a usable proxy URL ({reason}): {shown!r}")

    if scheme not in _SCHEMES:
        raise bad(f"scheme {scheme!r} is not one of {', '.join(_SCHEMES)}")
    hostport = hostport.removesuffix("/")
    if any(char in hostport for char in "/?#") or any(
        char.isspace() or ord(char) < 32 for char in value
    ):
        raise bad("a proxy URL is scheme://[user:password@]host:port and nothing else")
    if hostport.startswith("["):
        host, bracket, port_text = hostport[1:].partition("]")
        if not bracket or (port_text and not port_text.startswith(":")):
            raise bad("malformed IPv6 address")
        port_text = port_text[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad("malformed IPv6 address") from None
    else:
        host, _, port_text = hostport.partition(":")
    if not host:
        raise bad("no host")
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise bad("the port must be 1-65535")
        port = int(port_text)
    else:
        port = _SCHEMES[scheme]
    username = password = None
    if at:
        user_text, colon, password_text = credentials.partition(":")
        username = unquote(user_text)
        password = unquote(password_text) if colon else None
    proxy = Proxy(scheme, host.lower(), port, username, password)
    if proxy.is_socks:
        _require_socks()
    return proxy


def proxy_setting(value: object) -> Proxy | bool | None:
    """An adapter's ``proxy=`` argument, checked: True (use the environment's settings),
    None (direct; also for False) or a :class:`Proxy`.

    Raises:
        ConfigError: as :func:`parse_proxy`, or a value of another type.
    """
    if value is True:
        return True
    if value is None or value is False:
        return None
    return parse_proxy(value)  # type: ignore[arg-type]


def choose_proxy(setting: Proxy | bool | None, host: str, secure: bool) -> Proxy | None:
    """The proxy to reach ``host`` through, or None to connect directly.

    With ``setting`` True, the environment decides as ``urllib.request`` reads it:
    ``wss_proxy``/``https_proxy`` for ``wss://`` (``ws_proxy``/``http_proxy`` for
    ``ws://``), else ``all_proxy``, in lower or upper case; none for a host that
    ``no_proxy`` names. Read at each call: a change of the environment applies to the
    next dial.

    Raises:
        ConfigError: the environment's proxy URL is not usable (see :func:`parse_proxy`).
    """
    if setting is None or setting is False:
        return None
    if isinstance(setting, Proxy):
        return None if setting.bypasses(host) else setting
    proxies = urllib.request.getproxies()
    keys = ("wss", "https", "all") if secure else ("ws", "http", "all")
    key = next((key for key in keys if proxies.get(key)), None)
    if key is None or urllib.request.proxy_bypass(host):
        return None
    return parse_proxy(proxies[key], f"the environment's {key}_proxy")


def _connect_tcp(
    host: str,
    port: int,
    deadline: float | None,
    guard: DialGuard,
    socket_options: Collection[tuple[int, int, int]],
) -> socket.socket:
    """A TCP connection to ``host:port``, registered with ``guard`` at once.

    Raises:
        OSError: the connection failed (``TimeoutError`` at the deadline).
        DialAborted: ``abort()`` came first.
    """
    sock = socket.create_connection((host, port), handshake_time_left(deadline))
    try:
        guard.register(sock)
        for option in socket_options:
            sock.setsockopt(*option)
    except BaseException:
        sock.close()
        raise
    return sock


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _http_tunnel(
    sock: socket.socket, proxy: Proxy, host: str, port: int, deadline: float | None
) -> None:
    """Ask the HTTP proxy on ``sock`` for a tunnel to ``host:port`` (RFC 9110 9.3.6).

    Reads exactly the proxy's answer head, nothing of what follows.

    Raises:
        HandshakeError: the proxy answered with another status than 2xx (``status`` that
            status, the message saying it was the proxy), or not with HTTP.
        OSError: the connection failed (``TimeoutError`` at the deadline).
    """
    target = _authority(host, port)
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
    if proxy.username is not None:
        token = base64.b64encode(f"{proxy.username}:{proxy.password or ''}".encode())
        lines.append(f"Proxy-Authorization: Basic {token.decode('ascii')}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")
    sock.settimeout(handshake_time_left(deadline))
    sock.sendall(request)
    head = b""
    while True:
        sock.settimeout(handshake_time_left(deadline))
        # Peek, then take only up to the end of the head: the bytes after it are the
        # server's (the tunnel), not the proxy's.
        peeked = sock.recv(_MAX_CONNECT_ANSWER, socket.MSG_PEEK)
        if not peeked:
            raise HandshakeError("the proxy closed the connection before answering CONNECT")
        end = (head[-3:] + peeked).find(_END_OF_HEAD)
        take = len(peeked) if end < 0 else end + len(_END_OF_HEAD) - len(head[-3:])
        head += sock.recv(take)
        if end >= 0:
            break
        if len(head) > _MAX_CONNECT_ANSWER:
            raise HandshakeError("the proxy's answer to CONNECT is too long")
    status, headers = _parse_answer(head)
    if not 200 <= status <= 299:
        raise refused(status, headers, via="the proxy")


def _parse_answer(head: bytes) -> tuple[int, dict[str, str]]:
    """The status and headers of an HTTP answer head.

    Raises:
        HandshakeError: not an HTTP answer.
    """
    status_line, *header_lines = head.decode("iso-8859-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit() or len(code) != 3:
        raise HandshakeError("the proxy did not answer CONNECT with HTTP")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip()] = value.strip()
    return int(code), headers


class _GuardedConnector:
    """python-socks' ``forward`` hook: the TCP connection to the SOCKS proxy is opened
    here, so that the dial's guard holds it before the SOCKS exchange starts."""

    def __init__(
        self,
        deadline: float | None,
        guard: DialGuard,
        socket_options: Collection[tuple[int, int, int]],
    ) -> None:
        self._deadline = deadline
        self._guard = guard
        self._socket_options = socket_options

    def connect(
        self, dest_host: str, dest_port: int, timeout: float | None = None, **_: object
    ) -> socket.socket:
        return _connect_tcp(dest_host, dest_port, self._deadline, self._guard,
                            self._socket_options)


def _socks_tunnel(
    proxy: Proxy,
    host: str,
    port: int,
    deadline: float | None,
    guard: DialGuard,
    socket_options: Collection[tuple[int, int, int]],
) -> socket.socket:
    """A connection to ``host:port`` through the SOCKS ``proxy``, by python-socks.

    Raises:
        HandshakeError: the proxy refused (bad credentials, server unreachable...).
        OSError: the connection to the proxy failed (``TimeoutError`` at the deadline).
    """
    sync = _require_socks()
    errors = importlib.import_module("python_socks")
    kind = errors.ProxyType.SOCKS5 if proxy.scheme.startswith("socks5") else errors.ProxyType.SOCKS4
    client = sync.Proxy(
        kind,
        proxy.host,
        proxy.port,
        username=proxy.username,
        password=proxy.password,
        rdns=proxy.scheme in ("socks5h", "socks4a"),
        forward=_GuardedConnector(deadline, guard, socket_options),
    )
    left = handshake_time_left(deadline)
    try:
        sock: socket.socket = client.connect(host, port, timeout=left)
    except errors.ProxyTimeoutError:
        raise TimeoutError("timed out in the SOCKS proxy exchange") from None
    except errors.ProxyError as error:
        # python-socks' messages quote no credentials; its reply text says what failed.
        raise HandshakeError(f"the SOCKS proxy refused the connection ({error})") from None
    return sock


def open_transport(
    host: str,
    port: int,
    *,
    proxy: Proxy | None,
    context: ssl.SSLContext | None,
    server_hostname: str | None,
    deadline: float | None,
    guard: DialGuard,
    socket_options: Collection[tuple[int, int, int]] = (),
) -> socket.socket:
    """Open the connection to ``host:port``: TCP, through ``proxy`` if one is given, then
    TLS with ``context`` when it is not None (certificate and host name checked as the
    context says, against ``server_hostname`` or ``host``).

    Blocks the calling thread until the connection is ready or ``deadline``
    (``time.monotonic()``; None: no limit) passes. Every socket is registered with
    ``guard`` at once: ``abort()`` cuts any step. On failure, every socket is closed.

    Raises:
        HandshakeError: the proxy refused the tunnel (``status`` its HTTP status, e.g.
            407) or did not answer with HTTP.
        DialAborted: the dial was aborted.
        OSError: the TCP or TLS connection failed (``TimeoutError`` at the deadline,
            ``ssl.SSLError`` for TLS).
    """
    opened: list[socket.socket] = []

    def track(sock: socket.socket) -> socket.socket:
        opened.append(sock)
        return sock

    try:
        if proxy is None:
            sock = track(_connect_tcp(host, port, deadline, guard, socket_options))
        elif proxy.is_socks:
            sock = track(_socks_tunnel(proxy, host, port, deadline, guard, socket_options))
        else:
            sock = track(_connect_tcp(proxy.host, proxy.port, deadline, guard, socket_options))
            _http_tunnel(sock, proxy, host, port, deadline)
        if context is not None:
            sock.settimeout(handshake_time_left(deadline))
            tls = context.wrap_socket(
                sock, server_hostname=server_hostname or host, do_handshake_on_connect=False
            )
            sock = track(tls)
            # Registered before the TLS handshake: abort() can cut it too.
            guard.register(tls)
            tls.do_handshake()
        sock.settimeout(handshake_time_left(deadline))
    except BaseException as error:
        for each in opened:
            each.close()
        if guard.aborted and isinstance(error, OSError | HandshakeError):
            raise DialAborted("the dial was aborted") from None
        raise
    return sock

