"""The trimflow flow: which stages exist, what each reads and writes, and in what order they run.

This is the only module that knows the order; each stage body calls one stage function from its own module and
records a JSON summary that the report stage turns into report.md / report.json.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from trimflow import FlowError, __version__
from trimflow.artifacts import atomic_path, file_digest
from trimflow.boards import Board, load_board
from trimflow.config import FlowConfig
from trimflow.data import ImageSet, load_dataset, subset
from trimflow.finn.adapter import vivado_available
from trimflow.finn.compile import relocate_compile_dir
from trimflow.logs import build_log, progress
from trimflow.models import load_checkpoint, save_checkpoint
from trimflow.pipeline import Pipeline, Stage, StageContext, stage_seconds
from trimflow.resources import locate
from trimflow.train import evaluate, train
from trimflow.verify import compare_logits

CHECKPOINT = "model.pt"


@dataclasses.dataclass
class FlowResult:
    results: dict
    report_path: Path | None


VALIDATION_SEED = 20260  # fixed: the hold-out must not move when a stage's own seed changes


def cfg_name(cfg: FlowConfig) -> str:
    return f"dataset {cfg.dataset!r}"


class _Data:
    """Datasets loaded once per run and shared by the stages."""

    def __init__(self, cfg: FlowConfig):
        self.cfg = cfg

    @functools.cached_property
    def _split(self) -> tuple[ImageSet, ImageSet]:
        """(training images, validation images): a seeded hold-out of the training split (validation_images)."""
        full = load_dataset(self.cfg.dataset, "train", self.cfg.data_dir)
        n = self.cfg.validation_images
        if n >= len(full):
            raise FlowError(f"validation_images={n} leaves no training images ({cfg_name(self.cfg)} has "
                            f"{len(full)}); lower validation_images")
        order = torch.randperm(len(full), generator=torch.Generator().manual_seed(VALIDATION_SEED))

        def take(idx):
            return ImageSet(full.name, full.images[idx], full.labels[idx], full.classes)
        return take(order[n:].sort().values), take(order[:n].sort().values)

    @property
    def train(self) -> ImageSet:
        """Everything stages train, calibrate or score on: the training split minus the validation images."""
        return self._split[0]

    @property
    def val(self) -> ImageSet:
        """Held-out training images for the flow's own choices (never the test split)."""
        if self.cfg.validation_images == 0:
            raise FlowError("this build makes a choice on validation images but validation_images=0; set it "
                            "to e.g. 2000")
        return self._split[1]

    @functools.cached_property
    def test(self) -> ImageSet:
        return subset(load_dataset(self.cfg.dataset, "test", self.cfg.data_dir), self.cfg.eval_images)


def _bits_label(q) -> str:
    return (f"W{q.weight_bits}A{q.act_bits}, input {q.input_bits}-bit, first/last layer weights "
            f"{q.first_layer_weight_bits}/{q.last_layer_weight_bits}-bit")


def make_pipeline(cfg: FlowConfig, board: Board, root: Path, console: Console | None = None) -> Pipeline:
    data = _Data(cfg)
    # a relative path that is not in the working directory names a shipped checkpoint (the default one)
    model_path = locate(cfg.model, "model checkpoint", "set `model:` in your config to a trimflow checkpoint")
    from trimflow.models.importers import check_model_file
    check_model_file(model_path)
    # The version is part of every key too (the code digest, trimflow.sources, catches changes within a version).
    source = {"model": file_digest(model_path), "dataset": cfg.dataset, "eval_images": cfg.eval_images,
              "validation_images": cfg.validation_images, "validation_seed": VALIDATION_SEED,
              "trimflow": __version__}

    def relevance(ctx: StageContext, config) -> dict:
        rcfg, _criterion = config
        from trimflow.criteria import score
        from trimflow.models.importers import check_model_fits
        model, _ = load_checkpoint(model_path)
        check_model_fits(model, data.test.shape, data.test.classes, f"model {model_path} on {cfg.dataset}")
        # The relevance stage scores with whichever criterion the trim config names (relevance by default), so
        # the baselines run through exactly the same flow.
        scores = score(model, data.train, cfg.trim.criterion, rcfg)
        scores.save(ctx.out_dir / "relevance.json")
        return {"float_accuracy": evaluate(model, data.test),
                "layers": {name: {**stats, "scores": scores.layers[name]}
                           for name, stats in scores.summary().items()}}

    def trim(ctx: StageContext, config) -> dict:
        tcfg, finetune, hw = config
        from trimflow.relevance import RelevanceScores
        from trimflow.trim import trim_model
        model, payload = load_checkpoint(model_path)
        scores = RelevanceScores.load(ctx.input("relevance", "relevance.json"))
        calib = subset(data.train, tcfg.calib_images, tcfg.seed)
        hwtrim, sensitivity = None, None
        if tcfg.allocation == "sensitivity" and tcfg.policy == "budget":
            # measured once per model, scores and probe settings, shared by every budget and by hwtrim
            from trimflow.trim import cached_sensitivity
            start = time.perf_counter()
            sensitivity, cached = cached_sensitivity(root / ".cache", model, scores, calib, tcfg)
            ctx.timing["sensitivity"] = 0.0 if cached else time.perf_counter() - start
        if hw is not None:
            from trimflow.hwtrim import fit_by_trimming
            hcfg, qcfg, ccfg = hw
            found = fit_by_trimming(model, scores, board, ccfg.target_fps, tcfg, qcfg, ccfg, calib,
                                    subset(data.val, hcfg.val_images, seed=4), hcfg.accuracy_floor,
                                    ctx.out_dir / "hwtrim", budgets=hcfg.budgets, calib_batches=hcfg.calib_batches,
                                    sensitivity=sensitivity, refine=hcfg.refine, log=ctx.console.print)
            trimmed, report, hwtrim = found.model, found.trim_report, found.to_json()
        else:
            trimmed, report = trim_model(model, scores, tcfg, calib=calib, sensitivity=sensitivity)
        if report.allocation_check and report.allocation_check["used"] != "sensitivity":
            ctx.console.print(f"trim: the sensitivity allocation left the net further from the untrimmed one than one "
                              f"fraction per layer (KL {report.allocation_check['kl']}); used rank allocation")
        acc_trimmed = evaluate(trimmed, data.test)
        # What the compensation bought: the same kernels removed without it (same allocation: the sensitivity
        # table, if any, is reused), scored on the same images before any fine-tune.
        acc_uncompensated = None
        if tcfg.compensation != "none":
            plain = dataclasses.replace(tcfg, compensation="none", budget=report.config["budget"])
            acc_uncompensated = evaluate(trim_model(model, scores, plain, calib=calib,
                                                    sensitivity=report.sensitivity, progress=False)[0], data.test)
        history = train(trimmed, data.train, finetune, teacher=model, desc="fine-tune trimmed")
        ctx.timing["finetune"] = history["seconds"]
        save_checkpoint(ctx.out_dir / CHECKPOINT, trimmed, payload["arch"], trimmed=True,
                        meta={"source": str(model_path), "trim": report})
        return {"report": report, "accuracy_before_finetune": acc_trimmed,
                "accuracy_before_finetune_uncompensated": acc_uncompensated,
                "validation": {"images": cfg.validation_images, "seed": VALIDATION_SEED},
                "accuracy": evaluate(trimmed, data.test),
                "hwtrim": hwtrim}

    def quantize(ctx: StageContext, qcfg) -> dict:
        from trimflow.quantize import float_shapes, quantize_model, save_quant_checkpoint
        float_model, payload = load_checkpoint(ctx.input("trim", CHECKPOINT))
        start = time.perf_counter()
        qmodel = quantize_model(float_model, data.train, qcfg, teacher=float_model)
        ctx.timing["qat"] = time.perf_counter() - start
        save_quant_checkpoint(ctx.out_dir / CHECKPOINT, qmodel, payload["arch"], float_shapes(float_model), qcfg)
        return {"accuracy": evaluate(qmodel, data.test), "bits_label": _bits_label(qcfg),
                "qat_epochs": qcfg.train.epochs}

    def export(ctx: StageContext, ecfg) -> dict:
        from trimflow.export import export_qonnx, verify_qonnx
        from trimflow.quantize import load_quant_checkpoint
        qmodel = load_quant_checkpoint(ctx.input("quantize", CHECKPOINT))
        onnx_path = ctx.out_dir / "model.qonnx.onnx"
        export_qonnx(qmodel, data.test.shape, onnx_path)
        check = verify_qonnx(onnx_path, qmodel, subset(data.test, ecfg.verify_images, seed=1))
        return {"qonnx": "model.qonnx.onnx", "verify": check}

    def compile_(ctx: StageContext, ccfg) -> dict:
        from trimflow.finn.compile import compile_model
        result = compile_model(ctx.input("export", "model.qonnx.onnx"), board, ccfg, ctx.out_dir / "finn",
                               verify_images=subset(data.test, ccfg.verify_images, seed=2))
        return dataclasses.asdict(result) if dataclasses.is_dataclass(result) else dict(result)

    def simulate(ctx: StageContext, scfg) -> dict:
        if scfg.images == 0:
            return {"skipped": "simulate.images is 0"}
        return simulate_compiled(ctx.inputs["compile"] / "finn", ctx.summaries["compile"],
                                 ctx.input("export", "model.qonnx.onnx"), subset(data.test, scfg.images, seed=3),
                                 scfg.sim, ctx.out_dir, xsim_images=scfg.xsim_images if vivado_available() else 0,
                                 board=board)

    def synth(ctx: StageContext, scfg) -> dict:
        from trimflow.data.meta import class_names, preprocessing
        from trimflow.finn.synth import make_package, resolve_fifo_sizing, synthesis_enabled, synthesize
        compile_dir = relocate_compile_dir(ctx.inputs["compile"] / "finn")
        scfg = resolve_fifo_sizing(scfg, ctx.inputs["simulate"])
        # the board prints class names (the dataset's unless synth.classes names them) and preprocesses frames
        # as training did
        scfg = dataclasses.replace(scfg, classes=scfg.classes or tuple(class_names(cfg.dataset)))
        pre = preprocessing(cfg.dataset)
        if not synthesis_enabled():
            make_package(compile_dir, board, ctx.out_dir / "deploy", classes=scfg.classes, preprocess=pre)
            return {"skipped": "no Vivado: host-emulation package only (make synth for a bitfile)",
                    "deploy": "deploy"}
        return dataclasses.asdict(synthesize(compile_dir, board, scfg, ctx.out_dir, atomic=False, preprocess=pre))

    def report(ctx: StageContext, _cfg) -> dict:
        from trimflow.report import write_report
        seconds = {n: stage_seconds(d) for n, d in ctx.inputs.items()}
        from trimflow.report.provenance import collect_for_build
        paths = write_report(dict(ctx.summaries), board, cfg, ctx.out_dir, seconds,
                             provenance=collect_for_build(sys.argv, board.name, root, cfg.data_dir))
        return {"files": sorted(p.name for p in paths)}

    board_salt = dataclasses.asdict(board)
    # Every stage's key holds a digest of the package's code (trimflow.sources); the report's, the command line's,
    # the docs' and the sweep driver's code cannot change what the other stages write, so editing those reruns the
    # report alone.
    not_stage_code = ("report/*", "cli.py", "config_docs.py", "logs.py", "sweep/*")
    # A target fps makes the trim budget depend on the board and on the quantize/compile settings it searches with.
    hw = (cfg.hwtrim, cfg.quantize, cfg.compile) if cfg.compile.target_fps else None
    stages = [
        Stage("relevance", relevance, (cfg.relevance, cfg.trim.criterion), salt=source,
              code_exclude=not_stage_code),
        Stage("trim", trim, (cfg.trim, cfg.finetune, hw), deps=("relevance",),
              salt={**source, "board": board_salt} if hw else source, code_exclude=not_stage_code),
        Stage("quantize", quantize, cfg.quantize, deps=("trim",), salt=source, code_exclude=not_stage_code),
        Stage("export", export, cfg.export, deps=("quantize",), code_exclude=not_stage_code),
        Stage("compile", compile_, cfg.compile, deps=("export",), salt=board_salt, code_exclude=not_stage_code),
        Stage("simulate", simulate, cfg.simulate, deps=("export", "compile"),
              salt={**board_salt, "vivado": vivado_available()},  # XSim joins the checks once Vivado is here
              code_exclude=not_stage_code),
        # The salt records whether Vivado is present, so a cached "skipped" result reruns once it is.
        # simulate: its Verilator-sized FIFO depths (synth.fifo_sizing auto)
        Stage("synth", synth, cfg.synth, deps=("compile", "simulate"), salt={**board_salt, "vivado": vivado_available()},
              code_exclude=not_stage_code),
        Stage("report", report, None, deps=("relevance", "trim", "quantize", "export", "compile", "simulate",
                                            "synth"), salt=board_salt),
    ]
    return Pipeline(root, stages, console)


def simulate_compiled(compile_dir: Path, compiled: dict, qonnx_path: Path, images: ImageSet, sim_cfg,
                      out_dir: Path, xsim_images: int = 0, board: Board | None = None) -> dict:
    """Run the Verilator simulation of a compile stage's design on real images and check it three ways:
    bit-exact against FINN's python model of the same HW graph, against the QONNX execution (after the host-side
    tail), and the resulting accuracy; plus measured vs estimated cycles. With `xsim_images` > 0 (needs Vivado) the
    first images also run through FINN's XSim simulation, which must agree bit for bit.

    `board`: the one the design was compiled for (its part and clock: generated RTL, fps, latency, the sized FIFOs'
    fit); default: the shipped board the compile result names."""
    from trimflow.export import run_qonnx
    from trimflow.finn.adapter import finn_session
    from trimflow.finn.compile import apply_host_ops
    from trimflow.finn.execute import execute_hw_model
    from trimflow.finn.fifos import record_sized_fifos
    from trimflow.sim import build_simulator
    from trimflow.sim.fifo_sizing import SIZING_DEPTH, SIZING_IMAGES, size_fifos

    board = board or load_board(compiled["board"])
    compile_dir = relocate_compile_dir(compile_dir)  # FINN wrote absolute paths before the stage was renamed
    hw_model = compile_dir / "hw_model.onnx"
    if sim_cfg.size_fifos:  # built deep; the runs below cap each FIFO at its sized depth
        sim_cfg = dataclasses.replace(sim_cfg, fifo_depth=max(sim_cfg.fifo_depth, SIZING_DEPTH))
    simulator = build_simulator(hw_model, out_dir / "verilator", sim_cfg, fpga_part=board.part,
                                clk_ns=board.clock_period_ns)
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
    logits = apply_host_ops(compiled["host_tail"], sim_out.astype(np.float64)).reshape(len(raw), -1)
    qonnx_logits = run_qonnx(qonnx_path, images, progress=False).reshape(len(raw), -1)
    agree = compare_logits(qonnx_logits, logits)
    summary = {
        "images": len(raw),
        "bit_exact_vs_finn_python": bool(np.array_equal(sim_out, finn_out)),
        "mismatching_images_vs_finn": int((sim_out != finn_out).reshape(len(raw), -1).any(1).sum()),
        # float logits after the host tail: agreement by trimflow.verify's rule (rare rounding-boundary images allowed)
        "max_abs_diff_vs_qonnx": agree.max_abs_diff,
        "matches_qonnx": agree.ok,
        "mismatching_images_vs_qonnx": agree.beyond,
        "top1_agreement_vs_qonnx": agree.top1_agreement,
        "accuracy": float((logits.argmax(1) == images.labels.numpy()).mean()),
        "qonnx_accuracy": float((qonnx_logits.argmax(1) == images.labels.numpy()).mean()),
        "cycles_per_image": result.cycles_per_image, "ii_cycles": result.ii, "latency_cycles": result.latency,
        "estimated_ii_cycles": result.est_ii, "ii_ratio": result.ii_ratio, "ii_flagged": result.ii_flagged,
        "measured_fps": board.fps(result.ii) if result.ii else None,
        "latency_us": board.latency_us(result.latency),
        "estimated_latency_us": board.latency_us(result.est_latency),
        "sim_cycles_per_s": result.cycles_per_s, "sim_images_per_s": result.images_per_s,
    }
    if sizing:
        summary["fifo_sizing"] = record_sized_fifos(hw_model, sizing, board, out_dir)
        if compiled.get("fits") and not summary["fifo_sizing"]["fits_sized"]:
            # the compile stage's fit charged every FIFO at an assumed depth; the depths this design needs are the
            # ones that count: a design that fits only with too-shallow FIFOs does not fit
            raise FlowError(
                f"{board.name}: the design fits with the compile stage's assumed FIFO depths but not with the depths "
                f"its simulation needs ({', '.join(summary['fifo_sizing']['deeper_than_charged'])}):\n"
                f"{summary['fifo_sizing']['fit_sized_table']}\nLower compile.target_fps, trim more (trim.budget) "
                "or choose a larger board.")
    if not summary["bit_exact_vs_finn_python"]:
        raise FlowError(f"RTL simulation differs from FINN's python model on {summary['mismatching_images_vs_finn']}"
                        f" of {len(raw)} images; the simulation build is in {out_dir / 'verilator'}")
    if xsim_images:
        n = min(xsim_images, len(raw))
        # XSim generates IP inside the design's code folders: work on a copy, the compile stage's output is cached
        design = out_dir / "xsim-design"
        shutil.copytree(compile_dir, design)
        with finn_session(out_dir / "xsim-build"):
            xsim_out = execute_hw_model(relocate_compile_dir(design) / "hw_model.onnx",
                                        raw[:n].transpose(0, 2, 3, 1), mode="xsim", fpga_part=board.part,
                                        clk_ns=board.clock_period_ns)
        summary["xsim_images"] = n
        summary["bit_exact_vs_xsim"] = bool(np.array_equal(sim_out[:n], xsim_out.reshape(sim_out[:n].shape)))
        if not summary["bit_exact_vs_xsim"]:
            raise FlowError(f"Verilator and FINN's XSim simulation differ on the first {n} images; designs in "
                            f"{out_dir / 'verilator'} and {design}")
    return summary


def run_flow(cfg: FlowConfig, board_name: str, build_root: Path, until: str | None = None, force=(),
             console: Console | None = None) -> FlowResult:
    board = load_board(board_name)
    root = Path(build_root) / board.name
    pipeline = make_pipeline(cfg, board, root, console)
    with build_log(root / "build.log", header=" ".join(sys.argv)):
        results = pipeline.run(until=until, force=force)
    report_path = None
    if "report" in results:
        # Publish the report next to the stage folders, where a person looks first.
        for name in ("report.md", "report.json", "config.yaml"):  # config.yaml: what `make synth` rebuilds
            src = results["report"].dir / name
            with atomic_path(root / name) as tmp:
                shutil.copyfile(src, tmp)
        report_path = root / "report.md"
    return FlowResult(results, report_path)
