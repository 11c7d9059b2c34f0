"""Stage 8, report: report.md, report.json and plots from every stage's summary (trimflow.report).

Its code is left out of the other stages' keys (trimflow.stages.inputs.NOT_STAGE_CODE): editing the report reruns
the report alone.
"""

from __future__ import annotations

import functools
import sys

from trimflow.stage_cache import StageContext, StageSpec, stage_seconds
from trimflow.stages.inputs import BuildInputs
from trimflow.stages.results import ReportResult

DEPS = ("relevance", "trim", "quantize", "export", "compile", "simulate", "synth")


def spec(b: BuildInputs) -> StageSpec:
    return StageSpec("report", functools.partial(run, b), None, deps=DEPS, salt=b.board_salt)


def run(b: BuildInputs, ctx: StageContext, _cfg) -> ReportResult:
    from trimflow.report import write_report
    from trimflow.report.provenance import collect_for_build
    seconds = {n: stage_seconds(d) for n, d in ctx.inputs.items()}
    paths = write_report(dict(ctx.summaries), b.board, b.cfg, ctx.out_dir, seconds,
                         provenance=collect_for_build(sys.argv, b.board.name, b.root, b.cfg.data_dir, b.model_path))
    return ReportResult(files=sorted(p.name for p in paths))
