"""Residual networks in FINN: streamlining across forks and residual adds, and the buffering a fork/join needs.

FINN's default streamlining (step_streamline) assumes a chain. In a residual net it stops at every fork (a scalar
Mul or a Transpose whose output feeds two branches) and at every join (an Add of two dynamic tensors), so float
scales stay inside the graph. trimflow.quantize gives both operands of each residual add one shared quantizer, so each
join is `Add(Mul(a, s), Mul(b, s))`; `streamline_residual` then runs FINN's own fork/join reorderings until the
graph stops changing:
- scalar Mul/Add and Transpose are duplicated into the branches past a fork (MoveLinearPastFork,
  MoveTransposePastFork), where the usual streamlining absorbs them;
- equal scalar Muls and identical Transposes on both inputs of an Add move past it (MoveMulPastJoinAdd,
  MoveTransposePastJoinAdd), which leaves an integer Add whose scale the next thresholds absorb.
FINN's convert-to-HW step then maps each integer Add to ElementwiseAdd and each fork to DuplicateStreams; on a
non-Versal part both exist only as HLS (trimflow.sim.stitch simulates them with our own RTL, hw/rtl/).

A fork/join also needs buffering: the fork hands every beat to both branches at once, so while the long branch
(convolutions) fills its sliding windows, the short one (the shortcut) must hold what the join cannot take yet.
`join_fifo_depths` gives, per join input, a FIFO depth with which the fork/join cannot deadlock.
"""

from __future__ import annotations

from typing import Any

from trimflow import FlowError

MAX_ROUNDS = 20  # a ResNet-8 converges in 3 rounds; more means two transformations undo each other


def _dynamic_inputs(model: Any, node: Any) -> list[str]:
    return [i for i in node.input if i and model.get_initializer(i) is None]


def joins(model: Any) -> list[Any]:
    """Add nodes of two dynamic tensors (residual joins), in graph order."""
    return [n for n in model.graph.node if n.op_type == "Add" and len(_dynamic_inputs(model, n)) == 2]


def has_forks_or_joins(model: Any) -> bool:
    """Whether the graph is more than a chain: a tensor read by several nodes, or a residual join."""
    for node in model.graph.node:
        for out in node.output:
            if len(model.find_consumers(out) or []) > 1:
                return True
    return bool(joins(model)) or len(model.find_consumers(model.graph.input[0].name) or []) > 1


def _signature(model: Any) -> list[tuple]:
    return [(n.op_type, tuple(n.input), tuple(n.output)) for n in model.graph.node]


def streamline_residual(model: Any) -> Any:
    """FINN's fork/join reorderings plus its streamlining, repeated to a fixed point (see the module docstring).

    A chain comes back unchanged. Raises FlowError naming the first residual add whose inputs are still not both
    integer afterwards.
    """
    if not has_forks_or_joins(model):
        return model
    import finn.transformation.streamline.absorb as absorb
    import finn.transformation.streamline.reorder as reorder
    from finn.transformation.streamline import Streamline
    from qonnx.transformation.general import (GiveReadableTensorNames, GiveUniqueNodeNames, RemoveUnusedTensors,
                                              SortGraph)
    from qonnx.transformation.infer_data_layouts import InferDataLayouts
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes

    rounds = [
        reorder.MoveLinearPastFork(), reorder.MoveTransposePastFork(), reorder.MoveMulPastJoinAdd(),
        reorder.MoveTransposePastJoinAdd(), absorb.AbsorbTransposeIntoMultiThreshold(),
        absorb.AbsorbConsecutiveTransposes(), Streamline(), InferShapes(), InferDataTypes(), InferDataLayouts(),
        SortGraph(),
    ]
    for _ in range(MAX_ROUNDS):
        before = _signature(model)
        for t in rounds:
            model = model.transform(t)
        if _signature(model) == before:
            break
    model = model.transform(GiveUniqueNodeNames()).transform(GiveReadableTensorNames())
    model = model.transform(RemoveUnusedTensors())
    require_integer_joins(model)
    return model


def require_integer_joins(model: Any) -> None:
    """FlowError naming the first residual add that still adds float tensors, and why that happens."""
    from qonnx.core.datatype import DataType

    for node in joins(model):
        floats = [i for i in node.input if model.get_tensor_datatype(i) == DataType["FLOAT32"]]
        if not floats:
            continue
        producers = [p.op_type if (p := model.find_producer(i)) is not None else "graph input" for i in node.input]
        raise FlowError(
            f"residual add {node.name} does not streamline: its inputs come from {' and '.join(producers)} and "
            f"{', '.join(floats)} is still FLOAT32. FINN can only make a residual add integer when both operands "
            "are quantized activations with one shared scale; trimflow.quantize.convert_model gives every `a + b` it "
            "finds with torch.fx one shared quantizer (QuantConfig.residual_bits). Write the join as `a + b` in "
            "forward() (not an in-place add on a module output) and quantize the model with trimflow.quantize.")


# ---------------------------------------------------------------- buffering of forks and joins


def _branch_length(model: Any, tensor: str) -> int:
    """Layers between `tensor` and the fork (or graph input, or other join) its branch starts at."""
    count = 0
    while (node := model.find_producer(tensor)) is not None:
        dynamic = _dynamic_inputs(model, node)
        if len(node.output) != 1 or len(dynamic) != 1 or len(model.find_consumers(tensor) or []) > 1:
            break  # a fork (DuplicateStreams, or a tensor read twice) or a join: the branch starts here
        count += 1
        tensor = dynamic[0]
    return count


def join_fifo_depths(model: Any) -> dict[tuple[str, int], int]:
    """Depth of the FIFO in front of the short-branch inputs of each join of a HW-layer model:
    {(join node, input index): depth}. Inputs not listed need no more than the usual FIFO.

    The fork hands each beat to all branches at once and waits until every branch has taken it. The long branch
    (3x3 convolutions: their sliding windows need about two rows before the first output) only delivers to the
    join after reading a good part of the image, and the join takes nothing from the short branch (the shortcut)
    meanwhile; if the short branch's FIFO fills first, the fork stops, the long branch starves, and the pipeline
    deadlocks. One image is always enough: a dataflow branch delivers all outputs of an image once it has read that
    image (no layer waits for the next image), so with a whole image buffered the fork never stalls the long branch.
    The bound is not tight (about two rows would do for a 3x3 window) but it holds whatever the layers between fork
    and join are, and an image of a ResNet-8 shortcut is a few BRAM18. The input whose branch has the most layers is
    taken as the long one and keeps the usual FIFO; the others get the deep one.
    """
    from qonnx.custom_op.registry import getCustomOp

    depths: dict[tuple[str, int], int] = {}
    for node in model.graph.node:
        dynamic = _dynamic_inputs(model, node)
        if len(dynamic) < 2:
            continue
        lengths = [_branch_length(model, t) for t in dynamic]
        inst = getCustomOp(node)
        for idx, length in enumerate(lengths):
            if length == max(lengths) and lengths.count(length) == 1:
                continue
            folded = inst.get_folded_input_shape(idx)
            beats = 1
            for d in folded[1:-1]:
                beats *= int(d)
            depths[(node.name, idx)] = max(2, beats)
    return depths


def stream_op_luts(inst: Any) -> float:
    """LUTs of FINN's HLS DuplicateStreams / ElementwiseAdd layer, for which FINN's estimate is 0.

    An assumption, not a synthesis result: about 40 LUTs of handshake control, plus one LUT per bit that each
    output stream drives (DuplicateStreams: the copy to each output; ElementwiseAdd: one LUT per bit of each lane's
    carry-chain adder and one for its output register's enable).
    """
    op = inst.onnx_node.op_type
    if op.startswith("DuplicateStreams"):
        return 40.0 + len(inst.onnx_node.output) * float(inst.get_outstream_width())
    if op.startswith("ElementwiseAdd"):
        return 40.0 + 2.0 * float(inst.get_outstream_width())
    raise ValueError(f"stream_op_luts: no model for {op}")
