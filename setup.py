# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""Shim for tools that still call setup.py; the metadata lives in setup.cfg."""

from setuptools import setup

setup()
