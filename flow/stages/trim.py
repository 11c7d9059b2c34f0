"""Stage 2, trim: remove the least relevant kernels, refit the later layers, fine-tune the float net.

Writes model.pt (the trimmed, fine-tuned float net). With a hardware-aware goal (hwtrim.target_fps) the budget
is the largest whose design reaches it on the board (trimflow.hwtrim) instead of trim.budget; the stage's key then
holds the board and the quantize/compile settings that search uses.
"""

from __future__ import annotations

import dataclasses
import functools
import time

from trimflow.stage_cache import StageContext, StageSpec
from trimflow.stages.inputs import CHECKPOINT, NOT_STAGE_CODE, VALIDATION_SEED, BuildInputs
from trimflow.stages.results import TrimResult


def spec(b: BuildInputs) -> StageSpec:
    cfg = b.cfg
    # A target fps makes the trim budget depend on the board and on the quantize/compile settings it searches with.
    hw = (cfg.hwtrim, cfg.quantize, cfg.compile) if cfg.hwtrim.target_fps else None
    return StageSpec("trim", functools.partial(run, b), (cfg.trim, cfg.finetune, hw),
                     deps=("relevance",), salt={**b.source, "board": b.board_salt} if hw else b.source,
                     code_exclude=NOT_STAGE_CODE)


def run(b: BuildInputs, ctx: StageContext, config) -> TrimResult:
    from trimflow.data import subset
    from trimflow.models import load_checkpoint, save_checkpoint
    from trimflow.relevance import RelevanceScores
    from trimflow.train import evaluate, train
    from trimflow.trim import trim_model
    tcfg, finetune, hw = config
    data = b.data
    model, payload = load_checkpoint(b.model_path)
    scores = RelevanceScores.load(ctx.input("relevance", "relevance.json"))
    calib = subset(data.train, tcfg.calib_images, tcfg.seed)
    hwtrim, sensitivity = None, None
    if tcfg.allocation == "sensitivity" and tcfg.policy == "budget":
        # measured once per model, scores and probe settings, shared by every budget and by hwtrim
        from trimflow.trim import cached_sensitivity
        start = time.perf_counter()
        sensitivity, cached = cached_sensitivity(b.root / ".cache", model, scores, calib, tcfg)
        ctx.timing["sensitivity"] = 0.0 if cached else time.perf_counter() - start
    if hw is not None:
        from trimflow.hwtrim import fit_by_trimming
        hcfg, qcfg, ccfg = hw
        found = fit_by_trimming(model, scores, b.board, hcfg.target_fps, tcfg, qcfg, ccfg, calib,
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
    # What the compensation bought: the same kernels removed without it, scored on the same images before any
    # fine-tune. Same allocation: the sensitivity table, if any, is reused, and the one the guard chose is imposed
    # (left to itself, the guard would compare uncompensated nets and could choose the other one).
    acc_uncompensated = None
    if tcfg.compensation != "none":
        used = (report.allocation_check or {}).get("used", tcfg.allocation)
        plain = dataclasses.replace(tcfg, compensation="none", budget=report.config["budget"], allocation=used,
                                    sensitivity=dataclasses.replace(tcfg.sensitivity, guard="none"))
        acc_uncompensated = evaluate(trim_model(model, scores, plain, calib=calib,
                                                sensitivity=report.sensitivity, progress=False)[0], data.test)
    history = train(trimmed, data.train, finetune, teacher=model, desc="fine-tune trimmed")
    ctx.timing["finetune"] = history["seconds"]
    save_checkpoint(ctx.out_dir / CHECKPOINT, trimmed, payload["arch"], trimmed=True,
                    meta={"source": str(b.model_path), "trim": report})
    return TrimResult(report=report, accuracy_before_finetune=acc_trimmed,
                      accuracy_before_finetune_uncompensated=acc_uncompensated,
                      validation={"images": b.cfg.validation_images, "seed": VALIDATION_SEED},
                      accuracy=evaluate(trimmed, data.test), hwtrim=hwtrim)
