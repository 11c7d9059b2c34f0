"""Export a Brevitas net to QONNX with a UINT8 image input, check the export numerically, check streamlining.

The exported graph takes the raw uint8 pixel values (as a float tensor, annotated UINT8) and starts with a Mul by
1/255: the same numbers the PyTorch net sees as `uint8 / 255`. FINN's streamlining moves that scalar Mul past the
first convolution and absorbs it into the first thresholds, so the accelerator's input is a plain UINT8 stream.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from onnx import TensorProto, helper
from qonnx.core.datatype import DataType
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.util.cleanup import cleanup_model
from torch import nn
from tqdm import tqdm

from trimflow import FlowError
from trimflow.artifacts import atomic_path
from trimflow.data import ImageSet
from trimflow.verify import compare_logits

PIXEL_MAX = 255


def export_qonnx(quant_model: nn.Module, input_shape: tuple[int, int, int], path: str | os.PathLike) -> Path:
    """Write the QONNX model of `quant_model` for one (C, H, W) image to `path`; returns the path."""
    path = Path(path)
    if len(input_shape) != 3:
        raise FlowError(f"export: input_shape must be (channels, height, width), got {tuple(input_shape)}")
    from brevitas.export import export_qonnx as brevitas_export

    quant_model = quant_model.cpu().eval()
    example = torch.zeros(1, *input_shape)
    with atomic_path(path) as tmp:
        onnx_tmp = tmp.with_name(tmp.name + ".onnx")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # The TorchScript exporter: brevitas' dynamo path is newer and was not verified against FINN here.
                brevitas_export(quant_model, example, export_path=str(onnx_tmp), dynamo=False)
            model = cleanup_model(ModelWrapper(str(onnx_tmp)))
        except Exception as e:
            raise FlowError(f"export: brevitas could not export the quantized model to QONNX "
                            f"({type(e).__name__}: {e}); check that it was built by trimflow.quantize") from None
        finally:
            if onnx_tmp.exists():
                onnx_tmp.unlink()
        model = _uint8_input(model)
        model.save(str(tmp))
    return path


def _uint8_input(model: ModelWrapper) -> ModelWrapper:
    """Make the graph input the raw uint8 pixel grid: prepend Mul(1/255), drop an input Quant that is then a no-op."""
    iname = model.graph.input[0].name
    scaled = model.make_new_valueinfo_name()
    scale = model.make_new_valueinfo_name()
    model.set_initializer(scale, np.asarray(1.0 / PIXEL_MAX, dtype=np.float32))
    for node in model.find_consumers(iname):
        for i, name in enumerate(node.input):
            if name == iname:
                node.input[i] = scaled
    model.graph.node.insert(0, helper.make_node("Mul", [iname, scale], [scaled], name="InputToUnit"))
    model.graph.value_info.append(helper.make_tensor_value_info(scaled, TensorProto.FLOAT,
                                                                model.get_tensor_shape(iname)))
    model.set_tensor_datatype(iname, DataType["UINT8"])

    # An unsigned 8-bit quantizer with scale 1/255 maps k/255 onto itself; FINN would otherwise build a 255-step
    # threshold layer for it. Its scale is compared in float32, the precision both brevitas and ONNX use.
    quant = model.find_consumer(scaled)
    if quant is not None and quant.op_type == "Quant" and _is_uint8_grid(model, quant):
        for consumer in model.find_consumers(quant.output[0]):
            for i, name in enumerate(consumer.input):
                if name == quant.output[0]:
                    consumer.input[i] = scaled
        model.graph.node.remove(quant)
    return cleanup_model(model)


def _is_uint8_grid(model: ModelWrapper, quant) -> bool:
    values = [model.get_initializer(name) for name in quant.input[1:4]]
    if any(v is None for v in values):
        return False
    scale, zero, bits = (np.asarray(v, dtype=np.float32) for v in values)
    attrs = {a.name: helper.get_attribute_value(a) for a in quant.attribute}
    return (scale.size == 1 and float(scale) == float(np.float32(1.0) / np.float32(PIXEL_MAX))
            and not np.any(zero) and float(bits) == 8 and attrs.get("signed", 1) == 0
            and attrs.get("narrow", 0) == 0)


def _uint8_images(images: ImageSet | torch.Tensor) -> torch.Tensor:
    x = images.images if isinstance(images, ImageSet) else images
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.ndim != 4:
        raise FlowError("verify: images must be a uint8 tensor (N, C, H, W) or an ImageSet")
    return x


def run_qonnx(path: str | os.PathLike | ModelWrapper, images: ImageSet | torch.Tensor,
              progress: bool = True) -> np.ndarray:
    """Execute the exported QONNX model (qonnx execute_onnx) image by image on uint8 images; returns logits."""
    from qonnx.core.onnx_exec import execute_onnx

    model = path if isinstance(path, ModelWrapper) else ModelWrapper(str(path))
    iname, oname = model.graph.input[0].name, model.graph.output[0].name
    x = _uint8_images(images).numpy().astype(np.float32)
    outs = []
    for i in tqdm(range(len(x)), desc="qonnx exec", disable=not progress, leave=False):
        outs.append(execute_onnx(model, {iname: x[i:i + 1]})[oname])
    return np.concatenate(outs)


def verify_qonnx(path: str | os.PathLike, quant_model: nn.Module, images: ImageSet | torch.Tensor,
                 progress: bool = True) -> dict[str, Any]:
    """Compare QONNX execution with the Brevitas forward on the same images; FlowError past the tolerance."""
    x = _uint8_images(images)
    got = run_qonnx(path, x, progress=progress)
    with torch.no_grad():
        want = quant_model.cpu().eval()(x.float() / PIXEL_MAX).numpy()
    agree = compare_logits(want, got)
    report = {"images": agree.images, "max_abs_diff": agree.max_abs_diff, "tolerance": agree.tolerance,
              "images_past_tolerance": agree.beyond, "top1_agreement": agree.top1_agreement}
    if not agree.ok:
        raise FlowError(
            f"verify: QONNX model {path} disagrees with the Brevitas model: {agree.describe()}. The export does not "
            "reproduce the trained net; re-export it and report the model if it persists.")
    return report


# Nodes that compute with integers in FINN's dataflow layers. The last of them ends the part of the graph that
# becomes hardware; float nodes after it (the final scale and bias) run on the host.
_MATMUL_OPS = ("MatMul", "Conv", "XnorPopcountMatMul", "MVAU", "MVAU_hls", "MVAU_rtl", "VVAU", "VVAU_hls",
               "VVAU_rtl")


def check_streamlined(model: ModelWrapper) -> list[str]:
    """Float nodes left between the input and the last matrix layer of a streamlined FINN model.

    Run it on the model after FINN's streamline (or convert-to-hw) step; an empty list means every tensor inside
    the future hardware partition carries an integer datatype. Each entry is "node (op): reason".
    """
    nodes = list(model.graph.node)
    last = max((i for i, n in enumerate(nodes) if n.op_type in _MATMUL_OPS), default=None)
    if last is None:
        return ["graph: no MatMul/Conv/MVAU node, nothing FINN can map to a matrix layer"]
    body: set[str] = set()
    frontier = [nodes[last]]
    while frontier:  # every node the last matrix layer depends on
        node = frontier.pop()
        if node.name in body:
            continue
        body.add(node.name)
        frontier += [p for name in node.input if (p := model.find_producer(name)) is not None]
    leftovers = []
    for node in nodes:
        if node.name not in body:
            continue
        tensors = [t for t in list(node.input) + list(node.output)
                   if t and (model.get_initializer(t) is None or node.op_type in _MATMUL_OPS)]
        floats = [t for t in tensors if model.get_tensor_datatype(t) == DataType["FLOAT32"]]
        if not floats:
            continue
        why = f"{node.name} ({node.op_type}): {', '.join(floats)} is FLOAT32"
        if node.op_type == "Add" and all(model.get_initializer(t) is None for t in node.input):
            why += (" (a residual join: FINN makes it integer only when both operands come from one shared "
                    "quantizer, as trimflow.quantize gives every a + b, and after the fork/join reorderings of "
                    "trimflow.finn.residual.streamline_residual)")
        leftovers.append(why)
    return leftovers


def require_streamlined(model: ModelWrapper, what: str = "model") -> None:
    """FlowError naming the first leftover float node of check_streamlined, with the usual causes."""
    leftovers = check_streamlined(model)
    if leftovers:
        raise FlowError(
            f"{what} does not streamline: FINN left float computation inside the part that becomes hardware: "
            f"{'; '.join(leftovers[:5])}{' ...' if len(leftovers) > 5 else ''}. FINN only absorbs scales, "
            "BatchNorm and biases into thresholds when every Conv/Linear input is a quantized activation "
            "(QuantReLU / input quantizer) and every weight is quantized; use trimflow.quantize.convert_model, and "
            "avoid float ops (unquantized activations, residual adds, float pooling) between quantized layers.")
