"""trimflow.finn.synth: config checks and FINN step selection (run here), the missing-Vivado error, and the full
Vivado synthesis (marker `vivado`, skipped without Vivado)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trimflow import FlowError
from trimflow.boards import load_board
from trimflow.finn import synth
from tests.helpers import fake_design
from trimflow.finn.adapter import finn_builder, vivado_available
from trimflow.finn.synth import SynthConfig, make_package, missing_tools, plan_synthesis

RTL = ["FMPadding_rtl", "ConvolutionInputGenerator_rtl", "MVAU_rtl", "Thresholding_rtl", "MVAU_rtl"]


def test_config_rejects_inconsistent_products():
    with pytest.raises(FlowError, match="fifo_sizing must be one of"):
        SynthConfig(fifo_sizing="fast")
    with pytest.raises(FlowError, match="FIFO-depth file .*absent.json does not exist"):
        SynthConfig(fifo_sizing="absent.json")
    with pytest.raises(FlowError, match="needs bitfile: true"):
        SynthConfig(bitfile=False)  # driver defaults to true
    with pytest.raises(FlowError, match="run on the stitched IP"):
        SynthConfig(stitched_ip=False)
    with pytest.raises(FlowError, match="true or false"):
        SynthConfig(ooc_synth="yes")
    SynthConfig(stitched_ip=False, rtlsim_performance=False, bitfile=False, driver=False)


def test_default_plan_for_pynq_z2_runs_finns_steps_in_finns_order():
    plan = plan_synthesis(SynthConfig(), load_board("pynq-z2"), RTL)
    assert plan.steps == ("step_hw_codegen", "step_hw_ipgen", "step_set_fifo_depths", "step_create_stitched_ip",
                          "step_measure_rtlsim_performance", "step_prepare_synthesis", "step_synthesize_bitfile",
                          "step_make_driver", "step_deployment_package")
    assert set(plan.outputs) == {"estimate_reports", "stitched_ip", "rtlsim_performance", "bitfile", "pynq_driver",
                                 "deployment_package"}
    assert not plan.needs_hls and plan.notes == ()
    fb = finn_builder()
    # every step and output product exists in the installed finn-plus ...
    for step in plan.steps:
        assert callable(getattr(fb.steps, step)), step
    for out in plan.outputs:
        fb.DataflowOutputType(out)
    # ... and the steps FINN's default flow also runs come in FINN's order
    default = fb.config.default_build_dataflow_steps
    shared = [s for s in plan.steps if s in default]
    assert shared == sorted(shared, key=default.index) and len(shared) >= 6


def test_plan_follows_the_config_and_the_board(tmp_path):
    depths = tmp_path / "fifo_depths.json"
    depths.write_text("{}")
    rtl_only = plan_synthesis(SynthConfig(ooc_synth=True, fifo_sizing=str(depths)), load_board("pynq-z2"), RTL)
    assert "step_out_of_context_synthesis" in rtl_only.steps and "out_of_context_synth" in rtl_only.outputs
    assert rtl_only.fifo_sizing == str(depths)
    assert rtl_only.steps.index("step_out_of_context_synthesis") < rtl_only.steps.index("step_synthesize_bitfile")

    ip = plan_synthesis(SynthConfig(), load_board("zybo-z7-10"), RTL)  # shell_flow ip_only
    assert "step_synthesize_bitfile" not in ip.steps and "step_make_driver" not in ip.steps
    assert "bitfile" not in ip.outputs and "deployment_package" not in ip.outputs
    assert "step_create_stitched_ip" in ip.steps and "ip_only" in ip.notes[0]

    assert ip.fifo_sizing == "simulation"  # auto with nothing sized: FINN's own sizing

    no_perf = plan_synthesis(SynthConfig(rtlsim_performance=False, package=False), load_board("pynq-z2"), RTL)
    assert "step_measure_rtlsim_performance" not in no_perf.steps
    assert "step_deployment_package" not in no_perf.steps and "step_make_driver" in no_perf.steps

    assert plan_synthesis(SynthConfig(), load_board("pynq-z2"), [*RTL, "MVAU_hls"]).needs_hls


def test_missing_tools_names_each_gap(tmp_path):
    found = {"vivado": "/x/vivado", "vitis_hls": "/x/vitis_hls"}.get
    none = lambda _name: None  # noqa: E731
    env = {"XILINX_VIVADO": str(tmp_path), "XILINX_HLS": str(tmp_path)}
    assert missing_tools(True, env, found) == []
    gaps = missing_tools(True, {}, none)
    assert len(gaps) == 3
    assert "XILINX_VIVADO is not set" in gaps[0] and "`vivado` is not on PATH" in gaps[1]
    assert "_hls layers" in gaps[2]
    assert missing_tools(False, {}, none)[-1] == "`vivado` is not on PATH"  # no HLS tools needed for all-RTL
    assert "is not a directory" in missing_tools(False, {"XILINX_VIVADO": str(tmp_path / "no")}, found)[0]


def _fake_compile_dir(root: Path, board: str = "pynq-z2") -> Path:
    root.mkdir(parents=True)
    (root / "compile.json").write_text(json.dumps({"board": board, "node_types": RTL}))
    fake_design(RTL, board).save(root)
    (root / "hw_model.onnx").write_bytes(b"")
    return root


@pytest.mark.skipif(vivado_available(), reason="Vivado is installed here; the missing-Vivado error cannot occur")
def test_synthesize_without_vivado_says_what_is_missing(tmp_path):
    compile_dir = _fake_compile_dir(tmp_path / "compile")
    with pytest.raises(FlowError, match="synthesis needs Vivado.*make synth BOARD") as err:
        synth.synthesize(compile_dir, load_board("pynq-z2"), SynthConfig(), tmp_path / "synth")
    assert "not set" in str(err.value) or "not on PATH" in str(err.value)
    assert not (tmp_path / "synth").exists()
    assert synth.synthesis_enabled() is False


def test_synthesize_and_package_need_a_compile_output_for_the_same_board(tmp_path):
    with pytest.raises(FlowError, match="run `trimflow compile --board pynq-z2` first"):
        synth.synthesize(tmp_path / "nothing", load_board("pynq-z2"), SynthConfig(), tmp_path / "out")
    with pytest.raises(FlowError, match="holds no compile stage output"):
        make_package(tmp_path / "nothing", load_board("pynq-z2"), tmp_path / "deploy")
    compile_dir = _fake_compile_dir(tmp_path / "compile", board="zcu104")
    with pytest.raises(FlowError, match="compiled for board zcu104, not pynq-z2"):
        make_package(compile_dir, load_board("pynq-z2"), tmp_path / "deploy")
    assert not (tmp_path / "deploy").exists()


def test_frame_shape_inverts_the_host_layout_transpose():
    assert synth._frame_shape([1, 28, 28, 1], [{"op": "Transpose", "perm": [0, 2, 3, 1]}]) == (1, 28, 28)
    assert synth._frame_shape([1, 3, 32, 32], []) == (3, 32, 32)
    assert synth._frame_shape([1, 32, 32, 3], [{"op": "Transpose", "perm": [0, 2, 3, 1]}]) == (3, 32, 32)
    with pytest.raises(FlowError, match="only a layout transpose"):
        synth._frame_shape([1, 10], [{"op": "Reshape", "shape": [1, 10]}])


def test_steps_before_vivado_run_on_a_compiled_model_in_their_own_folder(tmp_path_factory, tmp_path):
    """The part of the plan that needs no Vivado (codegen, IP gen of RTL layers, FIFO insertion) on a real model:
    checks the builder wiring, and that the compile stage's cached output is left untouched."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    from trimflow.artifacts import file_digest
    from test_runtime import tiny_model

    compile_dir = tiny_model(tmp_path_factory)["compile"]
    before = {p: file_digest(p) for p in compile_dir.rglob("*") if p.is_file()}
    full = plan_synthesis(SynthConfig(fifo_sizing="minimal"), load_board("pynq-z2"), RTL)
    plan = synth.SynthPlan(full.steps[:3], ("estimate_reports",), "minimal", False)
    finn_out = synth._run_finn(compile_dir, load_board("pynq-z2"), plan, tmp_path / "synth")
    model = ModelWrapper(str(finn_out / "intermediate_models" / "step_set_fifo_depths.onnx"))
    types = [n.op_type for n in model.graph.node]
    assert types[0] == "StreamingFIFO_rtl" and types.count("MVAU_rtl") == 3
    for node in model.graph.node:
        assert getCustomOp(node).get_nodeattr("code_gen_dir_ipgen").startswith(str(tmp_path / "synth" / "codegen"))
    assert {p: file_digest(p) for p in compile_dir.rglob("*") if p.is_file()} == before


@pytest.mark.vivado
@pytest.mark.slow
@pytest.mark.skipif(not vivado_available(), reason="needs Vivado (XILINX_VIVADO set and vivado on PATH); "
                    "run it in the synthesis container: make synth")
def test_full_synthesis_gives_a_runnable_deployment_package(tmp_path):
    import sys

    from test_runtime import RUNTIME_DIR, compiled_tiny_model

    model = compiled_tiny_model(tmp_path / "model")
    board = load_board("pynq-z2")
    res = synth.synthesize(model["compile"], board, SynthConfig(fifo_sizing="minimal"), tmp_path / "synth")
    deploy = tmp_path / "synth" / res.deploy_dir
    manifest = json.loads((deploy / "manifest.json").read_text())
    for key in ("bitfile", "hwh", "driver_settings"):
        assert (deploy / manifest["files"][key]).is_file(), key
    settings = json.loads((deploy / "driver" / "settings.json").read_text())["driver_information"]
    assert settings["platform"] == "zynq-iodma"
    assert "rtlsim_performance" in res.reports  # FINN measured the stitched IP in XSim
    sys.path.insert(0, str(RUNTIME_DIR))
    import trimflow_runtime as rt

    assert rt.load_package(deploy, board="pynq-z2").backends()[0] == "pynq"


def test_auto_fifo_sizing_takes_the_simulate_stages_depths(tmp_path):
    # the simulate stage's Verilator-sized depths when its version of the design has them (and names FINN's FIFO
    # config beside it); FINN's XSim sizing otherwise; a user's choice is never overridden
    from trimflow.finn.design import SIMULATED
    from trimflow.finn.synth import resolve_fifo_sizing
    sim = tmp_path / "simulate"
    sim.mkdir()
    assert resolve_fifo_sizing(SynthConfig(), sim).fifo_sizing == "simulation"
    (sim / "fifo_depths.json").write_text("{}")
    assert resolve_fifo_sizing(SynthConfig(), sim).fifo_sizing == "simulation"  # no sized design: not ours
    fake_design().save(sim)
    assert resolve_fifo_sizing(SynthConfig(), sim).fifo_sizing == "simulation"  # the assumed depths only
    fake_design(fifo_depths=SIMULATED, finn_fifo_config="fifo_depths.json").save(sim)
    assert resolve_fifo_sizing(SynthConfig(), sim).fifo_sizing == str(sim / "fifo_depths.json")
    assert resolve_fifo_sizing(SynthConfig(fifo_sizing="minimal"), sim).fifo_sizing == "minimal"
    assert resolve_fifo_sizing(SynthConfig(), None).fifo_sizing == "simulation"
