"""The flow's one config: which net and data, and each stage's own config (defined next to the stage)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from trimflow import FlowError
from trimflow.configs import from_dict, load_yaml, merge, parse_set
from trimflow.finn.compile import CompileConfig
from trimflow.finn.synth import SynthConfig
from trimflow.hwtrim import HwTrimConfig
from trimflow.quantize import QuantConfig
from trimflow.relevance import RelevanceConfig
from trimflow.sim import SimConfig
from trimflow.train import TrainConfig
from trimflow.trim import TrimConfig


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
    model: str = "checkpoints/cnv-fashion-mnist.pt"  # a trimflow checkpoint (see `trimflow pretrain`)
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    eval_images: int | None = None  # test images for every accuracy figure; None = the whole test split
    relevance: RelevanceConfig = RelevanceConfig()
    # Half the MACs, kernel counts in multiples of 4 so PE/SIMD folding has divisors to choose from; the removed
    # kernels' means go into the consumers' biases and BN statistics are re-estimated on the representative set.
    # How many kernels each layer loses comes from its measured sensitivity (each layer trimmed alone, loss on 500
    # calibration images; ~10 s): in bench/trim.py the best or within the seed spread of the best method at 50/35/25 %
    # of the MACs on CNV and ResNet-8, where the rank allocation lost at 50 % on CNV and at every budget on ResNet-8.
    # It keeps more parameters for the same MACs (57.6 vs 53.7 % at 50 % on CNV).
    trim: TrimConfig = TrimConfig(policy="budget", budget=0.5, budget_metric="macs", round_to=4, compensate=True,
                                  recalibrate_bn=True, allocation="sensitivity")
    # Float fine-tune right after trimming, distilled from the untrimmed net (+0.2–0.4 pt at 50 % MACs in bench/trim.py).
    finetune: TrainConfig = TrainConfig(epochs=2, lr=0.01, distill_weight=0.5, distill_temperature=4.0, seed=0)
    quantize: QuantConfig = QuantConfig()
    export: ExportConfig = ExportConfig()
    # The fastest folding within the board's caps, and the fps-vs-LUT Pareto set around it (pareto.json, plot in
    # the report) from 4 more optimiser runs: about 7 s on the default net.
    compile: CompileConfig = CompileConfig(folding="optimize", pareto_points=4)
    # With compile.target_fps set, the trim stage picks the largest MAC budget whose design reaches it on the board
    # (trimflow.hwtrim) instead of trim.budget.
    hwtrim: HwTrimConfig = HwTrimConfig()
    simulate: SimulateConfig = SimulateConfig()
    synth: SynthConfig = SynthConfig()  # the Vivado part; without Vivado only the host-emulation package is made


def load_flow_config(path: str | Path | None = None, overrides: list[str] | None = None,
                     data_dir: str | None = None, target_fps: float | None = None) -> FlowConfig:
    data: dict[str, Any] = load_yaml(path) if path else {}
    data = merge(data, parse_set(overrides or []))
    if data_dir is not None:
        data["data_dir"] = data_dir
    if target_fps is not None:
        data = merge(data, {"compile": {"target_fps": float(target_fps)}})
    return from_dict(FlowConfig, data, where=str(path) if path else "config")
