# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""A websockets echo server in a process of its own, for tests where the server must not
share the client's GIL (a server that keeps pinging while the client's threads are busy).

Run as ``python -m tests.support.echo_process [--ping-interval S]``: it binds 127.0.0.1 on a
free port, prints ``PORT <n>`` and serves until its standard input closes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["echo_process"]

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    from websockets.sync.server import serve

    from tests.support.servers import echo_handler

    parser = argparse.ArgumentParser()
    parser.add_argument("--ping-interval", type=float, default=None)
    arguments = parser.parse_args()
    server = serve(
        echo_handler, "127.0.0.1", 0,
        ping_interval=arguments.ping_interval, max_size=None, close_timeout=1.0,
    )
    # Owned by main(); serve_forever returns once shutdown() closed the listener.
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    print("PORT", server.socket.getsockname()[1], flush=True)
    sys.stdin.read()  # until the test closes our stdin
    server.shutdown()
    serving.join(5)


@contextmanager
def echo_process(ping_interval: float | None = None) -> Iterator[str]:
    """Run the echo server in a child process; yield its ``ws://`` URL; end it on exit."""
    command = [sys.executable, "-m", "tests.support.echo_process"]
    if ping_interval is not None:
        command += ["--ping-interval", str(ping_interval)]
    child = subprocess.Popen(
        command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.startswith("PORT "), f"echo server did not start: {line!r}"
        yield f"ws://127.0.0.1:{int(line.split()[1])}/"
    finally:
        assert child.stdin is not None
        child.stdin.close()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(5)
        if child.stdout is not None:
            child.stdout.close()


if __name__ == "__main__":
    main()
