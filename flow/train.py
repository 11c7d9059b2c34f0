"""Training and evaluation loops shared by pretraining, fine-tuning after trimming, and QAT."""

from __future__ import annotations

import dataclasses
import math
import random
import time
from typing import Literal

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from trimflow import FlowError
from trimflow.data import ImageSet, make_loader
from trimflow.data.registry import default_hflip


# The choices, once: the Literal types below (read by the config parser and docs) and the checks use them
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "constant", "onecycle")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: float = 10.0  # fractional epochs let a fine-tune see part of the set; 0 = no training step at all
    batch_size: int = 128
    lr: float = 0.05
    # sgd: momentum 0.9, nesterov; adam: L2 decay in the gradient; adamw: decay decoupled from it (Loshchilov &
    # Hutter), as in the recipes most Torch users fine-tune with
    optimizer: Literal[OPTIMIZERS] = "sgd"
    weight_decay: float = 5e-4  # conv / linear weights only, never BN parameters or biases
    # after warmup: cosine decay to 0, or lr throughout; onecycle: torch's OneCycleLR with its defaults (warm-up
    # over the first 30 % of the steps from lr / 25, cosine down to lr / 25e4; for adam/adamw it also cycles beta1
    # 0.95 -> 0.85 -> 0.95), its own warm-up, so warmup_steps must stay 0
    schedule: Literal[SCHEDULES] = "cosine"
    warmup_steps: int = 0
    augment: bool = True  # random shifts (and flips, see hflip) of the training images
    shift: int = 2  # augment: largest shift in pixels, each direction (zero fill)
    hflip: bool | None = None  # augment: mirror half the images; None = the dataset's default (no for digits)
    label_smoothing: float = 0.0
    distill_weight: float = 0.0  # weight of KL(teacher || student) when a teacher is given
    distill_temperature: float = 4.0
    seed: int = 0

    def __post_init__(self):
        if not self.epochs >= 0:
            raise FlowError(f"train: epochs must be >= 0 (0 = no training), got {self.epochs}")
        if self.optimizer not in OPTIMIZERS:
            raise FlowError(f"train: optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise FlowError(f"train: schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.schedule == "onecycle" and self.warmup_steps:
            raise FlowError(f"train: schedule 'onecycle' warms up by itself; set warmup_steps to 0 (got "
                            f"{self.warmup_steps})")
        if self.shift < 0:
            raise FlowError(f"train: shift must be >= 0 pixels, got {self.shift}")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise FlowError(f"train: distill_weight must be in [0, 1], got {self.distill_weight}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # No weight decay on BN parameters and biases: decaying them only hurts small nets.
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer in ("adam", "adamw"):
        return (torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam)(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)


def train(model: nn.Module, data: ImageSet, cfg: TrainConfig, teacher: nn.Module | None = None,
          desc: str = "train", progress: bool = True) -> dict:
    """Train `model` in place; returns a history dict (loss per epoch, seconds)."""
    if cfg.epochs == 0:  # e.g. trimming without fine-tune: the label-free reconstruction is all there is
        model.eval()
        return {"loss": [], "steps": 0, "seconds": 0.0}
    seed_everything(cfg.seed)
    hflip = default_hflip(data.name) if cfg.hflip is None else cfg.hflip
    loader = make_loader(data, cfg.batch_size, shuffle=True, seed=cfg.seed, augment=cfg.augment, shift=cfg.shift,
                         hflip=hflip)
    steps_per_epoch = len(loader)
    total_steps = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    opt = _optimizer(model, cfg)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    if teacher is not None:
        teacher.eval()

    # onecycle: the library's scheduler owns the learning rate (and beta1) and steps once per batch
    cycle = (torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total_steps)
             if cfg.schedule == "onecycle" else None)

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return cfg.lr
        t = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * t))

    history = {"loss": [], "steps": total_steps}
    start = time.perf_counter()
    step = 0
    model.train()
    bar = tqdm(total=total_steps, desc=desc, disable=not progress, leave=False, dynamic_ncols=True,
               mininterval=1.0)
    while step < total_steps:
        running, seen = 0.0, 0
        for x, y in loader:
            if step >= total_steps:
                break
            if cycle is None:
                for g in opt.param_groups:
                    g["lr"] = lr_at(step)
            out = model(x)
            loss = criterion(out, y)
            if teacher is not None and cfg.distill_weight > 0:
                with torch.no_grad():
                    t_out = teacher(x)
                temp = cfg.distill_temperature
                kd = nn.functional.kl_div(nn.functional.log_softmax(out / temp, 1),
                                          nn.functional.softmax(t_out / temp, 1), reduction="batchmean")
                loss = (1 - cfg.distill_weight) * loss + cfg.distill_weight * kd * temp * temp
            if not torch.isfinite(loss):
                raise FlowError(f"{desc}: loss became {loss.item()} at step {step}; lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if cycle is not None:
                cycle.step()
            running += loss.item() * len(y)
            seen += len(y)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{running / seen:.3f}")
        history["loss"].append(running / max(1, seen))
    bar.close()
    model.eval()
    history["seconds"] = time.perf_counter() - start
    return history


@torch.no_grad()
def predict(model: nn.Module, data: ImageSet, batch_size: int = 500) -> torch.Tensor:
    model.eval()
    outs = [model(x) for x, _ in make_loader(data, batch_size)]
    return torch.cat(outs)


def evaluate(model: nn.Module, data: ImageSet, batch_size: int = 500) -> float:
    """Top-1 accuracy in [0, 1]."""
    return float((predict(model, data, batch_size).argmax(1) == data.labels).float().mean())
