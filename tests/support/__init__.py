# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""Test servers shared by the test suite: a websockets server and a raw frame server."""
