# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""RELIABILITY E1, E2, E5 and E10 on every adapter: a busy writer must not blind the
reader or the keepalive, a ping flood must not starve the pause lock, and a 101 naming an
extension nobody offered fails the handshake (issue 16, defects 1, 2, 5 and 10)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import pytest

from tests.support.echo_process import echo_process
from tests.support.rawserver import RawConnection, RawServer
from tests.support.rawserver import encode_frame as server_frame
from tests.support.recorder import (
    Recorder,
    _no_engine_left_running,  # noqa: F401 (autouse)
    fast,
    stop_and_check,
    wait_open,
)
from tests.support.servers import wait_for
from wsengine import ConnectionClosedError, EngineStartError, EngineState, WebsocketEngine
from wsengine.adapters.base import ConnectionAdapter
from wsengine.adapters.websocket_client import WebsocketClientAdapter
from wsengine.adapters.websockets_sync import WebsocketsAdapter

ADAPTERS: list[Callable[[], ConnectionAdapter]] = [WebsocketClientAdapter, WebsocketsAdapter]


@pytest.fixture(params=ADAPTERS, ids=["websocket-client", "websockets"])
def make_adapter(request: pytest.FixtureRequest) -> Callable[[], ConnectionAdapter]:
    """Each shipped adapter in turn."""
    return request.param  # type: ignore[no-any-return]


@pytest.mark.timeout(120)
def test_e1_server_pings_during_blocked_large_sends_do_not_wedge(
    make_adapter: Callable[[], ConnectionAdapter],
) -> None:
    """E1: an application thread sends 1 MiB messages to an echo server (in another
    process) that pings every 50 ms: every message comes back, in order, and the pause
    lock can still be had; no pong waits for a blocked data write."""
    count = 60
    client = Recorder()
    with echo_process(ping_interval=0.05) as url:
        engine = WebsocketEngine(url, client, adapter=make_adapter(), config=fast(workers=1))
        engine.start()
        sent: list[BaseException | None] = []

        def send_all() -> None:
            try:
                for index in range(count):
                    engine.send(index.to_bytes(4, "big") + os.urandom(2**20 - 4))
            except BaseException as error:  # recorded for the test
                sent.append(error)
            else:
                sent.append(None)

        # Owned by this test; ends after its last send, or when the connection fails.
        sender = threading.Thread(target=send_all, name="test-sender", daemon=True)
        sender.start()
        client.wait_count("message", count, timeout=90)
        sender.join(10)
        assert sent == [None]
        indexes = [int.from_bytes(m.data[:4], "big") for m in client.messages]
        assert indexes == list(range(count))
        assert all(len(m.data) == 2**20 for m in client.messages)
        assert client.count("close") == 0
        assert engine.pause_lock.acquire(timeout=2)
        engine.pause_lock.release()
        stop_and_check(engine)


@pytest.mark.timeout(60)
def test_e1_reading_goes_on_while_a_write_is_blocked(
    make_adapter: Callable[[], ConnectionAdapter],
) -> None:
    """E1, at the adapter: while a writer is blocked on a full TCP window, the server
    sends pings and 8 MiB of messages without reading: the reader gets every message
    (reading never waits for the blocked write), and once the server reads again, the
    writer's frame arrives whole, followed by the pong."""
    chunk = 64 * 2**10
    count = 128
    writer_started = threading.Event()
    found: dict[str, object] = {}

    def script(conn: RawConnection) -> None:
        assert writer_started.wait(10)
        for index in range(count):
            conn.send_frame(0x9, b"p%d" % index)
            conn.send_frame(0x2, index.to_bytes(4, "big") + bytes(chunk - 4))
        fin, opcode, payload = conn.recv_frame(30)
        found["data"] = (fin, opcode, len(payload))
        pongs = []
        while not pongs or pongs[-1] != b"p%d" % (count - 1):
            _, opcode, payload = conn.recv_frame(10)
            if opcode == 0xA:
                pongs.append(payload)
        found["pongs"] = pongs

    adapter = make_adapter()
    with RawServer(script) as raw:
        adapter.dial(raw.url, 5)
        outcome: list[BaseException | None] = []

        def write() -> None:
            writer_started.set()
            try:
                adapter.write(bytes(32 * 2**20))
            except BaseException as error:  # recorded for the test
                outcome.append(error)
            else:
                outcome.append(None)

        # Owned by this test; ends once the server drained the frame.
        writer = threading.Thread(target=write, name="test-writer", daemon=True)
        writer.start()
        indexes = []
        deadline = time.monotonic() + 20
        while len(indexes) < count and time.monotonic() < deadline:
            message = adapter.read(timeout=1)
            if message is not None:
                indexes.append(int.from_bytes(message.data[:4], "big"))
        assert indexes == list(range(count))
        writer.join(30)
        assert outcome == [None]
        wait_for(lambda: "pongs" in found, timeout=10)
        assert found["data"] == (True, 0x2, 32 * 2**20)
        # Pongs come after the frame (none may cut into it), answer pings in order, and
        # the last ping is answered. While the send turn was held, at most 16 waited
        # (the latest ones); pings read after the frame went out are answered at once.
        pongs = found["pongs"]
        assert isinstance(pongs, list) and 1 <= len(pongs) <= count
        numbers = [int(pong[1:]) for pong in pongs]
        assert numbers == sorted(set(numbers)) and numbers[-1] == count - 1
        adapter.abort()


def silent_peer(release: threading.Event) -> Callable[[RawConnection], None]:
    """A RawServer script: after the handshake, never read nor write until released."""

    def script(conn: RawConnection) -> None:
        release.wait(30)

    return script


@pytest.mark.timeout(60)
def test_e2_dead_peer_wakes_a_send_blocked_on_a_full_window(
    make_adapter: Callable[[], ConnectionAdapter],
) -> None:
    """E2: the peer reads nothing and says nothing while a thread is blocked sending: the
    keepalive still declares it dead (1006) within ping_interval + ping_timeout, and the
    blocked send() returns with ConnectionClosedError."""
    interval = timeout = 0.3
    client = Recorder()
    release = threading.Event()
    outcome: list[BaseException | None] = []
    with RawServer(silent_peer(release)) as raw:
        config = fast(ping_interval=interval, ping_timeout=timeout, auto_reconnect=False)
        engine = WebsocketEngine(raw.url, client, adapter=make_adapter(), config=config)
        engine.start()
        wait_open(engine, client, 1)
        session = engine.session
        assert session is not None

        def send_forever() -> None:
            try:
                session.send(bytes(64 * 2**20))
            except BaseException as error:  # recorded for the test
                outcome.append(error)
            else:
                outcome.append(None)

        began = time.monotonic()
        # Owned by this test; ends when the send fails (or, wrongly, completes).
        sender = threading.Thread(target=send_forever, name="test-sender", daemon=True)
        sender.start()
        client.wait_count("close", 1, timeout=(interval + timeout) * 3 + 2)
        took = time.monotonic() - began
        sender.join(5)
        release.set()
        assert not sender.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], ConnectionClosedError)
        (close,) = client.details("close")
        assert close.code == 1006
        assert took < (interval + timeout) * 3 + 1
        engine.wait(5)
        stop_and_check(engine)


@pytest.mark.timeout(60)
def test_e5_ping_flood_does_not_starve_the_pause_lock(
    make_adapter: Callable[[], ConnectionAdapter],
) -> None:
    """E5: a peer sending pings as fast as TCP allows: the pause lock is granted within
    milliseconds every time, and the engine stays open and responsive."""
    stop_flood = threading.Event()
    ping = server_frame(0x9, b"flood") * 2000

    def flood(conn: RawConnection) -> None:
        # Bounded: ends when the test is done, after 20 s at most, or when the client goes.
        deadline = time.monotonic() + 20
        try:
            while not stop_flood.is_set() and time.monotonic() < deadline:
                conn.send_raw(ping)
        except OSError:
            return

    client = Recorder()
    with RawServer(flood) as raw:
        engine = WebsocketEngine(raw.url, client, adapter=make_adapter(),
                                 config=fast(workers=1))
        engine.start()
        waits: list[float] = []
        try:
            for _ in range(20):
                began = time.monotonic()
                assert engine.pause_lock.acquire(timeout=2), f"timed out after {waits}"
                waits.append(time.monotonic() - began)
                engine.pause_lock.release()
                threading.Event().wait(0.02)  # let the engine read a while between pauses
            assert engine.state is EngineState.OPEN
        finally:
            stop_flood.set()
        assert max(waits) < 0.25, waits
        stop_and_check(engine)


@pytest.mark.timeout(30)
def test_e10_an_extension_never_offered_fails_the_start(
    make_adapter: Callable[[], ConnectionAdapter],
) -> None:
    """E10: a 101 whose Sec-WebSocket-Extensions names an extension the client never
    offered fails start() (RFC 6455 4.1), and on_open never runs."""
    client = Recorder()
    header = b"Sec-WebSocket-Extensions: x-never-offered\r\n"
    with RawServer(lambda conn: None, extra_headers=header) as raw:
        engine = WebsocketEngine(raw.url, client, adapter=make_adapter(), config=fast())
        with pytest.raises(EngineStartError):
            engine.start()
        assert client.count("open") == 0
        stop_and_check(engine)


@pytest.mark.timeout(30)
def test_on_close_comes_at_once_after_a_protocol_error(
    make_adapter: Callable[[], ConnectionAdapter],
) -> None:
    """Issue 16 rough edge: after the server breaks the protocol (a reserved opcode), the
    engine sends 1002, drops TCP and runs on_close(1002) within a second, with either
    adapter (the websockets adapter used to take 10 s, waiting for the server's FIN)."""
    seen: dict[str, object] = {}

    def script(conn: RawConnection) -> None:
        conn.send_frame(0x3, b"reserved")
        seen["close"] = conn.expect_close(5)
        # Keep TCP open: the client must not wait for our FIN.
        conn.wait_eof(10)

    client = Recorder()
    with RawServer(script) as raw:
        engine = WebsocketEngine(raw.url, client, adapter=make_adapter(),
                                 config=fast(auto_reconnect=False))
        began = time.monotonic()
        engine.start()
        client.wait_count("close", 1, timeout=5)
        took = time.monotonic() - began
        (close,) = client.details("close")
        assert close.code == 1002
        assert took < 1.0
        assert engine.wait(5)
        stop_and_check(engine)
    assert isinstance(seen.get("close"), tuple) and seen["close"][0] == 1002
