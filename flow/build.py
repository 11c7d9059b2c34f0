"""The trimflow build: the stages in order (trimflow.stages, one module each), run and cached by
trimflow.stage_cache, and the report published next to the stage folders.

This is the only module that knows the order; what each stage reads, runs and returns is in its own module.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path

from rich.console import Console

from trimflow.artifacts import atomic_path
from trimflow.boards import Board, load_board
from trimflow.config import FlowConfig
from trimflow.logs import build_log
from trimflow.stage_cache import Pipeline
from trimflow.stages import compile, export, quantize, relevance, report, simulate, synth, trim
from trimflow.stages.inputs import BuildInputs

ORDER = (relevance, trim, quantize, export, compile, simulate, synth, report)


@dataclasses.dataclass
class FlowResult:
    results: dict
    report_path: Path | None


def make_pipeline(cfg: FlowConfig, board: Board, root: Path, console: Console | None = None) -> Pipeline:
    inputs = BuildInputs.make(cfg, board, root)
    return Pipeline(root, [stage.spec(inputs) for stage in ORDER], console)


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
