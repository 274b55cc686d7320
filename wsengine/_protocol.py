# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""The client side of RFC 6455, sans I/O: the one place where the protocol's rules live.

:class:`ClientProtocol` takes the bytes the server sent (``receive_data``,
``receive_eof``), gives back whole data messages, answers pings and close frames with
frames to send (``data_to_send``), builds the frames for what the application sends, and
keeps the connection's state and the close handshake. It never touches a socket, a lock
or a clock: the socket driver (:mod:`wsengine.adapters._driver`) moves its bytes and
serializes its callers.

Below it, :class:`FrameParser` turns bytes into messages and control frames. It is the hot
path of the engine, so :meth:`FrameParser.parse` parses every small unfragmented frame of
a chunk in one loop without helper calls, and leaves the rare cases (fragments, control
frames, long lengths, extensions) to a slower method.

Extensions (RFC 6455 section 9) plug in as an :class:`Extension`, which transforms the
payload of data frames that carry its reserved bits (permessage-deflate sets RSV1).
"""

from __future__ import annotations

import abc
import codecs
import collections
import enum
import os
import struct
import types
from collections.abc import Callable, Iterator
from typing import Any, Final

from wsengine.errors import ConfigError, ConnectionClosedError, ProtocolError
from wsengine.types import (
    CloseMessage,
    Message,
    MessageType,
    is_sendable_close_code,
    truncate_close_reason,
)

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "ClientProtocol",
    "Control",
    "Extension",
    "FrameError",
    "FrameParser",
    "State",
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
#: Pongs queued at most: a peer that pings faster than it reads gets answers to its latest
#: pings only (RFC 6455 section 5.5.3 allows answering just the most recent one), so a
#: ping flood cannot grow the queue.
_MAX_PENDING_PONGS: Final = 16
#: Control frames one ``read_messages`` call acts on at most, so that a flood of pings
#: cannot keep one call (and the driver's reader) busy for long.
_CONTROL_BUDGET: Final = 64
_UNPACK_H = struct.Struct("!H").unpack_from
_UNPACK_Q = struct.Struct("!Q").unpack_from
_PACK_BBH = struct.Struct("!BBH").pack
_PACK_BBQ = struct.Struct("!BBQ").pack
_PACK_BB = struct.Struct("!BB").pack
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


# Masking keys come from a pool of os.urandom bytes read a few KiB at a time: one
# os.urandom(4) per frame costs as much as the rest of encoding a small frame. The keys stay
# unpredictable to the server (RFC 6455 section 10.3): each is os.urandom output, used
# once. The iterator is shared by every sending thread; ``next()`` on it is one C call,
# atomic under the GIL, so no two frames get the same key.
_MASK_POOL_BYTES: Final = 4096
_masks: Iterator[bytes] = iter(())
# Cuts a pool into its 4-byte keys in one C call.
_SPLIT_MASKS: Final = struct.Struct("4s" * (_MASK_POOL_BYTES // 4)).unpack


def _refill_masks() -> bytes:
    """Start a fresh pool of masking keys (4-byte strings) and return its first one."""
    global _masks
    _masks = iter(_SPLIT_MASKS(os.urandom(_MASK_POOL_BYTES)))
    return next(_masks)


# A forked child must not reuse the keys its parent will use.
os.register_at_fork(after_in_child=_refill_masks)

# The key repeated over ``n`` 32-bit words is ``key * _repunit(n)`` (1 in every word): one
# small-by-big multiplication instead of building the repeated key's bytes and converting
# them. Cached for payloads up to _REPUNIT_CACHE_WORDS words (at most ~128 KiB in all).
_REPUNIT_CACHE_WORDS: Final = 256
_repunits: dict[int, int] = {}


def _repunit(words: int) -> int:
    found = _repunits.get(words)
    if found is None:
        found = int.from_bytes(b"\x01\x00\x00\x00" * words, "little")
        if words <= _REPUNIT_CACHE_WORDS:
            _repunits[words] = found
    return found


def _mask_int(key: int, payload: bytes | bytearray | memoryview, length: int) -> bytes:
    """XOR ``payload`` (``length`` bytes, at least 1) with the little-endian 32-bit ``key``
    repeated: one big-integer XOR over the whole payload runs at C speed."""
    words = (length + 3) >> 2
    masked = (int.from_bytes(payload, "little") ^ key * _repunit(words)).to_bytes(
        words << 2, "little"
    )
    return masked if length & 3 == 0 else masked[:length]


def _mask_python(payload: bytes | bytearray | memoryview, mask: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``mask`` repeated, in pure Python."""
    length = len(payload)
    if not length:
        return b""
    return _mask_int(int.from_bytes(mask, "little"), payload, length)


def load_masker() -> None:
    """Pick the fastest masker installed, once per process (idempotent, cheap after).

    websockets' C ``apply_mask`` (present when the ``websockets`` extra is installed)
    masks 1 KiB in about 0.1 us against 2 us for the big-integer XOR. Looked up when the
    first connection's protocol is made (on the thread that dials), not at import
    (importing websockets costs about 20 ms, paid only by a program that connects) and
    never on a send: an import there would hold the import lock in a hot path.
    """
    global _apply_mask
    if _apply_mask is not _mask_unresolved:
        return
    try:
        from websockets.speedups import apply_mask
    except ImportError:
        _apply_mask = _mask_python
    else:
        _apply_mask = apply_mask


def _mask_unresolved(payload: bytes | bytearray | memoryview, mask: bytes) -> bytes:
    """Masking before :func:`load_masker` ran (encode_frame used on its own)."""
    load_masker()
    return _apply_mask(payload, mask)


# XOR a payload with a 4-byte mask repeated; resolved by load_masker().
_apply_mask: Callable[[bytes | bytearray | memoryview, bytes], bytes] = _mask_unresolved


def mask_payload(mask: bytes, payload: bytes | bytearray | memoryview) -> bytes:
    """XOR ``payload`` with the 4-byte ``mask`` repeated (RFC 6455 section 5.3)."""
    if not len(payload):
        return b""
    return _apply_mask(payload, mask)


def encode_frame(
    opcode: int,
    payload: bytes | bytearray | memoryview,
    mask: bytes | None = None,
    rsv: int = 0,
) -> bytes:
    """Return one final, masked client frame carrying ``payload``. Thread-safe.

    Args:
        opcode: the frame's opcode (``OP_TEXT``, ``OP_BINARY``, ``OP_PING``...).
        payload: the unmasked payload.
        mask: the 4-byte masking key; a fresh random one when None (from a pool of
            ``os.urandom`` bytes: RFC 6455 section 10.3 wants it unpredictable).
        rsv: reserved bits an extension sets (0x40 is RSV1).
    """
    if mask is None:
        mask = next(_masks, None) or _refill_masks()
    length = len(payload)
    first = 0x80 | rsv | opcode
    if length < 126:
        if not length:
            return _PACK_BB(first, 0x80) + mask
        return b"".join((_PACK_BB(first, 0x80 | length), mask, _apply_mask(payload, mask)))
    if length < 65536:
        header = _PACK_BBH(first, 0x80 | 126, length)
    else:
        header = _PACK_BBQ(first, 0x80 | 127, length)
    return b"".join((header, mask, _apply_mask(payload, mask)))


def encode_close(code: int | None, reason: str = "") -> bytes:
    """Return a close frame; ``code`` None gives an empty payload (no code, no reason).

    The caller checks that ``code`` is legal on the wire and that ``reason`` fits.
    """
    if code is None:
        return encode_frame(OP_CLOSE, b"")
    return encode_frame(OP_CLOSE, code.to_bytes(2, "big") + reason.encode("utf-8"))


class Extension(abc.ABC):
    """A negotiated extension: transforms the payload of data frames carrying its bits.

    Hook for :class:`ClientProtocol` (permessage-deflate is built on it). Frames without
    the extension's reserved bits pass untouched, so uncompressed traffic keeps the fast
    path. Continuation frames and control frames never carry reserved bits.
    """

    #: Reserved bits of the first header byte the extension uses (0x40 is RSV1).
    rsv_bits: int = 0

    @abc.abstractmethod
    def decode(self, payload: bytes, *, fin: bool, max_size: int | None) -> bytes:
        """Return a received frame's payload as the message carries it.

        Called for every frame of a message whose first frame carried ``rsv_bits``, in
        order; ``fin`` marks the message's last frame.

        Args:
            max_size: bytes the message may still grow by (None: no limit); past it the
                extension raises ``FrameError(1009, ...)`` without producing more, so
                memory stays bounded while decoding.

        Raises:
            FrameError: the payload cannot be decoded (1002 or 1007) or is too big (1009).
        """

    @abc.abstractmethod
    def encode(self, opcode: int, payload: bytes) -> tuple[int, bytes]:
        """Return ``(reserved bits, payload)`` for an outgoing data message."""


class FrameParser:
    """Turn the bytes a server sends into whole messages and control frames.

    Feed it with :meth:`feed`, then call :meth:`parse` until it returns None and adds no
    message. After a close frame, everything is ignored (RFC 6455 section 5.5.1). After a
    :class:`FrameError` the parser is unusable: the connection must be failed.

    Not thread-safe: the adapter's read mutex serializes its users.

    Args:
        max_size: largest message payload accepted, in bytes; None for no limit. Checked
            from each frame header before its payload is buffered, and by the extension
            while it decodes.
        extension: the negotiated extension, if any.
    """

    __slots__ = (
        "_acc",
        "_buf",
        "_decoder",
        "_extension",
        "_fast_max",
        "_fast_max16",
        "_frag_ext",
        "_frag_opcode",
        "_frag_parts",
        "_frag_size",
        "_max_size",
        "_need",
        "_pos",
        "close",
    )

    def __init__(
        self, max_size: int | None = 2**20, extension: Extension | None = None
    ) -> None:
        self._max_size = max_size
        self._extension = extension
        # True while the fragmented message in progress goes through the extension.
        self._frag_ext = False
        # Largest payload the fast path may take: it never needs a max_size check.
        self._fast_max = 125 if max_size is None else min(125, max_size)
        # Same for the frames with a 16-bit length (126..65535 bytes).
        self._fast_max16 = 65535 if max_size is None else min(65535, max_size)
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
            # One copy: a slice then a concatenation would copy the old part twice.
            self._buf = buf + data if not pos else b"".join((memoryview(buf)[pos:], data))
        else:
            acc += memoryview(buf)[pos:]
            acc += data
            self._buf = b""
        self._pos = 0

    def wanted(self) -> int:
        """Bytes still missing from the partly buffered frame :meth:`parse` stopped in (of
        its header only, until that is whole); 0 when no frame is partly buffered."""
        acc = self._acc
        have = len(acc) if acc else len(self._buf) - self._pos
        if not have or self.close is not None:
            return 0
        return max(self._need - have, 0)

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
        append = out.append
        new = _new_message
        set_type = _set_type
        set_data = _set_data
        text = _TEXT
        binary = _BINARY
        fast_max16 = self._fast_max16
        need = 2
        try:
            while True:
                # The fast path takes small frames only while no fragmented message is open.
                fast_max = -1 if self._frag_opcode else self._fast_max
                # A counted loop: cheaper per frame than comparing a count with limit.
                for _ in range(limit - len(out)):
                    # Past the end, indexing raises IndexError: cheaper than checking.
                    first = buf[pos]
                    length = buf[pos + 1]
                    # One comparison sends masked frames (bit 7 set) and long ones to the
                    # slow path; unfragmented small TEXT and BINARY frames are done inline.
                    if length <= fast_max:
                        stop = pos + 2 + length
                        if first == 0x81:
                            if stop > end:
                                need = stop - pos
                                return None
                            message = new(Message)
                            set_type(message, text)
                            set_data(message, buf[pos + 2 : stop].decode())
                            append(message)
                            pos = stop
                            continue
                        if first == 0x82:
                            if stop > end:
                                need = stop - pos
                                return None
                            message = new(Message)
                            set_type(message, binary)
                            set_data(message, buf[pos + 2 : stop])
                            append(message)
                            pos = stop
                            continue
                    elif length == 126 and fast_max >= 0 and (first == 0x81 or first == 0x82):
                        # A 16-bit length (126..65535 bytes): as common as small frames,
                        # and as simple, once its two length bytes are read.
                        start = pos + 4
                        if start > end:
                            need = 4
                            return None
                        length = (buf[pos + 2] << 8) | buf[pos + 3]
                        if length <= fast_max16:
                            stop = start + length
                            if stop > end:
                                need = stop - pos
                                return None
                            message = new(Message)
                            if first == 0x81:
                                set_type(message, text)
                                set_data(message, buf[start:stop].decode())
                            else:
                                set_type(message, binary)
                                set_data(message, buf[start:stop])
                            append(message)
                            pos = stop
                            continue
                    break  # any other frame: the slow path, below
                else:
                    return None  # limit messages in out
                stop, control = self._parse_frame(buf, pos, end, out)
                if stop < 0:
                    need = -stop
                    return None
                pos = stop
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
        rsv = first & 0x70
        if rsv:
            # Only a negotiated extension may set reserved bits, and only on the first
            # frame of a data message (RFC 6455 section 5.2, RFC 7692 section 6).
            extension = self._extension
            if (
                extension is None
                or rsv & ~extension.rsv_bits
                or opcode >= 8
                or opcode == OP_CONT
            ):
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
            if self._max_size is not None:
                if rsv or self._frag_ext:
                    # Compressed: the extension bounds the decoded size as it decodes; the
                    # frame itself may exceed it by deflate's overhead on data that does
                    # not compress (a few bytes per 16 KiB block).
                    too_big = length > self._max_size + (self._max_size >> 6) + 1024
                else:
                    too_big = self._frag_size + length > self._max_size
                if too_big:
                    raise FrameError(1009, f"message over max_size ({self._max_size} bytes)")
        stop = start + length
        if stop > end:
            return pos - stop, None
        if opcode == OP_TEXT and fin and not rsv:
            # Decoded in place: slicing a bytes copy of a long payload first costs a copy.
            with memoryview(buf) as view:
                out.append(Message(_TEXT, str(view[start:stop], "utf-8")))
            return stop, None
        payload = buf[start:stop]
        if opcode >= 8:
            if opcode == OP_CLOSE:
                self.close = decode_close(payload)
            return stop, (opcode, payload)
        if opcode == OP_CONT:
            if self._frag_ext:
                payload = self._decode_extension(payload, bool(fin))
            self._frag_size += len(payload)
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
                self._frag_ext = False
                self._decoder = None
            return stop, None
        if rsv:
            payload = self._decode_extension(payload, bool(fin))
        if fin:
            if opcode == OP_TEXT:
                out.append(Message(_TEXT, payload.decode("utf-8")))
            else:
                out.append(Message(_BINARY, payload))
        else:
            self._frag_opcode = opcode
            self._frag_ext = bool(rsv)
            self._frag_size = len(payload)
            if opcode == OP_TEXT:
                # Validate each fragment as it comes (fail fast); the decoder keeps a
                # sequence split across fragments and rejects one left truncated at the end.
                self._decoder = _Utf8Decoder("strict")
                self._decoder.decode(payload, False)
            self._frag_parts = bytearray(payload)
        return stop, None

    def _decode_extension(self, payload: bytes, fin: bool) -> bytes:
        """Run ``payload`` through the extension, within what ``max_size`` leaves."""
        extension = self._extension
        assert extension is not None
        left = None if self._max_size is None else self._max_size - self._frag_size
        decoded = extension.decode(payload, fin=fin, max_size=left)
        if left is not None and len(decoded) > left:
            raise FrameError(1009, f"message over max_size ({self._max_size} bytes)")
        return decoded


class State(enum.IntEnum):
    """Where a connection is in its life, after the opening handshake."""

    #: Data flows both ways.
    OPEN = 1
    #: A close frame was sent or received (or the connection was failed): no data frame
    #: may be sent any more; the driver finishes the close handshake, then closes TCP.
    CLOSING = 2
    #: The TCP connection ended (``receive_eof``).
    CLOSED = 3


class ClientProtocol:
    """RFC 6455 for one client connection, sans I/O.

    Bytes from the server go in through :meth:`receive_data` and :meth:`receive_eof`;
    :meth:`read_messages` returns the whole data messages and acts on control frames: a
    ping queues a pong, a close frame queues the reply, a protocol violation fails the
    connection (queues a close frame with 1002, 1007 or 1009 and sets :attr:`failure`).
    Frames to send come out of :meth:`data_to_send` (control frames: pongs, pings and the
    close frame) and of :meth:`send_text` / :meth:`send_binary` (data frames, returned to
    the caller, which writes them in the order it called them).

    Not thread-safe. The driver serializes the calls that change the state (receiving,
    ``send_ping``, ``send_close``, ``fail``, ``data_to_send``) under one mutex, and the
    data sends among themselves under another: those only read the state, and a close
    queued while a data frame is being built still goes out after it.

    Args:
        max_size: largest message accepted, in bytes (None: no limit); a larger one fails
            the connection with 1009, from its frame header (or while the extension
            decodes it), before its payload is buffered.
        extension: the extension negotiated in the opening handshake, if any.
    """

    __slots__ = (
        "_control",
        "_extension",
        "_parser",
        "_pongs",
        "_stopped",
        "close_rcvd",
        "close_sent",
        "failure",
        "pongs_received",
        "state",
    )

    def __init__(
        self, max_size: int | None = 2**20, extension: Extension | None = None
    ) -> None:
        self._parser = FrameParser(max_size, extension)
        self._extension = extension
        load_masker()
        self.state = State.OPEN
        #: The peer's close frame (code 1005 when it had no payload), once received.
        self.close_rcvd: CloseMessage | None = None
        #: The close frame queued to the peer, once there is one.
        self.close_sent: CloseMessage | None = None
        #: Set when this side failed the connection for a protocol violation: the driver
        #: sends the queued close frame, then closes TCP at once (RFC 6455 section 7.1.7).
        self.failure: ProtocolError | None = None
        #: Pongs received so far (the driver notes when this moves, for round trips).
        self.pongs_received = 0
        # Pongs for the latest pings not answered yet, oldest first; past the bound the
        # oldest is dropped, so a ping flood queues a few pongs, not one per ping.
        self._pongs: collections.deque[bytes] = collections.deque(maxlen=_MAX_PENDING_PONGS)
        # Other control frames queued, in order: pings, then at most one close frame.
        self._control: list[bytes] = []
        # The control frame (or the violation) read_data stopped at, parsed and not yet
        # acted on; read_messages acts on it first. Reader only.
        self._stopped: Control | FrameError | None = None

    # -- receiving ------------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Bytes received and not parsed yet."""
        return self._parser.buffered

    def wanted(self) -> int:
        """Bytes still missing from the frame being received, when its header told (else 0)."""
        return self._parser.wanted()

    def has_frame(self) -> bool:
        """Tell whether :meth:`read_messages` can progress without more bytes."""
        return self.state is State.OPEN and self._parser.has_frame()

    def receive_data(self, data: bytes) -> None:
        """Take bytes received from the server. Ignored once a close frame came or the
        connection was failed."""
        if self.failure is None:
            self._parser.feed(data)

    def receive_eof(self) -> None:
        """The server closed TCP (or it dropped): the connection is CLOSED."""
        self.state = State.CLOSED

    def read_messages(self, out: list[Message], limit: int) -> None:
        """Append up to ``limit`` whole data messages to ``out``, acting on control frames
        on the way. Stops early at a close frame, a protocol violation, or after 64
        control frames (:meth:`has_frame` then tells that more is buffered); messages
        received before a close or a violation are valid. Never raises for what the peer
        sent."""
        if self.failure is not None or self.close_rcvd is not None:
            return
        parser = self._parser
        budget = _CONTROL_BUDGET
        while budget:
            budget -= 1
            stopped = self._stopped
            if stopped is not None:
                # What read_data stopped at: acted on here, as if parsed just now.
                self._stopped = None
                if isinstance(stopped, FrameError):
                    self.fail(stopped.code, stopped.reason)
                    return
                control: Control | None = stopped
            else:
                try:
                    control = parser.parse(out, limit)
                except FrameError as error:
                    self.fail(error.code, error.reason)
                    return
            if control is None:
                return
            opcode, payload = control
            if opcode == OP_PING:
                if self.close_sent is None:
                    self._pongs.append(encode_frame(OP_PONG, payload))
            elif opcode == OP_PONG:
                self.pongs_received += 1
            else:
                self._receive_close()
                return

    def read_data(self, out: list[Message], limit: int) -> bool:
        """Parse like :meth:`read_messages`, but change nothing outside the parser: at a
        control frame or a protocol violation, keep it for the next :meth:`read_messages`
        call (which acts on it first) and return False.

        The driver calls this without its state mutex, since only the reader touches the
        parser; it returns True when there is nothing to act on (the common case: data
        frames only), else the driver calls :meth:`read_messages` under the mutex.
        """
        if self.failure is not None or self.close_rcvd is not None or self._stopped is not None:
            return False
        try:
            control = self._parser.parse(out, limit)
        except FrameError as error:
            self._stopped = error
            return False
        if control is None:
            return True
        self._stopped = control
        return False

    def discard_messages(self) -> None:
        """Parse and drop what is buffered (data after this side's close frame)."""
        discarded: list[Message] = []
        while self.failure is None and self.close_rcvd is None:
            self.read_messages(discarded, 1 << 30)
            discarded.clear()
            # A call that discarded nothing may still have stopped at its control-frame
            # budget (a ping flood before the peer's close): go on while whole frames wait.
            if not self._parser.has_frame():
                return

    def _receive_close(self) -> None:
        close = self._parser.close
        assert close is not None
        code, reason = close
        self.close_rcvd = CloseMessage(code, reason)
        if self.close_sent is None:
            # Echo the code; an empty close gets an empty reply: 1005 never goes on the wire.
            self._queue_close(None if code == 1005 else code, "", CloseMessage(code))
        self.state = max(self.state, State.CLOSING)

    # -- sending --------------------------------------------------------------------------

    def send_text(self, data: str) -> bytes:
        """Return the frame for a TEXT message.

        Raises:
            ConnectionClosedError: a close frame was sent already (no data may follow).
        """
        return self._data_frame(OP_TEXT, data.encode("utf-8"))

    def send_binary(self, data: bytes | bytearray | memoryview) -> bytes:
        """Return the frame for a BINARY message.

        Raises:
            ConnectionClosedError: a close frame was sent already (no data may follow).
        """
        return self._data_frame(OP_BINARY, data)

    def _data_frame(self, opcode: int, payload: bytes | bytearray | memoryview) -> bytes:
        if self.close_sent is not None or self.state is State.CLOSED:
            raise self.closed_error()
        extension = self._extension
        if extension is not None:
            rsv, encoded = extension.encode(opcode, bytes(payload))
            return encode_frame(opcode, encoded, rsv=rsv)
        return encode_frame(opcode, payload)

    def send_ping(self, payload: bytes = b"") -> None:
        """Queue a ping frame (see :meth:`data_to_send`): a ping is a control frame, so it
        goes out between data frames and never waits behind the application's sends.

        Raises:
            ValueError: ``payload`` is longer than 125 bytes.
            ConnectionClosedError: a close frame was sent already.
        """
        if len(payload) > _MAX_CONTROL_PAYLOAD:
            raise ValueError(f"ping payload is {len(payload)} bytes; 125 at most")
        if self.close_sent is not None or self.state is State.CLOSED:
            raise self.closed_error()
        self._control.append(encode_frame(OP_PING, payload))

    def send_close(self, code: int = 1000, reason: str = "") -> bool:
        """Queue a close frame (see :meth:`data_to_send`) unless one was queued already.

        Args:
            code: the close code; it must be legal on the wire.
            reason: cut to 123 bytes of UTF-8 at a character boundary; characters UTF-8
                cannot carry (lone surrogates) are sent as "?".

        Returns:
            True if this call queued it.

        Raises:
            ConfigError: ``code`` may not be sent on the wire.
        """
        if isinstance(code, bool) or not isinstance(code, int) or not is_sendable_close_code(code):
            raise ConfigError(f"close code {code!r} may not be sent on the wire")
        if self.close_sent is not None or self.state is State.CLOSED:
            return False
        # A str may hold lone surrogates, which UTF-8 cannot carry: send "?" for them
        # rather than fail the close (truncate_close_reason measures it the same way).
        reason = truncate_close_reason(reason.encode("utf-8", "replace").decode("utf-8"))
        self._queue_close(code, reason, CloseMessage(code, reason))
        self.state = State.CLOSING
        return True

    def fail(self, code: int, reason: str) -> None:
        """Fail the connection: queue a close frame with ``code`` (unless one was sent) and
        record :attr:`failure`; reads and writes then raise it."""
        if self.failure is not None:
            return
        self.failure = ProtocolError(code, reason)
        if self.close_sent is None and self.state is not State.CLOSED:
            self._queue_close(code, truncate_close_reason(reason), CloseMessage(code, reason))
        self.state = max(self.state, State.CLOSING)

    def _queue_close(self, code: int | None, reason: str, sent: CloseMessage) -> None:
        self._control.append(encode_close(code, reason))
        self.close_sent = sent

    def data_to_send(self) -> list[bytes]:
        """Return the control frames queued (pongs first, the close frame last) and
        forget them; the caller writes them in order, between data frames."""
        pongs = self._pongs
        if not pongs:
            frames = self._control
            if frames:
                self._control = []
            return frames
        frames = [*pongs, *self._control]
        pongs.clear()
        self._control = []
        return frames

    def has_data_to_send(self) -> bool:
        """Tell whether control frames are queued."""
        return bool(self._pongs) or bool(self._control)

    # -- state ----------------------------------------------------------------------------

    @property
    def handshake_done(self) -> bool:
        """True once close frames went both ways (TCP may be closed now)."""
        return self.close_sent is not None and self.close_rcvd is not None

    def closed_error(self) -> ConnectionClosedError:
        """A fresh error saying why the connection is closed (or closing), for reads and
        writes to raise: the failure, else the peer's close, else ours, else 1006."""
        failure = self.failure
        if failure is not None:
            return ProtocolError(failure.code, failure.reason)
        close = self.close_rcvd or self.close_sent
        if close is not None:
            return ConnectionClosedError(close.code, close.reason)
        return ConnectionClosedError(1006, "connection closed without a close frame")
