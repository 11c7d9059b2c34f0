"""Channel-dependency graph of a CNN, found by tracing it with torch.fx.

Removing kernel c of a conv/linear layer is only valid if every tensor that carries channel c loses it too: the BN
that follows, the inputs of the layers that read it, the other operand of a residual add, the slice of a
concatenation. This module traces the model, gives every tensor's channel dimension a *layout* (an ordered list of
segments, each a run of channels from one channel group, times the features per channel after a flatten) and merges
groups that elementwise ops couple. The result says, per group, which module slices it where; trim.py uses it to
cut modules and graph.cost() to price a choice of kept counts without building the model.

Channel groups that reach the model's input or output are frozen: the image channels and the logits are never
trimmed. Ops whose channel semantics we do not know are an error naming the node, never a silent guess.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import sys
from typing import Any, Callable

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from trimflow import FlowError

# Modules and functions that act on each channel independently and keep the channel count.
_ACT_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.GELU, nn.SiLU, nn.ELU,
                nn.Hardswish, nn.Mish)
_PASS_MODULES = _ACT_MODULES + (nn.Identity, nn.Dropout, nn.Dropout2d, nn.MaxPool2d, nn.AvgPool2d,
                                nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_ACT_FUNCTIONS = {torch.relu, nn.functional.relu, nn.functional.relu6, nn.functional.leaky_relu,
                  nn.functional.hardtanh, torch.sigmoid, torch.tanh, nn.functional.gelu, nn.functional.silu,
                  nn.functional.elu, nn.functional.hardswish}
_PASS_FUNCTIONS = _ACT_FUNCTIONS | {nn.functional.dropout, nn.functional.max_pool2d, nn.functional.avg_pool2d,
                                    nn.functional.adaptive_avg_pool2d, nn.functional.adaptive_max_pool2d}
_ACT_METHODS = {"relu", "sigmoid", "tanh"}
_PASS_METHODS = _ACT_METHODS | {"contiguous", "clone"}
_ELEMENTWISE = {operator.add, operator.sub, operator.mul, torch.add, torch.sub, torch.mul}
_ELEMENTWISE_METHODS = {"add", "sub", "mul"}
_CAT = {torch.cat, torch.concat}
_SLICED = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm)  # modules trimming cuts


def _activation_types() -> tuple[type, ...]:
    # Brevitas activations are channel-wise too; they matter once relevance is read on a quantized model. A model
    # with Brevitas layers has imported it already, so a float model never pays for importing it (seconds).
    qnn = sys.modules.get("brevitas.nn")
    if qnn is None:
        return _ACT_MODULES
    return _ACT_MODULES + (qnn.QuantReLU, qnn.QuantHardTanh, qnn.QuantIdentity)


@dataclasses.dataclass
class Segment:
    group: int
    size: int  # channels of the group in this segment (always the whole group)
    spatial: int = 1  # features per channel once flattened


@dataclasses.dataclass
class ModuleUse:
    """How one conv/linear/BN module's tensors are indexed by channel groups."""

    name: str
    kind: str  # conv | depthwise | linear | bn
    node: str
    inputs: list[Segment]  # layout of the input's channel/feature dim
    out_group: int | None  # conv/linear: the group of its output channels; None for depthwise/bn (same as input)
    kernel: int = 1  # weights per (out, in) pair: kh*kw for convs
    out_spatial: int = 1  # output positions per image, for MACs
    bn_after: str | None = None  # a BN that directly and only follows this conv/linear


@dataclasses.dataclass
class Tap:
    """Where a producer's activation is read: the output of `module`, then the functional ops `fns`."""

    module: str
    fns: tuple[Callable, ...] = ()

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        for fn in self.fns:
            x = fn(x)
        return x


@dataclasses.dataclass
class ChannelGroup:
    id: int
    size: int
    producers: list[str]  # modules whose output channels are this group (several across a residual add)
    frozen: str | None = None  # why it cannot be trimmed, or None

    @property
    def name(self) -> str:
        return self.producers[0] if self.producers else f"group{self.id}"


class ChannelGraph:
    def __init__(self, model: nn.Module, input_shape: tuple[int, ...]):
        self.input_shape = tuple(int(s) for s in input_shape)
        self.gm = trace(model)
        try:
            ShapeProp(self.gm).propagate(example_input(model, self.input_shape))
        except Exception as e:
            raise FlowError(f"the model does not run on inputs of shape {self.input_shape} "
                            f"({type(e).__name__}: {e})") from None
        self._parent: dict[int, int] = {}
        self._groups: dict[int, ChannelGroup] = {}
        self.uses: dict[str, ModuleUse] = {}
        self.pre_taps: dict[str, Tap] = {}
        self.post_taps: dict[str, Tap] = {}
        self._walk()
        self._find_taps()

    # --- union-find over channel groups -------------------------------------------------------------------------
    def _new_group(self, size: int, producer: str | None = None, frozen: str | None = None) -> int:
        gid = len(self._parent)
        self._parent[gid] = gid
        self._groups[gid] = ChannelGroup(gid, size, [producer] if producer else [], frozen)
        return gid

    def find(self, gid: int) -> int:
        while self._parent[gid] != gid:
            self._parent[gid] = self._parent[self._parent[gid]]
            gid = self._parent[gid]
        return gid

    def _union(self, a: int, b: int, node: torch.fx.Node) -> None:
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        ga, gb = self._groups[a], self._groups[b]
        if ga.size != gb.size:
            raise FlowError(f"node {node.name!r}: couples {ga.size} channels with {gb.size}")
        self._parent[b] = a
        ga.producers += gb.producers
        ga.frozen = ga.frozen or gb.frozen
        del self._groups[b]

    def _freeze(self, layout: list[Segment], why: str) -> None:
        for seg in layout:
            g = self._groups[self.find(seg.group)]
            g.frozen = g.frozen or why

    @property
    def groups(self) -> list[ChannelGroup]:
        return [self._groups[k] for k in sorted(self._groups)]

    def group(self, gid: int) -> ChannelGroup:
        return self._groups[self.find(gid)]

    def prunable(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.frozen is None and g.producers]

    # --- tracing ------------------------------------------------------------------------------------------------
    def _walk(self) -> None:
        layouts: dict[torch.fx.Node, list[Segment] | None] = {}
        calls: dict[str, str] = {}
        act_types = _activation_types()
        for node in self.gm.graph.nodes:
            shape = _shape(node)
            if node.op == "placeholder":
                layouts[node] = ([Segment(self._new_group(shape[1], frozen="model input"), shape[1])]
                                 if shape is not None and len(shape) >= 2 else None)
            elif node.op == "get_attr":
                layouts[node] = None
            elif node.op == "output":
                for arg in _flat_nodes(node.args):
                    if layouts.get(arg):
                        self._freeze(layouts[arg], "model output")
            elif node.op == "call_module":
                module = self.gm.get_submodule(node.target)
                if node.target in calls and isinstance(module, _SLICED):
                    raise FlowError(f"module {node.target!r} is called more than once (nodes {calls[node.target]!r} "
                                    f"and {node.name!r}); trimming shared weight layers is not supported")
                calls.setdefault(node.target, node.name)
                layouts[node] = self._module(node, module, self._layout(node, layouts), act_types)
            elif node.op in ("call_function", "call_method"):
                layouts[node] = self._function(node, layouts)
            else:
                raise FlowError(f"node {node.name!r}: unsupported fx op {node.op!r}")
        nodes = {n.name: n for n in self.gm.graph.nodes}
        for use in self.uses.values():
            users = list(nodes[use.node].users)
            if use.kind in ("conv", "linear") and len(users) == 1 and users[0].op == "call_module" \
                    and isinstance(self.gm.get_submodule(users[0].target), nn.modules.batchnorm._BatchNorm):
                use.bn_after = users[0].target

    def _layout(self, node: torch.fx.Node, layouts) -> list[Segment]:
        src = node.args[0] if node.args else None
        lay = layouts.get(src) if isinstance(src, torch.fx.Node) else None
        if lay is None:
            raise FlowError(f"node {node.name!r}: its input is not a traced activation tensor")
        return lay

    def _module(self, node, module, lay, act_types) -> list[Segment]:
        name = node.target
        out_shape = _shape(node)
        if isinstance(module, nn.modules.conv._ConvNd):
            if isinstance(module, nn.modules.conv._ConvTransposeNd):
                raise FlowError(f"node {node.name!r}: transposed convolution ({type(module).__name__}) "
                                "is not supported by trimming")
            kernel = int(torch.tensor(module.kernel_size).prod())
            spatial = int(torch.tensor(out_shape[2:]).prod()) if out_shape is not None else 1
            cin, cout, groups = module.in_channels, module.out_channels, module.groups
            if groups == 1:
                gid = self._new_group(cout, producer=name)
                self.uses[name] = ModuleUse(name, "conv", node.name, lay, gid, kernel, spatial)
                return [Segment(gid, cout)]
            if groups == cin == cout:  # depthwise: output channel c is input channel c filtered
                self.uses[name] = ModuleUse(name, "depthwise", node.name, lay, None, kernel, spatial)
                return lay
            # Grouped convs would need the same count removed from every group; keep them whole.
            why = f"grouped conv {name} (groups={groups})"
            self._freeze(lay, why)
            gid = self._new_group(cout, producer=name, frozen=why)
            self.uses[name] = ModuleUse(name, "conv", node.name, lay, gid, kernel, spatial)
            return [Segment(gid, cout)]
        if isinstance(module, nn.Linear):
            if out_shape is None or len(out_shape) != 2:
                raise FlowError(f"node {node.name!r}: Linear {name} on a tensor of shape {out_shape} "
                                "(only (batch, features) inputs are supported)")
            gid = self._new_group(module.out_features, producer=name)
            self.uses[name] = ModuleUse(name, "linear", node.name, lay, gid, 1, 1)
            return [Segment(gid, module.out_features)]
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            self.uses[name] = ModuleUse(name, "bn", node.name, lay, None)
            return lay
        if isinstance(module, nn.Flatten):
            return self._flatten(node, lay, module.start_dim, module.end_dim)
        if isinstance(module, _PASS_MODULES + act_types):
            return lay
        raise FlowError(f"node {node.name!r}: module {name} ({type(module).__name__}) has no known channel "
                        "semantics; trimming supports Conv, Linear, BatchNorm, activations, pooling, Flatten, "
                        "add/mul and cat")

    def _function(self, node, layouts) -> list[Segment] | None:
        target = node.target
        tensor_out = _shape(node) is not None
        if not tensor_out:  # x.size(0) and the like: no channel dim to track
            return None
        is_method = node.op == "call_method"
        if (target in _PASS_FUNCTIONS and not is_method) or (is_method and target in _PASS_METHODS):
            return self._layout(node, layouts)
        if (not is_method and target in _ELEMENTWISE) or (is_method and target in _ELEMENTWISE_METHODS):
            return self._elementwise(node, layouts)
        if not is_method and target in _CAT:
            return self._cat(node, layouts)
        if (not is_method and target is torch.flatten) or (is_method and target == "flatten"):
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            return self._flatten(node, self._layout(node, layouts), start, end)
        if is_method and target in ("view", "reshape") or target is torch.reshape:
            src = node.args[0]
            in_shape, out_shape = _shape(src), _shape(node)
            if in_shape is not None and len(out_shape) == 2 and out_shape[0] == in_shape[0]:
                return self._flatten(node, self._layout(node, layouts), 1, -1)
        what = target if isinstance(target, str) else getattr(target, "__name__", str(target))
        raise FlowError(f"node {node.name!r}: operation {what!r} has no known channel semantics; trimming supports "
                        "Conv, Linear, BatchNorm, activations, pooling, flatten, add/sub/mul and cat along dim 1")

    def _flatten(self, node, lay, start, end) -> list[Segment]:
        in_shape = _shape(node.args[0])
        if start not in (1, -len(in_shape) + 1) or end not in (-1, len(in_shape) - 1):
            raise FlowError(f"node {node.name!r}: flatten(start_dim={start}, end_dim={end}) mixes the batch or "
                            "keeps several dims; only flatten from dim 1 to the end is supported")
        per_channel = int(torch.tensor(in_shape[2:]).prod()) if len(in_shape) > 2 else 1
        return [Segment(s.group, s.size, s.spatial * per_channel) for s in lay]

    def _elementwise(self, node, layouts) -> list[Segment]:
        operands = [a for a in node.args if isinstance(a, torch.fx.Node)]
        lays = []
        for a in operands:
            if layouts.get(a) is None:
                raise FlowError(f"node {node.name!r}: an operand ({a.name!r}) is not a traced activation "
                                "(a parameter or buffer); such elementwise ops are not supported by trimming")
            lays.append(layouts[a])
        base = lays[0]
        for other in lays[1:]:
            if [(s.size, s.spatial) for s in other] != [(s.size, s.spatial) for s in base]:
                raise FlowError(f"node {node.name!r}: combines tensors whose channels come from differently "
                                "shaped groups (broadcasting or a concatenation on one side only); not supported")
            for a, b in zip(base, other):
                self._union(a.group, b.group, node)
        return base

    def _cat(self, node, layouts) -> list[Segment]:
        tensors = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if dim not in (1, -len(_shape(node)) + 1):
            raise FlowError(f"node {node.name!r}: concatenation along dim {dim}; only dim 1 (channels) "
                            "is supported")
        out: list[Segment] = []
        for t in tensors:
            if not isinstance(t, torch.fx.Node) or layouts.get(t) is None:
                raise FlowError(f"node {node.name!r}: concatenates something that is not a traced activation")
            out += layouts[t]
        return out

    # --- where relevance is read --------------------------------------------------------------------------------
    def _find_taps(self) -> None:
        """For each producer: pre-activation = end of its BN chain, post-activation = after the activation."""
        act_types = _activation_types()
        for use in self.uses.values():
            if use.out_group is None:
                continue
            node = next(n for n in self.gm.graph.nodes if n.name == use.node)
            pre = post = Tap(use.name)
            while len(node.users) == 1:
                nxt = next(iter(node.users))
                mod = self.gm.get_submodule(nxt.target) if nxt.op == "call_module" else None
                if isinstance(mod, nn.modules.batchnorm._BatchNorm) and post is pre:
                    pre = post = Tap(nxt.target)
                elif isinstance(mod, act_types):
                    post = Tap(nxt.target)
                elif nxt.op == "call_function" and nxt.target in _ACT_FUNCTIONS and len(nxt.args) == 1:
                    post = Tap(post.module, post.fns + (functools.partial(nxt.target, **nxt.kwargs),))
                elif nxt.op == "call_method" and nxt.target in _ACT_METHODS and len(nxt.args) == 1:
                    post = Tap(post.module, post.fns + (operator.methodcaller(nxt.target),))
                else:
                    break
                node = nxt
            self.pre_taps[use.name], self.post_taps[use.name] = pre, post

    # --- layout helpers -----------------------------------------------------------------------------------------
    def indices(self, layout: list[Segment], keep: dict[int, torch.Tensor]) -> torch.Tensor:
        """Kept positions along a dim laid out as `layout`, given kept channels per (root) group."""
        parts, offset = [], 0
        for seg in layout:
            kept = keep.get(self.find(seg.group))
            if kept is None:
                kept = torch.arange(seg.size)
            idx = (kept[:, None] * seg.spatial + torch.arange(seg.spatial)[None, :]).reshape(-1)
            parts.append(idx + offset)
            offset += seg.size * seg.spatial
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)

    def width(self, layout: list[Segment], counts: dict[int, int]) -> int:
        return sum(counts.get(self.find(s.group), s.size) * s.spatial for s in layout)

    def cost(self, counts: dict[int, int] | None = None) -> tuple[int, int]:
        """(params, MACs) of the conv/linear/BN modules when group g keeps counts[g] channels (others all)."""
        counts = counts or {}
        params = macs = 0
        for use in self.uses.values():
            mod = self.gm.get_submodule(use.name)
            cin = self.width(use.inputs, counts)
            if use.kind == "bn":
                params += 2 * cin if mod.affine else 0
                continue
            if use.kind == "depthwise":
                cout, per_out = cin, 1
            else:
                g = self.find(use.out_group)
                cout = counts.get(g, self._groups[g].size)
                per_out = cin // getattr(mod, "groups", 1)
            weights = cout * per_out * use.kernel
            params += weights + (cout if mod.bias is not None else 0)
            macs += weights * use.out_spatial
        return params, macs

    def other_params(self, model: nn.Module) -> int:
        """Parameters outside the modules cost() prices (they do not change with trimming)."""
        priced = {id(p) for name in self.uses for p in model.get_submodule(name).parameters()}
        return sum(p.numel() for p in model.parameters() if id(p) not in priced)


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        # Subclasses of the layers we slice (e.g. Brevitas QuantConv2d) stay whole instead of being traced into.
        if isinstance(m, _SLICED):
            return True
        if isinstance(m, _activation_types()):
            return True
        return super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> torch.fx.GraphModule:
    """`model` traced with torch.fx, conv/linear/BN/activation modules kept whole (their parameters shared, not
    copied: a weight changed in `model` is the one the GraphModule runs). A model fx cannot trace is a FlowError."""
    try:
        graph = _Tracer().trace(model)
    except Exception as e:
        raise FlowError(f"cannot trace {type(model).__name__} with torch.fx ({type(e).__name__}: {e}); "
                        "data-dependent control flow in forward() is not supported by trimming") from None
    return torch.fx.GraphModule(model, graph)


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, torch.fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def example_input(model: nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor:
    p = next(model.parameters(), None)
    return torch.zeros((1, *input_shape), dtype=p.dtype if p is not None else torch.float32)


def _flat_nodes(args: Any) -> list[torch.fx.Node]:
    out: list[torch.fx.Node] = []
    torch.fx.node.map_arg(args, out.append)
    return out


def build_graph(model: nn.Module, input_shape: tuple[int, ...]) -> ChannelGraph:
    """Trace `model` for inputs of shape (C, H, W) (no batch dim) and find its channel groups."""
    was_training = model.training
    model.eval()
    try:
        return ChannelGraph(model, input_shape)
    finally:
        model.train(was_training)


def folded_weight(model: nn.Module, use: ModuleUse) -> torch.Tensor:
    """A conv/linear/depthwise layer's weights as (out, in, taps) float64 (linear: taps = 1), each output row scaled
    by the BN right after it, gamma / sqrt(running_var + eps): what the next activation sees of each input."""
    w = model.get_submodule(use.name).weight.detach().double()
    w = w.reshape(w.shape[0], w.shape[1], -1)
    if use.bn_after is not None:
        bn = model.get_submodule(use.bn_after)
        scale = torch.ones(w.shape[0], dtype=torch.float64)
        if bn.track_running_stats and bn.running_var is not None:
            scale = scale / (bn.running_var.double() + bn.eps).sqrt()
        if bn.affine:
            scale = scale * bn.weight.detach().double().abs()
        w = w * scale[:, None, None]
    return w


def count_params_macs(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(all parameters, multiply-accumulates of conv/linear layers for one image of shape `input_shape`)."""
    macs = 0

    def hook(mod, inputs, out):
        nonlocal macs
        if isinstance(mod, nn.modules.conv._ConvNd):
            macs += out[0].numel() * (mod.in_channels // mod.groups) * mod.weight[0, 0].numel()
        else:
            macs += out[0].numel() * mod.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input(model, input_shape))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return sum(p.numel() for p in model.parameters()), int(macs)
