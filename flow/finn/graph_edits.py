"""The compile stage's own edits of the FINN graph (run as builder steps) and what they record for the host.

- `integer_input`: the model takes raw integer pixels (`x / divisor` inserted, streamlining moves it into the first
  thresholds);
- `detach_tail`: the float scale/bias after the last MatMul is cut off and recorded as host-side ops;
- `prefer_impl`: every HW node prefers its RTL (or HLS) implementation when FINN specialises layers;
- `host_head`: the layout ops FINN leaves in front of the dataflow partition, recorded for the host.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trimflow import FlowError
from trimflow.finn.design import HostOp

TAIL_OPS = ("Mul", "Add", "Sub", "Div")
_COMMUTATIVE = ("Mul", "Add")



def integer_input(model: Any, divisor: float) -> Any:
    """Make the model take raw integer pixels: insert `x / divisor` and annotate the input UINT8."""
    from onnx import helper
    from qonnx.core.datatype import DataType

    inp = model.graph.input[0].name
    if model.get_tensor_datatype(inp) != DataType["FLOAT32"]:
        return model  # the exporter already declared an integer input
    scaled = model.make_new_valueinfo_name()
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name == inp:
                node.input[i] = scaled
    div_const = model.make_new_valueinfo_name()
    model.set_initializer(div_const, np.asarray(divisor, dtype=np.float32))
    model.graph.node.insert(0, helper.make_node("Div", [inp, div_const], [scaled], name="trimflow_input_div"))
    model.set_tensor_datatype(inp, DataType["UINT8"])
    return model


def detach_tail(model: Any) -> tuple[Any, list[HostOp]]:
    """Cut the chain of elementwise-with-constant ops that ends at the graph output; return them in order."""
    from onnx import helper

    tail: list[HostOp] = []
    while True:
        out = model.graph.output[0]
        node = model.find_producer(out.name)
        if node is None or node.op_type not in TAIL_OPS or len(node.input) != 2:
            break
        consts = [model.get_initializer(i) for i in node.input]
        if sum(c is not None for c in consts) != 1:
            break
        const_first = consts[0] is not None
        if const_first and node.op_type not in _COMMUTATIVE:
            tail.insert(0, HostOp(node.op_type, np.asarray(consts[0]).tolist(), const_first=True))
        else:
            tail.insert(0, HostOp(node.op_type, np.asarray(consts[0] if const_first else consts[1]).tolist()))
        dyn = node.input[1] if const_first else node.input[0]
        shape = model.get_tensor_shape(dyn)
        model.graph.node.remove(node)
        for vi in list(model.graph.value_info):
            if vi.name == dyn:
                model.graph.value_info.remove(vi)
        model.graph.output.remove(out)
        model.graph.output.append(helper.make_tensor_value_info(dyn, out.type.tensor_type.elem_type, shape))
    return model, tail


def prefer_impl(model: Any, style: str) -> Any:
    from qonnx.custom_op.registry import getCustomOp

    for node in model.graph.node:
        if node.domain.startswith("finn.custom_op.fpgadataflow"):
            inst = getCustomOp(node)
            if "preferred_impl_style" in inst.get_nodeattr_types():
                inst.set_nodeattr("preferred_impl_style", style)
    return model


def host_head(parent: Any) -> list[HostOp]:
    """The parent model's nodes before the dataflow partition; only layout changes are allowed there."""
    head, outside = [], []
    for node in parent.graph.node:
        if node.op_type == "StreamingDataflowPartition":
            continue
        if node.op_type == "Transpose":
            perm = [a.ints for a in node.attribute if a.name == "perm"][0]
            head.append(HostOp("Transpose", [], perm=list(perm)))
        elif node.op_type == "Reshape":
            head.append(HostOp("Reshape", [], shape=[int(v) for v in parent.get_initializer(node.input[1])]))
        else:
            outside.append(f"{node.name} ({node.op_type})")
    partitions = parent.get_nodes_by_op_type("StreamingDataflowPartition")
    if outside or len(partitions) != 1:
        raise FlowError(
            f"FINN could not put the whole network into one dataflow partition ({len(partitions)} partitions); "
            f"nodes left outside: {', '.join(outside) or 'none'}. Replace those layers with ones FINN supports "
            "(conv/linear with quantized weights, quantized ReLU, strided conv instead of pooling)."
        )
    return head
