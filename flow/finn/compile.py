"""Compile a QONNX model into FINN dataflow layers for a board: estimates, generated RTL, fit check, verification.

The hardware partition is meant to be all-RTL, so that it can be simulated with Verilator and synthesised without
Vitis HLS. Three graph edits (trimflow.finn.graph_edits), run as custom builder steps, get it there:
- the input becomes raw integer pixels (`x / input_divisor` is moved into the first thresholds by streamlining),
  so the accelerator never sees floats;
- the float scale/bias after the last MatMul (the "tail") is cut off after streamlining and recorded, so the host
  applies it instead of an ElementwiseMul_hls/ElementwiseAdd_hls;
- every HW node prefers its RTL implementation when FINN specialises layers.
(Plus one FINN ordering fix: thresholds are clipped to their input range right after streamlining, and, for residual
nets, FINN's fork/join reorderings after its chain streamlining: trimflow.finn.residual. Their forks and adds become
DuplicateStreams / ElementwiseAdd, HLS-only on non-Versal parts, so such a design is not all-RTL.)

Outputs in out_dir: compile.json (CompileResult), design.json (trimflow.finn.design.Design: the hardware with every
FIFO and width converter FINN will insert), hw_model.onnx (specialised HW layers with generated code under
codegen/), dataflow_parent.onnx (host head + partition), finn/ (FINN's log, reports, intermediate models) and, for
folding="optimize", folding.json (and pareto.json with compile.pareto_points). After moving out_dir, call
trimflow.finn.design.relocate_compile_dir(out_dir) before using them. The check against QONNX on real images is
trimflow.finn.verification.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

from trimflow import FlowError
from trimflow.artifacts import atomic_dir, write_json
from trimflow.boards import Board, BoardFitError, FitReport, check_fit
from trimflow.finn.adapter import finn_session
from trimflow.finn.design import (ASSUMED, CODEGEN_DIR, FINN_DIR, FOLDING_ATTRS, FOLDING_FILE, HW_MODEL, PARENT_MODEL,
                                  RESULT_FILE, Design, HostOp, Layer, TensorInfo)
from trimflow.finn.pareto import PARETO_FILE, read_pareto_summary
from trimflow.finn.reports import EstimateReport, parse_estimates
from trimflow.finn.graph_edits import detach_tail, host_head, integer_input, prefer_impl
from trimflow.finn.residual import streamline_residual
from trimflow.finn.rules import StepTracker, rewrite_paths
from trimflow.finn.verification import Verification, verify_streamlined
from trimflow.finn.verification import verify_images as verify_images_of

SEARCH_DIR = "folding_search"  # the fully folded build the optimiser starts from (removed afterwards)


def positive_fps(fps: Any) -> bool:
    """None (no target) or a positive, finite number of frames per second."""
    return fps is None or (isinstance(fps, (int, float)) and not isinstance(fps, bool) and 0 < fps < math.inf)


@dataclasses.dataclass(frozen=True)
class CompileConfig:
    # Not a field: the verification images are the flow's dataset's (compile_model's verify_images / verify_dataset
    # arguments), so the config cannot name a second dataset that the build would not use.
    DECIDED_ELSEWHERE: ClassVar[dict[str, str]] = {
        "verify_dataset": "the top-level `dataset` decides it (the compile stage verifies on its test split)",
    }
    # compile.target_fps used to switch the trim stage to its hardware-aware budget search as well
    RENAMED: ClassVar[dict[str, str]] = {
        "target_fps": ('it was split in two: compile.folding_fps (the fps the folding aims for) and '
                       'hwtrim.target_fps (the fps the trim budget is chosen to reach); --target-fps sets both'),
    }

    # The fps the folding aims for: FINN's heuristic target (folding auto; None → fully folded, PE=SIMD=1), or where
    # the optimiser stops speeding layers up (folding optimize; None → the fastest folding within the caps).
    folding_fps: float | None = None
    # "auto": FINN's heuristic for folding_fps; "optimize": the fastest folding within the board's caps
    # (trimflow.finn.folding); or a path to a FINN folding-config JSON
    folding: str = "auto"
    max_simd: dict[str, int] | None = None  # "optimize" only: SIMD cap per op type, e.g. {"MVAU": 1}
    mvau_wwidth_max: int = 36  # FINN's cap on an MVAU's weight-stream width (SIMD·PE·weight bits)
    prefer: Literal["rtl", "hls"] = "rtl"  # implementation style preferred when FINN specialises layers
    require_rtl: bool = False  # raise if any HW node ends up as _hls
    input_divisor: float = 255.0  # the float model input is raw_pixels / input_divisor
    generate_code: bool = True  # PrepareIP: RTL of _rtl nodes, C++ of _hls nodes (no Vivado needed)
    verify: bool = True  # compare FINN's python execution with QONNX execution on real images
    verify_images: int = 16
    fail_if_not_fit: bool = True  # raise BoardFitError (after writing compile.json) when over the board's caps
    # "optimize" only: optimiser runs sampling the fps-vs-LUT trade-off for pareto.json (trimflow.finn.pareto), a
    # few seconds each; 0 = off
    pareto_points: int = 0

    def __post_init__(self) -> None:
        if not positive_fps(self.folding_fps):
            raise FlowError(f"compile.folding_fps (--target-fps) must be a positive, finite number or null, got "
                            f"{self.folding_fps!r}")
        if self.folding not in ("auto", "optimize"):
            if not str(self.folding).endswith(".json"):
                raise FlowError(
                    f"compile.folding must be 'auto', 'optimize' or a path to a folding JSON, got {self.folding!r}"
                )
            if not Path(self.folding).is_file():
                raise FlowError(f"compile.folding: folding config {self.folding} does not exist")
        if self.max_simd is not None and not (
            isinstance(self.max_simd, dict)
            and all(isinstance(k, str) and isinstance(v, int) and v >= 1 for k, v in self.max_simd.items())
        ):
            raise FlowError(f"compile.max_simd must map op types to positive integers, got {self.max_simd!r}")
        if not (isinstance(self.mvau_wwidth_max, int) and self.mvau_wwidth_max >= 1):
            raise FlowError(f"compile.mvau_wwidth_max must be a positive integer, got {self.mvau_wwidth_max!r}")
        if self.prefer not in ("rtl", "hls"):
            raise FlowError(f"compile.prefer must be 'rtl' or 'hls', got {self.prefer!r}")
        if not (isinstance(self.input_divisor, (int, float)) and self.input_divisor > 0):
            raise FlowError(f"compile.input_divisor must be positive, got {self.input_divisor!r}")
        if not (isinstance(self.verify_images, int) and self.verify_images >= 1):
            raise FlowError(f"compile.verify_images must be a positive integer, got {self.verify_images!r}")
        if isinstance(self.pareto_points, bool) or not (isinstance(self.pareto_points, int)
                                                        and self.pareto_points >= 0):
            raise FlowError(
                f"compile.pareto_points must be a non-negative integer (0 = off), got {self.pareto_points!r}")


@dataclasses.dataclass(frozen=True)
class CompileResult:
    board: str
    part: str
    clock_period_ns: float
    fps: float  # at the board clock: clock / slowest layer's cycles
    latency_us: float  # FINN's critical-path cycles at the board clock
    max_cycles: int
    bottleneck: str
    layers: list[dict[str, Any]]
    totals: dict[str, float]  # the layers of the dataflow partition (FINN's estimate; no FF)
    # Width converters FINN inserts later between layers whose stream widths differ (count + resources); the fit
    # check counts them on top of `totals`.
    width_converters: dict[str, float]
    fit: dict[str, Any]  # FitReport incl. shell overhead
    fits: bool
    node_types: list[str]
    hls_nodes: list[str]  # nodes FINN could only implement in HLS
    all_rtl: bool
    accel_input: TensorInfo
    accel_output: TensorInfo
    host_head: list[HostOp]  # applied to the float model input before the accelerator (layout only)
    host_tail: list[HostOp]  # applied to the accelerator output to get the model's float output
    verification: Verification | None
    folding_plan: dict[str, Any] | None  # the optimiser's plan when folding == "optimize"
    files: dict[str, str]  # relative to out_dir
    built_in: str  # absolute out_dir the FINN paths inside point to; see design.relocate_compile_dir
    config: dict[str, Any]
    wall_s: float
    finn_step_s: dict[str, float]
    # What the fit check counted and how (trimflow.finn.estimates): per-resource totals of the compute layers (FINN's
    # estimate completed with LUT for RTL MVAUs and FF), FIFOs, width converters, and the notes on each model.
    estimates: dict[str, Any] | None = None


# ---------------------------------------------------------------- build


def _named(name: str, fn: Callable) -> Callable:
    fn.__name__ = name
    return fn


def dataflow_config(fb: Any, board: Board, output_dir: Path, steps: list, outputs: list, **extra: Any) -> Any:
    """FINN's DataflowBuildConfig for `board`, with the settings every trimflow build shares."""
    return fb.DataflowBuildConfig(
        output_dir=str(output_dir),
        synth_clk_period_ns=float(board.clock_period_ns),
        board=board.finn_board,
        fpga_part=board.part,
        shell_flow_type=fb.ShellFlowType.VIVADO_ZYNQ,
        steps=steps,
        generate_outputs=outputs,
        # Standalone thresholds are what lets FINN pick MVAU_rtl (it cannot fuse thresholds into RTL MVAUs).
        standalone_thresholds=True,
        save_intermediate_models=True,
        **extra,
    )


def _run_builder(
    qonnx_path: Path, board: Board, cfg: CompileConfig, tmp: Path, kept: Path, tail: list[HostOp], sub: str = ""
) -> Path:
    """Run FINN in `tmp` (or `tmp/sub`); return the path of FINN's output dir. On failure `tmp` is kept as `kept`."""
    from qonnx.core.modelwrapper import ModelWrapper

    finn_out = tmp / sub / FINN_DIR
    with finn_session(tmp / sub / CODEGEN_DIR) as fb:
        from finn.transformation.streamline.round_thresholds import RoundAndClipThresholds

        try:
            model = integer_input(ModelWrapper(str(qonnx_path)), cfg.input_divisor)
        except Exception as e:
            raise FlowError(f"cannot read QONNX model {qonnx_path}: {type(e).__name__}: {e}") from None
        input_model = tmp / sub / "input_model.onnx"
        model.save(str(input_model))

        def detach(model: Any, _cfg: Any) -> Any:
            model, ops = detach_tail(model)
            tail.extend(ops)
            return model

        steps: list[Callable] = []
        for name in fb.estimate_only_dataflow_steps:
            if name == "step_specialize_layers":
                steps.append(_named("step_trimflow_prefer_impl", lambda m, c: prefer_impl(m, cfg.prefer)))
            steps.append(getattr(fb.steps, name))
            if name == "step_streamline":
                # residual nets: fork/join reorderings FINN's chain-oriented streamlining leaves out (no-op on chains)
                steps.append(_named("step_trimflow_streamline_residual", lambda m, c: streamline_residual(m)))
                steps.append(_named("step_trimflow_detach_tail", detach))
                # FINN clips thresholds to the input range only after it has already asserted, for unsigned
                # inputs, that they are non-negative (minimize_bit_width); an input quantizer that is signed
                # while the raw pixels are UINT8 trips that assertion, so clip right after streamlining.
                steps.append(
                    _named("step_trimflow_round_thresholds", lambda m, c: m.transform(RoundAndClipThresholds()))
                )
        if cfg.generate_code:
            steps.append(fb.steps.step_hw_codegen)
        tracker = StepTracker()
        build_cfg = dataflow_config(
            fb, board, finn_out, [tracker.wrap(s) for s in steps], [fb.DataflowOutputType.ESTIMATE_REPORTS],
            target_fps=None if cfg.folding != "auto" or cfg.folding_fps is None else int(cfg.folding_fps),
            folding_config_file=None if cfg.folding == "auto" else str(Path(cfg.folding).resolve()),
            mvau_wwidth_max=cfg.mvau_wwidth_max,
        )
        log_path = finn_out / "build_dataflow.log"
        try:
            rc = fb.build_dataflow_cfg(str(input_model), build_cfg)
        except Exception as e:  # under pytest the builder re-raises instead of returning an exit code
            tracker.failed(e)
            rc = -1
        if rc != 0:
            raise FlowError(
                f"FINN compile for board {board.name} failed in step {tracker.step or '?'}: {tracker.what()}\n"
                f"FINN log: {kept / log_path.relative_to(tmp)}"
            )
    return finn_out


def _failed_dir(out_dir: Path) -> Path:
    """Where a failed build is kept (the error message points at its log)."""
    return out_dir.parent / f"{out_dir.name}.failed"


def _tensor_info(model: Any, name: str, layout: str = "") -> TensorInfo:
    shape = [int(d) for d in model.get_tensor_shape(name)]
    return TensorInfo(name, shape, model.get_tensor_datatype(name).name, layout)


def compile_model(
    qonnx_path: str | os.PathLike,
    board: Board,
    cfg: CompileConfig,
    out_dir: str | os.PathLike,
    verify_images: Any = None,
    verify_dataset: str = "fashion-mnist",
) -> CompileResult:
    """Compile `qonnx_path` for `board` into `out_dir` (written atomically) and return the result.

    `verify_images`: an ImageSet or uint8 images (N, C, H, W) for the verification (the first cfg.verify_images
    are used); default: cfg.verify_images test images of `verify_dataset`.
    Raises BoardFitError (with `.result`) after writing out_dir when the design does not fit.
    """
    from qonnx.core.modelwrapper import ModelWrapper

    qonnx_path, out_dir = Path(qonnx_path), Path(out_dir)
    if not qonnx_path.is_file():
        raise FlowError(f"QONNX model {qonnx_path} does not exist; run the export stage first")
    t0 = time.time()
    failed = _failed_dir(out_dir)
    with atomic_dir(out_dir) as tmp:
        tmp = tmp.resolve()
        tail: list[HostOp] = []
        try:
            plan = None
            if cfg.folding == "optimize":
                plan = _plan_folding(qonnx_path, board, cfg, tmp, failed)
                cfg_run = dataclasses.replace(cfg, folding=str(tmp / FOLDING_FILE))
            else:
                cfg_run = cfg
            finn_out = _run_builder(qonnx_path, board, cfg_run, tmp, failed, tail)
        except FlowError:
            # keep the failed build (log, intermediate models) where the error message points
            shutil.rmtree(failed, ignore_errors=True)
            shutil.move(str(tmp), failed)
            raise
        inter = finn_out / "intermediate_models"
        final_steps = ("step_hw_codegen",) if cfg.generate_code else ()
        final_steps += ("step_generate_estimate_reports",)
        hw_src = next(inter / f"{s}.onnx" for s in final_steps if (inter / f"{s}.onnx").is_file())
        shutil.copyfile(hw_src, tmp / HW_MODEL)
        shutil.copyfile(inter / "dataflow_parent.onnx", tmp / PARENT_MODEL)
        est = parse_estimates(finn_out / "report", tmp / HW_MODEL)
        hw = ModelWrapper(str(tmp / HW_MODEL))
        parent = ModelWrapper(str(tmp / PARENT_MODEL))
        head = host_head(parent)

        verification = None
        if cfg.verify:
            arr = verify_images_of(verify_images, cfg, verify_dataset)
            try:
                verification = verify_streamlined(qonnx_path, finn_out, arr, cfg.input_divisor, tail)
            except Exception as e:
                raise FlowError(
                    f"verification (FINN python execution vs QONNX) of {qonnx_path} crashed: {type(e).__name__}: {e}"
                    "; set compile.verify=false to skip it"
                ) from e
        result, design = _result(board, cfg, est, hw, head, tail, verification, plan, t0, finn_out, out_dir)
        write_json(tmp / RESULT_FILE, result)
        design.save(tmp)
        rewrite_paths(tmp, str(tmp), str(out_dir.resolve()))
    if not result.fits and cfg.fail_if_not_fit:
        err = BoardFitError(_fit_report_from(result))
        err.result = result  # type: ignore[attr-defined]
        raise err
    if cfg.require_rtl and result.hls_nodes:
        raise FlowError(
            f"require_rtl: FINN implemented {', '.join(result.hls_nodes)} in HLS (no RTL variant for this "
            f"configuration); see {out_dir / RESULT_FILE}"
        )
    return result


def _plan_folding(qonnx_path: Path, board: Board, cfg: CompileConfig, tmp: Path, kept: Path) -> Any:
    """Build once fully folded (estimates only) to get FINN's HW layers, plan the folding, write FOLDING_FILE."""
    from trimflow.finn.folding import plan_within_caps
    from trimflow.finn.pareto import pareto_front

    search = dataclasses.replace(cfg, folding="auto", folding_fps=None, generate_code=False)
    finn_out = _run_builder(qonnx_path, board, search, tmp, kept, [], sub=SEARCH_DIR)
    hw_in = finn_out / "intermediate_models" / "step_generate_estimate_reports.onnx"
    with finn_session(tmp / SEARCH_DIR / CODEGEN_DIR):
        plan = plan_within_caps(hw_in, board, tmp / SEARCH_DIR / "estimate-scratch", max_simd=cfg.max_simd,
                                target_fps=cfg.folding_fps)
    plan.write(tmp / FOLDING_FILE)
    if cfg.pareto_points:
        pareto_front(hw_in, board, tmp / SEARCH_DIR / "pareto-scratch", cfg.pareto_points, chosen=plan,
                     max_simd=cfg.max_simd).write(tmp / PARETO_FILE)
    shutil.rmtree(tmp / SEARCH_DIR)  # only the plan is needed; its paths would need relocating otherwise
    return plan


def _fit_report_from(result: CompileResult) -> FitReport:
    from trimflow.boards import ResourceFit

    fit = result.fit
    return FitReport(
        fit["board"],
        tuple(ResourceFit(**r) for r in fit["rows"]),
        tuple((n, res) for n, res in fit["largest_layers"]),
    )


def _result(
    board: Board,
    cfg: CompileConfig,
    est: EstimateReport,
    hw: Any,
    head: list[HostOp],
    tail: list[HostOp],
    verification: Verification | None,
    plan: Any,
    t0: float,
    finn_out: Path,
    out_dir: Path,
) -> tuple[CompileResult, Design]:
    from trimflow.artifacts import read_json, to_jsonable

    from trimflow.finn.estimates import estimate_design

    design = estimate_design(hw, board.part, out_dir.parent / f".{out_dir.name}.estimate-scratch")
    dwc = {k: v for k, v in design.width_converters.items() if k != "FF"}
    fit = check_fit(design.totals, board, layers=design.layers)
    node_types = [n.op_type for n in hw.graph.node]
    hls = [n.name for n in hw.graph.node if n.op_type.endswith("_hls")]
    times_file = finn_out / "report" / "time_per_step.json"
    step_times = read_json(times_file) if times_file.exists() else {}
    result = CompileResult(
        board=board.name,
        part=board.part,
        clock_period_ns=board.clock_period_ns,
        fps=board.fps(est.max_cycles),
        latency_us=board.latency_us(est.critical_path_cycles),
        max_cycles=est.max_cycles,
        bottleneck=est.bottleneck,
        layers=[{**dataclasses.asdict(r)} for r in est.layers],
        totals=est.totals,
        width_converters=dwc,
        fit=to_jsonable(fit),
        fits=fit.ok,
        node_types=node_types,
        hls_nodes=hls,
        all_rtl=not hls,
        accel_input=_tensor_info(hw, hw.graph.input[0].name, "NHWC"),
        accel_output=_tensor_info(hw, hw.graph.output[0].name),
        host_head=head,
        host_tail=tail,
        verification=verification,
        folding_plan=None if plan is None else {
            "file": FOLDING_FILE, "fps": plan.fps, "max_cycles": plan.max_cycles, "totals": plan.totals,
            "limited_by": plan.limited_by, "max_possible_fps": plan.max_possible_fps, "reserve": plan.reserve,
            "design_totals": plan.design_totals, "pareto": read_pareto_summary(finn_out.parent / PARETO_FILE),
        },
        files={
            "hw_model": HW_MODEL,
            "dataflow_parent": PARENT_MODEL,
            "finn_log": f"{FINN_DIR}/build_dataflow.log",
            "finn_reports": f"{FINN_DIR}/report",
            "codegen": CODEGEN_DIR,
        },
        built_in=str(out_dir.resolve()),
        config=to_jsonable(cfg),
        wall_s=time.time() - t0,
        finn_step_s={k: float(v) for k, v in step_times.items()},
        estimates={
            "layers": {r: sum(v[r] for v in design.layers.values()) for r in design.totals},
            "fifos": design.fifos, "width_converters": design.width_converters, "totals": design.totals,
            "shell": dict(board.shell_overhead), "fifo_depth": design.fifo_depth, "notes": design.notes,
        },
    )
    return result, Design(
        board=board.name, part=board.part, clock_period_ns=board.clock_period_ns,
        layers=[_layer(hw, n, design.layers[n.name], est) for n in hw.graph.node],
        width_converters=design.dwc_list, fifos=design.fifo_list, host_head=head, host_tail=tail,
        accel_input=result.accel_input, accel_output=result.accel_output, totals=design.totals,
        fit=result.fit, fits=result.fits, fifo_depths=ASSUMED, notes=design.notes)


def _layer(hw: Any, node: Any, estimate: dict[str, float], est: EstimateReport) -> Layer:
    """The design's record of one HW node: its folding attributes, FINN's cycles and the completed estimate."""
    from qonnx.custom_op.registry import getCustomOp

    inst = getCustomOp(node)
    attrs = inst.get_nodeattr_types()
    cycles = next((r.cycles for r in est.layers if r.name == node.name), None)
    return Layer(node.name, node.op_type, {a: int(inst.get_nodeattr(a)) for a in FOLDING_ATTRS if a in attrs},
                 int(inst.get_exp_cycles()) if cycles is None else int(cycles), dict(estimate))
