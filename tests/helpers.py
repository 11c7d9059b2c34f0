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


# ---------------------------------------------------------------- nets and models several test files build

SIM_PART = "xc7z020clg400-1"
# (PE, SIMD) per MVAU of the simulator tests' net: SIMD > 1 everywhere so add_multi's adder tree is exercised.
SIM_FOLDING = {0: (2, 3), 1: (4, 4), 2: (2, 8)}


def synthetic_images(n: int, shape=(1, 8, 8), seed: int = 0):
    """`n` random uint8 images with 3 random labels (a trimflow.data.ImageSet)."""
    import torch

    from trimflow.data import ImageSet

    g = torch.Generator().manual_seed(seed)
    return ImageSet("synthetic", torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8),
                    torch.randint(0, 3, (n,), generator=g), 3)


def small_net():
    """A float conv-BN-ReLU x2 + linear net on 8x8 images (float64, eval), some kernels mostly off, some on."""
    import torch
    from torch import nn

    class Small(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.bn1, self.r1 = nn.Conv2d(1, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU()
            self.c2, self.bn2, self.r2 = nn.Conv2d(6, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU()
            self.fc = nn.Linear(4 * 4 * 4, 3)

        def forward(self, x):
            return self.fc(torch.flatten(self.r2(self.bn2(self.c2(self.r1(self.bn1(self.c1(x)))))), 1))

    torch.manual_seed(0)
    m = Small()
    with torch.no_grad():
        for bn in (m.bn1, m.bn2):
            bn.bias.uniform_(-0.3, 0.3)  # some kernels mostly off, some mostly on
    return m.double().eval()


def randomize_bn(model, seed: int = 0, negate_every: int = 5) -> None:
    """Non-trivial BN statistics, including negative scales, so streamlining has to split signs and shifts."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.randn(n, generator=g).abs() + 0.5
            m.weight.data[::negate_every] *= -1
            m.bias.data = 0.3 * torch.randn(n, generator=g)
            m.running_mean = 0.2 * torch.randn(n, generator=g)
            m.running_var = torch.rand(n, generator=g) + 0.5


def _quant_tiny_net(first_weight_bits: int = 4, first_channels: int = 4):
    import torch
    from torch import nn
    import brevitas.nn as qnn

    torch.manual_seed(0)
    c1 = first_channels

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = qnn.QuantConv2d(1, c1, 3, padding=1, bias=False, weight_bit_width=first_weight_bits)
            self.b1, self.r1 = nn.BatchNorm2d(c1), qnn.QuantReLU(bit_width=4)
            self.c2 = qnn.QuantConv2d(c1, 8, 3, stride=2, padding=1, bias=False, weight_bit_width=4)
            self.b2, self.r2 = nn.BatchNorm2d(8), qnn.QuantReLU(bit_width=4)
            self.fc = qnn.QuantLinear(8 * 14 * 14, 10, bias=False, weight_bit_width=4)

        def forward(self, x):
            x = self.r2(self.b2(self.c2(self.r1(self.b1(self.c1(x))))))
            return self.fc(torch.flatten(x, 1))

    net = Net()
    with torch.no_grad():  # non-trivial thresholds
        for b in (net.b1, net.b2):
            b.running_mean.uniform_(-20, 20)
            b.running_var.uniform_(50, 500)
    return net.eval()


def rtl_hw_model(tmp_path, finn_fifos: bool, folding: dict = SIM_FOLDING, name: str = "hw_model", **net):
    """Tiny Brevitas CNN -> QONNX -> FINN HW layers, specialised to RTL and folded (SIMD > 1).

    Without DWCs and without generated code: build_simulator has to add both. With `finn_fifos`, FINN's
    InsertFIFO adds StreamingFIFO nodes whose depths the simulator must honour.
    """
    import torch
    from brevitas.export import export_qonnx
    from qonnx.core.datatype import DataType
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp
    from qonnx.transformation.fold_constants import FoldConstants
    from qonnx.transformation.general import GiveReadableTensorNames, GiveUniqueNodeNames
    from qonnx.transformation.infer_data_layouts import InferDataLayouts
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes
    from qonnx.transformation.lower_convs_to_matmul import LowerConvsToMatMul
    from qonnx.util.cleanup import cleanup_model
    import finn.transformation.streamline.absorb as absorb
    from finn.transformation.fpgadataflow.convert_to_hw.conv_inp_gen import InferConvInpGen
    from finn.transformation.fpgadataflow.convert_to_hw.quantized_matrix_vector_activation import (
        InferQuantizedMatrixVectorActivation,
    )
    from finn.transformation.fpgadataflow.convert_to_hw.thresholding import InferThresholdingLayer
    from finn.transformation.fpgadataflow.create_dataflow_partition import CreateDataflowPartition
    from finn.transformation.fpgadataflow.insert_dwc import InsertDWC
    from finn.transformation.fpgadataflow.insert_fifo import InsertFIFO
    from finn.transformation.fpgadataflow.minimize_accumulator_width import MinimizeAccumulatorWidth
    from finn.transformation.fpgadataflow.minimize_weight_bit_width import MinimizeWeightBitWidth
    from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers
    from finn.transformation.move_reshape import RemoveCNVtoFCFlatten
    from finn.transformation.qonnx.convert_qonnx_to_finn import ConvertQONNXtoFINN
    from finn.transformation.streamline import Streamline
    from finn.transformation.streamline.round_thresholds import RoundAndClipThresholds

    def tidy(m):
        for t in (InferShapes(), FoldConstants(), GiveUniqueNodeNames(), GiveReadableTensorNames(),
                  InferDataTypes(), InferDataLayouts()):
            m = m.transform(t)
        return m

    def minimize(m):
        for t in (MinimizeWeightBitWidth(), MinimizeAccumulatorWidth(), InferDataTypes(),
                  RoundAndClipThresholds(), InferDataTypes()):
            m = m.transform(t)
        return m

    torch.set_num_threads(1)
    export_qonnx(_quant_tiny_net(**net), torch.zeros(1, 1, 28, 28), str(tmp_path / f"{name}_qonnx.onnx"))
    m = cleanup_model(ModelWrapper(str(tmp_path / f"{name}_qonnx.onnx")))
    m.set_tensor_datatype(m.graph.input[0].name, DataType["UINT8"])  # raw pixels
    m = tidy(m.transform(ConvertQONNXtoFINN()))
    for t in (absorb.AbsorbScalarBiasIntoMultiThreshold(), Streamline(), LowerConvsToMatMul(),
              absorb.AbsorbTransposeIntoMultiThreshold(), absorb.AbsorbConsecutiveTransposes(), Streamline(),
              InferThresholdingLayer(), InferQuantizedMatrixVectorActivation(), InferConvInpGen(),
              absorb.AbsorbConsecutiveTransposes(), RemoveCNVtoFCFlatten()):
        m = m.transform(t)
    m = tidy(m)
    # the float output scale (Mul) and the NCHW->NHWC Transpose stay outside the partition, on the host
    parent = m.transform(CreateDataflowPartition(partition_model_dir=str(tmp_path / "partitions")))
    sdp = parent.get_nodes_by_op_type("StreamingDataflowPartition")[0]
    hw = ModelWrapper(getCustomOp(sdp).get_nodeattr("model"))
    for n in hw.graph.node:
        getCustomOp(n).set_nodeattr("preferred_impl_style", "rtl")
    hw = minimize(hw.transform(SpecializeLayers(SIM_PART)))
    mvaus = hw.get_nodes_by_op_type("MVAU_rtl")
    for i, n in enumerate(mvaus):
        getCustomOp(n).set_nodeattr("PE", folding[i][0])
        getCustomOp(n).set_nodeattr("SIMD", folding[i][1])
    for n in hw.get_nodes_by_op_type("Thresholding_rtl"):
        getCustomOp(n).set_nodeattr("PE", 2)
    if finn_fifos:  # as FINN's step_set_fifo_depths does: converters first, then FIFOs between all layers
        hw = hw.transform(InsertDWC()).transform(InsertFIFO(create_shallow_fifos=True))
        for n in hw.graph.node:
            getCustomOp(n).set_nodeattr("preferred_impl_style", "rtl")
        hw = hw.transform(SpecializeLayers(SIM_PART)).transform(GiveUniqueNodeNames())
    assert {n.op_type for n in hw.graph.node} <= {"FMPadding_rtl", "ConvolutionInputGenerator_rtl", "MVAU_rtl",
                                                 "Thresholding_rtl", "StreamingFIFO_rtl",
                                                 "StreamingDataWidthConverter_rtl"}
    path = tmp_path / f"{name}{'_fifos' if finn_fifos else ''}.onnx"
    hw.save(str(path))
    return path
