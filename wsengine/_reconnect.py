# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""Pure reconnection policy: backoff delays, which refusals are fatal, Retry-After.

Nothing here sleeps or touches a socket, so the engine's retry loop stays interruptible
(it waits on an event with these delays) and every rule is testable with a seeded RNG.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

from wsengine.config import EngineConfig

__all__ = [
    "backoff_delay", "backoff_delays", "is_fatal_status", "retry_wait",
]

#: 4xx statuses that say "try again later" rather than "you will never get in".
_RETRYABLE_CLIENT_ERRORS = frozenset({408, 429})


def backoff_delay(config: EngineConfig, attempt: int, rng: random.Random) -> float:
    """Return the jittered wait before reconnection attempt ``attempt`` (0 for the first).

    The nominal delay is ``d = min(max, initial * factor ** attempt)``; the result is drawn
    uniformly from ``[d * (1 - jitter), d]``.

    Args:
        config: supplies ``reconnect_delay_initial``, ``_max``, ``_factor`` and ``_jitter``.
        attempt: failed attempts in a row so far, >= 0.
        rng: the source of jitter; pass a seeded ``random.Random`` for reproducible delays.
    """
    return _jitter(_nominal_delay(config, attempt), config.reconnect_jitter, rng)


def backoff_delays(config: EngineConfig, rng: random.Random) -> Iterator[float]:
    """Yield the jittered waits before attempts 0, 1, 2, ... without end.

    Same values as :func:`backoff_delay` for each attempt; start a new generator when the
    attempt counter resets (after a connection stayed up ``reconnect_reset_after``).
    """
    attempt = 0
    while True:
        nominal = _nominal_delay(config, attempt)
        if nominal >= config.reconnect_delay_max:
            break
        yield _jitter(nominal, config.reconnect_jitter, rng)
        attempt += 1
    # Capped from here on: stop exponentiating, which would overflow for large attempts.
    while True:
        yield _jitter(config.reconnect_delay_max, config.reconnect_jitter, rng)


def is_fatal_status(status: int | None) -> bool:
    """Tell whether a handshake refused with HTTP ``status`` must not be retried.

    Every 4xx is fatal (the request itself is wrong: bad path, credentials, origin) except
    408 Request Timeout and 429 Too Many Requests. 5xx, other statuses and None (no HTTP
    answer at all) are retryable.
    """
    if status is None:
        return False
    return 400 <= status <= 499 and status not in _RETRYABLE_CLIENT_ERRORS


def retry_wait(delay: float, retry_after: float | None, cap: float) -> float:
    """Return the wait before the next attempt, honouring a server's ``Retry-After``.

    ``Retry-After`` is a minimum (``max(delay, retry_after)``) but never beyond ``cap``
    (``reconnect_delay_max``), so a hostile or buggy server cannot park the client for
    hours. A ``retry_after`` that is None, negative or NaN is ignored.
    """
    if retry_after is None or math.isnan(retry_after) or retry_after < 0:
        return delay
    return min(cap, max(delay, retry_after))


def _nominal_delay(config: EngineConfig, attempt: int) -> float:
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt!r}")
    try:
        grown = config.reconnect_delay_initial * config.reconnect_delay_factor**attempt
    except OverflowError:
        return config.reconnect_delay_max
    return min(config.reconnect_delay_max, grown)


def _jitter(nominal: float, jitter: float, rng: random.Random) -> float:
    if jitter == 0:
        return nominal
    # uniform(a, b) may round to b or a hair outside; clamp to keep the band exact.
    low = nominal * (1 - jitter)
    return min(nominal, max(low, rng.uniform(low, nominal)))
