"""Cutting kernels out of a model and making up for them: the modules lose the removed channels (remove_channels),
the consumers get the removed inputs' mean (compensate) or are refitted by least squares (trimflow.reconstruct),
and BN statistics can be re-estimated (recalibrate_bn). trimflow.trim decides what to keep; this module only cuts.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
from torch import nn

from trimflow import FlowError
from trimflow.data import ImageSet, make_loader
from trimflow.graph import ChannelGraph, example_input
from trimflow.reconstruct import reconstruct
from trimflow.staged import Prefix
from trimflow.trim_config import TrimConfig


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
                            "pass a calibration set, recompute the scores on this model, or set compensation=none")
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


def compensate_trimmed(original: nn.Module, trimmed: nn.Module, graph: ChannelGraph, keep: dict[int, torch.Tensor],
                       cfg: TrimConfig, means: dict[str, list[float]] | None, calib: ImageSet | None,
                       layers: list[str] | None = None, batch_size: int | None = None,
                       targets_cache: dict[str, list] | None = None, prefix: Prefix | None = None) -> dict[str, Any]:
    """Make up for the removed kernels as cfg.compensation says, then re-estimate BN statistics if asked.

    Reconstruction comes before the BN re-estimation: it refits each layer to the untrimmed net's output under the
    untrimmed BN statistics, and the re-estimation then only corrects what the refit could not reproduce. Returns
    what was done: the compensated layers (mean), the per-layer refit records (reconstruct), whether BN was
    re-estimated. `layers` limits the refit to these layers, `prefix` (the untrimmed net's staged pass over `calib`)
    lets it start where `trimmed` first differs (sensitivity probes).
    """
    done: dict[str, Any] = {"compensated": [], "reconstruction": [], "bn_recalibrated": False}
    if cfg.compensation == "mean":
        done["compensated"] = compensate(original, trimmed, graph, keep, means or {})  # names a missing layer
    elif cfg.compensation == "reconstruct":
        if calib is None:
            raise FlowError("trim: compensation=reconstruct needs a calibration set (representative images)")
        rcfg = cfg.reconstruct if batch_size is None else dataclasses.replace(cfg.reconstruct, batch_size=batch_size)
        done["reconstruction"] = reconstruct(original, trimmed, graph, keep, calib, rcfg, layers, targets_cache,
                                             prefix)
        done["compensated"] = [r["layer"] for r in done["reconstruction"] if "skipped" not in r]
    if cfg.recalibrate_bn:
        if calib is None:
            raise FlowError("trim: recalibrate_bn=true needs a calibration set")
        done["bn_recalibrated"] = recalibrate_bn(trimmed, calib, batch_size or cfg.batch_size)
    return done


def _forward_all(model: nn.Module, data: ImageSet, batch_size: int) -> None:
    """Run every image of `data` through `model` (in the mode it is in) for what its hooks or BN layers record."""
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        for x, _ in make_loader(data, batch_size):
            model(x.to(dtype))


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
    try:
        _forward_all(model, data, batch_size)
    finally:
        for bn, m in zip(bns, momenta):
            bn.momentum = m
        model.eval()
    return True


def sync_bn_statistics(model: nn.Module, data: ImageSet, batch_size: int = 250) -> list[str]:
    """Give every BN the statistics its input really has, moving the difference into its affine parameters.

    After a refit the BN running statistics no longer describe the BN's input: the refit matches the untrimmed
    net's pre-activations in eval mode, and shifts it absorbed went into running_mean. A fine-tune runs BN in train
    mode, normalising by the batch's own statistics, so its first step would see another function than the refitted
    one. With gamma' = gamma * s_new / s_old and beta' = beta + gamma * (m_new - m_old) / s_old (s = sqrt(var +
    eps)) and the running statistics set to the measured ones, eval mode computes exactly what it did, and train
    mode the same up to batch noise. Statistics are measured in eval mode, where every BN already computes the
    intended function. Returns the BNs changed (those with running statistics and affine parameters).
    """
    bns = {name: m for name, m in model.named_modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.affine}
    if not bns:
        return []
    sums: dict[str, list] = {}

    def hook(name):
        def pre(module, args):
            x = args[0].detach().double()
            x = x.transpose(0, 1).reshape(x.shape[1], -1)  # (C, everything else)
            s = sums.setdefault(name, [0, torch.zeros(x.shape[0], dtype=torch.float64),
                                       torch.zeros(x.shape[0], dtype=torch.float64)])
            s[0] += x.shape[1]
            s[1] += x.sum(1)
            s[2] += x.square().sum(1)
        return pre

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in bns.items()]
    was_training = model.training
    model.eval()
    try:
        _forward_all(model, data, batch_size)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    with torch.no_grad():
        for name, bn in bns.items():
            n, s1, s2 = sums[name]
            mean = s1 / n
            var = (s2 / n - mean.square()).clamp_min(0.0) * n / max(n - 1, 1)  # unbiased, as BN keeps it
            s_old = (bn.running_var.double() + bn.eps).sqrt()
            s_new = (var + bn.eps).sqrt()
            gamma = bn.weight.detach().double()
            bn.bias += (gamma * (mean - bn.running_mean.double()) / s_old).to(bn.bias.dtype)
            bn.weight.copy_((gamma * s_new / s_old).to(bn.weight.dtype))
            bn.running_mean.copy_(mean.to(bn.running_mean.dtype))
            bn.running_var.copy_(var.to(bn.running_var.dtype))
    return list(bns)
