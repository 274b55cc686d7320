# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""RELIABILITY.md section B: faults on an open connection (map in test_reliability)."""

from __future__ import annotations

import itertools
import logging
import random
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection

from tests.conftest import TlsMaterial
from tests.support.proxy import Direction, FaultProxy, Scope
from tests.support.rawserver import RawConnection, RawServer
from tests.support.rawserver import encode_frame as server_frame
from tests.support.recorder import (
    FAST,
    Recorder,
    _no_engine_left_running,  # noqa: F401 (autouse)
    close_frame,
    closed_port,
    fast,
    first_close_code,
    first_then_idle,
    hold,
    serve_idle,
    serve_on,
    stop_and_check,
    thread_in,
    wait_open,
)
from tests.support.servers import echo_handler, run_ws_server, wait_for
from wsengine import (
    CloseMessage,
    ConnectionClosedError,
    EngineState,
    Message,
    MessageType,
    Session,
    WebsocketEngine,
)
from wsengine._protocol import FrameError, FrameParser
from wsengine._reconnect import backoff_delay
from wsengine.adapters.websocket_client import WebsocketClientAdapter

TEXT = MessageType.TEXT
BINARY = MessageType.BINARY

#: Keepalive fast enough to see a dead peer in well under a second.
KEEPALIVE = fast(ping_interval=0.2, ping_timeout=0.2)


def first_connection_then_echo(first: Callable[[ServerConnection], None]) -> Any:
    """A websockets handler running ``first`` on the first connection, echo on the rest."""
    numbers = itertools.count(1)

    def handler(ws: ServerConnection) -> None:
        if next(numbers) == 1:
            first(ws)
        else:
            echo_handler(ws)

    return handler


def drain_until_closed(ws: ServerConnection) -> None:
    """Read (and drop) messages until the connection closes."""
    try:
        for _ in ws:
            pass
    except ConnectionClosed:
        pass


# -- B1-B3: the server closes, drops or resets -------------------------------------------


@pytest.mark.parametrize("code", [1000, 1001, 1012])
def test_b1_server_close_is_reported_once_echoed_then_reconnected(code: int) -> None:
    """B1: a server close (code + reason) reaches on_close exactly once, the close is
    echoed, and the engine reconnects within its backoff bound (on_open restarting)."""

    def close_at_once(ws: ServerConnection) -> None:
        ws.close(code, "restarting")

    client = Recorder()
    with run_ws_server(first_connection_then_echo(close_at_once)) as server:
        engine = WebsocketEngine(server.url, client, config=FAST)
        engine.start()
        wait_open(engine, client, 2)
        engine.send("after the reconnect")
        client.wait_count("message", 1)
        wait_for(lambda: first_close_code(server) is not None)
        echoed = first_close_code(server)
        stop_and_check(engine)
    assert echoed == code
    closes = client.details("close")
    assert closes == [CloseMessage(code, "restarting"), None]
    assert client.details("open") == [False, True]
    gap = client.times("open")[1] - client.times("close")[0]
    assert gap < FAST.reconnect_delay_max + 0.5
    assert client.names("open", "close") == ["open", "close", "open", "close"]


def test_b2_tcp_fin_without_close_frame_is_1006_then_reconnect() -> None:
    """B2: the connection dropped with a FIN and no close frame (PROXY drop) gives
    on_close(1006) once within 1 s, then a reconnect."""
    client = Recorder()
    with run_ws_server(echo_handler) as server, FaultProxy(server.port) as proxy:
        engine = WebsocketEngine(proxy.url, client, config=FAST)
        engine.start()
        dropped = time.monotonic()
        proxy.drop()
        wait_open(engine, client, 2)
        engine.send("again")
        client.wait_count("message", 1)
        stop_and_check(engine)
    (lost, stopped) = client.details("close")
    assert lost.code == 1006 and stopped is None
    assert client.times("close")[0] - dropped < 1.0
    assert "read_error" not in client.names()


def test_b3_tcp_reset_is_1006_then_reconnect(caplog: pytest.LogCaptureFixture) -> None:
    """B3: a TCP reset (PROXY reset, RST) is on_close(1006) once, then a reconnect; no
    ConnectionResetError escapes a thread or is logged as an error."""
    client = Recorder()
    with run_ws_server(echo_handler) as server, FaultProxy(server.port) as proxy:
        engine = WebsocketEngine(proxy.url, client, config=FAST)
        engine.start()
        reset = time.monotonic()
        proxy.reset()
        wait_open(engine, client, 2)
        engine.send("again")
        client.wait_count("message", 1)
        stop_and_check(engine)
    (lost, stopped) = client.details("close")
    assert lost.code == 1006 and stopped is None
    assert client.times("close")[0] - reset < 1.0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# -- B4-B7: keepalive -------------------------------------------------------------------


def test_b4_black_hole_is_detected_by_keepalive_then_reconnect() -> None:
    """B4: a black hole (PROXY: no byte either way, sockets open) is detected within
    ping_interval + ping_timeout (+ poll); on_close(1006); the old socket is aborted
    at once, not waited on; the engine reconnects through the healed path."""
    client = Recorder()
    with run_ws_server(echo_handler) as server, FaultProxy(server.port) as proxy:
        engine = WebsocketEngine(proxy.url, client, config=KEEPALIVE)
        engine.start()
        engine.send("before")
        client.wait_count("message", 1)
        holed = time.monotonic()
        proxy.black_hole(scope=Scope.EXISTING)  # later connections pass
        client.wait_count("close", 1, timeout=3)
        proxy.wait(lambda: proxy.link(1).client_gone, timeout=1)
        wait_open(engine, client, 2)
        engine.send("after")
        client.wait_count("message", 2)
        stop_and_check(engine)
    (lost, stopped) = client.details("close")
    assert lost.code == 1006 and stopped is None
    bound = KEEPALIVE.ping_interval + KEEPALIVE.ping_timeout + 0.05  # type: ignore[operator]
    assert client.times("close")[0] - holed < bound * 3
    assert client.times("open")[1] - client.times("close")[0] < 0.5
    assert proxy.connections == 2


def test_b5_peer_that_never_pongs_is_dead_and_no_1006_goes_on_the_wire() -> None:
    """B5: a peer that reads but never answers pings is declared dead within the B4
    bound; on_close(1006); on the wire at most a 1011, never 1006."""
    frames: list[tuple[int, bytes]] = []

    def mute(conn: RawConnection) -> None:
        try:
            while True:
                _, opcode, payload = conn.recv_frame(10)
                frames.append((opcode, payload))
        except (EOFError, TimeoutError, OSError):
            pass

    client = Recorder()
    done = threading.Event()
    with RawServer(first_then_idle(mute, done)) as raw:
        engine = WebsocketEngine(raw.url, client, config=KEEPALIVE)
        engine.start()
        wait_open(engine, client, 2, timeout=3)
        assert done.wait(5)  # the dead connection's frames are all counted
        stop_and_check(engine)
    (lost, stopped) = client.details("close")
    assert lost.code == 1006 and stopped is None
    bound = KEEPALIVE.ping_interval + KEEPALIVE.ping_timeout + 0.05  # type: ignore[operator]
    assert client.times("close")[0] - client.times("open")[0] < bound * 3
    assert any(opcode == 0x9 for opcode, _ in frames)
    close_codes = [int.from_bytes(p[:2], "big") for opcode, p in frames if opcode == 0x8]
    assert set(close_codes) <= {1011}


def test_b6_quiet_healthy_peer_is_not_disconnected() -> None:
    """B6: a server idle for 10 ping intervals that answers pings is never declared dead;
    the pings reach it (PROXY counts 6-byte ping frames going up, 2-byte pongs down)."""
    config = fast(ping_interval=0.1, ping_timeout=0.2)
    client = Recorder()
    with run_ws_server(echo_handler) as server, FaultProxy(server.port) as proxy:
        engine = WebsocketEngine(proxy.url, client, config=config)
        engine.start()
        opened = time.monotonic()
        up, down = proxy.bytes_up, proxy.bytes_down
        proxy.wait(
            lambda: time.monotonic() - opened >= 10 * 0.1 and proxy.bytes_up - up >= 6 * 3,
            timeout=10 * 0.1 * 3,
        )
        pings = (proxy.bytes_up - up) // 6
        proxy.wait(lambda: proxy.bytes_down - down >= 2 * (pings - 1), timeout=1)
        assert (proxy.bytes_up - up) % 6 == 0  # nothing but empty pings went up
        assert client.names() == ["open"]
        assert engine.state is EngineState.OPEN
        stop_and_check(engine)
    assert proxy.connections == 1


@pytest.mark.parametrize(
    ("interval", "timeout"),
    [
        (0.2, 0.1),
        (0.1, 0.1),
        (0.1, 0.3),
    ],
)
def test_b6_pings_go_out_every_ping_interval(interval: float, timeout: float) -> None:
    """B6: on a quiet healthy connection the keepalive pings every ping_interval (API.md:
    "seconds between keepalive pings"), whatever ping_timeout is."""
    stamps: list[float] = []

    def pong_and_stamp(conn: RawConnection) -> None:
        try:
            while True:
                _, opcode, payload = conn.recv_frame(10)
                if opcode == 0x9:
                    stamps.append(time.monotonic())
                    conn.send_frame(0xA, payload)
                elif opcode == 0x8:
                    conn.send_frame(0x8, payload[:2])
                    return
        except (EOFError, TimeoutError, OSError):
            return

    client = Recorder()
    with RawServer(pong_and_stamp) as raw:
        engine = WebsocketEngine(raw.url, client,
                                 config=fast(ping_interval=interval, ping_timeout=timeout))
        engine.start()
        wait_for(lambda: len(stamps) >= 4, timeout=4 * (interval + timeout) * 2)
        stop_and_check(engine)
    gaps = sorted(b - a for a, b in itertools.pairwise(stamps))
    median = gaps[len(gaps) // 2]
    assert interval * 0.9 <= median <= interval * 1.5, gaps
    assert client.names() == ["open", "close"]


def test_b7_latency_below_ping_timeout_keeps_the_connection_and_the_order() -> None:
    """B7: 100 ms +- 50 ms of latency each way (PROXY, seeded) causes no disconnect while
    keepalive runs; with workers=1 messages arrive in order."""
    config = fast(workers=1, ping_interval=0.2, ping_timeout=0.6)
    client = Recorder()
    pongs: set[float] = set()
    with run_ws_server(echo_handler) as server, FaultProxy(server.port, seed=7) as proxy:
        engine = WebsocketEngine(proxy.url, client, config=config)
        engine.start()
        proxy.latency(0.1, 0.05)
        for number in range(100):
            engine.send(f"m{number}")
        client.wait_count("message", 100, timeout=5)
        adapter = engine.adapter
        assert isinstance(adapter, WebsocketClientAdapter)

        def two_pongs() -> bool:
            pongs.add(adapter.last_pong)
            return len(pongs - {0.0}) >= 2

        wait_for(two_pongs, timeout=2 * 0.8 * 3)
        assert client.names("open", "close") == ["open"]
        stop_and_check(engine)
    assert [m.data for m in client.messages] == [f"m{n}" for n in range(100)]


# -- B8-B9: the byte stream is sliced or cut ---------------------------------------------


def test_b8_frames_sliced_into_tiny_reads_arrive_intact() -> None:
    """B8: with frames sliced into 1-3 byte segments (PROXY slice downstream), fragmented
    and plain messages arrive intact and in order; a read cut mid-frame loses nothing."""
    big = bytes(range(256)) * 256  # 64 KiB

    def send_all(ws: ServerConnection) -> None:
        for message in ws:
            if message == "small":
                ws.send(["h\u00e9llo ", "w\u00f6rld ", "\u20acuro \U0001f600"])
                ws.send([b"\x00" * 100, b"\x01" * 200, b"\x02" * 50])
                ws.send("p" * 300)
                ws.send(["f" * 50] * 12)
            elif message == "big":
                ws.send([big[i:i + 4096] for i in range(0, len(big), 4096)])

    client = Recorder()
    with run_ws_server(send_all) as server, FaultProxy(server.port, seed=3) as proxy:
        engine = WebsocketEngine(proxy.url, client, config=fast(workers=1))
        engine.start()
        proxy.slice(1, 3, 0.0005, Direction.DOWN)
        engine.send("small")
        client.wait_count("message", 4, timeout=10)
        proxy.slice(1, 3, 0.0, Direction.DOWN)
        engine.send("big")
        client.wait_count("message", 5, timeout=10)
        stop_and_check(engine)
    assert client.messages == [
        Message(TEXT, "h\u00e9llo w\u00f6rld \u20acuro \U0001f600"),
        Message(BINARY, b"\x00" * 100 + b"\x01" * 200 + b"\x02" * 50),
        Message(TEXT, "p" * 300),
        Message(TEXT, "f" * 600),
        Message(BINARY, big),
    ]
    assert client.names("open", "close") == ["open", "close"]


def test_b9_truncation_mid_frame_is_1006_with_no_partial_message() -> None:
    """B9: the stream cut in the middle of a frame (PROXY limit_data downstream) gives
    on_close(1006), no partial message, then a reconnect."""

    def big_on_request(ws: ServerConnection) -> None:
        ws.recv()
        ws.send("B" * 1000)
        drain_until_closed(ws)

    client = Recorder()
    with run_ws_server(first_connection_then_echo(big_on_request)) as server, \
            FaultProxy(server.port) as proxy:
        engine = WebsocketEngine(proxy.url, client, config=FAST)
        engine.start()
        proxy.limit_data(10, Direction.DOWN, Scope.EXISTING)
        engine.send("go")
        wait_open(engine, client, 2)
        assert client.messages == []
        engine.send("whole")
        client.wait_count("message", 1)
        stop_and_check(engine)
    (lost, stopped) = client.details("close")
    assert lost.code == 1006 and stopped is None
    assert client.messages == [Message(TEXT, "whole")]


# -- B13-B20: protocol violations and odd closes, from a raw server ----------------------


def run_against_raw(
    fault: Callable[[RawConnection], None], *, max_size: int | None = 1024
) -> Recorder:
    """Start an engine on a RawServer whose first connection runs ``fault``; wait for the
    reconnect (the second connection is well behaved), stop; return the recorder."""
    client = Recorder()
    done = threading.Event()
    with RawServer(first_then_idle(fault, done)) as raw:
        engine = WebsocketEngine(
            raw.url, client, adapter=WebsocketClientAdapter(max_size=max_size),
            config=fast(workers=1),
        )
        engine.start()
        wait_open(engine, client, 2)
        assert done.wait(5)  # the fault script recorded what it saw
        stop_and_check(engine)
    return client


def violation(bad: bytes | Callable[[RawConnection], None],
              wire: list[int | str | None]) -> Callable[[RawConnection], None]:
    """A fault sending ``bad`` (bytes, or a script), then recording the close code the
    client sends (None for an empty close, "eof" for a TCP drop with no close frame)."""

    def fault(conn: RawConnection) -> None:
        if callable(bad):
            bad(conn)
        else:
            conn.send_raw(bad)
        try:
            code, _ = conn.expect_close(5)
        except EOFError:
            wire.append("eof")
            return
        wire.append(code)
        conn.wait_eof(5)

    return fault


def assert_failed_with(client: Recorder, wire: list[int | str | None], code: int) -> None:
    """The engine failed the first connection with ``code``: on the wire (or dropped TCP),
    in on_close, with no message and no on_read_error; then it reconnected."""
    assert wire in ([code], ["eof"])
    (failed, stopped) = client.details("close")
    assert failed.code == code if wire == [code] else failed.code in (code, 1006)
    assert stopped is None
    assert client.messages == []
    assert "read_error" not in client.names()
    assert client.details("open") == [False, True]


def test_b13_message_over_max_size_from_a_real_server_is_1009() -> None:
    """B13: a websockets server sending max_size + 1 bytes gets close 1009; on_close
    reports 1009; the engine reconnects."""

    def too_big(ws: ServerConnection) -> None:
        ws.recv()
        ws.send(b"x" * 1025)
        drain_until_closed(ws)

    client = Recorder()
    with run_ws_server(first_connection_then_echo(too_big)) as server:
        adapter = WebsocketClientAdapter(max_size=1024)
        engine = WebsocketEngine(server.url, client, adapter=adapter, config=FAST)
        engine.start()
        engine.send("go")
        wait_open(engine, client, 2)
        wait_for(lambda: first_close_code(server) is not None)
        sent = first_close_code(server)
        engine.send(b"x" * 1024)
        client.wait_count("message", 1)
        stop_and_check(engine)
    assert sent == 1009
    (failed, _) = client.details("close")
    assert failed.code == 1009
    assert client.messages == [Message(BINARY, b"x" * 1024)]
    assert "read_error" not in client.names()


HUGE_HEADER = bytes((0x82, 127)) + (2**62).to_bytes(8, "big")
TINY_FRAGMENTS = server_frame(0x2, b"a", fin=False) + b"".join(
    server_frame(0x0, b"b", fin=False) for _ in range(2000)
)


@pytest.mark.parametrize(
    "bad", [HUGE_HEADER, TINY_FRAGMENTS], ids=["header-2-62-alone", "2000-tiny-fragments"]
)
def test_b13_oversized_message_is_failed_from_its_headers(bad: bytes) -> None:
    """B13: a frame header announcing 2**62 bytes (no payload sent) or a message of many
    tiny fragments over max_size gets close 1009 at once; memory stays bounded."""
    wire: list[int | str | None] = []
    client = run_against_raw(violation(bad, wire))
    assert_failed_with(client, wire, 1009)


@pytest.mark.parametrize(
    ("opcode", "fragments"), [(0x1, 60_000), (0x2, 30_000)], ids=["text", "binary"]
)
def test_b13_zero_length_fragments_do_not_grow_memory(opcode: int, fragments: int) -> None:
    """B13: a 2-byte message spread over tens of thousands of zero-length fragments keeps
    the default adapter's memory bounded: either it fails the message (1009) or it holds
    about the payload (plus one read chunk), not one entry per fragment."""
    stream = (
        server_frame(opcode, b"a", fin=False)
        + server_frame(0x0, b"", fin=False) * fragments
        + server_frame(0x0, b"z")
    )
    parser = FrameParser(1024)
    out: list[Message] = []
    tracemalloc.start()
    try:
        try:
            for start in range(0, len(stream), 65536):
                parser.feed(stream[start:start + 65536])
                while parser.parse(out, 16) is not None:
                    pass
        except FrameError as error:
            assert error.code in (1008, 1009)
            return
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [m.data for m in out] == (["az"] if opcode == 0x1 else [b"az"])
    assert peak < 256 * 1024, f"peak {peak} bytes for a 2-byte message"


AUTOBAHN_6_4_1 = (
    b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5",  # valid
    b"\xf4\x90\x80\x80",  # U+110000: out of range
    b"\x65\x64\x69\x74\x65\x64",  # valid, never sent: the client fails first
)


def fail_fast_fragments(conn: RawConnection) -> None:
    conn.send_frame(0x1, AUTOBAHN_6_4_1[0], fin=False)
    conn.send_frame(0x0, AUTOBAHN_6_4_1[1], fin=False)


@pytest.mark.parametrize(
    "bad",
    [
        server_frame(0x1, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited"),
        server_frame(0x1, b"\xce", fin=False) + server_frame(0x0, b"A"),
        server_frame(0x1, b"ok\xe2\x82"),
        fail_fast_fragments,
    ],
    ids=["surrogate-6.3", "split-across-fragments", "truncated-at-end", "fail-fast-6.4"],
)
def test_b14_invalid_utf8_is_1007_and_never_a_read_error(
    bad: bytes | Callable[[RawConnection], None],
) -> None:
    """B14: invalid UTF-8 in a text message (one frame, or across fragments, failed before
    the message ends) gets close 1007; nothing is delivered; on_read_error is not called."""
    wire: list[int | str | None] = []
    client = run_against_raw(violation(bad, wire))
    assert_failed_with(client, wire, 1007)


B15_VIOLATIONS: list[tuple[str, bytes]] = [
    ("rsv1", server_frame(0x1, b"x", rsv=4)),
    ("opcode-3", server_frame(0x3, b"")),
    ("opcode-0xB", server_frame(0xB, b"")),
    ("fragmented-ping", server_frame(0x9, b"x", fin=False)),
    ("ping-126-bytes", server_frame(0x9, b"x" * 126)),
    ("masked-server-frame", server_frame(0x1, b"x", mask=True)),
    ("continuation-first", server_frame(0x0, b"x")),
    ("data-inside-fragments", server_frame(0x1, b"a", fin=False) + server_frame(0x1, b"b")),
    ("close-1-byte", server_frame(0x8, b"\x03")),
    *[(f"close-code-{code}", close_frame(code))
      for code in (0, 999, 1004, 1005, 1006, 1016, 2999, 5000)],
]


@pytest.mark.parametrize("bad", [v[1] for v in B15_VIOLATIONS], ids=[v[0] for v in B15_VIOLATIONS])
def test_b15_protocol_violation_is_1002_then_reconnect(bad: bytes) -> None:
    """B15: each framing violation gets close 1002 (or a TCP drop); on_close runs once for
    that connection; the engine reconnects."""
    wire: list[int | str | None] = []
    client = run_against_raw(violation(bad, wire))
    assert_failed_with(client, wire, 1002)


def test_b16_ping_inside_a_fragmented_message_is_answered_at_once() -> None:
    """B16: a ping between two fragments is answered with the same payload before the
    message completes (Autobahn 5.6); the message is delivered intact."""
    pongs: list[tuple[int, bytes]] = []

    def ping_between(conn: RawConnection) -> None:
        conn.send_frame(0x1, b"frag-", fin=False)
        conn.send_frame(0x9, b"p-16")
        _, opcode, payload = conn.recv_frame(5)  # before the last fragment is sent
        pongs.append((opcode, payload))
        conn.send_frame(0x0, b"ment")
        serve_idle(conn)

    client = Recorder()
    with RawServer(ping_between) as raw:
        engine = WebsocketEngine(raw.url, client, config=fast(workers=1))
        engine.start()
        client.wait_count("message", 1)
        stop_and_check(engine)
    assert pongs == [(0xA, b"p-16")]
    assert client.messages == [Message(TEXT, "frag-ment")]


def test_b17_empty_close_is_reported_as_1005_and_never_sent() -> None:
    """B17: a close frame with no payload reaches on_close as CloseMessage(1005); the
    reply is an empty close or 1000, never 1005 on the wire."""
    wire: list[int | str | None] = []

    def empty_close(conn: RawConnection) -> None:
        conn.send_frame(0x8, b"")
        code, _ = conn.expect_close(5)
        wire.append(code)

    client = run_against_raw(empty_close)
    assert wire in ([None], [1000])
    assert client.details("close") == [CloseMessage(1005, ""), None]
    assert client.details("open") == [False, True]


def test_b18_close_reason_not_utf8_is_a_protocol_error() -> None:
    """B18: a close reason that is not UTF-8 gets 1002 or 1007 (or a drop)."""
    wire: list[int | str | None] = []
    client = run_against_raw(violation(close_frame(1000, b"\xff\xfe"), wire))
    assert wire in ([1002], [1007], ["eof"])
    (failed, stopped) = client.details("close")
    assert failed.code in (1002, 1007, 1006) and stopped is None
    assert client.details("open") == [False, True]


def test_b19_server_keeping_tcp_open_after_close_is_cut_off() -> None:
    """B19: a server that sends a close frame but never closes TCP gets the reply, then
    the engine closes TCP itself within its close timeout."""
    timings: list[tuple[int | None, bool, float]] = []
    config = fast(stop_timeout=0.5)

    def close_no_fin(conn: RawConnection) -> None:
        conn.send_raw(close_frame(1000, b"bye"))
        code, _ = conn.expect_close(5)
        replied = time.monotonic()
        closed = conn.wait_eof(5)
        timings.append((code, closed, time.monotonic() - replied))

    client = Recorder()
    with RawServer(first_then_idle(close_no_fin)) as raw:
        engine = WebsocketEngine(raw.url, client, config=config)
        engine.start()
        wait_open(engine, client, 2)
        wait_for(lambda: bool(timings))
        stop_and_check(engine)
    ((code, closed, took),) = timings
    assert code == 1000 and closed
    assert took < 0.5 * 3
    assert client.details("close") == [CloseMessage(1000, "bye"), None]


def test_b20_data_after_the_close_frame_is_ignored() -> None:
    """B20: a data frame after the server's close frame is ignored: no on_message after
    on_close (the frame before the close is delivered)."""

    def data_after_close(conn: RawConnection) -> None:
        conn.send_raw(
            server_frame(0x1, b"before") + close_frame(1000) + server_frame(0x1, b"after")
        )
        conn.expect_close(5)

    client = run_against_raw(data_after_close)
    assert client.messages == [Message(TEXT, "before")]
    names = client.names("message", "close")
    assert names == ["message", "close", "close"]


# -- B21-B22: stopping against a dead or stuck peer --------------------------------------


def test_b21_stop_against_a_black_hole_returns_within_stop_timeout() -> None:
    """B21: stop() with the peer in a black hole returns within stop_timeout; on_close(None)
    ran; the socket is closed; no thread is left."""
    config = fast(stop_timeout=0.5)
    client = Recorder()
    with run_ws_server(echo_handler) as server, FaultProxy(server.port) as proxy:
        engine = WebsocketEngine(proxy.url, client, config=config)
        engine.start()
        proxy.black_hole()
        began = time.monotonic()
        stop_and_check(engine)
        took = time.monotonic() - began
        proxy.wait(lambda: proxy.link(1).client_gone, timeout=2)
    assert took < 0.5 * 3
    assert client.details("close") == [None]


def test_b22_stop_aborts_a_send_blocked_by_a_peer_that_does_not_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """B22: a worker blocked sending 50 MiB to a peer that reads nothing (PROXY freeze
    upstream) does not hold stop() past stop_timeout: the socket is aborted, the blocked
    send raises ConnectionClosedError and no thread is left."""
    config = fast(stop_timeout=0.5, workers=1)
    payload = bytes(50 * 2**20)
    outcome: list[BaseException | None] = []
    sending = threading.Event()
    proxy_box: list[FaultProxy] = []

    class Sender(Recorder):
        def on_message(self, session: Session, message: Message) -> None:
            super().on_message(session, message)
            proxy_box[0].freeze(Direction.UP)
            sending.set()
            try:
                session.send(payload)
            except BaseException as error:  # recorded for the test
                outcome.append(error)
            else:
                outcome.append(None)

    client = Sender()
    # No compression: 50 MiB of zeros must stay 50 MiB on the wire.
    with run_ws_server(echo_handler, compression=None) as server, \
            FaultProxy(server.port) as proxy:
        proxy_box.append(proxy)
        engine = WebsocketEngine(proxy.url, client, config=config)
        engine.start()
        engine.send("go")
        assert sending.wait(5)
        wait_for(lambda: thread_in("wsengine-worker", "_send_pending"), timeout=5)
        began = time.monotonic()
        engine.stop()
        took = time.monotonic() - began
        wait_for(lambda: bool(outcome), timeout=3)
        stop_and_check(engine)
    assert took < 0.5 * 3
    assert len(outcome) == 1 and isinstance(outcome[0], ConnectionClosedError)
    assert client.details("close") == [None]


# -- B23-B24: the server restarts or stays away ------------------------------------------


def test_b23_server_restarted_five_times_on_the_same_port() -> None:
    """B23: five server restarts on one port give five reconnects; retry_count starts at 1
    after each good connection; on_open and on_close alternate strictly."""
    port = closed_port()
    client = Recorder()
    with serve_on(port, echo_handler):
        engine = WebsocketEngine(f"ws://127.0.0.1:{port}/", client, config=FAST)
        engine.start()
    try:
        for restart in range(1, 6):
            failures = client.count("restart_error")
            client.wait_until(lambda f=failures: client.count("restart_error") > f)  # type: ignore[misc]
            with serve_on(port, echo_handler):
                wait_open(engine, client, restart + 1)
                engine.send(f"cycle {restart}")
                client.wait_count("message", restart)
                if restart == 5:
                    stop_and_check(engine)  # before this server goes: no sixth retry loop
    finally:
        stop_and_check(engine)
    assert client.names("open", "close") == ["open", "close"] * 6
    assert client.details("open") == [False] + [True] * 5
    assert client.details("close")[-1] is None
    runs = [list(group) for _, group in itertools.groupby(
        client.events, key=lambda e: e.name == "restart_error"
    )]
    sequences = [[e.detail[1] for e in run] for run in runs if run[0].name == "restart_error"]
    assert len(sequences) == 5
    for sequence in sequences:
        assert sequence == list(range(1, len(sequence) + 1))


def test_b24_backoff_delays_follow_the_policy_and_exit_stops() -> None:
    """B24: with the server gone, the waits between attempts follow
    min(max, initial * factor**k) * U[1-j, 1] (seeded RNG: each wait matches its drawn
    value); exit() in on_restart_error stops the engine and wait() returns True."""
    config = fast(reconnect_delay_initial=0.04, reconnect_delay_max=0.3,
                  reconnect_delay_factor=2.0, reconnect_jitter=0.5)
    attempts = 6

    class Quitter(Recorder):
        def on_restart_error(self, error: Exception, retry_count: int, exit: Any) -> None:
            super().on_restart_error(error, retry_count, exit)
            if retry_count == attempts:
                exit()

    client = Quitter()
    port = closed_port()
    with serve_on(port, echo_handler):
        engine = WebsocketEngine(f"ws://127.0.0.1:{port}/", client, config=config)
        engine.start()
        run = engine._run
        assert run is not None
        run.rng.seed(2024)
    assert engine.wait(5) is True
    assert engine.state is EngineState.STOPPED
    expected_rng = random.Random(2024)
    expected = [backoff_delay(config, k, expected_rng) for k in range(attempts)]
    for k, delay in enumerate(expected):
        nominal = min(config.reconnect_delay_max,
                      config.reconnect_delay_initial * config.reconnect_delay_factor**k)
        assert nominal * (1 - config.reconnect_jitter) <= delay <= nominal
    marks = client.times("close")[:1] + client.times("restart_error")
    observed = [later - earlier for earlier, later in itertools.pairwise(marks)]
    assert len(observed) == attempts
    for k, (seen, wanted) in enumerate(zip(observed, expected, strict=True)):
        assert wanted - 0.002 <= seen <= wanted + 0.15, (k, seen, wanted)
    assert [count for _, count in client.details("restart_error")] == list(range(1, 7))
    stop_and_check(engine)


def test_b24_backoff_exponent_resets_only_after_a_long_enough_connection() -> None:
    """B24: k grows across connections that drop quickly and goes back to 0 only after
    a connection stayed up reconnect_reset_after."""
    config = fast(reconnect_delay_initial=0.05, reconnect_delay_max=2.0,
                  reconnect_delay_factor=4.0, reconnect_jitter=0.0, reconnect_reset_after=0.6)
    numbers = itertools.count(1)
    release_third = threading.Event()

    def flapping(ws: ServerConnection) -> None:
        number = next(numbers)
        if number in (1, 2):
            ws.close(1001, "flap")
        elif number == 3:
            release_third.wait(5)
            ws.close(1001, "after a long life")
        else:
            echo_handler(ws)

    client = Recorder()
    with run_ws_server(flapping) as server:
        engine = WebsocketEngine(server.url, client, config=config)
        engine.start()
        wait_open(engine, client, 3, timeout=3)
        opened = client.times("open")[2]
        wait_for(lambda: time.monotonic() - opened >= config.reconnect_reset_after + 0.05,
                 timeout=3)
        release_third.set()
        wait_open(engine, client, 4, timeout=3)
        stop_and_check(engine)
    opens = client.times("open")
    closes = client.times("close")
    gaps = [opens[i + 1] - closes[i] for i in range(3)]
    # Connection 1 and 2 lived < 0.6 s: waits 0.05 (k=0), then 0.2 (k=1); connection 3
    # lived long enough: back to 0.05 (k=0).
    assert 0.05 <= gaps[0] < 0.2
    assert 0.2 <= gaps[1] < 0.8
    assert 0.05 <= gaps[2] < 0.2


def test_b24_stop_during_a_backoff_wait_returns_at_once() -> None:
    """B24: stop() while the engine waits out a long backoff returns at once."""
    config = fast(reconnect_delay_initial=5.0, reconnect_delay_max=5.0, reconnect_jitter=0.0)

    def close_at_once(ws: ServerConnection) -> None:
        ws.close(1012, "restarting")

    client = Recorder()
    with run_ws_server(close_at_once) as server:
        engine = WebsocketEngine(server.url, client, config=config)
        engine.start()
        client.wait_count("close", 1)
        wait_for(lambda: thread_in("wsengine-supervisor", "_reconnect"))
        assert engine.state is EngineState.RECONNECTING
        began = time.monotonic()
        stop_and_check(engine)
        took = time.monotonic() - began
    assert took < 0.3
    assert client.count("open") == 1


# -- B25-B27 -----------------------------------------------------------------------------


def test_b25_sixteen_mib_text_message_is_delivered_intact() -> None:
    """B25: a 16 MiB text message (Autobahn 9.1.6) arrives intact with max_size raised."""
    text = ("\u00e9" * 1023 + "\n") * 8192  # 16 MiB of UTF-8 (2 bytes per \u00e9)

    def send_big(ws: ServerConnection) -> None:
        ws.recv()
        ws.send(text)
        drain_until_closed(ws)

    client = Recorder()
    with run_ws_server(send_big) as server:
        adapter = WebsocketClientAdapter(max_size=32 * 2**20)
        engine = WebsocketEngine(server.url, client, adapter=adapter, config=FAST)
        engine.start()
        engine.send("go")
        client.wait_count("message", 1, timeout=10)
        stop_and_check(engine)
    (message,) = client.messages
    assert message.type is TEXT
    assert len(message.data.encode()) == 16 * 2**20 - 8192  # type: ignore[union-attr]
    assert message.data == text


def test_b26_tls_peer_vanishing_without_close_notify_is_1006(tls: TlsMaterial) -> None:
    """B26: a wss server dropping TCP with no close_notify (SSLEOFError) is reported as
    1006, then the engine reconnects over TLS."""

    def vanish(ws: ServerConnection) -> None:
        ws.recv()
        socket.socket.shutdown(ws.socket, socket.SHUT_RDWR)

    client = Recorder()
    with run_ws_server(first_connection_then_echo(vanish), ssl=tls.server_context) as server:
        adapter = WebsocketClientAdapter(sslopt={"ca_certs": tls.ca_path})
        engine = WebsocketEngine(server.url, client, adapter=adapter, config=FAST)
        engine.start()
        engine.send("bye")
        wait_open(engine, client, 2)
        engine.send("still secure")
        client.wait_count("message", 1)
        stop_and_check(engine)
    (lost, stopped) = client.details("close")
    assert lost.code == 1006 and stopped is None
    assert client.messages == [Message(TEXT, "still secure")]


def test_b27_pause_longer_than_the_server_keepalive() -> None:
    """B27: while the pause lock is held for 1 s our keepalive sends nothing and nothing
    is reported; the server's own keepalive (0.2 s + 0.2 s) closes the connection; after
    the release on_close reports it (not a keepalive 1006 of ours), then a reconnect."""
    config = fast(ping_interval=0.2, ping_timeout=0.2)
    client = Recorder()
    with run_ws_server(echo_handler, ping_interval=0.2, ping_timeout=0.2) as server, \
            FaultProxy(server.port) as proxy:
        engine = WebsocketEngine(proxy.url, client, config=config)
        engine.start()
        with engine.pause_lock:
            paused = time.monotonic()
            hold(0.25)  # a ping of ours sent just before the pause has crossed by now
            up = proxy.bytes_up
            hold(0.75)
            assert proxy.bytes_up == up  # no ping, no pong, nothing from us
            assert client.names() == ["open"]
            released = time.monotonic()
        wait_open(engine, client, 2, timeout=3)
        stop_and_check(engine)
    assert released - paused >= 1.0
    (closed, stopped) = client.details("close")
    assert client.times("close")[0] >= released
    assert closed.code in (1011, 1006) and stopped is None
    assert closed.reason != "keepalive timeout"
    assert client.details("open") == [False, True]



