"""FINN's own folding heuristic, searched fairly: every distinct folding SetFolding (target_fps) can produce.

A FINN user picks `target_fps` and gets SetFolding's folding; nothing in FINN checks that it fits the board, and the
resources are not monotonic in the target (a layer's weight memory splits better into BRAM18 at some SIMD than at
the next one), so a geometric grid of targets misses fitting designs between its steps.

SetFolding gives every node the first divisor whose cycles meet the frame budget T = int(clock / target_fps) (a
second pass reruns at the reached bottleneck when a node misses T). So the folding for T is also the folding for
every budget down to its own bottleneck's cycles c, and the next different folding is the one for T = c - 1:
stepping T that way visits every distinct folding, fastest last (when the target is missed, no faster one exists).
Each is then judged under two yardsticks, with the board's shell added to both:
- FINN's own: its per-node estimates plus the width converters InsertDWC adds (LUT / BRAM18 / URAM / DSP; FINN has
  no FF model), i.e. what a FINN user checking FINN's reports against the caps would see;
- trimflow's completed estimate (trimflow.finn.estimates: RTL-MVAU LUTs, FF, FIFOs), what the compile stage checks.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

from trimflow.boards import Board
from trimflow.finn.folding import FOLDABLE
from trimflow.finn.reports import LAYER_RESOURCES

# The resources FINN estimates (no FF model): its yardstick checks only these.
FINN_RESOURCES = LAYER_RESOURCES


@dataclasses.dataclass(frozen=True)
class FinnFolding:
    target_cycles: int  # the largest frame budget T that yields this folding (any T down to max_cycles does too)
    target_fps: float  # a target_fps that FINN turns into target_cycles
    max_cycles: int
    fps: float  # at the board clock
    folding: dict[str, dict[str, int]]  # FINN folding-config layout (node → PE / SIMD / parallel_window)
    finn: dict[str, float] | None = None  # FINN's estimate of the design (layers + DWCs), no shell
    completed: dict[str, float] | None = None  # trimflow's estimate of the design (incl. FIFOs/DWCs), no shell
    fits_finn: bool | None = None  # None: not evaluated (a faster folding already fit under that yardstick)
    fits: bool | None = None


@dataclasses.dataclass(frozen=True)
class FinnBaseline:
    board: str
    foldings: list[FinnFolding]  # every distinct folding, slowest first; evaluated ones have resources
    best_finn: FinnFolding | None  # fastest that fits by FINN's own estimates
    best: FinnFolding | None  # fastest that fits by trimflow's completed estimate
    evaluated: int
    seconds: float


def _folding_of(model: Any) -> dict[str, dict[str, int]]:
    from qonnx.custom_op.registry import getCustomOp

    out = {}
    for node in model.graph.node:
        kind = next((k for k in FOLDABLE if node.op_type.startswith(k)), None)
        if kind is None:
            continue
        inst = getCustomOp(node)
        attrs = {a: int(inst.get_nodeattr(a)) for a, _ in FOLDABLE[kind]}
        if "parallel_window" in inst.get_nodeattr_types():
            attrs["parallel_window"] = int(inst.get_nodeattr("parallel_window"))
        out[node.name] = attrs
    return out


def _set_folding(base: Any, budget: int, mvau_wwidth_max: int) -> tuple[Any, int]:
    """SetFolding as FINN's step_target_fps_parallelization runs it (two-pass relaxation on), on a copy."""
    from finn.analysis.fpgadataflow.dataflow_performance import dataflow_performance
    from finn.transformation.fpgadataflow.set_folding import SetFolding
    from qonnx.core.modelwrapper import ModelWrapper

    model = ModelWrapper(copy.deepcopy(base.model)).transform(
        SetFolding(budget, mvau_wwidth_max=mvau_wwidth_max, two_pass_relaxation=True))
    return model, int(model.analysis(dataflow_performance)["max_cycles"])


def enumerate_finn_foldings(hw_model: Any, board: Board, mvau_wwidth_max: int = 36) -> list[tuple[FinnFolding, Any]]:
    """Every distinct folding SetFolding produces for a specialised HW model (ModelWrapper, not modified), slowest
    first, each with its folded model. Call inside trimflow.finn.adapter.finn_session."""
    import logging

    logging.getLogger("finn").setLevel(logging.ERROR)  # one "target missed" warning per node and step otherwise
    out: list[tuple[FinnFolding, Any]] = []
    budget = 1 << 62  # everything fully folded meets it
    while budget >= 1:
        model, cycles = _set_folding(hw_model, budget, mvau_wwidth_max)
        if out and cycles >= out[-1][0].max_cycles:
            break  # the target is missed: the relaxed second pass gives back the fastest folding already found
        # int(clock / (clock / (budget + 0.5))) == budget: a target_fps that FINN turns into this budget
        target = board.fps(min(budget, cycles) + 0.5)
        out.append((FinnFolding(min(budget, 1 << 40), target, cycles, board.fps(cycles), _folding_of(model)), model))
        if cycles > budget:
            break
        budget = cycles - 1
    return out


def finn_baseline(hw_model_path: str | Path, board: Board, scratch: str | Path, mvau_wwidth_max: int = 36,
                  log: Any = None) -> FinnBaseline:
    """FINN's fastest folding that fits `board` under each yardstick, searched over every distinct folding.

    The foldings are judged fastest first, each estimated whole (FIFOs, width converters) until both yardsticks
    have found their fastest fitting one."""
    from qonnx.core.modelwrapper import ModelWrapper

    from trimflow.finn.adapter import finn_session
    from trimflow.finn.estimates import estimate_design

    t0 = time.perf_counter()
    scratch = Path(scratch)
    shell = board.shell_overhead  # for the log lines, which show the design with the shell
    with finn_session(scratch / "codegen"):
        base = ModelWrapper(str(hw_model_path))
        found = enumerate_finn_foldings(base, board, mvau_wwidth_max)
        results: list[FinnFolding] = [f for f, _ in found]
        best_finn = best = None
        evaluated = 0
        for i in range(len(found) - 1, -1, -1):
            if best_finn is not None and best is not None:
                break
            f, model = found[i]
            est = estimate_design(model, board.part, scratch / f"e{i}")
            evaluated += 1
            finn = {r: sum(v[r] for v in est.finn_layers.values()) + est.width_converters[r] for r in FINN_RESOURCES}
            f = dataclasses.replace(f, finn=finn, completed=dict(est.totals),
                                    fits_finn=board.fits(finn, FINN_RESOURCES), fits=board.fits(est.totals))
            results[i] = f
            if f.fits_finn and best_finn is None:
                best_finn = f
            if f.fits and best is None:
                best = f
            if log:
                log(f"  FINN T={f.target_cycles:>9} {f.fps:10.1f} fps  LUT {finn['LUT'] + shell['LUT']:8.0f} (FINN) "
                    f"{est.totals['LUT'] + shell['LUT']:8.0f} (completed)  "
                    f"BRAM18 {finn['BRAM18'] + shell['BRAM18']:4.0f}  DSP {finn['DSP'] + shell['DSP']:4.0f}  "
                    f"fits FINN {f.fits_finn} completed {f.fits}")
    shutil.rmtree(scratch, ignore_errors=True)
    return FinnBaseline(board.name, results, best_finn, best, evaluated, round(time.perf_counter() - t0, 1))
