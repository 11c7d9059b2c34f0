"""Write artifacts atomically and hash stage inputs.

Every file a stage produces is written to a temporary sibling and renamed into place, so an interrupted run never
leaves a half-written file under its final name (the pipeline treats "file exists" as "stage output is complete").
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from trimflow import FlowError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    A full disk or a folder that cannot be written becomes a FlowError naming `path`; whatever was there before
    stays untouched."""
    path = Path(path)
    with storage_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        with storage_errors(path, tmp_path):
            os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600 files; artifacts are ordinary files
            yield tmp_path
            os.replace(tmp_path, path)
    finally:
        with contextlib.suppress(OSError):
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Like atomic_path for a directory: build it under a temporary name, then swap it into place."""
    path = Path(path)
    with storage_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        with storage_errors(path, tmp_path):
            os.chmod(tmp_path, 0o777 & ~_umask())
            yield tmp_path
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            shutil.rmtree(tmp_path, ignore_errors=True)


# errno -> what it means for the user and what to do about it. Only these become one-line messages: any other
# OSError is a bug or a read problem and keeps its own message.
_NO_SPACE = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exhausted",
             errno.EFBIG: "the file size limit (ulimit -f) is reached"}
_NOT_WRITABLE = {errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
                 errno.EROFS: "the file system is read-only",
                 errno.ENOTDIR: "a part of that path is a file, not a folder",
                 errno.EEXIST: "a part of that path is a file, not a folder"}
# What torch.save raises instead of an OSError when a write fails half-way (its zip writer is C++).
_TORCH_WRITE_FAILED = re.compile(r"PytorchStreamWriter failed|file write failed|unexpected pos \d+ vs \d+")


@contextlib.contextmanager
def storage_errors(path: str | os.PathLike, tmp: Path | None = None) -> Iterator[None]:
    """Turn a failed write below `path` (full disk, no permission, read-only mount) into a FlowError that says so."""
    path = Path(path)
    try:
        yield
    except OSError as e:
        message = storage_problem(e, path, tmp) if e.errno in _NO_SPACE or _concerns(e, path, tmp) else None
        if message is None:
            raise
        raise FlowError(message) from None
    except RuntimeError as e:
        if not _TORCH_WRITE_FAILED.search(str(e)):
            raise
        # torch's writer gives no errno; an (almost) empty disk is what makes it fail in practice
        free = _free_bytes(path)
        full = free is not None and free < (1 << 20)
        reason = "the disk is full" if full else f"a write failed ({str(e).strip().splitlines()[-1].strip()})"
        raise FlowError(_storage_message(path, tmp, reason, no_space=full)) from None


def storage_problem(e: OSError, path: str | os.PathLike | None = None, tmp: Path | None = None) -> str | None:
    """The one-line message for a write to `path` (default: the error's own file) that failed for lack of space
    or permission; None for any other error."""
    if e.errno not in _NO_SPACE and e.errno not in _NOT_WRITABLE:
        return None
    path = Path(path if path is not None else e.filename or "?")
    reason = _NO_SPACE.get(e.errno) or _NOT_WRITABLE[e.errno]
    if e.filename and Path(e.filename) != path:
        reason = f"{reason} at {e.filename}"
    return _storage_message(path, tmp, reason, no_space=e.errno in _NO_SPACE)


def _concerns(e: OSError, path: Path, tmp: Path | None) -> bool:
    # a permission error while reading some input inside the block is not a write problem of `path`
    if e.filename is None:
        return True
    name = Path(os.path.abspath(e.filename))
    targets = [Path(os.path.abspath(p)) for p in (path, path.parent, tmp) if p is not None]
    return any(name == t or t in name.parents or name in t.parents for t in targets)


def _storage_message(path: Path, tmp: Path | None, reason: str, no_space: bool) -> str:
    space = ""
    if no_space:
        free, written = _free_bytes(path), _size(tmp) if tmp is not None else 0
        space = f"; {free:,} bytes free there" if free is not None else ""
        if written:
            space += f"; it needs more than the {written:,} bytes written before the failure"
    fix = ("free some space or choose a build directory on another disk (--build-dir)" if no_space
           else "make it writable or choose another build directory (--build-dir)")
    return (f"cannot write {path}: {reason}{space}. Nothing under that name was changed; {fix}, then rerun "
            "(completed stages are cached).")


def _free_bytes(path: Path) -> int | None:
    for p in (path, *path.parents):
        if p.exists():
            try:
                return shutil.disk_usage(p).free
            except OSError:
                return None
    return None


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# dataclass field metadata: leave the field out of the JSON while it is None (a key that only some results have)
OMIT_IF_NONE = {"omit_if_none": True}


def to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not (f.metadata.get("omit_if_none") and getattr(obj, f.name) is None)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
        return obj.tolist()
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def file_digest(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def digest(*parts: Any) -> str:
    """A short, stable hash of JSON-able values (configs, upstream digests)."""
    blob = json.dumps([to_jsonable(p) for p in parts], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
