"""Frame sources (camera, image folder, .npy batch) and the preprocessing that fits a frame to the accelerator.

Frames travel as uint8 arrays (H, W, C). Preprocessing repeats what training did to its images, as the package's
manifest records it (`preprocess`: a model trained on an image folder saw every image converted to its mode, resized
with PIL's bilinear filter, then inverted / autocontrasted if its dataset said so). Beyond that it either adapts a
frame (resize, channel conversion) or rejects it, as the PreprocessConfig says: silently squeezing a 32x32 RGB image
into a 28x28 grayscale model trained on 28x28 files is a choice the user makes, not the runtime. Resizing,
invert and autocontrast use Pillow (on every PYNQ image), so they are exactly training's operations.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from trimflow_runtime import DeployError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".tif", ".tiff")


@dataclass(frozen=True)
class PreprocessConfig:
    resize: bool = False  # resize to the model's H x W (PIL bilinear, as folder training does) instead of an error
    convert_channels: bool = False  # RGB -> gray (luma) or gray -> RGB instead of an error
    bgr: bool = True  # colour frames from OpenCV are BGR; only used when converting to gray

    def __post_init__(self) -> None:
        for name in ("resize", "convert_channels", "bgr"):
            if not isinstance(getattr(self, name), bool):
                raise DeployError(f"PreprocessConfig.{name} must be true or false, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class Frame:
    name: str  # where it came from, for messages and output lines
    pixels: np.ndarray  # uint8 (H, W, C)


def _as_hwc(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise DeployError(f"{name}: expected an image (H, W) or (H, W, C), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() > 255:
            raise DeployError(f"{name}: pixels must be uint8 (0..255), got {arr.dtype} "
                              f"in [{arr.min()}, {arr.max()}]")
        arr = arr.astype(np.uint8)
    return arr


def npy_frames(path: str | os.PathLike) -> Iterator[Frame]:
    """A .npy batch in trimflow's dataset layout: (N, C, H, W) or (N, H, W) uint8."""
    path = Path(path)
    if not path.is_file():
        raise DeployError(f"image batch {path} does not exist")
    try:
        batch = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DeployError(f"{path}: not a readable .npy array ({e})") from None
    if batch.ndim == 3:
        batch = batch[:, None]
    if batch.ndim != 4:
        raise DeployError(f"{path}: expected (N, C, H, W) or (N, H, W) images, got shape {batch.shape}")
    for i, img in enumerate(batch):
        yield Frame(f"{path.name}[{i}]", _as_hwc(np.transpose(img, (1, 2, 0)), f"{path.name}[{i}]"))


def _read_image(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    try:
        from PIL import Image  # PYNQ images ship Pillow

        with Image.open(path) as im:
            if im.mode not in ("L", "RGB"):
                im = im.convert("RGB")
            return np.asarray(im)
    except ImportError:
        pass
    try:
        import cv2

        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise DeployError(f"{path}: OpenCV could not read this image")
        return img[:, :, ::-1] if img.ndim == 3 else img  # our colour frames are RGB from files
    except ImportError:
        raise DeployError(f"{path}: reading {path.suffix} images needs Pillow or OpenCV; "
                          "install one, or pass the images as a .npy batch") from None


def folder_frames(path: str | os.PathLike) -> Iterator[Frame]:
    """Every image file (and single-image .npy) in a folder, in name order."""
    path = Path(path)
    if not path.is_dir():
        raise DeployError(f"image folder {path} does not exist")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES + (".npy",))
    if not files:
        raise DeployError(f"image folder {path} has no images ({', '.join(IMAGE_SUFFIXES)} or .npy)")
    for f in files:
        yield Frame(f.name, _as_hwc(np.asarray(_read_image(f)), f.name))


def camera_frames(device: int | str = 0, count: int | None = None) -> Iterator[Frame]:
    """Frames from a camera via OpenCV's VideoCapture (BGR); `count` None = until the camera stops."""
    try:
        import cv2
    except ImportError:
        raise DeployError("camera not available: OpenCV (cv2) is not installed; on a PYNQ board run "
                          "`pip3 install opencv-python-headless`, or use --folder / --npy") from None
    cap = cv2.VideoCapture(device)
    if not cap.isOpened():
        raise DeployError(f"camera not available: OpenCV could not open video device {device!r} "
                          "(is a USB camera plugged in? try --camera 1)")
    try:
        i = 0
        while count is None or i < count:
            ok, img = cap.read()
            if not ok:
                if i == 0:
                    raise DeployError(f"camera not available: device {device!r} opened but delivered no frame")
                return
            yield Frame(f"camera[{i}]", _as_hwc(img, f"camera[{i}]"))
            i += 1
    finally:
        cap.release()


def _pil(what: str):
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise DeployError(f"{what} as training did needs Pillow (`pip3 install pillow`)") from None
    return Image, ImageOps


def _to_pil(img: np.ndarray, Image):
    return Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img, "L" if img.shape[2] == 1 else "RGB")


def _from_pil(im) -> np.ndarray:
    arr = np.asarray(im, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def _resize_bilinear(img: np.ndarray, h: int, w: int) -> np.ndarray:
    Image, _ = _pil("resizing")
    return _from_pil(_to_pil(img, Image).resize((w, h), Image.Resampling.BILINEAR))


def _gray(rgb: np.ndarray) -> np.ndarray:
    """RGB -> L with PIL's integer ITU-R 601-2 luma (what Image.convert("L") computes), without needing PIL."""
    r, g, b = (rgb[:, :, i].astype(np.uint32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)[:, :, None]


def preprocess(frame: Frame, shape: tuple[int, int, int], cfg: PreprocessConfig = PreprocessConfig(),
               training: dict | None = None) -> np.ndarray:
    """Fit one frame to the accelerator input (C, H, W) uint8, or raise DeployError saying what is wrong.

    `training`: the manifest's `preprocess` record (Package.preprocess); its steps run in training's order:
    channel conversion, resize, invert, autocontrast."""
    c, h, w = shape
    training = training or {}
    img = _as_hwc(np.asarray(frame.pixels), frame.name)  # frames may come from API users, not only our sources
    if img.shape[2] != c:
        if not (cfg.convert_channels or training.get("convert")) or {img.shape[2], c} - {1, 3}:
            raise DeployError(f"{frame.name}: {img.shape[2]} channel(s), the accelerator takes {c}"
                              + ("; pass --convert-channels to convert RGB/gray" if {img.shape[2], c} <= {1, 3}
                                 else ""))
        img = _gray(img[:, :, ::-1] if cfg.bgr else img) if c == 1 else np.repeat(img, 3, axis=2)
    if img.shape[:2] != (h, w):
        if not (cfg.resize or training.get("resize")):
            raise DeployError(f"{frame.name}: size {img.shape[0]}x{img.shape[1]}, the accelerator takes {h}x{w}; "
                              "pass --resize to scale frames")
        img = _resize_bilinear(img, h, w)
    if training.get("invert"):
        img = 255 - img
    if training.get("autocontrast"):
        Image, ImageOps = _pil("autocontrast")
        img = _from_pil(ImageOps.autocontrast(_to_pil(img, Image)))
    return np.ascontiguousarray(np.transpose(img, (2, 0, 1)))
