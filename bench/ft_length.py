"""How long a fine-tune keeps trimflow's lead: CNV at 16x fewer MACs, accuracy against fine-tune steps.

    .venv/bin/python bench/ft_length.py     # table, JSON and plot from the stored rows

The rows come from bench/trim_zoo.py with the long fine-tune's recipe (Adam 1e-3, cosine, +-2 px shifts, batch 128)
on more or fewer training images: bench/results/ftlen/trim-zoo-ft<N>.jsonl (one epoch over N images) and
bench/results/trim-zoo-longft.jsonl (two epochs over all 60,000); the commands are in
bench/results/trim-zoo-longft-commands.txt. No fine-tune at all is each row's "trimmed" accuracy.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"
OUT = RESULTS / "trim-ft-length"
NET, BUDGET, SEEDS, BATCH = "cnv", 0.0625, (0, 1), 128
# the former defaults by the names the 2026-12-02 20:00 rename gave them (-indep: each kernel scored alone)
METHODS = ("trimflow", "trimflow-indep", "trimflow-nocv-indep", "trimflow-outridge1-nocv-indep",
           "trimflow-norescale-nocv-indep", "trimflow-norescale-nosync-nocv-indep", "taylor-uniform",
           "tp-l1group-global")
SOURCES = [(RESULTS / "ftlen" / f"trim-zoo-ft{n}.jsonl", n, 1) for n in (3000, 12000, 30000, 60000)] + [
    (RESULTS / "trim-zoo-longft.jsonl", 60000, 2)]


def collect() -> dict[str, dict[int, list[float]]]:
    """method -> fine-tune steps -> accuracies over SEEDS (steps 0: right after trimming, once per seed)."""
    acc: dict[str, dict[int, list[float]]] = {m: {} for m in METHODS}
    trimmed: dict[str, dict[int, float]] = {m: {} for m in METHODS}  # method -> seed -> before the fine-tune
    for path, images, epochs in SOURCES:
        if not path.exists():
            continue
        steps = math.ceil(images / BATCH) * epochs
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if r["method"] not in METHODS or (r["net"], r["budget"]) != (NET, BUDGET) or r["seed"] not in SEEDS \
                    or "finetuned" not in r:
                continue
            acc[r["method"]].setdefault(steps, []).append(r["finetuned"])
            trimmed[r["method"]].setdefault(r["seed"], r["trimmed"])
    for m in METHODS:
        acc[m][0] = list(trimmed[m].values())
    return acc


def main() -> None:
    acc = collect()
    steps = sorted({s for v in acc.values() for s in v})
    lines = ["# How long a fine-tune keeps trimflow's lead (CNV, 16x fewer MACs)", "",
             f"Made by `.venv/bin/python bench/ft_length.py` from the rows named in its docstring. Mean over seeds "
             f"{', '.join(map(str, SEEDS))} (n per cell); 2,000 test images. Fine-tune: Adam 1e-3, cosine, +-2 px "
             "shifts, batch 128, one epoch over N training images (938 steps: two epochs over all 60,000).", "",
             "| method | " + " | ".join(f"{s} steps" for s in steps) + " |", "|---|" + "---|" * len(steps)]
    table = {}
    for m in METHODS:
        cells = []
        for s in steps:
            v = acc[m].get(s, [])
            table.setdefault(m, {})[s] = {"mean": statistics.mean(v), "n": len(v)} if v else None
            cells.append(f"{100 * statistics.mean(v):.2f} % (n={len(v)})" if v else "—")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")
    OUT.with_suffix(".json").write_text(json.dumps({m: {str(s): c for s, c in v.items()} for m, v in table.items()},
                                                   indent=1))
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for m in METHODS:
        pts = [(s, c["mean"]) for s, c in table[m].items() if c]
        ax.plot([max(s, 5) for s, _ in pts], [100 * a for _, a in pts], marker="o", label=m)
    ax.set_xscale("log")
    ax.set_xlabel("fine-tune steps (batch 128; 0 plotted at 5)")
    ax.set_ylabel("test accuracy %")
    ax.set_ylim(bottom=max(0, min(100 * c["mean"] for v in table.values() for c in v.values() if c) - 2))
    ax.set_title("CNV at 16x fewer MACs: accuracy after a fine-tune of each length")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(OUT.with_suffix(".png"), dpi=120)
    plt.close(fig)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
