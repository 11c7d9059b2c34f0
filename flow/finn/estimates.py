"""Resource estimates for the fit check that still hold after synthesis.

FINN's per-node estimates (generate_estimate_reports) cover only the compute layers of the dataflow partition:
- the StreamingFIFOs and StreamingDataWidthConverters that a real build inserts later (step_set_fifo_depths) are
  missing;
- MVAU_rtl / VVAU_rtl report 0 LUT (their model counts only the DSPs), although their control, weight memory
  ports, SIMD adder tree and accumulators are LUTs;
- there is no FF figure at all, so the FF cap (50 % by Xilinx's guideline) is never checked;
- the board shell (DMA, interconnect) is outside the partition: boards/*.yaml `shell_overhead`, added by check_fit.

estimate_design() fills those gaps on a copy of a specialised HW model, each term conservative and listed in
`notes`, so that "fits" in compile.json means what it says. The models are assumptions, not post-synthesis
measurements (no Vivado here); replace them with measured ratios once a synthesis report exists.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import shutil
from pathlib import Path
from typing import Any

from trimflow.boards import RESOURCES
_FINN_ESTIMATORS = {"LUT": "lut_estimation", "BRAM18": "bram_estimation", "URAM": "uram_estimation",
                    "DSP": "dsp_estimation"}

# Depth assumed for every FIFO FINN inserts between two layers (and at the partition's input and output). FINN
# sizes them by simulation, which needs Vivado's XSim, so the depth is unknown here. On the linear CNN chains this
# flow builds, FIFO sizing mostly lands in the tens; 64 entries is two SRL32 stages per bit of stream width, an
# upper bound for most and a deliberately pessimistic one for the shallow ones.
FIFO_DEPTH = 64
# FF per LUT for layers that FINN gives no FF estimate for. FINN's streaming layers are pipelined: every stage
# registers what its LUTs compute, so the FF count tracks the LUT count; 1.0 is above the FF/LUT ratio of typical
# dataflow designs (assumption, not measured here).
FF_PER_LUT = 1.0
# Every node registers its input and output stream (AXI-stream skid buffers), whatever its LUT count.
FF_STREAM_REGS = 2

NOTES = [
    "compute layers: FINN's own per-node LUT/BRAM18/URAM/DSP estimates (generate_estimate_reports)",
    "MVAU_rtl/VVAU_rtl LUT: FINN reports 0 (DSP-only model); counted as FINN's HLS-variant LUT estimate of the "
    "same layer with multipliers in DSPs (resType=dsp): 300 + 1.1·PE·((W+A)·(2·SIMD−1) + acc_bits) "
    "(+ distributed weight memory), the FINN-R formula (Blott et al. 2018) in MVAU_hls.lut_estimation",
    f"FF (no FINN model): per compute node {FF_PER_LUT:g}·LUT + {FF_STREAM_REGS}·(input + output stream "
    f"width), per FIFO/DWC {FF_STREAM_REGS}·(input + output width) (their LUTs are SRL/LUTRAM storage); "
    "assumption, not measured",
    f"FIFOs: one StreamingFIFO_rtl of depth {FIFO_DEPTH} per stream (InsertFIFO, all edges plus partition in/out), "
    "FINN's fifo.sv cost model (StreamingFIFO.get_fifo_cost); FINN's FIFO sizing needs XSim, so the depth is "
    "assumed",
    "data-width converters: the StreamingDataWidthConverter_rtl nodes InsertDWC adds, FINN's estimate",
    "residual nets: the FIFO on the short branch of each join holds one image (trimflow.finn.residual."
    "join_fifo_depths); DuplicateStreams_hls / ElementwiseAdd_hls LUT (FINN reports 0): trimflow.finn.residual."
    "stream_op_luts, an assumption",
    "Pool_hls LUT (FINN reports 0): pool_luts, 40 + 2·PE·bits (one comparator or adder and one select per lane "
    "bit), an assumption",
    "board shell (DMA/interconnect): boards/<board>.yaml shell_overhead, added in the fit check",
]


@dataclasses.dataclass(frozen=True)
class DesignEstimate:
    layers: dict[str, dict[str, float]]  # compute node → resources (RESOURCES), LUT/FF completed as in NOTES
    finn_layers: dict[str, dict[str, float]]  # the same nodes as FINN reports them (no FF)
    fifos: dict[str, float]  # count + resources
    width_converters: dict[str, float]  # count + resources
    totals: dict[str, float]  # layers + FIFOs + width converters (the board shell is added by check_fit)
    fifo_depth: int
    notes: list[str]
    output_fifos: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)  # node → its output FIFO
    fifo_list: list = dataclasses.field(default_factory=list)  # trimflow.finn.design.Fifo, what `fifos` counts
    dwc_list: list = dataclasses.field(default_factory=list)  # trimflow.finn.design.WidthConverter


def finn_node_resources(inst: Any, part: str) -> dict[str, float]:
    """FINN's own estimate of one HW node (no FF)."""
    return {r: float(getattr(inst, fn)(part)) for r, fn in _FINN_ESTIMATORS.items()}


def _hls_variant_luts(inst: Any, part: str) -> float:
    """LUTs of FINN's HLS model of the same MVAU/VVAU layer, with the multiplications in DSPs."""
    from onnx import helper
    from qonnx.custom_op.registry import getCustomOp

    node = inst.onnx_node
    base = node.op_type[: -len("_rtl")]
    hls = helper.make_node(base + "_hls", list(node.input), list(node.output), name=node.name,
                           domain="finn.custom_op.fpgadataflow.hls")
    hls.attribute.extend(copy.deepcopy(a) for a in node.attribute)
    hls_inst = getCustomOp(hls)
    attrs = hls_inst.get_nodeattr_types()
    if "resType" in attrs:
        hls_inst.set_nodeattr("resType", "dsp")
    if "mem_mode" in attrs and "mem_mode" not in {a.name for a in node.attribute}:
        hls_inst.set_nodeattr("mem_mode", "internal_decoupled")
    return float(hls_inst.lut_estimation(part))


def pool_luts(inst: Any) -> float:
    """LUTs of FINN's HLS Pool layer, for which FINN's estimate is 0.

    An assumption, not a synthesis result: about 40 LUTs of handshake and window-position control, plus per lane
    and bit one LUT of the comparator (max) or adder (sum) carry chain and one of the select into the running
    register. The accumulating pools work at AccumBits, max pooling at the input width.
    """
    bits = inst.get_input_datatype().bitwidth()
    if inst.get_nodeattr("Function") != "MaxPool":
        bits = max(bits, int(inst.get_nodeattr("AccumBits")))
    return 40.0 + 2.0 * int(inst.get_nodeattr("PE")) * bits


def node_resources(inst: Any, part: str) -> dict[str, float]:
    """One HW node's resources with the gaps of FINN's model filled (see NOTES); keys RESOURCES."""
    res = finn_node_resources(inst, part)
    op = inst.onnx_node.op_type
    if op in ("MVAU_rtl", "VVAU_rtl"):
        try:
            res["LUT"] = max(res["LUT"], _hls_variant_luts(inst, part))
        except Exception:
            # no HLS model for this configuration: fall back to the same formula's largest term, per PE·SIMD lane
            pe, simd = int(inst.get_nodeattr("PE")), int(inst.get_nodeattr("SIMD"))
            bits = inst.get_input_datatype(0).bitwidth() + inst.get_input_datatype(1).bitwidth()
            res["LUT"] = max(res["LUT"], 300 + 1.1 * pe * bits * (2 * simd - 1))
    if op in ("DuplicateStreams_hls", "ElementwiseAdd_hls") and res["LUT"] == 0:
        from trimflow.finn.residual import stream_op_luts  # FINN has no LUT model for these HLS layers

        res["LUT"] = stream_op_luts(inst)
    if op.startswith("Pool") and res["LUT"] == 0:
        res["LUT"] = pool_luts(inst)
    widths = _stream_width(inst, "in") + _stream_width(inst, "out")
    if op.startswith(("StreamingFIFO", "StreamingDataWidthConverter")):
        # their LUTs are storage (SRL/LUTRAM) or muxes, not pipelined logic: only the stream registers are FFs
        res["FF"] = FF_STREAM_REGS * widths
    else:
        res["FF"] = FF_PER_LUT * res["LUT"] + FF_STREAM_REGS * widths
    return {r: res[r] for r in RESOURCES}


def output_fifo_resources(inst: Any, part: str, depth: int = FIFO_DEPTH) -> dict[str, float]:
    """The FIFO FINN will put on this node's output stream, at the assumed depth (FINN's fifo.sv cost model)."""
    from finn.util.basic import is_versal
    from finn.util.resource_models import _fifo_cost, _resolve

    width = _stream_width(inst, "out")
    if width == 0:
        return {r: 0.0 for r in RESOURCES}
    style = _resolve(depth, width, "auto")
    if style == "ultra" and not _has_uram(part):
        style = "block"  # fifo.sv asks for URAM past 2k entries; on a part without URAM, Vivado uses BRAM
    cost = _fifo_cost(depth, width, style, is_versal(part))
    return {"LUT": float(cost.lut), "FF": float(2 * FF_STREAM_REGS * width), "BRAM18": float(cost.bram),
            "URAM": float(cost.uram), "DSP": 0.0}


def _has_uram(part: str) -> bool:
    """UltraRAM exists on UltraScale+ (Zynq/Kria xczu/xck, Kintex/Virtex ...p) and Versal parts only."""
    import re

    from finn.util.basic import is_versal

    return part.startswith(("xczu", "xck2")) or bool(re.match(r"xc(ku|vu)\d+p", part)) or is_versal(part)


def _stream_width(inst: Any, which: str) -> int:
    try:
        fn = inst.get_instream_width_padded if which == "in" else inst.get_outstream_width_padded
        return int(fn())
    except Exception:
        return 0


def _sum(items: list[dict[str, float]]) -> dict[str, float]:
    return {r: float(sum(i[r] for i in items)) for r in RESOURCES}


def estimate_design(hw_model: Any, part: str, scratch: str | Path, fifo_depth: int = FIFO_DEPTH,
                    sized_fifos: bool = False) -> DesignEstimate:
    """Estimate a specialised HW-layer model (ModelWrapper, not modified) as it will be after FINN's FIFO and
    width-converter insertion. `scratch` is a folder FINN may write into (removed afterwards).

    `sized_fifos`: the model's outFIFODepths/inFIFODepths already hold depths found by simulation
    (trimflow.finn.fifos.set_fifo_depths); they are charged as they are instead of `fifo_depth` per stream.
    The FIFOs and width converters counted are the estimate's `fifo_list` / `dwc_list`, with their streams: what
    the design records (trimflow.finn.design) and the simulator builds."""
    from trimflow.finn.adapter import finn_session

    scratch = Path(scratch)
    try:
        with finn_session(scratch):
            from qonnx.custom_op.registry import getCustomOp

            layers, finn_layers, output_fifos = {}, {}, {}
            for node in hw_model.graph.node:
                inst = getCustomOp(node)
                finn_layers[node.name] = finn_node_resources(inst, part)
                layers[node.name] = node_resources(inst, part)
                output_fifos[node.name] = output_fifo_resources(inst, part, fifo_depth)
            fifo_list, dwc_list = _streams(hw_model, part, fifo_depth, sized_fifos, estimate=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    fifos = {"count": float(len(fifo_list)), **_sum([f.estimate for f in fifo_list])}
    dwcs = {"count": float(len(dwc_list)), **_sum([d.estimate for d in dwc_list])}
    compute = _sum(list(layers.values()))
    totals = {r: compute[r] + fifos[r] + dwcs[r] for r in RESOURCES}
    notes = list(NOTES)
    if sized_fifos:
        notes = [n.replace("the FIFO on the short branch of each join holds one image (trimflow.finn.residual."
                           "join_fifo_depths)", "the FIFOs in front of each join sized by simulation too")
                 for n in notes if not n.startswith("FIFOs:")] + [
            "FIFOs: the depths found by simulating the design (trimflow.sim.fifo_sizing), one StreamingFIFO_rtl per "
            "stream, FINN's fifo.sv cost model (StreamingFIFO.get_fifo_cost: SRL up to 33 entries, LUTRAM up to "
            "257, BRAM18 above)"]
    return DesignEstimate(layers, finn_layers, fifos, dwcs, totals, fifo_depth, notes, output_fifos, fifo_list,
                          dwc_list)


def stream_plan(hw_model: Any, part: str, fifo_depth: int = FIFO_DEPTH) -> tuple[list, list]:
    """The FIFOs and width converters of the unsized design (no resource estimates): ([Fifo], [WidthConverter]).
    The one place their depths are decided: `fifo_depth` per stream, a whole image on the short branch of a join.
    Call inside a finn_session."""
    return _streams(hw_model, part, fifo_depth, False, estimate=False)


def _streams(hw_model: Any, part: str, fifo_depth: int, sized_fifos: bool, estimate: bool) -> tuple[list, list]:
    """Insert width converters and FIFOs into a copy of `hw_model` as FINN does (trimflow.finn.rules) and list
    them with the streams they sit on."""
    from finn.transformation.fpgadataflow.insert_fifo import InsertFIFO
    from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    from trimflow.finn.design import INPUT, OUTPUT, Fifo, WidthConverter
    from trimflow.finn.residual import join_fifo_depths
    from trimflow.finn.rules import insert_width_converters

    model = insert_width_converters(ModelWrapper(copy.deepcopy(hw_model.model)))
    for node in model.graph.node:
        inst = getCustomOp(node)
        attrs = inst.get_nodeattr_types()
        if node.op_type.startswith("StreamingDataWidthConverter"):
            inst.set_nodeattr("preferred_impl_style", "rtl")
        for a in ("inFIFODepths", "outFIFODepths"):
            if a in attrs and not sized_fifos:
                inst.set_nodeattr(a, [fifo_depth] * max(1, len(inst.get_nodeattr(a) or [0])))
    # residual joins: the short branch's FIFO holds a whole image, or the fork/join deadlocks
    joins = join_fifo_depths(model)
    for (name, idx), depth in ({} if sized_fifos else joins).items():
        inst = getCustomOp(model.get_node_from_name(name))
        depths = list(inst.get_nodeattr("inFIFODepths"))
        depths += [fifo_depth] * (idx + 1 - len(depths))  # FINN may declare one entry for two inputs
        depths[idx] = max(depths[idx], depth)
        inst.set_nodeattr("inFIFODepths", depths)
    model = model.transform(InsertFIFO(create_shallow_fifos=True))
    for node in model.graph.node:
        if node.op_type == "StreamingFIFO":
            fifo = getCustomOp(node)
            fifo.set_nodeattr("preferred_impl_style", "rtl")
            if fifo.resolve_ram_style() == "ultra" and not _has_uram(part):
                fifo.set_nodeattr("ram_style", "block")  # what Vivado builds where there is no URAM
    model = model.transform(SpecializeLayers(part))  # names every node (trimflow.finn.rules)
    fifos, dwcs = [], []
    for node in model.graph.node:
        inst = getCustomOp(node)
        res = node_resources(inst, part) if estimate else {}
        if node.op_type.startswith("StreamingFIFO"):
            src, dst = model.find_producer(node.input[0]), model.find_consumer(node.output[0])
            sp = 0 if src is None else list(src.output).index(node.input[0])
            dp = 0 if dst is None else [t for t in dst.input if t and model.get_initializer(t) is None].index(
                node.output[0])
            src_name, dst_name = _end_name(model, node, INPUT), _end_name(model, node, OUTPUT)
            fifos.append(Fifo(src_name, sp, dst_name, dp, _stream_width(inst, "in"), int(inst.get_nodeattr("depth")),
                              0 if sized_fifos else joins.get((dst_name, dp), 0), res))
        elif node.op_type.startswith("StreamingDataWidthConverter"):
            dwcs.append(WidthConverter(node.name, _end_name(model, node, INPUT), _end_name(model, node, OUTPUT),
                                       _stream_width(inst, "in"), _stream_width(inst, "out"), res))
    return fifos, dwcs


def _end_name(model: Any, node: Any, side: str) -> str:
    """The node at the other end of `node`'s input (side INPUT) or output (OUTPUT) stream, past a FIFO in between
    (FIFOs are listed apart); `side` itself when the stream leaves the partition."""
    from trimflow.finn.design import INPUT

    while True:
        node = model.find_producer(node.input[0]) if side == INPUT else model.find_consumer(node.output[0])
        if node is None:
            return side
        if not node.op_type.startswith("StreamingFIFO"):
            return node.name


def needed_scale(totals: dict[str, float], board: Any) -> float:
    """By how much the design's resources would have to shrink to fit (1.0 = fits as is; inf: shell alone over)."""
    scale = 1.0
    for r in RESOURCES:
        room = board.room(r)
        if totals.get(r, 0.0) > 0:
            scale = min(scale, room / totals[r]) if room > 0 else 0.0
    return scale if scale > 0 else math.nan
