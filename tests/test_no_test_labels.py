"""No label of the test split influences any artifact of the flow: every choice is made on training images.

The same build runs twice, once on Fashion-MNIST and once on a copy whose test labels are shuffled garbage; the
artifacts (scores, trimmed checkpoint, and in the slow variant the QAT checkpoint and the QONNX model) must be
byte-identical. Only stage.json (whose summary reports test accuracies) and the timing files may differ.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from trimflow.artifacts import file_digest
from trimflow.build import run_flow
from trimflow.config import load_flow_config
from trimflow.data.idx import read_idx
from trimflow.stage_cache import STAGE_FILE, TIMING_FILE

FMNIST = Path("/usr/share/datasets/fashion-mnist")
SMALL = ["eval_images=100", "validation_images=200", "relevance.images=200", "trim.calib_images=100",
         "trim.reconstruct.positions=8", "finetune.epochs=0.005", "quantize.train.epochs=0.005",
         "quantize.calibration_batches=1", "quantize.calibration_batch_size=32", "export.verify_images=20"]
pytestmark = pytest.mark.skipif(not FMNIST.is_dir(), reason="needs Debian's dataset-fashion-mnist")


def _garbage_test_labels(dst: Path) -> Path:
    """Fashion-MNIST with the training files as they are and every test label replaced by a random class."""
    dst.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        (dst / name).symlink_to(FMNIST / name)
    labels = read_idx(FMNIST / "t10k-labels-idx1-ubyte.gz")
    garbage = np.random.default_rng(0).integers(0, 10, labels.shape[0]).astype(np.uint8)
    assert (garbage != labels).mean() > 0.8
    header = bytes([0, 0, 0x08, 1]) + len(garbage).to_bytes(4, "big")
    with gzip.open(dst / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(header + garbage.tobytes())
    return dst


def _artifacts(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): file_digest(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in (TIMING_FILE, STAGE_FILE) and p.parent != root}


def _run_both(tmp_path: Path, until: str) -> tuple[dict[str, str], dict[str, str]]:
    garbage = _garbage_test_labels(tmp_path / "garbage-data")
    out = []
    for name, data_dir in (("real", str(FMNIST)), ("garbage", str(garbage))):
        run_flow(load_flow_config(overrides=SMALL, data_dir=data_dir), "pynq-z2", tmp_path / name, until=until)
        out.append(_artifacts(tmp_path / name / "pynq-z2"))
    return out[0], out[1]


@pytest.mark.timeout(900)
def test_test_labels_do_not_change_the_trimmed_model(tmp_path):
    real, garbage = _run_both(tmp_path, "trim")
    # .cache: the sensitivity table (trimflow.trim.cached_sensitivity), an artifact like the others
    assert {k.split("/")[0] for k in real} == {"relevance", "trim", ".cache"} and "trim/model.pt" in real
    assert real == garbage


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_test_labels_do_not_change_any_artifact_up_to_export(tmp_path):
    real, garbage = _run_both(tmp_path, "export")
    assert {k.split("/")[0] for k in real} == {"relevance", "trim", "quantize", "export", ".cache"}
    assert real == garbage
