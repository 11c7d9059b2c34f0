"""FINN's python execution of a specialised HW-layer model: the integer reference the RTL must match."""

from __future__ import annotations

import os

import numpy as np


def execute_hw_model(hw_model_path: str | os.PathLike, images_nhwc: np.ndarray) -> np.ndarray:
    """Outputs of FINN's python model of every node, image by image, as int64.

    Specialised `_rtl` nodes accept only the cppsim/rtlsim exec modes; for them "cppsim" runs the python model
    (no C++ is compiled), which is what makes this usable without Vivado.
    """
    import finn.core.onnx_exec as oxe
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    model = ModelWrapper(str(hw_model_path))
    for node in model.graph.node:
        getCustomOp(node).set_nodeattr("exec_mode", "cppsim")
    iname, oname = model.graph.input[0].name, model.graph.output[0].name
    outs = [oxe.execute_onnx(model, {iname: x[None].astype(np.float32)})[oname] for x in images_nhwc]
    return np.concatenate(outs).astype(np.int64)
