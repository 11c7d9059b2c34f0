"""trimflow.verify: the one agreement rule for float executions of the same quantized net."""

import numpy as np

from trimflow.verify import MAX_BOUNDARY_SHARE, compare_logits


def _logits(n=200, classes=10, seed=0):
    return np.random.default_rng(seed).normal(size=(n, classes)).astype(np.float32)


def test_float_noise_agrees():
    ref = _logits()
    a = compare_logits(ref, ref + 1e-6)
    assert a.ok and a.beyond == 0 and a.top1_agreement == 1.0 and a.max_abs_diff < a.tolerance


def test_rare_rounding_boundary_images_are_allowed_but_counted():
    ref = _logits()
    got = ref.copy()
    allowed = int(MAX_BOUNDARY_SHARE * len(ref))
    # one quantization step on one logit of a few images, never changing the predicted class
    for i in range(allowed):
        cls = int(np.argmin(ref[i]))
        got[i, cls] -= 0.05
    a = compare_logits(ref, got)
    assert a.beyond == allowed and a.ok
    got[allowed, int(np.argmin(ref[allowed]))] -= 0.05
    b = compare_logits(ref, got)
    assert b.beyond == allowed + 1 and not b.ok and f"allowed: {MAX_BOUNDARY_SHARE:.0%}" in b.describe()


def test_systematic_error_fails():
    ref = _logits()
    assert not compare_logits(ref, ref * 1.01).ok  # e.g. a wrong output scale
    shuffled = ref[:, ::-1]
    assert compare_logits(ref, shuffled).top1_agreement < 0.5
