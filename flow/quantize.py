"""Turn a (possibly trimmed) float CNN into a Brevitas net that FINN can streamline, fine-tune it (QAT), save it.

Only quantizers that FINN's streamlining turns into pure integer layers are used:
- weights: signed narrow-range integers with a per-tensor or per-output-channel float scale (learned, started
  from the MSE-optimal or the max-abs scale);
  1-bit weights are bipolar {-s, +s} with s the mean absolute weight, exported as BipolarQuant.
- activations: unsigned per-tensor quantizers fused into ReLU (QuantReLU). FINN turns them into MultiThreshold
  nodes and absorbs conv scales and BatchNorm into the thresholds, so BatchNorm stays a float nn.BatchNorm.
  At 1 bit the ReLU becomes a sign activation {-1, +1} (see _quant_act), as in FINN's binarized networks.
- the input: images are uint8/255. An unsigned quantizer with a constant range [0, 1] has scale 1/(2^b - 1); at
  8 bits that is exactly 1/255, so quantizing is an identity on the uint8 grid and the exporter can replace it by
  a plain UINT8 input (trimflow.export). Fewer input bits keep a Quant node that FINN turns into an input threshold layer.
- the last Linear keeps a float bias (no bias quantizer): its scale and bias stay after the last MVAU as a
  host-side float tail, which FINN leaves outside the hardware partition.
- residual adds `a + b` (found with torch.fx): both operands pass through one shared signed quantizer
  (QuantConfig.residual_bits). FINN can only move a scale past an Add when both inputs carry the same scalar
  scale; then the Add works on integers (FINN's ElementwiseAdd), and its scale is absorbed into the thresholds of
  the activation that follows. Each operand costs one threshold layer in hardware (also the identity shortcut,
  whose unsigned activation is re-quantized onto the shared signed grid).
"""

from __future__ import annotations

import copy
import dataclasses
import operator
import os
from pathlib import Path
from typing import Any

import torch
from brevitas.core.function_wrapper import TensorClampSte
from brevitas.core.scaling import ScalingImplType
from brevitas.core.stats import StatsOp
from brevitas.graph.calibrate import calibration_mode
from brevitas.nn import QuantConv2d, QuantIdentity, QuantLinear, QuantReLU
from brevitas.quant import (Int8ActPerTensorFloat, Int8ActPerTensorFloatMSE, Int8WeightPerChannelFloat,
                            Int8WeightPerChannelFloatMSE, Int8WeightPerTensorFloat, Int8WeightPerTensorFloatMSE,
                            SignedBinaryActPerTensorConst, SignedBinaryWeightPerTensorConst, Uint8ActPerTensorFloat,
                            Uint8ActPerTensorFloatMSE)
from torch import nn
from tqdm import tqdm

from trimflow import FlowError
from trimflow.config_parsing import from_dict
from trimflow.data import ImageSet, make_loader
from trimflow.models import build_model
from trimflow.models.io import read_payload, resize_to_state, write_payload
from trimflow.quant_config import SCALE_INITS, QuantConfig  # noqa: F401  (QuantConfig: callers import it from here too)
from trimflow.train import TrainConfig, seed_everything, train

FORMAT = "trimflow-quant-checkpoint/1"

# Leaf modules the converter understands. Anything else with no quantized counterpart is rejected up front,
# because FINN would otherwise fail much later with an error about an ONNX node the user never wrote.
_PASSTHROUGH = (nn.BatchNorm1d, nn.BatchNorm2d, nn.Flatten, nn.Identity, nn.Dropout, nn.MaxPool2d)
_SUPPORTED_ACTS = "nn.ReLU"
_ACTIVATION_FUNCTIONS = {
    torch.relu, torch.sigmoid, torch.tanh, nn.functional.relu, nn.functional.relu6, nn.functional.gelu,
    nn.functional.silu, nn.functional.sigmoid, nn.functional.tanh, nn.functional.leaky_relu, nn.functional.elu,
    nn.functional.hardswish, nn.functional.hardtanh, nn.functional.mish, nn.functional.softplus,
}


class InputQuant(Uint8ActPerTensorFloat):
    """Unsigned input quantizer with the constant range [0, 1]: scale 1/(2^b - 1), exactly 1/255 at 8 bits."""
    scaling_impl_type = ScalingImplType.CONST
    max_val = 1.0


class ActQuant(Uint8ActPerTensorFloat):
    """Unsigned per-tensor ReLU quantizer whose scale starts from activation statistics (see calibrate_activations)."""


class ActQuantMSE(Uint8ActPerTensorFloatMSE):
    """Like ActQuant, but the initial scale minimises the quantization MSE instead of covering the max."""


class ResidualQuant(Int8ActPerTensorFloat):
    """Signed per-tensor quantizer shared by the two operands of a residual add (see convert_model)."""


class ResidualQuantMSE(Int8ActPerTensorFloatMSE):
    """Like ResidualQuant, with the MSE-optimal initial scale."""


# scale_init -> (weight per tensor, weight per channel, activation, residual operands). Max-abs scales leave 2-bit
# weights mostly zero (levels {-max, 0, max}) and the net collapses; MSE-initialised learned scales do not (see the
# report).
_SCALE_INIT = {
    "max": (Int8WeightPerTensorFloat, Int8WeightPerChannelFloat, ActQuant, ResidualQuant),
    "mse": (Int8WeightPerTensorFloatMSE, Int8WeightPerChannelFloatMSE, ActQuantMSE, ResidualQuantMSE),
}
assert set(_SCALE_INIT) == set(SCALE_INITS)  # the config's choices (trimflow.quant_config) are the ones built here
# Residual joins: calls that add two tensors (torch.fx targets).
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_ADD_METHODS = {"add", "add_"}
RESIDUAL_QUANT_PREFIX = "residual_quant_"


class BipolarWeightPerTensor(SignedBinaryWeightPerTensorConst):
    # The mean absolute weight is the least-squares optimal scale of sign(w) (XNOR-Net), recomputed every step.
    # The base class clamps the float weights in place, which breaks autograd once the scale depends on them.
    tensor_clamp_impl = TensorClampSte
    scaling_impl_type = ScalingImplType.STATS
    scaling_stats_op = StatsOp.AVE
    scaling_min_val = 1e-10


class BipolarWeightPerChannel(BipolarWeightPerTensor):
    scaling_per_output_channel = True


class QuantNet(nn.Module):
    """The converted float net behind an input quantizer; state keys are `input_quant.*` and `net.<float name>`."""

    def __init__(self, input_quant: nn.Module, net: nn.Module):
        super().__init__()
        self.input_quant = input_quant
        self.net = net

    def forward(self, x):
        return self.net(self.input_quant(x))


def _weight_quant(bits: int, per_channel: bool, scale_init: str) -> dict[str, Any]:
    if bits == 1:
        return {"weight_quant": BipolarWeightPerChannel if per_channel else BipolarWeightPerTensor}
    per_tensor_quant, per_channel_quant = _SCALE_INIT[scale_init][:2]
    return {"weight_quant": per_channel_quant if per_channel else per_tensor_quant, "weight_bit_width": bits}


def _quant_act(bits: int, scale_init: str) -> nn.Module:
    if bits == 1:
        # Brevitas exports every 1-bit quantizer as BipolarQuant, so a 1-bit unsigned ReLU would export as
        # sign(relu(x)) = +1 everywhere. A 1-bit activation is therefore the sign activation of binarized nets
        # ({-1, +1}, the preceding BatchNorm sets the threshold), which FINN maps to single-threshold layers.
        return QuantIdentity(act_quant=SignedBinaryActPerTensorConst)
    return QuantReLU(act_quant=_SCALE_INIT[scale_init][2], bit_width=bits)


def _trace(model: nn.Module) -> torch.fx.GraphModule | None:
    """The torch.fx trace the conversion's graph checks share; None when `model` cannot be traced (those checks are
    then skipped, and the export's streamlining check names whatever FINN cannot map)."""
    try:
        return torch.fx.symbolic_trace(model)
    except Exception:
        return None


def _execution_order(model: nn.Module, gm: torch.fx.GraphModule | None) -> list[str]:
    """Module names in the order forward() calls them (`gm`, the model's trace); module-definition order without
    a trace."""
    if gm is None:
        return [name for name, _ in model.named_modules()]
    for node in gm.graph.nodes:
        fn = node.target if node.op == "call_function" else None
        if fn in _ACTIVATION_FUNCTIONS or (node.op == "call_method" and node.target in ("relu", "sigmoid", "tanh")):
            raise FlowError(f"model: node {node.name!r} applies {getattr(fn, '__name__', node.target)} as a "
                            f"function call; only activation modules ({_SUPPORTED_ACTS}) can be quantized. "
                            "Use an nn.ReLU module in the model definition.")
    return [str(node.target) for node in gm.graph.nodes if node.op == "call_module"]


def _check_batchnorm_placement(gm: torch.fx.GraphModule | None) -> None:
    """FlowError for a BatchNorm that does not directly follow a Conv2d/Linear.

    FINN absorbs a BatchNorm into the thresholds of the activation after it only while it sits between a matrix
    layer and that activation; elsewhere (after an activation, a pooling, at the input) its per-channel scale and
    shift stay float ops inside the hardware part, which FINN cannot turn into dataflow layers.
    """
    if gm is None:
        return
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(str(node.target)),
                                                       nn.modules.batchnorm._BatchNorm):
            continue
        src = node.args[0] if node.args and isinstance(node.args[0], torch.fx.Node) else None
        src_module = modules.get(str(src.target)) if src is not None and src.op == "call_module" else None
        if not isinstance(src_module, (nn.Conv2d, nn.Linear)):
            what = f"{src.op} {src.target}" if src is not None else "the model input"
            raise FlowError(f"model: BatchNorm {node.target!r} follows {what}, not a Conv2d/Linear; FINN can only "
                            "absorb a BatchNorm that sits between a convolution/linear layer and its activation. "
                            "Move it there (and retrain), or fold it into the neighbouring layer's weights.")


def _residual_adds(graph: torch.fx.Graph) -> list[torch.fx.Node]:
    adds = []
    for node in graph.nodes:
        is_add = ((node.op == "call_function" and node.target in _ADD_FUNCTIONS)
                  or (node.op == "call_method" and node.target in _ADD_METHODS))
        if not is_add or len(node.args) < 2 or not all(isinstance(a, torch.fx.Node) for a in node.args[:2]):
            continue  # x + constant is a bias, which streamlining absorbs like any other
        if node.kwargs.get("alpha", 1) != 1 or len(node.args) > 2:
            raise FlowError(f"model: residual add {node.name!r} scales an operand (alpha); write it as a + b so "
                            "both operands can share one quantizer")
        adds.append(node)
    return adds


def _quantize_residual_joins(net: nn.Module, gm: torch.fx.GraphModule | None, cfg: QuantConfig) -> nn.Module:
    """`net` with one shared signed quantizer in front of both operands of each residual add (its trace `gm`,
    modified), or `net` itself when it has no residual add or no trace to find one in."""
    if gm is None:
        return net
    adds = _residual_adds(gm.graph)
    if not adds:
        return net
    if cfg.act_bits == 1:
        raise FlowError(f"quantize: act_bits=1 (bipolar activations) cannot quantize the residual add "
                        f"{adds[0].name!r}: FINN adds bipolar values as bits. Use act_bits >= 2 for residual nets.")
    bits = cfg.residual_bits or cfg.act_bits
    for i, node in enumerate(adds):
        name = f"{RESIDUAL_QUANT_PREFIX}{i}"
        # One module called on both operands: one learned scale, so the exported Quant nodes carry equal scales.
        gm.add_submodule(name, QuantIdentity(act_quant=_SCALE_INIT[cfg.scale_init][3], bit_width=bits))
        with gm.graph.inserting_before(node):
            operands = tuple(gm.graph.call_module(name, (arg,)) for arg in node.args[:2])
        node.args = operands
    gm.recompile()
    return gm


def _check_supported(model: nn.Module) -> None:
    for name, module in model.named_modules():
        containers = (nn.Sequential, nn.ModuleList, nn.ModuleDict)  # an empty Sequential is an identity shortcut
        if (len(list(module.children())) > 0 or isinstance(module, containers)
                or isinstance(module, (nn.Conv2d, nn.Linear, nn.ReLU) + _PASSTHROUGH)):
            continue
        kind = type(module).__name__
        what = "activation" if "activation" in type(module).__module__ else "layer type"
        raise FlowError(f"model: layer {name!r} is {kind}, an unsupported {what}; trimflow quantizes Conv2d, "
                        f"Linear, BatchNorm, Flatten, MaxPool2d and the activation {_SUPPORTED_ACTS} only. "
                        "Replace it (and retrain the float model) before quantizing.")


def _check_bipolar_padding(net: nn.Module, names: list[str]) -> None:
    # FINN stores bipolar values as bits (0 -> -1), so it pads a bipolar feature map with -1 where PyTorch pads 0:
    # the hardware would compute a different function at the borders.
    padded = [n for n in names if isinstance(m := net.get_submodule(n), nn.Conv2d) and any(
        p != 0 for p in (m.padding if isinstance(m.padding, tuple) else (m.padding,)))]
    if padded:
        raise FlowError(f"quantize: act_bits=1 (bipolar activations) cannot feed zero-padded convolutions "
                        f"({', '.join(padded)}): FINN pads bipolar maps with -1, not 0. Use act_bits >= 2, "
                        "or a model whose convolutions after the first use padding=0.")


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


def _quant_conv(conv: nn.Conv2d, wq: dict[str, Any]) -> QuantConv2d:
    q = QuantConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                    padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                    padding_mode=conv.padding_mode, bias_quant=None, **wq)
    _copy_params(conv, q)
    return q


def _quant_linear(lin: nn.Linear, wq: dict[str, Any]) -> QuantLinear:
    q = QuantLinear(lin.in_features, lin.out_features, bias=lin.bias is not None, bias_quant=None, **wq)
    _copy_params(lin, q)
    return q


def _copy_params(src: nn.Module, dst: nn.Module) -> None:
    with torch.no_grad():
        dst.weight.copy_(src.weight)
        if src.bias is not None:
            dst.bias.copy_(src.bias)


def convert_model(float_model: nn.Module, cfg: QuantConfig) -> QuantNet:
    """Brevitas copy of `float_model`: Conv2d/Linear/ReLU replaced, BatchNorm and everything else carried over."""
    _check_supported(float_model)
    net = copy.deepcopy(float_model).cpu().eval()
    gm = _trace(net)
    _check_batchnorm_placement(gm)
    order = _execution_order(net, gm)
    weighted = [n for n in order if isinstance(net.get_submodule(n), (nn.Conv2d, nn.Linear))]
    if not weighted:
        raise FlowError("model: no Conv2d or Linear layer to quantize")
    if cfg.act_bits == 1:
        _check_bipolar_padding(net, weighted[1:])
    # After the graph checks: the trace is modified here, and fx cannot trace through the brevitas modules.
    net = _quantize_residual_joins(net, gm, cfg)
    for name in weighted:
        module = net.get_submodule(name)
        if name == weighted[0]:
            bits = cfg.first_layer_weight_bits
        elif name == weighted[-1]:
            bits = cfg.last_layer_weight_bits
        else:
            bits = cfg.weight_bits
        wq = _weight_quant(bits, cfg.per_channel_weights, cfg.scale_init)
        _set_module(net, name, _quant_conv(module, wq) if isinstance(module, nn.Conv2d) else _quant_linear(module, wq))
    for name, module in list(net.named_modules()):
        if isinstance(module, nn.ReLU):
            _set_module(net, name, _quant_act(cfg.act_bits, cfg.scale_init))
    input_quant = QuantIdentity(act_quant=InputQuant, bit_width=cfg.input_bits)
    model = QuantNet(input_quant, net).eval()
    with torch.no_grad():
        # Learned weight scales are initialised from the weights on first use; do it now, from the float weights,
        # so the scale is part of the state (checkpoints) before calibration or training touch anything.
        for module in model.modules():
            if isinstance(module, (QuantConv2d, QuantLinear)):
                module.quant_weight()
    return model


def _batches(data: ImageSet, count: int, batch_size: int, seed: int):
    loader = make_loader(data, batch_size, shuffle=True, seed=seed, augment=False)
    for i, (x, _) in enumerate(loader):
        if i >= count:
            break
        yield x


@torch.no_grad()
def calibrate_activations(model: QuantNet, data: ImageSet, batches: int, batch_size: int = 128,
                          seed: int = 0) -> None:
    """Set every activation scale from the float activation statistics of a few batches (brevitas calibration)."""
    model.eval()
    with calibration_mode(model):
        for x in tqdm(_batches(data, batches, batch_size, seed), total=batches, desc="calibrate", leave=False):
            model(x)
    model.eval()


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, data: ImageSet, batches: int, batch_size: int = 128,
                          seed: int = 0) -> None:
    """Re-estimate BN running statistics under quantized weights (cumulative average over `batches` batches)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    model.eval()
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()  # only the BN layers: activation quantizers must not collect statistics here
    try:
        for x in tqdm(_batches(data, batches, batch_size, seed), total=batches, desc="bn-recal", leave=False):
            model(x)
    finally:
        for m, momentum in zip(bns, saved):
            m.momentum = momentum
        model.eval()


def quantize_model(float_model: nn.Module, train_set: ImageSet, cfg: QuantConfig,
                   teacher: nn.Module | None = None, progress: bool = True) -> QuantNet:
    """Convert, calibrate, optionally re-estimate BN, then quantization-aware fine-tuning with trimflow.train."""
    seed_everything(cfg.train.seed)
    model = convert_model(float_model, cfg)
    if cfg.calibration_batches:
        calibrate_activations(model, train_set, cfg.calibration_batches, cfg.calibration_batch_size, cfg.train.seed)
    if cfg.bn_recalibration_batches:
        recalibrate_batchnorm(model, train_set, cfg.bn_recalibration_batches, cfg.calibration_batch_size,
                              cfg.train.seed)
    train(model, train_set, qat_train_config(cfg), teacher=teacher, desc="qat", progress=progress)
    return model.eval()


def qat_train_config(cfg: QuantConfig) -> TrainConfig:
    """cfg.train, with low_bit_lr as the learning rate when any weight or activation grid has <= 2 bits."""
    low = min(cfg.weight_bits, cfg.act_bits) <= 2
    return dataclasses.replace(cfg.train, lr=cfg.low_bit_lr) if low and cfg.low_bit_lr is not None else cfg.train


def float_shapes(float_model: nn.Module) -> dict[str, list[int]]:
    """Shapes of the float model's tensors: what a quant checkpoint needs to rebuild a trimmed net."""
    return {k: list(v.shape) for k, v in float_model.state_dict().items()}


def save_quant_checkpoint(path: str | os.PathLike, quant_model: QuantNet, float_arch: dict[str, Any],
                          float_shapes: dict[str, list[int]], cfg: QuantConfig,
                          meta: dict[str, Any] | None = None) -> None:
    write_payload(path, {"format": FORMAT, "arch": float_arch, "float_shapes": float_shapes,
                         "quant_config": cfg, "meta": meta or {}}, quant_model)


def read_quant_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    return read_payload(path, FORMAT, "quantized checkpoint", "run the quantize stage first")


def load_quant_checkpoint(path: str | os.PathLike) -> QuantNet:
    """Rebuild the float net from its arch (resized to the stored, possibly trimmed, shapes), convert, load."""
    payload = read_quant_checkpoint(path)
    arch = payload["arch"]
    cfg = from_dict(QuantConfig, payload["quant_config"], where=f"{path}: quant_config")
    float_model = build_model(arch["name"], **arch.get("kwargs", {}))
    resize_to_state(float_model, {k: torch.empty(s) for k, s in payload["float_shapes"].items()})
    model = convert_model(float_model, cfg)
    try:
        # Not load_state_strict: brevitas adds a calibrated scale's parameter to the state only once statistics
        # were collected, so a fresh model lacks keys that brevitas' own strict loading accepts.
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as e:
        raise FlowError(f"quantized checkpoint {path} does not match its own arch/config ({e}); "
                        "re-run the quantize stage") from None
    return model.eval()
