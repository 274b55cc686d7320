# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""gunicorn settings for the feed site: each worker process holds its own engine.

Run ``gunicorn -c gunicorn.conf.py`` (from any directory; ``FEED_URL`` says where the
workers connect). The master forks the workers; an engine never crosses a fork, so
``post_fork`` starts one in each new worker and ``worker_exit`` stops it (close frame
1000) when the worker ends: on SIGTERM or SIGINT to the master, on a reload, or when the
worker is recycled. Do not start engines at import time: with ``--preload`` the import
happens in the master, and the workers' copies refuse to send (``EngineStateError``).
"""

import os
from pathlib import Path
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "feedsite.settings")

chdir = str(Path(__file__).resolve().parent)  # the project's modules are found from here
wsgi_app = "feedsite.wsgi:application"
bind = ["127.0.0.1:8000"]
workers = 2
worker_class = "sync"


def post_fork(server: Any, worker: Any) -> None:
    """In each new worker, right after the fork: start its engine.

    A feed that cannot be reached does not stop the site: the view answers 503 until the
    worker is recycled.
    """
    from feed import engine as feed

    from wsengine import EngineStartError

    try:
        feed.start()
    except EngineStartError as error:
        server.log.error("worker %s: the feed engine did not start: %s", worker.pid, error)


def worker_exit(server: Any, worker: Any) -> None:
    """In the worker, as it exits: stop its engine (close frame, threads joined)."""
    from feed import engine as feed

    feed.stop(timeout=5.0)
