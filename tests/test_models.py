from __future__ import annotations

import pytest
import torch

from trimflow import FlowError
from trimflow.models import build_model, load_checkpoint, save_checkpoint


def test_checkpoint_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    model = build_model("cnv").eval()
    save_checkpoint(tmp_path / "m.pt", model, {"name": "cnv", "kwargs": {}})
    loaded, payload = load_checkpoint(tmp_path / "m.pt")
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(model(x), loaded(x))
    assert payload["arch"]["name"] == "cnv"


def test_mismatching_checkpoint_names_the_tensors(tmp_path):
    model = build_model("cnv", widths=(8, 8, 8, 8, 8))
    save_checkpoint(tmp_path / "m.pt", model, {"name": "cnv", "kwargs": {}})  # arch says default widths
    with pytest.raises(FlowError, match=r"features\.0\.weight: checkpoint \(8, 1, 3, 3\) vs model \(16, 1, 3, 3\)"):
        load_checkpoint(tmp_path / "m.pt")


def test_trimmed_checkpoint_restores_narrow_layers(tmp_path):
    narrow = build_model("cnv", widths=(8, 16, 16, 32, 32)).eval()
    save_checkpoint(tmp_path / "m.pt", narrow, {"name": "cnv", "kwargs": {}}, trimmed=True)
    loaded, _ = load_checkpoint(tmp_path / "m.pt")
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(narrow(x), loaded(x))


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"garbage")
    with pytest.raises(FlowError, match="cannot be read"):
        load_checkpoint(tmp_path / "x.pt")
    with pytest.raises(FlowError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
