"""Verilator simulation of FINN-generated RTL (trimflow.sim): bit-exact against FINN's python execution, cycle counts
against FINN's estimates, and the errors a user can hit."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import onnx
import onnx.helper as oh
import pytest

from tests.helpers import SIM_PART as PART
from tests.helpers import rtl_hw_model as _hw_model
from trimflow import FlowError
from trimflow.finn.execute import execute_hw_model
from trimflow.sim import SimConfig, build_simulator, diagnose_stall
from trimflow.sim.fixes import patch_add_multi
from trimflow.sim.packing import pack_beats, unpack_beats
from trimflow.sim.stitch import check_rtl_only



# ------------------------------------------------------------------------------------------------ fast unit tests


def test_pack_beats_matches_finn_packing():
    from qonnx.core.datatype import DataType
    from finn.util.data_packing import npy_to_rtlsim_input

    rng = np.random.default_rng(0)
    for dt, elems in (("UINT8", 1), ("UINT4", 3), ("INT4", 8), ("INT15", 5), ("UINT2", 40)):
        d = DataType[dt]
        vals = rng.integers(d.min(), d.max() + 1, size=(7, elems))
        width = -(-elems * d.bitwidth() // 8) * 8
        words = -(-width // 32)
        ours = pack_beats(vals, d.bitwidth(), words)
        finn = npy_to_rtlsim_input(vals.astype(np.float32), d, width)
        as_int = [sum(int(w) << (32 * i) for i, w in enumerate(beat)) for beat in ours]
        assert as_int == [int(x) for x in finn], dt
        assert np.array_equal(unpack_beats(ours, elems, d.bitwidth(), d.signed()), vals), dt


def test_add_multi_patch_moves_function_out_of_generate():
    from finn.util.settings import get_settings  # noqa: F401  (import check only)
    import finn

    src = open(os.path.join(os.path.dirname(finn.__file__), "finn-rtllib/mvu/add_multi.sv")).read()
    patched = patch_add_multi(src)
    assert patched.count("function leaf_load_t init_leaf_loads()") == 1
    # declared before the first generate block, still used inside it
    assert patched.index("function leaf_load_t init_leaf_loads()") < patched.index("if(L < 1) begin : genTrivial")
    assert "LEAF_LOAD = init_leaf_loads();" in patched
    with pytest.raises(FlowError, match="add_multi"):
        patch_add_multi(patched.replace("typedef int unsigned  leaf_load_t", "typedef int leaf_load_t"))


def _graph_with(op_type: str, domain: str):
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 4, 2])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2, 2, 2])
    node = oh.make_node(op_type, ["x"], ["y"], name=f"{op_type}_0", domain=domain)
    from qonnx.core.modelwrapper import ModelWrapper

    return ModelWrapper(oh.make_model(oh.make_graph([node], "g", [x], [y])))


def test_hls_only_layer_is_rejected_with_alternative():
    with pytest.raises(FlowError, match=r"Pool_hls_0.*stride-2 convolution"):
        check_rtl_only(_graph_with("Pool_hls", "finn.custom_op.fpgadataflow.hls"))
    with pytest.raises(FlowError, match=r"MVAU_0.*SpecializeLayers"):
        check_rtl_only(_graph_with("MVAU", "finn.custom_op.fpgadataflow"))
    with pytest.raises(FlowError, match=r"MaxPool_0"):
        check_rtl_only(_graph_with("MaxPool", ""))
    with pytest.raises(FlowError, match=r"Requant_rtl_0 \(Requant_rtl\) is not supported"):
        check_rtl_only(_graph_with("Requant_rtl", "finn.custom_op.fpgadataflow.rtl"))


def test_mvau_rtl_folding_rule():
    from trimflow.finn.rules import mvau_rtl_folding_issue

    msg = mvau_rtl_folding_issue("MVAU_rtl_0", "MVAU_rtl", 9, 9)
    assert msg and "MVAU_rtl_0" in msg and "MW=9" in msg and "SIMD=3" in msg and "8 cycles" in msg
    assert "SIMD=4" in mvau_rtl_folding_issue("MVAU_rtl_1", "MVAU_rtl", 8, 8)
    assert "no valid SIMD" in mvau_rtl_folding_issue("MVAU_rtl_2", "MVAU_rtl", 1, 1)
    for mw, simd in ((9, 3), (9, 1), (18, 9), (1568, 784)):
        assert mvau_rtl_folding_issue("MVAU_rtl_0", "MVAU_rtl", mw, simd) is None
    assert mvau_rtl_folding_issue("MVAU_hls_0", "MVAU_hls", 9, 9) is None


def test_missing_or_old_verilator(tmp_path):
    with pytest.raises(FlowError, match="Verilator not found"):
        build_simulator(tmp_path / "hw.onnx", tmp_path / "sim", SimConfig(verilator=str(tmp_path / "nope")))
    old = tmp_path / "verilator"
    old.write_text("#!/bin/sh\necho 'Verilator 5.006 2023-01-22 rev (Debian 5.006-3)'\n")
    old.chmod(old.stat().st_mode | stat.S_IEXEC)
    with pytest.raises(FlowError, match=r"5\.006.*needs >= 5\.020"):
        build_simulator(tmp_path / "hw.onnx", tmp_path / "sim", SimConfig(verilator=str(old)))


def test_sim_config_validation():
    with pytest.raises(FlowError, match="fifo_depth"):
        SimConfig(fifo_depth=1)
    with pytest.raises(FlowError, match="stall_cycles"):
        SimConfig(stall_cycles=0)


def test_diagnose_stall_names_the_layer():
    stages = ["FMPadding_rtl_0", "fifo_1", "MVAU_rtl_0", "Thresholding_rtl_0"]
    expected = [784, 900, 900, 196, 196]
    # MVAU_rtl_0 is offered data it does not take, and nothing downstream of it is blocked
    msg = diagnose_stall(stages, [784, 900, 700, 150, 150], expected, [0, 0, 1, 0, 0], [1, 1, 0, 1, 1])
    assert msg.startswith("layer MVAU_rtl_0 stopped accepting input (700/900")
    # back-pressure propagates upstream: the stage at the head of the blocked run is named
    msg = diagnose_stall(stages, [784, 800, 700, 150, 150], expected, [1, 1, 1, 0, 0], [0, 0, 0, 1, 1])
    assert msg.startswith("layer MVAU_rtl_0")
    # nothing offered anywhere: the first layer that produced too little
    msg = diagnose_stall(stages, [784, 900, 900, 150, 150], expected, [0] * 5, [1] * 5)
    assert msg.startswith("layer MVAU_rtl_0 produced 150/196")


# ------------------------------------------------------------------------------------------ end-to-end (Verilator)


@pytest.fixture(scope="module")
def hw_build(tmp_path_factory):
    """The HW model as our compile stage leaves it: no width converters, no FIFOs, no generated code."""
    from trimflow.finn.adapter import finn_session

    tmp = tmp_path_factory.mktemp("rtlsim")
    with finn_session(tmp / "finn"):
        return tmp, _hw_model(tmp, finn_fifos=False)


@pytest.mark.rtlsim
def test_simulation_bit_exact_and_cycles(hw_build, test_images):
    from trimflow.finn.adapter import finn_session

    tmp, hw_path = hw_build
    sim = build_simulator(hw_path, tmp / "sim", SimConfig())
    manifest = json.loads((tmp / "sim" / "manifest.json").read_text())
    # width converters were added where SIMD changes, our FIFO (default depth) between every two blocks
    stages = manifest["stages"]
    assert sum(s.startswith("StreamingDataWidthConverter") for s in stages) == 4
    assert all(s.startswith("fifo_") for s in stages[1::2]) and len(stages) == 2 * 13 - 1

    res = sim.run(test_images)  # NCHW uint8, as trimflow.data gives them
    with finn_session(tmp / "finn"):
        ref = execute_hw_model(hw_path, test_images.transpose(0, 2, 3, 1))
    assert res.outputs.shape == (6, 10)
    assert np.array_equal(res.outputs, ref.reshape(res.outputs.shape))
    assert len(np.unique(res.outputs)) > 20  # a real computation, not zeros

    # slowest layer is the first SWG (28x28 pixels, SIMD=1): measured II within 20 % of FINN's estimate
    assert res.est_ii == max(res.layer_est_cycles.values())
    assert 0.8 < res.ii_ratio < 1.2 and not res.ii_flagged
    assert res.ii * 5 <= res.total_cycles <= res.ii * 6 + res.latency
    assert res.latency < res.est_latency  # layers overlap: latency is far below the sum of per-layer cycles

    # a second build with the same inputs is reused, not recompiled
    mtime = (tmp / "sim" / "sim").stat().st_mtime
    assert build_simulator(hw_path, tmp / "sim", SimConfig()).manifest["key"] == manifest["key"]
    assert (tmp / "sim" / "sim").stat().st_mtime == mtime


def test_xsim_mode_without_vivado_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr("trimflow.finn.adapter.vivado_available", lambda: False)
    path = tmp_path / "pad.onnx"
    _graph_with("FMPadding_rtl", "finn.custom_op.fpgadataflow.rtl").save(str(path))
    with pytest.raises(FlowError, match="XSim simulation needs Vivado"):
        execute_hw_model(path, np.zeros((1, 4, 4, 2)), mode="xsim", fpga_part=PART)
    with pytest.raises(FlowError, match="mode must be one of"):
        execute_hw_model(path, np.zeros((1, 4, 4, 2)), mode="verilator")


@pytest.mark.rtlsim
@pytest.mark.vivado
@pytest.mark.skipif(not __import__("trimflow.finn.adapter").finn.adapter.vivado_available(),
                    reason="needs Vivado (XILINX_VIVADO set, vivado on PATH) for FINN's XSim")
def test_verilator_equals_finn_xsim(hw_build, test_images):
    from trimflow.finn.adapter import finn_session

    tmp, hw_path = hw_build
    sim = build_simulator(hw_path, tmp / "sim", SimConfig())
    res = sim.run(test_images[:3])
    with finn_session(tmp / "xsim"):
        ref = execute_hw_model(hw_path, test_images[:3].transpose(0, 2, 3, 1), mode="xsim", fpga_part=PART)
    assert np.array_equal(res.outputs, ref.reshape(res.outputs.shape))


@pytest.mark.rtlsim
def test_watchdog_names_starved_layer(hw_build, test_images):
    tmp, hw_path = hw_build
    sim = build_simulator(hw_path, tmp / "sim", SimConfig())
    cfg = SimConfig(stall_cycles=2000)
    from trimflow.sim import Simulator

    sim = Simulator(tmp / "sim", cfg)
    # drop the last 100 pixels of the second image: the pipeline starves before its last output
    beats = sim.manifest["in_beats"] * 2 - 100
    with pytest.raises(FlowError, match=r"deadlocked.*layer \S+ produced \d+/\d+ output beats"):
        sim.run_beats(test_images[:2], beats)
    with pytest.raises(FlowError, match=r"max_cycles=1000"):
        Simulator(tmp / "sim", SimConfig(max_cycles=1000)).run(test_images[:1])
    with pytest.raises(FlowError, match=r"integers of type UINT8"):
        sim.run(test_images.astype(np.float32) / 255)


@pytest.mark.rtlsim
@pytest.mark.slow
def test_finn_sized_fifos_bit_exact(tmp_path, test_images):
    """A model that already has FINN's width converters and StreamingFIFO nodes: those depths are used as-is."""
    from trimflow.finn.adapter import finn_session

    with finn_session(tmp_path / "finn"):
        hw_path = _hw_model(tmp_path, finn_fifos=True)
    sim = build_simulator(hw_path, tmp_path / "sim", SimConfig(fifo_depth=0))
    stages = sim.manifest["stages"]
    assert sum(s.startswith("StreamingFIFO_rtl") for s in stages) >= 10 and not any(s.startswith("fifo_")
                                                                                    for s in stages)
    res = sim.run(test_images[:3])
    with finn_session(tmp_path / "finn"):
        ref = execute_hw_model(hw_path, test_images[:3].transpose(0, 2, 3, 1))
    assert np.array_equal(res.outputs, ref.reshape(res.outputs.shape))
    assert 0.8 < res.ii_ratio < 1.2


# The pipeline's default design had its first MVAU (8-bit pixels x 8-bit weights, one input channel: MW=9) folded
# to PE=4, SIMD=9, and FINN's RTL overflowed its output queue under back-pressure (see
# trimflow.finn.rules.mvau_rtl_folding_issue). The same layer here, with a much slower second MVAU behind it so that it
# is back-pressured for long stretches: with SIMD=9 and the check bypassed, this net stops with "Overflowing output
# queue" in MVAU_rtl_0 (checked by hand); with SIMD=3 (MW/SIMD = 3) it must be bit-exact.
FOLDING_8BIT_FIRST = {0: (4, 3), 1: (2, 4), 2: (2, 8)}


@pytest.mark.rtlsim
def test_8bit_first_layer_under_backpressure(tmp_path, test_images):
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp
    from trimflow.finn.adapter import finn_session

    with finn_session(tmp_path / "finn"):
        hw_path = _hw_model(tmp_path, finn_fifos=False, folding=FOLDING_8BIT_FIRST, name="hw8",
                            first_weight_bits=8, first_channels=8)
        hw = ModelWrapper(str(hw_path))
    first = getCustomOp(hw.get_nodes_by_op_type("MVAU_rtl")[0])
    assert (first.get_nodeattr("MW"), first.get_nodeattr("MH")) == (9, 8)
    assert first.get_input_datatype(0).bitwidth() == 8 and first.get_input_datatype(1).bitwidth() == 8

    # SIMD == MW (the optimiser's original choice) is refused before anything is generated or compiled
    first.set_nodeattr("SIMD", 9)
    hw.save(str(tmp_path / "hw8_sf1.onnx"))
    with pytest.raises(FlowError, match=r"MVAU_rtl_0 \(MVAU_rtl\) has SIMD=9 equal to .* MW=9.*SIMD=3"):
        build_simulator(tmp_path / "hw8_sf1.onnx", tmp_path / "sim_sf1", SimConfig())
    assert not (tmp_path / "sim_sf1").exists()

    sim = build_simulator(hw_path, tmp_path / "sim", SimConfig(optimize=False))  # -O0: builds faster
    images = test_images[:3]
    res = sim.run(images)
    with finn_session(tmp_path / "finn"):
        ref = execute_hw_model(hw_path, images.transpose(0, 2, 3, 1))
    assert np.array_equal(res.outputs, ref.reshape(res.outputs.shape))
    assert len(np.unique(res.outputs)) > 10
    # the second MVAU is the bottleneck, so the first one's output really was held back, and for long stretches
    assert max(res.layer_est_cycles, key=res.layer_est_cycles.get) == "MVAU_rtl_1"
    held = [v for k, v in res.link_backpressure.items() if k.startswith("MVAU_rtl_0 ->")]
    assert held and held[0] > res.total_cycles // 4


def test_report_headline_latency_is_the_simulated_one():
    """The report's latency: the first image as simulated, FINN's sum of per-layer cycles beside it."""
    from trimflow.boards import load_board
    from trimflow.report.build_report import _latency

    from types import SimpleNamespace

    board = load_board("pynq-z2")  # 10 ns
    # the report reads typed summaries (trimflow.stages.results): only the fields _latency uses
    comp = SimpleNamespace(latency_us=657.9)
    assert _latency(comp, SimpleNamespace(latency_cycles=9128), board) == (
        "**91.3 µs** simulated (first image; FINN's estimate 657.9 µs)")
    assert _latency(comp, None, board).startswith("657.9 µs")  # no simulation (skipped, or not in the report)
