"""Per-layer allocation by measured sensitivity (TrimConfig allocation="sensitivity")."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from trimflow import FlowError
from trimflow.config_parsing import from_dict
from trimflow.criteria import score
from trimflow.data import ImageSet
from trimflow.graph import build_graph, count_params_macs
from trimflow.models import build_model
from trimflow.relevance import RelevanceConfig, compute_relevance
from trimflow.trim import (SensitivityConfig, TrimConfig, allocate_by_sensitivity, measure_sensitivity, probe_counts,
                       trim_model)
from tests.helpers import synthetic_images as _images

SENS = TrimConfig(policy="budget", budget=0.5, round_to=4, allocation="sensitivity", compensation="mean",
                  recalibrate_bn=True, sensitivity=SensitivityConfig(images=32, keep_ratios=(0.5, 0.25)))


def _self_labelled(model: nn.Module, n: int, shape=(1, 28, 28), seed: int = 0) -> ImageSet:
    """Random images labelled with the model's own predictions: any distortion of its outputs raises the loss."""
    data = _images(n, shape=shape, seed=seed)
    with torch.no_grad():
        labels = model(data.float_images().to(next(model.parameters()).dtype)).argmax(1)
    return ImageSet("self-labelled", data.images, labels, int(labels.max()) + 1)


@pytest.fixture(scope="module")
def cnv():
    torch.manual_seed(0)
    model = build_model("cnv").eval()
    data = _self_labelled(model, 64)
    return model, data, score(model, data, "relevance", RelevanceConfig(images=64))


@pytest.mark.parametrize("metric", ["macs", "params"])
def test_budget_met_and_guard_held(cnv, metric):
    model, data, scores = cnv
    cfg = dataclasses.replace(SENS, budget_metric=metric, min_keep=8)
    trimmed, report = trim_model(model, scores, cfg, data, progress=False)
    before, after = (report.macs_before, report.macs_after) if metric == "macs" else \
        (report.params_before, report.params_after)
    assert after <= 0.5 * before
    assert after >= 0.46 * before  # the greedy fill-back lands within a step or so of the budget
    assert (report.params_after, report.macs_after) == count_params_macs(trimmed, (1, 28, 28))
    for layer in report.layers:
        assert layer["kept"] >= 8 and (layer["kept"] % 4 == 0 or layer["kept"] == layer["total"])
        assert len(layer["kept_indices"]) == layer["kept"]
    table = report.sensitivity
    assert table["metric"] == "kl" and table["images"] == 32
    assert set(table["groups"]) == {layer["name"] for layer in report.layers}
    for name, g in table["groups"].items():
        # probed: the full width, the keep ratios and the fewest kernels the guard allows (8)
        assert g["counts"] == probe_counts(g["size"], cfg) and g["counts"][0] == g["size"] and g["counts"][-1] == 8
        assert g["drop"][0] == 0.0 and all(b >= a for a, b in zip(g["drop"], g["drop"][1:]))  # monotone
    # kernels leave in relevance order within each layer
    for layer in report.layers:
        s = scores.tensor(layer["name"])
        dropped = [i for i in range(layer["total"]) if i not in layer["kept_indices"]]
        if dropped:
            assert s[layer["kept_indices"]].min() >= s[dropped].max()


def test_same_seed_same_result(cnv):
    model, data, scores = cnv
    a, ra = trim_model(model, scores, SENS, data, progress=False)
    b, rb = trim_model(model, scores, SENS, data, progress=False)
    assert ra.layers == rb.layers
    assert {k: v for k, v in ra.sensitivity.items() if k != "seconds"} == \
        {k: v for k, v in rb.sensitivity.items() if k != "seconds"}
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    # a table measured once trims to the same result without measuring again (e.g. several budgets)
    c, rc = trim_model(model, scores, SENS, data, sensitivity=ra.sensitivity, progress=False)
    assert rc.layers == ra.layers and rc.sensitivity is ra.sensitivity


class TwoBranch(nn.Module):
    """Two identical conv branches read by one linear layer; the classifier weights of one branch can be scaled."""

    def __init__(self, amplify: str):
        super().__init__()
        self.a, self.bna = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.b, self.bnb = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(2 * 8 * 64, 3)  # reads every position: the noise images do not average out
        with torch.no_grad():
            self.bna.bias.uniform_(-0.5, 0.5)
            self.b.load_state_dict(self.a.state_dict())
            self.bnb.load_state_dict(self.bna.state_dict())
            half = self.fc.weight[:, :512].clone()
            self.fc.weight.copy_(torch.cat([half, half], 1))
            # the made-sensitive branch: its consumer reads it with 6x the weights
            cols = slice(0, 512) if amplify == "a" else slice(512, 1024)
            self.fc.weight[:, cols] *= 6.0

    def forward(self, x):
        ya = torch.relu(self.bna(self.a(x)))
        yb = torch.relu(self.bnb(self.b(x)))
        return self.fc(torch.flatten(torch.cat([ya, yb], 1), 1))


@pytest.mark.parametrize("amplify", ["a", "b"])
def test_sensitive_layer_keeps_more_kernels(amplify):
    torch.manual_seed(3)
    model = TwoBranch(amplify).eval()
    data = _self_labelled(model, 128, shape=(1, 8, 8))
    scores = compute_relevance(model, data, RelevanceConfig(images=128))
    cfg = TrimConfig(policy="budget", budget=0.5, round_to=1, allocation="sensitivity", compensation="mean",
                     recalibrate_bn=False, sensitivity=SensitivityConfig(images=128, keep_ratios=(0.75, 0.5, 0.25)))
    _, report = trim_model(model, scores, cfg, data, progress=False)
    kept = {layer["name"]: layer["kept"] for layer in report.layers}
    quiet = "b" if amplify == "a" else "a"
    table = report.sensitivity["groups"]
    assert table[amplify]["drop"][-1] > table[quiet]["drop"][-1]  # measured as more sensitive
    assert kept[amplify] > kept[quiet]
    assert report.macs_after <= 0.5 * report.macs_before
    # the rank allocation cannot tell the two apart (identical activations, equal widths)
    _, rank = trim_model(model, scores, dataclasses.replace(cfg, allocation="rank"), data)
    ranked = {layer["name"]: layer["kept"] for layer in rank.layers}
    assert abs(ranked["a"] - ranked["b"]) <= 1


def test_residual_groups_are_measured_whole():
    torch.manual_seed(0)
    model = build_model("resnet8").eval()
    data = _self_labelled(model, 32)
    scores = score(model, data, "l1")
    cfg = dataclasses.replace(SENS, budget=0.4, sensitivity=SensitivityConfig(images=16, keep_ratios=(0.5,)))
    trimmed, report = trim_model(model, scores, cfg, data, progress=False)
    graph = build_graph(model, (1, 28, 28))
    coupled = [g for g in graph.prunable() if len(g.producers) > 1]
    assert coupled and all(g.name in report.sensitivity["groups"] for g in coupled)
    assert report.macs_after <= 0.4 * report.macs_before
    assert trimmed(data.float_images()[:2]).shape == (2, 10)


def test_allocation_follows_the_table(cnv):
    model, _, _ = cnv
    graph = build_graph(model, (1, 28, 28))
    cfg = dataclasses.replace(SENS, budget=0.6)
    groups = graph.prunable()

    def table(steep: str) -> dict:
        out = {}
        for g in groups:
            counts = probe_counts(g.size, cfg)
            slope = 100.0 if g.name == steep else 1.0
            out[g.name] = {"size": g.size, "counts": counts, "drop": [slope * (g.size - c) / g.size for c in counts]}
        return {"groups": out}

    for steep in ("features.3", "features.9"):
        counts = allocate_by_sensitivity(graph, table(steep), cfg)
        by_name = {g.name: counts[g.id] for g in groups}
        assert by_name[steep] == next(g.size for g in groups if g.name == steep)  # never touched
        params, macs = graph.cost(counts)
        assert macs <= 0.6 * graph.cost()[1]
    bad = table("features.3")
    del bad["groups"]["features.6"]
    with pytest.raises(FlowError, match="no entry for layer features.6"):
        allocate_by_sensitivity(graph, bad, cfg)
    bad = table("features.3")
    bad["groups"]["features.9"]["drop"][1] = float("nan")
    with pytest.raises(FlowError, match="layer features.9 is malformed"):
        allocate_by_sensitivity(graph, bad, cfg)


def test_bad_input_is_a_flow_error(cnv):
    model, data, scores = cnv
    with pytest.raises(FlowError, match="needs a calibration set"):
        trim_model(model, scores, dataclasses.replace(SENS, compensation="none", recalibrate_bn=False))
    with pytest.raises(FlowError, match="budget 0.01 of the original macs is below what min_keep=8"):
        trim_model(model, scores, dataclasses.replace(SENS, budget=0.01, min_keep=8), data, progress=False)
    with pytest.raises(FlowError, match="needs policy='budget', got policy='uniform'"):
        TrimConfig(policy="uniform", allocation="sensitivity")
    for bad in ({"allocation": "magic"},):
        with pytest.raises(FlowError, match="trim: allocation 'magic' unknown"):
            TrimConfig(**bad)
    for bad, msg in (({"keep_ratios": ()}, "keep_ratios"), ({"keep_ratios": (0.5, 1.0)}, "keep_ratios"),
                     ({"images": 0}, "images must be >= 1"), ({"metric": "f1"}, "metric 'f1' unknown"),
                     ({"batch_size": 0}, "batch_size")):
        with pytest.raises(FlowError, match=f"trim.sensitivity: {msg}"):
            SensitivityConfig(**bad)
    # the config file form: nested mapping, lists for tuples, and the key path in errors
    cfg = from_dict(TrimConfig, {"policy": "budget", "allocation": "sensitivity",
                                 "sensitivity": {"keep_ratios": [0.6, 0.3], "metric": "accuracy"}})
    assert cfg.sensitivity == SensitivityConfig(keep_ratios=(0.6, 0.3), metric="accuracy")
    with pytest.raises(FlowError, match="trim.sensitivity: images must be >= 1"):
        from_dict(TrimConfig, {"policy": "budget", "sensitivity": {"images": 0}}, where="trim")


def test_accuracy_metric_and_standalone_measurement(cnv):
    model, data, scores = cnv
    cfg = dataclasses.replace(SENS, sensitivity=dataclasses.replace(SENS.sensitivity, metric="accuracy"))
    before = copy.deepcopy(model.state_dict())
    table = measure_sensitivity(model, scores, data, cfg, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is left untouched
    for g in table["groups"].values():
        assert g["drop"] == [max(0.0, *(table["base_accuracy"] - a for a in g["accuracy"][:i + 1]))
                             for i in range(len(g["counts"]))]


def test_table_measured_once_for_every_budget(cnv, tmp_path, monkeypatch):
    # The table depends on the model, scores and probe settings, not on the budget: three budgets, one measurement.
    import trimflow.trim as trim_mod
    model, data, scores = cnv
    calls = []
    real = trim_mod.measure_sensitivity
    monkeypatch.setattr(trim_mod, "measure_sensitivity", lambda *a, **k: calls.append(1) or real(*a, **k))
    kept = []
    for budget in (0.5, 0.35, 0.25):
        cfg = dataclasses.replace(SENS, budget=budget)
        table, cached = trim_mod.cached_sensitivity(tmp_path, model, scores, data, cfg, progress=False)
        assert cached == (budget != 0.5)
        _, report = trim_model(model, scores, cfg, data, sensitivity=table, progress=False)
        kept.append(report.macs_after / report.macs_before)
    assert len(calls) == 1 and len(list(tmp_path.glob("sensitivity-*.json"))) == 1
    assert kept[0] > kept[1] > kept[2] and kept[2] <= 0.25
    # a setting that shapes the probes is a different table
    other = dataclasses.replace(SENS, compensation="none")
    assert trim_mod.cached_sensitivity(tmp_path, model, scores, data, other, progress=False)[1] is False
    assert len(calls) == 2


def test_guard_falls_back_to_rank_when_the_table_misleads(cnv):
    """A table that calls one group free to cut to a single kernel: the allocation follows it, the whole-net check
    (KL from the untrimmed net) catches it and the rank allocation is used; guard=none keeps the bad allocation."""
    model, data, scores = cnv
    graph = build_graph(model, (1, 28, 28))
    cfg = dataclasses.replace(SENS, budget=0.5, round_to=1, recalibrate_bn=False,
                              sensitivity=dataclasses.replace(SENS.sensitivity, images=64))
    first = graph.prunable()[0]
    table = {"groups": {}}
    for g in graph.prunable():
        counts = probe_counts(g.size, cfg)
        slope = 0.0 if g.id == first.id else 1.0
        table["groups"][g.name] = {"size": g.size, "counts": counts,
                                   "drop": [slope * (g.size - c) / g.size for c in counts]}
    unchecked = dataclasses.replace(cfg, sensitivity=dataclasses.replace(cfg.sensitivity, guard="none"))
    _, bad = trim_model(model, scores, unchecked, data, sensitivity=table, progress=False)
    assert bad.allocation_check is None
    assert next(lay["kept"] for lay in bad.layers if lay["name"] == first.name) == 1
    trimmed, report = trim_model(model, scores, cfg, data, sensitivity=table, progress=False)
    check = report.allocation_check
    assert check["used"] == "rank" and check["images"] == 64 and not check["same_as_rank"]
    assert check["kl"]["rank"] < check["kl"]["sensitivity"]
    rank = dataclasses.replace(cfg, allocation="rank")
    _, by_rank = trim_model(model, scores, rank, data, progress=False)
    assert [lay["kept_indices"] for lay in report.layers] == [lay["kept_indices"] for lay in by_rank.layers]
    assert report.macs_after <= 0.5 * report.macs_before
    with pytest.raises(FlowError, match="trim.sensitivity: guard 'maybe' unknown; use one of rank, none"):
        SensitivityConfig(guard="maybe")


def test_report_names_the_allocation_used():
    from trimflow.report.build_report import allocation_lines
    assert allocation_lines({}) == []
    line = allocation_lines({"allocation_check": {"used": "rank", "same_as_rank": False, "images": 500,
                                                  "kl": {"sensitivity": 0.91, "rank": 0.12}}})[0]
    assert "**rank**" in line and "sensitivity 0.9100, rank 0.1200" in line and "500" in line
    assert "same kernel counts" in allocation_lines({"allocation_check": {"used": "sensitivity",
                                                                         "same_as_rank": True}})[0]
