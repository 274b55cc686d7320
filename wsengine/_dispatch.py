# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""The hot path: workers that take turns reading frames and run ``on_message``.

Leader/followers instead of reader -> queue -> pool: handing every frame to another
thread costs a wake-up per frame, which measured 0.23x-0.48x of a plain ``recv()`` loop.
Here the worker that finds the hand-off empty takes the read turn, refills it with up to
``queue_size`` parsed messages in one non-blocking pass, and then runs callbacks like the
others. With one worker nothing ever changes threads, and arrival order is kept.
"""

from __future__ import annotations

import collections
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable

from opentelemetry import context as otel_context

from wsengine._pause import PauseLock, engine_acquire, engine_release
from wsengine.adapters.base import ConnectionAdapter
from wsengine.errors import ConnectionClosedError
from wsengine.types import Message

__all__ = ["Dispatcher"]

logger = logging.getLogger("wsengine")

#: Read errors in a row (without a message in between) after which the connection is
#: failed with 1011: an adapter that keeps failing would otherwise spin.
MAX_READ_ERRORS_IN_A_ROW = 10


class Dispatcher:
    """Workers of one session.

    Args:
        conn: the session's adapter.
        pause_lock: the engine's pause lock, held only around non-blocking reads; while a
            user wants it, no read starts and no worker starts another callback.
        workers: number of worker threads.
        queue_size: bound of the hand-off.
        deliver: runs ``on_message`` (or answers a request) for one message.
        read_error: runs ``on_read_error`` for an error that left the connection usable.
        lost: called once, from the reader, with the error that closed the connection.
        received: called with each read batch (metrics), or None.
        name: thread name prefix.
        otel_ctx: the OpenTelemetry context workers attach, so callbacks see the session.
    """

    def __init__(
        self,
        conn: ConnectionAdapter,
        pause_lock: PauseLock,
        *,
        workers: int,
        queue_size: int,
        deliver: Callable[[Message], None],
        read_error: Callable[[Exception], None],
        lost: Callable[[ConnectionClosedError], None],
        received: Callable[[list[Message]], None] | None = None,
        name: str,
        otel_ctx: otel_context.Context,
    ) -> None:
        self._conn = conn
        self._pause_lock = pause_lock
        self._workers = workers
        self._queue_size = queue_size
        self._deliver = deliver
        self._read_error = read_error
        self._lost = lost
        self._received = received
        self._name = name
        self._otel_ctx = otel_ctx
        # Parsed messages not yet taken by a worker. Refilled only when empty, with at most
        # queue_size messages: that is the bound. Appended by the worker holding the read
        # turn, popped (popleft is atomic) by any worker; gone with the session.
        self._ready: collections.deque[Message] = collections.deque()
        # The read turn: held by the one worker refilling _ready, released after every
        # refill; the others wait on _followers meanwhile. Ends free when workers exit.
        self._read_turn = threading.Lock()
        # Followers wait here for a refill or a free read turn; notified under its lock by
        # the leader after a refill, by a worker leaving messages behind, and by drain().
        self._followers = threading.Condition(threading.Lock())
        self._idle = 0  # followers waiting on _followers; guarded by its lock
        # Set once by drain() or by the reader on a lost connection: no more reads;
        # workers finish what _ready holds, then return.
        self._draining = False
        # Set with _draining by drain(): ends a worker's short wait while a user is about to
        # take the pause lock.
        self._drain_signal = threading.Event()
        self.waiting_for_data = False  # the reader is blocked waiting on the socket
        self.threads: list[threading.Thread] = []

    @property
    def depth(self) -> int:
        """Messages read but not yet taken by a worker (at most ``queue_size``)."""
        return len(self._ready)

    def start(self, early: Iterable[Message] = ()) -> None:
        """Start the workers; ``early`` messages (read during ``on_open``) go first."""
        self._ready.extend(early)
        for index in range(self._workers):
            # Daemon: a callback that never returns must not block interpreter exit
            # (ThreadPoolExecutor joins its threads at exit, which is why it is not used).
            # Ends when _draining is set and _ready is empty.
            thread = threading.Thread(
                target=self._work, name=f"{self._name}-{index}", daemon=True
            )
            self.threads.append(thread)
        for thread in self.threads:
            thread.start()

    def drain(self) -> None:
        """Stop reading; workers finish the messages already read, then exit. Idempotent,
        non-blocking, callable from any thread (a worker included)."""
        self._draining = True
        self._drain_signal.set()
        self._conn.wake_reader()
        with self._followers:
            self._followers.notify_all()

    def _work(self) -> None:
        token = otel_context.attach(self._otel_ctx)
        try:
            self._work_loop()
        except BaseException:  # pragma: no cover - a bug: say so rather than die silently
            logger.critical("wsengine worker crashed", exc_info=True)
            raise
        finally:
            otel_context.detach(token)

    def _work_loop(self) -> None:
        ready = self._ready
        popleft = ready.popleft
        deliver = self._deliver
        pause = self._pause_lock
        followers = self._followers
        several = self._workers > 1
        while True:
            try:
                message = popleft()
            except IndexError:
                if self._draining:
                    return
                if self._read_turn.acquire(blocking=False):
                    try:
                        self._refill()
                    finally:
                        self._read_turn.release()
                    if several:
                        with followers:
                            if self._idle:
                                followers.notify()
                elif several:
                    with followers:
                        if not ready and self._read_turn.locked() and not self._draining:
                            self._idle += 1
                            try:
                                followers.wait()
                            finally:
                                self._idle -= 1
                continue
            if several and ready and self._idle:
                # Messages are left: wake one more follower (the racy read of _idle only
                # risks a missed wake-up, and the leader wakes followers after each refill).
                with followers:
                    followers.notify()
            if pause.wanted:
                self._step_back()
            deliver(message)

    def _refill(self) -> None:
        """Read until at least one message is in _ready, or the session drains.

        The pause lock is held only around the non-blocking ``read_available``; waiting for
        the socket happens without it, so a pausing thread gets the lock at once even
        against a silent server.
        """
        conn = self._conn
        pause = self._pause_lock
        errors_in_a_row = 0
        # True for as long as this turn finds nothing: the keepalive may judge silence
        # only then (not while workers are busy and nobody reads).
        self.waiting_for_data = True
        try:
            while not self._draining:
                conn.wait_readable(None)
                if not self._take_pause_lock():
                    return
                try:
                    if self._draining:
                        return
                    batch = conn.read_available(self._queue_size)
                except ConnectionClosedError as exc:
                    self._draining = True
                    self._lost(exc)
                    return
                except Exception as exc:
                    error: Exception | None = exc
                else:
                    error = None
                finally:
                    engine_release(pause)
                if error is not None:
                    errors_in_a_row += 1
                    if errors_in_a_row >= MAX_READ_ERRORS_IN_A_ROW:
                        self._draining = True
                        self._lost(ConnectionClosedError(1011, "repeated read errors"))
                        return
                    self._read_error(error)
                    continue
                errors_in_a_row = 0
                if batch:
                    self._ready.extend(batch)
                    if self._received is not None:
                        self._received(batch)
                    return
        finally:
            self.waiting_for_data = False

    def _take_pause_lock(self) -> bool:
        """Acquire the pause lock for one read pass, after any user who wants it; False
        (not held) if the session drains meanwhile."""
        pause = self._pause_lock
        while True:
            if pause.wanted and not self._step_back():
                return False
            if engine_acquire(pause, True, 0.05):
                return True
            if self._draining:
                return False

    def _step_back(self) -> bool:
        """Wait while a user wants or holds the pause lock; False if the session drains
        (then messages already read are delivered: nothing is lost)."""
        pause = self._pause_lock
        if pause.owned():
            return True  # our own callback holds it (the lock is re-entrant)
        while pause.wanted:
            if self._draining:
                return False
            if pause.held:
                # A user holds it: block until they let go, waking now and then to notice
                # a stop.
                if engine_acquire(pause, True, 0.05):
                    engine_release(pause)
            else:
                # A user is about to take it: give way rather than race them for it.
                self._drain_signal.wait(0.0002)
        return True

    def join(self, timeout: float | None) -> list[threading.Thread]:
        """Wait for the workers (not the calling thread) to end; return those still alive."""
        deadline = None if timeout is None else time.monotonic() + timeout
        current = threading.current_thread()
        for thread in self.threads:
            if thread is current:
                continue
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return [t for t in self.threads if t.is_alive() and t is not current]


def stuck_callbacks(threads: Iterable[threading.Thread]) -> list[str]:
    """Name the callbacks the given threads are running now, for a warning."""
    frames = sys._current_frames()
    found: list[str] = []
    for thread in threads:
        frame = frames.get(thread.ident or -1)
        while frame is not None:
            if frame.f_code.co_name in CALLBACK_NAMES:
                found.append(f"{frame.f_code.co_qualname} in thread {thread.name}")
                break
            frame = frame.f_back
        else:
            found.append(f"thread {thread.name}")
    return found


CALLBACK_NAMES = frozenset({
    "on_open", "on_message", "on_read_error", "on_close", "on_close_error", "on_restart_error",
})
