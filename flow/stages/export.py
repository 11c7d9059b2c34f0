"""Stage 4, export: the quantized net as QONNX, checked against the Brevitas forward on real test images.

Writes model.qonnx.onnx.
"""

from __future__ import annotations

import functools

from trimflow.stage_cache import StageContext, StageSpec
from trimflow.stages.inputs import CHECKPOINT, NOT_STAGE_CODE, BuildInputs
from trimflow.stages.results import ExportResult

QONNX = "model.qonnx.onnx"


def spec(b: BuildInputs) -> StageSpec:
    return StageSpec("export", functools.partial(run, b), b.cfg.export, deps=("quantize",),
                     code_exclude=NOT_STAGE_CODE)


def run(b: BuildInputs, ctx: StageContext, ecfg) -> ExportResult:
    from trimflow.data import subset
    from trimflow.export import export_qonnx, verify_qonnx
    from trimflow.quantize import load_quant_checkpoint
    qmodel = load_quant_checkpoint(ctx.input("quantize", CHECKPOINT))
    onnx_path = ctx.out_dir / QONNX
    export_qonnx(qmodel, b.data.test.shape, onnx_path)
    check = verify_qonnx(onnx_path, qmodel, subset(b.data.test, ecfg.verify_images, seed=1))
    return ExportResult(qonnx=QONNX, verify=check)
