# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""OpenTelemetry names, instruments and helpers: the engine's only view of OpenTelemetry.

Cost rule: with no SDK installed (or nothing sampled) the per-message path touches
neither the tracer nor the meter: spans per message exist only while the session's span is
recording, and message counters are updated once per read batch.
"""

from __future__ import annotations

import functools
import re
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar, cast

from opentelemetry import trace
from opentelemetry.metrics import (
    CallbackOptions,
    MeterProvider,
    Observation,
    get_meter,
    get_meter_provider,
)
from opentelemetry.trace import Span, Status, StatusCode

from wsengine._url import redact_url
from wsengine.version import __version__

__all__ = [
    "ENGINE_ATTRIBUTE",
    "EVENT_MESSAGES_DROPPED",
    "EVENT_SEND_TIMEOUT",
    "SPAN_CALLBACK_PREFIX",
    "SPAN_CLOSE",
    "SPAN_DIAL",
    "SPAN_RECEIVE",
    "SPAN_RESTART",
    "SPAN_SESSION",
    "SPAN_START",
    "SPAN_STOP",
    "Telemetry",
    "mark_error",
    "scrub",
]

SPAN_START = "wsengine.start"
SPAN_STOP = "wsengine.stop"
SPAN_DIAL = "wsengine.dial"
SPAN_SESSION = "wsengine.session"
SPAN_RECEIVE = "wsengine.receive"
SPAN_CLOSE = "wsengine.close"
SPAN_RESTART = "wsengine.restart"
SPAN_CALLBACK_PREFIX = "wsengine.callback."
#: Span events on a session's span: a send that raised TimeoutError; messages discarded
#: by the overflow policy (attribute ``wsengine.dropped.count``: how many since the last
#: such event, added at most once per 10 s with the warning).
EVENT_SEND_TIMEOUT = "wsengine.send.timeout"
EVENT_MESSAGES_DROPPED = "wsengine.messages.dropped"

AttributeValue = str | bool | int | float
T = TypeVar("T")

_URL_IN_TEXT = re.compile(r"wss?://[^\s'\"<>]+", re.IGNORECASE)


def scrub(text: str) -> str:
    """Redact every ws:// or wss:// URL found in ``text`` (credentials, query values)."""
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)


def mark_error(span: Span, error: BaseException) -> None:
    """Record ``error`` on ``span``: exception event, ``error.type``, status ERROR.

    The exception's message and stack trace are scrubbed of URL credentials first.
    """
    if not span.is_recording():
        return
    name = type(error).__qualname__
    span.record_exception(
        # opentelemetry-api before 1.24 types this Exception; every release records any
        # BaseException (KeyboardInterrupt from a callback included) the same way.
        cast(Exception, error),
        attributes={
            "exception.message": scrub(str(error)),
            "exception.stacktrace": scrub("".join(traceback.format_exception(error))),
        },
    )
    span.set_attribute("error.type", name)
    span.set_status(Status(StatusCode.ERROR, name))


def _is_live(instrument_source: object) -> bool:
    """Tell whether a meter records anything (not a no-op, nor a proxy still unbound).

    Only decides whether per-message timing is worth measuring; a wrong guess costs speed,
    never correctness.
    """
    kind = type(instrument_source).__name__
    if kind.startswith("NoOp"):
        return False
    if kind.startswith("_Proxy"):
        return getattr(instrument_source, "_real_meter", None) is not None
    return True


#: Metric attribute naming the engine that reports a point (see ``WebsocketEngine(name=)``).
ENGINE_ATTRIBUTE = "wsengine.engine.name"


class _Instruments:
    """The instruments of one meter provider, shared by every engine that reports to it.

    Made once per provider and kept for as long as the provider lives, because OpenTelemetry
    keeps every instrument created (the global proxy meter for ever, an SDK meter for its
    life, ignoring a second gauge of the same name): instruments made per engine would grow
    without bound and keep each engine alive through the queue-depth callback. Engines tell
    themselves apart by the ``wsengine.engine.name`` attribute instead.
    """

    def __init__(self, provider: MeterProvider | None) -> None:
        self.meter = get_meter("wsengine", __version__, provider)
        meter = self.meter
        self.messages_received = meter.create_counter(
            "wsengine.messages.received", unit="{message}", description="data messages read"
        )
        self.bytes_received = meter.create_counter(
            "wsengine.bytes.received", unit="By", description="payload bytes of data messages"
        )
        self.messages_sent = meter.create_counter(
            "wsengine.messages.sent", unit="{message}", description="data messages sent"
        )
        self.reconnects = meter.create_counter(
            "wsengine.reconnects", unit="{connection}", description="successful reconnections"
        )
        self.open_connections = meter.create_up_down_counter(
            "wsengine.connections.open", unit="{connection}", description="open connections"
        )
        self.callback_duration = meter.create_histogram(
            "wsengine.callback.duration", unit="s", description="time spent in user callbacks"
        )
        self.keepalive_rtt = meter.create_histogram(
            "wsengine.keepalive.rtt", unit="s", description="ping to pong round-trip time"
        )
        self.messages_dropped = meter.create_counter(
            "wsengine.messages.dropped", unit="{message}",
            description="data messages read and discarded by the overflow policy",
        )
        self.send_timeouts = meter.create_counter(
            "wsengine.send.timeouts", unit="{message}",
            description="sends that raised TimeoutError",
        )
        # The engines reporting here, held weakly: a dropped engine (started or not) is
        # collected, and its gauge points vanish with it. Added to by Telemetry(), read by
        # the gauge callback on the SDK's collecting thread (WeakSet iteration is safe
        # against concurrent changes once copied with list()).
        self.sources: weakref.WeakSet[Telemetry] = weakref.WeakSet()
        meter.create_observable_gauge(
            "wsengine.queue.depth", callbacks=[self._observe_depth], unit="{message}",
            description="messages read but not yet taken by a worker",
        )

    def _observe_depth(self, options: CallbackOptions) -> Iterable[Observation]:
        depths: dict[str, int] = {}
        for source in list(self.sources):
            name = source.engine_name
            depths[name] = depths.get(name, 0) + source.queue_depth()
        return [Observation(depth, {ENGINE_ATTRIBUTE: name}) for name, depth in depths.items()]


# One _Instruments per meter provider (the global one resolved when first asked), weak on
# the provider so that a provider a program drops is not kept. Guarded by
# _instruments_lock, held by Telemetry() for the look-up and the creation.
_instruments_by_provider: weakref.WeakKeyDictionary[object, _Instruments] = (
    weakref.WeakKeyDictionary()
)
_instruments_lock = threading.Lock()


def _instruments_for(meter_provider: MeterProvider | None) -> _Instruments:
    key: object = meter_provider if meter_provider is not None else get_meter_provider()
    with _instruments_lock:
        found = _instruments_by_provider.get(key)
        if found is None:
            found = _instruments_by_provider[key] = _Instruments(meter_provider)
        return found


class Telemetry:
    """One engine's tracer and meter, from the given providers or the global ones.

    Every metric point carries ``{ENGINE_ATTRIBUTE: engine_name}``, so that engines sharing
    a provider report separate series.

    Args:
        tracer_provider: None for the global provider.
        meter_provider: None for the global provider.
        queue_depth: read by the queue-depth gauge when metrics are collected (on the
            collecting thread); it must not block.
        engine_name: the value of the engine attribute; low cardinality, no secret.
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None,
        meter_provider: MeterProvider | None,
        queue_depth: Callable[[], int],
        engine_name: str = "wsengine",
    ) -> None:
        self.tracer = trace.get_tracer("wsengine", __version__, tracer_provider)
        instruments = _instruments_for(meter_provider)
        self.meter = instruments.meter
        self.queue_depth = queue_depth
        self.engine_name = engine_name
        #: Attributes of every point this engine records (never mutated).
        self.attributes: Mapping[str, AttributeValue] = {ENGINE_ATTRIBUTE: engine_name}
        self._callback_attributes: dict[str, Mapping[str, AttributeValue]] = {}
        self._messages_received = instruments.messages_received
        self._bytes_received = instruments.bytes_received
        self._messages_sent = instruments.messages_sent
        #: Count ``messages`` data messages sent: the counter's ``add`` bound to this
        #: engine's attributes, called directly (no frame of ours) once per message sent.
        self.count_sent: Callable[[int], None] = functools.partial(
            instruments.messages_sent.add, attributes=self.attributes
        )
        self._reconnects = instruments.reconnects
        self._open_connections = instruments.open_connections
        self.callback_duration = instruments.callback_duration
        self._keepalive_rtt = instruments.keepalive_rtt
        self._messages_dropped = instruments.messages_dropped
        self._send_timeouts = instruments.send_timeouts
        instruments.sources.add(self)

    def count_received(self, messages: int, size: int) -> None:
        """Count one read batch: ``messages`` data messages of ``size`` payload bytes."""
        self._messages_received.add(messages, self.attributes)
        self._bytes_received.add(size, self.attributes)

    def count_reconnect(self) -> None:
        """Count one successful reconnection."""
        self._reconnects.add(1, self.attributes)

    def connection_opened(self, change: int) -> None:
        """Add ``change`` (+1 or -1) to the open connections."""
        self._open_connections.add(change, self.attributes)

    def record_rtt(self, seconds: float) -> None:
        """Record one keepalive round-trip time."""
        self._keepalive_rtt.record(seconds, self.attributes)

    def count_dropped(self, messages: int) -> None:
        """Count data messages discarded by the overflow policy."""
        self._messages_dropped.add(messages, self.attributes)

    def send_timed_out(self, span: Span) -> None:
        """Count a send that timed out, and note it on the session's ``span``."""
        self._send_timeouts.add(1, self.attributes)
        if span.is_recording():
            span.add_event(EVENT_SEND_TIMEOUT)

    def callback_attributes(self, name: str) -> Mapping[str, AttributeValue]:
        """The attributes of ``wsengine.callback.duration`` for callback ``name`` (cached:
        the per-message path must not build a dict per message)."""
        found = self._callback_attributes.get(name)
        if found is None:
            found = {**self.attributes, "wsengine.callback": name}
            self._callback_attributes[name] = found
        return found

    @property
    def metrics_live(self) -> bool:
        """True when a meter provider records: per-message timing is then measured."""
        return _is_live(self.meter)

    @contextmanager
    def operation(
        self, name: str, attributes: Mapping[str, AttributeValue] | None = None
    ) -> Iterator[Span]:
        """A current span for one operation; an exception escaping it marks it ERROR."""
        with self.tracer.start_as_current_span(
            name, attributes=attributes, record_exception=False, set_status_on_exception=False
        ) as span:
            try:
                yield span
            except BaseException as error:
                mark_error(span, error)
                raise

    def callback(self, name: str, function: Callable[..., T], *args: Any) -> T:
        """Run a user callback under its own current span, timing it.

        Exceptions are recorded on the span (ERROR, ``error.type``) and re-raised.
        """
        started = time.perf_counter()
        with self.tracer.start_as_current_span(
            SPAN_CALLBACK_PREFIX + name, record_exception=False, set_status_on_exception=False
        ) as span:
            try:
                return function(*args)
            except BaseException as error:
                mark_error(span, error)
                raise
            finally:
                self.callback_duration.record(
                    time.perf_counter() - started, self.callback_attributes(name)
                )
