"""Frames in, top-1 classes and measured frame rates out."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from trimflow_runtime import DeployError
from trimflow_runtime.accelerator import Accelerator, apply_host_ops
from trimflow_runtime.frames import Frame, PreprocessConfig, preprocess
from trimflow_runtime.package import Package


@dataclass
class Classification:
    names: list[str] = field(default_factory=list)
    predictions: list[int] = field(default_factory=list)
    scores: list[np.ndarray] = field(default_factory=list)  # the model's float outputs (logits) per frame
    accel_seconds: float = 0.0  # inside Accelerator.execute only
    total_seconds: float = 0.0  # frame reading + preprocessing + accelerator + host tail

    @property
    def frames(self) -> int:
        return len(self.predictions)

    @property
    def fps(self) -> float:
        return self.frames / self.total_seconds if self.total_seconds > 0 else 0.0

    @property
    def accel_fps(self) -> float:
        return self.frames / self.accel_seconds if self.accel_seconds > 0 else 0.0

    def accuracy(self, labels: np.ndarray) -> float:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != self.frames:
            raise DeployError(f"{len(labels)} labels for {self.frames} frames")
        return float(np.mean(np.asarray(self.predictions) == labels)) if self.frames else 0.0


def _batches(frames: Iterable[Frame], size: int) -> Iterable[list[Frame]]:
    batch: list[Frame] = []
    for f in frames:
        batch.append(f)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def classify(pkg: Package, accel: Accelerator, frames: Iterable[Frame], cfg: PreprocessConfig = PreprocessConfig(),
             batch_size: int = 1, on_frame: Callable[[str, int, np.ndarray], None] | None = None) -> Classification:
    """Run every frame through preprocessing, the host head, the accelerator and the host tail."""
    if batch_size < 1:
        raise DeployError(f"batch size must be >= 1, got {batch_size}")
    head, tail = pkg.manifest["host_head"], pkg.manifest["host_tail"]
    out = Classification()
    t_start = time.perf_counter()
    for batch in _batches(frames, batch_size):
        x = np.stack([preprocess(f, pkg.input_shape, cfg, pkg.preprocess) for f in batch])  # (N, C, H, W) uint8
        x = np.ascontiguousarray(apply_host_ops(head, x)).astype(np.uint8)
        t0 = time.perf_counter()
        raw = accel.execute(x)
        out.accel_seconds += time.perf_counter() - t0
        scores = apply_host_ops(tail, np.asarray(raw, dtype=np.float32)).reshape(len(batch), -1)
        for f, s in zip(batch, scores):
            top = int(np.argmax(s))
            out.names.append(f.name)
            out.predictions.append(top)
            out.scores.append(s)
            if on_frame is not None:
                on_frame(f.name, top, s)
    out.total_seconds = time.perf_counter() - t_start
    return out
