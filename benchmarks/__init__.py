# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""Benchmarks of wsengine against websocket-client and websockets; see ``run.py``."""
