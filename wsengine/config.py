# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""The engine's settings: :class:`EngineConfig` and the checks it runs on construction."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from wsengine.errors import ConfigError

__all__ = ["EngineConfig"]

#: ``ping_timeout``'s default; the only value it may keep when keepalive is off.
_DEFAULT_PING_TIMEOUT = 20.0


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Settings of a :class:`~wsengine.WebsocketEngine`; every time is in float seconds.

    The instance is immutable and validated on construction, so an engine never sees a bad
    value. Derive a variant with :func:`dataclasses.replace`, which validates again::

        config = dataclasses.replace(EngineConfig(), workers=1, ping_interval=None)

    Integers may be given for float fields (they are stored as ``float``); ``bool``, strings,
    NaN and infinities are refused everywhere.

    Raises:
        ConfigError: a field has a bad type or value; the message names the field and shows
            the value given.
    """

    #: Worker threads that run ``on_message``; >= 1. With 1, messages of a connection are
    #: handled one at a time in arrival order.
    workers: int = 4

    #: Frames read but not yet taken by a worker; >= 1. When the queue is full the engine
    #: reads no more frames, so backpressure reaches the server through TCP.
    queue_size: int = 16

    #: Reopen the connection when it is lost (not after ``stop()`` or ``session.exit()``).
    auto_reconnect: bool = True

    #: Base delay before the first reconnection attempt; > 0.
    reconnect_delay_initial: float = 1.0

    #: Cap on any delay between attempts, ``Retry-After`` included; >= the initial delay.
    reconnect_delay_max: float = 60.0

    #: Growth of the delay; >= 1. Attempt k (from 0) waits
    #: ``d = min(reconnect_delay_max, reconnect_delay_initial * factor ** k)``.
    reconnect_delay_factor: float = 2.0

    #: Share of ``d`` that is random, 0 to 1: the wait is drawn uniformly from
    #: ``[d * (1 - jitter), d]``, so a fleet of clients does not reconnect in lockstep.
    reconnect_jitter: float = 1.0

    #: Failed attempts in a row before the engine gives up for good; None: never gives up.
    reconnect_max_attempts: int | None = None

    #: How long a connection must stay open before the attempt counter goes back to 0, so
    #: a server that accepts then drops at once cannot cause a tight loop; >= 0.
    reconnect_reset_after: float = 30.0

    #: Limit on dial + handshake + ``on_open``; None: no limit.
    open_timeout: float | None = 30.0

    #: What ``stop()`` gives ``on_close`` and the closing handshake before it aborts the
    #: socket; None: no limit.
    stop_timeout: float | None = 10.0

    #: Time between keepalive pings; None disables keepalive.
    ping_interval: float | None = 20.0

    #: Time without any frame from the peer after a ping before the peer is declared dead
    #: (reported as close 1006). None only when ``ping_interval`` is None.
    ping_timeout: float | None = _DEFAULT_PING_TIMEOUT

    def __post_init__(self) -> None:
        _check_int(self, "workers", minimum=1)
        _check_int(self, "queue_size", minimum=1)
        _check_bool(self, "auto_reconnect")
        _check_float(self, "reconnect_delay_initial", rule="> 0", ok=lambda x: x > 0)
        _check_float(self, "reconnect_delay_max", rule="> 0", ok=lambda x: x > 0)
        _check_float(self, "reconnect_delay_factor", rule=">= 1", ok=lambda x: x >= 1)
        _check_float(self, "reconnect_jitter", rule="between 0 and 1",
                     ok=lambda x: 0 <= x <= 1)
        _check_int(self, "reconnect_max_attempts", minimum=1, optional=True)
        _check_float(self, "reconnect_reset_after", rule=">= 0", ok=lambda x: x >= 0)
        for name in ("open_timeout", "stop_timeout", "ping_interval", "ping_timeout"):
            _check_float(self, name, rule="> 0", ok=lambda x: x > 0, optional=True)

        if self.reconnect_delay_max < self.reconnect_delay_initial:
            raise ConfigError(
                "EngineConfig.reconnect_delay_max must be >= reconnect_delay_initial "
                f"({self.reconnect_delay_initial!r}), got {self.reconnect_delay_max!r}"
            )
        if self.ping_interval is None:
            if self.ping_timeout not in (None, _DEFAULT_PING_TIMEOUT):
                raise ConfigError(
                    "EngineConfig.ping_timeout has no effect when ping_interval is None, "
                    f"got {self.ping_timeout!r}"
                )
        elif self.ping_timeout is None:
            raise ConfigError(
                "EngineConfig.ping_timeout must be a finite number > 0 when ping_interval "
                "is set, got None"
            )


def _check_int(config: EngineConfig, name: str, *, minimum: int,
               optional: bool = False) -> None:
    value = getattr(config, name)
    if value is None and optional:
        return
    # bool is an int subclass: True would silently mean 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        expected = f"an int >= {minimum}" + (" or None" if optional else "")
        raise _error(name, expected, value)


def _check_bool(config: EngineConfig, name: str) -> None:
    value = getattr(config, name)
    if not isinstance(value, bool):
        raise _error(name, "a bool", value)


def _check_float(config: EngineConfig, name: str, *, rule: str,
                 ok: Callable[[float], bool], optional: bool = False) -> None:
    value = getattr(config, name)
    if value is None and optional:
        return
    expected = f"a finite number {rule}" + (" or None" if optional else "")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _error(name, expected, value)
    # Every comparison with NaN is False, so a check such as ``x <= 0`` would let it pass.
    if not math.isfinite(value) or not ok(value):
        raise _error(name, expected, value)
    object.__setattr__(config, name, float(value))


def _error(name: str, expected: str, value: object) -> ConfigError:
    return ConfigError(f"EngineConfig.{name} must be {expected}, got {value!r}")
