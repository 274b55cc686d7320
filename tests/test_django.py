# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""The Django example (example/django) for real: its management command, and gunicorn with
two sync workers, each holding its own connection to a local recording server."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.servers import WsServer, run_ws_server, wait_for
from tests.test_example import LogReader
from tests.test_fork import Recorder

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ROOT / "example" / "django"

#: Seconds for anything a process does here (boot, answer, shut down); each takes about
#: a second when the machine is idle.
DEADLINE = 30.0


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def feed_server(recorder: Recorder) -> Iterator[WsServer]:
    """The feed: a websockets server that echoes and records every message."""
    with run_ws_server(recorder.handler) as server:
        yield server


def project_env(feed_url: str) -> dict[str, str]:
    """Our environment, with wsengine importable from this checkout and FEED_URL set."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env["DJANGO_SETTINGS_MODULE"] = "feedsite.settings"
    env["FEED_URL"] = feed_url
    return env


@dataclass
class Gunicorn:
    process: subprocess.Popen[str]
    log: LogReader
    port: int

    def post(self, path: str, **form: str) -> tuple[int, dict[str, object]]:
        """POST ``form`` to ``path``; return the status and the JSON answer."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=urllib.parse.urlencode(form).encode(),
        )
        try:
            with urllib.request.urlopen(request, timeout=DEADLINE) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            with error:
                return error.code, json.loads(error.read())

    def worker_pids(self, count: int) -> set[int]:
        """The pids of the first ``count`` workers booted, from gunicorn's log."""
        return {int(self.log.wait_line(r"Booting worker with pid: (\d+)", DEADLINE).group(1))
                for _ in range(count)}


@contextmanager
def run_gunicorn(*args: str, cwd: Path, env: dict[str, str]) -> Iterator[Gunicorn]:
    """Run ``gunicorn ARGS`` bound to a listening socket on 127.0.0.1 and a free port.

    The socket is made here and passed as ``fd://`` (no race for the port). gunicorn runs
    in a session of its own: whatever the test does, its master and workers are killed
    on the way out.
    """
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--bind", f"fd://{listener.fileno()}", *args],
            cwd=cwd, env=env, pass_fds=[listener.fileno()], start_new_session=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True,
        )
    assert process.stderr is not None
    log = LogReader(process.stderr)
    try:
        yield Gunicorn(process, log, port)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(DEADLINE)
        log.text()  # read to the end: the reader thread is done with the pipe
        process.stderr.close()


def alive(pid: int) -> bool:
    """True while a process ``pid`` exists and is not a zombie."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return status.rsplit(")", 1)[1].split()[0] != "Z"


def hellos(recorder: Recorder) -> dict[int, int]:
    """Connection index by the pid each connection announced itself with."""
    with recorder.lock:
        return {
            int(messages[0].split()[-1]): index
            for index, messages in enumerate(recorder.messages)
            if messages and messages[0].startswith("hello from pid ")
        }


def test_runfeed_runs_until_sigterm_and_closes_with_1000(
    feed_server: WsServer, recorder: Recorder
) -> None:
    """``manage.py runfeed URL`` prints the feed; SIGTERM closes with 1000, exit 0."""
    process = subprocess.Popen(
        [sys.executable, "manage.py", "runfeed", feed_server.url, "--send", "hi there"],
        cwd=PROJECT, env=project_env(feed_server.url), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == "hi there\n"
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=DEADLINE)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(DEADLINE)
    assert process.returncode == 0, err
    assert out == "" and "feed stopped" in err
    wait_for(lambda: [c.close_code for c in feed_server.connections] == [1000], DEADLINE)


def test_gunicorn_workers_each_hold_a_connection_and_stop_with_1000(
    feed_server: WsServer, recorder: Recorder
) -> None:
    """Two sync workers: one connection each (post_fork), a request to the view reaches
    the feed through its worker's connection, and SIGTERM to the master closes every
    connection with 1000 (worker_exit) and leaves no process behind."""
    with run_gunicorn("-c", str(PROJECT / "gunicorn.conf.py"), cwd=ROOT,
                      env=project_env(feed_server.url)) as gunicorn:
        workers = gunicorn.worker_pids(2)
        wait_for(lambda: set(hellos(recorder)) == workers, DEADLINE)
        assert len(feed_server.connections) == 2

        status, answer = gunicorn.post("/send", text="from the view")
        assert status == 200, answer
        pid = answer["pid"]
        assert pid in workers
        index = hellos(recorder)[pid]  # type: ignore[index]
        wait_for(lambda: recorder.messages[index][1:] == ["from the view"], DEADLINE)

        gunicorn.process.send_signal(signal.SIGTERM)
        assert gunicorn.process.wait(DEADLINE) == 0
    wait_for(lambda: [c.close_code for c in feed_server.connections] == [1000, 1000],
             DEADLINE)
    with recorder.lock:
        assert sum(len(messages) for messages in recorder.messages) == 3
    assert not [pid for pid in workers if alive(pid)]


def test_engine_started_before_preload_fork_refuses_to_send_in_workers(
    feed_server: WsServer, recorder: Recorder, tmp_path: Path
) -> None:
    """The --preload mistake (engine started at import, in the master): the workers'
    copies raise the fork's EngineStateError, nothing of theirs reaches the master's
    connection, and the master's own connection is left intact."""
    (tmp_path / "preloaded.py").write_text(
        "from feedsite.wsgi import application  # noqa: F401\n"
        "from feed import engine as feed\n"
        "feed.start()  # the mistake: at import, so in the master under --preload\n"
    )
    with run_gunicorn("--preload", "--workers", "2", "--chdir", str(PROJECT),
                      "--pythonpath", str(tmp_path), "preloaded:application",
                      cwd=tmp_path, env=project_env(feed_server.url)) as gunicorn:
        workers = gunicorn.worker_pids(2)
        master = gunicorn.process.pid
        wait_for(lambda: set(hellos(recorder)) == {master}, DEADLINE)

        for _ in range(2):
            status, answer = gunicorn.post("/send", text="from the view")
            assert status == 503, answer
            error = str(answer["error"])
            assert re.search(rf"started\s+in process {master} before os.fork\(\)", error), error
            assert "post_fork" in error and "start()" in error

        gunicorn.process.send_signal(signal.SIGTERM)
        assert gunicorn.process.wait(DEADLINE) == 0
    # The master's connection carried its hello and nothing else, and the master closed
    # it at exit (a worker writing into it, or shutting it down, would show here).
    with recorder.lock:
        assert recorder.messages == [[f"hello from pid {master}"]]
    wait_for(lambda: [c.close_code for c in feed_server.connections] == [1000], DEADLINE)
    assert not [pid for pid in workers if alive(pid)]
