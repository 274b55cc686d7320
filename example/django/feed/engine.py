# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""This process's feed engine: one per worker process, started after the fork.

gunicorn forks its workers from a master process, and threads and connections do not
survive a fork: in the child, wsengine stops an engine that was running in the parent
(its ``send()`` raises ``EngineStateError`` saying so). So every worker starts an engine
of its own once forked (``post_fork`` in ``gunicorn.conf.py``) and stops it when it exits
(``worker_exit``). Views reach it with :func:`get`.

The engine runs on its own threads; a sync worker's request thread only calls ``send()``,
which is thread-safe.
"""

from __future__ import annotations

import logging
import os

from django.conf import settings

from wsengine import (
    EngineConfig,
    EngineStateError,
    HandshakeResponse,
    Message,
    Session,
    WebsocketClient,
    WebsocketEngine,
)

__all__ = ["FeedClient", "get", "start", "stop"]

logger = logging.getLogger("feed")

_engine: WebsocketEngine | None = None


class FeedClient(WebsocketClient):
    """Says which process it is when it connects, and logs what the feed sends."""

    def on_open(self, session: Session, response: HandshakeResponse, restarting: bool) -> None:
        session.send(f"hello from pid {os.getpid()}")

    def on_message(self, session: Session, message: Message) -> None:
        logger.info("feed: %r", message.data)


def start(url: str | None = None) -> WebsocketEngine:
    """Connect this process's engine to ``url`` (default ``settings.FEED_URL``).

    Call it after the fork, in the process that uses the engine. Blocks until the
    connection is open (at most ``open_timeout``), then returns; the engine reconnects on
    its own from then on.

    Raises:
        EngineStartError: the first connection failed.
    """
    global _engine
    engine = WebsocketEngine(url or settings.FEED_URL, FeedClient(),
                             config=EngineConfig(workers=1, stop_timeout=5.0))
    engine.start()
    _engine = engine
    return engine


def stop(timeout: float = 5.0) -> None:
    """Stop this process's engine (close frame, threads joined). Idempotent."""
    global _engine
    engine, _engine = _engine, None
    if engine is not None:
        engine.stop(timeout)


def get() -> WebsocketEngine:
    """This process's engine.

    Raises:
        EngineStateError: none was started in this process.
    """
    if _engine is None:
        raise EngineStateError(
            f"no feed engine in process {os.getpid()}: start it after the fork "
            "(gunicorn.conf.py's post_fork hook does)"
        )
    return _engine
