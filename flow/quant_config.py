"""The quantize stage's config, apart from trimflow.quantize so that loading a flow config does not import Brevitas
(tests/test_config_parsing.py checks it in a fresh interpreter)."""

from __future__ import annotations

import dataclasses
import typing
from typing import Literal

from trimflow import FlowError
from trimflow.train import TrainConfig

MIN_BITS, MAX_BITS = 1, 8
# "max": max-abs scales; "mse": MSE-optimal scales (trimflow.quantize builds the quantizers for each)
ScaleInit = Literal["mse", "max"]
SCALE_INITS: tuple[str, ...] = typing.get_args(ScaleInit)


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    weight_bits: int = 4
    act_bits: int = 4
    input_bits: int = 8
    first_layer_weight_bits: int = 8
    last_layer_weight_bits: int = 8
    per_channel_weights: bool = False
    # Bits of the signed quantizer shared by both operands of each residual add; None = act_bits. FINN adds them
    # as integers of this width (plus one bit for the sum).
    residual_bits: int | None = None
    scale_init: ScaleInit = "mse"  # how weight and activation scales start before QAT learns them
    calibration_batches: int = 8  # batches of training images that set the initial activation scales
    bn_recalibration_batches: int = 0  # >0: re-estimate BN statistics of the quantized net before QAT
    calibration_batch_size: int = 128
    # QAT distilled from the float net it quantizes (the quantize stage passes it as the teacher), two epochs. On
    # the default build's trimmed net (W4A4, one thread, 2026-12-01): one plain epoch 91.91 / 91.89 / 91.82 % (QAT
    # seeds 0-2), two distilled epochs 92.22 / 92.13 / 92.08 %; one distilled epoch 92.04 / 91.99 %, two plain 92.16 /
    # 91.98 % (without trim.reconstruct.rescale). On the MNIST zoo CNN (configs/mnist-zoo.yaml) distilled QAT gained
    # 2-3 pt (98.30 / 98.00 vs 95.64 / 96.64 %) and a second epoch changed nothing (98.85 / 98.90 % both).
    train: TrainConfig = TrainConfig(epochs=2.0, lr=0.01, warmup_steps=20, distill_weight=0.5)
    # QAT learning rate when weights or activations have 2 bits or fewer; null = train.lr. Measured on the default
    # net over the full training set: W2A2 at lr 0.01 collapses to 10 % (chance), at 0.002 it reaches 91.08 %.
    low_bit_lr: float | None = 0.002

    def __post_init__(self):
        for name in ("weight_bits", "act_bits", "input_bits", "first_layer_weight_bits", "last_layer_weight_bits"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not MIN_BITS <= value <= MAX_BITS:
                raise FlowError(f"quantize: {name} must be an integer from {MIN_BITS} to {MAX_BITS} "
                                f"(1 = bipolar), got {value!r}")
        if self.residual_bits is not None and (
                not isinstance(self.residual_bits, int) or isinstance(self.residual_bits, bool)
                or not 2 <= self.residual_bits <= MAX_BITS):
            raise FlowError(f"quantize: residual_bits must be null (= act_bits) or an integer from 2 to {MAX_BITS} "
                            f"(a signed grid), got {self.residual_bits!r}")
        if self.act_bits == 1 and (self.weight_bits != 1 or self.last_layer_weight_bits != 1):
            raise FlowError("quantize: act_bits=1 (bipolar activations) needs weight_bits=1 and "
                            "last_layer_weight_bits=1: FINN maps bipolar activations only into XNOR-popcount "
                            "layers, whose weights are bipolar too (the first layer sees the UINT8 image and "
                            f"may keep more bits); got weight_bits={self.weight_bits}, "
                            f"last_layer_weight_bits={self.last_layer_weight_bits}")
        for name in ("calibration_batches", "bn_recalibration_batches"):
            if getattr(self, name) < 0:
                raise FlowError(f"quantize: {name} must be >= 0, got {getattr(self, name)}")
        if self.scale_init not in SCALE_INITS:
            raise FlowError(f"quantize: scale_init must be one of {', '.join(SCALE_INITS)}, got {self.scale_init!r}")
        if self.calibration_batch_size < 1:
            raise FlowError(f"quantize: calibration_batch_size must be >= 1, got {self.calibration_batch_size}")
        if self.low_bit_lr is not None and not (isinstance(self.low_bit_lr, (int, float)) and self.low_bit_lr > 0):
            raise FlowError(f"quantize: low_bit_lr must be null or > 0, got {self.low_bit_lr!r}")
        if not isinstance(self.train, TrainConfig):
            raise FlowError(f"quantize: train must be a TrainConfig, got {type(self.train).__name__}")
