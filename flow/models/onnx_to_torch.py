"""Float ONNX → an nn.Module that torch.fx can trace, so imported networks go through relevance and trimming.

The converter does not emit Python code: it turns the ONNX graph into a *spec* — plain lists and dicts naming
torch modules (Conv2d, BatchNorm2d, Linear, ...) and the steps that wire them (call a module, add, concatenate) —
and `GraphNet(spec)` builds the module from it. The spec is JSON-able, so a checkpoint stores it as its arch record
{"name": "graph", "kwargs": {"spec": ...}} and `trimflow.models.load_checkpoint` rebuilds the network without the
original ONNX file; a trimmed checkpoint still loads because the forward only calls modules by name and
`resize_to_state` swaps those modules for narrower ones.

What the converter simplifies on the way (all exact in float):
- subgraphs that only read constants (e.g. a Reshape of a weight initializer) are evaluated with numpy;
- an Add of a per-channel constant right after a Conv, or of a vector after MatMul/Gemm, becomes that layer's bias;
- a Reshape to (batch, -1) or (batch, C*H*W) becomes nn.Flatten (whatever batch size the ONNX file hard-codes);
- ReduceMean over H and W (how torch exports `x.mean((2, 3))`) becomes AdaptiveAvgPool2d(1);
- Dropout and Identity vanish.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trimflow import FlowError

SUPPORTED_OPS = ("Conv", "BatchNormalization", "Relu", "MaxPool", "AveragePool", "GlobalAveragePool", "Gemm",
                 "MatMul", "Add", "ReduceMean", "Flatten", "Reshape", "Concat", "Dropout", "Identity", "Constant")

# Module types a spec may name, with how GraphNet builds each from the spec's keyword arguments.
_MODULE_TYPES: dict[str, type[nn.Module]] = {
    "Conv2d": nn.Conv2d, "BatchNorm2d": nn.BatchNorm2d, "ReLU": nn.ReLU, "MaxPool2d": nn.MaxPool2d,
    "AvgPool2d": nn.AvgPool2d, "AdaptiveAvgPool2d": nn.AdaptiveAvgPool2d, "Linear": nn.Linear,
    "Flatten": nn.Flatten,
}


class GraphNet(nn.Module):
    """A feed-forward DAG of torch modules described by a spec (see the module docstring).

    spec = {"input": name, "input_shape": [C, H, W], "output": name,
            "modules": [[module_name, type_name, kwargs], ...],
            "steps": [["call", module_name, [input], output] | ["add", None, [a, b], output]
                      | ["cat", None, [a, b, ...], output], ...]}
    The loop in forward is over static Python data, so torch.fx unrolls it into a flat graph of module calls,
    `operator.add` and `torch.cat`.
    """

    def __init__(self, spec: dict[str, Any]):
        super().__init__()
        self.spec = spec
        for name, type_name, kwargs in spec["modules"]:
            if type_name not in _MODULE_TYPES:
                raise FlowError(f"graph spec: module {name!r} has unknown type {type_name!r}")
            self.add_module(name, _MODULE_TYPES[type_name](**kwargs))
        self._steps = [tuple(s) for s in spec["steps"]]
        self._input = spec["input"]
        self._output = spec["output"]

    def forward(self, x):
        env = {self._input: x}
        for op, target, inputs, output in self._steps:
            if op == "call":
                env[output] = getattr(self, target)(env[inputs[0]])
            elif op == "add":
                env[output] = env[inputs[0]] + env[inputs[1]]
            else:  # cat along channels
                env[output] = torch.cat([env[i] for i in inputs], 1)
        return env[self._output]


def build_graph_net(spec: dict[str, Any]) -> GraphNet:
    """The registry's constructor for arch {"name": "graph", "kwargs": {"spec": ...}}."""
    return GraphNet(spec)


def onnx_to_torch(path: str | Path) -> tuple[GraphNet, dict[str, Any]]:
    """Convert the float ONNX model at `path`; returns (module in eval mode with the ONNX weights, its spec).

    The module computes exactly what the ONNX graph computes, on the same input range; folding an input scaling
    (e.g. a net trained on 0..255 pixels) into the first layer is `trimflow.models.importers.fold_input_normalization`.
    """
    import onnx

    path = Path(path)
    if not path.exists():
        raise FlowError(f"ONNX model {path} does not exist")
    try:
        model = onnx.load(str(path))
    except Exception as e:
        raise FlowError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    conv = _Converter(model, str(path))
    spec, state = conv.run()
    net = GraphNet(spec)
    own = net.state_dict()
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise FlowError(f"{path}: tensor for {k} has shape {tuple(v.shape)}, layer needs {tuple(own[k].shape)}")
    net.load_state_dict({**own, **state})
    net.eval()
    return net, spec


class _Converter:
    def __init__(self, model, where: str):
        from onnx import numpy_helper

        self.where = where
        self.graph = model.graph
        self.consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in self.graph.initializer}
        self.modules: list[list[Any]] = []
        self.steps: list[list[Any]] = []
        self.state: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.alias: dict[str, str] = {}  # ONNX value → the value that carries it after a removed node
        self.shapes: dict[str, tuple[int, ...]] = {}  # value → shape of the dummy batch-1 forward
        self.probe: dict[str, torch.Tensor] = {}

    # -- helpers -------------------------------------------------------------------------------------------
    def fail(self, node, msg: str) -> FlowError:
        return FlowError(f"{self.where}: node {node.name or node.output[0]!r} ({node.op_type}): {msg}")

    def attrs(self, node) -> dict[str, Any]:
        import onnx
        out = {}
        for a in node.attribute:
            v = onnx.helper.get_attribute_value(a)
            out[a.name] = v.decode() if isinstance(v, bytes) else v
        return out

    def value(self, name: str) -> str:
        while name in self.alias:
            name = self.alias[name]
        return name

    def add_module(self, kind: str, type_name: str, kwargs: dict[str, Any], params: dict[str, np.ndarray],
                   src: str, out: str) -> str:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        name = f"{kind}{self.counts[kind]}"
        self.modules.append([name, type_name, kwargs])
        for p, arr in params.items():
            self.state[f"{name}.{p}"] = torch.from_numpy(np.array(arr, dtype=np.float32))
        module = _MODULE_TYPES[type_name](**kwargs)
        module.load_state_dict({**module.state_dict(), **{p: self.state[f"{name}.{p}"] for p in params}})
        self.emit(["call", name, [src], out], module)
        return name

    def emit(self, step: list[Any], fn) -> None:
        # Running a batch-1 probe through each new step gives every value's shape (needed to recognise a
        # flattening Reshape) and catches layer/weight mismatches at the node that causes them.
        with torch.no_grad():
            args = [self.probe[i] for i in step[2]]
            if step[0] == "call":
                fn.eval()
                out = fn(args[0])
            elif step[0] == "add":
                out = args[0] + args[1]
            else:
                out = torch.cat(args, 1)
        self.probe[step[3]] = out
        self.shapes[step[3]] = tuple(out.shape)
        self.steps.append(step)

    def consumers(self, name: str) -> list:
        return [n for n in self.graph.node if name in n.input]

    # -- conversion -----------------------------------------------------------------------------------------
    def run(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        inputs = [i for i in self.graph.input if i.name not in self.consts]
        if len(inputs) != 1 or len(self.graph.output) != 1:
            raise FlowError(f"{self.where}: expected one image input and one output, found inputs "
                            f"{[i.name for i in inputs]} and outputs {[o.name for o in self.graph.output]}")
        dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
        if len(dims) != 4 or not all(dims[1:]):
            raise FlowError(f"{self.where}: input {inputs[0].name!r} has shape {dims}; expected N x C x H x W "
                            "with fixed C, H, W")
        in_name = inputs[0].name
        self.probe[in_name] = torch.zeros(1, *dims[1:])
        self.shapes[in_name] = (1, *dims[1:])
        unsupported = [(n.name or n.output[0], n.op_type) for n in self.graph.node if n.op_type not in SUPPORTED_OPS]
        if unsupported:
            name, op = unsupported[0]
            raise FlowError(f"{self.where}: node {name!r} has op {op!r}, which the ONNX importer does not "
                            f"support (unsupported nodes: {', '.join(f'{n} ({o})' for n, o in unsupported)}); "
                            f"supported ops: {', '.join(SUPPORTED_OPS)}")
        skip: set[int] = set()
        nodes = list(self.graph.node)
        for idx, node in enumerate(nodes):
            if idx in skip:
                continue
            if node.op_type == "Constant":
                self.consts[node.output[0]] = self.constant_attr(node)
            elif all(i in self.consts for i in node.input if i):
                self.consts[node.output[0]] = self.fold(node)
            else:
                skip |= self.convert(node, nodes, idx)
        out = self.value(self.graph.output[0].name)
        if out not in self.shapes:
            raise FlowError(f"{self.where}: output {self.graph.output[0].name!r} is not computed from the input")
        spec = {"input": in_name, "input_shape": dims[1:], "output": out, "modules": self.modules,
                "steps": self.steps}
        return spec, self.state

    def constant_attr(self, node) -> np.ndarray:
        from onnx import numpy_helper
        a = self.attrs(node)
        if "value" in a:
            return numpy_helper.to_array(a["value"])
        for k in ("value_float", "value_int"):
            if k in a:
                return np.array(a[k])
        for k in ("value_floats", "value_ints"):
            if k in a:
                return np.array(a[k])
        raise self.fail(node, "unsupported Constant attribute")

    def fold(self, node) -> np.ndarray:
        args = [self.consts[i] for i in node.input if i]
        op = node.op_type
        if op == "Reshape":
            shape = [int(s) if s != 0 else args[0].shape[i] for i, s in enumerate(args[1])]
            return args[0].reshape(shape)
        if op in ("Identity", "Dropout"):
            return args[0]
        if op == "Add":
            return args[0] + args[1]
        if op == "MatMul":
            return args[0] @ args[1]
        if op == "Flatten":
            axis = self.attrs(node).get("axis", 1)
            return args[0].reshape(int(np.prod(args[0].shape[:axis])), -1)
        if op == "Concat":
            return np.concatenate(args, axis=self.attrs(node)["axis"])
        raise self.fail(node, "computes on constants only; this op cannot be evaluated at import")

    def convert(self, node, nodes, idx) -> set[int]:
        op = node.op_type
        a = self.attrs(node)
        x = self.value(node.input[0])
        if op == "Add" and x not in self.shapes:  # constant + tensor: look at the other operand
            x = self.value(node.input[1])
        if x not in self.shapes:
            raise self.fail(node, f"input {node.input[0]!r} is neither computed nor a constant")
        out = node.output[0]
        if op in ("Identity", "Dropout"):
            self.alias[out] = x
        elif op == "Conv":
            return self.conv(node, a, x, out, nodes, idx)
        elif op == "BatchNormalization":
            scale, bias, mean, var = (self.const_input(node, i) for i in range(1, 5))
            self.add_module("bn", "BatchNorm2d", {"num_features": int(scale.shape[0]),
                                                  "eps": float(a.get("epsilon", 1e-5))},
                            {"weight": scale, "bias": bias, "running_mean": mean, "running_var": var}, x, out)
        elif op == "Relu":
            self.add_module("relu", "ReLU", {}, {}, x, out)
        elif op in ("MaxPool", "AveragePool"):
            k = list(a["kernel_shape"])
            strides = list(a.get("strides", [1, 1]))  # ONNX's default stride is 1, torch's is the kernel size
            pad = self.symmetric_pads(node, a, k, self.shapes[x][2:], strides)
            kwargs = {"kernel_size": k, "stride": strides, "padding": pad,
                      "ceil_mode": bool(a.get("ceil_mode", 0))}
            if op == "MaxPool":
                if any(d != 1 for d in a.get("dilations", [1, 1])) or len(node.output) > 1 and node.output[1]:
                    raise self.fail(node, "dilated MaxPool or MaxPool indices output is not supported")
                self.add_module("pool", "MaxPool2d", kwargs, {}, x, out)
            else:
                kwargs["count_include_pad"] = bool(a.get("count_include_pad", 0))
                self.add_module("pool", "AvgPool2d", kwargs, {}, x, out)
        elif op == "GlobalAveragePool":
            self.add_module("pool", "AdaptiveAvgPool2d", {"output_size": 1}, {}, x, out)
        elif op == "ReduceMean":  # a global average pool written as a mean over H and W
            axes = a.get("axes")
            if axes is None and len(node.input) > 1 and node.input[1]:
                axes = self.const_input(node, 1).tolist()
            rank = len(self.shapes[x])
            if rank != 4 or sorted(ax % rank for ax in (axes or [])) != [2, 3]:
                raise self.fail(node, f"ReduceMean over axes {axes} of a rank-{rank} tensor; only the mean over "
                                      "H and W of N x C x H x W is supported")
            if a.get("keepdims", 1):
                self.add_module("pool", "AdaptiveAvgPool2d", {"output_size": 1}, {}, x, out)
            else:
                pooled = out + "__pooled"
                self.add_module("pool", "AdaptiveAvgPool2d", {"output_size": 1}, {}, x, pooled)
                self.add_module("flatten", "Flatten", {}, {}, pooled, out)
        elif op == "Flatten":
            if a.get("axis", 1) != 1:
                raise self.fail(node, f"Flatten axis {a['axis']} (only axis 1 is supported)")
            self.add_module("flatten", "Flatten", {}, {}, x, out)
        elif op == "Reshape":
            shape = [int(s) for s in self.const_input(node, 1)]
            features = math.prod(self.shapes[x][1:])
            if len(shape) != 2 or shape[1] not in (-1, features) or shape[0] not in (-1, 0, 1):
                raise self.fail(node, f"Reshape to {shape} of a {list(self.shapes[x])} tensor; only the flatten "
                                      "kind (batch, -1) is supported")
            if len(self.shapes[x]) == 2:
                self.alias[out] = x
            else:
                self.add_module("flatten", "Flatten", {}, {}, x, out)
        elif op == "Gemm":
            if a.get("transA", 0):
                raise self.fail(node, "Gemm with transA=1 is not supported")
            w = self.const_input(node, 1) * a.get("alpha", 1.0)
            w = w if a.get("transB", 0) else w.T
            bias = self.const_input(node, 2) * a.get("beta", 1.0) if len(node.input) > 2 and node.input[2] else None
            return self.linear(node, w, bias, x, out, nodes, idx)
        elif op == "MatMul":
            w = self.const_input(node, 1)
            if w.ndim != 2:
                raise self.fail(node, f"MatMul with a {w.ndim}-d weight; only 2-d weights are supported")
            return self.linear(node, w.T, None, x, out, nodes, idx)
        elif op == "Add":
            other = node.input[1] if self.value(node.input[0]) == x else node.input[0]
            if other in self.consts or self.value(other) not in self.shapes:
                raise self.fail(node, "Add of a constant is only supported as the bias right after Conv/MatMul/Gemm")
            y = self.value(other)
            if self.shapes[x] != self.shapes[y]:
                raise self.fail(node, f"Add of shapes {self.shapes[x]} and {self.shapes[y]} (broadcasting "
                                      "residual adds are not supported)")
            self.emit(["add", None, [x, y], out], None)
        elif op == "Concat":
            ins = [self.value(i) for i in node.input]
            if a.get("axis") != 1 or any(i not in self.shapes for i in ins):
                raise self.fail(node, "only Concat of computed tensors along axis 1 (channels) is supported")
            self.emit(["cat", None, ins, out], None)
        return set()

    def const_input(self, node, i: int) -> np.ndarray:
        name = node.input[i]
        if name not in self.consts:
            raise self.fail(node, f"input {i} ({name!r}) must be a constant (initializer)")
        return self.consts[name]

    def symmetric_pads(self, node, a, kernel, in_hw, strides) -> list[int]:
        auto = a.get("auto_pad", "NOTSET")
        dil = a.get("dilations", [1, 1])
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            pads = []
            for size, k, s, d in zip(in_hw, kernel, strides, dil):
                total = max(0, (math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size)
                if total % 2:
                    raise self.fail(node, f"auto_pad {auto} needs asymmetric padding ({total} pixels); not "
                                          "supported")
                pads.append(total // 2)
            return pads
        if auto == "VALID":
            return [0, 0]
        p = list(a.get("pads", [0, 0, 0, 0]))
        if p[:2] != p[2:]:
            raise self.fail(node, f"asymmetric pads {p} are not supported")
        return p[:2]

    def bias_add(self, nodes, idx, out: str, channels: int, conv: bool) -> tuple[np.ndarray | None, str, set[int]]:
        # An Add of a constant that is the only consumer of a Conv/MatMul output is that layer's bias.
        users = self.consumers(out)
        if len(users) == 1 and users[0].op_type == "Add":
            add = users[0]
            other = add.input[1] if add.input[0] == out else add.input[0]
            if other in self.consts:
                b = np.asarray(self.consts[other], dtype=np.float32)
                fits = ((channels,), (channels, 1, 1), (1, channels, 1, 1)) if conv else ((channels,), (1, channels))
                if b.shape in fits:
                    return b.reshape(channels), add.output[0], {nodes.index(add)}
        return None, out, set()

    def conv(self, node, a, x, out, nodes, idx) -> set[int]:
        w = self.const_input(node, 1)
        if w.ndim != 4:
            raise self.fail(node, f"only 2-d convolutions are supported (weight has {w.ndim} dims)")
        k = list(w.shape[2:])
        strides = list(a.get("strides", [1, 1]))
        pad = self.symmetric_pads(node, a, k, self.shapes[x][2:], strides)
        bias = self.const_input(node, 2) if len(node.input) > 2 and node.input[2] else None
        skip: set[int] = set()
        if bias is None:
            bias, out, skip = self.bias_add(nodes, idx, out, w.shape[0], conv=True)
        groups = int(a.get("group", 1))
        kwargs = {"in_channels": int(w.shape[1]) * groups, "out_channels": int(w.shape[0]), "kernel_size": k,
                  "stride": strides, "padding": pad, "dilation": list(a.get("dilations", [1, 1])),
                  "groups": groups, "bias": bias is not None}
        params = {"weight": w} if bias is None else {"weight": w, "bias": bias}
        try:
            self.add_module("conv", "Conv2d", kwargs, params, x, out)
        except RuntimeError as e:
            raise self.fail(node, f"weight {node.input[1]!r} {tuple(w.shape)} does not fit the input "
                                  f"{self.shapes[x]}: {e}") from None
        return skip

    def linear(self, node, w, bias, x, out, nodes, idx) -> set[int]:
        if len(self.shapes[x]) != 2:
            raise self.fail(node, f"matrix product on a {len(self.shapes[x])}-d tensor; flatten first")
        skip: set[int] = set()
        if bias is None:
            bias, out, skip = self.bias_add(nodes, idx, out, w.shape[0], conv=False)
        if w.shape[1] != self.shapes[x][1]:
            raise self.fail(node, f"weight {node.input[1]!r} expects {w.shape[1]} features, input has "
                                  f"{self.shapes[x][1]}")
        if bias is not None:
            bias = np.asarray(bias, dtype=np.float32)
            if bias.size not in (1, w.shape[0]):
                raise self.fail(node, f"bias of shape {bias.shape} for {w.shape[0]} outputs")
            bias = np.broadcast_to(bias.reshape(-1), (w.shape[0],))
        kwargs = {"in_features": int(w.shape[1]), "out_features": int(w.shape[0]), "bias": bias is not None}
        params = {"weight": w} if bias is None else {"weight": w, "bias": bias}
        self.add_module("fc", "Linear", kwargs, params, x, out)
        return skip

