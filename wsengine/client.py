# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""The user's side of the engine: six callbacks with do-nothing defaults."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from wsengine.types import CloseMessage, HandshakeResponse, Message

if TYPE_CHECKING:
    from wsengine.session import Session

__all__ = ["ExitFunction", "WebsocketClient"]

#: The ``exit`` argument of :meth:`WebsocketClient.on_restart_error`: call it to stop
#: retrying and stop the engine for good.
ExitFunction = Callable[[], None]


class WebsocketClient:
    """Subclass and override the callbacks you need; each default does nothing.

    Callbacks run on engine threads, with the engine's OpenTelemetry span for them
    current. An exception raised by a callback is logged with its traceback on the
    ``wsengine`` logger and the engine goes on, except from ``on_open`` (see there).
    """

    def on_open(self, session: Session, response: HandshakeResponse, restarting: bool) -> None:
        """The connection is open. Runs once per (re)connection, before any ``on_message``.

        May send and read on ``session.conn`` directly; ``engine.send()`` from other threads
        raises ``EngineStateError`` until it returns. Raising fails ``start()`` on the
        first start, or counts as a failed attempt when restarting.
        """

    def on_message(self, session: Session, message: Message) -> None:
        """A data message arrived. With ``workers == 1`` calls come one at a time, in
        arrival order; with more workers they may overlap and finish out of order."""

    def on_read_error(self, session: Session, error: Exception) -> None:
        """A read failed but left the connection usable; other reads wait for this call.

        Protocol errors are not read errors: they close the connection (see ``on_close``).
        """

    def on_close(self, session: Session, close: CloseMessage | None) -> CloseMessage | None:
        """The connection closed or is about to be closed; runs once per connection.

        Args:
            close: the peer's close message; ``CloseMessage(1006, ...)`` when the connection
                dropped or the keepalive declared the peer dead; the code the engine sent
                when it failed the connection for a protocol error; None when the engine is
                about to close it (``stop()``, ``session.restart()``, ``session.exit()``).

        Returns:
            The close frame to send when ``close`` is None; None for the default (1000 on
            stop and exit, 1001 on restart). Codes not legal on the wire are replaced by
            the default; a reason over 123 UTF-8 bytes is cut.
        """
        return None

    def on_close_error(self, error: Exception) -> None:
        """Closing the connection (the adapter's ``close()``) raised ``error``."""

    def on_restart_error(self, error: Exception, retry_count: int, exit: ExitFunction) -> None:
        """A reconnection attempt failed.

        Args:
            error: why it failed (dial error, handshake refusal, or ``on_open``'s exception).
            retry_count: failed attempts in a row so far, 1 for the first.
            exit: call it to stop retrying and stop the engine for good.
        """
