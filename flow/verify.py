"""One rule for "two executions of the same quantized net agree" (Brevitas vs QONNX, QONNX vs FINN, and the
simulated accelerator vs QONNX).

Both sides compute the same integer grids with float32 scales; what differs is the order of float32 arithmetic
(torch vs onnxruntime vs FINN's thresholds, into which streamlining folds scales, BN and biases), about 1e-6
relative, so REL_TOLERANCE of the logit range is already generous. A pre-activation that lands exactly on a
quantizer's rounding boundary can still move one activation by one quantization step on one side only; such an
image then differs visibly. That is rare, and more frequent the finer the grid (measured: W4A4 default net, 6 of
1,000 test images between FINN's streamlined model and QONNX; W8A8, 1-2 of 100 between Brevitas and QONNX and
between QONNX and FINN). An export or streamlining bug (a wrong scale, padding or threshold) shows on most images,
so at most MAX_BOUNDARY_SHARE of the images may differ past the tolerance, and the predicted classes must agree on
MIN_TOP1_AGREEMENT of them. On a small sample a share is not a meaningful limit (3 boundary images of 50 are 6 %,
and happen by chance at the measured rate), so the allowed count is never below what a BOUNDARY_RATE of boundary
images produces with probability 1 - FALSE_ALARM (binomial tail): a check on 50 images allows 5, on 1,000 still 50. Where both sides are integer (Verilator vs FINN's python model) the comparison is exact
equality instead.
"""

from __future__ import annotations

import dataclasses

import numpy as np

REL_TOLERANCE = 1e-4
MAX_BOUNDARY_SHARE = 0.05
MIN_TOP1_AGREEMENT = 0.99
BOUNDARY_RATE = 0.02  # the worst rate of rounding-boundary images measured (W8A8, see above)
FALSE_ALARM = 1e-3  # chance that an export without a bug fails the check at that rate


def allowed_boundary_images(n: int) -> int:
    """Images that may differ past the tolerance out of n: MAX_BOUNDARY_SHARE, or the binomial bound if larger
    (the fewest k with P(X > k) <= FALSE_ALARM for X ~ Binomial(n, BOUNDARY_RATE))."""
    from scipy.stats import binom  # imported here: scipy.stats costs ~1.5 s, and only a check needs it

    return max(int(MAX_BOUNDARY_SHARE * n), int(binom.isf(FALSE_ALARM, n, BOUNDARY_RATE)))


@dataclasses.dataclass(frozen=True)
class Agreement:
    images: int
    max_abs_diff: float
    tolerance: float  # absolute: REL_TOLERANCE x the reference's logit range
    beyond: int  # images with some logit further than `tolerance` from the reference
    top1_agreement: float

    @property
    def ok(self) -> bool:
        return self.top1_agreement >= MIN_TOP1_AGREEMENT and self.beyond <= allowed_boundary_images(self.images)

    def describe(self) -> str:
        return (f"{self.beyond}/{self.images} images differ by more than {REL_TOLERANCE:g} x logit range "
                f"(allowed: {allowed_boundary_images(self.images)}, {MAX_BOUNDARY_SHARE:.0%} of the images or the "
                f"chance count on a small sample; max abs diff {self.max_abs_diff:.4g}), top-1 "
                f"agreement {self.top1_agreement:.3f} (need >= {MIN_TOP1_AGREEMENT})")


def compare_logits(reference: np.ndarray, other: np.ndarray) -> Agreement:
    """Agreement of `other` with `reference`, both (N, classes) or reshapeable to it."""
    ref = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    got = np.asarray(other, dtype=np.float64).reshape(ref.shape)
    span = float(ref.max() - ref.min()) or 1.0
    diff = np.abs(got - ref).max(axis=1)
    return Agreement(images=len(ref), max_abs_diff=float(diff.max()), tolerance=REL_TOLERANCE * span,
                     beyond=int((diff > REL_TOLERANCE * span).sum()),
                     top1_agreement=float(np.mean(got.argmax(1) == ref.argmax(1))))
