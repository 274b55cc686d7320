# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""Keepalive: a ping every ``ping_interval``; a peer silent for ``ping_timeout`` after a
ping is dead."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from wsengine.adapters.base import ConnectionAdapter
from wsengine.errors import ConnectionClosedError

__all__ = ["Keepalive"]

logger = logging.getLogger("wsengine")


class Keepalive:
    """Watches one connection from the engine's supervisor thread.

    Any frame from the peer (pongs included, as counted by the adapter's
    ``last_received``) answers every ping sent before it. No verdict is given while a user
    pauses the engine or while the engine is not reading (busy workers, backpressure), nor
    while bytes wait unread on the socket: then silence says nothing about the peer.

    Args:
        conn: the connection's adapter.
        interval: seconds between pings.
        timeout: seconds of silence after the oldest unanswered ping that mean death.
        paused: tells whether a user wants or holds the pause lock.
        reading: tells whether the engine is blocked waiting for data from the peer.
        rtt: receives each measured ping-to-pong time, in seconds.
    """

    def __init__(
        self,
        conn: ConnectionAdapter,
        interval: float,
        timeout: float,
        *,
        paused: Callable[[], bool],
        reading: Callable[[], bool],
        rtt: Callable[[float], None],
    ) -> None:
        self._conn = conn
        self._interval = interval
        self._timeout = timeout
        self._paused = paused
        self._reading = reading
        self._rtt = rtt

    def watch(self, ended: threading.Event) -> bool:
        """Ping until ``ended`` is set (return False) or the peer is dead (return True).

        Blocks the calling thread; every wait is on ``ended``, so ending the session ends
        the watch at once.
        """
        conn = self._conn
        next_ping = time.monotonic() + self._interval
        unanswered: float | None = None  # when the oldest ping not yet answered went out
        last_ping: float | None = None  # the last ping whose round trip is not measured yet
        while True:
            wake = next_ping if unanswered is None else min(next_ping, unanswered + self._timeout)
            if ended.wait(max(0.0, wake - time.monotonic())):
                return False
            now = time.monotonic()
            if last_ping is not None:
                pong = getattr(conn, "last_pong", 0.0)
                if isinstance(pong, float) and pong >= last_ping:
                    self._rtt(pong - last_ping)
                    last_ping = None
            if unanswered is not None and conn.last_received >= unanswered:
                unanswered = None
            if self._paused():
                # Suspended: frames sit unread while a user pilots the connection.
                unanswered = None
                next_ping = now + self._interval
                continue
            if unanswered is not None and now >= unanswered + self._timeout:
                if self._reading() and not conn.has_pending_data():
                    return True
                unanswered = None  # the engine was not reading: no verdict
            if now >= next_ping:
                next_ping = now + self._interval
                try:
                    conn.ping()
                except ConnectionClosedError:
                    continue  # the reader reports the closed connection itself
                except Exception:
                    logger.warning("keepalive ping failed", exc_info=True)
                    continue
                last_ping = now
                if unanswered is None:
                    unanswered = now
