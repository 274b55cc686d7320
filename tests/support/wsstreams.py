# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""Hypothesis strategies for server frame streams, shared by the protocol property tests
and the differential test against wsproto."""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass, field

from hypothesis import strategies as st

from tests.support.rawserver import encode_frame as server_frame
from wsengine._protocol import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT
from wsengine.types import Message, MessageType

__all__ = [
    "BAD_CLOSE_CODES",
    "CLOSE_CODES",
    "Stream",
    "any_frames",
    "chunked",
    "mutated_streams",
    "split",
    "valid_streams",
]

#: Close codes a server may send (both sides accept them; 1014 is left to the
#: differential test, where wsproto refuses it).
CLOSE_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 3000, 4999]

#: Codes a server may not send, and 1014, which wsproto refuses.
BAD_CLOSE_CODES = [0, 999, 1004, 1005, 1006, 1014, 1015, 1016, 2999, 5000, 65535]

#: Payload sizes: mostly small, with the 7/16/64-bit length boundaries now and then.
SIZES = st.one_of(
    st.integers(0, 40),
    st.integers(0, 400),
    st.sampled_from([124, 125, 126, 127, 65535, 65536]),
)


@dataclass
class Stream:
    """Bytes a server sends, and what a client must make of them."""

    data: bytes = b""
    messages: list[Message] = field(default_factory=list)
    pings: list[bytes] = field(default_factory=list)
    pongs: int = 0
    #: ``(code, reason)`` of the close frame ending the stream (1005 when empty), if any.
    close: tuple[int, str] | None = None


@st.composite
def _payload(draw: st.DrawFn, kind: MessageType) -> bytes:
    """A message payload of a size drawn from SIZES; text is valid UTF-8."""
    size = draw(SIZES)
    if kind is MessageType.TEXT:
        seed = draw(st.text(min_size=1, max_size=6))
        text = (seed * (size // len(seed) + 1))[:size]
        return text.encode("utf-8")
    seed_bytes = draw(st.binary(min_size=1, max_size=6))
    return (seed_bytes * (size // len(seed_bytes) + 1))[:size]


def split(payload: bytes, cuts: list[int]) -> list[bytes]:
    """Cut ``payload`` at the given offsets (any order, repeats make empty pieces)."""
    points = [0, *sorted(min(c, len(payload)) for c in cuts), len(payload)]
    return [payload[a:b] for a, b in itertools.pairwise(points)]


@st.composite
def _controls(draw: st.DrawFn, stream: Stream) -> bytes:
    """Zero to two pings or pongs, recorded in ``stream``."""
    out = b""
    for _ in range(draw(st.integers(0, 2))):
        payload = draw(st.binary(max_size=125))
        if draw(st.booleans()):
            stream.pings.append(payload)
            out += server_frame(OP_PING, payload)
        else:
            stream.pongs += 1
            out += server_frame(OP_PONG, payload)
    return out


@st.composite
def valid_streams(draw: st.DrawFn, with_close: bool | None = None) -> Stream:
    """A valid stream: text and binary messages, some fragmented (text split anywhere,
    inside UTF-8 sequences too), pings and pongs between any two frames, maybe a close
    frame (then maybe bytes after it, which must be ignored)."""
    stream = Stream()
    parts = []
    for _ in range(draw(st.integers(0, 5))):
        parts.append(draw(_controls(stream)))
        kind = draw(st.sampled_from([MessageType.TEXT, MessageType.BINARY]))
        payload = draw(_payload(kind))
        cuts = draw(st.lists(st.integers(0, len(payload)), max_size=3))
        fragments = split(payload, cuts)
        for index, fragment in enumerate(fragments):
            if index:
                parts.append(draw(_controls(stream)))
            opcode = (OP_TEXT if kind is MessageType.TEXT else OP_BINARY) if index == 0 else OP_CONT
            parts.append(server_frame(opcode, fragment, fin=index == len(fragments) - 1))
        data = payload.decode("utf-8") if kind is MessageType.TEXT else payload
        stream.messages.append(Message(kind, data))
    parts.append(draw(_controls(stream)))
    if with_close is None:
        with_close = draw(st.booleans())
    if with_close:
        if draw(st.booleans()):
            parts.append(server_frame(OP_CLOSE, b""))
            stream.close = (1005, "")
        else:
            code = draw(st.sampled_from(CLOSE_CODES))
            reason = draw(st.text(max_size=30).filter(lambda r: len(r.encode()) <= 123))
            parts.append(server_frame(OP_CLOSE, struct.pack("!H", code) + reason.encode()))
            stream.close = (code, reason)
        parts.append(draw(st.binary(max_size=20)))
    stream.data = b"".join(parts)
    return stream


@st.composite
def mutated_streams(draw: st.DrawFn) -> bytes:
    """A valid stream with a few random mutations: flipped bits, overwritten, inserted or
    deleted bytes, or a truncation."""
    data = bytearray(draw(valid_streams()).data)
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["xor", "set", "insert", "delete", "truncate"]))
        position = draw(st.integers(0, len(data)))
        if action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=4))
        elif not data:
            continue
        elif action == "truncate":
            del data[position:]
        else:
            position = min(position, len(data) - 1)
            if action == "xor":
                data[position] ^= draw(st.integers(1, 255))
            elif action == "set":
                data[position] = draw(st.integers(0, 255))
            else:
                del data[position]
    return bytes(data)


@st.composite
def any_frames(draw: st.DrawFn) -> bytes:
    """Frames with every field drawn, valid or not: any opcode, FIN, RSV bits, mask bit,
    control frames over 125 bytes, close frames with any code or a bad reason, text that
    is or is not UTF-8, lengths written in a longer encoding than needed; maybe cut short.

    Most frames follow on from the ones before (a continuation while a message is open, a
    new message otherwise), so that the stream gets past its first frames and the rarer
    errors (bad UTF-8, bad close frames) are reached.
    """
    parts = []
    in_message = False
    for _ in range(draw(st.integers(1, 8))):
        if draw(st.integers(0, 9)) == 0:
            opcode = draw(st.integers(0, 15))
        elif in_message:
            opcode = draw(st.sampled_from([OP_CONT] * 3 + [OP_TEXT, OP_PING, OP_PONG, OP_CLOSE]))
        else:
            opcode = draw(
                st.sampled_from([OP_TEXT] * 3 + [OP_BINARY, OP_PING, OP_PONG, OP_CLOSE, OP_CONT])
            )
        fin = draw(st.sampled_from([True] * 7 + [False]) if opcode >= 8 else st.booleans())
        if opcode in (OP_TEXT, OP_BINARY, OP_CONT):
            in_message = not fin
        rsv = draw(st.sampled_from([0] * 15 + [1, 2, 4]))
        mask = draw(st.sampled_from([False] * 15 + [True]))
        if opcode == OP_CLOSE and draw(st.integers(0, 3)):
            codes = st.sampled_from(CLOSE_CODES + BAD_CLOSE_CODES)
            code = draw(st.one_of(codes, st.integers(0, 65535)))
            reason = draw(st.one_of(st.text(max_size=10).map(str.encode), st.binary(max_size=10)))
            payload = struct.pack("!H", code) + reason
        elif opcode in (OP_TEXT, OP_CONT):
            payload = draw(
                st.one_of(
                    st.text(max_size=20).map(str.encode),
                    st.text(max_size=20).map(str.encode),
                    st.binary(max_size=20),
                    # A character cut short: valid in a fragment, not at a message's end.
                    st.text(min_size=1, max_size=4).map(lambda t: t.encode()[:-1]),
                )
            )
        else:
            payload = draw(st.one_of(st.binary(max_size=20), st.binary(min_size=120, max_size=130)))
        frame = server_frame(opcode, payload, fin=fin, rsv=rsv, mask=mask)
        if draw(st.sampled_from([False] * 15 + [True])):
            # The same length in a longer encoding (RFC 6455 5.2 asks senders for the
            # shortest one).
            wide = draw(st.booleans())
            header = bytes((frame[0], (frame[1] & 0x80) | (127 if wide else 126)))
            header += struct.pack("!Q" if wide else "!H", len(payload))
            tail = len(payload) + (4 if mask else 0)  # the masking key and the payload
            frame = header + frame[len(frame) - tail :]
        parts.append(frame)
    data = b"".join(parts)
    if draw(st.integers(0, 3)) == 0:
        data = data[: draw(st.integers(0, len(data)))]
    return data


def chunked(data: bytes) -> st.SearchStrategy[list[bytes]]:
    """``data`` cut into pieces at up to 40 random offsets (empty pieces included)."""
    return st.lists(st.integers(0, len(data)), max_size=40).map(lambda cuts: split(data, cuts))
