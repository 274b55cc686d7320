# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""The ``wsengine`` command, end to end: ``python -m wsengine`` in a subprocess against
real servers on 127.0.0.1."""

from __future__ import annotations

import base64
import configparser
import importlib
import os
import queue
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.server import ServerConnection

from tests.support.servers import echo_handler, run_ws_server

ROOT = Path(__file__).resolve().parent.parent
#: Seconds a command gets to end (a fraction of one when the machine is idle).
DEADLINE = 30.0
#: The options API.md's "Command line" lists, and no others (besides -h/--help).
OPTIONS = ["--send", "--count", "--header", "--subprotocol", "--proxy", "--no-compression",
           "--adapter", "--no-reconnect", "--quiet", "--stats"]
ADAPTERS = ["websocket_client", "websockets"]
# The environment's proxy settings would route 127.0.0.1 elsewhere.
ENV = {name: value for name, value in os.environ.items()
       if not name.lower().endswith("_proxy")}


def wsengine(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """Run the command to its end; standard input is ``stdin`` (a pipe) or /dev/null."""
    return subprocess.run(
        [sys.executable, "-m", "wsengine", *args], cwd=ROOT, env=ENV, capture_output=True,
        input=stdin.decode() if stdin is not None else None,
        stdin=subprocess.DEVNULL if stdin is None else None, text=True, timeout=DEADLINE,
    )


class Running:
    """A command running in the background, its output lines collected by two threads."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "wsengine", *args], cwd=ROOT, env=ENV, text=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.lines: dict[str, queue.Queue[str]] = {"stdout": queue.Queue(),
                                                   "stderr": queue.Queue()}
        # One reader per pipe; each ends at the pipe's EOF, when the process ends.
        self.readers = [
            threading.Thread(target=self._read, args=(name,), daemon=True)
            for name in self.lines
        ]
        for reader in self.readers:
            reader.start()

    def _read(self, name: str) -> None:
        for line in getattr(self.process, name):
            self.lines[name].put(line.rstrip("\n"))

    def expect(self, name: str, pattern: str) -> str:
        """The first line of ``name`` matching ``pattern`` (earlier lines are skipped)."""
        while True:
            try:
                line = self.lines[name].get(timeout=DEADLINE)
            except queue.Empty:
                raise AssertionError(f"no {name} line matched {pattern!r}") from None
            if re.search(pattern, line):
                return line

    def finish(self) -> int:
        """Wait for the end; the exit status."""
        status = self.process.wait(DEADLINE)
        for reader in self.readers:
            reader.join(DEADLINE)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()
        return status


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def refusing(status: int) -> Callable[[ServerConnection, Request], Response]:
    def refuse(conn: ServerConnection, request: Request) -> Response:
        return conn.respond(status, "no\n")

    return refuse


@contextmanager
def recording_server(
    handler: Callable[[ServerConnection], None] = echo_handler, **kwargs: object,
) -> Iterator[tuple[str, list[Headers], list[int | None]]]:
    """An echo (or ``handler``) server; yields its URL, the request headers of each
    connection, and the close code each connection received."""
    requests: list[Headers] = []
    codes: list[int | None] = []

    def recording(ws: ServerConnection) -> None:
        assert ws.request is not None
        requests.append(ws.request.headers)
        handler(ws)
        with suppress(ConnectionClosed, TimeoutError):
            ws.recv(timeout=DEADLINE)
        codes.append(ws.close_code)

    with run_ws_server(recording, **kwargs) as server:
        yield server.url, requests, codes


def test_sends_each_send_and_prints_the_echoes_until_count() -> None:
    """--send messages go out in order after opening; --count 2 ends with status 0 after
    two lines, closing with 1000."""
    with recording_server() as (url, _, codes):
        result = wsengine(url, "--send", "hello", "--send", "wörld", "--count", "2")
    assert (result.returncode, result.stdout) == (0, "hello\nwörld\n"), result.stderr
    assert result.stderr.startswith("wsengine: connected to ws://127.0.0.1:")
    assert codes == [1000]


def test_stdin_lines_are_sent_as_text_after_the_sends() -> None:
    """Each line of standard input (a pipe) is one TEXT message, in order, CRLF and a
    missing last newline included."""
    with recording_server() as (url, _, _codes):
        result = wsengine(url, "--send", "zero", "--count", "4", "--quiet",
                          stdin=b"one\ntwo\r\nthree")
    assert (result.returncode, result.stdout, result.stderr) == (
        0, "zero\none\ntwo\nthree\n", "")


def test_binary_messages_are_printed_as_hex() -> None:
    """BINARY prints as hex, TEXT as is (newline inside kept), one message per line."""

    def greet(ws: ServerConnection) -> None:
        ws.send(b"\x00\xffab")
        ws.send("two\nlines")

    with recording_server(greet) as (url, _, _codes):
        result = wsengine(url, "--count", "2", "--quiet")
    assert (result.returncode, result.stdout) == (0, "00ff6162\ntwo\nlines\n"), result.stderr


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_headers_and_subprotocol_reach_the_server(adapter: str) -> None:
    """--header and --subprotocol are in the opening handshake, with either adapter."""

    def tell_subprotocol(ws: ServerConnection) -> None:
        ws.send(str(ws.subprotocol))

    with recording_server(tell_subprotocol, subprotocols=["chat"]) as (url, requests, _):
        result = wsengine(url, "--adapter", adapter, "--header", "X-Token: abc def",
                          "--header", "X-Tenant:blue", "--subprotocol", "other",
                          "--subprotocol", "chat", "--count", "1")
    assert (result.returncode, result.stdout) == (0, "chat\n"), result.stderr
    assert "subprotocol chat" in result.stderr
    (headers,) = requests
    assert headers["X-Token"] == "abc def" and headers["X-Tenant"] == "blue"
    offered = [each.strip() for each in headers["Sec-WebSocket-Protocol"].split(",")]
    assert offered == ["other", "chat"]


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("compress", [True, False], ids=["default", "no-compression"])
def test_no_compression_offers_no_extension(adapter: str, compress: bool) -> None:
    """permessage-deflate is offered by default and not with --no-compression."""
    flags = [] if compress else ["--no-compression"]
    with recording_server() as (url, requests, _codes):
        result = wsengine(url, "--adapter", adapter, *flags, "--send", "x" * 1000,
                          "--count", "1", "--quiet")
    assert (result.returncode, result.stdout) == (0, "x" * 1000 + "\n"), result.stderr
    (headers,) = requests
    offered = headers.get("Sec-WebSocket-Extensions")
    assert (offered is not None and offered.startswith("permessage-deflate")) is compress


@pytest.mark.parametrize(("code", "status"), [(1000, 0), (1001, 0), (1011, 1)])
def test_no_reconnect_ends_when_the_server_closes(code: int, status: int) -> None:
    """With --no-reconnect the command ends when the server closes: status 0 for 1000 and
    1001, 1 with one line on stderr otherwise."""

    def close(ws: ServerConnection) -> None:
        ws.send("bye")
        ws.close(code, "done")

    with recording_server(close) as (url, requests, _codes):
        result = wsengine(url, "--no-reconnect", "--quiet")
    assert (result.returncode, result.stdout) == (status, "bye\n")
    assert len(requests) == 1
    if status:
        assert result.stderr.splitlines() == [
            f"wsengine: connection to {url} lost ({code} done)"]
    else:
        assert result.stderr == ""


def test_reconnects_then_gives_up_when_refused_for_good() -> None:
    """Without --no-reconnect a closed connection is reopened; a 403 on that reopening
    is a refusal for good: status 1 and a line saying so."""
    handshakes: list[int] = []

    def first_only(conn: ServerConnection, request: Request) -> Response | None:
        handshakes.append(1)
        return None if len(handshakes) == 1 else conn.respond(403, "no\n")

    def close(ws: ServerConnection) -> None:
        ws.send("first")
        ws.close(1012, "restarting")

    with recording_server(close, process_request=first_only) as (url, _, _codes):
        result = wsengine(url)
    assert (result.returncode, result.stdout) == (1, "first\n")
    assert len(handshakes) == 2
    assert result.stderr.splitlines()[1:] == [
        "wsengine: connection closed (1012 restarting); reconnecting",
        f"wsengine: gave up reconnecting to {url}: server rejected the opening handshake "
        "with HTTP 403",
    ]


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_refused_connection_exits_1_with_one_line(adapter: str) -> None:
    """Nothing listening: status 1, one line on stderr, no traceback."""
    url = f"ws://127.0.0.1:{free_port()}/"
    result = wsengine(url, "--adapter", adapter)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"wsengine: cannot connect to {url}: Connection refused"]


def test_rejected_handshake_exits_1_with_one_line() -> None:
    """A 403 to the first handshake: status 1, one line naming the status."""
    with run_ws_server(echo_handler, process_request=refusing(403)) as server:
        result = wsengine(server.url)
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"wsengine: cannot connect to {server.url}:") and "403" in line


@pytest.mark.parametrize(("args", "says"), [
    (["http://127.0.0.1:1/"], "must start with ws:// or wss://"),
    (["ws://127.0.0.1:1/", "--bogus"], "unrecognized arguments: --bogus"),
    ([], "required: URL"),
    (["ws://127.0.0.1:1/", "--count", "0"], "--count: must be an integer >= 1"),
    (["ws://127.0.0.1:1/", "--adapter", "curl"], "invalid choice: 'curl'"),
    (["ws://127.0.0.1:1/", "--header", "no colon"], "--header must look like"),
    (["ws://127.0.0.1:1/", "--proxy", "ftp://u:secret@127.0.0.1:1"], "--proxy must be"),
    (["ws://127.0.0.1:1/", "--proxy", "http://u:secret@127.0.0.1"], "needs a host and a port"),
], ids=["scheme", "option", "no-url", "count", "adapter", "header",
        "proxy-scheme", "proxy-port"])
def test_usage_errors_exit_2_with_one_line(args: list[str], says: str) -> None:
    """A bad URL or option: status 2, one line on stderr (no usage dump, no traceback, no
    credential), nothing on stdout."""
    result = wsengine(*args)
    assert (result.returncode, result.stdout) == (2, "")
    (line,) = result.stderr.splitlines()
    assert line.startswith("wsengine: error: ") and says in line, line
    assert "secret" not in line


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_ends_with_a_close_frame_and_status_0(signum: signal.Signals) -> None:
    """Ctrl-C or SIGTERM while running: the server receives a 1000 close, the command
    exits 0."""
    with recording_server() as (url, _, codes):
        command = Running(url, "--send", "ready")
        try:
            command.expect("stdout", "^ready$")
            command.process.send_signal(signum)
            status = command.finish()
        finally:
            command.process.kill()
            command.finish()
    assert status == 0
    assert codes == [1000]


def test_stats_prints_rates_on_stderr_every_second() -> None:
    """--stats writes 'stats: N msgs/s, B bytes/s' lines on stderr while it runs."""

    def burst(ws: ServerConnection) -> None:
        for number in range(50):
            ws.send(f"{number:04d}")   # 4 bytes each

    with recording_server(burst) as (url, _, _codes):
        command = Running(url, "--stats", "--quiet")
        try:
            command.expect("stdout", "^0049$")
            first = command.expect("stderr", r"^wsengine: stats: \d+ msgs/s, \d+ bytes/s$")
            command.process.send_signal(signal.SIGTERM)
            status = command.finish()
        finally:
            command.process.kill()
            command.finish()
    assert status == 0
    messages, size = map(int, re.findall(r"\d+", first))
    # Rates over an interval of about a second, each rounded to a whole number: the
    # 50 messages of 4 bytes give 50 msgs/s and 200 bytes/s only if the interval is
    # exactly 1 s (1.003 s gives 50 and 199). Within rounding, bytes are 4 per message.
    assert messages >= 1
    assert abs(size - 4 * messages) <= 2.5


@pytest.mark.parametrize("adapter", ["websocket_client", "websockets"])
def test_a_proxy_url_tunnels_through_http_connect_with_its_credentials(adapter: str) -> None:
    """--proxy http://user:password@host:port dials through that proxy's CONNECT, sends
    the credentials to the proxy, and never prints them, with either adapter."""
    with recording_server() as (url, _, _codes), connect_proxy() as (proxy_port, heads):
        result = wsengine(url, "--proxy", f"http://me:s%3Acret@127.0.0.1:{proxy_port}",
                          "--adapter", adapter, "--send", "through", "--count", "1")
    assert (result.returncode, result.stdout) == (0, "through\n"), result.stderr
    (head,) = heads
    target = url.removeprefix("ws://").rstrip("/")
    assert head.startswith(f"CONNECT {target} HTTP/1.1\r\n")
    token = base64.b64encode(b"me:s:cret").decode()
    assert f"Proxy-Authorization: Basic {token}" in head
    assert "cret" not in result.stderr and token not in result.stderr


def test_help_lists_every_option_on_one_line() -> None:
    """--help lists exactly the contract's options, each on one line with its help."""
    result = wsengine("--help")
    assert result.returncode == 0
    listed = result.stdout.split("\noptions:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert all(line.startswith("  -") for line in listed), listed  # no wrapped help
    names = [line.split()[0].rstrip(",") for line in listed]
    assert names == ["-h", *OPTIONS]
    assert all(len(line.split(None, 2)) == 3 for line in listed)


def test_the_console_script_is_the_module_entry_point() -> None:
    """setup.cfg installs ``wsengine`` running the function ``python -m wsengine`` runs."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    scripts = dict(line.split(" = ") for line in
                   config["options.entry_points"]["console_scripts"].strip().splitlines())
    module, _, name = scripts["wsengine"].partition(":")
    entry = getattr(importlib.import_module(module), name)
    main_source = (ROOT / "wsengine" / "__main__.py").read_text()
    assert f"from {module} import {name}" in main_source and callable(entry)


@contextmanager
def connect_proxy() -> Iterator[tuple[int, list[str]]]:
    """A one-connection HTTP CONNECT proxy on 127.0.0.1; yields its port and the request
    heads it received."""
    heads: list[str] = []
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(DEADLINE)

    def serve() -> None:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        with client:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(4096)
                if not chunk:
                    return
                head += chunk
            head, _, rest = head.partition(b"\r\n\r\n")
            heads.append(head.decode() + "\r\n")
            host, _, port = head.split()[1].decode().rpartition(":")
            with socket.create_connection((host, int(port)), timeout=DEADLINE) as upstream:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                upstream.sendall(rest)
                pump(client, upstream)

    # The proxy's only thread: serves one tunnel, ends when either side closes; joined.
    thread = threading.Thread(target=serve, name="test-connect-proxy", daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], heads
    finally:
        listener.close()
        thread.join(DEADLINE)
        assert not thread.is_alive()


def pump(one: socket.socket, other: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    with selectors.DefaultSelector() as selector:
        selector.register(one, selectors.EVENT_READ, other)
        selector.register(other, selectors.EVENT_READ, one)
        while True:
            for key, _ in selector.select(DEADLINE):
                source = key.fileobj
                assert isinstance(source, socket.socket)
                data = source.recv(65536)
                if not data:
                    return
                key.data.sendall(data)
