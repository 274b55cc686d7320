# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""Sphinx configuration: ``python -m sphinx -W -b html docs <dir>`` (tests/test_docs.py)."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE / "_ext")]

from wsengine.version import __version__  # noqa: E402

project = "wsengine"
author = "The wsengine authors"
copyright = "The wsengine authors"
release = version = __version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "figures",  # docs/_ext/figures.py: the state diagram and the throughput plot, as SVG
]
html_theme = "furo"
html_title = f"wsengine {release}"
exclude_patterns = ["_build", ".gitignore"]
templates_path: list[str] = []

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
