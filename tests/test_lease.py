# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""AdapterLease and LeasedConnection: the fence of defect 8, counted without a lock."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from tests.support.servers import WsServer
from wsengine.adapters.websocket_client import WebsocketClientAdapter
from wsengine.errors import ConnectionClosedError
from wsengine.session import AdapterLease, LeasedConnection


class Marking(WebsocketClientAdapter):
    """The real adapter, saying when a wait_readable call is inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = threading.Event()

    def wait_readable(self, timeout: float | None) -> bool:
        self.inside.set()
        return super().wait_readable(timeout)


@pytest.fixture
def adapter(echo_server: WsServer) -> Iterator[Marking]:
    adapter = Marking()
    adapter.dial(echo_server.url, 5)
    try:
        yield adapter
    finally:
        adapter.abort()


def test_wait_idle_waits_for_a_call_inside_the_adapter_after_revoke(adapter: Marking) -> None:
    """A session's read blocked inside the adapter when the run's lease is revoked:
    wait_idle() does not return True until that call has left; later calls of the session
    never reach the adapter (read_available raises 1006, wait_readable returns at once)."""
    run = AdapterLease()
    view = LeasedConnection(adapter, run.child())
    returned = threading.Event()

    def read_turn() -> None:
        view.wait_readable(None)  # the echo server is silent until woken
        returned.set()

    reader = threading.Thread(target=read_turn, name="test-reader", daemon=True)
    reader.start()
    assert adapter.inside.wait(5)
    run.revoke()
    assert view.lease.revoked
    assert not run.wait_idle(0.05)  # the read is still inside
    adapter.wake_reader()  # the adapter's own wake-up, not through the revoked view
    assert run.wait_idle(5)
    assert returned.wait(5)
    reader.join(5)
    with pytest.raises(ConnectionClosedError) as caught:
        view.read_available(16)
    assert caught.value.code == 1006
    adapter.inside.clear()
    assert view.wait_readable(None) is True  # would block if it reached the adapter
    assert not adapter.inside.is_set()
    assert run.wait_idle(0)  # refused calls leave nothing counted


def test_a_live_lease_counts_and_releases_each_call(adapter: Marking) -> None:
    """Calls through a live view reach the adapter and leave the count at zero, errors
    included; a sibling session's revoke does not touch this one."""
    run = AdapterLease()
    view = LeasedConnection(adapter, run.child())
    sibling = run.child()
    sibling.revoke()
    view.write("hello")
    assert view.wait_readable(5)
    assert [m.data for m in view.read_available(16)] == ["hello"]
    assert run.wait_idle(0)
    adapter.abort()
    with pytest.raises(ConnectionClosedError):
        view.read_available(16)  # the adapter's own error, through a live lease
    assert run.wait_idle(0)
    assert not view.lease.revoked


def test_a_view_writes_only_to_the_connection_open_when_it_was_made(
    adapter: Marking, echo_server: WsServer
) -> None:
    """The send fast path binds a view to the connection's own write: after the adapter
    opened another connection behind the view's back (a live lease, so only the binding
    stands in the way), the view's write raises 1006 and the new connection gets nothing;
    a dial through the view rebinds it to the connection it opened."""
    run = AdapterLease()
    view = LeasedConnection(adapter, run.child())
    view.write("first")
    assert adapter.wait_readable(5)
    assert [m.data for m in adapter.read_available(16)] == ["first"]
    adapter.dial(echo_server.url, 5)  # a newer connection, not through the view
    with pytest.raises(ConnectionClosedError) as caught:
        view.write("stale")
    assert caught.value.code == 1006
    adapter.write("fresh")
    assert adapter.wait_readable(5)
    assert [m.data for m in adapter.read_available(16)] == ["fresh"]  # no "stale" first
    view.dial(echo_server.url, 5)
    view.write("rebound")
    assert view.wait_readable(5)
    assert [m.data for m in view.read_available(16)] == ["rebound"]
    assert run.wait_idle(0)
