"""trimflow's board-side runtime: run a deployment package (bitfile + FINN driver settings + manifest) on frames.

Runs on the board with only numpy (<2) and pynq installed, so nothing here imports torch, brevitas or trimflow's
`flow` package at module level; host-only backends import their heavy dependencies when they are opened.

    python3 -m trimflow_runtime --package deploy/ --npy images.npy [--labels labels.npy]
"""

__version__ = "0.1.0"


class DeployError(Exception):
    """A problem the user can act on (bad package, wrong board, unreadable frames). The CLI prints only the message."""


from trimflow_runtime.package import Package, load_package  # noqa: E402
from trimflow_runtime.accelerator import Accelerator, open_accelerator  # noqa: E402
from trimflow_runtime.frames import PreprocessConfig, preprocess  # noqa: E402
from trimflow_runtime.classify import Classification, classify  # noqa: E402

__all__ = ["DeployError", "Package", "load_package", "Accelerator", "open_accelerator", "PreprocessConfig",
           "preprocess", "Classification", "classify"]
