# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""Plain values exchanged between the engine, adapters and user callbacks."""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

__all__ = [
    "CloseMessage",
    "EngineState",
    "HandshakeResponse",
    "Message",
    "MessageType",
    "StatusCode",
]


class MessageType(enum.IntEnum):
    """Kind of a data message, valued as its RFC 6455 opcode."""

    TEXT = 1
    BINARY = 2


@dataclass(frozen=True, slots=True)
class Message:
    """A whole data message: ``str`` data for TEXT, ``bytes`` for BINARY."""

    type: MessageType
    data: str | bytes


class StatusCode(enum.IntEnum):
    """Close codes registered with IANA (RFC 6455 section 7.4 and its registry)."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    RESERVED = 1004
    NO_STATUS_RCVD = 1005
    ABNORMAL_CLOSURE = 1006
    INVALID_FRAME_PAYLOAD_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE = 1015


def is_sendable_close_code(code: int) -> bool:
    """Tell whether ``code`` may appear in a close frame on the wire.

    1000-1003 and 1007-1014 are defined for endpoints to send, 3000-4999 are for
    libraries and applications; 1004-1006 and 1015 are reserved for reporting only.
    """
    return code in _SENDABLE_CODES or 3000 <= code <= 4999


#: Longest close reason, in UTF-8 bytes, that fits a control frame (RFC 6455 5.5).
MAX_CLOSE_REASON_BYTES = 123


def truncate_close_reason(reason: str) -> str:
    """Cut ``reason`` to at most 123 bytes of UTF-8, at a character boundary."""
    encoded = reason.encode("utf-8", errors="replace")
    if len(encoded) <= MAX_CLOSE_REASON_BYTES:
        return reason
    return encoded[:MAX_CLOSE_REASON_BYTES].decode("utf-8", errors="ignore")


_SENDABLE_CODES = frozenset(
    {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
)


@dataclass(frozen=True, slots=True)
class CloseMessage:
    """A close frame's content: its status code and UTF-8 reason."""

    code: int
    reason: str = ""


class _CaseInsensitiveHeaders(Mapping[str, str]):
    """Read-only header mapping whose look-ups ignore case; iteration keeps the given names."""

    __slots__ = ("_items",)

    def __init__(self, headers: Mapping[str, str] | None = None) -> None:
        self._items: dict[str, tuple[str, str]] = {}
        for name, value in (headers or {}).items():
            self._items[name.lower()] = (name, value)

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()][1]

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        # Header values may carry cookies or tokens: show only the names.
        return f"Headers({sorted(self._items)!r})"


@dataclass(frozen=True)
class HandshakeResponse:
    """The server's answer to the opening handshake.

    ``headers`` looks names up case-insensitively, whatever mapping was given.
    """

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    subprotocol: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.headers, _CaseInsensitiveHeaders):
            object.__setattr__(self, "headers", _CaseInsensitiveHeaders(self.headers))


class EngineState(enum.Enum):
    """Where a :class:`~wsengine.WebsocketEngine` is in its life."""

    IDLE = "idle"
    CONNECTING = "connecting"
    OPEN = "open"
    RECONNECTING = "reconnecting"
    CLOSING = "closing"
    STOPPED = "stopped"
