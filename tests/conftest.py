"""Fixtures that more than one test file uses: pytest finds them here, so test files do not import each other."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def qonnx_path(tmp_path_factory):
    """The tiny Brevitas CNN (tests.helpers.tiny_net) exported as QONNX, once per test module."""
    torch = pytest.importorskip("torch")
    from brevitas.export import export_qonnx

    from tests.helpers import tiny_net

    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("qonnx") / "tiny.onnx"
    export_qonnx(tiny_net(), torch.rand(1, 1, 28, 28), export_path=str(path))
    return path


@pytest.fixture(scope="module")
def test_images():
    """The first 6 Fashion-MNIST test images, (N, 1, 28, 28) uint8."""
    from trimflow.data import load_dataset

    return np.asarray(load_dataset("fashion-mnist", "test").images[:6])
