# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""The default adapter: websocket-client dials, wsengine's driver speaks the frames.

websocket-client does the opening handshake, TLS and proxies. Its socket is then handed
to :class:`~wsengine.adapters._driver.SocketDriver`, which drives it with wsengine's
protocol core: websocket-client's own frame reader is slow and accepts a text message that
ends in a truncated UTF-8 sequence.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any, Final, cast

import websocket

from wsengine._url import redact_url
from wsengine.adapters._dial import (
    REDIRECT_LIMIT,
    REDIRECT_STATUSES,
    DialGuard,
    Redirect,
    check_response,
    refused,
    without_credentials,
)
from wsengine.adapters._driver import DrivenAdapter, Handshake
from wsengine.adapters.base import check_adapter_arguments
from wsengine.errors import HandshakeError
from wsengine.types import HandshakeResponse

__all__ = ["WebsocketClientAdapter"]

# Options this adapter sets itself when it calls websocket.create_connection.
_RESERVED_OPTIONS: Final = frozenset(
    {"timeout", "skip_utf8_validation", "enable_multithread", "class_"}
)
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
        ConfigError: ``max_size`` is not a positive int or None, a bad ``compression``,
            or an option is one the adapter sets itself (``timeout``,
            ``skip_utf8_validation``, ``enable_multithread``).
    """

    def __init__(
        self,
        max_size: int | None = 2**20,
        *,
        compression: str | Mapping[str, int | bool] | None = "deflate",
        **options: Any,
    ) -> None:
        check_adapter_arguments(max_size, options, _RESERVED_OPTIONS)
        options = dict(options)
        super().__init__(
            max_size, options.pop("redirect_limit", REDIRECT_LIMIT), compression
        )
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
        """One TCP/TLS connection and opening handshake through websocket-client."""
        options = dict(self._options)
        if headers or cross_origin:
            options["header"] = _header_lines(options.get("header"), headers, cross_origin)
        if cross_origin:
            options.pop("cookie", None)
        made: list[websocket.WebSocket] = []

        def make_websocket(**arguments: Any) -> websocket.WebSocket:
            # create_connection builds the WebSocket through this. Its socket appears on
            # ws.sock once TCP is connected, before the handshake: abort() finds it there
            # (a TCP connect that hangs cannot be cut; the dial's timeout ends it).
            ws = websocket.WebSocket(**arguments)
            made.append(ws)
            guard.register_lazy(lambda: ws.sock)
            return ws

        try:
            ws = websocket.create_connection(
                url,
                timeout=timeout,
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
            # With redirect_limit=0, websocket-client raises on a 3xx; its WebSocket still
            # holds the response.
            answer = made[-1].handshake_response if made else None
            if answer is not None and answer.status in REDIRECT_STATUSES:
                raise Redirect(answer.status, (answer.headers or {}).get("location")) from None
            # from None: the original message quotes the response headers.
            raise _dial_error(error) from None
        except BaseException:
            for each in made:
                if each.sock is not None:
                    each.sock.close()
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
