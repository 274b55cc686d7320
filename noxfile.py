# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""The suite on every Python that ``python_requires`` admits, and on the declared minimums.

``nox`` runs every session, one after the other, each in a fresh virtual environment:

- ``tests-3.11``, ``tests-3.12``, ``tests-3.13`` (tag ``tests``): ``pip install -e ".[test]"``
  then the README's test command, ``python -m pytest``.
- ``minimums``: the same on 3.11 with every library floor that ``setup.cfg`` declares
  installed exactly, through a constraints file generated from ``setup.cfg`` on each run
  (so the pins cannot drift from the declared floors). Test tools (pytest, mypy, ruff, ...)
  float: their floors are no promise to users.

Interpreters are found without ``pyenv global`` or shims: the newest pyenv build of each
``X.Y`` under ``$PYENV_ROOT/versions`` (default ``~/.pyenv``), else a ``pythonX.Y`` on
``PATH`` that actually runs. A missing one fails its session with a message saying so;
nothing is skipped and nothing is downloaded. Arguments after ``--`` go to pytest.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import nox
from packaging.requirements import Requirement
from packaging.version import Version

nox.needs_version = ">=2024.4.15"
nox.options.default_venv_backend = "venv"
# A missing interpreter is a failure, never a skipped session (nox skips by default off CI).
nox.options.error_on_missing_interpreters = True
if hasattr(nox.options, "download_python"):
    # Newer nox would fetch a standalone build for a missing version; we test the machine's.
    nox.options.download_python = "never"

ROOT = Path(__file__).resolve().parent
#: Every minor version ``python_requires = >=3.11`` admits and that is released.
PYTHONS = ("3.11", "3.12", "3.13")
#: The README's test command.
TEST_COMMAND = ("python", "-m", "pytest")
#: Libraries whose declared floors ``minimums`` installs exactly. Every runtime requirement
#: (``install_requires``) must be here; the others are read from the ``test`` extra.
FLOORED = (
    "websocket-client",
    "opentelemetry-api",
    "websockets",
    "opentelemetry-sdk",
    "opentelemetry-exporter-otlp-proto-http",
)


def find_python(version: str) -> str | None:
    """Return the path of a CPython ``version`` (``"3.12"``) on this machine, or None.

    Prefers the newest pyenv build (``$PYENV_ROOT/versions/3.12.*``), which works whatever
    ``pyenv global`` says; then a ``python3.12`` on ``PATH`` that runs (a pyenv shim for a
    version not selected is on ``PATH`` but fails, so it is tried, not trusted).
    """
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    builds: list[tuple[int, Path]] = []
    for build in (root / "versions").glob(f"{version}.*"):
        patch = re.fullmatch(re.escape(version) + r"\.(\d+)", build.name)
        executable = build / "bin" / f"python{version}"
        if patch and os.access(executable, os.X_OK):
            builds.append((int(patch.group(1)), executable))
    if builds:
        return str(max(builds)[1])
    found = shutil.which(f"python{version}")
    if found and subprocess.run([found, "-c", ""], capture_output=True).returncode == 0:
        return found
    return None


def declared_floors() -> dict[str, str]:
    """Return ``{name: floor}`` for FLOORED, read from setup.cfg's ``>=`` specifiers.

    Raises:
        RuntimeError: a runtime requirement is not in FLOORED, or a FLOORED library has no
            single ``>=`` floor in ``install_requires`` or the ``websockets``/``test`` extras.
    """
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg", encoding="utf-8")
    runtime = config.get("options", "install_requires").split("\n")
    extras = [config.get("options.extras_require", extra).split("\n")
              for extra in ("websockets", "test")]
    floors: dict[str, str] = {}
    for group, lines in [("install_requires", runtime)] + [("extras", e) for e in extras]:
        for line in filter(None, (line.strip() for line in lines)):
            requirement = Requirement(line)
            name = requirement.name.lower().replace("_", "-")
            if name not in FLOORED:
                if group == "install_requires":
                    raise RuntimeError(f"runtime requirement {line!r} is missing from FLOORED")
                continue
            lower = [spec.version for spec in requirement.specifier if spec.operator == ">="]
            if len(lower) != 1:
                raise RuntimeError(f"setup.cfg: {line!r} needs exactly one '>=' floor")
            if floors.setdefault(name, lower[0]) != lower[0]:
                raise RuntimeError(f"setup.cfg declares two floors for {name}")
    missing = sorted(set(FLOORED) - set(floors))
    if missing:
        raise RuntimeError(f"setup.cfg declares no floor for {', '.join(missing)}")
    return floors


def _missing(version: str) -> Callable[[nox.Session], None]:
    def session(session: nox.Session) -> None:
        session.error(
            f"no Python {version}: found none under $PYENV_ROOT/versions/{version}.* "
            f"(PYENV_ROOT defaults to ~/.pyenv) nor a working python{version} on PATH; "
            f"install it (pyenv install {version})"
        )
    return session


def _tests(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run(*TEST_COMMAND, *session.posargs)


def _minimums(session: nox.Session) -> None:
    floors = declared_floors()
    constraints = Path(session.create_tmp()) / "floors.txt"
    constraints.write_text("".join(f"{name}=={floor}\n" for name, floor in floors.items()))
    session.log("pinned: " + ", ".join(f"{name}=={floor}" for name, floor in floors.items()))
    session.install("-c", str(constraints), "-e", ".[test]")
    # The constraints force these already; checking costs nothing and shows them in the log.
    output = session.run(
        "python", "-c",
        "import json, sys; from importlib.metadata import version; "
        "print(json.dumps({name: version(name) for name in sys.argv[1:]}))",
        *floors, silent=True,
    )
    installed = json.loads(str(output).strip().splitlines()[-1])
    session.log("installed: " + ", ".join(f"{n}=={v}" for n, v in installed.items()))
    wrong = [name for name, floor in floors.items()
             if Version(installed.get(name, "0")) != Version(floor)]
    if wrong:
        session.error(f"not installed at their floors: {', '.join(wrong)}")
    session.run(*TEST_COMMAND, *session.posargs)


def _register(name: str, version: str, body: Callable[[nox.Session], None],
              doc: str, tags: list[str]) -> None:
    def session(session: nox.Session) -> None:
        body(session)

    session.__doc__ = doc
    python = find_python(version)
    if python is None:
        # Fail loudly, with no virtual environment to build first.
        nox.session(name=name, venv_backend="none", tags=tags)(_missing(version))
    else:
        nox.session(name=name, python=python, tags=tags)(session)


for _version in PYTHONS:
    _register(f"tests-{_version}", _version, _tests,
              f'Python {_version}: pip install -e ".[test]", then python -m pytest.', ["tests"])
_register("minimums", PYTHONS[0], _minimums,
          "Python 3.11 with the library floors setup.cfg declares installed exactly.",
          ["minimums"])
