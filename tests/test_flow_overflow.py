# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""Slow callbacks do not cost the connection, and the overflow policies (issue 11, points
1, 2 and 7; RELIABILITY E11, E12), against real servers on both adapters."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection

from tests.support.rawserver import RawConnection, RawServer
from tests.support.servers import run_ws_server, wait_for
from tests.test_reliability import (
    Recorder,
    _no_engine_left_running,  # noqa: F401 (autouse)
    fast,
    stop_and_check,
)
from wsengine import EngineState, Message, Session, WebsocketEngine
from wsengine.adapters.base import ConnectionAdapter
from wsengine.adapters.websocket_client import WebsocketClientAdapter
from wsengine.adapters.websockets_sync import WebsocketsAdapter

ADAPTERS: list[Callable[..., ConnectionAdapter]] = [WebsocketClientAdapter, WebsocketsAdapter]


@pytest.fixture(params=ADAPTERS, ids=["websocket-client", "websockets"])
def make_adapter(request: pytest.FixtureRequest) -> Callable[..., ConnectionAdapter]:
    return request.param  # type: ignore[no-any-return]


class Slow(Recorder):
    """on_message waits ``delay`` seconds (or until ``release``) for matching messages."""

    def __init__(self, delay: float, slow: Callable[[Message], bool] = lambda m: True) -> None:
        super().__init__()
        self.delay = delay
        self.slow = slow
        self.release = threading.Event()
        self.entered = threading.Event()

    def on_message(self, session: Session, message: Message) -> None:
        self.entered.set()
        if self.slow(message):
            self.release.wait(self.delay)
        super().on_message(session, message)


@pytest.mark.timeout(90)
def test_e11_slow_callback_keeps_the_connection(
    make_adapter: Callable[..., ConnectionAdapter],
) -> None:
    """API.md's acceptance scenario: workers=1, queue_size=1, on_message takes 3 s; the
    server sends three small messages at once, pings every 0.3 s and closes with 1011 when
    a pong is 1 s late. The connection stays, and all three messages and the two sent
    later arrive in order."""
    later_sent = threading.Event()

    def handler(ws: ServerConnection) -> None:
        for index in range(3):
            ws.send(f"slow{index}")
        threading.Event().wait(1.5)  # the later ones go while the client is busy
        ws.send("later0")
        ws.send("later1")
        later_sent.set()
        try:
            for _ in ws:
                pass
        except ConnectionClosed:
            pass

    client = Slow(3.0, lambda m: str(m.data).startswith("slow"))
    with run_ws_server(handler, ping_interval=0.3, ping_timeout=1.0) as server:
        engine = WebsocketEngine(server.url, client, adapter=make_adapter(),
                                 config=fast(workers=1, queue_size=1))
        engine.start()
        client.wait_count("message", 5, timeout=20)
        assert [m.data for m in client.messages] == [
            "slow0", "slow1", "slow2", "later0", "later1"
        ]
        assert later_sent.is_set()
        assert client.count("close") == 0
        assert len(server.connections) == 1
        assert server.connections[0].close_code is None
        assert engine.state is EngineState.OPEN
        stop_and_check(engine)
        wait_for(lambda: server.connections[0].close_code == 1000)


def silent_after(messages: int) -> Callable[[RawConnection], None]:
    """First connection: send ``messages`` frames, then read nothing and answer nothing
    (a dead peer); later ones: idle until closed."""
    numbers = iter(range(1, 1000))

    def script(conn: RawConnection) -> None:
        if next(numbers) == 1:
            for index in range(messages):
                conn.send_frame(0x1, f"m{index}".encode())
        conn.wait_eof(20)

    return script


def test_dead_peer_is_noticed_while_every_worker_is_busy(
    make_adapter: Callable[..., ConnectionAdapter],
) -> None:
    """The peer goes silent while on_message is stuck: the keepalive still declares it
    dead (the backstop reader shows that nothing comes), so the engine leaves OPEN
    within ping_interval + ping_timeout and more, while the callback is still busy."""
    client = Slow(30.0)
    with RawServer(silent_after(3)) as raw:
        engine = WebsocketEngine(
            raw.url, client, adapter=make_adapter(),
            config=fast(workers=1, queue_size=1, ping_interval=0.2, ping_timeout=0.3,
                        reconnect_delay_initial=5.0, reconnect_delay_max=5.0),
        )
        engine.start()
        assert client.entered.wait(5)
        began = time.monotonic()
        wait_for(lambda: engine.state is not EngineState.OPEN, timeout=3)
        assert time.monotonic() - began < 2.5
        assert not client.release.is_set() and client.count("message") == 0
        client.release.set()
        client.wait_count("close", 1, timeout=5)
        assert client.details("close")[0].code == 1006
        # Held-back messages of the dead connection were still delivered, in order.
        assert [m.data for m in client.messages] == ["m0", "m1", "m2"]
        stop_and_check(engine)


def test_peer_close_is_noticed_while_every_worker_is_busy(
    make_adapter: Callable[..., ConnectionAdapter],
) -> None:
    """The server sends two messages and closes with 4000 while on_message is stuck: the
    engine sees the close at once (it leaves OPEN long before the callback returns), and
    the held-back message is still delivered before on_close."""

    def handler(ws: ServerConnection) -> None:
        ws.send("a")
        ws.send("b")
        ws.close(4000, "bye")

    client = Slow(30.0)
    with run_ws_server(handler) as server:
        engine = WebsocketEngine(
            server.url, client, adapter=make_adapter(),
            config=fast(workers=1, queue_size=1, stop_on_close_codes={4000}),
        )
        engine.start()
        assert client.entered.wait(5)
        wait_for(lambda: engine.state is not EngineState.OPEN, timeout=2)
        assert client.count("message") == 0
        client.release.set()
        assert engine.wait(5)
        assert [m.data for m in client.messages] == ["a", "b"]
        assert [c.code for c in client.details("close")] == [4000]
        assert client.names("message", "close") == ["message", "message", "close"]
        stop_and_check(engine)


def test_block_holds_back_at_most_max_size_bytes(
    make_adapter: Callable[..., ConnectionAdapter],
) -> None:
    """With overflow="block" and a 16 KiB max_size, 600 messages of 1 KiB sent while the
    only worker is stuck: the backstop holds back no more than max_size bytes (one
    message past it at most), then TCP backs up; once released, all arrive, in order."""
    count, size, max_size = 600, 1024, 16 * 1024

    def handler(ws: ServerConnection) -> None:
        for index in range(count):
            ws.send(f"{index:05d}".ljust(size, "x"))
        try:
            for _ in ws:
                pass
        except ConnectionClosed:
            pass

    client = Slow(30.0, lambda m: str(m.data).startswith("00000"))
    with run_ws_server(handler, compression=None) as server:
        engine = WebsocketEngine(
            server.url, client, adapter=make_adapter(max_size=max_size, compression=None),
            config=fast(workers=1, queue_size=2),
        )
        engine.start()
        assert client.entered.wait(5)
        bound = 2 + max_size // size + 1
        wait_for(lambda: engine.queue_depth() >= max_size // size, timeout=3)
        depths = []
        for _ in range(20):
            depths.append(engine.queue_depth())
            threading.Event().wait(0.02)
        assert max(depths) <= bound, depths
        client.release.set()
        client.wait_count("message", count, timeout=20)
        assert [str(m.data)[:5] for m in client.messages] == [f"{i:05d}" for i in range(count)]
        assert engine.dropped == 0
        stop_and_check(engine)


@pytest.fixture
def metrics() -> Iterator[tuple[MeterProvider, InMemoryMetricReader, TracerProvider,
                                InMemorySpanExporter]]:
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield meter_provider, reader, tracer_provider, exporter
    meter_provider.shutdown()
    tracer_provider.shutdown()


def dropped_points(reader: InMemoryMetricReader) -> int:
    data = reader.get_metrics_data()
    total = 0
    if data is None:
        return total
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == "wsengine.messages.dropped":
                    total += sum(p.value for p in metric.data.data_points)
    return total


@pytest.mark.timeout(60)
@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest"])
def test_e12_flood_with_a_drop_policy(
    make_adapter: Callable[..., ConnectionAdapter],
    policy: str,
    metrics: tuple[MeterProvider, InMemoryMetricReader, TracerProvider, InMemorySpanExporter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """E12: 3,000 numbered messages at once, a 5 ms callback, one worker, queue_size 4, a
    server keepalive of 0.3 s / 1 s: the connection stays, delivered + dropped == sent,
    the order is kept, at most queue_size messages ever wait, drop_oldest keeps the
    newest (the last one sent is delivered) and drop_newest the oldest (the first ones
    are); the drops are counted in the metric, a span event and one WARNING."""
    meter_provider, reader, tracer_provider, exporter = metrics
    count, queue_size = 3000, 4
    flooded = threading.Event()

    def handler(ws: ServerConnection) -> None:
        for index in range(count):
            ws.send(f"{index:05d}")
        flooded.set()
        try:
            for _ in ws:
                pass
        except ConnectionClosed:
            pass

    client = Slow(0.005)
    caplog.set_level(logging.WARNING, logger="wsengine")
    with run_ws_server(handler, ping_interval=0.3, ping_timeout=1.0) as server:
        engine = WebsocketEngine(
            server.url, client, adapter=make_adapter(),
            config=fast(workers=1, queue_size=queue_size, overflow=policy),
            meter_provider=meter_provider, tracer_provider=tracer_provider,
        )
        engine.start()
        depths = []
        deadline = time.monotonic() + 30
        while len(client.messages) + engine.dropped < count:
            assert time.monotonic() < deadline, (len(client.messages), engine.dropped)
            depths.append(engine.queue_depth())
            threading.Event().wait(0.005)
        assert flooded.is_set()
        numbers = [int(m.data) for m in client.messages]
        assert len(numbers) + engine.dropped == count
        assert engine.dropped > 0
        assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
        assert max(depths) <= queue_size
        if policy == "drop_oldest":
            assert numbers[-1] == count - 1
        else:
            assert numbers[:queue_size] == list(range(queue_size))
        assert client.count("close") == 0
        assert server.connections[0].close_code is None
        assert dropped_points(reader) == engine.dropped
        warnings = [r for r in caplog.records if "dropped" in r.getMessage()]
        assert len(warnings) == 1
        stop_and_check(engine)
    (session_span,) = [s for s in exporter.get_finished_spans() if s.name == "wsengine.session"]
    events = [e for e in session_span.events if e.name == "wsengine.messages.dropped"]
    assert len(events) == 1 and events[0].attributes is not None
    assert 0 < int(events[0].attributes["wsengine.dropped.count"]) <= engine.dropped  # type: ignore[arg-type]
