"""CIFAR-10 in the "python version" layout (cifar-10-python.tar.gz from the CIFAR site, unpacked).

    <dir>/cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch      (or those files directly in <dir>)

Each batch is a pickle (written by Python 2, so its keys load as bytes) of a dict with b"data": uint8 array
N x 3072 (1024 red, then green, then blue values of a row-major 32x32 image) and b"labels": N ints in 0..9.
Pickles can run code while loading, so the unpickler here only accepts the few numpy names an array needs.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from trimflow import FlowError

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)

_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
            ("numpy", "ndarray"), ("numpy", "dtype"),
            ("_codecs", "encode")}  # how Python 3 writes bytes into a protocol-2 pickle (re-saved batches)


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core"):  # numpy 2 moved numpy.core to numpy._core
            module = module.replace("numpy.core", "numpy._core")
        return super().find_class(module, name)


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, AttributeError) as e:
        raise FlowError(f"{path}: not a CIFAR-10 python batch ({type(e).__name__}: {e})") from None
    if not isinstance(batch, dict):
        raise FlowError(f"{path}: not a CIFAR-10 python batch (holds a {type(batch).__name__}, not a dict)")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise FlowError(f"{path}: CIFAR-10 batch without 'data'/'labels' (keys: {sorted(batch)})")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
        raise FlowError(f"{path}: expected uint8 data N x 3072 and N labels, got data {data.dtype} {data.shape} "
                        f"and {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise FlowError(f"{path}: labels outside 0..9 ({labels.min()} .. {labels.max()})")
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar10(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images N x 3 x 32 x 32, int64 labels) of `split` ("train": 5 data batches, "test": test_batch)."""
    root = Path(root)
    base = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    names = TRAIN_BATCHES if split == "train" else TEST_BATCHES
    for n in names:
        if not (base / n).is_file():
            raise FileNotFoundError(base / n)
    parts = [read_batch(base / n) for n in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
