# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""Spans and metrics, checked with the SDK's in-memory exporter and metric reader."""

from __future__ import annotations

import gc
import logging
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import StatusCode
from websockets.sync.server import ServerConnection

from tests.support.servers import WsServer, echo_handler, run_ws_server, wait_for
from wsengine import (
    ConfigError,
    EngineConfig,
    EngineStartError,
    HandshakeResponse,
    Message,
    Session,
    WebsocketClient,
    WebsocketEngine,
)
from wsengine.adapters.websocket_client import WebsocketClientAdapter
from wsengine.adapters.websockets_sync import WebsocketsAdapter

CONFIG = EngineConfig(
    workers=2, reconnect_delay_initial=0.01, reconnect_delay_max=0.02, ping_interval=None
)
SECRET_PASSWORD = "hunter2-secret-pass"
SECRET_TOKEN = "tok-9f8e7d6c5b4a"
SECRET_HEADER = "Bearer hdr-0a1b2c3d"


@dataclass
class Telemetry:
    exporter: InMemorySpanExporter
    tracer_provider: TracerProvider
    reader: InMemoryMetricReader
    meter_provider: MeterProvider

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        found = self.exporter.get_finished_spans()
        return [s for s in found if name is None or s.name == name]

    def metric(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        points: list[Any] = []
        if data is None:
            return points
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        points.extend(metric.data.data_points)
        return points


@pytest.fixture
def otel() -> Iterator[Telemetry]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield Telemetry(exporter, tracer_provider, reader, meter_provider)
    tracer_provider.shutdown()
    meter_provider.shutdown()


class Observer(WebsocketClient):
    """Records the current span inside callbacks and counts messages."""

    def __init__(self, expected: int = 1) -> None:
        self.current: list[trace.Span] = []
        self.user_spans: list[trace.Span] = []
        self.count = 0
        self.expected = expected
        self.done = threading.Event()
        self.lock = threading.Lock()

    def on_open(self, session: Session, response: HandshakeResponse, restarting: bool) -> None:
        self.current.append(trace.get_current_span())

    def on_message(self, session: Session, message: Message) -> None:
        tracer = trace.get_tracer("user-code")
        with tracer.start_as_current_span("user.work") as span:
            self.user_spans.append(span)
        with self.lock:
            self.current.append(trace.get_current_span())
            self.count += 1
            if self.count >= self.expected:
                self.done.set()


def span_by_id(spans: list[ReadableSpan], span_id: int) -> ReadableSpan:
    return next(s for s in spans if s.context is not None and s.context.span_id == span_id)


def test_spans_have_the_contract_names_and_parentage(echo_server: WsServer,
                                                     otel: Telemetry) -> None:
    """D6: start, dial, session, receive and callback spans; a user span inside on_message
    is a child of the engine's callback span, whose trace leads to the session."""
    trace_provider_global = trace.get_tracer_provider()
    client = Observer()
    engine = WebsocketEngine(echo_server.url, client, config=CONFIG,
                             tracer_provider=otel.tracer_provider)
    engine.start()
    engine.send("hi")
    assert client.done.wait(5)
    engine.stop()
    names = {s.name for s in otel.spans()}
    assert {
        "wsengine.start", "wsengine.dial", "wsengine.session", "wsengine.receive",
        "wsengine.callback.on_open", "wsengine.callback.on_message",
        "wsengine.callback.on_close", "wsengine.close", "wsengine.stop",
    } <= names
    spans = otel.spans()
    (session,) = otel.spans("wsengine.session")
    (receive,) = otel.spans("wsengine.receive")
    (on_message,) = otel.spans("wsengine.callback.on_message")
    assert on_message.parent is not None and receive.parent is not None
    assert on_message.parent.span_id == receive.context.span_id  # type: ignore[union-attr]
    assert receive.parent.span_id == session.context.span_id  # type: ignore[union-attr]
    # The span current inside on_message is the engine's callback span.
    inside = client.current[-1].get_span_context()
    assert inside.span_id == on_message.context.span_id  # type: ignore[union-attr]
    # Dial and session belong to the start's trace.
    (start,) = otel.spans("wsengine.start")
    assert session.context.trace_id == start.context.trace_id  # type: ignore[union-attr]
    assert span_by_id(spans, session.parent.span_id).name == "wsengine.start"  # type: ignore[union-attr]
    assert trace.get_tracer_provider() is trace_provider_global


def test_user_span_in_on_message_is_child_of_the_engine_span(echo_server: WsServer,
                                                             otel: Telemetry) -> None:
    """A span the user starts inside on_message (global tracer) is parented by ours when
    the user's tracer shares our provider."""
    client = Observer()

    class Nested(Observer):
        def on_message(self, session: Session, message: Message) -> None:
            with otel.tracer_provider.get_tracer("user").start_as_current_span("user.work"):
                pass
            super().on_message(session, message)

    client = Nested()
    with WebsocketEngine(echo_server.url, client, config=CONFIG,
                         tracer_provider=otel.tracer_provider) as engine:
        engine.send("x")
        assert client.done.wait(5)
    (user,) = [s for s in otel.spans("user.work") if s.instrumentation_scope.name == "user"]
    (on_message,) = otel.spans("wsengine.callback.on_message")
    assert user.parent is not None
    assert user.parent.span_id == on_message.context.span_id  # type: ignore[union-attr]


def test_attributes_follow_semantic_conventions(echo_server: WsServer,
                                                otel: Telemetry) -> None:
    """D3: server.address/port, network.protocol.name and friends; status left unset."""
    client = Observer()
    with WebsocketEngine(echo_server.url, client, config=CONFIG,
                         tracer_provider=otel.tracer_provider) as engine:
        engine.send(b"12345")
        assert client.done.wait(5)
    (session,) = otel.spans("wsengine.session")
    attributes = dict(session.attributes or {})
    assert attributes["server.address"] == "127.0.0.1"
    assert attributes["server.port"] == echo_server.port
    assert attributes["network.protocol.name"] == "websocket"
    assert attributes["network.transport"] == "tcp"
    assert attributes["url.scheme"] == "ws"
    assert "wsengine.session.id" in attributes
    (receive,) = otel.spans("wsengine.receive")
    assert receive.attributes is not None
    assert receive.attributes["wsengine.message.type"] == "BINARY"
    assert receive.attributes["wsengine.message.size"] == 5
    for span in otel.spans():
        assert span.status.status_code is StatusCode.UNSET, span.name


def test_raising_callback_marks_its_span_error(echo_server: WsServer, otel: Telemetry,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """C5: the callback span of a raising on_message has ERROR, error.type and an event."""

    class Raising(Observer):
        def on_message(self, session: Session, message: Message) -> None:
            super().on_message(session, message)
            raise ValueError("no good")

    client = Raising()
    with WebsocketEngine(echo_server.url, client, config=CONFIG,
                         tracer_provider=otel.tracer_provider) as engine:
        engine.send("x")
        assert client.done.wait(5)
    (span,) = otel.spans("wsengine.callback.on_message")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None and span.attributes["error.type"] == "ValueError"
    assert [e.name for e in span.events] == ["exception"]
    (receive,) = otel.spans("wsengine.receive")
    assert receive.status.status_code is StatusCode.UNSET


def test_failed_start_marks_dial_and_start_spans(otel: Telemetry) -> None:
    """A refused dial leaves dial and start spans with ERROR and error.type."""
    import socket

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    engine = WebsocketEngine(f"ws://127.0.0.1:{port}/", Observer(), config=CONFIG,
                             tracer_provider=otel.tracer_provider)
    with pytest.raises(EngineStartError):
        engine.start()
    for name, error in (("wsengine.dial", "ConnectionRefusedError"),
                        ("wsengine.start", "EngineStartError")):
        (span,) = otel.spans(name)
        assert span.status.status_code is StatusCode.ERROR, name
        assert span.attributes is not None
        assert span.attributes["error.type"] == error


def test_nothing_secret_reaches_spans_events_or_logs(otel: Telemetry,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """C2/D1/D2: a password, a token and a header value never appear in any attribute,
    event or log record, also when the server refuses with 401 and Set-Cookie."""
    from websockets.datastructures import Headers
    from websockets.http11 import Response

    refuse = {"on": False}

    def process_request(connection: ServerConnection, request: Any) -> Response | None:
        if refuse["on"]:
            headers = Headers([("Set-Cookie", f"session={SECRET_TOKEN}")])
            return Response(401, "Unauthorized", headers, SECRET_HEADER.encode())
        return None

    caplog.set_level(logging.DEBUG, logger="wsengine")
    client = Observer()
    adapter = WebsocketClientAdapter(header={"Authorization": SECRET_HEADER})
    with run_ws_server(echo_handler, process_request=process_request) as server:
        url = (f"ws://user:{SECRET_PASSWORD}@127.0.0.1:{server.port}/feed"
               f"?token={SECRET_TOKEN}&sig={SECRET_TOKEN}&q=1")
        engine = WebsocketEngine(url, client, adapter=adapter, config=CONFIG,
                                 tracer_provider=otel.tracer_provider)
        engine.start()
        engine.send("x")
        assert client.done.wait(5)
        refuse["on"] = True
        session = engine.session
        assert session is not None
        session.restart()
        assert engine.wait(5)  # 401 is fatal
    texts: list[str] = [repr(engine)]
    for span in otel.spans():
        texts.append(repr(dict(span.attributes or {})))
        texts.append(span.name)
        texts.append(str(span.status.description))
        for event in span.events:
            texts.append(repr(dict(event.attributes or {})))
    texts.extend(record.getMessage() for record in caplog.records)
    texts.extend(str(record.exc_info) for record in caplog.records if record.exc_info)
    blob = "\n".join(texts)
    for secret in (SECRET_PASSWORD, SECRET_TOKEN, SECRET_HEADER, "hdr-0a1b2c3d"):
        assert secret not in blob
    (session_span,) = otel.spans("wsengine.session")
    assert session_span.attributes is not None
    assert session_span.attributes["url.full"] == (
        f"ws://REDACTED:REDACTED@127.0.0.1:{server.port}/feed"
        "?token=REDACTED&sig=REDACTED&q=1"
    )
    restarts = otel.spans("wsengine.restart")
    assert restarts and restarts[-1].status.status_code is StatusCode.ERROR


def test_one_receive_span_per_message_and_none_left_open(echo_server: WsServer,
                                                         otel: Telemetry) -> None:
    """D5: every message gets exactly one receive span, and every span ends."""
    total = 3000

    def burst(ws: ServerConnection) -> None:
        for number in range(total):
            ws.send(str(number))
        ws.recv()

    client = Observer(expected=total)
    with run_ws_server(burst) as server:
        engine = WebsocketEngine(server.url, client, config=CONFIG,
                                 tracer_provider=otel.tracer_provider)
        engine.start()
        assert client.done.wait(20)
        engine.stop()
    assert len(otel.spans("wsengine.receive")) == total
    assert len(otel.spans("wsengine.callback.on_message")) == total
    assert len(otel.spans("wsengine.session")) == 1


def test_unsampled_session_creates_no_per_message_spans(echo_server: WsServer) -> None:
    """With a parent-based sampler that drops the trace, no per-message span is made and
    callbacks still see a (non-recording) current span."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(ALWAYS_OFF))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    client = Observer(expected=20)
    with WebsocketEngine(echo_server.url, client, config=CONFIG,
                         tracer_provider=provider) as engine:
        for number in range(20):
            engine.send(str(number))
        assert client.done.wait(5)
    provider.shutdown()
    assert exporter.get_finished_spans() == ()
    assert all(not span.is_recording() for span in client.current)


def test_noop_provider_still_runs_callbacks(echo_server: WsServer) -> None:
    """With the API's no-op provider the engine works and callbacks see a span object."""
    client = Observer(expected=5)
    with WebsocketEngine(echo_server.url, client, config=CONFIG,
                         tracer_provider=trace.NoOpTracerProvider()) as engine:
        for number in range(5):
            engine.send(str(number))
        assert client.done.wait(5)
    assert len(client.current) == 6


def test_metrics_count_messages_connections_and_callbacks(echo_server: WsServer,
                                                          otel: Telemetry) -> None:
    """Messages received and sent, bytes, open connections, reconnects, callback timing
    and queue depth are reported."""
    client = Observer(expected=3)
    engine = WebsocketEngine(echo_server.url, client, config=CONFIG,
                             meter_provider=otel.meter_provider)
    engine.start()
    for data in ("a", "bb", "ccc"):
        engine.send(data)
    assert client.done.wait(5)
    session = engine.session
    assert session is not None
    session.restart()
    wait_for(lambda: engine.session is not None and engine.session is not session)

    def total(name: str) -> float:
        return sum(point.value for point in otel.metric(name))

    wait_for(lambda: total("wsengine.messages.received") == 3)
    assert total("wsengine.messages.sent") == 3
    assert total("wsengine.bytes.received") == 6
    assert total("wsengine.connections.open") == 1
    assert total("wsengine.reconnects") == 1
    histogram = otel.metric("wsengine.callback.duration")
    callbacks = {dict(p.attributes)["wsengine.callback"]: p.count for p in histogram}
    assert callbacks["on_message"] == 3 and callbacks["on_open"] == 2
    assert otel.metric("wsengine.queue.depth")
    engine.stop()
    assert total("wsengine.connections.open") == 0


@pytest.mark.timeout(300)
def test_span_count_equals_message_count_over_100000_messages(otel: Telemetry) -> None:
    """D5 at length: 100,000 messages through one long-lived session give exactly 100,000
    receive spans, every one ended (none piles up in a worker)."""
    total = 100_000

    def burst(ws: ServerConnection) -> None:
        for number in range(total):
            ws.send(str(number))
        ws.recv()

    class Counting(Observer):
        def on_message(self, session: Session, message: Message) -> None:
            with self.lock:
                self.count += 1
                if self.count >= self.expected:
                    self.done.set()

    client = Counting(expected=total)
    with run_ws_server(burst) as server:
        engine = WebsocketEngine(server.url, client, config=CONFIG,
                                 tracer_provider=otel.tracer_provider)
        engine.start()
        assert client.done.wait(240)
        engine.stop()
    assert len(otel.spans("wsengine.receive")) == total
    assert len(otel.spans("wsengine.callback.on_message")) == total
    assert len(otel.spans("wsengine.session")) == 1


@pytest.mark.timeout(120)
@pytest.mark.parametrize("provider", ["global", "sdk"])
def test_dropped_engines_are_collected(echo_server: WsServer, otel: Telemetry,
                                       provider: str) -> None:
    """Defect 7 (issue 16): 1,000 engines created and dropped, some started and stopped on
    each adapter, are all freed by gc: no meter keeps an engine alive."""
    meter_provider = otel.meter_provider if provider == "sdk" else None
    refs: list[weakref.ReferenceType[WebsocketEngine]] = []
    for number in range(1000):
        adapter = WebsocketsAdapter() if number % 2 else WebsocketClientAdapter()
        engine = WebsocketEngine(echo_server.url, WebsocketClient(), adapter=adapter,
                                 config=CONFIG, meter_provider=meter_provider)
        if number % 100 == 0:
            engine.start()
            engine.send("x")
            engine.stop()
        refs.append(weakref.ref(engine))
        del engine, adapter
    otel.reader.get_metrics_data()  # a collection runs the gauge's callback
    gc.collect()
    alive = sum(1 for ref in refs if ref() is not None)
    assert alive == 0, f"{alive} of 1000 dropped engines are still alive"


class Counting(WebsocketClient):
    """Sets ``done`` once ``expected`` messages arrived."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.done = threading.Event()

    def on_message(self, session: Session, message: Message) -> None:
        self.count += 1
        if self.count >= self.expected:
            self.done.set()


def test_engines_sharing_a_provider_report_separate_series(echo_server: WsServer,
                                                           otel: Telemetry) -> None:
    """Each metric point names its engine (``name=``, else the URL without credentials or
    query), so two engines on one provider do not merge into one series."""
    url = echo_server.url.replace("ws://", "ws://user:pw-secret@") + "?token=" + SECRET_TOKEN
    named_client, unnamed_client = Counting(2), Counting(1)
    named = WebsocketEngine(echo_server.url, named_client, config=CONFIG,
                            meter_provider=otel.meter_provider, name="feed-a")
    unnamed = WebsocketEngine(url, unnamed_client, config=CONFIG,
                              meter_provider=otel.meter_provider)
    with named, unnamed:
        named.send("a")
        named.send("b")
        unnamed.send("c")
        # The echoes must be in before the stop, or no point is received to look at.
        assert named_client.done.wait(5) and unnamed_client.done.wait(5)
    default_name = f"ws://127.0.0.1:{echo_server.port}/"

    def by_engine(name: str) -> dict[str, float]:
        return {dict(p.attributes)["wsengine.engine.name"]: p.value for p in otel.metric(name)}

    assert by_engine("wsengine.messages.sent") == {"feed-a": 2, default_name: 1}
    assert by_engine("wsengine.connections.open") == {"feed-a": 0, default_name: 0}
    depth_names = {dict(p.attributes)["wsengine.engine.name"]
                   for p in otel.metric("wsengine.queue.depth")}
    assert depth_names == {"feed-a", default_name}
    for name in ("wsengine.callback.duration", "wsengine.messages.received",
                 "wsengine.bytes.received"):
        points = otel.metric(name)
        assert points and all("wsengine.engine.name" in dict(p.attributes) for p in points)
    with pytest.raises(ConfigError, match="name"):
        WebsocketEngine(echo_server.url, WebsocketClient(), name="")


def test_messages_sent_exact_from_four_threads(echo_server: WsServer, otel: Telemetry) -> None:
    """4 threads x 500 engine.send at once: wsengine.messages.sent reads exactly 2000 (the
    counter is bound once per engine and added to without a lock of ours)."""
    threads, per_thread = 4, 500
    client = Observer(expected=threads * per_thread)
    errors: list[BaseException] = []
    with WebsocketEngine(echo_server.url, client, config=CONFIG,
                         meter_provider=otel.meter_provider) as engine:
        barrier = threading.Barrier(threads, timeout=10)

        def work() -> None:
            try:
                barrier.wait()
                for _ in range(per_thread):
                    engine.send(b"m", timeout=10)
            except BaseException as error:  # reported below
                errors.append(error)

        workers = [threading.Thread(target=work) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(30)
        assert not errors
        assert client.done.wait(20)
        assert sum(p.value for p in otel.metric("wsengine.messages.sent")) == threads * per_thread
