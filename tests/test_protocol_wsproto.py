# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""Differential test: ClientProtocol against wsproto's FrameProtocol as the oracle.

Both read the same server streams (valid, mutated, and frames with random fields); they
must deliver the same messages, see the same pings, pongs and close frame, and fail with
the same code. Where RFC 6455 lets two correct clients differ, the difference is allowed
by name below, and each allowance is checked, not assumed:

* NON_MINIMAL_LENGTH. RFC 6455 section 5.2 tells senders to use the shortest length
  encoding; wsproto fails a longer one with 1002, wsengine reads it. Checked by
  rewriting the frame's length minimally and running wsproto again: the outcomes must
  then be equal.
* CLOSE_1014. 1014 (Bad Gateway) is in the IANA close code registry (RFC 6455 section
  7.4.2 leaves 1000-2999 to the registry); wsproto only knows the codes of its enum and
  fails it with 1002. wsengine must then report the close (1014, reason), or fail with
  1007 when the reason is not UTF-8 (the next check either side makes).
* EARLY_HEADER_CHECK. When the stream ends inside a frame, wsengine has already checked
  the frame's first two bytes (reserved bits, mask bit, a continuation or data frame out
  of order) and failed with 1002, while wsproto waits for the extended length or the
  first payload byte before checking. Checked by giving wsproto 14 more bytes: it must
  then fail with 1002 too.
* EARLY_UTF8_CHECK. When the stream ends inside a text frame, wsproto has validated the
  UTF-8 received so far and failed with 1007, while wsengine validates whole frames and
  waits. Checked by completing the frame for wsengine with ASCII bytes: it must then fail
  with 1007 too (skipped when the frame announces more than 1 MiB still to come).

wsproto has no max_size, so ClientProtocol runs with none here (max_size has its own tests).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from wsproto.frame_protocol import Frame, FrameProtocol, Opcode, ParseFailed

from tests.support.rawserver import encode_frame as server_frame
from tests.support.wsframes import drain, parse_client_frames, pong_payloads
from tests.support.wsstreams import (
    BAD_CLOSE_CODES,
    CLOSE_CODES,
    any_frames,
    chunked,
    mutated_streams,
    valid_streams,
)
from wsengine._protocol import OP_BINARY, OP_CONT, OP_PING, OP_TEXT, ClientProtocol
from wsengine.types import Message, MessageType

#: Most bytes a confirmation of EARLY_UTF8_CHECK feeds to complete a frame.
COMPLETION_LIMIT = 1 << 20


@dataclass
class Verdict:
    """What one implementation made of a stream."""

    messages: list[Message] = field(default_factory=list)
    #: The close code it failed the connection with, if it did.
    failure: int | None = None
    #: ``(code, reason)`` of the peer's close frame (1005 when empty), if one came.
    close: tuple[int, str] | None = None
    pings: list[bytes] = field(default_factory=list)
    pongs: int = 0


class Oracle(FrameProtocol):
    """wsproto's client-side frame protocol, keeping the raw payload of the last close
    frame it checked (to judge CLOSE_1014)."""

    close_payload: bytes | None = None

    def _process_close(self, frame: Frame) -> Frame:
        self.close_payload = bytes(frame.payload)  # type: ignore[arg-type]
        return super()._process_close(frame)


class OracleRun:
    """wsproto fed a stream, and what it made of it so far."""

    def __init__(self, data: bytes) -> None:
        self.protocol = Oracle(client=True, extensions=[])
        self.verdict = Verdict()
        self.error: ParseFailed | None = None
        self._parts: list[Any] = []
        self.feed(data)

    def feed(self, data: bytes) -> None:
        """Give wsproto more bytes and collect what it yields, unless it stopped."""
        verdict = self.verdict
        if self.error is not None or verdict.close is not None:
            return
        self.protocol.receive_bytes(data)
        try:
            for frame in self.protocol.received_frames():
                if frame.opcode is Opcode.PING:
                    verdict.pings.append(bytes(frame.payload))  # type: ignore[arg-type]
                elif frame.opcode is Opcode.PONG:
                    verdict.pongs += 1
                elif frame.opcode is Opcode.CLOSE:
                    assert isinstance(frame.payload, tuple)
                    code, reason = frame.payload
                    verdict.close = (int(code), str(reason))
                else:
                    self._parts.append(frame.payload)
                    if frame.message_finished:
                        if frame.opcode is Opcode.TEXT:
                            message = Message(MessageType.TEXT, "".join(self._parts))
                        else:
                            message = Message(MessageType.BINARY, b"".join(self._parts))
                        verdict.messages.append(message)
                        self._parts = []
        except ParseFailed as error:
            self.error = error
            verdict.failure = int(error.code)

    @property
    def unparsed(self) -> int:
        """Bytes from the start of the frame whose header wsproto was parsing to the end
        of the stream (it keeps them uncommitted until the header is whole and valid)."""
        return len(self.protocol._frame_decoder.buffer.buffer)

    @property
    def waiting(self) -> bool:
        """Whether wsproto holds part of a frame and waits for the rest."""
        decoder = self.protocol._frame_decoder
        return decoder.header is not None or len(decoder.buffer.buffer) > 0


def wsengine_verdict(chunks: list[bytes]) -> tuple[Verdict, ClientProtocol]:
    """Feed ``chunks`` to a ClientProtocol without max_size, reading after each."""
    protocol = ClientProtocol(max_size=None)
    verdict = Verdict()
    for chunk in chunks:
        protocol.receive_data(chunk)
        verdict.messages += drain(protocol)
    verdict.pongs = protocol.pongs_received
    if protocol.failure is not None:
        verdict.failure = protocol.failure.code
    if protocol.close_rcvd is not None:
        verdict.close = (protocol.close_rcvd.code, protocol.close_rcvd.reason)
    # Flushed once at the end, the queue holds pongs for the latest 16 pings.
    verdict.pings = pong_payloads(parse_client_frames(b"".join(protocol.data_to_send())))
    return verdict, protocol


def minimal_length(data: bytes, start: int) -> bytes:
    """``data`` with the frame at ``start`` given the shortest length encoding."""
    first, second = data[start], data[start + 1]
    if second & 0x7F == 126:
        (length,) = struct.unpack_from("!H", data, start + 2)
        end = start + 4
    else:
        (length,) = struct.unpack_from("!Q", data, start + 2)
        end = start + 10
    if length < 126:
        header = bytes((first, (second & 0x80) | length))
    else:
        header = struct.pack("!BBH", first, (second & 0x80) | 126, length)
    return data[:start] + header + data[end:]


def oracle(data: bytes) -> tuple[OracleRun, bool]:
    """wsproto's run of ``data``, with lengths rewritten minimally where it refused a
    longer encoding (NON_MINIMAL_LENGTH); and whether any was."""
    rewritten = False
    while True:
        run = OracleRun(data)
        if run.error is None or not str(run.error).startswith("Payload length used"):
            return run, rewritten
        data = minimal_length(data, len(data) - run.unparsed)
        rewritten = True


def compare(data: bytes, chunks: list[bytes]) -> list[str]:
    """Assert that wsengine and wsproto agree on ``data``, up to the allowed differences;
    return the names of those that applied."""
    ours, protocol = wsengine_verdict(chunks)
    run, rewritten = oracle(data)
    allowed = ["NON_MINIMAL_LENGTH"] if rewritten else []
    theirs = run.verdict
    # Until the point where they may part, both saw the same things.
    assert ours.messages == theirs.messages
    assert ours.pongs == theirs.pongs
    assert ours.pings == theirs.pings[-16:]
    if (ours.failure, ours.close) == (theirs.failure, theirs.close):
        return allowed
    if run.error is not None and str(run.error) == "CLOSE with unknown reserved code":
        payload = run.protocol.close_payload
        assert payload is not None
        assert payload[:2] == b"\x03\xf6", "wsproto refused a code other than 1014"
        try:
            expected: tuple[int | None, tuple[int, str] | None] = (
                None, (1014, payload[2:].decode("utf-8"))
            )
        except UnicodeDecodeError:
            expected = (1007, None)
        assert (ours.failure, ours.close) == expected
        return [*allowed, "CLOSE_1014"]
    if ours.failure == 1002 and theirs.failure is None and theirs.close is None:
        assert run.waiting, "wsproto read the whole stream and found it valid"
        run.feed(b"\xff" * 14)
        assert run.verdict.failure == 1002
        return [*allowed, "EARLY_HEADER_CHECK"]
    if theirs.failure == 1007 and ours.failure is None and ours.close is None:
        header = run.protocol._frame_decoder.header
        assert header is not None, "wsproto failed 1007 between frames"
        assert protocol.buffered > 0 and not protocol.has_frame()
        remaining = header.payload_len - run.protocol._frame_decoder.payload_consumed
        if remaining <= COMPLETION_LIMIT:
            protocol.receive_data(b"a" * remaining)
            assert drain(protocol) == []
            assert protocol.failure is not None
            assert protocol.failure.code == 1007
        return [*allowed, "EARLY_UTF8_CHECK"]
    raise AssertionError(
        f"wsengine: failure {ours.failure}, close {ours.close}; "
        f"wsproto: failure {theirs.failure} ({run.error}), close {theirs.close}"
    )


STREAMS = st.one_of(
    valid_streams().map(lambda stream: stream.data),
    mutated_streams(),
    any_frames(),
    st.tuples(valid_streams(with_close=False), any_frames()).map(lambda t: t[0].data + t[1]),
)


@given(data=STREAMS, pieces=st.data())
def test_wsengine_agrees_with_wsproto(data: bytes, pieces: st.DataObject) -> None:
    """On any stream, in any chunks, ClientProtocol delivers what wsproto delivers and
    fails with the same code, but for the differences the module docstring allows."""
    compare(data, pieces.draw(chunked(data), label="chunks"))


@given(stream=valid_streams())
def test_valid_streams_need_no_allowance(stream: Any) -> None:
    """On valid streams the two agree exactly, and on what the stream was built from."""
    assert compare(stream.data, [stream.data]) == []
    assert OracleRun(stream.data).verdict.messages == stream.messages


BYTES_OR_UTF8 = st.one_of(
    st.binary(max_size=12),
    st.text(max_size=6).map(str.encode),
    # A character cut short, or one cut short and then completed by the next piece.
    st.text(min_size=1, max_size=3).map(lambda t: t.encode()[:-1]),
    st.text(min_size=1, max_size=3).map(lambda t: t.encode()[1:]),
)


@given(
    code=st.one_of(st.sampled_from(CLOSE_CODES + BAD_CLOSE_CODES), st.integers(0, 65535)),
    reason=BYTES_OR_UTF8,
    short=st.sampled_from([None, b"", b"\x03"]),
)
def test_close_frames_are_judged_like_wsproto(
    code: int, reason: bytes, short: bytes | None
) -> None:
    """Close frames with any code and reason bytes (or an empty or 1-byte payload) get
    the same verdict: the close, 1002 or 1007 (but for CLOSE_1014)."""
    payload = struct.pack("!H", code) + reason if short is None else short
    close = bytes((0x82, 2)) + b"ok" + bytes((0x88, len(payload))) + payload
    assert set(compare(close, [close])) <= {"CLOSE_1014"}


@given(pieces=st.lists(BYTES_OR_UTF8, min_size=1, max_size=5), data=st.data())
def test_text_fragments_are_judged_like_wsproto(pieces: list[bytes], data: st.DataObject) -> None:
    """A text message of any bytes, in any fragments, with a ping among them, gets the
    same verdict: the message or 1007."""
    frames = [
        server_frame(OP_TEXT if index == 0 else OP_CONT, piece, fin=index == len(pieces) - 1)
        for index, piece in enumerate(pieces)
    ]
    frames.insert(data.draw(st.integers(0, len(frames)), label="ping at"),
                  server_frame(OP_PING, b"p"))
    stream = b"".join(frames) + server_frame(OP_BINARY, b"next")
    assert compare(stream, data.draw(chunked(stream), label="chunks")) == []


def test_every_close_code_is_judged_like_wsproto() -> None:
    """For each of the 65,536 codes a close frame can carry, both accept or both fail,
    with the same code (but for CLOSE_1014)."""
    allowed = {}
    for code in range(65536):
        close = bytes((0x88, 4)) + struct.pack("!H", code) + b"ok"
        names = compare(close, [close])
        if names:
            allowed[code] = names
    assert allowed == {1014: ["CLOSE_1014"]}


def header(first: int, length: int, wide: bool = False) -> bytes:
    """A server frame header with ``length`` written in the 16- or 64-bit form."""
    if wide:
        return struct.pack("!BBQ", first, 127, length)
    return struct.pack("!BBH", first, 126, length)


def test_each_allowance_is_reachable() -> None:
    """Each allowed difference happens on the input it was written for (so that none is
    dead code, and none hides a plain disagreement)."""
    wide = header(0x81, 3) + b"abc" + header(0x82, 200, wide=True) + b"x" * 200
    assert compare(wide, [wide]) == ["NON_MINIMAL_LENGTH"]
    close_1014 = bytes((0x88, 4)) + b"\x03\xf6ok"
    assert compare(close_1014, [close_1014]) == ["CLOSE_1014"]
    bad_reason = bytes((0x88, 3)) + b"\x03\xf6\xff"
    assert compare(bad_reason, [bad_reason]) == ["CLOSE_1014"]
    rsv_cut = bytes((0xC1, 126))  # RSV1, 16-bit length still to come
    assert compare(rsv_cut, [rsv_cut]) == ["EARLY_HEADER_CHECK"]
    stray_continuation = bytes((0x80, 5))  # no message to continue, payload to come
    assert compare(stray_continuation, [stray_continuation]) == ["EARLY_HEADER_CHECK"]
    bad_text = bytes((0x81, 10)) + b"ok\xff"
    assert compare(bad_text, [bad_text]) == ["EARLY_UTF8_CHECK"]


@given(
    messages=st.lists(st.one_of(st.text(max_size=300), st.binary(max_size=300)), max_size=5),
    pings=st.lists(st.binary(max_size=125), max_size=3),
    close=st.tuples(st.sampled_from([1000, 1001, 1011, 3000, 4999]), st.text(max_size=40)),
)
def test_wsproto_server_reads_what_wsengine_sends(
    messages: list[str | bytes], pings: list[bytes], close: tuple[int, str]
) -> None:
    """A wsproto server reads ClientProtocol's frames as the messages, pings and close
    that were sent (masked, minimal lengths, valid close payload)."""
    protocol = ClientProtocol()
    wire = b""
    for message in messages:
        if isinstance(message, str):
            wire += protocol.send_text(message)
        else:
            wire += protocol.send_binary(message)
    for ping in pings:
        protocol.send_ping(ping)
    protocol.send_close(*close)
    wire += b"".join(protocol.data_to_send())
    server = FrameProtocol(client=False, extensions=[])
    server.receive_bytes(wire)
    got: list[Any] = []
    for frame in server.received_frames():
        assert frame.frame_finished and frame.message_finished
        got.append((frame.opcode, frame.payload))
    expected: list[Any] = [
        (Opcode.TEXT if isinstance(m, str) else Opcode.BINARY, m) for m in messages
    ]
    expected += [(Opcode.PING, p) for p in pings]
    code, reason = close
    assert got[:-1] == expected
    assert got[-1][0] is Opcode.CLOSE
    assert got[-1][1][0] == code
    assert reason.startswith(got[-1][1][1])
