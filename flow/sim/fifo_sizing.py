"""FIFO sizing without Vivado: our counterpart of FINN's step_set_fifo_depths, which simulates in XSim.

On a simulator built with deep FIFOs (SIZING_DEPTH beats on every link between two layers, trimflow.sim.simulator)
and a few real images:
1. the design runs free (source always valid): its II and outputs are the reference;
2. it runs again with the input paced at that II, its beats spread evenly (as a DMA throttled to the design's
   throughput would deliver them), so that no layer runs ahead of the bottleneck; each FIFO's peak fill level is
   then what the layers' own burstiness needs at full throughput, not how far an unthrottled source gets ahead of
   the slowest layer (up to most of an image in front of it);
3. each FIFO gets trimflow.finn.fifos.finn_depth(peak + 1): one beat of margin for fifo.sv's registered ready, then
   rounded up to the end of its step in FINN's FIFO cost model;
4. the sized design runs free again, each FIFO capped at depth - 1 (our FIFO passes a beat through when full,
   fifo.sv does not, so ours holds one less to be no stronger than FINN's): outputs equal to the reference, II
   within `ii_tolerance` of the deep one, no deadlock (the simulator's watchdog). A FIFO that was full in that run
   while the II was off is doubled and the check repeated (`rounds`).
Residual joins are sized the same way: the FIFO in front of a join's short-branch input gets what it held, not the
one-image bound trimflow.finn.residual.join_fifo_depths gives the unsized design.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import numpy as np

from trimflow import FlowError

SIZING_DEPTH = 8192  # beats every FIFO of the sizing simulator holds (deeper where a join needs a whole image)
SIZING_IMAGES = 8  # images per sizing run: the first fills the pipeline, the rest show its steady state
II_TOLERANCE = 0.005  # the sized design's II may exceed the deep one by this fraction


@dataclasses.dataclass(frozen=True)
class SizedFifo:
    name: str  # the simulator's FIFO stage
    producer: str
    producer_port: int
    consumer: str
    consumer_port: int
    width: int  # bits per beat
    peak: int  # most beats held at once, input paced at the design's II
    depth: int  # the depth to build (FINN's StreamingFIFO depth)
    style: str  # fifo.sv storage at that depth: srl / distributed / block / ultra


@dataclasses.dataclass(frozen=True)
class FifoSizing:
    fifos: list[SizedFifo]
    images: int
    pace: int  # cycles per image the input was paced at in step 2
    ii_deep: float
    ii_sized: float
    latency_deep: int  # first image, cycles
    latency_sized: int
    bit_exact: bool  # the sized design's outputs equal the deep design's
    rounds: int  # sized runs needed (1 = the first sizing held)
    seconds: float

    def limits(self) -> dict[str, int]:
        """Fill-level caps (Simulator.run's fifo_limits) that make the simulator behave as the sized design."""
        return {f.name: f.depth - 1 for f in self.fifos}

    def summary(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _sized(fifo: dict, peak: int, depth: int) -> SizedFifo:
    from trimflow.finn.fifos import fifo_style

    return SizedFifo(fifo["name"], fifo["producer"], int(fifo["producer_port"]), fifo["consumer"],
                     int(fifo["consumer_port"]), int(fifo["width"]), int(peak), int(depth),
                     fifo_style(depth, int(fifo["width"])))


def size_fifos(sim: Any, images: np.ndarray, ii_tolerance: float = II_TOLERANCE, rounds: int = 4) -> FifoSizing:
    """Size every FIFO of `sim` (a trimflow.sim.Simulator built with deep FIFOs) on `images` (at least 3)."""
    from trimflow.finn.fifos import finn_depth

    t0 = time.perf_counter()
    fifos = sim.manifest.get("fifos", [])
    if len(images) < 3:
        raise FlowError(f"FIFO sizing needs at least 3 images (one to fill the pipeline, two for its II), got "
                        f"{len(images)}")
    if not fifos:
        raise FlowError(f"simulator {sim.sim_dir} has no FIFOs between its layers; build it with "
                        f"SimConfig(fifo_depth={SIZING_DEPTH}) to size them")
    deep = sim.run(images)
    pace = int(math.ceil(deep.ii))
    paced = sim.run(images, pace=pace)
    full = [f["name"] for f in fifos if paced.fifo_peak[f["name"]] >= f["depth"]]
    if full:
        raise FlowError(f"FIFO sizing: {', '.join(full)} filled the simulator's built depth even with the input "
                        f"paced at the design's II ({pace} cycles); build the sizing simulator with a larger "
                        f"SimConfig.fifo_depth than {min(f['depth'] for f in fifos)}")
    built = {f["name"]: int(f["depth"]) for f in fifos}
    width = {f["name"]: int(f["width"]) for f in fifos}
    depths = {k: min(built[k], finn_depth(paced.fifo_peak[k] + 1, width[k])) for k in built}
    for attempt in range(1, rounds + 1):
        try:
            sized = sim.run(images, fifo_limits={k: max(1, d - 1) for k, d in depths.items()})
        except FlowError as e:
            if "deadlocked" not in str(e) or attempt == rounds:
                raise FlowError(f"FIFO sizing: the sized design failed ({e})") from None
            depths = {k: min(built[k], 2 * d) for k, d in depths.items()}  # no culprit named: deepen all
            continue
        if sized.ii <= deep.ii * (1 + ii_tolerance):
            break
        if attempt == rounds:
            raise FlowError(f"FIFO sizing: the sized design's II is {sized.ii:.1f} cycles against {deep.ii:.1f} with "
                            f"deep FIFOs after {rounds} rounds of deepening the full ones")
        grow = [k for k, d in depths.items() if sized.fifo_peak[k] >= d - 1 and d < built[k]]
        if not grow:
            raise FlowError(f"FIFO sizing: the sized design's II is {sized.ii:.1f} cycles against {deep.ii:.1f}, and "
                            "no FIFO was full; the difference is not in the FIFOs")
        depths.update({k: min(built[k], finn_depth(2 * depths[k], width[k])) for k in grow})
    bit_exact = bool(np.array_equal(sized.outputs, deep.outputs))
    if not bit_exact:
        raise FlowError("FIFO sizing: the sized design's outputs differ from the deep design's; FIFO depth must not "
                        "change results, so this is a simulator or RTL fault")
    return FifoSizing([_sized(f, paced.fifo_peak[f["name"]], depths[f["name"]]) for f in fifos], len(images), pace,
                      float(deep.ii), float(sized.ii), int(deep.latency), int(sized.latency), bit_exact, attempt,
                      round(time.perf_counter() - t0, 2))
