# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""The feed app: one wsengine engine per process, a view that sends through it, and the
``runfeed`` management command."""
