# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""ClientProtocol bytes-in/bytes-out: control frames, the close handshake, failures,
the control-frame budget and the frames it builds (RELIABILITY B13-B20)."""

from __future__ import annotations

import struct

import pytest

from tests.support.rawserver import encode_frame as server_frame
from tests.support.wsframes import ClientFrame, drain, parse_client_frames, pong_payloads
from wsengine._protocol import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    ClientProtocol,
    State,
)
from wsengine.errors import ConfigError, ConnectionClosedError, ProtocolError
from wsengine.types import CloseMessage, Message, MessageType

TEXT = MessageType.TEXT
BINARY = MessageType.BINARY


def close_payload(code: int, reason: bytes = b"") -> bytes:
    """The payload of a close frame with ``code`` and raw ``reason`` bytes."""
    return struct.pack("!H", code) + reason


def sent(protocol: ClientProtocol) -> list[ClientFrame]:
    """The control frames ``protocol`` queued, read back as a server would."""
    return parse_client_frames(b"".join(protocol.data_to_send()))


def received(protocol: ClientProtocol, *frames: bytes) -> list[Message]:
    """Feed ``frames`` as one chunk and read every message they make."""
    protocol.receive_data(b"".join(frames))
    return drain(protocol)


# -- pings and pongs ----------------------------------------------------------------------


def test_ping_queues_exactly_one_pong_with_its_payload() -> None:
    """A ping gets one pong carrying the same payload, and nothing else is queued."""
    protocol = ClientProtocol()
    assert received(protocol, server_frame(OP_PING, b"are you there?")) == []
    assert protocol.has_data_to_send()
    frames = sent(protocol)
    assert frames == [ClientFrame(True, 0, OP_PONG, True, b"are you there?")]
    assert not protocol.has_data_to_send()
    assert protocol.data_to_send() == []


def test_ping_flood_queues_pongs_for_the_latest_16_pings_only() -> None:
    """Many pings read before the queue is flushed leave pongs for the 16 most recent, in
    order (RFC 6455 section 5.5.3 allows answering only the most recent; Autobahn 2.10
    wants 10 pings answered)."""
    protocol = ClientProtocol()
    received(protocol, *(server_frame(OP_PING, b"%d" % i) for i in range(50)))
    assert pong_payloads(sent(protocol)) == [b"%d" % i for i in range(34, 50)]


def test_ping_between_flushes_gets_its_own_pong() -> None:
    """Once a pong was taken by data_to_send, the next ping gets a pong of its own."""
    protocol = ClientProtocol()
    received(protocol, server_frame(OP_PING, b"1"))
    assert pong_payloads(sent(protocol)) == [b"1"]
    received(protocol, server_frame(OP_PING, b"2"))
    assert pong_payloads(sent(protocol)) == [b"2"]


def test_ping_after_our_close_queues_no_pong() -> None:
    """After this side's close frame only the close goes out: a ping gets no pong."""
    protocol = ClientProtocol()
    protocol.send_close(1000)
    protocol.receive_data(server_frame(OP_PING, b"late"))
    protocol.discard_messages()
    assert [frame.opcode for frame in sent(protocol)] == [OP_CLOSE]


def test_pong_queued_before_our_close_goes_out_first() -> None:
    """A pong owed from before the close is sent ahead of the close frame."""
    protocol = ClientProtocol()
    received(protocol, server_frame(OP_PING, b"p"))
    protocol.send_close(1001, "bye")
    frames = sent(protocol)
    assert [(f.opcode, f.payload) for f in frames] == [
        (OP_PONG, b"p"),
        (OP_CLOSE, close_payload(1001, b"bye")),
    ]


def test_pongs_are_counted_and_not_answered() -> None:
    """Each pong increments pongs_received; none queues a frame."""
    protocol = ClientProtocol()
    assert protocol.pongs_received == 0
    received(protocol, server_frame(OP_PONG, b""), server_frame(OP_PONG, b"x"))
    assert protocol.pongs_received == 2
    received(protocol, server_frame(OP_PONG, b"y"))
    assert protocol.pongs_received == 3
    assert not protocol.has_data_to_send()


def test_send_ping_queues_a_masked_ping() -> None:
    """send_ping queues a final, masked ping with the payload, in call order."""
    protocol = ClientProtocol()
    protocol.send_ping(b"a")
    protocol.send_ping(b"b" * 125)
    assert sent(protocol) == [
        ClientFrame(True, 0, OP_PING, True, b"a"),
        ClientFrame(True, 0, OP_PING, True, b"b" * 125),
    ]


def test_send_ping_over_125_bytes_is_a_value_error() -> None:
    """A ping payload of 126 bytes is refused, and nothing is queued."""
    protocol = ClientProtocol()
    with pytest.raises(ValueError, match="125"):
        protocol.send_ping(b"x" * 126)
    assert not protocol.has_data_to_send()


def test_ping_inside_a_fragmented_message_is_answered_before_it_completes() -> None:
    """A ping between two fragments gets its pong while the message is still open (B16)."""
    protocol = ClientProtocol()
    assert received(
        protocol, server_frame(OP_TEXT, b"frag", fin=False), server_frame(OP_PING, b"mid")
    ) == []
    assert pong_payloads(sent(protocol)) == [b"mid"]
    assert received(protocol, server_frame(OP_CONT, b"ment")) == [Message(TEXT, "fragment")]


# -- the close handshake ------------------------------------------------------------------


def test_peer_close_is_answered_echoing_its_code() -> None:
    """The peer's close is recorded and answered with the same code (RFC 6455 5.5.1)."""
    protocol = ClientProtocol()
    received(protocol, server_frame(OP_CLOSE, close_payload(1001, "au revoir ✓".encode())))
    assert protocol.close_rcvd == CloseMessage(1001, "au revoir ✓")
    assert protocol.state is State.CLOSING
    frames = sent(protocol)
    assert len(frames) == 1
    assert frames[0].opcode == OP_CLOSE
    assert frames[0].masked and frames[0].fin
    assert frames[0].close == (1001, "")
    assert protocol.close_sent == CloseMessage(1001)
    assert protocol.handshake_done


def test_empty_close_is_answered_with_an_empty_close() -> None:
    """An empty close is reported as 1005 and answered with an empty close: 1005 never
    goes on the wire (B17)."""
    protocol = ClientProtocol()
    received(protocol, server_frame(OP_CLOSE, b""))
    assert protocol.close_rcvd == CloseMessage(1005, "")
    frames = sent(protocol)
    assert [(f.opcode, f.payload) for f in frames] == [(OP_CLOSE, b"")]
    assert protocol.failure is None


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\x03", 1002),
        (close_payload(1005), 1002),
        (close_payload(1006), 1002),
        (close_payload(999), 1002),
        (close_payload(5000), 1002),
        (close_payload(1000, b"\xff\xfe"), 1007),
        (close_payload(1000, b"ok\xe2\x82"), 1007),
    ],
    ids=["1-byte", "1005", "1006", "999", "5000", "reason-ff", "reason-truncated"],
)
def test_bad_close_frame_fails_the_connection(payload: bytes, code: int) -> None:
    """A malformed close frame fails the connection with 1002 or 1007 (B15, B18): the
    failure is recorded and a close frame with that code is queued."""
    protocol = ClientProtocol()
    received(protocol, server_frame(OP_CLOSE, payload))
    assert protocol.failure is not None
    assert protocol.failure.code == code
    assert protocol.close_rcvd is None
    assert protocol.state is State.CLOSING
    frames = sent(protocol)
    assert [f.opcode for f in frames] == [OP_CLOSE]
    assert frames[0].close is not None
    assert frames[0].close[0] == code
    assert protocol.close_sent is not None
    assert protocol.close_sent.code == code


def test_messages_before_the_peer_close_are_delivered() -> None:
    """Messages in the same chunk as the close frame, before it, are delivered."""
    protocol = ClientProtocol()
    messages = received(
        protocol,
        server_frame(OP_TEXT, b"one"),
        server_frame(OP_BINARY, b"two"),
        server_frame(OP_CLOSE, close_payload(1000)),
    )
    assert messages == [Message(TEXT, "one"), Message(BINARY, b"two")]
    assert protocol.close_rcvd == CloseMessage(1000)


def test_data_after_the_peer_close_is_ignored() -> None:
    """Frames after the peer's close, in the same chunk or later, even invalid ones, are
    ignored and fail nothing (B20)."""
    protocol = ClientProtocol()
    messages = received(
        protocol, server_frame(OP_CLOSE, close_payload(1000)), server_frame(OP_TEXT, b"late")
    )
    assert messages == []
    assert received(protocol, server_frame(OP_TEXT, b"\xff"), b"\xff\xff\xff") == []
    assert protocol.failure is None
    assert not protocol.has_frame()
    assert [f.opcode for f in sent(protocol)] == [OP_CLOSE]


def test_our_close_is_sent_once_and_answered() -> None:
    """send_close queues a close with its code and reason; the peer's reply completes the
    handshake and is not answered again."""
    protocol = ClientProtocol()
    assert protocol.send_close(1000, "done") is True
    assert protocol.state is State.CLOSING
    assert protocol.close_sent == CloseMessage(1000, "done")
    assert not protocol.handshake_done
    frames = sent(protocol)
    assert [(f.opcode, f.close) for f in frames] == [(OP_CLOSE, (1000, "done"))]
    protocol.receive_data(server_frame(OP_CLOSE, close_payload(1000)))
    protocol.discard_messages()
    assert protocol.close_rcvd == CloseMessage(1000)
    assert protocol.handshake_done
    assert not protocol.has_data_to_send()


def test_send_close_twice_queues_one_frame() -> None:
    """The second send_close returns False and queues nothing."""
    protocol = ClientProtocol()
    assert protocol.send_close(1000) is True
    assert protocol.send_close(1001, "again") is False
    assert [f.close for f in sent(protocol)] == [(1000, "")]
    assert protocol.close_sent == CloseMessage(1000)


def test_send_close_after_the_peer_close_queues_nothing_more() -> None:
    """When the peer closed first, the automatic reply was the close: send_close is a
    no-op returning False."""
    protocol = ClientProtocol()
    received(protocol, server_frame(OP_CLOSE, close_payload(1001)))
    assert protocol.send_close(1000) is False
    assert [f.close for f in sent(protocol)] == [(1001, "")]


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 2999, 5000, -1, True])
def test_close_codes_not_sendable_are_config_errors(code: int) -> None:
    """send_close refuses codes that may not go on the wire, and queues nothing."""
    protocol = ClientProtocol()
    with pytest.raises(ConfigError):
        protocol.send_close(code)
    assert not protocol.has_data_to_send()
    assert protocol.state is State.OPEN


def test_close_reason_is_cut_to_fit_a_control_frame() -> None:
    """A long reason is cut to 123 bytes of UTF-8, at a character boundary."""
    protocol = ClientProtocol()
    protocol.send_close(1000, "é" * 100)
    (frame,) = sent(protocol)
    assert len(frame.payload) <= 125
    assert frame.close == (1000, "é" * 61)


def test_close_reason_with_a_lone_surrogate_is_sent_with_a_replacement() -> None:
    """A reason UTF-8 cannot carry (a lone surrogate, as from a bad decode) still gives a
    close frame, with "?" in its place, instead of raising UnicodeEncodeError and leaving
    the driver to drop TCP without a close handshake.

    Regression: send_close raised UnicodeEncodeError and queued nothing.
    """
    protocol = ClientProtocol()
    assert protocol.send_close(1001, "bad \ud800 reason") is True
    assert protocol.close_sent == CloseMessage(1001, "bad ? reason")
    assert [f.close for f in sent(protocol)] == [(1001, "bad ? reason")]


@pytest.mark.parametrize("method", ["send_text", "send_binary", "send_ping"])
def test_sending_after_our_close_raises(method: str) -> None:
    """No data frame (or ping) may follow our close frame: ConnectionClosedError with our
    code."""
    protocol = ClientProtocol()
    protocol.send_close(1001, "leaving")
    with pytest.raises(ConnectionClosedError) as info:
        getattr(protocol, method)("x" if method == "send_text" else b"x")
    assert type(info.value) is ConnectionClosedError
    assert (info.value.code, info.value.reason) == (1001, "leaving")


def test_sending_after_the_peer_close_raises_with_its_code() -> None:
    """After the peer's close, sends raise with the peer's code and reason."""
    protocol = ClientProtocol()
    received(protocol, server_frame(OP_CLOSE, close_payload(4000, b"maintenance")))
    with pytest.raises(ConnectionClosedError) as info:
        protocol.send_text("x")
    assert (info.value.code, info.value.reason) == (4000, "maintenance")


def test_receive_eof_closes_the_connection() -> None:
    """EOF makes the state CLOSED: no frame is read or built any more, and the error is
    1006 when no close frame went either way."""
    protocol = ClientProtocol()
    protocol.receive_data(server_frame(OP_TEXT, b"buffered"))
    protocol.receive_eof()
    assert protocol.state is State.CLOSED
    assert not protocol.has_frame()
    with pytest.raises(ConnectionClosedError) as info:
        protocol.send_binary(b"x")
    assert info.value.code == 1006
    with pytest.raises(ConnectionClosedError):
        protocol.send_ping()
    assert protocol.send_close(1000) is False
    assert not protocol.has_data_to_send()


def test_receive_eof_after_the_handshake_keeps_the_close_codes() -> None:
    """EOF after a full close handshake: CLOSED, and the peer's close still explains it."""
    protocol = ClientProtocol()
    protocol.send_close(1000)
    protocol.receive_data(server_frame(OP_CLOSE, close_payload(1000, b"ok")))
    protocol.discard_messages()
    protocol.receive_eof()
    assert protocol.state is State.CLOSED
    error = protocol.closed_error()
    assert (type(error), error.code, error.reason) == (ConnectionClosedError, 1000, "ok")


# -- failing ------------------------------------------------------------------------------


def test_fail_queues_a_close_with_its_code() -> None:
    """fail() queues a close with the code, records the failure, and closed_error() is a
    ProtocolError carrying it."""
    protocol = ClientProtocol()
    protocol.fail(1009, "too big")
    assert protocol.state is State.CLOSING
    assert [f.close for f in sent(protocol)] == [(1009, "too big")]
    error = protocol.closed_error()
    assert type(error) is ProtocolError
    assert (error.code, error.reason) == (1009, "too big")
    assert error is not protocol.closed_error(), "each call gives a fresh exception"
    with pytest.raises(ProtocolError):
        protocol.send_text("x")


def test_fail_twice_keeps_the_first_failure() -> None:
    """A second fail() changes nothing and queues nothing."""
    protocol = ClientProtocol()
    protocol.fail(1002, "first")
    protocol.fail(1007, "second")
    assert protocol.failure is not None
    assert protocol.failure.code == 1002
    assert [f.close for f in sent(protocol)] == [(1002, "first")]


def test_fail_after_our_close_queues_no_second_close() -> None:
    """After our close, a failure is recorded but no second close frame is queued."""
    protocol = ClientProtocol()
    protocol.send_close(1000)
    protocol.receive_data(server_frame(OP_TEXT, b"\xff"))
    protocol.discard_messages()
    assert protocol.failure is not None
    assert protocol.failure.code == 1007
    assert [f.close for f in sent(protocol)] == [(1000, "")]
    assert protocol.closed_error().code == 1007


def test_nothing_is_read_after_a_failure() -> None:
    """Once failed, the protocol reads nothing more, even valid frames."""
    protocol = ClientProtocol()
    assert received(protocol, server_frame(OP_TEXT, b"ok"), server_frame(5, b"")) == [
        Message(TEXT, "ok")
    ]
    assert protocol.failure is not None
    assert protocol.failure.code == 1002
    assert received(protocol, server_frame(OP_TEXT, b"after")) == []
    assert protocol.failure.code == 1002
    assert [f.close[0] for f in sent(protocol) if f.close] == [1002]


def test_closed_error_order() -> None:
    """closed_error() tells the failure, else the peer's close, else ours, else 1006."""
    fresh = ClientProtocol()
    assert (type(fresh.closed_error()), fresh.closed_error().code) == (
        ConnectionClosedError,
        1006,
    )

    ours = ClientProtocol()
    ours.send_close(3001, "ours")
    assert (ours.closed_error().code, ours.closed_error().reason) == (3001, "ours")
    ours.receive_data(server_frame(OP_CLOSE, close_payload(4001, b"theirs")))
    ours.discard_messages()
    assert (ours.closed_error().code, ours.closed_error().reason) == (4001, "theirs")
    ours.fail(1011, "internal")
    error = ours.closed_error()
    assert (type(error), error.code, error.reason) == (ProtocolError, 1011, "internal")


# -- the control-frame budget -------------------------------------------------------------


def test_thousand_pings_take_several_calls_and_all_are_handled() -> None:
    """1,000 pings are handled 64 per read_messages call: has_frame() stays true between
    calls, the messages around them are all delivered, and the last ping is answered."""
    protocol = ClientProtocol()
    protocol.receive_data(
        server_frame(OP_TEXT, b"before")
        + b"".join(server_frame(OP_PING, b"%d" % i) for i in range(1000))
        + server_frame(OP_BINARY, b"after")
    )
    out: list[Message] = []
    calls = 0
    while True:
        protocol.read_messages(out, 100)
        calls += 1
        if not protocol.has_frame():
            break
        assert out == [Message(TEXT, "before")]
    assert calls == -(-1000 // 64)  # 16
    assert out == [Message(TEXT, "before"), Message(BINARY, b"after")]
    assert protocol.buffered == 0
    assert pong_payloads(sent(protocol)) == [b"%d" % i for i in range(984, 1000)]


def test_thousand_pongs_are_all_counted() -> None:
    """Every pong of a flood is counted, whatever the number of calls it takes."""
    protocol = ClientProtocol()
    received(protocol, *(server_frame(OP_PONG, b"") for _ in range(1000)))
    assert protocol.pongs_received == 1000


def test_discard_messages_reaches_the_close_behind_a_ping_flood() -> None:
    """After our close, discard_messages parses past more than one control-frame budget
    of pings to the peer's close frame, so the handshake completes without more bytes.

    Regression: it stopped after 64 control frames, leaving the close frame buffered
    until the close timeout.
    """
    protocol = ClientProtocol()
    protocol.send_close(1000)
    protocol.receive_data(
        b"".join(server_frame(OP_PING, b"x") for _ in range(100))
        + server_frame(OP_PONG, b"")
        + server_frame(OP_CLOSE, close_payload(1000))
    )
    protocol.discard_messages()
    assert protocol.close_rcvd == CloseMessage(1000)
    assert protocol.handshake_done
    assert protocol.pongs_received == 1
    assert protocol.buffered == 0


def test_discard_messages_drops_data_after_our_close() -> None:
    """After our close, data messages are parsed (and validated) but not delivered."""
    protocol = ClientProtocol()
    protocol.send_close(1000)
    protocol.receive_data(
        b"".join(server_frame(OP_TEXT, b"dropped") for _ in range(10))
        + server_frame(OP_CLOSE, close_payload(1000))
    )
    protocol.discard_messages()
    assert protocol.close_rcvd == CloseMessage(1000)
    assert protocol.failure is None


def test_read_messages_stops_at_its_limit() -> None:
    """read_messages appends at most ``limit`` messages; has_frame() tells more wait."""
    protocol = ClientProtocol()
    protocol.receive_data(b"".join(server_frame(OP_TEXT, b"%d" % i) for i in range(5)))
    out: list[Message] = []
    protocol.read_messages(out, 2)
    assert [m.data for m in out] == ["0", "1"]
    assert protocol.has_frame()
    protocol.read_messages(out, 5)
    assert [m.data for m in out] == ["0", "1", "2", "3", "4"]
    assert not protocol.has_frame()


# -- max_size -----------------------------------------------------------------------------


def test_max_size_fails_1009_from_the_header_alone() -> None:
    """A header announcing more than max_size fails with 1009 before any payload byte."""
    protocol = ClientProtocol(max_size=1000)
    protocol.receive_data(server_frame(OP_BINARY, b"x" * 1001)[:4])
    assert drain(protocol) == []
    assert protocol.failure is not None
    assert protocol.failure.code == 1009
    assert [f.close[0] for f in sent(protocol) if f.close] == [1009]


def test_max_size_counts_all_fragments() -> None:
    """Fragments adding up to max_size pass; one byte more is 1009."""
    exact = ClientProtocol(max_size=10)
    assert received(
        exact, server_frame(OP_TEXT, b"12345", fin=False), server_frame(OP_CONT, b"67890")
    ) == [Message(TEXT, "1234567890")]
    over = ClientProtocol(max_size=10)
    received(over, server_frame(OP_TEXT, b"12345", fin=False), server_frame(OP_CONT, b"678901"))
    assert over.failure is not None
    assert over.failure.code == 1009


# -- the frames it builds -----------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536])
def test_send_text_builds_one_final_masked_text_frame(size: int) -> None:
    """send_text returns one final, masked TEXT frame whose payload is the UTF-8 text, in
    each length encoding."""
    text = ("aé€" * size)[:size]
    frames = parse_client_frames(ClientProtocol().send_text(text))
    assert frames == [ClientFrame(True, 0, OP_TEXT, True, text.encode())]


@pytest.mark.parametrize("data", [b"", b"\x00\xff", bytearray(b"ba"), memoryview(b"mv")])
def test_send_binary_builds_one_final_masked_binary_frame(data: bytes) -> None:
    """send_binary takes bytes-like data and returns one final, masked BINARY frame."""
    frames = parse_client_frames(ClientProtocol().send_binary(data))
    assert frames == [ClientFrame(True, 0, OP_BINARY, True, bytes(data))]


def test_send_frames_queue_nothing() -> None:
    """Data frames are returned to the caller, not queued with the control frames."""
    protocol = ClientProtocol()
    protocol.send_text("a")
    protocol.send_binary(b"b")
    assert not protocol.has_data_to_send()


def test_each_frame_gets_a_fresh_mask() -> None:
    """Masking keys differ from frame to frame (RFC 6455 section 10.3)."""
    protocol = ClientProtocol()
    keys = {protocol.send_text("same")[2:6] for _ in range(8)}
    assert len(keys) > 1


# -- read_data: the driver's unlocked pass over data frames ---------------------------------


def test_read_data_leaves_a_ping_for_read_messages_to_answer() -> None:
    """read_data parses data frames and stops at a control frame without acting on it (it
    runs outside the driver's state mutex); the next read_messages answers it first, then
    goes on with the frames after it, in order."""
    protocol = ClientProtocol()
    protocol.receive_data(b"".join([
        server_frame(OP_TEXT, b"one"),
        server_frame(OP_PING, b"p"),
        server_frame(OP_BINARY, b"two"),
    ]))
    out: list[Message] = []
    assert protocol.read_data(out, 16) is False
    assert out == [Message(TEXT, "one")]
    assert not protocol.has_data_to_send()  # not acted on yet
    assert protocol.read_data(out, 16) is False  # still waiting for read_messages
    protocol.read_messages(out, 16)
    assert out == [Message(TEXT, "one"), Message(BINARY, b"two")]
    assert [(f.opcode, f.payload) for f in sent(protocol)] == [(OP_PONG, b"p")]
    assert protocol.read_data(out, 16) is True


def test_read_data_leaves_a_close_and_a_violation_for_read_messages() -> None:
    """A close frame, or a frame breaking the protocol, found by read_data is acted on
    (close answered, connection failed with 1002) by the next read_messages only."""
    protocol = ClientProtocol()
    protocol.receive_data(server_frame(OP_CLOSE, close_payload(1001)))
    assert protocol.read_data([], 16) is False
    assert protocol.close_rcvd is None and protocol.state is State.OPEN
    protocol.read_messages([], 16)
    assert protocol.close_rcvd == CloseMessage(1001)
    assert protocol.read_data([], 16) is False

    protocol = ClientProtocol()
    protocol.receive_data(server_frame(OP_BINARY, b"ok") + b"\x83\x00")  # reserved opcode
    out: list[Message] = []
    assert protocol.read_data(out, 16) is False
    assert out == [Message(BINARY, b"ok")]
    assert protocol.failure is None
    protocol.read_messages(out, 16)
    assert protocol.failure is not None and protocol.failure.code == 1002
    assert out == [Message(BINARY, b"ok")]
