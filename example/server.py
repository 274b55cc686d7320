# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""An echo server on ``websockets.sync.server``, run in a background thread."""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server, ServerConnection, serve

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "EchoServer", "echo"]

logger = logging.getLogger("example.server")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765

#: Seconds :meth:`EchoServer.shutdown` waits for the serving thread after the shutdown.
JOIN_TIMEOUT = 5.0


def echo(ws: ServerConnection) -> None:
    """Send every message back as it came (str as TEXT, bytes as BINARY) until it closes.

    Runs on the websockets server's thread for this connection.
    """
    peer = ws.remote_address
    logger.info("connection from %s:%s", peer[0], peer[1])
    echoed = 0
    try:
        for message in ws:
            ws.send(message)
            echoed += 1
    except ConnectionClosed:
        pass  # a dropped client ends the loop like a clean close
    logger.info(
        "connection from %s:%s closed (code %s) after %d echoes",
        peer[0], peer[1], ws.close_code, echoed,
    )


class EchoServer:
    """An echo server bound at construction, serving in a thread from :meth:`start`.

    Args:
        host: address to bind; ``"0.0.0.0"`` listens on every interface (in a container).
        port: port to bind; 0 picks a free one (see :attr:`port`).

    Raises:
        OSError: the address cannot be bound.
    """

    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
        self._server: Server = serve(echo, host, port)
        bound = self._server.socket.getsockname()
        self.host: str = bound[0]
        self.port: int = bound[1]
        # Runs serve_forever(); it returns once shutdown() closed the listening socket,
        # and is joined there.
        self._serve_thread = threading.Thread(
            target=self._server.serve_forever, name="example-server", daemon=True
        )
        self._started = False

    def start(self) -> None:
        """Start accepting connections in the ``example-server`` thread; returns at once."""
        self._serve_thread.start()
        self._started = True
        logger.info("echo server listening on %s:%d", self.host, self.port)

    def shutdown(self) -> None:
        """Stop accepting, close open connections with 1001, wait for their handlers, and
        join the serving thread. Blocks until then; idempotent."""
        if not self._started:
            # websockets' shutdown() waits for serve_forever() to let go of the socket.
            self._serve_thread.start()
            self._started = True
        self._server.shutdown()
        if self._serve_thread.is_alive():
            self._serve_thread.join(JOIN_TIMEOUT)

    def __enter__(self) -> EchoServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()
