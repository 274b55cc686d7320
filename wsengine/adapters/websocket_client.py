# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""The default adapter: websocket-client writes the handshake, wsengine's driver speaks
the frames.

The connection (TCP, the proxy's tunnel, TLS) is opened by
:func:`~wsengine.adapters._proxy.open_transport`, as for the websockets adapter, and given
to ``websocket.create_connection`` through its ``socket`` option: websocket-client then
performs only the opening handshake. Its socket is then handed to
:class:`~wsengine.adapters._driver.SocketDriver`, which drives it with wsengine's protocol
core: websocket-client's own frame reader is slow and accepts a text message that ends in
a truncated UTF-8 sequence.

Opening the connection here rather than in websocket-client keeps one proxy policy for
both adapters (websocket-client reads ``http_proxy``/``https_proxy`` itself, but not
``all_proxy``, and matches ``no_proxy`` its own way), keeps proxy credentials out of
websocket-client's trace, and lets ``abort()`` cut the TCP connect, the proxy step and the
TLS handshake.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
import ssl
import ssl as _ssl
import time
from collections.abc import Mapping
from typing import Any, Final, cast

import websocket

from wsengine._url import redact_url, url_target
from wsengine.adapters._dial import (
    REDIRECT_LIMIT,
    REDIRECT_STATUSES,
    DialAborted,
    DialGuard,
    Redirect,
    check_response,
    refused,
    without_credentials,
)
from wsengine.adapters._driver import DrivenAdapter, Handshake
from wsengine.adapters._proxy import (
    Proxy,
    choose_proxy,
    open_transport,
    parse_proxy,
    proxy_setting,
)
from wsengine.adapters.base import check_adapter_arguments
from wsengine.errors import ConfigError, HandshakeError
from wsengine.types import HandshakeResponse

__all__ = ["WebsocketClientAdapter"]

# Options this adapter sets itself when it calls websocket.create_connection.
_RESERVED_OPTIONS: Final = frozenset(
    {"timeout", "skip_utf8_validation", "enable_multithread", "class_", "socket"}
)
#: websocket-client's own proxy options, still taken (mapped onto ``proxy=``).
_LEGACY_PROXY_OPTIONS: Final = frozenset({
    "http_proxy_host", "http_proxy_port", "http_proxy_auth", "proxy_type",
    "http_no_proxy", "http_proxy_timeout",
})
#: The ``sslopt`` keys websocket-client reads (``_http._ssl_socket``), all honoured here.
_SSLOPT_KEYS: Final = frozenset({
    "context", "cert_reqs", "check_hostname", "ca_certs", "ca_cert_path", "certfile",
    "keyfile", "password", "cert_chain", "ciphers", "ecdh_curve", "ssl_version",
    "server_hostname", "do_handshake_on_connect", "suppress_ragged_eofs",
})
# websocket-client's message for a proxy that refused the CONNECT tunnel.
_PROXY_STATUS: Final = re.compile(r"failed CONNECT via proxy status: (\d{3})")


# Header names whose values are safe to log: they carry no credential.
_LOGGABLE_HEADERS: Final = frozenset({
    "host", "upgrade", "connection", "sec-websocket-version", "sec-websocket-protocol",
    "sec-websocket-extensions", "content-length", "content-type", "date", "server",
})
_HEADER_LINE: Final = re.compile(r"^([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*(.*)$")
_REQUEST_LINE: Final = re.compile(r"^(GET|CONNECT) (\S+)( HTTP/\S+)$")


class _NoSecretsFilter(logging.Filter):
    """websocket-client's trace (``websocket.enableTrace(True)``) dumps whole handshakes:
    this filter, on its ``websocket`` logger, keeps header names and drops the values of
    every header not known to be harmless (Authorization, Cookie, the engine's
    ``headers=``, ...), and redacts the request target's credentials and query values."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if ":" not in message and " " not in message:
            return True
        lines = []
        for line in message.split("\n"):
            header = _HEADER_LINE.match(line.rstrip("\r"))
            request = _REQUEST_LINE.match(line.rstrip("\r"))
            if header and header.group(1).lower() not in _LOGGABLE_HEADERS:
                line = f"{header.group(1)}: [value not logged]"
            elif request:
                target = request.group(2)
                shown = redact_url(f"ws://host{target}")[len("ws://host"):] if (
                    target.startswith("/")) else "[target not logged]"
                line = f"{request.group(1)} {shown}{request.group(3)}"
            lines.append(line)
        record.msg, record.args = "\n".join(lines), None
        return True


logging.getLogger("websocket").addFilter(_NoSecretsFilter())


def _dial_error(error: websocket.WebSocketException) -> Exception:
    """Map a websocket-client handshake failure to the error dial() raises.

    The messages never quote the server's headers: they may carry cookies or tokens.
    """
    if isinstance(error, websocket.WebSocketBadStatusException):
        return refused(error.status_code, error.resp_headers or {})
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
        match = _PROXY_STATUS.search(str(error))
        if match:
            return refused(int(match.group(1)), {}, via="the proxy")
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


def _header_lines(header: object, extra: Mapping[str, str], cross_origin: bool) -> object:
    """websocket-client's ``header`` option with the per-dial ``extra`` headers added,
    and credentials dropped for another origin."""
    if isinstance(header, Mapping):
        merged: dict[str, str] = {**header, **extra}
        return without_credentials(merged) if cross_origin else merged
    lines = [str(line) for line in cast("list[object]", header or [])]
    lines += [f"{name}: {value}" for name, value in extra.items()]
    if cross_origin:
        lines = [line for line in lines
                 if line.partition(":")[0].strip().lower() not in
                 {"authorization", "cookie", "proxy-authorization"}]
    return lines


@functools.lru_cache(maxsize=4)
def _default_tls_context(keylog: str | None, bundle: str | None) -> ssl.SSLContext:
    """The context of adapters given no TLS settings, one per process (per value of the two
    environment variables it reads): loading the default certificates costs about 900 KiB
    of native memory, which 500 ``ws://`` engines each paid for nothing."""
    return _tls_context({})


def _tls_context(sslopt: Mapping[str, Any]) -> ssl.SSLContext:
    """The TLS context websocket-client would build from ``sslopt`` (its
    ``_http._wrap_sni_socket``): certificates and host names verified unless ``cert_reqs``
    or ``check_hostname`` say otherwise, ``WEBSOCKET_CLIENT_CA_BUNDLE`` honoured.

    Raises:
        ConfigError: an unknown key, a bad value, or a file that cannot be loaded.
    """
    unknown = sorted(set(sslopt) - _SSLOPT_KEYS)
    if unknown:
        raise ConfigError(f"sslopt has an unknown key {unknown[0]!r}")
    given = sslopt.get("context")
    if given is not None:
        if not isinstance(given, ssl.SSLContext):
            raise ConfigError("sslopt['context'] must be an ssl.SSLContext")
        return given
    cert_reqs = sslopt.get("cert_reqs", ssl.CERT_REQUIRED)
    check_hostname = bool(sslopt.get("check_hostname", cert_reqs != ssl.CERT_NONE))
    if check_hostname and cert_reqs == ssl.CERT_NONE:
        raise ConfigError("sslopt: check_hostname cannot be on when cert_reqs is CERT_NONE")
    try:
        context = ssl.SSLContext(sslopt.get("ssl_version", ssl.PROTOCOL_TLS_CLIENT))
        keylog = os.environ.get("SSLKEYLOGFILE")
        if keylog is not None:
            context.keylog_filename = keylog
        if cert_reqs != ssl.CERT_NONE:
            bundle = os.environ.get("WEBSOCKET_CLIENT_CA_BUNDLE") or ""
            cafile = sslopt.get("ca_certs") or (bundle if os.path.isfile(bundle) else None)
            capath = sslopt.get("ca_cert_path") or (bundle if os.path.isdir(bundle) else None)
            if cafile or capath:
                context.load_verify_locations(cafile=cafile, capath=capath)
            else:
                context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if sslopt.get("certfile"):
            context.load_cert_chain(
                sslopt["certfile"], sslopt.get("keyfile"), sslopt.get("password")
            )
        if "cert_chain" in sslopt:
            context.load_cert_chain(*sslopt["cert_chain"])
        if not check_hostname:
            context.check_hostname = False
        context.verify_mode = cert_reqs
        context.check_hostname = check_hostname
        if "ciphers" in sslopt:
            context.set_ciphers(sslopt["ciphers"])
        if "ecdh_curve" in sslopt:
            context.set_ecdh_curve(sslopt["ecdh_curve"])
    except (OSError, ValueError, TypeError) as error:
        # ssl.SSLError is an OSError; none of these quote the key's password.
        raise ConfigError(f"sslopt: cannot set up TLS ({type(error).__name__}: {error})") from None
    return context


def _legacy_proxy(options: dict[str, Any]) -> Proxy | None:
    """websocket-client's ``http_proxy_host`` and its companions, taken out of
    ``options``, as a :class:`Proxy` (None without ``http_proxy_host``).

    Raises:
        ConfigError: no ``http_proxy_port``, a bad ``proxy_type``, or a bad
            ``http_proxy_auth``.
    """
    host = options.pop("http_proxy_host", None)
    port = options.pop("http_proxy_port", None)
    auth = options.pop("http_proxy_auth", None)
    kind = options.pop("proxy_type", None) or "http"
    no_proxy = options.pop("http_no_proxy", None)
    # The dial's timeout bounds the proxy step, as every other.
    options.pop("http_proxy_timeout", None)
    if not host:
        return None
    if not port:
        raise ConfigError("http_proxy_port is needed with http_proxy_host")
    if kind not in ("http", "socks4", "socks4a", "socks5", "socks5h"):
        raise ConfigError(f"proxy_type must be http, socks4, socks4a, socks5 or socks5h, "
                          f"got {kind!r}")
    if auth is not None and (
        not isinstance(auth, tuple | list) or len(auth) != 2
        or not all(isinstance(part, str) for part in auth)
    ):
        raise ConfigError("http_proxy_auth must be a (user, password) tuple of str")
    shown = f"[{host}]" if ":" in str(host) else host
    proxy = parse_proxy(f"{kind}://{shown}:{port}", "http_proxy_host and http_proxy_port")
    return dataclasses.replace(
        proxy,
        username=auth[0] if auth else None,
        password=auth[1] if auth else None,
        bypass=tuple(no_proxy or ()),
    )


class WebsocketClientAdapter(DrivenAdapter):
    """A :class:`ConnectionAdapter` on websocket-client, with wsengine's own frame code.

    Safe for one reader (the engine's reader, or a user reading by hand under the engine's
    pause lock) plus any number of writers. Reusable: ``dial`` after ``close``/``abort``
    opens a fresh connection.

    Args:
        max_size: largest message accepted, in bytes (None: no limit). A larger message
            fails the connection with 1009, from its frame header (or, compressed, while
            it is inflated), before the payload is read.
        compression: ``"deflate"`` (default) offers permessage-deflate (RFC 7692) and
            inflates what the server compresses; None does not offer it; a mapping offers
            those RFC 7692 parameters (``client_no_context_takeover``,
            ``server_no_context_takeover``, ``client_max_window_bits``,
            ``server_max_window_bits``).
        proxy: True (default): the environment's proxy settings, read at each dial as
            ``urllib.request`` reads them (``wss_proxy``/``https_proxy`` for ``wss://``,
            ``ws_proxy``/``http_proxy`` for ``ws://``, else ``all_proxy``; none for a
            host ``no_proxy`` names), the same rules as :class:`WebsocketsAdapter`
            (websocket-client's own reading of ``http_proxy``/``https_proxy``, which
            ignores ``all_proxy``, is not used); None or False: connect directly,
            whatever the environment says; or a proxy URL:
            ``http://[user:password@]host:port`` (HTTP CONNECT), ``socks5://``,
            ``socks5h://`` (the proxy resolves the host name), ``socks4://``,
            ``socks4a://`` (SOCKS needs ``pip install 'wsengine[socks]'``). A proxy that
            refuses the tunnel fails the dial with
            :class:`~wsengine.errors.HandshakeError` carrying its status (407: bad or
            missing credentials). Proxy credentials never appear in errors or logs
            (websocket-client never sees them).
        ssl: the ``ssl.SSLContext`` for ``wss://`` (default: built from ``sslopt`` as
            websocket-client builds it, which verifies certificates and host names
            against the system's CAs unless ``sslopt`` says otherwise). TLS runs end to
            end through a proxy's tunnel.
        **options: passed to ``websocket.create_connection`` (``header``,
            ``subprotocols``, ``cookie``, ``origin``, ``host``...), except: ``sslopt``
            (its keys make the TLS context; only ``server_hostname`` may go with
            ``ssl``), ``sockopt`` (set on the socket wsengine opens), and
            websocket-client's proxy options ``http_proxy_host``, ``http_proxy_port``,
            ``http_proxy_auth``, ``proxy_type``, ``http_no_proxy`` (taken as ``proxy``;
            ``http_proxy_timeout`` is ignored: the dial's timeout bounds every step).

    Redirects: a 3xx answer to the handshake is followed, up to ``redirect_limit`` times
    (default 3, as websocket-client), to the ``Location`` given. A redirect to another
    origin (scheme, host or port) drops the ``Authorization``, ``Cookie`` and
    ``Proxy-Authorization`` headers and the ``cookie`` option, and one from ``wss://`` to
    ``ws://`` is refused. A longer chain (``status`` None), or a 3xx without ``Location``
    (``status`` the 3xx), fails ``dial`` with a :class:`~wsengine.errors.HandshakeError`.

    Raises:
        ConfigError: ``max_size`` is not a positive int or None, a bad ``compression``,
            an option is one the adapter sets itself (``timeout``,
            ``skip_utf8_validation``, ``enable_multithread``, ``socket``), ``proxy`` is
            not a usable proxy URL (the message hides its credentials) or is given with
            ``http_proxy_host``, a SOCKS proxy without python-socks, a bad ``ssl``, or
            ``sslopt`` with an unknown key, a file that cannot be loaded, or given with
            ``ssl``.
    """

    def __init__(
        self,
        max_size: int | None = 2**20,
        *,
        compression: str | Mapping[str, int | bool] | None = "deflate",
        proxy: str | bool | None = True,
        ssl: _ssl.SSLContext | None = None,
        **options: Any,
    ) -> None:
        check_adapter_arguments(max_size, options, _RESERVED_OPTIONS)
        options = dict(options)
        setting = proxy_setting(proxy)
        legacy = _legacy_proxy(options)
        if legacy is not None:
            if setting is not True:
                raise ConfigError(
                    "give the proxy once: proxy= or websocket-client's http_proxy_host, "
                    "not both"
                )
            setting = legacy
        sslopt = dict(options.pop("sslopt", None) or {})
        if ssl is not None:
            if not isinstance(ssl, _ssl.SSLContext):
                raise ConfigError("ssl must be an ssl.SSLContext or None")
            if set(sslopt) - {"server_hostname"}:
                raise ConfigError(
                    "give TLS settings once: ssl= or sslopt (only sslopt's "
                    "server_hostname may go with ssl=)"
                )
            context = ssl
        elif not sslopt:
            context = _default_tls_context(
                os.environ.get("SSLKEYLOGFILE"), os.environ.get("WEBSOCKET_CLIENT_CA_BUNDLE")
            )
        else:
            context = _tls_context(sslopt)
        super().__init__(
            max_size, options.pop("redirect_limit", REDIRECT_LIMIT), compression
        )
        self._proxy = setting
        self._tls = context
        self._server_hostname: str | None = sslopt.get("server_hostname")
        self._socket_options = [
            *websocket.DEFAULT_SOCKET_OPTION, *(options.pop("sockopt", None) or ())
        ]
        self._options = options
        self._ws: websocket.WebSocket | None = None

    @property
    def underlying(self) -> object:
        """websocket-client's ``WebSocket`` (only its handshake results are meaningful)."""
        return self._ws

    def _handshake(
        self,
        url: str,
        timeout: float | None,
        headers: Mapping[str, str],
        cross_origin: bool,
        guard: DialGuard,
    ) -> Handshake:
        """One connection (TCP, the proxy's tunnel, TLS) and opening handshake, the
        handshake written by websocket-client; within ``timeout`` in all."""
        deadline = None if timeout is None else time.monotonic() + timeout
        scheme, host, port = url_target(url)
        secure = scheme == "wss"
        try:
            transport = open_transport(
                host,
                port,
                proxy=choose_proxy(self._proxy, host, secure),
                context=self._tls if secure else None,
                server_hostname=self._server_hostname,
                deadline=deadline,
                guard=guard,
                socket_options=self._socket_options,
            )
        except TimeoutError:
            raise TimeoutError("timed out during the opening handshake") from None
        options = dict(self._options)
        if headers or cross_origin:
            options["header"] = _header_lines(options.get("header"), headers, cross_origin)
        if cross_origin:
            options.pop("cookie", None)
        made: list[websocket.WebSocket] = []

        def make_websocket(**arguments: Any) -> websocket.WebSocket:
            # create_connection builds the WebSocket through this: its handshake response
            # is needed when create_connection raises on a redirect.
            ws = websocket.WebSocket(**arguments)
            made.append(ws)
            return ws

        try:
            ws = websocket.create_connection(
                url,
                timeout=None if deadline is None else max(deadline - time.monotonic(), 0.001),
                # The connection is open: websocket-client only writes the handshake.
                socket=transport,
                # Called like a factory; typed as a class by websocket-client.
                class_=cast(type[websocket.WebSocket], make_websocket),
                skip_utf8_validation=True,
                enable_multithread=True,
                # Redirects are followed by the shared policy, not by websocket-client,
                # which would send the same headers (Authorization too) to any host.
                redirect_limit=0,
                **options,
            )
        except websocket.WebSocketException as error:
            transport.close()
            if guard.aborted:
                raise DialAborted("the dial was aborted") from None
            # With redirect_limit=0, websocket-client raises on a 3xx; its WebSocket still
            # holds the response.
            answer = made[-1].handshake_response if made else None
            if answer is not None and answer.status in REDIRECT_STATUSES:
                raise Redirect(answer.status, (answer.headers or {}).get("location")) from None
            # from None: the original message quotes the response headers.
            raise _dial_error(error) from None
        except BaseException as error:
            transport.close()
            if guard.aborted and isinstance(error, OSError):
                raise DialAborted("the dial was aborted") from None
            if isinstance(error, TimeoutError):
                raise TimeoutError("timed out during the opening handshake") from None
            raise
        sock = ws.sock
        if sock is None:  # pragma: no cover - create_connection returns connected
            raise HandshakeError("websocket-client returned no socket")
        headers_in = dict(ws.getheaders() or {})
        try:
            check_response(
                {name: value for name, value in headers_in.items()
                 if name.lower() != "sec-websocket-extensions"},
                requested_subprotocols=self._options.get("subprotocols") or (),
            )
        except HandshakeError:
            sock.close()
            raise
        self._ws = ws
        # websocket-client reads the answer byte by byte: nothing after it was consumed.
        response = HandshakeResponse(
            status=ws.getstatus() or 101,
            headers=headers_in,
            subprotocol=ws.getsubprotocol(),
        )
        return Handshake(sock, response)
