# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""Parent side of the send figure: messages per second out of one connection.

For each message size, every row (a client and a number of sending threads, see
:mod:`benchmarks.senders`) sends to a fresh :mod:`benchmarks.count_server` process, which
counts every frame without a Python step per frame and so out-counts any Python client.
Each row gets its own message count (calibrated to last about ``seconds``), rows take
turns within a repetition in a rotating order, and every run is checked: the server
counted exactly the messages sent, no bad frame (wrong size or type, torn, interleaved),
no sampled payload damaged, and the client saw the server's ``done``.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from benchmarks.figures import Verdict
from benchmarks.servers import CountServer, progress, run_child

__all__ = ["DEFAULT_ROWS", "SendCase", "format_send", "run_send", "send_run"]

#: (client, threads) rows of the table, in its order.
DEFAULT_ROWS: tuple[tuple[str, int], ...] = (
    ("raw", 1), ("raw", 4), ("picows", 1), ("wsengine", 1), ("wsengine", 4),
    ("wsengine-session", 1), ("wsengine-session", 4), ("wsengine-ws", 1), ("wsengine-ws", 4),
)
DEFAULT_SIZES = (32, 1024)

#: Issue 15: one thread >= 3x the raw loop (one thread) at 32 B and 1 KiB; four threads
#: together >= one thread of the same client.
ONE_THREAD_VS_RAW = 3.0
FOUR_VS_ONE = 1.0

_MIN_COUNT, _MAX_COUNT = 400, 4_000_000
_PROBE_SECONDS = 0.15


def _label(client: str, threads: int) -> str:
    return f"{client} x{threads}"


@dataclass
class SendCase:
    """One message size: counts, rates and errors per row label."""

    size: int
    counts: dict[str, int] = field(default_factory=dict)
    rates: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def send_run(client: str, threads: int, size: int, count: int,
             timeout: float) -> dict[str, Any]:
    """One run against a fresh counting server; ``error`` unless every check passes."""
    count = max(threads, count // threads * threads)
    server = CountServer(size, count, deadline=timeout + 5)
    try:
        result = run_child("benchmarks.senders",
                           ["--client", client, "--threads", str(threads), "--size",
                            str(size), "--count", str(count), "--url", server.url], timeout)
    finally:
        counted = server.close()
    if "error" in result or "unavailable" in result:
        return result
    problems = []
    if counted.get("error"):
        problems.append(f"server: {counted['error']}")
    if counted.get("frames") != count or result["messages"] != count:
        problems.append(f"server counted {counted.get('frames')} of {count}")
    if counted.get("bad") or counted.get("payload_errors"):
        problems.append(f"{counted.get('bad')} bad frames, {counted.get('payload_errors')} "
                        f"damaged of {counted.get('checked')} payloads checked")
    if result.get("done") != f"done {count}":
        problems.append(f"client saw {result.get('done')!r}")
    if problems:
        return {"error": "; ".join(problems)}
    result["server"] = counted
    return result


def _calibrate(client: str, threads: int, size: int, seconds: float,
               timeout: float) -> int | dict[str, Any]:
    probe = _MIN_COUNT
    while True:
        result = send_run(client, threads, size, probe, timeout)
        if "error" in result or "unavailable" in result:
            return result
        took = max(result["seconds"], 1e-6)
        if took >= _PROBE_SECONDS or probe >= _MAX_COUNT:
            break
        probe = min(_MAX_COUNT, int(probe * min(50.0, max(2.0, 2 * _PROBE_SECONDS / took))))
    rate = result["messages"] / took
    return max(_MIN_COUNT, min(_MAX_COUNT, int(rate * seconds)))


def run_send(sizes: list[int], rows: list[tuple[str, int]], reps: int, seconds: float,
             fixed_count: int | None, timeout: float,
             missing: dict[str, str]) -> list[SendCase]:
    """Run every row at every size, ``reps`` times, interleaved."""
    cases = []
    runnable = [row for row in rows if row[0] not in missing]
    for size in sizes:
        case = SendCase(size)
        cases.append(case)
        for client, threads in runnable:
            label = _label(client, threads)
            count = fixed_count or _calibrate(client, threads, size, seconds, timeout)
            if isinstance(count, dict):
                case.errors[label] = count.get("error") or count["unavailable"]
                progress(f"  send {label}: {case.errors[label]}")
            else:
                case.counts[label] = count
        progress(f"send {size} B: messages per run {case.counts}")
        for rep in range(reps):
            shift = rep % max(1, len(runnable))
            for client, threads in runnable[shift:] + runnable[:shift]:
                label = _label(client, threads)
                if label in case.errors:
                    continue
                result = send_run(client, threads, size, case.counts[label], timeout)
                if "error" in result or "unavailable" in result:
                    case.errors[label] = result.get("error") or result["unavailable"]
                    progress(f"  send {label}: {case.errors[label]}")
                    continue
                rate = result["messages"] / result["seconds"]
                case.rates.setdefault(label, []).append(rate)
                case.cpu.setdefault(label, []).append(
                    result["cpu_seconds"] * 1e6 / result["messages"])
                if result.get("threads_left"):
                    progress(f"  send {label}: threads left at exit: {result['threads_left']}")
                progress(f"  send rep {rep + 1}/{reps} {size} B {label:<20} {rate:>12,.0f} msg/s")
    return cases


def _median(values: list[float] | None) -> float | None:
    return statistics.median(values) if values else None


def format_send(cases: list[SendCase], rows: list[tuple[str, int]],
                missing: dict[str, str]) -> tuple[str, list[Verdict]]:
    """The send table: median msg/s with min-max, ratios to raw x1, picows x1 and the same
    client's x1 row, and issue 15's targets."""
    header = (f"{'size':>6}  {'client':<22}  {'msg/s median':>12}  {'min - max':>23}  "
              f"{'MiB/s':>6}  {'vs raw x1':>9}  {'vs picows':>9}  {'vs x1':>6}  "
              f"{'CPU us/msg':>10}  target")
    lines = [header, "-" * (len(header) + 30)]
    verdicts: list[Verdict] = []
    for case in cases:
        size = f"{case.size} B" if case.size < 1024 else f"{case.size // 1024} KiB"
        raw = _median(case.rates.get("raw x1"))
        picows = _median(case.rates.get("picows x1"))
        for client, threads in rows:
            label = _label(client, threads)
            head = f"{size:>6}  {label:<22}  "
            goal: tuple[str, float, float | None] | None = None
            if client == "wsengine" and threads == 1:
                goal = ("raw x1", ONE_THREAD_VS_RAW, raw)
            elif client.startswith("wsengine") and threads > 1:
                goal = (_label(client, 1), FOUR_VS_ONE,
                        _median(case.rates.get(_label(client, 1))))
            failure = None
            if client in missing:
                failure = f"not available ({missing[client]})"
            elif label in case.errors:
                failure = f"error: {case.errors[label]}"
            elif not case.rates.get(label):
                failure = "no result"
            subject = f"{size} {label}"
            if failure is not None:
                lines.append(head + failure)
                if goal is not None:
                    verdicts.append(Verdict("send", subject, f">= {goal[1]:g}x {goal[0]}",
                                            failure[:60], None))
                continue
            rates = case.rates[label]
            median = statistics.median(rates)
            one = _median(case.rates.get(_label(client, 1)))
            cpu = _median(case.cpu.get(label))

            def ratio(base: float | None, width: int, median: float = median) -> str:
                if not base:
                    return f"{'-':>{width}}"
                return f"{median / base:{width}.{2 if median >= 0.1 * base else 3}f}"

            row = (head + f"{median:>12,.0f}  {min(rates):>11,.0f} - {max(rates):>9,.0f}  "
                   f"{median * case.size / 2**20:>6.1f}  {ratio(raw, 9)}  {ratio(picows, 9)}  "
                   f"{ratio(one, 6)}  {cpu if cpu is not None else 0:>10.2f}  ")
            if goal is None:
                row += "-"
            elif goal[2]:
                achieved = median / goal[2]
                passed = achieved >= goal[1]
                row += f">= {goal[1]:g}x {goal[0]} {'PASS' if passed else 'MISS'}"
                verdicts.append(Verdict("send", subject, f">= {goal[1]:g}x {goal[0]}",
                                        f"{achieved:.2f}x", passed))
            else:
                row += f">= {goal[1]:g}x {goal[0]} n/a"
                verdicts.append(Verdict("send", subject, f">= {goal[1]:g}x {goal[0]}",
                                        f"no {goal[0]} result", None))
            lines.append(row)
        lines.append("")
    return "\n".join(lines).rstrip(), verdicts


NOTE = ("xN: N threads share one connection, each sending count/N messages (BINARY, the "
        "same bytes every time, so only the send is timed), released together by a "
        "barrier; the clock stops when the server has counted the last frame and its "
        "'done' reached the client. raw: websocket-client's ws.send_binary (its send lock "
        "serialises threads); picows: transport.send in one asyncio task, waiting on "
        "pause_writing; wsengine: engine.send; wsengine-session: session.send; "
        "wsengine-ws: engine.send over the websockets adapter. The counting server "
        "accepts no extension, so no client compresses. Checked in every run: the server "
        "counted exactly the messages sent, no frame of another size or type (a torn or "
        "interleaved frame would be one), one payload in 97 and the last of every read "
        "unmasked and intact.")
