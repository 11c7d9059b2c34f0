"""A MobileNet-style CNN: depthwise-separable blocks (3x3 depthwise conv + 1x1 pointwise conv, each BN + ReLU).

Downsampling by stride-2 depthwise convolutions; the head is global average pooling + Linear. Trimming a pointwise
conv's kernels removes the matching depthwise channels and the next pointwise conv's inputs (one channel group).
"""

from __future__ import annotations

from torch import nn


def _conv_bn(cin: int, cout: int, k: int, stride: int, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class MobileNetLike(nn.Module):
    def __init__(self, in_channels: int = 1, classes: int = 10, input_size: int = 28, stem: int = 16,
                 widths: tuple[int, ...] = (32, 64, 64, 128, 128), strides: tuple[int, ...] = (1, 2, 1, 2, 1)):
        super().__init__()
        if len(widths) != len(strides):
            raise ValueError(f"widths {widths} and strides {strides} must have the same length")
        layers, ch = _conv_bn(in_channels, stem, 3, 1), stem
        for w, s in zip(widths, strides):
            layers += _conv_bn(ch, ch, 3, s, groups=ch) + _conv_bn(ch, w, 1, 1)
            ch = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(ch, classes)

    def forward(self, x):
        return self.classifier(self.flatten(self.pool(self.features(x))))
