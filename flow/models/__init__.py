"""Model zoo and checkpoint I/O."""

from trimflow.models.io import load_checkpoint, save_checkpoint
from trimflow.models.registry import MODELS, build_model

__all__ = ["MODELS", "build_model", "load_checkpoint", "save_checkpoint"]
