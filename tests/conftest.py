# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""Fixtures shared by every test: servers, TLS material, thread and exception checks."""

from __future__ import annotations

import os
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import trustme
from hypothesis import HealthCheck, settings

from tests.support.servers import WsServer, echo_handler, run_ws_server
from wsengine.engine import _running_engines

#: Seconds a test's engine threads get to end after the test before it fails.
THREAD_DEADLINE = 2.0

# Property tests are derandomized and keep no example database, so that every run tries
# the same examples (no flaky failures, no replay of another run's finds); no deadline, as
# the machine's load varies. Set HYPOTHESIS_PROFILE=explore for a longer random search.
settings.register_profile(
    "wsengine",
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=200,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "explore", derandomize=False, database=None, deadline=None, max_examples=5000
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "wsengine"))


@pytest.fixture
def echo_server() -> Iterator[WsServer]:
    """A websockets server on 127.0.0.1 echoing every message with its type."""
    with run_ws_server(echo_handler) as server:
        yield server


@dataclass
class TlsMaterial:
    """A throwaway CA and a certificate for 127.0.0.1 and localhost, made at test time."""

    ca: trustme.CA
    #: Context for a server presenting the certificate.
    server_context: ssl.SSLContext
    #: Context for a client trusting the CA (certificates and host names verified).
    client_context: ssl.SSLContext
    #: Path of the CA certificate in PEM, for ``sslopt={"ca_certs": ...}``.
    ca_path: str


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    """TLS material made once per session with trustme."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    ca_path = tmp_path_factory.mktemp("tls") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    return TlsMaterial(ca, server_context, client_context, str(ca_path))


@pytest.fixture
def wss_echo_server(tls: TlsMaterial) -> Iterator[WsServer]:
    """A TLS websockets echo server on 127.0.0.1 (trust ``tls.ca_path``)."""
    with run_ws_server(echo_handler, ssl=tls.server_context) as server:
        yield server


@pytest.fixture(autouse=True)
def _no_leaked_engine_threads() -> Iterator[None]:
    """Fail a test that leaves an engine running, or a thread named ``wsengine*`` that it
    started still alive after 2 s of grace.

    Engines left running are stopped first, and only threads started during the test are
    checked, so that one failing test cannot make the tests after it fail too.
    """
    before = set(threading.enumerate())
    yield
    left_running = [engine for engine in list(_running_engines) if engine.running]
    for engine in left_running:
        engine.stop(timeout=2)
    deadline = time.monotonic() + THREAD_DEADLINE
    while True:
        alive = [
            t.name for t in threading.enumerate()
            if t.name.startswith("wsengine") and t.is_alive() and t not in before
        ]
        if not alive:
            break
        if time.monotonic() >= deadline:
            pytest.fail(f"engine threads still running after the test: {alive}")
        time.sleep(0.01)
    if left_running:
        pytest.fail(f"engines left running after the test: {left_running}")


@pytest.fixture(autouse=True)
def _no_thread_exceptions() -> Iterator[list[threading.ExceptHookArgs]]:
    """Fail a test during which any thread died of an uncaught exception."""
    caught: list[threading.ExceptHookArgs] = []
    previous = threading.excepthook

    def record(args: threading.ExceptHookArgs) -> None:
        caught.append(args)
        previous(args)

    threading.excepthook = record
    try:
        yield caught
    finally:
        threading.excepthook = previous
    if caught:
        first = caught[0]
        name = first.thread.name if first.thread is not None else "?"
        pytest.fail(f"thread {name} raised {first.exc_type.__name__}: {first.exc_value}")
