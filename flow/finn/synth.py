"""The Vivado half of the flow: from the compile stage's HW-layer model to a bitfile and a deployment package.

`synthesize(compile_dir, board, cfg, out_dir)` continues FINN's builder where trimflow.finn.compile stopped (after
step_hw_codegen): IP generation, FIFO sizing, stitched IP, rtlsim performance, out-of-context synthesis, the Zynq
shell and bitfile, FINN's PYNQ driver settings and deployment folder. It needs Vivado (and Vitis HLS for any `_hls`
layer); without them it raises FlowError naming what is missing. `synthesis_enabled()` is the switch the pipeline
uses: the stage runs only where `trimflow.finn.adapter.vivado_available()`.

`make_package(...)` writes the board-side deployment package (manifest.json, FINN's bitfile/ and driver/, the
runtime from hw/runtime/, and host-emulation models). It needs no Vivado: without a bitfile the package still runs on
the build host through the runtime's finn-python / verilator backends.

    python -m trimflow.finn.synth --board pynq-z2 [--compile-dir build/pynq-z2/compile/finn] [--out build/pynq-z2/synth]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

from trimflow import FlowError
from trimflow.artifacts import atomic_dir, read_json, to_jsonable, write_json
from trimflow.boards import Board, load_board
from trimflow.finn.adapter import finn_session, vivado_available
from trimflow.finn.compile import dataflow_config
from trimflow.finn.design import DESIGN_FILE, HW_MODEL, SIMULATED
from trimflow.finn.design import RESULT_FILE as COMPILE_RESULT
from trimflow.finn.design import load as load_design
from trimflow.finn.rules import StepTracker
from trimflow.resources import HW_DIR

RUNTIME_SRC = HW_DIR / "runtime" / "trimflow_runtime"
MANIFEST_FORMAT = "trimflow-deploy/1"  # read by hw/runtime/trimflow_runtime/package.py
RESULT_FILE = "synth.json"
FINN_DIR = "finn"
CODEGEN_DIR = "codegen"
DEPLOY_DIR = "deploy"
PARTITION_MODEL = "finn/intermediate_models/step_create_dataflow_partition.onnx"
# Node attributes that hold paths of generated code. The compile stage's paths are cleared so FINN regenerates
# everything under this stage's own build dir instead of writing into the compile stage's (cached) artifacts.
_CODEGEN_ATTRS = ("code_gen_dir_ipgen", "ipgen_path", "ip_path", "code_gen_dir_cppsim", "executable_path")
# or the path of a FINN FIFO-depth JSON (a previous run's final_hw_config, or the simulate stage's fifo_depths.json)
FIFO_SIZING = ("auto", "simulation", "minimal")


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """What to build after the compile stage. Later products imply the earlier ones they need."""

    stitched_ip: bool = True
    rtlsim_performance: bool = True  # FINN's XSim run of the stitched IP: measured cycles per frame
    ooc_synth: bool = False  # out-of-context synthesis of the stitched IP: resources and fmax without the shell
    bitfile: bool = True  # the Zynq shell + bitfile (boards with shell_flow vivado_zynq only)
    driver: bool = True  # FINN's PYNQ driver settings (finn-plus-driver reads them on the board)
    package: bool = True  # deploy/: bitfile + driver + manifest + runtime
    # auto: the depths the simulate stage sized in Verilator (simulate/fifo_depths.json) when it sized them, else
    # FINN's XSim-based sizing | simulation (FINN's XSim-based sizing) | minimal | path/to/fifo_depths.json
    fifo_sizing: str = "auto"
    classes: tuple[str, ...] = ()  # class names written into the manifest (printed by the runtime)

    def __post_init__(self) -> None:
        for name in ("stitched_ip", "rtlsim_performance", "ooc_synth", "bitfile", "driver", "package"):
            if not isinstance(getattr(self, name), bool):
                raise FlowError(f"synth.{name} must be true or false, got {getattr(self, name)!r}")
        if self.fifo_sizing not in FIFO_SIZING:
            if not str(self.fifo_sizing).endswith(".json"):
                raise FlowError(f"synth.fifo_sizing must be one of {', '.join(FIFO_SIZING)} or a FIFO-depth JSON "
                                f"file, got {self.fifo_sizing!r}")
            if not Path(self.fifo_sizing).is_file():
                raise FlowError(f"synth.fifo_sizing: FIFO-depth file {self.fifo_sizing} does not exist")
        if not self.stitched_ip and (self.rtlsim_performance or self.ooc_synth):
            raise FlowError("synth: rtlsim_performance and ooc_synth run on the stitched IP; set stitched_ip: true "
                            "or switch them off")
        if self.driver and not self.bitfile:
            raise FlowError("synth.driver: FINN's driver describes the bitfile's DMA engines; it needs bitfile: true")
        if not all(isinstance(c, str) for c in self.classes):
            raise FlowError("synth.classes must be a list of class names")


@dataclasses.dataclass(frozen=True)
class SynthPlan:
    steps: tuple[str, ...]  # FINN builder step names, in order
    outputs: tuple[str, ...]  # FINN DataflowOutputType values
    fifo_sizing: str
    needs_hls: bool  # some layer is _hls: Vitis HLS must turn its C++ into RTL
    notes: tuple[str, ...] = ()  # products skipped and why


def resolve_fifo_sizing(cfg: SynthConfig, simulate_dir: str | os.PathLike | None) -> SynthConfig:
    """fifo_sizing auto → the simulate stage's FIFO-depth file if it wrote one, else FINN's own sizing.

    The simulate stage sizes every FIFO by Verilator simulation of this very design (trimflow.sim.fifo_sizing) and
    checks the sized design bit-exact; using its depths lets Vivado skip FINN's XSim sizing run and builds the FIFOs
    the estimate charged. Without a simulate stage (or with its sizing off) FINN sizes them as it always does.
    """
    if cfg.fifo_sizing != "auto":
        return cfg
    sized = None
    if simulate_dir is not None and (Path(simulate_dir) / DESIGN_FILE).is_file():
        design = load_design(simulate_dir)  # the simulate stage's version of the design: its sized FIFOs
        if design.fifo_depths == SIMULATED and (Path(simulate_dir) / design.finn_fifo_config).is_file():
            sized = Path(simulate_dir) / design.finn_fifo_config
    return dataclasses.replace(cfg, fifo_sizing=str(sized) if sized is not None else "simulation")


def plan_synthesis(cfg: SynthConfig, board: Board, node_types: list[str]) -> SynthPlan:
    """Which FINN steps and output products a synthesis of a design with `node_types` on `board` runs."""
    notes: list[str] = []
    cfg = resolve_fifo_sizing(cfg, None)  # still auto here: nothing was sized for this design
    want_bitfile, want_driver = cfg.bitfile, cfg.driver
    if board.shell_flow != "vivado_zynq" and (want_bitfile or want_driver):
        notes.append(f"board {board.name} has shell_flow {board.shell_flow}: FINN builds no shell or bitfile for "
                     "it; integrate the stitched IP yourself")
        want_bitfile = want_driver = False
    outputs = ["estimate_reports"]
    if cfg.stitched_ip or want_bitfile:
        outputs.append("stitched_ip")
    if cfg.rtlsim_performance:
        outputs.append("rtlsim_performance")
    if cfg.ooc_synth:
        outputs.append("out_of_context_synth")
    if want_bitfile:
        outputs.append("bitfile")
    if want_driver:
        outputs.append("pynq_driver")
    if cfg.package and want_bitfile:
        outputs.append("deployment_package")
    # Code generation is repeated (cheap) so this stage owns all generated files; see _CODEGEN_ATTRS.
    steps = ["step_hw_codegen", "step_hw_ipgen", "step_set_fifo_depths"]
    if "stitched_ip" in outputs:
        steps.append("step_create_stitched_ip")
    if "rtlsim_performance" in outputs:
        steps.append("step_measure_rtlsim_performance")
    if "out_of_context_synth" in outputs:
        steps.append("step_out_of_context_synthesis")
    if want_bitfile:
        steps += ["step_prepare_synthesis", "step_synthesize_bitfile"]
    if want_driver:
        steps.append("step_make_driver")
    if "deployment_package" in outputs:
        steps.append("step_deployment_package")
    needs_hls = any(t.endswith("_hls") for t in node_types)
    return SynthPlan(tuple(steps), tuple(outputs), cfg.fifo_sizing, needs_hls, tuple(notes))


def synthesis_enabled() -> bool:
    """The pipeline's switch: synthesis runs automatically where Vivado is installed."""
    return vivado_available()


def missing_tools(needs_hls: bool, environ: dict[str, str] | None = None,
                  which: Callable[[str], str | None] = shutil.which) -> list[str]:
    """What the synthesis needs and this machine lacks, each as an actionable sentence."""
    env = os.environ if environ is None else environ
    missing = []
    root = env.get("XILINX_VIVADO", "")
    if not root:
        missing.append("XILINX_VIVADO is not set (source <Xilinx>/Vivado/<version>/settings64.sh, or use "
                       "`make synth`, whose container does it)")
    elif not Path(root).is_dir():
        missing.append(f"XILINX_VIVADO={root} is not a directory")
    if which("vivado") is None:
        missing.append("`vivado` is not on PATH")
    if needs_hls and not (env.get("XILINX_HLS") and (which("vitis_hls") or which("vitis-run"))):
        missing.append("Vitis HLS (XILINX_HLS and vitis_hls/vitis-run on PATH): the design has _hls layers; "
                       "alternatively compile with compile.require_rtl / prefer: rtl")
    return missing


def _require_tools(plan: SynthPlan) -> None:
    missing = missing_tools(plan.needs_hls)
    if missing or not vivado_available():
        raise FlowError("synthesis needs Vivado 2022.2–2024.2, which this machine lacks: " + "; ".join(missing or [
            "trimflow.finn.adapter.vivado_available() is false"]) + ". Run it in the synthesis container: "
            "`make docker && make synth BOARD=<board>` (see docker/README.md).")


# ---------------------------------------------------------------- FINN run


def _fresh_hw_model(src: Path, dst: Path) -> None:
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    model = ModelWrapper(str(src))
    for node in model.graph.node:
        inst = getCustomOp(node)
        types = inst.get_nodeattr_types()
        for attr in _CODEGEN_ATTRS:
            if attr in types:
                inst.set_nodeattr(attr, "")
    model.save(str(dst))


def _run_finn(compile_dir: Path, board: Board, plan: SynthPlan, tmp: Path) -> Path:
    finn_out = tmp / FINN_DIR
    tmp.mkdir(parents=True, exist_ok=True)
    start = tmp / "synth_input.onnx"
    _fresh_hw_model(compile_dir / HW_MODEL, start)
    compile_cfg = read_json(compile_dir / COMPILE_RESULT).get("config", {})
    tracker = StepTracker()
    with finn_session(tmp / CODEGEN_DIR) as fb:

        if plan.fifo_sizing == "simulation":
            fifo: dict[str, Any] = dict(auto_fifo_depths=True)
        elif plan.fifo_sizing == "minimal":
            fifo = dict(auto_fifo_depths=True, auto_fifo_strategy=fb.config.AutoFIFOSizingMethod.FORCE_MINIMAL_FIFOS)
        else:
            fifo = dict(auto_fifo_depths=False, fifo_config_file=str(Path(plan.fifo_sizing).resolve()))
        build_cfg = dataflow_config(
            fb, board, finn_out, [tracker.wrap(getattr(fb.steps, s), s) for s in plan.steps],
            [fb.DataflowOutputType(o) for o in plan.outputs],
            mvau_wwidth_max=int(compile_cfg.get("mvau_wwidth_max", 36)),
            **fifo,
        )
        try:
            rc = fb.build_dataflow_cfg(str(start), build_cfg)
        except Exception as e:  # under pytest FINN re-raises instead of returning an exit code
            tracker.failed(e)
            rc = -1
    if rc != 0:
        raise FlowError(f"FINN synthesis for board {board.name} failed in {tracker.step or '?'}: "
                        f"{tracker.what()}\nFINN log: {finn_out / 'build_dataflow.log'}")
    return finn_out


# ---------------------------------------------------------------- deployment package


def _emulation_model(compile_dir: Path, hw_types: list[str], dst: Path) -> None:
    """The model the runtime's finn-python backend executes: the specialised HW model when every layer is RTL
    (FINN runs an _rtl node's Python model in its "cppsim" mode), else the layers before specialisation
    (FINN's Python execution; _hls nodes would need a C++ build)."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    if all(t.endswith("_rtl") for t in hw_types):
        model = ModelWrapper(str(compile_dir / HW_MODEL))
        for node in model.graph.node:
            inst = getCustomOp(node)
            types = inst.get_nodeattr_types()
            if "exec_mode" in types:
                inst.set_nodeattr("exec_mode", "cppsim")
            for attr in _CODEGEN_ATTRS:  # the package must not point into this machine's build folders
                if attr in types:
                    inst.set_nodeattr(attr, "")
    else:
        src = compile_dir / PARTITION_MODEL
        if not src.is_file():
            raise FlowError(f"{src} is missing: the compile stage's FINN output is incomplete; rerun "
                            "`trimflow compile --force compile`")
        model = ModelWrapper(str(src))
    model.save(str(dst))


def make_package(compile_dir: str | os.PathLike, board: Board, out_dir: str | os.PathLike,
                 finn_deploy: str | os.PathLike | None = None, classes: tuple[str, ...] | list[str] = (),
                 preprocess: dict[str, Any] | None = None) -> Path:
    """Write the deployment package `out_dir` (atomically) from the compile stage's output.

    `finn_deploy`: FINN's deploy/ folder (bitfile/ + driver/) from `synthesize`; None → a host-only package that
    the runtime runs through its finn-python or verilator backend. `preprocess`: how training made its images
    (trimflow.data.meta.preprocessing), recorded so that the runtime does the same to a frame.
    """
    compile_dir, out_dir = Path(compile_dir), Path(out_dir)
    result_path = compile_dir / COMPILE_RESULT
    if not result_path.is_file() or not (compile_dir / HW_MODEL).is_file():
        raise FlowError(f"{compile_dir} holds no compile stage output ({COMPILE_RESULT}, {HW_MODEL}); run "
                        f"`trimflow compile --board {board.name}` first")
    res = read_json(result_path)
    design = load_design(compile_dir)  # the host-side ops, the accelerator's ends and its layers
    if design.board != board.name:
        raise FlowError(f"{compile_dir / DESIGN_FILE} was compiled for board {design.board}, not {board.name}; "
                        f"compile for {board.name} first")
    accel_in, accel_out = to_jsonable(design.accel_input), to_jsonable(design.accel_output)
    head = to_jsonable(design.host_head)
    input_shape = _frame_shape(accel_in["shape"], head)
    with atomic_dir(out_dir) as tmp:
        files: dict[str, str | None] = {"bitfile": None, "hwh": None, "driver_settings": None}
        if finn_deploy is not None:
            finn_deploy = Path(finn_deploy)
            shutil.copytree(finn_deploy / "bitfile", tmp / "bitfile")
            shutil.copytree(finn_deploy / "driver", tmp / "driver")
            bits = sorted((tmp / "bitfile").glob("*.bit"))
            if len(bits) != 1 or not bits[0].with_suffix(".hwh").is_file():
                raise FlowError(f"{finn_deploy / 'bitfile'} should hold one .bit with its .hwh, found "
                                f"{[p.name for p in (tmp / 'bitfile').iterdir()]}")
            files.update(bitfile=f"bitfile/{bits[0].name}", hwh=f"bitfile/{bits[0].with_suffix('.hwh').name}",
                         driver_settings="driver/settings.json")
        (tmp / "model").mkdir()
        shutil.copyfile(compile_dir / HW_MODEL, tmp / "model" / HW_MODEL)
        _emulation_model(compile_dir, [x.op_type for x in design.layers], tmp / "model" / "accel.onnx")
        files.update(hw_model=f"model/{HW_MODEL}", accel_model="model/accel.onnx")
        shutil.copytree(RUNTIME_SRC, tmp / RUNTIME_SRC.name, ignore=shutil.ignore_patterns("__pycache__"))
        tail = to_jsonable(design.host_tail)
        manifest = {
            "format": MANIFEST_FORMAT,
            "board": board.name,
            "part": board.part,
            "finn_board": board.finn_board,
            "clock_period_ns": board.clock_period_ns,
            "input": {"shape": list(input_shape), "dtype": "uint8", "layout": "CHW"},
            "accel_input": accel_in,
            "accel_output": accel_out,
            "host_head": head,
            "host_tail": tail,
            "output_scale": _output_scale(tail),
            "classes": list(classes),
            # the frame's mode and size, then the training's own steps (resize method, invert, autocontrast)
            "preprocess": {"mode": "L" if input_shape[0] == 1 else "RGB", "size": list(input_shape[1:]),
                           "convert": False, "resize": None, "invert": False, "autocontrast": False,
                           **(preprocess or {})},
            "files": files,
            "estimate": {"fps": res.get("fps"), "latency_us": res.get("latency_us")},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_json(tmp / "manifest.json", manifest)
    return out_dir


def _frame_shape(accel_shape: list[int], head: list[dict]) -> tuple[int, int, int]:
    """(C, H, W) of one frame: the accelerator's NHWC input seen through the inverse of the host head."""
    if any(op["op"] != "Transpose" for op in head):
        raise FlowError(f"the compile stage left host-side ops {[op['op'] for op in head]} before the accelerator; "
                        "the runtime supports only a layout transpose there")
    shape = list(accel_shape)
    for op in reversed(head):
        inv = [0] * len(op["perm"])
        for i, p in enumerate(op["perm"]):
            inv[p] = i
        shape = [shape[i] for i in inv]
    if len(shape) != 4:
        raise FlowError(f"the accelerator input {accel_shape} is not an image batch (N, H, W, C)")
    return int(shape[1]), int(shape[2]), int(shape[3])


def _output_scale(tail: list[dict]) -> float | None:
    """The per-tensor scale of the accelerator's integers, when the tail starts with a scalar Mul."""
    if tail and tail[0]["op"] == "Mul" and not isinstance(tail[0]["const"], list):
        return float(tail[0]["const"])
    return None


# ---------------------------------------------------------------- stage


@dataclasses.dataclass(frozen=True)
class SynthResult:
    board: str
    plan: SynthPlan
    finn_dir: str  # relative to the output dir
    deploy_dir: str | None  # relative to the output dir; None: no package requested
    reports: dict[str, Any]  # FINN's report/*.json that synthesis produced
    wall_s: float


def synthesize(compile_dir: str | os.PathLike, board: Board, cfg: SynthConfig, out_dir: str | os.PathLike,
               atomic: bool = True, preprocess: dict[str, Any] | None = None) -> SynthResult:
    """Run FINN's Vivado steps on the compile stage's output; write out_dir/{finn,deploy,synth.json}.

    atomic=True builds out_dir under a temporary name and renames it into place; pass False when out_dir is
    already a temporary directory (the pipeline's StageContext.out_dir).
    """
    compile_dir, out_dir = Path(compile_dir), Path(out_dir)
    if not (compile_dir / COMPILE_RESULT).is_file():
        raise FlowError(f"{compile_dir / COMPILE_RESULT} does not exist; run `trimflow compile --board "
                        f"{board.name}` first")
    node_types = [x.op_type for x in load_design(compile_dir).layers]
    plan = plan_synthesis(cfg, board, node_types)
    _require_tools(plan)
    if not atomic:
        return _synthesize_into(compile_dir, board, cfg, plan, out_dir, preprocess)
    with atomic_dir(out_dir) as tmp:
        return _synthesize_into(compile_dir, board, cfg, plan, tmp, preprocess)


def _synthesize_into(compile_dir: Path, board: Board, cfg: SynthConfig, plan: SynthPlan, out: Path,
                     preprocess: dict[str, Any] | None = None) -> SynthResult:
    t0 = time.time()
    finn_out = _run_finn(compile_dir, board, plan, out)
    deploy = None
    if cfg.package:
        finn_deploy = finn_out / "deploy" if "deployment_package" in plan.outputs else None
        make_package(compile_dir, board, out / DEPLOY_DIR, finn_deploy, cfg.classes, preprocess)
        deploy = DEPLOY_DIR
    reports = {p.stem: read_json(p) for p in sorted((finn_out / "report").glob("*.json"))}
    result = SynthResult(board.name, plan, FINN_DIR, deploy, reports, time.time() - t0)
    write_json(out / RESULT_FILE, result)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trimflow.finn.synth", description=__doc__.split("\n\n")[0])
    p.add_argument("--board", default="pynq-z2")
    p.add_argument("--build-dir", default="build")
    p.add_argument("--compile-dir", help="default: <build-dir>/<board>/compile/finn")
    p.add_argument("--out", help="default: <build-dir>/<board>/synth")
    p.add_argument("--package-only", action="store_true",
                   help="no Vivado: write only a host-emulation deployment package to <out>/deploy")
    p.add_argument("--ooc", action="store_true", help="also run out-of-context synthesis")
    p.add_argument("--fifo-sizing", default="auto", help="auto (the build's simulate/fifo_depths.json if there, else "
                   "simulation) | simulation | minimal | path/to/fifo_depths.json")
    p.add_argument("--classes", default="", help="comma-separated class names for the runtime's output")
    args = p.parse_args(argv)
    classes = tuple(c.strip() for c in args.classes.split(",") if c.strip())
    try:
        board = load_board(args.board)
        compile_dir = Path(args.compile_dir or Path(args.build_dir) / board.name / "compile" / "finn")
        out = Path(args.out or Path(args.build_dir) / board.name / "synth")
        if args.package_only:
            print(make_package(compile_dir, board, out / DEPLOY_DIR, classes=classes))
            return 0
        cfg = resolve_fifo_sizing(SynthConfig(ooc_synth=args.ooc, fifo_sizing=args.fifo_sizing, classes=classes),
                                  compile_dir.parent.parent / "simulate")
        res = synthesize(compile_dir, board, cfg, out)
        print(f"synthesis for {res.board} done in {res.wall_s:.0f} s; deployment package: {out / DEPLOY_DIR}")
        return 0
    except FlowError as e:
        print(f"trimflow: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
