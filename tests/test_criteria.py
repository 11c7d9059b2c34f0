"""Baseline criteria: each one's numbers against a direct computation, all in the same score structure."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trimflow import FlowError
from trimflow.criteria import CRITERIA, score
from trimflow.relevance import RelevanceConfig, compute_relevance
from tests.helpers import small_net as _model
from tests.helpers import synthetic_images as _images


def test_every_criterion_scores_the_same_layers():
    model, data = _model(), _images(20)
    for criterion in CRITERIA:
        s = score(model, data, criterion, RelevanceConfig(images=16, batch_size=8))
        assert s.criterion == criterion
        assert {k: len(v) for k, v in s.layers.items()} == {"c1": 6, "c2": 4}
        assert tuple(s.input_shape) == (1, 8, 8)
    with pytest.raises(FlowError, match="unknown criterion 'l3'"):
        score(model, data, "l3")


def test_weight_norms_and_bn_gamma():
    model, data = _model(), _images(4)
    l1, l2 = score(model, data, "l1"), score(model, data, "l2")
    gamma = score(model, data, "bn_gamma")
    for name, bn in (("c1", model.bn1), ("c2", model.bn2)):
        w = model.get_submodule(name).weight.detach()
        assert l1.tensor(name).tolist() == w.abs().sum((1, 2, 3)).tolist()
        torch.testing.assert_close(l2.tensor(name), w.pow(2).sum((1, 2, 3)).sqrt(), atol=1e-12, rtol=0)
        assert gamma.tensor(name).tolist() == bn.weight.detach().abs().tolist()
    assert score(model, data, "l1", RelevanceConfig(normalize="max")).tensor("c1").max() == 1.0


def test_bn_gamma_needs_bn():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3)).double()
    with pytest.raises(FlowError, match="layer 0 is not directly followed by an affine BatchNorm"):
        score(model, _images(2), "bn_gamma")


def test_random_is_seeded():
    model, data = _model(), _images(4)
    a, b = score(model, data, "random", RelevanceConfig(seed=1)), score(model, data, "random", RelevanceConfig(seed=1))
    c = score(model, data, "random", RelevanceConfig(seed=2))
    assert a.layers == b.layers != c.layers
    assert all(0.0 <= v < 1.0 for vs in a.layers.values() for v in vs)


def test_apoz_is_relevance_fraction_nonzero():
    model, data = _model(), _images(30)
    a = score(model, data, "apoz", RelevanceConfig(images=None, batch_size=7))
    # APoZ stays the published criterion although relevance weights by the consumers by default
    r = compute_relevance(model, data, RelevanceConfig(images=None, statistic="apoz", batch_size=11,
                                                       weighting="none", selection="independent"))
    for name in a.layers:
        torch.testing.assert_close(a.tensor(name), r.tensor(name), atol=1e-12, rtol=0)
    assert a.input_means  # data-driven: compensation means come along


def test_taylor_matches_autograd():
    model, data = _model(), _images(10)
    s = score(model, data, "taylor", RelevanceConfig(images=None, batch_size=4))
    # direct: per image, |sum over positions of activation * dLoss/dactivation|, averaged over images
    x = data.float_images().double()
    acts = {}
    h1 = model.r1.register_forward_hook(lambda m, i, o: acts.__setitem__("c1", o))
    h2 = model.r2.register_forward_hook(lambda m, i, o: acts.__setitem__("c2", o))
    loss = nn.functional.cross_entropy(model(x), data.labels, reduction="sum")
    grads = torch.autograd.grad(loss, [acts["c1"], acts["c2"]])
    h1.remove(), h2.remove()
    for (name, a), g in zip(acts.items(), grads):
        expected = (a * g).sum((2, 3)).abs().mean(0)
        torch.testing.assert_close(s.tensor(name), expected.detach(), atol=1e-12, rtol=1e-9)
    assert all(p.grad is None for p in model.parameters())


def test_gradient_relevance_reads_no_labels():
    """weighting=gradient: Taylor's |activation x gradient| of the net's own predicted class, so the labels the set
    carries do not matter, and it equals Taylor wherever the labels are the net's predictions."""
    import dataclasses  # noqa: PLC0415

    model, data = _model(), _images(12)
    cfg = RelevanceConfig(images=None, batch_size=5, weighting="gradient", selection="independent")
    s = compute_relevance(model, data, cfg)
    shuffled = dataclasses.replace(data, labels=data.labels.roll(1))
    assert compute_relevance(model, shuffled, cfg).layers == s.layers
    with torch.no_grad():
        predicted = model(data.float_images().double()).argmax(1)
    assert not torch.equal(predicted, data.labels)  # otherwise the comparison below proves nothing
    t = score(model, dataclasses.replace(data, labels=predicted), "taylor", dataclasses.replace(cfg, weighting="none"))
    for name in s.layers:
        torch.testing.assert_close(s.tensor(name), t.tensor(name), atol=1e-12, rtol=1e-9)
    assert s.input_means and s.channel_means  # the means compensation folds in still come along
