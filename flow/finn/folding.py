"""Choose PE/SIMD per layer to maximise throughput within a board's resource caps.

FINN's own heuristic (SetFolding, driven by target_fps) never looks at the board: the user has to guess an fps that
fits. Here the bottleneck layer is made faster one step at a time (the cheapest next-faster folding among the
divisors of its channel counts), as long as the design, plus the board's shell overhead, stays under the caps.
Cycles and resources come from FINN's per-node estimates, so the result agrees with FINN's reports.
Not modelled: data-width converters FINN inserts between layers whose stream widths differ, and FIFOs.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from flow import FlowError
from flow.artifacts import atomic_path
from flow.boards import Board

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
}
_ESTIMATES = {"LUT": "lut_estimation", "BRAM18": "bram_estimation", "URAM": "uram_estimation", "DSP": "dsp_estimation"}


@dataclasses.dataclass(frozen=True)
class FoldingPlan:
    folding: dict[str, dict[str, int]]  # node name → {"PE": .., "SIMD": ..}, FINN's folding-config layout
    cycles: dict[str, int]
    totals: dict[str, float]  # dataflow resources (LUT/BRAM18/URAM/DSP)
    max_cycles: int
    fps: float  # at the board clock
    limited_by: str  # why the search stopped

    def finn_config(self) -> dict[str, Any]:
        return {"Defaults": {}, **self.folding}

    def write(self, path: str | Path) -> Path:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.finn_config(), indent=2) + "\n")
        return Path(path)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _kind(op_type: str) -> str | None:
    return next((k for k in FOLDABLE if op_type.startswith(k)), None)


def optimize_folding(hw_model_path: str | Path, board: Board, max_simd: dict[str, int] | None = None) -> FoldingPlan:
    """Plan a folding for the specialised HW-layer model at `hw_model_path` (e.g. a compile's hw_model.onnx).

    `max_simd` optionally caps SIMD per op-type prefix, e.g. {"MVAU": 1} for simulators that need SIMD=1.
    """
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    max_simd = max_simd or {}
    model = ModelWrapper(str(hw_model_path))
    caps = {r: board.limit(r) - board.shell_overhead[r] for r in _ESTIMATES}
    if any(v < 0 for v in caps.values()):
        raise FlowError(f"board {board.name}: the shell overhead alone exceeds the caps; nothing left for layers")

    # Per node: candidate foldings sorted from slowest to fastest, each with (cycles, resources).
    options: dict[str, list[tuple[dict[str, int], int, dict[str, float]]]] = {}
    fixed: dict[str, tuple[int, dict[str, float]]] = {}
    for node in model.graph.node:
        inst = getCustomOp(node)
        kind = _kind(node.op_type)
        if kind is None:
            fixed[node.name] = (int(inst.get_exp_cycles()), _resources(inst, board.part))
            continue
        grids = [[(attr, d) for d in _divisors(int(inst.get_nodeattr(dim)))] for attr, dim in FOLDABLE[kind]]
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
            for a, v in combo.items():
                inst.set_nodeattr(a, v)
            try:
                cands.append((combo, int(inst.get_exp_cycles()), _resources(inst, board.part)))
            except Exception:  # a combination FINN's op rejects (e.g. SIMD constraints of an implementation)
                continue
        if not cands:
            raise FlowError(f"folding: no valid PE/SIMD for layer {node.name} ({node.op_type})")
        cands.sort(key=lambda c: (-c[1], _weight(c[2], caps)))
        options[node.name] = cands

    choice = {n: 0 for n in options}  # start fully folded (slowest, smallest)

    def state(n: str) -> tuple[int, dict[str, float]]:
        return fixed[n] if n in fixed else options[n][choice[n]][1:]  # type: ignore[return-value]

    def totals() -> dict[str, float]:
        return {r: sum(state(n)[1][r] for n in list(fixed) + list(options)) for r in _ESTIMATES}

    if not _fits(totals(), caps):
        limited_by = "does not fit even fully folded"
    else:
        limited_by = ""
    while not limited_by:
        bottleneck = max(list(fixed) + list(options), key=lambda n: state(n)[0])
        if bottleneck in fixed:
            limited_by = f"layer {bottleneck} has no folding parameters"
            break
        cur_cycles, cur_res = state(bottleneck)
        faster = [i for i, c in enumerate(options[bottleneck]) if c[1] < cur_cycles]
        if not faster:
            limited_by = f"layer {bottleneck} is fully parallel"
            break
        base = totals()
        best = None
        for i in faster:
            res = options[bottleneck][i][2]
            new = {r: base[r] - cur_res[r] + res[r] for r in _ESTIMATES}
            if _fits(new, caps):
                key = (_weight(res, caps), options[bottleneck][i][1])
                if best is None or key < best[0]:
                    best = (key, i)
        if best is None:
            limited_by = f"resources: speeding up {bottleneck} would exceed {board.name}'s caps"
            break
        choice[bottleneck] = best[1]

    cycles = {n: state(n)[0] for n in list(fixed) + list(options)}
    max_cycles = max(cycles.values())
    return FoldingPlan(
        folding={n: dict(options[n][choice[n]][0]) for n in options},
        cycles=cycles,
        totals=totals(),
        max_cycles=max_cycles,
        fps=1e9 / board.clock_period_ns / max_cycles,
        limited_by=limited_by,
    )


def _resources(inst: Any, part: str) -> dict[str, float]:
    return {r: float(getattr(inst, fn)(part)) for r, fn in _ESTIMATES.items()}


def _fits(totals: dict[str, float], caps: dict[str, int]) -> bool:
    return all(totals[r] <= caps[r] for r in caps)


def _weight(res: dict[str, float], caps: dict[str, int]) -> float:
    """Resource use as the summed fraction of each cap (a resource with no cap counts as very expensive)."""
    return sum(v / caps[r] if caps[r] else (0.0 if v == 0 else 1e9) for r, v in res.items())
