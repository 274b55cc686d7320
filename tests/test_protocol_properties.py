# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""Property-based tests of ClientProtocol (hypothesis; profile in tests/conftest.py):
chunking never changes what a stream means, no input makes it raise, and what it sends
reads back as what was sent."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from tests.support.wsframes import ClientFrame, drain, parse_client_frames, pong_payloads
from tests.support.wsstreams import (
    Stream,
    any_frames,
    chunked,
    mutated_streams,
    valid_streams,
)
from wsengine._protocol import OP_BINARY, OP_CLOSE, OP_PING, OP_TEXT, ClientProtocol
from wsengine.types import CloseMessage, Message, MessageType, is_sendable_close_code

#: The codes a client fails a connection with for what the server sent.
FAILURE_CODES = {1002, 1007, 1009}


@dataclass
class Outcome:
    """What a protocol made of a stream."""

    messages: list[Message]
    failure: int | None
    close: CloseMessage | None
    pongs_received: int
    #: Every control frame it queued, read back.
    sent: list[ClientFrame]
    #: Whether our close went out before the peer's close or a failure.
    ours_closed: bool = False


def run(chunks: list[bytes], max_size: int | None = None, close_after: int = -1) -> Outcome:
    """Feed ``chunks`` one by one, reading everything after each and taking the frames
    it queued; with ``close_after`` >= 0, send our close after that many chunks (then
    the rest is discarded, as the driver does)."""
    protocol = ClientProtocol(max_size=max_size)
    messages: list[Message] = []
    sent: list[bytes] = []
    ours_closed = False
    for index, chunk in enumerate(chunks):
        if index == close_after:
            ours_closed = protocol.send_close(1000)
        protocol.receive_data(chunk)
        if protocol.close_sent is None:
            messages += drain(protocol)
        else:
            protocol.discard_messages()
        sent += protocol.data_to_send()
    protocol.receive_eof()
    assert protocol.state is protocol.state.CLOSED
    return Outcome(
        messages,
        None if protocol.failure is None else protocol.failure.code,
        protocol.close_rcvd,
        protocol.pongs_received,
        parse_client_frames(b"".join(sent)),
        ours_closed,
    )


def is_subsequence(small: list[bytes], big: list[bytes]) -> bool:
    """Tell whether ``small`` appears in ``big`` in order (not necessarily adjacent)."""
    rest = iter(big)
    return all(any(item == other for other in rest) for item in small)


def check_sane(outcome: Outcome, max_size: int | None) -> None:
    """What any input may lead to: typed messages within max_size, a failure only with
    1002/1007/1009 and then (unless we had closed first) a close frame with that code as
    the last frame sent."""
    for message in outcome.messages:
        if message.type is MessageType.TEXT:
            assert type(message.data) is str
            size = len(message.data.encode("utf-8"))
        else:
            assert message.type is MessageType.BINARY
            assert type(message.data) is bytes
            size = len(message.data)
        assert max_size is None or size <= max_size
    closes = [frame for frame in outcome.sent if frame.opcode == OP_CLOSE]
    assert len(closes) <= 1
    assert all(frame.masked and frame.fin and not frame.rsv for frame in outcome.sent)
    if outcome.failure is not None:
        assert outcome.failure in FAILURE_CODES
        assert outcome.close is None
        if not outcome.ours_closed:
            assert outcome.sent[-1].close is not None
            assert outcome.sent[-1].close[0] == outcome.failure
    if outcome.close is not None:
        assert closes, "the peer's close is answered (or was ours)"
    if outcome.ours_closed:
        assert [frame.close for frame in closes] == [(1000, "")]


@given(stream=valid_streams(), data=st.data())
def test_any_chunking_of_a_valid_stream_gives_the_same_messages(
    stream: Stream, data: st.DataObject
) -> None:
    """A valid stream fed whole or cut anywhere gives the messages it was built from, the
    same close, the same pong count, and pongs that answer its pings in order, ending
    with the last one (property a)."""
    whole = run([stream.data])
    pieces = run(data.draw(chunked(stream.data), label="chunks"))
    expected_close = None if stream.close is None else CloseMessage(*stream.close)
    for outcome in (whole, pieces):
        assert outcome.messages == stream.messages
        assert outcome.failure is None
        assert outcome.close == expected_close
        assert outcome.pongs_received == stream.pongs
        pongs = pong_payloads(outcome.sent)
        assert is_subsequence(pongs, stream.pings)
        assert pongs[-1:] == stream.pings[-1:]
        if stream.close is not None:
            assert outcome.sent[-1].opcode == OP_CLOSE
            assert outcome.sent[-1].close == (None if stream.close[0] == 1005 else (
                stream.close[0], ""))
    # Fed whole, the pings were all read before the one flush: pongs for the latest 16.
    assert pong_payloads(whole.sent) == stream.pings[-16:]


@given(
    payload=st.one_of(st.binary(max_size=300), mutated_streams(), any_frames()),
    max_size=st.sampled_from([None, 0, 1, 125, 126, 1000]),
    data=st.data(),
)
def test_no_input_makes_the_protocol_raise(
    payload: bytes, max_size: int | None, data: st.DataObject
) -> None:
    """Random bytes, mutated valid streams and frames with random fields, in random
    chunks, never raise: the protocol gives messages, a close, or a failure with 1002,
    1007 or 1009 and its close frame; and the outcome is the one of the whole input
    (property b)."""
    chunks = data.draw(chunked(payload), label="chunks")
    pieces = run(chunks, max_size)
    check_sane(pieces, max_size)
    whole = run([payload], max_size)
    assert (whole.messages, whole.failure, whole.close, whole.pongs_received) == (
        pieces.messages,
        pieces.failure,
        pieces.close,
        pieces.pongs_received,
    )


@given(
    payload=st.one_of(mutated_streams(), any_frames()),
    max_size=st.sampled_from([None, 100]),
    data=st.data(),
)
def test_no_input_makes_the_protocol_raise_after_our_close(
    payload: bytes, max_size: int | None, data: st.DataObject
) -> None:
    """Our close sent at any point, the rest of the input is discarded without raising,
    and the only close frame on the wire is ours (property b)."""
    chunks = data.draw(chunked(payload), label="chunks")
    close_after = data.draw(st.integers(0, len(chunks) - 1), label="close_after")
    outcome = run(chunks, max_size, close_after=close_after)
    check_sane(outcome, max_size)


def frame_sizes() -> st.SearchStrategy[int]:
    """Payload sizes around the 7/16/64-bit length boundaries."""
    return st.one_of(st.integers(0, 300), st.sampled_from([125, 126, 127, 65535, 65536, 65537]))


@given(text=st.one_of(st.text(), frame_sizes().map(lambda n: "é" * (n // 2) + "a" * (n % 2))))
def test_send_text_reads_back_as_the_text(text: str) -> None:
    """send_text gives one final, masked TEXT frame carrying the text (property c)."""
    frames = parse_client_frames(ClientProtocol().send_text(text))
    assert frames == [ClientFrame(True, 0, OP_TEXT, True, text.encode("utf-8"))]
    assert frames[0].payload.decode("utf-8") == text


@given(payload=st.one_of(st.binary(), frame_sizes().map(lambda n: bytes(range(256)) * (n // 256)
                                                         + bytes(n % 256))))
def test_send_binary_reads_back_as_the_bytes(payload: bytes) -> None:
    """send_binary gives one final, masked BINARY frame carrying the bytes (property c)."""
    frames = parse_client_frames(ClientProtocol().send_binary(payload))
    assert frames == [ClientFrame(True, 0, OP_BINARY, True, payload)]


@given(
    pings=st.lists(st.binary(max_size=125), max_size=5),
    code=st.one_of(st.sampled_from([1000, 1001, 1011, 1014]), st.integers(3000, 4999)),
    # Any str, lone surrogates included: they go out as "?".
    reason=st.one_of(
        st.text(max_size=200), st.text(st.characters(categories=["Cs", "Ll", "So"]), max_size=80)
    ),
)
def test_control_frames_read_back_as_sent(pings: list[bytes], code: int, reason: str) -> None:
    """Pings and the close frame come out of data_to_send in order, with their payloads;
    the reason is cut to fit in 123 bytes at a character boundary (property c)."""
    protocol = ClientProtocol()
    for ping in pings:
        protocol.send_ping(ping)
    assert is_sendable_close_code(code)
    protocol.send_close(code, reason)
    frames = parse_client_frames(b"".join(protocol.data_to_send()))
    assert [(f.opcode, f.payload) for f in frames[:-1]] == [(OP_PING, p) for p in pings]
    assert frames[-1].opcode == OP_CLOSE
    assert frames[-1].close is not None
    sent_code, sent_reason = frames[-1].close
    assert sent_code == code
    sendable = reason.encode("utf-8", "replace").decode("utf-8")
    assert sendable.startswith(sent_reason)
    assert len(sent_reason.encode()) <= 123
    assert len(sent_reason.encode()) > 119 or sent_reason == sendable
