"""Helpers that more than one test file uses (fixtures built on them are in conftest.py)."""

from __future__ import annotations

import dataclasses

from trimflow.boards import board_from_dict, load_board

# A board a third the size of a Zybo Z7-10 in LUTs, without shell: the tiny net of test_hwtrim reaches about 14k fps
# on it untrimmed and about 27k fps at half its MACs (measured with the optimiser's estimates). LUTs bind.
TINY_BOARD = {"shell_overhead": {"LUT": 0, "FF": 0, "BRAM18": 0, "DSP": 0, "URAM": 0},
              "capacity": {"LUT": 6000, "FF": 35200, "BRAM18": 120, "DSP": 80, "URAM": 0}}


def tiny_board(**changes):
    data = dataclasses.asdict(load_board("zybo-z7-10"))
    data.pop("source")
    data.update(name="tiny", **TINY_BOARD)
    data.update(changes)
    return board_from_dict(data)


def tiny_net(c1: int = 8, c2: int = 16):
    """A tiny Brevitas CNN (W4A4, 8-bit input) with non-trivial BatchNorm statistics and activation scales
    calibrated on real Fashion-MNIST images: FINN streamlines it into all-RTL layers."""
    import brevitas.nn as qnn
    import torch
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = qnn.QuantIdentity(bit_width=8, return_quant_tensor=True)
            self.c1 = qnn.QuantConv2d(1, c1, 3, padding=1, bias=False, weight_bit_width=4)
            self.b1 = nn.BatchNorm2d(c1)
            self.r1 = qnn.QuantReLU(bit_width=4, return_quant_tensor=True)
            self.c2 = qnn.QuantConv2d(c1, c2, 3, stride=2, padding=1, bias=False, weight_bit_width=4)
            self.b2 = nn.BatchNorm2d(c2)
            self.r2 = qnn.QuantReLU(bit_width=4, return_quant_tensor=True)
            self.fc = qnn.QuantLinear(c2 * 14 * 14, 10, bias=True, weight_bit_width=4)

        def forward(self, x):
            x = self.inp(x)
            x = self.r1(self.b1(self.c1(x)))
            x = self.r2(self.b2(self.c2(x)))
            return self.fc(torch.flatten(x, 1))

    torch.manual_seed(0)
    m = Tiny()
    with torch.no_grad():
        for b in (m.b1, m.b2):
            b.running_mean.uniform_(-0.2, 0.2)
            b.running_var.uniform_(0.5, 1.5)
            b.weight.uniform_(0.5, 1.5)
            b.bias.uniform_(-0.2, 0.2)
        m.train()  # calibrate the activation scales on real-looking inputs
        from trimflow.data import load_dataset, subset

        x = subset(load_dataset("fashion-mnist", "test"), 64, seed=1).images.float() / 255.0
        for _ in range(3):
            m(x)
    return m.eval()


def fake_design(node_types=("MVAU_rtl", "Thresholding_rtl"), board: str = "pynq-z2", **changes):
    """A small trimflow.finn.design.Design with one layer per op type, a width converter between the first two
    layers and a FIFO on every stream (no FINN run)."""
    from trimflow.finn.design import (ASSUMED, INPUT, OUTPUT, Design, Fifo, HostOp, Layer, TensorInfo,
                                      WidthConverter)

    res = {"LUT": 10.0, "FF": 20.0, "BRAM18": 0.0, "URAM": 0.0, "DSP": 1.0}
    layers = [Layer(f"{op}_{i}", op, {"PE": 1}, 100, res) for i, op in enumerate(node_types)]
    chain = [layers[0].name, "StreamingDataWidthConverter_rtl_0", *[x.name for x in layers[1:]]]
    fifos = [Fifo(a, 0, b, 0, 8, 64, 0, res) for a, b in zip([INPUT, *chain], [*chain, OUTPUT])]
    d = Design(board=board, part="xc7z020clg400-1", clock_period_ns=10.0, layers=layers,
               width_converters=[WidthConverter(chain[1], chain[0], chain[2], 16, 8, res)], fifos=fifos,
               host_head=[HostOp("Transpose", [], perm=[0, 2, 3, 1])], host_tail=[HostOp("Mul", [[0.5]])],
               accel_input=TensorInfo("in", [1, 28, 28, 1], "UINT8", "NHWC"),
               accel_output=TensorInfo("out", [1, 10], "INT8"), totals=res, fit={"board": board}, fits=True,
               fifo_depths=ASSUMED, notes=["a note"])
    return dataclasses.replace(d, **changes)
