# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""A runnable example of wsengine: an echo server and a client that talks to it.

``python -m example`` runs both in one process; ``--mode server`` and ``--mode client`` run
one side each (see ``example/compose.yaml`` for the two in containers, with Jaeger).

Modules:

- :mod:`example.server`: the echo server, on ``websockets.sync.server``.
- :mod:`example.client`: :class:`~example.client.EchoClient`, a ``WebsocketClient``.
- :mod:`example.telemetry`: the OpenTelemetry SDK set-up (console or OTLP).
- :mod:`example.__main__`: command line, wiring and a graceful Ctrl-C.
"""

__all__: list[str] = []
