# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""wsengine: a thread-based WebSocket client engine built out of callbacks."""

import logging

from wsengine.adapters.base import ConnectionAdapter
from wsengine.client import WebsocketClient
from wsengine.config import EngineConfig
from wsengine.engine import WebsocketEngine
from wsengine.errors import (
    ConfigError,
    ConnectionClosedError,
    EngineStartError,
    EngineStateError,
    HandshakeError,
    ProtocolError,
    WsEngineError,
)
from wsengine.session import Session
from wsengine.types import (
    CloseMessage,
    EngineState,
    HandshakeResponse,
    Message,
    MessageType,
    StatusCode,
)
from wsengine.version import __version__

__all__ = [
    "CloseMessage",
    "ConfigError",
    "ConnectionAdapter",
    "ConnectionClosedError",
    "EngineConfig",
    "EngineStartError",
    "EngineState",
    "EngineStateError",
    "HandshakeError",
    "HandshakeResponse",
    "Message",
    "MessageType",
    "ProtocolError",
    "Session",
    "StatusCode",
    "WebsocketClient",
    "WebsocketEngine",
    "WsEngineError",
    "__version__",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
