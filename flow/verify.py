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
MIN_TOP1_AGREEMENT of them. Where both sides are integer (Verilator vs FINN's python model) the comparison is exact
equality instead.
"""

from __future__ import annotations

import dataclasses

import numpy as np

REL_TOLERANCE = 1e-4
MAX_BOUNDARY_SHARE = 0.05
MIN_TOP1_AGREEMENT = 0.99


@dataclasses.dataclass(frozen=True)
class Agreement:
    images: int
    max_abs_diff: float
    tolerance: float  # absolute: REL_TOLERANCE x the reference's logit range
    beyond: int  # images with some logit further than `tolerance` from the reference
    top1_agreement: float

    @property
    def ok(self) -> bool:
        return self.top1_agreement >= MIN_TOP1_AGREEMENT and self.beyond <= MAX_BOUNDARY_SHARE * self.images

    def describe(self) -> str:
        return (f"{self.beyond}/{self.images} images differ by more than {REL_TOLERANCE:g} x logit range "
                f"(allowed: {MAX_BOUNDARY_SHARE:.0%} of the images; max abs diff {self.max_abs_diff:.4g}), top-1 "
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
