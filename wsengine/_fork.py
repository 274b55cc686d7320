# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""Engines across ``os.fork()``: a child process forgets its parent's connections.

A child made by ``os.fork()`` (gunicorn ``--preload``, Celery prefork, a ``multiprocessing``
pool with the fork start method) holds only the thread that forked. The engines it inherits
from the parent have lost their threads, their locks may be held forever by threads that
do not exist there, and their sockets are the parent's: a frame the child wrote would land
in the middle of the parent's stream (or break its TLS record sequence), and ``shutdown()``
on the child's copy would cut the parent's TCP connection.

So, in the child, right after the fork (``os.register_at_fork(after_in_child=...)``, which
runs before ``fork()`` returns there), every engine that was running:

- has its adapter forget the connection (:meth:`ConnectionAdapter.forget_after_fork`):
  the child's copies of the file descriptors are closed with ``close()`` alone, never
  ``shutdown()``, a close frame or a TLS ``close_notify``; the parent's connection, whose
  descriptors the parent still holds, goes on untouched;
- gets a new state lock, a new pause lock and a new send rate limiter (its send buffer
  is dropped, counted in ``dropped_sends``), its session is marked closed, and its run
  (threads, dispatcher, events) is dropped; the session's span is not ended: it is the
  parent's to end (ending it here would export a second copy of it);
- is ``STOPPED``: ``send()`` raises :class:`~wsengine.errors.EngineStateError` saying the
  engine was started before the fork, and ``start()`` opens a connection of the child's own.

The hook only assigns attributes and closes descriptors. It takes no lock, logs nothing and
calls no OpenTelemetry SDK code (so the child's copies of the parent's metric counters are
left as the SDK copied them): any lock may have been held, at the instant of the fork, by a
parent thread that does not exist in the child. The parent is not involved at all: nothing
runs before the fork or after it in the parent.
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
import weakref
from typing import TYPE_CHECKING

from wsengine._pause import PauseLock
from wsengine.session import TokenBucket
from wsengine.types import EngineState

if TYPE_CHECKING:
    from wsengine.engine import WebsocketEngine

__all__ = ["forked_send_message", "watch"]

# The pid of this process, updated in each child: in the child it still holds the parent's
# pid when the hook runs, which is what the message of send() names.
_pid = os.getpid()


def watch(running: weakref.WeakSet[WebsocketEngine]) -> None:
    """Make every engine in ``running`` forget its connection in a forked child.

    Called once, by ``wsengine.engine`` at import, with its registry of running engines
    (engines leave it when they stop, so an engine stopped before the fork is untouched).
    """
    os.register_at_fork(after_in_child=lambda: _after_fork_in_child(running))


def _after_fork_in_child(running: weakref.WeakSet[WebsocketEngine]) -> None:
    """``os.register_at_fork``'s child hook: runs in the child's only thread."""
    global _pid
    parent, _pid = _pid, os.getpid()
    engines = list(running)
    # Nothing here is running any more: interpreter exit must not stop (or warn about)
    # the parent's engines in the child.
    running.clear()
    for engine in engines:
        _forget(engine, parent)


def _forget(engine: WebsocketEngine, parent: int) -> None:
    """Leave ``engine`` STOPPED with no thread, no lock held and no connection."""
    # Locks a parent thread may have held at the fork would stay held forever here.
    engine._state_lock = threading.Lock()
    engine._pause = PauseLock()
    engine.pause_lock = engine._pause
    # The send buffer was the parent's to send (counted as dropped here, like a stop), and
    # the rate limiter's condition may be held by a parent thread: a fresh one.
    engine._dropped_sends += len(engine._send_buffer)
    engine._send_buffer = collections.deque()
    config = engine._config
    if config.send_rate is not None:
        engine._limiter = TokenBucket(config.send_rate, config.send_burst)
    run = engine._run
    sessions = {engine._session, run.session if run is not None else None}
    for session in sessions:
        if session is not None:
            # No lock: send() and request() read the flag first and raise.
            session._core.closed = True
    engine._session = None
    engine._run = None
    engine._state = EngineState.STOPPED
    engine._forked_from = parent
    # Last, and guarded: an adapter of the user's that raises must not leave the engines
    # after it running here. Nothing can be reported: logging could block (see above).
    with contextlib.suppress(Exception):
        engine._adapter.forget_after_fork()


def forked_send_message(parent: int, display_url: str) -> str:
    """The message of the EngineStateError that ``send()`` raises in a forked child."""
    return (
        f"send() in process {os.getpid()} on an engine for {display_url} that was started "
        f"in process {parent} before os.fork(): a forked child cannot use its parent's "
        "connection, so the engine is STOPPED here. Start engines after the fork, in each "
        "worker process (gunicorn: the post_fork hook; Celery: worker_process_init; "
        "multiprocessing: the pool's initializer), or call start() in this process to open "
        "a connection of its own."
    )
