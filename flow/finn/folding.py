"""Choose PE/SIMD per layer to maximise throughput within a board's resource caps.

FINN's own heuristic (SetFolding, driven by target_fps) never looks at the board: the user has to guess an fps that
fits. Here the bottleneck layer is made faster one step at a time (the cheapest next-faster folding among the
divisors of its channel counts), as long as the design, plus the board's shell overhead, stays under the caps.
Cycles come from FINN's per-node estimates; resources from trimflow.finn.estimates.node_resources (FINN's estimates
with the LUT of RTL MVAUs and an FF figure filled in). FIFOs and data-width converters depend on the neighbours'
stream widths, so the search does not see them: `reserve` holds room for them, and plan_within_caps()
estimates the whole folded design with them and bisects the reserve for the fastest plan that fits.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

from trimflow import FlowError
from trimflow.artifacts import atomic_path
from trimflow.boards import RESOURCES, Board
from trimflow.finn.rules import mvau_rtl_loses_outputs, pool_window_generators, tie_window_generator

# op type prefix → ((folding attribute, node attribute whose divisors it may take), ...)
FOLDABLE = {
    "MVAU": (("PE", "MH"), ("SIMD", "MW")),
    "Thresholding": (("PE", "NumChannels"),),
    "ConvolutionInputGenerator": (("SIMD", "IFMChannels"),),
    "FMPadding": (("SIMD", "NumChannels"),),
    "DuplicateStreams": (("PE", "NumChannels"),),
    "Pool": (("PE", "Channels"),),
    "GlobalAccPool": (("PE", "NumChannels"),),
    "LabelSelect": (("PE", "Labels"),),
    "VVAU": (("PE", "Channels"),),
    "ElementwiseAdd": (("PE", "out_shape"),),  # a list attribute: its last entry (the channels) is folded
}


# Why a search stopped, as a value code branches on (FoldingPlan.limited_by is the sentence for people): the design
# is over the caps even fully folded, it reached the target, the bottleneck has no folding parameters or is fully
# parallel, or a faster bottleneck would exceed the caps.
Stop = Literal["does_not_fit", "target", "fixed_layer", "fully_parallel", "resources"]


@dataclasses.dataclass(frozen=True)
class FoldingPlan:
    folding: dict[str, dict[str, int]]  # node name → {"PE": .., "SIMD": ..}, FINN's folding-config layout
    cycles: dict[str, int]
    totals: dict[str, float]  # layers incl. the FIFO on each layer's output (LUT/FF/BRAM18/URAM/DSP)
    max_cycles: int
    fps: float  # at the board clock
    limited_by: str  # why the search stopped
    # fps with every layer at its fastest folding, resources ignored: no folding of this net goes faster
    max_possible_fps: float = 0.0
    reserve: dict[str, float] = dataclasses.field(default_factory=dict)  # room kept for FIFOs/DWCs
    design_totals: dict[str, float] = dataclasses.field(default_factory=dict)  # incl. FIFOs/DWCs (plan_within_caps)
    stop: Stop = "resources"  # why the search stopped (not written: limited_by says it in the JSON files)

    def finn_config(self) -> dict[str, Any]:
        return {"Defaults": {}, **self.folding}

    def write(self, path: str | Path) -> Path:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.finn_config(), indent=2) + "\n")
        return Path(path)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _dim(inst: Any, attr: str) -> int:
    value = inst.get_nodeattr(attr)
    return int(value[-1]) if isinstance(value, (list, tuple)) else int(value)


def _kind(op_type: str) -> str | None:
    return next((k for k in FOLDABLE if op_type.startswith(k)), None)


def optimize_folding(hw_model_path: str | Path | Any, board: Board, max_simd: dict[str, int] | None = None,
                     target_fps: float | None = None, reserve: dict[str, float] | None = None) -> FoldingPlan:
    """Plan a folding for the specialised HW-layer model at `hw_model_path` (e.g. a compile's hw_model.onnx, or a
    ModelWrapper, whose node attributes are left at the plan's last tried values).

    `max_simd` optionally caps SIMD per op-type prefix, e.g. {"MVAU": 1} for simulators that need SIMD=1.
    `target_fps`: stop once it is reached (the cheapest folding found for it) instead of going as fast as fits.
    `reserve`: resources kept free (FIFOs, width converters) on top of the board's shell overhead.
    """
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    from trimflow.finn.estimates import node_resources, output_fifo_resources

    max_simd = max_simd or {}
    reserve = {r: float((reserve or {}).get(r, 0.0)) for r in RESOURCES}
    model = hw_model_path if isinstance(hw_model_path, ModelWrapper) else ModelWrapper(str(hw_model_path))
    # the search's own caps: the board's room for the design, less the reserve held for FIFOs and width converters
    # (the search cannot see them; plan_within_caps sizes the reserve)
    caps = {r: board.room(r) - reserve[r] for r in RESOURCES}
    if any(board.room(r) < 0 for r in RESOURCES):
        raise FlowError(f"board {board.name}: the shell overhead alone exceeds the caps; nothing left for layers")
    target_cycles = None if not target_fps else board.cycles_for(target_fps)

    def _resources(inst: Any, part: str) -> dict[str, float]:
        # the FIFO on a node's output is as wide as its (folding-dependent) output stream: charge it to the node
        own, fifo = node_resources(inst, part), output_fifo_resources(inst, part)
        return {r: own[r] + fifo[r] for r in RESOURCES}

    # Per node: candidate foldings sorted from slowest to fastest, each with (cycles, resources).
    options: dict[str, list[tuple[dict[str, int], int, dict[str, float]]]] = {}
    fixed: dict[str, tuple[int, dict[str, float]]] = {}
    # (node, option) or (node, ()) → ({stream input index: bits}, output bits)
    widths: dict[tuple, tuple[dict[int, int], int]] = {}
    # A pool and its window generator are one unit of the search: the pool's options fold both (SIMD = PE).
    tied = pool_window_generators(model)
    followers = {swg: pool for pool, swg in tied.items()}
    for node in model.graph.node:
        if node.name in followers:
            continue
        inst = getCustomOp(node)
        kind = _kind(node.op_type)
        swg = getCustomOp(model.get_node_from_name(tied[node.name])) if node.name in tied else None
        if kind is None:
            fixed[node.name] = (int(inst.get_exp_cycles()), _resources(inst, board.part))
            widths[(node.name, ())] = (_stream_input_widths(model, node, inst), inst.get_outstream_width(0))
            continue
        grids = [[(attr, d) for d in _divisors(_dim(inst, dim))] for attr, dim in FOLDABLE[kind]]
        combos: list[dict[str, int]] = [{}]
        for grid in grids:
            combos = [{**c, a: d} for c in combos for a, d in grid]
        if kind == "ConvolutionInputGenerator" and "parallel_window" in inst.get_nodeattr_types():
            # With all channels in parallel the RTL generator can also emit a whole window per cycle, the only
            # way to keep up with an MVAU whose SIMD covers the full K·K·C input vector.
            full = int(inst.get_nodeattr("IFMChannels"))
            combos = [{**c, "parallel_window": 0} for c in combos] + [{"SIMD": full, "parallel_window": 1}]
        cands = []
        for combo in combos:
            if combo.get("SIMD", 1) > max_simd.get(kind, 1 << 30):
                continue
            # keep SIMD a proper divisor of MW (trimflow.finn.rules); with MW = 1 there is no other choice, and the
            # simulator's check reports that layer instead
            mw = int(inst.get_nodeattr("MW")) if node.op_type == "MVAU_rtl" else 0
            if mw > 1 and mvau_rtl_loses_outputs(node.op_type, mw, combo.get("SIMD", 1)):
                continue
            for a, v in combo.items():
                inst.set_nodeattr(a, v)
            try:
                cycles, res = int(inst.get_exp_cycles()), _resources(inst, board.part)
                if swg is not None:
                    tie_window_generator(swg, combo["PE"])
                    swg_res = _resources(swg, board.part)
                    cycles = max(cycles, int(swg.get_exp_cycles()))
                    res = {r: res[r] + swg_res[r] for r in RESOURCES}
                # stream widths of this option, for the width-ratio check at the end (a tied pair's input is its
                # window generator's)
                ins = {0: swg.get_instream_width(0)} if swg is not None else _stream_input_widths(model, node, inst)
                widths[(node.name, tuple(sorted(combo.items())))] = (ins, inst.get_outstream_width(0))
                cands.append((combo, cycles, res))
            except Exception:  # a combination FINN's op rejects (e.g. SIMD constraints of an implementation)
                continue
        if not cands:
            raise FlowError(f"folding: no valid PE/SIMD for layer {node.name} ({node.op_type})")
        cands.sort(key=lambda c: (-c[1], _weight(c[2], caps)))
        options[node.name] = cands
        for a, v in cands[0][0].items():  # leave the node fully folded, as the search starts
            inst.set_nodeattr(a, v)
        if swg is not None:
            tie_window_generator(swg, cands[0][0]["PE"])

    fastest = max([c for c, _ in fixed.values()] + [min(c[1] for c in o) for o in options.values()])
    max_possible_fps = board.fps(fastest)

    choice = {n: 0 for n in options}  # start fully folded (slowest, smallest)

    def state(n: str) -> tuple[int, dict[str, float]]:
        return fixed[n] if n in fixed else options[n][choice[n]][1:]  # type: ignore[return-value]

    def totals() -> dict[str, float]:
        return {r: sum(state(n)[1][r] for n in list(fixed) + list(options)) for r in RESOURCES}

    stop: Stop | None = None
    if not _fits(totals(), caps):
        stop, limited_by = "does_not_fit", "does not fit even fully folded"
    while stop is None:
        bottleneck = max(list(fixed) + list(options), key=lambda n: state(n)[0])
        if target_cycles is not None and state(bottleneck)[0] <= target_cycles:
            stop, limited_by = "target", f"reached target {target_fps:g} fps"
            break
        if bottleneck in fixed:
            stop, limited_by = "fixed_layer", f"layer {bottleneck} has no folding parameters"
            break
        cur_cycles, cur_res = state(bottleneck)
        faster = [i for i, c in enumerate(options[bottleneck]) if c[1] < cur_cycles]
        if not faster:
            stop, limited_by = "fully_parallel", f"layer {bottleneck} is fully parallel"
            break
        base = totals()
        best = None
        for i in faster:
            res = options[bottleneck][i][2]
            new = {r: base[r] - cur_res[r] + res[r] for r in RESOURCES}
            if _fits(new, caps):
                key = (_weight(res, caps), options[bottleneck][i][1])
                if best is None or key < best[0]:
                    best = (key, i)
        if best is None:
            stop, limited_by = "resources", f"resources: speeding up {bottleneck} would exceed {board.name}'s caps"
            break
        choice[bottleneck] = best[1]

    # The greedy path can lock resources into early choices (a layer sped up along an expensive option) and stop
    # at the first bottleneck step that no longer fits. A second search sets one cycle budget T for every layer
    # and gives each its cheapest option within T, under a few resource prices (the one that binds made dearer);
    # the smallest T whose design fits, found by bisection, replaces the greedy plan when it is faster.
    if stop == "resources":
        greedy_cycles = max(state(n)[0] for n in list(fixed) + list(options))
        swept = _budget_search(options, fixed, caps, greedy_cycles)
        if swept is not None:
            choice.update(swept)
            limited_by = (f"resources: one cycle budget for all layers; a smaller one would exceed {board.name}'s "
                          "caps")

    unaligned = _align_stream_widths(model, options, fixed, choice, widths, caps, followers)
    if unaligned:
        limited_by += f"; generic width converters left between {', '.join(unaligned)}"
    cycles = {n: state(n)[0] for n in list(fixed) + list(options)}
    folding = {n: dict(options[n][choice[n]][0]) for n in options}
    for pool, swg_name in tied.items():
        if pool in folding:
            swg = getCustomOp(model.get_node_from_name(swg_name))
            folding[swg_name] = tie_window_generator(swg, folding[pool]["PE"])
            cycles[swg_name] = int(swg.get_exp_cycles())
    max_cycles = max(cycles.values())
    return FoldingPlan(
        folding=folding,
        cycles=cycles,
        totals=totals(),
        max_cycles=max_cycles,
        fps=board.fps(max_cycles),
        limited_by=limited_by,
        max_possible_fps=max_possible_fps,
        reserve=reserve,
        stop=stop,
    )


def apply_folding(model: Any, plan: FoldingPlan) -> Any:
    """Set the plan's PE/SIMD on the nodes of a ModelWrapper (in place)."""
    from qonnx.custom_op.registry import getCustomOp

    for node in model.graph.node:
        for a, v in plan.folding.get(node.name, {}).items():
            getCustomOp(node).set_nodeattr(a, v)
    return model


def plan_within_caps(hw_model_path: str | Path, board: Board, scratch: str | Path,
                     max_simd: dict[str, int] | None = None, target_fps: float | None = None,
                     rounds: int = 8) -> FoldingPlan:
    """optimize_folding, checked on the whole folded design (trimflow.finn.estimates: FIFOs, width converters).

    Their cost depends on the folding (stream widths), so the search plans without them first; when that design is
    over a cap, a share t of each overshooting resource's room is held back and t is bisected (`rounds` steps) for
    the smallest reserve whose plan fits. Returns the fastest plan that fits, or the fully folded one (marked) when
    nothing does."""
    from qonnx.core.modelwrapper import ModelWrapper

    from trimflow.finn.estimates import estimate_design

    base = ModelWrapper(str(hw_model_path))
    room = {r: max(0.0, board.room(r)) for r in RESOURCES}
    tried = 0

    def attempt(reserve: dict[str, float]) -> tuple[FoldingPlan, bool, list[str]]:
        nonlocal tried
        tried += 1
        plan = optimize_folding(ModelWrapper(str(hw_model_path)), board, max_simd, target_fps, reserve)
        est = estimate_design(apply_folding(ModelWrapper(copy.deepcopy(base.model)), plan), board.part,
                              Path(scratch) / f"r{tried}")
        over = board.over(est.totals)
        return dataclasses.replace(plan, design_totals=est.totals), not over, over

    plan, ok, over = attempt({})
    if ok or plan.stop == "does_not_fit":
        return plan
    best: FoldingPlan | None = None
    held = set(over)
    lo, hi = 0.0, 1.0  # share of the room held back: lo does not fit, hi is the fully folded end
    for _ in range(rounds):
        t = (lo + hi) / 2
        cand, ok, over = attempt({r: t * room[r] for r in held})
        if ok:
            if best is None or cand.fps > best.fps:
                best = cand
            hi = t
        else:
            held |= set(over)
            lo = t
    if best is None:
        slowest = optimize_folding(ModelWrapper(str(hw_model_path)), board, max_simd, target_fps=1e-12)
        est = estimate_design(apply_folding(ModelWrapper(copy.deepcopy(base.model)), slowest), board.part,
                              Path(scratch) / "slowest")
        fits = board.fits(est.totals)
        best = dataclasses.replace(slowest, design_totals=est.totals, stop="resources" if fits else "does_not_fit",
                                   limited_by="resources: only the fully folded design fits with its FIFOs/DWCs"
                                   if fits else "does not fit with its FIFOs/DWCs")
    return best


def _budget_search(options: dict[str, list], fixed: dict[str, tuple[int, dict[str, float]]],
                   caps: dict[str, float], beat: int) -> dict[str, int] | None:
    """Choices (node → option index) for the smallest cycle budget below `beat` whose cheapest design fits."""
    base = {r: 1.0 / caps[r] if caps[r] > 0 else 1e9 for r in RESOURCES}
    prices = [base] + [{**base, r: base[r] * 8} for r in RESOURCES if caps[r] > 0]
    floor = max([c for c, _ in fixed.values()] + [min(o[1] for o in opts) for opts in options.values()])
    budgets = sorted({c[1] for opts in options.values() for c in opts if floor <= c[1] < beat})
    fixed_res = {r: sum(res[r] for _, res in fixed.values()) for r in RESOURCES}

    def design(budget: int) -> dict[str, int] | None:
        for price in prices:
            choice, tot = {}, dict(fixed_res)
            for n, opts in options.items():
                i = min((i for i, c in enumerate(opts) if c[1] <= budget),
                        key=lambda i: (sum(price[r] * opts[i][2][r] for r in RESOURCES), opts[i][1]))
                choice[n] = i
                for r in RESOURCES:
                    tot[r] += opts[i][2][r]
            if _fits(tot, caps):
                return choice
        return None

    best, lo, hi = None, 0, len(budgets) - 1  # budgets ascending: find the smallest that fits
    while lo <= hi:
        mid = (lo + hi) // 2
        found = design(budgets[mid])
        if found is not None:
            best, hi = found, mid - 1
        else:
            lo = mid + 1
    return best


def _integer_ratio(a: int, b: int) -> bool:
    return max(a, b) % min(a, b) == 0


def _align_stream_widths(model: Any, options: dict[str, list], fixed: dict[str, tuple],
                         choice: dict[str, int], widths: dict[tuple, tuple[dict[int, int], int]],
                         caps: dict[str, float], followers: dict[str, str] | None = None) -> list[str]:
    """Re-pick foldings (in place in `choice`) so that every producer's output width and its consumer's input
    width are integer multiples of each other; returns the links ("a -> b") it could not align.

    FINN puts a width converter between neighbours whose stream widths differ. With an integer ratio that converter
    (finn-rtllib's vpc.sv, serialising or deserialising) keeps up with its faster side; with a non-integer one
    (e.g. 48 -> 36 bits) it takes the generic path, which our Verilator runs measured at two thirds of its output
    rate: the default net's design ran 1.5x slower than FINN's estimate because of one such converter. A link is
    fixed by moving one of its two ends to another option that is no slower than the design's bottleneck and
    aligned with all of that node's neighbours, the one with the smallest resource weight.
    """
    def key(n: str, i: int | None = None) -> tuple:
        if n in fixed:
            return (n, ())
        return (n, tuple(sorted(options[n][choice[n] if i is None else i][0].items())))

    def cycles(n: str) -> int:
        return fixed[n][0] if n in fixed else options[n][choice[n]][1]

    # a window generator tied to its pool (pool_window_generators) is part of the pool's options
    alias = followers or {}
    names = {alias.get(n.name, n.name) for n in model.graph.node}
    links = [(p, c, i) for p, c, i in ((alias.get(a.name, a.name), alias.get(b.name, b.name), i)
                                        for a, b, i in _stream_links(model)) if p != c]
    neighbours: dict[str, list[tuple[str, str, int]]] = {}
    for p, c, i in links:
        neighbours.setdefault(p, []).append((p, c, i))
        neighbours.setdefault(c, []).append((p, c, i))

    def aligned(p: str, c: str, i: int, over: dict[str, int]) -> bool:
        return _integer_ratio(widths[key(p, over.get(p))][1], widths[key(c, over.get(c))][0][i])

    bottleneck = max(cycles(n) for n in names)
    for _ in range(4 * len(links)):
        bad = [(p, c, i) for p, c, i in links if not aligned(p, c, i, {})]
        if not bad:
            return []
        p, c, _ = bad[0]
        best = None
        for n in (p, c):
            if n in fixed:
                continue
            for i, (_, cyc, res) in enumerate(options[n]):
                if cyc > bottleneck or not all(aligned(a, b, k, {n: i}) for a, b, k in neighbours[n]):
                    continue
                if best is None or _weight(res, caps) < best[0]:
                    best = (_weight(res, caps), n, i)
        if best is None:
            break
        choice[best[1]] = best[2]
    return [f"{p} -> {c}" for p, c, i in links if not aligned(p, c, i, {})]


def unaligned_links(model: Any) -> list[str]:
    """Links of a folded HW-layer model whose producer/consumer stream widths are not integer multiples of each
    other (each would get a generic, slower width converter; see _align_stream_widths)."""
    from qonnx.custom_op.registry import getCustomOp

    bad = []
    for prod, cons, i in _stream_links(model):
        a, b = getCustomOp(prod).get_outstream_width(0), getCustomOp(cons).get_instream_width(i)
        if not _integer_ratio(a, b):
            bad.append(f"{prod.name}:{a} -> {cons.name}[{i}]:{b}")
    return bad


def _stream_links(model: Any) -> list[tuple[Any, Any, int]]:
    """(producer node, consumer node, consumer input index) for every stream between two nodes; every stream input
    counts, e.g. both operands of a residual add."""
    links = []
    for node in model.graph.node:
        for out in node.output:
            for cons in model.find_consumers(out) or []:
                links += [(node, cons, i) for i, name in enumerate(cons.input) if name == out]
    return links


def _stream_input_widths(model: Any, node: Any, inst: Any) -> dict[int, int]:
    """Bits per beat of each input that arrives as a stream (weights and thresholds stored in the layer do not)."""
    return {i: inst.get_instream_width(i) for i, name in enumerate(node.input)
            if name and model.get_initializer(name) is None}


def _fits(totals: dict[str, float], caps: dict[str, int]) -> bool:
    return all(totals[r] <= caps[r] for r in caps)


def _weight(res: dict[str, float], caps: dict[str, int]) -> float:
    """Resource use as the summed fraction of each cap (a resource with no cap counts as very expensive)."""
    return sum(v / caps[r] if caps[r] else (0.0 if v == 0 else 1e9) for r, v in res.items())
