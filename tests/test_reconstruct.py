"""Label-free least-squares reconstruction after trimming (trimflow.reconstruct) through trim_model."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from trimflow import FlowError
from trimflow.data import ImageSet
from trimflow.models import build_model
from trimflow.reconstruct import ReconstructConfig
from trimflow.relevance import RelevanceScores
from trimflow.trim import SensitivityConfig, TrimConfig, trim_model
from tests.helpers import synthetic_images as _images


def _scores(model: torch.nn.Module, shape, low: dict[str, list[int]] | None = None) -> RelevanceScores:
    """Descending scores per layer (kernel 0 most relevant), with the kernels in `low` made the least relevant."""
    layers = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Conv2d) and name != "classifier":
            s = [float(mod.out_channels - i) for i in range(mod.out_channels)]
            for i in (low or {}).get(name, []):
                s[i] = -1.0
            layers[name] = s
    return RelevanceScores("test", {}, tuple(shape), 0, layers)


def _duplicated_net() -> torch.nn.Module:
    """A small CNV whose first layer's kernel 7 is an exact copy of kernel 0 (same conv weights and BN)."""
    torch.manual_seed(0)
    net = build_model("cnv", widths=(8, 8, 16), strides=(1, 2, 2)).eval()
    conv, bn = net.features[0], net.features[1]
    with torch.no_grad():
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
        bn.bias.fill_(1.0)  # every first-layer kernel active on most pixels: no dead input, a well-posed refit
        for t in (conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var):
            t[7] = t[0]
        net.features[3].weight[:, 7] *= 10  # the next layer leans on the copy: dropping it must matter
    return net


def test_redundant_kernel_is_recovered_by_the_refit():
    # Kernel 7 duplicates kernel 0, so the next layer can read kernel 0 twice: the least-squares refit must find
    # that; the trimmed weights alone (no refit) cannot. (Not bit-exact: random 3x3 features of noise images are
    # nearly collinear, so the refit's ill-conditioned systems get the fallback ridge, which pulls towards the old
    # weights.)
    net = _duplicated_net()
    data = _images(96, shape=(1, 28, 28))
    scores = _scores(net, data.shape, {"features.0": [7]})
    # one threshold over all 32 kernels: only the least relevant one (features.0's kernel 7) goes
    cfg = TrimConfig(policy="global", keep=31 / 32, normalize="none", compensation="reconstruct",
                     reconstruct=ReconstructConfig(positions=64))
    trimmed, report = trim_model(net, scores, cfg, data)
    assert [layer["kept"] for layer in report.layers] == [7, 8, 16]
    x = _images(32, shape=(1, 28, 28), seed=5).float_images()  # images the refit did not see
    with torch.no_grad():
        ref, out = net(x), trimmed(x)
        plain, _ = trim_model(net, scores, dataclasses.replace(cfg, compensation="none"), data)
        plain_out = plain(x)
    assert (out - ref).abs().max() < 0.1 * (plain_out - ref).abs().max()
    first = report.reconstruction[0]
    assert first["layer"] == "features.3" and first["error_after"] < 0.03 * first["error_before"]


def test_refit_reduces_every_layer_error_and_needs_no_labels():
    torch.manual_seed(1)
    net = build_model("cnv").eval()
    data = _images(128, shape=(1, 28, 28))
    scores = _scores(net, data.shape)
    cfg = TrimConfig(policy="uniform", keep=0.5, compensation="reconstruct")
    trimmed, report = trim_model(net, scores, cfg, data)
    assert [r["layer"] for r in report.reconstruction] == ["features.3", "features.6", "features.9", "features.12",
                                                           "classifier"]
    for r in report.reconstruction:
        assert r["error_after"] <= r["error_before"] + 1e-9, r
    # labels are never read: the same images with other labels give bit-identical weights
    shuffled = ImageSet(data.name, data.images, data.labels[torch.randperm(len(data))], data.classes)
    again, _ = trim_model(net, scores, cfg, shuffled)
    for (k, a), (_, b) in zip(trimmed.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k


def test_few_samples_get_the_fallback_ridge_or_an_error():
    torch.manual_seed(2)
    net = build_model("cnv").eval()
    data = _images(40, shape=(1, 28, 28))  # 40 images < the classifier's 32 x 7 x 7 + 1 unknowns
    scores = _scores(net, data.shape)
    # without the ridge search: the fallback ridge itself (the search keeps it as its floor, tested below)
    cfg = TrimConfig(policy="uniform", keep=0.5, compensation="reconstruct", calib_images=40,
                     reconstruct=ReconstructConfig(ridge_search=()))
    _, report = trim_model(net, scores, cfg, data)
    fallback = {r["layer"]: r for r in report.reconstruction if "fallback" in r}
    assert "classifier" in fallback
    assert fallback["classifier"]["fallback"] == "fewer samples than unknowns"
    assert fallback["classifier"]["ridge"] == cfg.reconstruct.fallback_ridge
    assert fallback["classifier"]["samples"] == 40 and fallback["classifier"]["unknowns"] == 32 * 49 + 1
    strict = dataclasses.replace(cfg, reconstruct=ReconstructConfig(on_few_samples="error"))
    with pytest.raises(FlowError, match=r"layer classifier: 40 samples for 1569 unknowns.*at least 1569"):
        trim_model(net, scores, strict, data)


def test_reconstruct_needs_images():
    net = build_model("cnv").eval()
    scores = _scores(net, (1, 28, 28))
    with pytest.raises(FlowError, match="compensation=reconstruct needs a calibration set"):
        trim_model(net, scores, TrimConfig(policy="uniform", keep=0.5, compensation="reconstruct"))
    with pytest.raises(FlowError, match="compensation 'lsq' unknown"):
        TrimConfig(compensation="lsq")


@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 1, 1), (2, 0, 1), (1, 2, 2), ((2, 1), (1, 0), 1)])
def test_sampled_patches_are_unfolds_columns(stride, padding, dilation):
    # The refit gathers only the sampled positions' patches; they must be exactly unfold's columns at those
    # positions, in unfold's (channel, row, column) order, for every stride / padding / dilation.
    from trimflow.reconstruct import _patches, _pick
    conv = torch.nn.Conv2d(3, 4, 3, stride=stride, padding=padding, dilation=dilation)
    x = torch.randn(5, 3, 11, 9)
    cols = torch.nn.functional.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
    idx = _pick(7, 5, cols.shape[2], torch.Generator().manual_seed(0))
    want = cols.gather(2, idx[:, None, :].expand(-1, cols.shape[1], -1)).transpose(1, 2).reshape(-1, cols.shape[1])
    assert torch.equal(_patches(conv, x, idx), want)
    assert torch.equal(_patches(conv, x, None), cols.transpose(1, 2).reshape(-1, cols.shape[1]))


def test_one_untrimmed_pass_or_one_per_layer_gives_the_same_refit():
    # The untrimmed net's targets are cached for as many layers as cache_mb allows; a tiny cache forces one pass
    # per layer. The sampled positions are per layer, so the refit must not depend on how the layers were grouped.
    net = _duplicated_net()
    data = _images(64, shape=(1, 28, 28))
    scores = _scores(net, data.shape)
    base = TrimConfig(policy="uniform", keep=0.5, compensation="reconstruct")
    results = []
    for cache_mb in (512.0, 1e-6):
        cfg = dataclasses.replace(base, reconstruct=ReconstructConfig(positions=16, cache_mb=cache_mb))
        trimmed, report = trim_model(net, scores, cfg, data)
        results.append((trimmed.state_dict(), [(r["layer"], r["error_after"]) for r in report.reconstruction]))
    assert results[0][1] == results[1][1] and len(results[0][1]) >= 3
    for k, v in results[0][0].items():
        assert torch.equal(v, results[1][0][k]), k


def test_cached_untrimmed_outputs_give_the_same_refit_for_any_keep_set():
    # The sensitivity probes of one group share the untrimmed net's outputs (every channel cached, the kept ones
    # taken per call): each refit must be bit-identical to one computed without the cache.
    from trimflow.graph import build_graph
    from trimflow.reconstruct import reconstruct
    from trimflow.trim import remove_channels

    net = build_model("cnv").eval()
    data = _images(48, shape=(1, 28, 28))
    graph = build_graph(net, data.shape)
    cfg = ReconstructConfig(positions=8)
    cache: dict = {}
    g1, g2 = graph.prunable()[1:3]
    readers = [u.name for u in graph.uses.values() if u.kind in ("conv", "linear")
               and any(graph.find(s.group) == g1.id for s in u.inputs)]
    assert any(graph.uses[r].out_group is not None and graph.find(graph.uses[r].out_group) == g2.id for r in readers)
    # g1's probes at two widths, then g1 and the readers' own output group g2 trimmed (kept outputs sliced)
    for keep in ({g1.id: torch.arange(3) * 2}, {g1.id: torch.arange(9)},
                 {g1.id: torch.arange(5) * 3, g2.id: torch.arange(7) * 2}):
        plain, cached = remove_channels(net, graph, keep), remove_channels(net, graph, keep)
        a = reconstruct(net, plain, graph, keep, data, cfg, readers)
        b = reconstruct(net, cached, graph, keep, data, cfg, readers, cache)
        assert a == b and cache
        for name, v in plain.state_dict().items():
            assert torch.equal(v, cached.state_dict()[name]), name


def test_rescale_restores_the_weight_scale_and_changes_no_output():
    net = build_model("cnv").eval()
    with torch.no_grad():
        for m in net.modules():  # BN statistics away from 0/1, so the running-stat bookkeeping is exercised
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    data = _images(64, shape=(1, 28, 28))
    scores = _scores(net, data.shape)
    base = TrimConfig(policy="uniform", keep=0.25, compensation="reconstruct")
    out = {}
    for rescale in (False, True):
        cfg = dataclasses.replace(base, reconstruct=ReconstructConfig(positions=16, rescale=rescale))
        trimmed, report = trim_model(net, scores, cfg, data)
        out[rescale] = (trimmed, report)
    x = data.float_images()[:16]
    with torch.no_grad():
        assert torch.allclose(out[False][0](x), out[True][0](x), atol=1e-5, rtol=1e-4)
    records = {r["layer"]: r for r in out[True][1].reconstruction}
    convs = [name for name, r in records.items() if r.get("rescaled") is not None]
    assert convs and records["classifier"].get("rescaled") is None  # no BN after the classifier: left alone
    for name in convs:
        w, ref = out[True][0].get_submodule(name).weight, net.get_submodule(name).weight
        kept = [layer["kept_indices"] for layer in out[True][1].layers if name in layer["producers"]]
        ref = ref[kept[0]] if kept else ref
        assert torch.allclose(w.flatten(1).pow(2).mean(1).sqrt(), ref.flatten(1).pow(2).mean(1).sqrt(), rtol=1e-4)


def test_output_ridge_reaches_only_the_layer_computing_the_logits():
    torch.manual_seed(3)
    net = build_model("cnv").eval()
    data = _images(128, shape=(1, 28, 28))
    scores = _scores(net, data.shape)
    # fixed ridges (no search), so that the classifier's is the plain refit's fallback ridge
    cfg = TrimConfig(policy="uniform", keep=0.5, compensation="reconstruct", calib_images=128,
                     reconstruct=ReconstructConfig(ridge_search=()))
    default, plain = trim_model(net, scores, cfg, data)
    held = dataclasses.replace(cfg, reconstruct=ReconstructConfig(ridge_search=(), output_ridge=1.0))
    trimmed, report = trim_model(net, scores, held, data)
    ridges = {r["layer"]: r["ridge"] for r in report.reconstruction}
    # 128 samples for the classifier's 1,569 unknowns: its fallback ridge is raised to the output ridge too
    assert ridges.pop("classifier") == 1.0
    assert ridges == {r["layer"]: r["ridge"] for r in plain.reconstruction if r["layer"] != "classifier"}
    # with the ridge search on, the output ridge is still taken as it is (not searched)
    _, searched = trim_model(net, scores, dataclasses.replace(cfg, reconstruct=ReconstructConfig(output_ridge=1.0)),
                             data)
    last = searched.reconstruction[-1]
    assert last["layer"] == "classifier" and last["ridge"] == 1.0 and "held_out_error" not in last
    # pulled harder towards the pretrained classifier than the default refit; _scores keeps the first kernels, so
    # the kept inputs after the flatten are the first columns
    old = net.classifier.weight.detach()
    kept = trimmed.classifier.weight.shape[1]
    dist = lambda m: float((m.classifier.weight.detach() - old[:, :kept]).norm())  # noqa: E731
    assert dist(trimmed) < dist(default)


def test_held_out_errors_equal_refitting_on_the_other_folds():
    # the search's eigendecomposition shortcut (bias eliminated by centring, one decomposition per fold for every
    # candidate) against plain ridge solves on the rows of the other folds
    from trimflow.reconstruct import _held_out_errors
    gen = torch.Generator().manual_seed(0)
    n, d, o = 120, 12, 3
    x = torch.randn(n, d, generator=gen, dtype=torch.float64) + 0.5
    x = torch.cat([x, torch.ones(n, 1, dtype=torch.float64)], 1)
    y = x[:, :4].sum(1, keepdim=True) + torch.randn(n, o, generator=gen, dtype=torch.float64)
    prior = torch.randn(d + 1, o, generator=gen, dtype=torch.float64)
    fold = torch.arange(n) % 4
    folds = [(x[fold == f].T @ x[fold == f], x[fold == f].T @ y[fold == f], y[fold == f].square().sum(0))
             for f in range(4)]
    ridges = [1e-4, 1e-2, 1.0, 10.0]
    got = _held_out_errors(x.T @ x, x.T @ y, prior, folds, ridges)
    for r, g in zip(ridges, got):
        want = 0.0
        for f in range(4):
            xt, yt = x[fold != f], y[fold != f]
            reg = torch.full((d + 1,), r * float((xt.T @ xt).diagonal()[:d].mean()), dtype=torch.float64)
            reg[d] = 0  # the bias is not penalised
            w = torch.linalg.solve(xt.T @ xt + torch.diag(reg), xt.T @ yt + reg[:, None] * prior)
            want += float((y[fold == f] - x[fold == f] @ w).square().sum())
        assert float(g) == pytest.approx(want, rel=1e-9)


def test_ridge_search_takes_the_best_held_out_ridge_and_keeps_the_fallback_floor():
    torch.manual_seed(3)
    net = build_model("cnv").eval()
    data = _images(128, shape=(1, 28, 28))
    scores = _scores(net, data.shape)
    search = (1e-4, 1e-2, 1.0, 100.0)
    cfg = TrimConfig(policy="uniform", keep=0.5, compensation="reconstruct", calib_images=128,
                     reconstruct=ReconstructConfig(ridge_search=search))
    _, report = trim_model(net, scores, cfg, data)
    for r in report.reconstruction:
        errors = {float(k): v for k, v in r["held_out_error"].items()}
        assert r["ridge"] == min(errors, key=errors.get), r
        if "fallback" in r:  # 128 samples for the classifier's 1,569 unknowns: never below the fallback ridge
            assert min(errors) == cfg.reconstruct.fallback_ridge and r["ridge"] >= cfg.reconstruct.fallback_ridge
        else:
            assert sorted(errors) == list(search)
    assert "fallback" in {r["layer"]: r for r in report.reconstruction}["classifier"]
    with pytest.raises(FlowError, match="folds must be >= 2"):
        ReconstructConfig(ridge_search=(1.0,), folds=1)


def test_build_report_names_the_searched_ridge_and_the_fallback_layers():
    from trimflow.report.build_report import compensation_section
    torch.manual_seed(3)
    net = build_model("cnv").eval()
    data = _images(128, shape=(1, 28, 28))
    scores = _scores(net, data.shape)
    for search in ((), (1e-4, 1.0)):
        cfg = TrimConfig(policy="uniform", keep=0.5, compensation="reconstruct", calib_images=128,
                         reconstruct=ReconstructConfig(ridge_search=search))
        _, report = trim_model(net, scores, cfg, data)
        text = "\n".join(compensation_section({"reconstruction": report.reconstruction}))
        assert ("trim.reconstruct.ridge_search" in text) == bool(search)
        named = text.split("(fallback) ridge term: ")[1].split(".\n")[0].split(", ")
        assert named == [r["layer"] for r in report.reconstruction if "fallback" in r] and "classifier" in named
        assert "| classifier | 128 | 1,569 |" in text


def test_activation_memory_bound_changes_nothing_but_is_reported():
    # trim.reconstruct.activation_mb=0 keeps no batch's activations between layers (refit and sensitivity probes):
    # each layer's input is run again from the images, which must give bit for bit the same trim, and the report
    # counts the recomputed batches
    net = _duplicated_net()
    data = _images(64, shape=(1, 28, 28))
    scores = _scores(net, data.shape)
    base = TrimConfig(policy="budget", budget=0.5, compensation="reconstruct", allocation="sensitivity",
                      sensitivity=SensitivityConfig(images=32, batch_size=16))
    results = []
    for mb in (2048.0, 0.0):
        cfg = dataclasses.replace(base, reconstruct=ReconstructConfig(positions=16, batch_size=16, activation_mb=mb))
        trimmed, report = trim_model(net, scores, cfg, data, progress=False)
        results.append((trimmed.state_dict(), report))
    (want, full), (got, bounded) = results
    for k, v in want.items():
        assert torch.equal(v, got[k]), k
    assert full.sensitivity == bounded.sensitivity
    assert not any("recomputed_batches" in r for r in full.reconstruction)
    later = [r for r in bounded.reconstruction if "samples" in r][1:]  # the first refitted layer needs no recompute
    assert later and all(r.get("recomputed_batches") == 4 for r in later)
