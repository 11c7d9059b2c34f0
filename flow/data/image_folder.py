"""A user's own images in the ImageFolder layout: one subfolder per class, class index = sorted folder name.

    root/train/<class>/*.png|jpg|...   and   root/test/<class>/...     (explicit split), or
    root/<class>/...                                                    (no split: every `test_every`-th image of
                                                                          each class, in file-name order, is test)

Use it as dataset "folder:<root>" (e.g. `dataset: folder:data/signs` in a flow config). Options come from an
optional root/trimflow-dataset.yaml with the fields of `ImageFolderOptions` (size: [H, W], mode: L or RGB, ...), or
from `register_image_folder(name, root, options)` in Python.

Images are stored as uint8 like every trimflow dataset, so models always see [0, 1] floats; a network trained on
mean/std-normalised inputs gets that normalisation folded into its first layer at import
(`trimflow.models.importers.ImportConfig.input_mean / input_std`), not applied here. The normalisation offered here
works on the pixels themselves: "autocontrast" stretches each image to the full 0..255 range, `invert` turns dark
digits on white paper into MNIST's white on black.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import numpy as np

from trimflow import FlowError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
OPTIONS_FILE = "trimflow-dataset.yaml"
# Largest image side taken as it is: a CNN for a small FPGA reads far smaller images, and N full-size photos as
# uint8 tensors would exhaust memory before any check ran. Larger images need `size` (resized on load).
MAX_SIDE = 1024


@dataclasses.dataclass(frozen=True)
class ImageFolderOptions:
    size: tuple[int, int] | None = None  # (H, W) to resize every image to; None = all images must share a size
    mode: Literal["L", "RGB"] = "RGB"  # L: 1 channel, grayscale; RGB: 3 channels
    normalize: Literal["none", "autocontrast"] = "none"  # autocontrast: per image, stretch min..max to 0..255
    invert: bool = False
    test_every: int = 5  # without train/ and test/ subfolders: every n-th image of each class is test

    def __post_init__(self):
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise FlowError(f"image folder: size must be [H, W] with positive values, got {self.size}")
        if self.mode not in ("L", "RGB"):
            raise FlowError(f"image folder: mode must be 'L' (grayscale) or 'RGB', got {self.mode!r}")
        if self.normalize not in ("none", "autocontrast"):
            raise FlowError(f"image folder: normalize must be 'none' or 'autocontrast', got {self.normalize!r}")
        if self.test_every < 2:
            raise FlowError(f"image folder: test_every must be >= 2, got {self.test_every}")

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3


def load_options(root: Path) -> ImageFolderOptions:
    path = Path(root) / OPTIONS_FILE
    if not path.exists():
        return ImageFolderOptions()
    from trimflow.config_parsing import from_dict, load_yaml
    return from_dict(ImageFolderOptions, load_yaml(path), where=str(path))


def _entries(d: Path) -> list[Path]:
    """The entries of folder `d`, sorted; FlowError for a symlink that loops or points nowhere (Path.is_dir and
    is_file say False for it, so its images would silently be missing)."""
    out = []
    for p in sorted(d.iterdir()):
        if p.is_symlink():
            try:
                p.resolve(strict=True)
            except (OSError, RuntimeError) as e:  # RuntimeError: Python's own symlink-loop detection
                what = "points to nothing" if isinstance(e, FileNotFoundError) else "is a symlink loop"
                raise FlowError(f"image folder: {p} {what}; remove it or point it at a real "
                                f"{'image' if p.suffix.lower() in EXTENSIONS else 'folder'}") from None
        out.append(p)
    return out


def _class_dirs(root: Path) -> list[Path]:
    return [d for d in _entries(root) if d.is_dir() and not d.name.startswith(".")]


def _has_split(root: Path) -> bool:
    return (root / "train").is_dir() and (root / "test").is_dir()


def class_names(root: Path) -> list[str]:
    root = Path(root)
    base = root / "train" if _has_split(root) else root
    if not base.is_dir():
        raise FileNotFoundError(base)
    names = [d.name for d in _class_dirs(base)]
    if not names:
        raise FlowError(f"image folder {base}: no class subfolders (expected {base}/<class>/<image files>)")
    if _has_split(root):
        test_names = [d.name for d in _class_dirs(root / "test")]
        if test_names != names:
            raise FlowError(f"image folder {root}: train classes {names} differ from test classes {test_names}")
    return names


def _files(d: Path) -> list[Path]:
    return [p for p in _entries(d) if p.is_file() and p.suffix.lower() in EXTENSIONS]


def _split_files(root: Path, split: str, opts: ImageFolderOptions) -> list[tuple[Path, int]]:
    names = class_names(root)
    out = []
    for label, name in enumerate(names):
        if _has_split(root):
            files = _files(root / split / name)
        else:
            files = _files(root / name)
            is_test = np.arange(len(files)) % opts.test_every == opts.test_every - 1
            files = [f for f, t in zip(files, is_test) if t == (split == "test")]
        out += [(f, label) for f in files]
    if not out:
        raise FlowError(f"image folder {root}: no images for split {split!r} (looked for {', '.join(EXTENSIONS)} "
                        f"files in the class folders {names})")
    return out


def _read(path: Path, opts: ImageFolderOptions) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if opts.size is None and max(img.size) > MAX_SIDE:  # checked from the header, before decoding
                raise FlowError(f"image folder: {path} is {img.size[0]}x{img.size[1]} pixels; without a resize the "
                                f"flow takes images up to {MAX_SIDE} pixels a side: set size: [H, W] in the dataset "
                                f"root's {OPTIONS_FILE} to resize them on load")
            img = img.convert(opts.mode)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise FlowError(f"image folder: {path} cannot be read as an image ({e})") from None
    if opts.size is not None and img.size != (opts.size[1], opts.size[0]):
        img = img.resize((opts.size[1], opts.size[0]), Image.Resampling.BILINEAR)
    if opts.invert:
        img = ImageOps.invert(img)
    if opts.normalize == "autocontrast":
        img = ImageOps.autocontrast(img)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def read_image_folder(root: Path, split: str, opts: ImageFolderOptions | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images N x C x H x W, int64 labels) of `split` under `root`."""
    root = Path(root)
    opts = opts or load_options(root)
    files = _split_files(root, split, opts)
    images, labels = [], []
    first: tuple[Path, tuple[int, ...]] | None = None
    for path, label in files:
        arr = _read(path, opts)
        if first is None:
            first = (path, arr.shape)
        elif arr.shape != first[1]:
            raise FlowError(f"image folder {root}: {path} is {arr.shape[2]}x{arr.shape[1]} but {first[0]} is "
                            f"{first[1][2]}x{first[1][1]}; set size: [H, W] in {root / OPTIONS_FILE} to resize")
        images.append(arr)
        labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def image_folder_spec(name: str, root: str | Path, opts: ImageFolderOptions | None = None):
    """A DatasetSpec for the folder: its shape is fixed by `size` or, without it, by the first training image."""
    from trimflow.data.registry import DatasetSpec

    root = Path(root)
    if not root.is_dir():
        raise FlowError(f"image folder {root} does not exist")
    opts = opts or load_options(root)
    names = class_names(root)
    if opts.size is not None:
        shape = (opts.channels, *opts.size)
    else:
        path = _split_files(root, "train", opts)[0][0]
        shape = tuple(_read(path, opts).shape)
    return DatasetSpec(name=name, classes=len(names), shape=shape, search_dirs=(str(root),),  # type: ignore[arg-type]
                       reader=lambda d, split: read_image_folder(d, split, opts), torchvision_name="",
                       how_to_get=f"put images in {root}/<class>/ (or {root}/train/<class>/ and "
                                  f"{root}/test/<class>/)")


def register_image_folder(name: str, root: str | Path, opts: ImageFolderOptions | None = None):
    """Register the folder as dataset `name` (replacing an earlier registration of that name); returns the spec."""
    from trimflow.data.registry import DATASETS

    spec = image_folder_spec(name, root, opts)
    DATASETS[name] = spec
    return spec
