# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""permessage-deflate (RFC 7692) for the client: the offer, the server's answer, and the
:class:`~wsengine._protocol.Extension` that inflates and deflates messages.

Sans I/O like the protocol core: the dialer sends :func:`offer`'s header value, hands
the server's answer to :func:`negotiate`, and gives the resulting extension to the
protocol.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from wsengine._protocol import OP_CONT, Extension, FrameError
from wsengine.errors import ConfigError, HandshakeError

__all__ = [
    "EXTENSION_NAME",
    "DeflateOffer",
    "PerMessageDeflate",
    "compression_offer",
    "negotiate",
]

EXTENSION_NAME: Final = "permessage-deflate"
_EMPTY_BLOCK: Final = b"\x00\x00\xff\xff"
_BOOLEAN_PARAMETERS: Final = ("server_no_context_takeover", "client_no_context_takeover")
_BITS_PARAMETERS: Final = ("server_max_window_bits", "client_max_window_bits")
#: The RSV bit permessage-deflate sets on the first frame of a compressed message.
_RSV1: Final = 0x40


@dataclass(frozen=True)
class DeflateOffer:
    """What the client offers (RFC 7692 section 7.1). ``True`` for a window-bits field
    offers the parameter without a value (the server picks)."""

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int | None = None
    client_max_window_bits: int | bool = True

    def header_value(self) -> str:
        """The ``Sec-WebSocket-Extensions`` value of this offer."""
        parts = [EXTENSION_NAME]
        if self.server_no_context_takeover:
            parts.append("server_no_context_takeover")
        if self.client_no_context_takeover:
            parts.append("client_no_context_takeover")
        if self.server_max_window_bits is not None:
            parts.append(f"server_max_window_bits={self.server_max_window_bits}")
        if self.client_max_window_bits is True:
            parts.append("client_max_window_bits")
        elif self.client_max_window_bits:
            parts.append(f"client_max_window_bits={self.client_max_window_bits}")
        return "; ".join(parts)


def compression_offer(compression: object) -> DeflateOffer | None:
    """The offer an adapter's ``compression`` argument asks for.

    Args:
        compression: ``"deflate"`` (the default offer), None (no offer), or a mapping of
            RFC 7692 parameters (booleans for the ``*_no_context_takeover`` ones, 9-15 for
            the ``*_max_window_bits`` ones; ``client_max_window_bits`` may be True).

    Raises:
        ConfigError: anything else, naming the bad key or value.
    """
    if compression is None:
        return None
    if compression == "deflate":
        return DeflateOffer()
    if not isinstance(compression, Mapping):
        raise ConfigError(
            f"compression must be 'deflate', None or a mapping of permessage-deflate "
            f"parameters, got {compression!r}"
        )
    values: dict[str, object] = {}
    for key, value in compression.items():
        if key in _BOOLEAN_PARAMETERS:
            if not isinstance(value, bool):
                raise ConfigError(f"compression[{key!r}] must be a bool, got {value!r}")
        elif key in _BITS_PARAMETERS:
            allowed_true = key == "client_max_window_bits" and value is True
            if not allowed_true and (
                isinstance(value, bool) or not isinstance(value, int) or not 9 <= value <= 15
            ):
                raise ConfigError(
                    f"compression[{key!r}] must be an int from 9 to 15, got {value!r}"
                )
        else:
            raise ConfigError(f"compression has an unknown parameter {key!r}")
        values[key] = value
    return DeflateOffer(**values)  # type: ignore[arg-type]


def negotiate(answer: str, offer: DeflateOffer) -> PerMessageDeflate:
    """Check the server's ``Sec-WebSocket-Extensions`` answer against ``offer`` and build
    the extension it agreed to.

    Raises:
        HandshakeError: the answer names another extension, repeats or misspells a
            parameter, or accepts what was not offered (RFC 7692 section 7.1).
    """
    items = [item.strip() for item in answer.split(",") if item.strip()]
    if len(items) != 1:
        raise HandshakeError("the server accepted more than one extension")
    name, *raw_parameters = (part.strip() for part in items[0].split(";"))
    if name.lower() != EXTENSION_NAME:
        raise HandshakeError(f"the server accepted an extension that was not offered ({name})")
    seen: dict[str, str | None] = {}
    for raw in raw_parameters:
        key, equals, value = (part.strip() for part in raw.partition("="))
        key = key.lower()
        if key in seen:
            raise HandshakeError(f"permessage-deflate parameter {key} given twice")
        seen[key] = value.strip('"') if equals else None
    server_no_takeover = _flag(seen, "server_no_context_takeover")
    client_no_takeover = _flag(seen, "client_no_context_takeover")
    server_bits = _bits(seen, "server_max_window_bits")
    client_bits = _bits(seen, "client_max_window_bits")
    if seen:
        raise HandshakeError(f"unknown permessage-deflate parameter {sorted(seen)[0]}")
    if offer.server_no_context_takeover and not server_no_takeover:
        raise HandshakeError("the server refused server_no_context_takeover")
    if offer.server_max_window_bits is not None and (
        server_bits is None or server_bits > offer.server_max_window_bits
    ):
        raise HandshakeError("the server ignored server_max_window_bits")
    if client_bits is not None and offer.client_max_window_bits is False:
        raise HandshakeError("the server set client_max_window_bits, which was not offered")
    if isinstance(offer.client_max_window_bits, int) and offer.client_max_window_bits is not True:
        client_bits = min(client_bits or 15, offer.client_max_window_bits)
    return PerMessageDeflate(
        server_no_context_takeover=server_no_takeover,
        client_no_context_takeover=client_no_takeover or offer.client_no_context_takeover,
        server_max_window_bits=server_bits or 15,
        client_max_window_bits=client_bits or 15,
    )


def _flag(seen: dict[str, str | None], key: str) -> bool:
    if key not in seen:
        return False
    if seen.pop(key) is not None:
        raise HandshakeError(f"permessage-deflate parameter {key} takes no value")
    return True


def _bits(seen: dict[str, str | None], key: str) -> int | None:
    if key not in seen:
        return None
    value = seen.pop(key)
    if value is None or not value.isdigit() or not 8 <= int(value) <= 15:
        raise HandshakeError(f"bad permessage-deflate {key}")
    return int(value)


class PerMessageDeflate(Extension):
    """The negotiated permessage-deflate: inflates messages that carry RSV1, deflates
    outgoing ones.

    Not thread-safe: the protocol's callers serialize receiving, and sending, as they do
    for the protocol itself (receiving and sending use separate zlib objects).

    Args:
        server_no_context_takeover: the server starts each message with a fresh window.
        client_no_context_takeover: this client does (a fresh compressor per message).
        server_max_window_bits: the server's LZ77 window.
        client_max_window_bits: this client's LZ77 window.
    """

    rsv_bits = _RSV1

    def __init__(
        self,
        *,
        server_no_context_takeover: bool = False,
        client_no_context_takeover: bool = False,
        server_max_window_bits: int = 15,
        client_max_window_bits: int = 15,
    ) -> None:
        self.server_no_context_takeover = server_no_context_takeover
        self.client_no_context_takeover = client_no_context_takeover
        # zlib refuses a raw deflate window of 8 bits; 9 reads every 8-bit stream.
        self._server_bits = max(9, server_max_window_bits)
        self._client_bits = max(9, client_max_window_bits)
        self._inflater = zlib.decompressobj(wbits=-self._server_bits)
        self._deflater: zlib._Compress | None = None

    def __repr__(self) -> str:
        return (
            f"PerMessageDeflate(server_no_context_takeover={self.server_no_context_takeover},"
            f" client_no_context_takeover={self.client_no_context_takeover},"
            f" server_max_window_bits={self._server_bits},"
            f" client_max_window_bits={self._client_bits})"
        )

    def decode(self, payload: bytes, *, fin: bool, max_size: int | None) -> bytes:
        """Inflate one frame of a compressed message, never producing more than
        ``max_size`` + 1 bytes (so a small frame cannot blow memory up).

        Raises:
            FrameError: 1009 past ``max_size``, 1002 for data that does not inflate.
        """
        if fin:
            payload += _EMPTY_BLOCK
        limit = 0 if max_size is None else max_size + 1
        try:
            data = self._inflater.decompress(payload, limit)
        except zlib.error:
            raise FrameError(1002, "permessage-deflate data does not inflate") from None
        if self._inflater.unconsumed_tail or (max_size is not None and len(data) > max_size):
            raise FrameError(1009, f"message over max_size ({max_size} bytes) once inflated")
        if fin and self.server_no_context_takeover:
            self._inflater = zlib.decompressobj(wbits=-self._server_bits)
        return data

    def encode(self, opcode: int, payload: bytes) -> tuple[int, bytes]:
        """Deflate one outgoing message (a whole message: the protocol never fragments).

        Every message is compressed, tiny ones too: RFC 7692 lets an endpoint send some
        uncompressed, but peers mishandle the mix (Autobahn's fuzzing server fails its
        cases 12.x.1 and 13.x.1 on an uncompressed 16-byte echo), as websockets and
        browsers compress every message once it is negotiated.
        """
        if opcode == OP_CONT:
            return 0, payload
        deflater = self._deflater
        if deflater is None or self.client_no_context_takeover:
            deflater = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED,
                                        -self._client_bits)
            self._deflater = deflater
        data = deflater.compress(payload) + deflater.flush(zlib.Z_SYNC_FLUSH)
        if data.endswith(_EMPTY_BLOCK):
            data = data[:-4]
        return _RSV1, data
