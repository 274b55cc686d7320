# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""Validation of the flow-control fields of EngineConfig (issue 11, point 7): a bad value
is a ConfigError naming the field and the value; good ones are normalised."""

from __future__ import annotations

import dataclasses

import pytest

from wsengine.config import EngineConfig
from wsengine.errors import ConfigError

BAD: list[tuple[str, object]] = [
    ("overflow", "drop"), ("overflow", None), ("overflow", "BLOCK"), ("overflow", 1),
    ("stop_on_close_codes", 4001), ("stop_on_close_codes", "4001"),
    ("stop_on_close_codes", [4001, "x"]), ("stop_on_close_codes", [True]),
    ("stop_on_close_codes", [999]), ("stop_on_close_codes", [5000]),
    ("stop_on_close_codes", [4001.0]), ("stop_on_close_codes", None),
    ("send_buffer", -1), ("send_buffer", 1.5), ("send_buffer", True), ("send_buffer", None),
    ("send_rate", 0), ("send_rate", -2), ("send_rate", float("nan")),
    ("send_rate", float("inf")), ("send_rate", "10"), ("send_rate", True),
    ("send_burst", 0), ("send_burst", 2.0), ("send_burst", None), ("send_burst", False),
]


@pytest.mark.parametrize(("field", "value"), BAD, ids=repr)
def test_bad_flow_value_is_a_config_error_naming_it(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as caught:
        EngineConfig(**{field: value})  # type: ignore[arg-type]
    assert f"EngineConfig.{field}" in str(caught.value)
    assert repr(value) in str(caught.value)


def test_close_codes_from_any_iterable_are_a_frozenset() -> None:
    config = EngineConfig(stop_on_close_codes=[4001, 1008, 4001])  # type: ignore[arg-type]
    assert config.stop_on_close_codes == frozenset({1008, 4001})
    assert isinstance(config.stop_on_close_codes, frozenset)
    generated = EngineConfig(stop_on_close_codes=(c for c in (4003,)))  # type: ignore[arg-type]
    assert generated.stop_on_close_codes == frozenset({4003})
    again = dataclasses.replace(config, workers=1)
    assert again.stop_on_close_codes == frozenset({1008, 4001})


def test_good_flow_values_are_kept() -> None:
    config = EngineConfig(overflow="drop_oldest", send_buffer=5, send_rate=2, send_burst=3)
    assert (config.overflow, config.send_buffer, config.send_burst) == ("drop_oldest", 5, 3)
    assert config.send_rate == 2.0 and isinstance(config.send_rate, float)
    assert EngineConfig(overflow="drop_newest").overflow == "drop_newest"
