"""The code the stages run, as one digest in every stage's cache key, so new code never reuses outputs old code made.

The package version alone is not enough: it stays the same while the sources change under it (a git pull, an
edit). Hashing the sources themselves (the package's Python files, plus hw/ with the RTL, simulation shims and
board runtime) costs a few tens of milliseconds per build.
"""

from __future__ import annotations

import fnmatch
import hashlib
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# Inside the package, only Python sources are code; shipped-data/ holds the boards (in the keys as the board),
# checkpoints (as the model's digest) and example configs (as the effective config), plus hw/ (hashed below).
_NOT_CODE = ("__pycache__", "shipped-data")


def source_roots() -> list[tuple[Path, str]]:
    """(folder, glob) pairs whose files make up the flow's code: the package's Python files and the hardware
    sources (RTL, simulation shims, board runtime)."""
    try:
        from trimflow.resources import HW_DIR as hw
    except ImportError:  # a checkout from before the shipped-data layout
        hw = PACKAGE_DIR.parent / "hw"
    return [(PACKAGE_DIR, "*.py")] + ([(Path(hw), "*")] if Path(hw).is_dir() else [])


def code_digest(exclude: tuple[str, ...] = ()) -> str:
    """sha256 over the relative path and contents of every source file, except those matching an `exclude` glob
    (relative to its root, e.g. "report/*": code that cannot change a stage's output need not rerun it)."""
    h = hashlib.sha256()
    for root, pattern in source_roots():
        for path in sorted(p for p in root.rglob(pattern) if p.is_file()):
            rel = path.relative_to(root)
            if any(part in _NOT_CODE for part in rel.parts) or rel.suffix == ".pyc" \
                    or any(fnmatch.fnmatch(rel.as_posix(), g) for g in exclude):
                continue
            h.update(f"{root.name}/{rel.as_posix()}\0".encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]
