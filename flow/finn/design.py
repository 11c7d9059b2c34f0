"""The compiled design: the folder the compile stage writes, and what the host does around the accelerator.

The compile stage (trimflow.finn.compile) writes it once; the simulate and synth stages, the benches and the
deployment package read it through the names here instead of spelling file names or host-op semantics again.
Layout of a compile output folder:

- RESULT_FILE (compile.json): the CompileResult: folding, per-layer estimates, fit, host_head / host_tail ops;
- DESIGN_FILE (design.json): the `Design`, the typed record of the hardware as it will be built: every layer with
  its folding and estimate, every FIFO and width converter on each stream with its depth / widths, the host-side
  ops and the fit. The compile stage writes it with the FIFO depths assumed for the unsized design
  (trimflow.finn.estimates decides them, the one owner); the simulate stage writes a new version with the depths
  it sized (its own folder; the compile stage's cached output is never changed). The simulator, the synthesis path
  and the deployment package read it (`load`) instead of inserting FIFOs or width converters themselves;
- HW_MODEL (hw_model.onnx): the specialised dataflow partition with its generated code under CODEGEN_DIR;
- PARENT_MODEL (dataflow_parent.onnx): the host head and the partition node;
- FINN_DIR: FINN's own log, reports and intermediate models; FOLDING_FILE: the optimiser's plan.

FINN writes absolute paths into these files; after the folder moves (the pipeline renames every stage folder into
place), relocate_compile_dir() makes it usable where it now lies.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Sequence

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
DESIGN_FILE = "design.json"  # the Design (below)


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


# ---------------------------------------------------------------- the Design: what the hardware holds

DESIGN_VERSION = 1  # raise when a field changes meaning; load() refuses other versions
INPUT, OUTPUT = "input", "output"  # stream ends outside the dataflow partition (the DMA's side)
ASSUMED, SIMULATED = "assumed", "simulation"  # where a Design's FIFO depths come from
FOLDING_ATTRS = ("PE", "SIMD", "parallel_window")  # FINN's folding attributes a layer may have


@dataclasses.dataclass(frozen=True)
class Layer:
    """One node of the dataflow partition (the compile stage's hw_model.onnx), as the fit check counts it."""

    name: str
    op_type: str
    folding: dict[str, int]  # the FOLDING_ATTRS this node has
    cycles: int  # FINN's expected cycles per image
    estimate: dict[str, float]  # RESOURCES, FINN's estimate completed as trimflow.finn.estimates.NOTES say


@dataclasses.dataclass(frozen=True)
class WidthConverter:
    """A StreamingDataWidthConverter on a stream whose two ends' widths differ (FINN's InsertDWC)."""

    name: str  # its node name (trimflow.finn.rules.name_inserted_nodes): stream ends of FIFOs refer to it
    producer: str  # the node it reads from
    consumer: str  # the node it feeds
    in_width: int
    out_width: int
    estimate: dict[str, float]


@dataclasses.dataclass(frozen=True)
class Fifo:
    """A StreamingFIFO on one stream: between two nodes (layers or width converters), or between the partition's
    input / output (INPUT, OUTPUT) and its first / last node."""

    producer: str
    producer_port: int
    consumer: str
    consumer_port: int
    width: int  # bits per beat
    depth: int
    # the least depth this stream needs to run at all (a fork/join's short branch: trimflow.finn.residual.
    # join_fifo_depths); 0 when any depth will do. A simulator built with other depths keeps at least this.
    min_depth: int = 0
    estimate: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def between_nodes(self) -> bool:
        return self.producer != INPUT and self.consumer != OUTPUT

    @property
    def ends(self) -> tuple[str, int, str, int]:
        return self.producer, self.producer_port, self.consumer, self.consumer_port


@dataclasses.dataclass(frozen=True)
class Design:
    """The compiled hardware design (DESIGN_FILE). `fifo_depths` says whether the FIFOs' depths are the assumed
    ones of the unsized design (ASSUMED) or sized by simulation (SIMULATED, with `finn_fifo_config` naming FINN's
    FIFO-config file beside it)."""

    board: str
    part: str
    clock_period_ns: float
    layers: list[Layer]
    width_converters: list[WidthConverter]
    fifos: list[Fifo]
    host_head: list[HostOp]
    host_tail: list[HostOp]
    accel_input: TensorInfo
    accel_output: TensorInfo
    totals: dict[str, float]  # layers + FIFOs + width converters (the board shell is in `fit`)
    fit: dict[str, Any]  # trimflow.boards.FitReport of `totals`, shell included
    fits: bool
    fifo_depths: str  # ASSUMED or SIMULATED
    notes: list[str]  # how each estimate was made
    finn_fifo_config: str = ""  # SIMULATED: FINN's fifo_config_file (trimflow.finn.fifos.FIFO_CONFIG), relative
    version: int = DESIGN_VERSION

    def fifo_at(self, producer: str, producer_port: int, consumer: str, consumer_port: int) -> Fifo | None:
        return next((f for f in self.fifos if f.ends == (producer, producer_port, consumer, consumer_port)), None)

    def resources(self, which: str) -> dict[str, float]:
        """"fifos" or "width_converters": count plus summed RESOURCES (as compile.json's estimates hold them)."""
        from trimflow.boards import RESOURCES

        items = [x.estimate for x in getattr(self, which)]
        return {"count": float(len(items)), **{r: float(sum(i.get(r, 0.0) for i in items)) for r in RESOURCES}}

    def save(self, folder: str | os.PathLike) -> Path:
        path = Path(folder) / DESIGN_FILE
        write_json(path, self)
        return path


def _build(cls: type, data: Any, where: str) -> Any:
    """`cls` from its JSON form, nested dataclasses included; TypeError/ValueError naming `where` when it does not
    match."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown keys {', '.join(unknown)}")
    nested = {"layers": Layer, "width_converters": WidthConverter, "fifos": Fifo, "host_head": HostOp,
              "host_tail": HostOp}
    args = {}
    for name, value in data.items():
        if cls is Design and name in nested:
            if not isinstance(value, list):
                raise ValueError(f"{where}.{name}: expected a list")
            value = [_build(nested[name], v, f"{where}.{name}[{i}]") for i, v in enumerate(value)]
        elif cls is Design and name in ("accel_input", "accel_output"):
            value = _build(TensorInfo, value, f"{where}.{name}")
        args[name] = value
    return cls(**args)


def load(folder_or_file: str | os.PathLike) -> Design:
    """The Design in a folder (its DESIGN_FILE) or file; FlowError, one line naming the file, when it is missing,
    not a Design, or from another version of the flow."""
    path = Path(folder_or_file)
    path = path / DESIGN_FILE if path.is_dir() else path
    if not path.is_file():
        raise FlowError(f"{path} is missing; run the compile stage (it writes the design)")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise FlowError(f"{path} is not readable JSON ({type(e).__name__}); delete it and rerun the compile stage") \
            from None
    version = data.get("version") if isinstance(data, dict) else None
    if version != DESIGN_VERSION:
        raise FlowError(f"{path} is a design of version {version!r}, this flow reads version {DESIGN_VERSION}; "
                        "rerun the compile stage")
    try:
        design = _build(Design, data, DESIGN_FILE)
        _check(design)
    except (TypeError, ValueError) as e:
        raise FlowError(f"{path} is not a valid design: {str(e).splitlines()[0]}; rerun the compile stage") \
            from None
    return design


def _check(d: Design) -> None:
    if d.fifo_depths not in (ASSUMED, SIMULATED):
        raise ValueError(f"fifo_depths must be {ASSUMED!r} or {SIMULATED!r}, got {d.fifo_depths!r}")
    names = {x.name for x in d.layers} | {x.name for x in d.width_converters}
    for f in d.fifos:
        for end in (f.producer, f.consumer):
            if end not in names | {INPUT, OUTPUT}:
                raise ValueError(f"a FIFO names {end!r}, which is no layer or width converter of the design")
        if not (isinstance(f.depth, int) and f.depth >= 2 and isinstance(f.width, int) and f.width >= 1):
            raise ValueError(f"FIFO {f.producer} -> {f.consumer}: depth {f.depth!r} / width {f.width!r}")
