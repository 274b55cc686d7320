# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""OpenTelemetry names and helpers: the engine's only importer of ``opentelemetry``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

from opentelemetry import trace
from opentelemetry.metrics import MeterProvider, get_meter
from opentelemetry.trace import Span, Status, StatusCode

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
]

logger = logging.getLogger("wsengine")

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


def mark_error(span: Span, error: BaseException) -> None:
    """Record ``error`` on ``span``: exception event, ``error.type``, status ERROR."""
    if span.is_recording():
        span.record_exception(error)
        span.set_attribute("error.type", type(error).__qualname__)
        span.set_status(Status(StatusCode.ERROR, type(error).__qualname__))


class Telemetry:
    """The engine's tracer and meter, taken from the given providers or the global ones."""

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None,
        meter_provider: MeterProvider | None,
    ) -> None:
        self.tracer = trace.get_tracer("wsengine", __version__, tracer_provider)
        self.meter = get_meter("wsengine", __version__, meter_provider)

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
        """Run a user callback under its own span; exceptions are recorded and re-raised."""
        with self.tracer.start_as_current_span(
            SPAN_CALLBACK_PREFIX + name, record_exception=False, set_status_on_exception=False
        ) as span:
            try:
                return function(*args)
            except BaseException as error:
                mark_error(span, error)
                raise
