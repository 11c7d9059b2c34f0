"""Stage 1, relevance: score every kernel of the checkpoint on representative training images.

Writes relevance.json (trimflow.relevance.RelevanceScores). The criterion is the one the trim config names
(relevance by default), so the baselines run through exactly the same flow.
"""

from __future__ import annotations

import functools

from trimflow.stage_cache import StageContext, StageSpec
from trimflow.stages.inputs import NOT_STAGE_CODE, BuildInputs
from trimflow.stages.results import RelevanceResult


def spec(b: BuildInputs) -> StageSpec:
    return StageSpec("relevance", functools.partial(run, b), (b.cfg.relevance, b.cfg.trim.criterion),
                     salt=b.source, code_exclude=NOT_STAGE_CODE)


def run(b: BuildInputs, ctx: StageContext, config) -> RelevanceResult:
    from trimflow.criteria import score
    from trimflow.models import load_checkpoint
    from trimflow.models.importers import check_model_fits
    from trimflow.train import evaluate
    rcfg, _criterion = config
    model, _ = load_checkpoint(b.model_path)
    check_model_fits(model, b.data.test.shape, b.data.test.classes, f"model {b.model_path} on {b.cfg.dataset}")
    scores = score(model, b.data.train, b.cfg.trim.criterion, rcfg)
    scores.save(ctx.out_dir / "relevance.json")
    return RelevanceResult(float_accuracy=evaluate(model, b.data.test),
                           layers={name: {**stats, "scores": scores.layers[name],
                                          **({"gains": scores.gains[name]} if name in scores.gains else {})}
                                   for name, stats in scores.summary().items()})
