# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""The README's promises: its two commands, and every Python snippet runs as written."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from tests.support.servers import echo_handler, run_ws_server

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.rst").read_text(encoding="utf-8")
#: The address the snippets use (the example server's default); tests swap in a free port.
SNIPPET_URL = "ws://127.0.0.1:8765/"


def python_snippets(text: str) -> list[str]:
    """The bodies of the ``.. code-block:: python`` blocks, dedented, in order."""
    snippets = []
    for match in re.finditer(r"^\.\. code-block:: python\n\n((?:(?: {4}.*)?\n)+)", text, re.M):
        lines = match.group(1).splitlines()
        snippets.append("\n".join(line[4:] for line in lines).strip() + "\n")
    return snippets


def test_readme_opens_with_the_example_and_test_commands() -> None:
    """The first literal block holds the example command and the CI's test command (CI
    then runs the nox sessions)."""
    first_block = README.split("::\n\n", 1)[1].split("\n\n\n", 1)[0]
    commands = [line.strip() for line in first_block.splitlines() if line.strip()][:2]
    assert commands[0].endswith("python -m example")
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    test_command = commands[1].rsplit("&&", 1)[1].strip()
    assert test_command == "python -m pytest" and test_command in ci_lines
    assert ci_lines.index('python -m pip install --quiet -e ".[test]"') < ci_lines.index(
        test_command) < ci_lines.index("python -m nox")
    assert '".[test]"' in commands[1] and '".[example]"' in commands[0]


@pytest.mark.timeout(120)
def test_every_python_snippet_runs_alone() -> None:
    """Each snippet runs by itself, in a fresh namespace (as a reader would paste it),
    against a local echo server: none leans on an import or a name of another. (The
    guide's snippets, once here, are in docs/ and run by tests/test_docs.py.)"""
    snippets = python_snippets(README)
    assert len(snippets) >= 1
    output = io.StringIO()
    with run_ws_server(echo_handler) as server, contextlib.redirect_stdout(output):
        for number, snippet in enumerate(snippets, 1):
            code = compile(snippet.replace(SNIPPET_URL, server.url), f"README snippet {number}",
                           "exec")
            exec(code, {"__name__": "readme"})
    printed = output.getvalue()
    assert "got hello" in printed
