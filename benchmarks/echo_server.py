# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""An echo server for the round-trip, reconnect, stop() and many-engines figures.

Run as its own process::

    python -m benchmarks.echo_server --deadline 60

A ``websockets`` asyncio server on 127.0.0.1 (any number of connections, no compression,
no keepalive pings, so an idle connection stays idle). It prints ``PORT <n>`` on stdout,
then sends every data message back as it came (same type, same payload), except the text
message ``drop``: on that one it drops the TCP connection at once, without a close frame
(``transport.abort()``), as a crashed peer or a lost network would. A close frame from
the client is answered as usual.

It ends by itself when its standard input reaches end of file (the parent closed the
pipe or exited) or after ``--deadline`` seconds, whichever comes first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import threading

__all__ = ["DROP", "main"]

#: The text message on which the server drops the connection.
DROP = "drop"


async def _handler(websocket: object) -> None:
    from websockets.asyncio.server import ServerConnection
    from websockets.exceptions import ConnectionClosed

    assert isinstance(websocket, ServerConnection)
    try:
        async for message in websocket:
            if message == DROP:
                websocket.transport.abort()  # TCP goes now: no close frame, no FIN wait
                return
            await websocket.send(message)
    except ConnectionClosed:
        pass


async def _stdin_closed() -> None:
    """Return when standard input reaches end of file.

    A daemon thread reads it: an executor thread would hold up ``asyncio.run``'s exit
    while stdin stays open.
    """
    loop = asyncio.get_running_loop()
    closed = asyncio.Event()

    def read() -> None:
        with contextlib.suppress(OSError, ValueError):
            while sys.stdin.buffer.read(65536):
                pass
        with contextlib.suppress(RuntimeError):  # the loop is gone: nothing to tell
            loop.call_soon_threadsafe(closed.set)

    threading.Thread(target=read, name="stdin-watch", daemon=True).start()
    await closed.wait()


async def _serve(deadline: float) -> None:
    from websockets.asyncio.server import serve

    async with serve(_handler, "127.0.0.1", 0, compression=None, ping_interval=None,
                     max_size=None, max_queue=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(f"PORT {port}", flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_stdin_closed(), deadline)
        server.close(close_connections=False)
        for connection in list(server.connections):
            connection.transport.abort()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deadline", type=float, default=120.0,
                        help="seconds after which the server ends whatever happens")
    args = parser.parse_args(argv)
    if args.deadline <= 0:
        parser.error("deadline must be > 0")
    asyncio.run(_serve(args.deadline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
