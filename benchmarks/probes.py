# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""Client side of the latency and resource figures, one figure and client per process::

    python -m benchmarks.probes --figure echo --client raw --url ws://127.0.0.1:PORT/
    python -m benchmarks.probes --figure reconnect --client wsengine --url ...
    python -m benchmarks.probes --figure stop --client wsengine --url ...
    python -m benchmarks.probes --figure rss --client wsengine-w1 --url ws://...flood...
    python -m benchmarks.probes --figure many --client wsengine --url ...

Every run prints one JSON line on stdout: the figure's samples and numbers, or
``{"error": reason}``. A watchdog ends the process after ``--timeout`` seconds whatever
happens. The servers are :mod:`benchmarks.echo_server` (echo, reconnect, stop, many) and
:mod:`benchmarks.flood_server` (rss); the parent, :mod:`benchmarks.figures`, starts them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from benchmarks.echo_server import DROP

__all__ = ["PROBES", "main"]

#: A probe: (client name, url, options) -> result.
Probe = Callable[[str, str, argparse.Namespace], dict[str, Any]]

#: Round trips before the timed ones (connection warm-up, code paths compiled, caches).
ECHO_WARMUP = 200

#: Bound on any single wait for an answer, event or thread, in seconds.
WAIT = 5.0


# -- helpers ----------------------------------------------------------------------------

def _status_kib(field: str) -> int:
    """A line of /proc/self/status: ``VmRSS``/``VmHWM`` in KiB, ``Threads`` a count (0 where
    there is none)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _quiet_config(**fields: Any) -> Any:
    """An EngineConfig for the probes: no keepalive (nothing but the measured traffic)."""
    from wsengine import EngineConfig

    return EngineConfig(**{"ping_interval": None, **fields})


def _echo_payload(index: int, size: int) -> str:
    """A text message that names its round trip, so a late echo cannot pass for this one."""
    head = f"{index:012d}"
    return (head + "x" * size)[:max(size, len(head))]


# -- echo round trip --------------------------------------------------------------------

def _time_round_trips(round_trip: Callable[[str], str | bytes], samples: int,
                      size: int) -> list[float]:
    """Run ``ECHO_WARMUP`` then ``samples`` round trips; return the timed ones in us."""
    times: list[float] = []
    clock = time.perf_counter
    for index in range(ECHO_WARMUP + samples):
        payload = _echo_payload(index, size)
        began = clock()
        answer = round_trip(payload)
        elapsed = clock() - began
        if answer != payload:
            raise RuntimeError(f"round trip {index}: wrong echo {str(answer)[:40]!r}")
        if index >= ECHO_WARMUP:
            times.append(elapsed * 1e6)
    return times


def _echo(client: str, url: str, options: argparse.Namespace) -> dict[str, Any]:
    samples, size = options.samples, options.size
    if client == "raw":
        import websocket

        ws = websocket.create_connection(url)
        try:
            def raw_trip(payload: str) -> str | bytes:
                ws.send(payload)
                answer: str | bytes = ws.recv()
                return answer

            times = _time_round_trips(raw_trip, samples, size)
            ws.close()
        finally:
            ws.shutdown()  # type: ignore[no-untyped-call]
    elif client == "websockets":
        from websockets.sync.client import connect

        with connect(url, compression=None, max_size=None) as sync_ws:
            def sync_trip(payload: str) -> str | bytes:
                sync_ws.send(payload)
                return sync_ws.recv(timeout=WAIT)

            times = _time_round_trips(sync_trip, samples, size)
    elif client == "wsapp":
        times = _echo_wsapp(url, samples, size)
    else:
        times = _echo_engine(client, url, samples, size)
    return {"samples_us": times}


def _echo_wsapp(url: str, samples: int, size: int) -> list[float]:
    import websocket

    opened = threading.Event()
    arrived = threading.Event()
    box: list[str | bytes] = []

    def on_message(_app: websocket.WebSocketApp, message: str | bytes) -> None:
        box.append(message)
        arrived.set()

    app = websocket.WebSocketApp(url, on_open=lambda _app: opened.set(), on_message=on_message)
    thread = threading.Thread(target=app.run_forever, name="wsapp", daemon=True)
    thread.start()
    try:
        if not opened.wait(WAIT):
            raise RuntimeError("WebSocketApp did not open")

        def trip(payload: str) -> str | bytes:
            arrived.clear()
            app.send(payload)
            if not arrived.wait(WAIT):
                raise TimeoutError("no echo")
            return box.pop()

        return _time_round_trips(trip, samples, size)
    finally:
        app.close()
        thread.join(WAIT)


def _echo_engine(client: str, url: str, samples: int, size: int) -> list[float]:
    from wsengine import Message, Session, WebsocketClient, WebsocketEngine

    arrived = threading.Event()
    box: list[str | bytes] = []

    class Echo(WebsocketClient):
        def on_message(self, session: Session, message: Message) -> None:
            box.append(message.data)
            arrived.set()

    workers = 4 if client == "wsengine-w4" else 1
    engine = WebsocketEngine(url, Echo(), config=_quiet_config(workers=workers))
    engine.start(timeout=WAIT)
    try:
        if client == "wsengine-request":
            session = engine.session
            assert session is not None

            def request_trip(payload: str) -> str | bytes:
                return session.request(payload, lambda message: True, WAIT).data

            return _time_round_trips(request_trip, samples, size)

        send = engine.send

        def event_trip(payload: str) -> str | bytes:
            arrived.clear()
            send(payload)
            if not arrived.wait(WAIT):
                raise TimeoutError("no echo")
            return box.pop()

        return _time_round_trips(event_trip, samples, size)
    finally:
        engine.stop(timeout=WAIT)


# -- reconnect --------------------------------------------------------------------------

def _reconnect(client: str, url: str, options: argparse.Namespace) -> dict[str, Any]:
    """Ask the echo server to drop the connection ``samples`` times; time each recovery.

    ``detect``: from sending ``drop`` to ``on_close`` (the server drops on reading it, so
    this includes one loopback hop); ``total``: from sending ``drop`` to the next
    ``on_open``, the figure compared with the configured delay.
    """
    from wsengine import (
        CloseMessage,
        HandshakeResponse,
        Session,
        WebsocketClient,
        WebsocketEngine,
    )

    clock = time.perf_counter
    reopened = threading.Event()
    marks: dict[str, float] = {}
    codes: list[int] = []

    class Dropped(WebsocketClient):
        def on_open(self, session: Session, response: HandshakeResponse,
                    restarting: bool) -> None:
            if restarting:
                marks["open"] = clock()
                reopened.set()

        def on_close(self, session: Session, close: CloseMessage | None) -> CloseMessage | None:
            if close is not None:  # None: the final stop()
                marks["close"] = clock()
                codes.append(close.code)
            return None

    # reconnect_reset_after=0: every drop starts again at attempt 0, so each wait is the
    # configured initial delay, not a growing backoff.
    config = _quiet_config(reconnect_delay_initial=options.delay, reconnect_jitter=0.0,
                           reconnect_reset_after=0.0)
    engine = WebsocketEngine(url, Dropped(), config=config)
    total: list[float] = []
    detect: list[float] = []
    engine.start(timeout=WAIT)
    try:
        for _ in range(options.samples):
            time.sleep(options.spacing)  # an open connection, idle for a moment
            reopened.clear()
            marks.clear()
            began = clock()
            engine.send(DROP)
            if not reopened.wait(WAIT):
                raise TimeoutError("no on_open after a drop")
            total.append((marks["open"] - began) * 1e3)
            detect.append((marks["close"] - began) * 1e3)
            deadline = time.monotonic() + WAIT
            while engine.session is None and time.monotonic() < deadline:
                time.sleep(0.001)  # published just after on_open returns
    finally:
        engine.stop(timeout=WAIT)
    return {"total_ms": total, "detect_ms": detect, "delay_ms": options.delay * 1e3,
            "close_codes": sorted(set(codes))}


# -- stop() ------------------------------------------------------------------------------

def _stop(client: str, url: str, options: argparse.Namespace) -> dict[str, Any]:
    """Open, idle ``spacing`` seconds, then time the closing call; ``samples`` times."""
    clock = time.perf_counter
    times: list[float] = []
    for _ in range(options.samples):
        if client == "raw":
            import websocket

            ws = websocket.create_connection(url)
            time.sleep(options.spacing)
            began = clock()
            ws.close()  # close frame, wait for the peer's, shut the socket
            times.append(clock() - began)
        elif client == "websockets":
            from websockets.sync.client import connect

            with connect(url, compression=None) as sync_ws:
                time.sleep(options.spacing)
                began = clock()
                sync_ws.close()  # the with's own close is then a no-op
                times.append(clock() - began)
        else:
            from wsengine import WebsocketClient, WebsocketEngine

            workers = 1 if client == "wsengine-w1" else 4
            engine = WebsocketEngine(url, WebsocketClient(),
                                     config=_quiet_config(workers=workers))
            engine.start(timeout=WAIT)
            time.sleep(options.spacing)
            began = clock()
            engine.stop(timeout=WAIT)
            times.append(clock() - began)
            if engine.running:
                raise RuntimeError("engine still running after stop()")
    return {"samples_ms": [t * 1e3 for t in times]}


# -- peak RSS under a flood ---------------------------------------------------------------

def _rss(client: str, url: str, options: argparse.Namespace) -> dict[str, Any]:
    """Take a 64 KiB flood with a slow ``on_message`` for ``seconds``; report RSS."""
    slow = options.slow_ms / 1e3
    seconds = options.seconds
    delivered = [0]
    samples_kib: list[int] = []
    if client == "raw":
        import websocket

        start_kib = _status_kib("VmRSS")
        ws = websocket.create_connection(url)
        began = time.monotonic()
        try:
            while time.monotonic() - began < seconds:
                if not ws.recv():
                    break
                delivered[0] += 1
                time.sleep(slow)
                if delivered[0] % 50 == 0:
                    samples_kib.append(_status_kib("VmRSS"))
        finally:
            ws.shutdown()  # type: ignore[no-untyped-call]
    else:
        from wsengine import Message, Session, WebsocketClient, WebsocketEngine

        class Slow(WebsocketClient):
            def on_message(self, session: Session, message: Message) -> None:
                time.sleep(slow)
                delivered[0] += 1  # racy with several workers: an approximate count

        workers = 4 if client == "wsengine-w4" else 1
        engine = WebsocketEngine(url, Slow(), config=_quiet_config(workers=workers))
        start_kib = _status_kib("VmRSS")
        engine.start(timeout=WAIT)
        try:
            began = time.monotonic()
            while time.monotonic() - began < seconds:
                time.sleep(0.05)
                samples_kib.append(_status_kib("VmRSS"))
        finally:
            engine.stop(timeout=WAIT)
    peak_kib = _status_kib("VmHWM")
    return {"start_kib": start_kib, "peak_kib": peak_kib,
            "end_kib": _status_kib("VmRSS"),
            "max_sampled_kib": max(samples_kib, default=0), "messages": delivered[0],
            "seconds": seconds}


# -- many engines in one process ---------------------------------------------------------

def _many(client: str, url: str, options: argparse.Namespace) -> dict[str, Any]:
    """Open ``samples`` connections in one process, idle ``seconds``; threads, RSS, CPU."""
    count, idle = options.samples, options.seconds
    threads_before = _status_kib("Threads")
    rss_before = _status_kib("VmRSS")
    began = time.perf_counter()
    stoppers: list[Callable[[], None]] = []
    joins: list[threading.Thread] = []  # WebSocketApp threads: closed first, joined after
    try:
        if client == "wsapp":
            import websocket

            for index in range(count):
                opened = threading.Event()

                def on_open(_app: websocket.WebSocketApp, event: threading.Event = opened) -> None:
                    event.set()

                app = websocket.WebSocketApp(url, on_open=on_open)
                thread = threading.Thread(target=app.run_forever, name=f"wsapp-{index}",
                                          daemon=True)
                thread.start()
                if not opened.wait(WAIT):
                    raise RuntimeError(f"WebSocketApp {index} did not open")

                stoppers.append(app.close)
                joins.append(thread)
        else:
            from wsengine import WebsocketClient, WebsocketEngine

            workers = 1 if client == "wsengine-w1" else 4  # "wsengine": the default, 4
            for _ in range(count):
                engine = WebsocketEngine(url, WebsocketClient(),
                                         config=_quiet_config(workers=workers))
                engine.start(timeout=WAIT)
                stoppers.append(engine.stop)
        opened_seconds = time.perf_counter() - began
        time.sleep(0.2)  # let every thread reach its idle wait
        threads_open = _status_kib("Threads")
        rss_open = _status_kib("VmRSS")
        cpu_before = _cpu_seconds()
        wall_before = time.perf_counter()
        time.sleep(idle)
        cpu_idle = _cpu_seconds() - cpu_before
        wall_idle = time.perf_counter() - wall_before
        voluntary = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
    finally:
        stop_began = time.perf_counter()
        for stop in stoppers:
            stop()
        join_deadline = time.monotonic() + WAIT
        for thread in joins:
            thread.join(max(0.0, join_deadline - time.monotonic()))
        stop_seconds = time.perf_counter() - stop_began
    not_ended = sum(thread.is_alive() for thread in joins)
    return {"not_ended": not_ended, "connections": len(stoppers), "threads_before": threads_before,
            "threads_open": threads_open, "rss_before_kib": rss_before,
            "rss_open_kib": rss_open, "cpu_idle_s": cpu_idle, "idle_s": wall_idle,
            "open_s": opened_seconds, "stop_all_s": stop_seconds,
            "voluntary_switches": voluntary}


# -- idle engines (issue 15) ---------------------------------------------------------------

def _idle(client: str, url: str, options: argparse.Namespace) -> dict[str, Any]:
    """Open ``samples`` idle connections one after another, wait ``seconds``, then close
    them all one after another: threads, RSS, time to start and to stop all."""
    count, idle = options.samples, options.seconds
    if client == "picows":
        import asyncio

        from picows import WSListener, ws_connect
    else:
        from wsengine import WebsocketClient, WebsocketEngine
    # After the imports: what is measured is what the connections cost.
    threads_before, rss_before = _status_kib("Threads"), _status_kib("VmRSS")
    if client == "picows":
        async def run() -> dict[str, float]:
            began = time.perf_counter()
            transports = []
            for _ in range(count):
                transport, _listener = await asyncio.wait_for(
                    ws_connect(WSListener, url, enable_auto_ping=False), WAIT)
                transports.append(transport)
            opened = time.perf_counter() - began
            await asyncio.sleep(idle)
            marks = {"open_s": opened, "threads_open": _status_kib("Threads"),
                     "rss_open_kib": _status_kib("VmRSS")}
            began = time.perf_counter()
            for transport in transports:
                transport.send_close()
                transport.disconnect()
            await asyncio.wait_for(asyncio.gather(*(t.wait_disconnected()
                                                    for t in transports)), WAIT)
            marks["stop_all_s"] = time.perf_counter() - began
            return marks

        marks = asyncio.run(run())
    else:
        workers = 1 if client == "wsengine-w1" else 4
        engines = []
        began = time.perf_counter()
        try:
            for _ in range(count):
                engine = WebsocketEngine(url, WebsocketClient(),
                                         config=_quiet_config(workers=workers))
                engine.start(timeout=WAIT)
                engines.append(engine)
            opened = time.perf_counter() - began
            time.sleep(idle)  # idle: the place where an executor may shrink back
            marks = {"open_s": opened, "threads_open": _status_kib("Threads"),
                     "rss_open_kib": _status_kib("VmRSS")}
        finally:
            began = time.perf_counter()
            for engine in engines:
                engine.stop(timeout=WAIT)
            stopped = time.perf_counter() - began
        marks["stop_all_s"] = stopped
        if any(engine.running for engine in engines):
            raise RuntimeError("an engine still running after stop()")
    return {"connections": count, "threads_before": threads_before,
            "rss_before_kib": rss_before, "threads_after": _status_kib("Threads"),
            "idle_s": idle, **marks}


PROBES: dict[str, tuple[Probe, tuple[str, ...]]] = {
    "echo": (_echo, ("raw", "wsapp", "websockets", "wsengine-w1", "wsengine-w4",
                     "wsengine-request")),
    "reconnect": (_reconnect, ("wsengine",)),
    "stop": (_stop, ("raw", "websockets", "wsengine-w1", "wsengine-w4")),
    "rss": (_rss, ("raw", "wsengine-w1", "wsengine-w4")),
    "many": (_many, ("wsapp", "wsengine-w1", "wsengine")),
    "idle": (_idle, ("picows", "wsengine-w1", "wsengine-w4")),
}


def _start_watchdog(seconds: float) -> None:
    def expire() -> None:
        print(json.dumps({"error": f"watchdog: no result after {seconds:g} s"}), flush=True)
        os._exit(3)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one latency or resource probe run")
    parser.add_argument("--figure", choices=sorted(PROBES), required=True)
    parser.add_argument("--client", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--samples", type=int, default=100,
                        help="round trips, drops, stops or connections")
    parser.add_argument("--size", type=int, default=32, help="echo message size (bytes)")
    parser.add_argument("--delay", type=float, default=0.05, help="reconnect delay (s)")
    parser.add_argument("--spacing", type=float, default=0.05,
                        help="idle seconds before each drop or stop")
    parser.add_argument("--seconds", type=float, default=3.0, help="rss/many duration")
    parser.add_argument("--slow-ms", type=float, default=1.0, help="rss: ms per message")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    probe, clients = PROBES[args.figure]
    if args.client not in clients:
        parser.error(f"--figure {args.figure} takes --client {', '.join(clients)}")
    _start_watchdog(args.timeout)
    try:
        result = probe(args.client, args.url, args)
    except ImportError as exc:
        result = {"unavailable": f"{type(exc).__name__}: {exc}"}
    except Exception as exc:  # reported to the parent, which shows it in the table
        result = {"error": f"{type(exc).__name__}: {exc}"}
    result["client"] = args.client
    result["threads_left"] = sorted(
        t.name for t in threading.enumerate()
        if t is not threading.main_thread() and not isinstance(t, threading.Timer)
        and t.is_alive()
    )
    print(json.dumps(result), flush=True)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
