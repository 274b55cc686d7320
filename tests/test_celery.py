# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""The Celery example (example/celery) for real: a prefork worker with two pool processes
on a real redis broker, each process holding its own connection to a local recording
server, a task sending through its process's engine, and a warm shutdown on SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.recorder import closed_port
from tests.support.servers import WsServer, run_ws_server, wait_for
from tests.test_django import alive, hellos
from tests.test_example import LogReader
from tests.test_fork import Recorder

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ROOT / "example" / "celery"

#: Seconds for anything a process does here (redis or the worker booting, a task's round
#: trip, a warm shutdown); each takes about a second when the machine is idle.
DEADLINE = 30.0


def under_ci() -> bool:
    """True when the environment says this is a CI run (``CI=true``, as CI services set)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@dataclass
class Redis:
    process: subprocess.Popen[str]
    log: LogReader
    url: str


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Redis]:
    """A throwaway ``redis-server`` on 127.0.0.1 and a free port, no persistence.

    Skipped when there is no ``redis-server`` on PATH, unless under CI, where that fails
    (``.ci/run`` installs it). The port is picked, then bound by redis: if another
    process took it in between, redis exits and another port is tried.
    """
    executable = shutil.which("redis-server")
    if executable is None:
        reason = ("redis-server is not on PATH (Debian: apt-get install redis-server); "
                  "the Celery example needs a real broker")
        if under_ci():
            pytest.fail(f"CI is set and {reason}: .ci/run should have installed it")
        pytest.skip(reason)
    for _ in range(3):
        port = closed_port()  # free a moment ago
        process = subprocess.Popen(
            [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(tmp_path), "--daemonize", "no"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )
        assert process.stdout is not None
        log = LogReader(process.stdout)
        try:
            log.wait_line("Ready to accept connections", DEADLINE)
            break
        except AssertionError:
            if process.poll() is None:  # still running, not ready: stop it, then fail
                process.kill()
                process.wait(DEADLINE)
                log.text()
                process.stdout.close()
                raise
            process.wait(DEADLINE)
            sys.stderr.write(log.text())  # "Address already in use", presumably
            process.stdout.close()
    else:
        pytest.fail("redis-server did not start on any of 3 free ports (see stderr)")
    try:
        yield Redis(process, log, f"redis://127.0.0.1:{port}/0")
    finally:
        process.terminate()
        try:
            process.wait(DEADLINE)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(DEADLINE)
            log.text()  # read to the end: the reader thread is done with the pipe
            process.stdout.close()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def feed_server(recorder: Recorder) -> Iterator[WsServer]:
    """The feed: a websockets server that echoes and records every message."""
    with run_ws_server(recorder.handler) as server:
        yield server


def app_env(broker_url: str, feed_url: str) -> dict[str, str]:
    """Our environment, with wsengine importable from this checkout, the broker (also the
    result backend) and the feed's URL set."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env["CELERY_BROKER_URL"] = broker_url
    env["CELERY_RESULT_BACKEND"] = broker_url
    env["FEED_URL"] = feed_url
    return env


@contextmanager
def run_worker(env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """Run ``celery -A feedapp worker --pool=prefork --concurrency=2`` in example/celery.

    The worker runs in a session of its own: whatever the test does, its main process and
    pool processes are killed on the way out. Its log goes to this test's stderr (shown
    when the test fails).
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "feedapp", "worker", "--pool=prefork",
         "--concurrency=2", "--loglevel=INFO", "--without-heartbeat", "--without-gossip",
         "--without-mingle"],
        cwd=PROJECT, env=env, start_new_session=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    assert process.stderr is not None
    log = LogReader(process.stderr)
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(DEADLINE)
        sys.stderr.write(log.text())
        process.stderr.close()


#: What a program that queues a task runs: it imports the app (which creates an engine but
#: never starts it), queues ``send`` and waits for its result (the pool process's pid).
#: In a process of its own, so that the Celery client's broker and backend connections
#: end with it.
CLIENT = """
import sys
import feedapp
result = feedapp.send.apply_async(args=[sys.argv[1]])
print(result.get(timeout=float(sys.argv[2])))
result.forget()
feedapp.app.close()
"""


def run_task(env: dict[str, str], text: str) -> int:
    """Queue ``feedapp.send(text)`` from a client process; return the task's result."""
    client = subprocess.run(
        [sys.executable, "-c", CLIENT, text, str(DEADLINE)],
        cwd=PROJECT, env=env, capture_output=True, text=True, timeout=DEADLINE + 10,
    )
    assert client.returncode == 0, client.stderr
    return int(client.stdout)


def parent_pid(pid: int) -> int:
    """The parent of the running process ``pid``."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


@pytest.mark.timeout(90)
def test_prefork_pool_processes_each_hold_a_connection_and_stop_with_1000(
    redis: Redis, feed_server: WsServer, recorder: Recorder
) -> None:
    """``worker_process_init`` connects each of the two pool processes (the main process,
    which imported the app and created the engine, never connects); a task's message
    reaches the feed on its own pool process's connection; SIGTERM (warm shutdown) ends
    both connections with 1000 (``worker_process_shutdown``) and leaves no process."""
    env = app_env(redis.url, feed_server.url)
    with run_worker(env) as worker:
        main = worker.pid
        wait_for(lambda: len(hellos(recorder)) == 2, DEADLINE)
        pool = set(hellos(recorder))
        assert main not in pool
        assert {parent_pid(pid) for pid in pool} == {main}  # both forked by the main process
        assert len(feed_server.connections) == 2

        pid = run_task(env, "from a task")
        assert pid in pool
        index = hellos(recorder)[pid]
        wait_for(lambda: recorder.messages[index][1:] == ["from a task"], DEADLINE)
        assert len(feed_server.connections) == 2

        worker.send_signal(signal.SIGTERM)
        assert worker.wait(DEADLINE) == 0
    wait_for(lambda: [c.close_code for c in feed_server.connections] == [1000, 1000],
             DEADLINE)
    with recorder.lock:
        assert sum(len(messages) for messages in recorder.messages) == 3
    assert not [pid for pid in {main, *pool} if alive(pid)]
