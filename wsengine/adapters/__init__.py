# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""Connection adapters: the engine's only view of a websocket library."""

from wsengine.adapters.base import ConnectionAdapter

__all__ = ["ConnectionAdapter"]
