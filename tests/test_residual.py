"""Residual nets through the flow: one shared quantizer per residual add (trimflow.quantize), FINN streamlining across
forks and joins (trimflow.finn.residual), and the Verilator simulation of the fork/join design with our RTL for FINN's
HLS-only DuplicateStreams / ElementwiseAdd (hw/rtl/, trimflow.sim.stitch)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx.helper as oh
import pytest
import torch
from torch import nn

from trimflow import FlowError
from trimflow.models import build_model
from trimflow.quantize import QuantConfig, calibrate_activations, convert_model
from tests.helpers import randomize_bn as _randomize_bn  # non-trivial BN statistics, negative scales included

PART = "xc7z020clg400-1"
# Two blocks: an identity shortcut (stride 1, 4 -> 4 channels) and a projection shortcut (stride 2, 4 -> 8).
SMALL = {"widths": (4, 8), "strides": (1, 2), "stem": 4}


def _small_resnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = build_model("resnet8", **SMALL)
    _randomize_bn(net, seed, negate_every=3)  # thresholds differ per channel
    return net.eval()


@pytest.fixture(scope="module")
def data():
    from trimflow.data import load_dataset, subset

    return subset(load_dataset("fashion-mnist", "train"), 64, seed=0), subset(load_dataset("fashion-mnist", "test"),
                                                                               8, seed=0)


@pytest.fixture(scope="module")
def exported(data, tmp_path_factory):
    """The small residual net, quantized (W4A4, shared residual quantizers), calibrated and exported to QONNX."""
    from trimflow.export import export_qonnx

    torch.set_num_threads(1)
    quant = convert_model(_small_resnet(), QuantConfig())
    calibrate_activations(quant, data[0], batches=2, batch_size=32)
    path = export_qonnx(quant, (1, 28, 28), tmp_path_factory.mktemp("residual") / "resnet.onnx")
    return quant, path


# ------------------------------------------------------------------------------------------------ quantization


def test_each_residual_add_gets_one_shared_signed_quantizer(exported):
    from qonnx.core.modelwrapper import ModelWrapper

    quant, path = exported
    names = [n for n, _ in quant.net.named_children() if n.startswith("residual_quant_")]
    assert names == ["residual_quant_0", "residual_quant_1"]
    model = ModelWrapper(str(path))
    adds = [n for n in model.graph.node if n.op_type == "Add" and all(model.get_initializer(i) is None
                                                                       for i in n.input)]
    assert len(adds) == 2
    for add in adds:
        quants = [model.find_producer(i) for i in add.input]
        assert [q.op_type for q in quants] == ["Quant", "Quant"]
        scale, bits = ([model.get_initializer(q.input[k]) for q in quants] for k in (1, 3))
        assert scale[0] == scale[1] and bits[0] == bits[1] == 4  # one scale: FINN can move it past the Add
        assert {a.name: a.i for a in quants[0].attribute}["signed"] == 1


def test_residual_bits_and_plain_nets():
    from trimflow.models.cnv import CNVLike

    q = convert_model(_small_resnet(), QuantConfig(residual_bits=6))
    assert q.net.residual_quant_0.act_quant.bit_width() == 6
    plain = convert_model(CNVLike(widths=(8, 8), strides=(1, 2)), QuantConfig())
    assert not isinstance(plain.net, torch.fx.GraphModule)  # a net without adds is converted as before
    with pytest.raises(FlowError, match="residual_bits"):
        QuantConfig(residual_bits=1)
    with pytest.raises(FlowError, match="residual add .*bipolar"):
        convert_model(_Unpadded(), QuantConfig(weight_bits=1, act_bits=1, last_layer_weight_bits=1))


class _Unpadded(nn.Module):
    def __init__(self, alpha: float = 1.0):
        super().__init__()
        self.alpha = alpha
        self.c1, self.r1 = nn.Conv2d(1, 4, 3), nn.ReLU()
        self.c2, self.r2 = nn.Conv2d(4, 4, 1), nn.ReLU()
        self.fc = nn.Linear(4 * 26 * 26, 10)

    def forward(self, x):
        y = self.r1(self.c1(x))
        return self.fc(torch.flatten(torch.add(y, self.r2(self.c2(y)), alpha=self.alpha), 1))


def test_scaled_residual_add_is_refused():
    with pytest.raises(FlowError, match="residual add .*alpha"):
        convert_model(_Unpadded(alpha=2.0), QuantConfig())


def test_quant_checkpoint_of_a_residual_net_round_trips(exported, tmp_path):
    from trimflow.quantize import float_shapes, load_quant_checkpoint, save_quant_checkpoint

    quant, _ = exported
    arch = {"name": "resnet8", "kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in SMALL.items()}}
    save_quant_checkpoint(tmp_path / "q.pt", quant, arch, float_shapes(_small_resnet()), QuantConfig())
    loaded = load_quant_checkpoint(tmp_path / "q.pt")
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(loaded(x), quant(x), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ streamlining


def _finn_streamlined(path):
    from test_streamline_patterns import qonnx_to_finn_streamlined

    from qonnx.core.modelwrapper import ModelWrapper

    return qonnx_to_finn_streamlined(ModelWrapper(str(path)))


def test_residual_joins_streamline_to_integer_adds(exported, data):
    from qonnx.core.onnx_exec import execute_onnx

    from trimflow.export import check_streamlined, run_qonnx
    from trimflow.finn.residual import joins, streamline_residual

    streamlined = _finn_streamlined(exported[1])
    assert any("residual join" in item for item in check_streamlined(streamlined))  # FINN's chain streamlining
    model = streamline_residual(streamlined)
    assert check_streamlined(model) == []
    assert len(joins(model)) == 2
    for add in joins(model):
        assert all(model.get_tensor_datatype(i).name == "INT4" for i in add.input)
        consumer = model.find_consumer(add.output[0])
        assert consumer.op_type == "MultiThreshold"  # the add's scale went into the next thresholds
    want = run_qonnx(exported[1], data[1], progress=False)
    iname, oname = model.graph.input[0].name, model.graph.output[0].name
    for i in range(len(data[1])):
        got = execute_onnx(model, {iname: data[1].images[i:i + 1].numpy().astype(np.float32)})[oname]
        np.testing.assert_allclose(got, want[i:i + 1], rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_join_without_shared_scale_names_the_add(data, tmp_path, monkeypatch):
    import trimflow.quantize
    from trimflow.export import export_qonnx
    from trimflow.finn.residual import streamline_residual

    # each operand with its own quantizer: two scales, the Add cannot become integer
    def separate(net, gm, cfg):
        for i, node in enumerate(trimflow.quantize._residual_adds(gm.graph)):
            ops = []
            for k, arg in enumerate(node.args[:2]):
                gm.add_submodule(f"q{i}_{k}", trimflow.quantize.QuantIdentity(
                    act_quant=trimflow.quantize.ResidualQuantMSE, bit_width=4))
                with gm.graph.inserting_before(node):
                    ops.append(gm.graph.call_module(f"q{i}_{k}", (arg,)))
            node.args = tuple(ops)
        gm.recompile()
        return gm

    monkeypatch.setattr(trimflow.quantize, "_quantize_residual_joins", separate)
    quant = convert_model(_small_resnet(), QuantConfig())
    calibrate_activations(quant, data[0], batches=1, batch_size=32)
    path = export_qonnx(quant, (1, 28, 28), tmp_path / "separate.onnx")
    with pytest.raises(FlowError, match=r"residual add \S+ does not streamline.*shared quantizer"):
        streamline_residual(_finn_streamlined(path))


def test_chain_is_left_alone(tmp_path, data):
    from trimflow.export import export_qonnx
    from trimflow.finn.residual import has_forks_or_joins, streamline_residual
    from trimflow.models.cnv import CNVLike

    quant = convert_model(CNVLike(widths=(4, 4), strides=(1, 2)), QuantConfig())
    calibrate_activations(quant, data[0], batches=1, batch_size=32)
    model = _finn_streamlined(export_qonnx(quant, (1, 28, 28), tmp_path / "cnv.onnx"))
    assert not has_forks_or_joins(model)
    assert streamline_residual(model) is model


# ------------------------------------------------------------------------------------------------ simulator checks


def _hls_graph(pe: int, channels: int, dtype: str, add_const: bool = False, fan_out: bool = False):
    """input -> DuplicateStreams_hls -> ElementwiseAdd_hls(copy 0, copy 1) -> output (y = 2x), NHWC 1x3x3xC."""
    from qonnx.core.datatype import DataType
    from qonnx.core.modelwrapper import ModelWrapper

    shape = [1, 3, 3, channels]
    out_dt = {"INT3": "INT4", "UINT4": "UINT5", "INT8": "INT9"}[dtype]
    t = [oh.make_tensor_value_info(n, onnx.TensorProto.FLOAT, shape) for n in ("x", "d0", "d1", "y")]
    dup = oh.make_node("DuplicateStreams_hls", ["x"], ["d0", "d1"], name="DuplicateStreams_hls_0",
                       domain="finn.custom_op.fpgadataflow.hls", backend="fpgadataflow", NumChannels=channels,
                       PE=pe, NumOutputStreams=2, inputDataType=dtype, numInputVectors=shape[:-1])
    rhs = "c" if add_const else ("x" if fan_out else "d1")
    add = oh.make_node("ElementwiseAdd_hls", ["d0", rhs], ["y"], name="ElementwiseAdd_hls_0",
                       domain="finn.custom_op.fpgadataflow.hls", backend="fpgadataflow", lhs_dtype=dtype,
                       rhs_dtype=dtype, out_dtype=out_dt, lhs_shape=shape, rhs_shape=shape, out_shape=shape,
                       lhs_style="input", rhs_style="const" if add_const else "input", PE=pe)
    graph = oh.make_graph([dup, add], "g", [t[0]], [t[3]], value_info=t[1:3])
    model = ModelWrapper(oh.make_model(graph))
    if add_const:
        model.set_initializer("c", np.ones(shape, dtype=np.float32))
    for name, dt in (("x", dtype), ("d0", dtype), ("d1", dtype), ("y", out_dt)):
        model.set_tensor_datatype(name, DataType[dt])
    return model


def test_simulator_refuses_what_our_rtl_does_not_model():
    from trimflow.sim.stitch import check_rtl_only

    check_rtl_only(_hls_graph(1, 4, "INT3"))
    with pytest.raises(FlowError, match=r"ElementwiseAdd_hls_0 .* one operand is a constant"):
        check_rtl_only(_hls_graph(1, 4, "INT3", add_const=True))
    with pytest.raises(FlowError, match=r"the input fans out .*DuplicateStreams"):
        check_rtl_only(_hls_graph(1, 4, "INT3", fan_out=True))
    narrow = _hls_graph(1, 4, "INT3")
    from qonnx.custom_op.registry import getCustomOp

    getCustomOp(narrow.graph.node[1]).set_nodeattr("out_dtype", "INT3")
    with pytest.raises(FlowError, match="cannot hold every sum"):
        check_rtl_only(narrow)


def test_diagnose_stall_names_a_join_waiting_for_its_other_input():
    from trimflow.sim import diagnose_stall

    stages = ["Dup", "fifo_1", "Thr", "fifo_3", "Add"]
    ends = [["input", "Dup"], ["Dup", "fifo_1"], ["fifo_1", "Thr"], ["Thr", "Add"], ["Dup", "fifo_3"],
            ["fifo_3", "Add"], ["Add", "output"]]
    msg = diagnose_stall(stages, [10, 10, 5, 0, 3, 3, 0], [20] * 7, [1, 0, 0, 0, 1, 1, 0], [0, 1, 1, 1, 0, 0, 1],
                         ends)
    assert msg.startswith("layer Add waits for its input from Thr (0/20 beats arrived) while its input from fifo_3")


@pytest.mark.rtlsim
@pytest.mark.parametrize("pe,channels,dtype,fifo_depth", [(1, 4, "INT3", 0), (3, 6, "INT3", 32),
                                                          (2, 4, "UINT4", 2), (4, 4, "INT8", 32)])
def test_our_duplicate_and_add_rtl_match_finn_python(tmp_path, pe, channels, dtype, fifo_depth):
    """Our RTL of both HLS-only layers against FINN's python model, lanes packed with padding (3 x INT3 = 9 bits in
    a 16-bit stream), signed and unsigned, with and without FIFOs between them."""
    from qonnx.core.datatype import DataType

    from trimflow.finn.adapter import finn_session
    from trimflow.finn.execute import execute_hw_model
    from trimflow.sim import SimConfig, build_simulator

    path = tmp_path / "hls.onnx"
    _hls_graph(pe, channels, dtype).save(str(path))
    sim = build_simulator(path, tmp_path / "sim", SimConfig(fifo_depth=fifo_depth, optimize=False))
    dt = DataType[dtype]
    x = np.random.default_rng(pe).integers(dt.min(), dt.max() + 1, size=(5, 3, 3, channels))
    x[0] = dt.min()  # the extremes: the sum needs the output's extra bit
    x[1] = dt.max()
    res = sim.run(x)
    with finn_session(tmp_path / "finn"):
        ref = execute_hw_model(path, x)
    assert np.array_equal(ref.reshape(res.outputs.shape), 2 * x)  # FINN's python model: y = x + x
    assert np.array_equal(res.outputs, ref.reshape(res.outputs.shape))
    assert res.ii == pytest.approx(9 * channels / pe, abs=2)  # one beat per cycle, as FINN's estimate


# ------------------------------------------------------------------------------------------------ end to end


def _folding(path):
    # Folded so that our RTL runs with PE > 1 next to FINN's layers at other widths (width converters between).
    cfg = {"Defaults": {}, "DuplicateStreams_hls_0": {"PE": 2}, "ElementwiseAdd_hls_0": {"PE": 2},
           "DuplicateStreams_hls_1": {"PE": 4}, "ElementwiseAdd_hls_1": {"PE": 4},
           "MVAU_rtl_0": {"PE": 2, "SIMD": 3}, "MVAU_rtl_1": {"PE": 4, "SIMD": 6}, "Thresholding_rtl_1": {"PE": 2}}
    path.write_text(json.dumps(cfg))
    return str(path)


@pytest.mark.rtlsim
def test_residual_net_compiles_and_simulates_bit_exact(exported, data, tmp_path):
    from trimflow.boards import load_board
    from trimflow.stages.simulate import simulate_compiled
    from trimflow.finn.compile import CompileConfig, compile_model
    from trimflow.sim import SimConfig

    _, qonnx_path = exported
    cfg = CompileConfig(folding=_folding(tmp_path / "folding.json"), verify_images=4)
    result = compile_model(qonnx_path, load_board("pynq-z2"), cfg, tmp_path / "compile",
                           verify_images=data[1].images)
    assert result.verification.ok and result.verification.argmax_agreement == 1.0
    assert sorted(result.hls_nodes) == ["DuplicateStreams_hls_0", "DuplicateStreams_hls_1", "ElementwiseAdd_hls_0",
                                        "ElementwiseAdd_hls_1"]
    assert result.fits and result.estimates["layers"]["LUT"] > 0
    summary = simulate_compiled(tmp_path / "compile",
                                qonnx_path, data[1], SimConfig(optimize=False), tmp_path / "sim")
    assert summary.bit_exact_vs_finn_python and summary.matches_qonnx
    assert summary.top1_agreement_vs_qonnx == 1.0
    assert 0.8 < summary.ii_ratio < 1.25, summary
    manifest = json.loads((tmp_path / "sim" / "verilator" / "manifest.json").read_text())
    # Every FIFO, the joins' included, is sized by simulation (bit-exact, same II, checked above): the chain's
    # FIFOs need a few entries, the short branch in front of a join many, never more than the simulator built.
    depths = {s for s in manifest["stages"] if s.startswith("fifo_")}
    sized = json.loads((tmp_path / "sim" / "fifo_depths.json").read_text())["fifo_depths"]
    built = {f["depth"] for f in manifest["fifos"]}
    assert len(depths) > 10 and min(sized.values()) <= 3 and 256 <= max(sized.values()) <= min(built)
