# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""The ``wsengine`` command: connect to a WebSocket server, send, and print what arrives.

``wsengine URL`` (or ``python -m wsengine URL``) opens the connection, sends each
``--send`` on every (re)connection, then each line of standard input as a TEXT message
(when standard input is not a terminal, until its end), and prints every message received
on standard output, one per line: TEXT as is, BINARY as hex. It ends on Ctrl-C, SIGTERM or
after ``--count`` messages, closing the connection with 1000.

Exit status: 0 after a normal end (also when the server closed the connection with 1000
or 1001 under ``--no-reconnect``), 1 when the connection could not be opened, was refused
for good, or (under ``--no-reconnect``) ended abnormally, 2 for a usage error. Errors are
one line on standard error, never a traceback; status lines (connected, closed,
reconnecting) go to standard error too, unless ``--quiet``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TextIO
from urllib.parse import urlsplit

from wsengine import _signals
from wsengine._reconnect import is_fatal_status
from wsengine._url import redact_url
from wsengine.adapters.base import ConnectionAdapter
from wsengine.client import WebsocketClient
from wsengine.config import EngineConfig
from wsengine.engine import WebsocketEngine
from wsengine.errors import ConfigError, EngineStartError, EngineStateError, HandshakeError
from wsengine.session import Session
from wsengine.telemetry import scrub
from wsengine.types import CloseMessage, HandshakeResponse, Message, MessageType

__all__ = ["build_parser", "main"]

PROG = "wsengine"
#: Seconds between wake-ups of the main thread's wait, so a signal is acted on promptly.
_WAIT_SLICE = 0.25
#: Seconds between two ``--stats`` lines.
_STATS_INTERVAL = 1.0
_PROXY_SCHEMES = ("http", "socks4", "socks4a", "socks5", "socks5h")
#: Close codes from the server that end a ``--no-reconnect`` run with status 0.
_CLEAN_CLOSE_CODES = frozenset({1000, 1001})


class UsageError(Exception):
    """A bad command line: exit status 2, the message on one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse prints the usage and exits; the contract wants one line and status 2,
        # decided by main().
        raise UsageError(message)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser (its ``error`` raises :class:`UsageError`)."""
    parser = _Parser(
        prog=PROG,
        description="Connect to a WebSocket server, send messages, print what arrives "
        "(TEXT as is, BINARY as hex, one per line).",
        epilog="Standard input, when it is not a terminal, is sent line by line as TEXT. "
        "Exit status: 0 normal end, 1 could not connect or refused for good, 2 usage error.",
        formatter_class=lambda prog: argparse.HelpFormatter(prog, max_help_position=32,
                                                            width=100),
    )
    add = parser.add_argument
    add("url", metavar="URL", help="ws:// or wss:// URL of the server")
    add("--send", metavar="TEXT", action="append", default=[],
        help="send TEXT after each (re)connection (repeatable)")
    add("--count", metavar="N", type=_positive_int,
        help="exit after receiving N messages")
    add("--header", metavar='"NAME: VALUE"', action="append", default=[],
        help="add a header to the opening handshake (repeatable)")
    add("--subprotocol", metavar="P", action="append", default=[],
        help="offer subprotocol P (repeatable, in order of preference)")
    add("--proxy", metavar="URL",
        help="connect through http://[user:pass@]host:port or socks5://host:port")
    add("--no-compression", action="store_true",
        help="do not offer permessage-deflate compression")
    add("--adapter", metavar="NAME", choices=("websocket_client", "websockets"),
        default="websocket_client",
        help="websocket_client (default) or websockets: the library that dials")
    add("--no-reconnect", action="store_true",
        help="exit when the connection ends instead of reconnecting")
    add("--quiet", action="store_true",
        help="print no status lines (connected, closed, reconnecting) on stderr")
    add("--stats", action="store_true",
        help="print received messages/s and bytes/s on stderr every second")
    return parser


def _header(text: str) -> tuple[str, str]:
    """``"Name: value"`` as a pair; the message never quotes the value (a token, maybe)."""
    name, colon, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not colon or not name or any(char in name for char in " \t"):
        raise UsageError("--header must look like 'Name: value'")
    if any(char in part for part in (name, value) for char in "\r\n\0"):
        raise UsageError(f"--header {name!r}: CR, LF and NUL are not allowed")
    return name, value


def _proxy_options(url: str) -> dict[str, Any]:
    """The adapters' ``proxy=`` option for ``--proxy URL``, checked first so that a bad URL
    is a usage error; messages never quote the URL (it may hold credentials)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _PROXY_SCHEMES:
        raise UsageError(f"--proxy must be a {', '.join(s + '://' for s in _PROXY_SCHEMES)} "
                         "URL")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise UsageError("--proxy needs a host and a port, as in http://host:3128")
    if scheme.startswith("socks") and importlib.util.find_spec("python_socks") is None:
        raise UsageError("--proxy with a SOCKS proxy needs the python-socks package "
                         "(pip install 'wsengine[socks]')")
    return {"proxy": url}


def _adapter(args: argparse.Namespace) -> ConnectionAdapter:
    """The adapter the options ask for.

    Raises:
        UsageError: an option the adapter cannot honour, or its library is missing.
        ConfigError: the adapter rejected an option.
    """
    headers = [_header(text) for text in args.header]
    options: dict[str, Any] = {"compression": None if args.no_compression else "deflate"}
    if args.subprotocol:
        options["subprotocols"] = list(args.subprotocol)
    if args.proxy is not None:
        options.update(_proxy_options(args.proxy))
    if args.adapter == "websockets":
        try:
            from wsengine.adapters.websockets_sync import WebsocketsAdapter
        except ImportError:
            raise UsageError("--adapter websockets needs the websockets package "
                             "(pip install 'wsengine[websockets]')") from None
        if headers:
            options["additional_headers"] = headers
        return WebsocketsAdapter(**options)
    from wsengine.adapters.websocket_client import WebsocketClientAdapter

    if headers:
        options["header"] = [f"{name}: {value}" for name, value in headers]
    return WebsocketClientAdapter(**options)


def _describe(error: BaseException) -> str:
    """One line saying what went wrong, without credentials."""
    if isinstance(error, OSError) and error.strerror:
        text = error.strerror
    else:
        text = str(error) or type(error).__name__
    return " ".join(scrub(text).split())


class _Output:
    """Standard output and error for the callbacks' threads and the main thread."""

    def __init__(self, stdout: TextIO, stderr: TextIO, quiet: bool) -> None:
        self._stdout = stdout
        self._stderr = stderr
        self._quiet = quiet
        # Held while a line is written, so lines from the worker, the stats thread and
        # the main thread never interleave; nobody waits on it for long.
        self._write_lock = threading.Lock()
        self.broken = False  # standard output was closed by its reader (| head)

    def message(self, data: bytes) -> bool:
        """Print one received message's line; False once standard output is gone."""
        with self._write_lock:
            try:
                buffer = getattr(self._stdout, "buffer", None)
                if buffer is not None:
                    buffer.write(data + b"\n")
                else:
                    self._stdout.write(data.decode("utf-8", "replace") + "\n")
                self._stdout.flush()
            except (BrokenPipeError, ValueError):
                self.broken = True
                _silence_stdout()
        return not self.broken

    def status(self, text: str) -> None:
        """A status line on stderr, unless ``--quiet``."""
        if not self._quiet:
            self.error(text)

    def error(self, text: str) -> None:
        """A line on stderr, always."""
        with self._write_lock:
            try:
                self._stderr.write(f"{PROG}: {text}\n")
                self._stderr.flush()
            except (OSError, ValueError):
                pass


def _silence_stdout() -> None:
    """Point standard output at /dev/null once its reader went away, so that the flush at
    interpreter exit does not report the broken pipe (the recipe of Python's signal docs)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


class _Console(WebsocketClient):
    """The command's callbacks: send ``--send`` on open, print what arrives, count it.

    With one worker (the command's config) ``on_message`` runs one call at a time, so the
    counters need no lock: ``totals`` is replaced whole, and the stats thread reads it
    once, so a message and its bytes are always counted together.
    """

    def __init__(self, args: argparse.Namespace, output: _Output, display_url: str) -> None:
        self._sends: list[str] = args.send
        self._count: int | None = args.count
        self._reconnects = not args.no_reconnect
        self._output = output
        self._display_url = display_url
        #: (messages, bytes) received so far, replaced as one tuple per message.
        self.totals: tuple[int, int] = (0, 0)
        self.count_reached = False
        self.last_close: CloseMessage | None = None
        self.last_restart_error: Exception | None = None
        # Set while a session is open (from on_open to on_close): the stdin feeder waits
        # on it during a reconnect.
        self.open = threading.Event()

    def on_open(self, session: Session, response: HandshakeResponse, restarting: bool) -> None:
        self.last_restart_error = None
        details = f"HTTP {response.status}"
        if response.subprotocol:
            details += f", subprotocol {response.subprotocol}"
        self._output.status(f"{'reconnected' if restarting else 'connected'} to "
                            f"{self._display_url} ({details})")
        for text in self._sends:
            session.send(text)
        self.open.set()

    def on_message(self, session: Session, message: Message) -> None:
        if self.count_reached:
            return  # read before exit() took effect: not asked for
        if message.type is MessageType.TEXT:
            line = message.data.encode("utf-8") if isinstance(message.data, str) else b""
        else:
            line = message.data.hex().encode("ascii") if isinstance(message.data, bytes) else b""
        received, size = self.totals
        received += 1
        self.totals = (received, size + (len(line) if message.type is MessageType.TEXT
                                         else len(message.data)))
        if not self._output.message(line):
            self.count_reached = True  # nobody reads any more: a normal end, as with | head
            session.exit()
        elif self._count is not None and received >= self._count:
            self.count_reached = True
            session.exit()

    def on_close(self, session: Session, close: CloseMessage | None) -> CloseMessage | None:
        self.open.clear()
        if close is not None:
            self.last_close = close
            if self._reconnects:
                self._output.status(f"connection closed ({_close_text(close)}); reconnecting")
        return None

    def on_restart_error(
        self, error: Exception, retry_count: int, exit: Callable[[], None]
    ) -> None:
        self.last_restart_error = error
        if not (isinstance(error, HandshakeError) and is_fatal_status(error.status)):
            self._output.status(f"reconnection attempt {retry_count} failed: "
                                f"{_describe(error)}")


def _close_text(close: CloseMessage) -> str:
    return f"{close.code} {' '.join(close.reason.split())}".strip()


def _feed_stdin(engine: WebsocketEngine, console: _Console, done: threading.Event) -> None:
    """Send each line of standard input as TEXT, in order, waiting out reconnects.

    Runs on its own daemon thread until standard input ends or the command ends. It reads
    the file descriptor itself: a daemon thread blocked in ``sys.stdin``'s buffered reader
    would hold its lock at interpreter exit.
    """
    pending = b""
    while not done.is_set():
        try:
            chunk = os.read(0, 65536)
        except OSError:
            chunk = b""
        if not chunk:
            if pending:
                _send_line(engine, console, done, pending)
            return
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            _send_line(engine, console, done, line)


def _send_line(engine: WebsocketEngine, console: _Console, done: threading.Event,
               line: bytes) -> None:
    text = line.removesuffix(b"\r").decode("utf-8", "replace")
    while not done.is_set():
        try:
            engine.send(text)
            return
        except EngineStateError:
            # No open session (a reconnect, or on_open still running): wait for one.
            console.open.wait(0.05)


def _report_stats(console: _Console, output: _Output, done: threading.Event) -> None:
    """Print the receive rates on stderr every second, until ``done`` is set."""
    (messages, size), since = console.totals, time.monotonic()
    while not done.wait(_STATS_INTERVAL):
        now = time.monotonic()
        elapsed = max(now - since, 1e-9)
        (now_messages, now_size) = console.totals
        rate = (now_messages - messages) / elapsed
        throughput = (now_size - size) / elapsed
        messages, size, since = now_messages, now_size, now
        output.error(f"stats: {rate:.0f} msgs/s, {throughput:.0f} bytes/s")


def main(argv: Sequence[str] | None = None, *, stdin_lines: bool | None = None) -> int:
    """Run the command; return its exit status.

    Blocks until the command ends (Ctrl-C, SIGTERM, ``--count``, or the engine stopping
    for good). Called from the main thread it stops gracefully on SIGINT and SIGTERM.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).
        stdin_lines: send standard input's lines; default: when it is not a terminal.
    """
    output = _Output(sys.stdout, sys.stderr, quiet=False)
    try:
        args = build_parser().parse_args(argv)
        output = _Output(sys.stdout, sys.stderr, quiet=args.quiet)
        adapter = _adapter(args)
        config = EngineConfig(workers=1, auto_reconnect=not args.no_reconnect)
        display_url = redact_url(args.url)
        console = _Console(args, output, display_url)
        engine = WebsocketEngine(args.url, console, adapter=adapter, config=config,
                                 name="wsengine-cli")
    except (UsageError, ConfigError) as error:
        output.error(f"error: {_describe(error)} (see {PROG} --help)")
        return 2
    if stdin_lines is None:
        stdin_lines = sys.stdin is not None and not sys.stdin.isatty()
    return _run(engine, console, output, args, display_url, stdin_lines)


def _run(engine: WebsocketEngine, console: _Console, output: _Output,
         args: argparse.Namespace, display_url: str, stdin_lines: bool) -> int:
    # Set when the command ends; the stdin feeder and the stats thread stop on it.
    done = threading.Event()
    # The stats thread: owned by this function, ends on ``done``, joined below.
    stats = threading.Thread(target=_report_stats, args=(console, output, done),
                             name="wsengine-cli-stats", daemon=True)
    if args.stats:
        stats.start()
    interrupted = False
    try:
        with _signals.sigterm_interrupts() as disarm:
            try:
                engine.start()
                if stdin_lines:
                    # Owned by nobody: blocked in a read it cannot leave, it ends with the
                    # process (daemon), or at the end of standard input.
                    threading.Thread(target=_feed_stdin, args=(engine, console, done),
                                     name="wsengine-cli-stdin", daemon=True).start()
                while not engine.wait(_WAIT_SLICE):
                    pass
            except EngineStartError as error:
                cause = error.__cause__ or error
                output.error(f"cannot connect to {display_url}: {_describe(cause)}")
                return 1
            except KeyboardInterrupt:
                disarm()  # a SIGTERM now must not cut the graceful stop short
                interrupted = True
                _stop_or_abort(engine, output)
    finally:
        done.set()
        if stats.is_alive():
            stats.join()
    return _exit_status(console, output, display_url, interrupted)


def _stop_or_abort(engine: WebsocketEngine, output: _Output) -> None:
    """Stop gracefully; a second Ctrl-C during the stop ends the process at once."""
    try:
        engine.stop()
    except KeyboardInterrupt:
        output.error("interrupted again: exiting without waiting for the close handshake")
        os._exit(130)


def _exit_status(console: _Console, output: _Output, display_url: str,
                 interrupted: bool) -> int:
    """0 for a normal end, 1 when the engine stopped for good on its own after a failure."""
    if interrupted or console.count_reached:
        return 0
    error = console.last_restart_error
    if error is not None:
        output.error(f"gave up reconnecting to {display_url}: {_describe(error)}")
        return 1
    close = console.last_close
    if close is None:
        return 0
    if close.code in _CLEAN_CLOSE_CODES:
        output.status(f"connection closed by the server ({_close_text(close)})")
        return 0
    output.error(f"connection to {display_url} lost ({_close_text(close)})")
    return 1


def run() -> NoReturn:
    """The console script's entry point."""
    sys.exit(main())
