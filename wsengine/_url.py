# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""Websocket URL validation and redaction.

Credentials and tokens often ride in the URL (``wss://user:pass@host/?token=...``), so
anything shown to a human or a telemetry backend goes through :func:`redact_url` first,
and the errors raised here show only the redacted form.
"""

from __future__ import annotations

import ipaddress
import unicodedata
from dataclasses import dataclass
from urllib.parse import unquote_plus, urlsplit

from wsengine.errors import ConfigError

__all__ = ["redact_url", "url_target", "validate_url"]

#: Shown in place of a secret.
REDACTED = "REDACTED"

#: Query keys whose values are hidden: a key matches when, lower-cased and percent-decoded,
#: it contains one of these (``access_token``, ``X-Amz-Signature``, ``apiKey``, ...).
SENSITIVE_QUERY_KEY_PARTS = (
    "token", "secret", "sig", "pass", "pwd", "key", "auth", "credential", "session",
    "jwt", "code", "ticket", "nonce",
)

_DEFAULT_PORTS = {"ws": 80, "wss": 443}

#: Shown when a value cannot be parsed well enough to redact it piece by piece.
_UNPARSABLE = "<unparsable URL, REDACTED>"

#: Characters a host name may not contain (delimiters of other URL parts, or of nothing).
_BAD_HOST_CHARS = frozenset('/?#@[]\\<>"{}|^`')


class _InvalidURL(Exception):
    """Internal: why a URL was refused; turned into a ConfigError by the caller."""


@dataclass(frozen=True, slots=True)
class _Target:
    scheme: str
    host: str
    port: int


def validate_url(url: object, field: str = "url") -> str:
    """Check that ``url`` is a ``ws://`` or ``wss://`` URL the engine can dial.

    Refused: anything but ``str``; another scheme; a missing or malformed host; a port that
    is not 1-65535 in digits; a fragment (RFC 6455 section 3); any whitespace or control
    character (a CR or LF would let a URL inject HTTP headers). IPv6 literals in brackets
    (``ws://[::1]:8080/``) are fine.

    Args:
        url: the value to check.
        field: the name given in the error message (``"url"``, or a callable URL's result).

    Returns:
        ``url`` with its scheme lower-cased (some libraries match the scheme exactly).

    Raises:
        ConfigError: ``url`` is refused; the message names ``field`` and shows the URL
            redacted (only the type for a non-``str``).
    """
    if not isinstance(url, str):
        raise ConfigError(
            f"{field} must be a ws:// or wss:// URL string, got a {type(url).__name__}"
        )
    try:
        target = _parse(url)
    except _InvalidURL as exc:
        raise ConfigError(f"{field} is not a valid websocket URL ({exc}): "
                          f"{redact_url(url)!r}") from None
    return target.scheme + url[len(target.scheme):]


def url_target(url: str) -> tuple[str, str, int]:
    """Return ``(scheme, host, port)`` of a websocket URL, for telemetry attributes.

    The scheme and host are lower-cased, an IPv6 host comes without brackets, and the port
    defaults to 80 for ``ws`` and 443 for ``wss``.

    Raises:
        ConfigError: ``url`` is not a valid websocket URL (see :func:`validate_url`).
    """
    validate_url(url)
    target = _parse(url)
    return target.scheme, target.host, target.port


def redact_url(url: str) -> str:
    """Return ``url`` safe to log: no credentials, no sensitive query values, no fragment.

    ``user:pass@`` becomes ``REDACTED:REDACTED@`` (``REDACTED@`` without a password); the
    value of each query parameter whose key contains a word of
    :data:`SENSITIVE_QUERY_KEY_PARTS` becomes ``REDACTED``, keys and order kept, other
    parameters unchanged. Never raises: for a value it cannot take apart it returns a fixed
    placeholder.
    """
    try:
        return _redact(url)
    except Exception:
        return _UNPARSABLE


def _redact(url: str) -> str:
    # Split by hand rather than with urlsplit, which deletes CR, LF and tab (the error
    # would then show a URL other than the one given) and raises on a stray bracket.
    if not isinstance(url, str):
        return _UNPARSABLE
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    rest = rest.partition("#")[0]
    end = len(rest)
    for delimiter in "/?":
        index = rest.find(delimiter)
        if index != -1:
            end = min(end, index)
    netloc, tail = rest[:end], rest[end:]
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        hidden = f"{REDACTED}:{REDACTED}" if ":" in userinfo else REDACTED
        netloc = f"{hidden}@{hostport}"
    path, question, query = tail.partition("?")
    if question:
        query = "&".join(_redact_parameter(p) for p in query.split("&"))
    return f"{scheme}{sep}{netloc}{path}{question}{query}"


def _redact_parameter(parameter: str) -> str:
    key, equals, _ = parameter.partition("=")
    if equals and _is_sensitive(key):
        return f"{key}={REDACTED}"
    return parameter


def _is_sensitive(key: str) -> bool:
    name = unquote_plus(key).lower()
    return any(part in name for part in SENSITIVE_QUERY_KEY_PARTS)


def _parse(url: str) -> _Target:
    if not url:
        raise _InvalidURL("empty")
    # Checked before urlsplit, which silently deletes tabs, CRs and LFs.
    for char in url:
        if char.isspace() or unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            raise _InvalidURL("whitespace or control character")
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _DEFAULT_PORTS:
        raise _InvalidURL("it must start with ws:// or wss://")
    try:
        parts = urlsplit(url)
    except ValueError:
        # Its message may quote parts of the URL: keep it out of ours.
        raise _InvalidURL("malformed host") from None
    if parts.fragment or url.endswith("#"):
        raise _InvalidURL("a fragment is not allowed; escape '#' as %23")
    hostport = parts.netloc.rpartition("@")[2]
    host, port = _split_hostport(hostport)
    return _Target(scheme, host, _DEFAULT_PORTS[scheme] if port is None else port)


def _split_hostport(hostport: str) -> tuple[str, int | None]:
    if hostport.startswith("["):
        literal, bracket, rest = hostport[1:].partition("]")
        if not bracket:
            raise _InvalidURL("unclosed '[' in the host")
        address = literal.partition("%25")[0]  # zone id, RFC 6874
        try:
            ipaddress.IPv6Address(address)
        except ValueError:
            raise _InvalidURL("bad IPv6 literal") from None
        host = literal
        if rest and not rest.startswith(":"):
            raise _InvalidURL("junk after the IPv6 literal")
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text_or_empty = hostport.partition(":")
        port_text = port_text_or_empty if colon else None
        if any(char in _BAD_HOST_CHARS for char in host):
            raise _InvalidURL("bad character in the host")
    if not host:
        raise _InvalidURL("no host")
    if port_text is None:
        return host.lower(), None
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise _InvalidURL("the port must be 1-65535")
    return host.lower(), int(port_text)
