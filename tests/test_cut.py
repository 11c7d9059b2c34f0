"""trimflow.cut: BN statistics synchronised after a refit (sync_bn), so a fine-tune starts from the trimmed function."""

from __future__ import annotations

import copy

import torch

from trimflow.cut import sync_bn_statistics
from trimflow.relevance import RelevanceConfig, compute_relevance
from trimflow.trim import TrimConfig, trim_model
from tests.helpers import small_net, synthetic_images


def _trimmed(sync: bool):
    model, data = small_net(), synthetic_images(64)
    scores = compute_relevance(model, data, RelevanceConfig(images=None))
    cfg = TrimConfig(policy="budget", budget=0.5, compensation="reconstruct", sync_bn=sync)
    trimmed, report = trim_model(model, scores, cfg, data)
    return trimmed.double(), report, data


def _outputs(model, x, train: bool):
    m = copy.deepcopy(model).train(train)  # a train-mode forward updates running statistics: work on a copy
    with torch.no_grad():
        return m(x)


def test_sync_keeps_the_eval_function_and_makes_train_mode_agree():
    trimmed, report, data = _trimmed(sync=False)
    assert report.bn_synced is None
    x = data.float_images().double()
    before_eval, before_train = _outputs(trimmed, x, False), _outputs(trimmed, x, True)
    # the refit leaves running statistics that are not the input's: batch statistics give another function
    assert (before_train - before_eval).abs().max() > 1e-2
    changed = sync_bn_statistics(trimmed, data, batch_size=16)
    assert changed == ["bn1", "bn2"]
    after_eval, after_train = _outputs(trimmed, x, False), _outputs(trimmed, x, True)
    torch.testing.assert_close(after_eval, before_eval, atol=1e-10, rtol=1e-9)  # the same function
    # the whole set as one batch: its statistics are the ones measured
    # (train mode divides by the biased variance, the running one is unbiased: a 1/n difference)
    assert (after_train - after_eval).abs().max() < 1e-3 * (before_train - before_eval).abs().max()
    with torch.no_grad():
        z = trimmed.c1(x)
    torch.testing.assert_close(trimmed.bn1.running_mean, z.mean((0, 2, 3)), atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(trimmed.bn1.running_var, z.var((0, 2, 3), unbiased=True), atol=1e-12, rtol=1e-9)


def test_trim_config_sync_bn_is_recorded_and_changes_nothing_in_eval_mode():
    plain, _, data = _trimmed(sync=False)
    synced, report, _ = _trimmed(sync=True)
    assert report.bn_synced == ["bn1", "bn2"]
    x = data.float_images().double()
    torch.testing.assert_close(_outputs(synced, x, False), _outputs(plain, x, False), atol=1e-10, rtol=1e-9)
