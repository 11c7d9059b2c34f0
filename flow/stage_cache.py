"""Run stages in order, cache each one's output directory by a hash of its inputs, and resume.

Generic machinery: it knows nothing of trimflow's stages (trimflow.build lists them, trimflow.stages holds them).

A stage's output lives in `<root>/<stage>/`. It is built in a temporary directory and renamed into place together
with its `stage.json` (cache key, config, summary) and `timing.json` (wall times, the only file that differs between
two runs of equal inputs), so a directory that exists under its final name is always complete; an interrupted build
simply reruns the stage it was in. One run at a time holds a root (trimflow.build_lock).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from rich.console import Console

from trimflow import FlowError
from trimflow.artifacts import atomic_dir, digest, read_json, to_jsonable, write_json
from trimflow.build_lock import build_lock
from trimflow.sources import code_digest

STAGE_FILE = "stage.json"
TIMING_FILE = "timing.json"  # the one file of a stage folder that differs between two runs of equal inputs


@dataclasses.dataclass
class StageContext:
    name: str
    out_dir: Path  # the temporary directory to write into
    inputs: dict[str, Path]  # final directories of the stages this one depends on
    summaries: dict[str, dict]  # their summaries
    console: Console
    # wall times of the stage's steps (e.g. {"finetune": 41.2}); they go to TIMING_FILE, never into artifacts, so
    # that equal inputs give byte-identical stage folders
    timing: dict[str, float] = dataclasses.field(default_factory=dict)

    def input(self, stage: str, filename: str) -> Path:
        return self.inputs[stage] / filename


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One stage as the cache runner sees it: what it runs, on which config, after which stages."""

    name: str
    run: Callable[[StageContext, Any], dict]  # (ctx, config) -> JSON-able summary
    config: Any = None
    deps: tuple[str, ...] = ()
    salt: Any = None  # extra key material (e.g. digests of input files outside the pipeline)
    # source files (globs relative to the package / hw folder) left out of this stage's code digest: code that
    # cannot change its output, so editing it does not rerun the stage
    code_exclude: tuple[str, ...] = ()


@dataclasses.dataclass
class StageRun:
    """What running (or reusing) one stage gave: its final folder, cache key and JSON summary."""

    name: str
    dir: Path
    key: str
    summary: dict
    seconds: float
    cached: bool


class Pipeline:
    def __init__(self, root: str | Path, stages: Iterable[StageSpec], console: Console | None = None):
        self.root = Path(root).resolve()  # stages hand paths to tools that run in other working directories
        self.stages = {s.name: s for s in stages}
        self.console = console or Console(stderr=True)
        for s in self.stages.values():
            for d in s.deps:
                if d not in self.stages:
                    raise FlowError(f"pipeline: stage {s.name!r} depends on unknown stage {d!r}")

    def order(self, until: str | None = None) -> list[str]:
        names = list(self.stages)
        if until is None:
            return names
        if until not in self.stages:
            raise FlowError(f"unknown stage {until!r}; stages: {', '.join(names)}")
        needed: set[str] = set()

        def visit(n: str) -> None:
            if n not in needed:
                needed.add(n)
                for d in self.stages[n].deps:
                    visit(d)

        visit(until)
        return [n for n in names if n in needed]

    def key(self, name: str, keys: dict[str, str]) -> str:
        s = self.stages[name]
        return digest(name, s.config, s.salt, code_digest(s.code_exclude), [keys[d] for d in s.deps])

    def run(self, until: str | None = None, force: Iterable[str] = ()) -> dict[str, StageRun]:
        with build_lock(self.root, note=self.console.print):
            return self._run(until, force)

    def _run(self, until: str | None, force: Iterable[str]) -> dict[str, StageRun]:
        force = set(force)
        unknown = sorted(force - set(self.stages))
        if unknown:  # a typo must not silently reuse the cached stage it meant to rerun
            raise FlowError(f"--force: unknown stage(s) {', '.join(unknown)}; stages: {', '.join(self.stages)}")
        results: dict[str, StageRun] = {}
        keys: dict[str, str] = {}
        for name in self.order(until):
            stage = self.stages[name]
            keys[name] = key = self.key(name, keys)
            final = self.root / name
            stamp = final / STAGE_FILE
            rerun_upstream = any(not results[d].cached for d in stage.deps)
            if name not in force and not rerun_upstream and stamp.exists():
                record = read_json(stamp)
                if record.get("key") == key:
                    results[name] = StageRun(name, final, key, record["summary"], stage_seconds(final), True)
                    self.console.print(f"[dim]✓ {name:<10} cached ({final})[/dim]")
                    continue
            self.console.print(f"[bold cyan]▶ {name}[/bold cyan]")
            start = time.perf_counter()
            with atomic_dir(final) as tmp:
                ctx = StageContext(name, tmp, {d: results[d].dir for d in stage.deps},
                                   {d: results[d].summary for d in stage.deps}, self.console)
                summary = stage.run(ctx, stage.config) or {}
                seconds = time.perf_counter() - start
                write_json(tmp / STAGE_FILE, {"stage": name, "key": key, "config": to_jsonable(stage.config),
                                              "deps": {d: keys[d] for d in stage.deps}, "summary": summary})
                write_json(tmp / TIMING_FILE, {"seconds": seconds, **ctx.timing})
            results[name] = StageRun(name, final, key, to_jsonable(summary), seconds, False)
            self.console.print(f"[green]✓ {name:<10} {seconds:6.1f} s[/green]")
        return results


def stage_seconds(stage_dir: Path) -> float:
    """The wall time of the run that made `stage_dir` (0 for folders written before timings had their own file)."""
    path = Path(stage_dir) / TIMING_FILE
    return float(read_json(path)["seconds"]) if path.exists() else 0.0
