# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""``python -m example``: an echo server and a wsengine client, together or apart.

The client runs inside a small synchronous application (:mod:`example.app`): the main
thread prints a heartbeat and pauses the engine every ``--pause-every`` echoes, the
client runs on the ``example-client`` thread. Every flag has an environment fallback (for
containers); a flag given wins::

    python -m example                          # both, in one process, on 127.0.0.1:8765
    python -m example --interval 0.5 --count 10 --pause-every 4 --pause-for 1
    python -m example --pause-every 0          # never pause
    python -m example --mode server --host 0.0.0.0
    python -m example --mode client --url ws://server:8765/

Ctrl-C (or SIGTERM) stops gracefully, also in the middle of a pause: the pause lock is
released, the engine closes its connection with 1000, the server shuts down, buffered
spans are exported, and the exit status is 0.

Exit status: 0 when done or interrupted, 1 when the client could not connect, gave up
reconnecting, or stopped before ``--count`` echoes; 2 for a bad flag or variable.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import TypeVar

from example.app import SIGNAL_CHECK_INTERVAL, Application
from example.client import EchoClient
from example.server import DEFAULT_HOST, DEFAULT_PORT, EchoServer
from example.telemetry import ExampleTelemetry, setup_telemetry
from wsengine import EngineConfig, WebsocketEngine

__all__ = ["Options", "client_url", "main", "parse_args"]

logger = logging.getLogger("example")

MODES = ("both", "server", "client")

T = TypeVar("T")

LOG_FORMAT = "%(asctime)s %(threadName)-22s %(name)-16s %(levelname)-7s %(message)s"


@dataclass(frozen=True)
class Options:
    """The parsed command line."""

    mode: str
    host: str
    port: int
    #: None: derived from host and port (see :func:`client_url`).
    url: str | None
    interval: float
    count: int
    max_restarts: int
    #: Pause the engine after every this many echoes; 0: never.
    pause_every: int
    #: Seconds a pause lasts, from taking the lock to releasing it.
    pause_for: float
    #: Seconds between two heartbeat lines of the main thread.
    heartbeat: float
    console_spans: bool


def client_url(host: str, port: int) -> str:
    """The URL a client uses to reach a server bound at ``host:port`` on this machine."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"  # bound on every interface: reach it through the loopback
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"ws://{host}:{port}/"


def _mode(text: str) -> str:
    if text not in MODES:
        raise ValueError(text)
    return text


def _optional_str(text: str) -> str | None:
    return text


def _float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(text)
    return value


def _positive_float(text: str) -> float:
    value = _float(text)
    if value <= 0:
        raise ValueError(text)
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(text)
    return value


def parse_args(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Options:
    """Parse the flags, with ``WSENGINE_*`` variables of ``environ`` as their defaults.

    Args:
        argv: the arguments; default ``sys.argv[1:]``.
        environ: the environment; default ``os.environ``.

    Raises:
        SystemExit: status 2 after printing the usage, for a bad flag or variable.
    """
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="python -m example",
        description="An echo server and a wsengine client that talks to it.",
    )

    def default(variable: str, fallback: T, convert: Callable[[str], T]) -> T:
        text = environ.get(variable, "").strip()
        if not text:
            return fallback
        try:
            return convert(text)
        except ValueError:
            parser.error(f"bad value for {variable}: {text!r}")

    parser.add_argument(
        "--mode", choices=MODES, default=default("WSENGINE_MODE", "both", _mode),
        help="run the server, the client, or both in one process (env WSENGINE_MODE; "
        "default both)",
    )
    parser.add_argument(
        "--host", default=default("WSENGINE_HOST", DEFAULT_HOST, str),
        help="address the server binds; 0.0.0.0 in a container (env WSENGINE_HOST; "
        f"default {DEFAULT_HOST})",
    )
    parser.add_argument(
        "--port", type=_port, default=default("WSENGINE_PORT", DEFAULT_PORT, _port),
        help="port the server binds, 0 for any free one (env WSENGINE_PORT; "
        f"default {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--url", default=default("WSENGINE_URL", None, _optional_str),
        help="URL the client connects to (env WSENGINE_URL; default the server's "
        "host and port)",
    )
    parser.add_argument(
        "--interval", type=_float, default=default("WSENGINE_INTERVAL", 1.0, _float),
        help="seconds between an echo and the next message (env WSENGINE_INTERVAL; default 1)",
    )
    parser.add_argument(
        "--count", type=_count, default=default("WSENGINE_COUNT", 0, _count),
        help="stop after this many echoes, 0 for never (env WSENGINE_COUNT; default 0)",
    )
    parser.add_argument(
        "--max-restarts", type=_positive,
        default=default("WSENGINE_MAX_RESTARTS", 5, _positive),
        help="failed reconnection attempts in a row before the client gives up "
        "(env WSENGINE_MAX_RESTARTS; default 5)",
    )
    parser.add_argument(
        "--pause-every", type=_count, default=default("WSENGINE_PAUSE_EVERY", 3, _count),
        help="pause the engine after every this many echoes and talk to the server by "
        "hand, 0 for never (env WSENGINE_PAUSE_EVERY; default 3)",
    )
    parser.add_argument(
        "--pause-for", type=_float, default=default("WSENGINE_PAUSE_FOR", 2.0, _float),
        help="seconds a pause lasts; messages that arrive meanwhile are delivered after it "
        "(env WSENGINE_PAUSE_FOR; default 2)",
    )
    parser.add_argument(
        "--heartbeat", type=_positive_float,
        default=default("WSENGINE_HEARTBEAT", 3.0, _positive_float),
        help="seconds between the main thread's heartbeat lines (env WSENGINE_HEARTBEAT; "
        "default 3)",
    )
    parser.add_argument(
        "--no-console-spans", dest="console_spans", action="store_false",
        help="do not print spans to stdout (spans still go to OTEL_EXPORTER_OTLP_ENDPOINT "
        "when it is set)",
    )
    args = parser.parse_args(argv)
    if args.mode == "client" and args.url is None and args.port == 0:
        parser.error("--mode client needs --url, or a --port other than 0")
    return Options(
        mode=args.mode, host=args.host, port=args.port, url=args.url,
        interval=args.interval, count=args.count, max_restarts=args.max_restarts,
        pause_every=args.pause_every, pause_for=args.pause_for, heartbeat=args.heartbeat,
        console_spans=args.console_spans,
    )


def _stop_on_signals() -> None:
    """Make SIGINT (Ctrl-C) and SIGTERM (``docker stop``) raise KeyboardInterrupt in the
    main thread, which stops everything gracefully.

    Set explicitly because neither is a given: a process that is PID 1 in a container
    ignores SIGTERM without a handler, and one started in the background by a shell
    inherits an ignored SIGINT.
    """

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, interrupt)
        signal.signal(signal.SIGTERM, interrupt)


def run_client(url: str, options: Options, telemetry: ExampleTelemetry) -> int:
    """Run the application (and the client on its thread) until the engine is done, gives
    up, or Ctrl-C; returns the exit status.

    Blocks the calling (main) thread; the engine is stopped on the way out in any case.
    """
    client = EchoClient(
        interval=options.interval, count=options.count, max_restarts=options.max_restarts,
        pause_every=options.pause_every, tracer_provider=telemetry.tracer_provider,
    )
    config = EngineConfig(workers=1, reconnect_delay_max=10.0)  # workers=1: echoes in order
    engine = WebsocketEngine(
        url, client, config=config,
        tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider,
    )
    application = Application(
        engine, client, url, heartbeat=options.heartbeat, pause_for=options.pause_for,
        tracer_provider=telemetry.tracer_provider,
    )
    return application.run()


def main(argv: Sequence[str] | None = None) -> int:
    """Run what the flags say; returns the exit status."""
    options = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    # example.server logs each connection already; websockets' own INFO lines repeat it.
    logging.getLogger("websockets").setLevel(logging.WARNING)
    _stop_on_signals()
    telemetry: ExampleTelemetry | None = None
    server: EchoServer | None = None
    status = 0
    try:
        if options.mode in ("both", "server"):
            server = EchoServer(options.host, options.port)
            server.start()
        if options.mode == "server":
            assert server is not None
            logger.info("serving on %s (Ctrl-C to stop)", client_url(server.host, server.port))
            forever = threading.Event()  # never set: we wait for Ctrl-C or SIGTERM
            while not forever.wait(SIGNAL_CHECK_INTERVAL):
                pass
        else:
            url = options.url
            if url is None:
                host, port = (
                    (server.host, server.port) if server else (options.host, options.port)
                )
                url = client_url(host, port)
            telemetry = setup_telemetry(options.console_spans)
            logger.info("telemetry: %s", telemetry.description)
            status = run_client(url, options, telemetry)
    except KeyboardInterrupt:
        logger.info("interrupted: stopping")
    except OSError as error:
        logger.error("%s", error)  # the server could not bind, for instance
        status = 1
    except ValueError as error:
        # A bad --url (wsengine's ConfigError is a ValueError) or OTEL_METRICS_EXPORTER.
        logger.error("%s", error)
        status = 2
    finally:
        if server is not None:
            server.shutdown()
            logger.info("server stopped")
        if telemetry is not None:
            telemetry.shutdown()
    return status


if __name__ == "__main__":
    sys.exit(main())
