# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""``stop_on_close_codes``: a peer close with one of them stops the engine for good after
``on_close``; any other code reconnects as before (issue 11, point 6)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from websockets.sync.server import ServerConnection

from tests.support.servers import run_ws_server
from tests.test_reliability import (
    Recorder,
    _no_engine_left_running,  # noqa: F401 (autouse)
    fast,
    stop_and_check,
)
from wsengine import EngineState, WebsocketEngine
from wsengine.adapters.base import ConnectionAdapter
from wsengine.adapters.websocket_client import WebsocketClientAdapter
from wsengine.adapters.websockets_sync import WebsocketsAdapter

ADAPTERS: list[Callable[[], ConnectionAdapter]] = [WebsocketClientAdapter, WebsocketsAdapter]


@pytest.fixture(params=ADAPTERS, ids=["websocket-client", "websockets"])
def make_adapter(request: pytest.FixtureRequest) -> Callable[[], ConnectionAdapter]:
    return request.param  # type: ignore[no-any-return]


def close_with(code: int) -> Callable[[ServerConnection], None]:
    def handler(ws: ServerConnection) -> None:
        ws.close(code, "go away")

    return handler


def test_a_listed_peer_close_code_stops_for_good(
    make_adapter: Callable[[], ConnectionAdapter],
) -> None:
    client = Recorder()
    with run_ws_server(close_with(4001)) as server:
        engine = WebsocketEngine(server.url, client, adapter=make_adapter(),
                                 config=fast(stop_on_close_codes=[1008, 4001]))
        engine.start()
        assert engine.wait(5), "the engine should stop for good after a 4001"
        assert engine.state is EngineState.STOPPED
        assert [c.code for c in client.details("close")] == [4001]
        assert client.count("open") == 1
        assert len(server.connections) == 1
        stop_and_check(engine)


def test_an_unlisted_peer_close_code_reconnects(
    make_adapter: Callable[[], ConnectionAdapter],
) -> None:
    client = Recorder()
    with run_ws_server(close_with(4002)) as server:
        engine = WebsocketEngine(server.url, client, adapter=make_adapter(),
                                 config=fast(stop_on_close_codes={4001}))
        engine.start()
        client.wait_count("open", 2)
        assert client.details("close")[0].code == 4002
        stop_and_check(engine)
