# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""The OpenTelemetry SDK set-up of the example: spans to the console or to an OTLP endpoint.

Environment (the standard OpenTelemetry variables):

- ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``): when set,
  spans go there over OTLP http/protobuf (Jaeger listens on port 4318); else they are
  printed to stdout as JSON, unless the console is turned off.
- ``OTEL_SERVICE_NAME``: the ``service.name`` resource attribute; default
  ``wsengine-example``.
- ``OTEL_METRICS_EXPORTER``: ``none`` (default: Jaeger takes traces only), ``console`` or
  ``otlp``.

The providers are returned, never set as the global ones: the example hands them to
``WebsocketEngine(..., tracer_provider=..., meter_provider=...)``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TextIO

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

__all__ = [
    "DEFAULT_SERVICE_NAME",
    "ExampleTelemetry",
    "make_metric_exporter",
    "make_span_exporter",
    "setup_telemetry",
]

logger = logging.getLogger("example")

DEFAULT_SERVICE_NAME = "wsengine-example"

_OTLP_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


@dataclass(frozen=True)
class ExampleTelemetry:
    """The providers to give the engine, and what they export to."""

    tracer_provider: TracerProvider
    #: None when metrics are off: the engine then uses the global (no-op) meter provider.
    meter_provider: MeterProvider | None
    #: Where spans go, or None when nothing exports them.
    span_exporter: SpanExporter | None
    #: A line for the log: where spans and metrics go.
    description: str

    def shutdown(self) -> None:
        """Export what is buffered, then shut the providers down. Blocks until the exporters
        are done (each export has its own timeout); safe to call more than once."""
        self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()


def _otlp_endpoint(environ: Mapping[str, str]) -> str | None:
    for variable in _OTLP_ENDPOINT_VARIABLES:
        value = environ.get(variable, "").strip()
        if value:
            return value
    return None


def make_span_exporter(
    console: bool, environ: Mapping[str, str] | None = None, out: TextIO | None = None
) -> SpanExporter | None:
    """The span exporter the environment asks for.

    Args:
        console: print spans when no OTLP endpoint is set.
        environ: the environment to read; default ``os.environ``. The OTLP exporter reads
            its own settings (endpoint, headers, timeout) from ``os.environ`` too.
        out: where the console exporter writes; default stdout.

    Returns:
        An ``OTLPSpanExporter`` (http/protobuf) when an OTLP endpoint is set, else a
        ``ConsoleSpanExporter`` if ``console``, else None. Creating one sends nothing.
    """
    environ = os.environ if environ is None else environ
    if _otlp_endpoint(environ) is not None:
        # Imported here: only the OTLP branch needs it (and its protobuf dependencies).
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if console:
        return ConsoleSpanExporter() if out is None else ConsoleSpanExporter(out=out)
    return None


def make_metric_exporter(environ: Mapping[str, str] | None = None) -> MetricExporter | None:
    """The metric exporter ``OTEL_METRICS_EXPORTER`` asks for (``none`` by default).

    Raises:
        ValueError: an unknown ``OTEL_METRICS_EXPORTER`` value.
    """
    environ = os.environ if environ is None else environ
    choice = environ.get("OTEL_METRICS_EXPORTER", "none").strip().lower() or "none"
    if choice == "none":
        return None
    if choice == "console":
        return ConsoleMetricExporter()
    if choice == "otlp":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter()
    raise ValueError(f"OTEL_METRICS_EXPORTER must be none, console or otlp, got {choice!r}")


def setup_telemetry(
    console_spans: bool = True, environ: Mapping[str, str] | None = None
) -> ExampleTelemetry:
    """Build the tracer provider (and the meter provider when metrics are on).

    Spans go through a ``BatchSpanProcessor``: exporting never runs on the engine's
    threads, and :meth:`ExampleTelemetry.shutdown` flushes what is left.

    Args:
        console_spans: print spans to stdout when no OTLP endpoint is set.
        environ: the environment to read; default ``os.environ``.

    Raises:
        ValueError: an unknown ``OTEL_METRICS_EXPORTER`` value.
    """
    environ = os.environ if environ is None else environ
    service_name = environ.get("OTEL_SERVICE_NAME", "").strip() or DEFAULT_SERVICE_NAME
    resource = Resource.create({SERVICE_NAME: service_name})

    tracer_provider = TracerProvider(resource=resource)
    span_exporter = make_span_exporter(console_spans, environ)
    if span_exporter is not None:
        tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))

    metric_exporter = make_metric_exporter(environ)
    meter_provider = None
    if metric_exporter is not None:
        meter_provider = MeterProvider(
            resource=resource, metric_readers=[PeriodicExportingMetricReader(metric_exporter)]
        )

    endpoint = _otlp_endpoint(environ)
    if endpoint is not None:
        spans_to = f"OTLP http/protobuf at {endpoint}"
    else:
        spans_to = "the console (stdout)" if span_exporter is not None else "nowhere"
    metrics_to = type(metric_exporter).__name__ if metric_exporter is not None else "off"
    description = f"service {service_name!r}: spans to {spans_to}, metrics {metrics_to}"
    return ExampleTelemetry(tracer_provider, meter_provider, span_exporter, description)
