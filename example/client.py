# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""EchoClient: sends a message, waits for its echo, waits ``interval``, sends the next.

Every ``pause_every`` echoes it hands a :class:`PauseRequest` to the application (see
:mod:`example.app`) instead of scheduling its next message, and goes on only when the
application calls :meth:`EchoClient.schedule_next`: so when the application pilots the
connection by hand, the server's next frame is the answer to its own request.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from dataclasses import dataclass, fields

from opentelemetry import context as otel_context
from opentelemetry import trace

from wsengine import (
    CloseMessage,
    ConnectionClosedError,
    HandshakeResponse,
    Message,
    Session,
    WebsocketClient,
)
from wsengine.client import ExitFunction

__all__ = ["Counters", "EchoClient", "PauseRequest"]

logger = logging.getLogger("example")


@dataclass
class Counters:
    """What the client has seen so far. Updated under :attr:`EchoClient.counters_lock`."""

    sent: int = 0
    received: int = 0
    opens: int = 0
    restarts: int = 0
    errors: int = 0

    def __str__(self) -> str:
        return " ".join(f"{field.name}={getattr(self, field.name)}" for field in fields(self))


@dataclass(frozen=True)
class PauseRequest:
    """Echo number ``echoes`` came back on ``session``: time for the application to pause."""

    session: Session
    echoes: int
    #: The context of the ``on_message`` call that asked, so that the application's
    #: ``example.pause`` span joins the session's trace under that message.
    context: otel_context.Context


class EchoClient(WebsocketClient):
    """Sends ``hello #n`` on open and after each echo, ``interval`` seconds later.

    The wait between an echo and the next message is a ``threading.Timer`` (its own thread,
    ``example-send-N``), so no engine worker is held during it; ``on_close`` and
    :meth:`cancel` cancel it, so ``engine.stop()`` never waits for it.

    Args:
        interval: seconds between an echo and the next message; >= 0.
        count: stop the engine (``session.exit()``) after this many echoes; 0: never.
        max_restarts: failed reconnection attempts in a row before giving up
            (``exit()`` in ``on_restart_error``); >= 1.
        pause_every: after every this many echoes, put a :class:`PauseRequest` on
            :attr:`pause_requests` and send nothing more until someone calls
            :meth:`schedule_next`; 0: never.
        tracer_provider: for the client's own ``example.send`` spans; default the global
            provider.

    Raises:
        ValueError: a bad argument.
    """

    def __init__(
        self,
        *,
        interval: float = 5.0,
        count: int = 0,
        max_restarts: int = 5,
        pause_every: int = 0,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        if not (math.isfinite(interval) and interval >= 0):
            raise ValueError(f"interval must be a finite number >= 0, got {interval!r}")
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count!r}")
        if max_restarts < 1:
            raise ValueError(f"max_restarts must be >= 1, got {max_restarts!r}")
        if pause_every < 0:
            raise ValueError(f"pause_every must be >= 0, got {pause_every!r}")
        self.interval = interval
        self.count = count
        self.max_restarts = max_restarts
        self.pause_every = pause_every
        self.counters = Counters()
        # Guards counters, _next_number and _timer; taken for a few statements by the
        # engine's threads, the timer thread and whoever reads the counters.
        self.counters_lock = threading.Lock()
        # Notified (under counters_lock) on every echo; waited on by wait_received().
        self._received_changed = threading.Condition(self.counters_lock)
        # Held by send_next() from numbering a message until it is counted as sent, so
        # that settled_snapshot() never sees a message half sent. Owned by whichever thread
        # sends (engine supervisor or timer); settled_snapshot() waits on it; never held
        # while waiting for anything but the kernel taking one small frame.
        self._send_lock = threading.Lock()
        #: Filled by the engine's worker (on_message) every ``pause_every`` echoes,
        #: emptied by the application's main loop; at most one request waits, since the
        #: client sends nothing more until the application answers it.
        self.pause_requests: queue.Queue[PauseRequest] = queue.Queue()
        self._next_number = 1
        # The pending "send the next message" timer, or None. Set by on_message, cancelled
        # and cleared by on_close and cancel(); ends on its own after one send.
        self._timer: threading.Timer | None = None
        #: Set when ``count`` echoes came back.
        self.done = threading.Event()
        #: Set when the client gave up reconnecting (``exit()`` in ``on_restart_error``).
        self.gave_up = threading.Event()
        self._tracer = trace.get_tracer("example", tracer_provider=tracer_provider)

    def snapshot(self) -> Counters:
        """A consistent copy of the counters."""
        with self.counters_lock:
            return Counters(**vars(self.counters))

    def settled_snapshot(self) -> Counters:
        """A copy of the counters taken while no send is under way, so that ``sent`` -
        ``received`` is exactly the messages whose echo is not delivered yet. Blocks only
        while a send is under way."""
        with self._send_lock:
            return self.snapshot()

    def wait_received(self, target: int, timeout: float) -> bool:
        """Block up to ``timeout`` seconds until ``target`` echoes were delivered in all;
        True if they were."""
        with self._received_changed:
            return self._received_changed.wait_for(
                lambda: self.counters.received >= target, timeout
            )

    def cancel(self) -> None:
        """Cancel the pending send, if any. Idempotent; does not block."""
        with self.counters_lock:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def send_next(self, session: Session) -> None:
        """Send the next ``hello #n`` on ``session``; a closed session is only logged.

        Runs on the engine's thread (from ``on_open``) or on the timer's thread.
        """
        with self._send_lock:
            with self.counters_lock:
                number = self._next_number
                self._next_number += 1
            text = f"hello #{number}"
            logger.info("sending %r", text)  # before: the echo may be logged before send returns
            with self._tracer.start_as_current_span("example.send") as span:
                span.set_attribute("example.message.number", number)
                try:
                    session.send(text)
                except ConnectionClosedError as error:
                    # The connection went while we waited: on_open of the next one starts
                    # over.
                    logger.info("not sent %r: connection closed (code %d)", text, error.code)
                    return
            with self.counters_lock:
                self.counters.sent += 1

    def on_open(self, session: Session, response: HandshakeResponse, restarting: bool) -> None:
        with self.counters_lock:
            self.counters.opens += 1
            if restarting:
                self.counters.restarts += 1
        logger.info(
            "connection %s open (HTTP %d%s)",
            session.id, response.status, ", reconnected" if restarting else "",
        )
        self.send_next(session)

    def on_message(self, session: Session, message: Message) -> None:
        with self.counters_lock:
            self.counters.received += 1
            received = self.counters.received
            self._received_changed.notify_all()
        logger.info("echo %d received: %r", received, message.data)
        if self.count and received >= self.count:
            logger.info("%d echoes received: exiting", received)
            self.done.set()
            session.exit()
            return
        if self.pause_every and received % self.pause_every == 0:
            # Nothing more goes out until the application has paused and asked the server
            # its own question, so the answer is the next frame it reads.
            self.pause_requests.put(PauseRequest(session, received, otel_context.get_current()))
            return
        self.schedule_next(session, otel_context.get_current())

    def schedule_next(self, session: Session, context: otel_context.Context) -> None:
        """Send the next message on ``session`` ``interval`` seconds from now, on a timer
        thread that runs in ``context``. Does not block; a no-op once ``session`` closed.

        Called from ``on_message``, and by the application when a pause no longer needs
        the client to hold back.
        """
        # The timer thread gets the caller's context, so its example.send span continues
        # the trace of the echo (or the pause) that triggered it.
        timer = threading.Timer(self.interval, self._send_in_context, args=(session, context))
        timer.daemon = True
        with self.counters_lock:
            if session.closed:
                return
            timer.name = f"example-send-{self._next_number}"  # the message it will send
            previous, self._timer = self._timer, timer
        if previous is not None:
            previous.cancel()
        timer.start()

    def _send_in_context(self, session: Session, ctx: otel_context.Context) -> None:
        token = otel_context.attach(ctx)
        try:
            if not session.closed:
                self.send_next(session)
        finally:
            otel_context.detach(token)

    def on_read_error(self, session: Session, error: Exception) -> None:
        with self.counters_lock:
            self.counters.errors += 1
        logger.warning("read error on %s: %s: %s", session.id, type(error).__name__, error)

    def on_close(self, session: Session, close: CloseMessage | None) -> CloseMessage | None:
        self.cancel()
        if close is None:
            logger.info("closing connection %s", session.id)
        else:
            logger.info(
                "connection %s closed: code %d%s",
                session.id, close.code, f" ({close.reason})" if close.reason else "",
            )
        return None

    def on_close_error(self, error: Exception) -> None:
        with self.counters_lock:
            self.counters.errors += 1
        logger.warning("closing failed: %s: %s", type(error).__name__, error)

    def on_restart_error(self, error: Exception, retry_count: int, exit: ExitFunction) -> None:
        with self.counters_lock:
            self.counters.errors += 1
        logger.warning(
            "reconnection attempt %d/%d failed: %s: %s",
            retry_count, self.max_restarts, type(error).__name__, error,
        )
        if retry_count >= self.max_restarts:
            logger.error("giving up after %d failed reconnection attempts", retry_count)
            self.gave_up.set()
            exit()
