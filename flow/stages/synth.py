"""Stage 7, synth: the Vivado half (trimflow.finn.synth): bitfile and driver where Vivado exists, and always the
board-side deployment package (deploy/), which without a bitfile runs on the host through the runtime's emulation
backends. The FIFO depths come from the simulate stage's sizing (synth.fifo_sizing auto).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING

from trimflow.stage_cache import StageContext, StageSpec
from trimflow.stages.compile import DESIGN_DIR
from trimflow.stages.inputs import NOT_STAGE_CODE, BuildInputs
from trimflow.stages.results import Skipped

if TYPE_CHECKING:
    from trimflow.finn.synth import SynthResult


def spec(b: BuildInputs) -> StageSpec:
    from trimflow.finn.adapter import vivado_available
    # The salt records whether Vivado is present, so a cached "skipped" result reruns once it is.
    # simulate: its Verilator-sized FIFO depths (synth.fifo_sizing auto)
    return StageSpec("synth", functools.partial(run, b), b.cfg.synth, deps=("compile", "simulate"),
                     salt={**b.board_salt, "vivado": vivado_available()}, code_exclude=NOT_STAGE_CODE)


def run(b: BuildInputs, ctx: StageContext, scfg) -> SynthResult | Skipped:
    from trimflow.data.meta import class_names, preprocessing
    from trimflow.finn.design import relocate_compile_dir
    from trimflow.finn.synth import make_package, resolve_fifo_sizing, synthesis_enabled, synthesize
    compile_dir = relocate_compile_dir(ctx.inputs["compile"] / DESIGN_DIR)
    scfg = resolve_fifo_sizing(scfg, ctx.inputs["simulate"])
    # the board prints class names (the dataset's unless synth.classes names them) and preprocesses frames
    # as training did
    scfg = dataclasses.replace(scfg, classes=scfg.classes or tuple(class_names(b.cfg.dataset)))
    pre = preprocessing(b.cfg.dataset)
    if not synthesis_enabled():
        make_package(compile_dir, b.board, ctx.out_dir / "deploy", classes=scfg.classes, preprocess=pre)
        return Skipped("no Vivado: host-emulation package only (make synth for a bitfile)", deploy="deploy")
    return synthesize(compile_dir, b.board, scfg, ctx.out_dir, atomic=False, preprocess=pre)
