# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""The one socket driver: moves a connection's bytes between its socket and its protocol.

After the opening handshake every shipped adapter hands its socket to a
:class:`SocketDriver`, the only code that touches it: non-blocking reads and writes,
``poll`` plus a wake-up socket pair, the read, wait, send and state mutexes, the close
handshake's timing and the teardown. The rules of the protocol (framing, UTF-8, close
codes, what may be sent when) all live in :class:`~wsengine._protocol.ClientProtocol`.

Two rules keep a busy connection alive:

- Reading never waits for writing. The reader queues pongs and close replies in the
  protocol and sends them only if the send turn is free; otherwise the thread holding
  the turn sends them after its data frame. A writer blocked on a full TCP window cannot
  stop the reader, so the peer, which is being read, can drain the window.
- Control frames never wait behind the application: pings and pongs are queued, not
  written under a lock, so the keepalive goes on judging the peer while a send is
  blocked, and a dead peer ends that send with ``ConnectionClosedError``.

:class:`DrivenAdapter` is the base of the shipped adapters: it turns one handshake (the
subclass's ``_handshake``) into a driven connection, follows redirects with the shared
policy, and lets ``abort()`` cut a dial in progress.
"""

from __future__ import annotations

import collections
import contextlib
import math
import select
import socket
import ssl
import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from wsengine._deflate import EXTENSION_NAME, compression_offer, negotiate
from wsengine._protocol import OP_BINARY, OP_TEXT, ClientProtocol, Extension, State, encode_frame
from wsengine.adapters._dial import (
    DialAborted,
    DialGuard,
    check_response,
    extensions_answer,
    follow_redirects,
)
from wsengine.adapters.base import ConnectionAdapter
from wsengine.errors import ConfigError, ConnectionClosedError
from wsengine.types import HandshakeResponse, Message, is_sendable_close_code

__all__ = ["DrivenAdapter", "Handshake", "SocketDriver"]

#: Bytes one socket read asks for, unless a frame being received needs more.
_RECV_SIZE: Final = 65536
#: Socket reads of plain connections go through one of a few shared buffers this big
#: (``recv_into`` then one copy out): on loopback TCP a 256 KiB read costs about half as
#: much per byte as a 64 KiB ``recv``, and no connection keeps an idle buffer.
_POOLED_RECV_SIZE: Final = 262144
_POOLED_RECV_BUFFERS: Final = 4
# The shared read buffers not in use. pop() and append() are atomic under the GIL: a
# reader takes one for one recv_into and the copy out, then puts it back; more readers at
# once allocate more, of which at most _POOLED_RECV_BUFFERS are kept.
_recv_views: list[memoryview] = []
#: Most one socket read asks for, however big the frame being received.
_MAX_RECV_SIZE: Final = 1 << 24
#: Rounds (one socket read, or one parse of at most the protocol's control-frame budget)
#: that one non-blocking ``read_available`` makes at most: a peer that floods control
#: frames, which produce no message, cannot hold the reader (and so the engine's pause
#: lock) for more than about a millisecond.
_MAX_ROUNDS_PER_PASS: Final = 8
# A thread waiting on the socket wakes this often to see whether teardown began (the
# shutdown normally wakes it at once; this is the safety net).
_WAIT_SLICE: Final = 0.1
# Longest wait for the send turn when the reader must send the close frame of a failed
# connection: a writer stuck on a peer that does not read must not hold the reader.
_FAIL_SEND_TIMEOUT: Final = 1.0
# Longest wait, in teardown, for readers and writers (already woken) to leave the socket
# before its file descriptor is closed under them.
_TEARDOWN_GRACE: Final = 2.0
_POLLIN: Final = select.POLLIN
_POLLOUT: Final = select.POLLOUT
_OPEN: Final = State.OPEN


def _poll_ms(seconds: float | None) -> int | None:
    """A wait in seconds as poll()'s milliseconds, rounded up (no busy loop)."""
    if seconds is None:
        return None
    return max(0, math.ceil(seconds * 1000))


def _remaining(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (None: no deadline), at least 0."""
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())


_BYTES_LIKE: Final = (bytes, bytearray, memoryview)
# Largest message (in characters or bytes) that goes through group commit.
_BATCH_MAX_BYTES: Final = 65536
# Rounds of queued frames a thread that ended its own send writes for others before it
# hands the turn on: bounded, so that a writer is not kept writing for others for ever.
_SERVE_ROUNDS: Final = 4
# Where a queued frame stands (see SocketDriver.write); changed under the queue lock.
_QUEUED: Final = "queued"  # in the queue, nothing of it sent
_TAKEN: Final = "taken"  # in a holder's non-blocking send right now
_SENT: Final = "sent"  # all of it reached the kernel
_TURN: Final = "turn"  # its writer now holds the send turn (``partial``: its rest pending)
_FAILED: Final = "failed"  # the connection dropped: ``error`` says why
_EXPIRED: Final = "expired"  # its writer timed out while it was taken; nothing of it sent


class _Waiter:
    """A writer's frame queued for the send turn's holder to write."""

    __slots__ = ("error", "expired", "frame", "partial", "signal", "state")

    def __init__(self, frame: bytes) -> None:
        self.frame = frame
        self.state = _QUEUED
        self.partial = False
        self.expired = False
        self.error: ConnectionClosedError | None = None
        # Held from birth; released once by whoever settles the frame or hands the turn
        # over; the writer waits on it (bounded by its timeout, then settles under the
        # queue lock). Ends with the write.
        self.signal = threading.Lock()
        self.signal.acquire()


def _ssl_pending(sock: socket.socket) -> bool:
    """Tell whether the TLS layer holds decrypted bytes that poll() cannot see."""
    try:
        return bool(sock.pending())  # type: ignore[attr-defined]
    except (OSError, ValueError, AttributeError):
        return False


class SocketDriver:
    """One open connection: its socket, driven by its :class:`ClientProtocol`.

    Safe for one reader (``read``, ``read_available``, ``wait_readable``) plus any number
    of writers (``write``, ``ping``, ``close``, ``abort``). Made by a dial, used until
    torn down, never reused.

    Args:
        sock: the connected socket (TLS-wrapped for wss://), handshake done.
        protocol: the connection's protocol.
        leftover: bytes received after the handshake's answer, fed to the protocol first.
    """

    def __init__(
        self, sock: socket.socket, protocol: ClientProtocol, leftover: bytes = b""
    ) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._protocol = protocol
        self._is_ssl = isinstance(sock, ssl.SSLSocket)
        # The one thread reading (read, read_available, close awaiting the peer's close)
        # holds it; other readers wait on it; teardown takes it (bounded) before closing
        # the socket. Order: read, wait, send, state.
        self._read_mutex = threading.Lock()
        # Held by wait_readable around its poll, so teardown does not close the polled fds
        # under it; teardown waits for it (bounded) after waking the poller.
        self._wait_mutex = threading.Lock()
        # The send turn: held by the one thread moving bytes out (a writer for its frame
        # and the control frames queued, or anyone flushing control frames without
        # waiting). Writers wait on it; the reader only tries it. A holder blocked on a
        # full window lets go when teardown shuts the socket down.
        self._send_mutex = threading.Lock()
        # Serializes the calls into the TLS object (SSL_read, SSL_write, SSL_pending) of a
        # wss:// connection: OpenSSL forbids using one SSL object from two threads at once
        # (a send racing the first read, which processes TLS 1.3 session tickets, lost the
        # sent record). Held only around one non-blocking call, never while waiting, so
        # reading still never waits for a blocked write. Plain sockets skip it.
        self._tls_mutex = threading.Lock()
        # Guards the protocol's state and its queue of control frames, and _torn_down;
        # held for a few statements, never during I/O.
        self._state_mutex = threading.Lock()
        # The rest of a frame partly written: finished first by the next send turn.
        self._pending: memoryview | None = None
        # Group commit (plain sockets without extension; see write): frames of writers
        # that found the send turn taken, oldest first. Writers append and wait; the turn's
        # holder takes them all into its next send, or hands the turn to the first one;
        # emptied as the writers are served, fail or time out.
        self._batching = not self._is_ssl and protocol._extension is None
        # Largest message write() encodes outside the turn: -1 when it never does (TLS,
        # extension), so one comparison per send picks the path.
        self._batch_max = _BATCH_MAX_BYTES if self._batching else -1
        # The socket's send, bound once: the send path calls it per message.
        self._sock_send = sock.send
        self._queue: collections.deque[_Waiter] = collections.deque()
        # Guards _queue and the state of the waiters in it; held for a few statements by
        # writers and the turn's holder, never during I/O.
        self._queue_lock = threading.Lock()
        self._torn_down = False
        # Why the connection ended without a close frame, for its 1006.
        self._drop_reason = "connection closed by the peer without a close frame"
        self.last_received = time.monotonic()
        #: ``time.monotonic()`` of the last pong received (0.0 before any), for RTT.
        self.last_pong = 0.0
        # Woken by wake_reader() and by teardown; drained by wait_readable; both closed by
        # teardown.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        # One poll object per waiting role: poll() must not run concurrently on one object.
        self._read_poll = select.poll()
        self._read_poll.register(sock, _POLLIN)
        self._wait_poll = select.poll()
        self._wait_poll.register(sock, _POLLIN)
        self._wait_poll.register(self._wake_r, _POLLIN)
        self._wait_events = _POLLIN
        self._send_poll = select.poll()
        if leftover:
            protocol.receive_data(leftover)

    # -- reading --------------------------------------------------------------------------

    def read(self, timeout: float | None) -> Message | None:
        """Return the next data message, or None when ``timeout`` passes first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._read_mutex.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            return None
        try:
            out: list[Message] = []
            self._read_into(out, 1, deadline, True)
            if self._protocol.has_frame():
                # Frames left buffered: a wait_readable polling the socket would miss them.
                self.wake_reader()
            return out[0] if out else None
        finally:
            self._read_mutex.release()

    def read_available(self, max_messages: int) -> list[Message]:
        """Return up to ``max_messages`` messages without waiting for the network; the
        pass makes at most a bounded number of socket reads, so it may return ``[]``."""
        out: list[Message] = []
        with self._read_mutex:
            # The common case first, as _read_into then _parse would do it: data frames
            # already buffered, nothing to act on (a call per layer is a tenth of a batch).
            protocol = self._protocol
            if (protocol.state is State.OPEN and not self._torn_down
                    and protocol.read_data(out, max_messages) and out):
                if protocol._pongs or protocol._control:  # has_data_to_send(), inline
                    self._kick()
                return out
            self._read_into(out, max_messages, None, False)
        return out

    def _read_into(
        self, out: list[Message], limit: int, deadline: float | None, blocking: bool
    ) -> None:
        """Fill ``out`` with up to ``limit`` messages; the read mutex must be held.

        Non-blocking: returns when no whole message is buffered and the socket has no
        data, or after a bounded number of reads. Blocking: waits until ``deadline``.

        Raises:
            ConnectionClosedError: the connection is closed or closing and ``out`` is empty
                (messages parsed before a close or an error go out first).
        """
        assert self._read_mutex.locked()
        protocol = self._protocol
        rounds = 0
        remaining: float | None = None
        while True:
            if protocol.state is not State.OPEN or self._torn_down:
                if out:
                    return
                raise self._closed()
            self._parse(out, limit)
            if out:
                return
            if protocol.state is not State.OPEN:
                continue
            rounds += 1
            if blocking:
                remaining = _remaining(deadline)
                if remaining is not None and remaining <= 0:
                    return
            elif rounds > _MAX_ROUNDS_PER_PASS:
                return
            if protocol.has_frame():
                continue  # the parse stopped at its control-frame budget
            received = self._recv_once()
            if received > 0:
                continue
            if received < 0:
                self._lost()
                continue
            if not blocking:
                return
            if self._is_ssl and self._tls_pending():
                continue
            self._wait_socket(remaining)

    def _wait_socket(self, timeout: float | None) -> None:
        """Wait (read mutex held) until the socket is readable or ``timeout`` passes; while
        control frames wait to go out and the send turn is free, wait for room too and
        send them, so that a reader by hand answers pings even on a full window."""
        events = _POLLIN
        if (
            self._pending is not None or self._protocol.has_data_to_send()
        ) and not self._send_mutex.locked():
            events |= _POLLOUT
        self._read_poll.modify(self._sock, events)
        ready = self._read_poll.poll(_poll_ms(timeout))
        if events & _POLLOUT and any(event & _POLLOUT for _, event in ready):
            self._kick()

    def _parse(self, out: list[Message], limit: int) -> None:
        """Parse what is buffered into ``out``; send what the protocol queued (pongs, a
        close reply) if the send turn is free; tear down a failed connection."""
        protocol = self._protocol
        # Data frames only change the parser, which only the reader (us) touches: no state
        # mutex for them. A control frame or a violation is acted on under it, below.
        if protocol.read_data(out, limit):
            if protocol.has_data_to_send():
                self._kick()
            return
        pongs = protocol.pongs_received
        with self._state_mutex:
            protocol.read_messages(out, limit)
            queued = protocol.has_data_to_send()
        if protocol.pongs_received != pongs:
            self.last_pong = time.monotonic()
        if protocol.failure is not None:
            self._send_close_then_teardown()
        elif queued:
            self._kick()

    def _recv_once(self) -> int:
        """Read once from the socket without blocking; the read mutex must be held.

        Returns:
            The number of bytes given to the protocol, 0 if none were available, -1 when
            the connection ended (EOF or a socket error, described in ``_drop_reason``).
        """
        if self._torn_down:
            return -1
        # Plain sockets read into one of the shared buffers and copy out once (no idle
        # buffer per connection); TLS and frames bigger than a shared buffer use recv(n).
        # While a frame is partly buffered, read up to its end only: joining the part
        # buffered with a whole chunk would copy the chunk once more.
        protocol = self._protocol
        want = protocol.wanted()
        try:
            if self._is_ssl:
                size = min(want, _MAX_RECV_SIZE) if want else _RECV_SIZE
                with self._tls_mutex:
                    data = self._sock.recv(size)
            elif want > _POOLED_RECV_SIZE:
                data = self._sock.recv(min(want, _MAX_RECV_SIZE))
            else:
                try:
                    view = _recv_views.pop()
                except IndexError:
                    view = memoryview(bytearray(_POOLED_RECV_SIZE))
                try:
                    data = view[: self._sock.recv_into(view, want or _POOLED_RECV_SIZE)].tobytes()
                finally:
                    if len(_recv_views) < _POOLED_RECV_BUFFERS:
                        _recv_views.append(view)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return 0
        except (OSError, ValueError) as error:
            # ECONNRESET, SSLEOFError, SSLZeroReturnError, EBADF after abort()...: all mean
            # the connection is gone (1006).
            self._drop_reason = f"connection lost ({type(error).__name__})"
            return -1
        if not data:
            return -1
        self.last_received = time.monotonic()
        protocol.receive_data(data)
        return len(data)

    def _lost(self) -> None:
        """The TCP connection ended: tell the protocol and release the socket."""
        with self._state_mutex:
            self._protocol.receive_eof()
        self._teardown(holding_read=True)

    def wait_readable(self, timeout: float | None) -> bool:
        """Block until data may be read, ``timeout`` passes or :meth:`wake_reader` runs.

        While control frames wait to go out and nobody holds the send turn, it also waits
        for the socket to take them, and sends them.

        Returns:
            True when a whole frame is buffered, the socket is readable, errored or hung
            up, or the connection is closed (so ``read_available`` raises); False on
            timeout or when woken by ``wake_reader``.
        """
        protocol = self._protocol
        if self._torn_down or protocol.state is not State.OPEN or protocol.has_frame():
            return True
        if self._is_ssl and self._tls_pending():
            return True
        wait_ms = _poll_ms(timeout)
        if not self._wait_mutex.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            return False
        try:
            if self._torn_down:
                return True
            # Watch for room to send only while nobody holds the send turn: a holder sends
            # what is queued when its turn ends.
            sending = (
                self._pending is not None or protocol.has_data_to_send()
            ) and not self._send_mutex.locked()
            events = _POLLIN | _POLLOUT if sending else _POLLIN
            if events != self._wait_events:
                self._wait_poll.modify(self._sock, events)
                self._wait_events = events
            ready = False
            writable = False
            wake_fd = self._wake_r.fileno()
            for fd, event in self._wait_poll.poll(wait_ms):
                if fd == wake_fd:
                    self._drain_wake()
                elif event & ~_POLLOUT:
                    ready = True
                else:
                    writable = True
            if writable:
                self._kick()
                # Not data: return so the caller looks again (with fresh events).
                ready = True
            return ready
        finally:
            self._wait_mutex.release()

    def wake_reader(self) -> None:
        """Make a :meth:`wait_readable` blocked in another thread return now."""
        # BlockingIOError: a wake-up is pending already. Other errors: torn down.
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def has_pending_data(self) -> bool:
        """Tell whether bytes from the peer wait on the socket, not yet received (bytes of
        a partial frame already buffered do not count: a peer that stops mid-frame is as
        dead as a silent one)."""
        if self._torn_down:
            return False
        sock = self._sock
        if self._is_ssl and self._tls_pending():
            return True
        poller = select.poll()
        try:
            poller.register(sock, _POLLIN)
        except (OSError, ValueError):
            return False
        return bool(poller.poll(0))

    def _drain_wake(self) -> None:
        """Empty the wake-up socket; the wait mutex must be held."""
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass

    # -- writing --------------------------------------------------------------------------

    def write(
        self, data: str | bytes | bytearray | memoryview, timeout: float | None = None
    ) -> None:
        """Send one message: TEXT for ``str``, BINARY for bytes-like. Blocks until the
        frame is handed to the kernel, at most ``timeout`` seconds (None: no limit);
        teardown from another thread ends the wait. Thread-safe.

        Group commit: a writer that finds the send turn taken queues its encoded frame and
        waits; the turn's holder writes every queued frame with its own in one
        ``sock.send``. Each writer still returns only once its own frame reached the
        kernel (or raises its error), so frames of one thread keep their order and no two
        frames interleave.

        Raises:
            TimeoutError: ``timeout`` passed. If none of the frame had gone out (and no
                compression context moved), the connection is untouched; otherwise it is
                torn down (a partial frame cannot be taken back): readers then see 1006.
            ConnectionClosedError: the connection is closed.
        """
        # Encoded outside the send turn (masking is most of the work), so that waiting
        # writers encode while the holder is in the kernel. Without an extension, encoding
        # depends on nothing but the data; the check that no close frame went before it is
        # made under the turn, by whoever writes it. Large frames gain nothing from
        # batching; encoded under the turn, as before, they keep their place ahead of
        # control frames queued meanwhile.
        # type() is first: one identity test for the common bytes, before isinstance.
        if type(data) is bytes:
            if len(data) > self._batch_max:
                self._write_serial(data, timeout)
                return
            frame = encode_frame(OP_BINARY, data)
        elif isinstance(data, str):
            if len(data) > self._batch_max:
                self._write_serial(data, timeout)
                return
            frame = encode_frame(OP_TEXT, data.encode("utf-8"))
        elif isinstance(data, _BYTES_LIKE):
            if len(data) > self._batch_max:
                self._write_serial(data, timeout)
                return
            frame = encode_frame(OP_BINARY, data)
        else:
            raise TypeError(f"data must be str or bytes, not {type(data).__name__}")
        if self._torn_down:
            raise self._closed()
        deadline = None if timeout is None else time.monotonic() + timeout
        # acquire(False), not acquire(blocking=False): a keyword costs a C method ~80 ns.
        if self._send_mutex.acquire(False):
            protocol = self._protocol
            # ``_pongs``/``_control`` are protocol.has_data_to_send(), read inline: this
            # runs once per message sent, and a method call costs as much as the rest.
            if (
                self._pending is None
                and not self._queue
                and protocol.close_sent is None
                and protocol.state is _OPEN
                and not protocol._pongs
                and not protocol._control
            ):
                # The common case, kept short: nothing queued, nothing before our frame.
                try:
                    sent = self._sock_send(frame)
                except BlockingIOError:
                    sent = 0
                except BaseException as error:
                    try:
                        if isinstance(error, OSError | ValueError):
                            self._write_failed(error)
                            raise self._closed() from None
                        raise
                    finally:
                        self._release_send_turn()
                if sent == len(frame):
                    self._send_mutex.release()
                    if self._queue or protocol._pongs or protocol._control:
                        self._after_release()
                    return
                self._lead(frame, deadline, sent)
                return
            self._lead(frame, deadline)
            return
        waiter = _Waiter(frame)
        with self._queue_lock:
            self._queue.append(waiter)
        # Queue first, then try the turn again: a holder that let go after finding the
        # queue empty is then seen here (see _release_send_turn), so no frame is stranded.
        if self._send_mutex.acquire(False):
            with self._queue_lock:
                state = waiter.state
                if state is _QUEUED:
                    self._queue.remove(waiter)
            if state is _QUEUED:
                self._lead(frame, deadline)
                return
            # A holder wrote (or failed) it between our two tries.
            self._release_send_turn()
            self._outcome(waiter)
            return
        self._await(waiter, deadline)

    def _await(self, waiter: _Waiter, deadline: float | None) -> None:
        """Wait (not holding the turn) until a holder wrote ``waiter``'s frame, failed it,
        or handed this thread the turn; honour ``deadline`` while the frame is queued."""
        signal = waiter.signal
        if deadline is None:
            signal.acquire()
        elif not signal.acquire(timeout=max(0.0, deadline - time.monotonic())):
            with self._queue_lock:
                state = waiter.state
                if state is _QUEUED:
                    self._queue.remove(waiter)
                    raise TimeoutError("timed out waiting for another send to finish")
                if state is _TAKEN:
                    # In a holder's non-blocking send right now: it settles the frame at
                    # once, as sent, partly sent (this thread gets the turn) or not sent.
                    waiter.expired = True
            signal.acquire()
        if waiter.state is _TURN:
            if waiter.partial:
                self._finish_partial(waiter, deadline)
            else:
                self._lead(waiter.frame, deadline)
            return
        self._outcome(waiter)

    @staticmethod
    def _outcome(waiter: _Waiter) -> None:
        """Return or raise as the holder settled ``waiter``'s frame."""
        state = waiter.state
        if state is _SENT:
            return
        if state is _EXPIRED:
            raise TimeoutError("timed out waiting for another send to finish")
        assert state is _FAILED and waiter.error is not None
        raise waiter.error

    def _lead(self, frame: bytes, deadline: float | None, sent: int = -1) -> None:
        """Write ``frame``, and the frames queued meanwhile, holding the send turn; then
        end the turn (handing it to a waiter if frames are left). ``sent``: bytes of
        ``frame`` already written by the caller under this turn (-1: none tried)."""
        protocol = self._protocol
        handoff: _Waiter | None = None
        failed = False
        try:
            if sent < 0:
                if self._torn_down:
                    raise self._closed()
                # Control frames (and a control frame's rest) queued before this message
                # go first; a close frame among them refuses the data frame below. A
                # timeout here leaves nothing of ours half-sent.
                if self._pending is not None or protocol.has_data_to_send():
                    self._flush(deadline, blocking=True)
                if protocol.close_sent is not None or protocol.state is State.CLOSED:
                    raise protocol.closed_error()
                if self._queue:
                    sent, handoff = self._send_batch(frame)
                    sent = min(sent, len(frame))
                else:
                    sent = self._send_some(frame)
            if sent < len(frame):
                # The socket would block: the queued frames went back to the queue and go
                # after ours (to the next holder); ours goes now, waiting for room.
                self._pending = memoryview(frame)[sent:]
                try:
                    self._flush(deadline, blocking=True, control=False)
                except TimeoutError:
                    pending = self._pending
                    if pending is not None and len(pending) == len(frame):
                        self._pending = None  # not one byte went: as if never sent
                    else:
                        failed = True  # a partial frame: the stream cannot go on
                    raise
            elif handoff is None and self._queue:
                # Frames queued while we were in the kernel: this running thread writes
                # them, rather than leave the socket idle while a waiter wakes up.
                handoff = self._serve_queue()
            if handoff is None and protocol.has_data_to_send():
                # Pongs queued meanwhile go now if the socket takes them at once; else the
                # next send turn, or the reader's wait, sends them.
                self._flush(None, blocking=False)
        finally:
            self._release_send_turn(handoff)
            if failed:
                self._drop_reason = "a send timed out with its frame partly written"
                self._teardown()

    def _finish_partial(self, waiter: _Waiter, deadline: float | None) -> None:
        """Holding the turn handed over with this thread's frame partly written (its rest
        in ``_pending``): write the rest by ``deadline``, or fail the connection."""
        failed = False
        try:
            try:
                self._flush(deadline, blocking=True, control=False)
            except TimeoutError:
                failed = True
                raise
            if self._protocol.has_data_to_send():
                self._flush(None, blocking=False)
        finally:
            self._release_send_turn()
            if failed:
                self._drop_reason = "a send timed out with its frame partly written"
                self._teardown()

    def _serve_queue(self) -> _Waiter | None:
        """Write queued frames (turn held, our own frame done) while the socket takes them
        at once, for a bounded number of rounds; return the waiter to hand the turn to
        (one whose frame went partly), if any. Frames left stay queued.

        Raises:
            ConnectionClosedError: the connection dropped (the frames taken failed).
        """
        protocol = self._protocol
        for _ in range(_SERVE_ROUNDS):
            if (
                not self._queue
                or self._pending is not None
                or self._torn_down
                or protocol.close_sent is not None
                or protocol.state is State.CLOSED
            ):
                # Nothing to do, or a case the waiter's own _lead handles (it raises or
                # finishes a control frame first).
                return None
            sent, handoff = self._send_batch(b"")
            if handoff is not None or not sent:
                return handoff
        return None

    def _send_batch(self, frame: bytes) -> tuple[int, _Waiter | None]:
        """Write ``frame`` and every queued frame in one non-blocking send; the turn must
        be held and ``_pending`` empty. Settle every queued frame: sent, partly sent (its
        rest becomes ``_pending`` and its writer gets the turn: returned), or not sent
        (back to the front of the queue, unless its writer gave up).

        Returns:
            (bytes sent in all, the waiter to hand the turn to or None).

        Raises:
            ConnectionClosedError: the connection dropped (every queued frame fails).
        """
        with self._queue_lock:
            batch = list(self._queue)
            self._queue.clear()
            for waiter in batch:
                waiter.state = _TAKEN
        buffer = b"".join([frame, *[waiter.frame for waiter in batch]])
        wake: list[_Waiter] = []
        handoff: _Waiter | None = None
        try:
            sent = self._send_some(buffer)
        except BaseException as error:
            with self._queue_lock:
                for waiter in batch:
                    if isinstance(error, ConnectionClosedError):
                        waiter.state = _FAILED
                        waiter.error = self._closed()
                        wake.append(waiter)
                    else:
                        waiter.state = _QUEUED  # send() raised: nothing went
                self._queue.extendleft(reversed([w for w in batch if w.state is _QUEUED]))
            for waiter in wake:
                waiter.signal.release()
            raise
        offset = len(frame)
        requeue: list[_Waiter] = []
        with self._queue_lock:
            for waiter in batch:
                end = offset + len(waiter.frame)
                if sent >= end:
                    waiter.state = _SENT
                    wake.append(waiter)
                elif sent > offset:
                    self._pending = memoryview(waiter.frame)[sent - offset :]
                    waiter.state = _TURN
                    waiter.partial = True
                    handoff = waiter
                elif waiter.expired:
                    waiter.state = _EXPIRED
                    wake.append(waiter)
                else:
                    waiter.state = _QUEUED
                    requeue.append(waiter)
                offset = end
            if requeue:
                self._queue.extendleft(reversed(requeue))
        for waiter in wake:
            waiter.signal.release()
        return sent, handoff

    def _send_some(self, data: bytes) -> int:
        """Write what the socket takes of ``data`` now (plain sockets only); return the
        byte count (0 if it would block).

        Raises:
            ConnectionClosedError: the connection dropped.
        """
        try:
            return self._sock.send(data)
        except BlockingIOError:
            return 0
        except (OSError, ValueError) as error:
            self._write_failed(error)
            raise self._closed() from None

    def _write_serial(
        self, data: str | bytes | bytearray | memoryview, timeout: float | None
    ) -> None:
        """``write`` for TLS sockets and negotiated extensions: one writer at a time,
        encoding under the turn (a compressor's context must see frames in the order they
        go out; a TLS write that would block must be retried with the same bytes, so
        frames cannot be regrouped)."""
        if isinstance(data, str):
            build = self._protocol.send_text
        elif isinstance(data, bytes | bytearray | memoryview):
            build = self._protocol.send_binary  # type: ignore[assignment]
        else:
            raise TypeError(f"data must be str or bytes, not {type(data).__name__}")
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._send_mutex.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            raise TimeoutError("timed out waiting for another send to finish")
        frame_size = 0
        failed = False
        try:
            if self._torn_down:
                raise self._closed()
            # Control frames queued before this message go first; the protocol refuses a
            # data frame once a close frame was queued. A timeout here leaves nothing of
            # ours half-sent: the control frame in progress stays pending for the next turn.
            self._flush(deadline, blocking=True)
            frame = build(data)  # type: ignore[arg-type]
            frame_size = len(frame)
            self._pending = memoryview(frame)
            self._flush(deadline, blocking=True, control=False)
            # Pongs queued meanwhile go now if the socket takes them at once; else the
            # next send turn, or the reader's wait, sends them.
            self._flush(None, blocking=False)
        except TimeoutError:
            pending = self._pending
            if frame_size and pending is not None:
                if len(pending) == frame_size and self._protocol._extension is None:
                    self._pending = None  # not one byte went: as if never sent
                else:
                    # Part of the frame went out, or the compressor's context took it in:
                    # the stream cannot go on.
                    failed = True
            raise
        finally:
            self._release_send_turn()
            if failed:
                self._drop_reason = "a send timed out with its frame partly written"
                self._teardown()

    def ping(self, payload: bytes) -> None:
        """Queue a ping and send it if the send turn is free; never waits for writers."""
        with self._state_mutex:
            if self._torn_down:
                raise self._closed()
            self._protocol.send_ping(payload)
        self._kick()

    def _kick(self) -> None:
        """Send queued control frames now if the send turn is free, without waiting for
        the socket; otherwise the turn's holder sends them when it ends its turn."""
        if self._send_mutex.acquire(blocking=False):
            try:
                with contextlib.suppress(ConnectionClosedError):
                    self._flush(None, blocking=False)
            finally:
                self._release_send_turn()

    def _release_send_turn(self, handoff: _Waiter | None = None) -> None:
        """End a send turn: hand it to ``handoff`` (whose frame went partly), else let it
        go and see to what was queued meanwhile (:meth:`_after_release`)."""
        if handoff is not None:
            # The turn passes without being let go: the lock stays held for it.
            handoff.signal.release()
            return
        self._send_mutex.release()
        if self._queue or self._pending is not None or self._protocol.has_data_to_send():
            self._after_release()

    def _after_release(self) -> None:
        """Just after letting the turn go: frames or control frames queued by threads that
        found it taken must not be stranded. Take the turn back if free: write queued
        frames while the socket takes them (else hand the turn to the first writer, who
        waits for room under its own deadline), and send control frames without waiting
        (if the socket cannot take them, the reader's wait_readable watches for room)."""
        retried = False
        while True:
            if self._queue:
                # If another thread holds the turn, it does this when it ends its turn.
                if not self._send_mutex.acquire(blocking=False):
                    return
                handoff: _Waiter | None = None
                with contextlib.suppress(ConnectionClosedError):
                    handoff = self._serve_queue()
                if handoff is None:
                    with self._queue_lock:
                        if self._queue:
                            handoff = self._queue.popleft()
                            handoff.state = _TURN
                if handoff is not None:
                    handoff.signal.release()
                    return
                self._send_mutex.release()
                continue
            if (
                retried
                or self._torn_down
                or not (self._pending is not None or self._protocol.has_data_to_send())
                or not self._send_mutex.acquire(blocking=False)
            ):
                if retried:
                    self.wake_reader()
                return
            retried = True
            try:
                with contextlib.suppress(ConnectionClosedError):
                    self._flush(None, blocking=False)
            finally:
                self._send_mutex.release()

    def _flush(self, deadline: float | None, *, blocking: bool, control: bool = True) -> bool:
        """Write the frame in progress, then (``control``) the queued control frames; the
        send turn must be held.

        Returns:
            True when everything went out; False when the socket would block and
            ``blocking`` is False (the rest stays pending).

        Raises:
            ConnectionClosedError: the connection dropped or was torn down.
            TimeoutError: ``deadline`` passed (the rest stays pending).
        """
        assert self._send_mutex.locked()
        while True:
            if self._pending is None:
                if not control or not self._protocol.has_data_to_send():
                    return True
                with self._state_mutex:
                    frames = self._protocol.data_to_send()
                if not frames:
                    return True
                self._pending = memoryview(b"".join(frames))
            if not self._send_pending(deadline, blocking):
                return False

    def _send_pending(self, deadline: float | None, blocking: bool) -> bool:
        """Write ``_pending`` out; True once all of it went, False if it would block and
        ``blocking`` is False."""
        view = self._pending
        assert view is not None
        sock = self._sock
        while True:
            if self._torn_down:
                raise self._closed()
            try:
                if self._is_ssl:
                    with self._tls_mutex:
                        sent = sock.send(view)
                else:
                    sent = sock.send(view)
            except (BlockingIOError, ssl.SSLWantWriteError):
                events = _POLLOUT
            except ssl.SSLWantReadError:
                events = _POLLIN
            except (OSError, ValueError) as error:
                self._write_failed(error)
                raise self._closed() from None
            else:
                if sent >= len(view):
                    self._pending = None
                    return True
                view = self._pending = view[sent:]
                continue
            if not blocking:
                return False
            wait = _WAIT_SLICE
            remaining = _remaining(deadline)
            if remaining is not None:
                if remaining <= 0:
                    raise TimeoutError("timed out writing a frame")
                wait = min(wait, remaining)
            try:
                self._send_poll.register(sock, events)
                self._send_poll.poll(_poll_ms(wait))
            except (OSError, ValueError):
                # The socket was closed under us: the next round raises.
                if not self._torn_down:
                    raise

    def _write_failed(self, error: BaseException) -> None:
        """A write hit a dead socket: note why and wake the reader, which cleans up."""
        self._drop_reason = f"connection lost ({type(error).__name__})"
        with self._state_mutex:
            self._protocol.receive_eof()
        self._shutdown_socket()
        self.wake_reader()

    # -- closing --------------------------------------------------------------------------

    def close(self, code: int, reason: str, timeout: float | None) -> None:
        """Send a close frame, wait for the peer's (or, if the peer closed first, for its
        TCP FIN) until ``timeout``, then close the socket. Idempotent."""
        if isinstance(code, bool) or not isinstance(code, int) or not is_sendable_close_code(code):
            raise ConfigError(f"close code {code!r} may not be sent on the wire")
        if self._torn_down:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        protocol = self._protocol
        with self._state_mutex:
            peer_closed_first = protocol.close_rcvd is not None
            protocol.send_close(code, reason)
        # A reader blocked in wait_readable must come and see the connection closing.
        self.wake_reader()
        remaining = _remaining(deadline)
        if self._send_mutex.acquire(timeout=-1 if remaining is None else remaining):
            try:
                with contextlib.suppress(ConnectionClosedError, TimeoutError):
                    self._flush(deadline, blocking=True)
            finally:
                self._release_send_turn()
        remaining = _remaining(deadline)
        if not self._read_mutex.acquire(timeout=-1 if remaining is None else remaining):
            self._teardown()
            return
        try:
            self._await_peer_close(deadline, peer_closed_first)
        finally:
            try:
                self._teardown(holding_read=True)
            finally:
                self._read_mutex.release()

    def _await_peer_close(self, deadline: float | None, peer_closed_first: bool) -> None:
        """Discard data until the peer's close frame or ``deadline``; the read mutex must
        be held. When the peer closed first, wait for its TCP FIN instead (RFC 6455
        section 7.1.1 has the server close TCP first)."""
        protocol = self._protocol
        while not self._torn_down:
            if protocol.close_rcvd is None:
                pongs = protocol.pongs_received
                with self._state_mutex:
                    protocol.discard_messages()
                if protocol.pongs_received != pongs:
                    self.last_pong = time.monotonic()
                if protocol.failure is not None:
                    return
                if protocol.close_rcvd is not None and not peer_closed_first:
                    return  # our close was answered: the handshake is complete
            received = self._recv_once()
            if received < 0:
                return
            if received > 0:
                continue
            remaining = _remaining(deadline)
            if remaining is not None and remaining <= 0:
                return
            if self._is_ssl and self._tls_pending():
                continue
            self._wait_socket(remaining)

    def _send_close_then_teardown(self) -> None:
        """The protocol failed the connection: send its close frame (best effort, briefly)
        and drop TCP at once (RFC 6455 section 7.1.7); the read mutex is held."""
        self.wake_reader()
        if self._send_mutex.acquire(timeout=_FAIL_SEND_TIMEOUT):
            try:
                with contextlib.suppress(ConnectionClosedError, TimeoutError):
                    self._flush(time.monotonic() + _FAIL_SEND_TIMEOUT, blocking=True)
            finally:
                self._release_send_turn()
        self._teardown(holding_read=True)

    def abort(self) -> None:
        """Drop TCP now, without a closing handshake. Idempotent; safe from any thread."""
        if not self._torn_down:
            self._drop_reason = "connection aborted"
        self._teardown()

    def _teardown(self, *, holding_read: bool = False) -> None:
        """Shut the socket down, wake every thread waiting on it, then close it and the
        wake-up pair once those threads left (or after a grace period). Idempotent."""
        with self._state_mutex:
            if self._torn_down:
                return
            self._torn_down = True
            self._protocol.receive_eof()
        self._shutdown_socket()
        self.wake_reader()
        got_read = holding_read or self._read_mutex.acquire(timeout=_TEARDOWN_GRACE)
        got_wait = self._wait_mutex.acquire(timeout=_TEARDOWN_GRACE)
        got_send = self._send_mutex.acquire(timeout=_TEARDOWN_GRACE)
        try:
            for resource in (self._sock, self._wake_r, self._wake_w):
                resource.close()
        finally:
            if got_send:
                self._release_send_turn()
            if got_wait:
                self._wait_mutex.release()
            if got_read and not holding_read:
                self._read_mutex.release()

    def forget_after_fork(self) -> None:
        """In a forked child: close this process's copies of the descriptors, writing
        nothing (no close frame, no TLS record) and shutting nothing down (shutdown would
        cut the parent's connection too)."""
        self._torn_down = True
        self._drop_reason = "connection inherited across fork()"
        for resource in (self._sock, self._wake_r, self._wake_w):
            # close() without shutdown(): for an SSLSocket it sends no close_notify either.
            with contextlib.suppress(OSError):
                resource.close()

    def _shutdown_socket(self) -> None:
        """Shut TCP down both ways: wakes every poll on the socket. Takes no lock."""
        # socket.socket.shutdown, not SSLSocket.shutdown: the latter drops the SSL object,
        # which a reader in another thread may be using right now.
        with contextlib.suppress(OSError, ValueError):
            socket.socket.shutdown(self._sock, socket.SHUT_RDWR)

    def _closed(self) -> ConnectionClosedError:
        """A fresh error saying why the connection is closed (one per raise: re-raising
        one instance from several threads would tangle its traceback)."""
        protocol = self._protocol
        if protocol.failure or protocol.close_rcvd or protocol.close_sent:
            return protocol.closed_error()
        return ConnectionClosedError(1006, self._drop_reason)

    def _tls_pending(self) -> bool:
        """Tell whether the TLS layer holds decrypted bytes that poll() cannot see."""
        with self._tls_mutex:
            return _ssl_pending(self._sock)

    @property
    def torn_down(self) -> bool:
        """True once the socket is shut down or closed."""
        return self._torn_down


@dataclass(frozen=True)
class Handshake:
    """What a dialer hands the driver after a successful opening handshake."""

    #: The connected socket (TLS-wrapped for wss://).
    sock: socket.socket
    response: HandshakeResponse
    #: Bytes received after the answer's header block (frames the server sent at once).
    leftover: bytes = b""
    #: The extension negotiated, if any.
    extension: Extension | None = None


class _NotConnected(SocketDriver):
    """Stands in for a driver while no connection is open: every operation says so."""

    def __init__(self) -> None:  # no socket, no state: nothing of the base to set up
        self._torn_down = True
        self.last_received = time.monotonic()
        self.last_pong = 0.0

    def _closed(self) -> ConnectionClosedError:
        return ConnectionClosedError(1006, "not connected")

    def read(self, timeout: float | None) -> Message | None:
        raise self._closed()

    def read_available(self, max_messages: int) -> list[Message]:
        raise self._closed()

    def write(
        self, data: str | bytes | bytearray | memoryview, timeout: float | None = None
    ) -> None:
        if not isinstance(data, str | bytes | bytearray | memoryview):
            raise TypeError(f"data must be str or bytes, not {type(data).__name__}")
        raise self._closed()

    def ping(self, payload: bytes) -> None:
        raise self._closed()

    def wait_readable(self, timeout: float | None) -> bool:
        return True

    def wake_reader(self) -> None:
        return None

    def has_pending_data(self) -> bool:
        return False

    def close(self, code: int, reason: str, timeout: float | None) -> None:
        if isinstance(code, bool) or not isinstance(code, int) or not is_sendable_close_code(code):
            raise ConfigError(f"close code {code!r} may not be sent on the wire")

    def abort(self) -> None:
        return None

    def forget_after_fork(self) -> None:
        return None


_NOT_CONNECTED: Final = _NotConnected()


class DrivenAdapter(ConnectionAdapter):
    """A :class:`ConnectionAdapter` whose connections are driven by a
    :class:`SocketDriver`: a subclass only performs the opening handshake.

    Safe for one reader plus any number of writers; reusable (``dial`` after
    ``close``/``abort`` opens a fresh connection).

    The base class owns what every dial shares: the ``Sec-WebSocket-Extensions`` offer
    (added to the headers given to ``_handshake``), the negotiation of the answer, the
    redirect policy, and cutting a dial on ``abort()``.

    Args:
        max_size: largest message accepted, in bytes (None: no limit); with compression,
            the inflated size.
        redirect_limit: redirects followed in a row.
        compression: ``"deflate"`` to offer permessage-deflate, None not to, or a mapping
            of RFC 7692 parameters to offer.

    Raises:
        ConfigError: a bad ``compression``.
    """

    def __init__(
        self,
        max_size: int | None,
        redirect_limit: int,
        compression: object = "deflate",
    ) -> None:
        self._max_size = max_size
        self._redirect_limit = redirect_limit
        self._deflate_offer = compression_offer(compression)
        # Guards _driver and _dial_guard between dial() and abort(); held for a few
        # statements only.
        self._dial_mutex = threading.Lock()
        self._driver: SocketDriver = _NOT_CONNECTED
        self._dial_guard: DialGuard | None = None

    @abstractmethod
    def _handshake(
        self,
        url: str,
        timeout: float | None,
        headers: Mapping[str, str],
        cross_origin: bool,
        guard: DialGuard,
    ) -> Handshake:
        """Open a TCP (and TLS) connection to ``url`` and perform one opening handshake.

        Blocks the calling thread; ``timeout`` bounds each socket operation (None: no
        limit). Every socket opened must be passed to ``guard.register`` at once, so that
        ``abort()`` can cut the dial. When ``cross_origin`` is True (a redirect left the
        first URL's origin), send no credential header nor cookie.

        Raises:
            Redirect: the server answered with a 3xx (``wsengine.adapters._dial``).
            HandshakeError: an HTTP error status or a bad answer.
            OSError: the TCP or TLS connection failed (``TimeoutError`` on timeout).
        """

    def dial(
        self, url: str, timeout: float | None, headers: Mapping[str, str] | None = None
    ) -> HandshakeResponse:
        """Open a connection to ``url`` and complete the opening handshake.

        A connection still open is aborted first. Blocks the calling thread; ``timeout``
        bounds each socket operation of the handshake (None: no limit). ``abort()`` from
        another thread cuts the dial, which then raises ``ConnectionError``.

        Raises:
            HandshakeError: HTTP error status (with ``status`` and ``retry_after``), bad
                handshake answer, redirect refused, or connection dropped during the
                handshake.
            TimeoutError: the handshake timed out.
            OSError: the TCP or TLS connection failed (``ssl.SSLError`` for TLS).
        """
        guard = DialGuard()
        # The guard is in place before anything else: an abort() from now on cuts this
        # dial, whichever step it is at.
        with self._dial_mutex:
            self._dial_guard = guard
            previous = self._driver
        previous.abort()
        extra = dict(headers or {})
        offer = self._deflate_offer
        if offer is not None:
            extra["Sec-WebSocket-Extensions"] = offer.header_value()
        try:
            handshake = follow_redirects(
                url,
                lambda target, cross: self._handshake(target, timeout, extra, cross, guard),
                self._redirect_limit,
            )
        except BaseException:
            self._forget_guard(guard)
            raise
        try:
            extension = self._negotiate(handshake)
            # One critical section with abort(): either abort() saw this guard (and the
            # connection is thrown away here) or it will see this driver.
            with self._dial_mutex:
                if self._dial_guard is guard:
                    self._dial_guard = None
                if not guard.aborted:
                    self._driver = SocketDriver(
                        handshake.sock,
                        ClientProtocol(self._max_size, extension),
                        handshake.leftover,
                    )
                    return handshake.response
        except BaseException:
            self._forget_guard(guard)
            handshake.sock.close()
            raise
        # abort() came during the handshake: nobody wants this connection any more.
        handshake.sock.close()
        raise DialAborted("the dial was aborted")

    def _forget_guard(self, guard: DialGuard) -> None:
        with self._dial_mutex:
            if self._dial_guard is guard:
                self._dial_guard = None

    def _negotiate(self, handshake: Handshake) -> Extension | None:
        """The extension the server's answer agreed to, checked against the offer.

        Raises:
            HandshakeError: the answer names an extension that was not offered, or
                accepts permessage-deflate with parameters that were not offered.
        """
        if handshake.extension is not None:
            return handshake.extension
        offer = self._deflate_offer
        answer = extensions_answer(handshake.response.headers)
        if answer is not None:
            check_response(
                {"Sec-WebSocket-Extensions": answer},
                offered_extensions=(EXTENSION_NAME,) if offer else (),
            )
        if answer is None or offer is None:
            return None
        return negotiate(answer, offer)

    def read(self, timeout: float | None = None) -> Message | None:
        """Return the next data message, or None when ``timeout`` passes first.

        Blocks the calling thread up to ``timeout`` (None: no limit). A partly received
        frame stays buffered for the next call. Pings are answered on the way.

        Raises:
            ConnectionClosedError: the connection is closed (the peer's code and reason
                when it sent a close frame, 1006 when it dropped).
            ProtocolError: the peer broke RFC 6455; the connection was failed with its code.
        """
        return self._driver.read(timeout)

    def write(self, data: str | bytes, timeout: float | None = None) -> None:
        """Send one message: TEXT for ``str``, BINARY for bytes-like data. Thread-safe.

        Blocks until the frame is handed to the kernel, at most ``timeout`` seconds (None:
        no limit; an extension of the adapter contract, whose ``write`` has no timeout);
        ``abort()`` from another thread ends the wait. Pongs and pings never wait behind
        it for long: they go out right after it, and reading goes on meanwhile.

        Raises:
            TimeoutError: ``timeout`` passed; if part of the frame had gone out the
                connection was failed (torn down: the reader sees 1006).
            ConnectionClosedError: the connection is closed, or closed while blocked.
            TypeError: ``data`` is neither ``str`` nor bytes-like.
        """
        self._driver.write(data, timeout)

    def direct_write(self) -> Callable[..., None] | None:
        """The ``write`` of the connection open now (None when a subclass overrides
        :meth:`write`): a caller may call it instead of :meth:`write`, one call less per
        message, for as long as that connection lasts. After it ends (a later ``dial``
        opens another) it raises ``ConnectionClosedError``: it never reaches a newer
        connection. Does not block; takes the ``write`` arguments."""
        if type(self).write is not DrivenAdapter.write or "write" in vars(self):
            return None  # someone wants every write to go through theirs
        return self._driver.write

    def ping(self, payload: bytes = b"") -> None:
        """Send a ping frame; does not wait for the pong (see :attr:`last_pong`), nor for
        a writer blocked on a full TCP window (the ping then follows its frame).

        Raises:
            ValueError: ``payload`` is longer than 125 bytes.
            ConnectionClosedError: the connection is closed.
        """
        self._driver.ping(payload)

    def close(self, code: int = 1000, reason: str = "", timeout: float | None = None) -> None:
        """Close the connection: send a close frame, wait for the peer's, close the socket.

        Blocks the calling thread up to ``timeout`` seconds in all (None: no limit) waiting
        for the peer's close frame, discarding data meanwhile; if the peer closed first, it
        waits instead for the peer to close TCP. Then it closes the socket anyway (a server
        that keeps TCP open is cut off). Idempotent; safe while another thread is blocked in
        ``read`` or ``write``, which then raise ``ConnectionClosedError``. A reason longer
        than 123 bytes of UTF-8 is cut at a character boundary.

        Raises:
            ConfigError: ``code`` may not be sent on the wire.
        """
        self._driver.close(code, reason, timeout)

    def abort(self) -> None:
        """Drop the TCP connection now, without a closing handshake. Idempotent.

        Safe from any thread: readers, writers and ``wait_readable`` blocked on the socket
        are woken and leave (raising ``ConnectionClosedError`` or returning). A ``dial`` in
        progress is cut, and a handshake that completes anyway is thrown away.
        """
        with self._dial_mutex:
            # Under the mutex, so a dial finishing now either sees its guard aborted or
            # has already installed the driver taken here. guard.abort() never blocks.
            guard = self._dial_guard
            if guard is not None:
                guard.abort()
            driver = self._driver
        driver.abort()

    def forget_after_fork(self) -> None:
        """In a forked child: drop the inherited connection without writing to it."""
        # No lock is taken: a parent thread may have held it at the fork, forever here.
        self._dial_mutex = threading.Lock()
        driver, self._driver = self._driver, _NOT_CONNECTED
        guard, self._dial_guard = self._dial_guard, None
        driver.forget_after_fork()
        if guard is not None:
            guard.forget_after_fork()

    @property
    def last_received(self) -> float:
        """``time.monotonic()`` when bytes last arrived from the peer (any frame)."""
        return self._driver.last_received

    @property
    def last_pong(self) -> float:
        """``time.monotonic()`` of the last pong received (0.0 before any)."""
        return self._driver.last_pong

    def read_available(self, max_messages: int) -> list[Message]:
        """Return up to ``max_messages`` messages without waiting for the network.

        Parses what is buffered and reads the socket (non-blocking, a bounded number of
        times) while no whole message is buffered; may return ``[]``.

        Raises:
            ConnectionClosedError: as :meth:`read`, once the messages parsed before the
                close or the error were returned.
        """
        return self._driver.read_available(max_messages)

    def wait_readable(self, timeout: float | None) -> bool:
        """Block until data may be read, ``timeout`` passes or :meth:`wake_reader` runs
        (see :meth:`SocketDriver.wait_readable`)."""
        return self._driver.wait_readable(timeout)

    def wake_reader(self) -> None:
        """Make a :meth:`wait_readable` blocked in another thread return now."""
        self._driver.wake_reader()

    def has_pending_data(self) -> bool:
        """Tell whether bytes from the peer wait on the socket, not yet received."""
        return self._driver.has_pending_data()
