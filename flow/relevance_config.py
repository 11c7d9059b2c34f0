"""The relevance stage's config, apart from trimflow.relevance so that loading a flow config does not import torch
(tests/test_config_parsing.py checks it in a fresh interpreter). trimflow.relevance re-exports every name here."""

from __future__ import annotations

import dataclasses

from trimflow import FlowError

# the kernel-scoring criteria the pipeline computes (trimflow.criteria implements them)
CRITERIA = ("relevance", "l1", "l2", "bn_gamma", "taylor", "apoz", "random")
STATISTICS = ("mean", "mean_abs", "apoz", "max", "variance", "std")
WEIGHTING = ("none", "consumer", "gradient")
WHERE = ("post_act", "pre_act", "quant_act")
NORMALIZE = ("none", "l2", "max", "rank")
SELECTIONS = ("independent", "conditional")


@dataclasses.dataclass(frozen=True)
class RelevanceConfig:
    images: int | None = 2000  # representative images (a seeded subset); None = the whole set
    statistic: str = "mean"  # mean | mean_abs | apoz (1 - fraction of zeros) | max | variance | std
    # consumer: times the L2 norm of the weights that read the kernel's output in the next conv/linear layer(s),
    # with the BN that follows each of them folded in (consumer_norms): mean x norm is the kernel's expected
    # contribution to the next layer, not just how busy it is. The default since bench/trim.py: on CNV it is the
    # best activation-based score at every MAC budget, after trimming and after the fine-tune ("none" = the paper).
    # gradient: instead of the statistic, |activation x gradient| of the log-probability of the class the untrimmed
    # net predicts, summed over positions and averaged over the images (Taylor's criterion without labels). Tried on
    # the zoo (bench/results/trim-zoo-longft.md): with the refit it trims no better than the default, so not the
    # default.
    weighting: str = "consumer"
    where: str = "post_act"  # post_act | pre_act | quant_act (Brevitas models)
    # independent: each kernel scored alone by the statistic and weighting above (the paper's way). conditional:
    # the kernels of each group ranked greedily, each next one the kernel whose activation *not explained by those
    # ranked before it* puts the most energy into the consumers (trimflow.conditional: the same pass over the
    # images also takes each consumer's input covariance; the statistic and weighting only break ties); the
    # scores are that order. Plain relevance keeps kernels that fire together, and after a long fine-tune such a
    # start lost to L1, Torch-Pruning and even random kernels on two users' nets (bench/results/
    # trim-user-longft.md). The default since 2026-12-02 20:00, chosen on those two nets and checked on the 7 zoo
    # nets, none of which was used to choose it (trim-zoo-longft.md, trim-zoo.md; `-indep` rows: without it).
    selection: str = "conditional"
    normalize: str = "none"  # per-layer: none | l2 | max | rank
    batch_size: int = 250
    seed: int = 0

    def __post_init__(self):
        if self.images is not None and self.images < 1:
            raise FlowError(f"relevance: images must be >= 1 (or null for all), got {self.images}")
        if self.statistic not in STATISTICS:
            raise FlowError(f"relevance: statistic {self.statistic!r} unknown; use one of {', '.join(STATISTICS)}")
        if self.weighting not in WEIGHTING:
            raise FlowError(f"relevance: weighting {self.weighting!r} unknown; use one of {', '.join(WEIGHTING)}")
        if self.where not in WHERE:
            raise FlowError(f"relevance: where {self.where!r} unknown; use one of {', '.join(WHERE)}")
        if self.selection not in SELECTIONS:
            raise FlowError(f"relevance: selection {self.selection!r} unknown; use one of {', '.join(SELECTIONS)}")
        if self.normalize not in NORMALIZE:
            raise FlowError(f"relevance: normalize {self.normalize!r} unknown; use one of {', '.join(NORMALIZE)}")
        if self.batch_size < 1:
            raise FlowError(f"relevance: batch_size must be >= 1, got {self.batch_size}")
