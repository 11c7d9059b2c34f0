"""The report's figures (PNG, matplotlib without a display)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from trimflow.artifacts import atomic_path  # noqa: E402


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def relevance_plot(layers: dict[str, dict], path: Path) -> Path:
    """One panel per layer: kernels sorted by relevance, kept ones filled, removed ones hollow.

    Under the conditional order (a layer with "gains") the bars are what each kernel added when it was ranked,
    as a share of the layer's total: the scores themselves are only the order."""
    n = len(layers)
    conditional = any("gains" in info for info in layers.values())
    # constrained layout reserves room for the figure title above the panels' own titles (they overlapped)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.9), squeeze=False, layout="constrained")
    for ax, (name, info) in zip(axes[0], layers.items()):
        scores = info["scores"]
        kept = set(info.get("kept", range(len(scores))))
        order = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)
        xs = range(len(order))
        ys = [scores[i] for i in order]
        if "gains" in info:
            total = sum(info["gains"]) or 1.0
            ys = [100.0 * info["gains"][i] / total for i in order]
        colors = ["tab:blue" if i in kept else "white" for i in order]
        ax.bar(xs, ys, color=colors, edgecolor="tab:blue", linewidth=0.6, width=1.0)
        ax.set_title(f"{name}\nkept {len(kept)}/{len(scores)}", fontsize=8)
        ax.tick_params(labelsize=6)
        ax.set_xlabel("kernel (sorted)", fontsize=7)
    if conditional:
        axes[0][0].set_ylabel("energy added when ranked (%)", fontsize=8)
        fig.suptitle("Conditional relevance per layer: what each kernel adds to those ranked before it "
                     "(filled = kept)", fontsize=9)
    else:
        axes[0][0].set_ylabel("relevance", fontsize=8)
        fig.suptitle("Kernel relevance per layer (filled = kept)", fontsize=9)
    return _save(fig, path)


def resources_plot(fit_rows: list[dict], path: Path) -> Path:
    """Estimated use of each resource as a share of the board, with the cap drawn as a tick."""
    fit_rows = [r for r in fit_rows if r["capacity"]]  # a resource the device lacks (URAM on a 7-series)
    fig, ax = plt.subplots(figsize=(5.5, 2.4))
    names = [r["resource"] for r in fit_rows]
    used = [100.0 * r["estimate"] / r["capacity"] if r["capacity"] else 0.0 for r in fit_rows]
    caps = [100.0 * r["cap"] / r["capacity"] if r["capacity"] else 0.0 for r in fit_rows]
    colors = ["tab:green" if r["ok"] else "tab:red" for r in fit_rows]
    ax.barh(names, used, color=colors)
    for y, (u, c, r) in enumerate(zip(used, caps, fit_rows)):
        # inside the bar's end, where a cap just right of the bar cannot cross it; over the cap (the cap line
        # inside the bar) outside
        inside = u >= 12 and r["ok"]
        ax.annotate(f"{u:.0f} %", (u, y), xytext=(-3 if inside else 3, 0), textcoords="offset points",
                    va="center", ha="right" if inside else "left", fontsize=7, color="white" if inside else "black")
        ax.plot([c, c], [y - 0.4, y + 0.4], color="black", linewidth=2, label="cap" if y == 0 else None)
    ax.set_xlim(0, max(100.0, *used) * 1.08)
    ax.set_xlabel("% of the device")
    # outside the axes: inside, the legend's cap marker sat among the bars and read as one more cap
    handles = [Patch(color="tab:green", label="estimate")] + (
        [Patch(color="tab:red", label="over the cap")] if not all(r["ok"] for r in fit_rows) else [])
    ax.legend(handles=ax.get_legend_handles_labels()[0] + handles, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              fontsize=7, frameon=False)
    ax.set_title("Estimated resources vs the board's caps", fontsize=9)
    return _save(fig, path)


def layer_resources_plot(layers: list[dict], path: Path) -> Path:
    """LUT and BRAM18 per layer, and cycles per layer (the bottleneck sets the throughput)."""
    names = [layer["name"] for layer in layers]
    fig, axes = plt.subplots(1, 3, figsize=(11, 0.35 * len(names) + 1.5), sharey=True)
    for ax, key, title in zip(axes, ("lut", "bram18", "cycles"), ("LUT", "BRAM18", "cycles / image")):
        ax.barh(names, [layer.get(key, 0) or 0 for layer in layers], color="tab:blue")
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0].invert_yaxis()
    return _save(fig, path)


def accuracy_size_plot(points: list[tuple[str, float, float]], path: Path) -> Path:
    """Accuracy against MACs for each step of the flow (float, trimmed, quantized)."""
    fig, ax = plt.subplots(figsize=(4.5, 3))
    for label, macs, acc in points:
        ax.scatter([macs / 1e6], [100 * acc], s=30)
        ax.annotate(label, (macs / 1e6, 100 * acc), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.margins(x=0.15, y=0.15)  # room for the labels right of the outermost points
    ax.set_xlabel("MMACs / image")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy vs size", fontsize=9)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def pareto_plot(pareto: dict, path: Path, title: str | None = None) -> Path:
    """fps against LUT (design + board shell): the Pareto front as a step line (the best fps any LUT count buys),
    the other plans tried, the board's LUT cap, and the build's plan."""
    shell = pareto["shell_overhead"]["LUT"]
    cap = pareto["limits"]["LUT"]
    front = pareto["points"]
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    others = [p for p in pareto.get("tried", []) if p not in front and not p.get("chosen")]
    if others:
        ax.scatter([p["resources"]["LUT"] + shell for p in others], [p["fps"] for p in others], s=14,
                   color="0.65", label="other plans tried", zorder=2)
    if front:
        xs = [p["resources"]["LUT"] + shell for p in front]
        ys = [p["fps"] for p in front]
        # "post": with LUT x to spend, the best design is the last front point at or left of x; it holds to the cap
        ax.step(xs + [max(cap, xs[-1])], ys + [ys[-1]], where="post", color="tab:blue", label="Pareto front",
                zorder=3)
        ax.scatter(xs, ys, s=18, color="tab:blue", zorder=4)
    chosen = pareto.get("chosen")
    if chosen:
        ax.scatter([chosen["resources"]["LUT"] + shell], [chosen["fps"]], s=120, marker="*", color="tab:red",
                   label=f"build: {chosen['fps']:,.0f} fps", zorder=5)
    ax.axvline(cap, color="black", linestyle="--", linewidth=1, label=f"LUT cap {cap:,}")
    ax.set_yscale("log")
    ax.set_xlim(0, cap * 1.08)
    ax.set_xlabel(f"LUT (design + {shell:,} shell)")
    ax.set_ylabel("fps (estimate)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize=7)
    ax.set_title(title or f"Throughput vs LUT on {pareto['board']}", fontsize=9)
    return _save(fig, path)
