# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""Smoke test of the benchmark harness: its servers, probes and tables work (a few seconds;
the numbers are not looked at)."""

from __future__ import annotations

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
