# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""The supervisor module and the engine's rooms: the stopper thread is joined, and a
session shows exactly the contract's surface (issue 10, point 4)."""

from __future__ import annotations

import threading

from tests.support.recorder import Recorder, fast, stop_and_check, wait_open
from tests.support.servers import WsServer
from wsengine import Message, Session, WebsocketEngine
from wsengine._supervisor import Supervisor


def test_the_stopper_thread_is_joined_before_wait_returns(echo_server: WsServer) -> None:
    """A KeyboardInterrupt in on_message stops the run through a wsengine-stopper thread;
    once wait() returned, that thread is gone too (it is joined, not left running)."""

    class Interrupting(Recorder):
        def on_message(self, session: Session, message: Message) -> None:
            raise KeyboardInterrupt

    client = Interrupting()
    engine = WebsocketEngine(echo_server.url, client, config=fast(workers=1))
    engine.start()
    wait_open(engine, client, 1)
    run = engine._run
    assert isinstance(run, Supervisor)
    engine.send("boom")
    assert engine.wait(10)
    assert run.stopper is not None
    assert not run.stopper.is_alive()
    assert [t.name for t in threading.enumerate() if t.name == "wsengine-stopper"] == []
    assert isinstance(run.interrupt, KeyboardInterrupt)
    stop_and_check(engine)


def test_a_session_shows_exactly_the_contracts_surface(echo_server: WsServer) -> None:
    """Session's public names are API.md's: id, conn, pause_lock, closed, send, restart,
    exit, request; the engine's plumbing is behind a private object."""
    client = Recorder()
    engine = WebsocketEngine(echo_server.url, client, config=fast())
    engine.start()
    try:
        wait_open(engine, client, 1)
        session = engine.session
        assert session is not None
        public = {name for name in dir(session) if not name.startswith("_")}
        assert public == {"id", "conn", "pause_lock", "closed", "send", "restart", "exit",
                          "request"}
    finally:
        stop_and_check(engine)
