"""FINN's own transformations turn each supported exported pattern into integer dataflow layers.

For every pattern: export with trimflow.export, run the transformations of FINN's build steps step_qonnx_to_finn,
step_tidy_up, step_streamline and the matrix/threshold/sliding-window part of step_convert_to_hw (imported one
by one: importing finn.builder.build_dataflow_steps needs Vivado), then check that
- no float node is left between the input and the last matrix layer (trimflow.export.check_streamlined),
- the layers before that point are MVAU / Thresholding / ConvolutionInputGenerator / FMPadding,
- FINN's python execution gives integer accumulators at the last matrix layer which, through the float tail
  (scale, bias) that stays on the host, reproduce the QONNX output.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("finn")

import finn.transformation.streamline.absorb as absorb  # noqa: E402
from finn.transformation.fpgadataflow.convert_to_hw.binary_matrix_vector_activation import (  # noqa: E402
    InferBinaryMatrixVectorActivation)
from finn.transformation.fpgadataflow.convert_to_hw.conv_inp_gen import InferConvInpGen  # noqa: E402
from finn.transformation.fpgadataflow.convert_to_hw.quantized_matrix_vector_activation import (  # noqa: E402
    InferQuantizedMatrixVectorActivation)
from finn.transformation.fpgadataflow.convert_to_hw.thresholding import InferThresholdingLayer  # noqa: E402
from finn.transformation.move_reshape import RemoveCNVtoFCFlatten  # noqa: E402
from finn.transformation.qonnx.convert_qonnx_to_finn import ConvertQONNXtoFINN  # noqa: E402
from finn.transformation.qonnx.quant_act_to_multithreshold import default_filter_function_generator  # noqa: E402
from finn.transformation.streamline import Streamline  # noqa: E402
from finn.transformation.streamline.reorder import MakeMaxPoolNHWC  # noqa: E402
from qonnx.core.modelwrapper import ModelWrapper  # noqa: E402
from qonnx.core.onnx_exec import execute_onnx  # noqa: E402
from qonnx.transformation.bipolar_to_xnor import ConvertBipolarMatMulToXnorPopcount  # noqa: E402
from qonnx.transformation.fold_constants import FoldConstants  # noqa: E402
from qonnx.transformation.general import (GiveReadableTensorNames, GiveUniqueNodeNames,  # noqa: E402
                                          RemoveStaticGraphInputs, RemoveUnusedTensors)
from qonnx.transformation.infer_data_layouts import InferDataLayouts  # noqa: E402
from qonnx.transformation.infer_datatypes import InferDataTypes  # noqa: E402
from qonnx.transformation.infer_shapes import InferShapes  # noqa: E402
from qonnx.transformation.lower_convs_to_matmul import LowerConvsToMatMul  # noqa: E402
from qonnx.util.cleanup import cleanup_model  # noqa: E402

from tests.helpers import randomize_bn  # noqa: E402
from trimflow import FlowError  # noqa: E402
from trimflow.data import load_dataset, subset  # noqa: E402
from trimflow.export import check_streamlined, export_qonnx, require_streamlined, run_qonnx  # noqa: E402
from trimflow.models.cnv import CNVLike  # noqa: E402
from trimflow.quantize import QuantConfig, calibrate_activations, convert_model  # noqa: E402

HW_LAYERS = {"MVAU", "Thresholding", "ConvolutionInputGenerator", "FMPadding", "StreamingDataWidthConverter"}


def qonnx_to_finn_streamlined(model: ModelWrapper) -> ModelWrapper:
    # step_qonnx_to_finn
    model = cleanup_model(model)
    model = model.transform(ConvertQONNXtoFINN(
        filter_function=default_filter_function_generator(max_multithreshold_bit_width=8)))
    # step_tidy_up
    for t in (InferShapes(), FoldConstants(), GiveUniqueNodeNames(), GiveReadableTensorNames(), InferDataTypes(),
              RemoveStaticGraphInputs()):
        model = model.transform(t)
    # step_streamline
    model = model.transform(absorb.AbsorbScalarBiasIntoMultiThreshold())
    model = model.transform(Streamline())
    if model.get_nodes_by_op_type("Conv"):
        model = model.transform(LowerConvsToMatMul())
        model = model.transform(MakeMaxPoolNHWC())
        model = model.transform(absorb.AbsorbTransposeIntoMultiThreshold())
        model = model.transform(MakeMaxPoolNHWC())
        model = model.transform(absorb.AbsorbConsecutiveTransposes())
    model = model.transform(ConvertBipolarMatMulToXnorPopcount())
    model = model.transform(Streamline())
    model = model.transform(absorb.AbsorbScalarMulAddIntoTopK())
    model = model.transform(InferDataLayouts())
    return model.transform(RemoveUnusedTensors())


def convert_to_hw(model: ModelWrapper) -> ModelWrapper:
    # step_convert_to_hw with standalone_thresholds=True (the all-RTL configuration), restricted to the layer
    # kinds our models produce; the elementwise conversions are left out because the float tail stays on the host.
    for t in (InferThresholdingLayer(), InferBinaryMatrixVectorActivation(), InferQuantizedMatrixVectorActivation(),
              InferThresholdingLayer(), InferConvInpGen(), RemoveCNVtoFCFlatten()):
        model = model.transform(t)
    for t in (InferShapes(), InferDataTypes(), GiveUniqueNodeNames()):
        model = model.transform(t)
    return model


@pytest.fixture(scope="module")
def images():
    train = subset(load_dataset("fashion-mnist", "train"), 128, seed=0)
    test = subset(load_dataset("fashion-mnist", "test"), 8, seed=0)
    return train, test


def _lowered(float_model, cfg, images, tmp_path):
    train, test = images
    torch.manual_seed(0)
    randomize_bn(float_model)
    quant = convert_model(float_model, cfg)
    calibrate_activations(quant, train, batches=1, batch_size=32)
    path = export_qonnx(quant, (1, 28, 28), tmp_path / "model.onnx")
    qonnx = ModelWrapper(str(path))
    streamlined = qonnx_to_finn_streamlined(ModelWrapper(str(path)))
    return quant, qonnx, streamlined, convert_to_hw(streamlined), test


def _last_matrix_output(model: ModelWrapper) -> str:
    mats = [n for n in model.graph.node if n.op_type in ("MatMul", "XnorPopcountMatMul", "MVAU")]
    return mats[-1].output[0]


def _split_at_last_matrix(model: ModelWrapper) -> tuple[list, list]:
    nodes = list(model.graph.node)
    last = max(i for i, n in enumerate(nodes) if n.op_type in ("MatMul", "XnorPopcountMatMul", "MVAU"))
    return nodes[:last + 1], nodes[last + 1:]


def _check(float_model, cfg, images, tmp_path, expect_ops: set[str]):
    quant, qonnx, streamlined, hw, test = _lowered(float_model, cfg, images, tmp_path)
    assert check_streamlined(streamlined) == []
    assert check_streamlined(hw) == []
    require_streamlined(hw)
    body, tail = _split_at_last_matrix(hw)
    body_ops = [n.op_type for n in body]
    # Before the last matrix layer only HW layers remain (a leading Transpose NCHW->NHWC is a host-side reshape).
    assert set(body_ops) - {"Transpose"} <= HW_LAYERS, body_ops
    assert expect_ops <= set(body_ops), body_ops
    assert {n.op_type for n in tail} <= {"Mul", "Add"}, [n.op_type for n in tail]

    want = run_qonnx(qonnx, test, progress=False)
    iname, oname = hw.graph.input[0].name, hw.graph.output[0].name
    for i in range(len(test)):
        x = test.images[i:i + 1].numpy().astype(np.float32)
        ctx = execute_onnx(hw, {iname: x}, return_full_exec_context=True)
        acc = ctx[body[-1].output[0]]
        # The accumulators of the last matrix layer are integers ...
        assert np.array_equal(acc, np.round(acc)), "last matrix layer output is not integer"
        assert np.abs(acc).max() > 0
        # ... and the host tail (scale, then bias) maps them onto the QONNX logits up to float32 rounding.
        np.testing.assert_allclose(ctx[oname], want[i:i + 1], rtol=1e-5, atol=1e-5 * np.abs(want).max())
    return quant, hw


class _UnpaddedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, stride=2, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(8 * 13 * 13, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


def _cnv(widths=(8, 16), strides=(1, 1)):
    return CNVLike(widths=widths, strides=strides)


def test_conv_bn_relu_chain(images, tmp_path):
    _check(_cnv((8, 8, 8), (1, 1, 1)), QuantConfig(), images, tmp_path,
           {"MVAU", "Thresholding", "ConvolutionInputGenerator"})


def test_strided_conv(images, tmp_path):
    _check(_cnv((8, 8), (1, 2)), QuantConfig(), images, tmp_path,
           {"MVAU", "Thresholding", "ConvolutionInputGenerator", "FMPadding"})


def test_conv_flatten_linear_with_bias(images, tmp_path):
    _, hw = _check(_cnv((8,), (2,)), QuantConfig(), images, tmp_path, {"MVAU"})
    body, tail = _split_at_last_matrix(hw)
    # The classifier (8*14*14 -> 10) is an MVAU over the flattened NHWC features; its bias stays on the host.
    from qonnx.custom_op.registry import getCustomOp
    last = getCustomOp(body[-1])
    assert (last.get_nodeattr("MW"), last.get_nodeattr("MH")) == (8 * 14 * 14, 10)
    assert "Flatten" not in [n.op_type for n in hw.graph.node]
    assert [n.op_type for n in tail] == ["Mul", "Add"]


@pytest.mark.parametrize("bits", [2, 1])
def test_low_bit_weights(bits, images, tmp_path):
    _, hw = _check(_cnv((8, 8, 8), (1, 2, 1)), QuantConfig(weight_bits=bits), images, tmp_path, {"MVAU"})
    from qonnx.core.datatype import DataType
    from qonnx.custom_op.registry import getCustomOp
    middle = [getCustomOp(n) for n in hw.get_nodes_by_op_type("MVAU")][1:-1]
    want = DataType["BIPOLAR"] if bits == 1 else DataType[f"INT{bits}"]
    assert middle and all(DataType[m.get_nodeattr("weightDataType")] == want for m in middle)


def test_binarized_w1a1(images, tmp_path):
    # FINN's binarized-network pattern: 8-bit first layer on the UINT8 image, then sign activations and bipolar
    # weights everywhere else, lowered to XNOR-popcount MVAUs.
    # Convolutions after the first are unpadded: FINN pads bipolar maps with -1 where PyTorch pads 0.
    cfg = QuantConfig(weight_bits=1, act_bits=1, last_layer_weight_bits=1)
    _, hw = _check(_UnpaddedNet(), cfg, images, tmp_path, {"MVAU", "Thresholding", "ConvolutionInputGenerator"})
    from qonnx.custom_op.registry import getCustomOp
    thresholds = [getCustomOp(n) for n in hw.get_nodes_by_op_type("Thresholding")]
    assert thresholds and all(t.get_nodeattr("outputDataType") == "BINARY" for t in thresholds)  # bipolar as bits


def test_per_channel_weights(images, tmp_path):
    _check(_cnv((8, 8), (1, 2)), QuantConfig(per_channel_weights=True), images, tmp_path, {"MVAU", "Thresholding"})


def test_input_below_8_bits_becomes_input_thresholds(images, tmp_path):
    _, hw = _check(_cnv((8,), (1,)), QuantConfig(input_bits=4), images, tmp_path, {"MVAU", "Thresholding"})
    body, _ = _split_at_last_matrix(hw)
    assert [n.op_type for n in body if n.op_type != "Transpose"][0] == "Thresholding"


def test_uint8_input_has_no_input_thresholds(images, tmp_path):
    _, hw = _check(_cnv((8,), (1,)), QuantConfig(), images, tmp_path, {"MVAU"})
    from qonnx.core.datatype import DataType
    assert hw.get_tensor_datatype(hw.graph.input[0].name) == DataType["UINT8"]
    body, _ = _split_at_last_matrix(hw)
    assert "Thresholding" not in [n.op_type for n in body][:3]


def test_unquantized_activation_is_reported(images, tmp_path):
    train, _ = images
    quant = convert_model(_cnv((8, 8), (1, 1)), QuantConfig())
    calibrate_activations(quant, train, batches=1, batch_size=32)
    quant.net.features[2] = nn.ReLU()  # a float ReLU between two quantized convolutions
    path = export_qonnx(quant, (1, 28, 28), tmp_path / "float_relu.onnx")
    streamlined = qonnx_to_finn_streamlined(ModelWrapper(str(path)))
    leftovers = check_streamlined(streamlined)
    assert leftovers and all("FLOAT32" in item for item in leftovers)
    with pytest.raises(FlowError, match="does not streamline.*FLOAT32"):
        require_streamlined(streamlined, "test model")


def test_bipolar_activations_reject_zero_padding():
    with pytest.raises(FlowError, match="features.3.*padding"):
        convert_model(_cnv((8, 8), (1, 2)), QuantConfig(weight_bits=1, act_bits=1, last_layer_weight_bits=1))


def test_residual_join_is_reported(images, tmp_path):
    # FINN's chain streamlining alone stops at the forks and joins of a residual net; the leftover float adds are
    # named as residual joins (trimflow.finn.residual streamlines them: tests/test_residual.py).
    from trimflow.models import build_model
    train, _ = images
    quant = convert_model(build_model("resnet8", widths=(4, 4, 4), stem=4), QuantConfig())
    calibrate_activations(quant, train, batches=1, batch_size=32)
    path = export_qonnx(quant, (1, 28, 28), tmp_path / "resnet.onnx")
    streamlined = qonnx_to_finn_streamlined(ModelWrapper(str(path)))
    with pytest.raises(FlowError, match="does not streamline"):
        require_streamlined(streamlined, "resnet8")
    assert any("residual join" in item for item in check_streamlined(streamlined))
