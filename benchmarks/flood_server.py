# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""A websocket server that out-sends any Python client, for the throughput benchmark.

Run as its own process (one connection, then it exits)::

    python -m benchmarks.flood_server --mode flood --size 1024 --type text --count 100000

It listens on 127.0.0.1 only, prints ``PORT <n>`` on stdout, accepts one client, does
the opening handshake by hand (no extension is accepted, so nothing is compressed), then:

- ``flood``: ``sendall``s a pre-encoded buffer of many unmasked frames again and again
  until ``count`` messages went out (``--count 0``: until the client closes), then a
  close frame 1000, and waits briefly for the client's close before closing TCP.
- ``silent``: sends nothing; answers the client's close frame and ends.

Everything is bounded: accept, handshake and every socket operation time out, and the
whole run ends after ``--deadline`` seconds whatever the client does.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import select
import socket
import struct
import sys
import time

__all__ = ["encode_frame", "main", "message_payload", "parse_client_frame", "unmask"]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA

#: Bytes per sendall when flooding: large enough that the kernel, not Python, sets the pace.
_CHUNK_BYTES = 256 * 1024

#: Limit on any single blocking socket operation.
_IO_TIMEOUT = 10.0

#: How long to wait for the client's close frame after ours.
_CLOSE_WAIT = 5.0


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """Return one final, unmasked (server-to-client) frame."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, length)
    return header + payload


def message_payload(size: int, kind: str) -> bytes:
    """The payload of every flood message: ASCII letters for text (valid UTF-8), every
    byte value in turn for binary."""
    if kind == "text":
        return (b"abcdefghijklmnopqrstuvwxyz" * (size // 26 + 1))[:size]
    return bytes(range(256)) * (size // 256) + bytes(range(size % 256))


def _close_frame(code: int = 1000) -> bytes:
    return encode_frame(_OP_CLOSE, struct.pack("!H", code))


class _ClientFrames:
    """Parses the masked frames a client sends; only control frames matter here."""

    def __init__(self, initial: bytes = b"") -> None:
        self.buffer = bytearray(initial)
        self.close_received = False
        self.pings: list[bytes] = []

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while True:
            frame = self._next_frame()
            if frame is None:
                return
            opcode, payload = frame
            if opcode == _OP_CLOSE:
                self.close_received = True
            elif opcode == _OP_PING:
                self.pings.append(payload)

    def _next_frame(self) -> tuple[int, bytes] | None:
        frame = parse_client_frame(self.buffer)
        if frame is None:
            return None
        opcode, payload, consumed = frame
        del self.buffer[:consumed]
        return opcode, payload


def unmask(masked: bytes | bytearray | memoryview, mask: bytes) -> bytes:
    """XOR a client frame's payload with its 4-byte mask key (one big-integer XOR)."""
    size = len(masked)
    key = (mask * (size // 4 + 1))[:size]
    value = int.from_bytes(masked, "big") ^ int.from_bytes(key, "big")
    return value.to_bytes(size, "big")


def parse_client_frame(buf: bytes | bytearray) -> tuple[int, bytes, int] | None:
    """Parse the frame at the head of ``buf``: ``(opcode, unmasked payload, bytes it
    takes)``, or None while it is incomplete. Shared by this server and the counting one."""
    if len(buf) < 2:
        return None
    opcode = buf[0] & 0x0F
    masked = buf[1] & 0x80
    length = buf[1] & 0x7F
    offset = 2
    if length == 126:
        if len(buf) < 4:
            return None
        (length,) = struct.unpack_from("!H", buf, 2)
        offset = 4
    elif length == 127:
        if len(buf) < 10:
            return None
        (length,) = struct.unpack_from("!Q", buf, 2)
        offset = 10
    mask = b""
    if masked:
        if len(buf) < offset + 4:
            return None
        mask = bytes(buf[offset:offset + 4])
        offset += 4
    if len(buf) < offset + length:
        return None
    payload = buf[offset:offset + length]
    return opcode, unmask(payload, mask) if mask else bytes(payload), offset + length


def _handshake(conn: socket.socket) -> bytes:
    """Answer the client's upgrade request; return any bytes read past the request."""
    request = b""
    while b"\r\n\r\n" not in request:
        data = conn.recv(65536)
        if not data:
            raise ConnectionError("client left during the handshake")
        request += data
        if len(request) > 65536:
            raise ConnectionError("handshake request too large")
    head, _, rest = request.partition(b"\r\n\r\n")
    key = b""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            key = value.strip()
    if not key:
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        raise ConnectionError("no Sec-WebSocket-Key")
    accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    return rest


def _poll_client(conn: socket.socket, frames: _ClientFrames, timeout: float) -> bool:
    """Read what the client sent within ``timeout``; answer pings; False on EOF."""
    readable, _, _ = select.select([conn], [], [], timeout)
    if not readable:
        return True
    data = conn.recv(65536)
    if not data:
        return False
    frames.feed(data)
    while frames.pings:
        conn.sendall(encode_frame(_OP_PONG, frames.pings.pop(0)))
    return True


def _flood(conn: socket.socket, frames: _ClientFrames, frame: bytes, count: int,
           deadline: float) -> None:
    per_chunk = max(1, _CHUNK_BYTES // len(frame))
    chunk = frame * per_chunk
    sent = 0
    endless = count == 0
    while (endless or sent < count) and time.monotonic() < deadline:
        if not endless and count - sent < per_chunk:
            conn.sendall(frame * (count - sent))
            sent = count
            break
        conn.sendall(chunk)
        sent += per_chunk
        # A cheap, non-blocking look: a client that closes (pause-lock runs) ends the flood.
        if not _poll_client(conn, frames, 0) or frames.close_received:
            break
    conn.sendall(_close_frame(1000))  # ours, or the echo of the client's
    if not frames.close_received:
        _wait_for_close(conn, frames, min(deadline, time.monotonic() + _CLOSE_WAIT))


def _wait_for_close(conn: socket.socket, frames: _ClientFrames, deadline: float) -> None:
    while not frames.close_received:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not _poll_client(conn, frames, remaining):
            return


def _silent(conn: socket.socket, frames: _ClientFrames, deadline: float) -> None:
    _wait_for_close(conn, frames, deadline)
    if frames.close_received:
        conn.sendall(_close_frame(1000))


def serve(mode: str, size: int, kind: str, count: int, deadline_seconds: float) -> int:
    """Serve one client as described in the module docstring; return an exit status."""
    deadline = time.monotonic() + deadline_seconds
    opcode = _OP_TEXT if kind == "text" else _OP_BINARY
    frame = encode_frame(opcode, message_payload(size, kind))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(min(_IO_TIMEOUT * 3, deadline_seconds))
        print(f"PORT {listener.getsockname()[1]}", flush=True)
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            return 2
    with conn:
        conn.settimeout(_IO_TIMEOUT)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            frames = _ClientFrames(_handshake(conn))
            if mode == "flood":
                _flood(conn, frames, frame, count, deadline)
            else:
                _silent(conn, frames, deadline)
        except (OSError, ConnectionError):
            # The client aborted or timed out: nothing left to serve.
            return 1
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("flood", "silent"), default="flood")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--type", choices=("text", "binary"), default="text")
    parser.add_argument("--count", type=int, default=100_000, help="0: until the client closes")
    parser.add_argument("--deadline", type=float, default=120.0)
    args = parser.parse_args(argv)
    if args.size < 1 or args.count < 0 or args.deadline <= 0:
        parser.error("size must be >= 1, count >= 0, deadline > 0")
    return serve(args.mode, args.size, args.type, args.count, args.deadline)


if __name__ == "__main__":
    sys.exit(main())
