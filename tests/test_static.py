# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""The package's static promises: exports, typing and lint."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import wsengine

ROOT = Path(__file__).resolve().parent.parent

API_NAMES = {
    "WebsocketEngine", "EngineConfig", "EngineState", "WebsocketClient", "Session",
    "Message", "MessageType", "CloseMessage", "StatusCode", "HandshakeResponse",
    "ConnectionAdapter", "WsEngineError", "ConfigError", "EngineStartError",
    "EngineStateError", "ConnectionClosedError", "__version__",
    # Release 0.2 additions.
    "HandshakeError", "ProtocolError",
}


def test_all_lists_exactly_the_public_api() -> None:
    """__all__ names every API.md export, each importable from the top level."""
    assert set(wsengine.__all__) == API_NAMES
    for name in wsengine.__all__:
        assert hasattr(wsengine, name), name
    assert isinstance(wsengine.__version__, str)


def test_package_ships_py_typed() -> None:
    """The package is marked as typed."""
    assert (Path(wsengine.__file__).parent / "py.typed").exists()


@pytest.mark.timeout(180)
def test_mypy_strict_is_clean() -> None:
    """mypy --strict wsengine reports nothing."""
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "wsengine"],
        cwd=ROOT, capture_output=True, text=True, timeout=170,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(60)
def test_ruff_is_clean() -> None:
    """ruff check reports nothing on the package, tests, example, benchmarks and
    conformance script."""
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    result = subprocess.run(
        [ruff, "check", "wsengine", "tests", "example", "benchmarks", "conformance"],
        cwd=ROOT, capture_output=True, text=True, timeout=50,
    )
    assert result.returncode == 0, result.stdout + result.stderr
