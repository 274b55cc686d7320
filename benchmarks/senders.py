# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""Send-figure clients, one run per process::

    python -m benchmarks.senders --client wsengine --threads 4 --size 32 --count 200000 \\
        --url ws://127.0.0.1:PORT/

Each run opens one connection to :mod:`benchmarks.count_server`, then ``--threads``
threads (released together by a barrier) send ``--count / --threads`` BINARY messages of
``--size`` bytes each (:func:`~benchmarks.count_server.send_payload` of their thread
number, the same bytes every time, so nothing but the send is timed). The clock starts
when the threads are released and stops when the server's ``done <n>`` message arrives,
i.e. when the server has counted every frame: what is measured is delivered messages,
not messages queued in a buffer. The run prints one JSON line: ``{"client", "messages",
"seconds", "cpu_seconds", "done"}``, ``{"unavailable": reason}`` or ``{"error": reason}``.
A watchdog ends the process after ``--timeout`` seconds.

Clients: ``raw`` (websocket-client ``ws.send_binary`` loop; with several threads its own
send lock serialises them), ``picows`` (``transport.send`` in one asyncio task, waiting on
``pause_writing``/``resume_writing`` flow control; one thread only), ``wsengine``
(``engine.send``), ``wsengine-session`` (``session.send``) and ``wsengine-ws``
(``engine.send`` over the websockets adapter). None negotiates compression: the server
accepts no extension.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from benchmarks.count_server import send_payload

__all__ = ["SENDERS", "main"]

#: Bound on waiting for the server's "done" after the last send, and on opening.
WAIT = 30.0

#: A send run: (url, size, count, threads) -> (seconds, cpu seconds, the server's "done").
Sender = Callable[[str, int, int, int], tuple[float, float, str]]


def _threaded(send_for: Callable[[int], Callable[[bytes], Any]], size: int, count: int,
              threads: int) -> tuple[float, float]:
    """Run ``threads`` threads, each calling ``send_for(i)`` with its payload
    ``count // threads`` times; return (start perf_counter, start process_time)."""
    per_thread = count // threads
    barrier = threading.Barrier(threads + 1, timeout=WAIT)
    errors: list[BaseException] = []

    def work(index: int) -> None:
        send = send_for(index)
        payload = send_payload(size, index)
        try:
            barrier.wait()
            for _ in range(per_thread):
                send(payload)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(i,), name=f"sender-{i}", daemon=True)
               for i in range(threads)]
    for worker in workers:
        worker.start()
    started, cpu_started = time.perf_counter(), time.process_time()
    barrier.wait()
    for worker in workers:
        worker.join(WAIT * 4)
    if errors:
        raise errors[0]
    return started, cpu_started


def _raw(url: str, size: int, count: int, threads: int) -> tuple[float, float, str]:
    import websocket

    ws = websocket.create_connection(url, timeout=WAIT)
    try:
        started, cpu_started = _threaded(lambda _i: ws.send_binary, size, count, threads)
        done = ws.recv()
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        ws.close()
    finally:
        ws.shutdown()  # type: ignore[no-untyped-call]
    return elapsed, cpu, str(done)


def _picows(url: str, size: int, count: int, threads: int) -> tuple[float, float, str]:
    import asyncio

    from picows import WSListener, WSMsgType, ws_connect

    if threads != 1:
        raise ValueError("picows sends from its event loop's one thread")

    async def run() -> tuple[float, float, str]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[str] = loop.create_future()
        writable = asyncio.Event()
        writable.set()

        class Listener(WSListener):  # type: ignore[misc]
            def on_ws_frame(self, transport: Any, frame: Any) -> None:
                if frame.msg_type == WSMsgType.TEXT and not done.done():
                    done.set_result(frame.get_payload_as_ascii_text())
                elif frame.msg_type == WSMsgType.CLOSE:
                    transport.disconnect()

            def pause_writing(self) -> None:
                writable.clear()

            def resume_writing(self) -> None:
                writable.set()

        transport, _ = await asyncio.wait_for(ws_connect(Listener, url), WAIT)
        payload = send_payload(size, 0)
        send, binary = transport.send, WSMsgType.BINARY
        started, cpu_started = time.perf_counter(), time.process_time()
        for _ in range(count):
            send(binary, payload)
            if not writable.is_set():
                await writable.wait()
        text = await asyncio.wait_for(done, WAIT)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        transport.send_close()
        await asyncio.wait_for(transport.wait_disconnected(), WAIT)
        return elapsed, cpu, text

    return asyncio.run(run())


def _engine(method: str, adapter_name: str | None = None) -> Sender:
    def run(url: str, size: int, count: int, threads: int) -> tuple[float, float, str]:
        from wsengine import EngineConfig, Message, Session, WebsocketClient, WebsocketEngine

        adapter = None
        if adapter_name == "websockets":
            module = importlib.import_module("wsengine.adapters.websockets_sync")
            adapter = module.WebsocketsAdapter(max_size=None)
        done = threading.Event()
        box: list[str] = []

        class Done(WebsocketClient):
            def on_message(self, session: Session, message: Message) -> None:
                box.append(str(message.data))
                done.set()

        config = EngineConfig(workers=1, auto_reconnect=False, ping_interval=None)
        engine = WebsocketEngine(url, Done(), adapter=adapter, config=config)
        engine.start(timeout=WAIT)
        try:
            session = engine.session
            assert session is not None
            target = engine if method == "engine" else session
            started, cpu_started = _threaded(lambda _i: target.send, size, count, threads)
            if not done.wait(WAIT):
                raise TimeoutError("the server's done did not arrive")
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        finally:
            engine.stop(timeout=10)
        return elapsed, cpu, box[0]
    return run


def _check_raw() -> None:
    import websocket  # noqa: F401


def _check_picows() -> None:
    import picows  # noqa: F401


def _check_engine(adapter_name: str | None = None) -> Callable[[], None]:
    def check() -> None:
        import wsengine  # noqa: F401

        importlib.import_module("wsengine.adapters.websockets_sync" if adapter_name
                                else "wsengine.adapters.websocket_client")
    return check


#: name -> (sender, import check, most threads it takes)
SENDERS: dict[str, tuple[Sender, Callable[[], None], int]] = {
    "raw": (_raw, _check_raw, 64),
    "picows": (_picows, _check_picows, 1),
    "wsengine": (_engine("engine"), _check_engine(), 64),
    "wsengine-session": (_engine("session"), _check_engine(), 64),
    "wsengine-ws": (_engine("engine", "websockets"), _check_engine("websockets"), 64),
}


def _start_watchdog(seconds: float) -> None:
    def expire() -> None:
        print(json.dumps({"error": f"watchdog: no result after {seconds:g} s"}), flush=True)
        os._exit(3)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one send-figure client run")
    parser.add_argument("--client", choices=sorted(SENDERS), required=True)
    parser.add_argument("--url")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--count", type=int, default=10_000, help="messages in all")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--check", action="store_true", help="only try the imports")
    args = parser.parse_args(argv)
    sender, check, most = SENDERS[args.client]
    try:
        check()
    except ImportError as exc:
        print(json.dumps({"unavailable": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 0
    if args.check:
        print(json.dumps({"available": True}), flush=True)
        return 0
    if not args.url or not 1 <= args.threads <= most or args.count < args.threads:
        parser.error(f"--url is required; --threads 1..{most}; --count >= --threads")
    _start_watchdog(args.timeout)
    count = args.count // args.threads * args.threads
    try:
        seconds, cpu, done = sender(args.url, args.size, count, args.threads)
        result: dict[str, Any] = {"client": args.client, "messages": count,
                                  "seconds": seconds, "cpu_seconds": cpu, "done": done}
    except ImportError as exc:
        result = {"unavailable": f"{type(exc).__name__}: {exc}"}
    except Exception as exc:  # reported to the parent, which shows it in the table
        result = {"error": f"{type(exc).__name__}: {exc}"}
    result["threads_left"] = sorted(
        t.name for t in threading.enumerate()
        if t is not threading.main_thread() and not isinstance(t, threading.Timer)
    )
    print(json.dumps(result), flush=True)
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
