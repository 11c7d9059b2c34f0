"""Trim policies, compensation, BN recalibration, reports and checkpoints of trimmed models."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trimflow import FlowError
from trimflow.criteria import score
from trimflow.graph import build_graph, count_params_macs
from trimflow.models import build_model, load_checkpoint, save_checkpoint
from trimflow.relevance import RelevanceConfig, RelevanceScores, compute_relevance
from trimflow.trim import TrimConfig, recalibrate_bn, trim_model
from tests.helpers import synthetic_images as _images

CNV_WIDTHS = {"features.0": 16, "features.3": 32, "features.6": 32, "features.9": 64, "features.12": 64}


@pytest.fixture(scope="module")
def cnv():
    torch.manual_seed(0)
    model = build_model("cnv").eval()
    data = _images(64, shape=(1, 28, 28))
    return model, data, score(model, data, "l1")


def test_uniform_counts_and_report(cnv):
    model, data, scores = cnv
    trimmed, report = trim_model(model, scores, TrimConfig(policy="uniform", keep=0.3, round_to=4,
                                                           compensation="none"))
    kept = {layer["name"]: layer["kept"] for layer in report.layers}
    assert kept == {n: min(w, math.ceil(math.ceil(0.3 * w) / 4) * 4) for n, w in CNV_WIDTHS.items()}
    assert kept == {"features.0": 8, "features.3": 12, "features.6": 12, "features.9": 20, "features.12": 20}
    # kept indices are the highest-L1 kernels
    for layer in report.layers:
        l1 = scores.tensor(layer["name"])
        assert sorted(layer["kept_indices"]) == layer["kept_indices"]
        assert l1[layer["kept_indices"]].min() >= l1[[i for i in range(layer["total"])
                                                      if i not in layer["kept_indices"]]].max()
    assert "classifier" not in kept and trimmed.classifier.out_features == 10
    assert (report.params_after, report.macs_after) == count_params_macs(trimmed, (1, 28, 28))
    assert (report.params_before, report.macs_before) == count_params_macs(model, (1, 28, 28)) == (101050, 5563264)
    # the graph's cost model prices the same counts without building the model
    graph = build_graph(model, (1, 28, 28))
    counts = {g.id: kept[g.name] for g in graph.prunable()}
    assert graph.cost(counts) == (report.params_after, report.macs_after)


@pytest.mark.parametrize("metric", ["macs", "params"])
def test_budget_policy_meets_budget(cnv, metric):
    model, data, scores = cnv
    cfg = TrimConfig(policy="budget", budget=0.5, budget_metric=metric, compensation="none")
    trimmed, report = trim_model(model, scores, cfg)
    before, after = (report.macs_before, report.macs_after) if metric == "macs" else \
        (report.params_before, report.params_after)
    assert after <= 0.5 * before
    assert after >= 0.45 * before  # the search keeps as much as the budget allows
    with pytest.raises(FlowError, match="budget 0.01 of the original macs is below what min_keep=8"):
        trim_model(model, scores, TrimConfig(policy="budget", budget=0.01, min_keep=8, compensation="none"))


def test_unreachable_budget_names_the_layers_kept_whole():
    # a grouped conv keeps its input and output channels whole: the floor it sets is explained, not just stated
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=2), nn.ReLU(), nn.Conv2d(8, 8, 3),
                          nn.ReLU(), nn.Flatten(), nn.Linear(8 * 22 * 22, 3)).eval()
    scores = score(model, _images(8, shape=(1, 28, 28)), "l1")
    with pytest.raises(FlowError, match=r"at least 0\.\d+\); raise the budget .*; kept whole: grouped conv 2 "
                                        r"\(groups=2\)$"):
        trim_model(model, scores, TrimConfig(policy="budget", budget=0.05, compensation="none"))


def test_global_policy_keeps_top_fraction(cnv):
    model, data, scores = cnv
    _, report = trim_model(model, scores, TrimConfig(policy="global", keep=0.25, normalize="rank",
                                                     compensation="none"))
    assert sum(layer["kept"] for layer in report.layers) == round(0.25 * sum(CNV_WIDTHS.values()))
    _, report = trim_model(model, scores, TrimConfig(policy="global", keep=0.05, min_keep=3, round_to=2,
                                                     compensation="none"))
    assert all(layer["kept"] >= 3 and layer["kept"] % 2 == 0 for layer in report.layers)


def test_trimmed_checkpoint_loads_back(cnv, tmp_path):
    model, data, scores = cnv
    trimmed, _ = trim_model(model, scores, TrimConfig(keep=0.5), calib=data)
    save_checkpoint(tmp_path / "t.pt", trimmed, {"name": "cnv", "kwargs": {}}, trimmed=True)
    loaded, _ = load_checkpoint(tmp_path / "t.pt")
    x = data.float_images()[:5]
    assert torch.equal(loaded(x), trimmed(x))


class ConstChannels(nn.Module):
    """Kernels 1 and 3 of `a` output a constant (zero weights, BN beta): mean replacement is exact for them."""

    def __init__(self, bias_b: bool):
        super().__init__()
        self.a, self.bna, self.ra = nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU()
        self.b = nn.Conv2d(4, 3, 3, bias=bias_b)  # no padding: every output sees all 9 taps
        self.bnb, self.rb = (nn.BatchNorm2d(3), nn.ReLU())
        self.fc = nn.Linear(3 * 6 * 6, 2)
        with torch.no_grad():
            self.a.weight[[1, 3]] = 0
            self.bna.bias.copy_(torch.tensor([0.1, 0.7, -0.2, 1.3]))
            self.bna.running_mean.uniform_(-0.1, 0.1)
            self.bnb.running_mean.uniform_(-0.1, 0.1)

    def forward(self, x):
        return self.fc(torch.flatten(self.rb(self.bnb(self.b(self.ra(self.bna(self.a(x)))))), 1))


@pytest.mark.parametrize("bias_b", [False, True])
def test_compensation_is_exact_for_constant_kernels(bias_b):
    torch.manual_seed(1)
    model = ConstChannels(bias_b).double().eval()
    data = _images(16)
    scores = compute_relevance(model, data, RelevanceConfig())
    # hand-made scores: kernels 1 and 3 of `a` least relevant, kernel 0 of `b` least relevant
    scores.layers = {"a": [4.0, 1.0, 3.0, 0.0], "b": [0.0, 2.0, 3.0]}
    cfg = TrimConfig(policy="uniform", keep=0.5, compensation="mean")
    trimmed, report = trim_model(model, scores, cfg)
    assert [layer["kept_indices"] for layer in report.layers] == [[0, 2], [1, 2]]
    assert report.compensated == ["b", "fc"]
    assert (trimmed.b.bias is not None) == bias_b  # no bias was added: the BN after b absorbed the shift
    x = data.float_images().double()
    # b's removed inputs are constant -> exact; fc loses b's kernel 0 (features 0..35), replaced by its mean map
    with torch.no_grad():
        b_out = model.rb(model.bnb(model.b(model.ra(model.bna(model.a(x)))))).flatten(1)[:, :36]
        mean_map = torch.tensor(scores.input_means["fc"][:36], dtype=torch.float64)
        reference = model(x) - (b_out - mean_map) @ model.fc.weight[:, :36].T
    torch.testing.assert_close(trimmed(x), reference.detach(), atol=1e-10, rtol=0)
    uncompensated, _ = trim_model(model, scores, TrimConfig(policy="uniform", keep=0.5, compensation="none"))
    assert not torch.allclose(uncompensated(x), reference)


def test_compensation_needs_means(cnv):
    model, data, scores = cnv
    with pytest.raises(FlowError, match="no mean input for layer features.3"):
        trim_model(model, scores, TrimConfig(compensation="mean"))
    with pytest.raises(FlowError, match="recalibrate_bn=true needs a calibration set"):
        trim_model(model, scores, TrimConfig(compensation="none", recalibrate_bn=True))


def test_recalibrate_bn_matches_batch_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU()).double().eval()
    data = _images(40)
    assert recalibrate_bn(model, data, batch_size=10)
    z = model[0](data.float_images().double())
    torch.testing.assert_close(model[1].running_mean, z.mean((0, 2, 3)), atol=1e-12, rtol=0)
    assert not model.training and model[1].momentum == 0.1


def test_scores_from_another_model_are_rejected(cnv):
    model, data, scores = cnv
    bad = RelevanceScores(**{**scores.__dict__, "layers": {**scores.layers, "features.3": [1.0] * 31}})
    with pytest.raises(FlowError, match="layer features.3 have 31 entries but the layer has 32 kernels"):
        trim_model(model, bad, TrimConfig(compensation="none"))
    for bad_cfg in ({"policy": "magic"}, {"keep": 0.0}, {"budget": 1.5}, {"min_keep": 0}, {"round_to": 0},
                    {"budget_metric": "luts"}, {"criterion": "l7"}):
        with pytest.raises(FlowError, match="trim: "):
            TrimConfig(**bad_cfg)


def test_iterative_trim_rescoring_each_step(cnv):
    from trimflow.train import TrainConfig
    from trimflow.trim import iterative_trim

    model, data, _ = cnv
    seen = []

    def score_fn(m):
        seen.append(count_params_macs(m, (1, 28, 28))[1])
        return score(m, data, "l1")

    cfg = TrimConfig(policy="budget", budget=0.36, round_to=1, recalibrate_bn=True, calib_images=32)
    trimmed, reports = iterative_trim(model, score_fn, cfg, data, data, TrainConfig(epochs=0.5, batch_size=32),
                                      steps=2)
    full = count_params_macs(model, (1, 28, 28))[1]
    # step 1 scores the original, step 2 the net step 1 left, which kept at most sqrt(0.36) = 60 % of the MACs
    assert seen[0] == full and len(reports) == 2 and 0.5 < seen[1] / full <= 0.6
    assert reports[1].macs_before == seen[1] and reports[0].macs_after == seen[1]
    # the last step asks for its share of the original: the end result is within a kernel's cost of 36 %
    final = count_params_macs(trimmed, (1, 28, 28))[1] / full
    assert 0.33 < final <= 0.36
    assert not any(torch.equal(a, b) for a, b in zip(trimmed.state_dict().values(), model.state_dict().values())
                   if a.shape == b.shape and a.dtype.is_floating_point)  # fine-tuned between/after the steps
    one, _ = iterative_trim(model, lambda m: score(m, data, "l1"), cfg, data, steps=1)
    direct, _ = trim_model(model, score(model, data, "l1"), cfg, data)
    assert all(torch.equal(a, b) for a, b in zip(one.state_dict().values(), direct.state_dict().values()))
    with pytest.raises(FlowError, match="policy='budget'"):
        iterative_trim(model, score_fn, TrimConfig(policy="uniform"), data, steps=2)
    with pytest.raises(FlowError, match="both train_set and finetune"):
        iterative_trim(model, score_fn, cfg, data, data, steps=2)
