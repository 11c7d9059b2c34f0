"""Datasets as uint8 image tensors (N, C, H, W) plus int64 labels; models see float images in [0, 1]."""

from trimflow.data.registry import DATASETS, ImageSet, load_dataset, make_loader, subset

__all__ = ["DATASETS", "ImageSet", "load_dataset", "make_loader", "subset"]
