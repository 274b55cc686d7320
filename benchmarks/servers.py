# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""The parent's handles on the server processes and on one child client run.

Every child ends by itself: the flood server after its one connection or its deadline,
the echo server when its stdin pipe closes or at its deadline; a client run is killed
only past its own watchdog plus a margin.
"""

from __future__ import annotations

import json
import selectors
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

__all__ = ["ROOT", "CountServer", "EchoServer", "FloodServer", "progress", "run_child"]

ROOT = Path(__file__).resolve().parent.parent

#: Bounds on every child process, in seconds.
SERVER_START_TIMEOUT = 10.0
SERVER_EXIT_TIMEOUT = 10.0


def progress(text: str) -> None:
    """A progress line on stderr (stdout carries the tables)."""
    print(text, file=sys.stderr, flush=True)


def _read_port(process: subprocess.Popen[str], name: str) -> int:
    stdout = process.stdout
    assert stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(stdout, selectors.EVENT_READ)
        if not selector.select(SERVER_START_TIMEOUT):
            raise RuntimeError(f"{name} did not start")
    line = stdout.readline()
    if not line.startswith("PORT "):
        raise RuntimeError(f"{name} said {line!r}")
    return int(line.split()[1])


def _end(process: subprocess.Popen[str], *pipes: IO[str] | None) -> None:
    """Wait for a server to end by itself; kill it past the limit."""
    try:
        process.wait(SERVER_EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    for pipe in pipes:
        if pipe is not None:
            pipe.close()


class FloodServer:
    """A :mod:`benchmarks.flood_server` child process serving one connection."""

    def __init__(self, mode: str, size: int, kind: str, count: int, deadline: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.flood_server", "--mode", mode,
             "--size", str(size), "--type", kind, "--count", str(count),
             "--deadline", str(deadline)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        try:
            self.port = _read_port(self.process, "flood server")
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def close(self) -> None:
        """Wait for the server to end by itself (after its one connection)."""
        _end(self.process, self.process.stdout)


class CountServer:
    """A :mod:`benchmarks.count_server` child process counting one client's frames."""

    def __init__(self, size: int, count: int, deadline: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.count_server", "--size", str(size),
             "--count", str(count), "--deadline", str(deadline)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        try:
            self.port = _read_port(self.process, "count server")
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def close(self) -> dict[str, Any]:
        """Wait for the server to end (after its one connection); return its counts."""
        stdout = self.process.stdout
        assert stdout is not None
        try:
            out, _ = self.process.communicate(timeout=SERVER_EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
        lines = [line for line in out.splitlines() if line.startswith("{")]
        result: dict[str, Any] = json.loads(lines[-1]) if lines else \
            {"error": f"count server said nothing (exit status {self.process.returncode})"}
        return result


class EchoServer:
    """A :mod:`benchmarks.echo_server` child process; ends when :meth:`close` closes its
    stdin (or at its deadline)."""

    def __init__(self, deadline: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.echo_server", "--deadline", str(deadline)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True,
        )
        try:
            self.port = _read_port(self.process, "echo server")
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()  # end of file: the server ends
        _end(self.process, self.process.stdout)

    def __enter__(self) -> EchoServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_child(module: str, arguments: list[str], timeout: float) -> dict[str, Any]:
    """Run ``python -m module arguments --timeout T``; return its JSON line (``error`` on any
    failure). The child's own watchdog ends it at ``timeout``; this kills it 10 s later."""
    command = [sys.executable, "-m", module, *arguments, "--timeout", str(timeout)]
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout + 10)
    except subprocess.TimeoutExpired:
        return {"error": f"killed after {timeout + 10:g} s"}
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            result: dict[str, Any] = json.loads(line)
            return result
    tail = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
    return {"error": tail[0][:200]}
