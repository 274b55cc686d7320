#!/usr/bin/env python
# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""Django's command-line utility for the feed site (``python manage.py runfeed URL``)."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "feedsite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
