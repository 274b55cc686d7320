# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""Exceptions raised by wsengine.

The hierarchy::

    WsEngineError
    ├── ConfigError (also a ValueError)
    ├── EngineStartError
    ├── EngineStateError
    ├── HandshakeError          (the server refused or botched the opening handshake)
    └── ConnectionClosedError
        └── ProtocolError       (the peer broke RFC 6455; ``code`` is the code sent)

Timeouts raise the built-in :class:`TimeoutError`.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ConnectionClosedError",
    "EngineStartError",
    "EngineStateError",
    "HandshakeError",
    "ProtocolError",
    "WsEngineError",
]


class WsEngineError(Exception):
    """Base class of every error raised by wsengine."""


class ConfigError(WsEngineError, ValueError):
    """A bad argument or configuration value; the message names the field."""


class EngineStartError(WsEngineError):
    """``start()`` failed; the cause is chained as ``__cause__``."""


class EngineStateError(WsEngineError):
    """The engine's state forbids the operation (e.g. ``send()`` with no open session)."""


class ConnectionClosedError(WsEngineError):
    """The connection is closed; ``code`` and ``reason`` tell how.

    ``code`` is the peer's close code, 1006 when the connection dropped without a close
    frame, or the code the engine sent when it failed the connection itself.
    """

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"connection closed: {self.code} {self.reason}".rstrip()


class ProtocolError(ConnectionClosedError):
    """The peer violated RFC 6455; the connection was failed with ``code``
    (1002 framing, 1007 invalid UTF-8, 1009 message too big)."""


class HandshakeError(WsEngineError):
    """The opening handshake failed; ``status`` is the HTTP status when one came.

    ``retry_after`` holds the seconds of a ``Retry-After`` header, when the server sent one.
    Header values are never included in the message.
    """

    def __init__(self, message: str, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
