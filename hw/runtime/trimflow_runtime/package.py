"""The deployment package: a folder with manifest.json, FINN's bitfile/ and driver/, and optionally model/.

manifest.json is written by trimflow.finn.synth.make_package on the build host; this module only reads it. It records
what the accelerator was built for (board, part), what one frame must look like (`input`: C, H, W, uint8), how the
host turns a frame into the accelerator's stream (`host_head`: layout ops) and its integer output back into class
scores (`host_tail`: the float scale/bias FINN left outside the dataflow partition).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trimflow_runtime import DeployError

MANIFEST = "manifest.json"
FORMAT = "trimflow-deploy/1"
# Which package files each backend reads; the manifest names them (None: not built, e.g. no Vivado).
BACKEND_FILES = {
    "pynq": ("bitfile", "hwh", "driver_settings"),
    "finn-python": ("accel_model",),
    "verilator": ("hw_model",),
}
_REQUIRED = ("format", "board", "part", "input", "accel_input", "accel_output", "host_head", "host_tail", "files")


@dataclass(frozen=True)
class Package:
    root: Path
    manifest: dict[str, Any]

    @property
    def board(self) -> str:
        return self.manifest["board"]

    @property
    def part(self) -> str:
        return self.manifest["part"]

    @property
    def finn_board(self) -> str | None:
        return self.manifest.get("finn_board")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one frame."""
        return tuple(int(d) for d in self.manifest["input"]["shape"])  # type: ignore[return-value]

    @property
    def classes(self) -> list[str]:
        return list(self.manifest.get("classes") or [])

    @property
    def preprocess(self) -> dict[str, Any]:
        """How training made its images (trimflow.data.meta.preprocessing); {} in packages from before it."""
        return dict(self.manifest.get("preprocess") or {})

    def file(self, key: str) -> Path:
        rel = self.manifest["files"].get(key)
        if not rel:
            raise DeployError(f"deployment package {self.root} has no {key} (manifest.json files.{key} is empty); "
                              f"it was built without it — {_why_missing(key)}")
        return self.root / rel

    def backends(self) -> list[str]:
        """Backends whose files this package has."""
        return [b for b, keys in BACKEND_FILES.items() if all(self.manifest["files"].get(k) for k in keys)]

    def check_backend(self, backend: str) -> None:
        if backend not in BACKEND_FILES:
            raise DeployError(f"unknown backend {backend!r}; choose one of {', '.join(BACKEND_FILES)}")
        for key in BACKEND_FILES[backend]:
            self.file(key)  # raises with the reason when the package lacks it


def _why_missing(key: str) -> str:
    if key in ("bitfile", "hwh", "driver_settings"):
        return "run the synthesis (`make synth BOARD=<board>`, needs Vivado) to get a bitfile and driver"
    return "rebuild the package with `python -m trimflow.finn.synth` from the compile stage's output"


def load_package(path: str | os.PathLike, board: str | None = None) -> Package:
    """Read and check a deployment package; `board` (a trimflow board name) must match what it was built for."""
    root = Path(path)
    if not root.is_dir():
        raise DeployError(f"deployment package {root} does not exist (copy it to the board with `make deploy`)")
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise DeployError(f"{root} is not a trimflow deployment package: {MANIFEST} is missing")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError) as e:
        raise DeployError(f"{mpath}: not valid JSON ({e}); rebuild the package") from None
    if not isinstance(manifest, dict):
        raise DeployError(f"{mpath}: expected a JSON object")
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise DeployError(f"{mpath}: missing field(s) {', '.join(missing)}; rebuild the package")
    if manifest["format"] != FORMAT:
        raise DeployError(f"{mpath}: format {manifest['format']!r}, this runtime reads {FORMAT!r}; "
                          "use the runtime copy inside the package")
    shape = manifest["input"].get("shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(d, int) and d > 0 for d in shape)):
        raise DeployError(f"{mpath}: input.shape must be [channels, height, width], got {shape!r}")
    if manifest["input"].get("dtype") != "uint8":
        raise DeployError(f"{mpath}: input.dtype {manifest['input'].get('dtype')!r} is not supported (uint8 only)")
    absent = [f"{k} ({rel})" for k, rel in manifest["files"].items() if rel and not (root / rel).exists()]
    if absent:
        raise DeployError(f"deployment package {root} is incomplete, missing: {', '.join(absent)}; "
                          "copy the whole folder again")
    if board is not None and board != manifest["board"]:
        raise DeployError(f"deployment package {root} was built for board {manifest['board']} "
                          f"(part {manifest['part']}), not {board}; build one with `make synth BOARD={board}`")
    return Package(root, manifest)


def check_running_board(pkg: Package, environ: dict[str, str] | None = None) -> None:
    """On a PYNQ image, $BOARD names the board (e.g. Pynq-Z2); refuse a bitfile built for another one."""
    env = os.environ if environ is None else environ
    here = env.get("BOARD")
    if here and pkg.finn_board and not _same_board(here, pkg.finn_board):
        raise DeployError(f"this board is {here} ($BOARD), but {pkg.root} was built for {pkg.finn_board} "
                          f"({pkg.board}, part {pkg.part}); its bitstream does not match this device — "
                          f"build a package for this board")


def _same_board(pynq_name: str, finn_name: str) -> bool:
    # PYNQ's names are FINN's without the variant suffix on some images (Ultra96 / Ultra96-V2, KV260 / KV260_SOM),
    # so one normalised name may extend the other; Pynq-Z1 vs Pynq-Z2 still differ.
    a, b = (re.sub(r"[^a-z0-9]", "", n.lower()) for n in (pynq_name, finn_name))
    return a.startswith(b) or b.startswith(a)
