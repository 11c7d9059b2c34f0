"""Label-free compensation after trimming: refit each consumer layer to reproduce the untrimmed net's output.

Removing kernels changes what every later layer sees. Instead of folding only the removed kernels' mean into a
bias, each conv/linear layer whose input changed is refitted by least squares, in the spirit of ThiNet (Luo et al.,
2017) and of channel pruning by reconstruction (He et al., 2017): on representative images, the trimmed net's input
to the layer (kept channels, after the layers before it were already refitted) is regressed onto the untrimmed
net's output of the same layer (its kept output channels), weights and bias together. Layers are refitted in
execution order, so each one also absorbs the error its predecessors left. Only images are needed: no labels, no
gradient step.

For a convolution every output position is one sample of a regression whose inputs are the kept channels x kernel
taps (+1 for the bias); a few positions per image are sampled so the normal equations stay cheap while still
covering the whole map. A linear layer gets one sample per image. The normal equations always carry a small
relative ridge term (numerical safety); a system with fewer samples than unknowns, or an ill-conditioned one, gets
the larger `fallback_ridge` instead, and the report names every such layer (nothing falls back silently).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable

import torch
from torch import nn

from trimflow import FlowError
from trimflow.data import ImageSet, make_loader
from trimflow.graph import ChannelGraph
from trimflow.staged import Prefix, StagedForward

# the config lives apart from the torch code (trimflow.trim_config), so that loading a flow config does not import torch
from trimflow.trim_config import ON_FEW_SAMPLES, ReconstructConfig  # noqa: E402,F401


class _Stop(Exception):
    """Raised from a hook once the layers of interest have been seen: the rest of the forward pass is not needed."""


def _pick(positions: int, n: int, p: int, gen: torch.Generator) -> torch.Tensor | None:
    """Output positions sampled per image (N, positions), or None: the map is small enough to take every one."""
    if p <= positions:
        return None
    return torch.stack([torch.randperm(p, generator=gen)[:positions] for _ in range(n)])


def _targets(original: nn.Module, uses: list, out_keep: dict[str, torch.Tensor | None], images: ImageSet,
             cfg: ReconstructConfig) -> dict[str, list[tuple[torch.Tensor | None, torch.Tensor]]]:
    """The untrimmed net's outputs of `uses`, at the sampled positions, per batch: one forward pass for them all.

    Capturing them layer by layer would cost one partial forward of the untrimmed net per layer and batch
    (quadratic in depth); here each batch runs once, up to the last of these layers. Positions are drawn from one
    generator per layer, seeded with cfg.seed, so a layer's samples do not depend on which other layers share the
    pass. Returns per layer a list over batches of (positions or None, targets (rows, kept outputs)).
    """
    gens = {u.name: torch.Generator().manual_seed(cfg.seed) for u in uses}
    out: dict[str, list] = {u.name: [] for u in uses}
    dtype = next(original.parameters()).dtype
    seen: set[str] = set()

    def hook(name):
        def post(module, args, y):
            if name in seen:  # a module called twice: its first call is the layer (as the refit's input capture)
                return
            seen.add(name)
            y = y.detach()
            if out_keep[name] is not None:
                y = y[:, out_keep[name]]
            if isinstance(module, nn.Linear):
                out[name].append((None, y.flatten(1).float()))
            else:
                yf = y.flatten(2)  # (N, out, P)
                idx = _pick(cfg.positions, yf.shape[0], yf.shape[2], gens[name])
                if idx is not None:
                    yf = yf.gather(2, idx[:, None, :].expand(-1, yf.shape[1], -1))
                out[name].append((idx, yf.transpose(1, 2).reshape(-1, yf.shape[1]).float()))
            if len(seen) == len(uses):
                raise _Stop
        return post

    handles = [original.get_submodule(u.name).register_forward_hook(hook(u.name)) for u in uses]
    try:
        with torch.no_grad():
            for x, _ in make_loader(images, cfg.batch_size):
                seen.clear()
                try:
                    original(x.to(dtype))
                except _Stop:
                    pass
                missing = [u.name for u in uses if u.name not in seen]
                if missing:
                    raise FlowError(f"reconstruction: layer {missing[0]} is not reached by the model's forward pass")
    finally:
        for h in handles:
            h.remove()
    return out


def _patches(mod: nn.Module, x: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
    """Regression inputs (rows, in x taps) of a batch at the given output positions, in unfold's (C, kh, kw) order.

    Only the sampled positions' patches are gathered: unfolding the whole map first would cost memory of
    N x C*k*k x P (hundreds of MB for one batch of a 32x32 layer) to keep 32 positions of it.
    """
    if isinstance(mod, nn.Linear):
        return x.flatten(1)
    if idx is None:
        cols = nn.functional.unfold(x, mod.kernel_size, mod.dilation, mod.padding, mod.stride)  # (N, C*k*k, P)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    (kh, kw), (dh, dw), (sh, sw), (ph, pw) = mod.kernel_size, mod.dilation, mod.stride, mod.padding
    xp = nn.functional.pad(x, (pw, pw, ph, ph))
    wo = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    rows = (idx // wo * sh)[:, :, None] + torch.arange(kh)[None, None, :] * dh  # (N, positions, kh)
    cols = (idx % wo * sw)[:, :, None] + torch.arange(kw)[None, None, :] * dw  # (N, positions, kw)
    n = torch.arange(x.shape[0])[:, None, None, None]
    # advanced indices around a slice: the result is (N, positions, kh, kw, C)
    patch = xp[n, :, rows[:, :, :, None], cols[:, :, None, :]]
    return patch.permute(0, 1, 4, 2, 3).reshape(-1, x.shape[1] * kh * kw)


def _solve(xtx: torch.Tensor, xty: torch.Tensor, prior: torch.Tensor, samples: int, name: str,
           cfg: ReconstructConfig, folds: list[tuple] | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Ridge solution of the normal equations, pulled towards `prior` (the layer's current weights), not zero.

    Where the images do not determine a weight (fewer samples than unknowns, or directions the inputs never take),
    the refit keeps what the layer had instead of shrinking it; the bias row is never penalised. With
    cfg.ridge_search and `folds` (per image fold: X^T X, X^T Y, sum of Y^2), the ridge is the candidate whose fits
    on the other folds reproduce each held-out fold best (cross-validation on the calibration images, no labels).
    """
    d = xtx.shape[0] - 1
    diag = xtx.diagonal()[:d]
    scale = float(diag.mean()) if d else 0.0
    info: dict[str, Any] = {"samples": samples, "unknowns": d + 1}
    if scale <= 0:  # every kept input is constant zero: only the bias can be fitted
        info["note"] = "all inputs zero"
        scale = 1.0
    few = samples < d + 1
    if few and cfg.on_few_samples == "error":
        raise FlowError(f"reconstruction of layer {name}: {samples} samples for {d + 1} unknowns; give the "
                        f"calibration set at least {d + 1} samples (trim.calib_images, trim.reconstruct.positions) "
                        "or set trim.reconstruct.on_few_samples=ridge")
    cond = None  # with fewer samples than unknowns the fallback is decided already: no eigendecomposition
    if not few:
        eig = torch.linalg.eigvalsh(xtx[:d, :d]) if d else torch.ones(1, dtype=xtx.dtype)
        cond = float(eig[-1] / eig[0].clamp_min(1e-300)) if float(eig[-1]) > 0 else float("inf")
    info["condition"] = cond
    least = cfg.ridge
    if few:
        least, info["fallback"] = cfg.fallback_ridge, "fewer samples than unknowns"
    elif cond > cfg.condition:  # not few: the condition number was computed
        least, info["fallback"] = cfg.fallback_ridge, f"ill-conditioned (condition {cond:.3g})"
    ridge = least
    if cfg.ridge_search and folds and d:
        # a fallback layer only chooses among ridges at least as strong as the fallback
        candidates = sorted({r for r in cfg.ridge_search if r >= least} | {least})
        errors = _held_out_errors(xtx, xty, prior, folds, candidates)
        ridge = candidates[int(torch.argmin(errors))]
        info["held_out_error"] = {f"{r:g}": round(float(e), 6) for r, e in zip(candidates, errors)}
    info["ridge"] = ridge
    reg = torch.zeros(d + 1, dtype=xtx.dtype)
    reg[:d] = ridge * scale
    sol = torch.linalg.solve(xtx + torch.diag(reg), xty + reg[:, None] * prior)
    return sol, info


def _held_out_errors(xtx: torch.Tensor, xty: torch.Tensor, prior: torch.Tensor, folds: list[tuple],
                     candidates: list[float]) -> torch.Tensor:
    """Squared error on each fold of the ridge fits on the other folds, summed over folds, per candidate ridge.

    The bias is not penalised, so it is eliminated by centring; each candidate's system is then positive definite
    and solved by Cholesky (about twice as fast as one eigendecomposition shared by the candidates on a 2,500-input
    classifier, as fast on a conv layer).
    """
    errors = torch.zeros(len(candidates), dtype=xtx.dtype)
    for fx, fy, fyy in folds:
        tx, ty = xtx - fx, xty - fy
        n, sx, sy = tx[-1, -1], tx[:-1, -1], ty[-1]  # the bias column is all ones: its products are the sums
        scale = float(tx.diagonal()[:-1].mean().clamp_min(1e-30))  # as _solve's, on this fold's training part
        gram, rhs = tx[:-1, :-1] - torch.outer(sx, sx) / n, ty[:-1] - torch.outer(sx, sy) / n
        system, diag = gram.clone(), gram.diagonal().clone()  # the ridge set on the diagonal: no matrix per ridge
        for i, r in enumerate(candidates):
            system.diagonal().copy_(diag + r * scale)
            b = rhs + r * scale * prior[:-1]
            chol, bad = torch.linalg.cholesky_ex(system)
            w = torch.linalg.solve(system, b) if bad else torch.cholesky_solve(b, chol)  # ridge 0 may be singular
            sol = torch.cat([w, ((sy - sx @ w) / n)[None]])
            errors[i] += fyy.sum() - 2 * (sol * fy).sum() + (sol * (fx @ sol)).sum()
    return errors


def _assign(trimmed: nn.Module, use, sol: torch.Tensor) -> None:
    """Write the fitted weights and bias into the trimmed layer (a bias-free conv before a BN shifts the BN)."""
    mod = trimmed.get_submodule(use.name)
    w, b = sol[:-1].T, sol[-1]
    with torch.no_grad():
        mod.weight.copy_(w.reshape(mod.weight.shape).to(mod.weight.dtype))
        if mod.bias is not None:
            mod.bias.copy_(b.to(mod.bias.dtype))
        elif use.bn_after is not None and trimmed.get_submodule(use.bn_after).track_running_stats:
            bn = trimmed.get_submodule(use.bn_after)
            bn.running_mean -= b.to(bn.running_mean.dtype)  # BN(z + b) with mean m == BN(z) with mean m - b
        else:
            mod.bias = nn.Parameter(b.to(mod.weight.dtype))


def _rescale(original: nn.Module, trimmed: nn.Module, use, out_keep: torch.Tensor | None) -> float | None:
    """Scale a refitted layer's output channels back to the untrimmed weights' RMS; the BN after it compensates.

    BN(z / s) with mean m / s and variance (v + eps) / s^2 - eps equals BN(z) exactly, eps included. A channel whose
    variance is too small for that (it would go negative) keeps its scale. Returns the mean factor, or None (no BN
    with running statistics directly after the layer: the scale would change what the net computes).
    """
    if use.bn_after is None:
        return None
    bn = trimmed.get_submodule(use.bn_after)
    if not bn.track_running_stats or bn.running_var is None:
        return None
    mod = trimmed.get_submodule(use.name)
    ref = original.get_submodule(use.name).weight.detach()
    if out_keep is not None:
        ref = ref[out_keep]
    with torch.no_grad():
        rms = lambda w: w.flatten(1).double().pow(2).mean(1).sqrt()  # noqa: E731
        s = (rms(mod.weight) / rms(ref).clamp_min(1e-12)).clamp_min(1e-12)
        old_var = bn.running_var.double()
        var = (old_var + bn.eps) / s.square() - bn.eps
        ok = var > 0
        s, var = torch.where(ok, s, torch.ones_like(s)), torch.where(ok, var, old_var)
        shape = (-1,) + (1,) * (mod.weight.dim() - 1)
        mod.weight.div_(s.view(shape).to(mod.weight.dtype))
        if mod.bias is not None:
            mod.bias.div_(s.to(mod.bias.dtype))
        bn.running_mean.div_(s.to(bn.running_mean.dtype))
        bn.running_var.copy_(var.to(bn.running_var.dtype))
    return round(float(s.mean()), 4)


def reconstruct(original: nn.Module, trimmed: nn.Module, graph: ChannelGraph, keep: dict[int, torch.Tensor],
                images: ImageSet, cfg: ReconstructConfig = ReconstructConfig(),
                layers: list[str] | None = None, targets_cache: dict[str, list] | None = None,
                prefix: Prefix | None = None) -> list[dict[str, Any]]:
    """Refit, in execution order, every conv/linear layer of `trimmed` whose input differs from the original's.

    `keep` is the kept channel indices per trimmed group (as trimflow.trim chose them); `layers` restricts the refit
    to these layers (the sensitivity probes refit only the consumers of the probed group); `targets_cache` keeps the
    untrimmed net's sampled outputs between calls on the same images (the probes of one group share them);
    `prefix` is the untrimmed net's staged pass over `images` (cfg.batch_size batches) up to where `trimmed` starts
    to differ from it (the probes of one group share it). Returns one record per refitted layer: samples, unknowns,
    ridge, condition number (None with fewer samples than unknowns), fallback reason if any, the held-out error per
    searched ridge, the relative error of the layer's output (residual energy / output variance energy) before and
    after the refit, and with cfg.rescale the mean factor the layer was scaled back by.
    """
    if len(images) == 0:
        raise FlowError("reconstruction needs representative images; the calibration set is empty")
    original, dtype = original.eval(), next(trimmed.parameters()).dtype
    trimmed.eval()
    changed = _changed_layers(graph, keep)
    todo = [u for u in graph.uses.values() if u.name in changed and (layers is None or u.name in layers)]
    records, fit = [], []
    for use in todo:
        mod = trimmed.get_submodule(use.name)
        if isinstance(mod, nn.modules.conv._ConvNd) and (mod.groups != 1 or mod.padding_mode != "zeros"
                                                          or not isinstance(mod, nn.Conv2d)):
            why = (f"grouped convolution (groups={mod.groups})" if mod.groups != 1 else
                   f"padding_mode={mod.padding_mode!r}" if isinstance(mod, nn.Conv2d) else type(mod).__name__)
            records.append({"layer": use.name, "skipped": why})  # named in the report: never a silent fallback
        else:
            fit.append(use)
    out_keep = {u.name: keep.get(graph.find(u.out_group)) if u.out_group is not None else None for u in fit}
    staged: StagedForward | None = None  # the trimmed net's pass, advanced layer by layer as they are refitted
    for chunk in _chunks(original, fit, images, cfg):
        if targets_cache is None:
            targets = _targets(original, chunk, out_keep, images, cfg)
        else:
            # every output channel is cached and the kept ones taken per call: the positions are drawn per layer
            # from cfg.seed, so the values are exactly the ones _targets would return for this keep set
            missing = [u for u in chunk if u.name not in targets_cache]
            if missing:
                targets_cache.update(_targets(original, missing, dict.fromkeys(u.name for u in missing), images, cfg))
            targets = {u.name: [(idx, ys if out_keep[u.name] is None else ys[:, out_keep[u.name]])
                                for idx, ys in targets_cache[u.name]] for u in chunk}
        for use in chunk:
            if staged is None:
                staged = (StagedForward(trimmed, prefix=prefix, memory_mb=cfg.activation_mb) if prefix is not None
                          else StagedForward(trimmed, [x.to(dtype) for x, _ in make_loader(images, cfg.batch_size)],
                                             memory_mb=cfg.activation_mb))
            before = staged.recomputed
            records.append(_refit(trimmed, use, targets.pop(use.name), staged.input_of(use.name),
                                  _layer_config(graph, use, cfg)))
            if staged.recomputed > before:  # trim.reconstruct.activation_mb was too small to keep them all
                records[-1]["recomputed_batches"] = staged.recomputed - before
            if cfg.rescale:
                records[-1]["rescaled"] = _rescale(original, trimmed, use, out_keep[use.name])
    order = {u.name: i for i, u in enumerate(todo)}
    return sorted(records, key=lambda r: order[r["layer"]])


def _chunks(original: nn.Module, uses: list, images: ImageSet, cfg: ReconstructConfig) -> list[list]:
    """Split the layers so that one chunk's cached targets stay under cfg.cache_mb (one untrimmed pass per chunk)."""
    shapes: dict[str, tuple] = {}

    def shape_of(name):
        def post(module, args, y):  # returns None: a forward hook's return value would replace the output
            shapes.setdefault(name, tuple(y.shape[1:]))
        return post
    hooks = [original.get_submodule(u.name).register_forward_hook(shape_of(u.name)) for u in uses]
    try:
        with torch.no_grad():
            original(next(iter(make_loader(images, 1)))[0].to(next(original.parameters()).dtype))
    finally:
        for h in hooks:
            h.remove()
    chunks: list[list] = [[]]
    used = 0.0
    for u in uses:
        shape = shapes.get(u.name, (1,))
        rows = 1 if len(shape) == 1 else min(cfg.positions, math.prod(shape[1:]))
        mb = len(images) * rows * shape[0] * 4 / 2**20
        if chunks[-1] and used + mb > cfg.cache_mb:
            chunks.append([])
            used = 0.0
        chunks[-1].append(u)
        used += mb
    return [c for c in chunks if c]


def _layer_config(graph: ChannelGraph, use, cfg: ReconstructConfig) -> ReconstructConfig:
    """cfg, with output_ridge as the ridge of a layer that computes the model's output (the logits)."""
    if cfg.output_ridge is None or use.out_group is None:
        return cfg
    if graph.group(use.out_group).frozen != "model output":
        return cfg
    return dataclasses.replace(cfg, ridge=cfg.output_ridge, fallback_ridge=max(cfg.fallback_ridge, cfg.output_ridge),
                               ridge_search=())


def _refit(trimmed: nn.Module, use, targets: list, inputs: Iterable[torch.Tensor],
           cfg: ReconstructConfig) -> dict[str, Any]:
    """Refit one layer of `trimmed` to the cached untrimmed targets, from the trimmed net's inputs (per batch)."""
    mod = trimmed.get_submodule(use.name)
    d = mod.weight[0].numel()
    xtx = torch.zeros(d + 1, d + 1, dtype=torch.float64)
    xty = torch.zeros(d + 1, mod.weight.shape[0], dtype=torch.float64)
    yty = torch.zeros(mod.weight.shape[0], dtype=torch.float64)
    ysum = torch.zeros(mod.weight.shape[0], dtype=torch.float64)
    samples = images = 0
    # per fold of images (image i in fold i % folds; one fold without the ridge search): X^T X, X^T Y, sum of Y^2.
    # The totals are the folds' sums.
    k = cfg.folds if cfg.ridge_search else 1
    folds = [(torch.zeros_like(xtx), torch.zeros_like(xty), torch.zeros_like(yty)) for _ in range(k)]
    old = torch.cat([mod.weight.detach().flatten(1).T.double(),
                     (mod.bias.detach() if mod.bias is not None else torch.zeros(mod.weight.shape[0]))
                     .double()[None]])
    with torch.no_grad():
        batches = 0
        for x, (idx, ys) in zip(inputs, targets):
            batches += 1
            xs = _patches(mod, x, idx).float()
            xs = torch.cat([xs, torch.ones(xs.shape[0], 1)], 1)
            # one batch's products in float32 (a few thousand rows: ~1e-6 relative error, 4x faster than
            # float64), summed over batches in float64
            parts = [(xs, ys)]
            if k > 1:  # rows are image-major (per image: its sampled positions), so an image's rows share a fold
                fold = ((torch.arange(x.shape[0]) + images) % k).repeat_interleave(xs.shape[0] // x.shape[0])
                parts = [(xs[fold == f], ys[fold == f]) for f in range(k)]
            for (fx, fy, fyy), (xf, yf) in zip(folds, parts):
                fx += (xf.T @ xf).double()
                fy += (xf.T @ yf).double()
                fyy += yf.square().sum(0).double()
            ysum += ys.sum(0).double()
            samples += xs.shape[0]
            images += x.shape[0]
        if batches != len(targets):
            raise FlowError(f"internal: reconstruction of layer {use.name} got {batches} input batches for "
                            f"{len(targets)} target batches")
        for fx, fy, fyy in folds:
            xtx += fx
            xty += fy
            yty += fyy
        if not (torch.isfinite(xtx).all() and torch.isfinite(xty).all()):
            raise FlowError(f"reconstruction of layer {use.name}: NaN/Inf activations on the calibration images; "
                            "check the checkpoint and that images are scaled to [0, 1]")
        sol, info = _solve(xtx, xty, old, samples, use.name, cfg, folds if k > 1 else None)
        var = (yty - ysum.square() / samples).sum().clamp_min(1e-30)

        def residual(w: torch.Tensor) -> float:  # sum of squared errors from the normal equations
            return float(((yty - 2 * (w * xty).sum(0) + (w * (xtx @ w)).sum(0)).sum() / var).clamp_min(0))
        # The old weights of a bias-free conv before a BN leave its output mean to the BN: compare with the best
        # constant offset, as the refit's bias would
        old_fit = old.clone()
        old_fit[-1] = (ysum - (xtx[-1, :-1] @ old[:-1])) / samples
        info.update(layer=use.name, error_before=round(residual(old_fit), 6), error_after=round(residual(sol), 6))
        _assign(trimmed, use, sol)
    return info


def _changed_layers(graph: ChannelGraph, keep: dict[int, torch.Tensor]) -> set[str]:
    """Conv/linear layers whose input differs from the untrimmed net's: every one downstream of a trimmed group."""
    trimmed_groups = {graph.find(g) for g, idx in keep.items() if idx.numel() != graph.group(g).size}
    out: set[str] = set()
    dirty_groups = set(trimmed_groups)
    for use in graph.uses.values():  # execution order
        reads = {graph.find(s.group) for s in use.inputs}
        if reads & dirty_groups:
            if use.kind in ("conv", "linear"):
                out.add(use.name)
            if use.out_group is not None:
                dirty_groups.add(graph.find(use.out_group))
    return out
