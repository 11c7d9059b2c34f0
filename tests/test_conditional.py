"""Conditional relevance (trimflow.conditional): the greedy order is forward selection on the consumers'
reconstruction error, and a kernel that copies another is ranked last and removed at no cost."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from tests.helpers import small_net, synthetic_images
from trimflow import FlowError
from trimflow.conditional import Covariance, greedy_order
from trimflow.reconstruct import ReconstructConfig
from trimflow.relevance import RelevanceConfig, compute_relevance
from trimflow.trim import TrimConfig, trim_model


def _error(terms, kept: list[int]) -> float:
    """sum_c tr(M_c[D, D] Cov_c(x_D | x_S)) computed directly: what the refit cannot recover with S kept."""
    total = 0.0
    for cov, m in terms:
        size = cov.shape[0]
        drop = [i for i in range(size) if i not in kept]
        if not drop:
            continue
        cond = cov[drop][:, drop]
        if kept:
            cross = cov[drop][:, kept]
            cond = cond - cross @ torch.linalg.solve(cov[kept][:, kept], cross.T)
        total += float(torch.trace(m[drop][:, drop] @ cond))
    return total


def test_greedy_order_is_forward_selection_on_the_reconstruction_error():
    g = torch.Generator().manual_seed(3)
    terms = []
    for _ in range(2):  # two consumers of the same six channels
        a = torch.randn(6, 6, generator=g, dtype=torch.float64)
        w = torch.randn(5, 6, generator=g, dtype=torch.float64)
        terms.append((a @ a.T + 0.1 * torch.eye(6, dtype=torch.float64), w.T @ w))
    order, gains = greedy_order(terms, torch.zeros(6, dtype=torch.float64))
    order = order.tolist()
    assert sorted(order) == list(range(6))
    kept: list[int] = []
    for step in range(6):  # each pick is the brute-force best next channel, its gain the error it removed
        best = min((c for c in range(6) if c not in kept), key=lambda c: _error(terms, kept + [c]))
        assert order[step] == best
        assert float(gains[step]) == pytest.approx(_error(terms, kept) - _error(terms, kept + [best]), rel=1e-7)
        kept.append(best)
    # and the greedy 2-subset is no worse than the best plain-variance pair by much, on this seed strictly better
    by_energy = sorted(range(6), key=lambda c: -sum(float(cov[c, c] * m[c, c]) for cov, m in terms))
    assert _error(terms, order[:2]) <= _error(terms, by_energy[:2]) + 1e-12
    assert _error(terms, order[:2]) <= min(_error(terms, list(p)) for p in itertools.combinations(range(6), 2)) * 1.5


def test_channels_the_kept_ones_explain_go_last_in_tiebreak_order():
    # four channels spanning two dimensions: after two independent picks the other two add nothing, and the
    # tie-break orders them
    base = torch.randn(1000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = torch.cat([base, base.sum(1, keepdim=True) * 3.0, base[:, :1] * -2.0], 1)
    terms = [(torch.cov(x.T), torch.eye(4, dtype=torch.float64))]
    tiebreak = torch.tensor([0.1, 0.2, 0.5, 1.0], dtype=torch.float64)
    order, gains = greedy_order(terms, tiebreak)
    order = order.tolist()
    assert gains[2:].tolist() == [0.0, 0.0]
    assert _error(terms, order[:2]) < 1e-9 * _error(terms, [])
    assert order[2:] == sorted(order[2:], key=lambda c: -tiebreak[c])


def test_covariance_streams_like_torch_cov():
    x = torch.randn(7, 3, 10, generator=torch.Generator().manual_seed(1))
    acc = Covariance()
    acc.add(x[:4])
    acc.add(x[4:])
    rows = x.transpose(1, 2).reshape(-1, 3).double()
    torch.testing.assert_close(acc.matrix(), torch.cov(rows.T, correction=0), atol=1e-6, rtol=1e-6)


def _with_copied_kernel(model: nn.Module) -> nn.Module:
    """c1's kernel 5 made an exact copy of kernel 0 (weights and BN)."""
    with torch.no_grad():
        model.c1.weight[5] = model.c1.weight[0]
        for p in ("weight", "bias", "running_mean", "running_var"):
            getattr(model.bn1, p)[5] = getattr(model.bn1, p)[0]
    return model


def test_a_copied_kernel_is_ranked_last_and_removed_at_no_cost():
    model, data = _with_copied_kernel(small_net()), synthetic_images(64)
    plain = compute_relevance(model, data, RelevanceConfig(images=None))
    cond = compute_relevance(model, data, RelevanceConfig(images=None, selection="conditional"))
    c = cond.tensor("c1")
    assert int(c.argmin()) in (0, 5)  # one of the pair adds nothing once the other is kept
    assert sorted(c.tolist()) == [k / 6 for k in range(1, 7)]  # scores are the order
    assert cond.channel_means == plain.channel_means and cond.input_means == plain.input_means
    # an exact refit (no ridge) moves the copy's reads onto the original: the trimmed net computes the same
    cfg = TrimConfig(policy="uniform", keep=5 / 6, compensation="reconstruct", calib_images=64,
                     reconstruct=ReconstructConfig(ridge=0.0, ridge_search=()))
    trimmed, report = trim_model(model, cond, cfg, data)
    kept = report.layers[0]["kept_indices"]
    assert len(kept) == 5 and (0 in kept) != (5 in kept)
    x = data.float_images().double()
    with torch.no_grad():
        torch.testing.assert_close(trimmed(x), model(x), atol=1e-6, rtol=1e-6)


def test_selection_is_checked():
    with pytest.raises(FlowError, match="selection 'greedy' unknown"):
        RelevanceConfig(selection="greedy")


def test_segments_of_a_concatenation_and_a_flatten():
    """Each consumer's covariance and weight Gram cover exactly the channels of its segment: a conv reading a
    concatenation (offset in channels) and a linear reading its flattened map (offset in features, channel-major)."""
    from tests.test_trim_patterns import Concat, _randomize
    from trimflow.conditional import covariance_hooks, weight_gram
    from trimflow.graph import build_graph
    from trimflow.relevance import collect

    model = _randomize(Concat()).double().eval()
    data = synthetic_images(13, shape=(3, 4, 4))
    graph = build_graph(model, (3, 4, 4))
    covs, adders = covariance_hooks(graph)
    assert sorted(covs) == [("conv", 0), ("conv", 1), ("fc", 0), ("fc", 1)]
    collect(model, data, graph, "mean", "post_act", 5, consumer_adders=adders)
    x = data.float_images().double()
    with torch.no_grad():
        c = torch.cat([torch.relu(model.bna(model.a(x))), torch.relu(model.b(x))], 1)
        d = torch.relu(model.bn(c))

    def cov(t):  # channels of (N, C, P) with every (image, position) a sample
        rows = t.transpose(1, 2).reshape(-1, t.shape[1])
        return torch.cov(rows.T, correction=0)
    for key, t in {("conv", 0): c[:, :5], ("conv", 1): c[:, 5:], ("fc", 0): d[:, :5], ("fc", 1): d[:, 5:]}.items():
        torch.testing.assert_close(covs[key].matrix(), cov(t.flatten(2)), atol=1e-5, rtol=1e-5)
    w = model.fc.weight.detach().double()
    expected = sum(torch.outer(w[o, 80 + torch.arange(4) * 16 + s], w[o, 80 + torch.arange(4) * 16 + s])
                   for o in range(3) for s in range(16))
    torch.testing.assert_close(weight_gram(model, graph, "fc", 80, 4, 16), expected)
    wc = model.conv.weight.detach().double()[:, 5:].flatten(2)
    torch.testing.assert_close(weight_gram(model, graph, "conv", 5, 4, 1), torch.einsum("oit,ojt->ij", wc, wc))


@pytest.mark.parametrize("name, shape", [("Residual", (3, 6, 6)), ("Depthwise", (3, 5, 5)),
                                         ("ConvFlattenLinear", (3, 5, 5))])
def test_every_pattern_gets_an_order(name, shape):
    """Residual groups (several producers and readers), a depthwise reader, a flattened linear: per group the
    scores are one order (k / size), the same for every producer of the group."""
    import tests.test_trim_patterns as patterns
    from trimflow.data import ImageSet
    from trimflow.graph import build_graph

    model = patterns._randomize(getattr(patterns, name)()).double().eval()
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, *shape), generator=g, dtype=torch.uint8)
    data = ImageSet("synthetic", images, torch.randint(0, 3, (40,), generator=g), 3)
    scores = compute_relevance(model, data, RelevanceConfig(images=None))
    graph = build_graph(model, shape)
    for group in graph.prunable():
        first = scores.tensor(group.producers[0])
        assert sorted(first.tolist()) == pytest.approx([k / group.size for k in range(1, group.size + 1)])
        for p in group.producers[1:]:
            assert torch.equal(scores.tensor(p), first)
