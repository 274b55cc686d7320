# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""Benchmark clients, one per process run::

    python -m benchmarks.clients --client raw --url ws://127.0.0.1:PORT/ --count N
    python -m benchmarks.clients --client wsengine-w1 --check
    python -m benchmarks.clients --client wsengine-w1 --pause-samples 200 --url ...

Each run prints one JSON line on stdout: ``{"client", "messages", "seconds", "last"}``
for a throughput run (the clock starts before the connection is opened and stops at the
``count``-th message; ``last`` describes that message so the parent can check it),
``{"unavailable": reason}`` when the client's library cannot be imported, or
``{"error": reason}``. A watchdog ends the process after ``--timeout`` seconds whatever
happens, so no run outlives its budget.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import itertools
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["CLIENTS", "main"]

#: A throughput run: (url, count) -> (messages, seconds, the count-th message).
Runner = Callable[[str, int], tuple[int, float, str | bytes]]

#: CPU seconds (``time.process_time()``, all threads of the client) over the timed part of
#: a throughput run, set by every runner: unlike the rate, it hardly moves when other
#: processes take the machine's cores, so it compares code paths when the rates are noisy.
_cpu_used: float | None = None


def _cpu_since(started: float) -> None:
    global _cpu_used
    _cpu_used = time.process_time() - started


def _raw(url: str, count: int, **options: Any) -> tuple[int, float, str | bytes]:
    import websocket

    started = time.perf_counter()
    cpu_started = time.process_time()
    # websocket-client defaults: a blocking socket, UTF-8 validated in pure Python unless
    # wsaccel is installed.
    ws = websocket.create_connection(url, **options)
    try:
        received = 0
        last: str | bytes = b""
        while received < count:
            last = ws.recv()
            if not last:  # "" is what recv() returns for the close frame
                break
            received += 1
        elapsed = time.perf_counter() - started
        _cpu_since(cpu_started)
        while ws.recv():  # drain to the server's close; recv() answers it
            pass
    finally:
        ws.shutdown()  # type: ignore[no-untyped-call]
    return received, elapsed, last


class DropExporter:
    """A span exporter that counts the spans it is given and drops them: the OTel figures
    measure making spans, not shipping them."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


#: Queue bound of the BatchSpanProcessor: large enough that no span is dropped in a run
#: (a dropped span is cheaper than an exported one, which would flatter the faster client).
OTEL_MAX_QUEUE = 2**20


class _OtelSdk:
    """The SDK set-up shared by ``raw-otel`` and ``wsengine-otel``: a global
    TracerProvider, AlwaysOn sampler, BatchSpanProcessor feeding a :class:`DropExporter`."""

    def __init__(self) -> None:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON

        self.exporter = DropExporter()
        self.provider = TracerProvider(sampler=ALWAYS_ON)
        self.provider.add_span_processor(BatchSpanProcessor(
            self.exporter,  # type: ignore[arg-type]
            max_queue_size=OTEL_MAX_QUEUE, max_export_batch_size=512,
        ))
        trace.set_tracer_provider(self.provider)

    def finish(self) -> int:
        """Flush and shut the provider down; return how many spans were exported."""
        self.provider.shutdown()
        return self.exporter.spans


#: Spans exported in an OTel run (reported beside the result), set by the OTel runners.
_spans_exported: int | None = None


def _raw_otel(url: str, count: int) -> tuple[int, float, str | bytes]:
    """The raw loop with one SDK span per message, current while the message is handled,
    carrying the same two attributes as wsengine's ``wsengine.receive`` span."""
    global _spans_exported
    import websocket
    from opentelemetry import trace

    sdk = _OtelSdk()
    tracer = trace.get_tracer("benchmarks.raw")
    start_span = tracer.start_as_current_span
    started = time.perf_counter()
    cpu_started = time.process_time()
    ws = websocket.create_connection(url)
    try:
        received = 0
        last: str | bytes = b""
        while received < count:
            data = ws.recv()
            if not data:
                break
            with start_span("receive", attributes={
                "wsengine.message.type": "TEXT" if isinstance(data, str) else "BINARY",
                "wsengine.message.size": len(data),
            }):
                last = data
                received += 1
        elapsed = time.perf_counter() - started
        _cpu_since(cpu_started)
        while ws.recv():
            pass
    finally:
        ws.shutdown()  # type: ignore[no-untyped-call]
    _spans_exported = sdk.finish()
    return received, elapsed, last


def _wsapp(url: str, count: int) -> tuple[int, float, str | bytes]:
    import websocket

    state: dict[str, Any] = {"received": 0, "elapsed": 0.0, "last": b""}

    def on_message(_ws: websocket.WebSocketApp, message: str | bytes) -> None:
        state["received"] += 1
        if state["received"] == count:
            state["elapsed"] = time.perf_counter() - started
            _cpu_since(cpu_started)
            state["last"] = message

    app = websocket.WebSocketApp(url, on_message=on_message)
    started = time.perf_counter()
    cpu_started = time.process_time()
    app.run_forever()  # returns when the server closes
    return state["received"], state["elapsed"], state["last"]


def _websockets(url: str, count: int) -> tuple[int, float, str | bytes]:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    started = time.perf_counter()
    cpu_started = time.process_time()
    elapsed: float | None = None
    received = 0
    last: str | bytes = b""
    with connect(url, max_size=None) as ws:
        try:
            while received < count:
                last = ws.recv()
                received += 1
            elapsed = time.perf_counter() - started
            _cpu_since(cpu_started)
            while True:  # drain to the server's close
                ws.recv(timeout=10)
        except (ConnectionClosed, TimeoutError):
            pass
    if elapsed is None:
        elapsed = time.perf_counter() - started
        _cpu_since(cpu_started)
    return received, elapsed, last


def _websockets_async(url: str, count: int) -> tuple[int, float, str | bytes]:
    """websockets' asyncio client (``websockets.asyncio.client.connect``); it offers
    permessage-deflate, which the flood server declines."""
    import asyncio

    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    async def run() -> tuple[int, float, str | bytes]:
        started = time.perf_counter()
        cpu_started = time.process_time()
        elapsed: float | None = None
        received = 0
        last: str | bytes = b""
        async with connect(url, max_size=None) as ws:
            try:
                while received < count:
                    last = await ws.recv()
                    received += 1
                elapsed = time.perf_counter() - started
                _cpu_since(cpu_started)
                while True:  # drain to the server's close
                    await asyncio.wait_for(ws.recv(), 10)
            except (ConnectionClosed, TimeoutError):
                pass
        if elapsed is None:
            elapsed = time.perf_counter() - started
            _cpu_since(cpu_started)
        return received, elapsed, last

    return asyncio.run(run())


def _aiohttp(url: str, count: int) -> tuple[int, float, str | bytes]:
    """aiohttp's client (``ClientSession.ws_connect``, its defaults: it offers
    permessage-deflate, which the flood server declines)."""
    import asyncio

    import aiohttp

    async def run() -> tuple[int, float, str | bytes]:
        data_types = (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY)
        started = time.perf_counter()
        cpu_started = time.process_time()
        elapsed: float | None = None
        received = 0
        last: str | bytes = b""
        async with aiohttp.ClientSession() as http, \
                http.ws_connect(url, max_msg_size=0) as ws:
            while received < count:
                message = await ws.receive()
                if message.type not in data_types:
                    break
                last = message.data
                received += 1
            elapsed = time.perf_counter() - started
            _cpu_since(cpu_started)
            while received == count:  # drain to the server's close; receive() answers it
                message = await ws.receive(timeout=10)
                if message.type not in data_types:
                    break
        return received, elapsed, last

    return asyncio.run(run())


def _picows(url: str, count: int) -> tuple[int, float, str | bytes]:
    """picows (Cython, asyncio): ``on_ws_frame`` per frame, each payload turned into what
    the other clients hand over (``str`` for TEXT, ``bytes`` for BINARY), so that every
    client delivers the same values. The default asyncio event loop; no compression
    (picows has none)."""
    import asyncio

    from picows import WSListener, WSMsgType, ws_connect

    state: dict[str, Any] = {"received": 0, "elapsed": 0.0, "last": b""}

    async def run() -> None:
        text, binary, close = WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CLOSE

        class Listener(WSListener):  # type: ignore[misc]
            def on_ws_frame(self, transport: Any, frame: Any) -> None:
                kind = frame.msg_type
                if kind == text:
                    data: str | bytes = frame.get_payload_as_utf8_text()
                elif kind == binary:
                    data = frame.get_payload_as_bytes()
                else:
                    if kind == close:
                        transport.send_close(frame.get_close_code())
                        transport.disconnect()
                    return
                received = state["received"] = state["received"] + 1
                if received == count:
                    state["elapsed"] = time.perf_counter() - started
                    _cpu_since(cpu_started)
                    state["last"] = data

        transport, _ = await ws_connect(Listener, url, max_frame_size=2**31)
        await asyncio.wait_for(transport.wait_disconnected(), _budget)

    started = time.perf_counter()
    cpu_started = time.process_time()
    asyncio.run(run())
    if state["received"] < count:
        state["elapsed"] = time.perf_counter() - started
    return state["received"], state["elapsed"], state["last"]


def _engine_parts(workers: int, adapter_name: str | None) -> tuple[Any, Any]:
    """Import wsengine and build the adapter; raises ImportError if not available."""
    from wsengine import EngineConfig

    config = EngineConfig(workers=workers, auto_reconnect=False, ping_interval=None)
    adapter = None
    # Imported by name so that --check reports a missing adapter module as "not available".
    if adapter_name is None:
        importlib.import_module("wsengine.adapters.websocket_client")  # the default one
    elif adapter_name == "websockets":
        module = importlib.import_module("wsengine.adapters.websockets_sync")
        adapter = module.WebsocketsAdapter(max_size=None)
    return config, adapter


class _Counting:
    """Builds a WebsocketClient subclass whose on_message counts and signals the target."""

    def __init__(self, target: int) -> None:
        from wsengine import Message, Session, WebsocketClient

        self.target = target
        self.reached = threading.Event()
        self.last: str | bytes = b""
        self.reached_at = 0.0
        self.reached_cpu = 0.0
        # next() on itertools.count is atomic under the GIL: no lock on the hot path.
        self.counter = itertools.count(1)
        self.delivered = 0
        outer = self

        class Client(WebsocketClient):
            def on_message(self, session: Session, message: Message) -> None:
                n = next(outer.counter)
                outer.delivered = n
                if n == outer.target:
                    outer.reached_at = time.perf_counter()
                    outer.reached_cpu = time.process_time()
                    outer.last = message.data
                    outer.reached.set()

        self.client = Client()


def _engine_runner(workers: int, adapter_name: str | None = None,
                   telemetry: str | None = None) -> Runner:
    """A wsengine throughput run; ``telemetry``: None (the default, no SDK), ``"sdk"``
    (:class:`_OtelSdk`) or ``"noop"`` (NoOp tracer and meter providers set globally)."""
    def run(url: str, count: int) -> tuple[int, float, str | bytes]:
        global _spans_exported, _cpu_used
        from wsengine import WebsocketEngine

        sdk = None
        if telemetry == "sdk":
            sdk = _OtelSdk()
        elif telemetry == "noop":
            from opentelemetry import metrics, trace

            trace.set_tracer_provider(trace.NoOpTracerProvider())
            metrics.set_meter_provider(metrics.NoOpMeterProvider())
        config, adapter = _engine_parts(workers, adapter_name)
        counting = _Counting(count)
        engine = WebsocketEngine(url, counting.client, adapter=adapter, config=config)
        started = time.perf_counter()
        cpu_started = time.process_time()
        engine.start(timeout=10)
        try:
            counting.reached.wait(_budget)
        finally:
            engine.stop(timeout=5)
            engine.wait(5)
        if sdk is not None:
            _spans_exported = sdk.finish()
        if not counting.reached.is_set():
            return counting.delivered, time.perf_counter() - started, b""
        # Not counting.delivered: with several workers its last write may be an earlier n.
        _cpu_used = counting.reached_cpu - cpu_started
        return count, counting.reached_at - started, counting.last
    return run


def _check_engine(workers: int, adapter_name: str | None = None) -> Callable[[], None]:
    def check() -> None:
        from wsengine import WebsocketEngine  # noqa: F401

        _engine_parts(workers, adapter_name)
    return check


def _check_websocket_client() -> None:
    import websocket  # noqa: F401


def _check_websockets() -> None:
    import websockets.sync.client  # noqa: F401


def _check_websockets_async() -> None:
    import websockets.asyncio.client  # noqa: F401


def _check_aiohttp() -> None:
    import aiohttp  # noqa: F401


def _check_picows() -> None:
    import picows  # noqa: F401


def _check_otel() -> None:
    import opentelemetry.sdk.trace  # noqa: F401


def _check_engine_otel() -> None:
    _check_engine(1)()
    _check_otel()


#: name -> (throughput runner, import check, has the pause-latency run)
CLIENTS: dict[str, tuple[Runner, Callable[[], None], bool]] = {
    "raw": (_raw, _check_websocket_client, False),
    "raw-noutf8": (lambda url, count: _raw(url, count, skip_utf8_validation=True),
                   _check_websocket_client, False),
    "wsapp": (_wsapp, _check_websocket_client, False),
    "websockets": (_websockets, _check_websockets, False),
    "websockets-async": (_websockets_async, _check_websockets_async, False),
    "aiohttp": (_aiohttp, _check_aiohttp, False),
    "picows": (_picows, _check_picows, False),
    "wsengine-w1": (_engine_runner(1), _check_engine(1), True),
    "wsengine-w4": (_engine_runner(4), _check_engine(4), True),
    "wsengine-ws": (_engine_runner(1, "websockets"), _check_engine(1, "websockets"), True),
    # The OpenTelemetry figure: SDK on (spans per message) and the two no-SDK baselines.
    "raw-otel": (_raw_otel, _check_otel, False),
    "wsengine-otel": (_engine_runner(1, telemetry="sdk"), _check_engine_otel, False),
    "wsengine-noop": (_engine_runner(1, telemetry="noop"), _check_engine(1), False),
}

#: Seconds a run may take; set from --timeout (the watchdog's limit, minus a margin).
_budget = 60.0


def _workers_and_adapter(name: str) -> tuple[int, str | None]:
    return {"wsengine-w1": (1, None), "wsengine-w4": (4, None),
            "wsengine-ws": (1, "websockets")}[name]


def _pause_latency(name: str, url: str, samples: int, interval: float) -> dict[str, Any]:
    """Time ``engine.pause_lock.acquire()`` ``samples`` times, ``interval`` apart."""
    from wsengine import WebsocketEngine

    workers, adapter_name = _workers_and_adapter(name)
    config, adapter = _engine_parts(workers, adapter_name)
    counting = _Counting(1000)  # "reached" once the flood is under way
    engine = WebsocketEngine(url, counting.client, adapter=adapter, config=config)
    spacing = threading.Event()  # never set: an interruptible stand-in for sleep
    waits: list[float] = []
    timeouts = 0
    delivered_while_held = 0
    most_in_one_hold = 0
    engine.start(timeout=10)
    try:
        counting.reached.wait(0.5)  # against the silent server nothing comes: go on
        for _ in range(samples):
            spacing.wait(interval)
            if not engine.running:
                break
            began = time.perf_counter()
            acquired = engine.pause_lock.acquire(timeout=5)
            waits.append(time.perf_counter() - began)
            if not acquired:
                timeouts += 1
                continue
            try:
                before = counting.delivered
                spacing.wait(0.001)  # hold briefly: does delivery really pause?
                during = counting.delivered - before
                delivered_while_held += during
                most_in_one_hold = max(most_in_one_hold, during)
            finally:
                engine.pause_lock.release()
        still_running = engine.running
    finally:
        engine.stop(timeout=5)
        engine.wait(5)
    waits_ms = sorted(w * 1000 for w in waits)
    if not waits_ms:
        return {"error": "the engine stopped before any sample"}
    quantiles = statistics.quantiles(waits_ms, n=100, method="inclusive")
    return {
        "client": name, "samples": len(waits_ms), "p50_ms": quantiles[49],
        "p99_ms": quantiles[98], "max_ms": waits_ms[-1], "timeouts": timeouts,
        "messages": counting.delivered, "delivered_while_held": delivered_while_held,
        "most_in_one_hold": most_in_one_hold,
        "running_to_the_end": still_running,
    }


def describe_message(data: str | bytes) -> dict[str, Any]:
    """Type, size and digest of a message, to check that it arrived intact."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    return {"type": "text" if isinstance(data, str) else "binary", "size": len(raw),
            "sha1": hashlib.sha1(raw).hexdigest()}


def _start_watchdog(seconds: float) -> None:
    def expire() -> None:
        print(json.dumps({"error": f"watchdog: no result after {seconds:g} s"}), flush=True)
        os._exit(3)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


def main(argv: list[str] | None = None) -> int:
    global _budget
    parser = argparse.ArgumentParser(description="one benchmark client run")
    parser.add_argument("--client", choices=sorted(CLIENTS), required=True)
    parser.add_argument("--url")
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--check", action="store_true", help="only try the imports")
    parser.add_argument("--pause-samples", type=int, default=0)
    parser.add_argument("--pause-interval", type=float, default=0.005)
    args = parser.parse_args(argv)
    runner, check, is_engine = CLIENTS[args.client]
    try:
        check()
    except ImportError as exc:
        print(json.dumps({"unavailable": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 0
    if args.check:
        print(json.dumps({"available": True}), flush=True)
        return 0
    if not args.url:
        parser.error("--url is required")
    _budget = max(1.0, args.timeout - 5)
    _start_watchdog(args.timeout)
    try:
        if args.pause_samples:
            if not is_engine:
                parser.error("--pause-samples needs a wsengine client")
            result = _pause_latency(args.client, args.url, args.pause_samples,
                                    args.pause_interval)
        else:
            messages, seconds, last = runner(args.url, args.count)
            result = {"client": args.client, "messages": messages, "seconds": seconds,
                      "last": describe_message(last)}
            if _spans_exported is not None:
                result["spans"] = _spans_exported
            if _cpu_used is not None:
                result["cpu_seconds"] = _cpu_used
    except ImportError as exc:  # a half-written package counts as not available
        result = {"unavailable": f"{type(exc).__name__}: {exc}"}
    except Exception as exc:  # reported to the parent, which shows it in the table
        result = {"error": f"{type(exc).__name__}: {exc}"}
    # Threads still alive now were not ended by the client's own shutdown: report them,
    # then exit without waiting for them (a misbehaving library must not hang the run).
    result["threads_left"] = sorted(
        t.name for t in threading.enumerate()
        if t is not threading.main_thread() and not isinstance(t, threading.Timer)
    )
    print(json.dumps(result), flush=True)
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
