# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""The engine's settings: :class:`EngineConfig` and the checks it runs on construction."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from wsengine.errors import ConfigError

__all__ = ["OVERFLOW_POLICIES", "EngineConfig"]

#: The values ``EngineConfig.overflow`` accepts.
OVERFLOW_POLICIES = frozenset({"block", "drop_oldest", "drop_newest"})

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

    #: What happens when ``queue_size`` messages wait and every worker is busy:
    #: ``"block"`` holds back what arrives (up to the adapter's ``max_size`` bytes, so
    #: pings are still answered), then stops reading (TCP backpressure); ``"drop_oldest"``
    #: discards the oldest waiting message, ``"drop_newest"`` the arriving one (counted in
    #: ``engine.dropped``); with those the engine never stops reading.
    overflow: str = "block"

    #: Close codes from the peer after which the engine stops for good instead of
    #: reconnecting (e.g. ``{1008, 4001}``); any iterable of ints from 1000 to 4999,
    #: stored as a frozenset.
    stop_on_close_codes: frozenset[int] = field(default_factory=frozenset)

    #: Messages ``engine.send()`` may queue while no session is open (CONNECTING,
    #: RECONNECTING), sent in order right after the next ``on_open`` returns; >= 0.
    send_buffer: int = 0

    #: Data messages per second allowed out of the engine (one token bucket over every
    #: send); None: no limit; > 0.
    send_rate: float | None = None

    #: Tokens the bucket holds: messages that may go out back to back; >= 1.
    send_burst: int = 1

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
        if not isinstance(self.overflow, str) or self.overflow not in OVERFLOW_POLICIES:
            raise _error("overflow", '"block", "drop_oldest" or "drop_newest"', self.overflow)
        _check_close_codes(self)
        _check_int(self, "send_buffer", minimum=0)
        _check_float(self, "send_rate", rule="> 0", ok=lambda x: x > 0, optional=True)
        _check_int(self, "send_burst", minimum=1)

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


def _check_close_codes(config: EngineConfig) -> None:
    value: object = config.stop_on_close_codes
    expected = "an iterable of int close codes from 1000 to 4999"
    # A str or bytes is iterable but surely a mistake; a mapping would keep its keys only.
    if isinstance(value, str | bytes | bytearray) or not isinstance(value, Iterable):
        raise _error("stop_on_close_codes", expected, value)
    codes = tuple(value)
    for code in codes:
        if isinstance(code, bool) or not isinstance(code, int) or not 1000 <= code <= 4999:
            raise _error("stop_on_close_codes", expected, value)
    object.__setattr__(config, "stop_on_close_codes", frozenset(codes))


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
