"""Run a sweep on Ray: a local cluster sized to the machine, or a running one (`--address`).

The task graph is plain Ray Core: one task per distinct relevance prefix, one per distinct trim prefix (taking the
relevance task's result as its argument, so Ray starts it once that is done), one per trial (taking its trim
prefix's result). Ray does the scheduling, moves the small results between nodes, and reruns a task whose worker
process or node died (`max_retries`); a trial failing on its own is a returned record, not a task failure.

On a cluster of several machines the sweep folder must be at the same path on every node (a shared filesystem),
and so must the data and the model checkpoint; the workers need only the trimflow package installed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Iterator

from rich.console import Console

from trimflow import FlowError
from trimflow.artifacts import atomic_path, to_jsonable, write_json
from trimflow.boards import load_board
from trimflow.build_lock import build_lock
from trimflow.config_parsing import to_dict
from trimflow.sweep import trials as T
from trimflow.sweep.spec import SweepSpec, base_config_dict, config_digest, trial_config, trials


@dataclasses.dataclass
class SweepRun:
    out: Path
    records: list[dict]  # every trial of the grid, this run's and the stored ones
    reused: int  # trials whose stored record was taken over from an earlier run
    wall_s: float
    cpus: float  # CPUs of the cluster the sweep ran on (0: every trial was stored)
    plans: dict[str, dict]  # trial id → its plan (folder, build root, effective config with absolute paths)


def plan(spec: SweepSpec, out: Path) -> list[dict]:
    """Each trial's folder, effective flow config, shared-prefix keys and resume digest (nothing runs)."""
    import yaml
    base, given = base_config_dict(spec), base_config_dict(spec, absolute=False)
    plans = []
    for trial in trials(spec):
        cfg = trial_config(base, trial)
        cfg_dict = to_dict(cfg)
        trial_dir = out / "trials" / trial.id
        # the pipeline root `trimflow build --build-dir <trial dir>` uses: the board's own name
        board = load_board(trial.board).name
        root = trial_dir / board
        keys = T.stage_keys(cfg, trial.board, root, "trim")
        plans.append({"id": trial.id, "trial": dataclasses.asdict(trial), "config": cfg_dict, "dir": str(trial_dir),
                      "board": board, "root": str(root),
                      "keys": keys, "until": spec.until, "accuracy_floor": spec.accuracy_floor,
                      "config_digest": config_digest(cfg_dict, trial, spec),
                      "config_yaml": yaml.safe_dump(to_dict(trial_config(given, trial)), sort_keys=False)})
    return plans


def run_sweep(spec: SweepSpec, out: str | Path, address: str | None = None, workers: int | None = None,
              console: Console | None = None, retry_failed: bool = False) -> SweepRun:
    """Run every trial of `spec` that `out` holds no record of, on the cluster at `address` or a local one with
    `workers` CPUs; returns all the grid's records (this run's and the stored ones). `retry_failed`: trials
    recorded as failed run again too (after fixing what made them fail); their trial folders are rebuilt through
    the stage cache, so only what changed reruns."""
    console = console or Console(stderr=True)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # one sweep per folder at a time (a second would run the same trials in the same folders); pipelines lock
    # their own roots too
    with build_lock(out, note=console.print):
        plans = plan(spec, out)
        for p in plans:  # the config a person (or `make synth`) rebuilds the trial from
            with atomic_path(Path(p["dir"]) / "config.yaml") as tmp:
                tmp.write_text(p.pop("config_yaml"))
        write_json(out / "sweep.json", {"spec": to_jsonable(spec), "trials": [p["id"] for p in plans]})
        plans = [{**p, "retry_failed": retry_failed} for p in plans]
        done = {p["id"]: r for p in plans if (r := T.stored_record(p)) is not None}
        todo = [p for p in plans if p["id"] not in done]
        console.print(f"sweep: {len(plans)} trials, {len(done)} stored, {len(todo)} to run → {out}")
        start = time.perf_counter()
        records, cpus = dict(done), 0.0
        if todo:
            with _cluster(address, workers) as cpus:
                for record in _run_tasks(spec, out, todo, console):
                    records[record["id"]] = record
        ordered = [records[p["id"]] for p in plans]
        return SweepRun(out, ordered, len(done), time.perf_counter() - start, cpus, {p["id"]: p for p in plans})


def _run_tasks(spec: SweepSpec, out: Path, todo: list[dict], console: Console):
    import ray

    opts = {"num_cpus": spec.cpus_per_trial, "max_retries": spec.retries}
    prefix_task = ray.remote(**opts)(T.build_prefix)
    trial_task = ray.remote(**opts)(T.run_trial)
    prefixes: dict[tuple[str, str], Any] = {}
    pending: dict[Any, dict] = {}
    for p in todo:
        parent = None
        for stage in T.SHARED:  # one task per distinct (stage, key): the first trial that needs it submits it
            key = (stage, p["keys"][stage])
            if key not in prefixes:
                root = out / "stages" / f"{stage}-{key[1]}"
                prefixes[key] = prefix_task.remote(stage, p["config"], p["trial"]["board"], str(root), parent)
            parent = prefixes[key]
        pending[trial_task.remote(p, parent)] = p
    console.print(f"sweep: {len(prefixes)} shared stage builds for {len(todo)} trials")
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        p = pending.pop(ready[0])
        try:
            record = ray.get(ready[0])
        except Exception as e:  # noqa: BLE001 - retries exhausted (worker died every time): record and go on
            record = {"id": p["id"], "trial": p["trial"], "board": p["board"], "lost": True,
                      "config_digest": p["config_digest"], "status": "failed",
                      "reason": f"task lost after {spec.retries} retries: {type(e).__name__}: {str(e)[:300]}"}
            write_json(Path(p["dir"]) / T.RECORD, record)
        _print_record(console, record, len(pending))
        yield record


def _print_record(console: Console, r: dict, left: int) -> None:
    if r["status"] == "ok":
        console.print(f"  ✓ {r['id']:<28} top-1 {100 * r['accuracy']:6.2f} %  {r['fps']:>10,.0f} fps  "
                      f"{r['binding_resource']} {100 * r['binding_share']:5.1f} % of cap  ({left} left)")
    else:
        console.print(f"  ✗ {r['id']:<28} {r['reason'].splitlines()[0][:110]}  ({left} left)")


@contextlib.contextmanager
def _cluster(address: str | None, workers: int | None) -> Iterator[float]:
    """Join the cluster at `address`, or start a local one with `workers` CPUs (default: every core); yields the
    cluster's CPU count. A cluster the caller (a bench, a test) already connected to is used as it is."""
    import ray
    if ray.is_initialized():
        yield float(ray.cluster_resources().get("CPU", 0))
        return
    if address and workers:
        raise FlowError("sweep: --workers sizes a local cluster; with --address the cluster's nodes decide")
    # worker output stays in each task's run.log and Ray's session logs, not on the driver's terminal
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    for attempt in range(3):
        try:
            if address:
                ray.init(address=address, **kwargs)
            else:
                ray.init(num_cpus=workers or os.cpu_count(), **kwargs)
            break
        except Exception as e:  # noqa: BLE001 - ConnectionError, RuntimeError, or a bare Exception from Ray
            ray.shutdown()
            # Ray gives a starting raylet a fixed 30 s; on a loaded machine the next try usually makes it
            if "timed out during startup" in str(e) and attempt < 2:
                continue
            where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
            raise FlowError(f"sweep: could not start or join {where}: {str(e).splitlines()[0]}; start one with "
                            "`ray start --head` (README, 'Your own model')") from None
    try:
        yield float(ray.cluster_resources().get("CPU", 0))
    finally:
        ray.shutdown()


def synthesize_front(run: SweepRun, front: list[dict], k: int, address: str | None, workers: int | None,
                     console: Console) -> list[dict]:
    """Fan the synthesis of the front's `k` most accurate designs out on the same engine (needs Vivado)."""
    from trimflow.finn.adapter import vivado_available
    from trimflow.sweep.front import synth_command

    best = front[:k]
    if not vivado_available():
        commands = "\n".join(f"  {synth_command(run.out, r)}" for r in best)
        raise FlowError(f"--synth {k}: Vivado is not on this machine (XILINX_VIVADO unset or `vivado` not on PATH), "
                        f"so no synthesis ran; the sweep's results are in {run.out / 'sweep.md'}. Synthesise the "
                        f"front's best designs where Vivado is (README, 'Synthesis with Vivado'):\n{commands}")
    import ray
    with _cluster(address, workers):
        task = ray.remote(num_cpus=1, max_retries=1)(T.run_synth)
        plans = [run.plans[r["id"]] for r in best]
        refs = {task.remote(p["dir"], p["trial"]["board"], p["root"], p["config"]): p["id"] for p in plans}
        results = []
        for ref, trial_id in refs.items():
            out = ray.get(ref)
            console.print(f"  synth {trial_id}: {out.get('error') or out['dir']}")
            results.append({"id": trial_id, **out})
    return results
