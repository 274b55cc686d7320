# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""What every dialer shares: the redirect policy, refusals as errors, the checks of the
server's 101 answer, and the guard that lets ``abort()`` cut a dial in progress.

Each adapter knows only how its library performs one opening handshake; the rules about
what to do with the answer live here, once.
"""

from __future__ import annotations

import contextlib
import email.utils
import socket
import threading
import time
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from typing import Final, TypeVar
from urllib.parse import urljoin

from wsengine._url import url_target, validate_url
from wsengine.errors import ConfigError, HandshakeError

__all__ = [
    "CREDENTIAL_HEADERS",
    "REDIRECT_LIMIT",
    "REDIRECT_STATUSES",
    "DialAborted",
    "DialGuard",
    "Redirect",
    "check_response",
    "extensions_answer",
    "follow_redirects",
    "handshake_time_left",
    "parse_retry_after",
    "refused",
    "without_credentials",
]

#: Redirects followed in a row by default (websocket-client's own default).
REDIRECT_LIMIT: Final = 3
REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
#: Request headers that must not follow a redirect to another origin.
CREDENTIAL_HEADERS: Final = frozenset({"authorization", "cookie", "proxy-authorization"})

T = TypeVar("T")


class Redirect(Exception):
    """A 3xx answer to one handshake, raised by a dialer for :func:`follow_redirects`."""

    def __init__(self, status: int, location: str | None) -> None:
        super().__init__(status)
        self.status = status
        self.location = location


class DialAborted(ConnectionError):
    """``abort()`` cut the dial in progress."""


def handshake_time_left(deadline: float | None) -> float | None:
    """Seconds left of a dial's ``deadline`` (None: no limit), for a socket timeout.

    Raises:
        TimeoutError: the deadline passed.
    """
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out during the opening handshake")
    return left


def follow_redirects(
    url: str, handshake: Callable[[str, bool], T], limit: int = REDIRECT_LIMIT
) -> T:
    """Run ``handshake(target, cross_origin)`` and follow the redirects it raises.

    ``cross_origin`` is True once a hop left the first URL's origin (scheme, host, port):
    from then on the dialer must not send credentials (``Authorization``, ``Cookie``,
    ``Proxy-Authorization``), whatever later hops do. A redirect from ``wss://`` to
    ``ws://`` is refused.

    Raises:
        HandshakeError: a 3xx without ``Location`` (``status`` the 3xx), a ``Location``
            that is not a ws:// or wss:// URL, more than ``limit`` redirects in a row
            (``status`` None: the loop is the failure, not the server's answer), or a
            downgrade to ``ws://``.
    """
    target = url
    cross_origin = False
    hops_left = limit
    while True:
        try:
            return handshake(target, cross_origin)
        except Redirect as redirect:
            status, location = redirect.status, redirect.location
        if not location:
            raise HandshakeError(f"redirect ({status}) without a Location header", status)
        if hops_left <= 0:
            raise HandshakeError(f"too many redirects (last status {status})")
        hops_left -= 1
        try:
            following = validate_url(urljoin(target, location), "redirect Location")
        except ConfigError as error:
            raise HandshakeError(str(error), status) from None
        if url_target(following) != url_target(target):
            if target.lower().startswith("wss:") and not following.lower().startswith("wss:"):
                raise HandshakeError("redirect from wss:// to ws:// refused", status)
            cross_origin = True
        target = following


def without_credentials(headers: Mapping[str, str]) -> dict[str, str]:
    """``headers`` less the credential headers (for a hop to another origin)."""
    return {name: value for name, value in headers.items()
            if name.lower() not in CREDENTIAL_HEADERS}


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header value (delay-seconds or an HTTP
    date); None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def refused(status: int, headers: Mapping[str, str], *, via: str = "server") -> HandshakeError:
    """The error for a handshake answered with HTTP ``status`` (by the server, or by the
    proxy when ``via`` says so). The message never quotes a header value."""
    retry_after = None
    for name, value in headers.items():
        if name.lower() == "retry-after":
            retry_after = parse_retry_after(value)
    return HandshakeError(
        f"{via} rejected the opening handshake with HTTP {status}",
        status=status,
        retry_after=retry_after,
    )


def check_response(
    headers: Mapping[str, str],
    *,
    offered_extensions: Collection[str] = (),
    requested_subprotocols: Collection[str] = (),
) -> None:
    """Check the parts of a 101 answer that libraries let through (RFC 6455 section 4.1).

    Raises:
        HandshakeError: the server named an extension that was not offered, or chose a
            subprotocol that was not requested.
    """
    offered = {offer.lower() for offer in offered_extensions}
    for name, value in headers.items():
        lowered = name.lower()
        if lowered == "sec-websocket-extensions":
            names = {item.split(";")[0].strip().lower() for item in value.split(",")}
            unoffered = sorted(names - offered - {""})
            if unoffered:
                raise HandshakeError(
                    f"the server accepted an extension that was not offered ({unoffered[0]})"
                )
        elif lowered == "sec-websocket-protocol" and value.strip() not in requested_subprotocols:
            raise HandshakeError("the server chose a subprotocol that was not requested")


def extensions_answer(headers: Mapping[str, str]) -> str | None:
    """The server's ``Sec-WebSocket-Extensions`` value(s), joined; None when absent."""
    values = [value for name, value in headers.items()
              if name.lower() == "sec-websocket-extensions" and value.strip()]
    return ", ".join(values) if values else None


class DialGuard:
    """Lets ``abort()`` from another thread cut one dial in progress.

    The dialing thread registers each socket it opens; ``abort()`` shuts them down (the
    dial's blocking calls then fail) and marks the dial aborted, so that a handshake that
    completes anyway is thrown away rather than taking over the adapter.
    """

    def __init__(self) -> None:
        # Guards the two fields below; held for a few statements by the dialing thread
        # (register) and by abort(); never during I/O.
        self._guard_mutex = threading.Lock()
        self._sockets: list[socket.socket] = []
        # Functions returning a socket that may appear later (None until then).
        self._lazy: list[Callable[[], socket.socket | None]] = []
        self.aborted = False

    def register(self, sock: socket.socket) -> None:
        """Note a socket of this dial; if the dial was aborted already, shut it down now.

        Raises:
            DialAborted: the dial was aborted.
        """
        with self._guard_mutex:
            self._sockets.append(sock)
            aborted = self.aborted
        if aborted:
            _shutdown(sock)
            raise DialAborted("the dial was aborted")

    def register_lazy(self, find: Callable[[], socket.socket | None]) -> None:
        """Note where a socket of this dial will appear (``find()`` returns it, or None
        while it does not exist yet), for a library that opens it out of our sight."""
        with self._guard_mutex:
            self._lazy.append(find)

    def abort(self) -> None:
        """Shut down every socket of the dial. Idempotent; safe from any thread."""
        with self._guard_mutex:
            self.aborted = True
            sockets = list(self._sockets)
            lazy = list(self._lazy)
        for find in lazy:
            found = find()
            if found is not None:
                sockets.append(found)
        for sock in sockets:
            _shutdown(sock)


    def forget_after_fork(self) -> None:
        """In a forked child: close this process's copies of the dial's sockets, without
        shutdown (which would cut the parent's dial) and without taking the lock."""
        for sock in [*self._sockets, *(find() for find in self._lazy)]:
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()


def _shutdown(sock: socket.socket) -> None:
    # socket.socket.shutdown even for an SSLSocket: SSLSocket.shutdown drops the SSL
    # object, which the dialing thread may be using right now.
    with contextlib.suppress(OSError, ValueError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
