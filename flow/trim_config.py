"""The trim stage's configs (TrimConfig with its SensitivityConfig and ReconstructConfig), apart from trimflow.trim
and trimflow.reconstruct so that loading a flow config does not import torch (tests/test_config_parsing.py checks
it in a fresh interpreter). Both modules re-export the names defined here."""

from __future__ import annotations

import dataclasses

from trimflow import FlowError
from trimflow.relevance_config import CRITERIA, NORMALIZE

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
    # Ridges (same units as `ridge`) tried per layer: the one whose fits on the other folds of the calibration images
    # best reproduce the untrimmed net's output on each held-out fold is used (cross-validation, no labels).
    # Candidates below `ridge` (below `fallback_ridge` on a fallback layer) are skipped; empty: always `ridge`. Why:
    # a classifier after a flatten is refitted from one sample per image (2,000 samples for 1,569 unknowns on CNV
    # at 4x fewer MACs), and the plain refit interpolates them, far from its pretrained weights; the search gives
    # it 0.1 there and keeps 1e-4 / 1e-3 on the conv layers. Default since 2026-12-02 (bench/results/
    # trim-zoo-longft.md, trim-zoo.md; the `-nocv` rows are without it): see README. The sensitivity probes refit
    # with `ridge` alone (trimflow.trim).
    ridge_search: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
    folds: int = 4  # image folds of that cross-validation
    condition: float = 1e8  # condition number of X^T X above which a layer counts as ill-conditioned
    on_few_samples: str = "ridge"  # fewer samples than unknowns: ridge (fallback_ridge, named in the report) | error
    batch_size: int = 250
    seed: int = 0
    # memory for the untrimmed net's sampled outputs; layers beyond it get another pass of the untrimmed net
    cache_mb: float = 512.0
    # memory for the live activations the refit's (and the sensitivity probes') staged passes keep between layers
    # (trimflow.staged); batches beyond it are run again from the images for each layer: slower, same result, and
    # the report's reconstruction records count them. 2,000 calibration images of the zoo's 28x28 nets take < 0.5 GB.
    activation_mb: float = 2048.0
    # Give each refitted conv/linear that a BN follows its untrimmed weight scale back (per output channel), the BN's
    # running statistics absorbing the factor: the net computes exactly the same, but a fine-tune then moves the
    # weights as fast as it would the pretrained ones. The refit makes up for the lost inputs with larger weights
    # (2-4x the RMS on CNV at 16x fewer MACs), and an optimiser's step is a smaller fraction of a larger weight.
    # On by default since 2026-12-01 (bench/results/trim-zoo-longft.md, trim-zoo.md): under a long fine-tune (2
    # epochs, Adam 1e-3) at 16x fewer MACs +0.2 pt on CNV (4 seeds) and +1.3 / +2.2 / +2.5 / +1.7 pt on the held-out
    # GAP-head CNV, wide CNV, MobileNet and ResNet-14 (2 seeds, on their briefly trained weights, kept in
    # trim-zoo-longft-short-pretrain.jsonl); under the short one +0.09 pt over 63 paired rows
    # (neutral), with no fine-tune the same function; the default build's W4A4 within QAT seed noise.
    rescale: bool = True
    # The ridge of the layers that compute the model's output (the logits), instead of `ridge`; None: `ridge`. A
    # large one (1) keeps the classifier close to its pretrained weights, a better start for a long fine-tune on the
    # tune nets, but a worse label-free net (bench/results/trim-zoo*.md, variant outridge<r>): not the default.
    output_ridge: float | None = None

    def __post_init__(self):
        if self.positions < 1:
            raise FlowError(f"trim.reconstruct.positions must be >= 1, got {self.positions}")
        if self.ridge < 0 or self.fallback_ridge <= 0:
            raise FlowError(f"trim.reconstruct: ridge must be >= 0 and fallback_ridge > 0, got {self.ridge}, "
                            f"{self.fallback_ridge}")
        if self.output_ridge is not None and self.output_ridge < 0:
            raise FlowError(f"trim.reconstruct.output_ridge must be >= 0 (or null: ridge), got {self.output_ridge}")
        if any(r < 0 for r in self.ridge_search):
            raise FlowError(f"trim.reconstruct.ridge_search: ridges must be >= 0, got {list(self.ridge_search)}")
        if self.folds < 2:
            raise FlowError(f"trim.reconstruct.folds must be >= 2 (one fold is held out), got {self.folds}")
        if self.condition <= 1:
            raise FlowError(f"trim.reconstruct.condition must be > 1, got {self.condition}")
        if self.on_few_samples not in ON_FEW_SAMPLES:
            raise FlowError(f"trim.reconstruct.on_few_samples {self.on_few_samples!r} unknown; use one of "
                            f"{', '.join(ON_FEW_SAMPLES)}")
        if self.batch_size < 1:
            raise FlowError(f"trim.reconstruct.batch_size must be >= 1, got {self.batch_size}")
        if self.cache_mb <= 0:
            raise FlowError(f"trim.reconstruct.cache_mb must be > 0, got {self.cache_mb}")
        if self.activation_mb < 0:
            raise FlowError(f"trim.reconstruct.activation_mb must be >= 0, got {self.activation_mb}")


POLICIES = ("uniform", "global", "budget")
METRICS = ("macs", "params")
ALLOCATIONS = ("rank", "sensitivity")
SENSITIVITY_METRICS = ("kl", "loss", "accuracy")
GUARDS = ("rank", "none")
COMPENSATIONS = ("none", "mean", "reconstruct")


@dataclasses.dataclass(frozen=True)
class SensitivityConfig:
    """allocation="sensitivity": how each channel group's sensitivity to losing kernels is measured."""

    # Widths each group is trimmed to on its own (fractions of its kernels, rounded like the trim itself); the
    # fewest kernels min_keep/round_to allow is always probed too, so every count the allocation may pick lies
    # between two measured ones (linear interpolation in between).
    keep_ratios: tuple[float, ...] = (0.75, 0.5, 0.375, 0.25)
    # Calibration images the loss is measured on; BN statistics of each probe are re-estimated on as many others
    # (on the same ones when the calibration set is smaller than twice this).
    images: int = 500
    # kl: mean KL divergence of the probe's outputs from the untrimmed net's (needs no labels) | loss: mean
    # cross-entropy increase | accuracy: top-1 drop (coarser on a small slice); loss and accuracy read labels
    metric: str = "kl"
    batch_size: int = 250
    # rank: the whole net trimmed by this allocation is compared with the one trimmed by one fraction per layer
    # (allocation=rank), both compensated, by KL divergence from the untrimmed net on the measure images (no
    # labels); the closer one is used and the report says which. The per-group drops are measured one group at a
    # time and assumed to add up; when many groups are cut deep at once they do not: on the zoo's MobileNet at 16x
    # fewer MACs the allocation put two groups at 1-2 kernels and the net fell to 16 % right after trimming, where
    # one fraction per layer kept 61 % (bench/results/trim-zoo.md). none: use the allocation unchecked.
    guard: str = "rank"

    def __post_init__(self):
        if not self.keep_ratios or any(not 0.0 < r < 1.0 for r in self.keep_ratios):
            raise FlowError(f"trim.sensitivity: keep_ratios must be a non-empty list of fractions in (0, 1), "
                            f"got {list(self.keep_ratios)}")
        if self.images < 1:
            raise FlowError(f"trim.sensitivity: images must be >= 1, got {self.images}")
        if self.metric not in SENSITIVITY_METRICS:
            raise FlowError(f"trim.sensitivity: metric {self.metric!r} unknown; use one of "
                            f"{', '.join(SENSITIVITY_METRICS)}")
        if self.batch_size < 1:
            raise FlowError(f"trim.sensitivity: batch_size must be >= 1, got {self.batch_size}")
        if self.guard not in GUARDS:
            raise FlowError(f"trim.sensitivity: guard {self.guard!r} unknown; use one of {', '.join(GUARDS)}")


@dataclasses.dataclass(frozen=True)
class TrimConfig:
    criterion: str = "relevance"  # which scores the pipeline computes (trimflow.criteria.CRITERIA)
    policy: str = "uniform"  # uniform: same keep ratio per layer; global: one threshold; budget: hit a cost
    keep: float = 0.5  # uniform/global: fraction of kernels kept
    budget: float = 0.5  # budget: fraction of the original budget_metric kept
    budget_metric: str = "macs"  # macs | params
    min_keep: int = 1  # never fewer kernels in a layer (capped at the layer's width)
    round_to: int = 1  # kept counts rounded up to a multiple of this, so PE/SIMD folding divides them
    # How global/budget compare one layer's scores with another's. "rank" (percentiles) measured best on CNV for
    # consumer-weighted relevance at 50% and 25% MACs: "none", "l2" and "max" let a global threshold strip conv5 or
    # conv1 to a few kernels and lost 8-49 pt before fine-tuning (Taylor: rank best at 50%, "max" 2.5 pt better at
    # 25%). With "rank" every layer keeps about the same fraction (budget searches that fraction for the target).
    normalize: str = "rank"
    # budget policy: how the kernels to remove are shared out between groups. rank: the threshold above (normalize);
    # sensitivity: by each group's measured loss increase per MAC/param saved (needs a calibration set, costs a
    # few seconds of forward passes; see SensitivityConfig).
    allocation: str = "rank"
    sensitivity: SensitivityConfig = SensitivityConfig()
    # What makes up for the removed kernels: none | mean (fold their mean output into the consumers' biases) |
    # reconstruct (refit every later conv/linear layer by least squares to reproduce the untrimmed net's output on
    # the calibration images, no labels; trimflow.reconstruct)
    compensation: str = "mean"
    reconstruct: ReconstructConfig = ReconstructConfig()
    recalibrate_bn: bool = False  # re-estimate BN running statistics on the calibration set (after compensation)
    # After the compensation, give every BN the statistics its input really has and move the difference into its
    # gamma / beta (trimflow.cut.sync_bn_statistics): the trimmed net computes the same in eval mode, and a
    # fine-tune, which runs BN on batch statistics, starts from that function instead of another one. Without it
    # the zoo's MobileNet at 16x fewer MACs is at 53 % after the refit but 20 % under batch statistics, and the
    # short fine-tune ended at 19 %; with it 56 % (bench/results/trim-zoo.md). Elsewhere +0.4 pt (CNV at 16x, long
    # fine-tune) or within noise; the default build's W4A4 92.04 vs 91.96 %.
    sync_bn: bool = True
    calib_images: int = 2000  # images of the calibration set used for means / BN statistics
    batch_size: int = 250
    seed: int = 0

    def __post_init__(self):
        if self.criterion not in CRITERIA:
            raise FlowError(f"trim: criterion {self.criterion!r} unknown; use one of {', '.join(CRITERIA)}")
        if self.policy not in POLICIES:
            raise FlowError(f"trim: policy {self.policy!r} unknown; use one of {', '.join(POLICIES)}")
        if not 0.0 < self.keep <= 1.0:
            raise FlowError(f"trim: keep must be in (0, 1], got {self.keep}")
        if not 0.0 < self.budget <= 1.0:
            raise FlowError(f"trim: budget must be in (0, 1] (fraction of the original kept), got {self.budget}")
        if self.budget_metric not in METRICS:
            raise FlowError(f"trim: budget_metric {self.budget_metric!r} unknown; use one of {', '.join(METRICS)}")
        if self.min_keep < 1:
            raise FlowError(f"trim: min_keep must be >= 1 (a layer never loses every kernel), got {self.min_keep}")
        if self.round_to < 1:
            raise FlowError(f"trim: round_to must be >= 1, got {self.round_to}")
        if self.normalize not in NORMALIZE:
            raise FlowError(f"trim: normalize {self.normalize!r} unknown; use one of {', '.join(NORMALIZE)}")
        if self.allocation not in ALLOCATIONS:
            raise FlowError(f"trim: allocation {self.allocation!r} unknown; use one of {', '.join(ALLOCATIONS)}")
        if self.allocation == "sensitivity" and self.policy != "budget":
            raise FlowError(f"trim: allocation='sensitivity' shares out a budget; it needs policy='budget', "
                            f"got policy={self.policy!r}")
        if self.compensation not in COMPENSATIONS:
            raise FlowError(f"trim: compensation {self.compensation!r} unknown; use one of {', '.join(COMPENSATIONS)}")
        if self.calib_images < 1 or self.batch_size < 1:
            raise FlowError(f"trim: calib_images and batch_size must be >= 1, got {self.calib_images}, "
                            f"{self.batch_size}")
