"""Our own RTL for FINN layers that finn-plus has only in HLS on the xc7z0x0 / Zynq UltraScale+ parts, used by the
Verilator simulation only (the Vivado path synthesises FINN's HLS layers).

Each module in hw/rtl/ computes the same function as FINN's python model of the layer, on the stream the layer
receives: DuplicateStreams (the fork in front of a residual block), ElementwiseAdd (the residual join of two
integer streams) and Pool with Function MaxPool (behind its depthwise sliding-window generator). `issue` says why a
given node is outside what our RTL models (the stitcher turns that into a FlowError naming the layer); `stage` gives
the stitcher the module, its parameters and stream widths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trimflow.resources import HW_DIR

_RTL = HW_DIR / "rtl"
DUPLICATE_MODULE, DUPLICATE_SOURCE = "trimflow_duplicate_streams", _RTL / "duplicate_streams.sv"
ADD_MODULE, ADD_SOURCE = "trimflow_add_streams", _RTL / "add_streams.sv"
POOL_MODULE, POOL_SOURCE = "trimflow_max_pool", _RTL / "max_pool.sv"
SOURCES = (DUPLICATE_SOURCE, ADD_SOURCE, POOL_SOURCE)
OWN_RTL = {"DuplicateStreams_hls": (DUPLICATE_MODULE, DUPLICATE_SOURCE), "ElementwiseAdd_hls": (ADD_MODULE, ADD_SOURCE),
           "Pool_hls": (POOL_MODULE, POOL_SOURCE)}


def issue(model, node) -> str | None:
    """Why our RTL for this HLS-only layer cannot stand in for it (None if it can)."""
    from qonnx.custom_op.registry import getCustomOp  # noqa: PLC0415  (heavy import)

    inst = getCustomOp(node)
    if node.op_type == "Pool_hls":
        return _pool_issue(model, node, inst)
    if node.op_type == "DuplicateStreams_hls":
        if len(node.output) != int(inst.get_nodeattr("NumOutputStreams")):
            return f"it has {len(node.output)} outputs but NumOutputStreams={inst.get_nodeattr('NumOutputStreams')}"
        return None
    # ElementwiseAdd_hls: our add is the residual join, two streams of one shape and one PE
    if any(model.get_initializer(i) is not None for i in node.input):
        return ("one operand is a constant (a bias), which our RTL add does not stream; absorb it into the next "
                "thresholds (FINN's Streamline) or keep it out of the dataflow partition")
    shapes = [list(inst.get_nodeattr(a)) for a in ("lhs_shape", "rhs_shape", "out_shape")]
    if not shapes[0] == shapes[1] == shapes[2]:
        return (f"its operands broadcast (shapes {shapes[0]} + {shapes[1]} -> {shapes[2]}); only equal shapes are "
                "simulated")
    dtypes = [inst.get_input_datatype(0), inst.get_input_datatype(1), inst.get_output_datatype()]
    if not all(d.is_integer() for d in dtypes):
        return (f"it adds {dtypes[0].name} + {dtypes[1].name} -> {dtypes[2].name}; only integer operands are "
                "simulated: quantize both operands of the residual add with one shared quantizer (trimflow.quantize)")
    a, b, out = dtypes
    if not (out.allowed(a.min() + b.min()) and out.allowed(a.max() + b.max())):
        # FINN's python model returns the exact sum; an output type too narrow for it would make the RTL wrap
        return (f"its output type {dtypes[2].name} cannot hold every sum of {dtypes[0].name} + {dtypes[1].name}; "
                "run FINN's MinimizeAccumulatorWidth (or InferDataTypes) on the HW model")
    return None


def _pool_issue(model, node, inst) -> str | None:
    """Why our max-pool RTL cannot stand in for this Pool_hls node (None if it can)."""
    from qonnx.core.datatype import DataType  # noqa: PLC0415  (heavy imports)
    from qonnx.custom_op.registry import getCustomOp  # noqa: PLC0415

    try:
        fxn = inst.get_nodeattr("Function")
    except Exception:  # qonnx raises a bare Exception for a required attribute that is not set
        fxn = "unset"
    if fxn != "MaxPool":
        return (f"its pooling function is {fxn or 'unset'}; our RTL models max pooling only (FINN's average and "
                "accumulating pools are HLS-only): use MaxPool, or replace the pooling by a stride-2 convolution")
    idt, odt = (DataType[inst.get_nodeattr(a)] for a in ("InputDataType", "OutputDataType"))
    if not idt.is_integer() or idt.name in ("BIPOLAR", "TERNARY") or idt != odt:
        return (f"it pools {idt.name} to {odt.name}; only integer inputs pooled to the same type are simulated "
                "(quantize the activation in front of the MaxPool to an integer type, e.g. with a ReLU quantizer)")
    channels, pe = int(inst.get_nodeattr("Channels")), int(inst.get_nodeattr("PE"))
    if pe < 1 or channels % pe:
        return f"its PE={pe} does not divide its {channels} channels; choose a divisor"
    # Our RTL reads each window as K consecutive beats of PE channels: what a depthwise sliding-window generator
    # with SIMD = PE emits. Any other producer, or a width converter in between, interleaves the window differently.
    src = model.find_producer(node.input[0])
    while src is not None and src.op_type.startswith("StreamingFIFO"):
        src = model.find_producer(src.input[0])
    if src is None or not src.op_type.startswith("ConvolutionInputGenerator"):
        what = "the graph input" if src is None else f"{src.name} ({src.op_type})"
        return f"it reads {what}, not the ConvolutionInputGenerator FINN's InferPool puts in front of a pool"
    swg = getCustomOp(src)
    simd, depthwise = int(swg.get_nodeattr("SIMD")), int(swg.get_nodeattr("depthwise"))
    parallel = "parallel_window" in swg.get_nodeattr_types() and int(swg.get_nodeattr("parallel_window"))
    if simd != pe or parallel or (not depthwise and simd != channels):
        return (f"its window generator {src.name} is folded with SIMD={simd}"
                f"{', parallel_window=1' if parallel else ''}{', depthwise=0' if not depthwise else ''} and the "
                f"pool with PE={pe}: the window beats line up only with SIMD = PE, depthwise, parallel_window=0; "
                "fold both alike (trimflow.finn.folding ties them)")
    return None


def stage(inst, sources: list[Path]) -> Any:
    """The stitcher's Block for our RTL of an HLS-only layer (OWN_RTL), with the widths FINN gives its streams."""
    from trimflow.sim.stitch import Block  # noqa: PLC0415  (stitch imports this module)

    node = inst.onnx_node
    module, source = OWN_RTL[node.op_type]
    if source not in sources:
        sources.append(source)
    if node.op_type == "DuplicateStreams_hls":
        w = int(inst.get_instream_width_padded(0))
        n = len(node.output)
        return Block(node.name, node.op_type, module, in_width=w, out_width=w, n_out=n,
                     params=(("WIDTH", w), ("N", n)))
    if node.op_type == "Pool_hls":
        dt = inst.get_input_datatype()
        in_w, out_w = int(inst.get_instream_width_padded(0)), int(inst.get_outstream_width_padded(0))
        k = 1
        for d in inst.get_nodeattr("KernelSize"):
            k *= int(d)
        params = (("PE", int(inst.get_nodeattr("PE"))), ("K", k), ("BITS", dt.bitwidth()),
                  ("SIGNED", int(dt.signed())), ("I_WIDTH", in_w), ("O_WIDTH", out_w))
        return Block(node.name, node.op_type, module, in_width=in_w, out_width=out_w, params=params)
    a, b, o = inst.get_input_datatype(0), inst.get_input_datatype(1), inst.get_output_datatype()
    widths = (int(inst.get_instream_width_padded(0)), int(inst.get_instream_width_padded(1)))
    out_w = int(inst.get_outstream_width_padded(0))
    params = (("PE", int(inst.get_nodeattr("PE"))), ("A_BITS", a.bitwidth()), ("B_BITS", b.bitwidth()),
              ("O_BITS", o.bitwidth()), ("A_SIGNED", int(a.signed())), ("B_SIGNED", int(b.signed())),
              ("A_WIDTH", widths[0]), ("B_WIDTH", widths[1]), ("O_WIDTH", out_w))
    return Block(node.name, node.op_type, module, in_width=widths[0], out_width=out_w, in_widths=widths,
                 params=params)
