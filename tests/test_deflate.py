# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""permessage-deflate (RFC 7692): the offer, the negotiation, inflating within max_size
(RELIABILITY E15), and real exchanges with a websockets server that compresses."""

from __future__ import annotations

import os
import threading
import tracemalloc
import zlib
from typing import Any

import pytest

from tests.support.rawserver import RawConnection, RawServer
from tests.support.rawserver import encode_frame as server_frame
from tests.support.servers import WsServer, echo_handler, run_ws_server
from wsengine._deflate import DeflateOffer, PerMessageDeflate, compression_offer, negotiate
from wsengine._protocol import ClientProtocol, FrameError
from wsengine.adapters.base import ConnectionAdapter
from wsengine.adapters.websocket_client import WebsocketClientAdapter
from wsengine.adapters.websockets_sync import WebsocketsAdapter
from wsengine.errors import ConfigError, HandshakeError, ProtocolError
from wsengine.types import Message, MessageType


def deflate(data: bytes, bits: int = 15) -> bytes:
    """A server-side compressed message payload (RFC 7692 section 7.2.1)."""
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -bits)
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


# -- the offer ------------------------------------------------------------------------------


def test_default_offer_lets_the_server_pick_the_client_window() -> None:
    """'deflate' offers permessage-deflate with a bare client_max_window_bits."""
    offer = compression_offer("deflate")
    assert offer is not None
    assert offer.header_value() == "permessage-deflate; client_max_window_bits"


def test_no_compression_offers_nothing() -> None:
    """None offers no extension."""
    assert compression_offer(None) is None


def test_a_mapping_offers_its_parameters() -> None:
    """Every RFC 7692 parameter of a mapping is offered."""
    offer = compression_offer({
        "server_no_context_takeover": True,
        "client_no_context_takeover": True,
        "server_max_window_bits": 10,
        "client_max_window_bits": 12,
    })
    assert offer is not None
    assert offer.header_value() == (
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
        "server_max_window_bits=10; client_max_window_bits=12"
    )


@pytest.mark.parametrize(
    ("compression", "named"),
    [
        ("gzip", "compression"),
        ({"server_max_window_bits": 16}, "server_max_window_bits"),
        ({"client_max_window_bits": 8}, "client_max_window_bits"),
        ({"server_no_context_takeover": 1}, "server_no_context_takeover"),
        ({"level": 9}, "level"),
        ({"server_max_window_bits": True}, "server_max_window_bits"),
    ],
)
def test_bad_compression_is_a_config_error_naming_it(
    compression: Any, named: str, adapter_class: Any
) -> None:
    """A bad key or value is a ConfigError that names it, at construction."""
    with pytest.raises(ConfigError, match=named):
        adapter_class(compression=compression)


# -- the negotiation -----------------------------------------------------------------------


def test_answer_parameters_are_applied() -> None:
    """The server's parameters end up in the extension."""
    extension = negotiate(
        "permessage-deflate; server_no_context_takeover; client_max_window_bits=10",
        DeflateOffer(),
    )
    assert extension.server_no_context_takeover
    assert "client_max_window_bits=10" in repr(extension)


@pytest.mark.parametrize(
    "answer",
    [
        "x-webkit-deflate-frame",
        "permessage-deflate, permessage-deflate",
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; unknown_parameter",
    ],
)
def test_bad_answers_fail_the_handshake(answer: str) -> None:
    """An answer that RFC 7692 section 7.1 says to refuse raises HandshakeError."""
    with pytest.raises(HandshakeError):
        negotiate(answer, DeflateOffer())


def test_a_client_window_not_offered_is_refused() -> None:
    """client_max_window_bits in the answer when the offer did not include it fails."""
    with pytest.raises(HandshakeError):
        negotiate("permessage-deflate; client_max_window_bits=10",
                  DeflateOffer(client_max_window_bits=False))


def test_an_ignored_server_window_is_refused() -> None:
    """An offered server_max_window_bits the answer does not honour fails."""
    with pytest.raises(HandshakeError):
        negotiate("permessage-deflate", DeflateOffer(server_max_window_bits=10))


# -- inflating and deflating, sans I/O -------------------------------------------------------


def test_compressed_text_and_binary_are_inflated() -> None:
    """Frames with RSV1 are inflated; frames without pass untouched."""
    protocol = ClientProtocol(2**20, PerMessageDeflate())
    text = "héllo " * 100
    protocol.receive_data(
        server_frame(0x1, deflate(text.encode()), rsv=0x4)
        + server_frame(0x2, b"plain")
        + server_frame(0x2, deflate(b"\x00" * 5000), rsv=0x4)
    )
    out: list[Message] = []
    protocol.read_messages(out, 10)
    assert out == [
        Message(MessageType.TEXT, text),
        Message(MessageType.BINARY, b"plain"),
        Message(MessageType.BINARY, b"\x00" * 5000),
    ]
    assert protocol.failure is None


def test_a_fragmented_compressed_message_is_inflated_whole() -> None:
    """Only the first frame carries RSV1; the continuation frames are inflated too."""
    payload = deflate(os.urandom(3000) + b"x" * 3000)
    plain = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
    parts = [payload[:10], payload[10:500], payload[500:]]
    stream = (
        server_frame(0x2, parts[0], fin=False, rsv=0x4)
        + server_frame(0x0, parts[1], fin=False)
        + server_frame(0x9, b"ping in between")
        + server_frame(0x0, parts[2])
    )
    protocol = ClientProtocol(2**20, PerMessageDeflate())
    protocol.receive_data(stream)
    out: list[Message] = []
    for _ in range(3):
        protocol.read_messages(out, 10)
    assert out == [Message(MessageType.BINARY, plain)]


def test_context_takeover_is_kept_across_messages() -> None:
    """A second message compressed against the first one's window inflates."""
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    first = compressor.compress(b"repeat me " * 20) + compressor.flush(zlib.Z_SYNC_FLUSH)
    second = compressor.compress(b"repeat me " * 20) + compressor.flush(zlib.Z_SYNC_FLUSH)
    protocol = ClientProtocol(2**20, PerMessageDeflate())
    protocol.receive_data(server_frame(0x2, first[:-4], rsv=0x4)
                          + server_frame(0x2, second[:-4], rsv=0x4))
    out: list[Message] = []
    protocol.read_messages(out, 10)
    assert [m.data for m in out] == [b"repeat me " * 20] * 2


def test_e15_a_small_frame_inflating_past_max_size_is_1009_with_bounded_memory() -> None:
    """E15: a 4 KiB-ish frame that inflates to 64 MiB fails with 1009 while memory stays
    about max_size, not the inflated size."""
    bomb = deflate(bytes(64 * 2**20))
    assert len(bomb) < 100_000
    protocol = ClientProtocol(2**20, PerMessageDeflate())
    tracemalloc.start()
    try:
        protocol.receive_data(server_frame(0x2, bomb, rsv=0x4))
        protocol.read_messages([], 10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert protocol.failure is not None and protocol.failure.code == 1009
    assert peak < 4 * 2**20


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (server_frame(0x9, b"", rsv=0x4), 1002),  # RSV1 on a control frame
        (server_frame(0x2, b"a", fin=False) + server_frame(0x0, b"b", rsv=0x4), 1002),
        (server_frame(0x2, b"x", rsv=0x2), 1002),  # RSV2: no extension uses it
        (server_frame(0x2, b"\xff\xff\xff not deflate", rsv=0x4), 1002),
        (server_frame(0x1, deflate(b"\xff\xfe"), rsv=0x4), 1007),
    ],
)
def test_bad_compressed_frames_fail_the_connection(frame: bytes, code: int) -> None:
    """Reserved bits where permessage-deflate allows none, data that does not inflate,
    and inflated text that is not UTF-8 fail the connection with their code."""
    protocol = ClientProtocol(2**20, PerMessageDeflate())
    protocol.receive_data(frame)
    protocol.read_messages([], 10)
    assert protocol.failure is not None and protocol.failure.code == code


def test_sent_messages_are_compressed_and_inflate_back() -> None:
    """send_* compress every message, tiny ones too (RSV1 set), and a server-side inflater
    gets the message back."""
    protocol = ClientProtocol(2**20, PerMessageDeflate())
    big = protocol.send_binary(b"abc" * 1000)
    small = protocol.send_text("hi")
    assert big[0] == 0x80 | 0x40 | 0x2
    assert small[0] == 0x80 | 0x40 | 0x1
    assert len(big) < 200
    inflater = zlib.decompressobj(-15)
    for frame, plain in ((big, b"abc" * 1000), (small, b"hi")):
        length = frame[1] & 0x7F
        start = 2 if length < 126 else 4
        mask, payload = frame[start:start + 4], frame[start + 4:]
        unmasked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
        assert inflater.decompress(unmasked + b"\x00\x00\xff\xff") == plain


def test_extension_decode_is_bounded_by_what_max_size_leaves() -> None:
    """decode() gets the room left by earlier fragments and refuses to go past it."""
    extension = PerMessageDeflate()
    with pytest.raises(FrameError) as info:
        extension.decode(deflate(bytes(1000)), fin=True, max_size=999)
    assert info.value.code == 1009


# -- against a real server ------------------------------------------------------------------


ADAPTERS = [WebsocketClientAdapter, WebsocketsAdapter]


@pytest.fixture(params=ADAPTERS, ids=["websocket-client", "websockets"])
def adapter_class(request: pytest.FixtureRequest) -> type[ConnectionAdapter]:
    """Each shipped adapter class in turn."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def compressing_server() -> Any:
    """A websockets echo server that negotiates permessage-deflate (its default)."""
    with run_ws_server(echo_handler, compression="deflate") as server:
        yield server


@pytest.mark.parametrize(
    "compression",
    [
        "deflate",
        {"client_no_context_takeover": True, "server_no_context_takeover": True},
        {"server_max_window_bits": 10, "client_max_window_bits": 9},
    ],
    ids=["default", "no-context-takeover", "small-windows"],
)
def test_messages_round_trip_compressed(
    compressing_server: WsServer, compression: Any, adapter_class: Any
) -> None:
    """With compression negotiated, text and binary of every size come back intact."""
    adapter = adapter_class(compression=compression)
    try:
        response = adapter.dial(compressing_server.url, 5)
        assert "permessage-deflate" in response.headers["Sec-WebSocket-Extensions"]
        sent: list[str | bytes] = [
            "", "x", "é" * 40_000, b"\x00" * 100_000, os.urandom(70_000), "text " * 5000,
        ]
        for data in sent:
            adapter.write(data)
        received = [adapter.read(5) for _ in sent]
        assert [m.data if m else None for m in received] == sent
    finally:
        adapter.abort()


def test_no_compression_sends_no_offer(compressing_server: WsServer, adapter_class: Any) -> None:
    """compression=None: the request carries no Sec-WebSocket-Extensions."""
    adapter = adapter_class(compression=None)
    try:
        response = adapter.dial(compressing_server.url, 5)
        assert "Sec-WebSocket-Extensions" not in response.headers
        adapter.write("plain")
        message = adapter.read(5)
        assert message is not None and message.data == "plain"
        request = compressing_server.connections[0].request
        assert request is not None
        assert "Sec-WebSocket-Extensions" not in request.headers
    finally:
        adapter.abort()


def test_e15_against_a_raw_server_the_bomb_is_a_1009_close(adapter_class: Any) -> None:
    """E15 on the wire: the server negotiates deflate and sends a bomb; the client answers
    with close 1009 and read() raises ProtocolError(1009)."""
    seen: dict[str, object] = {}
    done = threading.Event()

    def script(conn: RawConnection) -> None:
        try:
            conn.send_frame(0x2, deflate(bytes(16 * 2**20)), rsv=0x4)
            seen["close"] = conn.expect_close(5)
        finally:
            done.set()

    header = b"Sec-WebSocket-Extensions: permessage-deflate\r\n"
    with RawServer(script, extra_headers=header) as raw:
        adapter = adapter_class()
        try:
            adapter.dial(raw.url, 5)
            with pytest.raises(ProtocolError) as info:
                adapter.read(5)
            assert info.value.code == 1009
            assert done.wait(5)
            close = seen["close"]
            assert isinstance(close, tuple) and close[0] == 1009
        finally:
            adapter.abort()


def test_an_incompressible_message_of_max_size_is_accepted() -> None:
    """A message of exactly max_size that deflate made a little longer is accepted: the
    frame header check allows deflate's overhead, the inflated size is what counts."""
    data = os.urandom(2**20)
    payload = deflate(data)
    assert len(payload) > len(data)
    protocol = ClientProtocol(2**20, PerMessageDeflate())
    protocol.receive_data(server_frame(0x2, payload, rsv=0x4))
    out: list[Message] = []
    protocol.read_messages(out, 10)
    assert protocol.failure is None
    assert out == [Message(MessageType.BINARY, data)]
