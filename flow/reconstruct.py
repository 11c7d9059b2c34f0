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
from typing import Any

import torch
from torch import nn

from trimflow import FlowError
from trimflow.data import ImageSet, make_loader
from trimflow.graph import ChannelGraph

ON_FEW_SAMPLES = ("ridge", "error")


@dataclasses.dataclass(frozen=True)
class ReconstructConfig:
    """trim.compensation = reconstruct: how each consumer layer is refitted (see trimflow.reconstruct)."""

    positions: int = 32  # output positions sampled per image for a convolution (all of them if the map is smaller)
    # always added: this fraction of the mean diagonal of X^T X, pulling the fit towards the layer's current
    # weights (numerical safety; keeps weights the images do not determine)
    ridge: float = 1e-4
    # added instead when a layer has fewer samples than unknowns or its X^T X is ill-conditioned (see `condition`)
    fallback_ridge: float = 1e-2
    condition: float = 1e8  # condition number of X^T X above which a layer counts as ill-conditioned
    on_few_samples: str = "ridge"  # fewer samples than unknowns: ridge (fallback_ridge, named in the report) | error
    batch_size: int = 250
    seed: int = 0

    def __post_init__(self):
        if self.positions < 1:
            raise FlowError(f"trim.reconstruct.positions must be >= 1, got {self.positions}")
        if self.ridge < 0 or self.fallback_ridge <= 0:
            raise FlowError(f"trim.reconstruct: ridge must be >= 0 and fallback_ridge > 0, got {self.ridge}, "
                            f"{self.fallback_ridge}")
        if self.condition <= 1:
            raise FlowError(f"trim.reconstruct.condition must be > 1, got {self.condition}")
        if self.on_few_samples not in ON_FEW_SAMPLES:
            raise FlowError(f"trim.reconstruct.on_few_samples {self.on_few_samples!r} unknown; use one of "
                            f"{', '.join(ON_FEW_SAMPLES)}")
        if self.batch_size < 1:
            raise FlowError(f"trim.reconstruct.batch_size must be >= 1, got {self.batch_size}")


class _Stop(Exception):
    """Raised from a hook once the layer of interest has been seen: the rest of the forward pass is not needed."""


def _capture(model: nn.Module, name: str, x: torch.Tensor, want: str) -> torch.Tensor:
    """Run `model` on x only up to module `name`; return that module's input (want="in") or output ("out")."""
    box: list[torch.Tensor] = []
    mod = model.get_submodule(name)

    def pre(module, args):
        box.append(args[0].detach())
        raise _Stop

    def post(module, args, out):
        box.append(out.detach())
        raise _Stop

    handle = mod.register_forward_pre_hook(pre) if want == "in" else mod.register_forward_hook(post)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not box:
        raise FlowError(f"reconstruction: layer {name} is not reached by the model's forward pass")
    return box[0]


def _samples(mod: nn.Module, x: torch.Tensor, y: torch.Tensor, positions: int, gen: torch.Generator
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Regression rows (inputs with a trailing 1, targets) of one batch: per image a few output positions."""
    if isinstance(mod, nn.Linear):
        xs = x.flatten(1)
        ys = y.flatten(1)
    else:
        cols = nn.functional.unfold(x, mod.kernel_size, mod.dilation, mod.padding, mod.stride)  # (N, C*k*k, P)
        n, _, p = cols.shape
        yf = y.flatten(2)  # (N, out, P)
        if p > positions:
            idx = torch.stack([torch.randperm(p, generator=gen)[:positions] for _ in range(n)])  # (N, positions)
            cols = cols.gather(2, idx[:, None, :].expand(-1, cols.shape[1], -1))
            yf = yf.gather(2, idx[:, None, :].expand(-1, yf.shape[1], -1))
        xs = cols.transpose(1, 2).reshape(-1, cols.shape[1])
        ys = yf.transpose(1, 2).reshape(-1, yf.shape[1])
    ones = torch.ones(xs.shape[0], 1, dtype=xs.dtype)
    return torch.cat([xs, ones], 1).float(), ys.float()


def _solve(xtx: torch.Tensor, xty: torch.Tensor, prior: torch.Tensor, samples: int, name: str,
           cfg: ReconstructConfig) -> tuple[torch.Tensor, dict[str, Any]]:
    """Ridge solution of the normal equations, pulled towards `prior` (the layer's current weights), not zero.

    Where the images do not determine a weight (fewer samples than unknowns, or directions the inputs never take),
    the refit keeps what the layer had instead of shrinking it; the bias row is never penalised.
    """
    d = xtx.shape[0] - 1
    diag = xtx.diagonal()[:d]
    scale = float(diag.mean()) if d else 0.0
    info: dict[str, Any] = {"samples": samples, "unknowns": d + 1}
    if scale <= 0:  # every kept input is constant zero: only the bias can be fitted
        info["note"] = "all inputs zero"
        scale = 1.0
    eig = torch.linalg.eigvalsh(xtx[:d, :d]) if d else torch.ones(1, dtype=xtx.dtype)
    cond = float(eig[-1] / eig[0].clamp_min(1e-300)) if float(eig[-1]) > 0 else float("inf")
    info["condition"] = cond
    few = samples < d + 1
    if few and cfg.on_few_samples == "error":
        raise FlowError(f"reconstruction of layer {name}: {samples} samples for {d + 1} unknowns; give the "
                        f"calibration set at least {d + 1} samples (trim.calib_images, trim.reconstruct.positions) "
                        "or set trim.reconstruct.on_few_samples=ridge")
    ridge = cfg.ridge
    if few or cond > cfg.condition:
        ridge = cfg.fallback_ridge
        info["fallback"] = "fewer samples than unknowns" if few else f"ill-conditioned (condition {cond:.3g})"
    info["ridge"] = ridge
    reg = torch.zeros(d + 1, dtype=xtx.dtype)
    reg[:d] = ridge * scale
    sol = torch.linalg.solve(xtx + torch.diag(reg), xty + reg[:, None] * prior)
    return sol, info


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


def reconstruct(original: nn.Module, trimmed: nn.Module, graph: ChannelGraph, keep: dict[int, torch.Tensor],
                images: ImageSet, cfg: ReconstructConfig = ReconstructConfig(),
                layers: list[str] | None = None) -> list[dict[str, Any]]:
    """Refit, in execution order, every conv/linear layer of `trimmed` whose input differs from the original's.

    `keep` is the kept channel indices per trimmed group (as trimflow.trim chose them); `layers` restricts the refit
    to these layers (the sensitivity probes refit only the consumers of the probed group). Returns one record per
    refitted layer: samples, unknowns, ridge, condition number, fallback reason if any, and the relative error of
    the layer's output (residual energy / output variance energy) before and after the refit.
    """
    if len(images) == 0:
        raise FlowError("reconstruction needs representative images; the calibration set is empty")
    original, dtype = original.eval(), next(trimmed.parameters()).dtype
    trimmed.eval()
    changed = _changed_layers(graph, keep)
    todo = [u for u in graph.uses.values() if u.name in changed and (layers is None or u.name in layers)]
    records = []
    for use in todo:
        mod = trimmed.get_submodule(use.name)
        if isinstance(mod, nn.modules.conv._ConvNd) and (mod.groups != 1 or mod.padding_mode != "zeros"
                                                          or not isinstance(mod, nn.Conv2d)):
            why = (f"grouped convolution (groups={mod.groups})" if mod.groups != 1 else
                   f"padding_mode={mod.padding_mode!r}" if isinstance(mod, nn.Conv2d) else type(mod).__name__)
            records.append({"layer": use.name, "skipped": why})  # named in the report: never a silent fallback
            continue
        out_keep = keep.get(graph.find(use.out_group)) if use.out_group is not None else None
        gen = torch.Generator().manual_seed(cfg.seed)
        d = mod.weight[0].numel()
        xtx = torch.zeros(d + 1, d + 1, dtype=torch.float64)
        xty = torch.zeros(d + 1, mod.weight.shape[0], dtype=torch.float64)
        yty = torch.zeros(mod.weight.shape[0], dtype=torch.float64)
        ysum = torch.zeros(mod.weight.shape[0], dtype=torch.float64)
        samples = 0
        old = torch.cat([mod.weight.detach().flatten(1).T.double(),
                         (mod.bias.detach() if mod.bias is not None else torch.zeros(mod.weight.shape[0]))
                         .double()[None]])
        with torch.no_grad():
            for x, _ in make_loader(images, cfg.batch_size):
                x = x.to(dtype)
                y = _capture(original, use.name, x, "out")
                if out_keep is not None:
                    y = y[:, out_keep]
                xin = _capture(trimmed, use.name, x, "in")
                xs, ys = _samples(mod, xin, y, cfg.positions, gen)
                # one batch's products in float32 (a few thousand rows: ~1e-6 relative error, 4x faster than
                # float64), summed over batches in float64
                xtx += (xs.T @ xs).double()
                xty += (xs.T @ ys).double()
                yty += ys.square().sum(0).double()
                ysum += ys.sum(0).double()
                samples += xs.shape[0]
        if not (torch.isfinite(xtx).all() and torch.isfinite(xty).all()):
            raise FlowError(f"reconstruction of layer {use.name}: NaN/Inf activations on the calibration images; "
                            "check the checkpoint and that images are scaled to [0, 1]")
        sol, info = _solve(xtx, xty, old, samples, use.name, cfg)
        var = (yty - ysum.square() / samples).sum().clamp_min(1e-30)

        def residual(w: torch.Tensor) -> float:  # sum of squared errors from the normal equations
            return float(((yty - 2 * (w * xty).sum(0) + (w * (xtx @ w)).sum(0)).sum() / var).clamp_min(0))
        # The old weights of a bias-free conv before a BN leave its output mean to the BN: compare with the best
        # constant offset, as the refit's bias would
        old_fit = old.clone()
        old_fit[-1] = (ysum - (xtx[-1, :-1] @ old[:-1])) / samples
        info.update(layer=use.name, error_before=round(residual(old_fit), 6), error_after=round(residual(sol), 6))
        _assign(trimmed, use, sol)
        records.append(info)
    return records


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
