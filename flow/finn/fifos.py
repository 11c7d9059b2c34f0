"""FIFO depths found by simulation, in FINN's terms: rounding to what FINN builds, the FINN model's attributes and
FINN's FIFO-config file.

trimflow.sim.fifo_sizing measures how many beats each FIFO between two layers held at most; this module turns that
into what FINN consumes:
- `finn_depth`: the depth to build, the measured need rounded up to the largest depth that costs the same under
  FINN's FIFO cost model (finn.util.resource_models, fitted to finn-rtllib's fifo.sv: SRL up to 33 entries, then
  LUTRAM up to 257, then BRAM/URAM), so the rounding is free margin;
- `set_fifo_depths`: the depths as FINN's per-node `outFIFODepths` / `inFIFODepths` attributes, which InsertFIFO
  (in FINN's build and in trimflow.finn.estimates) turns into StreamingFIFO depths;
- `fifo_config`: FINN's `fifo_config_file` JSON (ApplyFIFODepthsFromFile), named as FINN's step_set_fifo_depths
  names the FIFOs, so a Vivado build with `auto_fifo_depths=False` uses the depths and skips XSim-based sizing.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Iterable, Mapping

MIN_DEPTH = 2  # fifo.sv builds nothing shallower
FIFO_CONFIG = "fifo_depths.json"  # FINN's fifo_config_file (synth: fifo_sizing = this file)
SIZED_MODEL = "hw_model_sized_fifos.onnx"  # the HW model with the sized depths as FINN attributes


def fifo_style(depth: int, width: int) -> str:
    """The storage fifo.sv elaborates for `depth` × `width` with ram_style auto (FINN's _resolve)."""
    from finn.util.resource_models import _resolve

    return _resolve(depth, width, "auto")


def _cost(depth: int, width: int) -> tuple:
    from finn.util.resource_models import _fifo_cost

    style = fifo_style(depth, width)
    c = _fifo_cost(depth, width, style, False)
    return style, c.lut, c.bram, c.uram


def finn_depth(need: int, width: int) -> int:
    """The FIFO depth to build for `need` beats: at least MIN_DEPTH, rounded up to the largest depth with the same
    storage style and cost under FINN's model (cost is non-decreasing in depth within a style, so a bisection over
    [need, 2·need] finds the end of the step)."""
    d = max(MIN_DEPTH, int(need))
    base = _cost(d, width)
    lo, hi = d, 2 * d
    if _cost(hi, width) == base:
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _cost(mid, width) == base:
            lo = mid
        else:
            hi = mid
    return lo


def set_fifo_depths(model: Any, links: Iterable[Mapping[str, Any]]) -> Any:
    """Write sized FIFO depths into a HW-layer model (in place; returns it) as FINN's outFIFODepths/inFIFODepths.

    `links`: one mapping per FIFO with producer, producer_port, consumer, consumer_port and depth; an end that is
    not a node of `model` (a width converter the simulator inserted, the graph's input or output) is skipped, the
    other end carries the depth. Every other FIFO of the model is set to MIN_DEPTH, so the model describes the
    sized design alone."""
    from qonnx.custom_op.registry import getCustomOp

    nodes = {n.name: n for n in model.graph.node}
    for node in model.graph.node:
        inst = getCustomOp(node)
        attrs = inst.get_nodeattr_types()
        n_in = len([i for i in node.input if i and model.get_initializer(i) is None])
        if "inFIFODepths" in attrs:
            inst.set_nodeattr("inFIFODepths", [MIN_DEPTH] * max(1, n_in))
        if "outFIFODepths" in attrs:
            inst.set_nodeattr("outFIFODepths", [MIN_DEPTH] * max(1, len(node.output)))
    for link in links:
        for end, attr, port in (("producer", "outFIFODepths", "producer_port"),
                                ("consumer", "inFIFODepths", "consumer_port")):
            node = nodes.get(link[end])
            if node is None:
                continue
            inst = getCustomOp(node)
            depths = list(inst.get_nodeattr(attr))
            idx = int(link[port])
            depths += [MIN_DEPTH] * (idx + 1 - len(depths))
            depths[idx] = max(depths[idx], int(link["depth"]))
            inst.set_nodeattr(attr, depths)
    return model


def with_fifos(model: Any, part: str) -> Any:
    """A copy of a HW-layer model as FINN's step_set_fifo_depths (auto_fifo_depths=False) builds it before applying
    a FIFO-config file: width converters, a StreamingFIFO on every stream at the depths of the nodes' FIFO
    attributes, RTL FIFOs, FINN's node names. Call inside trimflow.finn.adapter.finn_session."""
    from finn.transformation.fpgadataflow.insert_dwc import InsertDWC
    from finn.transformation.fpgadataflow.insert_fifo import InsertFIFO
    from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp
    from qonnx.transformation.general import GiveReadableTensorNames, GiveUniqueNodeNames

    m = ModelWrapper(copy.deepcopy(model.model)).transform(InsertDWC())
    m = m.transform(InsertFIFO(create_shallow_fifos=True))
    for node in m.graph.node:
        if node.op_type in ("StreamingFIFO", "StreamingDataWidthConverter"):
            getCustomOp(node).set_nodeattr("preferred_impl_style", "rtl")
    m = m.transform(SpecializeLayers(part))
    return m.transform(GiveUniqueNodeNames()).transform(GiveReadableTensorNames())


def fifo_config(model: Any, part: str) -> dict[str, Any]:
    """FINN's fifo_config_file content for a model whose FIFO attributes hold the sized depths (set_fifo_depths).
    Call inside trimflow.finn.adapter.finn_session."""
    from qonnx.custom_op.registry import getCustomOp

    m = with_fifos(model, part)
    cfg: dict[str, Any] = {"fifo_depths": {}, "impl_style": {}, "ram_style": {}}
    for node in m.get_nodes_by_op_type("StreamingFIFO_rtl"):
        inst = getCustomOp(node)
        cfg["fifo_depths"][node.name] = int(inst.get_nodeattr("depth"))
        cfg["impl_style"][node.name] = "rtl"
        cfg["ram_style"][node.name] = str(inst.get_nodeattr("ram_style"))
    return cfg


def record_sized_fifos(hw_model_path: Any, sizing: Any, board: Any, out_dir: Any, design: Any) -> dict[str, Any]:
    """Write the sized depths next to a simulation and estimate the sized design; returns the simulate stage's
    summary of it. Written to out_dir: FIFO_CONFIG (for FINN), SIZED_MODEL (the HW model with the depths as FINN
    attributes) and a new version of the design (trimflow.finn.design.DESIGN_FILE, fifo_depths "simulation"): the
    compile stage's `design` with the sized FIFOs, their estimate and fit; the compile stage's own file is unchanged.

    `sizing`: a trimflow.sim.fifo_sizing.FifoSizing of this model's simulator. The summary holds the estimate with
    every FIFO at the depth the compile stage's design gives it and with the sized depths, the fit check of the
    latter, and the FIFOs that need more than the design gave them."""
    from pathlib import Path

    from qonnx.core.modelwrapper import ModelWrapper

    from trimflow.artifacts import to_jsonable, write_json
    from trimflow.boards import check_fit
    from trimflow.finn.adapter import finn_session
    from trimflow.finn.design import SIMULATED
    from trimflow.finn.estimates import estimate_design

    out_dir = Path(out_dir)
    links = [dataclasses.asdict(f) for f in sizing.fifos]
    with finn_session(out_dir / "fifo-finn"):
        model = ModelWrapper(str(hw_model_path))
        set_fifo_depths(model, links)
        sized = estimate_design(model, board.part, out_dir / "fifo-est-sized", sized_fifos=True)
        write_json(out_dir / FIFO_CONFIG, fifo_config(model, board.part))
        model.save(str(out_dir / SIZED_MODEL))
    fit = check_fit(sized.totals, board)
    dataclasses.replace(design, fifos=sized.fifo_list, width_converters=sized.dwc_list, totals=sized.totals,
                        fit=to_jsonable(fit), fits=fit.ok, fifo_depths=SIMULATED, notes=sized.notes,
                        finn_fifo_config=FIFO_CONFIG).save(out_dir)

    def charged_depth(f: dict) -> int:
        fifo = design.fifo_at(f["producer"], f["producer_port"], f["consumer"], f["consumer_port"])
        return fifo.depth if fifo is not None else 0

    deeper = [f"{f['producer']} -> {f['consumer']}: {f['depth']} > {charged_depth(f)}" for f in links
              if f["depth"] > charged_depth(f)]
    return {
        **to_jsonable(sizing), "fifo_config": FIFO_CONFIG, "sized_model": SIZED_MODEL,
        "estimate_charged": {"fifos": design.resources("fifos"), "totals": design.totals},
        "estimate_sized": {"fifos": sized.fifos, "totals": sized.totals},
        "fits_sized": fit.ok, "fit_sized": to_jsonable(fit), "fit_sized_table": fit.table(),
        "deeper_than_charged": deeper,
    }
