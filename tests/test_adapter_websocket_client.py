# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""What is particular to WebsocketClientAdapter, against real servers on 127.0.0.1.

The behaviour every adapter shares (handshakes, close codes, protocol violations,
RELIABILITY A5-A8, A12, B8, B13-B20, B22, B26) is tested once, on both adapters, in
``test_adapter_contract.py``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from websockets.http11 import Request, Response
from websockets.sync.server import ServerConnection

from tests.conftest import TlsMaterial
from tests.support.servers import WsServer, echo_handler, run_ws_server
from wsengine.adapters.websocket_client import WebsocketClientAdapter
from wsengine.types import Message, MessageType

TEXT = MessageType.TEXT
BINARY = MessageType.BINARY


@pytest.fixture
def adapter() -> Iterator[WebsocketClientAdapter]:
    """An adapter that is aborted after the test, whatever happened."""
    conn = WebsocketClientAdapter()
    yield conn
    conn.abort()


def test_tls_echo_with_a_trusted_ca(tls: TlsMaterial, wss_echo_server: WsServer) -> None:
    """wss:// works when the CA is trusted; the certificate is verified."""
    conn = WebsocketClientAdapter(sslopt={"ca_certs": tls.ca_path})
    try:
        conn.dial(wss_echo_server.url, 5)
        conn.write("secure")
        assert conn.read(5) == Message(TEXT, "secure")
        conn.close(timeout=5)
    finally:
        conn.abort()


def test_echo_text_and_binary(echo_server: WsServer, adapter: WebsocketClientAdapter) -> None:
    """str goes out as TEXT and bytes-likes as BINARY, and come back with their type."""
    adapter.dial(echo_server.url, 5)
    adapter.write("héllo")
    adapter.write(b"\x00\x01")
    adapter.write(bytearray(b"ba"))
    adapter.write(memoryview(b"mv"))
    received = [adapter.read(5) for _ in range(4)]
    assert received == [
        Message(TEXT, "héllo"),
        Message(BINARY, b"\x00\x01"),
        Message(BINARY, b"ba"),
        Message(BINARY, b"mv"),
    ]


def test_large_message_with_max_size_raised() -> None:
    """A 16 MiB message goes out and back intact when max_size allows it."""
    payload = bytes(range(256)) * (16 * 4096)
    with run_ws_server(echo_handler, max_size=None) as server:
        conn = WebsocketClientAdapter(max_size=2**25)
        try:
            conn.dial(server.url, 5)
            conn.write(payload)
            message = conn.read(20)
            assert message is not None
            assert message.data == payload
        finally:
            conn.abort()


def test_credentials_do_not_follow_a_redirect_to_another_origin() -> None:
    """A redirect to another origin drops Authorization and Cookie; one to the same
    origin keeps them (websocket-client would send them anywhere)."""

    seen: list[tuple[str | None, str | None]] = []

    def record(conn: ServerConnection, request: Request) -> None:
        seen.append((request.headers.get("Authorization"), request.headers.get("Cookie")))

    with run_ws_server(echo_handler, process_request=record) as target:

        landed: list[str | None] = []

        def redirect(conn: ServerConnection, request: Request) -> Response | None:
            if request.path == "/same":
                landed.append(request.headers.get("Authorization"))
                return None
            response = conn.respond(302, "moved\n")
            response.headers["Location"] = target.url if request.path == "/away" else "/same"
            return response

        with run_ws_server(echo_handler, process_request=redirect) as origin:
            adapter = WebsocketClientAdapter(
                header={"Authorization": "Bearer secret-1"}, cookie="session=secret-2"
            )
            try:
                adapter.dial(origin.url + "away", 5)
                adapter.close(timeout=1)
                adapter.dial(origin.url + "here", 5)
            finally:
                adapter.close(timeout=1)
    assert seen == [(None, None)]
    assert landed == ["Bearer secret-1"]
