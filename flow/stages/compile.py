"""Stage 5, compile: FINN turns the QONNX model into dataflow layers for the board (trimflow.finn.compile).

Writes finn/: the compiled design (trimflow.finn.design: hw_model.onnx with generated RTL, compile.json with the
folding, per-layer estimates, fit and host-side ops, folding.json, pareto.json).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from trimflow.stage_cache import StageContext, StageSpec
from trimflow.stages.export import QONNX
from trimflow.stages.inputs import NOT_STAGE_CODE, BuildInputs

if TYPE_CHECKING:
    from trimflow.finn.compile import CompileResult

DESIGN_DIR = "finn"  # the compile output folder inside the stage folder


def spec(b: BuildInputs) -> StageSpec:
    return StageSpec("compile", functools.partial(run, b), b.cfg.compile, deps=("export",),
                     salt=b.board_salt, code_exclude=NOT_STAGE_CODE)


def run(b: BuildInputs, ctx: StageContext, ccfg) -> CompileResult:
    from trimflow.data import subset
    from trimflow.finn.compile import compile_model
    return compile_model(ctx.input("export", QONNX), b.board, ccfg, ctx.out_dir / DESIGN_DIR,
                         verify_images=subset(b.data.test, ccfg.verify_images, seed=2))
