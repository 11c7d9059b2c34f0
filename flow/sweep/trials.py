"""What runs on a worker: one shared stage prefix, or one trial, through the normal pipeline and its stage cache.

Stage sharing. The relevance and trim stages' cache keys do not depend on the bit width or (without a target fps)
the board, so every trial with the same key for them can reuse one build of them. The sweep builds each distinct
prefix once, in its own folder (`stages/<stage>-<key>/`), and a trial's folder is seeded with copies of the
prefix's stage folders before its pipeline runs: the pipeline then finds them under its root with the right key
and serves them from the cache. Copies, not links, so that a trial rerunning a stage (--force, a changed config)
never touches the shared one. Two tasks never run the same stage in one folder: prefixes are distinct by key and
every trial has its own folder.

Exactly-once records. A trial writes `trial.json` (atomically) when it ends, successful or failed on its own. A
retry after a worker died finds that record and returns it instead of running the trial again; each attempt's
start and end are appended to `attempts.jsonl`, so a test can count how often a trial ran to completion.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
import traceback
import uuid
from pathlib import Path
from typing import Any, Iterator

from rich.console import Console

from trimflow import FlowError
from trimflow.artifacts import atomic_dir, read_json, write_json

RECORD = "trial.json"
ATTEMPTS = "attempts.jsonl"
SHARED = ("relevance", "trim")  # the stages trials share (in pipeline order)


def stage_keys(cfg, board_name: str, root: Path, until: str) -> dict[str, str]:
    """The pipeline's cache key of every stage up to `until` for this config and board (nothing runs)."""
    from trimflow.boards import load_board
    from trimflow.build import make_pipeline
    pipeline = make_pipeline(cfg, load_board(board_name), root, Console(quiet=True))
    keys: dict[str, str] = {}
    for name in pipeline.order(until):
        keys[name] = pipeline.key(name, keys)
    return keys


def seed_stages(root: Path, source: Path, stages: tuple[str, ...]) -> None:
    """Copy the finished stage folders `stages` from pipeline root `source` into `root` (skipping those present)."""
    for name in stages:
        dst = root / name
        if dst.exists():
            continue
        if not (source / name / "stage.json").is_file():
            raise FlowError(f"sweep: shared stage {source / name} is missing; rerun the sweep to rebuild it")
        with atomic_dir(dst) as tmp:
            shutil.copytree(source / name, tmp, dirs_exist_ok=True, symlinks=True)


def build_prefix(stage: str, cfg_dict: dict, board: str, root: str, parent: dict | None = None) -> dict:
    """Build the shared stages up to `stage` in `root` (seeded from the parent prefix). Never raises: a failure is
    returned, and every trial behind this prefix records it as its reason."""
    if parent and parent.get("error"):
        return parent
    root_path = Path(root)
    try:
        cfg = _flow_config(cfg_dict)
        if parent:
            seed_stages(root_path, Path(parent["root"]), SHARED[:SHARED.index(stage)])
        with _log_console(root_path) as console:
            _pipeline(cfg, board, root_path, console).run(until=stage)
        return {"root": root, "stage": stage}
    except Exception as e:  # noqa: BLE001 - recorded as the reason of every trial sharing this prefix
        return {"root": root, "stage": stage, "error": f"{stage} stage failed: {_reason(e)}"}


def run_trial(plan: dict, prefix: dict | None = None) -> dict:
    """Run one trial up to plan["until"] in its own folder and return its record (also written to trial.json)."""
    trial_dir = Path(plan["dir"])
    stored = stored_record(plan)
    if stored is not None:
        return stored  # finished before the worker that ran it died: never run it twice
    attempt = uuid.uuid4().hex
    _log_attempt(trial_dir, "start", attempt)
    start = time.perf_counter()
    record: dict[str, Any] = {"id": plan["id"], "trial": plan["trial"], "board": plan["board"],
                              "root": plan["root"],
                              "config_digest": plan["config_digest"], "attempt": attempt,
                              "host": socket.gethostname(), "pid": os.getpid()}
    try:
        if prefix and prefix.get("error"):
            raise FlowError(prefix["error"])
        root = Path(plan["root"])
        if prefix:
            seed_stages(root, Path(prefix["root"]), SHARED)
        cfg = _flow_config(plan["config"])
        with _log_console(trial_dir) as console:
            pipeline = _pipeline(cfg, plan["trial"]["board"], root, console)
            results = pipeline.run(until="quantize")
            _check_accuracy(results, plan["accuracy_floor"])
            for name, result in pipeline.run(until=plan["until"]).items():
                results.setdefault(name, result)  # keep the first run's (built, not cached) record
        record.update(status="ok", **objectives(results))
        record["stages"] = {n: {"seconds": r.seconds, "cached": r.cached, "key": r.key} for n, r in results.items()}
    except Exception as e:  # noqa: BLE001 - a trial failing on its own is a result; the sweep goes on
        record.update(status="failed", reason=_reason(e))
        if not isinstance(e, FlowError):
            record["traceback"] = traceback.format_exc(limit=6)
    record["seconds"] = time.perf_counter() - start
    write_json(trial_dir / RECORD, record)
    _log_attempt(trial_dir, "done", attempt)
    return record


def stored_record(plan: dict) -> dict | None:
    """The trial's record from an earlier run of the same config; a trial lost with its workers runs again, and so
    does one stored as failed when the sweep retries failures (plan["retry_failed"])."""
    path = Path(plan["dir"]) / RECORD
    if path.is_file():
        record = read_json(path)
        if (record.get("config_digest") == plan["config_digest"] and not record.get("lost")
                and not (plan.get("retry_failed") and record.get("status") != "ok")):
            return record
    return None


def objectives(results: dict) -> dict[str, Any]:
    """The trial's figures: quantized top-1, fps within the caps, the binding resource's share of its cap."""
    comp = results["compile"].summary
    rows = comp["fit"]["rows"]
    shares = {r["resource"]: r["estimate"] / r["cap"] for r in rows if r["cap"]}
    binding = max(shares, key=shares.get)
    trim = results["trim"].summary["report"]
    out = {"accuracy": results["quantize"].summary["accuracy"],
           "float_accuracy": results["relevance"].summary["float_accuracy"],
           "trimmed_accuracy": results["trim"].summary["accuracy"],
           "fps": comp["fps"], "binding_resource": binding, "binding_share": shares[binding],
           "lut": next(r["estimate"] for r in rows if r["resource"] == "LUT"),
           "resources": {r["resource"]: r["estimate"] for r in rows},
           "macs": trim.get("macs_after"), "macs_fraction": _ratio(trim.get("macs_after"), trim.get("macs_before")),
           "params": trim.get("params_after")}
    if "simulate" in results and "accuracy" in results["simulate"].summary:
        sim = results["simulate"].summary
        out.update(sim_accuracy=sim["accuracy"], sim_fps=sim.get("measured_fps"))
    return out


def _check_accuracy(results: dict, floor: float) -> None:
    acc = results["quantize"].summary["accuracy"]
    ref = results["relevance"].summary["float_accuracy"]
    if acc < floor * ref:
        raise FlowError(f"accuracy collapsed: quantized top-1 {100 * acc:.2f} % is below the sweep's "
                        f"accuracy_floor ({floor:g} × float {100 * ref:.2f} %)")


def _flow_config(cfg_dict: dict):
    from trimflow.config import FlowConfig
    from trimflow.config_parsing import from_dict
    return from_dict(FlowConfig, cfg_dict, where="sweep trial config")


def _pipeline(cfg, board: str, root: Path, console: Console):
    from trimflow.boards import load_board
    from trimflow.build import make_pipeline
    return make_pipeline(cfg, load_board(board), root, console)


@contextlib.contextmanager
def _log_console(folder: Path) -> Iterator[Console]:
    """Stage progress of a task goes to a log in its folder, not to the driver's terminal."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "run.log", "a") as f:
        yield Console(file=f, width=120, force_terminal=False)


def _log_attempt(trial_dir: Path, event: str, attempt: str) -> None:
    trial_dir.mkdir(parents=True, exist_ok=True)
    line = {"event": event, "attempt": attempt, "pid": os.getpid(), "host": socket.gethostname(),
            "node": _node_id(), "time": time.time()}
    with open(trial_dir / ATTEMPTS, "a") as f:  # one short O_APPEND write per event
        f.write(json.dumps(line) + "\n")


def read_attempts(trial_dir: Path) -> list[dict]:
    path = Path(trial_dir) / ATTEMPTS
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def _node_id() -> str | None:
    try:
        import ray
        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # noqa: BLE001 - only informative
        return None


def _reason(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text if isinstance(e, FlowError) else f"{type(e).__name__}: {text}"


def _ratio(a, b) -> float | None:
    return a / b if a is not None and b else None


def run_synth(trial_dir: str, board: str, root: str, cfg_dict: dict) -> dict:
    """Synthesise one finished trial's design (Vivado) from its cached stages: the pipeline's synth stage."""
    root = Path(root)
    try:
        with _log_console(Path(trial_dir)) as console:
            result = _pipeline(_flow_config(cfg_dict), board, root, console).run(until="synth")["synth"]
        return {"dir": str(result.dir), "summary": result.summary}
    except Exception as e:  # noqa: BLE001 - one design failing synthesis must not stop the others
        return {"dir": str(root / "synth"), "error": _reason(e)}
