"""ResNet-8: the smallest ResNet (stem + 3 basic blocks), for 28x28x1 and 32x32x3 images.

Choices made for FINN:
- downsampling by stride-2 convolutions (in the block's first conv and its 1x1 projection shortcut), no MaxPool:
  FINN's pooling layers are HLS-only;
- head = Flatten + Linear, not global average pooling: FINN's GlobalAccPool is HLS-only, while a Linear over the
  flattened last feature map is one more MVAU (it costs weights: 64 x 7 x 7 x 10 = 31k for 28x28 inputs,
  64 x 8 x 8 x 10 = 41k for 32x32);
- every add is `a + b` of two tensors of equal shape (trimflow.quantize gives both operands one quantizer; FINN:
  ElementwiseAdd). The fork that feeds a block's input to both branches becomes FINN's DuplicateStreams. On
  non-Versal parts finn-plus 1.6.1 has both only as HLS — so unlike the CNV-like net, a ResNet's accelerator is not
  all-RTL (the Verilator simulation uses our RTL for the two, hw/rtl/).
"""

from __future__ import annotations

from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        # None, not an empty Sequential/Identity, for the identity shortcut: later stages convert module by module
        # and have no use for a layer that does nothing.
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_channels))
        self.relu2 = nn.ReLU()

    def forward(self, x):
        skip = x if self.shortcut is None else self.shortcut(x)
        return self.relu2(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))) + skip)


class ResNet8(nn.Module):
    def __init__(self, in_channels: int = 1, classes: int = 10, input_size: int = 28,
                 widths: tuple[int, ...] = (16, 32, 64), strides: tuple[int, ...] = (1, 2, 2), stem: int = 16,
                 blocks: int = 1):
        super().__init__()
        if len(widths) != len(strides):
            raise ValueError(f"widths {widths} and strides {strides} must have the same length")
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem),
                                  nn.ReLU())
        stages, ch, size = [], stem, input_size
        for w, s in zip(widths, strides):
            for i in range(blocks):  # blocks per stage: 1 = ResNet-8, 2 = ResNet-14, 3 = ResNet-20
                stages.append(BasicBlock(ch, w, s if i == 0 else 1))
                ch = w
            size = (size - 1) // s + 1  # 3x3 pad 1 and 1x1 pad 0 agree on this size for any stride
        self.blocks = nn.Sequential(*stages)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(ch * size * size, classes)

    def forward(self, x):
        return self.classifier(self.flatten(self.blocks(self.stem(x))))
