# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""A runnable example of wsengine: an echo server, and a synchronous application that
runs a client on its own thread and pauses it by hand.

``python -m example`` runs both in one process; ``--mode server`` and ``--mode client`` run
one side each (see ``example/compose.yaml`` for the two in containers, with Jaeger).
``example/README.rst`` shows what the log and the trace of a run look like.

Modules:

- :mod:`example.app`: the application: a main-thread loop (heartbeat, pauses with
  ``with engine.pause_lock:``) and the ``example-client`` thread that runs the engine.
- :mod:`example.server`: the echo server, on ``websockets.sync.server``.
- :mod:`example.client`: :class:`~example.client.EchoClient`, a ``WebsocketClient``.
- :mod:`example.telemetry`: the OpenTelemetry SDK set-up (console or OTLP).
- :mod:`example.spantree`: the console exporter's spans drawn as trees.
- :mod:`example.__main__`: command line, wiring and a graceful Ctrl-C.
"""

__all__: list[str] = []
