"""Fetch, at `docker build` time, everything finn-plus would otherwise download while a synthesis runs.

The list and the pinned commits come from the installed finn-plus itself (finn/interface/external_dependencies.yaml),
so they always match the finn-plus version in env/no-deps.txt. The layout is the one FINN reads from FINN_DEPS and
the one its own updater (finn.interface.manage_deps) leaves behind, so `finn deps update` would find it current:
- git deps (finn-hlslib, attention-hlslib, AuroraFlow): <dest>/<name>, checked out at the pinned commit;
- board files: the repository at <dest>/board_files_downloads/<name> (pinned commit), its subdirectory copied to
  <dest>/board_files/<basename>;
- direct downloads (PYNQ-Z1/Z2 board files, nlohmann/json for finn_xsi): unpacked into <dest>/<target_directory>.
  These URLs are not versioned upstream; their SHA-256 is recorded in <dest>/SHA256SUMS at image build time.

    python fetch_finn_deps.py --dest /opt/finn_deps [--dry-run]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tarfile
import urllib.request
import zipfile
from pathlib import Path

import yaml


def definitions_path() -> Path:
    import finn.interface

    return Path(finn.interface.__file__).resolve().parent / "external_dependencies.yaml"


def plan(defs: dict, dest: Path) -> list[dict]:
    """One entry per dependency: kind, name, url, commit (git kinds), where it ends up."""
    items = []
    for name, d in (defs.get("git_deps") or {}).items():
        items.append({"kind": "git", "name": name, "url": d["url"], "commit": d["commit"],
                      "target": str(dest / name)})
    for name, d in (defs.get("boardfile_deps") or {}).items():
        sub = Path(d.get("subdirectory") or ".")
        items.append({"kind": "boardfile", "name": name, "url": d["url"], "commit": d["commit"],
                      "clone": str(dest / "board_files_downloads" / name), "subdirectory": str(sub),
                      "target": str(dest / "board_files" / (sub.name if str(sub) != "." else ""))})
    for name, d in (defs.get("direct_download_deps") or {}).items():
        items.append({"kind": "download", "name": name, "url": d["url"], "unpack": bool(d.get("do_unzip")),
                      "target": str(dest / d["target_directory"])})
    return items


def _git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def _clone_at(url: str, commit: str, target: Path, sparse: str | None = None) -> None:
    """A checkout of exactly `commit`; for a subdirectory of a big repository (XilinxBoardStore) only that part."""
    target.mkdir(parents=True, exist_ok=True)
    _git("init", "-q", cwd=target)
    _git("remote", "add", "origin", url, cwd=target)
    if sparse and sparse != ".":
        # The pattern file directly, not `git sparse-checkout set`: its flags differ between git versions
        # (Ubuntu 22.04 ships 2.34).
        _git("config", "core.sparseCheckout", "true", cwd=target)
        (target / ".git" / "info").mkdir(parents=True, exist_ok=True)
        (target / ".git" / "info" / "sparse-checkout").write_text(f"/{sparse}/\n")
    _git("fetch", "-q", "--depth", "1", "--filter=blob:none", "origin", commit, cwd=target)
    _git("-c", "advice.detachedHead=false", "checkout", "-q", "FETCH_HEAD", cwd=target)
    head = _git("rev-parse", "HEAD", cwd=target)
    if head != commit:
        raise SystemExit(f"{url}: checked out {head}, expected the pinned {commit}")


def _download(url: str, target_dir: Path, unpack: bool, sums: list[str]) -> None:
    target_dir.mkdir(parents=True, exist_ok=True)
    name = url.rsplit("/", 1)[-1]
    archive = target_dir / name
    with urllib.request.urlopen(url, timeout=300) as r, open(archive, "wb") as f:
        shutil.copyfileobj(r, f)
    sums.append(f"{hashlib.sha256(archive.read_bytes()).hexdigest()}  {url}")
    if not unpack:
        return
    if name.endswith(".zip"):
        with zipfile.ZipFile(archive) as z:
            z.extractall(target_dir)
    else:
        with tarfile.open(archive) as t:
            t.extractall(target_dir, filter="data") if hasattr(tarfile, "data_filter") else t.extractall(target_dir)


def fetch(items: list[dict], dest: Path) -> None:
    sums: list[str] = []
    for it in items:
        print(f"fetch {it['kind']:9} {it['name']:18} {it.get('commit', '')[:12]:12} -> {it['target']}", flush=True)
        if it["kind"] == "git":
            _clone_at(it["url"], it["commit"], Path(it["target"]))
        elif it["kind"] == "boardfile":
            clone = Path(it["clone"])
            _clone_at(it["url"], it["commit"], clone, it["subdirectory"])
            src, target = clone / it["subdirectory"], Path(it["target"])
            target.mkdir(parents=True, exist_ok=True)
            shutil.copytree(src, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".git"))
        else:
            _download(it["url"], Path(it["target"]), it["unpack"], sums)
    (dest / "SHA256SUMS").write_text("\n".join(sums) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dest", required=True, type=Path)
    p.add_argument("--definitions", type=Path, help="default: the installed finn-plus's external_dependencies.yaml")
    p.add_argument("--dry-run", action="store_true", help="print the plan, fetch nothing")
    args = p.parse_args(argv)
    defs = yaml.safe_load((args.definitions or definitions_path()).read_text())
    items = plan(defs, args.dest.resolve())
    if args.dry_run:
        for it in items:
            print("\t".join(str(it.get(k, "")) for k in ("kind", "name", "commit", "url", "target")))
        return 0
    args.dest.mkdir(parents=True, exist_ok=True)
    fetch(items, args.dest.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
