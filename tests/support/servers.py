# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""A real websockets server on 127.0.0.1, run in a thread for the length of a test."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server, ServerConnection, serve

__all__ = ["WsServer", "echo_handler", "run_ws_server", "server_close_code", "wait_for"]

#: Seconds the server gets to shut down (close connections, join its threads).
SHUTDOWN_DEADLINE = 10.0

Handler = Callable[[ServerConnection], None]


@dataclass
class WsServer:
    """A running websockets server: where to reach it and what it saw."""

    server: Server
    host: str
    port: int
    url: str
    #: Every server connection the handler was called with, in order.
    connections: list[ServerConnection] = field(default_factory=list)


def echo_handler(ws: ServerConnection) -> None:
    """Send every message back with its type (str as TEXT, bytes as BINARY)."""
    try:
        for message in ws:
            ws.send(message)
    except ConnectionClosed:
        pass


@contextmanager
def run_ws_server(handler: Handler, **serve_kwargs: Any) -> Iterator[WsServer]:
    """Run ``websockets.sync.server.serve(handler, "127.0.0.1", 0, **serve_kwargs)``.

    ``serve_forever`` runs in a thread; on exit the server is shut down (open connections
    get a 1001 close, and 1 s to answer unless ``close_timeout`` says otherwise) and the
    thread joined. Raises AssertionError if that takes longer than
    ``SHUTDOWN_DEADLINE`` (a handler that never returns, for instance).

    With ``ssl=`` in ``serve_kwargs`` the URL is ``wss://``.
    """
    connections: list[ServerConnection] = []
    # A client that stops reading must not hold shutdown() for websockets' default 10 s.
    serve_kwargs.setdefault("close_timeout", 1.0)

    def recording_handler(ws: ServerConnection) -> None:
        connections.append(ws)
        handler(ws)

    server = serve(recording_handler, "127.0.0.1", 0, **serve_kwargs)
    host, port = server.socket.getsockname()[:2]
    scheme = "wss" if serve_kwargs.get("ssl") is not None else "ws"
    info = WsServer(server, host, port, f"{scheme}://{host}:{port}/", connections)
    # Set just before shutdown(): websockets 17.0's serve_forever logs the listening
    # socket's name first thing, which raises EBADF if a test that ends at once (a dial
    # refused before it leaves the client) shut the server down before that line ran.
    stopping = threading.Event()

    def serve_until_stopped() -> None:
        try:
            server.serve_forever()
        except OSError:
            if not stopping.is_set():
                raise

    # Owned by this context manager; serve_forever returns once shutdown() closed the
    # listening socket; joined below.
    serve_thread = threading.Thread(
        target=serve_until_stopped, name="test-ws-server", daemon=True
    )
    serve_thread.start()
    try:
        yield info
    finally:
        # shutdown() waits for every handler: run it in a helper thread so that a stuck
        # handler fails the test instead of hanging it.
        stopping.set()
        shutdown_thread = threading.Thread(
            target=server.shutdown, name="test-ws-server-shutdown", daemon=True
        )
        shutdown_thread.start()
        shutdown_thread.join(SHUTDOWN_DEADLINE)
        serve_thread.join(SHUTDOWN_DEADLINE)
        if shutdown_thread.is_alive() or serve_thread.is_alive():
            raise AssertionError("the websockets test server did not shut down in time")


def wait_for(
    predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.005
) -> None:
    """Return once ``predicate()`` is true; raise AssertionError after ``timeout`` seconds.

    The tests' way to wait for a condition another thread brings about.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate!r}")
        time.sleep(interval)


def server_close_code(server: WsServer) -> int | None:
    """The close code the server's first connection received, None until then."""
    return server.connections[0].close_code if server.connections else None
