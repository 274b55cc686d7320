# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""Helpers for the protocol tests: read back masked client frames, drain a protocol."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from wsengine._protocol import OP_CLOSE, OP_PING, OP_PONG, ClientProtocol
from wsengine.types import Message

__all__ = ["ClientFrame", "drain", "parse_client_frames", "ping_payloads", "pong_payloads"]


@dataclass(frozen=True)
class ClientFrame:
    """One frame a client sent, as a server reads it."""

    fin: bool
    #: The three reserved bits as they sit in the first byte (0x40 is RSV1).
    rsv: int
    opcode: int
    masked: bool
    #: The unmasked payload.
    payload: bytes

    @property
    def close(self) -> tuple[int, str] | None:
        """``(code, reason)`` of a close frame (``(1005, "")`` when empty), else None."""
        assert self.opcode == OP_CLOSE
        if not self.payload:
            return None
        return struct.unpack_from("!H", self.payload)[0], self.payload[2:].decode()


def parse_client_frames(data: bytes) -> list[ClientFrame]:
    """Split ``data`` into the client frames it holds; it must hold whole frames only.

    Written independently of ``wsengine._protocol`` (a byte-wise XOR, no shared helper), so
    that a bug in the encoder cannot hide itself.
    """
    frames = []
    pos = 0
    while pos < len(data):
        assert len(data) - pos >= 2, "truncated frame header"
        first, second = data[pos], data[pos + 1]
        length = second & 0x7F
        pos += 2
        if length == 126:
            (length,) = struct.unpack_from("!H", data, pos)
            assert length >= 126, "non-minimal 16-bit length"
            pos += 2
        elif length == 127:
            (length,) = struct.unpack_from("!Q", data, pos)
            assert length >= 65536, "non-minimal 64-bit length"
            pos += 8
        masked = bool(second & 0x80)
        key = b"\x00\x00\x00\x00"
        if masked:
            key = data[pos : pos + 4]
            pos += 4
        payload = data[pos : pos + length]
        assert len(payload) == length, "truncated payload"
        pos += length
        frames.append(
            ClientFrame(
                fin=bool(first & 0x80),
                rsv=first & 0x70,
                opcode=first & 0x0F,
                masked=masked,
                payload=bytes(b ^ key[i % 4] for i, b in enumerate(payload)),
            )
        )
    return frames


def pong_payloads(frames: list[ClientFrame]) -> list[bytes]:
    """The payloads of the pong frames among ``frames``, in order."""
    return [frame.payload for frame in frames if frame.opcode == OP_PONG]


def ping_payloads(frames: list[ClientFrame]) -> list[bytes]:
    """The payloads of the ping frames among ``frames``, in order."""
    return [frame.payload for frame in frames if frame.opcode == OP_PING]


def drain(protocol: ClientProtocol) -> list[Message]:
    """Read every message buffered in ``protocol``, however many control-frame budgets it
    takes (the way the driver loops while ``has_frame()``)."""
    out: list[Message] = []
    protocol.read_messages(out, 1 << 30)
    while protocol.has_frame():
        before = protocol.buffered
        protocol.read_messages(out, 1 << 30)
        # has_frame() promises progress: fail here rather than spin until the timeout.
        assert protocol.buffered < before or not protocol.has_frame(), "no progress"
    return out
