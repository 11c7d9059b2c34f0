"""Conditional relevance: kernels ordered by the relevance they add to the kernels ranked before them.

Plain relevance scores each kernel alone, so two kernels that fire together into the same consumers both rank high,
and a trim keeps both while the second adds almost nothing. Here the kernels of a channel group are ranked
greedily: the first is the one whose activation contributes most energy to the consumers' pre-activations, each
next one the kernel whose activation *not explained by (linearly predictable from) the kernels already chosen*
contributes most. That is the error a least-squares refit of the consumers (trimflow.reconstruct) is left with
when the kernel is removed, so the ranking is the one the refit can make the most of (forward selection, in the
spirit of ThiNet and of channel pruning by reconstruction, at the level of channels).

For a consumer c that reads the group's channels x (centred: the compensation takes the means), with its weights
folded into an input-by-input matrix M_c = sum over outputs and kernel taps of w w^T (the BN after c folded in,
as in trimflow.relevance.consumer_norms), removing the kernels D while keeping S leaves the error
tr(M_c[D, D] Cov(x_D | x_S)). Spatial correlation inside a conv's receptive field is ignored (channels are
compared at the same position). The first pick is the kernel with the largest variance x consumer energy; a
kernel fully explained by those before it adds nothing and goes to the end.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from trimflow.graph import ChannelGraph, folded_weight


class Covariance:
    """Running second moments of the channels one consumer reads from one group (positions are samples)."""

    def __init__(self):
        self.n = 0
        self.sum: torch.Tensor | None = None
        self.outer: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        """x: (N, C, P) activations, P positions (conv) or features per channel (a flattened linear input)."""
        rows = x.transpose(1, 2).reshape(-1, x.shape[1]).float()
        s, o = rows.sum(0).double(), (rows.T @ rows).double()  # float32 per batch, float64 across batches
        if self.sum is None:
            self.sum, self.outer = s, o
        else:
            self.sum += s
            self.outer += o
        self.n += rows.shape[0]

    def matrix(self) -> torch.Tensor:
        mean = self.sum / self.n
        return self.outer / self.n - torch.outer(mean, mean)


def consumer_inputs(graph: ChannelGraph) -> dict[tuple[str, int], tuple[int, int, int, int]]:
    """(consumer, segment index) -> (group id, feature offset, channels, features per channel) for every
    conv/linear/depthwise input segment that carries a trimmable group."""
    prunable = {g.id for g in graph.prunable()}
    out = {}
    for use in graph.uses.values():
        if use.kind not in ("conv", "linear", "depthwise"):
            continue
        offset = 0
        for i, seg in enumerate(use.inputs):
            gid = graph.find(seg.group)
            if gid in prunable:
                out[(use.name, i)] = (gid, offset, seg.size, seg.spatial)
            offset += seg.size * seg.spatial
    return out


def slice_input(x: torch.Tensor, offset: int, size: int, spatial: int) -> torch.Tensor:
    """The (N, size, positions) slice of a consumer's input that one segment occupies."""
    if x.ndim > 2:  # conv: channels offset..offset+size, every position
        return x[:, offset:offset + size].reshape(x.shape[0], size, -1)
    return x[:, offset:offset + size * spatial].reshape(x.shape[0], size, spatial)  # flatten order: channel-major


def covariance_hooks(graph: ChannelGraph) -> tuple[dict, dict[str, Callable]]:
    """Covariances of every trimmable segment the consumers read (consumer_inputs), and per consumer a function of
    its input that adds the batch to them (trimflow.relevance.collect calls it from its forward pre-hook).

    Every position of a conv's input is a sample (no sampling, so the order does not depend on a seed); that costs
    a (positions x channels) matmul per batch and consumer, about as much again as the forward pass on CNV."""
    segments = consumer_inputs(graph)
    covs = {key: Covariance() for key in segments}
    by_consumer: dict[str, list] = {}
    for key, (_, offset, size, spatial) in segments.items():
        by_consumer.setdefault(key[0], []).append((covs[key], offset, size, spatial))

    def adder(entries):
        def add(x: torch.Tensor) -> None:
            for cov, offset, size, spatial in entries:
                cov.add(slice_input(x, offset, size, spatial))
        return add
    return covs, {c: adder(e) for c, e in by_consumer.items()}


def weight_gram(model: nn.Module, graph: ChannelGraph, consumer: str, offset: int, size: int,
                spatial: int) -> torch.Tensor:
    """M = sum over outputs and taps of w w^T for the inputs one segment feeds, BN scale folded in (size x size)."""
    use = graph.uses[consumer]
    w = folded_weight(model, use)
    if use.kind == "depthwise":  # output channel c reads input channel c only
        return torch.diag(w.square().sum((1, 2)))
    if use.kind == "linear":
        w = w[:, offset:offset + size * spatial, 0].reshape(w.shape[0], size, spatial)
    else:
        w = w[:, offset:offset + size]
    return torch.einsum("oit,ojt->ij", w, w)


def greedy_order(terms: list[tuple[torch.Tensor, torch.Tensor]],
                 tiebreak: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel indices, best first, and what each added: forward selection minimising sum_c tr(M_c Cov_c(dropped |
    kept)); the gain of a channel is how much that error fell when it was added (0 for those that added nothing).

    terms: (covariance, M) per consumer segment, all over the same channels. Kept up to date by rank-one updates:
    R_c is the covariance conditional on the kept channels, and the gain of adding channel j is
    sum_c R_c[:, j]^T M_c R_c[:, j] / R_c[j, j]. Channels with (numerically) nothing left to add are ordered by
    `tiebreak`, highest first.
    """
    size = tiebreak.numel()
    rs = [cov.clone() for cov, _ in terms]
    ms = [m for _, m in terms]
    mrs = [m @ r for m, r in zip(ms, rs)]
    floors = [1e-10 * max(float(torch.diagonal(r).max()), 1e-300) for r in rs]
    chosen = torch.zeros(size, dtype=torch.bool)
    order, gains = [], []
    for _ in range(size):
        gain = torch.zeros(size, dtype=torch.float64)
        for r, mr, floor in zip(rs, mrs, floors):
            d = torch.diagonal(r)
            live = d > floor
            gain += torch.where(live, (r * mr).sum(0) / d.clamp_min(floor), torch.zeros_like(d))
        gain[chosen] = -1.0
        if float(gain.max()) <= 0.0:  # the rest adds nothing the kept ones do not explain
            rest = [int(i) for i in torch.argsort(tiebreak, descending=True, stable=True) if not chosen[i]]
            order += rest
            gains += [0.0] * len(rest)
            break
        j = int(torch.argmax(gain))
        chosen[j] = True
        order.append(j)
        gains.append(float(gain[j]))
        for i, (r, m, floor) in enumerate(zip(rs, ms, floors)):
            col = r[:, j].clone()
            if col[j] <= floor:
                continue
            rs[i] = r - torch.outer(col, col) / col[j]
            mrs[i] = mrs[i] - torch.outer(m @ col, col) / col[j]
    return torch.tensor(order, dtype=torch.long), torch.tensor(gains, dtype=torch.float64)


def conditional_scores(model: nn.Module, graph: ChannelGraph, covs: dict[tuple[str, int], Covariance],
                       tiebreak: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per trimmable producer: a score per kernel from its group's greedy order (1 for the first, down to 1/size),
    and per kernel the energy it added when it was ranked (greedy_order's gains; what the report plots).

    `covs` come from covariance_hooks through trimflow.relevance.collect; `tiebreak` (the plain relevance, per producer)
    orders kernels that add nothing new, and a group no consumer reads keeps it as its score (and has no gains).
    """
    segments = consumer_inputs(graph)
    terms: dict[int, list] = {}
    for key, (gid, offset, size, spatial) in segments.items():
        terms.setdefault(gid, []).append((covs[key].matrix(), weight_gram(model, graph, key[0], offset, size, spatial)))
    out, added = {}, {}
    for g in graph.prunable():
        base = sum(tiebreak[p] for p in g.producers)
        if g.id not in terms:
            scores = base
        else:
            order, gains = greedy_order(terms[g.id], base)
            scores = torch.empty(g.size, dtype=torch.float64)
            scores[order] = torch.arange(g.size, 0, -1, dtype=torch.float64) / g.size
            per_kernel = torch.empty(g.size, dtype=torch.float64)
            per_kernel[order] = gains
            added.update(dict.fromkeys(g.producers, per_kernel))
        for p in g.producers:
            out[p] = scores
    return out, added
