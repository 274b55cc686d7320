# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""Throughput and pause-latency benchmark: wsengine against the websocket libraries.

``python -m benchmarks`` (from the repository root). For each message size and type, every
client receives the same messages from :mod:`benchmarks.flood_server`, as many as it can
take in about ``--seconds`` (calibrated per client, since rates differ a hundredfold); each
repetition starts a fresh server process and a fresh client process, and the clients take
turns within a repetition (in a rotating order) so that machine noise hits all of them
alike. The table gives the median rate with its min-max and each client's ratio to the
plain websocket-client ``recv()`` loop (``raw``) measured in the same run. Every run checks
the message count and the last message's type, size and digest.

Then, for each wsengine client, ``engine.pause_lock.acquire()`` is timed repeatedly while
the server floods without end, and while it stays silent.

A client whose library cannot be imported gets a "not available" row; a client that fails
gets an "error" row and is not retried for that case.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import selectors
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.flood_server import message_payload

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
#: ``raw-noutf8`` is the raw loop with ``skip_utf8_validation=True``: it shows how much of
#: websocket-client's cost on text is its pure-Python UTF-8 check (without wsaccel).
DEFAULT_CLIENTS = ("raw", "raw-noutf8", "wsapp", "websockets", "wsengine-w1", "wsengine-w4",
                   "wsengine-ws")
ALL_CLIENTS = DEFAULT_CLIENTS
REFERENCE = "raw"
DEFAULT_SIZES = (32, 1024, 65536)

#: Bounds on every child process, in seconds.
_SERVER_START_TIMEOUT = 10.0
_SERVER_EXIT_TIMEOUT = 10.0
_CHECK_TIMEOUT = 30.0

#: Message counts are clamped to this range whatever the calibration says.
_MIN_COUNT, _MAX_COUNT = 100, 3_000_000

#: A calibration probe is long enough once it lasts this many seconds.
_PROBE_SECONDS = 0.15


@dataclass
class Case:
    """One message size and type, and the count every client must receive."""

    size: int
    kind: str
    counts: dict[str, int] = field(default_factory=dict)
    rates: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def _size_label(size: int) -> str:
    if size >= 1024 and size % 1024 == 0:
        return f"{size // 1024} KiB"
    return f"{size} B"


def _parse_size(text: str) -> int:
    text = text.strip().lower().removesuffix("b").removesuffix("i")
    factor = 1
    if text.endswith("k"):
        factor, text = 1024, text[:-1]
    elif text.endswith("m"):
        factor, text = 1024 * 1024, text[:-1]
    value = int(text) * factor
    if not 1 <= value <= 16 * 1024 * 1024:
        raise argparse.ArgumentTypeError(f"size out of range: {text!r}")
    return value


class FloodServer:
    """A :mod:`benchmarks.flood_server` child process serving one connection."""

    def __init__(self, mode: str, size: int, kind: str, count: int, deadline: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.flood_server", "--mode", mode,
             "--size", str(size), "--type", kind, "--count", str(count),
             "--deadline", str(deadline)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        self.port = self._read_port()

    def _read_port(self) -> int:
        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(_SERVER_START_TIMEOUT):
                self.close()
                raise RuntimeError("flood server did not start")
        line = self.process.stdout.readline()
        if not line.startswith("PORT "):
            self.close()
            raise RuntimeError(f"flood server said {line!r}")
        return int(line.split()[1])

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def close(self) -> None:
        """Wait for the server to end by itself; kill it past the limit."""
        try:
            self.process.wait(_SERVER_EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def run_client(client: str, extra: list[str], timeout: float) -> dict[str, Any]:
    """Run one client process; return its JSON result (``error`` on any failure)."""
    command = [sys.executable, "-m", "benchmarks.clients", "--client", client,
               "--timeout", str(timeout), *extra]
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout + 10)
    except subprocess.TimeoutExpired:
        return {"error": f"killed after {timeout + 10:g} s"}
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            result: dict[str, Any] = json.loads(line)
            return result
    tail = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
    return {"error": tail[0][:200]}


def throughput_run(case: Case, client: str, count: int, timeout: float) -> dict[str, Any]:
    """One repetition of one client against a fresh flood server."""
    server = FloodServer("flood", case.size, case.kind, count, deadline=timeout + 5)
    try:
        result = run_client(client, ["--url", server.url, "--count", str(count)], timeout)
    finally:
        server.close()
    if "error" not in result and "unavailable" not in result:
        payload = message_payload(case.size, case.kind)
        expected = {"type": case.kind, "size": case.size,
                    "sha1": hashlib.sha1(payload).hexdigest()}
        if result["messages"] != count:
            result = {"error": f"got {result['messages']} of {count} messages"}
        elif result["last"] != expected:
            result = {"error": f"the last message arrived damaged: {result['last']}"}
    return result


def calibrate(case: Case, client: str, target_seconds: float,
              timeout: float) -> int | dict[str, Any]:
    """Return the count for which ``client`` needs about ``target_seconds`` in this case.

    Rates differ by two orders of magnitude between clients (websocket-client validates
    UTF-8 in pure Python), so each client gets its own count and every run lasts about as
    long. The probes, growing from ``_MIN_COUNT`` messages, double as a warm-up. Returns
    the failed probe's result when the client fails.
    """
    probe = _MIN_COUNT
    while True:
        result = throughput_run(case, client, probe, timeout)
        if "error" in result or "unavailable" in result:
            return result
        seconds = max(result["seconds"], 1e-6)
        if seconds >= _PROBE_SECONDS or probe >= _MAX_COUNT:
            break
        probe = min(_MAX_COUNT, int(probe * min(50.0, max(2.0, 2 * _PROBE_SECONDS / seconds))))
    rate = result["messages"] / seconds
    return max(_MIN_COUNT, min(_MAX_COUNT, int(rate * target_seconds)))


def available_clients(clients: list[str]) -> dict[str, str]:
    """Map each client that cannot run here to the reason."""
    missing = {}
    for client in clients:
        result = run_client(client, ["--check"], _CHECK_TIMEOUT)
        if not result.get("available"):
            missing[client] = result.get("unavailable") or result.get("error", "?")
    return missing


def run_throughput(cases: list[Case], clients: list[str], reps: int, target_seconds: float,
                   fixed_count: int | None, timeout: float) -> None:
    for case in cases:
        for client in clients:
            count = fixed_count or calibrate(case, client, target_seconds, timeout)
            if isinstance(count, dict):
                case.errors[client] = count.get("error") or count["unavailable"]
                _progress(f"  {client}: {case.errors[client]}")
            else:
                case.counts[client] = count
        _progress(f"{_size_label(case.size)} {case.kind}: messages per run {case.counts}")
        for rep in range(reps):
            # Rotate the order so no client always runs first (cold caches) or last.
            shift = rep % len(clients)
            for client in clients[shift:] + clients[:shift]:
                if client in case.errors:
                    continue
                result = throughput_run(case, client, case.counts[client], timeout)
                if "error" in result or "unavailable" in result:
                    case.errors[client] = result.get("error") or result["unavailable"]
                    _progress(f"  {client}: {case.errors[client]}")
                    continue
                rate = result["messages"] / result["seconds"]
                case.rates.setdefault(client, []).append(rate)
                left = result.get("threads_left")
                if left:
                    _progress(f"  {client}: threads left at exit: {left}")
                _progress(f"  rep {rep + 1}/{reps} {client:<12} {rate:>12,.0f} msg/s")


def pause_latency(clients: list[str], size: int, samples: int,
                  timeout: float) -> list[tuple[str, str, dict[str, Any]]]:
    rows = []
    for mode in ("flood", "silent"):
        for client in clients:
            server = FloodServer(mode, size, "text", 0, deadline=timeout + 5)
            try:
                result = run_client(
                    client, ["--url", server.url, "--pause-samples", str(samples)], timeout)
            finally:
                server.close()
            rows.append((mode, client, result))
            _progress(f"pause {mode} {client}: {result}")
    return rows


def format_throughput(cases: list[Case], clients: list[str], missing: dict[str, str]) -> str:
    lines = [f"{'size':>7}  {'type':<6}  {'client':<12}  {'msg/s median':>13}  "
             f"{'min - max':>23}  {'MiB/s':>7}  {'vs raw':>6}"]
    lines.append("-" * len(lines[0]))
    for case in cases:
        reference = case.rates.get(REFERENCE)
        reference_median = statistics.median(reference) if reference else None
        for client in clients:
            head = f"{_size_label(case.size):>7}  {case.kind:<6}  {client:<12}  "
            if client in missing:
                lines.append(head + f"not available ({missing[client]})")
                continue
            rates = case.rates.get(client)
            if client in case.errors:
                lines.append(head + f"error: {case.errors[client]}")
                continue
            if not rates:
                lines.append(head + "no result")
                continue
            median = statistics.median(rates)
            ratio = f"{median / reference_median:6.2f}" if reference_median else "     -"
            spread = f"{min(rates):>11,.0f} - {max(rates):>9,.0f}"
            mib = median * case.size / 2**20
            lines.append(head + f"{median:>13,.0f}  {spread:>23}  {mib:>7.1f}  {ratio}")
        lines.append("")
    if "raw-noutf8" in clients:
        lines.append("raw-noutf8: the raw loop with skip_utf8_validation=True; websocket-client "
                     "checks UTF-8 in pure Python unless wsaccel is installed, which dominates "
                     "raw and wsapp on text.")
    return "\n".join(lines)


def format_pause(rows: list[tuple[str, str, dict[str, Any]]]) -> str:
    lines = [f"{'server':<7}  {'client':<12}  {'samples':>7}  {'p50 ms':>7}  {'p99 ms':>7}  "
             f"{'max ms':>7}  {'timeouts':>8}  {'msgs':>9}  {'during holds':>12}  {'most':>4}"]
    lines.append("-" * len(lines[0]))
    for mode, client, r in rows:
        head = f"{mode:<7}  {client:<12}  "
        if "error" in r or "unavailable" in r:
            lines.append(head + (r.get("error") or f"not available ({r['unavailable']})"))
            continue
        lines.append(head + f"{r['samples']:>7}  {r['p50_ms']:>7.3f}  {r['p99_ms']:>7.3f}  "
                     f"{r['max_ms']:>7.3f}  {r['timeouts']:>8}  {r['messages']:>9,}  "
                     f"{r['delivered_while_held']:>12}  {r['most_in_one_hold']:>4}")
    return "\n".join(lines)


def _versions() -> str:
    parts = [f"Python {platform.python_version()}", f"{platform.machine()}",
             f"{_cpu_count()} CPUs"]
    for module in ("websocket", "websockets", "wsengine"):
        try:
            parts.append(f"{module} {__import__(module).__version__}")
        except Exception:  # absent or half-written: the table says so anyway
            parts.append(f"{module} -")
    return ", ".join(parts)


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        (os.cpu_count() or 1)


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--sizes", default=None,
                        help="comma-separated message sizes, e.g. 32,1k,64k (default)")
    parser.add_argument("--types", default="text,binary", help="text, binary or both")
    parser.add_argument("--reps", type=int, default=5, help="repetitions per client (>= 1)")
    parser.add_argument("--clients", default=",".join(DEFAULT_CLIENTS),
                        help=f"comma-separated subset of {','.join(ALL_CLIENTS)}")
    parser.add_argument("--quick", action="store_true",
                        help="1 KiB text only, ~0.3 s runs (a smoke test, not a measurement)")
    parser.add_argument("--seconds", type=float, default=1.2,
                        help="target duration of one client run (default 1.2)")
    parser.add_argument("--count", type=int, default=None, help="fixed message count")
    parser.add_argument("--timeout", type=float, default=60.0, help="limit per client run")
    parser.add_argument("--pause-samples", type=int, default=200,
                        help="pause_lock acquisitions per wsengine client (0: skip)")
    parser.add_argument("--json", type=Path, default=None, help="also write raw results here")
    args = parser.parse_args(argv)

    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    unknown = sorted(set(clients) - set(ALL_CLIENTS))
    if unknown or not clients:
        parser.error(f"unknown clients {unknown}; choose from {', '.join(ALL_CLIENTS)}")
    if args.reps < 1 or args.seconds <= 0 or args.timeout <= 0:
        parser.error("--reps must be >= 1, --seconds and --timeout > 0")
    sizes = [_parse_size(s) for s in args.sizes.split(",")] if args.sizes else \
        list(DEFAULT_SIZES)
    kinds = [k.strip() for k in args.types.split(",") if k.strip()]
    if not kinds or set(kinds) - {"text", "binary"}:
        parser.error("--types takes text, binary or text,binary")
    if args.quick:
        sizes = sizes if args.sizes else [1024]
        kinds = kinds if args.types != "text,binary" else ["text"]
        args.seconds = min(args.seconds, 0.3)
        args.pause_samples = min(args.pause_samples, 50)
    if REFERENCE not in clients:
        clients.insert(0, REFERENCE)  # the ratios need it

    started = time.monotonic()
    missing = available_clients(clients)
    for client, reason in missing.items():
        _progress(f"{client}: not available ({reason})")
    runnable = [c for c in clients if c not in missing]
    cases = [Case(size, kind) for size in sizes for kind in kinds]
    run_throughput(cases, runnable, args.reps, args.seconds, args.count, args.timeout)

    engine_clients = [c for c in runnable if c.startswith("wsengine")]
    pause_rows = pause_latency(engine_clients, 1024, args.pause_samples, args.timeout) \
        if args.pause_samples and engine_clients else []

    print(f"wsengine benchmark: {_versions()}")
    print(f"{args.reps} repetitions per client, interleaved; loopback; "
          f"elapsed {time.monotonic() - started:.0f} s\n")
    print(format_throughput(cases, clients, missing))
    if pause_rows:
        print(f"pause_lock.acquire() latency ({args.pause_samples} samples, every 5 ms; "
              "flood: 1 KiB text without end; silent: no frames)")
        print(format_pause(pause_rows))
    elif any(c.startswith("wsengine") for c in clients):
        print("pause_lock latency: no wsengine client available")
    if args.json:
        args.json.write_text(json.dumps({
            "versions": _versions(),
            "cases": [{"size": c.size, "type": c.kind, "counts": c.counts, "rates": c.rates,
                       "errors": c.errors} for c in cases],
            "missing": missing,
            "pause": [{"server": m, "client": c, **r} for m, c, r in pause_rows],
        }, indent=2))
    return 0
