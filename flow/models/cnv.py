"""A CNV-like CNN: conv3x3-BN-ReLU blocks, stride-2 convolutions for downsampling, one linear classifier.

Downsampling by strided convolution instead of MaxPool keeps the whole network on FINN layers that have RTL
implementations (FINN's pooling is HLS-only), so the accelerator can be simulated with Verilator.
"""

from __future__ import annotations

from torch import nn


class CNVLike(nn.Module):
    def __init__(self, in_channels: int = 1, classes: int = 10, input_size: int = 28,
                 widths: tuple[int, ...] = (16, 32, 32, 64, 64), strides: tuple[int, ...] = (1, 2, 1, 2, 1),
                 head: str = "flatten"):
        super().__init__()
        if len(widths) != len(strides):
            raise ValueError(f"widths {widths} and strides {strides} must have the same length")
        if head not in ("flatten", "gap"):
            raise ValueError("head must be 'flatten' (Flatten + Linear) or 'gap' (global average pool + Linear)")
        layers: list[nn.Module] = []
        ch, size = in_channels, input_size
        for i, (w, s) in enumerate(zip(widths, strides)):
            layers += [nn.Conv2d(ch, w, 3, stride=s, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
            ch = w
            size = (size + 2 - 3) // s + 1
        self.features = nn.Sequential(*layers)
        # gap: fewer classifier weights and any input size, but FINN maps it to its HLS-only GlobalAccPool
        self.pool = nn.AdaptiveAvgPool2d(1) if head == "gap" else None
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(ch * (1 if head == "gap" else size * size), classes)

    def forward(self, x):
        x = self.features(x)
        if self.pool is not None:
            x = self.pool(x)
        return self.classifier(self.flatten(x))
