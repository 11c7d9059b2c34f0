"""What a sweep is: the axes (trim budget × bit width × board, optionally target fps and trim criterion), the base
flow config every trial starts from, and the trials of the grid with their effective flow configs.

A trial is one point of the grid. Its id names its values (`pynq-z2-b0.50-W4A4`), so the same grid written again
finds the same trial folders, and a resumed sweep skips the trials whose records are already there.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from pathlib import Path
from typing import Any

from trimflow import FlowError
from trimflow.artifacts import digest
from trimflow.config_parsing import from_dict, load_yaml, merge, to_dict

UNTIL = ("compile", "simulate")  # a sweep estimates (compile) and optionally simulates; synthesis is --synth
_BITS = re.compile(r"^W(\d+)A(\d+)$")


def parse_bits(text: str) -> tuple[int, int]:
    m = _BITS.match(str(text))
    if not m:
        raise FlowError(f"sweep axes.bits: {text!r} is not of the form W<weight bits>A<activation bits>, e.g. W4A4")
    return int(m.group(1)), int(m.group(2))


@dataclasses.dataclass(frozen=True)
class Axes:
    budget: tuple[float, ...] = (1.0, 0.65, 0.5, 0.35, 0.25)  # fractions of the MACs kept; 1.0 = untrimmed
    bits: tuple[str, ...] = ("W8A8", "W4A4", "W3A3", "W2A2")  # weight/activation bits of the hidden layers
    board: tuple[str, ...] = ("pynq-z2", "zybo-z7-10")
    # frame rates the trim stage trims until the design reaches (trimflow.hwtrim, starting at the trial's budget);
    # None: the base config's hwtrim.target_fps / compile.folding_fps (none by default: fixed budget, fastest folding
    # within the caps); a number sets both, as --target-fps does
    target_fps: tuple[float | None, ...] = (None,)
    criterion: tuple[str | None, ...] = (None,)  # None: the base config's trim.criterion

    def __post_init__(self):
        for name in ("budget", "bits", "board", "target_fps", "criterion"):
            values = getattr(self, name)
            if not values:
                raise FlowError(f"sweep axes.{name}: needs at least one value")
            if len(set(values)) != len(values):
                raise FlowError(f"sweep axes.{name}: repeated values in {list(values)}")
        for b in self.budget:
            if not 0.0 < b <= 1.0:
                raise FlowError(f"sweep axes.budget: {b!r} is not a fraction of the MACs in (0, 1]")
        for bits in self.bits:
            parse_bits(bits)
        for fps in self.target_fps:
            if fps is not None and fps <= 0:
                raise FlowError(f"sweep axes.target_fps: {fps!r} must be > 0 (or null for the fastest fitting)")


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    axes: Axes = Axes()
    config: str | None = None  # base flow config YAML (as `trimflow build --config`)
    set: tuple[str, ...] = ()  # KEY=VALUE overrides of the base config (as `--set`)
    data_dir: str | None = None
    until: str = "compile"  # last stage of every trial: compile (estimates) or simulate (Verilator)
    # A trial whose quantized top-1 falls below this fraction of the float net's is recorded as failed
    # ("accuracy collapsed") and not compiled: a collapsed QAT lands near chance (10 % on 10 classes).
    accuracy_floor: float = 0.5
    retries: int = 3  # times Ray reruns a trial whose worker process or node died
    cpus_per_trial: float = 1.0  # Ray CPUs each trial reserves (its torch threads)

    def __post_init__(self):
        if self.until not in UNTIL:
            raise FlowError(f"sweep until: {self.until!r} is not one of {', '.join(UNTIL)}")
        if not 0.0 <= self.accuracy_floor < 1.0:
            raise FlowError(f"sweep accuracy_floor: a fraction of the float accuracy in [0, 1), got "
                            f"{self.accuracy_floor!r}")
        if self.retries < 0:
            raise FlowError(f"sweep retries: must be >= 0, got {self.retries}")
        if self.cpus_per_trial <= 0:
            raise FlowError(f"sweep cpus_per_trial: must be > 0, got {self.cpus_per_trial}")


def load_spec(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> SweepSpec:
    """The sweep YAML (optional) with command-line values on top; unknown keys and bad values name their key."""
    data = load_yaml(path) if path else {}
    return from_dict(SweepSpec, merge(data, overrides or {}), where=str(path) if path else "sweep")


@dataclasses.dataclass(frozen=True)
class Trial:
    budget: float
    bits: str
    board: str
    target_fps: float | None = None
    criterion: str | None = None

    @property
    def id(self) -> str:
        board = Path(self.board).stem if self.board.endswith((".yaml", ".yml")) else self.board  # a board file
        parts = [board, f"b{self.budget:.2f}", self.bits]
        if self.target_fps is not None:
            parts.append(f"fps{self.target_fps:g}")
        if self.criterion is not None:
            parts.append(self.criterion)
        return "-".join(parts)

    def overrides(self) -> dict[str, Any]:
        """The flow-config keys this trial sets on top of the base config."""
        w, a = parse_bits(self.bits)
        out: dict[str, Any] = {"trim": {"policy": "budget", "budget": float(self.budget)},
                               "quantize": {"weight_bits": w, "act_bits": a}}
        if self.target_fps is not None:
            out["hwtrim"] = {"target_fps": float(self.target_fps)}
            out["compile"] = {"folding_fps": float(self.target_fps)}
        if self.criterion is not None:
            out["trim"]["criterion"] = self.criterion
        return out


def trials(spec: SweepSpec) -> list[Trial]:
    """The grid, budget-major: the trials of one budget share its trim stage and are submitted (and so mostly
    finish) together, so an interrupted sweep holds whole budgets."""
    ax = spec.axes
    return [Trial(*values) for values in itertools.product(ax.budget, ax.bits, ax.board, ax.target_fps, ax.criterion)]


def base_config_dict(spec: SweepSpec, absolute: bool = True) -> dict[str, Any]:
    """The base flow config as a plain dict. `absolute`: with the model and data paths made absolute, for the Ray
    workers, which may start in another working directory (or on another machine with the same paths); otherwise
    as the user gave them, for the trial configs a person (or `make synth`) rebuilds from."""
    from trimflow.config import load_flow_config
    from trimflow.resources import locate
    cfg = to_dict(load_flow_config(spec.config, list(spec.set), data_dir=spec.data_dir))
    if absolute:
        cfg["model"] = str(locate(cfg["model"], "model checkpoint").resolve())
        if cfg.get("data_dir"):
            cfg["data_dir"] = str(Path(cfg["data_dir"]).expanduser().resolve())
    return cfg


def trial_config(base: dict[str, Any], trial: Trial):
    """The trial's FlowConfig (validated: a bad combination fails here, before any worker starts)."""
    from trimflow.config import FlowConfig
    data = merge(base, trial.overrides())
    if data.get("hwtrim", {}).get("target_fps"):
        # With a target fps the trim stage searches its budget down the hwtrim ladder; the trial's budget is where
        # that search starts (the largest share of the MACs it may keep).
        ladder = [b for b in data["hwtrim"]["budgets"] if b < trial.budget]
        data["hwtrim"] = {**data["hwtrim"], "budgets": [trial.budget, *ladder]}
    return from_dict(FlowConfig, data, where=f"sweep trial {trial.id}")


def config_digest(cfg_dict: dict[str, Any], trial: Trial, spec: SweepSpec) -> str:
    """What a trial's stored record must match to be reused by a resumed sweep."""
    return digest(cfg_dict, trial.board, spec.until, spec.accuracy_floor)
