# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""The hot path: workers that take turns reading frames and run ``on_message``.

Leader/followers instead of reader -> queue -> pool: handing every frame to another
thread costs a wake-up per frame, which measured 0.23x-0.48x of a plain ``recv()`` loop.
Here the worker that finds the hand-off empty takes the read turn, refills it with up to
``queue_size`` parsed messages in one non-blocking pass, and then runs callbacks like the
others. With one worker nothing ever changes threads, and arrival order is kept.

While every worker is in ``on_message`` no worker reads; then the supervisor's thread
reads instead (the backstop reader, :meth:`Dispatcher.backstop`, called between its
keepalive checks): it takes the read turn only when no worker holds it, reads into a
hold-back deque that workers empty before they read again (so order is kept), and gives
the turn back as soon as a worker wants it. It bounds what it holds by ``max_size`` bytes
(``overflow="block"``) or by ``queue_size`` messages (the drop policies). The fast path
does not change: a worker looks at the hold-back deque only when the hand-off is empty.

Followers are woken only when a message is left waiting for them, not per message (a
wake-up per message cost about 75% of worker time with ``workers=4``): a worker about to
run a callback while older messages of its batch wait (``WAKE_AFTER`` seconds since the
refill, one ``perf_counter`` per message) wakes one idle follower, or grows the pool by
one loop if there is none. With fast callbacks one worker thus does everything, as with
``workers=1``; with slow ones the workers soon all run callbacks at once. A callback that
never returns cannot keep the messages behind it from the others: the supervisor's
periodic backstop tick applies the same rule (``Dispatcher.backstop``), within 100 ms. A
callback known to block on the connection itself (``request()`` from ``on_message``)
hands the reading to another worker at once (:meth:`Dispatcher.lend_reader`). Handing it
over whenever a batch came up short was tried: in a 64 KiB flood every batch is short (a
read pass is bounded), and the wake-ups halved ``workers=4``'s throughput.

The worker threads are those of one ``concurrent.futures.ThreadPoolExecutor`` per session
(``max_workers=workers``, threads named ``wsengine-worker-<run>_<i>``). Each worker loop is
one ``submit`` that runs until the session drains: the executor hosts the loops, it does
not carry messages (a ``submit`` per message measured about 14 us against 0.06 us for a
hosted loop), so the hand-off stays the bounded deque below. The pool grows lazily: one
loop at session start, another each time messages wait while every loop runs a callback
(the executor creates a thread per ``submit``), up to ``workers``. An idle session thus
costs one worker thread; threads that grew stay (parked, waiting for work) until the
session ends.

Two stdlib behaviours would break the engine's exit promises (a program that forgets
``stop()`` exits; a callback that never returns does not block exit), and are handled so:

- Since Python 3.9 executor threads are created without a daemon flag, so they inherit
  the flag of the thread calling ``submit``. The loops are submitted from a daemon thread
  (the supervisor or a worker, or a short-lived daemon helper when the caller is not one),
  and each thread's flag is checked before its loop is let go.
- ``concurrent.futures.thread`` registers ``_python_exit`` with the private
  ``threading._register_atexit``; at interpreter exit it joins, without a timeout, every
  thread listed in the private ``_threads_queues``, before ``atexit`` handlers (so before
  the engine's ``_stop_running_engines`` could end a forgotten session). Each worker
  thread is taken out of that listing as soon as it exists. To close the window between
  its creation and its removal, this module registers its own threading exit hook after
  ``concurrent.futures.thread`` registered ``_python_exit`` (they run in reverse order, so
  ours runs first): it waits for a start in progress and makes later starts (a reconnect
  during exit) use plain daemon threads.

Both private names are feature-detected. When either is missing, or a hosted thread turns
out non-daemon or unlisted, the session falls back to plain daemon ``threading.Thread``
workers (grown lazily too), whose documented behaviour (daemon threads do not block exit)
keeps the promises.
"""

from __future__ import annotations

import collections
import concurrent.futures.thread as _futures_thread  # before our exit hook registers, see above
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, MutableMapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal

from opentelemetry import context as otel_context
from opentelemetry import trace

from wsengine._pause import PauseLock, engine_acquire, engine_release
from wsengine.adapters.base import ConnectionAdapter
from wsengine.errors import ConnectionClosedError
from wsengine.telemetry import SPAN_CALLBACK_PREFIX, SPAN_RECEIVE, Telemetry, mark_error
from wsengine.types import Message

if TYPE_CHECKING:
    from wsengine.session import Session

__all__ = ["Dispatcher", "make_deliver", "stuck_callbacks"]

logger = logging.getLogger("wsengine")

#: Read errors in a row (without a message in between) after which the connection is
#: failed with 1011: an adapter that keeps failing would otherwise spin.
MAX_READ_ERRORS_IN_A_ROW = 10

#: Seconds start() waits for the executor's threads to pick up the worker loops before it
#: falls back to plain threads (they take a few thread starts).
HOSTED_START_TIMEOUT = 5.0

#: Longest the backstop reader waits on the socket in one go: how soon it notices a worker
#: that wants the read turn back if the wake-up raced it.
BACKSTOP_SLICE = 0.05

#: Messages the backstop reader asks for in one non-blocking pass.
BACKSTOP_BATCH = 64

#: Seconds since the last refill (or the last wake-up) after which a message still waiting
#: in the hand-off is "left behind": the worker about to run a callback then wakes a
#: follower (or grows the pool). A batch of fast callbacks ends well within it (16
#: messages take about 20 us).
WAKE_AFTER = 0.0002


#: Attribute of the plain deliver function (see make_deliver) holding what the work loop
#: needs to run its steps inline: (session, on_message, requests, offer, interrupted).
_PLAIN = "_wsengine_plain"
_Plain = tuple[
    "Session",
    Callable[["Session", Message], None],
    Any,
    Callable[[Message], bool],
    Callable[[str, BaseException], None],
]


def _exit_join_listing() -> MutableMapping[threading.Thread, Any] | None:
    """The stdlib's listing of executor threads joined at exit, or None if it is gone."""
    listing = getattr(_futures_thread, "_threads_queues", None)
    return listing if isinstance(listing, MutableMapping) else None


# Guards _interpreter_exiting, and is held by a session's start from its first submit until
# its threads are unlisted; taken by our exit hook (main thread, at exit) to wait for such a
# start. Never held around user code; released by the same thread, so it cannot stay taken.
_exit_lock = threading.Lock()
_interpreter_exiting = False


def _before_executor_exit_join() -> None:
    """Threading exit hook, run just before the stdlib's ``_python_exit``: from now on
    sessions start plain daemon threads, and none is between creation and unlisting."""
    global _interpreter_exiting
    with _exit_lock:
        _interpreter_exiting = True


def _register_exit_hook() -> bool:
    register = getattr(threading, "_register_atexit", None)
    if not callable(register) or _exit_join_listing() is None:
        return False
    try:
        register(_before_executor_exit_join)
    except RuntimeError:  # imported while the interpreter exits: no executor any more
        return False
    return True


#: True when workers can run on a ThreadPoolExecutor without breaking the exit promises.
HOSTED = _register_exit_hook()


def _reinit_exit_lock_in_child() -> None:
    # A fork taken while another thread held the lock must not leave the child's exit
    # hook waiting for a thread that does not exist there.
    global _exit_lock
    _exit_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_exit_lock_in_child)


class Dispatcher:
    """Workers of one session.

    Args:
        conn: the session's adapter.
        pause_lock: the engine's pause lock, held only around non-blocking reads; while a
            user wants it, no read starts and no worker starts another callback.
        workers: number of worker threads (the executor's ``max_workers``).
        queue_size: bound of the hand-off.
        deliver: runs ``on_message`` (or answers a request) for one message.
        read_error: runs ``on_read_error`` for an error that left the connection usable.
        lost: called once, from the reader, with the error that closed the connection.
        received: called with each read batch (metrics), or None.
        name: thread name prefix (the executor's ``thread_name_prefix``).
        otel_ctx: the OpenTelemetry context workers attach, so callbacks see the session.
        overflow: ``"block"``, ``"drop_oldest"`` or ``"drop_newest"`` (what the backstop
            reader does with what it reads while every worker is busy).
        hold_limit: with ``"block"``, bytes of messages the backstop reader may hold back;
            it stops reading once they are reached (TCP backpressure).
        dropped: called on the backstop reader's thread with each number of messages the
            overflow policy discarded.
        on_thread: called with each worker thread, before it runs a callback, on the
            thread that starts it (the run's set of engine threads), or None.
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
        overflow: str = "block",
        hold_limit: int = 2**20,
        dropped: Callable[[int], None] | None = None,
        on_thread: Callable[[threading.Thread], None] | None = None,
    ) -> None:
        self._conn = conn
        self._overflow = overflow
        self._hold_limit = hold_limit
        self._dropped = dropped
        self._on_thread = on_thread
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
        # a worker leaving messages behind (_more), by release_backstop() and by drain().
        self._followers = threading.Condition(threading.Lock())
        # Followers waiting on _followers and not yet notified: a waiter adds itself, the
        # notifier takes it off (notify_all: all). Guarded by its lock; read without it
        # only as a hint (a stale read costs a wake-up or a tick's delay, never a message).
        self._idle = 0
        # When the hand-off was last refilled, or a follower last woken for it (perf_counter):
        # how long what it holds has waited for another worker. Written by any worker.
        self._refilled_at = 0.0
        # Set once by drain() or by the reader on a lost connection: no more reads;
        # workers finish what _ready holds, then return.
        self._draining = False
        # Set with _draining by drain(): ends a worker's short wait while a user is about to
        # take the pause lock.
        self._drain_signal = threading.Event()
        self.waiting_for_data = False  # the reader is blocked waiting on the socket
        # Messages the backstop reader read while every worker was busy: newer than all of
        # _ready, taken by workers once _ready is empty. Appended by the backstop (holding
        # the read turn), popped by workers; both under _held_lock (a few statements), which
        # also guards _held_bytes. Bounded by hold_limit bytes ("block") or, with _ready,
        # by queue_size messages (drop policies); gone with the session.
        self._held: collections.deque[Message] = collections.deque()
        self._held_lock = threading.Lock()
        self._held_bytes = 0
        # True while the backstop (the supervisor's thread) holds the read turn; a worker
        # that finds the turn taken then sets _turn_wanted and wakes it, and it lets go.
        self._backstop_holding = False
        self._turn_wanted = False
        #: True while the backstop holds the read turn, has read all the socket had, and
        #: may read more: silence from the peer then means something (the keepalive's cue).
        self.backstop_reading = False
        # The worker threads: one once start() returns, more as the pool grows (each is
        # handed to on_thread first). Appended under _grow_lock; join() snapshots it.
        self.threads: list[threading.Thread] = []
        # Serializes growing the pool, and guards _loops and _joined; held for a thread
        # start (by a worker or the supervisor), never around user code.
        self._grow_lock = threading.Lock()
        self._loops = 0  # worker loops started (at most workers)
        self._joined = False  # join() began: no more growth
        # The session's executor while its threads host the loops (None on the fallback);
        # shut down by join(). futures: one per hosted loop, done when the loop returns.
        self.executor: ThreadPoolExecutor | None = None
        self.futures: list[Future[None]] = []

    @property
    def depth(self) -> int:
        """Messages read but not yet taken by a worker: at most ``queue_size``, plus what
        the backstop reader holds back with ``overflow="block"``."""
        return len(self._ready) + len(self._held)

    def start(self, early: Iterable[Message] = ()) -> None:
        """Start the first worker; ``early`` messages (read during ``on_open``) go first.

        Blocks the caller until that worker's thread runs (a thread start; at most
        ``HOSTED_START_TIMEOUT`` seconds before it falls back to a plain thread). More
        workers start later, when messages wait for them (see :meth:`_grow`). Called once
        per dispatcher, by the supervisor.

        Raises:
            RuntimeError: no thread can be started.
        """
        self._ready.extend(early)
        self._refilled_at = time.perf_counter()
        with _exit_lock:
            listing = _exit_join_listing()
            if HOSTED and not _interpreter_exiting and listing is not None:
                # One per session; its threads end after join() shuts it down (or once it
                # is garbage collected, should the dispatcher be dropped without a join()).
                self.executor = ThreadPoolExecutor(
                    max_workers=self._workers, thread_name_prefix=self._name
                )
        with self._grow_lock:
            self._loops = 1
            self._start_loop(0)

    def _start_loop(self, index: int) -> None:
        """Start worker loop number ``index``: on the executor when it keeps the exit
        promises, else (for good) on a plain daemon thread. ``_grow_lock`` is held."""
        executor = self.executor
        if executor is not None:
            with _exit_lock:
                listing = _exit_join_listing()
                if not _interpreter_exiting and listing is not None:
                    try:
                        if self._host_one(executor, listing):
                            return
                    except Exception:
                        logger.debug("starting a worker on the executor failed",
                                     exc_info=True)
            logger.debug("workers fall back to plain daemon threads")
            self.executor = None
            # Threads already hosted go on; idle ones end at once.
            executor.shutdown(wait=False, cancel_futures=True)
        # Ends when _draining is set and _ready is empty, like a hosted loop.
        thread = threading.Thread(target=self._work, name=f"{self._name}_{index}", daemon=True)
        self._register(thread)
        thread.start()

    def _host_one(self, executor: ThreadPoolExecutor,
                  listing: MutableMapping[threading.Thread, Any]) -> bool:
        """Submit one loop and let it go once its thread is known daemon and unlisted; True
        if it runs. ``_exit_lock`` is held (our exit hook waits for this)."""
        arrival = _Arrival()
        futures: list[Future[None]] = []
        # submit() returns once the new thread runs and is listed (it lists it after start).
        _on_daemon_thread(lambda: futures.append(executor.submit(self._hosted, arrival)),
                          f"{self._name}-starter")
        thread = arrival.thread if arrival.arrived.wait(HOSTED_START_TIMEOUT) else None
        hosted = (thread is not None and listing.pop(thread, None) is not None
                  and thread.daemon)
        if hosted:
            assert thread is not None
            self._register(thread)
            self.futures.extend(futures)
        arrival.hosted = hosted
        arrival.go.set()  # a loop arriving later sees hosted False and leaves
        return hosted

    def _register(self, thread: threading.Thread) -> None:
        """Make ``thread`` a worker of this session, before it runs a callback."""
        if self._on_thread is not None:
            self._on_thread(thread)
        self.threads.append(thread)

    def _hosted(self, arrival: _Arrival) -> None:
        """One worker loop, as an executor work item."""
        arrival.thread = threading.current_thread()
        arrival.arrived.set()
        arrival.go.wait()
        if arrival.hosted:
            self._work()

    def _grow(self) -> None:
        """Start one more worker loop, unless there are ``workers`` already or the session
        drains. Blocks the caller for a thread start; any thread."""
        with self._grow_lock:
            if self._loops >= self._workers or self._draining or self._joined:
                return
            self._loops += 1
            try:
                self._start_loop(self._loops - 1)
            except Exception:  # no thread to be had: the workers we have go on
                self._loops -= 1
                logger.warning("could not start another worker thread", exc_info=True)

    def _more(self) -> None:
        """Messages are left waiting: wake one idle follower, or grow the pool by one."""
        # The next one only if they wait WAKE_AFTER more: once a batch is late (a slow
        # callback, or a worker the OS set aside), every message of it would wake one.
        self._refilled_at = time.perf_counter()
        followers = self._followers
        if self._idle:
            with followers:
                if self._idle:
                    self._idle -= 1
                    followers.notify()
                    return
        if self._loops < self._workers:
            self._grow()

    def lend_reader(self) -> None:
        """The calling thread, if it is one of this session's workers, is about to block
        in a callback (``request()`` from ``on_message``): wake an idle follower or grow
        the pool, so that another worker reads meanwhile (the answer it waits for, and
        the messages after it). Any thread; does not block beyond a thread start."""
        if (self._workers > 1 and not self._draining
                and threading.current_thread() in self.threads):
            self._more()

    def drain(self) -> None:
        """Stop reading; workers finish the messages already read, then exit. Idempotent,
        non-blocking, callable from any thread (a worker included)."""
        self._draining = True
        self._drain_signal.set()
        self._conn.wake_reader()
        with self._followers:
            self._idle = 0
            self._followers.notify_all()

    def _work(self) -> None:
        token = otel_context.attach(self._otel_ctx)
        try:
            self._work_loop()
        except BaseException:  # a bug: say so rather than die silently
            # Logged here because a hosted loop's exception would otherwise only sit in
            # its Future, which nobody reads.
            logger.critical("wsengine worker crashed", exc_info=True)
            raise
        finally:
            otel_context.detach(token)

    def _work_loop(self) -> None:
        ready = self._ready
        popleft = ready.popleft
        when_empty = self._when_empty
        deliver = self._deliver
        pause = self._pause_lock
        several = self._workers > 1
        # The plain deliver (see make_deliver) is run inline: a Python call per message is
        # about a tenth of the time a small message costs. Same steps, same order. The
        # hand-off is looked at before popleft(): the IndexError of an empty one, once per
        # batch, cost more than the look per message.
        plain: _Plain | None = getattr(deliver, _PLAIN, None)
        if plain is None:
            while True:
                if ready:
                    try:
                        message = popleft()
                    except IndexError:  # another worker (or a drop policy) took the last one
                        continue
                else:
                    got = when_empty(several)
                    if got is None:
                        continue
                    if got is False:
                        return
                    message = got
                if several and ready and time.perf_counter() - self._refilled_at > WAKE_AFTER:
                    self._more()
                if pause.wanted:
                    self._step_back()
                deliver(message)
        session, on_message, requests, offer, interrupted = plain
        if not several:
            # One worker (the same steps as below, less the hand-over check): it runs
            # per message, so what it can leave out counts.
            while True:
                if ready:
                    try:
                        message = popleft()
                    except IndexError:  # another worker (or a drop policy) took the last one
                        continue
                else:
                    got = when_empty(False)
                    if got is None:
                        continue
                    if got is False:
                        return
                    message = got
                if pause.wanted:
                    self._step_back()
                if requests and offer(message):
                    continue
                try:
                    on_message(session, message)
                except Exception:
                    logger.exception("on_message raised; the engine goes on")
                except BaseException as error:
                    interrupted("on_message", error)
        clock = time.perf_counter
        more = self._more
        while True:
            if ready:
                try:
                    message = popleft()
                except IndexError:  # another worker (or a drop policy) took the last one
                    continue
            else:
                got = when_empty(True)
                if got is None:
                    continue
                if got is False:
                    return
                message = got
            # Messages wait behind this one: if they have waited long (slow callbacks),
            # hand them to another worker.
            if ready and clock() - self._refilled_at > WAKE_AFTER:
                more()
            if pause.wanted:
                self._step_back()
            if requests and offer(message):
                continue
            try:
                on_message(session, message)
            except Exception:
                logger.exception("on_message raised; the engine goes on")
            except BaseException as error:
                interrupted("on_message", error)

    def _when_empty(self, several: bool) -> Message | Literal[False] | None:
        """The hand-off is empty: return a held-back message, refill the hand-off (or
        wait while another worker does) and return None to look again, or return False
        when the session drained and this worker loop ends."""
        held = self._held
        if held:
            # What the backstop read while we were all busy: next in line.
            taken = self._take_held()
            if taken is not None and several and held:
                self._more()  # rare (we were all busy): more hands for the rest
            return taken
        if self._draining:
            return False
        read_turn = self._read_turn
        if read_turn.acquire(blocking=False):
            try:
                self._refill()
            finally:
                read_turn.release()
            if several:
                self._refilled_at = time.perf_counter()
            return None
        if self._backstop_holding:
            # The backstop reads while we are all busy: we are not now.
            self._turn_wanted = True
            self._conn.wake_reader()
        followers = self._followers
        with followers:
            if (not self._ready and not held and read_turn.locked()
                    and not self._draining):
                self._idle += 1  # taken off by whoever notifies us
                followers.wait()
        return None

    def _refill(self) -> None:
        """Read until at least one message is in _ready, or the session drains.

        The pause lock is held only around the non-blocking ``read_available``; waiting for
        the socket happens without it, so a pausing thread gets the lock at once even
        against a silent server. It reads first and waits only when that found nothing (or
        failed): under load the socket or the parser nearly always has the next batch, and
        ``wait_readable`` measured about 15% of a worker's time there.
        """
        if self._held:
            return  # the backstop read ahead: those go first
        conn = self._conn
        pause = self._pause_lock
        errors_in_a_row = 0
        # True for as long as this turn finds nothing: the keepalive may judge silence
        # only then (not while workers are busy and nobody reads).
        self.waiting_for_data = True
        wait = False
        try:
            while not self._draining:
                if wait:
                    conn.wait_readable(None)
                wait = True
                # Nobody wants it (nearly always): one non-blocking try, no timed wait.
                if (pause.wanted or not engine_acquire(pause, False)) and not (
                        self._take_pause_lock()):
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

    def _take_held(self) -> Message | None:
        """Pop the oldest held-back message (None if another worker took the last)."""
        with self._held_lock:
            try:
                message = self._held.popleft()
            except IndexError:
                return None
            self._held_bytes -= len(message.data)
            return message

    # -- the backstop reader ---------------------------------------------------------------
    #
    # Runs on the supervisor's thread (see _supervisor), between its keepalive checks: when
    # no worker holds the read turn (they are all in on_message), it takes the turn and
    # reads, so that pings are answered and the peer's close and a dead connection are
    # noticed however long the callbacks take. What it reads goes to _held: with "block"
    # up to hold_limit bytes (then it stops reading: TCP backpressure); with the drop
    # policies, _ready and _held together keep at most queue_size messages. It gives the
    # turn back as soon as a worker wants it.

    def backstop(self, until: float) -> bool:
        """Read while every worker is busy, until ``until`` (``time.monotonic()``), the
        session drains, or a worker wants the read turn.

        Called by the supervisor only. Blocks at most until ``until`` (plus one
        non-blocking read pass). Returns True when it still holds the read turn at
        ``until`` (call again to go on), False when it does not (a worker reads, a user
        wants the pause lock, the hold-back is full, the session drains): the caller
        then waits until ``until`` before trying again.
        """
        block = self._overflow == "block"
        if self._workers > 1 and not self._draining and (
            self._held or (self._ready and time.perf_counter() - self._refilled_at > WAKE_AFTER)
        ):
            # Messages wait while the workers are all in callbacks (one may never return):
            # another worker takes them.
            self._more()
        if not self._backstop_holding:
            if (self._draining or self._pause_lock.wanted
                    or (block and self._held_bytes >= self._hold_limit)
                    or not self._read_turn.acquire(blocking=False)):
                return False
            self._backstop_holding = True
        conn = self._conn
        pause = self._pause_lock
        # "block" reads one message at a time, so that the hold-back ends at most one
        # message past hold_limit; the drop policies read in batches (they never back up).
        size = 1 if block else BACKSTOP_BATCH
        while True:
            if (self._draining or self._turn_wanted or self._idle or pause.wanted
                    or (block and self._held_bytes >= self._hold_limit)
                    or not engine_acquire(pause, False)):
                self.release_backstop()
                return False
            error: Exception | None = None
            try:
                batch = conn.read_available(size)
            except Exception as exc:
                batch, error = [], exc
            finally:
                engine_release(pause)
            if isinstance(error, ConnectionClosedError):
                # The peer's close, or the connection died: as a worker reader would.
                self._draining = True
                self.release_backstop()
                self._lost(error)
                return False
            if error is not None:
                self.release_backstop()
                self._read_error(error)
                return False
            if batch:
                self.backstop_reading = False
                self._hold(batch)
                if self._received is not None:
                    self._received(batch)
                if self._workers > 1 and self._loops < self._workers:
                    self._grow()  # every worker is busy: one more takes what we hold
                continue
            # All the socket had is read: silence from now on says something.
            self.backstop_reading = True
            left = until - time.monotonic()
            if left <= 0:
                return True  # keep the turn, and the keepalive's cue, to the next call
            conn.wait_readable(min(left, BACKSTOP_SLICE))

    def release_backstop(self) -> None:
        """Give the read turn back, if the backstop holds it, and wake a waiting worker.
        Supervisor only; idempotent."""
        if not self._backstop_holding:
            return
        self.backstop_reading = False
        self._backstop_holding = False
        self._turn_wanted = False
        self._read_turn.release()
        with self._followers:
            self._idle = 0
            self._followers.notify_all()

    def _hold(self, batch: list[Message]) -> None:
        """Keep what the backstop read, applying the overflow policy."""
        held = self._held
        dropped = 0
        with self._held_lock:
            if self._overflow == "block":
                held.extend(batch)
                self._held_bytes += sum(len(message.data) for message in batch)
            else:
                ready = self._ready
                bound = self._queue_size
                newest = self._overflow == "drop_newest"
                for message in batch:
                    if len(ready) + len(held) >= bound:
                        if newest:
                            dropped += 1
                            continue
                        if held:
                            self._held_bytes -= len(held.popleft().data)
                            dropped += 1
                        else:
                            try:
                                ready.popleft()  # a worker may take it first: then no drop
                            except IndexError:
                                pass
                            else:
                                dropped += 1
                    held.append(message)
                    self._held_bytes += len(message.data)
        if dropped and self._dropped is not None:
            self._dropped(dropped)

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
        """Shut the executor down and wait for the workers (not the calling thread) to end;
        return those still alive. Call after ``drain()``; blocks up to ``timeout`` seconds
        (None: no limit). Idempotent."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._grow_lock:
            self._joined = True
            threads = list(self.threads)
            executor = self.executor
        if executor is not None:
            # Every loop was picked up when submitted, so nothing is cancelled: idle
            # threads end at once, the others as soon as their loop returns.
            executor.shutdown(wait=False, cancel_futures=True)
        current = threading.current_thread()
        for thread in threads:
            if thread is current:
                continue
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return [t for t in threads if t.is_alive() and t is not current]


class _Arrival:
    """A hosted loop meeting the thread that submitted it (see ``Dispatcher._host_one``)."""

    __slots__ = ("arrived", "go", "hosted", "thread")

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        # Set once by the loop when it runs; the submitter waits (bounded) for it.
        self.arrived = threading.Event()
        # Set once by the submitter after checking the thread; the loop waits for it.
        self.go = threading.Event()
        self.hosted = False


def _on_daemon_thread(action: Callable[[], None], name: str) -> None:
    """Run ``action`` on a daemon thread: the calling one if it is daemon, else a helper
    that is joined here. Re-raises what ``action`` raised."""
    if threading.current_thread().daemon:
        action()
        return
    errors: list[BaseException] = []

    def run() -> None:
        try:
            action()
        except BaseException as error:
            errors.append(error)

    # Lives for the submits of one start() and is joined right away.
    helper = threading.Thread(target=run, name=name, daemon=True)
    helper.start()
    helper.join()
    if errors:
        raise errors[0]


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


def make_deliver(
    session: Session,
    on_message: Callable[[Session, Message], None],
    telemetry: Telemetry,
    interrupted: Callable[[str, BaseException], None],
) -> Callable[[Message], None]:
    """The per-message function the workers call: the hot path, in three variants.

    Plain: no span and no clock per message (nothing records). Timed: the meter records,
    so on_message is timed. Traced: the session's span records (sampled), so each
    message gets a ``wsengine.receive`` span with ``wsengine.callback.on_message``
    inside. A message a pending ``request()`` matches goes to it instead. What
    ``on_message`` raises is logged with its traceback; KeyboardInterrupt and
    SystemExit go to ``interrupted``, which stops the run.
    """
    requests = session._core.requests  # mutated in place, never rebound
    offer = session._core.offer
    duration = telemetry.callback_duration
    attributes = telemetry.callback_attributes("on_message")

    if session._core.span.is_recording():
        start_span = telemetry.tracer.start_span
        session_ctx = session._core.otel_ctx
        callback_name = SPAN_CALLBACK_PREFIX + "on_message"

        def deliver_traced(message: Message) -> None:
            # Two SDK spans per message cost most of the time here, so they are made
            # without start_as_current_span's layers: the receive span is the explicit
            # parent, and only the callback's span is attached (made current).
            receive = start_span(
                SPAN_RECEIVE,
                context=session_ctx,
                attributes={
                    "wsengine.message.type": message.type.name,
                    "wsengine.message.size": len(message.data),
                },
            )
            try:
                if requests and offer(message):
                    return
                span = start_span(callback_name, context=trace.set_span_in_context(receive))
                token = otel_context.attach(trace.set_span_in_context(span))
                started = time.perf_counter()
                try:
                    on_message(session, message)
                except Exception as error:
                    mark_error(span, error)
                    logger.exception("on_message raised; the engine goes on")
                except BaseException as error:
                    mark_error(span, error)
                    interrupted("on_message", error)
                finally:
                    otel_context.detach(token)
                    span.end()
                    duration.record(time.perf_counter() - started, attributes)
            finally:
                receive.end()

        return deliver_traced

    if telemetry.metrics_live:

        def deliver_timed(message: Message) -> None:
            if requests and offer(message):
                return
            started = time.perf_counter()
            try:
                on_message(session, message)
            except Exception:
                logger.exception("on_message raised; the engine goes on")
            except BaseException as error:
                interrupted("on_message", error)
            finally:
                duration.record(time.perf_counter() - started, attributes)

        return deliver_timed

    def deliver(message: Message) -> None:
        # Dispatcher._work_loop runs these same steps inline (see _PLAIN): keep both alike.
        if requests and offer(message):
            return
        try:
            on_message(session, message)
        except Exception:
            logger.exception("on_message raised; the engine goes on")
        except BaseException as error:
            interrupted("on_message", error)

    plain: _Plain = (session, on_message, requests, offer, interrupted)
    setattr(deliver, _PLAIN, plain)
    return deliver
