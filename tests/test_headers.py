# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""Per-dial headers (API.md "Per-dial headers", RELIABILITY E16): WebsocketEngine's
``headers=``, a mapping or a callable called before every dial, on both adapters."""

from __future__ import annotations

import itertools
import logging
from typing import Any

import pytest
import websocket
from websockets.http11 import Request, Response
from websockets.sync.server import ServerConnection

from tests.support.recorder import Recorder, fast, stop_and_check, wait_open
from tests.support.servers import echo_handler, run_ws_server, wait_for
from wsengine import ConfigError, EngineStartError, WebsocketEngine
from wsengine.adapters.websocket_client import WebsocketClientAdapter
from wsengine.adapters.websockets_sync import WebsocketsAdapter

ADAPTERS = [WebsocketClientAdapter, WebsocketsAdapter]


@pytest.fixture(params=ADAPTERS, ids=["websocket-client", "websockets"])
def adapter_class(request: pytest.FixtureRequest) -> Any:
    """Each shipped adapter class in turn."""
    return request.param


def recording(seen: list[dict[str, str]], status: int | None = None) -> Any:
    """A process_request hook recording each handshake's headers (lower-case names); it
    refuses with ``status`` when given."""

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        seen.append({name.lower(): value for name, value in request.headers.raw_items()})
        if status is not None:
            return connection.respond(status, "refused\n")
        return None

    return process_request


def test_a_mapping_of_headers_reaches_the_server_on_every_dial(adapter_class: Any) -> None:
    """headers={...} is sent with the first dial and with every reconnect."""
    seen: list[dict[str, str]] = []
    client = Recorder()
    with run_ws_server(echo_handler, process_request=recording(seen)) as server:
        engine = WebsocketEngine(server.url, client, adapter=adapter_class(),
                                 headers={"X-Api-Key": "k1"}, config=fast())
        engine.start()
        wait_open(engine, client, 1)
        session = engine.session
        assert session is not None
        session.restart()
        wait_open(engine, client, 2)
        stop_and_check(engine)
    assert [h.get("x-api-key") for h in seen] == ["k1", "k1"]


def test_a_headers_callable_gives_fresh_values_on_every_dial(adapter_class: Any) -> None:
    """A callable is called before every dial, after a callable url: each reconnect sends
    the token it returned then."""
    seen: list[dict[str, str]] = []
    calls: list[str] = []
    tokens = itertools.count(1)
    client = Recorder()
    with run_ws_server(echo_handler, process_request=recording(seen)) as server:

        def url() -> str:
            calls.append("url")
            return server.url

        def headers() -> dict[str, str]:
            calls.append("headers")
            return {"Authorization": f"Bearer token-{next(tokens)}"}

        engine = WebsocketEngine(url, client, adapter=adapter_class(), headers=headers,
                                 config=fast())
        engine.start()
        wait_open(engine, client, 1)
        for count in (2, 3):
            session = engine.session
            assert session is not None
            session.restart()
            wait_open(engine, client, count)
        stop_and_check(engine)
    assert [h.get("authorization") for h in seen] == [
        "Bearer token-1", "Bearer token-2", "Bearer token-3",
    ]
    assert calls == ["url", "headers"] * 3


def test_header_values_never_reach_errors_or_logs(
    adapter_class: Any, caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest
) -> None:
    """E16: a refused dial with a secret header value: the value appears in no log record
    (any logger, DEBUG included) and not in the error start() raises."""
    secret = "s3cr3t-header-value-0042"
    seen: list[dict[str, str]] = []
    client = Recorder()
    caplog.set_level(logging.DEBUG)
    # websocket-client logs handshakes only with its trace on: turn it on, as a user
    # debugging a connection would.
    websocket.enableTrace(True, handler=logging.NullHandler())
    request.addfinalizer(lambda: websocket.enableTrace(False))
    with run_ws_server(echo_handler, process_request=recording(seen, 401)) as server:
        engine = WebsocketEngine(server.url, client, adapter=adapter_class(),
                                 headers=lambda: {"Authorization": f"Bearer {secret}"},
                                 config=fast())
        with pytest.raises(EngineStartError) as info:
            engine.start()
        stop_and_check(engine)
    assert seen and seen[0]["authorization"] == f"Bearer {secret}"
    text = "".join(str(error) for error in (info.value, info.value.__cause__))
    assert secret not in text
    # The test server's own logger prints what it received; every other one must not.
    client_side = [r for r in caplog.records if not r.name.startswith("websockets.server")]
    assert client_side
    assert all(secret not in record.getMessage() for record in client_side)


@pytest.mark.parametrize(
    ("headers", "named"),
    [
        ({"Bad Name": "v"}, "Bad Name"),
        ({"X-Ok": "line\r\nInjected: 1"}, "X-Ok"),
        ({"X-Num": 1}, "X-Num"),
        (["X-List"], "mapping"),
    ],
)
def test_bad_headers_are_a_config_error_without_the_value(headers: Any, named: str) -> None:
    """A bad name or value is a ConfigError at construction that names the header and
    never shows its value."""
    with pytest.raises(ConfigError, match=named) as info:
        WebsocketEngine("ws://127.0.0.1:9/", Recorder(), headers=headers)
    assert "Injected" not in str(info.value)


def test_a_callable_returning_bad_headers_fails_the_dial() -> None:
    """A callable's bad return value fails the dial like a dial error (start() raises
    EngineStartError with the ConfigError as cause)."""
    client = Recorder()
    with run_ws_server(echo_handler) as server:
        engine = WebsocketEngine(server.url, client, headers=lambda: {"X": "a\nb"},
                                 config=fast())
        with pytest.raises(EngineStartError) as info:
            engine.start()
        assert isinstance(info.value.__cause__, ConfigError)
        stop_and_check(engine)
    wait_for(lambda: True)
