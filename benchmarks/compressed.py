# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""Receive throughput of a compressed flood: 1 KiB JSON-like TEXT messages sent with
permessage-deflate (issue 12's benchmark row), wsengine against websockets' clients.

A server process of our own answers the handshake with
``permessage-deflate; server_no_context_takeover`` and sends frames compressed once in
advance (each message on its own window, so every client inflates every message), as fast
as the kernel takes them, then a close frame. Each client run gets a fresh connection;
the clients take turns within a repetition, in a rotating order. Every run checks the
count and the last message. Usage, from the repository root::

    python -m benchmarks.compressed [--count 20000] [--reps 5]

Only 127.0.0.1 is used; the server ends when its standard input closes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def messages(count: int) -> list[bytes]:
    """``count`` JSON-like market-data messages of about 1 KiB, as UTF-8."""
    out = []
    for number in range(count):
        book = [{"price": 100 + (number * 7 + level) % 50 / 8, "size": (number + level) % 90}
                for level in range(16)]
        text = json.dumps({"type": "book", "seq": number, "symbol": "XBT-USD",
                           "bids": book, "asks": book[::-1]})
        out.append(text.encode()[:1024].ljust(1024, b" "))
    return out


def compressed_frame(payload: bytes) -> bytes:
    """One server TEXT frame, RSV1 set, deflated on a fresh window."""
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    data = data[:-4]
    size = len(data)
    header = bytes((0xC1, size)) if size < 126 else bytes((0xC1, 126)) + size.to_bytes(2, "big")
    return header + data


def serve(count: int) -> None:
    """The server process: one connection at a time, each sent ``count`` messages."""
    payloads = messages(16)
    frames = [compressed_frame(p) for p in payloads]
    blob = b"".join(frames[i % 16] for i in range(count)) + bytes((0x88, 2)) + b"\x03\xe8"
    listener = socket.create_server(("127.0.0.1", 0))
    print("PORT", listener.getsockname()[1], flush=True)

    def serve_one(conn: socket.socket) -> None:
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                request += chunk
            key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key:"))
            accept = base64.b64encode(hashlib.sha1(key + _GUID.encode()).digest())
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept +
                         b"\r\nSec-WebSocket-Extensions: permessage-deflate; "
                         b"server_no_context_takeover\r\n\r\n")
            conn.sendall(blob)
            conn.settimeout(10)
            try:
                while conn.recv(65536):
                    pass
            except OSError:
                pass

    def accept_loop() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            serve_one(conn)

    # Daemon: ends with the process, when stdin closes.
    threading.Thread(target=accept_loop, daemon=True).start()
    sys.stdin.read()
    listener.close()


def run_wsengine(url: str, count: int, adapter: str) -> float:
    """Seconds for a wsengine engine (workers=1) to receive ``count`` messages."""
    from wsengine import EngineConfig, Message, Session, WebsocketClient, WebsocketEngine

    done = threading.Event()
    seen = {"count": 0, "first": 0.0, "last": b""}

    class Counting(WebsocketClient):
        def on_message(self, session: Session, message: Message) -> None:
            if not seen["count"]:
                seen["first"] = time.perf_counter()
            seen["count"] += 1
            if seen["count"] == count:
                seen["last"] = message.data
                done.set()

    if adapter == "websockets":
        from wsengine.adapters.websockets_sync import WebsocketsAdapter

        made = WebsocketsAdapter(proxy=None)
    else:
        from wsengine.adapters.websocket_client import WebsocketClientAdapter

        made = WebsocketClientAdapter(proxy=None)
    engine = WebsocketEngine(url, Counting(), adapter=made,
                             config=EngineConfig(workers=1, ping_interval=None,
                                                 auto_reconnect=False))
    engine.start()
    try:
        if not done.wait(60):
            raise RuntimeError(f"wsengine got {seen['count']} of {count}")
        elapsed = time.perf_counter() - float(seen["first"])
    finally:
        engine.stop()
    _check(seen["last"], count)
    return elapsed


def run_websockets_async(url: str, count: int) -> float:
    """Seconds for websockets' asyncio client (compression on) to receive them."""
    from websockets.asyncio.client import connect

    async def receive() -> float:
        async with connect(url, compression="deflate", max_size=None,
                           ping_interval=None) as ws:
            first = 0.0
            last: str | bytes = b""
            for index in range(count):
                last = await ws.recv()
                if index == 0:
                    first = time.perf_counter()
            _check(last, count)
            return time.perf_counter() - first

    return asyncio.run(receive())


def _check(last: object, count: int) -> None:
    expected = messages(16)[(count - 1) % 16].decode()
    if last != expected:
        raise RuntimeError("the last message differs from what the server sent")


CLIENTS: dict[str, Callable[[str, int], float]] = {
    "websockets-async": run_websockets_async,
    "wsengine-w1": lambda url, count: run_wsengine(url, count, "websocket-client"),
    "wsengine-ws": lambda url, count: run_wsengine(url, count, "websockets"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        serve(args.serve)
        return 0
    server = subprocess.Popen([sys.executable, "-m", "benchmarks.compressed", "--serve",
                               str(args.count)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        url = f"ws://127.0.0.1:{int(server.stdout.readline().split()[1])}/"
        rates: dict[str, list[float]] = {name: [] for name in CLIENTS}
        names = list(CLIENTS)
        for rep in range(args.reps):
            order = names[rep % len(names):] + names[:rep % len(names)]
            for name in order:
                rates[name].append((args.count - 1) / CLIENTS[name](url, args.count))
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(10)
    reference = statistics.median(rates["websockets-async"])
    print(f"compressed 1 KiB JSON-like TEXT, {args.count} messages, {args.reps} reps "
          "(median msgs/s, min-max, ratio to websockets-async in the same run)")
    print(f"{'client':<18} {'msgs/s':>10} {'min':>10} {'max':>10} {'vs websockets':>14}")
    for name in names:
        median = statistics.median(rates[name])
        print(f"{name:<18} {median:>10,.0f} {min(rates[name]):>10,.0f} "
              f"{max(rates[name]):>10,.0f} {median / reference:>13.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
