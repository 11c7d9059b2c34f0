"""Where a report came from (command, effective config, tool versions, git commit, date) and what to run next."""

from __future__ import annotations

import importlib.metadata
import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

from trimflow import __version__

# The distributions whose versions decide what a build produces (pip names).
CONFIG_FILE = "config.yaml"  # the effective config, next to report.md
TOOLS = ("torch", "brevitas", "qonnx", "finn-plus", "onnx", "onnxruntime", "numpy")


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _verilator() -> str:
    try:
        from trimflow.sim.verilator import find_verilator
        major, minor = find_verilator()[2]
        return f"{major}.{minor:03d}"
    except Exception as e:  # the report must not fail because the simulator tool is gone
        return f"not found ({type(e).__name__})"


def _git(source: Path) -> str:
    """The commit of the checkout the package runs from, "+ uncommitted changes" when the tree differs from it."""
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True, timeout=20,
                                  check=True).stdout.strip()
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return commit + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "not a git checkout"


def collect(command: list[str]) -> dict[str, Any]:
    from trimflow.sources import PACKAGE_DIR, code_digest
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": shlex.join(command),
            "cwd": os.getcwd(), "trimflow": __version__, "code_digest": code_digest(),
            "git": _git(PACKAGE_DIR), "versions": {**{d: _version(d) for d in TOOLS}, "verilator": _verilator()}}


def collect_for_build(command: list[str], board: str, board_root: Path, data_dir: str | None,
                      model: Path | None = None) -> dict[str, Any]:
    """collect() plus the next commands for a build whose stages live in `board_root` (= BUILD_DIR/<board>) and
    started from the checkpoint `model`, with what stands in their way (synth_caveats)."""
    board_root = Path(board_root)
    synth = synth_command(board, board_root / CONFIG_FILE, board_root.parent, data_dir)
    deploy = f"make deploy BOARD={board} BUILD_DIR={_rel(board_root.parent)} HOST=<board address>"
    return {**collect(command), "synth_command": synth, "synth_caveats": synth_caveats(board_root.parent, model),
            "deploy_command": deploy}


def synth_caveats(build_root: Path, model: Path | None) -> list[str]:
    """Why `make synth` would not run as printed from the working directory: it needs a checkout (its Makefile
    and Dockerfile are not in the pip package), and its container sees only that checkout, so the build folder
    and a model of the user's own must lie inside it (the shipped default model is in the image)."""
    from trimflow.resources import SHIPPED

    cwd = Path.cwd().resolve()
    makefile = cwd / "Makefile"
    notes = []
    if not (makefile.is_file() and "\nsynth:" in makefile.read_text(errors="replace")
            and (cwd / "docker" / "Dockerfile").is_file()):
        notes.append(f"`make synth` needs a trimflow checkout (its Makefile and docker/ are not part of the pip "
                     f"package), and {cwd} is not one: clone trimflow and run it there, with this build's folder "
                     "inside the checkout (and CONFIG and BUILD_DIR adjusted).")
    if not Path(build_root).resolve().is_relative_to(cwd):
        notes.append(f"The container sees only the checkout it is started in: move the build folder {build_root} "
                     "inside it first (and adjust CONFIG and BUILD_DIR).")
    if model is not None:
        model = Path(model).resolve()
        shipped = {p.resolve() for p in (SHIPPED / "checkpoints").glob("*")}  # links into a checkout resolved too
        if not model.is_relative_to(cwd) and not model.is_relative_to(SHIPPED.resolve()) and model not in shipped:
            notes.append(f"The model {model} lies outside the checkout, where the container cannot read it: copy it "
                         "inside and set `model:` in the config (or MODEL=) to its path relative to the checkout.")
    return notes


def synth_command(board: str, config_path: Path, build_root: Path, data_dir: str | None) -> str:
    """`make synth` for exactly this build: the effective config file carries every setting (--set, CONFIG,
    MODEL, DATASET, TARGET_FPS), so the container recomputes the same stage keys and reuses the cached stages."""
    args = [f"BOARD={board}", f"CONFIG={_rel(config_path)}", f"BUILD_DIR={_rel(build_root)}"]
    if data_dir:
        args.append(f"DATA_DIR={data_dir}")
    return "make synth " + " ".join(shlex.quote(a) for a in args)


def _rel(p: Path) -> str:
    """A path as the Makefile (run from the checkout) takes it: relative to the working directory when inside it."""
    p = Path(p).resolve()
    try:
        return str(p.relative_to(Path.cwd())) or "."
    except ValueError:
        return str(p)
