"""FINN's execution of a specialised HW-layer model: the integer reference the Verilator simulation must match.

Two modes: "python" (FINN's python model of every node; runs anywhere) and "xsim" (FINN's own node-by-node RTL
simulation in Vivado's XSim, with Vitis HLS for HLS layers; only where Vivado is installed).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from trimflow import FlowError

MODES = ("python", "xsim")


def execute_hw_model(hw_model_path: str | os.PathLike, images_nhwc: np.ndarray, mode: str = "python",
                     fpga_part: str = "", clk_ns: float = 10.0) -> np.ndarray:
    """Outputs of FINN's execution of every node, image by image, as int64.

    Specialised `_rtl` nodes accept only the cppsim/rtlsim exec modes; for them "cppsim" runs the python model
    (no C++ is compiled), which is what makes the python mode usable without Vivado. The xsim mode needs the
    board's part and clock to generate the IP it simulates.
    """
    import finn.core.onnx_exec as oxe
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    if mode not in MODES:
        raise FlowError(f"execute_hw_model: mode must be one of {', '.join(MODES)}, got {mode!r}")
    model = ModelWrapper(str(hw_model_path))
    if mode == "xsim":
        model = _prepare_xsim(model, Path(hw_model_path), fpga_part, clk_ns)
    else:
        _generic_hls_layers(model)
    for node in model.graph.node:
        getCustomOp(node).set_nodeattr("exec_mode", "cppsim" if mode == "python" else "rtlsim")
    iname, oname = model.graph.input[0].name, model.graph.output[0].name
    outs = [oxe.execute_onnx(model, {iname: x[None].astype(np.float32)})[oname] for x in images_nhwc]
    return np.concatenate(outs).astype(np.int64)


def _generic_hls_layers(model) -> None:
    """Let `_hls` nodes run FINN's python model of their generic layer (in place).

    An `_hls` node's own execute_node compiles its C++ (cppsim), which needs Vitis HLS headers; the generic layer
    (e.g. DuplicateStreams for DuplicateStreams_hls) is what FINN itself executes before SpecializeLayers, with the
    same attributes.
    """
    from qonnx.custom_op.registry import is_custom_op

    for node in model.graph.node:
        if node.op_type.endswith("_hls") and is_custom_op("finn.custom_op.fpgadataflow", node.op_type[:-4]):
            node.op_type, node.domain = node.op_type[:-4], "finn.custom_op.fpgadataflow"
    # FINN's python model of a depthwise ConvolutionInputGenerator_rtl interleaves its output into the stream order
    # (channel groups outside the window positions, for a VVAU), while Pool's python model reads the plain im2col
    # order: the pair computes maxima across channels whenever SIMD < channels. The generic generator's model is the
    # plain im2col, the order Pool expects (FINN executes the pair so before SpecializeLayers).
    for node in model.graph.node:
        src = model.find_producer(node.input[0]) if node.op_type == "Pool" else None
        if src is not None and src.op_type == "ConvolutionInputGenerator_rtl":
            src.op_type, src.domain = "ConvolutionInputGenerator", "finn.custom_op.fpgadataflow"


def _prepare_xsim(model, source: Path, fpga_part: str, clk_ns: float):
    from finn.transformation.fpgadataflow.hlssynth_ip import HLSSynthIP
    from finn.transformation.fpgadataflow.prepare_ip import PrepareIP
    from finn.transformation.fpgadataflow.prepare_rtlsim import PrepareRTLSim

    from trimflow.finn.adapter import vivado_available

    if not vivado_available():
        raise FlowError("FINN's XSim simulation needs Vivado (XILINX_VIVADO set, vivado on PATH); without it use "
                        "the Verilator simulation (trimflow.sim) or mode='python'")
    if not fpga_part:
        raise FlowError("execute_hw_model(mode='xsim') needs the FPGA part to generate the layers' IP")
    try:
        # PrepareIP keeps code already generated (the compile stage's RTL); HLS layers get synthesised by Vitis HLS
        model = model.transform(PrepareIP(fpga_part, clk_ns))
        model = model.transform(HLSSynthIP())
        return model.transform(PrepareRTLSim())
    except Exception as e:  # FINN raises plain Exceptions with the tool's log path in the message
        raise FlowError(f"FINN could not prepare XSim for {source}: {type(e).__name__}: {e}") from e
