"""Baseline kernel-importance criteria, scored into the same RelevanceScores structure as relevance.

Every criterion scores the producers of the trimmable channel groups of the traced model, so the trim policies
can take any of them: weight norms (L1, L2), BN scale |gamma|, first-order Taylor (|activation x gradient|),
APoZ, random, and our relevance statistic.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from trimflow import FlowError
from trimflow.data import ImageSet, subset
from trimflow.graph import ChannelGraph, build_graph
from trimflow.relevance import (RelevanceConfig, RelevanceScores, activation_gradients, check_input,
                                compute_relevance, normalize)

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
    """Molchanov et al.'s first-order Taylor: mean over images of |sum over positions of activation x gradient| of
    the loss on the true labels (trimflow.relevance.activation_gradients)."""
    return activation_gradients(model, data, graph, cfg.where, cfg.batch_size, targets="labels", desc="taylor")


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
        # APoZ is the published criterion as is: no consumer weighting, no conditional order, whatever relevance's
        # defaults are
        out = compute_relevance(model, data, dataclasses.replace(cfg, statistic="apoz", weighting="none",
                                                                 selection="independent"))
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

