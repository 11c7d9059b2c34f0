"""Turn a graph of specialised FINN HW layers into one simulation top level.

FINN stitches layers with Vivado IP Integrator; here we read the same information FINN gives IPI (each node's RTL
file list, top module and AXI-stream interface names) and write a SystemVerilog top that connects the layers'
streams as the graph does, with an AXI-stream FIFO on every link between two layers and each MVAU's weight
streamer attached to its weight port.

The graph may fork and join (residual nets): FINN's DuplicateStreams feeds the branches, ElementwiseAdd joins them.
FINN has both only in HLS on non-Versal parts, so those two nodes are simulated with our own equivalent RTL
(trimflow.sim.own_rtl: hw/rtl/duplicate_streams.sv, hw/rtl/add_streams.sv, the function of FINN's python model of
the layer); the FIFO in front of a join input that comes from the shorter branch holds a whole image
(the design's min_depth: trimflow.finn.residual.join_fifo_depths) so that the fork never stalls the longer branch into a deadlock. Max pooling (FINN's HLS-only Pool with Function
MaxPool, behind a depthwise sliding-window generator) is simulated the same way (hw/rtl/max_pool.sv).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from trimflow import FlowError
from trimflow.finn.design import INPUT, OUTPUT  # link ends outside the design
from trimflow.finn.rules import mvau_rtl_folding_issue
from trimflow.resources import HW_DIR
from trimflow.sim import own_rtl
from trimflow.sim.fixes import apply_source_patches, relocate_init_file

TOP_MODULE = "trimflow_sim_top"
FIFO_MODULE = "trimflow_axis_fifo"
FIFO_SOURCE = HW_DIR / "sim" / "axis_fifo.sv"
# Our RTL in every simulator (the build cache key covers them).
OWN_SOURCES = (FIFO_SOURCE, *own_rtl.SOURCES)
OWN_RTL = own_rtl.OWN_RTL

# Layers FINN implements only in HLS (or that the simulator cannot chain), with what to use instead.
_ALTERNATIVES = {
    "Pool": "use MaxPool (our RTL models FINN's max pooling), or replace the pooling by a stride-2 convolution",
    "StreamingMaxPool": "replace MaxPool by a stride-2 convolution (FINN's pooling layers are HLS-only)",
    "LabelSelect": "keep TopK/ArgMax out of the dataflow partition and compute it on the host",
    "ElementwiseMul": "keep the trailing float scale out of the dataflow partition (it runs on the host)",
    "ElementwiseAdd": "absorb the bias into thresholds (Streamline) or keep it out of the dataflow partition",
    "ChannelwiseOp": "absorb the channelwise op into thresholds (Streamline) so it becomes Thresholding_rtl",
    "GlobalAccPool": "replace global average pooling by a strided convolution or a Linear layer",
    "UpsampleNearestNeighbour": "upsampling is HLS-only in FINN; remove it from the network",
    "Lookup": "embeddings are HLS-only in FINN; keep them out of the dataflow partition",
}
_WEIGHT_STREAMED = ("MVAU_rtl",)
# RTL layers whose ports and side memories the stitcher knows; others (e.g. Requant_rtl, whose scale/bias streamers
# would need their own wiring) are refused rather than simulated with silently tied-off inputs.
SUPPORTED = ("FMPadding_rtl", "ConvolutionInputGenerator_rtl", "MVAU_rtl", "Thresholding_rtl",
             "StreamingDataWidthConverter_rtl", "StreamingFIFO_rtl")


@dataclass(frozen=True)
class Block:
    """One block of the design: a FINN layer, one of our FIFOs, or our RTL for an HLS-only FINN layer.

    (Called a Block, not a stage, so it is not mistaken for a pipeline stage; Design.stages and the manifest's
    "stages" keep their name: the simulation manifest's shape is unchanged.)"""

    name: str
    kind: str  # ONNX op_type, or "FIFO"
    module: str
    in_port: str = ""
    out_port: str = ""
    in_width: int = 0  # of input 0
    out_width: int = 0  # of output 0
    depth: int = 0  # FIFOs only
    weight_streamer: str = ""  # module name of the memstream wrapper feeding in1_V
    weight_width: int = 0
    has_clk2x: bool = False
    tie_low: tuple[str, ...] = ()  # extra inputs (AXI-lite, set selectors) held at zero
    in_widths: tuple[int, ...] = ()  # every input when there are several (a join), else just in_width
    n_out: int = 1  # output streams (a fork has several, all out_width wide)
    params: tuple[tuple[str, int], ...] = ()  # parameters of our own modules

    def input_width(self, port: int) -> int:
        return self.in_widths[port] if self.in_widths else self.in_width


@dataclass(frozen=True)
class Link:
    """One AXI stream of the top level, from a stage's output port to a stage's input port."""

    src: str  # stage name, or INPUT (the design's s_axis)
    dst: str  # stage name, or OUTPUT (the design's m_axis)
    width: int
    beats: int  # per image
    src_port: int = 0
    dst_port: int = 0


@dataclass
class Design:
    stages: list[Block]  # in an order where every stage comes after the stages feeding it
    sources: list[Path]  # in compile order, copied (and patched) into the simulation directory
    data_files: list[tuple[Path, str]] = field(default_factory=list)  # (original, name in the run directory)
    # In the order the testbench reports them: the links into each stage in stage order, the output link last;
    # for a chain, link i feeds stage i.
    links: list[Link] = field(default_factory=list)

    def link_names(self) -> list[str]:
        return [f"{link.src} -> {link.dst}" for link in self.links]

    def link_ends(self) -> list[list[str]]:
        return [[link.src, link.dst] for link in self.links]

    def fifos(self) -> list[dict]:
        """Each FIFO stage in stage order (the order of the top level's `fifo_limit` words): its name, width,
        built depth, the indices of the link into it and out of it, and the two layers it sits between."""
        out = []
        for s in self.stages:
            if s.kind != "FIFO":
                continue
            i = next(j for j, lk in enumerate(self.links) if lk.dst == s.name)
            o = next(j for j, lk in enumerate(self.links) if lk.src == s.name)
            lin, lout = self.links[i], self.links[o]
            out.append({"name": s.name, "width": s.in_width, "depth": s.depth, "in_link": i, "out_link": o,
                        "producer": lin.src, "producer_port": lin.src_port, "consumer": lout.dst,
                        "consumer_port": lout.dst_port})
        return out

    @property
    def in_width(self) -> int:
        return next(link.width for link in self.links if link.src == INPUT)

    @property
    def out_width(self) -> int:
        return next(link.width for link in self.links if link.dst == OUTPUT)


def _alternative(op_type: str) -> str:
    base = op_type.removesuffix("_hls").removesuffix("_rtl")
    if base in _ALTERNATIVES:
        return _ALTERNATIVES[base]
    if not op_type.endswith("_hls"):
        return "run SpecializeLayers with preferred_impl_style='rtl' before simulating"
    return "set preferred_impl_style='rtl' for it, or replace it by a layer FINN implements in RTL"


def check_rtl_only(model) -> None:
    """Raise FlowError naming the first layer Verilator cannot simulate (HLS-only without our RTL for it, a fan-out
    without FINN's DuplicateStreams, or a folding FINN's RTL does not run correctly)."""
    for node in model.graph.node:
        if node.op_type in OWN_RTL:
            issue = own_rtl.issue(model, node)
            if issue:
                raise FlowError(f"layer {node.name} ({node.op_type}) cannot be simulated: {issue}")
            continue
        if not node.domain.startswith("finn.custom_op.fpgadataflow") or not node.op_type.endswith("_rtl"):
            raise FlowError(
                f"layer {node.name} ({node.op_type}) has no RTL implementation, so Verilator cannot simulate "
                f"it: {_alternative(node.op_type)}"
            )
        if node.op_type not in SUPPORTED:
            raise FlowError(f"layer {node.name} ({node.op_type}) is not supported by the Verilator simulator yet "
                            f"(supported: {', '.join(SUPPORTED + tuple(OWN_RTL))})")
        if node.op_type == "MVAU_rtl":
            from qonnx.custom_op.registry import getCustomOp  # noqa: PLC0415  (heavy import)

            inst = getCustomOp(node)
            issue = mvau_rtl_folding_issue(node.name, node.op_type, int(inst.get_nodeattr("MW")),
                                           int(inst.get_nodeattr("SIMD")))
            if issue:
                raise FlowError(issue)
    if len(model.graph.input) != 1 or len(model.graph.output) != 1:
        raise FlowError(f"the HW model has {len(model.graph.input)} inputs and {len(model.graph.output)} outputs; "
                        "the simulator streams one input and one output")
    outputs = {o.name for o in model.graph.output}
    for name, producer in [(model.graph.input[0].name, "the input")] + [
            (out, f"layer {n.name}") for n in model.graph.node for out in n.output]:
        readers = len(model.find_consumers(name) or []) + (name in outputs)
        if readers > 1:
            raise FlowError(f"{producer} fans out ({name} is read {readers} times): a stream has one reader, so "
                            "each fork needs FINN's DuplicateStreams in front of it (InferDuplicateStreamsLayer, "
                            "part of FINN's step_convert_to_hw)")


_INPUT_DECL = re.compile(r"^\s*input\b[^/]*?(\w+)\s*,?\s*(?://.*)?$", re.M)


def _declared_inputs(verilog: str, module: str) -> list[str]:
    """Input port names of `module` as FINN's templates declare them (one port per line)."""
    m = re.search(rf"\bmodule\s+{re.escape(module)}\b(.*?)\);", verilog, re.S)
    if m is None:
        raise FlowError(f"module {module} not found in its generated wrapper; regenerate the layer's RTL")
    return _INPUT_DECL.findall(m.group(1))


def _top_module(inst) -> str:
    if "gen_top_module" in inst.get_nodeattr_types() and inst.get_nodeattr("gen_top_module"):
        return inst.get_nodeattr("gen_top_module")
    return inst.onnx_node.name


def _find_wrapper(files: list[Path], module: str) -> Path:
    for f in files:
        if f.is_file() and re.search(rf"\bmodule\s+{re.escape(module)}\b", f.read_text(errors="replace")):
            return f
    raise FlowError(f"no generated source declares module {module}; regenerate the layer's RTL (PrepareIP)")


def _layer_stage(inst, sources: list[Path], data_files: list[tuple[Path, str]]) -> Block:
    node = inst.onnx_node
    code_dir = Path(inst.get_nodeattr("code_gen_dir_ipgen"))
    files = [Path(f) for f in inst.get_rtl_file_list(abspath=True)]
    module = _top_module(inst)
    streamer = ""
    if node.op_type in _WEIGHT_STREAMED:
        mem_mode = inst.get_nodeattr("mem_mode")
        if mem_mode != "internal_decoupled":
            raise FlowError(f"layer {node.name}: mem_mode={mem_mode!r} is not simulated; use 'internal_decoupled' "
                            f"(weights in on-chip memory streamed to the layer)")
        if inst.get_nodeattr("pumpedCompute") or inst.get_nodeattr("pumpedMemory"):
            raise FlowError(f"layer {node.name}: double-pumped compute/memory needs a second clock the simulator "
                            f"does not model; set pumpedCompute=0 and pumpedMemory=0")
        wrappers = sorted(code_dir.glob("*_memstream_wrapper.v"))
        if len(wrappers) != 1:
            raise FlowError(f"layer {node.name}: expected one weight-streamer wrapper in {code_dir}, found "
                            f"{len(wrappers)}; regenerate the layer's RTL (PrepareIP)")
        streamer = wrappers[0].name.removesuffix(".v")
        from finn.util.settings import get_settings  # noqa: PLC0415  (FINN settings only when streamers exist)

        rtllib = Path(get_settings().finn_rtllib)
        files += [wrappers[0], rtllib / "axi/hdl/axilite.sv", rtllib / "memstream/hdl/memstream_axi.sv",
                  rtllib / "memstream/hdl/memstream.sv"]
    for f in files:
        if not f.is_file():
            raise FlowError(f"layer {node.name}: RTL source {f} is missing; regenerate the layer's RTL (PrepareIP)")
    # Threshold tables are read at simulation start from paths relative to the working directory.
    data_files += [(f, f.name) for f in sorted(code_dir.glob("*.dat")) if f.name != "memblock.dat"]
    sources += files

    intf = inst.get_verilog_top_module_intf_names()
    (in_port, in_w), (out_port, out_w) = intf["s_axis"][0], intf["m_axis"][0]
    connected = {"ap_clk", "ap_clk2x", "ap_rst_n"} | {f"{p}_{s}" for p in (in_port, out_port)
                                                      for s in ("TDATA", "TVALID", "TREADY")}
    if streamer:
        connected |= {"in1_V_TDATA", "in1_V_TVALID", "in1_V_TREADY"}
    declared = _declared_inputs(_find_wrapper(files, module).read_text(), module)
    tie = tuple(p for p in declared if p not in connected)
    weight_width = (int(inst.get_instream_width_padded(1)) + 7) // 8 * 8 if streamer else 0
    return Block(node.name, node.op_type, module, in_port, out_port, int(in_w), int(out_w),
                 weight_streamer=streamer, weight_width=weight_width, has_clk2x="ap_clk2x" in declared,
                 tie_low=tie)


def _beats(shape) -> int:
    n = 1
    for d in shape[1:-1]:  # batch and the PE/SIMD lanes of a beat excluded
        n *= int(d)
    return n


def plan(model, fifos: list | None = None, fifo_depth: int | None = None) -> Design:
    """Collect stages, links and sources of a specialised, code-generated HW model (nodes in topological order).

    FIFO nodes FINN inserted (StreamingFIFO_rtl) become our FIFO with FINN's depth. A model without FIFO nodes gets
    the FIFOs of the compiled design (`fifos`: trimflow.finn.design.Fifo, each on the stream it names, at its depth)
    on every link between two layers; the design's FIFOs at the partition's input and output are not simulated (the
    testbench stands for the DMA: always valid, always ready), except for the depth a join needs there. With
    `fifo_depth` every FIFO is built that deep instead (0: layers connected directly), but never shallower than
    the design's `min_depth` (a join's short branch).
    """
    from qonnx.custom_op.registry import getCustomOp  # noqa: PLC0415

    check_rtl_only(model)
    has_fifos = any(n.op_type == "StreamingFIFO_rtl" for n in model.graph.node)
    by_ends = {f.ends: f for f in fifos or []}
    stages: list[Block] = []
    links: list[Link] = []
    sources: list[Path] = [FIFO_SOURCE]
    data_files: list[tuple[Path, str]] = []
    # tensor -> (producing stage or INPUT, its output port, stream width, beats per image)
    streams: dict[str, tuple[str, int, int, int]] = {}
    layers: set[str] = set()  # stages that are FINN layers or our RTL for one (FIFOs are not)
    graph_in = model.graph.input[0].name
    for node in model.graph.node:
        inst = getCustomOp(node)
        if node.op_type == "StreamingFIFO_rtl":
            w = int(inst.get_instream_width_padded(0))
            stage = Block(node.name, "FIFO", FIFO_MODULE, in_width=w, out_width=w,
                          depth=max(2, int(inst.get_nodeattr("depth"))))
        elif node.op_type in OWN_RTL:
            stage = own_rtl.stage(inst, sources)
        else:
            stage = _layer_stage(inst, sources, data_files)
        dynamic = [t for t in node.input if t and model.get_initializer(t) is None]
        if len(dynamic) != (len(stage.in_widths) or 1):
            raise FlowError(f"layer {node.name} ({node.op_type}) reads {len(dynamic)} streams; the simulator "
                            f"wires {len(stage.in_widths) or 1}")
        for port, tensor in enumerate(dynamic):
            if tensor == graph_in:
                streams[tensor] = (INPUT, 0, stage.input_width(port), _beats(inst.get_folded_input_shape(port)))
            if tensor not in streams:
                raise FlowError(f"layer {node.name} reads {tensor} before any layer writes it; sort the HW model "
                                "topologically (qonnx SortGraph)")
            src, src_port, width, beats = streams[tensor]
            depth = 0 if has_fifos else _fifo_depth(by_ends, (src, src_port, node.name, port), src in layers,
                                                     fifo_depth)
            if depth:
                fifo = Block(f"fifo_{len(stages)}", "FIFO", FIFO_MODULE, in_width=width, out_width=width,
                             depth=depth)
                stages.append(fifo)
                links.append(Link(src, fifo.name, width, beats, src_port, 0))
                src, src_port = fifo.name, 0
            if width != stage.input_width(port):
                raise FlowError(f"stream width mismatch: {src} produces {width} bits, {node.name} takes "
                                f"{stage.input_width(port)}; run FINN's InsertDWC (and SpecializeLayers) on the "
                                "HW model")
            links.append(Link(src, stage.name, width, beats, src_port, port))
        stages.append(stage)
        if stage.kind != "FIFO":
            layers.add(stage.name)
        for port, tensor in enumerate(node.output):
            streams[tensor] = (stage.name, port, stage.out_width, _beats(inst.get_folded_output_shape(port)))
    src, src_port, width, beats = streams[model.graph.output[0].name]
    links.append(Link(src, OUTPUT, width, beats, src_port, 0))
    return Design(stages, sources, data_files, links)


def _fifo_depth(by_ends: dict, ends: tuple, between_layers: bool, override: int | None) -> int:
    """The depth of the FIFO the simulator builds on the stream `ends` (0: none); see plan."""
    fifo = by_ends.get(ends)
    if fifo is None:
        if between_layers and override is None:
            raise FlowError(f"the design has no FIFO on the stream {ends[0]} -> {ends[2]} of the HW model; the "
                            "design file does not belong to this model (rerun the compile stage)")
        return override if between_layers else 0
    if not between_layers:
        return fifo.min_depth
    return fifo.depth if override is None else max(override, fifo.min_depth)


def write_sources(design: Design, src_dir: Path, run_dir: Path) -> list[Path]:
    """Copy sources into `src_dir` (patched where Verilator needs it) and data files into `run_dir`.

    Returns the copied sources in compile order, first occurrence of each file name kept (FINN's libraries are
    shared between layers, per-layer wrappers have unique names).
    """
    src_dir.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    seen: dict[str, Path] = {}
    for f in design.sources:
        if f.name in seen:
            if seen[f.name].resolve() != f.resolve() and seen[f.name].read_bytes() != f.read_bytes():
                raise FlowError(f"two different RTL sources are both named {f.name} ({seen[f.name]}, {f})")
            continue
        seen[f.name] = f
        dst = src_dir / f.name
        text = f.read_text()
        if f.name.endswith("_memstream_wrapper.v"):
            init_name = f.name.removesuffix("_memstream_wrapper.v") + "_memblock.dat"
            text, init = relocate_init_file(text, init_name)
            if init is not None:
                design.data_files.append((init, init_name))
        dst.write_text(text)
        apply_source_patches(dst)
        out.append(dst)
    for f, name in design.data_files:
        if not f.is_file():
            raise FlowError(f"initial memory file {f} is missing; regenerate the layer's RTL (PrepareIP)")
        shutil.copyfile(f, run_dir / name)
    return out


def top_level(design: Design) -> str:
    """SystemVerilog for the design: s_axis feeds the input link, m_axis is the output link, every other link
    connects a stage's output port to a stage's input port.

    dbg_valid/dbg_ready expose each link's handshake so the testbench can count beats and name a stalled layer;
    fifo_limit holds one 32-bit word per FIFO (Design.fifos order) that caps its fill level at run time.
    """
    links = design.links
    n = len(links)
    n_fifos = max(1, len(design.fifos()))  # a zero-width port is not legal SystemVerilog
    lines = [
        "// Generated by flow/sim/stitch.py: FINN layers connected as in the HW model's graph, for Verilator.",
        f"module {TOP_MODULE} (",
        "\tinput  logic ap_clk,",
        "\tinput  logic ap_rst_n,",
        f"\tinput  logic [{design.in_width - 1}:0] s_axis_tdata,",
        "\tinput  logic s_axis_tvalid,",
        "\toutput logic s_axis_tready,",
        f"\toutput logic [{design.out_width - 1}:0] m_axis_tdata,",
        "\toutput logic m_axis_tvalid,",
        "\tinput  logic m_axis_tready,",
        f"\toutput logic [{n - 1}:0] dbg_valid,",
        f"\toutput logic [{n - 1}:0] dbg_ready,",
        f"\tinput  logic [{32 * n_fifos - 1}:0] fifo_limit",
        ");",
    ]
    for i, link in enumerate(links):
        lines += [f"\tlogic [{link.width - 1}:0] l{i}_tdata;", f"\tlogic l{i}_tvalid, l{i}_tready;",
                  f"\tassign dbg_valid[{i}] = l{i}_tvalid;", f"\tassign dbg_ready[{i}] = l{i}_tready;"]
    first = next(i for i, link in enumerate(links) if link.src == INPUT)
    last = next(i for i, link in enumerate(links) if link.dst == OUTPUT)
    lines += [f"\tassign l{first}_tdata = s_axis_tdata;", f"\tassign l{first}_tvalid = s_axis_tvalid;",
              f"\tassign s_axis_tready = l{first}_tready;", f"\tassign m_axis_tdata = l{last}_tdata;",
              f"\tassign m_axis_tvalid = l{last}_tvalid;", f"\tassign l{last}_tready = m_axis_tready;", ""]
    fifo_index = {f["name"]: k for k, f in enumerate(design.fifos())}
    for i, s in enumerate(design.stages):
        ins = [f"l{j}" for _, j in sorted((lk.dst_port, j) for j, lk in enumerate(links) if lk.dst == s.name)]
        outs = [f"l{j}" for _, j in sorted((lk.src_port, j) for j, lk in enumerate(links) if lk.src == s.name)]
        if len(outs) != s.n_out or not ins:
            raise FlowError(f"stage {s.name} has {len(ins)} input and {len(outs)} output links; expected at least "
                            f"one input and {s.n_out} outputs (a stream has exactly one reader)")
        limit = f"fifo_limit[{32 * fifo_index[s.name]} +: 32]" if s.name in fifo_index else ""
        lines += _instance(s, f"u{i}_{s.name}", ins, outs, limit)
    lines += [f"endmodule : {TOP_MODULE}", ""]
    return "\n".join(lines)


def _instance(s: Block, inst: str, ins: list[str], outs: list[str], limit: str = "") -> list[str]:
    """Instantiation of one stage, `ins`/`outs` the link wires of its ports in port order (`limit`: a FIFO's
    fill-level cap)."""
    a, b = ins[0], outs[0]
    if s.kind == "FIFO":
        return [
            f"\t{FIFO_MODULE} #(.WIDTH({s.in_width}), .DEPTH({s.depth})) {inst} (",
            f"\t\t.clk(ap_clk), .rst_n(ap_rst_n), .limit({limit}),",
            f"\t\t.s_tdata({a}_tdata), .s_tvalid({a}_tvalid), .s_tready({a}_tready),",
            f"\t\t.m_tdata({b}_tdata), .m_tvalid({b}_tvalid), .m_tready({b}_tready)",
            "\t);",
        ]
    params = ", ".join(f".{k}({v})" for k, v in s.params)
    if s.module == own_rtl.POOL_MODULE:
        return [
            f"\t{s.module} #({params}) {inst} (",
            "\t\t.clk(ap_clk), .rst_n(ap_rst_n),",
            f"\t\t.s_tdata({a}_tdata), .s_tvalid({a}_tvalid), .s_tready({a}_tready),",
            f"\t\t.m_tdata({b}_tdata), .m_tvalid({b}_tvalid), .m_tready({b}_tready)",
            "\t);",
        ]
    if s.module == own_rtl.DUPLICATE_MODULE:
        def cat(sig: str) -> str:  # packed port arrays: output 0 in the lowest bits
            return "{" + ", ".join(f"{o}_{sig}" for o in reversed(outs)) + "}"
        return [
            f"\t{s.module} #({params}) {inst} (",
            "\t\t.clk(ap_clk), .rst_n(ap_rst_n),",
            f"\t\t.s_tdata({a}_tdata), .s_tvalid({a}_tvalid), .s_tready({a}_tready),",
            f"\t\t.m_tdata({cat('tdata')}), .m_tvalid({cat('tvalid')}), .m_tready({cat('tready')})",
            "\t);",
        ]
    if s.module == own_rtl.ADD_MODULE:
        c = ins[1]
        return [
            f"\t{s.module} #({params}) {inst} (",
            "\t\t.clk(ap_clk), .rst_n(ap_rst_n),",
            f"\t\t.a_tdata({a}_tdata), .a_tvalid({a}_tvalid), .a_tready({a}_tready),",
            f"\t\t.b_tdata({c}_tdata), .b_tvalid({c}_tvalid), .b_tready({c}_tready),",
            f"\t\t.m_tdata({b}_tdata), .m_tvalid({b}_tvalid), .m_tready({b}_tready)",
            "\t);",
        ]
    lines = []
    ports = [".ap_clk(ap_clk)", ".ap_rst_n(ap_rst_n)"] + ([".ap_clk2x(ap_clk)"] if s.has_clk2x else [])
    if s.weight_streamer:
        lines += [
            f"\tlogic [{s.weight_width - 1}:0] {s.name}_w_tdata;",
            f"\tlogic {s.name}_w_tvalid, {s.name}_w_tready;",
            f"\t{s.weight_streamer} {inst}_weights (",
            "\t\t.ap_clk(ap_clk), .ap_clk2x(ap_clk), .ap_rst_n(ap_rst_n),",
            "\t\t.s_axilite_AWVALID(1'b0), .s_axilite_AWPROT('0), .s_axilite_AWADDR('0),",
            "\t\t.s_axilite_WVALID(1'b0), .s_axilite_WDATA('0), .s_axilite_WSTRB('0), .s_axilite_BREADY(1'b0),",
            "\t\t.s_axilite_ARVALID(1'b0), .s_axilite_ARPROT('0), .s_axilite_ARADDR('0),",
            "\t\t.s_axilite_RREADY(1'b0), .s_axis_0_tvalid(1'b0), .s_axis_0_tdata('0),",
            "\t\t.s_axilite_AWREADY(), .s_axilite_WREADY(), .s_axilite_BVALID(), .s_axilite_BRESP(),",
            "\t\t.s_axilite_ARREADY(), .s_axilite_RVALID(), .s_axilite_RRESP(), .s_axilite_RDATA(),",
            "\t\t.s_axis_0_tready(),",
            f"\t\t.m_axis_0_tdata({s.name}_w_tdata), .m_axis_0_tvalid({s.name}_w_tvalid),"
            f" .m_axis_0_tready({s.name}_w_tready)",
            "\t);",
        ]
        ports += [f".in1_V_TDATA({s.name}_w_tdata)", f".in1_V_TVALID({s.name}_w_tvalid)",
                  f".in1_V_TREADY({s.name}_w_tready)"]
    ports += [f".{s.in_port}_TDATA({a}_tdata)", f".{s.in_port}_TVALID({a}_tvalid)",
              f".{s.in_port}_TREADY({a}_tready)", f".{s.out_port}_TDATA({b}_tdata)",
              f".{s.out_port}_TVALID({b}_tvalid)", f".{s.out_port}_TREADY({b}_tready)"]
    ports += [f".{p}('0)" for p in s.tie_low]
    return lines + [f"\t{s.module} {inst} (", "\t\t" + ",\n\t\t".join(ports), "\t);"]
