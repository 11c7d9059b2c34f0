"""Design-space sweeps on Ray (trimflow.sweep): worker scaling, the default net's grid, and stage sharing.

    nice -n 10 .venv/bin/python bench/sweep.py                         # both parts, reduced training (below)
    nice -n 10 .venv/bin/python bench/sweep.py --part scaling          # 8 tiny trials on 1 worker, then on 2
    nice -n 10 .venv/bin/python bench/sweep.py --part grid --full      # the grid at the default config's training
    ... --snapshot /tmp/trimflow-snapshot                               # on a copy of the package (others edit)

scaling: the same 8-trial sweep (budgets 1.0/0.5 × W4A4/W2A2 × pynq-z2/zybo-z7-10 of a tiny untrained CNV, tiny image
counts and epochs) from an empty folder on a local cluster of 1 CPU, then of 2 CPUs, in one run: wall times and their ratio.
grid: the default net over budgets {1.0, 0.65, 0.5, 0.35, 0.25} × {W8A8, W4A4, W3A3, W2A2} × {pynq-z2,
zybo-z7-10}: the front, its plots, and the stage time sharing saved. Without --full the training is reduced
(GRID_REDUCED: fractions of an epoch, 1,000 test images), which the results say; the grid folder is resumable
(rerun the same command after an interruption). Writes bench/results/sweep.{json,md} and the front plots.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trimflow.artifacts import atomic_path, read_json, write_json  # noqa: E402
from trimflow.report.markdown import num, pct, table  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# scaling: a tiny CNV (8 and 8 kernels, untrained: only the time counts) with tiny image counts and epochs
TINY_NET = {"widths": [8, 8], "strides": [2, 2]}
TINY = ["eval_images=100", "relevance.images=100", "trim.calib_images=100", "trim.allocation=rank",
        "finetune.epochs=0.005", "quantize.train.epochs=0.005", "quantize.calibration_batches=1",
        "quantize.calibration_batch_size=32", "export.verify_images=8", "compile.verify_images=2",
        "compile.pareto_points=0"]
GRID_REDUCED = ["eval_images=500", "relevance.images=500", "finetune.epochs=0.05", "quantize.train.epochs=0.05",
                "quantize.calibration_batches=2", "export.verify_images=50", "compile.verify_images=4",
                "compile.pareto_points=0"]
SCALING_AXES = {"budget": [1.0, 0.5], "bits": ["W4A4", "W2A2"], "board": ["pynq-z2", "zybo-z7-10"]}
GRID_AXES = {"budget": [1.0, 0.65, 0.5, 0.35, 0.25], "bits": ["W8A8", "W4A4", "W3A3", "W2A2"],
             "board": ["pynq-z2", "zybo-z7-10"]}


def _sweep(axes: dict, sets: list[str], out: Path, cpus: int, retry_failed: bool = False) -> dict:
    from trimflow.sweep import load_spec, run_sweep, write_results
    spec = load_spec(None, {"axes": axes, "set": sets})
    start = time.perf_counter()
    # a local cluster of `cpus` CPUs, started and stopped inside
    run = run_sweep(spec, out, workers=cpus, retry_failed=retry_failed)
    wall = time.perf_counter() - start
    data = write_results(out, run.records, extra={"wall_s": wall, "cpus": cpus})
    ok = sum(r["status"] == "ok" for r in run.records)
    return {"cpus": cpus, "trials": len(run.records), "ok": ok, "reused": run.reused, "wall_s": wall,
            "sharing": data["sharing"], "front": data["front"], "out": str(out),
            "stage_s": sum(s["seconds"] for r in run.records for n, s in (r.get("stages") or {}).items()
                           if not s["cached"])}


def part_scaling(work: Path) -> dict:
    import torch

    from trimflow.models import build_model, save_checkpoint
    torch.manual_seed(0)
    model = work / "tiny-cnv.pt"
    save_checkpoint(model, build_model("cnv", **TINY_NET).eval(), {"name": "cnv", "kwargs": TINY_NET})
    sets = [f"model={model}", *TINY]
    runs = []
    for cpus in (1, 2):
        out = work / f"scaling-{cpus}cpu"
        shutil.rmtree(out, ignore_errors=True)  # from an empty folder: nothing cached
        runs.append(_sweep(SCALING_AXES, sets, out, cpus))
        print(f"scaling: {cpus} CPU(s) {runs[-1]['wall_s']:.0f} s", flush=True)
    return {"axes": SCALING_AXES, "net": TINY_NET, "set": TINY, "runs": runs,
            "ratio": runs[0]["wall_s"] / runs[1]["wall_s"], "loadavg_after": os.getloadavg()}


def _stored(axes: dict, sets: list[str], out: Path) -> dict:
    """The grid's trials stored so far, summarised (front, plots, tables with the current code) without running
    anything. The records are read as stored, whatever code version made them: a resume (stored_record) would
    rerun a trial whose effective config changed, e.g. when a newer version adds a config key."""
    from trimflow.sweep import load_spec, write_results
    from trimflow.sweep.engine import plan
    plans = plan(load_spec(None, {"axes": axes, "set": sets}), out)
    records = [read_json(f) for p in plans if (f := Path(p["dir"]) / "trial.json").is_file()]
    data = write_results(out, records, extra={"planned": len(plans)})
    ok = sum(r["status"] == "ok" for r in records)
    return {"cpus": None, "trials": len(records), "planned": len(plans), "ok": ok, "reused": len(records),
            "wall_s": None, "sharing": data["sharing"], "front": data["front"], "out": str(out),
            "stage_s": sum(s["seconds"] for r in records for s in (r.get("stages") or {}).values() if not s["cached"])}


def part_grid(work: Path, full: bool, cpus: int, axes: dict, stored_only: bool = False,
              retry_failed: bool = False) -> dict:
    sets = [] if full else GRID_REDUCED
    out = work / ("grid-full" if full else "grid-reduced")  # trials of a sub-grid are reused by the whole one
    res = _stored(axes, sets, out) if stored_only else _sweep(axes, sets, out, cpus, retry_failed)
    for name in ("front-fps.png", "front-lut.png"):
        shutil.copyfile(out / name, RESULTS / f"sweep-{name}")
    records = read_json(out / "results.json")["trials"]
    return {"axes": axes, "whole_grid": axes == GRID_AXES, "set": sets, "full": full, **res, "records": records}


def markdown(data: dict) -> str:
    lines = ["# Design-space sweeps on Ray (`bench/sweep.py`)", "",
             f"Machine: {data['machine']}. Code: trimflow from `{data['code']['package']}`, source digest "
             f"`{data['code']['digest']}`.", ""]
    if "scaling" in data:
        s = data["scaling"]
        lines += ["## 8 tiny trials on 1 worker vs 2 workers", "",
                  f"Axes {s['axes']}; an untrained CNV with {s['net']['widths']} kernels, settings "
                  f"`{' '.join(s['set'])}`; each run from an empty folder.", "",
                  table(["CPUs", "trials ok", "wall", "stage time (not cached)", "shared-stage time saved"],
                        [[r["cpus"], f"{r['ok']} / {r['trials']}", f"{r['wall_s']:.0f} s", f"{r['stage_s']:.0f} s",
                          f"{r['sharing']['saved_s']:.0f} s"] for r in s["runs"]]), "",
                  f"Speed-up 1 → 2 workers: **{s['ratio']:.2f}×** (1-minute load average after the runs: "
                  f"{s['loadavg_after'][0]:.1f}; other jobs on the 2 cores slow the 2-worker run most).", ""]
    if "grid" in data:
        g = data["grid"]
        label = "default config training" if g["full"] else \
            f"REDUCED training (`{' '.join(g['set'])}`); the full grid: `bench/sweep.py --part grid --full`"
        if not g.get("whole_grid", True):
            label = f"SUB-GRID of the issue's 5 × 4 × 2, {label}; the whole grid: the same command without --budgets/--bits"
        ok = [r for r in g["records"] if r["status"] == "ok"]
        run = (f"wall {g['wall_s'] / 60:.1f} min on {g['cpus']} CPUs ({g['reused']} trials reused from an earlier, "
               "interrupted run)" if g["wall_s"] is not None else
               f"INCOMPLETE: {g['trials']} of the {g['planned']} trials had finished when the run was stopped (the "
               "deadline); the table is of those, and rerunning the command resumes the rest")
        if g.get("summarised_by_newer_code"):
            run += ("; the front, plots and tables were recomputed from the stored trial records by the code named "
                    f"above (`--stored-only`); the trials ran on source digest `{g['run_code']['digest']}`")
        lines += [f"## Default net: {len(g['records'])}-trial grid ({label})", "",
                  f"Axes {g['axes']}; {g['ok']} built, {g['trials'] - g['ok']} failed; {run}. Sweep folder: "
                  f"`{g['out']}` (`sweep.md` there lists every trial and the `make synth` command of each front "
                  "design).", "",
                  f"Stage sharing: relevance + trim built {g['sharing']['shared_builds']} times instead of once per "
                  f"trial: {g['sharing']['with_sharing_s']:.0f} s instead of {g['sharing']['without_sharing_s']:.0f} s "
                  f"of stage time (**{g['sharing']['saved_s']:.0f} s saved**, "
                  f"{pct(g['sharing']['saved_s'] / max(g['stage_s'] + g['sharing']['saved_s'], 1e-9), 0)} of the "
                  "sweep's stage time).", "",
                  "### Pareto front of each board (top-1 ↑, fps ↑, binding resource's share of its cap ↓)", "",
                  table(["trial", "top-1", "fps", "binding", "LUT", "MACs kept"],
                        [[r["id"], pct(r["accuracy"]), num(r["fps"]),
                          f"{r['binding_resource']} {pct(r['binding_share'], 1)}", num(r["lut"]),
                          pct(r.get("macs_fraction"), 1)] for r in ok if r["id"] in g["front"]]), "",
                  "![accuracy vs fps](sweep-front-fps.png) ![accuracy vs LUT](sweep-front-lut.png)", ""]
        failed = [r for r in g["records"] if r["status"] != "ok"]
        if failed:
            lines += ["Failed trials (recorded, the sweep went on):", "",
                      table(["trial", "reason"], [[r["id"], r["reason"].splitlines()[0]] for r in failed]), ""]
    return "\n".join(lines)


def _run_from_snapshot(dest: Path) -> None:
    """Re-run this bench on a copy of the package (as trimflow/, with the hw/, boards/, configs/ and checkpoints/
    folders it reads beside it), imported first through PYTHONPATH by the bench and every Ray worker. Every stage's
    cache key hashes the package's sources, so edits made in the tree during a long run would change the keys
    mid-sweep: stages would rebuild instead of being shared, and the timings would not be of one code version."""
    repo = Path(__file__).resolve().parents[1]
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(repo / "flow", dest / "trimflow", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("hw", "boards", "configs", "checkpoints"):
        shutil.copytree(repo / name, dest / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    argv = [a for i, a in enumerate(sys.argv) if a != "--snapshot" and sys.argv[i - 1] != "--snapshot"]
    os.execve(sys.executable, [sys.executable, *argv], {**os.environ, "PYTHONPATH": str(dest)})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("scaling", "grid", "all"), default="all")
    ap.add_argument("--full", action="store_true", help="grid at the default config's training (hours here)")
    ap.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs of the grid's local cluster")
    ap.add_argument("--budgets", nargs="+", type=float, default=GRID_AXES["budget"], help="grid: a sub-grid's budgets")
    ap.add_argument("--bits", nargs="+", default=GRID_AXES["bits"], help="grid: a sub-grid's bit widths")
    ap.add_argument("--work", default="build/bench-sweep", help="sweep folders")
    ap.add_argument("--out", default=str(RESULTS / "sweep"), help="results prefix (.json, .md)")
    ap.add_argument("--stored-only", action="store_true", help="grid: summarise the stored trials, run nothing")
    ap.add_argument("--retry-failed", action="store_true", help="grid: run the trials stored as failed again")
    ap.add_argument("--snapshot", help="run on a copy of the package made in this folder (see _run_from_snapshot)")
    args = ap.parse_args()
    if args.snapshot:
        _run_from_snapshot(Path(args.snapshot).resolve())
    work = Path(args.work).resolve()
    out = Path(args.out)
    data = read_json(out.with_suffix(".json")) if out.with_suffix(".json").is_file() else {}
    run_code = data.get("code")  # the code of the run that made the stored results
    data["machine"] = f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    from trimflow.sources import code_digest
    data["code"] = {"package": str(Path(sys.modules["trimflow"].__file__).parent), "digest": code_digest()}
    if args.part in ("scaling", "all"):
        data["scaling"] = part_scaling(work)
        write_json(out.with_suffix(".json"), data)  # each part is kept as soon as it is done
    if args.part in ("grid", "all"):
        previous = data.get("grid") or {}
        data["grid"] = part_grid(work, args.full, args.cpus, {**GRID_AXES, "budget": args.budgets, "bits": args.bits},
                                 args.stored_only, args.retry_failed)
        if args.stored_only and previous.get("wall_s") and previous.get("trials") == data["grid"]["trials"]:
            # re-summarised (e.g. the front computed by newer code): the run that made the trials keeps its timing
            data["grid"].update({k: previous[k] for k in ("wall_s", "cpus", "reused")},
                                summarised_by_newer_code=True, run_code=previous.get("run_code") or run_code)
    data["loadavg"] = os.getloadavg()
    write_json(out.with_suffix(".json"), data)
    with atomic_path(out.with_suffix(".md")) as tmp:
        tmp.write_text(markdown(data))
    print(f"→ {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
