"""Max pooling in the Verilator simulation: our RTL for FINN's HLS-only Pool layer (hw/rtl/max_pool.sv, wired in by
trimflow.sim.stitch) against FINN's python model, the folding that ties a pool to its window generator
(trimflow.finn.folding), its LUT estimate (trimflow.finn.estimates), and the pools the simulator refuses."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx.helper as oh
import pytest
import torch
from torch import nn

from trimflow import FlowError

HLS = "finn.custom_op.fpgadataflow.hls"


def _pool_graph(channels: int, pe: int, dtype: str, k: int = 2, stride: int = 2, dim: int = 6,
                fxn: str = "MaxPool", simd: int | None = None, depthwise: int = 1, with_swg: bool = True):
    """input (NHWC 1 x dim x dim x C) -> ConvolutionInputGenerator_rtl (depthwise) -> Pool_hls -> output."""
    from qonnx.core.datatype import DataType
    from qonnx.core.modelwrapper import ModelWrapper

    odim = (dim - k) // stride + 1
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, dim, dim, channels])
    w = oh.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [1, odim, odim, k * k * channels])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, odim, odim, channels])
    pool_in = "w" if with_swg else "x"
    pool = oh.make_node("Pool_hls", [pool_in], ["y"], name="Pool_hls_0", domain=HLS, backend="fpgadataflow",
                        Channels=channels, PE=pe, KernelSize=[k, k], Function=fxn, OutImgDims=[odim, odim],
                        InputDataType=dtype, OutputDataType=dtype)
    nodes = [pool]
    if with_swg:
        swg = oh.make_node("ConvolutionInputGenerator_rtl", ["x"], ["w"], name="ConvolutionInputGenerator_rtl_0",
                           domain="finn.custom_op.fpgadataflow.rtl", backend="fpgadataflow", ConvKernelDim=[k, k],
                           IFMChannels=channels, IFMDim=[dim, dim], OFMDim=[odim, odim], SIMD=simd or pe,
                           Stride=[stride, stride], Dilation=[1, 1], inputDataType=dtype, outputDataType=dtype,
                           depthwise=depthwise)
        nodes.insert(0, swg)
    graph = oh.make_graph(nodes, "g", [x], [y], value_info=[w] if with_swg else [])
    model = ModelWrapper(oh.make_model(graph))
    for name in ("x", "w", "y"):
        model.set_tensor_datatype(name, DataType[dtype])
    return model


# ------------------------------------------------------------------------------------------------ refusals


def test_max_pool_with_a_matching_window_generator_is_accepted():
    from trimflow.sim.stitch import check_rtl_only

    check_rtl_only(_pool_graph(4, 2, "UINT4"))
    check_rtl_only(_pool_graph(4, 4, "INT4", depthwise=0))  # SIMD = C: both layouts are the same


@pytest.mark.parametrize("fxn", ["AvgPool", "AccPool", "QuantAvgPool"])
def test_other_pooling_functions_are_refused(fxn):
    from trimflow.sim.stitch import check_rtl_only

    with pytest.raises(FlowError, match=rf"layer Pool_hls_0 \(Pool_hls\) cannot be simulated: .*{fxn}.*max pooling"):
        check_rtl_only(_pool_graph(4, 1, "UINT4", fxn=fxn))


def test_pool_changing_the_type_is_refused():
    from trimflow.sim.stitch import check_rtl_only

    model = _pool_graph(4, 1, "UINT4")
    model.graph.node[1].attribute[[a.name for a in model.graph.node[1].attribute].index("OutputDataType")].s = b"UINT5"
    with pytest.raises(FlowError, match=r"Pool_hls_0 .* pools UINT4 to UINT5"):
        check_rtl_only(model)


def test_bipolar_pool_is_refused():
    from trimflow.sim.stitch import check_rtl_only

    with pytest.raises(FlowError, match=r"Pool_hls_0 .* pools BIPOLAR"):
        check_rtl_only(_pool_graph(4, 1, "BIPOLAR"))


def test_pool_folded_unlike_its_window_generator_is_refused():
    from trimflow.sim.stitch import check_rtl_only

    with pytest.raises(FlowError, match=r"ConvolutionInputGenerator_rtl_0 is folded with SIMD=2 and the pool with "
                                        r"PE=1"):
        check_rtl_only(_pool_graph(4, 1, "UINT4", simd=2))
    with pytest.raises(FlowError, match=r"SIMD=2, depthwise=0 and the pool with PE=2"):
        check_rtl_only(_pool_graph(4, 2, "UINT4", depthwise=0))


def test_pool_without_window_generator_is_refused():
    from trimflow.sim.stitch import check_rtl_only

    with pytest.raises(FlowError, match=r"Pool_hls_0 .* reads the graph input"):
        check_rtl_only(_pool_graph(4, 1, "UINT4", with_swg=False))


def test_pool_lut_estimate_is_not_zero():
    from qonnx.custom_op.registry import getCustomOp

    from trimflow.finn.estimates import node_resources

    narrow = node_resources(getCustomOp(_pool_graph(4, 1, "UINT4").graph.node[1]), "xc7z020clg400-1")
    wide = node_resources(getCustomOp(_pool_graph(4, 4, "UINT4").graph.node[1]), "xc7z020clg400-1")
    assert narrow["LUT"] == 40 + 2 * 4 and wide["LUT"] == 40 + 2 * 4 * 4
    assert wide["FF"] > narrow["FF"] > 0


# ------------------------------------------------------------------------------------------------ our RTL vs FINN


@pytest.mark.rtlsim
@pytest.mark.parametrize("channels,pe,dtype,k,stride,dim,fifo_depth", [
    (4, 1, "UINT4", 2, 2, 6, 0),     # the zoo net's first pool, folded fully
    (6, 3, "INT4", 3, 3, 7, 32),     # signed, K = 9, odd PE, 3 x INT4 = 12 bits padded to 16, a row left over
    (4, 4, "INT8", 3, 2, 7, 2),      # overlapping windows, every channel in one beat, a shallow FIFO
])
def test_our_max_pool_rtl_matches_finn_python(tmp_path, channels, pe, dtype, k, stride, dim, fifo_depth):
    from qonnx.core.datatype import DataType

    from trimflow.finn.adapter import finn_session
    from trimflow.finn.execute import execute_hw_model
    from trimflow.sim import SimConfig, build_simulator

    path = tmp_path / "pool.onnx"
    _pool_graph(channels, pe, dtype, k, stride, dim).save(str(path))
    sim = build_simulator(path, tmp_path / "sim", SimConfig(fifo_depth=fifo_depth, optimize=False))
    dt = DataType[dtype]
    x = np.random.default_rng(pe).integers(dt.min(), dt.max() + 1, size=(5, dim, dim, channels))
    x[0] = dt.min()  # a window of minima: the maximum is the most negative value
    x[1, ::2] = dt.max()
    res = sim.run(x)
    with finn_session(tmp_path / "finn"):
        ref = execute_hw_model(path, x)
    odim = (dim - k) // stride + 1
    want = np.stack([x[:, i * stride:i * stride + k, j * stride:j * stride + k].max(axis=(1, 2))
                     for i in range(odim) for j in range(odim)], axis=1).reshape(5, odim, odim, channels)
    assert np.array_equal(ref.reshape(want.shape), want)  # FINN's python model is max pooling
    assert np.array_equal(res.outputs, ref.reshape(res.outputs.shape))
    pool_cycles = odim * odim * k * k * channels // pe  # FINN's estimate: one window beat per cycle
    assert res.layer_est_cycles["Pool_hls_0"] == pool_cycles
    assert res.ii >= pool_cycles and res.ii_ratio < 1.3, res.summary()


# ------------------------------------------------------------------------------------------------ end to end


class _PoolNet(nn.Module):
    """conv3x3(8)-ReLU-MaxPool2 - conv3x3(12)-ReLU-MaxPool3 - Linear, as the zoo net (smaller)."""

    def __init__(self):
        super().__init__()
        self.c1, self.r1, self.p1 = nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        self.c2, self.r2, self.p2 = nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3)
        self.fc = nn.Linear(12 * 4 * 4, 10)

    def forward(self, x):
        x = self.p1(self.r1(self.c1(x)))
        x = self.p2(self.r2(self.c2(x)))
        return self.fc(torch.flatten(x, 1))


@pytest.fixture(scope="module")
def pool_net_qonnx(tmp_path_factory):
    from trimflow.data import load_dataset, subset
    from trimflow.export import export_qonnx
    from trimflow.quantize import QuantConfig, calibrate_activations, convert_model

    torch.manual_seed(0)
    torch.set_num_threads(1)
    train, test = subset(load_dataset("fashion-mnist", "train"), 64, seed=0), subset(
        load_dataset("fashion-mnist", "test"), 8, seed=0)
    quant = convert_model(_PoolNet().eval(), QuantConfig())
    calibrate_activations(quant, train, batches=2, batch_size=32)
    return export_qonnx(quant, (1, 28, 28), tmp_path_factory.mktemp("pool") / "pool.onnx"), test


def test_folding_ties_each_pool_to_its_window_generator(pool_net_qonnx, tmp_path):
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    from trimflow.boards import load_board
    from trimflow.finn.compile import CompileConfig, compile_model
    from trimflow.finn.rules import pool_window_generators

    qonnx_path, test = pool_net_qonnx
    result = compile_model(qonnx_path, load_board("pynq-z2"), CompileConfig(folding="optimize", verify_images=2),
                           tmp_path / "compile", verify_images=test.images)
    assert sorted(result.hls_nodes) == ["Pool_hls_0", "Pool_hls_1"]
    model = ModelWrapper(str(tmp_path / "compile" / "hw_model.onnx"))
    pairs = pool_window_generators(model)
    assert len(pairs) == 2
    for pool, swg in pairs.items():
        p, s = getCustomOp(model.get_node_from_name(pool)), getCustomOp(model.get_node_from_name(swg))
        assert p.get_nodeattr("PE") == s.get_nodeattr("SIMD") and s.get_nodeattr("parallel_window") == 0
        assert s.get_nodeattr("depthwise") == 1
    assert result.estimates["layers"]["LUT"] > 0


def _folding(path, pe0: int, pe1: int):
    # the pools at PE 1 and > 1, each window generator folded like its pool; the rest as fast as FINN's RTL allows
    cfg = {"Defaults": {}, "ConvolutionInputGenerator_rtl_1": {"SIMD": pe0, "parallel_window": 0},
           "Pool_hls_0": {"PE": pe0}, "ConvolutionInputGenerator_rtl_3": {"SIMD": pe1, "parallel_window": 0},
           "Pool_hls_1": {"PE": pe1}, "MVAU_rtl_0": {"PE": 4, "SIMD": 3}, "MVAU_rtl_1": {"PE": 4, "SIMD": 8}}
    path.write_text(json.dumps(cfg))
    return str(path)


@pytest.mark.rtlsim
@pytest.mark.parametrize("pe0,pe1", [(1, 4), (8, 1)])
def test_pool_net_compiles_and_simulates_bit_exact(pool_net_qonnx, tmp_path, pe0, pe1):
    from trimflow.boards import load_board
    from trimflow.stages.simulate import simulate_compiled
    from trimflow.finn.compile import CompileConfig, compile_model
    from trimflow.sim import SimConfig

    qonnx_path, test = pool_net_qonnx
    cfg = CompileConfig(folding=_folding(tmp_path / "folding.json", pe0, pe1), verify_images=4)
    result = compile_model(qonnx_path, load_board("pynq-z2"), cfg, tmp_path / "compile", verify_images=test.images)
    assert result.verification.ok and sorted(result.hls_nodes) == ["Pool_hls_0", "Pool_hls_1"]
    summary = simulate_compiled(tmp_path / "compile",
                                qonnx_path, test, SimConfig(optimize=False), tmp_path / "sim")
    assert summary.bit_exact_vs_finn_python and summary.matches_qonnx
    assert summary.top1_agreement_vs_qonnx == 1.0
    assert 0.8 < summary.ii_ratio < 1.25, summary
    src = (tmp_path / "sim" / "verilator" / "src" / "trimflow_sim_top.sv").read_text()
    assert src.count("trimflow_max_pool #(") == 2 and f".PE({pe1}), .K(9)" in src
