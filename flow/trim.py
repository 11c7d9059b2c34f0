"""Trim the least relevant kernels: choose keep sets with a policy, cut the modules, fold removed means into biases.

Works on any model trimflow.graph can trace: a channel group (a producer's kernels plus everything coupled to them)
keeps one set of indices, applied to every module that group touches. The classifier's logits and the image
channels are frozen groups and are never trimmed.

Under the budget policy, how many kernels each group loses is set by `allocation`: "rank" compares the groups'
normalised scores with one threshold; "sensitivity" trims each group alone to a few widths (least relevant kernels
first, compensated and BN-recalibrated like the real trim), measures the loss increase on a slice of the
calibration set and removes kernels greedily where the predicted increase per MAC (or parameter) saved is smallest
(measure_sensitivity / allocate_by_sensitivity). Within a group the least relevant kernels always go. The cutting
and the compensation live in trimflow.cut (re-exported here).
"""

from __future__ import annotations

import bisect
import copy
import dataclasses
import hashlib
import math
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm import tqdm

from trimflow import FlowError
from trimflow.artifacts import digest, read_json, write_json
from trimflow.cut import (compensate, compensate_trimmed, recalibrate_bn, remove_channels,  # noqa: F401 (re-exported)
                          sync_bn_statistics)
from trimflow.data import ImageSet, make_loader, subset
from trimflow.graph import ChannelGraph, build_graph, count_params_macs
from trimflow.relevance import RelevanceScores, input_means, normalize
from trimflow.staged import StagedForward

# the configs live apart from the torch code, so that loading a flow config does not import torch
from trimflow.trim_config import (ALLOCATIONS, COMPENSATIONS, GUARDS, METRICS, POLICIES,  # noqa: E402,F401
                                  SENSITIVITY_METRICS, SensitivityConfig, TrimConfig)


@dataclasses.dataclass
class TrimReport:
    criterion: str
    config: dict[str, Any]
    layers: list[dict[str, Any]]  # per channel group: name, producers, total, kept, kept_indices
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    compensated: list[str]  # layers changed by the compensation (mean folded into a bias, or refitted)
    bn_recalibrated: bool
    sensitivity: dict[str, Any] | None = None  # allocation="sensitivity": the measured table (measure_sensitivity)
    reconstruction: list[dict[str, Any]] | None = None  # compensation="reconstruct": one record per refitted layer
    # allocation="sensitivity" with guard="rank": which allocation was used and the KL divergences that decided it
    allocation_check: dict[str, Any] | None = None
    bn_synced: list[str] | None = None  # sync_bn: the BNs given their input's statistics (trimflow.cut)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_json())


# --- choosing what to keep ------------------------------------------------------------------------------------------
def group_scores(graph: ChannelGraph, scores: RelevanceScores, how: str) -> dict[int, torch.Tensor]:
    """One score per channel of each trimmable group; producers coupled by an add sum their normalised scores."""
    out = {}
    for g in graph.prunable():
        total = torch.zeros(g.size, dtype=torch.float64)
        for p in g.producers:
            if p not in scores.layers:
                raise FlowError(f"scores ({scores.criterion}) have no entry for layer {p}; they were computed on "
                                "another model — recompute them for this checkpoint")
            s = scores.tensor(p)
            if s.numel() != g.size:
                raise FlowError(f"scores ({scores.criterion}) for layer {p} have {s.numel()} entries but the layer "
                                f"has {g.size} kernels; recompute them for this checkpoint")
            if not torch.isfinite(s).all():
                raise FlowError(f"scores ({scores.criterion}) for layer {p} contain NaN/Inf")
            total += normalize(s, how)
        out[g.id] = total
    return out


def _clamp(n: int, size: int, cfg: TrimConfig) -> int:
    k = max(n, min(cfg.min_keep, size), 1)
    return min(size, math.ceil(k / cfg.round_to) * cfg.round_to)


def _ranked(group_score: dict[int, torch.Tensor]) -> list[int]:
    """Group id of every channel, most relevant first (ties: stable order)."""
    ids = torch.cat([torch.full((s.numel(),), gid) for gid, s in group_score.items()])
    order = torch.argsort(torch.cat(list(group_score.values())), descending=True, stable=True)
    return ids[order].tolist()


def _counts_top(ranked: list[int], m: int, sizes: dict[int, int], cfg: TrimConfig) -> dict[int, int]:
    counts = dict.fromkeys(sizes, 0)
    for gid in ranked[:m]:
        counts[gid] += 1
    return {gid: _clamp(n, sizes[gid], cfg) for gid, n in counts.items()}


def _budget_fraction(graph: ChannelGraph, cfg: TrimConfig, fixed_params: int) -> Callable[[dict[int, int]], float]:
    """Fraction of the original budget_metric that keeping counts[g] kernels per group leaves."""
    full_params, full_macs = graph.cost()

    def fraction(counts: dict[int, int]) -> float:
        params, macs = graph.cost(counts)
        if cfg.budget_metric == "macs":
            return macs / full_macs
        return (params + fixed_params) / (full_params + fixed_params)
    return fraction


def _check_floor(graph: ChannelGraph, smallest: float, cfg: TrimConfig) -> None:
    if smallest > cfg.budget + 1e-12:
        # the layers kept whole are what a user can change (a grouped conv), so they are named; the image channels
        # and the logits are kept whole in every net
        whole = sorted({g.frozen for g in graph.groups if g.frozen and g.frozen not in ("model input", "model output")})
        raise FlowError(f"trim: budget {cfg.budget} of the original {cfg.budget_metric} is below what "
                        f"min_keep={cfg.min_keep} and round_to={cfg.round_to} allow (at least {smallest:.4f}); "
                        "raise the budget or lower min_keep/round_to"
                        + (f"; kept whole: {'; '.join(whole)}" if whole else ""))


def choose_counts(graph: ChannelGraph, group_score: dict[int, torch.Tensor], cfg: TrimConfig,
                  fixed_params: int = 0) -> dict[int, int]:
    sizes = {gid: s.numel() for gid, s in group_score.items()}
    if cfg.policy == "uniform":
        return {gid: _clamp(math.ceil(cfg.keep * n - 1e-9), n, cfg) for gid, n in sizes.items()}
    ranked = _ranked(group_score)
    if cfg.policy == "global":
        return _counts_top(ranked, round(cfg.keep * len(ranked)), sizes, cfg)
    fraction = _budget_fraction(graph, cfg, fixed_params)
    _check_floor(graph, fraction(_counts_top(ranked, 0, sizes, cfg)), cfg)
    lo, hi = 0, len(ranked)  # largest m whose cost fits: cost grows with m
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fraction(_counts_top(ranked, mid, sizes, cfg)) <= cfg.budget + 1e-12:
            lo = mid
        else:
            hi = mid - 1
    return _counts_top(ranked, lo, sizes, cfg)


def keep_indices(group_score: dict[int, torch.Tensor], counts: dict[int, int]) -> dict[int, torch.Tensor]:
    out = {}
    for gid, s in group_score.items():
        top = torch.argsort(s, descending=True, stable=True)[:counts[gid]]
        out[gid] = torch.sort(top).values
    return out


# --- allocation by measured sensitivity -------------------------------------------------------------------------------
def _logits(model: nn.Module, data: ImageSet, batch_size: int) -> torch.Tensor:
    dtype = next(model.parameters()).dtype
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x.to(dtype)).double() for x, _ in make_loader(data, batch_size)])


def _measures(logits: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor) -> tuple[float, float, float]:
    """Mean cross-entropy, top-1 accuracy and mean KL(reference || model) of one set of logits."""
    loss = float(nn.functional.cross_entropy(logits, labels))
    acc = float((logits.argmax(1) == labels).double().mean())
    kl = float(nn.functional.kl_div(logits.log_softmax(1), reference.log_softmax(1), log_target=True,
                                    reduction="batchmean"))
    return loss, acc, kl


def _split(calib: ImageSet, n: int, seed: int) -> tuple[ImageSet, ImageSet]:
    """A seeded slice of n images to measure on and, where there are enough, n others to re-estimate BN on."""
    perm = torch.randperm(len(calib), generator=torch.Generator().manual_seed(seed + 7919))
    n = min(n, len(calib))
    measure = perm[:n]
    recal = perm[n:2 * n] if len(calib) >= 2 * n else measure

    def take(idx):
        return ImageSet(calib.name, calib.images[idx], calib.labels[idx], calib.classes)
    return take(measure), take(recal)


def probe_counts(size: int, cfg: TrimConfig) -> list[int]:
    """Kernel counts a group of `size` kernels is trimmed to alone (descending, the full width first)."""
    counts = {_clamp(math.ceil(r * size - 1e-9), size, cfg) for r in cfg.sensitivity.keep_ratios}
    counts.add(_clamp(0, size, cfg))  # the fewest the guard allows: every allocatable count is bracketed
    return [size] + sorted((c for c in counts if c < size), reverse=True)


def measure_sensitivity(model: nn.Module, scores: RelevanceScores, calib: ImageSet, cfg: TrimConfig,
                        means: dict[str, list[float]] | None = None, progress: bool = True) -> dict[str, Any]:
    """Trim each channel group alone to its probe_counts and measure the loss (and accuracy) on a calibration slice.

    Every probe removes the group's least relevant kernels (by `scores`, as the real trim does) and compensates
    like the real trim (`compensate_trimmed`; reconstruction refits only the layers that read the probed group),
    so the drop is the one the flow's trim would see for that group. Forward passes only. Per group the table
    holds the probed counts (full width first), loss, accuracy and KL divergence from the untrimmed net at each,
    and `drop`: the increase of cfg.sensitivity.metric over the untrimmed net made monotone (a narrower group never
    counts as better than a wider one) and never negative. With metric="kl" no label is read.
    """
    scfg = cfg.sensitivity
    # The probes refit with the configured ridge, not a searched one: a search per probe would multiply the cost
    # (each group is probed at several widths), and the full trim searches anyway
    cfg = dataclasses.replace(cfg, reconstruct=dataclasses.replace(cfg.reconstruct, ridge_search=()))
    if len(calib) == 0:
        raise FlowError("trim: allocation='sensitivity' got an empty calibration set")
    graph = build_graph(model, calib.shape)
    gscore = group_scores(graph, scores, cfg.normalize)
    if cfg.compensation == "mean" and not means:
        means = scores.input_means or input_means(model, calib, cfg.batch_size)
    measure, recal = _split(calib, scfg.images, cfg.seed)
    reference = _logits(model, measure, scfg.batch_size)
    base = copy.deepcopy(model).eval()
    if cfg.recalibrate_bn:
        recalibrate_bn(base, recal, scfg.batch_size)
    base_loss, base_acc, base_kl = _measures(_logits(base, measure, scfg.batch_size), measure.labels, reference)
    groups = graph.prunable()
    plan = [(g, probe_counts(g.size, cfg)) for g in groups]
    # Without BN re-estimation a probe computes what the untrimmed net does up to the probed group's producers:
    # the untrimmed passes over both slices are staged and each probe resumes from them (refit and logits)
    dtype = next(model.parameters()).dtype
    staged = None if cfg.recalibrate_bn else tuple(
        StagedForward(model.eval(), [x.to(dtype) for x, _ in make_loader(part, scfg.batch_size)],
                      memory_mb=cfg.reconstruct.activation_mb / 2)  # the two slices share the bound
        for part in (measure, recal))
    bar = tqdm(total=sum(len(c) - 1 for _, c in plan), desc="sensitivity", leave=False, dynamic_ncols=True,
               disable=not progress)
    table: dict[str, Any] = {}
    try:
        for g, counts in plan:
            losses, accs, kls = [base_loss], [base_acc], [base_kl]
            order = torch.argsort(gscore[g.id], descending=True, stable=True)
            readers = [u.name for u in graph.uses.values() if u.kind in ("conv", "linear")
                       and any(graph.find(seg.group) == g.id for seg in u.inputs)]
            targets: dict[str, list] = {}  # the readers' untrimmed outputs: the same for every probe of the group
            at_measure, at_recal = (None, None) if staged is None else (s.prefix_before(g.producers) for s in staged)
            for k in counts[1:]:
                keep = {g.id: torch.sort(order[:k]).values}
                probe = remove_channels(model, graph, keep)
                compensate_trimmed(model, probe, graph, keep, cfg, means, recal, readers, scfg.batch_size, targets,
                                   at_recal)
                if at_measure is None:
                    logits = _logits(probe, measure, scfg.batch_size)
                else:
                    logits = torch.cat([y.double() for y in StagedForward(
                        probe.eval(), prefix=at_measure, memory_mb=cfg.reconstruct.activation_mb / 2).outputs()])
                loss, acc, kl = _measures(logits, measure.labels, reference)
                if not (math.isfinite(loss) and math.isfinite(kl)):
                    raise FlowError(f"trim: layer {g.name} trimmed to {k} kernels gives a NaN/Inf loss on the "
                                    "calibration set; check the checkpoint and the calibration images")
                losses.append(loss)
                accs.append(acc)
                kls.append(kl)
                bar.update()
            raw = {"loss": [v - base_loss for v in losses], "kl": [v - base_kl for v in kls],
                   "accuracy": [base_acc - a for a in accs]}[scfg.metric]
            drop, worst = [], 0.0
            for v in raw:
                worst = max(worst, v)
                drop.append(worst)
            table[g.name] = {"size": g.size, "counts": counts, "loss": losses, "accuracy": accs, "kl": kls,
                             "drop": drop}
    finally:
        bar.close()
    return {"metric": scfg.metric, "images": len(measure), "base_loss": base_loss, "base_accuracy": base_acc,
            "groups": table}


def sensitivity_key(model: nn.Module, scores: RelevanceScores, cfg: TrimConfig) -> str:
    """What a sensitivity table depends on: the model, its scores and the settings that shape the probes.

    Not the budget (nor budget_metric, policy, keep): one table serves every budget and the hardware-aware search.
    Nor the guard: it acts after the table, on the allocation.
    """
    measured = {f: getattr(cfg, f) for f in ("criterion", "normalize", "min_keep", "round_to", "compensation",
                                             "reconstruct", "recalibrate_bn", "calib_images", "batch_size", "seed")}
    measured["sensitivity"] = {k: v for k, v in dataclasses.asdict(cfg.sensitivity).items() if k != "guard"}
    weights = hashlib.sha256()
    for name, t in model.state_dict().items():
        weights.update(name.encode())
        weights.update(t.detach().contiguous().cpu().numpy().tobytes())
    return digest(measured, dataclasses.asdict(scores), weights.hexdigest())


def cached_sensitivity(cache_dir: Path, model: nn.Module, scores: RelevanceScores, calib: ImageSet,
                       cfg: TrimConfig, progress: bool = True) -> tuple[dict[str, Any], bool]:
    """The sensitivity table from `cache_dir` when it was measured for this model, scores and settings, else
    measured now and stored there (its own JSON artifact, written atomically). Returns (table, was_cached)."""
    path = Path(cache_dir) / f"sensitivity-{sensitivity_key(model, scores, cfg)[:16]}.json"
    if path.exists():
        return read_json(path), True
    means = scores.input_means or None
    table = measure_sensitivity(model, scores, calib, cfg, means, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, table)
    return table, False


def allocate_by_sensitivity(graph: ChannelGraph, sensitivity: dict[str, Any], cfg: TrimConfig,
                            fixed_params: int = 0) -> dict[int, int]:
    """Kept kernels per group: greedily remove round_to kernels where the predicted drop per cost saved is least.

    The predicted drop of a group at any count is the measured one interpolated linearly between probed counts;
    drops of different groups add up. Steps go down in multiples of round_to, never below min_keep (rounded up),
    until cfg.budget of the budget_metric is met; kernels are then given back wherever they still fit, the most
    drop recovered per cost first, so the result lands as close under the budget as the step size allows.
    """
    groups = {g.id: g for g in graph.prunable()}
    curves: dict[int, tuple[list[int], list[float]]] = {}
    for gid, g in groups.items():
        entry = sensitivity.get("groups", {}).get(g.name)
        if entry is None or entry.get("size") != g.size:
            raise FlowError(f"sensitivity table has no entry for layer {g.name} ({g.size} kernels); it was "
                            "measured on another model — measure it on this one")
        counts, drop = list(entry["counts"]), list(entry["drop"])
        if len(counts) != len(drop) or counts[0] != g.size or not all(math.isfinite(d) for d in drop):
            raise FlowError(f"sensitivity table entry for layer {g.name} is malformed (counts {counts}, "
                            f"drops {drop})")
        pairs = sorted(zip(counts, drop))
        curves[gid] = ([c for c, _ in pairs], [d for _, d in pairs])

    def predicted(gid: int, k: int) -> float:
        xs, ys = curves[gid]
        if k <= xs[0]:
            return ys[0]
        if k >= xs[-1]:
            return ys[-1]
        i = bisect.bisect_right(xs, k) - 1
        if xs[i] == k:
            return ys[i]
        t = (k - xs[i]) / (xs[i + 1] - xs[i])
        return ys[i] + t * (ys[i + 1] - ys[i])

    r = cfg.round_to
    floor = {gid: _clamp(0, g.size, cfg) for gid, g in groups.items()}
    fraction = _budget_fraction(graph, cfg, fixed_params)
    _check_floor(graph, fraction(floor), cfg)
    counts = {gid: g.size for gid, g in groups.items()}
    now = fraction(counts)
    limit = cfg.budget + 1e-12
    while now > limit:
        best = None
        for gid in sorted(counts):
            k = counts[gid]
            nk = k - r if k % r == 0 else (k // r) * r
            if nk < floor[gid]:
                continue
            f = fraction({**counts, gid: nk})
            saved = now - f
            if saved <= 0:
                continue
            key = ((predicted(gid, nk) - predicted(gid, k)) / saved, -saved, gid)
            if best is None or key < best[0]:
                best = (key, gid, nk, f)
        if best is None:  # cannot happen after the floor check, but never loop forever
            raise FlowError(f"trim: no kernel can be removed any more and {now:.4f} of the {cfg.budget_metric} "
                            f"is still above the budget {cfg.budget}")
        _, gid, counts[gid], now = best
    while True:
        best = None
        for gid in sorted(counts):
            k = counts[gid]
            if k >= groups[gid].size:
                continue
            nk = min(groups[gid].size, (k // r + 1) * r)
            f = fraction({**counts, gid: nk})
            if f > limit:
                continue
            added = max(f - now, 1e-15)
            key = (-(predicted(gid, k) - predicted(gid, nk)) / added, added, gid)
            if best is None or key < best[0]:
                best = (key, gid, nk, f)
        if best is None:
            return counts
        _, gid, counts[gid], now = best


def trim_model(model: nn.Module, scores: RelevanceScores, cfg: TrimConfig = TrimConfig(),
               calib: ImageSet | None = None, sensitivity: dict[str, Any] | None = None,
               progress: bool = True) -> tuple[nn.Module, TrimReport]:
    """Remove kernels of `model` by `scores` under `cfg`; returns a new model (eval mode) and its report.

    allocation="sensitivity" measures the table on `calib` (measure_sensitivity) unless `sensitivity` passes one
    already measured on this model with the same config (e.g. to trim to several budgets).
    """
    graph = build_graph(model, scores.input_shape if calib is None else calib.shape)
    if calib is not None and tuple(calib.shape) != tuple(scores.input_shape):
        raise FlowError(f"calibration set images are {calib.shape} but the scores were computed on "
                        f"{tuple(scores.input_shape)} images")
    fixed = graph.other_params(model)
    gscore = group_scores(graph, scores, cfg.normalize)
    if not gscore:
        raise FlowError(f"{type(model).__name__} has no trimmable layers (every channel group is frozen)")
    calib_small = subset(calib, cfg.calib_images, cfg.seed) if calib is not None else None
    means = scores.input_means
    if cfg.compensation == "mean" and not means and calib_small is not None:  # data-free criteria record none
        means = input_means(model, calib_small, cfg.batch_size)
    check = None
    if cfg.allocation == "sensitivity":
        # an unreachable budget fails before the measurement, not after it
        floor = {g.id: _clamp(0, g.size, cfg) for g in graph.prunable()}
        _check_floor(graph, _budget_fraction(graph, cfg, fixed)(floor), cfg)
        if sensitivity is None:
            if calib_small is None:
                raise FlowError("trim: allocation='sensitivity' needs a calibration set to measure the layers' "
                                "sensitivity on")
            sensitivity = measure_sensitivity(model, scores, calib_small, cfg, means, progress)
        counts = allocate_by_sensitivity(graph, sensitivity, cfg, fixed)
    else:
        counts = choose_counts(graph, gscore, cfg, fixed)
    keep, trimmed, done = _cut(model, graph, gscore, counts, cfg, means, calib_small)
    if cfg.allocation == "sensitivity" and cfg.sensitivity.guard == "rank":
        rank_counts = choose_counts(graph, gscore, cfg, fixed)
        check = {"metric": "kl", "used": "sensitivity", "same_as_rank": rank_counts == counts}
        if calib_small is None:  # a table passed in without images: nothing to compare on, and the report says so
            check["unchecked"] = "no calibration images"
        elif rank_counts != counts:
            alt = _cut(model, graph, gscore, rank_counts, cfg, means, calib_small)
            kl = _divergences(model, {"sensitivity": trimmed, "rank": alt[1]}, calib_small, cfg)
            check.update(images=kl.pop("images"), kl=kl)
            if kl["rank"] < kl["sensitivity"]:
                check["used"] = "rank"
                keep, trimmed, done = alt
    synced = None
    if cfg.sync_bn and cfg.compensation != "none" and calib_small is not None:
        synced = sync_bn_statistics(trimmed, calib_small, cfg.batch_size)
    p0, m0 = count_params_macs(model, graph.input_shape)
    p1, m1 = count_params_macs(trimmed, graph.input_shape)
    layers = [{"name": g.name, "producers": g.producers, "total": g.size, "kept": int(keep[g.id].numel()),
               "kept_indices": keep[g.id].tolist()} for g in graph.prunable()]
    report = TrimReport(scores.criterion, dataclasses.asdict(cfg), layers, p0, p1, m0, m1, done["compensated"],
                        done["bn_recalibrated"], sensitivity if cfg.allocation == "sensitivity" else None,
                        done["reconstruction"] or None, check, synced)
    return trimmed, report


def _cut(model: nn.Module, graph: ChannelGraph, gscore: dict[int, torch.Tensor], counts: dict[int, int],
         cfg: TrimConfig, means: dict[str, list[float]] | None, calib: ImageSet | None):
    """Keep counts[g] most relevant kernels per group, cut them out and compensate: (keep, trimmed, what was done)."""
    keep = keep_indices(gscore, counts)
    trimmed = remove_channels(model, graph, keep)
    done = compensate_trimmed(model, trimmed, graph, keep, cfg, means, calib)
    return keep, trimmed.eval(), done


def _divergences(model: nn.Module, candidates: dict[str, nn.Module], calib: ImageSet,
                 cfg: TrimConfig) -> dict[str, Any]:
    """Mean KL divergence of each candidate's outputs from the untrimmed net's, on the sensitivity measure images."""
    measure, _ = _split(calib, cfg.sensitivity.images, cfg.seed)
    bs = cfg.sensitivity.batch_size
    reference = _logits(model, measure, bs)
    out: dict[str, Any] = {name: _measures(_logits(m, measure, bs), measure.labels, reference)[2]
                           for name, m in candidates.items()}
    return {**out, "images": len(measure)}


def iterative_trim(model: nn.Module, score_fn: Callable[[nn.Module], RelevanceScores], cfg: TrimConfig,
                   calib: ImageSet, train_set: ImageSet | None = None, finetune: Any = None, steps: int = 2,
                   teacher: nn.Module | None = None) -> tuple[nn.Module, list[TrimReport]]:
    """Reach cfg's budget in `steps` trims, rescoring and fine-tuning the shrunken net between them.

    Each step keeps the same fraction of what the previous one left (budget ** (1/steps) of the current MACs or
    params), so the last step lands on cfg.budget of the original. Scores are recomputed on the current net:
    after a fine-tune the survivors have taken over part of the removed kernels' work, which a one-shot score
    cannot see. `finetune` (a trimflow.train.TrainConfig) is split evenly over the steps, so iterative and one-shot
    trimming cost the same training time; with no train_set/finetune the steps only rescore. Only the budget
    policy composes this way (uniform/global keep fractions of the current net would compound the same).
    """
    from trimflow.train import train  # train imports nothing from here, but keep trim importable without it

    if steps < 1:
        raise FlowError(f"trim: steps must be >= 1, got {steps}")
    if cfg.policy != "budget" and steps > 1:
        raise FlowError("trim: iterative trimming (steps > 1) needs policy='budget'")
    if (train_set is None) != (finetune is None):
        raise FlowError("iterative_trim: pass both train_set and finetune, or neither")
    graph = build_graph(model, calib.shape)
    p0, m0 = count_params_macs(model, graph.input_shape)
    full = m0 if cfg.budget_metric == "macs" else p0
    current, reports = model, []
    step_cfg = finetune and dataclasses.replace(finetune, epochs=finetune.epochs / steps)
    for i in range(1, steps + 1):
        p, m = count_params_macs(current, graph.input_shape)
        now = (m if cfg.budget_metric == "macs" else p) / full
        target = cfg.budget ** (i / steps)
        # The rounding to round_to and the cost search leave each step a little under its target; ask the next
        # step for its share of the original so the error does not compound.
        step = dataclasses.replace(cfg, budget=min(1.0, target / now))
        current, report = trim_model(current, score_fn(current), step, calib)
        reports.append(report)
        if step_cfg is not None:
            train(current, train_set, dataclasses.replace(step_cfg, seed=step_cfg.seed + i), teacher=teacher,
                  desc=f"trim step {i}/{steps}", progress=False)
            current.eval()
    return current, reports
