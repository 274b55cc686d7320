# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""Process-level promises: a forgotten stop(), a stuck callback, Ctrl-C in run_forever."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.support.servers import WsServer, wait_for

ROOT = Path(__file__).resolve().parent.parent

PRELUDE = """
import sys, threading
import concurrent.futures.thread as futures_thread
from wsengine import EngineConfig, WebsocketClient, WebsocketEngine

def worker_kind():
    # "hosted": a daemon ThreadPoolExecutor thread left out of the stdlib's exit join.
    thread = threading.current_thread()
    frame = sys._getframe()
    while frame is not None and not (
        frame.f_code.co_name == "_worker" and frame.f_code.co_filename == futures_thread.__file__
    ):
        frame = frame.f_back
    hosted = frame is not None and thread.daemon and thread not in futures_thread._threads_queues
    return "hosted" if hosted else "plain"

class Client(WebsocketClient):
    def on_open(self, session, response, restarting):
        session.send("hello")

    def on_message(self, session, message):
        print("message", message.data, worker_kind(), flush=True)
        got.set()
        if STUCK:
            threading.Event().wait()  # never returns

got = threading.Event()
config = EngineConfig(ping_interval=None, stop_timeout=1.0)
engine = WebsocketEngine(sys.argv[1], Client(), config=config)
"""


def run_script(body: str, url: str, *, stuck: bool = False) -> subprocess.Popen[str]:
    script = f"STUCK = {stuck}\n" + textwrap.dedent(PRELUDE) + textwrap.dedent(body)
    return subprocess.Popen(
        [sys.executable, "-c", script, url],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def first_close_code(server: WsServer) -> int | None:
    return server.connections[0].close_code if server.connections else None


def test_forgotten_stop_still_exits_and_closes_cleanly(echo_server: WsServer) -> None:
    """C21: a program that never calls stop() exits; the engine sends its close frame."""
    process = run_script(
        """
        engine.start()
        got.wait(5)
        """,
        echo_server.url,
    )
    out, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert "message hello hosted" in out
    wait_for(lambda: first_close_code(echo_server) == 1000, timeout=5)


def test_stuck_callback_does_not_block_interpreter_exit(echo_server: WsServer) -> None:
    """C8: with on_message stuck forever, the program still exits in about stop_timeout."""
    process = run_script(
        """
        import logging
        logging.basicConfig(level=logging.WARNING)
        engine.start()
        got.wait(5)
        """,
        echo_server.url,
        stuck=True,
    )
    began = time.monotonic()
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "message hello hosted" in out  # stuck on an executor thread, and still exits
    assert time.monotonic() - began < 15
    assert "on_message" in err  # the warning names the stuck callback


def test_ctrl_c_in_run_forever_stops_gracefully(echo_server: WsServer) -> None:
    """C19: SIGINT during run_forever() stops the engine (close 1000) and exits 0."""
    process = run_script(
        """
        import logging
        logging.basicConfig(level=logging.INFO)
        engine.run_forever()
        print("returned", flush=True)
        """,
        echo_server.url,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("message hello hosted"), line
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert "returned" in out
    wait_for(lambda: first_close_code(echo_server) == 1000, timeout=5)


def test_engine_exit_hook_runs_before_the_stdlib_joins_executor_threads() -> None:
    """The window between an executor thread's creation and its removal from the stdlib's
    exit join is closed by a hook that runs before that join: a thread the stdlib joins at
    exit sees the hook's flag already set."""
    script = textwrap.dedent(
        """
        import time
        import concurrent.futures.thread as futures_thread
        from concurrent.futures import ThreadPoolExecutor
        from wsengine import _dispatch

        def observe():
            # Runs until the stdlib's exit handler starts (it sets _shutdown, then joins us).
            deadline = time.monotonic() + 10
            while not futures_thread._shutdown and time.monotonic() < deadline:
                time.sleep(0.001)
            print("stdlib exit join began", futures_thread._shutdown, flush=True)
            print("engine hook ran first", _dispatch._interpreter_exiting, flush=True)

        print("hosted", _dispatch.HOSTED, flush=True)
        ThreadPoolExecutor(1).submit(observe)
        """
    )
    process = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=30,
    )
    assert process.returncode == 0, process.stderr
    assert process.stdout.splitlines() == [
        "hosted True", "stdlib exit join began True", "engine hook ran first True",
    ]
