"""What every stage of one build shares: the flow config, the board, the build root, the model and the datasets."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import torch

from trimflow import FlowError, __version__
from trimflow.artifacts import file_digest
from trimflow.boards import Board
from trimflow.config import FlowConfig
from trimflow.data import ImageSet, load_dataset, subset
from trimflow.resources import locate

CHECKPOINT = "model.pt"  # the net a model stage (trim, quantize) writes into its folder
VALIDATION_SEED = 20260  # fixed: the hold-out must not move when a stage's own seed changes
# Every stage's key holds a digest of the package's code (trimflow.sources); the report's, the command line's,
# the docs' and the sweep driver's code cannot change what the other stages write, so editing those reruns the
# report alone.
NOT_STAGE_CODE = ("report/*", "stages/report.py", "cli.py", "config_docs.py", "logs.py", "sweep/*")


def cfg_name(cfg: FlowConfig) -> str:
    return f"dataset {cfg.dataset!r}"


class Datasets:
    """Datasets loaded once per run and shared by the stages."""

    def __init__(self, cfg: FlowConfig):
        self.cfg = cfg

    @functools.cached_property
    def _split(self) -> tuple[ImageSet, ImageSet]:
        """(training images, validation images): a seeded hold-out of the training split (validation_images)."""
        full = load_dataset(self.cfg.dataset, "train", self.cfg.data_dir)
        n = self.cfg.validation_images
        if n >= len(full):
            raise FlowError(f"validation_images={n} leaves no training images ({cfg_name(self.cfg)} has "
                            f"{len(full)}); lower validation_images")
        order = torch.randperm(len(full), generator=torch.Generator().manual_seed(VALIDATION_SEED))

        def take(idx):
            return ImageSet(full.name, full.images[idx], full.labels[idx], full.classes)
        return take(order[n:].sort().values), take(order[:n].sort().values)

    @property
    def train(self) -> ImageSet:
        """Everything stages train, calibrate or score on: the training split minus the validation images."""
        return self._split[0]

    @property
    def val(self) -> ImageSet:
        """Held-out training images for the flow's own choices (never the test split)."""
        if self.cfg.validation_images == 0:
            raise FlowError("this build makes a choice on validation images but validation_images=0; set it "
                            "to e.g. 2000")
        return self._split[1]

    @functools.cached_property
    def test(self) -> ImageSet:
        return subset(load_dataset(self.cfg.dataset, "test", self.cfg.data_dir), self.cfg.eval_images)


@dataclasses.dataclass
class BuildInputs:
    """One build's shared inputs, handed to every stage's spec() and run()."""

    cfg: FlowConfig
    board: Board
    root: Path  # <build-dir>/<board>
    data: Datasets
    model_path: Path  # the checkpoint the build starts from
    source: dict  # key material for the model, data and version (part of the model stages' keys)

    @classmethod
    def make(cls, cfg: FlowConfig, board: Board, root: Path) -> "BuildInputs":
        # a relative path that is not in the working directory names a shipped checkpoint (the default one)
        model_path = locate(cfg.model, "model checkpoint", "set `model:` in your config to a trimflow checkpoint")
        from trimflow.models.importers import check_model_file
        check_model_file(model_path)
        # a misspelt dataset or data folder fails here, before any stage starts (the data itself is read lazily:
        # a build whose stages are all cached does not need it)
        from trimflow.data.registry import check_dataset_name
        check_dataset_name(cfg.dataset)
        if cfg.data_dir is not None and not Path(cfg.data_dir).is_dir():
            raise FlowError(f"data_dir {cfg.data_dir} is not a folder; give the folder that holds the {cfg.dataset} "
                            "files (--data-dir / DATA_DIR)")
        # The version is part of every key too (the code digest, trimflow.sources, catches changes within a
        # version).
        source = {"model": file_digest(model_path), "dataset": cfg.dataset, "eval_images": cfg.eval_images,
                  "validation_images": cfg.validation_images, "validation_seed": VALIDATION_SEED,
                  "trimflow": __version__}
        return cls(cfg, board, root, Datasets(cfg), model_path, source)

    @property
    def board_salt(self) -> dict:
        # what the board is, not where its YAML lies: a checkout moved, or mounted elsewhere by `make synth`'s
        # container, must reuse its stages
        return {k: v for k, v in dataclasses.asdict(self.board).items() if k != "source"}
