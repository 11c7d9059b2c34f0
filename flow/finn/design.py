"""The compiled design: the folder the compile stage writes, and what the host does around the accelerator.

The compile stage (trimflow.finn.compile) writes it once; the simulate and synth stages, the benches and the
deployment package read it through the names here instead of spelling file names or host-op semantics again.
Layout of a compile output folder:

- RESULT_FILE (compile.json): the CompileResult: folding, per-layer estimates, fit, host_head / host_tail ops;
- HW_MODEL (hw_model.onnx): the specialised dataflow partition with its generated code under CODEGEN_DIR;
- PARENT_MODEL (dataflow_parent.onnx): the host head and the partition node;
- FINN_DIR: FINN's own log, reports and intermediate models; FOLDING_FILE: the optimiser's plan.

FINN writes absolute paths into these files; after the folder moves (the pipeline renames every stage folder into
place), relocate_compile_dir() makes it usable where it now lies.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from trimflow import FlowError
from trimflow.artifacts import read_json, write_json
from trimflow.finn.rules import rewrite_paths

RESULT_FILE = "compile.json"
HW_MODEL = "hw_model.onnx"  # the specialised dataflow partition, code generated (for simulation)
PARENT_MODEL = "dataflow_parent.onnx"  # host-side head + the partition node
FINN_DIR = "finn"  # FINN's own output_dir (log, report/, intermediate_models/)
CODEGEN_DIR = "codegen"  # FINN_BUILD_DIR: generated code of each node
FOLDING_FILE = "folding.json"  # the optimiser's plan (folding == "optimize")


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: list[int]
    datatype: str  # FINN/QONNX datatype name, e.g. UINT8, INT12
    layout: str = ""


@dataclasses.dataclass(frozen=True)
class HostOp:
    """One elementwise op the host applies: y = x <op> const (or const <op> x when const_first)."""

    op: str
    const: list  # nested lists, broadcast against x
    const_first: bool = False
    perm: list[int] | None = None  # for Transpose head ops
    shape: list[int] | None = None  # for Reshape head ops


# The deployment runtime (hw/runtime/trimflow_runtime/accelerator.py) has its own apply_host_ops, and the flow does
# not import it: the runtime is shipped as package data and copied onto the board as a standalone folder (numpy
# only, no trimflow), so it is not an importable module of this package; and the two are deliberately not the same
# arithmetic. Here the ops run in the precision of `x` (the simulate stage and the compile check pass float64, so a
# Mul-then-Add tail rounds once, at the end), which is what their agreement with the QONNX execution is measured
# with; the runtime computes in float32 on the board and reshapes per batch. tests/test_runtime.py checks the
# runtime's scores against the QONNX execution on real images, which pins the two to the same results.
def apply_host_ops(ops: Sequence[HostOp | dict], x: np.ndarray) -> np.ndarray:
    """Apply recorded host-side ops (a CompileResult's host_head or host_tail) to `x`."""
    for op in ops:
        op = op if isinstance(op, HostOp) else HostOp(**op)
        if op.op == "Transpose":
            x = np.transpose(x, op.perm)
            continue
        if op.op == "Reshape":
            x = np.reshape(x, op.shape)
            continue
        c = np.asarray(op.const, dtype=np.float32)
        a, b = (c, x) if op.const_first else (x, c)
        x = {"Mul": np.multiply, "Add": np.add, "Sub": np.subtract, "Div": np.divide}[op.op](a, b)
    return np.asarray(x, dtype=np.float32)


def relocate_compile_dir(out_dir: str | os.PathLike) -> Path:
    """Make a compile output dir usable where it is now, after it was moved (e.g. renamed into place by the
    pipeline): FINN's absolute paths in hw_model.onnx and the generated code are rewritten to the current location.
    Idempotent and cheap when nothing moved; call it before using hw_model.onnx. Returns the resolved dir."""
    out_dir = Path(out_dir).resolve()
    result_file = out_dir / RESULT_FILE
    if not result_file.is_file():
        raise FlowError(f"{out_dir} is not a compile output ({RESULT_FILE} missing); run the compile stage")
    data = read_json(result_file)
    built_in = data.get("built_in", "")
    if built_in and built_in != str(out_dir):
        rewrite_paths(out_dir, built_in, str(out_dir))
        data["built_in"] = str(out_dir)
        write_json(result_file, data)  # last, so an interrupted relocation is simply redone
    return out_dir
