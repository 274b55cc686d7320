# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""An adapter on websockets: its sans-I/O client performs the opening handshake over a
socket the adapter opens; wsengine's driver then speaks the frames.

Only websockets' public, documented API is used: ``websockets.uri.parse_uri``,
``websockets.client.ClientProtocol`` (``connect``, ``send_request``, ``data_to_send``,
``receive_data``, ``receive_eof``, ``events_received``, ``handshake_exc``), and the
``Headers``, ``Request``, ``Response`` and exception types. Nothing of websockets runs
after the 101: no background thread, no mutex held across a ``sendall``.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, Final

try:
    from websockets.client import ClientProtocol
    from websockets.datastructures import Headers
    from websockets.exceptions import InvalidMessage, InvalidStatus, InvalidURI
    from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
    from websockets.http11 import USER_AGENT, Request, Response
    from websockets.typing import Origin, Subprotocol
    from websockets.uri import parse_uri
except ImportError as error:  # pragma: no cover - exercised in a test with a fake import
    raise ImportError(
        "wsengine.adapters.websockets_sync needs the websockets package; "
        "install it with: pip install 'wsengine[websockets]'"
    ) from error

from wsengine._url import redact_url
from wsengine.adapters._dial import (
    CREDENTIAL_HEADERS,
    REDIRECT_STATUSES,
    DialAborted,
    DialGuard,
    Redirect,
    check_response,
    handshake_time_left,
    refused,
)
from wsengine.adapters._driver import DrivenAdapter, Handshake
from wsengine.adapters._proxy import choose_proxy, open_transport, proxy_setting
from wsengine.adapters.base import check_adapter_arguments
from wsengine.errors import ConfigError, HandshakeError
from wsengine.types import HandshakeResponse

__all__ = ["WebsocketsAdapter"]

_OPTIONS: Final = frozenset({
    "ssl", "server_hostname", "additional_headers", "user_agent_header", "origin",
    "subprotocols", "redirect_limit", "proxy",
})
#: Redirects followed in a row by default: websockets' own client makes 10 requests at most.
_REDIRECT_LIMIT: Final = 9
_RECV_SIZE: Final = 65536
_END_OF_HEAD: Final = b"\r\n\r\n"


class _RedactingLogger(logging.LoggerAdapter[logging.Logger]):
    """websockets' handshake logging, without secrets: a header line shows its name only,
    and the request target its query redacted (``Authorization``, cookies, tokens)."""

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        if isinstance(msg, str) and msg.endswith("%s: %s") and len(args) == 2:
            msg, args = msg[: -len("%s: %s")] + "%s: [value not logged]", args[:1]
        elif isinstance(msg, str) and msg.startswith("> GET %s") and args:
            args = (redact_url(str(args[0])), *args[1:])
        self.logger.log(level, msg, *args, **kwargs)


_LOGGER: Final = _RedactingLogger(logging.getLogger("websockets.client"), {})


def _header_pairs(value: object) -> list[tuple[str, str]]:
    """``additional_headers`` (a mapping, websockets' ``Headers`` or (name, value) pairs)
    as a checked list of pairs.

    Raises:
        ConfigError: not such a value, or a name or value holding CR, LF or NUL (which
            would inject headers); the message never quotes a value.
    """
    if value is None:
        return []
    if isinstance(value, Headers):
        pairs = list(value.raw_items())
    elif isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, Iterable) and not isinstance(value, str | bytes):
        pairs = [tuple(pair) for pair in value]
    else:
        raise ConfigError("additional_headers must be a mapping or (name, value) pairs")
    for pair in pairs:
        if len(pair) != 2 or not all(isinstance(part, str) for part in pair):
            raise ConfigError("additional_headers must hold str names and values")
        if any(char in part for part in pair for char in "\r\n\0"):
            raise ConfigError(f"header {pair[0]!r}: CR, LF and NUL are not allowed")
    return [(name, value) for name, value in pairs]


def _joined(headers: Headers) -> dict[str, str]:
    """Response headers as a dict; repeated names are joined with ", " (RFC 9110 5.3)."""
    joined: dict[str, str] = {}
    names: dict[str, str] = {}
    for name, value in headers.raw_items():
        first = names.setdefault(name.lower(), name)
        joined[first] = f"{joined[first]}, {value}" if first in joined else value
    return joined


class WebsocketsAdapter(DrivenAdapter):
    """A :class:`ConnectionAdapter` whose handshake is websockets' sans-I/O client.

    The adapter opens the TCP connection (and TLS for ``wss://``) itself, lets
    websockets' ``ClientProtocol`` write the request and check the answer, then hands
    the socket to wsengine's driver. Safe for one reader plus any number of writers;
    reusable (``dial`` after ``close``/``abort`` opens a fresh connection).

    Args:
        max_size: largest message accepted, in bytes (None: no limit); a larger one
            fails the connection with 1009 from its frame header (or, compressed, while
            it is inflated).
        compression: ``"deflate"`` (default) offers permessage-deflate (RFC 7692), None
            does not, a mapping offers those RFC 7692 parameters; websockets writes the
            offer and checks the answer, wsengine's protocol core inflates and deflates.
        ssl: the ``ssl.SSLContext`` for ``wss://`` (default:
            ``ssl.create_default_context()``, certificates and host names verified).
        server_hostname: the host name for TLS (SNI and verification); default: the
            URL's host.
        additional_headers: request headers to add (mapping or pairs).
        user_agent_header: the ``User-Agent`` value (default websockets'; None: none).
        origin: the ``Origin`` header value.
        subprotocols: subprotocols offered, in order of preference.
        redirect_limit: redirects followed in a row (default 9, as websockets' own
            client).
        proxy: True (default): the environment's proxy settings, read at each dial as
            ``urllib.request`` reads them (``wss_proxy``/``https_proxy`` for
            ``wss://``, ``ws_proxy``/``http_proxy`` for ``ws://``, else ``all_proxy``;
            none for a host ``no_proxy`` names); None or False: connect directly,
            whatever the environment says; or a proxy URL:
            ``http://[user:password@]host:port`` (HTTP CONNECT), ``socks5://``,
            ``socks5h://`` (the proxy resolves the host name), ``socks4://``,
            ``socks4a://`` (SOCKS needs ``pip install 'wsengine[socks]'``). TLS for
            ``wss://`` runs end to end through the tunnel, verified with ``ssl``. A
            proxy that refuses the tunnel fails the dial with
            :class:`~wsengine.errors.HandshakeError` carrying its status (407: bad or
            missing credentials). Proxy credentials never appear in errors or logs.

    Redirects follow the shared policy: credentials
    (``Authorization``, ``Cookie``, ``Proxy-Authorization``) never go to another
    origin, and ``wss://`` to ``ws://`` is refused.

    Raises:
        ConfigError: ``max_size`` is not a positive int or None, an option is unknown
            or of the wrong type, ``proxy`` is not a usable proxy URL (the message hides
            its credentials), or a SOCKS proxy without python-socks installed.
    """

    def __init__(
        self,
        max_size: int | None = 2**20,
        *,
        compression: str | Mapping[str, int | bool] | None = "deflate",
        **options: Any,
    ) -> None:
        check_adapter_arguments(max_size, options, ())
        unknown = sorted(set(options) - _OPTIONS)
        if unknown:
            raise ConfigError(
                f"option {unknown[0]} is not supported by WebsocketsAdapter "
                f"(supported: {', '.join(sorted(_OPTIONS))})"
            )
        self._proxy = proxy_setting(options.get("proxy", True))
        context = options.get("ssl")
        if context is not None and not isinstance(context, ssl.SSLContext):
            raise ConfigError("ssl must be an ssl.SSLContext or None")
        limit = options.get("redirect_limit", _REDIRECT_LIMIT)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ConfigError(f"redirect_limit must be an int >= 0, got {limit!r}")
        for name in ("server_hostname", "user_agent_header", "origin"):
            if not isinstance(options.get(name), str | None):
                raise ConfigError(f"{name} must be a str or None")
        subprotocols = options.get("subprotocols")
        if subprotocols is not None and (
            isinstance(subprotocols, str)
            or not all(isinstance(each, str) for each in subprotocols)
        ):
            raise ConfigError("subprotocols must be a list of str")
        super().__init__(max_size, limit, compression)
        offer = self._deflate_offer
        # websockets writes the offer and checks the answer (it refuses an answer to an
        # offer it did not make); the driver's protocol core then does the compressing.
        self._extensions = None if offer is None else [ClientPerMessageDeflateFactory(
            server_no_context_takeover=offer.server_no_context_takeover,
            client_no_context_takeover=offer.client_no_context_takeover,
            server_max_window_bits=offer.server_max_window_bits,
            client_max_window_bits=offer.client_max_window_bits or None,
        )]
        self._ssl: ssl.SSLContext | None = context
        self._server_hostname: str | None = options.get("server_hostname")
        self._headers = _header_pairs(options.get("additional_headers"))
        self._user_agent: str | None = options.get("user_agent_header", USER_AGENT)
        self._origin: str | None = options.get("origin")
        self._subprotocols: list[str] | None = (
            None if subprotocols is None else list(subprotocols)
        )
        self._response: Response | None = None

    @property
    def underlying(self) -> object:
        """websockets' ``Response`` to the last successful opening handshake (None
        before one): its status, reason phrase and headers."""
        return self._response

    def _handshake(
        self,
        url: str,
        timeout: float | None,
        headers: Mapping[str, str],
        cross_origin: bool,
        guard: DialGuard,
    ) -> Handshake:
        """One TCP (and TLS) connection and opening handshake, within ``timeout`` in all."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            uri = parse_uri(url)
        except InvalidURI:
            raise HandshakeError("invalid websocket URL") from None
        opened: list[socket.socket] = []
        try:
            sock = open_transport(
                uri.host,
                uri.port,
                proxy=choose_proxy(self._proxy, uri.host, uri.secure),
                context=(self._ssl or ssl.create_default_context()) if uri.secure else None,
                server_hostname=self._server_hostname,
                deadline=deadline,
                guard=guard,
                # As websockets' and websocket-client's own clients: a small frame goes
                # out at once, not after the ACK of the previous one.
                socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            )
            opened.append(sock)
            protocol = ClientProtocol(
                uri,
                origin=None if self._origin is None else Origin(self._origin),
                subprotocols=None if self._subprotocols is None
                else [Subprotocol(each) for each in self._subprotocols],
                extensions=self._extensions,
                logger=_LOGGER,
            )
            request = protocol.connect()
            # The base class's offer is already in the request, written by websockets.
            self._add_headers(request.headers, {
                name: value for name, value in headers.items()
                if name.lower() != "sec-websocket-extensions"
            })
            if cross_origin:
                request = Request(request.path, Headers(
                    (name, value) for name, value in request.headers.raw_items()
                    if name.lower() not in CREDENTIAL_HEADERS
                ))
            protocol.send_request(request)
            for data in protocol.data_to_send():
                sock.settimeout(handshake_time_left(deadline))
                sock.sendall(data)
            response, leftover = self._read_response(sock, protocol, deadline)
        except BaseException as error:
            for each in opened:
                each.close()
            if guard.aborted and isinstance(error, OSError | HandshakeError):
                raise DialAborted("the dial was aborted") from None
            if isinstance(error, TimeoutError):
                raise TimeoutError("timed out during the opening handshake") from None
            raise
        self._response = response
        return Handshake(
            sock,
            HandshakeResponse(101, _joined(response.headers), protocol.subprotocol),
            leftover,
        )

    def _add_headers(self, request: MutableMapping[str, str], extra: Mapping[str, str]) -> None:
        """Add the configured and the per-dial headers, then the default User-Agent."""
        for name, value in [*self._headers, *extra.items()]:
            request[name] = value  # websockets' Headers appends
        if self._user_agent is not None and "User-Agent" not in request:
            request["User-Agent"] = self._user_agent

    def _read_response(
        self, sock: socket.socket, protocol: ClientProtocol, deadline: float | None
    ) -> tuple[Response, bytes]:
        """Read the answer; feed websockets only its header block (and the body of a
        refusal). Returns the 101 response and the bytes that followed it (frames the
        server sent at once, for the driver).

        Raises:
            Redirect, HandshakeError: as ``_handshake`` documents.
        """
        tail = b""  # the last bytes of the head so far: its end may straddle two reads
        leftover = b""
        in_head = True
        while True:
            sock.settimeout(handshake_time_left(deadline))
            data = sock.recv(_RECV_SIZE)
            if not data:
                protocol.receive_eof()
            elif in_head:
                end = (tail + data).find(_END_OF_HEAD)
                if end < 0:
                    tail = (tail + data)[-3:]
                else:
                    cut = end + len(_END_OF_HEAD) - len(tail)
                    data, leftover = data[:cut], data[cut:]
                    in_head = False
                protocol.receive_data(data)
            else:
                protocol.receive_data(data)
            events = protocol.events_received()
            if not events and not in_head and leftover and protocol.handshake_exc is None:
                # The head is complete but no response came out: a refusal with a body
                # (a 101 has none). The bytes after the head are that body, not frames.
                protocol.receive_data(leftover)
                leftover = b""
                events = protocol.events_received()
            if events or protocol.handshake_exc is not None or not data:
                break
        response = next((e for e in events if isinstance(e, Response)), None)
        failure = protocol.handshake_exc
        if response is not None and response.status_code in REDIRECT_STATUSES:
            locations = response.headers.get_all("Location")
            raise Redirect(response.status_code, locations[0] if len(locations) == 1 else None)
        if isinstance(failure, InvalidStatus):
            raise refused(failure.response.status_code, _joined(failure.response.headers))
        if response is not None:
            # The shared checks first, for the shared message; then the rest of RFC 6455.
            check_response(
                {name: value for name, value in _joined(response.headers).items()
                 if name.lower() != "sec-websocket-extensions"},
                requested_subprotocols=self._subprotocols or (),
            )
            if failure is None:
                return response, leftover
            raise HandshakeError(
                "invalid handshake response (Upgrade, Connection, Sec-WebSocket-Accept "
                "or subprotocol)"
            )
        if isinstance(failure, InvalidMessage) and not isinstance(failure.__cause__, EOFError):
            raise HandshakeError("the server did not answer with HTTP")
        raise HandshakeError("connection closed during the opening handshake")
