"""The trimflow flow: which stages exist, what each reads and writes, and in what order they run.

This is the only module that knows the order; each stage body calls one stage function from its own module and
records a JSON summary that the report stage turns into report.md / report.json.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from flow import FlowError, __version__
from flow.artifacts import atomic_path, file_digest, read_json
from flow.boards import Board, load_board
from flow.config import FlowConfig
from flow.data import ImageSet, load_dataset, subset
from flow.models import load_checkpoint, save_checkpoint
from flow.pipeline import STAGE_FILE, Pipeline, Stage, StageContext
from flow.train import evaluate, train

CHECKPOINT = "model.pt"


@dataclasses.dataclass
class FlowResult:
    results: dict
    report_path: Path | None


class _Data:
    """Datasets loaded once per run and shared by the stages."""

    def __init__(self, cfg: FlowConfig):
        self.cfg = cfg

    @functools.cached_property
    def train(self) -> ImageSet:
        return load_dataset(self.cfg.dataset, "train", self.cfg.data_dir)

    @functools.cached_property
    def test(self) -> ImageSet:
        return subset(load_dataset(self.cfg.dataset, "test", self.cfg.data_dir), self.cfg.eval_images)


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _bits_label(q) -> str:
    return (f"W{q.weight_bits}A{q.act_bits}, input {q.input_bits}-bit, first/last layer weights "
            f"{q.first_layer_weight_bits}/{q.last_layer_weight_bits}-bit")


def make_pipeline(cfg: FlowConfig, board: Board, root: Path, console: Console | None = None) -> Pipeline:
    data = _Data(cfg)
    model_path = Path(cfg.model)
    if not model_path.exists():
        raise FlowError(f"model checkpoint {model_path} does not exist; run `make pretrain` to create the default "
                        "or set `model:` in your config")
    # The package version is part of every key so that a release with changed stage code never reuses old outputs.
    source = {"model": file_digest(model_path), "dataset": cfg.dataset, "eval_images": cfg.eval_images,
              "trimflow": __version__}

    def relevance(ctx: StageContext, rcfg) -> dict:
        from flow.relevance import compute_relevance
        model, _ = load_checkpoint(model_path)
        scores = compute_relevance(model, data.train, rcfg)
        scores.save(ctx.out_dir / "relevance.json")
        return {"float_accuracy": evaluate(model, data.test), "params": _params(model),
                "layers": scores.summary() if hasattr(scores, "summary") else {}}

    def trim(ctx: StageContext, config) -> dict:
        tcfg, finetune = config
        from flow.relevance import RelevanceScores
        from flow.trim import trim_model
        model, payload = load_checkpoint(model_path)
        scores = RelevanceScores.load(ctx.input("relevance", "relevance.json"))
        trimmed, report = trim_model(model, scores, tcfg, calib=subset(data.train, cfg.relevance.images,
                                                                         cfg.relevance.seed))
        acc_trimmed = evaluate(trimmed, data.test)
        history = train(trimmed, data.train, finetune, teacher=model, desc="fine-tune trimmed")
        save_checkpoint(ctx.out_dir / CHECKPOINT, trimmed, payload["arch"], trimmed=True,
                        meta={"source": str(model_path), "trim": report})
        return {"report": report, "accuracy_before_finetune": acc_trimmed,
                "accuracy": evaluate(trimmed, data.test), "params": _params(trimmed),
                "finetune_seconds": history["seconds"]}

    def quantize(ctx: StageContext, qcfg) -> dict:
        from flow.quantize import float_shapes, quantize_model, save_quant_checkpoint
        float_model, payload = load_checkpoint(ctx.input("trim", CHECKPOINT))
        start = time.perf_counter()
        qmodel = quantize_model(float_model, data.train, qcfg, teacher=float_model)
        seconds = time.perf_counter() - start
        save_quant_checkpoint(ctx.out_dir / CHECKPOINT, qmodel, payload["arch"], float_shapes(float_model), qcfg)
        return {"accuracy": evaluate(qmodel, data.test), "bits_label": _bits_label(qcfg),
                "qat_seconds": seconds, "qat_epochs": qcfg.train.epochs}

    def export(ctx: StageContext, ecfg) -> dict:
        from flow.export import export_qonnx, verify_qonnx
        from flow.quantize import load_quant_checkpoint
        qmodel = load_quant_checkpoint(ctx.input("quantize", CHECKPOINT))
        onnx_path = ctx.out_dir / "model.qonnx.onnx"
        export_qonnx(qmodel, data.test.shape, onnx_path)
        check = verify_qonnx(onnx_path, qmodel, subset(data.test, ecfg.verify_images, seed=1))
        return {"qonnx": "model.qonnx.onnx", "verify": check}

    def compile_(ctx: StageContext, ccfg) -> dict:
        from flow.finn.compile import compile_model
        result = compile_model(ctx.input("export", "model.qonnx.onnx"), board, ccfg, ctx.out_dir / "finn",
                               verify_images=subset(data.test, 8, seed=2))
        return dataclasses.asdict(result) if dataclasses.is_dataclass(result) else dict(result)

    def simulate(ctx: StageContext, scfg) -> dict:
        if scfg.images == 0:
            return {"skipped": "simulate.images is 0"}
        from flow.sim import simulate_design
        return simulate_design(ctx.inputs["compile"] / "finn", subset(data.test, scfg.images, seed=3), scfg.sim,
                               ctx.out_dir)

    def report(ctx: StageContext, _cfg) -> dict:
        from flow.report import write_report
        seconds = {n: read_json(d / STAGE_FILE)["seconds"] for n, d in ctx.inputs.items()}
        paths = write_report(dict(ctx.summaries), board, cfg, ctx.out_dir, seconds)
        return {"files": sorted(p.name for p in paths)}

    board_salt = dataclasses.asdict(board)
    stages = [
        Stage("relevance", relevance, cfg.relevance, salt=source),
        Stage("trim", trim, (cfg.trim, cfg.finetune), deps=("relevance",), salt=source),
        Stage("quantize", quantize, cfg.quantize, deps=("trim",), salt=source),
        Stage("export", export, cfg.export, deps=("quantize",)),
        Stage("compile", compile_, cfg.compile, deps=("export",), salt=board_salt),
        Stage("simulate", simulate, cfg.simulate, deps=("compile",)),
        Stage("report", report, None, deps=("relevance", "trim", "quantize", "export", "compile", "simulate"),
              salt=board_salt),
    ]
    return Pipeline(root, stages, console)


def run_flow(cfg: FlowConfig, board_name: str, build_root: Path, until: str | None = None, force=(),
             console: Console | None = None) -> FlowResult:
    board = load_board(board_name)
    root = Path(build_root) / board.name
    pipeline = make_pipeline(cfg, board, root, console)
    results = pipeline.run(until=until, force=force)
    report_path = None
    if "report" in results:
        # Publish the report next to the stage folders, where a person looks first.
        for name in ("report.md", "report.json"):
            src = results["report"].dir / name
            with atomic_path(root / name) as tmp:
                shutil.copyfile(src, tmp)
        report_path = root / "report.md"
    return FlowResult(results, report_path)
