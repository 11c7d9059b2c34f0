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


def _fresh_python(code: str) -> str:
    """What `code` prints in a fresh interpreter (run in the repository root), so that modules other tests imported
    do not hide an import."""
    import subprocess
    import sys
    from pathlib import Path

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parent.parent).stdout.strip()


def test_trim_and_relevance_configs_import_without_torch():
    # their own modules are torch-free (the stage code that uses them is not); the old import paths still work
    out = _fresh_python("import sys; from trimflow.trim_config import TrimConfig, SensitivityConfig, "
                        "ReconstructConfig; from trimflow.relevance_config import RelevanceConfig; TrimConfig(); "
                        "RelevanceConfig(); print('torch' in sys.modules)")
    assert out == "False", out
    from trimflow import reconstruct, relevance, relevance_config, trim, trim_config
    assert trim.TrimConfig is trim_config.TrimConfig and trim.SensitivityConfig is trim_config.SensitivityConfig
    assert reconstruct.ReconstructConfig is trim_config.ReconstructConfig
    assert relevance.RelevanceConfig is relevance_config.RelevanceConfig


def test_loading_a_yaml_config_does_not_import_brevitas():
    # A config is read by the CLI, the sweep driver and `config --explain` long before (or without) any stage runs;
    # Brevitas takes seconds to import and is only needed by the quantize stage.
    out = _fresh_python("import sys; from trimflow.config import load_flow_config; "
                        "load_flow_config('configs/mnist-zoo.yaml', ['quantize.weight_bits=2']); "
                        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('brevitas', 'finn', 'qonnx')))")
    assert out == "[]", out
