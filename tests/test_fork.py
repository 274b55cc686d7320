# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""E6: an engine running across os.fork(): the child's copy is stopped, the parent's is not.

Each test runs a script in a subprocess (forking pytest itself would copy its threads and
state): the script starts an engine, forks, checks the child's side there and reports it
on standard output; the server, here, tells what reached the wire on each connection.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection

from tests.conftest import TlsMaterial
from tests.support.servers import WsServer, run_ws_server, wait_for

ROOT = Path(__file__).resolve().parent.parent

#: Seconds a fork script gets before the test fails (it takes about 1 s when idle).
SCRIPT_TIMEOUT = 40.0

SCRIPT = r'''
import json, os, queue, ssl, sys, threading, warnings
from wsengine import EngineStateError, ConnectionClosedError, EngineConfig, EngineState
from wsengine import WebsocketClient, WebsocketEngine

# Python 3.12+ warns about fork() with threads running: that is the very case under test.
warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*fork")
url, adapter_kind, ca_path = sys.argv[1], sys.argv[2], sys.argv[3]

def make_adapter():
    tls = url.startswith("wss:")
    if adapter_kind == "websockets":
        from wsengine.adapters.websockets_sync import WebsocketsAdapter
        return WebsocketsAdapter(**({"ssl": ssl.create_default_context(cafile=ca_path)}
                                    if tls else {}))
    from wsengine.adapters.websocket_client import WebsocketClientAdapter
    return WebsocketClientAdapter(**({"sslopt": {"ca_certs": ca_path}} if tls else {}))

class Client(WebsocketClient):
    def __init__(self):
        self.received = queue.Queue()
        self.session = None
    def on_open(self, session, response, restarting):
        self.session = session
    def on_message(self, session, message):
        self.received.put(message.data)

def exchange(engine, client, text):
    engine.send(text)
    got = client.received.get(timeout=10)
    assert got == text, (got, text)

client = Client()
config = EngineConfig(ping_interval=0.2, ping_timeout=5.0, stop_timeout=5.0)
engine = WebsocketEngine(url, client, adapter=make_adapter(), config=config)
engine.start()
exchange(engine, client, "parent before fork")
# A parent thread holds the pause lock across the fork: the child must not inherit it held.
holding, release = threading.Event(), threading.Event()
def hold_pause_lock():
    with engine.pause_lock:
        holding.set()
        release.wait(10)
holder = threading.Thread(target=hold_pause_lock)
holder.start()
holding.wait(10)
sys.stdout.flush()
pid = os.fork()
if pid == 0:
    report = {"state": engine.state.name, "running": engine.running,
              "threads": [t.name for t in threading.enumerate() if t.name.startswith("wsengine")]}
    try:
        engine.send("child through the parent's engine")
        report["send"] = "sent"
    except EngineStateError as error:
        report["send"] = str(error)
    try:
        client.session.send("child through the parent's session")
        report["session_send"] = "sent"
    except ConnectionClosedError as error:
        report["session_send"] = type(error).__name__
    engine.stop()  # a no-op here: nothing of the parent's run is touched
    report["pause_lock"] = engine.pause_lock.acquire(timeout=5)
    engine.pause_lock.release()
    engine.start()
    report["child_state"] = engine.state.name
    exchange(engine, client, "child on its own connection")
    engine.stop()
    report["child_threads"] = [t.name for t in threading.enumerate()
                               if t.name.startswith("wsengine") and t.is_alive()]
    print("CHILD " + json.dumps(report), flush=True)
    sys.exit(0)  # a normal exit: atexit runs, and must not touch the parent's connection
release.set()
holder.join()
_, status = os.waitpid(pid, 0)
# The parent goes on as if nothing happened, on the same connection.
for number in range(20):
    exchange(engine, client, f"parent after fork {number}")
session_id = client.session.id
engine.stop()
print("PARENT " + json.dumps({"child_status": os.waitstatus_to_exitcode(status),
                              "state": engine.state.name}), flush=True)
'''


class Recorder:
    """Echoes every message and records, per connection, what came and how it closed."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # guards messages; handler threads and the test take it
        self.messages: list[list[str]] = []

    def handler(self, ws: ServerConnection) -> None:
        with self.lock:
            index = len(self.messages)
            self.messages.append([])
        try:
            for message in ws:
                assert isinstance(message, str)
                with self.lock:
                    self.messages[index].append(message)
                ws.send(message)
        except ConnectionClosed:
            pass


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture(params=["ws", "wss"])
def server(request: pytest.FixtureRequest, recorder: Recorder,
           tls: TlsMaterial) -> Iterator[WsServer]:
    """A recording echo server, plain or TLS."""
    options = {"ssl": tls.server_context} if request.param == "wss" else {}
    with run_ws_server(recorder.handler, **options) as running:
        yield running


def run_fork_script(url: str, adapter: str, ca_path: str) -> tuple[dict[str, object],
                                                                   dict[str, object]]:
    process = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT), url, adapter, ca_path],
        cwd=ROOT, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT,
    )
    assert process.returncode == 0, process.stderr
    reports = {}
    for line in process.stdout.splitlines():
        side, _, payload = line.partition(" ")
        reports[side] = json.loads(payload)
    assert set(reports) == {"CHILD", "PARENT"}, (process.stdout, process.stderr)
    return reports["CHILD"], reports["PARENT"]


@pytest.mark.parametrize("adapter", ["websocket_client", "websockets"])
def test_forked_child_is_stopped_and_parent_goes_on(
    adapter: str, server: WsServer, recorder: Recorder, tls: TlsMaterial
) -> None:
    """E6: the child's copy is STOPPED, threadless and mute; the parent keeps its stream."""
    child, parent = run_fork_script(server.url, adapter, tls.ca_path)

    assert child["state"] == "STOPPED" and child["running"] is False
    assert child["threads"] == []
    message = str(child["send"])
    assert "before os.fork()" in message and "post_fork" in message, message
    assert "worker_process_init" in message and "start()" in message, message
    assert child["session_send"] == "ConnectionClosedError"
    assert child["pause_lock"] is True
    assert child["child_state"] == "OPEN"
    assert child["child_threads"] == []
    assert parent == {"child_status": 0, "state": "STOPPED"}

    # Two connections: the parent's, which never saw a byte from the child, and the
    # child's own. Both closed with 1000 by their owner (a close frame from the child on
    # the parent's connection, a shutdown() or a stray TLS record would have ended it
    # before the parent's 20 messages after the fork).
    wait_for(lambda: len(server.connections) == 2
             and all(c.close_code is not None for c in server.connections), timeout=10)
    with recorder.lock:
        messages = [list(m) for m in recorder.messages]
    assert messages[0] == ["parent before fork"] + [
        f"parent after fork {n}" for n in range(20)
    ]
    assert messages[1] == ["child on its own connection"]
    assert [c.close_code for c in server.connections] == [1000, 1000]


def test_engine_never_started_is_untouched_by_fork(echo_server: WsServer) -> None:
    """An engine that was stopped (or never started) before the fork behaves as ever."""
    script = r'''
import os, sys
from wsengine import EngineStateError, WebsocketClient, WebsocketEngine
engine = WebsocketEngine(sys.argv[1], WebsocketClient())
sys.stdout.flush()
pid = os.fork()
if pid == 0:
    try:
        engine.send("x")
    except EngineStateError as error:
        print("CHILD", error, flush=True)
    os._exit(0)
os.waitpid(pid, 0)
'''
    process = subprocess.run([sys.executable, "-c", script, echo_server.url], cwd=ROOT,
                             capture_output=True, text=True, timeout=SCRIPT_TIMEOUT)
    assert process.returncode == 0, process.stderr
    assert process.stdout.strip() == "CHILD send() with no open session (IDLE)"



def test_adapter_raising_in_forget_after_fork_does_not_spare_other_engines(
    echo_server: WsServer,
) -> None:
    """An adapter whose forget_after_fork() raises still leaves its engine, and the
    engines after it, STOPPED in the child."""
    script = r'''
import os, sys
from wsengine import EngineStateError, WebsocketClient, WebsocketEngine
from wsengine.adapters.websocket_client import WebsocketClientAdapter

class Broken(WebsocketClientAdapter):
    def forget_after_fork(self):
        super().forget_after_fork()
        raise RuntimeError("broken adapter")

engines = [WebsocketEngine(sys.argv[1], WebsocketClient(), adapter=Broken()),
           WebsocketEngine(sys.argv[1], WebsocketClient())]
for engine in engines:
    engine.start()
sys.stdout.flush()
pid = os.fork()
if pid == 0:
    for engine in engines:
        try:
            engine.send("x")
        except EngineStateError as error:
            print("CHILD", engine.state.name, "before os.fork()" in str(error), flush=True)
    os._exit(0)
os.waitpid(pid, 0)
for engine in engines:
    engine.stop()
'''
    process = subprocess.run([sys.executable, "-c", script, echo_server.url], cwd=ROOT,
                             capture_output=True, text=True, timeout=SCRIPT_TIMEOUT)
    assert process.returncode == 0, process.stderr
    assert process.stdout.splitlines() == ["CHILD STOPPED True"] * 2, process.stderr
    wait_for(lambda: [c.close_code for c in echo_server.connections] == [1000, 1000], 10)
