# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""Sans-I/O RFC 6455 frames for the client side: a parser for server frames and an encoder
for masked client frames.

The parser never touches a socket: the adapter feeds it the bytes it received and asks it
for whole messages. It is the hot path of the engine, so :meth:`FrameParser.parse` parses
every small unfragmented frame of a chunk in one loop without helper calls, and leaves the
rare cases (fragments, control frames, long lengths) to a slower method.
"""

from __future__ import annotations

import codecs
import os
import struct
import types
from collections.abc import Callable
from typing import Any, Final

from wsengine.types import Message, MessageType, is_sendable_close_code

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "Control",
    "FrameError",
    "FrameParser",
    "decode_close",
    "encode_close",
    "encode_frame",
    "mask_payload",
]

OP_CONT: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

#: A control frame the parser hands back for the adapter to act on: (opcode, payload).
Control = tuple[int, bytes]

_TEXT: Final = MessageType.TEXT
_BINARY: Final = MessageType.BINARY
_DATA_OPCODES: Final = frozenset({OP_CONT, OP_TEXT, OP_BINARY})
_CONTROL_OPCODES: Final = frozenset({OP_CLOSE, OP_PING, OP_PONG})
_MAX_CONTROL_PAYLOAD: Final = 125
_UNPACK_H = struct.Struct("!H").unpack_from
_UNPACK_Q = struct.Struct("!Q").unpack_from
_PACK_BBH = struct.Struct("!BBH").pack
_PACK_BBQ = struct.Struct("!BBQ").pack
_Utf8Decoder = codecs.getincrementaldecoder("utf-8")

# Message is a frozen slots dataclass: its __init__ goes through object.__setattr__ twice,
# which costs about 0.15 us more per message than filling the slots through their
# descriptors directly. Fall back to the slow way if the class ever stops using slots.
_new_message: Callable[[type[Message]], Message] = Message.__new__
_set_type: Callable[[Any, Any], None]
_set_data: Callable[[Any, Any], None]
if isinstance(Message.__dict__.get("type"), types.MemberDescriptorType) and isinstance(
    Message.__dict__.get("data"), types.MemberDescriptorType
):
    _set_type = Message.__dict__["type"].__set__
    _set_data = Message.__dict__["data"].__set__
else:  # pragma: no cover - only if types.Message changes shape

    def _set_type(message: Any, value: Any) -> None:
        object.__setattr__(message, "type", value)

    def _set_data(message: Any, value: Any) -> None:
        object.__setattr__(message, "data", value)


class FrameError(Exception):
    """The peer broke RFC 6455; the connection must be failed with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


def decode_close(payload: bytes) -> tuple[int, str]:
    """Return the ``(code, reason)`` of a received close frame's payload.

    An empty payload gives ``(1005, "")``, as RFC 6455 section 7.1.5 says to report it.

    Raises:
        FrameError: 1002 for a 1-byte payload or a code not valid to receive, 1007 for a
            reason that is not UTF-8.
    """
    if not payload:
        return 1005, ""
    if len(payload) == 1:
        raise FrameError(1002, "close frame with a 1-byte payload")
    code = (payload[0] << 8) | payload[1]
    if not is_sendable_close_code(code):
        raise FrameError(1002, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(1007, "close reason is not valid UTF-8") from None
    return code, reason


def mask_payload(mask: bytes, payload: bytes | bytearray | memoryview) -> bytes:
    """XOR ``payload`` with the 4-byte ``mask`` repeated (RFC 6455 section 5.3).

    One big-integer XOR over the whole payload runs at C speed; a byte loop would not.
    """
    length = len(payload)
    if not length:
        return b""
    key = (mask * ((length >> 2) + 1))[:length]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
        length, "little"
    )


def encode_frame(
    opcode: int, payload: bytes | bytearray | memoryview, mask: bytes | None = None
) -> bytes:
    """Return one final, masked client frame carrying ``payload``.

    Args:
        opcode: the frame's opcode (``OP_TEXT``, ``OP_BINARY``, ``OP_PING``...).
        payload: the unmasked payload.
        mask: the 4-byte masking key; a fresh random one when None (RFC 6455 section 10.3
            wants it unpredictable, hence ``os.urandom``).
    """
    if mask is None:
        mask = os.urandom(4)
    length = len(payload)
    first = 0x80 | opcode
    if length < 126:
        header = bytes((first, 0x80 | length))
    elif length < 65536:
        header = _PACK_BBH(first, 0x80 | 126, length)
    else:
        header = _PACK_BBQ(first, 0x80 | 127, length)
    return header + mask + mask_payload(mask, payload)


def encode_close(code: int | None, reason: str = "") -> bytes:
    """Return a close frame; ``code`` None gives an empty payload (no code, no reason).

    The caller checks that ``code`` is legal on the wire and that ``reason`` fits.
    """
    if code is None:
        return encode_frame(OP_CLOSE, b"")
    return encode_frame(OP_CLOSE, code.to_bytes(2, "big") + reason.encode("utf-8"))


class FrameParser:
    """Turn the bytes a server sends into whole messages and control frames.

    Feed it with :meth:`feed`, then call :meth:`parse` until it returns None and adds no
    message. After a close frame, everything is ignored (RFC 6455 section 5.5.1). After a
    :class:`FrameError` the parser is unusable: the connection must be failed.

    Not thread-safe: the adapter's read mutex serializes its users.

    Args:
        max_size: largest message payload accepted, in bytes; None for no limit. Checked
            from each frame header before its payload is buffered.
    """

    __slots__ = (
        "_acc",
        "_buf",
        "_decoder",
        "_fast_max",
        "_frag_opcode",
        "_frag_parts",
        "_frag_size",
        "_max_size",
        "_need",
        "_pos",
        "close",
    )

    def __init__(self, max_size: int | None = 2**20) -> None:
        self._max_size = max_size
        # Largest payload the fast path may take: it never needs a max_size check.
        self._fast_max = 125 if max_size is None else min(125, max_size)
        # Bytes received and not parsed yet are buf[pos:], unless a frame is incomplete
        # and longer than what buf held: then they sit in acc (and buf is consumed).
        self._buf: bytes = b""
        self._pos = 0
        self._acc = bytearray()
        # Bytes needed from pos before parsing can progress (so a 16 MiB frame arriving
        # in 64 KiB chunks is not re-parsed 256 times).
        self._need = 2
        # Opcode of the fragmented message in progress (0 when none), its parts so far,
        # their total size and, for text, the incremental decoder that validates them.
        self._frag_opcode = 0
        self._frag_parts = bytearray()  # the fragmented message so far
        self._frag_size = 0
        self._decoder: codecs.IncrementalDecoder | None = None
        #: ``(code, reason)`` of the peer's close frame once one was parsed, else None.
        self.close: tuple[int, str] | None = None

    @property
    def buffered(self) -> int:
        """Bytes received and not parsed yet."""
        return len(self._acc) or len(self._buf) - self._pos

    def feed(self, data: bytes) -> None:
        """Append bytes received from the server. Ignored once a close frame was parsed."""
        if self.close is not None:
            return
        acc = self._acc
        if acc:
            acc += data
            if len(acc) >= self._need:
                self._buf = bytes(acc)
                self._pos = 0
                acc.clear()
            return
        buf = self._buf
        pos = self._pos
        if pos >= len(buf):
            self._buf = data
            self._pos = 0
            return
        if len(buf) - pos + len(data) >= self._need:
            self._buf = buf[pos:] + data
        else:
            acc += memoryview(buf)[pos:]
            acc += data
            self._buf = b""
        self._pos = 0

    def has_frame(self) -> bool:
        """Tell whether :meth:`parse` can make progress without more bytes: a whole frame
        is buffered, or bytes it has not looked at yet (it stopped at its limit)."""
        if self._acc or self.close is not None:
            return False
        # parse() leaves need at the exact size of an incomplete frame, else at 2.
        return len(self._buf) - self._pos >= max(self._need, 2)

    def parse(self, out: list[Message], limit: int) -> Control | None:
        """Parse buffered frames, appending whole data messages to ``out``.

        Stops when ``out`` holds ``limit`` messages, when the buffer holds no whole frame,
        or right after a control frame, which it returns for the caller to act on (answer
        a ping, record a pong, reply to a close; a close is also kept in :attr:`close`).

        Raises:
            FrameError: the peer broke the protocol; messages appended before the bad
                frame are valid.
        """
        if self.close is not None or self._acc:
            return None
        buf = self._buf
        pos = self._pos
        end = len(buf)
        if end - pos < self._need:
            return None
        count = len(out)
        append = out.append
        new = _new_message
        set_type = _set_type
        set_data = _set_data
        text = _TEXT
        binary = _BINARY
        # The fast path takes small frames only while no fragmented message is open.
        fast_max = -1 if self._frag_opcode else self._fast_max
        need = 2
        try:
            while count < limit:
                # Past the end, indexing raises IndexError: cheaper than checking each time.
                first = buf[pos]
                length = buf[pos + 1]
                # One comparison sends masked frames (bit 7 set) and long ones to the slow
                # path; unfragmented small TEXT and BINARY frames are done inline.
                if length <= fast_max:
                    stop = pos + 2 + length
                    if first == 0x81:
                        if stop > end:
                            need = stop - pos
                            break
                        message = new(Message)
                        set_type(message, text)
                        set_data(message, buf[pos + 2 : stop].decode("utf-8"))
                        append(message)
                        count += 1
                        pos = stop
                        continue
                    if first == 0x82:
                        if stop > end:
                            need = stop - pos
                            break
                        message = new(Message)
                        set_type(message, binary)
                        set_data(message, buf[pos + 2 : stop])
                        append(message)
                        count += 1
                        pos = stop
                        continue
                stop, control = self._parse_frame(buf, pos, end, out)
                if stop < 0:
                    need = -stop
                    break
                pos = stop
                count = len(out)
                fast_max = -1 if self._frag_opcode else self._fast_max
                if control is not None:
                    return control
        except IndexError:
            # Fewer than 2 bytes left: _parse_frame never indexes past pos + 1 unchecked.
            need = 2
        except UnicodeDecodeError:
            raise FrameError(1007, "invalid UTF-8 in a text message") from None
        finally:
            self._pos = pos
            self._need = need
        return None

    def _parse_frame(
        self, buf: bytes, pos: int, end: int, out: list[Message]
    ) -> tuple[int, Control | None]:
        """Parse the frame at ``pos`` that the fast path declined.

        Returns:
            ``(position after the frame, control frame or None)``, or ``(-n, None)`` when
            ``n`` bytes from ``pos`` are needed and fewer are buffered.

        Raises:
            FrameError: the frame breaks the protocol; checked from the header alone, before
                the payload is buffered.
            UnicodeDecodeError: invalid UTF-8 in a text message.
        """
        first = buf[pos]
        second = buf[pos + 1]
        opcode = first & 0x0F
        fin = first & 0x80
        if first & 0x70:
            # No extension was negotiated, so no reserved bit may be set (section 5.2).
            raise FrameError(1002, "reserved bits set")
        if second & 0x80:
            raise FrameError(1002, "masked frame from the server")
        length = second & 0x7F
        start = pos + 2
        if opcode >= 8:
            if opcode not in _CONTROL_OPCODES:
                raise FrameError(1002, f"reserved opcode {opcode}")
            if not fin:
                raise FrameError(1002, "fragmented control frame")
            if length > _MAX_CONTROL_PAYLOAD:
                raise FrameError(1002, "control frame payload over 125 bytes")
        else:
            if opcode not in _DATA_OPCODES:
                raise FrameError(1002, f"reserved opcode {opcode}")
            if opcode == OP_CONT:
                if not self._frag_opcode:
                    raise FrameError(1002, "continuation frame without a message to continue")
            elif self._frag_opcode:
                raise FrameError(1002, "new data frame inside a fragmented message")
            if length == 126:
                if end - start < 2:
                    return -4, None
                length = _UNPACK_H(buf, start)[0]
                start += 2
            elif length == 127:
                if end - start < 8:
                    return -10, None
                length = _UNPACK_Q(buf, start)[0]
                if length >> 63:
                    raise FrameError(1002, "payload length with the most significant bit set")
                start += 8
            if self._max_size is not None and self._frag_size + length > self._max_size:
                raise FrameError(1009, f"message over max_size ({self._max_size} bytes)")
        stop = start + length
        if stop > end:
            return pos - stop, None
        payload = buf[start:stop]
        if opcode >= 8:
            if opcode == OP_CLOSE:
                self.close = decode_close(payload)
            return stop, (opcode, payload)
        if opcode == OP_CONT:
            self._frag_size += length
            if self._decoder is not None:
                # Validation only (fail fast): the text is decoded once, whole, at the end.
                self._decoder.decode(payload, bool(fin))
            # One buffer, not a list of parts: memory stays at the payload's size however
            # tiny (or empty) the fragments are.
            self._frag_parts += payload
            if fin:
                if self._frag_opcode == OP_TEXT:
                    message = Message(_TEXT, self._frag_parts.decode("utf-8"))
                else:
                    message = Message(_BINARY, bytes(self._frag_parts))
                out.append(message)
                self._frag_opcode = 0
                self._frag_parts = bytearray()
                self._frag_size = 0
                self._decoder = None
        elif fin:
            if opcode == OP_TEXT:
                out.append(Message(_TEXT, payload.decode("utf-8")))
            else:
                out.append(Message(_BINARY, payload))
        else:
            self._frag_opcode = opcode
            self._frag_size = length
            if opcode == OP_TEXT:
                # Validate each fragment as it comes (fail fast); the decoder keeps a
                # sequence split across fragments and rejects one left truncated at the end.
                self._decoder = _Utf8Decoder("strict")
                self._decoder.decode(payload, False)
            self._frag_parts = bytearray(payload)
        return stop, None
