# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""RELIABILITY.md sections A-C: shared helpers, the row map, and the fault proxy's own tests.

The rows are tested in three files: ``test_reliability_open.py`` (A, opening the
connection), ``test_reliability_faults.py`` (B, faults on an open connection) and
``test_reliability_api.py`` (C, public API). Each test's docstring starts with its row id.

Rows whose exact test lives elsewhere (not repeated here):

- A1: ``test_engine.py::test_connection_refused_fails_start_fast``
- A9: ``test_engine.py::test_on_open_raising_fails_start_with_its_exception``
- A10 (late ``on_open``): ``test_engine.py::test_start_timeout_abandons_a_late_on_open``
  (the late dial is ``test_reliability_open.py::test_a10_late_dial_leaves_nothing_behind``)
- B10: ``test_engine.py::test_backpressure_bounds_the_queue_and_loses_nothing`` (RSS:
  ``test_soak.py``)
- B11: ``test_engine.py::test_pause_lock_under_a_flood_stops_delivery_until_released``
- B12: ``test_engine.py::test_pause_lock_is_acquired_promptly_on_a_silent_server``
- C2: ``test_telemetry.py::test_nothing_secret_reaches_spans_events_or_logs`` and
  ``test_url.py::test_error_shows_the_url_redacted``
- C3: ``test_config.py::test_bad_value_raises_config_error_naming_field_and_value`` and
  ``test_config.py::test_assignment_raises_frozen_instance_error`` (the timeouts given to
  ``start()``/``stop()``: ``test_reliability_api.py::test_c3_call_timeouts_are_checked``)
- C4: ``test_engine.py::test_bad_constructor_arguments_raise_config_error`` (the rest:
  ``test_reliability_api.py::test_c4_more_bad_constructor_arguments``)
- C5 (log, span):
  ``test_engine.py::test_raising_on_message_is_logged_and_the_next_message_arrives``,
  ``test_telemetry.py::test_raising_callback_marks_its_span_error``
- C7 (KeyboardInterrupt):
  ``test_engine.py::test_keyboard_interrupt_in_a_callback_stops_run_forever``
- C8: ``test_engine.py::test_stuck_on_message_does_not_block_stop`` and
  ``test_exit.py::test_stuck_callback_does_not_block_interpreter_exit``
- C10: ``test_engine.py::test_stop_before_start_and_twice_is_a_noop`` and
  ``test_engine.py::test_start_twice_raises_and_restart_after_stop_works``
- C11 (on_message, on_open, on_close):
  ``test_engine.py::test_stop_from_inside_a_callback_does_not_deadlock``
- C12: ``test_engine.py::test_stop_while_another_thread_holds_the_pause_lock``
- C13: ``test_engine.py::test_stop_from_the_thread_holding_the_pause_lock``
- C14: ``test_engine.py::test_send_rules``
- C15: ``test_engine.py::test_concurrent_sends_arrive_intact``
- C17 (codes sent): ``test_engine.py::test_on_close_answer_is_sent_only_if_legal``
- C18: ``test_engine.py::test_context_manager_stops_even_when_the_body_raises``
- C19: ``test_exit.py::test_ctrl_c_in_run_forever_stops_gracefully``
- C20: ``test_engine.py::test_wait_rules``
- C21 (exit): ``test_exit.py::test_forgotten_stop_still_exits_and_closes_cleanly``
- E7: ``test_telemetry.py::test_dropped_engines_are_collected``
- E8: ``test_reliability_engine.py::test_e8_a_stale_on_close_cannot_touch_the_restarted_engine``
  (the engine-side rough edges of issue 16 are in the same file)
"""

from __future__ import annotations

import socket
import time

from tests.support.proxy import Direction, FaultProxy, Scope
from tests.support.recorder import (  # noqa: F401 (re-exported for the row modules)
    FAST,
    Event,
    Recorder,
    _no_engine_left_running,
    close_frame,
    closed_port,
    engine_threads,
    fast,
    first_close_code,
    first_then_idle,
    hold,
    serve_idle,
    serve_on,
    stop_and_check,
    thread_in,
    wait_open,
)
from tests.support.servers import echo_handler, run_ws_server
from wsengine import WebsocketEngine

# -- the fault proxy's own tests: each mode does what the fault tests rely on --------------


def test_proxy_passes_bytes_and_counts_them() -> None:
    """The proxy forwards both ways in pass mode and counts links and bytes."""
    client = Recorder()
    with run_ws_server(echo_handler) as server, FaultProxy(server.port) as proxy:
        engine = WebsocketEngine(proxy.url, client, config=FAST)
        engine.start()
        engine.send("through the proxy")
        client.wait_count("message", 1)
        stop_and_check(engine)
        proxy.wait(lambda: proxy.active == 0)
    assert client.messages[0].data == "through the proxy"
    assert proxy.connections == 1
    link = proxy.link(1)
    assert link.bytes_up > 17 and link.bytes_down > 17 and link.closed
    assert proxy.bytes_up == link.bytes_up and proxy.bytes_down == link.bytes_down


def test_proxy_latency_delays_and_keeps_order() -> None:
    """Latency mode delays each chunk by about its setting, in order."""
    client = Recorder()
    with run_ws_server(echo_handler) as server, FaultProxy(server.port, seed=7) as proxy:
        engine = WebsocketEngine(proxy.url, client, config=fast(workers=1))
        engine.start()
        proxy.latency(0.1, 0.02)
        began = time.monotonic()
        for number in range(20):
            engine.send(str(number))
        client.wait_count("message", 20)
        took = time.monotonic() - began
        stop_and_check(engine)
    assert [m.data for m in client.messages] == [str(n) for n in range(20)]
    assert 0.16 <= took < 1.5  # two crossings of 0.1 +- 0.02 s


def test_proxy_black_hole_and_heal() -> None:
    """Black hole forwards nothing and keeps the link open; heal lets bytes through again."""
    client = Recorder()
    with run_ws_server(echo_handler) as server, FaultProxy(server.port) as proxy:
        engine = WebsocketEngine(proxy.url, client, config=FAST)
        engine.start()
        proxy.black_hole()
        down = proxy.bytes_down
        engine.send("lost")
        proxy.wait(lambda: proxy.dropped[Direction.UP] > 0)
        hold(0.2)
        assert proxy.bytes_down == down and client.messages == []
        assert proxy.active == 1
        proxy.heal()
        # The dropped frame was whole, so the stream stays in step: what comes next is
        # echoed.
        engine.send("found")
        client.wait_until(lambda: any(m.data == "found" for m in client.messages))
        stop_and_check(engine)
    assert [m.data for m in client.messages] == ["found"]


def test_proxy_slice_splits_into_tiny_chunks() -> None:
    """Slice mode delivers data in 1-3 byte sends, intact."""
    client = Recorder()
    with run_ws_server(echo_handler) as server, FaultProxy(server.port) as proxy:
        engine = WebsocketEngine(proxy.url, client, config=FAST)
        engine.start()
        proxy.slice(1, 3, 0.0005, Direction.DOWN)
        engine.send("s" * 300)
        client.wait_count("message", 1)
        stop_and_check(engine)
    assert client.messages[0].data == "s" * 300


def test_proxy_reset_sends_rst_and_limit_data_closes() -> None:
    """reset() resets the client's connection; limit_data closes a link after N bytes."""
    with run_ws_server(echo_handler) as server, FaultProxy(server.port) as proxy:
        first = socket.create_connection(("127.0.0.1", proxy.port))
        try:
            proxy.wait(lambda: proxy.active == 1)
            proxy.reset()
            first.settimeout(5)
            try:
                data = first.recv(10)
            except ConnectionResetError:
                data = None
            assert data is None
        finally:
            first.close()
        proxy.limit_data(5, Direction.DOWN, Scope.NEW)
        second = socket.create_connection(("127.0.0.1", proxy.port))
        try:
            second.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            second.settimeout(5)
            received = b""
            while chunk := second.recv(100):
                received += chunk
        finally:
            second.close()
        assert len(received) == 5
        proxy.wait(lambda: proxy.active == 0)
