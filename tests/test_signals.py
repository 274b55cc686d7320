# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""E13: SIGTERM to a process in run_forever() stops it as Ctrl-C does."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from tests.support.servers import WsServer, wait_for
from wsengine import (
    EngineConfig,
    HandshakeResponse,
    Message,
    Session,
    WebsocketClient,
    WebsocketEngine,
)

ROOT = Path(__file__).resolve().parent.parent

#: Seconds a script gets to end once signalled (it takes a fraction of one when idle).
EXIT_TIMEOUT = 30.0

PRELUDE = """
import signal, sys, threading, time
from wsengine import EngineConfig, WebsocketClient, WebsocketEngine

def wait_until_run_forever_waits():
    # Return once the main thread is in run_forever's wait loop (start() has returned),
    # so that a signal sent next interrupts that loop, not start().
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        frame = sys._current_frames().get(threading.main_thread().ident)
        names = []
        while frame is not None:
            names.append(frame.f_code.co_name)
            frame = frame.f_back
        if "run_forever" in names and "start" not in names:
            return
        time.sleep(0.001)

class Client(WebsocketClient):
    def on_open(self, session, response, restarting):
        if SLOW_CLOSE:
            # The engine's threads (this one and those it starts) block the signals, so
            # the kernel hands them to the main thread, at once: the case under test.
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        session.send("hello")

    def on_message(self, session, message):
        if SLOW_CLOSE:
            wait_until_run_forever_waits()
        print("message", message.data, flush=True)

    def on_close(self, session, close):
        print("on_close", flush=True)
        if SLOW_CLOSE:
            sys.stdin.readline()  # the test writes a line once it signalled again

engine = WebsocketEngine(sys.argv[1], Client(),
                         config=EngineConfig(ping_interval=None, stop_timeout=STOP_TIMEOUT))
"""


def start_script(body: str, url: str, *, slow_close: bool = False,
                 stop_timeout: float = 20.0) -> subprocess.Popen[str]:
    script = (f"SLOW_CLOSE = {slow_close}\nSTOP_TIMEOUT = {stop_timeout}\n"
              + textwrap.dedent(PRELUDE) + textwrap.dedent(body))
    return subprocess.Popen(
        [sys.executable, "-c", script, url], cwd=ROOT, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def read_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    return process.stdout.readline()


def close_codes(server: WsServer) -> list[int | None]:
    return [connection.close_code for connection in server.connections]


@pytest.mark.parametrize("previous", ["default", "custom", "ignored"])
def test_sigterm_in_run_forever_closes_with_1000_and_exits_0(
    echo_server: WsServer, previous: str
) -> None:
    """E13: SIGTERM sends the close frame, run_forever() returns, the previous handler is
    back, and the process exits with status 0."""
    process = start_script(
        f"""
        def custom(signum, frame):
            pass

        previous = {{"default": signal.SIG_DFL, "custom": custom,
                     "ignored": signal.SIG_IGN}}[{previous!r}]
        signal.signal(signal.SIGTERM, previous)
        engine.run_forever()
        print("returned", engine.state.name, flush=True)
        print("restored", signal.getsignal(signal.SIGTERM) == previous, flush=True)
        """,
        echo_server.url,
    )
    assert read_line(process) == "message hello\n"
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=EXIT_TIMEOUT)
    assert process.returncode == 0, err
    assert out.splitlines() == ["on_close", "returned STOPPED", "restored True"], err
    wait_for(lambda: close_codes(echo_server) == [1000], timeout=10)


@pytest.mark.parametrize("first", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_second_sigterm_does_not_cut_the_graceful_stop_short(
    echo_server: WsServer, first: signal.Signals
) -> None:
    """A SIGTERM while the stop begun by SIGTERM or Ctrl-C is under way (on_close running)
    is ignored: the stop completes with 1000 and the process exits 0."""
    process = start_script(
        """
        engine.run_forever()
        print("returned", flush=True)
        """,
        echo_server.url,
        slow_close=True,
    )
    assert read_line(process) == "message hello\n"
    process.send_signal(first)
    assert read_line(process) == "on_close\n"
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate("go on\n", timeout=EXIT_TIMEOUT)
    assert process.returncode == 0, err
    assert out == "returned\n", err
    wait_for(lambda: close_codes(echo_server) == [1000], timeout=10)


def test_sigterm_while_start_dials_stops_and_exits_0() -> None:
    """SIGTERM during a start() that waits for a silent server ends run_forever() as Ctrl-C
    does (the dial is cut after stop_timeout), with status 0."""


    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        url = f"ws://127.0.0.1:{silent.getsockname()[1]}/"
        process = start_script(
            """
            import logging
            logging.basicConfig(level=logging.INFO)
            engine.run_forever()
            print("returned", engine.state.name, flush=True)
            """,
            url,
            stop_timeout=1.0,
        )
        conn, _ = silent.accept()  # the engine is dialing: its handshake waits for us
        with conn:
            conn.recv(4096)
            process.send_signal(signal.SIGTERM)
            out, err = process.communicate(timeout=EXIT_TIMEOUT)
    assert process.returncode == 0, err
    assert out == "returned STOPPED\n", err
    assert "interrupted (SIGTERM)" in err


def test_run_forever_off_the_main_thread_leaves_signals_alone(echo_server: WsServer) -> None:
    """From another thread, run_forever() installs no handler (and still runs)."""
    before = signal.getsignal(signal.SIGTERM)
    seen: list[object] = []

    class Client(WebsocketClient):
        def on_open(self, session: Session, response: HandshakeResponse,
                    restarting: bool) -> None:
            session.send("bye")

        def on_message(self, session: Session, message: Message) -> None:
            seen.append(signal.getsignal(signal.SIGTERM))
            session.exit()

    engine = WebsocketEngine(echo_server.url, Client(), config=EngineConfig(ping_interval=None))
    runner = threading.Thread(target=engine.run_forever, name="test-run-forever")
    runner.start()
    runner.join(20)
    assert not runner.is_alive()
    assert seen == [before]
    assert signal.getsignal(signal.SIGTERM) is before
    wait_for(lambda: close_codes(echo_server) == [1000], timeout=10)
