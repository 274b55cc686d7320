# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""``python manage.py runfeed URL [--send TEXT]...``: run a feed engine in the foreground.

Prints every message received, one per line, until SIGTERM or Ctrl-C, which close the
connection with 1000 and end the command normally (``run_forever()`` does both).
"""

from __future__ import annotations

from typing import Any, ClassVar

from django.core.management.base import BaseCommand, CommandError, CommandParser, OutputWrapper

from wsengine import (
    EngineConfig,
    EngineStartError,
    HandshakeResponse,
    Message,
    Session,
    WebsocketClient,
    WebsocketEngine,
)


class PrintingClient(WebsocketClient):
    """Sends ``greetings`` on every (re)connection and prints what comes back."""

    def __init__(self, out: OutputWrapper, greetings: list[str]) -> None:
        self.out = out
        self.greetings = greetings

    def on_open(self, session: Session, response: HandshakeResponse, restarting: bool) -> None:
        for text in self.greetings:
            session.send(text)

    def on_message(self, session: Session, message: Message) -> None:
        data = message.data
        self.out.write(data if isinstance(data, str) else data.hex())
        self.out.flush()


class Command(BaseCommand):
    help = "Run a wsengine feed on URL until SIGTERM or Ctrl-C, printing what it receives."
    requires_system_checks: ClassVar[list[str]] = []  # no checks: it serves no request

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("url", help="ws:// or wss:// URL of the feed")
        parser.add_argument("--send", action="append", default=[], metavar="TEXT",
                            help="send TEXT once connected (repeatable)")

    def handle(self, *args: Any, **options: Any) -> None:
        client = PrintingClient(self.stdout, options["send"])
        engine = WebsocketEngine(options["url"], client, config=EngineConfig(stop_timeout=5.0))
        try:
            # Blocks until SIGTERM or Ctrl-C (then closes with 1000 and returns).
            engine.run_forever()
        except EngineStartError as error:
            raise CommandError(str(error)) from error
        self.stderr.write("feed stopped")
