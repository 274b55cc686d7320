# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
__version__ = "0.1.0"
