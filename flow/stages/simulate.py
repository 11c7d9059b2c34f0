"""Stage 6, simulate: the compiled design in Verilator on real test images, checked three ways.

Bit-exact against FINN's python model of the same HW graph, against the QONNX execution (after the host-side tail),
and the simulated accelerator's accuracy; measured vs estimated cycles; FIFO depths sized by simulation
(fifo_depths.json, hw_model_sized_fifos.onnx) and their fit on the board; where Vivado exists, the first images also
through FINN's XSim. Writes verilator/ (the simulation build) and the sizing files, with the sized design
(trimflow.finn.design.DESIGN_FILE, a new version of the compile stage's).
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
from pathlib import Path

import numpy as np

from trimflow import FlowError
from trimflow.boards import Board, load_board
from trimflow.data import ImageSet
from trimflow.finn.design import HW_MODEL, apply_host_ops, relocate_compile_dir
from trimflow.finn.design import load as load_design
from trimflow.logs import progress
from trimflow.stage_cache import StageContext, StageSpec
from trimflow.stages.compile import DESIGN_DIR
from trimflow.stages.export import QONNX
from trimflow.stages.inputs import NOT_STAGE_CODE, BuildInputs
from trimflow.stages.results import SimulateResult, Skipped
from trimflow.verify import compare_logits


def spec(b: BuildInputs) -> StageSpec:
    from trimflow.finn.adapter import vivado_available
    return StageSpec("simulate", functools.partial(run, b), b.cfg.simulate, deps=("export", "compile"),
                     salt={**b.board_salt, "vivado": vivado_available()},  # XSim joins the checks once Vivado is here
                     code_exclude=NOT_STAGE_CODE)


def run(b: BuildInputs, ctx: StageContext, scfg) -> SimulateResult | Skipped:
    from trimflow.data import subset
    from trimflow.finn.adapter import vivado_available
    if scfg.images == 0:
        return Skipped("simulate.images is 0")
    return simulate_compiled(ctx.inputs["compile"] / DESIGN_DIR, ctx.input("export", QONNX),
                             subset(b.data.test, scfg.images, seed=3), scfg.sim, ctx.out_dir,
                             xsim_images=scfg.xsim_images if vivado_available() else 0, board=b.board)


def simulate_compiled(compile_dir: Path, qonnx_path: Path, images: ImageSet, sim_cfg,
                      out_dir: Path, xsim_images: int = 0, board: Board | None = None) -> SimulateResult:
    """Run the Verilator simulation of a compile stage's design on real images and check it three ways:
    bit-exact against FINN's python model of the same HW graph, against the QONNX execution (after the host-side
    tail), and the resulting accuracy; plus measured vs estimated cycles. With `xsim_images` > 0 (needs Vivado) the
    first images also run through FINN's XSim simulation, which must agree bit for bit.

    `board`: the one the design was compiled for (its part and clock: generated RTL, fps, latency, the sized FIFOs'
    fit); default: the shipped board the compile result names."""
    from trimflow.export import run_qonnx
    from trimflow.finn.adapter import finn_session
    from trimflow.finn.execute import execute_hw_model
    from trimflow.finn.fifos import record_sized_fifos
    from trimflow.sim import build_simulator
    from trimflow.sim.fifo_sizing import SIZING_DEPTH, SIZING_IMAGES, size_fifos

    compile_dir = relocate_compile_dir(compile_dir)  # FINN wrote absolute paths before the stage was renamed
    hw_model = compile_dir / HW_MODEL
    design = load_design(compile_dir)  # its FIFOs, width converters, host-side ops and fit
    board = board or load_board(design.board)
    if sim_cfg.size_fifos:  # built deep; the runs below cap each FIFO at its sized depth
        sim_cfg = dataclasses.replace(sim_cfg, fifo_depth=max(sim_cfg.fifo_depth or 0, SIZING_DEPTH))
    simulator = build_simulator(hw_model, out_dir / "verilator", sim_cfg, fpga_part=board.part,
                                clk_ns=board.clock_period_ns, design=design)
    raw = images.images.numpy()
    sizing = None
    if sim_cfg.size_fifos:
        sizing = size_fifos(simulator, raw[:SIZING_IMAGES])
        progress("  FIFOs sized by simulation: %d FIFOs, depths %s, II %.0f cycles (deep FIFOs: %.0f)",
                 len(sizing.fifos), sorted({f.depth for f in sizing.fifos}), sizing.ii_sized, sizing.ii_deep)
    progress("  simulating %d images (one Verilator run, back to back)", len(raw))
    result = simulator.run(raw, fifo_limits=sizing.limits() if sizing else None)
    progress("  simulated %d images in %.0f s: %.1f images/s, %.0f cycles/s", len(raw), result.wall_s,
             result.images_per_s, result.cycles_per_s)
    with finn_session(out_dir / "finn-exec"):
        finn_out = execute_hw_model(hw_model, raw.transpose(0, 2, 3, 1))
    sim_out = result.outputs.reshape(finn_out.shape)
    logits = apply_host_ops(design.host_tail, sim_out.astype(np.float64)).reshape(len(raw), -1)
    qonnx_logits = run_qonnx(qonnx_path, images, progress=False).reshape(len(raw), -1)
    agree = compare_logits(qonnx_logits, logits)
    bit_exact = bool(np.array_equal(sim_out, finn_out))
    mismatching = int((sim_out != finn_out).reshape(len(raw), -1).any(1).sum())
    fifo_sizing = None
    if sizing:
        fifo_sizing = record_sized_fifos(hw_model, sizing, board, out_dir, design)
        if design.fits and not fifo_sizing["fits_sized"]:
            # the compile stage's fit charged every FIFO at an assumed depth; the depths this design needs are the
            # ones that count: a design that fits only with too-shallow FIFOs does not fit
            raise FlowError(
                f"{board.name}: the design fits with the compile stage's assumed FIFO depths but not with the depths "
                f"its simulation needs ({', '.join(fifo_sizing['deeper_than_charged'])}):\n"
                f"{fifo_sizing['fit_sized_table']}\nLower the target fps (--target-fps: hwtrim.target_fps "
                "and compile.folding_fps), trim more (trim.budget) or choose a larger board.")
    if not bit_exact:
        raise FlowError(f"RTL simulation differs from FINN's python model on {mismatching}"
                        f" of {len(raw)} images; the simulation build is in {out_dir / 'verilator'}")
    n, xsim_exact = None, None
    if xsim_images:
        n = min(xsim_images, len(raw))
        # XSim generates IP inside the design's code folders: work on a copy, the compile stage's output is cached
        design = out_dir / "xsim-design"
        shutil.copytree(compile_dir, design)
        with finn_session(out_dir / "xsim-build"):
            xsim_out = execute_hw_model(relocate_compile_dir(design) / HW_MODEL,
                                        raw[:n].transpose(0, 2, 3, 1), mode="xsim", fpga_part=board.part,
                                        clk_ns=board.clock_period_ns)
        xsim_exact = bool(np.array_equal(sim_out[:n], xsim_out.reshape(sim_out[:n].shape)))
        if not xsim_exact:
            raise FlowError(f"Verilator and FINN's XSim simulation differ on the first {n} images; designs in "
                            f"{out_dir / 'verilator'} and {design}")
    return SimulateResult(
        images=len(raw), bit_exact_vs_finn_python=bit_exact, mismatching_images_vs_finn=mismatching,
        max_abs_diff_vs_qonnx=agree.max_abs_diff, matches_qonnx=agree.ok, mismatching_images_vs_qonnx=agree.beyond,
        top1_agreement_vs_qonnx=agree.top1_agreement,
        accuracy=float((logits.argmax(1) == images.labels.numpy()).mean()),
        qonnx_accuracy=float((qonnx_logits.argmax(1) == images.labels.numpy()).mean()),
        cycles_per_image=result.cycles_per_image, ii_cycles=result.ii, latency_cycles=result.latency,
        estimated_ii_cycles=result.est_ii, ii_ratio=result.ii_ratio, ii_flagged=result.ii_flagged,
        measured_fps=board.fps(result.ii) if result.ii else None, latency_us=board.latency_us(result.latency),
        estimated_latency_us=board.latency_us(result.est_latency), sim_cycles_per_s=result.cycles_per_s,
        sim_images_per_s=result.images_per_s, fifo_sizing=fifo_sizing, xsim_images=n, bit_exact_vs_xsim=xsim_exact)
