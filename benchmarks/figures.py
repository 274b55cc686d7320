# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""Parent side of the latency and resource figures: echo round trip, reconnect time,
``stop()`` latency, peak RSS under a flood, many engines in one process.

Each figure runs its clients in turn within each repetition (rotating the order), each
run in a fresh client process (:mod:`benchmarks.probes`) against a fresh server process,
and pools the samples of all repetitions for the percentiles. Every table carries the
issue's target beside the figure and PASS/MISS; figures the issue sets no target for show
``-``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks.servers import EchoServer, FloodServer, progress, run_child

__all__ = [
    "PROBE_FIGURES",
    "FigureRuns",
    "Verdict",
    "format_echo",
    "format_idle",
    "format_many",
    "format_reconnect",
    "format_rss",
    "format_stop",
    "percentile",
    "run_figure",
    "run_idle",
]

#: Figures this module runs, in the order of the report.
PROBE_FIGURES = ("echo", "reconnect", "stop", "rss", "many")

#: Targets from the issue.
ECHO_MARGIN_US = 25.0
RECONNECT_MARGIN_MS = 20.0
RSS_GROWTH_MIB = 32.0


@dataclass
class Verdict:
    """One target checked: the summary lists them all."""

    figure: str
    subject: str
    target: str
    measured: str
    passed: bool | None  # None: could not be measured

    @property
    def word(self) -> str:
        return {True: "PASS", False: "MISS", None: "n/a"}[self.passed]


@dataclass
class FigureRuns:
    """Per-client results of one figure, one dict per repetition."""

    figure: str
    clients: list[str]
    results: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (0-100), linear between closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class FigurePlan:
    """What one figure runs: its clients, its server, per-run arguments and time limit."""

    clients: tuple[str, ...]
    server: str  # "echo" or "flood64k"
    arguments: list[str]
    seconds: float  # expected length of one run, for the server's deadline


def plan(figure: str, reps: int, quick: bool) -> FigurePlan:
    """The default set-up of each figure (``quick``: a smoke test, not a measurement)."""
    if figure == "echo":
        samples = 300 if quick else 2000
        return FigurePlan(("raw", "wsapp", "websockets", "wsengine-w1", "wsengine-w4",
                           "wsengine-request"), "echo",
                          ["--samples", str(samples), "--size", "32"], 10)
    if figure == "reconnect":
        total = 4 if quick else 20
        per_run = math.ceil(total / reps)
        return FigurePlan(("wsengine",), "echo",
                          ["--samples", str(per_run), "--delay", "0.05", "--spacing", "0.05"],
                          per_run * 0.2 + 5)
    if figure == "stop":
        total = 4 if quick else 20
        per_run = math.ceil(total / reps)
        return FigurePlan(("raw", "websockets", "wsengine-w1", "wsengine-w4"), "echo",
                          ["--samples", str(per_run), "--spacing", "0.05"], per_run * 0.2 + 5)
    if figure == "rss":
        seconds = 0.5 if quick else 3.0
        return FigurePlan(("raw", "wsengine-w1", "wsengine-w4"), "flood64k",
                          ["--seconds", str(seconds), "--slow-ms", "1"], seconds + 5)
    if figure == "many":
        count, seconds = (10, 0.5) if quick else (100, 5.0)
        return FigurePlan(("wsapp", "wsengine-w1", "wsengine"), "echo",
                          ["--samples", str(count), "--seconds", str(seconds)], seconds + 15)
    raise ValueError(f"unknown figure {figure!r}")


def run_figure(figure: str, reps: int, timeout: float, quick: bool = False) -> FigureRuns:
    """Run one figure: ``reps`` repetitions, clients interleaved, fresh processes."""
    setup = plan(figure, reps, quick)
    runs = FigureRuns(figure, list(setup.clients), settings={"arguments": setup.arguments,
                                                             "reps": reps})
    clients = list(setup.clients)
    limit = min(timeout, setup.seconds + 30)
    for rep in range(reps):
        shift = rep % len(clients)
        for client in clients[shift:] + clients[:shift]:
            if client in runs.errors:
                continue
            result = _one_run(figure, client, setup, limit)
            if "error" in result or "unavailable" in result:
                runs.errors[client] = result.get("error") or result["unavailable"]
                progress(f"  {figure} {client}: {runs.errors[client]}")
                continue
            runs.results.setdefault(client, []).append(result)
            left = result.get("threads_left")
            if left:
                progress(f"  {figure} {client}: threads left at exit: {left[:5]}")
            progress(f"  {figure} rep {rep + 1}/{reps} {client:<16} {_brief(figure, result)}")
    return runs


def _one_run(figure: str, client: str, setup: FigurePlan, limit: float) -> dict[str, Any]:
    deadline = limit + 15
    server: EchoServer | FloodServer
    try:
        if setup.server == "echo":
            server = EchoServer(deadline)
        else:
            server = FloodServer("flood", 65536, "text", 0, deadline)
    except RuntimeError as exc:
        return {"error": str(exc)}
    try:
        return run_child("benchmarks.probes",
                         ["--figure", figure, "--client", client, "--url", server.url,
                          *setup.arguments], limit)
    finally:
        server.close()


def _brief(figure: str, result: dict[str, Any]) -> str:
    if figure == "echo":
        return f"p50 {statistics.median(result['samples_us']):.1f} us"
    if figure == "reconnect":
        return f"p50 {statistics.median(result['total_ms']):.1f} ms"
    if figure == "stop":
        return f"p50 {statistics.median(result['samples_ms']):.2f} ms"
    if figure == "rss":
        return f"+{(result['peak_kib'] - result['start_kib']) / 1024:.1f} MiB"
    return f"{result['threads_open']} threads, cpu {result['cpu_idle_s']:.3f} s"


# -- tables ------------------------------------------------------------------------------

def _table(header: list[tuple[str, int]], rows: list[list[str]]) -> str:
    """Right-aligned columns (the first left-aligned) under a rule."""
    def line(cells: list[str]) -> str:
        parts = []
        for index, (cell, (_, width)) in enumerate(zip(cells, header, strict=False)):
            parts.append(cell.ljust(width) if index == 0 else cell.rjust(width))
        return "  ".join(parts).rstrip()

    head = line([name for name, _ in header])
    return "\n".join([head, "-" * len(head), *(line(row) for row in rows)])


def _failed_row(runs: FigureRuns, client: str, width: int) -> list[str] | None:
    if client in runs.errors:
        error = runs.errors[client]
        text = error if error.startswith("not available") else f"error: {error}"
        return [client, text[:width * 6]]
    if client not in runs.results:
        return [client, "no result"]
    return None


def format_echo(runs: FigureRuns) -> tuple[str, list[Verdict]]:
    header = [("client", 16), ("samples", 7), ("p50 us", 8), ("runs' p50", 13),
              ("p99 us", 8), ("max us", 9), ("p50 - raw", 9), ("target", 16), ("", 4)]
    rows: list[list[str]] = []
    verdicts: list[Verdict] = []
    pooled = {c: [s for r in runs.results.get(c, []) for s in r["samples_us"]]
              for c in runs.clients}
    raw = pooled.get("raw") or []
    raw_p50 = statistics.median(raw) if raw else None
    for client in runs.clients:
        failed = _failed_row(runs, client, 12)
        samples = pooled[client]
        if failed or not samples:
            rows.append(failed or [client, "no result"])
            if client.startswith("wsengine"):
                verdicts.append(Verdict("echo", client, "", "no result", None))
            continue
        p50 = statistics.median(samples)
        per_run = [statistics.median(r["samples_us"]) for r in runs.results[client]]
        diff = f"{p50 - raw_p50:+.1f}" if raw_p50 is not None else "-"
        target, word = "-", ""
        if client.startswith("wsengine") and raw_p50 is not None:
            limit = raw_p50 + ECHO_MARGIN_US
            target = f"p50 <= {limit:.1f}"
            passed = p50 <= limit
            word = "PASS" if passed else "MISS"
            verdicts.append(Verdict("echo round trip", f"{client} p50",
                                    f"<= raw + {ECHO_MARGIN_US:g} us ({limit:.1f} us)",
                                    f"{p50:.1f} us ({diff} us)", passed))
        rows.append([client, str(len(samples)), f"{p50:.1f}",
                     f"{min(per_run):.1f}-{max(per_run):.1f}", f"{percentile(samples, 99):.1f}",
                     f"{max(samples):.0f}", diff, target, word])
    return _table(header, rows), verdicts


def format_reconnect(runs: FigureRuns) -> tuple[str, list[Verdict]]:
    header = [("client", 10), ("drops", 5), ("delay ms", 8), ("p50 ms", 7), ("p99 ms", 7),
              ("max ms", 7), ("detect p50", 10), ("open p50", 8), ("target", 12), ("", 4)]
    rows: list[list[str]] = []
    verdicts: list[Verdict] = []
    for client in runs.clients:
        failed = _failed_row(runs, client, 10)
        results = runs.results.get(client, [])
        if failed or not results:
            rows.append(failed or [client, "no result"])
            verdicts.append(Verdict("reconnect", client, "", "no result", None))
            continue
        total = [t for r in results for t in r["total_ms"]]
        detect = [t for r in results for t in r["detect_ms"]]
        reopen = [t - d for r in results for t, d in zip(r["total_ms"], r["detect_ms"],
                                                         strict=True)]
        delay = results[0]["delay_ms"]
        limit = delay + RECONNECT_MARGIN_MS
        p99 = percentile(total, 99)
        passed = p99 <= limit
        rows.append([client, str(len(total)), f"{delay:.0f}", f"{statistics.median(total):.1f}",
                     f"{p99:.1f}", f"{max(total):.1f}", f"{statistics.median(detect):.2f}",
                     f"{statistics.median(reopen):.1f}", f"p99 <= {limit:.0f}",
                     "PASS" if passed else "MISS"])
        verdicts.append(Verdict("reconnect", f"{client} p99 drop -> on_open",
                                f"<= delay + {RECONNECT_MARGIN_MS:g} ms ({limit:.0f} ms)",
                                f"{p99:.1f} ms (p50 {statistics.median(total):.1f})", passed))
    return _table(header, rows), verdicts


def format_stop(runs: FigureRuns) -> tuple[str, list[Verdict]]:
    header = [("client", 12), ("samples", 7), ("p50 ms", 7), ("p99 ms", 7), ("max ms", 7),
              ("target", 6)]
    rows: list[list[str]] = []
    for client in runs.clients:
        failed = _failed_row(runs, client, 12)
        samples = [s for r in runs.results.get(client, []) for s in r["samples_ms"]]
        if failed or not samples:
            rows.append(failed or [client, "no result"])
            continue
        rows.append([client, str(len(samples)), f"{statistics.median(samples):.2f}",
                     f"{percentile(samples, 99):.2f}", f"{max(samples):.2f}", "-"])
    return _table(header, rows), []


def format_rss(runs: FigureRuns) -> tuple[str, list[Verdict]]:
    header = [("client", 12), ("runs", 4), ("start MiB", 9), ("peak MiB", 8),
              ("growth MiB", 10), ("msgs/run", 8), ("target", 14), ("", 4)]
    rows: list[list[str]] = []
    verdicts: list[Verdict] = []
    for client in runs.clients:
        failed = _failed_row(runs, client, 12)
        results = runs.results.get(client, [])
        if failed or not results:
            rows.append(failed or [client, "no result"])
            if client.startswith("wsengine"):
                verdicts.append(Verdict("peak RSS", client, "", "no result", None))
            continue
        growth = [(r["peak_kib"] - r["start_kib"]) / 1024 for r in results]
        worst = max(growth)
        target, word = "-", ""
        if client.startswith("wsengine"):
            passed = worst <= RSS_GROWTH_MIB
            target, word = f"<= +{RSS_GROWTH_MIB:g} MiB", "PASS" if passed else "MISS"
            verdicts.append(Verdict("peak RSS, 64 KiB flood, 1 ms on_message",
                                    f"{client} peak - start (worst run)",
                                    f"<= {RSS_GROWTH_MIB:g} MiB", f"{worst:.1f} MiB", passed))
        rows.append([client, str(len(results)),
                     f"{statistics.median(r['start_kib'] for r in results) / 1024:.1f}",
                     f"{max(r['peak_kib'] for r in results) / 1024:.1f}",
                     f"+{worst:.1f}",
                     f"{statistics.median(r['messages'] for r in results):,.0f}", target, word])
    return _table(header, rows), verdicts


def format_many(runs: FigureRuns) -> tuple[str, list[Verdict]]:
    header = [("client", 12), ("conns", 5), ("threads", 7), ("+threads", 8), ("RSS MiB", 7),
              ("+RSS MiB", 8), ("KiB/conn", 8), ("idle s", 6), ("CPU idle s", 10),
              ("open s", 6), ("stop s", 6), ("stuck", 5), ("target", 6)]
    rows: list[list[str]] = []
    for client in runs.clients:
        failed = _failed_row(runs, client, 12)
        results = runs.results.get(client, [])
        if failed or not results:
            rows.append(failed or [client, "no result"])
            continue

        def med(key: str, scale: float = 1.0, results: list[dict[str, Any]] = results) -> float:
            return float(statistics.median(r[key] for r in results)) / scale

        conns = results[0]["connections"]
        added_kib = statistics.median(r["rss_open_kib"] - r["rss_before_kib"] for r in results)
        rows.append([client, str(conns), f"{med('threads_open'):.0f}",
                     f"{med('threads_open') - med('threads_before'):+.0f}",
                     f"{med('rss_open_kib', 1024):.1f}", f"{added_kib / 1024:+.1f}",
                     f"{added_kib / max(conns, 1):.0f}", f"{med('idle_s'):.1f}",
                     f"{max(r['cpu_idle_s'] for r in results):.4f}", f"{med('open_s'):.2f}",
                     f"{med('stop_all_s'):.2f}",
                     str(max(r.get("not_ended", 0) for r in results)), "-"])
    return _table(header, rows), []


# -- idle engines (issue 15) -------------------------------------------------------------

#: Issue 15's targets for 500 idle engines with workers=4.
IDLE_THREADS, IDLE_RSS_MIB, IDLE_STOP_S = 1100, 80.0, 1.0
IDLE_CLIENTS = ("picows", "wsengine-w1", "wsengine-w4")


def run_idle(counts: list[int], reps: int, timeout: float, seconds: float = 1.0) -> FigureRuns:
    """The idle figure: for each count, each client opens that many idle connections in
    one process (fresh echo server and process per run, clients interleaved)."""
    labels = [f"{client} x{count}" for count in counts for client in IDLE_CLIENTS]
    runs = FigureRuns("idle", labels, settings={"counts": counts, "reps": reps,
                                                "seconds": seconds})
    for count in counts:
        clients = [f"{client} x{count}" for client in IDLE_CLIENTS]
        setup = FigurePlan(tuple(clients), "echo",
                           ["--samples", str(count), "--seconds", str(seconds)],
                           seconds + count * 0.02 + 5)
        limit = min(timeout, setup.seconds + 30)
        for rep in range(reps):
            shift = rep % len(clients)
            for label in clients[shift:] + clients[:shift]:
                if label in runs.errors:
                    continue
                client = label.rpartition(" x")[0]
                result = _one_run("idle", client, setup, limit)
                if "error" in result or "unavailable" in result:
                    runs.errors[label] = result.get("error") or \
                        f"not available ({result['unavailable']})"
                    progress(f"  idle {label}: {runs.errors[label]}")
                    continue
                runs.results.setdefault(label, []).append(result)
                progress(f"  idle rep {rep + 1}/{reps} {label:<18} "
                         f"{result['threads_open']} threads, "
                         f"+{(result['rss_open_kib'] - result['rss_before_kib']) / 1024:.1f} MiB, "
                         f"open {result['open_s']:.2f} s, stop {result['stop_all_s']:.2f} s")
    return runs


def format_idle(runs: FigureRuns) -> tuple[str, list[Verdict]]:
    header = [("client", 18), ("threads", 7), ("+threads", 8), ("thr/conn", 8),
              ("+RSS MiB", 8), ("KiB/conn", 8), ("start all s", 17), ("stop all s", 17),
              ("left", 4), ("target", 6)]
    rows: list[list[str]] = []
    verdicts: list[Verdict] = []
    for label in runs.clients:
        failed = _failed_row(runs, label, 18)
        results = runs.results.get(label, [])
        if failed or not results:
            rows.append(failed or [label, "no result"])
            continue

        def med(key: str, results: list[dict[str, Any]] = results) -> float:
            return float(statistics.median(r[key] for r in results))

        def spread(key: str, results: list[dict[str, Any]] = results) -> str:
            values = [r[key] for r in results]
            return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

        conns = results[0]["connections"]
        added_threads = med("threads_open") - med("threads_before")
        added_mib = statistics.median(r["rss_open_kib"] - r["rss_before_kib"]
                                      for r in results) / 1024
        target = "-"
        if label == "wsengine-w4 x500":
            checks = [(f"threads < {IDLE_THREADS}", med("threads_open") < IDLE_THREADS,
                       f"{med('threads_open'):.0f}"),
                      (f"+RSS < {IDLE_RSS_MIB:g} MiB", added_mib < IDLE_RSS_MIB,
                       f"{added_mib:.1f} MiB"),
                      (f"stop all < {IDLE_STOP_S:g} s", med("stop_all_s") < IDLE_STOP_S,
                       f"{med('stop_all_s'):.2f} s")]
            target = ", ".join(f"{name} {'PASS' if ok else 'MISS'}" for name, ok, _ in checks)
            verdicts += [Verdict("idle engines", f"500 engines workers=4: {name.split()[0]}",
                                 name, measured, ok) for name, ok, measured in checks]
        if label.startswith("wsengine"):
            per_engine = added_threads / max(conns, 1)
            ok = per_engine <= 2
            verdicts.append(Verdict("idle engines", f"{label}: threads per idle engine",
                                    "<= 2", f"{per_engine:.2f}", ok))
            target = (target + "; " if target != "-" else "") + \
                f"thr/conn <= 2 {'PASS' if ok else 'MISS'}"
        rows.append([label, f"{med('threads_open'):.0f}", f"{added_threads:+.0f}",
                     f"{added_threads / max(conns, 1):.2f}", f"{added_mib:+.1f}",
                     f"{added_mib * 1024 / max(conns, 1):.0f}", spread("open_s"),
                     spread("stop_all_s"),
                     str(max(r["threads_after"] - r["threads_before"] for r in results)),
                     target])
    return _table(header, rows), verdicts


FORMATTERS: dict[str, Callable[[FigureRuns], tuple[str, list[Verdict]]]] = {
    "echo": format_echo,
    "reconnect": format_reconnect,
    "stop": format_stop,
    "rss": format_rss,
    "many": format_many,
}

TITLES = {
    "echo": "Echo round trip: 32 B text, send then wait for the echo (websockets echo server "
            "in its own process)",
    "reconnect": "Reconnect: server drops TCP without a close frame; time from sending 'drop' "
                 "to the next on_open (reconnect_delay_initial=0.05, jitter 0, reset_after 0)",
    "stop": "stop() / close() on an idle open connection (close handshake included)",
    "rss": "Peak RSS: endless 64 KiB text flood, on_message sleeps 1 ms, ~3 s "
           "(VmHWM vs VmRSS before start, client process)",
    "idle": "Idle engines: N connections opened one after another in one process, idle 1 s, "
            "then closed one after another",
    "many": "Many connections in one process, idle 5 s (default engine: workers=4; CPU: "
            "getrusage user+sys over the idle time, worst run)",
}

NOTES = {
    "idle": "threads and RSS from /proc/self/status after the idle second (the process had "
            "2 threads before: main and the watchdog; the library was imported before the "
            "baseline); +RSS: after opening minus before. start/stop all: median (min-max) "
            "of the runs. wsengine: engine.start() then, at the end, engine.stop() on each "
            "in turn (close handshake, threads joined); picows: ws_connect() in turn, then "
            "send_close() and disconnect() on all and wait_disconnected() (no wait for the "
            "server's close frame). left: threads still alive after stopping all (worst run). "
            "Targets from issue 15: at most 2 threads per idle engine whatever workers is; "
            "500 engines with workers=4 under 1,100 threads and 80 MiB, stopped in under 1 s.",
    "echo": "Each client process: 200 warm-up round trips, then the timed ones, back to back; "
            "percentiles over the pooled samples of all runs, runs' p50 = range of per-run "
            "medians. raw and websockets send and receive on the calling thread; wsapp, "
            "wsengine-w1 and wsengine-w4 receive on their own thread and hand the echo back "
            "with a threading.Event set in on_message (a thread hand-off the raw loop does "
            "not pay); wsengine-request uses session.request() from the calling thread.",
    "reconnect": "detect: sending 'drop' to on_close(1006); open: on_close to the next "
                 "on_open (the configured wait, dial, handshake, on_open). The server drops "
                 "when it reads 'drop', so each figure includes one loopback hop.",
    "stop": "No target in the issue. raw: websocket-client's close(); websockets: the sync "
            "client's close(); wsengine: engine.stop() (on_close, close frame, the server's "
            "reply, threads joined).",
    "rss": "raw is the reference: the recv() loop sleeping 1 ms per message (one message "
           "in flight, nothing queued). msgs/run: messages handled in the ~3 s.",
    "many": "No target in the issue. threads from /proc/self/status (the process had 2: "
            "main and the watchdog); RSS after all opened minus before; CPU idle s: "
            "user+sys over the idle window for the whole process; open s / stop s: opening "
            "and closing all of them one after another (WebSocketApp: close() on all, then "
            "the threads joined, 5 s at most in all); stuck: threads still running after that "
            "(worst run).",
}
