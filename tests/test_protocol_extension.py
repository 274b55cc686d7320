# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""The Extension hook of ClientProtocol, with toy extensions (RFC 6455 section 9)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.rawserver import encode_frame as server_frame
from tests.support.wsframes import ClientFrame, drain, parse_client_frames
from tests.support.wsstreams import chunked, split
from wsengine._protocol import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    ClientProtocol,
    Extension,
    FrameError,
)
from wsengine.types import Message, MessageType

TEXT = MessageType.TEXT
BINARY = MessageType.BINARY
RSV1 = 4  # rawserver's encode_frame counts the RSV bits as 4, 2, 1
RSV2 = 2


@dataclass
class Reverse(Extension):
    """Reverses each frame's payload, on RSV1; records the calls it gets."""

    rsv_bits: int = 0x40
    decoded: list[tuple[bytes, bool, int | None]] = field(default_factory=list)
    encoded: list[tuple[int, bytes]] = field(default_factory=list)

    def decode(self, payload: bytes, *, fin: bool, max_size: int | None) -> bytes:
        self.decoded.append((payload, fin, max_size))
        return payload[::-1]

    def encode(self, opcode: int, payload: bytes) -> tuple[int, bytes]:
        self.encoded.append((opcode, payload))
        return 0x40, payload[::-1]


class Inflate(Extension):
    """Returns ten times what it gets, ignoring max_size: the protocol must catch it."""

    rsv_bits = 0x40

    def decode(self, payload: bytes, *, fin: bool, max_size: int | None) -> bytes:
        return payload * 10

    def encode(self, opcode: int, payload: bytes) -> tuple[int, bytes]:
        return 0x40, payload


class Refuse(Extension):
    """Cannot decode anything: raises 1007 like a decompressor finding bad data would."""

    rsv_bits = 0x40

    def decode(self, payload: bytes, *, fin: bool, max_size: int | None) -> bytes:
        raise FrameError(1007, "cannot decode")

    def encode(self, opcode: int, payload: bytes) -> tuple[int, bytes]:
        return 0x40, payload


def read(protocol: ClientProtocol, *frames: bytes) -> list[Message]:
    """Feed ``frames`` in one chunk and read every message they make."""
    protocol.receive_data(b"".join(frames))
    return drain(protocol)


def failure_code(protocol: ClientProtocol) -> int | None:
    """The code the protocol failed with, after checking the close frame it queued."""
    if protocol.failure is None:
        return None
    closes = [f for f in parse_client_frames(b"".join(protocol.data_to_send()))
              if f.opcode == OP_CLOSE]
    assert [f.close[0] for f in closes if f.close] == [protocol.failure.code]
    return protocol.failure.code


def test_rsv1_frame_goes_through_decode() -> None:
    """A final RSV1 frame is decoded once, with fin=True and max_size as the budget."""
    extension = Reverse()
    protocol = ClientProtocol(max_size=100, extension=extension)
    assert read(protocol, server_frame(OP_TEXT, "é!".encode()[::-1], rsv=RSV1)) == [
        Message(TEXT, "é!")
    ]
    assert extension.decoded == [("é!".encode()[::-1], True, 100)]


def test_fragments_of_an_rsv1_message_go_through_decode_with_fin_on_the_last() -> None:
    """Every frame of a message whose first frame had RSV1 is decoded, in order, with
    fin only on the last and max_size shrinking by what was decoded so far."""
    extension = Reverse()
    protocol = ClientProtocol(max_size=100, extension=extension)
    messages = read(
        protocol,
        server_frame(OP_BINARY, b"cba", fin=False, rsv=RSV1),
        server_frame(OP_PING, b"p"),
        server_frame(OP_CONT, b"ed", fin=False),
        server_frame(OP_CONT, b"f"),
    )
    assert messages == [Message(BINARY, b"abcdef")]
    assert extension.decoded == [(b"cba", False, 100), (b"ed", False, 97), (b"f", True, 95)]


def test_frames_without_rsv1_pass_untouched() -> None:
    """Data frames without the extension's bit, fragmented or not, skip decode."""
    extension = Reverse()
    protocol = ClientProtocol(extension=extension)
    messages = read(
        protocol,
        server_frame(OP_TEXT, b"plain"),
        server_frame(OP_BINARY, b"ab", fin=False),
        server_frame(OP_CONT, b"cd"),
        server_frame(OP_TEXT, b"cba", rsv=RSV1),
        server_frame(OP_TEXT, b"after"),
    )
    assert messages == [
        Message(TEXT, "plain"),
        Message(BINARY, b"abcd"),
        Message(TEXT, "abc"),
        Message(TEXT, "after"),
    ]
    assert extension.decoded == [(b"cba", True, 2**20)]


@pytest.mark.parametrize(
    "frames",
    [
        [server_frame(OP_PING, b"x", rsv=RSV1)],
        [server_frame(OP_PONG, b"", rsv=RSV1)],
        [server_frame(OP_CLOSE, b"", rsv=RSV1)],
        [server_frame(OP_TEXT, b"a", fin=False, rsv=RSV1), server_frame(OP_CONT, b"b", rsv=RSV1)],
        [server_frame(OP_TEXT, b"a", fin=False), server_frame(OP_CONT, b"b", rsv=RSV1)],
        [server_frame(OP_TEXT, b"a", rsv=RSV2)],
        [server_frame(OP_TEXT, b"a", rsv=RSV1 | RSV2)],
        [server_frame(OP_BINARY, b"a", rsv=1)],
    ],
    ids=["ping", "pong", "close", "cont-of-rsv1", "cont-of-plain", "rsv2", "rsv1+2", "rsv3"],
)
def test_reserved_bits_where_the_extension_allows_none_are_1002(frames: list[bytes]) -> None:
    """RSV1 on a control or continuation frame, and bits the extension does not use, fail
    the connection with 1002 (RFC 7692 section 6)."""
    protocol = ClientProtocol(extension=Reverse())
    assert read(protocol, *frames) == []
    assert failure_code(protocol) == 1002


def test_decoded_message_over_max_size_is_1009() -> None:
    """An extension that returns more than max_size allows fails the connection with
    1009, even when the frame on the wire was small."""
    protocol = ClientProtocol(max_size=100, extension=Inflate())
    assert read(protocol, server_frame(OP_BINARY, b"x" * 10, rsv=RSV1)) == [
        Message(BINARY, b"x" * 100)
    ]
    assert protocol.failure is None
    read(protocol, server_frame(OP_BINARY, b"x" * 11, rsv=RSV1))
    assert failure_code(protocol) == 1009


def test_decoded_fragments_over_max_size_are_1009() -> None:
    """Fragments whose decoded sizes add up past max_size fail with 1009."""
    protocol = ClientProtocol(max_size=100, extension=Inflate())
    read(
        protocol,
        server_frame(OP_BINARY, b"x" * 6, fin=False, rsv=RSV1),
        server_frame(OP_CONT, b"x" * 5),
    )
    assert failure_code(protocol) == 1009


def test_rsv1_frame_longer_than_max_size_is_1009_from_the_header() -> None:
    """An RSV1 frame whose wire payload exceeds max_size by more than deflate's overhead
    allowance (max_size / 64 + 1 KiB) fails before decode."""
    extension = Reverse()
    protocol = ClientProtocol(max_size=100, extension=extension)
    read(protocol, server_frame(OP_BINARY, b"x" * 1126, rsv=RSV1)[:4])
    assert failure_code(protocol) == 1009
    assert extension.decoded == []


def test_decoded_text_that_is_not_utf8_is_1007() -> None:
    """The decoded payload of a text message is validated as UTF-8."""
    protocol = ClientProtocol(extension=Reverse())
    read(protocol, server_frame(OP_TEXT, b"\xff", rsv=RSV1))
    assert failure_code(protocol) == 1007


def test_extension_frame_error_fails_with_its_code() -> None:
    """A FrameError raised by decode fails the connection with its code."""
    protocol = ClientProtocol(extension=Refuse())
    assert read(protocol, server_frame(OP_TEXT, b"ok"), server_frame(OP_TEXT, b"?", rsv=RSV1)) == [
        Message(TEXT, "ok")
    ]
    assert failure_code(protocol) == 1007


def test_rsv1_without_an_extension_is_1002() -> None:
    """Without a negotiated extension, RSV1 is a protocol error."""
    protocol = ClientProtocol()
    read(protocol, server_frame(OP_TEXT, b"a", rsv=RSV1))
    assert failure_code(protocol) == 1002


@pytest.mark.parametrize(("method", "opcode"), [("send_text", OP_TEXT), ("send_binary", OP_BINARY)])
def test_send_frames_carry_the_extension_bits_and_payload(method: str, opcode: int) -> None:
    """send_text and send_binary run the payload through encode and set its RSV bits."""
    extension = Reverse()
    protocol = ClientProtocol(extension=extension)
    data = "abc€" if method == "send_text" else b"abc\xe2\x82\xac"
    frame = getattr(protocol, method)(data)
    assert parse_client_frames(frame) == [
        ClientFrame(True, 0x40, opcode, True, "abc€".encode()[::-1])
    ]
    assert extension.encoded == [(opcode, "abc€".encode())]


def test_control_frames_never_go_through_the_extension() -> None:
    """Pings, pongs and the close frame go out without reserved bits, unencoded."""
    extension = Reverse()
    protocol = ClientProtocol(extension=extension)
    read(protocol, server_frame(OP_PING, b"ping"))
    protocol.send_ping(b"mine")
    protocol.send_close(1000, "bye")
    frames = parse_client_frames(b"".join(protocol.data_to_send()))
    assert [(f.rsv, f.opcode, f.payload) for f in frames] == [
        (0, OP_PONG, b"ping"),
        (0, OP_PING, b"mine"),
        (0, OP_CLOSE, b"\x03\xe8bye"),
    ]
    assert extension.encoded == []


@given(
    messages=st.lists(
        st.tuples(
            st.booleans(), st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=3)
        ),
        max_size=6,
    ),
    data=st.data(),
)
def test_extension_messages_survive_any_chunking(
    messages: list[tuple[bool, bytes, list[int]]], data: st.DataObject
) -> None:
    """Messages with and without RSV1, fragmented anywhere, with pings between
    fragments, give the same messages whole or in any chunks; each fragment of an RSV1
    message is decoded on its own."""
    frames = []
    expected = []
    for extended, payload, cuts in messages:
        fragments = split(payload, cuts)
        for index, fragment in enumerate(fragments):
            first = index == 0
            frames.append(
                server_frame(
                    OP_BINARY if first else OP_CONT,
                    fragment[::-1] if extended else fragment,
                    fin=index == len(fragments) - 1,
                    rsv=RSV1 if extended and first else 0,
                )
            )
            if data.draw(st.booleans(), label="ping"):
                frames.append(server_frame(OP_PING, b"p"))
        expected.append(Message(BINARY, payload))
    stream = b"".join(frames)
    for chunks in ([stream], data.draw(chunked(stream), label="chunks")):
        protocol = ClientProtocol(max_size=None, extension=Reverse())
        got: list[Message] = []
        for chunk in chunks:
            protocol.receive_data(chunk)
            got += drain(protocol)
        assert got == expected
        assert protocol.failure is None
