# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""The feed app's configuration.

``ready()`` deliberately starts nothing: it runs at import, which under gunicorn
``--preload`` happens in the master, before the workers fork, and in every management
command. The engine is started per worker by ``gunicorn.conf.py``'s ``post_fork`` hook.
"""

from django.apps import AppConfig


class FeedConfig(AppConfig):
    name = "feed"
