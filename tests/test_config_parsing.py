from __future__ import annotations

import dataclasses

import pytest

from trimflow import FlowError
from trimflow.config_parsing import from_dict, merge, parse_set
from trimflow.train import TrainConfig


@dataclasses.dataclass(frozen=True)
class Inner:
    bits: int = 4
    name: str | None = None


@dataclasses.dataclass(frozen=True)
class Outer:
    inner: Inner = Inner()
    ratio: float = 0.5
    widths: tuple[int, ...] = (1, 2)


def test_nested_values_and_coercion():
    cfg = from_dict(Outer, {"inner": {"bits": 2}, "ratio": 1, "widths": [3, 4]})
    assert cfg == Outer(Inner(2), 1.0, (3, 4))


@dataclasses.dataclass(frozen=True)
class WithTunedDefault:
    inner: Inner = Inner(bits=8, name="tuned")


def test_partial_override_keeps_the_fields_own_default():
    assert from_dict(WithTunedDefault, {"inner": {"bits": 2}}).inner == Inner(2, "tuned")


def test_unknown_key_names_the_path():
    with pytest.raises(FlowError, match=r"config\.inner: unknown key\(s\) bitz"):
        from_dict(Outer, {"inner": {"bitz": 2}})


def test_wrong_type_names_the_path():
    with pytest.raises(FlowError, match=r"config\.inner\.bits: expected int"):
        from_dict(Outer, {"inner": {"bits": "four"}})


def test_set_overrides_merge_deeply():
    data = merge({"inner": {"bits": 4, "name": "x"}}, parse_set(["inner.bits=2", "ratio=0.25"]))
    assert data == {"inner": {"bits": 2, "name": "x"}, "ratio": 0.25}
    with pytest.raises(FlowError, match="KEY.PATH=VALUE"):
        parse_set(["nonsense"])


def test_stage_config_validation_is_reported():
    with pytest.raises(FlowError, match="optimizer"):
        from_dict(TrainConfig, {"optimizer": "lbfgs"})
