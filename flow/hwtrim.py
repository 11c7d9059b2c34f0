"""Hardware-aware trimming: trim only as much as a board needs to reach a target frame rate.

The trim stage's fixed budget (half the MACs by default) is a guess; whether the result fits a board at a given fps
is only known after FINN's estimate. fit_by_trimming walks down a ladder of MAC budgets, largest first, and for
each candidate runs a quick post-training quantization (conversion + activation calibration, no QAT), exports it
and asks FINN for the fastest folding within the board's caps (estimates only, no code generation). The first
budget whose folding fits at >= target_fps wins; fine-tuning and QAT then run once, on that net only.

The PTQ accuracy is a pessimistic estimate of what fine-tune + QAT recover; it is only used as a floor.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from torch import nn

from trimflow import FlowError
from trimflow.boards import RESOURCES, Board
from trimflow.data import ImageSet
from trimflow.finn.compile import positive_fps
from trimflow.relevance import RelevanceScores
from trimflow.trim import TrimConfig, TrimReport

# Fractions of the original MACs tried, largest first. Below 0.2 a CNV-sized net loses most of its accuracy.
BUDGETS = (1.0, 0.8, 0.65, 0.5, 0.4, 0.3, 0.25, 0.2)


@dataclasses.dataclass(frozen=True)
class HwTrimConfig:
    """How the trim stage searches its budget when hwtrim.target_fps is set (FlowConfig.hwtrim)."""

    # The hardware-aware trim goal: with it set, the trim stage keeps the largest MAC budget whose design reaches
    # this fps on the board (the budgets below) instead of trim.budget. None = a fixed budget (trim.budget).
    target_fps: float | None = None
    budgets: tuple[float, ...] = BUDGETS  # fractions of the original MACs, tried largest first
    accuracy_floor: float = 0.80  # PTQ accuracy (before fine-tune and QAT) below this stops the search
    val_images: int = 1000  # validation images (held-out training images) for each candidate's PTQ accuracy
    calib_batches: int = 2  # activation-calibration batches per candidate
    # bisection steps between the first budget that meets the target and the larger one before it: the ladder is
    # coarse (0.5 -> 0.4 loses about 1 pt of accuracy on the default net), and a budget in between often still
    # meets the target (0 = take the ladder's budget)
    refine: int = 2

    def __post_init__(self):
        if not positive_fps(self.target_fps):
            raise FlowError(f"hwtrim.target_fps (--target-fps) must be a positive, finite number or null, got "
                            f"{self.target_fps!r}")
        if not self.budgets or not all(isinstance(b, (int, float)) and 0.0 < b <= 1.0 for b in self.budgets):
            raise FlowError(f"hwtrim.budgets must be fractions in (0, 1], got {self.budgets!r}")
        if not 0.0 <= self.accuracy_floor < 1.0:
            raise FlowError(f"hwtrim.accuracy_floor is a fraction in [0, 1), got {self.accuracy_floor!r}")
        if isinstance(self.refine, bool) or not isinstance(self.refine, int) or self.refine < 0:
            raise FlowError(f"hwtrim.refine is a number of bisection steps >= 0, got {self.refine!r}")
        if self.val_images < 1 or self.calib_batches < 1:
            raise FlowError(f"hwtrim.val_images and hwtrim.calib_batches must be >= 1, got {self.val_images}, "
                            f"{self.calib_batches}")


@dataclasses.dataclass(frozen=True)
class HwTrimIteration:
    budget: float  # fraction of the original MACs asked for
    macs_fraction: float  # what the trim reached (kept counts are rounded)
    params: int
    kept: dict[str, str]  # layer → "kept/total" kernels
    ptq_accuracy: float
    resources: dict[str, float]  # design estimate incl. FIFOs/DWCs and the board shell
    percent: dict[str, float]  # resources as % of the board's capacity
    fps: float  # fastest folding within the caps (or the fully folded one when even that does not fit)
    max_possible_fps: float  # every layer fully parallel, resources ignored
    fits: bool  # resources within the caps
    meets_target: bool  # fits and fps >= target
    limited_by: str
    seconds: float


@dataclasses.dataclass
class HwTrimResult:
    board: str
    target_fps: float
    accuracy_floor: float
    budget: float  # the chosen one
    iterations: list[HwTrimIteration]
    trim_report: TrimReport
    model: nn.Module  # the trimmed float model of the chosen budget (not fine-tuned)

    def to_json(self) -> dict[str, Any]:
        return {"board": self.board, "target_fps": self.target_fps, "accuracy_floor": self.accuracy_floor,
                "budget": self.budget, "iterations": [dataclasses.asdict(i) for i in self.iterations],
                "table": format_iterations(self.iterations)}


def format_iterations(its: list[HwTrimIteration]) -> str:
    """A markdown table of the iterations."""
    head = ["budget", "MACs kept", "kernels kept", "PTQ acc", "LUT %", "FF %", "BRAM18 %", "DSP %", "fps",
            "max fps", "fits", "≥ target"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i in its:
        lines.append("| " + " | ".join([
            f"{i.budget:g}", f"{i.macs_fraction:.3f}", " ".join(v.split("/")[0] for v in i.kept.values()),
            f"{100 * i.ptq_accuracy:.2f} %", *(f"{i.percent[r]:.1f}" for r in ("LUT", "FF", "BRAM18", "DSP")),
            f"{i.fps:,.0f}", f"{i.max_possible_fps:,.0f}", "yes" if i.fits else "no",
            "yes" if i.meets_target else "no"]) + " |")
    return "\n".join(lines)


def needed_budget(it: HwTrimIteration, board: Board, target_fps: float) -> float:
    """Rough MAC budget that would fit at target_fps, extrapolated from one iteration: resources at a given fps
    and the fps within given resources both scale about linearly with the MACs (FINN folds MACs onto PE·SIMD)."""
    scale = 1.0
    for r in RESOURCES:
        # it.resources is the fit check's estimate, shell included: the design's own use is that less the shell
        used = it.resources[r] - board.shell_overhead[r]
        if used > 0:
            scale = min(scale, max(board.room(r), 0) / used)
    if it.fits:
        scale = min(scale, it.fps / target_fps)
    return it.macs_fraction * scale


def _candidate(float_model: nn.Module, scores: RelevanceScores, budget: float, trim_cfg: TrimConfig, quant_cfg: Any,
               compile_cfg: Any, board: Board, target_fps: float, calib: ImageSet, val: ImageSet,
               calib_batches: int, out: Path, sensitivity: dict[str, Any] | None = None,
               ) -> tuple[HwTrimIteration, nn.Module, TrimReport]:
    from trimflow.export import export_qonnx
    from trimflow.finn.compile import compile_model
    from trimflow.quantize import calibrate_activations, convert_model
    from trimflow.train import evaluate
    from trimflow.trim import trim_model

    t0 = time.perf_counter()
    tcfg = dataclasses.replace(trim_cfg, policy="budget", budget=budget, budget_metric="macs")
    trimmed, report = trim_model(float_model, scores, tcfg, calib=calib, sensitivity=sensitivity)
    qmodel = convert_model(trimmed, quant_cfg)
    calibrate_activations(qmodel, calib, calib_batches, quant_cfg.calibration_batch_size, quant_cfg.train.seed)
    acc = evaluate(qmodel, val)
    qonnx = export_qonnx(qmodel, tuple(val.shape), out / "model.qonnx.onnx")
    # the fastest folding within the caps (not just the cheapest one at target_fps): the table shows the headroom
    # a candidate only needs its fastest fitting folding: no code, no verification, no Pareto sweep
    ccfg = dataclasses.replace(compile_cfg, folding="optimize", folding_fps=None, generate_code=False,
                               verify=False, fail_if_not_fit=False, pareto_points=0)
    res = compile_model(qonnx, board, ccfg, out / "compile")
    rows = {r["resource"]: r for r in res.fit["rows"]}
    plan = res.folding_plan or {}
    fits = bool(res.fits)
    it = HwTrimIteration(
        budget=budget, macs_fraction=report.macs_after / report.macs_before, params=report.params_after,
        kept={l["name"]: f"{l['kept']}/{l['total']}" for l in report.layers}, ptq_accuracy=float(acc),
        resources={r: float(rows[r]["estimate"]) for r in RESOURCES},
        percent={r: float(rows[r]["percent"]) for r in RESOURCES}, fps=float(res.fps),
        max_possible_fps=float(plan.get("max_possible_fps", 0.0)), fits=fits,
        meets_target=fits and res.fps >= target_fps * (1 - 1e-9), limited_by=str(plan.get("limited_by", "")),
        seconds=time.perf_counter() - t0)
    return it, trimmed, report


def fit_by_trimming(float_model: nn.Module, scores: RelevanceScores, board: Board, target_fps: float,
                    trim_cfg: TrimConfig, quant_cfg: Any, compile_cfg: Any, calib: ImageSet, val: ImageSet,
                    accuracy_floor: float, work_dir: str | Path, budgets: tuple[float, ...] = BUDGETS,
                    calib_batches: int = 2, keep_work: bool = False,
                    sensitivity: dict[str, Any] | None = None, refine: int = 0,
                    log: Callable[[str], None] | None = None) -> HwTrimResult:
    """Trim `float_model` by `scores` to the largest budget in `budgets` whose quick-PTQ design fits `board` at
    >= target_fps. `val` (held-out training images, never the test split) gives the PTQ accuracy (keep it small:
    it runs once per budget); `accuracy_floor` is a
    fraction (0.8 = 80 %). Raises FlowError when the target is out of reach of any folding, or when accuracy drops
    below the floor or the budgets run out before a design fits (the message holds the iteration table and the
    budget that would be needed). `sensitivity`: a table already measured for this model (allocation=sensitivity);
    otherwise the first candidate measures it and the others reuse it. `refine`: bisection steps between the first
    budget that meets the target and the larger budget tried before it; the largest budget found that meets the
    target wins (it trims least). fps is a step function of the kept counts, not monotonic, so this finds a
    larger budget that meets the target, not necessarily the largest one."""
    if not (isinstance(target_fps, (int, float)) and target_fps > 0 and math.isfinite(target_fps)):
        raise FlowError(f"hardware-aware trimming needs a positive target fps, got {target_fps!r}")
    if not 0.0 <= accuracy_floor < 1.0:
        raise FlowError(f"accuracy_floor is a fraction in [0, 1), got {accuracy_floor!r}")
    budgets = tuple(sorted(set(budgets), reverse=True))
    if not budgets or not all(0.0 < b <= 1.0 for b in budgets):
        raise FlowError(f"budgets must be fractions in (0, 1], got {budgets!r}")
    work = Path(work_dir)
    its: list[HwTrimIteration] = []

    def fail(why: str) -> FlowError:
        need = needed_budget(its[-1], board, target_fps)
        return FlowError(
            f"hardware-aware trimming for {board.name} at {target_fps:g} fps: {why}\n{format_iterations(its)}\n"
            f"Estimated MAC budget needed: about {need:.2f} of the original (extrapolated from budget "
            f"{its[-1].budget:g}). Lower --target-fps, lower the accuracy floor, pick a larger board, or make the "
            "net smaller.")

    def run(budget: float) -> tuple[HwTrimIteration, nn.Module, TrimReport]:
        nonlocal sensitivity
        out = work / f"budget-{budget:g}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        # the sensitivity table depends on the model and the calibration set, not on the budget: measure once
        it, trimmed, report = _candidate(float_model, scores, budget, trim_cfg, quant_cfg, compile_cfg, board,
                                         target_fps, calib, val, calib_batches, out, sensitivity=sensitivity)
        sensitivity = sensitivity or report.sensitivity
        its.append(it)
        if log:  # one line per candidate: the search takes minutes
            log(f"hwtrim: budget {budget:g} ({it.macs_fraction:.3f} of the MACs): {it.fps:,.0f} fps within the caps"
                f"{'' if it.fits else ' (does NOT fit)'}, PTQ {100 * it.ptq_accuracy:.2f} %, "
                f"{'meets' if it.meets_target else 'misses'} {target_fps:,.0f} fps")
        return it, trimmed, report

    try:
        for i, budget in enumerate(budgets):
            it, trimmed, report = run(budget)
            if len(its) == 1 and it.max_possible_fps and target_fps > it.max_possible_fps * (1 + 1e-9):
                # Trimming removes channels, not pixels: the fully parallel cycle count per image is set by the
                # feature-map sizes, so no budget makes the net faster than this.
                raise FlowError(
                    f"target {target_fps:g} fps is out of reach on {board.name}: with every layer fully parallel "
                    f"the net reaches at most {it.max_possible_fps:,.0f} fps at {board.clock_mhz:g} MHz, and "
                    "trimming kernels does not change that (it is set by the feature-map sizes). Lower the target "
                    "or use a faster clock / smaller input.")
            if it.ptq_accuracy < accuracy_floor:
                raise fail(f"PTQ accuracy {100 * it.ptq_accuracy:.2f} % at budget {budget:g} is below the floor "
                           f"{100 * accuracy_floor:.2f} % before any design fit")
            if it.meets_target:
                best = (budget, report, trimmed)
                above = budgets[i - 1] if i else None  # the larger budget that missed the target
                for _ in range(refine if above is not None else 0):
                    mid = round((best[0] + above) / 2, 4)
                    if mid in (best[0], above):
                        break
                    m_it, m_trimmed, m_report = run(mid)
                    if m_it.meets_target and m_it.ptq_accuracy >= accuracy_floor:
                        best = (mid, m_report, m_trimmed)
                    else:
                        above = mid
                return HwTrimResult(board.name, float(target_fps), accuracy_floor, best[0], its, best[1], best[2])
        last = its[-1]
        why = ("even the most folded design is over the board's caps at the smallest budget" if not last.fits
               else f"the smallest budget {last.budget:g} reaches only {last.fps:,.0f} fps within the caps")
        raise fail(why)
    finally:
        if not keep_work:
            shutil.rmtree(work, ignore_errors=True)
