"""Where the files that ship with trimflow are: boards, hardware sources (RTL, simulation shims, board runtime),
example configs and the default checkpoints.

They live in the repository's boards/, hw/, configs/ and checkpoints/ folders. flow/shipped-data/ links to those
folders, and the wheel carries copies of the linked files at the same place (pyproject.toml, package-data), so one
importlib.resources lookup finds them in a source checkout, an editable install and an installed wheel alike.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from trimflow import FlowError

SHIPPED = Path(str(files("trimflow") / "shipped-data"))
# Resolved, so that a checkout reports (and keys its cache on) the repository's own paths, as before the links.
BOARDS_DIR = (SHIPPED / "boards").resolve()
HW_DIR = (SHIPPED / "hw").resolve()


def locate(path: str | Path, what: str, hint: str = "give an existing file") -> Path:
    """A user-given file: `path` itself when it exists (absolute, or relative to the working directory), else the
    shipped file of that relative name (e.g. "checkpoints/cnv-fashion-mnist.pt", "configs/mnist-zoo.yaml"), so the
    defaults and the README's examples work from any folder. `what` names the setting in the error message, `hint`
    says what to do."""
    given = Path(path)
    if given.is_file():
        return given
    if given.is_dir():  # issue 16: a folder is not "missing"; say what it is
        raise FlowError(f"{what} {path} is a folder, not a file; {hint}")
    shipped = SHIPPED / given
    if not given.is_absolute() and shipped.is_file():
        return shipped.resolve()
    raise FlowError(f"{what} {path} does not exist (neither in {Path.cwd()} nor among trimflow's shipped files "
                    f"in {SHIPPED}); {hint}")
