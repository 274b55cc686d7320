# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""Smoke test of the benchmark harness: its servers, probes and tables work (a few seconds;
the numbers are not looked at)."""

from __future__ import annotations

import importlib
from pathlib import Path

from benchmarks.figures import FigureRuns, format_echo, format_reconnect, format_rss
from benchmarks.run import main
from benchmarks.servers import EchoServer, run_child


def test_probes_against_the_echo_server() -> None:
    with EchoServer(deadline=30) as server:
        echo = run_child("benchmarks.probes", ["--figure", "echo", "--client", "wsengine-w1",
                                               "--url", server.url, "--samples", "50"], 20)
        stop = run_child("benchmarks.probes", ["--figure", "stop", "--client", "wsengine-w1",
                                               "--url", server.url, "--samples", "2"], 20)
    assert len(echo["samples_us"]) == 50, echo
    assert echo["threads_left"] == []
    assert len(stop["samples_ms"]) == 2, stop


def test_reconnect_figure_end_to_end(tmp_path: Path) -> None:
    report = tmp_path / "RESULTS.md"
    assert main(["--figures", "reconnect", "--quick", "--reps", "1",
                 "--markdown", str(report)]) == 0
    text = report.read_text()
    assert "SPDX-License-Identifier" in text
    assert "wsengine p99 drop -> on_open" in text
    assert "PASS" in text or "MISS" in text


def test_tables_judge_targets() -> None:
    echo = FigureRuns("echo", ["raw", "wsengine-w1"], results={
        "raw": [{"samples_us": [100.0, 110.0, 120.0]}],
        "wsengine-w1": [{"samples_us": [150.0, 160.0, 170.0]}],
    })
    _, verdicts = format_echo(echo)
    assert [v.word for v in verdicts] == ["MISS"]  # 160 > 110 + 25
    reconnect = FigureRuns("reconnect", ["wsengine"], results={"wsengine": [
        {"total_ms": [55.0, 56.0], "detect_ms": [1.0, 1.0], "delay_ms": 50.0}]})
    _, verdicts = format_reconnect(reconnect)
    assert [v.word for v in verdicts] == ["PASS"]
    rss = FigureRuns("rss", ["wsengine-w1"], errors={"wsengine-w1": "boom"})
    table, verdicts = format_rss(rss)
    assert "error: boom" in table
    assert [v.word for v in verdicts] == ["n/a"]


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def test_count_server_counts_and_rejects_torn_frames() -> None:
    import os

    from benchmarks.count_server import FrameCounter, frame_header, send_payload

    def frame(payload: bytes, opcode: int = 0x2) -> bytes:
        mask = os.urandom(4)
        head = frame_header(len(payload)) if opcode == 0x2 else bytes([0x80 | opcode,
                                                                        0x80 | len(payload)])
        return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

    for size in (32, 1024):
        counter = FrameCounter(size)
        good = b"".join(frame(send_payload(size, i % 4)) for i in range(300))
        data = good + frame(b"odd") + frame(send_payload(size, 1)) + frame(b"\x03\xe8", 0x8)
        for start in range(0, len(data), 1000):  # frames cut across reads
            counter.feed(data[start:start + 1000])
        assert counter.frames == 301 and counter.bad == 1 and counter.close_received
        assert counter.checked > 0 and counter.payload_errors == 0
        torn = bytearray(frame(send_payload(size, 2)))
        torn[-1] ^= 0xFF
        counter = FrameCounter(size)
        counter.feed(bytes(torn))
        assert counter.payload_errors == 1


def test_send_and_idle_figures_end_to_end(tmp_path: Path) -> None:
    """The new tables of issue 15 run with tiny counts; a peer whose library is missing
    gets a "not available" row, not a failure."""
    report = tmp_path / "RESULTS.md"
    assert main(["--figures", "send,idle", "--quick", "--reps", "1", "--count", "400",
                 "--send-sizes", "32", "--idle-counts", "3", "--markdown", str(report)]) == 0
    text = report.read_text()
    assert "Send throughput" in text and "Idle engines" in text
    for row in ("raw x1", "wsengine x1", "wsengine x4", "wsengine-session x4",
                "wsengine-w1 x3", "wsengine-w4 x3"):
        assert row in text
    assert "error:" not in text
    for peer in ("picows x1", "picows x3"):
        line = next(line for line in text.splitlines() if f" {peer} " in f" {line} ")
        if not _importable("picows"):
            assert "not available" in line
        else:
            assert "not available" not in line


def test_throughput_with_peers_and_plot(tmp_path: Path) -> None:
    """picows, aiohttp and websockets-async run beside raw and wsengine (or are reported
    missing), both ratio columns are there, and the plot is written."""
    report, plot = tmp_path / "RESULTS.md", tmp_path / "throughput.png"
    assert main(["--figures", "throughput", "--quick", "--reps", "1", "--count", "300",
                 "--sizes", "32", "--clients", "raw,picows,aiohttp,websockets-async,wsengine-w1",
                 "--markdown", str(report), "--plot", str(plot)]) == 0
    text = report.read_text()
    assert ("vs picows" in text) == _importable("picows")
    assert "error:" not in text
    for client in ("picows", "aiohttp", "websockets-async", "wsengine-w1"):
        assert any(line.split()[3:4] == [client] for line in text.splitlines()), client
    if _importable("matplotlib"):
        assert plot.read_bytes().startswith(b"\x89PNG")
