# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""A websocket server that out-counts any Python client, for the send figure.

Run as its own process (one connection, then it exits)::

    python -m benchmarks.count_server --size 32 --count 400000 --deadline 60

It listens on 127.0.0.1 only, prints ``PORT <n>`` on stdout, accepts one client and does
the opening handshake by hand (no extension is accepted: nothing is compressed). Then it
reads the client's masked BINARY frames of ``--size`` bytes and counts them without a
Python step per frame: all frames have the same length F, so in a buffer of k whole
frames the headers sit at offsets 0, F, 2F, ... and ``buffer[i:k*F:F]`` gathers byte i of
every header in one C-level slice, compared at once with the expected bytes. Any other
frame (a close, a ping, a frame of another size or type) falls back to a frame-by-frame
parse, so a frame that was cut, interleaved with another or mis-sized is counted as bad,
not skipped. One payload in ``_SAMPLE_EVERY`` (and the last of every buffer) is unmasked
and checked against the payloads :func:`send_payload` makes.

When ``--count`` data frames arrived it sends one TEXT frame, ``done <count>``, which
stops the client's clock, then waits for the client's close frame, answers it and ends.
Its last stdout line is JSON: ``{"frames", "bad", "checked", "payload_errors",
"other_frames", "bytes", "close_received"}``.

Everything is bounded: accept, handshake and every socket operation time out, and the
whole run ends after ``--deadline`` seconds whatever the client does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import struct
import sys
import time

from benchmarks.flood_server import (
    _OP_CLOSE,
    _OP_PING,
    _OP_PONG,
    _handshake,
    encode_frame,
    parse_client_frame,
    unmask,
)

__all__ = ["FrameCounter", "frame_header", "main", "send_payload"]

_OP_BINARY = 0x2

#: Bytes per recv_into: large enough that one Python step covers thousands of frames.
_READ_BYTES = 4 * 1024 * 1024

#: Limit on any single blocking socket operation.
_IO_TIMEOUT = 10.0

#: One payload in this many is unmasked and checked (besides the last of each buffer).
_SAMPLE_EVERY = 97


def send_payload(size: int, thread: int) -> bytes:
    """The payload thread ``thread`` sends (every message alike): its number in the first
    byte, then a fixed pattern, so the server can tell an intact payload from a torn one."""
    pattern = bytes((thread * 31 + i * 7) % 251 for i in range(size))
    return bytes([thread % 256]) + pattern[1:] if size else b""


def frame_header(size: int) -> bytes:
    """The first bytes (before the mask key) of a client's final BINARY frame of ``size``."""
    if size < 126:
        return struct.pack("!BB", 0x80 | _OP_BINARY, 0x80 | size)
    if size < 1 << 16:
        return struct.pack("!BBH", 0x80 | _OP_BINARY, 0x80 | 126, size)
    return struct.pack("!BBQ", 0x80 | _OP_BINARY, 0x80 | 127, size)


class FrameCounter:
    """Counts a client's fixed-size BINARY frames; see the module docstring.

    Owned by the server's one thread; not thread-safe.
    """

    def __init__(self, size: int, threads: int = 64) -> None:
        self.header = frame_header(size)
        self.size = size
        self.frame = len(self.header) + 4 + size
        self.good_payloads = {send_payload(size, t) for t in range(threads)}
        self.buffer = bytearray()
        self.frames = 0  # data frames of the expected shape
        self.bad = 0  # data frames of another size, or unparseable bytes
        self.other_frames = 0  # control frames other than close and ping
        self.checked = 0
        self.payload_errors = 0
        self.close_received = False
        self.pings: list[bytes] = []
        self.total_bytes = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Take bytes from the socket; count every whole frame they complete."""
        self.total_bytes += len(data)
        buf = self.buffer
        buf += data
        while buf and not self.close_received:
            whole = len(buf) // self.frame
            if whole and self._bulk(whole):
                continue
            if not self._one_frame():
                return  # an incomplete frame: wait for more bytes

    def _bulk(self, whole: int) -> bool:
        """Count ``whole`` frames at the head of the buffer if every header is the
        expected one; False (nothing consumed) otherwise."""
        buf, step, end = self.buffer, self.frame, whole * self.frame
        for index, byte in enumerate(self.header):
            if buf[index:end:step] != bytes([byte]) * whole:
                # The run of good frames may end further on: count up to the first odd
                # one by halving, so one odd frame does not cost a frame-by-frame buffer.
                return whole > 1 and self._bulk(whole // 2)
        self._sample(whole)
        self.frames += whole
        del buf[:end]
        return True

    def _sample(self, whole: int) -> None:
        buf, step, head = self.buffer, self.frame, len(self.header)
        for index in {*range(0, whole, _SAMPLE_EVERY), whole - 1}:
            start = index * step + head
            mask = bytes(buf[start:start + 4])
            payload = unmask(buf[start + 4:start + 4 + self.size], mask)
            self.checked += 1
            if payload not in self.good_payloads:
                self.payload_errors += 1

    def _one_frame(self) -> bool:
        """Parse one frame of any kind at the head of the buffer; False if incomplete."""
        frame = parse_client_frame(self.buffer)
        if frame is None:
            return False
        opcode, payload, consumed = frame
        del self.buffer[:consumed]
        if opcode == _OP_CLOSE:
            self.close_received = True
        elif opcode == _OP_PING:
            self.pings.append(payload)
        elif opcode in (0x1, 0x2, 0x0):
            self.bad += 1  # a data frame not of the expected shape
        else:
            self.other_frames += 1
        return True

    def result(self) -> dict[str, object]:
        return {"frames": self.frames, "bad": self.bad, "checked": self.checked,
                "payload_errors": self.payload_errors, "other_frames": self.other_frames,
                "bytes": self.total_bytes, "close_received": self.close_received}


def serve(size: int, count: int, deadline_seconds: float) -> dict[str, object]:
    """Serve one client as the module docstring says; return the counts."""
    deadline = time.monotonic() + deadline_seconds
    counter = FrameCounter(size)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(min(_IO_TIMEOUT * 3, deadline_seconds))
        print(f"PORT {listener.getsockname()[1]}", flush=True)
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            return {"error": "no client"}
    chunk = memoryview(bytearray(_READ_BYTES))
    done_sent = False
    with conn:
        conn.settimeout(_IO_TIMEOUT)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            counter.feed(_handshake(conn))
            while not counter.close_received and time.monotonic() < deadline:
                received = conn.recv_into(chunk)
                if not received:
                    break
                counter.feed(chunk[:received])
                while counter.pings:
                    conn.sendall(encode_frame(_OP_PONG, counter.pings.pop(0)))
                if not done_sent and counter.frames + counter.bad >= count:
                    conn.sendall(encode_frame(0x1, f"done {counter.frames}".encode()))
                    done_sent = True
            if counter.close_received:
                conn.sendall(encode_frame(_OP_CLOSE, struct.pack("!H", 1000)))
        except OSError as exc:
            result = counter.result()
            result["error"] = f"{type(exc).__name__}: {exc}"
            return result
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)
    return counter.result()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--deadline", type=float, default=120.0)
    args = parser.parse_args(argv)
    if args.size < 0 or args.count < 1 or args.deadline <= 0:
        parser.error("size must be >= 0, count >= 1, deadline > 0")
    print(json.dumps(serve(args.size, args.count, args.deadline)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
