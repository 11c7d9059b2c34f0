"""One model per channel-coupling pattern: removing kernels must equal zeroing their activations, exactly.

Each test zeroes the removed channels at their source (producer weights and bias, BN gamma/beta, depthwise
filters) in a float64 copy of the model, then checks that the physically trimmed model computes the same outputs.
A wrong index anywhere (BN slice, flattened features, concat offset, residual coupling) breaks the equality.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trimflow import FlowError
from trimflow.graph import build_graph
from trimflow.trim import remove_channels


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1 + 0.2)
    return model.double().eval()


def _zero_removed(model: nn.Module, graph, keep) -> nn.Module:
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for use in graph.uses.values():
            mod = zeroed.get_submodule(use.name)
            if use.kind in ("conv", "linear"):
                gid = graph.find(use.out_group)
                if gid not in keep:
                    continue
                gone = torch.ones(mod.weight.shape[0], dtype=torch.bool)
                gone[keep[gid]] = False
            else:  # bn / depthwise: per-channel along the input layout
                gone = torch.ones(graph.width(use.inputs, {}), dtype=torch.bool)
                gone[graph.indices(use.inputs, keep)] = False
            mod.weight[gone] = 0
            if mod.bias is not None:
                mod.bias[gone] = 0
    return zeroed


def _check(model: nn.Module, input_shape, seed: int = 0, expect_groups: int | None = None):
    model = _randomize(model, seed)
    graph = build_graph(model, input_shape)
    groups = graph.prunable()
    if expect_groups is not None:
        assert len(groups) == expect_groups
    gen = torch.Generator().manual_seed(seed)
    keep = {g.id: torch.sort(torch.randperm(g.size, generator=gen)[:max(1, g.size // 2)]).values for g in groups}
    trimmed = remove_channels(model, graph, keep)
    zeroed = _zero_removed(model, graph, keep)
    x = torch.rand((3, *input_shape), generator=gen, dtype=torch.float64)
    outs = [o for o in _as_tuple(trimmed(x))]
    refs = [o for o in _as_tuple(zeroed(x))]
    origs = [o for o in _as_tuple(model(x))]
    for o, r, orig in zip(outs, refs, origs):
        assert o.shape == r.shape
        torch.testing.assert_close(o, r, atol=1e-10, rtol=0)
        assert not torch.allclose(o, orig)  # something was really removed
    assert sum(p.numel() for p in trimmed.parameters()) < sum(p.numel() for p in model.parameters())
    return graph, keep, trimmed


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


class ConvBnReluConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn1, self.c2 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.Conv2d(8, 6, 3)

    def forward(self, x):
        return self.c2(torch.relu(self.bn1(self.c1(x))))


def test_conv_bn_relu_conv():
    graph, keep, trimmed = _check(ConvBnReluConv(), (3, 6, 6), expect_groups=1)
    assert trimmed.c1.out_channels == trimmed.bn1.num_features == trimmed.c2.in_channels == 4
    assert graph.post_taps["c1"].module == "bn1" and len(graph.post_taps["c1"].fns) == 1  # functional relu


class ConvFlattenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.act = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        self.flat, self.fc = nn.Flatten(), nn.Linear(8 * 5 * 5, 5)

    def forward(self, x):
        return self.fc(self.flat(self.act(self.bn(self.conv(x)))))


def test_conv_flatten_linear():
    graph, keep, trimmed = _check(ConvFlattenLinear(), (3, 5, 5), expect_groups=1)
    assert trimmed.fc.in_features == 4 * 25


def test_flatten_feature_order():
    # channel c owns the classifier's input features c*25 .. c*25+24
    model = _randomize(ConvFlattenLinear())
    graph = build_graph(model, (3, 5, 5))
    (g,) = graph.prunable()
    keep = {g.id: torch.tensor([1, 6])}
    trimmed = remove_channels(model, graph, keep)
    expected = torch.cat([model.fc.weight[:, 25:50], model.fc.weight[:, 150:175]], 1)
    assert torch.equal(trimmed.fc.weight, expected)
    assert torch.equal(trimmed.conv.weight, model.conv.weight[[1, 6]])


class LinearLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.bn, self.fc2, self.fc3 = nn.Linear(12, 16), nn.BatchNorm1d(16), nn.Linear(16, 10), \
            nn.Linear(10, 4)

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(F.relu(self.bn(self.fc1(x))))))


def test_linear_linear():
    graph, keep, trimmed = _check(LinearLinear(), (12,), expect_groups=2)
    assert (trimmed.fc1.out_features, trimmed.fc2.in_features, trimmed.fc2.out_features,
            trimmed.fc3.in_features, trimmed.fc3.out_features) == (8, 8, 5, 5, 4)


class Depthwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn1 = nn.Conv2d(3, 8, 1, bias=False), nn.BatchNorm2d(8)
        self.dw, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.pw(torch.relu(self.bn2(self.dw(torch.relu(self.bn1(self.c1(x)))))))


def test_depthwise():
    graph, keep, trimmed = _check(Depthwise(), (3, 5, 5), expect_groups=1)
    assert graph.uses["dw"].kind == "depthwise"
    assert trimmed.dw.groups == trimmed.dw.in_channels == trimmed.dw.out_channels == 4
    assert trimmed.pw.in_channels == 4


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1)  # a second residual block, on the same channels
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        a = F.relu(self.bn1(self.c1(x)))
        b = F.relu(a + self.bn2(self.c2(a)))
        return self.head(b + self.c3(b))


def test_residual_add_shares_one_keep_set():
    graph, keep, trimmed = _check(Residual(), (3, 6, 6))
    groups = graph.prunable()
    shared = next(g for g in groups if "c1" in g.producers)
    assert sorted(shared.producers) == ["c1", "c2", "c3"]
    assert len(groups) == 1
    assert trimmed.c1.out_channels == trimmed.c2.out_channels == trimmed.c3.out_channels == trimmed.head.in_channels


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.bna = nn.Conv2d(3, 5, 3, padding=1, bias=False), nn.BatchNorm2d(5)
        self.b = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(9)
        self.conv = nn.Conv2d(9, 3, 3)
        self.fc = nn.Linear(9 * 4 * 4, 3)

    def forward(self, x):
        c = torch.cat([F.relu(self.bna(self.a(x))), F.relu(self.b(x))], dim=1)
        d = F.relu(self.bn(c))
        return self.conv(c), self.fc(torch.flatten(d, 1))


def test_concat_offsets():
    graph, keep, trimmed = _check(Concat(), (3, 4, 4), expect_groups=2)
    assert trimmed.bn.num_features == trimmed.conv.in_channels == 2 + 2
    assert trimmed.fc.in_features == 4 * 16


class ViewFlatten(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(2, 6, 3), nn.Linear(6 * 2 * 2, 3)

    def forward(self, x):
        y = F.relu(self.conv(x))
        return self.fc(y.view(y.size(0), -1))


def test_view_as_flatten():
    _check(ViewFlatten(), (2, 4, 4), expect_groups=1)


class ChannelMean(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3)

    def forward(self, x):
        return self.conv(x).mean(1)


class ParamAdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.offset = nn.Conv2d(2, 6, 3), nn.Parameter(torch.zeros(1, 6, 1, 1))

    def forward(self, x):
        return self.conv(x) + self.offset


@pytest.mark.parametrize("model,node", [(ChannelMean(), "mean"), (ParamAdd(), "add")])
def test_unsupported_pattern_names_the_node(model, node):
    with pytest.raises(FlowError, match=f"node '{node}'"):
        build_graph(model, (2, 4, 4))


def test_grouped_conv_is_kept_whole():
    model = nn.Sequential(nn.Conv2d(4, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=2), nn.ReLU(), nn.Conv2d(8, 2, 1))
    graph = build_graph(model, (4, 5, 5))
    assert graph.prunable() == []
    assert all("grouped conv 2" in (g.frozen or "") for g in graph.groups if g.producers and g.producers[0] != "4")


class SharedActivation(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3, self.act = nn.Conv2d(2, 6, 3), nn.Conv2d(6, 6, 1), nn.Conv2d(6, 2, 1), nn.ReLU()

    def forward(self, x):
        return self.c3(self.act(self.c2(self.act(self.c1(x)))))


def test_shared_activation_module_is_fine():
    _check(SharedActivation(), (2, 5, 5), expect_groups=2)


class SharedConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(2, 6, 3), nn.Conv2d(6, 6, 1)

    def forward(self, x):
        return self.c2(torch.relu(self.c2(self.c1(x))))


def test_shared_weight_layer_is_an_error():
    with pytest.raises(FlowError, match="module 'c2' is called more than once"):
        build_graph(SharedConv(), (2, 5, 5))
