# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""The documentation site: it builds warning-free, documents every public name, and every
snippet in it runs as written (Python snippets and ``wsengine`` command lines)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import itertools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import wsengine
from tests.support.servers import echo_handler, run_ws_server
from tests.test_readme import README, SNIPPET_URL, python_snippets

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.rst"))
sys.path.insert(0, str(DOCS / "_ext"))
import figures  # noqa: E402 - docs/_ext/figures.py, the build's SVG figures

needs_sphinx = pytest.mark.skipif(
    importlib.util.find_spec("sphinx") is None or importlib.util.find_spec("furo") is None,
    reason="sphinx and furo are not installed (pip install -e '.[docs]')",
)


@needs_sphinx
@pytest.mark.timeout(120)
def test_the_site_builds_without_warnings_and_documents_every_public_name(
    tmp_path: Path,
) -> None:
    """``python -m sphinx -W -b html docs <dir>`` succeeds, and the reference has an entry
    for every name in ``wsengine.__all__`` and for both adapters."""
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", "docs", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=110,
    )
    assert result.returncode == 0, result.stderr
    reference = (tmp_path / "reference.html").read_text(encoding="utf-8")
    documented = [*(f"wsengine.{name}" for name in wsengine.__all__),
                  "wsengine.adapters.websocket_client.WebsocketClientAdapter",
                  "wsengine.adapters.websockets_sync.WebsocketsAdapter"]
    missing = [name for name in documented if f'id="{name}"' not in reference]
    assert not missing
    images = {path.name for path in (tmp_path / "_images").iterdir()}
    assert {"states.svg", "throughput.svg"} <= images


def test_every_page_is_in_the_table_of_contents() -> None:
    """No page is left out of the site's navigation."""
    index = (DOCS / "index.rst").read_text(encoding="utf-8")
    listed = set(re.findall(r"^   ([a-z-]+)$", index, re.M))
    assert listed == {page.stem for page in PAGES} - {"index"}


@pytest.mark.timeout(120)
def test_every_python_snippet_in_the_docs_runs_alone() -> None:
    """Each Python snippet of every page runs by itself, in a fresh namespace, against a
    local echo server (as test_readme does for the README)."""
    snippets = [(page.name, snippet) for page in PAGES
                for snippet in python_snippets(page.read_text(encoding="utf-8"))]
    assert len(snippets) >= 12
    output = io.StringIO()
    with run_ws_server(echo_handler) as server, contextlib.redirect_stdout(output):
        for number, (page, snippet) in enumerate(snippets, 1):
            code = compile(snippet.replace(SNIPPET_URL, server.url),
                           f"{page} snippet {number}", "exec")
            exec(code, {"__name__": "docs"})
    printed = output.getvalue()
    assert "got hello" in printed and "logged in:" in printed
    assert "extensions: permessage-deflate" in printed and "extensions: None" in printed


def console_examples(text: str) -> list[tuple[str, str]]:
    """(command, expected output) for each ``$ `` line of the ``console`` blocks."""
    examples: list[tuple[str, str]] = []
    for match in re.finditer(r"^\.\. code-block:: console\n\n((?:(?: {4}.*)?\n)+)", text,
                             re.M):
        for line in match.group(1).splitlines():
            line = line[4:]
            if line.startswith("$ "):
                examples.append((line[2:], ""))
            elif examples and line:
                command, output = examples[-1]
                examples[-1] = (command, output + line + "\n")
    return examples


def test_every_command_line_example_prints_what_the_docs_show() -> None:
    """Each ``$ wsengine ...`` example, run against a local echo server, prints exactly the
    lines the page shows under it."""
    examples = [example for page in PAGES
                for example in console_examples(page.read_text(encoding="utf-8"))]
    assert len(examples) >= 2
    command_line = f"{shlex.quote(sys.executable)} -m wsengine "
    with run_ws_server(echo_handler) as server:
        for command, expected in examples:
            assert "wsengine " in command
            shell = command.replace(SNIPPET_URL, server.url).replace("wsengine ", command_line)
            result = subprocess.run(shell, shell=True, cwd=ROOT, capture_output=True,
                                    text=True, timeout=30)
            assert (result.returncode, result.stdout) == (0, expected), (command,
                                                                          result.stderr)


def test_getting_started_shows_the_readme_commands() -> None:
    """The getting-started page opens with the README's two commands, word for word."""
    def first_commands(text: str) -> list[str]:
        lines = text.split("::\n\n", 1)[1].splitlines()
        block = itertools.takewhile(lambda line: not line or line.startswith("    "), lines)
        return [line.strip() for line in block if line.strip()]

    page = (DOCS / "getting-started.rst").read_text(encoding="utf-8")
    commands = first_commands(README)
    assert len(commands) == 2 and first_commands(page) == commands


def test_the_state_diagram_shows_every_engine_state() -> None:
    """The drawn diagram has a box for each EngineState, and arrows only between them."""
    assert set(figures.STATES) == {state.name for state in wsengine.EngineState}
    svg = figures.states_svg()
    assert all(f">{state.name}</text>" in svg for state in wsengine.EngineState)
    assert {edge[0] for edge in figures.TRANSITIONS} | {edge[1] for edge in
                                                        figures.TRANSITIONS} == set(
        figures.STATES)


def test_the_throughput_plot_reads_every_client_and_size_from_the_results() -> None:
    """The plot finds a BINARY figure for each client and size in benchmarks/RESULTS.md."""
    rows = figures.throughput_table(figures.RESULTS.read_text(encoding="utf-8"))
    wanted = {(size, "binary", client) for size in figures.SIZES for client in figures.CLIENTS}
    assert wanted <= set(rows)
    assert figures.throughput_svg(rows).count("<rect") >= len(wanted)
