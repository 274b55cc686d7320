# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""Autobahn conformance of wsengine's adapters, driven through the engine.

Runs kosoku's fuzzing server (the Autobahn TestSuite's cases, served from Rust) on
127.0.0.1 and, for each adapter, an engine-based echo client: one ``WebsocketEngine``
per case with an echo ``on_message``, ``workers=1`` and ``auto_reconnect=False``. Then it
prints the verdict counts per adapter and lists every case that is not OK.

Not part of the test suite (it takes minutes). Usage, from the repository root::

    pip install kosoku
    python conformance/run.py                       # both adapters, cases 1-7, 9, 10
    python conformance/run.py --adapters websockets --cases '6.*' --cases 9.1.6
    python conformance/run.py --outdir reports      # also write Autobahn HTML reports
    python conformance/run.py --cases '12.*'        # compression, the default offer
    python conformance/run.py --cases '13.*' --offer no-context-takeover

The exit status is 0 when every case of every adapter passed (OK, NON-STRICT or
INFORMATIONAL for both the exchange and the closing handshake), 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kosoku import FailureError, run_fuzzingserver
from kosoku._kosoku import CaseResult

from wsengine import (
    ConnectionAdapter,
    EngineConfig,
    Message,
    Session,
    WebsocketClient,
    WebsocketEngine,
)
from wsengine.adapters.websocket_client import WebsocketClientAdapter

#: Categories 1-7 (framing, pings, reserved bits, opcodes, fragmentation, UTF-8, closing),
#: 9 (limits and performance) and 10 (auto-fragmentation).
DEFAULT_CASES = ("1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*")
#: Verdicts that pass (Autobahn's labels).
PASSING = frozenset({"OK", "NON-STRICT", "INFORMATIONAL"})
#: Seconds one case may take from dial to the engine stopping on its own.
CASE_TIMEOUT = 120.0
#: Largest message accepted: 9.1.6 and 9.2.6 send 16 MiB.
MAX_SIZE = 2**25


#: The compression the adapters offer (``--offer``): the default offer, or one that also
#: offers client_no_context_takeover, which Autobahn's cases 13.2, 13.5 and 13.6 need
#: (their server accepts only an offer that includes it; others get UNIMPLEMENTED).
OFFERS: dict[str, object] = {
    "default": "deflate",
    "no-context-takeover": {"client_no_context_takeover": True,
                            "client_max_window_bits": True},
}
COMPRESSION: list[object] = [OFFERS["default"]]


def websocket_client_adapter() -> ConnectionAdapter:
    return WebsocketClientAdapter(max_size=MAX_SIZE, compression=COMPRESSION[0])  # type: ignore[arg-type]


def websockets_adapter() -> ConnectionAdapter:
    from wsengine.adapters.websockets_sync import WebsocketsAdapter

    return WebsocketsAdapter(max_size=MAX_SIZE, compression=COMPRESSION[0])  # type: ignore[arg-type]


ADAPTERS: dict[str, Callable[[], ConnectionAdapter]] = {
    "websocket-client": websocket_client_adapter,
    "websockets": websockets_adapter,
}


class Echo(WebsocketClient):
    """Sends every message back as it came (TEXT as TEXT, BINARY as BINARY)."""

    def on_message(self, session: Session, message: Message) -> None:
        session.send(message.data)


class CaseCount(WebsocketClient):
    """Reads the fuzzing server's answer to ``/getCaseCount``."""

    def __init__(self) -> None:
        self.count: int | None = None

    def on_message(self, session: Session, message: Message) -> None:
        self.count = int(message.data)


@dataclass
class Run:
    """What one adapter's run produced."""

    adapter: str
    results: list[CaseResult] = field(default_factory=list)
    #: Cases whose engine did not stop on its own within CASE_TIMEOUT.
    timeouts: list[int] = field(default_factory=list)
    seconds: float = 0.0


def run_engine(
    url: str, client: WebsocketClient, adapter: ConnectionAdapter, timeout: float
) -> bool:
    """Run an engine on ``url`` until the connection ends; False if it outlived ``timeout``."""
    config = EngineConfig(
        workers=1,
        auto_reconnect=False,
        ping_interval=None,
        open_timeout=10.0,
        stop_timeout=5.0,
    )
    engine = WebsocketEngine(url, client, adapter=adapter, config=config)
    try:
        engine.start()
    except Exception as error:
        print(f"  {url}: start failed: {error}", file=sys.stderr)
        return True
    stopped = engine.wait(timeout)
    engine.stop()
    return stopped


def drive(port: int, adapter_name: str, run: Run) -> None:
    """The client side: count the cases, run each with an echo engine, then tell the
    server the run is over (``/updateReports``)."""
    base = f"ws://127.0.0.1:{port}"
    agent = f"wsengine-{adapter_name}"
    make_adapter = ADAPTERS[adapter_name]
    counter = CaseCount()
    run_engine(f"{base}/getCaseCount", counter, make_adapter(), 10)
    if counter.count is None:
        raise RuntimeError("the fuzzing server did not tell the case count")
    for index in range(1, counter.count + 1):
        url = f"{base}/runCase?case={index}&agent={agent}"
        if not run_engine(url, Echo(), make_adapter(), CASE_TIMEOUT):
            run.timeouts.append(index)
    run_engine(f"{base}/updateReports?agent={agent}", WebsocketClient(), make_adapter(), 10)


async def run_adapter(adapter_name: str, cases: Sequence[str]) -> Run:
    """Serve ``cases`` on 127.0.0.1 and run them with ``adapter_name``'s echo engine."""
    run = Run(adapter_name)
    started = time.monotonic()
    async with run_fuzzingserver(list(cases), host="127.0.0.1", port=0) as server:
        client = asyncio.create_task(asyncio.to_thread(drive, server.port, adapter_name, run))
        try:
            run.results = await server.get_result()
        except FailureError as failure:
            run.results = failure.results
        await client
    run.seconds = time.monotonic() - started
    return run


def report(run: Run) -> bool:
    """Print one adapter's verdicts; True if every case passed."""
    behaviors = collections.Counter(r.behavior.value for r in run.results)
    closes = collections.Counter(r.behavior_close.value for r in run.results)
    print(f"== {run.adapter}: {len(run.results)} cases in {run.seconds:.0f} s")
    print("   exchange: " + ", ".join(f"{k} {v}" for k, v in sorted(behaviors.items())))
    print("   closing:  " + ", ".join(f"{k} {v}" for k, v in sorted(closes.items())))
    not_ok = [
        r for r in run.results if r.behavior.value != "OK" or r.behavior_close.value != "OK"
    ]
    for result in sorted(not_ok, key=lambda r: r.case_index):
        print(
            f"   {result.case_id:>8}  {result.behavior.value:<13} "
            f"{result.behavior_close.value:<13} {result.result} / {result.result_close}"
        )
    if run.timeouts:
        print(f"   cases whose engine did not stop within {CASE_TIMEOUT:.0f} s: {run.timeouts}")
    return not run.timeouts and all(
        r.behavior.value in PASSING and r.behavior_close.value in PASSING for r in run.results
    )


def write_reports(run: Run, outdir: str) -> None:
    from kosoku._report import write_reports as kosoku_write_reports

    kosoku_write_reports(run.results, f"{outdir}/{run.adapter}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--adapters",
        default=",".join(ADAPTERS),
        help="comma-separated adapters to run (default: %(default)s)",
    )
    parser.add_argument(
        "--cases",
        action="append",
        metavar="GLOB",
        help="case id or glob, repeatable (default: categories 1-7, 9 and 10)",
    )
    parser.add_argument(
        "--offer",
        choices=sorted(OFFERS),
        default="default",
        help="the permessage-deflate offer (categories 12 and 13): default, or "
        "no-context-takeover for 13.2, 13.5 and 13.6 (default: %(default)s)",
    )
    parser.add_argument("--outdir", help="also write kosoku's Autobahn reports there")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = [name.strip() for name in args.adapters.split(",") if name.strip()]
    unknown = [name for name in names if name not in ADAPTERS]
    if unknown:
        print(f"unknown adapters {unknown}; choose from {list(ADAPTERS)}", file=sys.stderr)
        return 2
    cases: Sequence[str] = args.cases or DEFAULT_CASES
    COMPRESSION[0] = OFFERS[args.offer]
    passed = True
    for name in names:
        run = asyncio.run(run_adapter(name, cases))
        passed = report(run) and passed
        if args.outdir:
            write_reports(run, args.outdir)
    leftover = [t.name for t in threading.enumerate() if t.name.startswith("wsengine")]
    if leftover:
        print(f"engine threads left running: {leftover}", file=sys.stderr)
        passed = False
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
