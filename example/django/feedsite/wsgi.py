# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""The WSGI application, for gunicorn (``gunicorn.conf.py`` names it)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "feedsite.settings")

application = get_wsgi_application()
