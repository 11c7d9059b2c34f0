"""The sweep's result: every trial's record, the Pareto front of each board over (quantized top-1 ↑, fps ↑, binding
resource's share of its cap ↓), a markdown table, and plots of accuracy vs fps and vs LUT with one colour per board.

The front is per board: a design is built for one board, so a zybo-z7-10 design is not worse because a pynq-z2
design (a larger, dearer device) is faster at the same accuracy. One front over all boards would only ever show the
largest board."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trimflow.artifacts import atomic_path, write_json
from trimflow.report.markdown import num, pct, table

# (key, +1 to maximise / -1 to minimise)
OBJECTIVES = (("accuracy", 1), ("fps", 1), ("binding_share", -1))


def dominates(a: dict, b: dict) -> bool:
    """a is at least as good as b on every objective and better on one."""
    better = [sign * (a[k] - b[k]) for k, sign in OBJECTIVES]
    return all(x >= 0 for x in better) and any(x > 0 for x in better)


def pareto_front(records: list[dict]) -> list[dict]:
    """The successful trials no other successful trial of the same board dominates, best accuracy first."""
    ok = [r for r in records if r.get("status") == "ok"]
    front = [r for r in ok if not any(dominates(o, r) for o in ok
                                      if o is not r and o.get("board") == r.get("board"))]
    return sorted(front, key=lambda r: (-r["accuracy"], -r["fps"]))


def write_results(out: Path, records: list[dict], title: str = "Design-space sweep",
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """results.json, sweep.md and the two plots in `out`; returns what results.json holds."""
    front = pareto_front(records)
    front_ids = [r["id"] for r in front]
    data = {"trials": records, "front": front_ids, "sharing": stage_sharing(records), **(extra or {})}
    write_json(out / "results.json", data)
    plots = [accuracy_plot(records, front_ids, "fps", out / "front-fps.png"),
             accuracy_plot(records, front_ids, "lut", out / "front-lut.png")]
    with atomic_path(out / "sweep.md") as tmp:
        tmp.write_text(markdown(out, records, front, data["sharing"], plots, title))
    return data


def stage_sharing(records: list[dict]) -> dict[str, float]:
    """Seconds of the shared stages (relevance, trim) as built once per prefix vs as every trial would have built
    them alone; the difference is what sharing saved. Read from the trials' stage records."""
    per_trial, distinct = 0.0, {}
    for r in records:
        for name in ("relevance", "trim"):
            st = (r.get("stages") or {}).get(name)
            if st:
                per_trial += st["seconds"]
                distinct[(name, st["key"])] = st["seconds"]
    built = sum(distinct.values())
    return {"without_sharing_s": per_trial, "with_sharing_s": built, "saved_s": per_trial - built,
            "shared_builds": len(distinct)}


def markdown(out: Path, records: list[dict], front: list[dict], sharing: dict, plots: list[Path],
             title: str) -> str:
    ok = [r for r in records if r["status"] == "ok"]
    failed = [r for r in records if r["status"] != "ok"]
    lines = [f"# {title}", "",
             f"{len(records)} trials: {len(ok)} built, {len(failed)} failed; {len(front)} on their board's Pareto "
             "front of (quantized top-1 ↑, fps within the board's caps ↑, binding resource's share of its cap ↓).",
             "", "## Pareto front of each board", "",
             table(["trial", "top-1", "fps", "binding", "LUT", "MACs kept", "`make synth`"],
                   [[r["id"], pct(r["accuracy"]), num(r["fps"]),
                     f"{r['binding_resource']} {pct(r['binding_share'], 1)}", num(r["lut"]),
                     pct(r.get("macs_fraction"), 1), f"`{synth_command(out, r)}`"] for r in front]), ""]
    lines += [f"![accuracy vs {p.stem.split('-')[-1]}]({p.name})" for p in plots] + ["", "## Every trial", "",
              table(["trial", "status", "top-1", "float / trimmed", "fps", "binding", "LUT", "front"],
                    [[r["id"], r["status"], pct(r.get("accuracy")),
                      f"{pct(r.get('float_accuracy'))} / {pct(r.get('trimmed_accuracy'))}", num(r.get("fps")),
                      f"{r['binding_resource']} {pct(r['binding_share'], 1)}" if r["status"] == "ok" else "–",
                      num(r.get("lut")), "★" if r in front else ""] for r in records]), ""]
    if failed:
        lines += ["## Failed trials", "", table(["trial", "reason"],
                                                 [[r["id"], r["reason"].splitlines()[0]] for r in failed]), ""]
    lines += ["## Stage sharing", "",
              f"relevance + trim built {sharing['shared_builds']} times for {len(ok)} trials: "
              f"{sharing['with_sharing_s']:.0f} s instead of {sharing['without_sharing_s']:.0f} s "
              f"(saved {sharing['saved_s']:.0f} s of stage time).", ""]
    return "\n".join(lines)


def synth_command(out: Path, r: dict) -> str:
    """The command that synthesises a trial's design from its cached stages (Vivado, README 'Synthesis')."""
    d = (Path(out) / "trials" / r["id"]).resolve()
    if d.is_relative_to(Path.cwd().resolve()):  # make synth mounts the repository: paths relative to it
        d = d.relative_to(Path.cwd().resolve())
    return f"make synth BOARD={r['board']} CONFIG={d / 'config.yaml'} BUILD_DIR={d}"


def accuracy_plot(records: list[dict], front_ids: list[str], x: str, path: Path) -> Path:
    """Quantized top-1 against fps (log) or LUT, one colour per board; front trials filled, others hollow."""
    from trimflow.report.plots import _save, plt

    ok = [r for r in records if r["status"] == "ok"]
    fig, ax = plt.subplots(figsize=(5.8, 3.6))
    boards = sorted({r["board"] for r in ok})
    for i, board in enumerate(boards):
        colour = f"C{i}"
        for on_front in (False, True):
            pts = [r for r in ok if r["board"] == board and (r["id"] in front_ids) == on_front]
            if pts:
                ax.scatter([r[x] for r in pts], [100 * r["accuracy"] for r in pts], s=36 if on_front else 22,
                           facecolors=colour if on_front else "none", edgecolors=colour,
                           label=f"{board}{' (front)' if on_front else ''}", zorder=3 if on_front else 2)
    if x == "fps":
        ax.set_xscale("log")
    ax.set_xlabel("fps within the board's caps (estimate)" if x == "fps" else "LUT (design + shell, estimate)")
    ax.set_ylabel("quantized top-1 (%)")
    ax.grid(alpha=0.3, which="both")
    ax.margins(0.1)  # points at the extremes stay clear of the frame and the legend
    if ok:
        ax.legend(fontsize=7, loc="best")
    ax.set_title(f"Sweep: accuracy vs {'fps' if x == 'fps' else 'LUT'}", fontsize=9)
    return _save(fig, path)
