"""FINN compile of a tiny Brevitas CNN: estimates, all-RTL layers, generated code, fit check, verification."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import tiny_net
from trimflow import FlowError
from trimflow.artifacts import read_json
from trimflow.boards import BoardFitError, board_from_dict, load_board

torch = pytest.importorskip("torch")

EXPECTED_TYPES = ["Thresholding_rtl", "FMPadding_rtl", "ConvolutionInputGenerator_rtl", "MVAU_rtl"] * 2 + [
    "Thresholding_rtl",
    "MVAU_rtl",
]


@pytest.fixture(scope="module")
def odd_hw_model(tmp_path_factory):
    """HW model of the tiny net with 6 and 12 channels: their divisors allow foldings whose neighbouring stream
    widths have non-integer ratios (with 8 and 16 channels every ratio is a power of two)."""
    from brevitas.export import export_qonnx

    from trimflow.finn.compile import CompileConfig, compile_model

    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("odd")
    export_qonnx(tiny_net(6, 12), torch.rand(1, 1, 28, 28), export_path=str(d / "odd.onnx"))
    cfg = CompileConfig(folding_fps=1000, verify=False, generate_code=False)
    compile_model(d / "odd.onnx", load_board("kv260"), cfg, d / "finn")
    return d / "finn" / "hw_model.onnx"


@pytest.fixture(scope="module")
def compiled(qonnx_path, tmp_path_factory):
    from trimflow.finn.compile import CompileConfig, compile_model

    out = tmp_path_factory.mktemp("compile") / "finn"
    result = compile_model(qonnx_path, load_board("pynq-z2"), CompileConfig(folding_fps=50000), out)
    return result, out


def test_all_rtl_layers_and_estimates(compiled):
    result, out = compiled
    assert result.node_types == EXPECTED_TYPES
    assert result.all_rtl and result.hls_nodes == []
    assert result.accel_input.datatype == "UINT8" and result.accel_input.shape == [1, 28, 28, 1]
    assert result.accel_output.datatype.startswith("INT") and result.accel_output.shape == [1, 10]
    # the float scale and bias of the last layer stay on the host
    assert [op.op for op in result.host_tail] == ["Mul", "Add"]
    assert [op.op for op in result.host_head] == ["Transpose"]

    layers = {r["name"]: r for r in result.layers}
    assert len(layers) == len(EXPECTED_TYPES)
    # An MVAU folds (rows × cols) weights onto PE × SIMD: cycles = pixels · (cols / SIMD) · (rows / PE).
    for name, pixels, cols, rows in (("MVAU_rtl_0", 28 * 28, 9 * 1, 8), ("MVAU_rtl_1", 14 * 14, 9 * 8, 16),
                                     ("MVAU_rtl_2", 1, 16 * 14 * 14, 10)):
        r = layers[name]
        assert cols % r["simd"] == 0 and rows % r["pe"] == 0
        assert r["cycles"] == pixels * (cols // r["simd"]) * (rows // r["pe"])
    assert result.max_cycles == max(r["cycles"] for r in result.layers)
    assert layers[result.bottleneck]["cycles"] == result.max_cycles
    assert result.fps == pytest.approx(1e8 / result.max_cycles)  # pynq-z2 clock: 100 MHz
    assert result.fps >= 50000 * 0.95
    for key, col in (("LUT", "lut"), ("BRAM18", "bram18"), ("DSP", "dsp"), ("URAM", "uram")):
        assert result.totals[key] == sum(r[col] for r in result.layers)
    assert result.fits
    fit = {row["resource"]: row for row in result.fit["rows"]}
    assert result.width_converters["count"] >= 1  # FINN's folding leaves some stream widths unequal
    # The fit check counts more than FINN's layer totals (trimflow.finn.estimates): RTL MVAUs' LUTs, FIFOs, DWCs, FF.
    est = result.estimates
    for key in ("LUT", "FF", "BRAM18", "DSP"):
        assert fit[key]["dataflow"] == pytest.approx(
            est["layers"][key] + est["fifos"][key] + est["width_converters"][key])
    assert est["layers"]["LUT"] > result.totals["LUT"]  # FINN's MVAU_rtl model reports 0 LUT
    assert est["width_converters"]["LUT"] == result.width_converters["LUT"]
    assert est["fifos"]["count"] >= len(EXPECTED_TYPES) + 1 and est["fifos"]["LUT"] > 0
    assert est["layers"]["FF"] > 0 and fit["FF"]["dataflow"] is not None
    assert any("MVAU_rtl" in n for n in est["notes"]) and any("shell" in n for n in est["notes"])
    assert fit["LUT"]["estimate"] == fit["LUT"]["dataflow"] + load_board("pynq-z2").shell_overhead["LUT"]

    saved = read_json(out / "compile.json")
    assert saved["fps"] == result.fps and saved["node_types"] == EXPECTED_TYPES
    assert saved["fit"]["rows"][0]["resource"] == "LUT"

    from trimflow.finn.reports import format_compile_summary, parse_estimates

    summary = format_compile_summary(saved)
    assert "MVAU_rtl_2" in summary and f"{result.fps:,.0f} fps" in summary and "\nfits" in summary
    est = parse_estimates(out / "finn" / "report", out / "hw_model.onnx")
    assert [r.name for r in est.layers] == [r["name"] for r in result.layers]
    assert est.finn_fps == pytest.approx(result.fps)  # FINN's own estimate at the same clock


def test_generated_code_is_relocated(compiled):
    result, out = compiled
    import onnx

    hw = onnx.load(str(out / "hw_model.onnx"))
    for node in hw.graph.node:
        attrs = {a.name: a.s.decode() for a in node.attribute if a.type == onnx.AttributeProto.STRING}
        codegen = Path(attrs["code_gen_dir_ipgen"])
        assert codegen.parent == (out / "codegen").resolve()  # not the temporary build dir
        assert any(p.suffix in (".v", ".sv") for p in codegen.iterdir()), node.name
    leftovers = [p for p in out.rglob("*") if p.is_file() and b".tmp/" in p.read_bytes()]
    assert leftovers == []


def test_moved_compile_dir_is_relocated(compiled, tmp_path):
    import shutil

    import onnx

    from trimflow.finn.design import relocate_compile_dir

    _, out = compiled
    moved = tmp_path / "elsewhere" / "finn"
    shutil.copytree(out, moved)
    assert relocate_compile_dir(moved) == moved.resolve()
    assert read_json(moved / "compile.json")["built_in"] == str(moved.resolve())
    old = str(out.resolve()).encode()
    assert [p for p in moved.rglob("*") if p.is_file() and old in p.read_bytes()] == []
    hw = onnx.load(str(moved / "hw_model.onnx"))
    mvau = next(n for n in hw.graph.node if n.op_type == "MVAU_rtl")
    codegen = Path(next(a.s.decode() for a in mvau.attribute if a.name == "code_gen_dir_ipgen"))
    assert codegen.parent == (moved / "codegen").resolve()
    wrapper = next(codegen.glob("*_memstream_wrapper.v")).read_text()
    assert str(codegen / "memblock.dat") in wrapper  # the weight init file FINN references by absolute path
    assert relocate_compile_dir(moved) == moved.resolve()  # nothing moved: a no-op


def test_finn_python_execution_equals_qonnx(compiled, qonnx_path):
    result, out = compiled
    v = result.verification
    assert v is not None and v.n_images == 16
    assert v.ok and v.streamlined_mismatches == 0 and v.hw_mismatches == 0 and v.argmax_agreement == 1.0

    # Independently: the HW-layer model (from the relocated out_dir) yields integers; with the host tail they give
    # the QONNX output.
    from finn.core.onnx_exec import execute_onnx as finn_exec
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx as qonnx_exec
    from qonnx.transformation.infer_shapes import InferShapes

    from trimflow.data import load_dataset, subset
    from trimflow.finn.adapter import finn_session
    from trimflow.finn.design import apply_host_ops

    images = subset(load_dataset("fashion-mnist", "test"), 4, seed=3).images.numpy()
    parent = ModelWrapper(str(out / "dataflow_parent.onnx"))
    ref_model = ModelWrapper(str(qonnx_path)).transform(InferShapes())
    with finn_session(out / "codegen"):
        for img in images:
            raw = img[None].astype(np.float32)
            acc = finn_exec(parent, {parent.graph.input[0].name: raw})[parent.graph.output[0].name]
            assert np.array_equal(acc, np.round(acc))
            ref = qonnx_exec(ref_model, {ref_model.graph.input[0].name: raw / np.float32(255)})
            ref = ref[ref_model.graph.output[0].name]
            got = apply_host_ops(result.host_tail, acc)
            np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4 * np.abs(ref).max())


def test_board_too_small_raises_fit_error_with_table(qonnx_path, tmp_path):
    from trimflow.finn.compile import CompileConfig, compile_model

    data = dataclasses.asdict(load_board("zybo-z7-10"))
    data.pop("source")
    data["name"] = "tiny-board"
    data["capacity"] = {**data["capacity"], "DSP": 40}  # cap 32 DSPs; the net needs ~50 at 50k fps
    board = board_from_dict(data, "tiny-board.yaml")
    cfg = CompileConfig(folding_fps=50000, verify=False, generate_code=False)
    with pytest.raises(BoardFitError) as info:
        compile_model(qonnx_path, board, cfg, tmp_path / "out")
    msg = str(info.value)
    assert "tiny-board" in msg and "over: DSP" in msg and "OVER" in msg and "MVAU_rtl_" in msg
    saved = json.loads((tmp_path / "out" / "compile.json").read_text())
    assert saved["fits"] is False
    dsp = [r for r in saved["fit"]["rows"] if r["resource"] == "DSP"][0]
    assert dsp["cap"] == 32 and dsp["estimate"] > 32 and dsp["ok"] is False
    assert info.value.result.totals["DSP"] == dsp["dataflow"]


def test_finn_prints_become_trimflow_log_records(qonnx_path, tmp_path, capsys):
    # FINN's builder prints its steps and temporary paths, time-stamped, to stdout, which -q does not silence: they
    # must reach trimflow's logger instead (steps at INFO, the rest at DEBUG) and stdout must be ours again after
    import logging
    import sys

    from trimflow.finn.compile import CompileConfig, compile_model

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    logger = logging.getLogger("trimflow")
    logger.addHandler(handler)
    saved_level, stdout = logger.level, sys.stdout
    logger.setLevel(logging.DEBUG)
    try:
        compile_model(qonnx_path, load_board("pynq-z2"), CompileConfig(folding_fps=1000, verify=False,
                                                                        generate_code=False), tmp_path / "out")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved_level)
    printed = capsys.readouterr()
    assert "Running step" not in printed.out + printed.err and "Build log is at" not in printed.out + printed.err
    assert sys.stdout is stdout
    info = [r.getMessage() for r in records if r.levelno == logging.INFO]
    debug = [r.getMessage() for r in records if r.levelno == logging.DEBUG]
    assert any(m.startswith("FINN step_streamline [") and m.endswith("]") for m in info), info
    assert any(m.startswith("FINN: Build log is at ") for m in debug), debug
    assert not any(m.startswith("FINN: [20") for m in debug)  # FINN's time stamps are dropped


def test_finn_failure_is_flow_error_naming_step_and_node(qonnx_path, tmp_path):
    from trimflow.finn.compile import CompileConfig, compile_model

    folding = tmp_path / "fold.json"
    folding.write_text(json.dumps({"Defaults": {}, "MVAU_rtl_0": {"PE": 3, "SIMD": 9}}))  # 8 rows, PE 3
    cfg = CompileConfig(folding=str(folding), verify=False)
    with pytest.raises(FlowError, match=r"failed in step step_\w+: .*MVAU_rtl_0.*PE") as info:
        compile_model(qonnx_path, load_board("pynq-z2"), cfg, tmp_path / "out")
    assert "FINN log:" in str(info.value)
    log = Path(str(info.value).split("FINN log: ")[1].strip())
    assert log.is_file() and not (tmp_path / "out").exists()


def test_config_validation(tmp_path):
    from trimflow.finn.compile import CompileConfig

    with pytest.raises(FlowError, match="folding_fps"):
        CompileConfig(folding_fps=-1)
    with pytest.raises(FlowError, match="does not exist"):
        CompileConfig(folding=str(tmp_path / "nope.json"))
    with pytest.raises(FlowError, match="prefer"):
        CompileConfig(prefer="vhdl")


def test_folding_optimizer_fits_and_agrees_with_finn(qonnx_path, tmp_path):
    from trimflow.finn.compile import CompileConfig, compile_model

    data = dataclasses.asdict(load_board("zybo-z7-10"))
    data.pop("source")
    data["capacity"] = {**data["capacity"], "DSP": 40}  # cap 32 DSPs: FINN's 50k-fps folding needs ~50
    board = board_from_dict(data, "tight.yaml")
    cfg = CompileConfig(folding="optimize", verify=False, generate_code=False)
    result = compile_model(qonnx_path, board, cfg, tmp_path / "out")
    plan = result.folding_plan
    assert result.fits and result.totals["DSP"] <= 32
    # the optimiser's cycles are FINN's own per-layer estimates, so they must match FINN's report exactly; its
    # estimate of the whole folded design (FIFOs, DWCs, RTL-MVAU LUTs, FF) is what the fit check counts
    assert plan["max_cycles"] == result.max_cycles and plan["totals"]["DSP"] == result.totals["DSP"]
    assert plan["design_totals"] == result.estimates["totals"]
    assert plan["design_totals"]["LUT"] > plan["totals"]["LUT"] > result.totals["LUT"]
    assert "resources" in plan["limited_by"]
    folding = json.loads((tmp_path / "out" / "folding.json").read_text())
    layers = {r["name"]: r for r in result.layers}
    for name, attrs in folding.items():
        if name == "Defaults":
            continue
        for attr in ("PE", "SIMD"):
            if attr in attrs:
                assert layers[name][attr.lower()] == attrs[attr]
    assert not (tmp_path / "out" / "folding_search").exists()

    # a simulator-friendly plan: every MVAU keeps SIMD = 1
    sim = compile_model(qonnx_path, board, dataclasses.replace(cfg, max_simd={"MVAU": 1}), tmp_path / "sim")
    assert all(r["simd"] == 1 for r in sim.layers if r["op_type"].startswith("MVAU"))
    assert sim.fps <= result.fps


def test_compile_of_flow_export_uint8_model(tmp_path):
    """The pipeline's own quantize → export path (UINT8 input with Mul 1/255) compiles to all-RTL and verifies."""
    from trimflow.data import load_dataset, subset
    from trimflow.export import export_qonnx
    from trimflow.finn.compile import CompileConfig, compile_model
    from trimflow.models.cnv import CNVLike
    from trimflow.quantize import QuantConfig, calibrate_activations, convert_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    q = convert_model(CNVLike(widths=(4, 8), strides=(1, 2)), QuantConfig())
    calibrate_activations(q, subset(load_dataset("fashion-mnist", "train"), 64, seed=0), 1, 64)
    path = export_qonnx(q, (1, 28, 28), tmp_path / "m.onnx")
    test = subset(load_dataset("fashion-mnist", "test"), 8, seed=2)
    cfg = CompileConfig(folding="optimize", generate_code=False)
    result = compile_model(path, load_board("zybo-z7-10"), cfg, tmp_path / "out", verify_images=test)
    assert result.all_rtl and result.fits and result.accel_input.datatype == "UINT8"
    assert result.node_types.count("MVAU_rtl") == 3
    assert result.verification.n_images == 8 and result.verification.ok


@pytest.mark.parametrize("board_name", ["pynq-z2", "zybo-z7-10", "kv260"])
@pytest.mark.parametrize("lut_share", [0.4, 0.7, 1.0])
def test_folding_plan_keeps_integer_stream_width_ratios(odd_hw_model, board_name, lut_share):
    # a width converter between neighbours whose widths have a non-integer ratio runs below full rate (measured
    # 1.5x the estimated II on the default net): the optimiser must leave none
    from qonnx.core.modelwrapper import ModelWrapper

    from trimflow.finn.folding import apply_folding, optimize_folding, unaligned_links

    data = dataclasses.asdict(load_board(board_name))
    data.pop("source")
    data["capacity"] = {**data["capacity"], "LUT": int(data["capacity"]["LUT"] * lut_share)}
    board = board_from_dict(data, "scaled.yaml")
    model = ModelWrapper(str(odd_hw_model))
    plan = optimize_folding(model, board)
    assert "generic width converters" not in plan.limited_by
    assert unaligned_links(apply_folding(model, plan)) == []


def test_alignment_covers_the_second_operand_of_a_join():
    # a join's shortcut operand (input 1) arrives through its own width converter: the search must align it too
    import onnx
    import onnx.helper as oh
    from qonnx.core.modelwrapper import ModelWrapper

    from trimflow.finn.folding import _align_stream_widths

    vi = [oh.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1, 12]) for n in ("x", "y")]
    nodes = [oh.make_node("Relu", ["x"], ["a"], name="fork"), oh.make_node("Relu", ["a"], ["b"], name="branch"),
             oh.make_node("Add", ["b", "a"], ["y"], name="join")]
    model = ModelWrapper(oh.make_model(oh.make_graph(nodes, "g", vi[:1], vi[1:])))
    res = {"LUT": 1.0, "FF": 1.0, "BRAM18": 0.0, "URAM": 0.0, "DSP": 0.0}
    fixed = {"fork": (10, res), "branch": (10, res)}
    options = {"join": [({"PE": 2}, 10, res), ({"PE": 3}, 10, {**res, "LUT": 5.0})]}
    widths = {("fork", ()): ({0: 12}, 12), ("branch", ()): ({0: 12}, 12),
              ("join", (("PE", 2),)): ({0: 12, 1: 8}, 8),  # input 1: 12 -> 8 bits, a generic converter
              ("join", (("PE", 3),)): ({0: 12, 1: 12}, 12)}
    caps = {"LUT": 100, "FF": 100, "BRAM18": 10, "URAM": 0, "DSP": 10}
    choice = {"join": 0}
    assert _align_stream_widths(model, options, fixed, choice, widths, caps) == []
    assert choice == {"join": 1}  # the dearer option, the only one aligned on both inputs


@pytest.mark.slow  # three FINN compiles and ~15 whole-design estimates: about half a minute on an idle machine
def test_finn_baseline_enumerates_every_folding(qonnx_path, tmp_path):
    """Every frame budget SetFolding can get yields one of the enumerated foldings; the fastest fitting one is
    reproduced by FINN's builder at its target_fps, and the next faster folding does not fit."""
    from qonnx.core.modelwrapper import ModelWrapper

    from trimflow.finn.adapter import finn_session
    from trimflow.finn.baseline import _folding_of, _set_folding, finn_baseline
    from trimflow.finn.compile import CompileConfig, compile_model

    data = dataclasses.asdict(load_board("zybo-z7-10"))
    data.pop("source")
    data["capacity"] = {**data["capacity"], "DSP": 40}  # as in the optimiser test: DSPs bind
    board = board_from_dict(data, "tight.yaml")
    cfg = CompileConfig(verify=False, generate_code=False, fail_if_not_fit=False)
    compile_model(qonnx_path, board, cfg, tmp_path / "full")
    hw = tmp_path / "full" / "hw_model.onnx"
    base = finn_baseline(hw, board, tmp_path / "scratch")
    fl = base.foldings
    assert len(fl) >= 5 and all(a.max_cycles > b.max_cycles for a, b in zip(fl, fl[1:]))
    seen = [f.folding for f in fl]
    with finn_session(tmp_path / "codegen"):
        model = ModelWrapper(str(hw))
        for budget in np.unique(np.geomspace(fl[-1].max_cycles, fl[0].max_cycles, 25).astype(int)):
            assert _folding_of(_set_folding(model, int(budget), 36)[0]) in seen
    best = base.best
    assert best is not None and best.fits and best is not fl[-1]
    i = fl.index(best)
    assert fl[i + 1].fits is False  # evaluated, over the caps
    assert base.best_finn is not None and base.best_finn.fps >= best.fps  # FINN's own yardstick is laxer
    res = compile_model(qonnx_path, board, dataclasses.replace(cfg, folding_fps=best.target_fps), tmp_path / "t")
    assert res.max_cycles == best.max_cycles and res.fits
