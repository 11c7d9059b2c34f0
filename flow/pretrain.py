"""The `pretrain` stage: train a zoo model from scratch with a fixed recipe and seed."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from trimflow.artifacts import write_json
from trimflow.data import load_dataset, subset
from trimflow.models import build_model, save_checkpoint
from trimflow.train import TrainConfig, evaluate, seed_everything, train


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    model: str = "cnv"
    model_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    dataset: str = "fashion-mnist"
    train: TrainConfig = TrainConfig(epochs=15, lr=0.05, batch_size=128)
    train_images: int | None = None  # a seeded subset of the training split (None: all of it)


def pretrain(cfg: PretrainConfig, out: str | os.PathLike, data_dir: str | None = None) -> dict:
    """Train and write `out` (checkpoint) plus `out` with .json (recipe, seed, accuracy)."""
    seed_everything(cfg.train.seed)
    train_set = subset(load_dataset(cfg.dataset, "train", data_dir), cfg.train_images, cfg.train.seed)
    test_set = load_dataset(cfg.dataset, "test", data_dir)
    kwargs = {"in_channels": train_set.shape[0], "input_size": train_set.shape[1], "classes": train_set.classes,
              **cfg.model_kwargs}
    model = build_model(cfg.model, **kwargs)
    history = train(model, train_set, cfg.train, desc=f"pretrain {cfg.model}")
    acc = evaluate(model, test_set)
    info = {"recipe": dataclasses.asdict(cfg), "seed": cfg.train.seed, "test_accuracy": acc,
            "train_seconds": history["seconds"], "loss": history["loss"], "torch": torch.__version__}
    arch = {"name": cfg.model, "kwargs": kwargs}
    save_checkpoint(out, model, arch, meta={"dataset": cfg.dataset, "test_accuracy": acc})
    write_json(Path(out).with_suffix(".json"), info)
    return info
