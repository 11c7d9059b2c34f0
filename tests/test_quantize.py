"""Brevitas conversion, QAT determinism, BN re-calibration and quantized checkpoints (trimflow.quantize)."""

from __future__ import annotations

import pytest
import torch
from brevitas.nn import QuantConv2d, QuantIdentity, QuantLinear, QuantReLU
from torch import nn

from trimflow import FlowError
from trimflow.data import load_dataset, subset
from trimflow.models.cnv import CNVLike
from trimflow.models.io import resize_to_state
from trimflow.quantize import (QuantConfig, calibrate_activations, convert_model, float_shapes, load_quant_checkpoint,
                           quantize_model, recalibrate_batchnorm, save_quant_checkpoint)
from trimflow.train import TrainConfig

TINY = dict(widths=(4, 8), strides=(1, 2))


@pytest.fixture(scope="module")
def train_set():
    return subset(load_dataset("fashion-mnist", "train"), 64, seed=0)


@pytest.mark.parametrize("field,value", [("weight_bits", 0), ("act_bits", 9), ("input_bits", 0),
                                         ("first_layer_weight_bits", 16), ("last_layer_weight_bits", 2.5)])
def test_bits_out_of_range(field, value):
    with pytest.raises(FlowError, match=field):
        QuantConfig(**{field: value})


def test_bipolar_activations_need_bipolar_weights():
    with pytest.raises(FlowError, match="act_bits=1.*weight_bits=1"):
        QuantConfig(act_bits=1, weight_bits=2)
    QuantConfig(act_bits=1, weight_bits=1, last_layer_weight_bits=1)


class _SiLUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.conv(x))


class _FunctionalGELU(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x):
        return nn.functional.gelu(self.conv(x))


def test_unsupported_activation_named():
    with pytest.raises(FlowError, match=r"'act' is SiLU.*nn\.ReLU"):
        convert_model(_SiLUNet(), QuantConfig())
    with pytest.raises(FlowError, match=r"gelu.*nn\.ReLU"):
        convert_model(_FunctionalGELU(), QuantConfig())


def test_conversion_carries_weights_and_bits():
    torch.manual_seed(0)
    model = CNVLike(**TINY).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
    q = convert_model(model, QuantConfig(weight_bits=3, first_layer_weight_bits=8, last_layer_weight_bits=5))
    f, n = model.state_dict(), q.net.state_dict()
    for key, value in f.items():  # weights, biases and BN statistics are carried over unchanged
        assert torch.equal(n[key], value), key
    assert isinstance(q.input_quant, QuantIdentity)
    convs = [m for m in q.modules() if isinstance(m, QuantConv2d)]
    assert len(convs) == 2 and isinstance(q.net.classifier, QuantLinear)
    assert sum(isinstance(m, QuantReLU) for m in q.modules()) == 2
    assert sum(isinstance(m, nn.BatchNorm2d) for m in q.modules()) == 2
    ints = [convs[0].quant_weight().int(), convs[1].quant_weight().int(), q.net.classifier.quant_weight().int()]
    # narrow-range signed: 8 bits -> |w| <= 127, 3 bits -> <= 3, 5 bits -> <= 15, and the max level is used
    assert [int(t.abs().max()) for t in ints] == [127, 3, 15]


def test_input_quantizer_is_identity_on_uint8_grid(train_set):
    q = convert_model(CNVLike(**TINY), QuantConfig())
    x = train_set.images[:16]
    scale = q.input_quant.act_quant.scale()
    assert float(scale) == float(torch.tensor(1.0) / 255)
    out = q.input_quant(x.float() / 255)
    assert torch.equal(out, x.float() * scale)


def test_one_bit_weights_are_bipolar():
    q = convert_model(CNVLike(**TINY), QuantConfig(weight_bits=1))
    w = q.net.features[3].quant_weight()
    assert torch.equal(w.value.abs(), torch.full_like(w.value, float(w.scale)))


def test_trimmed_model_roundtrip(train_set, tmp_path):
    torch.manual_seed(1)
    full = CNVLike(**TINY)
    state = {k: v.clone() for k, v in full.state_dict().items()}
    # drop output channels 1 and 3 of the first conv (and the matching BN / next-conv input channels)
    keep = torch.tensor([0, 2])
    for k in ("features.0.weight", "features.1.weight", "features.1.bias", "features.1.running_mean",
              "features.1.running_var"):
        state[k] = state[k][keep]
    state["features.3.weight"] = state["features.3.weight"][:, keep]
    resize_to_state(full, state)
    full.load_state_dict(state)
    cfg = QuantConfig(calibration_batches=1)
    q = convert_model(full, cfg)
    calibrate_activations(q, train_set, 1, 32)
    path = tmp_path / "q.pt"
    save_quant_checkpoint(path, q, {"name": "cnv", "kwargs": TINY}, float_shapes(full), cfg)
    loaded = load_quant_checkpoint(path)
    x = train_set.images[:8].float() / 255
    with torch.no_grad():
        assert torch.equal(q(x), loaded(x))
    assert loaded.net.features[0].weight.shape[0] == 2


def test_load_rejects_float_checkpoint(tmp_path):
    from trimflow.models import save_checkpoint
    save_checkpoint(tmp_path / "f.pt", CNVLike(**TINY), {"name": "cnv", "kwargs": TINY})
    with pytest.raises(FlowError, match="not a trimflow quantized checkpoint"):
        load_quant_checkpoint(tmp_path / "f.pt")
    with pytest.raises(FlowError, match="does not exist"):
        load_quant_checkpoint(tmp_path / "missing.pt")


def test_qat_is_deterministic(train_set):
    cfg = QuantConfig(calibration_batches=1, calibration_batch_size=32, bn_recalibration_batches=1,
                      train=TrainConfig(epochs=1.0, batch_size=32, lr=0.01, seed=3))
    teacher = CNVLike(**TINY).eval()
    runs = []
    for _ in range(2):
        torch.manual_seed(123)  # different global state must not matter: the config's seed decides
        runs.append(quantize_model(CNVLike(**TINY), train_set, cfg, teacher=teacher, progress=False).state_dict())
        torch.manual_seed(999)
    assert runs[0].keys() == runs[1].keys()
    for key in runs[0]:
        assert torch.equal(runs[0][key], runs[1][key]), key
    fresh = CNVLike(**TINY).state_dict()
    assert not torch.equal(runs[0]["net.features.3.weight"], fresh["features.3.weight"])  # it trained


def test_bn_recalibration(train_set):
    torch.manual_seed(0)
    q = convert_model(CNVLike(**TINY), QuantConfig())
    bn = q.net.features[1]
    bn.running_mean.fill_(5.0)
    recalibrate_batchnorm(q, train_set, batches=2, batch_size=32)
    # the stored mean is now the mean of conv outputs on the data (input in [0, 1], 8-bit weights)
    x = train_set.images[:64].float() / 255
    with torch.no_grad():
        conv_out = q.net.features[0](q.input_quant(x))
    assert torch.allclose(bn.running_mean, conv_out.mean((0, 2, 3)), atol=1e-5)
    assert bn.momentum == 0.1 and not bn.training


def test_scale_init_validated():
    with pytest.raises(FlowError, match="scale_init"):
        QuantConfig(scale_init="minmax")


def test_mse_scale_keeps_two_bit_weights_alive():
    # Max-abs scaling puts the 2-bit levels at {-max, 0, max}: every |w| < max/2 becomes 0 (about half of a
    # uniformly initialised layer, more for a trained one). The MSE-initialised scale uses the levels.
    torch.manual_seed(0)
    model = CNVLike(**TINY)
    zeros = {}
    for init in ("max", "mse"):
        q = convert_model(model, QuantConfig(weight_bits=2, scale_init=init))
        zeros[init] = float((q.net.features[3].quant_weight().int() == 0).float().mean())
    assert zeros["max"] > 0.45 and zeros["mse"] < 0.4, zeros


def test_low_bit_configs_train_with_the_low_bit_lr():
    from trimflow.quantize import QuantConfig, qat_train_config

    assert qat_train_config(QuantConfig(weight_bits=4, act_bits=4)).lr == 0.01
    assert qat_train_config(QuantConfig(weight_bits=2, act_bits=4)).lr == 0.002
    assert qat_train_config(QuantConfig(weight_bits=4, act_bits=2, low_bit_lr=0.001)).lr == 0.001
    assert qat_train_config(QuantConfig(weight_bits=2, act_bits=2, low_bit_lr=None)).lr == 0.01
    with pytest.raises(FlowError, match="low_bit_lr"):
        QuantConfig(low_bit_lr=0)


@pytest.mark.parametrize("where", ["after_relu", "after_pool", "at_input"])
def test_batchnorm_finn_cannot_absorb_is_named(where):
    layers = {
        "after_relu": [nn.Conv2d(1, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3), nn.ReLU()],
        "after_pool": [nn.Conv2d(1, 4, 3), nn.MaxPool2d(2), nn.BatchNorm2d(4), nn.ReLU()],
        "at_input": [nn.BatchNorm2d(1), nn.Conv2d(1, 4, 3), nn.ReLU()],
    }[where]
    model = nn.Sequential(*layers, nn.Flatten(), nn.LazyLinear(10))
    model(torch.zeros(1, 1, 28, 28))  # materialise the lazy layer
    bn = next(str(i) for i, m in enumerate(layers) if isinstance(m, nn.BatchNorm2d))
    with pytest.raises(FlowError, match=rf"BatchNorm '{bn}' follows .*not a Conv2d/Linear"):
        convert_model(model, QuantConfig())


def test_batchnorm_after_conv_and_linear_is_accepted():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 26 * 26, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    convert_model(model, QuantConfig())
