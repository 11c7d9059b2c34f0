"""QONNX export with a UINT8 input and its numerical verification against Brevitas (trimflow.export)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from qonnx.core.datatype import DataType
from qonnx.core.modelwrapper import ModelWrapper

from trimflow import FlowError
from trimflow.data import load_dataset, subset
from trimflow.export import export_qonnx, verify_qonnx
from trimflow.models.cnv import CNVLike
from trimflow.quantize import QuantConfig, calibrate_activations, convert_model

TINY = dict(widths=(4, 8), strides=(1, 2))


@pytest.fixture(scope="module")
def data():
    return (subset(load_dataset("fashion-mnist", "train"), 64, seed=0),
            subset(load_dataset("fashion-mnist", "test"), 24, seed=0))


def _quant(cfg, train, seed=0):
    torch.manual_seed(seed)
    q = convert_model(CNVLike(**TINY), cfg)
    calibrate_activations(q, train, 1, 32)
    return q


def test_export_uint8_input_and_verify(data, tmp_path):
    train, test = data
    q = _quant(QuantConfig(), train)
    path = export_qonnx(q, (1, 28, 28), tmp_path / "m.onnx")
    model = ModelWrapper(str(path))
    iname = model.graph.input[0].name
    assert model.get_tensor_datatype(iname) == DataType["UINT8"]
    assert model.get_tensor_shape(iname) == [1, 1, 28, 28]
    first = model.find_consumer(iname)
    assert first.op_type == "Mul"
    assert float(model.get_initializer(first.input[1])) == float(np.float32(1) / np.float32(255))
    # the 8-bit input quantizer was an identity on the uint8 grid and is gone; the weight Quants remain
    assert model.find_consumer(first.output[0]).op_type == "Conv"
    assert len(model.get_nodes_by_op_type("Quant")) == 3 + 2  # 3 weight tensors + 2 ReLU quantizers
    report = verify_qonnx(path, q, test, progress=False)
    assert report["images"] == 24 and report["top1_agreement"] == 1.0
    assert report["images_past_tolerance"] == 0
    assert report["max_abs_diff"] <= report["tolerance"]
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left no temporaries


def test_export_low_bit_input_keeps_quant(data, tmp_path):
    train, test = data
    q = _quant(QuantConfig(input_bits=4, weight_bits=2, act_bits=2), train)
    path = export_qonnx(q, (1, 28, 28), tmp_path / "m.onnx")
    model = ModelWrapper(str(path))
    mul = model.find_consumer(model.graph.input[0].name)
    quant = model.find_consumer(mul.output[0])
    assert quant.op_type == "Quant" and float(model.get_initializer(quant.input[3])) == 4
    assert verify_qonnx(path, q, test, progress=False)["top1_agreement"] == 1.0


def test_verify_detects_a_wrong_model(data, tmp_path):
    train, test = data
    path = export_qonnx(_quant(QuantConfig(), train, seed=0), (1, 28, 28), tmp_path / "m.onnx")
    with pytest.raises(FlowError, match="disagrees with the Brevitas model"):
        verify_qonnx(path, _quant(QuantConfig(), train, seed=1), test, progress=False)


def test_export_rejects_bad_shape(data, tmp_path):
    with pytest.raises(FlowError, match="input_shape"):
        export_qonnx(_quant(QuantConfig(), data[0]), (28, 28), tmp_path / "m.onnx")
