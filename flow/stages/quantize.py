"""Stage 3, quantize: convert the trimmed net to Brevitas and fine-tune it at low bit width (QAT).

Writes model.pt (the quantized net, trimflow.quantize's checkpoint format).
"""

from __future__ import annotations

import functools
import time

from trimflow.stage_cache import StageContext, StageSpec
from trimflow.stages.inputs import CHECKPOINT, NOT_STAGE_CODE, BuildInputs
from trimflow.stages.results import QuantizeResult


def spec(b: BuildInputs) -> StageSpec:
    return StageSpec("quantize", functools.partial(run, b), b.cfg.quantize, deps=("trim",),
                     salt=b.source, code_exclude=NOT_STAGE_CODE)


def _bits_label(q) -> str:
    return (f"W{q.weight_bits}A{q.act_bits}, input {q.input_bits}-bit, first/last layer weights "
            f"{q.first_layer_weight_bits}/{q.last_layer_weight_bits}-bit")


def run(b: BuildInputs, ctx: StageContext, qcfg) -> QuantizeResult:
    from trimflow.models import load_checkpoint
    from trimflow.quantize import float_shapes, quantize_model, save_quant_checkpoint
    from trimflow.train import evaluate
    float_model, payload = load_checkpoint(ctx.input("trim", CHECKPOINT))
    start = time.perf_counter()
    qmodel = quantize_model(float_model, b.data.train, qcfg, teacher=float_model)
    ctx.timing["qat"] = time.perf_counter() - start
    save_quant_checkpoint(ctx.out_dir / CHECKPOINT, qmodel, payload["arch"], float_shapes(float_model), qcfg)
    return QuantizeResult(accuracy=evaluate(qmodel, b.data.test), bits_label=_bits_label(qcfg),
                          qat_epochs=qcfg.train.epochs)
