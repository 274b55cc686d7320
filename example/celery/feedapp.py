# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""A Celery app whose prefork pool processes each hold one wsengine connection to a feed.

Run ``celery -A feedapp worker --pool=prefork --concurrency=2`` from this directory, with
``CELERY_BROKER_URL`` (default ``redis://127.0.0.1:6379/0``) and ``FEED_URL`` (default
``ws://127.0.0.1:8765/``) in the environment; ``CELERY_RESULT_BACKEND`` defaults to the
broker's URL.

The main worker process imports this module, then forks the pool's children; an engine
never crosses a fork (wsengine stops the child's copy of a running engine, whose
``send()`` then raises ``EngineStateError``). So the engine is *created* here, at import,
but *started* in each child on ``worker_process_init`` and stopped on
``worker_process_shutdown``, both sent in the child. Tasks run in the children and send
through their own process's engine. With ``--pool=solo`` or ``--pool=threads`` nothing
forks: connect the same two functions to ``worker_init`` and ``worker_shutdown`` instead.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown

from wsengine import (
    EngineConfig,
    EngineStartError,
    HandshakeResponse,
    Message,
    Session,
    WebsocketClient,
    WebsocketEngine,
)

__all__ = ["app", "feed", "send", "start_feed", "stop_feed"]

logger = logging.getLogger("feedapp")

BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
FEED_URL = os.environ.get("FEED_URL", "ws://127.0.0.1:8765/")

app = Celery(
    "feedapp",
    broker=BROKER_URL,
    backend=os.environ.get("CELERY_RESULT_BACKEND", BROKER_URL),
)
app.conf.update(
    # Each child connects in worker_process_init, before it reports itself up; the pool
    # kills a child that is not up within this many seconds (Celery's default is 4). It
    # is longer than the engine's open_timeout below, so a slow feed fails the start
    # (logged, see start_feed) rather than getting the child killed and forked again.
    worker_proc_alive_timeout=15.0,
    broker_connection_retry_on_startup=True,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
)


class FeedClient(WebsocketClient):
    """Says which process it is when it connects, and logs what the feed sends."""

    def on_open(self, session: Session, response: HandshakeResponse, restarting: bool) -> None:
        session.send(f"hello from pid {os.getpid()}")

    def on_message(self, session: Session, message: Message) -> None:
        logger.info("feed: %r", message.data)


#: This process's engine: created at import (in the main worker process, before the
#: fork), started only in the pool's children. Never call ``feed.start()`` at import: the
#: children's copies of an engine running in the parent refuse to send.
feed = WebsocketEngine(
    FEED_URL, FeedClient(),
    config=EngineConfig(workers=1, open_timeout=10.0, stop_timeout=5.0),
)


@worker_process_init.connect
def start_feed(**kwargs: Any) -> None:
    """In each pool child, right after the fork: connect its engine.

    Blocks until the connection is open (at most ``open_timeout``). A feed that cannot be
    reached does not take the worker down: the error is logged, and the tasks of this
    child raise ``EngineStateError`` until it is replaced.
    """
    try:
        feed.start()
    except EngineStartError as error:
        logger.error("pool process %s: the feed engine did not start: %s", os.getpid(), error)


@worker_process_shutdown.connect
def stop_feed(**kwargs: Any) -> None:
    """In the pool child, as it exits (warm shutdown, ``--max-tasks-per-child``, a pool
    shrink): close the connection with 1000 and join the engine's threads. Idempotent."""
    feed.stop(timeout=5.0)


@app.task(name="feedapp.send")
def send(text: str) -> int:
    """Send ``text`` to the feed through this pool process's engine; return the pid.

    Raises:
        EngineStateError: this process's engine has no open connection.
    """
    feed.send(text)
    return os.getpid()
