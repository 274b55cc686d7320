# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""Soak runs through the fault proxy: 10 000 reconnects and 1 000 000 messages, with the
thread count and the resident memory staying flat. Slow: run with ``pytest -m slow``
(``SOAK_RECONNECTS`` and ``SOAK_MESSAGES`` shorten a trial run)."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest

from tests.support.proxy import FaultProxy
from tests.support.rawserver import RawConnection, RawServer
from tests.support.rawserver import encode_frame as server_frame
from tests.support.recorder import engine_threads, serve_idle, serve_on
from tests.support.servers import echo_handler, wait_for
from wsengine import (
    CloseMessage,
    EngineConfig,
    HandshakeResponse,
    Message,
    Session,
    WebsocketClient,
    WebsocketEngine,
)

pytestmark = pytest.mark.slow

RECONNECTS = int(os.environ.get("SOAK_RECONNECTS", "10000"))
MESSAGES = int(os.environ.get("SOAK_MESSAGES", "1000000"))
#: Wall-clock budget of each soak run, checked by the test itself (pytest-timeout is the
#: backstop).
BUDGET = 600.0
#: Resident memory the process may gain between the end of the warm-up and the end.
RSS_GROWTH_LIMIT = 8 * 2**20
#: Threads the process may have beyond the warm-up count at any sample.
THREAD_SLACK = 4


def rss() -> int:
    """Resident set size of this process, in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Counter(WebsocketClient):
    """Counts callbacks without keeping them (a soak must not grow its own lists)."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.opens = 0
        self.closes = 0
        self.messages = 0
        self.total = 0  # sum of the numbers carried by the messages
        self.restart_errors = 0

    def on_open(self, session: Session, response: HandshakeResponse, restarting: bool) -> None:
        with self.changed:
            self.opens += 1
            self.changed.notify_all()

    def on_message(self, session: Session, message: Message) -> None:
        number = int(message.data)
        with self.changed:
            self.messages += 1
            self.total += number
            if self.messages % 10_000 == 0:
                self.changed.notify_all()

    def on_close(self, session: Session, close: CloseMessage | None) -> CloseMessage | None:
        with self.changed:
            self.closes += 1
            self.changed.notify_all()
        return None

    def on_restart_error(self, error: Exception, retry_count: int, exit: Any) -> None:
        with self.changed:
            self.restart_errors += 1

    def wait_until(self, predicate: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"soak stalled: opens={self.opens} closes={self.closes} "
                        f"messages={self.messages}"
                    )
                self.changed.wait(min(left, 1.0))


class Flatness:
    """Samples thread count and RSS; checks both stay flat after the warm-up."""

    def __init__(self) -> None:
        self.threads: list[int] = []
        self.rss: list[int] = []
        self.baseline_threads = 0
        self.baseline_rss = 0

    def baseline(self) -> None:
        self.baseline_threads = threading.active_count()
        self.baseline_rss = rss()

    def sample(self) -> None:
        self.threads.append(threading.active_count())
        self.rss.append(rss())

    def check(self) -> None:
        print(f"threads: baseline {self.baseline_threads}, samples {self.threads}; "
              f"RSS MiB: baseline {self.baseline_rss / 2**20:.1f}, "
              f"samples {[round(r / 2**20, 1) for r in self.rss]}")
        assert max(self.threads) <= self.baseline_threads + THREAD_SLACK, self.threads
        growth = self.rss[-1] - self.baseline_rss
        assert growth < RSS_GROWTH_LIMIT, [r // 2**20 for r in self.rss]


@pytest.mark.timeout(BUDGET + 120)
def test_soak_ten_thousand_reconnects_through_the_proxy() -> None:
    """10 000 reconnects (restart, proxy reset and proxy drop in turn) through the proxy:
    every one reopens, threads and RSS stay flat, nothing is left at the end."""
    config = EngineConfig(
        workers=2, reconnect_delay_initial=0.001, reconnect_delay_max=0.001,
        reconnect_delay_factor=1.0, reconnect_jitter=0.0, ping_interval=None,
        open_timeout=5.0, stop_timeout=5.0,
    )
    client = Counter()
    flat = Flatness()
    began = time.monotonic()
    with serve_on(0, echo_handler) as port, \
            FaultProxy(port, max_connections=8, lifetime=BUDGET + 60) as proxy:
        engine = WebsocketEngine(proxy.url, client, config=config)
        engine.start()
        for number in range(1, RECONNECTS + 1):
            previous = engine.session
            assert previous is not None
            if number % 10 == 0:
                proxy.reset()
            elif number % 10 == 5:
                proxy.drop()
            else:
                previous.restart()
            client.wait_until(lambda n=number: client.opens > n, timeout=10)
            # The new session is published just after on_open returns.
            wait_for(lambda p=previous: engine.session not in (None, p), timeout=10)
            if number == 1000:
                flat.baseline()
            elif number % 1000 == 0:
                flat.sample()
            assert time.monotonic() - began < BUDGET
        engine.send("42")
        client.wait_until(lambda: client.messages == 1, timeout=10)
        engine.stop()
        wait_for(lambda: not engine_threads(), timeout=5)
        proxy.wait(lambda: proxy.active == 0, timeout=10)
    assert client.opens == RECONNECTS + 1
    assert client.closes == RECONNECTS + 1
    assert proxy.connections >= RECONNECTS + 1
    flat.check()


def flood(total: int, batch: int = 20_000) -> Any:
    """A RawServer script: on a client frame, send ``total`` text frames "0".."total-1"."""

    def script(conn: RawConnection) -> None:
        conn.recv_frame(10)
        for start in range(0, total, batch):
            conn.send_raw(b"".join(
                server_frame(0x1, str(n).encode()) for n in range(start, min(total, start + batch))
            ))
        serve_idle(conn, timeout=BUDGET)

    return script


@pytest.mark.timeout(BUDGET + 120)
def test_soak_one_million_messages_through_the_proxy() -> None:
    """1 000 000 messages through the proxy arrive, each once; threads and RSS stay
    flat while they flow."""
    config = EngineConfig(workers=4, ping_interval=1.0, ping_timeout=5.0, stop_timeout=5.0)
    client = Counter()
    flat = Flatness()
    began = time.monotonic()
    with RawServer(flood(MESSAGES)) as raw, \
            FaultProxy(raw.port, lifetime=BUDGET + 60) as proxy:
        engine = WebsocketEngine(proxy.url, client, config=config)
        engine.start()
        engine.send("go")
        client.wait_until(lambda: client.messages >= 50_000, timeout=60)
        flat.baseline()
        for step in range(100_000, MESSAGES + 1, 100_000):
            client.wait_until(lambda s=step: client.messages >= s, timeout=BUDGET)
            flat.sample()
            assert time.monotonic() - began < BUDGET
        engine.stop()
        wait_for(lambda: not engine_threads(), timeout=5)
    assert client.messages == MESSAGES
    assert client.total == MESSAGES * (MESSAGES - 1) // 2
    assert client.opens == 1 and client.closes == 1
    flat.check()
