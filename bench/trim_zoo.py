"""Trimming over a zoo of networks: trimflow's default against the established criteria, before and after an
identical fine-tune, at 2x, 4x and 16x fewer MACs.

    .venv/bin/python bench/trim_zoo.py                       # every zoo net, method, budget, seeds 0 1 2
    .venv/bin/python bench/trim_zoo.py --nets cnv --seeds 0  # a part of it
    .venv/bin/python bench/trim_zoo.py --report-only         # tables and plot from the stored rows
    .venv/bin/python bench/trim_zoo.py --out /tmp/mine --add mynet=my.pt@cifar10@/data/cifar --nets mynet
                                                             # your own net (a trimflow checkpoint, e.g. from
                                                             # `trimflow import`) on your own dataset, rows apart

Resumable: each (net, method, budget, seed) row is appended to bench/results/trim-zoo.jsonl as it finishes and
skipped when it is there already; --shard K/N runs every N-th (seed, net) group (two processes on two cores).

Every method trims the same pretrained net (bench/zoo.py) to the same MAC budget; then every row gets exactly the
same fine-tune (--ft-* options: Adam, cosine schedule, +-2 px shifts, no flips, a seeded training subset) and is
evaluated on the whole test split. A seed changes the calibration subset, the fine-tune subset and order, and the
random criterion. Methods:

    trimflow             the flow's default trim (trimflow.config): conditional relevance (kernels ranked per
                         layer by the consumer energy of what the kernels before them do not explain; ties by mean
                         activation x consumer weight norm), kernels shared out between layers by measured sensitivity (each layer trimmed alone
                         and refitted, KL divergence from the untrimmed net: no labels), label-free least-squares
                         reconstruction of every later layer (trimflow.reconstruct) on the calibration images
                         checked against one fraction per layer on the whole net (trim.sensitivity.guard=rank: the
                         allocation closer to the untrimmed net by KL divergence is used), then BN statistics
                         synchronised with the refitted net (trim.sync_bn: the same function in eval mode, and the
                         fine-tune's batch statistics no longer undo the refit); each layer's ridge chosen by
                         cross-validation on the calibration images (trim.reconstruct.ridge_search)
    trimflow-indep       the default with each kernel scored alone (relevance.selection=independent): the flow's
                         default until 2026-12-02 20:00 (rows measured before are renamed, "trimflow-X" to
                         "trimflow-X-indep" and the measured "trimflow-cond-X" to "trimflow-X", in the files
                         named in trim-zoo-longft-commands.txt; other files' rows predate it and keep their names)
    trimflow-nocv        the default with one fixed ridge: the flow's default until 2026-12-02 14:00 (rows
                         measured before are renamed, "trimflow-X" to "trimflow-X-nocv", see trim-zoo-commands.txt)
    trimflow-norescale   the default without trim.reconstruct.rescale: the flow's default until 2026-12-01 05:30
                         was trimflow-norescale-nocv (rows measured before are renamed, see trim-zoo-commands.txt)
    trimflow-nosync      the default without sync_bn (the flow's default until 2026-12-01 03:50 was
                         trimflow-norescale-nosync-nocv)
    trimflow-rank-nosync one fraction of kernels per layer (allocation=rank): cheaper
    trimflow-sens-nosync the sensitivity allocation unchecked (guard=none): the flow's default before the guard
    trimflow-PART[-PART...]
                         other variants, named by what they change (the parts are VARIANT_PARTS below, listed
                         by --help), e.g. trimflow-grad-norefit; l1-refit /
                         taylor-refit: a peer's kernels with trimflow's refit (one fraction per layer), -norescale
                         as above. Tried under the long fine-tune (trim-zoo-longft.md)
    (Stored rows were renamed twice on 2026-11-30, see trim-zoo-commands.txt: the rank variant was "trimflow" and
    the unchecked sensitivity allocation "trimflow-sens", then "trimflow", before the guard.)
    l1 / l2 / bn_gamma / taylor / apoz / random -uniform
                         trimflow.criteria scores, the same fraction kept in every layer, BN statistics re-estimated
                         on the calibration images (no labels for l1, l2, bn_gamma, apoz, random; taylor reads them)
    bn_gamma-global      network slimming's allocation: one threshold on |gamma| over all layers
    taylor-global        Molchanov et al.'s allocation: one threshold on per-layer L2-normalised Taylor scores
    l1-global            one threshold on per-layer max-normalised L1 norms
    tp-l1group-uniform / -global
                         Torch-Pruning's GroupMagnitudeImportance(p=1) through its MetaPruner, uniform ratio or its
                         global pruning, BN statistics re-estimated

"Own best allocation" of a peer: on the two tune nets every peer family ran with both allocations (seed 0); the
better one per family (l1, bn_gamma, taylor: uniform; tp-l1group: global) is the one run on the holdout nets and
for further seeds, and in every (net, budget) cell a family stands at its better available allocation (chosen on
the test split, in the peers' favour).

The fine-tune (identical in every row): Adam, lr 3e-4, cosine, 1 epoch over 3,000 seeded training images, +-2 px
shifts, batch 128. A first pilot with lr 1e-3 (bench/results/trim-zoo-pilot/) lowered an already good net (CNV at
2x: 91.9 % after trimming, 91.2 % after it): too large a step for 24 updates, so the step was lowered for every
method before the runs reported here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from trim import tp_trim  # noqa: E402
from zoo import NETS, ensure  # noqa: E402

from trimflow.criteria import score  # noqa: E402
from trimflow.data import load_dataset, subset  # noqa: E402
from trimflow.graph import count_params_macs  # noqa: E402
from trimflow.models import load_checkpoint  # noqa: E402
from trimflow.reconstruct import ReconstructConfig  # noqa: E402
from trimflow.relevance import RelevanceConfig  # noqa: E402
from trimflow.train import TrainConfig, evaluate, train  # noqa: E402
from trimflow.trim import SensitivityConfig, TrimConfig, recalibrate_bn, trim_model  # noqa: E402

# "trimflow" is the flow's default (TrimConfig in trimflow.config). Its variants are named by what they change,
# joined by "-" (trimflow-rank-ridge0.1): shown in the per-net tables and the variant column, never ranked
# among the peers. "l1-refit" / "taylor-refit": a peer's kernels with trimflow's refit (one fraction per layer).
VARIANT_PARTS = {
    "rank": "one fraction of kernels per layer (allocation=rank)",
    "sens": "the sensitivity allocation unchecked (sensitivity.guard=none)",
    "norescale": "reconstruct.rescale=false: the refitted weights keep the scale the refit gave them (the default "
                 "until 2026-12-01 05:30)",
    "grad": "relevance.weighting=gradient (|activation x gradient| of the net's own prediction)",
    "plain": "relevance.weighting=none (the paper's mean activation)",
    "cond": "relevance.selection=conditional (kernels ranked greedily by what the kernels before them do not "
            "explain, trimflow.conditional)",
    "indep": "relevance.selection=independent: each kernel scored alone (the default until 2026-12-02 20:00)",
    "norefit": "the peers' treatment: one fraction per layer, no refit, BN statistics re-estimated",
    "ridge<r>": "reconstruct.ridge=r (pulls the refit towards the kept pretrained weights)",
    "outridge<r>": "reconstruct.output_ridge=r: the ridge of the layer computing the logits only",
    "nocv": "reconstruct.ridge_search=(): every layer refitted with the fixed ridge, no search (the default until "
            "2026-12-02 14:00)",
    "nosync": "sync_bn=false: BN keeps the refit's running statistics (the default before 2026-12-01 03:50)",
    "recal": "after the refit, BN statistics re-estimated as the peers get them (recalibrate_bn, no sync_bn): each "
             "refitted layer's output is normalised back to the untrimmed activation scale",
}


def ours(method: str) -> dict | None:
    """TrimConfig fields (plus "relevance" / "criterion" overrides) of one of our methods; None for a peer."""
    first, *parts = method.split("-")
    if first in ("l1", "taylor") and parts[:1] == ["refit"] and set(parts[1:]) <= {"norescale", "nocv"}:
        rec: dict = {}
        if "norescale" in parts:
            rec["rescale"] = False
        if "nocv" in parts:
            rec["ridge_search"] = ()
        return {"criterion": first, "compensation": "reconstruct", "recalibrate_bn": False, "allocation": "rank",
                **({"reconstruct": ReconstructConfig(**rec)} if rec else {})}
    if first != "trimflow":
        return None
    cfg: dict = {"compensation": "reconstruct", "recalibrate_bn": False, "allocation": "sensitivity"}
    rel: dict = {}
    rec: dict = {}
    for part in parts:
        if part == "rank":
            cfg["allocation"] = "rank"
        elif part == "sens":
            cfg["sensitivity"] = SensitivityConfig(guard="none")
        elif part == "norescale":
            rec["rescale"] = False
        elif part in ("cond", "indep"):
            rel["selection"] = "conditional" if part == "cond" else "independent"
        elif part in ("grad", "plain"):
            rel["weighting"] = "gradient" if part == "grad" else "none"
        elif part == "norefit":
            cfg.update(compensation="none", recalibrate_bn=True, allocation="rank")
        elif part == "nosync":
            cfg["sync_bn"] = False
        elif part == "recal":
            cfg.update(recalibrate_bn=True, sync_bn=False)
        elif part == "nocv":
            rec["ridge_search"] = ()
        elif part.startswith("outridge"):
            rec["output_ridge"] = float(part[8:])
        elif part.startswith("ridge"):
            r = float(part[5:])
            rec.update(ridge=r, fallback_ridge=max(r, ReconstructConfig.fallback_ridge))
        else:
            raise SystemExit(f"method {method!r}: unknown part {part!r}; trimflow variants combine "
                             f"{', '.join(VARIANT_PARTS)}")
    if rec:
        cfg["reconstruct"] = ReconstructConfig(**rec)
    if rel:
        cfg["relevance"] = rel
    return cfg


PEERS_UNIFORM = ("l1", "l2", "bn_gamma", "taylor", "apoz", "random")
PEERS_GLOBAL = {"bn_gamma": "none", "taylor": "l2", "l1": "max"}  # criterion -> per-layer normalisation
METHODS = (("trimflow", "trimflow-indep")
           + tuple(f"{c}-uniform" for c in PEERS_UNIFORM) + tuple(f"{c}-global" for c in PEERS_GLOBAL)
           + ("tp-l1group-uniform", "tp-l1group-global"))
OUT = ROOT / "bench" / "results" / "trim-zoo"  # --out: rows, tables, plot and cost under another prefix
COST = OUT.with_name("trim-zoo-cost.jsonl")  # --cost: trimflow's trim timed with the current code, no fine-tune


def add_net(spec: str) -> str:
    """--add NAME=CHECKPOINT@DATASET[@DATA_DIR]: a user's net joins the zoo (role "user") for this output prefix."""
    name, sep, rest = spec.partition("=")
    parts = rest.split("@")
    if not sep or not name or len(parts) not in (2, 3) or not all(parts):
        raise SystemExit(f"--add {spec!r}: expected NAME=CHECKPOINT@DATASET or NAME=CHECKPOINT@DATASET@DATA_DIR "
                         "(a trimflow checkpoint, e.g. written by `trimflow import`, and a trimflow dataset name)")
    path = Path(parts[0]).resolve()
    if not path.is_file():
        raise SystemExit(f"--add {name}: checkpoint {path} not found")
    # inside the repository: kept relative to it in PREFIX-nets.json, so that a committed file works in any checkout
    NETS[name] = {"checkpoint": _shown(path), "dataset": parts[1], "role": "user", "what": f"user net ({path.name})",
                  **({"data_dir": str(Path(parts[2]).resolve())} if len(parts) == 3 else {})}
    return name


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def split_of(net: str, split: str):
    return load_dataset(NETS[net]["dataset"], split, NETS[net].get("data_dir"))


def peer_family(method: str) -> str:
    return method.rsplit("-", 1)[0] if method.endswith(("-uniform", "-global")) else method


def trim_one(model, method: str, budget: float, calib, seed: int, args,
             tables: dict | None = None) -> tuple[torch.nn.Module, dict]:
    """Trim `model` by `method` to `budget`; `tables`: sensitivity tables of this model by seed, reused if given."""
    info: dict = {}
    if method.startswith("tp-"):
        family, alloc = method.rsplit("-", 1)
        trimmed = tp_trim(model, family, budget, calib, 1, args.batch_size, global_pruning=alloc == "global")
        recalibrate_bn(trimmed, calib)
        return trimmed, info
    rel: dict = {}
    extra = ours(method)
    if extra is not None:
        norm = "rank"
        rel = extra.pop("relevance", {})
        crit = extra.pop("criterion", "relevance")
    else:
        crit, alloc = method.rsplit("-", 1)
        norm = "rank" if alloc == "uniform" else PEERS_GLOBAL[crit]
        extra = {"compensation": "none", "recalibrate_bn": True, "allocation": "rank"}
    scores = score(model, calib, crit, RelevanceConfig(images=None, seed=seed, **rel))
    cfg = TrimConfig(criterion=crit, policy="budget", budget=budget, budget_metric="macs", round_to=1,
                     normalize=norm, calib_images=len(calib), seed=seed, **extra)
    # one sensitivity table serves every budget (as in the flow's hardware-aware search): measured once per model
    # and seed in this process; the row says so, since its trim time then leaves the measurement out
    table = tables.get(seed) if tables is not None and cfg.allocation == "sensitivity" else None
    info["sensitivity_cached"] = table is not None
    trimmed, report = trim_model(model, scores, cfg, calib, sensitivity=table, progress=False)
    if tables is not None and cfg.allocation == "sensitivity":
        tables[seed] = report.sensitivity
    if report.reconstruction:
        info["fallback"] = [r["layer"] for r in report.reconstruction if "fallback" in r]
    if report.allocation_check:
        info["allocation_used"] = report.allocation_check["used"]
        info["allocation_kl"] = report.allocation_check.get("kl")
    return trimmed, info


def one_row(net: str, model, method: str, budget: float, seed: int, sets, args, tables: dict | None = None) -> dict:
    train_set, test_set = sets
    calib = subset(train_set, args.calib_images, seed)
    row = {"net": net, "role": NETS[net]["role"], "method": method, "budget": budget, "seed": seed}
    start, cpu = time.perf_counter(), time.process_time()
    trimmed, info = trim_one(model, method, budget, calib, seed, args, tables)
    row["trim_seconds"] = round(time.perf_counter() - start, 2)
    # CPU seconds of this one-thread process: what the trim costs on a free core, whatever else the machine runs
    row["trim_cpu_seconds"] = round(time.process_time() - cpu, 2)
    row.update(info)
    p0, m0 = count_params_macs(model, calib.shape)
    p1, m1 = count_params_macs(trimmed, calib.shape)
    row.update(params_kept=round(p1 / p0, 4), macs_kept=round(m1 / m0, 4))
    row["trimmed"] = evaluate(trimmed, test_set)
    if args.ft_epochs > 0:
        ft = TrainConfig(epochs=args.ft_epochs, lr=args.ft_lr, optimizer=args.ft_optimizer,
                         schedule=args.ft_schedule, weight_decay=args.ft_weight_decay, augment=True, hflip=False,
                         seed=seed)
        t = time.perf_counter()
        train(trimmed, subset(train_set, args.ft_images, seed + 1000), ft, progress=False)
        row["ft_seconds"] = round(time.perf_counter() - t, 1)
        row["finetuned"] = evaluate(trimmed, test_set)
    return row


# --- summary -----------------------------------------------------------------------------------------------------
def cells(rows: list[dict]) -> dict:
    """(net, budget, method) -> {'trimmed': [..], 'finetuned': [..], 'macs': [..]} over seeds."""
    out: dict = {}
    for r in rows:
        c = out.setdefault((r["net"], r["budget"], r["method"]), {"trimmed": [], "finetuned": [], "macs": []})
        c["trimmed"].append(r["trimmed"])
        c["macs"].append(r["macs_kept"])
        if "finetuned" in r:
            c["finetuned"].append(r["finetuned"])
    return out


def ms(v: list[float]) -> tuple[float, float]:
    return (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0) if v else (float("nan"), 0.0)


def summarise(rows: list[dict], key: str = "finetuned") -> dict:
    """Per (net, budget): each peer family at its better allocation, ranks, and trimflow's standing."""
    c = cells(rows)
    nets = list(dict.fromkeys(r["net"] for r in rows))
    out = {}
    for net in nets:
        for budget in sorted({b for (n, b, _) in c if n == net}, reverse=True):
            fam: dict[str, tuple[str, float, float]] = {}
            for (n, b, m), v in c.items():
                if n != net or b != budget or not v[key] or (ours(m) is not None and m != "trimflow"):
                    continue  # trimflow's variants are in the per-net tables, not among the peers
                mean, std = ms(v[key])
                f = peer_family(m)
                if f not in fam or mean > fam[f][1]:
                    fam[f] = (m, mean, std)
            if "trimflow" not in fam:
                continue
            order = sorted(fam, key=lambda f: -fam[f][1])
            best_peer = next((f for f in order if f != "trimflow"), None)
            seeds = len(c[(net, budget, "trimflow")][key])
            out[(net, budget)] = {"families": fam, "rank": {f: order.index(f) + 1 for f in order},
                                  "best_peer": best_peer, "seeds": seeds}
    return out


def variant(c: dict, net: str, budget: float, method: str, key: str) -> str:
    """One of trimflow's variants in a cell, mean ± std (n), or a dash."""
    v = c.get((net, budget, method), {}).get(key)
    if not v:
        return "—"
    m, sd = ms(v)
    return f"{m:.4f} ± {sd:.4f} (n={len(v)})"


def markdown(rows: list[dict], args_line: str, floats: dict) -> str:
    s_ft, s_lf = summarise(rows, "finetuned"), summarise(rows, "trimmed")
    c = cells(rows)
    lines = ["# Trimming over a zoo of networks", "",
             f"Rows: `{_shown(OUT.with_suffix('.jsonl'))}`, made by the commands in "
             f"`{_shown(OUT.with_name(OUT.name + '-commands.txt'))}`; "
             f"tables by `{args_line}`; summary JSON beside this file. Test accuracy on a fixed 2,000-image test "
             "subset (seed 0; mnist-zoo: its whole 1,996-digit test split).", "",
             "Every method trims the same pretrained net to the same fraction of its MACs; then every row gets the "
             "same fine-tune and is evaluated on the same test images. Mean ± std over fine-tune seeds. A peer "
             "family stands at its better allocation (uniform or its own global one) per cell. `tune` nets are "
             "the two the default was chosen on (label-free accuracy on a validation split of their training "
             "images); `holdout` nets were not looked at while choosing it.", "",
             "`trimflow` is the flow's default trim (conditional relevance: kernels ranked by the consumer energy "
             "of what the kernels before them do not explain; sensitivity allocation measured by "
             "KL divergence from the untrimmed net, least-squares reconstruction: no labels, no gradient step), "
             "then BN statistics synchronised with the refitted net (`trim.sync_bn`) and the refitted weights scaled "
             "back to the untrimmed scale (`trim.reconstruct.rescale`; the same function), each layer's ridge "
             "chosen by cross-validation on the calibration images (`trim.reconstruct.ridge_search`); "
             "`trimflow-indep` is the same with each kernel scored alone (relevance x consumer norm), the default "
             "until 2026-12-02 20:00 (not ranked among the peers).", ""]
    lines += ["## Nets", "", "| net | role | what | float test accuracy | params | MACs |", "|---|---|---|---|---|---|"]
    for net, f in floats.items():
        lines.append(f"| {net} | {NETS[net]['role']} | {NETS[net]['what']} | {f['accuracy']:.4f} | {f['params']:,} "
                     f"| {f['macs'] / 1e6:.2f} M |")
    for title, summ, key in (("After the identical fine-tune", s_ft, "finetuned"),
                             ("Right after trimming: no labels (except taylor), no fine-tune", s_lf, "trimmed")):
        lines += ["", f"## {title}", "",
                  "| net | MACs kept | seeds | trimflow | best peer | random | trimflow rank | within 1 std of best "
                  "| trimflow-indep |", "|---|---|---|---|---|---|---|---|---|"]
        ranks = []
        for (net, budget), s in summ.items():
            fam = s["families"]
            _, tm, ts = fam["trimflow"]
            bp = s["best_peer"]
            if bp is None:  # only our methods measured in this cell (e.g. one default row): nothing to compare
                continue
            best_mean = max(v[1] for v in fam.values())
            ok = tm >= best_mean - ts - 1e-12 or s["rank"]["trimflow"] == 1
            rnd = fam.get("random")
            ranks.append(s["rank"])
            lines.append(f"| {net} | {1 / budget:.0f}x ({budget:g}) | {s['seeds']} | {tm:.4f} ± {ts:.4f} | "
                         f"{fam[bp][0] if bp else '—'} {fam[bp][1]:.4f} ± {fam[bp][2]:.4f} | "
                         f"{f'{rnd[1]:.4f}' if rnd else '—'} | {s['rank']['trimflow']} / {len(fam)} | "
                         f"{'yes' if ok else '**no**'} | {variant(c, net, budget, 'trimflow-indep', key)} |")
        if ranks:
            fams = sorted({f for r in ranks for f in r})
            mean_rank = {f: statistics.mean(r[f] for r in ranks if f in r) for f in fams}
            lines += ["", "Mean rank over all cells (1 = best): " + ", ".join(
                f"{f} {mean_rank[f]:.2f}" for f in sorted(fams, key=lambda f: mean_rank[f])) + "."]
            for budget in sorted({b for (_, b) in summ}, reverse=True):
                d = [summ[k]["families"]["trimflow"][1] - summ[k]["families"][summ[k]["best_peer"]][1]
                     for k in summ if k[1] == budget and summ[k]["best_peer"]]
                if d:
                    lines.append(f"- at {1 / budget:.0f}x: trimflow minus the best peer, mean over {len(d)} nets: "
                                 f"{100 * statistics.mean(d):+.2f} pt")
    measured = COST.exists()
    cost: dict = {}
    for r in ([json.loads(line) for line in COST.read_text().splitlines()] if measured else rows):
        if ours(r["method"]) is not None:
            cost.setdefault((r["net"], r["method"]), []).append(
                (r.get("trim_cpu_seconds"), r["trim_seconds"], r.get("threads", 1)))
    if cost:
        lines += ["", "## Cost of trimflow's trim (scoring + allocation + reconstruction, 2,000 images)", ""]
        if measured:  # the rows above span code versions; this table is one run of the current code
            lines += [f"Measured by `.venv/bin/python bench/trim_zoo.py --cost` (every net at 2x/4x/16x, seed 0; "
                      f"`{_shown(COST)}`). A (net, method) row is replaced whenever it is measured again, so the "
                      f"rows of different methods may come from different versions of the code: the command and "
                      f"date of each run are in {OUT.name}-commands.txt.", ""]
        lines += ["| net | method | threads | CPU s (mean, max) | wall s (mean, max) |", "|---|---|---|---|---|"]
        for (net, method), v in cost.items():
            cpu = [c for c, _, _ in v if c is not None]
            wall = [w for _, w, _ in v]
            lines.append(f"| {net} | {method} | {', '.join(str(t) for t in sorted({t for _, _, t in v}))} | "
                         f"{f'{statistics.mean(cpu):.1f}, {max(cpu):.1f}' if cpu else '—'} | "
                         f"{statistics.mean(wall):.1f}, {max(wall):.1f} |")
    lines += ["", "## Every method (mean ± std over seeds; after trimming → after fine-tune)", ""]
    c = cells(rows)
    for net in dict.fromkeys(r["net"] for r in rows):
        budgets = sorted({b for (n, b, _) in c if n == net}, reverse=True)
        lines += [f"### {net}", "", "| method | " + " | ".join(f"{1 / b:.0f}x" for b in budgets) + " |",
                  "|---|" + "---|" * len(budgets)]
        present = {m for (n, _, m) in c if n == net}
        for m in [m for m in METHODS if m in present] + sorted(present - set(METHODS)):
            cols = []
            for b in budgets:
                v = c.get((net, b, m))
                if not v:
                    cols.append("—")
                    continue
                t, f = ms(v["trimmed"]), ms(v["finetuned"])
                cols.append(f"{t[0]:.3f} → {f[0]:.4f} ± {f[1]:.4f} (n={len(v['finetuned'])}, MACs "
                            f"{statistics.mean(v['macs']):.3f})")
            if any(col != "—" for col in cols):
                lines.append(f"| {m} | " + " | ".join(cols) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summ = summarise(rows)
    nets = list(dict.fromkeys(n for n, _ in summ))
    fig, axes = plt.subplots(2, (len(nets) + 1) // 2, figsize=(4.2 * ((len(nets) + 1) // 2), 7.5), squeeze=False)
    fams = sorted({f for s in summ.values() for f in s["families"]})
    colors = {f: plt.cm.tab10(i % 10) for i, f in enumerate(fams)}
    for ax, net in zip(axes.flat, nets):
        budgets = sorted(b for n, b in summ if n == net)
        for f in fams:
            pts = [(b, summ[(net, b)]["families"][f]) for b in budgets if f in summ[(net, b)]["families"]]
            if not pts:
                continue
            xs = [1 / b for b, _ in pts]
            ys = [100 * v[1] for _, v in pts]
            es = [100 * v[2] for _, v in pts]
            ax.errorbar(xs, ys, yerr=es, marker="o" if f == "trimflow" else ".", lw=2.5 if f == "trimflow" else 1,
                        color="black" if f == "trimflow" else colors[f], label=f, capsize=2)
        ax.set_xscale("log", base=2)
        ax.set_xticks([1 / b for b in budgets], [f"{1 / b:.0f}x" for b in budgets])
        ax.set_title(f"{net} ({NETS[net]['role']})", fontsize=10)
        ax.set_xlabel("MAC reduction (x)")
        ax.set_ylabel("top-1 after fine-tune (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(nets):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    global OUT, COST
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nets", nargs="+", default=list(NETS))
    p.add_argument("--methods", nargs="+", default=list(METHODS),
                   help="peers and our methods (module docstring); trimflow variants join these parts with '-': "
                        + "; ".join(f"{k}: {v}" for k, v in VARIANT_PARTS.items()))
    p.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.25, 0.0625])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--calib-images", type=int, default=2000, help="representative images (training split)")
    # Short by necessity (the 2 shared cores): 1 epoch over 3,000 images; bench/results/trim-zoo.md says so
    p.add_argument("--ft-images", type=int, default=3000, help="fine-tune subset of the training split")
    p.add_argument("--test-images", type=int, default=2000, help="fixed test subset (seed 0) every row is scored on")
    p.add_argument("--ft-epochs", type=float, default=1.0)
    p.add_argument("--ft-lr", type=float, default=3e-4, help="the learning rate (onecycle: its peak)")
    p.add_argument("--ft-optimizer", choices=("adam", "adamw"), default="adam")
    p.add_argument("--ft-schedule", choices=("cosine", "onecycle"), default="cosine")
    p.add_argument("--ft-weight-decay", type=float, default=0.0, help="conv / linear weights only")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--shard", default="0/1", help="K/N: run every N-th (seed, net) group starting at K")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--reference", default="trimflow", help="the method the tables rank as trimflow's default "
                   "(a file measured before the default changed: e.g. trimflow-indep)")
    p.add_argument("--out", type=Path, default=OUT, help="output prefix: PREFIX.jsonl/.md/.json/.png, "
                   "PREFIX-cost.jsonl, PREFIX-nets.json (default bench/results/trim-zoo)")
    p.add_argument("--add", action="append", default=[], metavar="NAME=CHECKPOINT@DATASET[@DATA_DIR]",
                   help="add your own net (kept in PREFIX-nets.json for later runs with the same --out)")
    p.add_argument("--cost", action="store_true", help="time trimflow's trim (scoring + allocation + refit) with the "
                   "current code for --nets, --budgets and our --methods (default: every variant of ours), seed 0, no "
                   "fine-tune; replaces those rows of trim-zoo-cost.jsonl")
    args = p.parse_args()
    OUT, COST = args.out.resolve(), args.out.resolve().with_name(args.out.name + "-cost.jsonl")
    user_nets = OUT.with_name(OUT.name + "-nets.json")
    if user_nets.exists():
        NETS.update(json.loads(user_nets.read_text()))
    if args.add:
        added = [add_net(spec) for spec in args.add]
        OUT.parent.mkdir(parents=True, exist_ok=True)
        user_nets.write_text(json.dumps({n: v for n, v in NETS.items() if v["role"] == "user"}, indent=1))
        if args.nets == list(p.get_default("nets")):
            args.nets = added
    unknown = [n for n in args.nets if n not in NETS]
    if unknown:
        raise SystemExit(f"--nets: unknown net(s) {', '.join(unknown)}; known: {', '.join(NETS)} (or --add one)")
    bad = [m for m in args.methods if ours(m) is None and m not in METHODS]
    if bad:
        peers = ", ".join(m for m in METHODS if ours(m) is None)
        raise SystemExit(f"--methods: unknown method(s) {', '.join(bad)}; peers: {peers}; ours: trimflow and its "
                         f"variants trimflow-PART[-PART...] with PART in {', '.join(VARIANT_PARTS)}")
    torch.set_num_threads(args.threads)
    if args.cost:
        measure_cost(args)
        write_report(OUT.with_suffix(".jsonl"), args.test_images, args.reference)
        return
    OUT.parent.mkdir(parents=True, exist_ok=True)
    jsonl = OUT.with_suffix(".jsonl")
    done = set()
    if jsonl.exists():
        for line in jsonl.read_text().splitlines():
            r = json.loads(line)
            done.add((r["net"], r["method"], r["budget"], r["seed"]))
    k, n = (int(v) for v in args.shard.split("/"))
    if not args.report_only:
        # shards take whole (seed, net) groups, so one process measures a net's sensitivity table once per seed
        groups = [(s, net) for s in args.seeds for net in args.nets]
        todo = [(s, net, b, m) for g, (s, net) in enumerate(groups) if g % n == k
                for b in args.budgets for m in args.methods if (net, m, b, s) not in done]
        loaded: dict = {}
        for i, (seed, net, budget, method) in enumerate(todo, 1):
            if net not in loaded:
                model, _ = load_checkpoint(ensure(net))
                ds = NETS[net]["dataset"]
                test = subset(split_of(net, "test"), args.test_images, 0)
                loaded = {net: (model.eval(), (split_of(net, "train"), test), {})}
            model, sets, tables = loaded[net]
            try:
                row = one_row(net, model, method, budget, seed, sets, args, tables)
            except Exception as e:  # a peer that cannot handle a net is a result, not a crash of the bench
                row = {"net": net, "role": NETS[net]["role"], "method": method, "budget": budget, "seed": seed,
                       "error": f"{type(e).__name__}: {e}"[:300]}
            with open(jsonl, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"[{i}/{len(todo)}] {net} {method} {budget} seed {seed}: "
                  f"{row.get('trimmed', row.get('error'))} -> {row.get('finetuned')} "
                  f"({row.get('trim_seconds')} s trim)", flush=True)
    write_report(jsonl, args.test_images, args.reference)


def measure_cost(args) -> None:
    """trimflow's trim (relevance scores + allocation + refit) timed per net, budget and method of ours, seed 0.

    Rows of the nets and methods measured now replace their old rows in trim-zoo-cost.jsonl; the others stay.
    """
    methods = [m for m in args.methods if ours(m) is not None] or ["trimflow"]
    old = [json.loads(line) for line in COST.read_text().splitlines()] if COST.exists() else []
    rows = [r for r in old if not (r["net"] in args.nets and r["method"] in methods)]
    for net in args.nets:
        model, _ = load_checkpoint(ensure(net))
        calib = subset(split_of(net, "train"), args.calib_images, 0)
        for method in methods:
            for budget in args.budgets:
                start, cpu = time.perf_counter(), time.process_time()
                trim_one(model.eval(), method, budget, calib, 0, args)
                rows.append({"net": net, "method": method, "budget": budget, "threads": args.threads,
                             "trim_seconds": round(time.perf_counter() - start, 2),
                             "trim_cpu_seconds": round(time.process_time() - cpu, 2)})
                print(f"{net} {method} {budget}: {rows[-1]['trim_cpu_seconds']} CPU-s", flush=True)
                COST.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_report(jsonl: Path, test_images: int | None, reference: str = "trimflow") -> None:
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    rows = [r for r in rows if "error" not in r]
    if reference != "trimflow":  # a file measured before the default changed: its former default stands in
        if any(r["method"] == "trimflow" for r in rows):
            raise SystemExit(f"--reference {reference}: {jsonl} has rows of the current default 'trimflow'")
        rows = [{**r, "method": "trimflow"} if r["method"] == reference else r for r in rows]
    floats = {}
    for net in dict.fromkeys(r["net"] for r in rows):
        model, _ = load_checkpoint(ensure(net))
        test = subset(split_of(net, "test"), test_images, 0)
        params, macs = count_params_macs(model, test.shape)
        floats[net] = {"accuracy": evaluate(model.eval(), test), "params": params, "macs": macs}
    # the command that remakes these tables from the rows, whichever run (a shard, --cost) wrote them last
    args_line = f"bench/trim_zoo.py --out {OUT.relative_to(ROOT)} --report-only"
    args_line += f" --reference {reference}" if reference != "trimflow" else ""
    text = markdown(rows, args_line, floats)
    if reference != "trimflow":
        text = text.replace("\n\n", f"\n\n**In this file `trimflow` stands for `{reference}`**, the default when "
                            "these rows were measured (see the commands file).\n\n", 1)
    OUT.with_suffix(".md").write_text(text)
    summ = summarise(rows)
    OUT.with_suffix(".json").write_text(json.dumps(
        {"floats": floats, "cells": [{"net": n, "budget": b, **{k: v for k, v in s.items()}}
                                     for (n, b), s in summ.items()]}, indent=1, default=str))
    plot(rows, OUT.with_suffix(".png"))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
