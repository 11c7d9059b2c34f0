"""docs/config.md is generated from the config dataclasses and must be current; `config --explain` reads the same."""

from __future__ import annotations

import dataclasses

import pytest

from trimflow import FlowError
from trimflow.config import FlowConfig
from trimflow.config_docs import DOCS_PATH, config_keys, explain, render_markdown
from trimflow.config_parsing import to_dict


def _leaves(d: dict, prefix: str = "") -> set[str]:
    out: set[str] = set()
    for k, v in d.items():
        out |= _leaves(v, f"{prefix}{k}.") if isinstance(v, dict) and v and k != "max_simd" else {prefix + k}
    return out


def test_docs_config_md_is_current():
    assert DOCS_PATH.read_text() == render_markdown(), \
        "docs/config.md is stale: run `.venv/bin/python -m trimflow.config_docs` and commit it"


def test_every_key_is_documented_with_its_flow_default():
    keys = {k.key: k for k in config_keys() if not k.section}
    assert set(keys) == _leaves(to_dict(FlowConfig()))
    assert keys["trim.policy"].default == "budget"  # the flow's default, not TrimConfig's own
    assert keys["trim.policy"].allowed == "one of uniform, global, budget"
    assert "fraction" in keys["trim.budget"].meaning and "(0, 1]" in keys["trim.budget"].allowed
    assert keys["quantize.weight_bits"].allowed.startswith("must be an integer from 1 to 8")
    undocumented = [k for k in keys.values() if not (k.meaning or k.allowed)]
    assert len(undocumented) < len(keys) // 4, [k.key for k in undocumented]


def test_explain_a_key_a_section_and_a_typo():
    text = explain("trim.keep")
    assert "type:    float" in text and "default: 0.5" in text and "uniform/global" in text
    assert "trim.sensitivity.images = 500" in explain("trim.sensitivity")
    with pytest.raises(FlowError, match="did you mean trim.budget"):
        explain("trim.budgt")


def test_a_renamed_field_changes_the_reference():
    """The generator reads the classes, not a list: a new key appears with its comment."""

    @dataclasses.dataclass(frozen=True)
    class Demo:
        alpha: int = 3  # how many alphas

        def __post_init__(self):
            if self.alpha < 1:
                raise FlowError(f"demo: alpha must be >= 1, got {self.alpha}")

    (k,) = config_keys(Demo, Demo())
    assert (k.key, k.type, k.default, k.allowed, k.meaning) == ("alpha", "int", 3, "must be >= 1", "how many alphas")
