# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""EngineConfig validation (RELIABILITY C3) and the pure reconnection policy."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from typing import Any

import pytest

from wsengine._reconnect import backoff_delay, backoff_delays, is_fatal_status, retry_wait
from wsengine.config import EngineConfig
from wsengine.errors import ConfigError

NAN = float("nan")
INF = float("inf")

API_DEFAULTS: dict[str, Any] = {
    "workers": 4,
    "queue_size": 16,
    "auto_reconnect": True,
    "reconnect_delay_initial": 1.0,
    "reconnect_delay_max": 60.0,
    "reconnect_delay_factor": 2.0,
    "reconnect_jitter": 1.0,
    "reconnect_max_attempts": None,
    "reconnect_reset_after": 30.0,
    "open_timeout": 30.0,
    "stop_timeout": 10.0,
    "ping_interval": 20.0,
    "ping_timeout": 20.0,
    # Release 0.2 (issue 11)
    "overflow": "block",
    "stop_on_close_codes": frozenset(),
    "send_buffer": 0,
    "send_rate": None,
    "send_burst": 1,
}

# RELIABILITY C3 mapped onto API.md's names (reconnect_delay_base -> _initial, the
# exponent cap -> factor and max_attempts), plus NaN, infinities, bools and strings for
# every numeric field.
BAD_VALUES: list[tuple[str, object]] = [
    ("workers", 0), ("workers", -1), ("workers", 1.5), ("workers", True), ("workers", "4"),
    ("workers", None), ("workers", 4.0),
    ("queue_size", 0), ("queue_size", -3), ("queue_size", False), ("queue_size", 16.0),
    ("auto_reconnect", 1), ("auto_reconnect", "yes"), ("auto_reconnect", None),
    ("reconnect_delay_initial", 0), ("reconnect_delay_initial", -1),
    ("reconnect_delay_initial", NAN), ("reconnect_delay_initial", INF),
    ("reconnect_delay_initial", None), ("reconnect_delay_initial", True),
    ("reconnect_delay_max", NAN), ("reconnect_delay_max", INF), ("reconnect_delay_max", 0.5),
    ("reconnect_delay_max", "60"),
    ("reconnect_delay_factor", 0.5), ("reconnect_delay_factor", -1),
    ("reconnect_delay_factor", NAN), ("reconnect_delay_factor", INF),
    ("reconnect_jitter", -0.1), ("reconnect_jitter", 1.1), ("reconnect_jitter", NAN),
    ("reconnect_jitter", -INF), ("reconnect_jitter", True),
    ("reconnect_max_attempts", 0), ("reconnect_max_attempts", -1),
    ("reconnect_max_attempts", 1.5), ("reconnect_max_attempts", True),
    ("reconnect_max_attempts", "3"),
    ("reconnect_reset_after", -1), ("reconnect_reset_after", NAN),
    ("reconnect_reset_after", INF), ("reconnect_reset_after", None),
    ("open_timeout", 0), ("open_timeout", -1), ("open_timeout", NAN), ("open_timeout", INF),
    ("open_timeout", "30"), ("open_timeout", False),
    ("stop_timeout", 0), ("stop_timeout", -1), ("stop_timeout", NAN), ("stop_timeout", INF),
    ("ping_interval", 0), ("ping_interval", -1), ("ping_interval", NAN),
    ("ping_interval", INF), ("ping_interval", True),
    ("ping_timeout", 0), ("ping_timeout", -1), ("ping_timeout", NAN), ("ping_timeout", INF),
    ("ping_timeout", None),
]


def test_defaults_match_the_api_table() -> None:
    """Every field exists with the default API.md gives, and no other field exists."""
    config = EngineConfig()
    assert {f.name for f in dataclasses.fields(config)} == set(API_DEFAULTS)
    assert dataclasses.asdict(config) == API_DEFAULTS


@pytest.mark.parametrize(("field", "value"), BAD_VALUES, ids=repr)
def test_bad_value_raises_config_error_naming_field_and_value(field: str,
                                                              value: object) -> None:
    """A bad value raises a ConfigError (a ValueError) that names the field and the value."""
    kwargs: dict[str, Any] = {field: value}
    with pytest.raises(ConfigError) as caught:
        EngineConfig(**kwargs)
    assert isinstance(caught.value, ValueError)
    message = str(caught.value)
    assert f"EngineConfig.{field}" in message
    assert repr(value) in message


def test_error_message_format() -> None:
    """The message reads as the API documents it."""
    with pytest.raises(ConfigError, match=r"^EngineConfig\.workers must be an int >= 1, got 0$"):
        EngineConfig(workers=0)


def test_ping_timeout_without_ping_interval_has_no_effect() -> None:
    """A non-default ping_timeout with keepalive off is refused as having no effect."""
    with pytest.raises(ConfigError, match=r"ping_timeout has no effect.*got 5"):
        EngineConfig(ping_interval=None, ping_timeout=5.0)


@pytest.mark.parametrize("ping_timeout", [None, 20.0, 20])
def test_keepalive_off_accepts_none_or_default_ping_timeout(ping_timeout: float | None) -> None:
    """With ping_interval None, ping_timeout may stay at its default or be None."""
    config = EngineConfig(ping_interval=None, ping_timeout=ping_timeout)
    assert config.ping_interval is None


def test_ping_timeout_may_equal_or_exceed_ping_interval() -> None:
    """API.md's defaults are 20/20, so websocket-client's ping_timeout < ping_interval rule
    is not applied."""
    assert EngineConfig(ping_interval=5, ping_timeout=50).ping_timeout == 50.0


@pytest.mark.parametrize("kwargs", [
    {"reconnect_jitter": 0}, {"reconnect_jitter": 1}, {"reconnect_delay_factor": 1},
    {"reconnect_reset_after": 0}, {"reconnect_max_attempts": 1},
    {"reconnect_delay_initial": 5, "reconnect_delay_max": 5},
    {"open_timeout": None, "stop_timeout": None}, {"workers": 1, "queue_size": 1},
    {"auto_reconnect": False}, {"ping_interval": 0.001, "ping_timeout": 1e-9},
], ids=repr)
def test_boundary_values_are_accepted(kwargs: dict[str, Any]) -> None:
    """Values on the edge of each allowed range are valid."""
    config = EngineConfig(**kwargs)
    for name, value in kwargs.items():
        assert getattr(config, name) == value


def test_ints_given_for_float_fields_are_stored_as_float() -> None:
    """An int for a float field is accepted and normalised to float."""
    config = EngineConfig(reconnect_delay_initial=2, open_timeout=5, reconnect_jitter=0)
    assert type(config.reconnect_delay_initial) is float
    assert type(config.open_timeout) is float
    assert type(config.reconnect_jitter) is float


def test_assignment_raises_frozen_instance_error() -> None:
    """The config is immutable once built."""
    config = EngineConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.workers = 8  # type: ignore[misc]


def test_replace_validates_the_new_values() -> None:
    """dataclasses.replace builds a checked copy and refuses bad values."""
    config = EngineConfig()
    assert dataclasses.replace(config, workers=1).workers == 1
    assert config.workers == 4
    with pytest.raises(ConfigError, match="queue_size"):
        dataclasses.replace(config, queue_size=0)


def test_delay_max_below_initial_names_both_fields() -> None:
    """reconnect_delay_max < reconnect_delay_initial is refused, showing both values."""
    with pytest.raises(ConfigError, match=r"reconnect_delay_max.*initial.*5\.0.*got 2"):
        EngineConfig(reconnect_delay_initial=5, reconnect_delay_max=2)


def test_config_is_hashable_and_comparable() -> None:
    """Two configs with the same values are equal and hash alike."""
    assert EngineConfig(workers=2) == EngineConfig(workers=2)
    assert hash(EngineConfig(workers=2)) == hash(EngineConfig(workers=2))
    assert EngineConfig(workers=2) != EngineConfig(workers=3)


# -- reconnection policy ----------------------------------------------------------------

def _nominal(config: EngineConfig, k: int) -> float:
    return min(config.reconnect_delay_max,
               config.reconnect_delay_initial * config.reconnect_delay_factor**k)


@pytest.mark.parametrize("jitter", [1.0, 0.5, 0.1])
def test_backoff_delays_stay_in_their_band(jitter: float) -> None:
    """Attempt k waits a value in [d * (1 - j), d] with d = min(max, initial * factor**k)."""
    config = EngineConfig(reconnect_delay_initial=0.5, reconnect_delay_max=30,
                          reconnect_delay_factor=3, reconnect_jitter=jitter)
    delays = list(itertools.islice(backoff_delays(config, random.Random(7)), 40))
    for k, delay in enumerate(delays):
        d = _nominal(config, k)
        assert d * (1 - jitter) <= delay <= d, (k, delay)
    # The jitter is real: capped attempts do not all return the same value.
    assert len(set(delays[10:])) > 1


def test_backoff_without_jitter_is_exact() -> None:
    """With jitter 0 the waits are exactly the nominal delays, capped at the max."""
    config = EngineConfig(reconnect_delay_initial=1, reconnect_delay_max=10,
                          reconnect_delay_factor=2, reconnect_jitter=0)
    delays = list(itertools.islice(backoff_delays(config, random.Random(0)), 7))
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_backoff_is_reproducible_with_a_seed() -> None:
    """The same seed yields the same delays; another seed other delays."""
    config = EngineConfig()
    first = list(itertools.islice(backoff_delays(config, random.Random(42)), 20))
    again = list(itertools.islice(backoff_delays(config, random.Random(42)), 20))
    other = list(itertools.islice(backoff_delays(config, random.Random(43)), 20))
    assert first == again
    assert first != other


def test_backoff_delay_matches_the_generator() -> None:
    """backoff_delay(k) draws the same value as the k-th item of backoff_delays."""
    config = EngineConfig(reconnect_delay_initial=0.1, reconnect_delay_max=7)
    rng_one, rng_gen = random.Random(5), random.Random(5)
    generated = list(itertools.islice(backoff_delays(config, rng_gen), 15))
    assert [backoff_delay(config, k, rng_one) for k in range(15)] == generated


def test_backoff_for_huge_attempt_counts_does_not_overflow() -> None:
    """A very large k (factor**k overflows a float) waits the capped delay."""
    config = EngineConfig(reconnect_delay_initial=1e-300, reconnect_delay_max=1e300,
                          reconnect_delay_factor=10, reconnect_jitter=0)
    assert backoff_delay(config, 10**6, random.Random(0)) == 1e300
    delays = list(itertools.islice(backoff_delays(config, random.Random(0)), 700))
    assert delays[-1] == 1e300
    assert all(math.isfinite(d) for d in delays)


def test_backoff_with_factor_one_is_constant() -> None:
    """A factor of 1 keeps every nominal delay at the initial value."""
    config = EngineConfig(reconnect_delay_initial=2, reconnect_delay_factor=1,
                          reconnect_jitter=0)
    assert list(itertools.islice(backoff_delays(config, random.Random(0)), 50)) == [2.0] * 50


def test_backoff_delay_refuses_a_negative_attempt() -> None:
    """Attempts are counted from 0."""
    with pytest.raises(ValueError):
        backoff_delay(EngineConfig(), -1, random.Random(0))


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 410, 426, 499])
def test_client_errors_are_fatal(status: int) -> None:
    """A 4xx refusal other than 408 and 429 stops the engine for good."""
    assert is_fatal_status(status)


@pytest.mark.parametrize("status", [None, 408, 429, 500, 502, 503, 504, 301, 302, 200, 101])
def test_other_statuses_are_retryable(status: int | None) -> None:
    """408, 429, 5xx, redirects and no status at all are retried."""
    assert not is_fatal_status(status)


@pytest.mark.parametrize(("delay", "retry_after", "cap", "expected"), [
    (1.5, None, 60.0, 1.5),       # no header: the backoff delay
    (1.5, 10.0, 60.0, 10.0),      # Retry-After is a minimum
    (12.0, 10.0, 60.0, 12.0),     # ... not a replacement for a longer delay
    (1.5, 3600.0, 60.0, 60.0),    # capped at reconnect_delay_max
    (1.5, INF, 60.0, 60.0),
    (1.5, NAN, 60.0, 1.5),        # nonsense is ignored
    (1.5, -5.0, 60.0, 1.5),
    (1.5, 0.0, 60.0, 1.5),
])
def test_retry_wait_honours_retry_after_within_the_cap(
        delay: float, retry_after: float | None, cap: float, expected: float) -> None:
    """The wait is min(cap, max(delay, retry_after)) when Retry-After is given."""
    assert retry_wait(delay, retry_after, cap) == expected
