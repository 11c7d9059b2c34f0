"""Trim the least relevant kernels: choose keep sets with a policy, cut the modules, fold removed means into biases.

Works on any model flow.graph can trace: a channel group (a producer's kernels plus everything coupled to them)
keeps one set of indices, applied to every module that group touches. The classifier's logits and the image
channels are frozen groups and are never trimmed.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from flow import FlowError
from flow.artifacts import write_json
from flow.criteria import CRITERIA
from flow.data import ImageSet, make_loader, subset
from flow.graph import ChannelGraph, build_graph, count_params_macs, example_input
from flow.relevance import NORMALIZE, RelevanceScores, input_means, normalize

POLICIES = ("uniform", "global", "budget")
METRICS = ("macs", "params")


@dataclasses.dataclass(frozen=True)
class TrimConfig:
    criterion: str = "relevance"  # which scores the pipeline computes (flow.criteria.CRITERIA)
    policy: str = "uniform"  # uniform: same keep ratio per layer; global: one threshold; budget: hit a cost
    keep: float = 0.5  # uniform/global: fraction of kernels kept
    budget: float = 0.5  # budget: fraction of the original budget_metric kept
    budget_metric: str = "macs"  # macs | params
    min_keep: int = 1  # never fewer kernels in a layer (capped at the layer's width)
    round_to: int = 1  # kept counts rounded up to a multiple of this, so PE/SIMD folding divides them
    # How global/budget compare one layer's scores with another's. "rank" (percentiles) measured best on CNV for
    # consumer-weighted relevance at 50% and 25% MACs: "none", "l2" and "max" let a global threshold strip conv5 or
    # conv1 to a few kernels and lost 8-49 pt before fine-tuning (Taylor: rank best at 50%, "max" 2.5 pt better at
    # 25%). With "rank" every layer keeps about the same fraction (budget searches that fraction for the target).
    normalize: str = "rank"
    compensate: bool = True  # fold removed kernels' mean output into the consumer's bias
    recalibrate_bn: bool = False  # re-estimate BN running statistics on the calibration set afterwards
    calib_images: int = 2000  # images of the calibration set used for means / BN statistics
    batch_size: int = 250
    seed: int = 0

    def __post_init__(self):
        if self.criterion not in CRITERIA:
            raise FlowError(f"trim: criterion {self.criterion!r} unknown; use one of {', '.join(CRITERIA)}")
        if self.policy not in POLICIES:
            raise FlowError(f"trim: policy {self.policy!r} unknown; use one of {', '.join(POLICIES)}")
        if not 0.0 < self.keep <= 1.0:
            raise FlowError(f"trim: keep must be in (0, 1], got {self.keep}")
        if not 0.0 < self.budget <= 1.0:
            raise FlowError(f"trim: budget must be in (0, 1] (fraction of the original kept), got {self.budget}")
        if self.budget_metric not in METRICS:
            raise FlowError(f"trim: budget_metric {self.budget_metric!r} unknown; use one of {', '.join(METRICS)}")
        if self.min_keep < 1:
            raise FlowError(f"trim: min_keep must be >= 1 (a layer never loses every kernel), got {self.min_keep}")
        if self.round_to < 1:
            raise FlowError(f"trim: round_to must be >= 1, got {self.round_to}")
        if self.normalize not in NORMALIZE:
            raise FlowError(f"trim: normalize {self.normalize!r} unknown; use one of {', '.join(NORMALIZE)}")
        if self.calib_images < 1 or self.batch_size < 1:
            raise FlowError(f"trim: calib_images and batch_size must be >= 1, got {self.calib_images}, "
                            f"{self.batch_size}")


@dataclasses.dataclass
class TrimReport:
    criterion: str
    config: dict[str, Any]
    layers: list[dict[str, Any]]  # per channel group: name, producers, total, kept, kept_indices
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    compensated: list[str]  # layers whose bias (or following BN) absorbed removed kernels' means
    bn_recalibrated: bool

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


def choose_counts(graph: ChannelGraph, group_score: dict[int, torch.Tensor], cfg: TrimConfig,
                  fixed_params: int = 0) -> dict[int, int]:
    sizes = {gid: s.numel() for gid, s in group_score.items()}
    if cfg.policy == "uniform":
        return {gid: _clamp(math.ceil(cfg.keep * n - 1e-9), n, cfg) for gid, n in sizes.items()}
    ranked = _ranked(group_score)
    if cfg.policy == "global":
        return _counts_top(ranked, round(cfg.keep * len(ranked)), sizes, cfg)

    def fraction(counts):
        params, macs = graph.cost(counts)
        full_params, full_macs = graph.cost()
        if cfg.budget_metric == "macs":
            return macs / full_macs
        return (params + fixed_params) / (full_params + fixed_params)

    lo, hi = 0, len(ranked)  # largest m whose cost fits: cost grows with m
    smallest = fraction(_counts_top(ranked, 0, sizes, cfg))
    if smallest > cfg.budget + 1e-12:
        raise FlowError(f"trim: budget {cfg.budget} of the original {cfg.budget_metric} is below what "
                        f"min_keep={cfg.min_keep} and round_to={cfg.round_to} allow (at least {smallest:.4f}); "
                        "raise the budget or lower min_keep/round_to")
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


# --- cutting ------------------------------------------------------------------------------------------------------
def _param(t: torch.Tensor, like: nn.Parameter) -> nn.Parameter:
    return nn.Parameter(t.detach().clone(), requires_grad=like.requires_grad)


def remove_channels(model: nn.Module, graph: ChannelGraph, keep: dict[int, torch.Tensor]) -> nn.Module:
    """A new model in which every group g has only channels keep[g]; `model` is left untouched."""
    new = copy.deepcopy(model)
    for use in graph.uses.values():
        mod = new.get_submodule(use.name)
        full_in = graph.width(use.inputs, {})
        idx = graph.indices(use.inputs, keep)
        if use.kind == "bn":
            if idx.numel() == full_in:
                continue
            if mod.affine:
                mod.weight, mod.bias = _param(mod.weight[idx], mod.weight), _param(mod.bias[idx], mod.bias)
            if mod.track_running_stats:
                mod.running_mean, mod.running_var = mod.running_mean[idx].clone(), mod.running_var[idx].clone()
            mod.num_features = idx.numel()
            continue
        if use.kind == "depthwise":
            out_idx, in_idx = idx, None
        else:
            kept_out = keep.get(graph.find(use.out_group))
            out_idx = kept_out if kept_out is not None else None
            in_idx = idx if idx.numel() != full_in else None
        w = mod.weight
        if out_idx is not None:
            w = w[out_idx]
            if mod.bias is not None:
                mod.bias = _param(mod.bias[out_idx], mod.bias)
        if in_idx is not None:
            w = w[:, in_idx]
        if out_idx is None and in_idx is None:
            continue
        mod.weight = _param(w, mod.weight)
        if isinstance(mod, nn.Linear):
            mod.out_features, mod.in_features = w.shape[0], w.shape[1]
        else:
            groups = w.shape[0] if use.kind == "depthwise" else mod.groups
            mod.out_channels, mod.in_channels, mod.groups = w.shape[0], w.shape[1] * groups, groups
    try:
        with torch.no_grad():
            new.eval()(example_input(new, graph.input_shape))
    except Exception as e:  # a bug in the graph rules, not a user error — but say where it showed up
        raise FlowError(f"trimmed model does not run ({type(e).__name__}: {e}); the channel graph of "
                        f"{type(model).__name__} was not understood — please report this model") from None
    new.train(model.training)
    return new


def compensate(original: nn.Module, trimmed: nn.Module, graph: ChannelGraph, keep: dict[int, torch.Tensor],
               means: dict[str, list[float]]) -> list[str]:
    """Mean replacement: add each removed input channel's expected contribution to the consumer's bias.

    Linear consumers get the exact expectation (means are per flattened feature). Conv consumers use the channel's
    mean over the whole map times the sum of the kernel's taps: that ignores the zero padding at the borders (where
    fewer taps see the channel) and how the mean varies across the map, so it is exact only away from borders for
    a spatially constant mean. A conv without bias that feeds a BN shifts the BN's running mean instead, so the
    architecture (and checkpoint layout) stays the same; otherwise a bias is added.
    """
    changed = []
    for use in graph.uses.values():
        if use.kind not in ("conv", "linear"):
            continue
        full_in = graph.width(use.inputs, {})
        kept = graph.indices(use.inputs, keep)
        if kept.numel() == full_in:
            continue
        if use.name not in means or len(means[use.name]) != full_in:
            raise FlowError(f"compensation: no mean input for layer {use.name} ({full_in} values expected); "
                            "pass a calibration set, recompute the scores on this model, or set compensate=false")
        removed = torch.ones(full_in, dtype=torch.bool)
        removed[kept] = False
        w = original.get_submodule(use.name).weight.detach()
        mean = torch.tensor(means[use.name], dtype=torch.float64)
        per_in = w.double().flatten(2).sum(2) if w.ndim > 2 else w.double()
        delta = per_in[:, removed] @ mean[removed]
        kept_out = keep.get(graph.find(use.out_group))
        if kept_out is not None:
            delta = delta[kept_out]
        mod = trimmed.get_submodule(use.name)
        with torch.no_grad():
            if mod.bias is not None:
                mod.bias += delta.to(mod.bias.dtype)
            elif use.bn_after is not None and trimmed.get_submodule(use.bn_after).track_running_stats:
                bn = trimmed.get_submodule(use.bn_after)
                bn.running_mean -= delta.to(bn.running_mean.dtype)
            else:
                mod.bias = nn.Parameter(delta.to(mod.weight.dtype))
        changed.append(use.name)
    return changed


def recalibrate_bn(model: nn.Module, data: ImageSet, batch_size: int = 250) -> bool:
    """Re-estimate BN running statistics as exact averages over `data` (weights untouched)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return False
    momenta = [bn.momentum for bn in bns]
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average instead of an exponential one
        bn.train()
    dtype = next(model.parameters()).dtype
    try:
        with torch.no_grad():
            for x, _ in make_loader(data, batch_size):
                model(x.to(dtype))
    finally:
        for bn, m in zip(bns, momenta):
            bn.momentum = m
        model.eval()
    return True


def trim_model(model: nn.Module, scores: RelevanceScores, cfg: TrimConfig = TrimConfig(),
               calib: ImageSet | None = None) -> tuple[nn.Module, TrimReport]:
    """Remove kernels of `model` by `scores` under `cfg`; returns a new model (eval mode) and its report."""
    graph = build_graph(model, scores.input_shape if calib is None else calib.shape)
    if calib is not None and tuple(calib.shape) != tuple(scores.input_shape):
        raise FlowError(f"calibration set images are {calib.shape} but the scores were computed on "
                        f"{tuple(scores.input_shape)} images")
    fixed = graph.other_params(model)
    gscore = group_scores(graph, scores, cfg.normalize)
    if not gscore:
        raise FlowError(f"{type(model).__name__} has no trimmable layers (every channel group is frozen)")
    counts = choose_counts(graph, gscore, cfg, fixed)
    keep = keep_indices(gscore, counts)
    trimmed = remove_channels(model, graph, keep)
    calib_small = subset(calib, cfg.calib_images, cfg.seed) if calib is not None else None
    changed: list[str] = []
    if cfg.compensate:
        means = scores.input_means
        if not means and calib_small is not None:  # data-free criteria record no means
            means = input_means(model, calib_small, cfg.batch_size)
        changed = compensate(model, trimmed, graph, keep, means)
    recal = False
    if cfg.recalibrate_bn:
        if calib_small is None:
            raise FlowError("trim: recalibrate_bn=true needs a calibration set")
        recal = recalibrate_bn(trimmed, calib_small, cfg.batch_size)
    trimmed.eval()
    p0, m0 = count_params_macs(model, graph.input_shape)
    p1, m1 = count_params_macs(trimmed, graph.input_shape)
    layers = [{"name": g.name, "producers": g.producers, "total": g.size, "kept": int(keep[g.id].numel()),
               "kept_indices": keep[g.id].tolist()} for g in graph.prunable()]
    report = TrimReport(scores.criterion, dataclasses.asdict(cfg), layers, p0, p1, m0, m1, changed, recal)
    return trimmed, report


def iterative_trim(model: nn.Module, score_fn: Callable[[nn.Module], RelevanceScores], cfg: TrimConfig,
                   calib: ImageSet, train_set: ImageSet | None = None, finetune: Any = None, steps: int = 2,
                   teacher: nn.Module | None = None) -> tuple[nn.Module, list[TrimReport]]:
    """Reach cfg's budget in `steps` trims, rescoring and fine-tuning the shrunken net between them.

    Each step keeps the same fraction of what the previous one left (budget ** (1/steps) of the current MACs or
    params), so the last step lands on cfg.budget of the original. Scores are recomputed on the current net:
    after a fine-tune the survivors have taken over part of the removed kernels' work, which a one-shot score
    cannot see. `finetune` (a flow.train.TrainConfig) is split evenly over the steps, so iterative and one-shot
    trimming cost the same training time; with no train_set/finetune the steps only rescore. Only the budget
    policy composes this way (uniform/global keep fractions of the current net would compound the same).
    """
    from flow.train import train  # train imports nothing from here, but keep trim importable without it

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
