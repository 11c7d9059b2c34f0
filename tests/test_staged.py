"""The staged forward pass (trimflow.staged) that reconstruction and the sensitivity probes resume."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trimflow import FlowError
from trimflow.graph import build_graph
from trimflow.staged import StagedForward
from trimflow.trim import remove_channels


class _Residual(nn.Module):
    """conv-bn, a residual block, a concatenation, GAP + FC; activations in place, one of them (LeakyReLU) not
    idempotent, on a value computed before the block: the patterns a stage boundary cuts through."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.leaky = nn.LeakyReLU(0.1, inplace=True)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(16, 12, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x = self.stem(x)
        y = self.relu(x + self.b(self.relu(self.a(x))))
        s = self.leaky(x)  # writes into the stem's output, which the prefix before `a` holds
        return self.fc(torch.flatten(self.pool(self.head(torch.cat([y, s], 1))), 1))


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = _Residual().eval()
    with torch.no_grad():
        net.stem[1].running_mean.uniform_(-0.2, 0.2)
    return net


def _batches(n=3):
    gen = torch.Generator().manual_seed(1)
    return [torch.rand(4, 1, 10, 10, generator=gen) for _ in range(n)]


def _input_by_hook(net: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    box = []
    handle = net.get_submodule(name).register_forward_pre_hook(lambda m, a: box.append(a[0].clone()) if not box
                                                                else None)
    with torch.no_grad():
        net(x)
    handle.remove()
    return box[0]


def test_inputs_follow_weights_changed_between_stages():
    # Reconstruction changes a layer's weights after reading its input: the next layer's input must come from the
    # new weights, exactly as a fresh forward pass of the changed net gives it
    net, batches = _net(), _batches()
    staged = StagedForward(net, batches)
    for got, x in zip(staged.input_of("a"), batches):
        assert torch.equal(got, _input_by_hook(net, "a", x))
    with torch.no_grad():
        net.a.weight.mul_(-1.5)
        net.b.bias.add_(0.3)
    for name in ("b", "head", "fc"):
        for got, x in zip(staged.input_of(name), batches):
            assert torch.equal(got, _input_by_hook(net, name, x)), name
    with torch.no_grad():
        want = [net(x) for x in batches]
    assert all(torch.equal(g, w) for g, w in zip(staged.outputs(), want))


def test_out_of_order_request_starts_again_from_the_images():
    net, batches = _net(), _batches()
    staged = StagedForward(net, batches)
    list(staged.input_of("head"))  # lazy: consumed to advance the pass
    with torch.no_grad():
        net.stem[0].weight.mul_(2)  # a layer before the one asked for next: must be run again
    for got, x in zip(staged.input_of("b"), batches):
        assert torch.equal(got, _input_by_hook(net, "b", x))


def test_probe_resumed_from_the_untrimmed_prefix_equals_its_own_pass():
    # A probe trims the group that a and its consumers see; up to a it computes what the untrimmed net does. The
    # in-place LeakyReLU must not write into the shared prefix: the second probe would start from its values
    net, batches = _net(), _batches()
    graph = build_graph(net, (1, 10, 10))
    group = next(g for g in graph.prunable() if g.producers == ["a"])
    prefix = StagedForward(net, batches).prefix_before(group.producers)
    for k in (5, 2):
        probe = remove_channels(net, graph, {group.id: torch.arange(k)}).eval()
        with torch.no_grad():
            want = [probe(x) for x in batches]
        got = StagedForward(probe, prefix=prefix).outputs()
        assert all(torch.equal(g, w) for g, w in zip(got, want)), k


def test_bad_requests_are_one_clear_error():
    net, batches = _net(), _batches()
    with pytest.raises(FlowError, match="layer nothing is not reached"):
        StagedForward(net, batches).input_of("nothing")

    class Other(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(1, 8, 3)
            self.a = nn.Conv2d(8, 8, 3)

        def forward(self, x):
            return self.a(self.stem(x).tanh())
    prefix = StagedForward(net, batches).prefix_before(["a"])
    with pytest.raises(FlowError, match="resumed on another graph"):
        StagedForward(Other(), prefix=prefix)


@pytest.mark.parametrize("memory_mb", [0.0, 0.03])
def test_memory_bound_drops_batches_and_gives_the_same_values(memory_mb):
    # 0: no batch kept between requests; 0.03 MB: at b's input (two 4 x 8 x 10 x 10 maps live, 25.6 kB a batch) the
    # first batch fits, the others are dropped and run again from the images. Either way every value is the
    # unbounded pass's.
    net, batches = _net(), _batches(4)
    staged = StagedForward(net, batches, memory_mb=memory_mb)
    for name in ("a", "b", "head", "fc"):
        for got, x in zip(staged.input_of(name), batches):
            assert torch.equal(got, _input_by_hook(net, name, x)), name
        if name == "a":
            with torch.no_grad():
                net.a.weight.mul_(-1.5)  # changed between stages, as the refit does: recomputed batches see it too
        if name == "b":
            assert sum(1 for env in staged._envs if env) == (0 if memory_mb == 0 else 1)
    # the three requests after the first run every dropped batch from the images
    assert staged.recomputed == 12 if memory_mb == 0 else 0 < staged.recomputed < 12
    with torch.no_grad():
        want = [net(x) for x in batches]
    assert all(torch.equal(g, w) for g, w in zip(staged.outputs(), want))
    # a prefix of a bounded pass: the probe runs the batches it dropped from the images, with the same result
    graph = build_graph(net, (1, 10, 10))
    group = next(g for g in graph.prunable() if g.producers == ["a"])
    prefix = StagedForward(net, batches, memory_mb=memory_mb).prefix_before(group.producers)
    dropped = prefix.positions.count(0)
    assert dropped == 4 if memory_mb == 0 else 0 < dropped < 4
    probe = remove_channels(net, graph, {group.id: torch.arange(3)}).eval()
    with torch.no_grad():
        want = [probe(x) for x in batches]
    resumed = StagedForward(probe, prefix=prefix)
    assert all(torch.equal(g, w) for g, w in zip(resumed.outputs(), want))
    assert resumed.recomputed == dropped
