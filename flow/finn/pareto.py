"""The throughput/LUT trade-off of one network on one board: the Pareto set (fps vs LUT) around the built folding.

The folding optimiser (trimflow.finn.folding) returns a single plan, the fastest that fits the whole board. A person
choosing how much of the fabric to give the accelerator (room for other logic, easier timing closure) wants the
curve instead: how much throughput each share of the LUTs buys. The curve is sampled by running the same optimiser
(plan_within_caps, so every figure is the whole folded design incl. FIFOs and width converters) under
- LUT budgets between the fully folded design and the built plan: the board with its LUT cap lowered;
- throughput targets between the two, geometric (fps spans orders of magnitude): the cheapest plan per target.
The two series find different designs (a LUT budget trades LUTs only, a target minimises the weighted use of every
resource), and their union, the fully folded design and the built plan, filtered to the non-dominated points, is
the front. Every point fits the board's other caps; a LUT-budget point also fits its own budget.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from pathlib import Path
from typing import Any

from trimflow import FlowError
from trimflow.artifacts import read_json, to_jsonable, write_json
from trimflow.boards import RESOURCES, Board

PARETO_FILE = "pareto.json"


@dataclasses.dataclass(frozen=True)
class ParetoPoint:
    fps: float  # at the board clock (FINN's per-layer cycle estimates)
    max_cycles: int
    resources: dict[str, float]  # the whole folded design incl. FIFOs/DWCs, without the board shell
    lut_budget: int  # the LUT limit (design + shell) it was planned under; the board's own cap unless swept
    source: str  # which run found it: "fully folded", "build", "LUT budget 0.40", "target 1,234 fps"
    limited_by: str
    folding: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)  # FINN folding-config layout
    fits: bool = True  # within lut_budget and the board's other caps
    chosen: bool = False  # the plan the build uses

    def lut_with_shell(self, shell_lut: float) -> float:
        return self.resources["LUT"] + shell_lut


@dataclasses.dataclass(frozen=True)
class ParetoSet:
    board: str
    part: str
    clock_period_ns: float
    limits: dict[str, int]  # the board's caps (design + shell must stay under them)
    shell_overhead: dict[str, int]
    points: list[ParetoPoint]  # the front: non-dominated in (fps up, LUT down), LUT ascending, fps ascending
    chosen: ParetoPoint | None  # the build's plan (also in `points` when nothing dominates it)
    chosen_on_front: bool
    tried: list[ParetoPoint]  # every distinct plan evaluated, dominated and over-budget ones included
    seconds: float
    notes: list[str] = dataclasses.field(default_factory=list)

    def write(self, path: str | Path) -> Path:
        write_json(path, self)
        return Path(path)

    def summary(self) -> dict[str, Any]:
        """The set without the per-point foldings (those stay in PARETO_FILE): what compile.json and the report
        carry."""
        return _without_foldings(to_jsonable(self))


def read_pareto_summary(path: str | Path) -> dict[str, Any] | None:
    """ParetoSet.summary() of a written PARETO_FILE, or None when there is none (Pareto set turned off)."""
    path = Path(path)
    return _without_foldings(read_json(path)) if path.is_file() else None


def _without_foldings(data: dict[str, Any]) -> dict[str, Any]:
    for p in [*data.get("points", []), *data.get("tried", []), data.get("chosen") or {}]:
        p.pop("folding", None)
    return {**data, "file": PARETO_FILE}


def pareto_front(hw_model_path: str | Path, board: Board, scratch: str | Path, points: int = 6,
                 chosen: Any = None, max_simd: dict[str, int] | None = None, rounds: int = 6) -> ParetoSet:
    """The fps-vs-LUT Pareto set of the HW-layer model at `hw_model_path` (e.g. a compile's hw_model.onnx, any
    folding) on `board`.

    `points`: optimiser runs besides the two ends (fully folded, built plan), half of them LUT budgets, half fps
    targets. `chosen`: the build's FoldingPlan (from plan_within_caps); planned here when None. `max_simd` as for
    the build, so that the points are foldings the build could have chosen. `rounds`: bisection steps of each
    LUT-budget run (plan_within_caps; 6 resolves the FIFO/DWC reserve to 1/64 of the room). `scratch`: a folder for
    FINN's temporary files, removed afterwards.
    """
    from trimflow.finn.adapter import finn_session

    if not (isinstance(points, int) and not isinstance(points, bool) and points >= 0):
        raise FlowError(f"Pareto set: points must be a non-negative integer, got {points!r}")
    hw_model_path, scratch = Path(hw_model_path), Path(scratch)
    if not hw_model_path.is_file():
        raise FlowError(f"Pareto set: HW-layer model {hw_model_path} does not exist; run the compile stage first")
    t0 = time.perf_counter()
    try:
        with finn_session(scratch / "codegen"):
            pset = _sweep(hw_model_path, board, scratch, points, chosen, max_simd, rounds)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return dataclasses.replace(pset, seconds=round(time.perf_counter() - t0, 2))


def _sweep(hw_model_path: Path, board: Board, scratch: Path, points: int, chosen: Any,
           max_simd: dict[str, int] | None, rounds: int) -> ParetoSet:
    from qonnx.core.modelwrapper import ModelWrapper

    from trimflow.finn.estimates import estimate_design
    from trimflow.finn.folding import apply_folding, optimize_folding, plan_within_caps

    # The LUT budgets swept below are caps (design + shell, as board.limit), so the points' LUTs are put on that
    # scale with the shell added; each budget is a board with its LUT cap lowered (_lut_capped), whose fits() and
    # limit() then judge the point.
    shell_lut = board.shell_overhead["LUT"]
    cap = board.limit("LUT")
    runs = 0

    def point(plan: Any, source: str, budget_board: Board) -> ParetoPoint:
        nonlocal runs
        totals = plan.design_totals
        if not totals:  # a plan from optimize_folding alone: estimate the whole design as plan_within_caps does
            runs += 1
            totals = estimate_design(apply_folding(ModelWrapper(str(hw_model_path)), plan), board.part,
                                     scratch / f"est{runs}").totals
        return ParetoPoint(fps=float(plan.fps), max_cycles=int(plan.max_cycles),
                           resources={r: float(totals[r]) for r in RESOURCES}, lut_budget=budget_board.limit("LUT"),
                           source=source, limited_by=plan.limited_by, folding=dict(plan.folding),
                           fits=budget_board.fits(totals))

    def planned(source: str, budget_board: Board, target_fps: float | None = None) -> ParetoPoint:
        nonlocal runs
        runs += 1
        plan = plan_within_caps(hw_model_path, budget_board, scratch / f"run{runs}", max_simd=max_simd,
                                target_fps=target_fps, rounds=rounds)
        return point(plan, source, budget_board)

    # The slowest design any plan can reach: where the front starts (and, if it does not fit, there is none).
    slowest = point(optimize_folding(ModelWrapper(str(hw_model_path)), board, max_simd, target_fps=1e-12),
                    "fully folded", board)
    build = point(chosen, "build", board) if chosen is not None else planned("build", board)
    build = dataclasses.replace(build, chosen=True)
    tried = [slowest, build]
    notes = [f"LUT budgets include the board shell's {shell_lut:,} LUT; point resources are the folded design "
             "alone (layers + FIFOs + width converters, trimflow.finn.estimates), as plan_within_caps checks them",
             f"board caps: {', '.join(f'{r} {board.limit(r):,}' for r in RESOURCES if board.capacity[r])}"]
    if not slowest.fits:
        notes.append("even the fully folded design exceeds the board's caps: no Pareto front")
    elif build.fits and build.max_cycles < slowest.max_cycles:
        lo, hi = slowest.lut_with_shell(shell_lut), build.lut_with_shell(shell_lut)
        n_lut, n_fps = (points + 1) // 2, points // 2
        for k in range(1, n_lut + 1):
            budget = math.floor(lo + (hi - lo) * k / (n_lut + 1))
            if budget <= lo or budget >= cap:
                continue
            tried.append(planned(f"LUT budget {budget / cap:.2f}", _lut_capped(board, budget)))
        for k in range(1, n_fps + 1):
            target = slowest.fps * (build.fps / slowest.fps) ** (k / (n_fps + 1))
            tried.append(planned(f"target {target:,.0f} fps", board, target_fps=target))

    distinct: dict[tuple, ParetoPoint] = {}
    for p in tried:  # the same plan found twice counts once; the build's copy wins
        key = (p.max_cycles, round(p.resources["LUT"], 3), tuple(sorted((n, tuple(sorted(f.items())))
                                                                         for n, f in p.folding.items())))
        if key not in distinct or p.chosen:
            distinct[key] = p
    tried = sorted(distinct.values(), key=lambda p: (p.resources["LUT"], -p.fps))
    front = non_dominated([p for p in tried if p.fits])
    chosen_point = next(p for p in tried if p.chosen)
    return ParetoSet(board=board.name, part=board.part, clock_period_ns=float(board.clock_period_ns),
                     limits={r: board.limit(r) for r in RESOURCES}, shell_overhead=dict(board.shell_overhead),
                     points=front, chosen=chosen_point, chosen_on_front=any(p.chosen for p in front), tried=tried,
                     seconds=0.0, notes=notes)


def non_dominated(candidates: list[ParetoPoint]) -> list[ParetoPoint]:
    """The points no other point beats on both axes (at most as many LUTs and at least as many fps, one strictly),
    LUT ascending; equal points count once (the chosen one is kept)."""
    order = sorted(candidates, key=lambda p: (p.resources["LUT"], -p.fps, not p.chosen))
    front: list[ParetoPoint] = []
    for p in order:
        if front and p.fps <= front[-1].fps:
            continue  # the sort puts a cheaper (or as cheap and faster) front point before it
        front.append(p)
    return front


def _lut_capped(board: Board, lut_limit: int) -> Board:
    """`board` with its LUT cap lowered so that board.limit("LUT") == lut_limit."""
    # limit() floors capacity·cap; half a LUT above the wanted limit keeps float rounding from losing one
    frac = min(1.0, (lut_limit + 0.5) / board.capacity["LUT"])
    return dataclasses.replace(board, caps={**board.caps, "LUT": frac},
                               name=f"{board.name} at {lut_limit:,} LUT")
