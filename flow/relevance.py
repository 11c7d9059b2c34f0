"""Relevance of each kernel: a statistic of its activation, aggregated over a representative image set.

One streaming pass with forward hooks accumulates per-channel sums (never a single batch's values), so any number
of images costs the memory of one batch. The same pass records the mean input of every conv/linear layer that
reads a trimmable channel: removing a kernel later folds that mean into the consumer's bias (trim.py).

The default score is the kernel's mean post-activation times the L2 norm of the (BN-folded) weights that read it
downstream (weighting="consumer"): a kernel that fires a lot into weights that ignore it is not relevant, and a
busy-looking first-layer kernel is not comparable to a deep one without them. weighting="none" is the paper's plain
statistic; weighting="gradient" weights each activation by how much the net's own decision depends on it
(activation_gradients, also the engine of the Taylor criterion). bench/trim.py holds the comparison with the other
criteria.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from trimflow import FlowError
from trimflow import conditional
from trimflow.artifacts import read_json, write_json
from trimflow.data import ImageSet, make_loader, subset
from trimflow.graph import ChannelGraph, Tap, build_graph, folded_weight

FORMAT = "trimflow-scores/1"
# the config and its choices live apart from the torch code, so that loading a flow config does not import torch
from trimflow.relevance_config import (NORMALIZE, SELECTIONS, STATISTICS, WEIGHTING, WHERE,  # noqa: E402,F401
                                       RelevanceConfig)


@dataclasses.dataclass
class RelevanceScores:
    """Per trimmable layer (named by its conv/linear module): one score per kernel, higher = more relevant.

    `channel_means`: mean activation per kernel where the scores were read; `input_means`: per conv/linear layer
    that reads trimmable channels, the mean of its input per channel (conv) or per feature (linear, i.e. the mean
    output map of the flattened kernels). Data-free criteria leave both empty.
    """

    criterion: str
    config: dict[str, Any]
    input_shape: tuple[int, ...]
    images: int
    layers: dict[str, list[float]]
    channel_means: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    input_means: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    # selection="conditional": per kernel, the consumer energy it added when it was ranked (trimflow.conditional);
    # the scores are only that order, so the report plots these
    gains: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    # no wall-clock time in here: the file must be byte-identical for the same inputs (timings: stage timing file)

    def save(self, path: str | Path) -> None:
        write_json(path, {"format": FORMAT, **dataclasses.asdict(self)})

    @classmethod
    def load(cls, path: str | Path) -> "RelevanceScores":
        path = Path(path)
        if not path.exists():
            raise FlowError(f"scores file {path} does not exist")
        try:
            data = read_json(path)
        except ValueError as e:
            raise FlowError(f"scores file {path} is not valid JSON ({e})") from None
        if not isinstance(data, dict) or data.pop("format", None) != FORMAT:
            raise FlowError(f"{path} is not a trimflow scores file (expected format {FORMAT!r})")
        names = {f.name for f in dataclasses.fields(cls)}
        if set(data) - names or {"criterion", "layers", "input_shape"} - set(data):
            raise FlowError(f"{path}: unexpected or missing keys in scores file")
        data["input_shape"] = tuple(data["input_shape"])
        return cls(**data)

    def summary(self) -> dict[str, Any]:
        """Per layer: kernel count and the spread of its scores (for stage summaries and reports)."""
        return {name: {"kernels": len(s), "min": min(s), "mean": sum(s) / len(s), "max": max(s)}
                for name, s in self.layers.items()}

    def tensor(self, layer: str) -> torch.Tensor:
        return torch.tensor(self.layers[layer], dtype=torch.float64)


def normalize(scores: torch.Tensor, how: str) -> torch.Tensor:
    """Make one layer's scores comparable with another's (global thresholds)."""
    scores = scores.double()
    if how == "none":
        return scores
    if how == "l2":
        n = scores.norm()
        return scores / n if n > 0 else scores
    if how == "max":
        m = scores.abs().max()
        return scores / m if m > 0 else scores
    if how == "rank":  # 0 for the least relevant kernel, 1 for the most; ties broken by index
        if scores.numel() == 1:
            return torch.ones(1, dtype=torch.float64)
        ranks = torch.empty_like(scores)
        ranks[torch.argsort(scores, stable=True)] = torch.arange(scores.numel(), dtype=torch.float64)
        return ranks / (scores.numel() - 1)
    raise FlowError(f"normalize {how!r} unknown; use one of {', '.join(NORMALIZE)}")


def check_input(model: nn.Module, data: ImageSet) -> None:
    if len(data) == 0:
        raise FlowError(f"representative set {data.name!r} is empty")
    if data.images.ndim != 4:
        raise FlowError(f"representative set {data.name!r}: images have shape {tuple(data.images.shape)}, "
                        "expected (N, C, H, W)")
    first = next((m for m in model.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))), None)
    expected = getattr(first, "in_channels", None)
    if expected is not None and data.shape[0] != expected:
        raise FlowError(f"representative set {data.name!r} has {data.shape[0]} channel(s) per image but the "
                        f"model's first conv expects {expected}; use the dataset the model was trained on")


class _Accumulator:
    """Per-channel running sums of one activation (N, C, ...) over every batch seen."""

    def __init__(self, statistic: str, tap: Tap | None = None):
        self.statistic, self.tap = statistic, tap
        self.count = 0  # elements per channel seen
        self.sum: torch.Tensor | None = None
        self.extra: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        # Sum each image's map in the activation dtype (a few hundred values), then across images in float64:
        # as exact as a float64 reduction and ~100x faster than reducing a float32 tensor with dtype=float64.
        x = x.reshape(x.shape[0], x.shape[1], -1)

        def total(t: torch.Tensor) -> torch.Tensor:
            return t.sum(2).double().sum(0)

        s = total(x)
        if self.statistic == "mean_abs":
            e = total(x.abs())
        elif self.statistic == "apoz":
            e = total(x.abs().sign_())
        elif self.statistic in ("variance", "std"):
            e = total(x.square())
        elif self.statistic == "max":
            e = x.amax(2).amax(0).double()
        else:
            e = None
        if self.sum is None:
            self.sum, self.extra = s, e
        else:
            self.sum += s
            if e is not None:
                self.extra = torch.maximum(self.extra, e) if self.statistic == "max" else self.extra + e
        self.count += x.shape[0] * x.shape[2]

    def mean(self) -> torch.Tensor:
        return self.sum / self.count

    def score(self) -> torch.Tensor:
        if self.statistic == "mean":
            return self.mean()
        if self.statistic == "max":
            return self.extra
        if self.statistic in ("variance", "std"):
            var = (self.extra / self.count - self.mean() ** 2).clamp_min(0.0)
            return var.sqrt() if self.statistic == "std" else var
        return self.extra / self.count  # mean_abs, apoz (fraction of non-zeros)


def _tap_for(graph: ChannelGraph, model: nn.Module, producer: str, where: str) -> Tap:
    if where == "pre_act":
        return graph.pre_taps[producer]
    tap = graph.post_taps[producer]
    if where == "quant_act":
        module = model.get_submodule(tap.module)
        if not type(module).__module__.startswith("brevitas") or tap.fns:
            raise FlowError(f"relevance where='quant_act': layer {producer} is followed by "
                            f"{type(module).__name__} ({tap.module}), not a Brevitas quantized activation; "
                            "use where='post_act' for float models")
    return tap


def _value(out: Any) -> torch.Tensor:
    return out.value if hasattr(out, "value") and not isinstance(out, torch.Tensor) else out  # Brevitas QuantTensor


def collect(model: nn.Module, data: ImageSet, graph: ChannelGraph, statistic: str, where: str,
            batch_size: int, desc: str = "relevance",
            consumer_adders: dict[str, Any] | None = None) -> tuple[dict[str, _Accumulator], dict[str, _Accumulator]]:
    """One pass over `data`: accumulators per trimmable producer (at its tap) and per consumer input.

    `consumer_adders`: per consumer, a function that also gets its input (trimflow.conditional's covariances)."""
    producers = [p for g in graph.prunable() for p in g.producers]
    prunable_ids = {g.id for g in graph.prunable()}
    consumers = [u.name for u in graph.uses.values() if u.kind in ("conv", "linear")
                 and any(graph.find(s.group) in prunable_ids for s in u.inputs)]
    taps = {p: _tap_for(graph, model, p, where) for p in producers}
    acc = {p: _Accumulator(statistic, taps[p]) for p in producers}
    inputs = {c: _Accumulator("mean") for c in consumers}
    by_module: dict[str, list[_Accumulator]] = {}
    for a in acc.values():
        by_module.setdefault(a.tap.module, []).append(a)

    def out_hook(accs):
        def hook(module, args, out):
            y = _value(out).detach()
            for a in accs:
                a.add(a.tap.apply(y))
        return hook

    def in_hook(a, extra):
        def hook(module, args):
            x = _value(args[0]).detach()
            if a is not None:  # a linear layer's features each get their own mean: the flattened mean output map
                a.add(x if x.ndim > 2 else x[:, :, None])
            if extra is not None:
                extra(x)
        return hook

    handles = [model.get_submodule(m).register_forward_hook(out_hook(accs)) for m, accs in by_module.items()]
    adders = consumer_adders or {}
    handles += [model.get_submodule(c).register_forward_pre_hook(in_hook(inputs.get(c), adders.get(c)))
                for c in dict.fromkeys([*inputs, *adders])]
    dtype = next(model.parameters()).dtype
    was_training = model.training
    model.eval()
    try:
        loader = make_loader(data, batch_size)
        with torch.no_grad():
            for x, _ in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True):
                model(x.to(dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    for name, a in list(acc.items()) + list(inputs.items()):
        if not (torch.isfinite(a.sum).all() and (a.extra is None or torch.isfinite(a.extra).all())):
            raise FlowError(f"relevance: layer {name} produced NaN/Inf activations on {data.name!r}; check the "
                            "checkpoint (diverged training?) and that images are scaled to [0, 1]")
    return acc, inputs


def activation_gradients(model: nn.Module, data: ImageSet, graph: ChannelGraph, where: str, batch_size: int,
                         targets: str = "predicted", desc: str = "gradient") -> dict[str, torch.Tensor]:
    """Per trimmable producer: mean over images of |sum over positions of activation x d(log-likelihood)/d(activation)|.

    targets="labels": the cross-entropy on the set's labels (Molchanov et al.'s Taylor criterion).
    targets="predicted": the log-probability of the class the untrimmed net predicts, so no labels are read: the
    first-order change of the net's own decision when the kernel's output is zeroed, i.e. gradient x activation,
    the simplest relevance propagated back from the output. Read at the module the relevance tap names (the
    activation module, or the BN/conv output when the activation is functional), in eval mode so BN statistics
    stay untouched.
    """
    producers = [p for g in graph.prunable() for p in g.producers]
    taps = {p: graph.post_taps[p] if where != "pre_act" else graph.pre_taps[p] for p in producers}
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
        for x, y in tqdm(make_loader(data, batch_size), desc=desc, leave=False, dynamic_ncols=True):
            model.zero_grad(set_to_none=True)
            logits = model(x.to(dtype))
            loss_fn(logits, y if targets == "labels" else logits.detach().argmax(1)).backward()
            seen += len(y)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        for h in handles:
            h.remove()
    for name, s in sums.items():
        if not torch.isfinite(s).all():
            raise FlowError(f"{desc}: layer {name} has NaN/Inf activation x gradient on {data.name!r}")
    return {p: s / seen for p, s in sums.items()}


def consumer_norms(model: nn.Module, graph: ChannelGraph) -> dict[str, torch.Tensor]:
    """Per trimmable producer: for each kernel, the L2 norm of every weight that reads its output downstream.

    A kernel whose output varies by std s around its mean, read with weights w (all output kernels and taps of
    every consumer), puts an error of RMS about s * ||w|| into the consumers' pre-activations once it is removed and
    its mean folded into their biases (spatial correlation ignored). A BN right after a consumer rescales that
    error by gamma / sqrt(running_var + eps), so it is folded in: the norm then measures the error in units the
    next activation sees, which makes the product comparable across layers.
    """
    energy: dict[int, torch.Tensor] = {}
    per_in: dict[str, torch.Tensor] = {}  # per consumer: the energy of the weights reading each input feature
    for (name, _), (gid, offset, size, spatial) in conditional.consumer_inputs(graph).items():
        if name not in per_in:
            use = graph.uses[name]
            w = folded_weight(model, use)
            # depthwise: output channel c reads only input channel c; otherwise per input feature (per channel x
            # position for a flattened linear)
            per_in[name] = w.square().sum((1, 2)) if use.kind == "depthwise" else w.square().sum((0, 2))
        e = per_in[name][offset:offset + size * spatial].reshape(size, spatial).sum(1)
        energy[gid] = energy[gid] + e if gid in energy else e
    out = {}
    for g in graph.prunable():
        e = energy.get(g.id, torch.zeros(g.size, dtype=torch.float64))
        for p in g.producers:
            out[p] = e.sqrt()
    return out


def compute_relevance(model: nn.Module, data: ImageSet, cfg: RelevanceConfig = RelevanceConfig()) -> RelevanceScores:
    """Score every trimmable kernel of `model` on `cfg.images` images of `data`."""
    check_input(model, data)
    data = subset(data, cfg.images, cfg.seed)
    graph = build_graph(model, data.shape)
    covs, adders = conditional.covariance_hooks(graph) if cfg.selection == "conditional" else ({}, None)
    acc, inputs = collect(model, data, graph, cfg.statistic, cfg.where, cfg.batch_size, consumer_adders=adders)
    raw = {p: a.score() for p, a in acc.items()}
    if cfg.weighting == "consumer":
        norms = consumer_norms(model, graph)
        raw = {p: s * norms[p] for p, s in raw.items()}
    elif cfg.weighting == "gradient":  # the statistic's pass still gives the means compensation folds in
        raw = activation_gradients(model, data, graph, cfg.where, cfg.batch_size)
    gains: dict[str, torch.Tensor] = {}
    if cfg.selection == "conditional":
        raw, gains = conditional.conditional_scores(model, graph, covs, raw)
    return RelevanceScores(
        criterion="relevance", config=dataclasses.asdict(cfg), input_shape=tuple(data.shape), images=len(data),
        layers={p: normalize(s, cfg.normalize).tolist() for p, s in raw.items()},
        channel_means={p: a.mean().tolist() for p, a in acc.items()},
        input_means={c: a.mean().tolist() for c, a in inputs.items()},
        gains={p: g.tolist() for p, g in gains.items()})


def input_means(model: nn.Module, data: ImageSet, batch_size: int = 250) -> dict[str, list[float]]:
    """Mean input of each consumer layer (what compensation folds in), for criteria that did not record it."""
    check_input(model, data)
    graph = build_graph(model, data.shape)
    _, inputs = collect(model, data, graph, "mean", "post_act", batch_size, desc="input means")
    return {c: a.mean().tolist() for c, a in inputs.items()}
