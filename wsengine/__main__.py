# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""``python -m wsengine URL ...``: the ``wsengine`` command (see :mod:`wsengine.cli`)."""

from wsengine.cli import run

if __name__ == "__main__":
    run()
