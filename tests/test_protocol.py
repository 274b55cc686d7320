# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""The sans-I/O frame parser and encoder, over hand-built bytes (RELIABILITY B8, B13-B18)."""

from __future__ import annotations

import pickle
import struct

import pytest

from tests.support.rawserver import encode_frame as server_frame
from wsengine._protocol import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    Control,
    FrameError,
    FrameParser,
    decode_close,
    encode_close,
    encode_frame,
    mask_payload,
)
from wsengine.types import Message, MessageType

TEXT = MessageType.TEXT
BINARY = MessageType.BINARY


def parse_all(parser: FrameParser, limit: int = 1 << 30) -> tuple[list[Message], list[Control]]:
    """Parse everything buffered, collecting messages and control frames."""
    messages: list[Message] = []
    controls: list[Control] = []
    while True:
        before = len(messages)
        control = parser.parse(messages, limit)
        if control is not None:
            controls.append(control)
            continue
        if len(messages) == before or len(messages) >= limit:
            return messages, controls


def feed_and_parse(
    data: bytes, max_size: int | None = 2**20
) -> tuple[list[Message], list[Control]]:
    """Parse ``data`` with a fresh parser."""
    parser = FrameParser(max_size)
    parser.feed(data)
    return parse_all(parser)


def expect_error(data: bytes, code: int, max_size: int | None = 2**20) -> FrameError:
    """Assert that parsing ``data`` raises FrameError with ``code``."""
    parser = FrameParser(max_size)
    parser.feed(data)
    with pytest.raises(FrameError) as info:
        parse_all(parser)
    assert info.value.code == code
    return info.value


def unmask_client_frame(frame: bytes) -> tuple[int, int, bytes]:
    """Decode one client frame: (first byte, opcode, unmasked payload)."""
    assert frame[1] & 0x80, "client frames must be masked"
    length = frame[1] & 0x7F
    offset = 2
    if length == 126:
        (length,) = struct.unpack_from("!H", frame, 2)
        offset = 4
    elif length == 127:
        (length,) = struct.unpack_from("!Q", frame, 2)
        offset = 10
    key = frame[offset : offset + 4]
    payload = frame[offset + 4 :]
    assert len(payload) == length
    return frame[0], frame[0] & 0x0F, bytes(b ^ key[i % 4] for i, b in enumerate(payload))


# A stream mixing every kind of frame: small and long lengths (16- and 64-bit), fragmented
# text with a UTF-8 sequence split across fragments, a ping inside it, and binary.
MIXED_STREAM = b"".join(
    [
        server_frame(0x1, b"hello"),
        server_frame(0x2, b"\x00\xff" * 100),
        server_frame(0x1, "é".encode() * 40_000),
        server_frame(0x1, b"caf\xc3", fin=False),
        server_frame(OP_PING, b"in-between"),
        server_frame(0x0, b"\xa9 ok", fin=False),
        server_frame(0x0, b"!", fin=True),
        server_frame(0x2, b"", fin=False),
        server_frame(0x0, b"tail", fin=True),
        server_frame(OP_PONG, b"p"),
        server_frame(0x1, b""),
    ]
)
MIXED_MESSAGES = [
    Message(TEXT, "hello"),
    Message(BINARY, b"\x00\xff" * 100),
    Message(TEXT, "é" * 40_000),
    Message(TEXT, "café ok!"),
    Message(BINARY, b"tail"),
    Message(TEXT, ""),
]
MIXED_CONTROLS = [(OP_PING, b"in-between"), (OP_PONG, b"p")]


def test_single_text_frame_gives_a_text_message() -> None:
    """An unfragmented text frame is one TEXT message with str data."""
    messages, controls = feed_and_parse(server_frame(0x1, "grüße".encode()))
    assert messages == [Message(TEXT, "grüße")]
    assert type(messages[0].data) is str
    assert controls == []


def test_single_binary_frame_gives_a_binary_message() -> None:
    """An unfragmented binary frame is one BINARY message with bytes data."""
    messages, _ = feed_and_parse(server_frame(0x2, b"\x00\x01\xfe"))
    assert messages == [Message(BINARY, b"\x00\x01\xfe")]
    assert type(messages[0].data) is bytes


def test_fast_path_messages_equal_constructed_messages() -> None:
    """Messages built by the fast path are ordinary, equal, hashable Message values."""
    messages, _ = feed_and_parse(server_frame(0x1, b"a") + server_frame(0x2, b"b"))
    assert messages == [Message(TEXT, "a"), Message(BINARY, b"b")]
    assert hash(messages[0]) == hash(Message(TEXT, "a"))
    assert type(messages[0]) is Message


def test_parsed_messages_keep_the_message_contract() -> None:
    """Fast-path messages (small and 16-bit lengths) are immutable, equal by value,
    hashable, picklable and show their fields, as API.md promises for Message."""
    big = "x" * 1000
    messages, _ = feed_and_parse(
        server_frame(0x1, b"a") + server_frame(0x1, big.encode()) + server_frame(0x2, b"b" * 300)
    )
    assert messages == [Message(TEXT, "a"), Message(TEXT, big), Message(BINARY, b"b" * 300)]
    for message in messages:
        assert type(message) is Message
        assert pickle.loads(pickle.dumps(message)) == message
        assert hash(message) == hash(Message(message.type, message.data))
        with pytest.raises(AttributeError):
            message.data = "changed"  # type: ignore[misc]
        # A frozen slots dataclass refuses an unknown attribute with TypeError (3.11-3.13:
        # super() in the generated __setattr__); either way nothing is added.
        with pytest.raises((AttributeError, TypeError)):
            message.extra = 1  # type: ignore[attr-defined]
    assert repr(messages[0]) == "Message(type=<MessageType.TEXT: 1>, data='a')"
    assert Message(TEXT, "a") != Message(BINARY, "a")


def test_many_frames_in_one_chunk_are_all_parsed() -> None:
    """Thousands of small frames in one 64 KiB chunk come out in order."""
    frames = [server_frame(0x1 if i % 2 else 0x2, b"%05d" % i) for i in range(3000)]
    messages, _ = feed_and_parse(b"".join(frames))
    assert len(messages) == 3000
    assert messages[1] == Message(TEXT, "00001")
    assert messages[2998] == Message(BINARY, b"02998")


def test_parse_stops_at_the_limit_and_resumes() -> None:
    """parse() returns at most ``limit`` messages and the next call continues after them."""
    parser = FrameParser()
    parser.feed(b"".join(server_frame(0x1, str(i).encode()) for i in range(10)))
    out: list[Message] = []
    assert parser.parse(out, 3) is None
    assert [m.data for m in out] == ["0", "1", "2"]
    assert parser.has_frame()
    out2: list[Message] = []
    parser.parse(out2, 100)
    assert [m.data for m in out2] == [str(i) for i in range(3, 10)]
    assert not parser.has_frame()


def test_length_encodings_7_16_and_64_bit() -> None:
    """Payloads of 125, 126, 65535 and 65536 bytes use each length encoding correctly."""
    sizes = [0, 125, 126, 65535, 65536, 200_000]
    data = b"".join(server_frame(0x2, bytes([i]) * size) for i, size in enumerate(sizes))
    messages, _ = feed_and_parse(data)
    assert [len(m.data) for m in messages] == sizes
    assert messages[4].data == b"\x04" * 65536


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
def test_stream_fed_in_small_pieces(step: int) -> None:
    """The mixed stream fed ``step`` bytes at a time gives the same messages (B8)."""
    parser = FrameParser()
    messages: list[Message] = []
    controls: list[Control] = []
    for offset in range(0, len(MIXED_STREAM), step):
        parser.feed(MIXED_STREAM[offset : offset + step])
        got, ctrl = parse_all(parser)
        messages += got
        controls += ctrl
    assert messages == MIXED_MESSAGES
    assert controls == MIXED_CONTROLS


def test_stream_split_at_every_byte_boundary() -> None:
    """Whatever byte the stream is cut at, the two halves give the same messages (B8)."""
    # The 80 kB message makes every cut expensive; cut a smaller stream at every byte.
    stream = MIXED_STREAM.replace(server_frame(0x1, "é".encode() * 40_000), b"")
    expected = [m for m in MIXED_MESSAGES if m.data != "é" * 40_000]
    for cut in range(len(stream) + 1):
        parser = FrameParser()
        parser.feed(stream[:cut])
        messages, controls = parse_all(parser)
        parser.feed(stream[cut:])
        more, more_controls = parse_all(parser)
        assert messages + more == expected, cut
        assert controls + more_controls == MIXED_CONTROLS, cut


def test_partial_frame_waits_for_the_rest() -> None:
    """Half a frame gives nothing and has_frame() is false until the rest arrives."""
    frame = server_frame(0x1, b"x" * 1000)
    parser = FrameParser()
    parser.feed(frame[:500])
    assert parse_all(parser) == ([], [])
    assert not parser.has_frame()
    assert parser.buffered == 500
    parser.feed(frame[500:])
    assert parser.has_frame()
    assert parse_all(parser)[0] == [Message(TEXT, "x" * 1000)]


def test_large_frame_in_64k_chunks_is_assembled_once() -> None:
    """A 16 MiB frame fed in 64 KiB chunks is delivered whole when max_size allows it."""
    payload = bytes(range(256)) * (16 * 4096)
    frame = server_frame(0x2, payload)
    parser = FrameParser(max_size=None)
    out: list[Message] = []
    for offset in range(0, len(frame), 65536):
        parser.feed(frame[offset : offset + 65536])
        parser.parse(out, 10)
    assert len(out) == 1
    assert out[0].data == payload


def test_fragmented_text_is_joined() -> None:
    """Text fragments are joined into one message."""
    data = (
        server_frame(0x1, b"ab", fin=False)
        + server_frame(0x0, b"cd", fin=False)
        + server_frame(0x0, b"ef")
    )
    assert feed_and_parse(data)[0] == [Message(TEXT, "abcdef")]


def test_fragmented_binary_is_joined() -> None:
    """Binary fragments are joined into one message, empty fragments included."""
    data = (
        server_frame(0x2, b"", fin=False)
        + server_frame(0x0, b"\x01", fin=False)
        + server_frame(0x0, b"")
        + server_frame(0x2, b"next")
    )
    assert feed_and_parse(data)[0] == [Message(BINARY, b"\x01"), Message(BINARY, b"next")]


def test_ping_inside_a_fragmented_message_is_returned_first() -> None:
    """A ping between fragments is handed back before the message completes (B16)."""
    parser = FrameParser()
    parser.feed(
        server_frame(0x1, b"frag", fin=False)
        + server_frame(OP_PING, b"ping!")
        + server_frame(0x0, b"ment")
    )
    out: list[Message] = []
    assert parser.parse(out, 10) == (OP_PING, b"ping!")
    assert out == []
    assert parser.parse(out, 10) is None
    assert out == [Message(TEXT, "fragment")]


def test_utf8_sequence_split_across_fragments_is_accepted() -> None:
    """A multi-byte character split between fragments decodes correctly."""
    euro = "€".encode()
    data = server_frame(0x1, euro[:1], fin=False) + server_frame(0x0, euro[1:2], fin=False)
    data += server_frame(0x0, euro[2:])
    assert feed_and_parse(data)[0] == [Message(TEXT, "€")]


@pytest.mark.parametrize(
    "payload",
    [b"\xff", b"ok\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"trunc\xe2\x82"],
    ids=["ff", "overlong", "surrogate", "above-max", "truncated-end"],
)
def test_invalid_utf8_in_a_text_frame_is_1007(payload: bytes) -> None:
    """Invalid UTF-8, including a sequence cut at the end of the message, is 1007 (B14)."""
    expect_error(server_frame(0x1, payload), 1007)


def test_invalid_utf8_in_a_fragment_fails_fast() -> None:
    """An invalid first fragment fails at once, before the message is complete (B14)."""
    expect_error(server_frame(0x1, b"ok\xff", fin=False), 1007)


def test_invalid_utf8_across_fragments_is_1007() -> None:
    """Valid-looking fragments that join into invalid UTF-8 are 1007 (Autobahn 6.4)."""
    data = server_frame(0x1, b"\xce", fin=False) + server_frame(0x0, b"\x41")
    expect_error(data, 1007)


def test_truncated_utf8_at_the_end_of_a_fragmented_message_is_1007() -> None:
    """A message whose last fragment leaves a sequence incomplete is 1007."""
    data = server_frame(0x1, b"ok", fin=False) + server_frame(0x0, b"\xe2\x82")
    expect_error(data, 1007)


def test_messages_before_an_error_are_kept() -> None:
    """Messages parsed before a bad frame are in ``out`` when FrameError is raised."""
    parser = FrameParser()
    parser.feed(server_frame(0x1, b"good") + server_frame(0x1, b"\xff"))
    out: list[Message] = []
    with pytest.raises(FrameError):
        parser.parse(out, 10)
    assert out == [Message(TEXT, "good")]


@pytest.mark.parametrize("rsv", [4, 2, 1])
def test_reserved_bits_are_1002(rsv: int) -> None:
    """A frame with any RSV bit set is 1002 (no extension negotiated) (B15)."""
    expect_error(server_frame(0x1, b"x", rsv=rsv), 1002)


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_reserved_opcodes_are_1002(opcode: int) -> None:
    """Opcodes 3-7 and 0xB-0xF are 1002 (B15)."""
    expect_error(server_frame(opcode, b""), 1002)


def test_masked_server_frame_is_1002() -> None:
    """A server frame with the mask bit set is 1002 (B15)."""
    expect_error(server_frame(0x1, b"hello", mask=True), 1002)


def test_fragmented_control_frame_is_1002() -> None:
    """A ping with FIN=0 is 1002 (B15)."""
    expect_error(server_frame(OP_PING, b"x", fin=False), 1002)


def test_control_frame_over_125_bytes_is_1002() -> None:
    """A 126-byte ping is 1002, from its header alone (B15)."""
    expect_error(server_frame(OP_PING, b"x" * 126)[:4], 1002)


def test_continuation_without_a_message_is_1002() -> None:
    """A continuation frame with no message started is 1002 (B15)."""
    expect_error(server_frame(0x0, b"x"), 1002)


def test_new_data_frame_inside_a_fragmented_message_is_1002() -> None:
    """A text frame while a fragmented message is open is 1002 (B15)."""
    expect_error(server_frame(0x1, b"a", fin=False) + server_frame(0x1, b"b"), 1002)
    expect_error(server_frame(0x2, b"a", fin=False) + server_frame(0x2, b"b", fin=False), 1002)


def test_message_over_max_size_is_1009_from_the_header() -> None:
    """A header announcing more than max_size fails before any payload arrives (B13)."""
    header = server_frame(0x2, b"y" * 101)[:2]
    expect_error(header, 1009, max_size=100)


def test_small_max_size_applies_to_small_frames() -> None:
    """With max_size 10, an 11-byte text frame (fast path size) is 1009."""
    expect_error(server_frame(0x1, b"x" * 11), 1009, max_size=10)
    assert feed_and_parse(server_frame(0x1, b"x" * 10), max_size=10)[0] == [
        Message(TEXT, "x" * 10)
    ]


def test_header_announcing_2_62_bytes_is_1009_without_allocating() -> None:
    """A 2**62-byte length in a 10-byte header is 1009 at once; nothing is allocated."""
    header = bytes((0x82, 127)) + struct.pack("!Q", 2**62)
    parser = FrameParser()
    parser.feed(header)
    with pytest.raises(FrameError) as info:
        parser.parse([], 10)
    assert info.value.code == 1009
    assert parser.buffered <= len(header)


def test_length_with_the_top_bit_set_is_1002() -> None:
    """A 64-bit length with its most significant bit set is 1002, even without a limit."""
    header = bytes((0x82, 127)) + struct.pack("!Q", 2**63)
    expect_error(header, 1002, max_size=None)


def test_without_max_size_a_huge_header_just_waits() -> None:
    """max_size None: a 2**62 header is legal; the parser waits for the payload."""
    parser = FrameParser(max_size=None)
    parser.feed(bytes((0x82, 127)) + struct.pack("!Q", 2**62) + b"abc")
    assert parse_all(parser) == ([], [])
    parser.feed(b"more")
    assert parser.buffered == 17
    assert not parser.has_frame()


def test_fragments_adding_up_beyond_max_size_are_1009() -> None:
    """Many small fragments that total more than max_size are 1009 (B13)."""
    data = b"".join(server_frame(0x2 if i == 0 else 0x0, b"z" * 10, fin=False) for i in range(11))
    expect_error(data, 1009, max_size=100)


def test_fragments_exactly_at_max_size_are_accepted() -> None:
    """Fragments totalling exactly max_size make a message."""
    data = b"".join(server_frame(0x2 if i == 0 else 0x0, b"z" * 10, fin=i == 9) for i in range(10))
    assert feed_and_parse(data, max_size=100)[0] == [Message(BINARY, b"z" * 100)]


def test_ping_and_pong_are_returned_with_their_payload() -> None:
    """Control frames come back as (opcode, payload), between the data messages."""
    parser = FrameParser()
    parser.feed(
        server_frame(0x1, b"a") + server_frame(OP_PING, b"123") + server_frame(OP_PONG, b"")
    )
    out: list[Message] = []
    assert parser.parse(out, 10) == (OP_PING, b"123")
    assert out == [Message(TEXT, "a")]
    assert parser.parse(out, 10) == (OP_PONG, b"")
    assert parser.parse(out, 10) is None


def test_close_frame_is_returned_and_recorded() -> None:
    """A close frame is returned and its code and reason kept in ``close``."""
    parser = FrameParser()
    parser.feed(server_frame(OP_CLOSE, struct.pack("!H", 1001) + "bye ✓".encode()))
    assert parser.parse([], 10) == (OP_CLOSE, struct.pack("!H", 1001) + "bye ✓".encode())
    assert parser.close == (1001, "bye ✓")


def test_data_after_close_is_ignored() -> None:
    """Frames after the peer's close frame, even invalid ones, are ignored (B20)."""
    parser = FrameParser()
    parser.feed(server_frame(OP_CLOSE, b"") + server_frame(0x1, b"late"))
    out: list[Message] = []
    assert parser.parse(out, 10) == (OP_CLOSE, b"")
    parser.feed(server_frame(0x1, b"\xff") + b"\xff\xff")
    assert parser.parse(out, 10) is None
    assert out == []
    assert not parser.has_frame()


def test_empty_close_is_reported_as_1005() -> None:
    """An empty close payload means 1005 with no reason (B17)."""
    assert decode_close(b"") == (1005, "")


def test_close_with_one_byte_payload_is_1002() -> None:
    """A 1-byte close payload is 1002 (B15)."""
    expect_error(server_frame(OP_CLOSE, b"\x03"), 1002)


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535])
def test_close_codes_invalid_to_receive_are_1002(code: int) -> None:
    """Reserved and unassigned close codes are 1002 (B15)."""
    expect_error(server_frame(OP_CLOSE, struct.pack("!H", code)), 1002)


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1010, 1011, 1014, 3000, 4999])
def test_valid_close_codes_are_accepted(code: int) -> None:
    """Codes valid on the wire are reported as they are."""
    assert decode_close(struct.pack("!H", code) + b"why") == (code, "why")


def test_close_reason_not_utf8_is_1007() -> None:
    """A close reason that is not UTF-8 is 1007 (B18)."""
    expect_error(server_frame(OP_CLOSE, struct.pack("!H", 1000) + b"\xff\xfe"), 1007)


def test_frame_error_carries_code_and_reason() -> None:
    """FrameError exposes the code to send and a readable reason."""
    error = expect_error(server_frame(0x1, b"x", rsv=4), 1002)
    assert error.reason == "reserved bits set"


def test_fast_path_resumes_after_a_fragmented_message() -> None:
    """Small frames after a completed fragmented message take the fast path again."""
    data = server_frame(0x1, b"a", fin=False) + server_frame(0x0, b"b")
    data += b"".join(server_frame(0x1, b"c") for _ in range(5))
    messages, _ = feed_and_parse(data)
    assert messages == [Message(TEXT, "ab")] + [Message(TEXT, "c")] * 5


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536])
def test_encode_frame_masks_and_sizes_correctly(size: int) -> None:
    """Client frames are final, masked, and carry the payload in the right length form."""
    payload = bytes(i % 251 for i in range(size))
    frame = encode_frame(0x2, payload)
    first, opcode, unmasked = unmask_client_frame(frame)
    assert first == 0x82
    assert opcode == 0x2
    assert unmasked == payload


def test_encode_frame_uses_a_fresh_mask_each_time() -> None:
    """Two frames with the same payload get different masking keys."""
    keys = {encode_frame(0x1, b"same")[2:6] for _ in range(8)}
    assert len(keys) > 1


def test_mask_payload_round_trips() -> None:
    """Masking twice with the same key gives the payload back, for any length."""
    for size in range(0, 13):
        payload = bytes(range(size))
        masked = mask_payload(b"\x01\x02\x03\x04", payload)
        assert len(masked) == size
        assert mask_payload(b"\x01\x02\x03\x04", masked) == payload


def test_encode_close_with_and_without_a_code() -> None:
    """encode_close(None) is an empty close frame; with a code, code then UTF-8 reason."""
    assert unmask_client_frame(encode_close(None))[1:] == (OP_CLOSE, b"")
    assert unmask_client_frame(encode_close(1001, "bye"))[1:] == (
        OP_CLOSE,
        struct.pack("!H", 1001) + b"bye",
    )


def test_wanted_counts_only_the_rest_of_a_partly_buffered_frame() -> None:
    """The reader sizes its next read by wanted(): 0 with nothing partly buffered (a read
    of the usual size then), else exactly the bytes the frame still lacks."""
    parser = FrameParser()
    assert parser.wanted() == 0
    frame = server_frame(0x2, b"z" * 70_000)
    parser.feed(frame[:1])
    assert parser.wanted() == 1  # the rest of the 2-byte header
    parser.feed(frame[1:5000])
    out: list[Message] = []
    assert parser.parse(out, 16) is None
    assert parser.wanted() == len(frame) - 5000
    parser.feed(frame[5000:] + server_frame(0x1, b"ok"))
    assert parser.parse(out, 16) is None
    assert out == [Message(BINARY, b"z" * 70_000), Message(TEXT, "ok")]
    assert parser.wanted() == 0
