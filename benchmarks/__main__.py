# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""``python -m benchmarks``: run the benchmark figures (see ``run.py``)."""

import sys

from benchmarks.run import main

sys.exit(main())
