# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""A slow consumer against a fast feed (issue 11's benchmark scenario).

A websockets server in a process of its own sends 2,000 messages a second for 10 s and
pings every 0.5 s, closing with 1011 when a pong is more than 1 s late. The client's
``on_message`` takes 5 ms (200 messages a second at most, one worker), so the backlog
grows by about 1,800 messages a second. For each ``overflow`` policy the table says
whether the connection survived (and when it was lost), how many messages were delivered
and dropped against how many were sent, and how much the process's resident memory grew.
Usage, from the repository root::

    python -m benchmarks.slow_consumer [--seconds 10] [--rate 2000]

Only 127.0.0.1 is used; the server ends after one connection per policy.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def serve(seconds: float, rate: int, connections: int) -> None:
    """The server process: each connection gets ``rate`` messages/s for ``seconds``."""
    from websockets.asyncio.server import serve as ws_serve
    from websockets.exceptions import ConnectionClosed

    async def handler(ws: object) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        sent = 0
        batch = max(1, rate // 100)
        try:
            while loop.time() - started < seconds:
                for _ in range(batch):
                    await ws.send(f"{sent:08d}" + "x" * 92)  # type: ignore[attr-defined]
                    sent += 1
                await asyncio.sleep(0.01)
            await ws.close()  # type: ignore[attr-defined]
            print(f"SENT {sent} KEPT", flush=True)
        except ConnectionClosed as closed:
            print(f"SENT {sent} LOST {loop.time() - started:.1f} {closed.rcvd or closed.sent}",
                  flush=True)

    async def main() -> None:
        done = asyncio.Event()
        count = 0

        async def counted(ws: object) -> None:
            nonlocal count
            await handler(ws)
            count += 1
            if count >= connections:
                done.set()

        async with ws_serve(counted, "127.0.0.1", 0, ping_interval=0.5, ping_timeout=1.0,
                            compression=None) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            print("PORT", port, flush=True)
            await asyncio.wait_for(done.wait(), seconds * connections * 3 + 30)

    asyncio.run(main())


def rss_mib() -> float:
    """This process's resident memory, in MiB (Linux)."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * 4096 / 2**20


def run_policy(url: str, policy: str, seconds: float) -> dict[str, object]:
    """One engine with ``overflow=policy`` and a 5 ms callback, for the server's run."""
    from wsengine import (
        CloseMessage,
        EngineConfig,
        Message,
        Session,
        WebsocketClient,
        WebsocketEngine,
    )

    delivered = [0]
    in_order = [True]
    last = [-1]
    closed: list[tuple[float, int]] = []
    began = time.monotonic()
    peak = [rss_mib()]
    start_rss = peak[0]

    class Slow(WebsocketClient):
        def on_message(self, session: Session, message: Message) -> None:
            threading.Event().wait(0.005)  # a 5 ms callback: a database write, say
            number = int(str(message.data)[:8])
            in_order[0] = in_order[0] and number > last[0]
            last[0] = number
            delivered[0] += 1
            if delivered[0] % 100 == 0:
                peak[0] = max(peak[0], rss_mib())

        def on_close(self, session: Session, close: CloseMessage | None) -> None:
            closed.append((time.monotonic() - began, close.code if close else 0))

    config = EngineConfig(workers=1, queue_size=16, overflow=policy,  # type: ignore[arg-type]
                          auto_reconnect=False, ping_interval=None, stop_timeout=2.0)
    engine = WebsocketEngine(url, Slow(), config=config)
    engine.start()
    engine.wait(seconds + 30)
    engine.stop()
    return {
        "delivered": delivered[0], "dropped": engine.dropped, "in_order": in_order[0],
        "closed": closed, "rss_growth": peak[0] - start_rss,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--connections", type=int, default=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.seconds, args.rate, args.connections)
        return 0
    policies = ["block", "drop_oldest", "drop_newest"]
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.slow_consumer", "--serve", "--seconds",
         str(args.seconds), "--rate", str(args.rate), "--connections", str(len(policies))],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    url = f"ws://127.0.0.1:{int(server.stdout.readline().split()[1])}/"
    print(f"slow consumer: 5 ms on_message, 1 worker, queue_size 16, max_size 1 MiB; the "
          f"server sends {args.rate} msgs/s for {args.seconds:.0f} s and closes when a pong "
          "is 1 s late")
    print(f"{'overflow':<12} {'connection':<26} {'sent':>7} {'delivered':>9} {'dropped':>8} "
          f"{'delivered+dropped':>17} {'in order':>8} {'RSS growth':>10}")
    try:
        for policy in policies:
            result = run_policy(url, policy, args.seconds)
            report = server.stdout.readline().split()
            sent = int(report[1])
            if report[2] == "KEPT":
                connection = "kept to the end"
            else:
                connection = f"lost after {report[3]} s ({report[4]})"
            total = int(result["delivered"]) + int(result["dropped"])  # type: ignore[call-overload]
            print(f"{policy:<12} {connection:<26} {sent:>7} {result['delivered']:>9} "
                  f"{result['dropped']:>8} {total:>17} {result['in_order']!s:>8} "
                  f"{float(result['rss_growth']):>7.1f} MiB")  # type: ignore[arg-type]
    finally:
        server.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
