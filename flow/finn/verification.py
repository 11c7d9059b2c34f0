"""The compile stage's check of FINN's work: QONNX, FINN's streamlined model and its HW-layer model (python
execution) run on the same real images and must agree (trimflow.verify's tolerance)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from trimflow import FlowError
from trimflow.finn.adapter import finn_session
from trimflow.finn.design import CODEGEN_DIR, HostOp, apply_host_ops


@dataclasses.dataclass(frozen=True)
class Verification:
    n_images: int
    streamlined_max_abs_diff: float  # FINN streamlined model vs QONNX
    streamlined_mismatches: int  # images outside tolerance
    hw_max_abs_diff: float  # HW-layer model (python exec) + host tail vs QONNX
    hw_mismatches: int
    argmax_agreement: float  # fraction of images where the HW-layer model's class equals QONNX's
    tolerance: float
    ok: bool


def verify_images(images: Any, cfg: Any, dataset: str) -> np.ndarray:
    if images is None:
        from trimflow.data import load_dataset, subset

        images = subset(load_dataset(dataset, "test"), cfg.verify_images, seed=0).images
    images = getattr(images, "images", images)  # an ImageSet
    arr = np.asarray(images)[: cfg.verify_images]
    if arr.dtype != np.uint8 or arr.ndim != 4:
        raise FlowError(f"verification images must be uint8 (N, C, H, W), got {arr.dtype} {arr.shape}")
    return arr


def verify_streamlined(
    qonnx_path: str | os.PathLike,
    finn_out: str | os.PathLike,
    images: np.ndarray,
    input_divisor: float,
    tail: Sequence[HostOp | dict],
) -> Verification:
    """Execute QONNX, FINN's streamlined model and FINN's HW-layer model (python mode) on the same images.

    The streamlined model still holds the float tail; the HW-layer model's output gets `tail` applied on the host.
    A QONNX model whose input is annotated integer (trimflow.export's UINT8 input) gets the raw pixels, a float-input
    one gets `raw / input_divisor` (what compile_model's inserted Div computes). Agreement follows trimflow.verify.
    """
    from finn.core.onnx_exec import execute_onnx as finn_exec
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx as qonnx_exec
    from qonnx.transformation.infer_shapes import InferShapes

    from trimflow.verify import compare_logits

    inter = Path(finn_out) / "intermediate_models"
    ref_model = ModelWrapper(str(qonnx_path)).transform(InferShapes())
    ref_divisor = 1.0 if ref_model.get_tensor_datatype(ref_model.graph.input[0].name).is_integer() else input_divisor
    streamlined = ModelWrapper(str(inter / "step_streamline.onnx"))
    parent = ModelWrapper(str(inter / "dataflow_parent.onnx"))

    def run(model: Any, x: np.ndarray, exec_fn: Callable) -> np.ndarray:
        return exec_fn(model, {model.graph.input[0].name: x})[model.graph.output[0].name]

    refs, s_outs, h_outs = [], [], []
    with finn_session(Path(finn_out).parent / CODEGEN_DIR):
        from rich.progress import track

        for img in track(images, description="verify FINN vs QONNX", transient=True):
            raw = img[None].astype(np.float32)
            refs.append(run(ref_model, raw / np.float32(ref_divisor), qonnx_exec).reshape(-1))
            s_outs.append(run(streamlined, raw, finn_exec).reshape(-1))
            # the HW layers take NHWC; the parent model's head transposes, so feed it the NCHW raw image
            h_outs.append(apply_host_ops(tail, run(parent, raw, finn_exec)).reshape(-1))
    s, h = compare_logits(np.stack(refs), np.stack(s_outs)), compare_logits(np.stack(refs), np.stack(h_outs))
    return Verification(len(images), s.max_abs_diff, s.beyond, h.max_abs_diff, h.beyond, h.top1_agreement,
                        h.tolerance, s.ok and h.ok)
