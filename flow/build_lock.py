"""One build at a time per build directory.

Two builds writing the same `<build-dir>/<board>/` would each rename their stage folders into place and the last
writer would win, stage by stage, mixing two configs in one report. The lock is an fcntl lock (the `filelock`
package) on `.trimflow.lock`: the kernel drops it when its process dies, however it dies, so a lock left by a
killed build is never stale in itself. Next to it `.trimflow.lock.json` says who holds it, for the message the
second build prints; a record whose process is gone is reported as taken over.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import filelock

from trimflow import FlowError
from trimflow.artifacts import storage_errors, write_json

LOCK_FILE = ".trimflow.lock"
HOLDER_FILE = ".trimflow.lock.json"


def _holder(root: Path) -> dict:
    try:
        data = json.loads((root / HOLDER_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def describe(holder: dict) -> str:
    if not holder:
        return "another process (it has not recorded its pid yet)"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return (f"pid {holder.get('pid')} on {holder.get('host')} (`{holder.get('command')}`, since {since})")


@contextlib.contextmanager
def build_lock(root: str | os.PathLike, wait_s: float = 0.0,
               note: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the lock of build directory `root` for the block; FlowError if another build holds it after `wait_s`.

    `note` receives one line when the lock of a build that died without releasing it is taken over."""
    root = Path(root)
    with storage_errors(root / LOCK_FILE):
        root.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(root / LOCK_FILE, timeout=wait_s)
    try:
        with storage_errors(root / LOCK_FILE):
            lock.acquire()
    except filelock.Timeout:
        raise FlowError(f"build directory {root} is in use by {describe(_holder(root))}; wait for that build to "
                        "finish (or stop it), or use another --build-dir") from None
    try:
        previous = _holder(root)
        if previous and note is not None and previous.get("pid") != os.getpid():
            state = "no longer running" if not _alive(int(previous.get("pid", 0))) else "it released no lock"
            note(f"taking over the lock of {root} left by {describe(previous)}; {state}")
        write_json(root / HOLDER_FILE, {"pid": os.getpid(), "host": socket.gethostname(),
                                        "command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:]),
                                        "started": time.time()})
        yield
    finally:
        with contextlib.suppress(OSError):
            (root / HOLDER_FILE).unlink()
        lock.release()
