# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""The example: ``python -m example`` end to end, its flags, its telemetry and EchoClient."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter
from opentelemetry.sdk.trace.export import ConsoleSpanExporter
from websockets.sync.client import connect

from example.__main__ import Options, client_url, parse_args
from example.client import EchoClient
from example.server import EchoServer
from example.spantree import parse_spans, render_trees
from example.telemetry import (
    DEFAULT_SERVICE_NAME,
    make_metric_exporter,
    make_span_exporter,
    setup_telemetry,
)
from tests.support.servers import WsServer, wait_for
from wsengine import EngineConfig, Message, Session, WebsocketEngine

#: The repository root: ``python -m example`` runs from there (the example is not installed).
ROOT = Path(__file__).resolve().parent.parent

#: Seconds a run of the example gets before the test fails.
RUN_TIMEOUT = 30.0

FAST = EngineConfig(
    workers=1,
    reconnect_delay_initial=0.01,
    reconnect_delay_max=0.05,
    ping_interval=None,
    stop_timeout=3.0,
    open_timeout=3.0,
)


def example_env(**extra: str) -> dict[str, str]:
    """The environment for a run: ours, without any OTEL_ or WSENGINE_ setting."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OTEL_", "WSENGINE_"))
    }
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONFAULTHANDLER"] = "1"  # SIGABRT dumps every thread's stack (see finish())
    env.update(extra)
    return env


def run_example(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m example ARGS`` to its end and return what it printed."""
    return subprocess.run(
        [sys.executable, "-m", "example", *args],
        cwd=ROOT,
        env=example_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


class LogReader:
    """Reads a running process's stderr in a thread, so a test can wait for a line."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        # Fed by the reader thread, which ends at end of file (the process exited).
        self._pending: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(
            target=self._read, args=(stream,), name="test-log-reader", daemon=True
        )
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._pending.put(line)
        self._pending.put(None)

    def wait_line(self, pattern: str, timeout: float = RUN_TIMEOUT) -> re.Match[str]:
        """Return the match of the first line from now on that contains ``pattern``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._pending.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} within {timeout} s") from None
            if line is None:
                raise AssertionError(f"the process ended before a line matching {pattern!r}")
            self.lines.append(line)
            found = re.search(pattern, line)
            if found:
                return found

    def text(self) -> str:
        """Everything read, once the process has exited."""
        self._thread.join(RUN_TIMEOUT)
        while True:
            try:
                line = self._pending.get_nowait()
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
        return "".join(self.lines)


def finish(process: subprocess.Popen[str], log: LogReader) -> tuple[int, str]:
    """Wait for the process to exit; return its status and its stderr.

    Raises:
        AssertionError: it did not exit in time; the message holds its log and the stack of
            each of its threads (faulthandler, on SIGABRT).
    """
    try:
        returncode = process.wait(RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        process.wait(RUN_TIMEOUT)
        raise AssertionError(f"the example did not exit in time:\n{log.text()}") from None
    return returncode, log.text()


Running = tuple[subprocess.Popen[str], LogReader]


@contextmanager
def running_example(tmp_path: Path, *args: str) -> Iterator[Running]:
    """Start ``python -m example ARGS`` (stdout to a file); kill it if the test fails."""
    with (tmp_path / "stdout.txt").open("w") as stdout:
        process = subprocess.Popen(
            [sys.executable, "-m", "example", *args],
            cwd=ROOT,
            env=example_env(),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert process.stderr is not None
        try:
            yield process, LogReader(process.stderr)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(RUN_TIMEOUT)
            process.stderr.close()


def test_both_modes_echo_count_messages_and_print_spans() -> None:
    """Server and client in one process: 5 echoes, exit 0, engine spans on stdout."""
    result = run_example("--interval", "0.05", "--count", "5", "--port", "0",
                         "--pause-every", "0")

    assert result.returncode == 0, result.stderr
    for number in range(1, 6):
        assert f"echo {number} received: 'hello #{number}'" in result.stderr
    assert "echo 6 received" not in result.stderr
    assert "client stopped: sent=5 received=5 opens=1 restarts=0 errors=0" in result.stderr
    assert "server stopped" in result.stderr
    assert '"name": "wsengine.session"' in result.stdout
    assert '"name": "wsengine.callback.on_message"' in result.stdout
    assert '"name": "example.send"' in result.stdout
    assert '"service.name": "wsengine-example"' in result.stdout


def log_lines(stderr: str, thread: str = r"\S+") -> list[str]:
    """The messages of the ``example`` logger's lines, from ``thread`` (a regex)."""
    pattern = re.compile(rf"^\S+ \S+ (?:{thread})\s+example\s+\w+\s+(.*)$")
    return [found.group(1) for line in stderr.splitlines() if (found := pattern.match(line))]


PAUSE_LINE = r"pause #(\d+) after echo (\d+): took the pause lock in [\d.]+ ms"
RESUME_LINE = (
    r"pause #(\d+) over: released the lock after [\d.]+ s \(had waited [\d.]+ ms for it\); "
    r"the server answered 'pause #\d+: still there\?' in [\d.]+ ms; "
    r"(\d+) messages? arrived meanwhile, delivered after the release"
)


def test_the_application_pauses_the_client_thread_by_hand() -> None:
    """Every 3 echoes the main thread pauses, asks the server by hand and resumes; what
    arrived meanwhile is delivered after the release, none lost; the pause is a span."""
    result = run_example("--interval", "0.05", "--count", "7", "--port", "0",
                         "--pause-every", "3", "--pause-for", "1", "--heartbeat", "0.2")

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    messages = log_lines(result.stderr)
    # No message lost, none twice, in order, the pauses' questions not among them.
    echoes = [m for m in messages if m.startswith("echo ")]
    assert echoes == [f"echo {n} received: 'hello #{n}'" for n in range(1, 8)]
    assert "client stopped: sent=7 received=7 opens=1 restarts=0 errors=0" in messages

    # The client ran on its own named thread, the application on the main thread.
    client_thread = log_lines(result.stderr, "example-client")
    assert client_thread[0].startswith("client thread started: connecting to ws://127.0.0.1:")
    assert client_thread[-1] == "client thread ends: the engine is STOPPED"
    main_thread = log_lines(result.stderr, "MainThread")
    assert any(re.match(r"heartbeat: engine OPEN, session \w+, sent=\d+", m) for m in main_thread)

    # Two pauses (after echoes 3 and 6), each announced and ended by the main thread;
    # while paused no echo is delivered, and the message sent meanwhile comes right after.
    pauses = [i for i, m in enumerate(messages) if re.match(PAUSE_LINE, m)]
    resumes = [i for i, m in enumerate(messages) if re.match(RESUME_LINE, m)]
    assert len(pauses) == len(resumes) == 2
    for number, (paused, resumed) in enumerate(zip(pauses, resumes, strict=True), 1):
        pause = re.match(PAUSE_LINE, messages[paused])
        resume = re.match(RESUME_LINE, messages[resumed])
        assert pause is not None and resume is not None
        assert messages[paused] in main_thread and messages[resumed] in main_thread
        after_echo = int(pause.group(2))
        assert (int(pause.group(1)), after_echo, int(resume.group(1))) == (
            number, 3 * number, number)
        during = messages[paused + 1:resumed]
        assert not [m for m in during if m.startswith("echo ")]
        assert f"sending 'hello #{after_echo + 1}'" in during
        assert int(resume.group(2)) == 1
        delivered = next(m for m in messages[resumed + 1:] if m.startswith("echo "))
        assert delivered == f"echo {after_echo + 1} received: 'hello #{after_echo + 1}'"
    # The loop beats at once after a pause longer than the heartbeat: all were delivered.
    assert any("pauses=1 held_back=1 delivered_after_release=1" in m for m in main_thread)

    # The pauses are spans of the session's trace, under the on_message that asked.
    spans = parse_spans(result.stdout)
    by_id = {span["context"]["span_id"]: span for span in spans}
    session = [span for span in spans if span["name"] == "wsengine.session"]
    assert len(session) == 1
    pause_spans = [span for span in spans if span["name"] == "example.pause"]
    assert [span["attributes"]["example.pause.after_echo"] for span in pause_spans] == [3, 6]
    receives = sorted(
        (span for span in spans if span["name"] == "wsengine.receive"),
        key=lambda span: span["start_time"],
    )
    for span in pause_spans:
        assert span["context"]["trace_id"] == session[0]["context"]["trace_id"]
        callback = by_id[span["parent_id"]]
        receive = by_id[callback["parent_id"]]
        assert (callback["name"], receive["name"]) == (
            "wsengine.callback.on_message", "wsengine.receive")
        assert receive["parent_id"] == session[0]["context"]["span_id"]
        assert span["attributes"]["thread.name"] == "MainThread"
        assert span["attributes"]["example.pause.held_back"] == 1
        assert [event["name"] for event in span["events"]] == [
            "lock acquired", "answer read", "lock released"]
        assert span["status"]["status_code"] == "UNSET"
        # The next message was received (read from the socket) only after the release.
        following = receives[receives.index(receive) + 1]
        assert following["start_time"] >= span["events"][-1]["timestamp"]
    tree = render_trees(spans)
    assert re.search(
        r"\n│   │   └── wsengine\.callback\.on_message .*\n│   │       └── example\.pause ", tree)


def test_pause_every_0_never_pauses() -> None:
    """``--pause-every 0``: echoes go on without a pause line or an example.pause span."""
    result = run_example("--interval", "0.02", "--count", "7", "--port", "0",
                         "--pause-every", "0", "--heartbeat", "0.05")

    assert result.returncode == 0, result.stderr
    messages = log_lines(result.stderr)
    assert [m for m in messages if m.startswith("echo ")] == [
        f"echo {n} received: 'hello #{n}'" for n in range(1, 8)]
    assert not [m for m in messages if m.startswith("pause #")]
    assert "example.pause" not in {span["name"] for span in parse_spans(result.stdout)}
    assert "pauses=0" in result.stderr


def test_default_run_shows_the_whole_story_within_20_seconds(tmp_path: Path) -> None:
    """With no flag but a free port: echoes, a pause and its end, a heartbeat from the
    main thread and spans on stdout, all in the first 20 s; then Ctrl-C ends it."""
    started = time.monotonic()
    with running_example(tmp_path, "--port", "0") as (process, log):
        log.wait_line(r"echo 1 received", timeout=20)
        log.wait_line(r"MainThread +example +INFO +pause #1 after echo 3", timeout=20)
        log.wait_line(r"MainThread +example +INFO +pause #1 over", timeout=20)
        log.wait_line(r"MainThread +example +INFO +heartbeat: engine OPEN", timeout=20)
        stdout = tmp_path / "stdout.txt"
        wait_for(lambda: '"name": "example.pause"' in stdout.read_text(),
                 timeout=max(0.0, started + 20 - time.monotonic()))
        assert time.monotonic() - started < 20
        process.send_signal(signal.SIGINT)
        returncode, stderr = finish(process, log)

    assert returncode == 0, stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_in_the_middle_of_a_pause_stops_cleanly(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """Ctrl-C or SIGTERM while the main thread holds the pause lock: the lock is released,
    the client closes with 1000, exit 0, and the pause span says it was interrupted."""
    args = ("--interval", "0.05", "--port", "0", "--pause-every", "2", "--pause-for", "60")
    with running_example(tmp_path, *args) as (process, log):
        log.wait_line(r"MainThread +example +INFO +pause #1 after echo 2")
        log.wait_line(r"sending 'hello #3'")  # the client goes on while the pause holds
        process.send_signal(signum)
        returncode, stderr = finish(process, log)

    assert returncode == 0, stderr
    assert "Traceback" not in stderr
    messages = log_lines(stderr)
    assert "pause #1 interrupted: releasing the pause lock" in messages
    assert not [m for m in messages if m.startswith("pause #1 over")]
    assert "interrupted: stopping" in messages
    assert "closing connection" in stderr
    assert re.search(r"closed \(code 1000\) after \d+ echoes", stderr)
    assert "client thread ends: the engine is STOPPED" in messages
    assert "server stopped" in messages
    pause = [s for s in parse_spans((tmp_path / "stdout.txt").read_text())
             if s["name"] == "example.pause"]
    assert len(pause) == 1
    assert [event["name"] for event in pause[0]["events"]] == [
        "lock acquired", "answer read", "interrupted"]
    assert pause[0]["status"]["status_code"] == "UNSET"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_everything_gracefully(tmp_path: Path, signum: signal.Signals) -> None:
    """Ctrl-C or SIGTERM mid-run: the client closes with 1000, the server stops, exit 0."""
    args = ("--interval", "0.05", "--port", "0", "--no-console-spans")
    with running_example(tmp_path, *args) as (process, log):
        log.wait_line(r"echo 2 received")
        process.send_signal(signum)
        returncode, stderr = finish(process, log)

    assert returncode == 0, stderr
    assert "interrupted" in stderr
    assert "closing connection" in stderr  # on_close ran before the close frame went
    assert re.search(r"closed \(code 1000\) after \d+ echoes", stderr)
    assert "server stopped" in stderr
    assert (tmp_path / "stdout.txt").read_text() == ""  # --no-console-spans


def test_server_mode_echoes_until_sigterm(tmp_path: Path) -> None:
    """``--mode server`` echoes for any client and stops on SIGTERM with exit 0."""
    with running_example(tmp_path, "--mode", "server", "--port", "0") as (process, log):
        found = log.wait_line(r"listening on 127\.0\.0\.1:(\d+)")
        with connect(f"ws://127.0.0.1:{found.group(1)}/", open_timeout=5) as ws:
            ws.send("ping")
            assert ws.recv(timeout=5) == "ping"
            ws.send(b"\x00\x01")
            assert ws.recv(timeout=5) == b"\x00\x01"
        log.wait_line(r"closed \(code 1000\) after 2 echoes")
        process.send_signal(signal.SIGTERM)
        returncode, stderr = finish(process, log)

    assert returncode == 0, stderr
    assert "server stopped" in stderr
    assert "telemetry:" not in stderr  # the server side sets up no tracing


def test_client_mode_talks_to_an_external_server(echo_server: WsServer) -> None:
    """``--mode client --url`` reaches another server and honours ``--no-console-spans``."""
    result = run_example(
        "--mode", "client", "--url", echo_server.url,
        "--interval", "0.01", "--count", "3", "--no-console-spans",
    )

    assert result.returncode == 0, result.stderr
    assert "echo 3 received: 'hello #3'" in result.stderr
    assert "example.server" not in result.stderr  # no server of its own
    assert len(echo_server.connections) == 1
    assert result.stdout == ""


def test_client_mode_exits_1_when_it_cannot_connect() -> None:
    """A first start that fails is reported and ends with exit status 1."""
    # Bound but not listening: connections to it are refused, and nobody else can take it.
    with socket.socket() as closed_port:
        closed_port.bind(("127.0.0.1", 0))
        port = closed_port.getsockname()[1]
        result = run_example("--mode", "client", "--port", str(port), "--no-console-spans")

    assert result.returncode == 1
    assert "could not connect" in result.stderr


def test_bad_url_exits_2() -> None:
    """A URL that is not ws:// or wss:// is refused before any connection, with status 2."""
    result = run_example("--mode", "client", "--url", "http://127.0.0.1:1/", "--no-console-spans")

    assert result.returncode == 2
    assert "ws:// or wss://" in result.stderr
    assert "Traceback" not in result.stderr


def test_parse_args_defaults() -> None:
    """With no flag and no variable, both sides run on 127.0.0.1:8765 every second,
    forever, pausing 2 s every 3 echoes, with a heartbeat every 3 s."""
    assert parse_args([], {}) == Options(
        mode="both", host="127.0.0.1", port=8765, url=None, interval=1.0, count=0,
        max_restarts=5, pause_every=3, pause_for=2.0, heartbeat=3.0, console_spans=True,
    )


def test_parse_args_reads_the_environment() -> None:
    """Each WSENGINE_* variable sets its flag's default."""
    environ = {
        "WSENGINE_MODE": "client",
        "WSENGINE_HOST": "0.0.0.0",
        "WSENGINE_PORT": "9000",
        "WSENGINE_URL": "ws://server:8765/",
        "WSENGINE_INTERVAL": "0.5",
        "WSENGINE_COUNT": "7",
        "WSENGINE_MAX_RESTARTS": "2",
        "WSENGINE_PAUSE_EVERY": "0",
        "WSENGINE_PAUSE_FOR": "0.5",
        "WSENGINE_HEARTBEAT": "10",
    }
    assert parse_args([], environ) == Options(
        mode="client", host="0.0.0.0", port=9000, url="ws://server:8765/", interval=0.5,
        count=7, max_restarts=2, pause_every=0, pause_for=0.5, heartbeat=10.0,
        console_spans=True,
    )


def test_parse_args_flags_win_over_the_environment() -> None:
    """A flag given on the command line overrides its variable."""
    environ = {"WSENGINE_MODE": "client", "WSENGINE_URL": "ws://server:8765/",
               "WSENGINE_COUNT": "7"}
    options = parse_args(
        ["--mode", "server", "--count", "1", "--url", "ws://127.0.0.1:1/", "--no-console-spans"],
        environ,
    )
    assert (options.mode, options.count, options.url) == ("server", 1, "ws://127.0.0.1:1/")
    assert options.console_spans is False


@pytest.mark.parametrize(
    ("argv", "environ", "named"),
    [
        ([], {"WSENGINE_PORT": "http"}, "WSENGINE_PORT"),
        ([], {"WSENGINE_MODE": "proxy"}, "WSENGINE_MODE"),
        ([], {"WSENGINE_INTERVAL": "nan"}, "WSENGINE_INTERVAL"),
        (["--interval", "-1"], {}, "--interval"),
        (["--count", "-1"], {}, "--count"),
        (["--max-restarts", "0"], {}, "--max-restarts"),
        (["--port", "70000"], {}, "--port"),
        (["--mode", "proxy"], {}, "--mode"),
        (["--mode", "client", "--port", "0"], {}, "--url"),
        (["--pause-every", "-1"], {}, "--pause-every"),
        ([], {"WSENGINE_PAUSE_EVERY": "often"}, "WSENGINE_PAUSE_EVERY"),
        (["--pause-for", "nan"], {}, "--pause-for"),
        (["--heartbeat", "0"], {}, "--heartbeat"),
        ([], {"WSENGINE_HEARTBEAT": "-3"}, "WSENGINE_HEARTBEAT"),
    ],
)
def test_parse_args_rejects_bad_values(
    argv: list[str], environ: Mapping[str, str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad flag or variable exits with status 2 and a message that names it."""
    with pytest.raises(SystemExit) as raised:
        parse_args(argv, environ)
    assert raised.value.code == 2
    assert named in capsys.readouterr().err


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "ws://127.0.0.1:8765/"),
        ("0.0.0.0", "ws://127.0.0.1:8765/"),
        ("::", "ws://[::1]:8765/"),
        ("::1", "ws://[::1]:8765/"),
    ],
)
def test_client_url_reaches_the_bound_server(host: str, url: str) -> None:
    """The client's default URL goes through the loopback when the server binds everything."""
    assert client_url(host, 8765) == url


def test_otlp_exporter_is_chosen_when_the_endpoint_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_EXPORTER_OTLP_ENDPOINT selects the OTLP http/protobuf exporter (nothing is sent)."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_METRICS_EXPORTER", raising=False)

    telemetry = setup_telemetry(console_spans=True)
    try:
        assert isinstance(telemetry.span_exporter, OTLPSpanExporter)
        assert "OTLP http/protobuf at http://127.0.0.1:4318" in telemetry.description
        assert telemetry.meter_provider is None
    finally:
        telemetry.shutdown()  # no span was made: nothing to export


def test_traces_endpoint_alone_selects_otlp_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """The traces-only variable is enough for the OTLP branch."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:4318/v1/traces")
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)

    exporter = make_span_exporter(console=False)
    assert exporter is not None
    exporter.shutdown()  # it never sent anything
    assert isinstance(exporter, OTLPSpanExporter)


def test_console_exporter_without_an_endpoint() -> None:
    """With no endpoint, spans go to the console, or nowhere when the console is off."""
    assert isinstance(make_span_exporter(console=True, environ={}), ConsoleSpanExporter)
    assert make_span_exporter(console=False, environ={}) is None


@pytest.mark.parametrize(
    ("environ", "service_name"),
    [({}, DEFAULT_SERVICE_NAME), ({"OTEL_SERVICE_NAME": "echo-bot"}, "echo-bot")],
)
def test_service_name_comes_from_the_environment(
    environ: Mapping[str, str], service_name: str
) -> None:
    """OTEL_SERVICE_NAME names the service; ``wsengine-example`` otherwise."""
    telemetry = setup_telemetry(console_spans=False, environ=environ)
    try:
        assert telemetry.tracer_provider.resource.attributes["service.name"] == service_name
    finally:
        telemetry.shutdown()


def test_metric_exporter_follows_otel_metrics_exporter() -> None:
    """Metrics are off by default, printed with ``console``, refused when unknown."""
    assert make_metric_exporter({}) is None
    assert make_metric_exporter({"OTEL_METRICS_EXPORTER": "none"}) is None
    assert isinstance(make_metric_exporter({"OTEL_METRICS_EXPORTER": "console"}),
                      ConsoleMetricExporter)
    with pytest.raises(ValueError, match="OTEL_METRICS_EXPORTER"):
        make_metric_exporter({"OTEL_METRICS_EXPORTER": "prometheus"})


def test_echo_server_echoes_text_and_binary() -> None:
    """EchoServer on port 0 sends every message back with its type, then shuts down."""
    with EchoServer("127.0.0.1", 0) as server, connect(
        f"ws://127.0.0.1:{server.port}/", open_timeout=5
    ) as ws:
        ws.send("text")
        assert ws.recv(timeout=5) == "text"
        ws.send(b"bytes")
        assert ws.recv(timeout=5) == b"bytes"


def test_echo_server_shutdown_before_start_returns() -> None:
    """Shutting down a server that never served releases its port at once."""
    server = EchoServer("127.0.0.1", 0)
    server.shutdown()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", server.port))  # free again


def test_client_stops_after_count_echoes(echo_server: WsServer) -> None:
    """With ``count``, the client exits the engine once that many echoes came back."""
    client = EchoClient(interval=0, count=3)
    engine = WebsocketEngine(echo_server.url, client, config=FAST)
    engine.start()
    try:
        assert engine.wait(10)
    finally:
        engine.stop()
    counters = client.snapshot()
    assert (counters.sent, counters.received, counters.opens) == (3, 3, 1)
    assert client.done.is_set()


def pending_sends() -> list[threading.Thread]:
    """The EchoClient timers alive now."""
    return [t for t in threading.enumerate() if t.name.startswith("example-send")]


def test_stop_cancels_the_pending_send(echo_server: WsServer) -> None:
    """stop() during the wait between messages cancels it: no send, no timer left."""
    client = EchoClient(interval=60)
    engine = WebsocketEngine(echo_server.url, client, config=FAST)
    engine.start()
    try:
        wait_for(lambda: pending_sends() != [])  # the echo came; the next send waits
        timers = pending_sends()
    finally:
        engine.stop()
    for timer in timers:
        timer.join(2.0)
        assert not timer.is_alive()
    assert client.snapshot().sent == 1


def test_restart_reopens_and_starts_over(echo_server: WsServer) -> None:
    """After session.restart(), on_open counts a restart and sends again."""
    client = EchoClient(interval=60)
    engine = WebsocketEngine(echo_server.url, client, config=FAST)
    engine.start()
    try:
        wait_for(lambda: client.snapshot().received == 1)
        session = engine.session
        assert session is not None
        session.restart()
        wait_for(lambda: client.snapshot().received == 2)
    finally:
        engine.stop()
    counters = client.snapshot()
    assert (counters.opens, counters.restarts, counters.sent, counters.errors) == (2, 1, 2, 0)


def test_client_gives_up_after_max_restarts() -> None:
    """on_restart_error calls exit() at the max_restarts-th failure in a row, not before."""
    client = EchoClient(max_restarts=3)
    exits: list[int] = []
    for retry_count in (1, 2, 3):
        client.on_restart_error(ConnectionRefusedError(), retry_count, lambda: exits.append(1))
        assert len(exits) == (1 if retry_count == 3 else 0)
    assert client.gave_up.is_set()
    assert client.snapshot().errors == 3


def test_send_on_a_closed_session_is_not_counted(echo_server: WsServer) -> None:
    """A timer that fires after the connection closed sends nothing and raises nothing."""
    closed: list[Session] = []

    class Keeper(EchoClient):
        def on_message(self, session: Session, message: Message) -> None:
            closed.append(session)
            session.exit()

    client = Keeper(interval=60)
    engine = WebsocketEngine(echo_server.url, client, config=FAST)
    engine.start()
    try:
        assert engine.wait(10)
    finally:
        engine.stop()
    assert closed and closed[0].closed
    client.send_next(closed[0])
    assert client.snapshot().sent == 1  # the one from on_open only


@pytest.mark.parametrize(
    "kwargs",
    [{"interval": -1.0}, {"interval": float("nan")}, {"count": -1}, {"max_restarts": 0},
     {"pause_every": -1}],
)
def test_echo_client_rejects_bad_arguments(kwargs: dict[str, float]) -> None:
    """EchoClient refuses a negative or NaN interval, a negative count, max_restarts < 1,
    a negative pause_every."""
    with pytest.raises(ValueError):
        EchoClient(**kwargs)  # type: ignore[arg-type]


def fake_span(name: str, span_id: str, parent: str | None, start: str, **attributes: object
              ) -> dict[str, object]:
    """A span as the console exporter prints it, reduced to what spantree reads."""
    return {
        "name": name, "context": {"trace_id": "0xt", "span_id": span_id},
        "parent_id": parent, "start_time": f"2026-01-01T00:00:0{start}Z",
        "end_time": f"2026-01-01T00:00:0{start}.5Z", "status": {"status_code": "UNSET"},
        "attributes": attributes, "events": [],
    }


def test_spantree_draws_children_in_start_order_and_counts_the_rest() -> None:
    """Children come in start order under their parent; ``limit`` counts the hidden ones."""
    spans = [
        fake_span("child-b", "b", "r", "2"),
        fake_span("root", "r", None, "0"),
        fake_span("grandchild", "g", "a", "3", **{"example.pause.number": 1}),
        fake_span("child-a", "a", "r", "1"),
        fake_span("child-c", "c", "r", "4"),
    ]
    text = "\n".join(json.dumps(span, indent=4) for span in spans)
    assert render_trees(parse_spans(text)).splitlines() == [
        "trace 0xt",
        "root  500.0 ms",
        "├── child-a  500.0 ms",
        "│   └── grandchild  500.0 ms  example.pause.number=1",
        "├── child-b  500.0 ms",
        "└── child-c  500.0 ms",
    ]
    assert render_trees(parse_spans(text), limit=1).splitlines()[-1] == "└── ... 2 more"
    with pytest.raises(ValueError):
        parse_spans('{"not": "a span"}')
