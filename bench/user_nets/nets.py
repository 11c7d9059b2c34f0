"""Two users' networks that trimflow's defaults never saw, written as a user writes them (plain torch, own file),
and brought in through `trimflow import` (bench/user_nets/make.py). Shapes the zoo (bench/zoo.py) lacks, within
the layers `trimflow import` accepts (ReLU as the only activation, no global average pooling: see README):

- IncepNet: Inception-style blocks (parallel 1x1 / 1x1-3x3 / pool-1x1 branches concatenated: the trim cuts one
  concatenation's channel groups at their offsets), strided convolutions instead of pooling, flatten + FC head;
- PlainNoBN: no BatchNorm at all, biased convolutions, strided convolutions, flatten + two FC layers with dropout
  (the refit's BN synchronisation and rescaling have nothing to act on).
"""

from __future__ import annotations

import torch
from torch import nn


def _cbr(cin: int, cout: int, k: int = 1, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Inception(nn.Module):
    def __init__(self, cin: int, one: int, mid: int, three: int, pool: int):
        super().__init__()
        self.one = _cbr(cin, one)
        self.three = nn.Sequential(_cbr(cin, mid), _cbr(mid, three, 3))
        self.pool = nn.Sequential(nn.MaxPool2d(3, 1, 1), _cbr(cin, pool))

    def forward(self, x):
        return torch.cat([self.one(x), self.three(x), self.pool(x)], 1)


class IncepNet(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = _cbr(1, 24, 3)
        self.a = Inception(24, 16, 12, 16, 8)  # 40 channels
        self.down1 = _cbr(40, 48, 3, 2)
        self.b = Inception(48, 24, 16, 24, 16)  # 64 channels
        self.down2 = _cbr(64, 96, 3, 2)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(96 * 7 * 7, classes))

    def forward(self, x):
        return self.head(self.down2(self.b(self.down1(self.a(self.stem(x))))))


class PlainNoBN(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        act = nn.ReLU
        self.features = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), act(), nn.Conv2d(32, 32, 3, 2, 1), act(),
                                      nn.Conv2d(32, 64, 3, padding=1), act(), nn.Conv2d(64, 64, 3, 2, 1), act())
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * 7 * 7, 128), act(), nn.Dropout(0.3),
                                        nn.Linear(128, classes))

    def forward(self, x):
        return self.classifier(self.features(x))
