# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""OpenTelemetry names, instruments and helpers: the engine's only view of OpenTelemetry.

Cost rule: with no SDK installed (or nothing sampled) the per-message path touches
neither the tracer nor the meter: spans per message exist only while the session's span is
recording, and message counters are updated once per read batch.
"""

from __future__ import annotations

import re
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar, cast

from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation, get_meter
from opentelemetry.trace import Span, Status, StatusCode

from wsengine._url import redact_url
from wsengine.version import __version__

__all__ = [
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


class Telemetry:
    """The engine's tracer and meter, from the given providers or the global ones.

    Args:
        tracer_provider: None for the global provider.
        meter_provider: None for the global provider.
        queue_depth: read by the queue-depth gauge when metrics are collected.
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None,
        meter_provider: MeterProvider | None,
        queue_depth: Callable[[], int],
    ) -> None:
        self.tracer = trace.get_tracer("wsengine", __version__, tracer_provider)
        self.meter = get_meter("wsengine", __version__, meter_provider)
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

        def observe_depth(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(queue_depth())]

        meter.create_observable_gauge(
            "wsengine.queue.depth", callbacks=[observe_depth], unit="{message}",
            description="messages read but not yet taken by a worker",
        )

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
                    time.perf_counter() - started, {"wsengine.callback": name}
                )
