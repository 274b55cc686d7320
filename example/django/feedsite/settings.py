# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""Settings of the feed site. ``FEED_URL`` (environment) is where each worker connects."""

import os

# An example: set DJANGO_SECRET_KEY in any real deployment.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "wsengine-example-not-a-secret")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = ["feed"]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "feedsite.urls"
WSGI_APPLICATION = "feedsite.wsgi.application"
DATABASES: dict[str, dict[str, str]] = {}  # the feed needs no database
USE_TZ = True

#: The WebSocket feed each worker process connects to.
FEED_URL = os.environ.get("FEED_URL", "ws://127.0.0.1:8765/")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {
        "feed": {"handlers": ["stderr"], "level": "INFO"},
        "wsengine": {"handlers": ["stderr"], "level": "WARNING"},
    },
}
