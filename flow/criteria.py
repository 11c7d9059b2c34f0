"""Baseline kernel-importance criteria, scored into the same RelevanceScores structure as relevance.

Every criterion scores the producers of the trimmable channel groups of the traced model, so the trim policies
can take any of them: weight norms (L1, L2), BN scale |gamma|, first-order Taylor (|activation x gradient|),
APoZ, random, and our relevance statistic.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from tqdm import tqdm

from trimflow import FlowError
from trimflow.data import ImageSet, make_loader, subset
from trimflow.graph import ChannelGraph, build_graph
from trimflow.relevance import RelevanceConfig, RelevanceScores, check_input, compute_relevance, normalize

from trimflow.relevance_config import CRITERIA  # noqa: E402  (torch-free, for the trim config)


def _producers(graph: ChannelGraph) -> list[str]:
    return [p for g in graph.prunable() for p in g.producers]


def _weight_norm(model: nn.Module, graph: ChannelGraph, p: float) -> dict[str, torch.Tensor]:
    return {name: model.get_submodule(name).weight.detach().flatten(1).norm(p=p, dim=1).double()
            for name in _producers(graph)}


def _bn_gamma(model: nn.Module, graph: ChannelGraph) -> dict[str, torch.Tensor]:
    out = {}
    for name in _producers(graph):
        bn = graph.uses[name].bn_after
        if bn is None or model.get_submodule(bn).weight is None:
            raise FlowError(f"criterion bn_gamma: layer {name} is not directly followed by an affine BatchNorm; "
                            "use l1, l2 or relevance for this model")
        out[name] = model.get_submodule(bn).weight.detach().abs().double()
    return out


def _taylor(model: nn.Module, data: ImageSet, graph: ChannelGraph, cfg: RelevanceConfig) -> dict[str, torch.Tensor]:
    """Molchanov et al.'s first-order Taylor: mean over images of |sum over positions of activation x gradient|.

    Read on the module output the relevance tap names (the activation module, or the BN/conv output when the
    activation is functional), in eval mode so BN statistics stay untouched.
    """
    producers = _producers(graph)
    taps = {p: graph.post_taps[p] if cfg.where != "pre_act" else graph.pre_taps[p] for p in producers}
    sums = {p: torch.zeros(graph.group(graph.uses[p].out_group).size, dtype=torch.float64) for p in producers}
    seen = 0

    def hook(names):
        def fwd(module, args, out):
            if not out.requires_grad:
                return

            def grad_hook(grad, out=out.detach()):
                contrib = (out * grad)
                contrib = contrib.flatten(2).sum(2) if contrib.ndim > 2 else contrib
                for n in names:
                    sums[n] += contrib.abs().sum(0, dtype=torch.float64)
            out.register_hook(grad_hook)
        return fwd

    by_module: dict[str, list[str]] = {}
    for p, t in taps.items():
        by_module.setdefault(t.module, []).append(p)
    handles = [model.get_submodule(m).register_forward_hook(hook(ns)) for m, ns in by_module.items()]
    dtype = next(model.parameters()).dtype
    was_training = model.training
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    try:
        for x, y in tqdm(make_loader(data, cfg.batch_size), desc="taylor", leave=False, dynamic_ncols=True):
            model.zero_grad(set_to_none=True)
            loss_fn(model(x.to(dtype)), y).backward()
            seen += len(y)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        for h in handles:
            h.remove()
    for name, s in sums.items():
        if not torch.isfinite(s).all():
            raise FlowError(f"criterion taylor: layer {name} has NaN/Inf activation x gradient on {data.name!r}")
    return {p: s / seen for p, s in sums.items()}


def score(model: nn.Module, data: ImageSet, criterion: str,
          cfg: RelevanceConfig = RelevanceConfig()) -> RelevanceScores:
    """Score every trimmable kernel with `criterion`; data-driven criteria use `cfg.images` images of `data`.

    Data-free criteria (l1, l2, bn_gamma, random) only read the images' shape. `cfg.statistic` and
    `cfg.weighting` only matter for "relevance"; taylor runs the images in batches of cfg.batch_size.
    """
    if criterion not in CRITERIA:
        raise FlowError(f"unknown criterion {criterion!r}; use one of {', '.join(CRITERIA)}")
    if criterion == "relevance":
        return compute_relevance(model, data, cfg)
    if criterion == "apoz":
        # APoZ is the published criterion as is: no consumer weighting, whatever relevance's default is
        out = compute_relevance(model, data, dataclasses.replace(cfg, statistic="apoz", weighting="none"))
        out.criterion = "apoz"
        return out
    check_input(model, data)
    data = subset(data, cfg.images, cfg.seed)
    graph = build_graph(model, data.shape)
    if criterion in ("l1", "l2"):
        raw = _weight_norm(model, graph, 1 if criterion == "l1" else 2)
    elif criterion == "bn_gamma":
        raw = _bn_gamma(model, graph)
    elif criterion == "taylor":
        raw = _taylor(model, data, graph, cfg)
    else:
        gen = torch.Generator().manual_seed(cfg.seed)
        raw = {p: torch.rand(graph.group(graph.uses[p].out_group).size, generator=gen, dtype=torch.float64)
               for p in _producers(graph)}
    return RelevanceScores(criterion=criterion, config=dataclasses.asdict(cfg), input_shape=tuple(data.shape),
                           images=len(data) if criterion == "taylor" else 0,
                           layers={p: normalize(s, cfg.normalize).tolist() for p, s in raw.items()})

