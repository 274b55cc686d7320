# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""The feed site: a Django project whose worker processes each hold a wsengine engine."""
