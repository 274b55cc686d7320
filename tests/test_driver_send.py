# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""The driver's send side under concurrency: group commit keeps every frame whole, in
order per thread, and a writer whose frame is still queued at its deadline sends nothing.
Real servers on 127.0.0.1 only."""

from __future__ import annotations

import threading

import pytest

from tests.support.rawserver import RawConnection, RawServer
from wsengine import _protocol
from wsengine._protocol import encode_frame
from wsengine.adapters.websocket_client import WebsocketClientAdapter

OP_BINARY = 0x2
OP_CLOSE = 0x8


def record_until_close(frames: list[tuple[bool, int, bytes]], start: threading.Event | None
                       = None) -> object:
    """A server script that (after ``start``) records every client frame until a close."""

    def script(conn: RawConnection) -> None:
        if start is not None:
            assert start.wait(20)
        while True:
            fin, opcode, payload = conn.recv_frame(20)
            if opcode == OP_CLOSE:
                conn.send_frame(OP_CLOSE, payload)
                return
            frames.append((fin, opcode, payload))

    return script


def test_four_threads_frames_intact_in_order_and_counted() -> None:
    """4 threads x 1500 writes on one connection: the server gets every frame whole (a
    torn or interleaved frame would not parse as these), each thread's in its order."""
    threads, per_thread = 4, 1500
    frames: list[tuple[bool, int, bytes]] = []
    errors: list[BaseException] = []
    with RawServer(record_until_close(frames)) as server:  # type: ignore[arg-type]
        conn = WebsocketClientAdapter()
        try:
            conn.dial(server.url, 5)
            barrier = threading.Barrier(threads, timeout=10)

            def work(index: int) -> None:
                try:
                    barrier.wait()
                    for seq in range(per_thread):
                        # Sizes vary (7 B to ~300 B) so frames of all three header lengths
                        # but the 64-bit one cross the batches.
                        filler = bytes([index]) * (seq % 300)
                        conn.write(f"{index}:{seq}:".encode() + filler, timeout=20)
                except BaseException as error:  # reported below
                    errors.append(error)

            workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(30)
            assert not any(worker.is_alive() for worker in workers)
            assert errors == []
            conn.close(1000, "", 10)
        finally:
            conn.abort()
    assert len(frames) == threads * per_thread
    seen = {index: -1 for index in range(threads)}
    for fin, opcode, payload in frames:
        assert fin and opcode == OP_BINARY
        index_text, seq_text, filler = payload.split(b":", 2)
        index, seq = int(index_text), int(seq_text)
        assert filler == bytes([index]) * (seq % 300)
        assert seq == seen[index] + 1, "a thread's frames arrived out of order"
        seen[index] = seq
    assert seen == {index: per_thread - 1 for index in range(threads)}


def test_writer_timing_out_while_queued_sends_nothing() -> None:
    """While one write holds the send turn (blocked on a full TCP window), a second one
    with a short timeout waits queued, times out, and none of its frame ever goes out;
    the connection stays usable."""
    frames: list[tuple[bool, int, bytes]] = []
    drain = threading.Event()
    big = bytes(range(256)) * (32 * 1024)  # 8 MiB: more than loopback buffers hold
    blocked_error: list[BaseException] = []
    with RawServer(record_until_close(frames, drain)) as server:  # type: ignore[arg-type]
        conn = WebsocketClientAdapter(max_size=None)
        try:
            conn.dial(server.url, 5)
            driver = conn._driver

            def blocked_writer() -> None:
                try:
                    conn.write(big, timeout=30)
                except BaseException as error:  # reported below
                    blocked_error.append(error)

            holder = threading.Thread(target=blocked_writer)
            holder.start()
            # The holder is blocked once it holds the turn with its frame pending.
            for _ in range(2000):
                if driver._send_mutex.locked() and driver._pending is not None:
                    break
                holder.join(0.005)
            assert driver._send_mutex.locked() and driver._pending is not None
            try:
                conn.write(b"must never be sent", timeout=0.2)
            except TimeoutError:
                pass
            else:
                raise AssertionError("the queued write did not time out")
            assert not driver._queue
            assert not driver.torn_down
            drain.set()
            holder.join(30)
            assert not holder.is_alive() and blocked_error == []
            conn.write(b"after", timeout=10)
            conn.close(1000, "", 10)
        finally:
            drain.set()
            conn.abort()
    assert [payload for _, _, payload in frames] == [big, b"after"]


def test_masks_vary_between_frames() -> None:
    """Every frame gets its own masking key from the os.urandom pool (RFC 6455 10.3),
    across pool refills."""
    keys = [encode_frame(OP_BINARY, b"x")[2:6] for _ in range(5000)]
    assert len(set(keys)) > 4990


def unmask(frame: bytes) -> bytes:
    """The payload of one masked client frame, by the RFC 6455 definition (byte by byte)."""
    length = frame[1] & 0x7F
    start = 2
    if length == 126:
        length, start = int.from_bytes(frame[2:4], "big"), 4
    elif length == 127:
        length, start = int.from_bytes(frame[2:10], "big"), 10
    key = frame[start : start + 4]
    body = frame[start + 4 :]
    assert len(body) == length
    return bytes(byte ^ key[i % 4] for i, byte in enumerate(body))


def test_both_maskers_mask_as_rfc_6455_says(monkeypatch: pytest.MonkeyPatch) -> None:
    """The C masker (websockets' speedups, when installed) and the pure-Python fallback
    each give frames whose payload unmasks to the original, at every header length and
    every length modulo 4."""
    sizes = [*range(0, 140), 1023, 1024, 1025, 65535, 65536, 70001]
    _protocol.load_masker()
    maskers = [_protocol._apply_mask, _protocol._mask_python]
    assert maskers[0] is not _protocol._mask_unresolved
    for masker in maskers:
        monkeypatch.setattr(_protocol, "_apply_mask", masker)
        for size in sizes:
            payload = bytes((i * 7 + size) % 256 for i in range(size))
            assert unmask(encode_frame(OP_BINARY, payload)) == payload, (masker, size)
            assert unmask(encode_frame(OP_BINARY, memoryview(bytearray(payload)))) == payload


def test_python_masker_frames_arrive_intact(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the C masker (websockets not installed) frames still reach a real server
    whole and unmasked right."""
    monkeypatch.setattr(_protocol, "_apply_mask", _protocol._mask_python)
    frames: list[tuple[bool, int, bytes]] = []
    payloads = [bytes([n % 256]) * n for n in (0, 1, 5, 125, 126, 1000, 70000)]
    with RawServer(record_until_close(frames)) as server:  # type: ignore[arg-type]
        conn = WebsocketClientAdapter()
        try:
            conn.dial(server.url, 5)
            for payload in payloads:
                conn.write(payload, timeout=10)
            conn.close(1000, "", 10)
        finally:
            conn.abort()
    assert [payload for _, _, payload in frames] == payloads


def test_the_masker_is_chosen_when_a_connection_is_made_not_on_a_send(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Choosing the masker may import websockets (about 20 ms, under the import lock):
    that happens when a protocol is made, on the dialing thread, never in a send."""
    monkeypatch.setattr(_protocol, "_apply_mask", _protocol._mask_unresolved)
    _protocol.ClientProtocol()
    assert _protocol._apply_mask is not _protocol._mask_unresolved
