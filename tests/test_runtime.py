"""The board-side runtime (hw/runtime/trimflow_runtime) on a real compiled model and real Fashion-MNIST images.

A tiny CNV-like net is trained for a moment, quantized with Brevitas, exported to QONNX and compiled by FINN (about
20 s); its deployment package (trimflow.finn.synth.make_package, no Vivado) runs through the runtime's finn-python
backend, and must give the same classes as executing the QONNX model directly.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_DIR = ROOT / "hw" / "runtime"
sys.path.insert(0, str(RUNTIME_DIR))

import trimflow_runtime as rt  # noqa: E402
from trimflow_runtime.frames import Frame, PreprocessConfig, camera_frames, folder_frames, npy_frames  # noqa: E402
from trimflow_runtime.package import check_running_board  # noqa: E402

N_IMAGES = 64


def compiled_tiny_model(root: Path) -> dict:
    """Train/quantize/export/compile a tiny all-RTL CNN for pynq-z2 under `root`; returns paths and test data."""
    import torch

    from trimflow.boards import load_board
    from trimflow.data import load_dataset, subset
    from trimflow.export import export_qonnx
    from trimflow.finn.compile import CompileConfig, compile_model
    from trimflow.models.cnv import CNVLike
    from trimflow.quantize import QuantConfig, quantize_model
    from trimflow.train import TrainConfig, train

    torch.manual_seed(0)
    try:
        train_set = subset(load_dataset("fashion-mnist", "train"), 3000, seed=0)
        test_set = subset(load_dataset("fashion-mnist", "test"), N_IMAGES, seed=0)
    except Exception as e:  # noqa: BLE001 - any reason the dataset is not there
        pytest.skip(f"Fashion-MNIST is not available ({e}); install dataset-fashion-mnist or set DATA_DIR")
    net = CNVLike(widths=(4, 8), strides=(2, 2))
    train(net, train_set, TrainConfig(epochs=1, lr=0.05, augment=False), progress=False)
    qcfg = QuantConfig(weight_bits=4, act_bits=4, calibration_batches=2,
                       train=TrainConfig(epochs=0.25, lr=0.01, augment=False))
    qnet = quantize_model(net, train_set, qcfg, progress=False).eval()
    qonnx = export_qonnx(qnet, (1, 28, 28), root / "model.qonnx.onnx")
    board = load_board("pynq-z2")
    compile_model(qonnx, board, CompileConfig(verify=False), root / "compile")
    return {"qonnx": qonnx, "compile": root / "compile", "board": board, "qnet": qnet,
            "images": test_set.images.numpy(), "labels": test_set.labels.numpy()}


_BUILT: dict[str, dict] = {}


def tiny_model(tmp_path_factory) -> dict:
    """compiled_tiny_model, built once per test session (test_synth.py uses it too)."""
    if "tiny" not in _BUILT:
        _BUILT["tiny"] = compiled_tiny_model(tmp_path_factory.mktemp("tiny"))
    return _BUILT["tiny"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model(tmp_path_factory)


@pytest.fixture(scope="module")
def package(model, tmp_path_factory):
    from trimflow.finn.synth import make_package

    out = tmp_path_factory.mktemp("pkg") / "deploy"
    make_package(model["compile"], model["board"], out, classes=[f"c{i}" for i in range(10)])
    return out


@pytest.fixture(scope="module")
def reference(model):
    """Scores from executing the exported QONNX model directly (qonnx execute_onnx)."""
    from trimflow.export import run_qonnx

    import torch
    return run_qonnx(model["qonnx"], torch.from_numpy(model["images"]), progress=False)


def test_runtime_matches_direct_execution_on_real_images(model, package, reference, tmp_path):
    np.save(tmp_path / "x.npy", model["images"])
    pkg = rt.load_package(package, board="pynq-z2")
    assert pkg.input_shape == (1, 28, 28) and "finn-python" in pkg.backends() and "pynq" not in pkg.backends()
    with rt.open_accelerator(pkg, "finn-python") as accel:
        res = rt.classify(pkg, accel, npy_frames(tmp_path / "x.npy"), batch_size=8)
    assert res.frames == N_IMAGES
    np.testing.assert_array_equal(np.asarray(res.predictions), reference.argmax(1))
    scores = np.stack(res.scores)
    assert np.max(np.abs(scores - reference)) <= 1e-4 * np.max(np.abs(reference))
    # the Brevitas net itself (float32 torch) agrees too, apart from a possible rounding-boundary image
    import torch
    with torch.no_grad():
        torch_pred = model["qnet"](torch.from_numpy(model["images"]).float() / 255).argmax(1).numpy()
    assert np.mean(torch_pred == np.asarray(res.predictions)) >= 0.98
    acc = res.accuracy(model["labels"])
    assert acc > 0.4  # a trained net, far above chance (0.1), so predictions are not a degenerate constant
    assert res.fps > 0 and res.accel_fps >= res.fps


def test_cli_accuracy_mode_from_inside_the_package(model, package, reference, tmp_path):
    np.save(tmp_path / "x.npy", model["images"])
    np.save(tmp_path / "y.npy", model["labels"])
    proc = subprocess.run([sys.executable, "-m", "trimflow_runtime", "--npy", str(tmp_path / "x.npy"),
                           "--labels", str(tmp_path / "y.npy"), "--batch", "16"],
                          cwd=package, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    per_frame = [ln for ln in lines if ln.startswith("x.npy[")]
    assert len(per_frame) == N_IMAGES
    assert per_frame[3].startswith(f"x.npy[3]: class {reference[3].argmax()} c{reference[3].argmax()}")
    expected = np.mean(reference.argmax(1) == model["labels"])
    assert f"accuracy: {expected:.4f} over {N_IMAGES} labelled images" in proc.stdout
    assert " fps end to end" in proc.stdout


def test_folder_of_png_images_gives_the_same_classes(model, package, reference, tmp_path):
    from PIL import Image

    for i, img in enumerate(model["images"][:6]):
        Image.fromarray(img[0]).save(tmp_path / f"img{i:02d}.png")
    pkg = rt.load_package(package)
    with rt.open_accelerator(pkg, "finn-python") as accel:
        res = rt.classify(pkg, accel, folder_frames(tmp_path))
    assert res.names == [f"img{i:02d}.png" for i in range(6)]
    np.testing.assert_array_equal(res.predictions, reference[:6].argmax(1))


def test_runtime_does_not_import_torch_brevitas_or_flow(package):
    """What the board runs (package check, frames, preprocessing, the pynq backend) imports only numpy."""
    code = f"""
import sys
import trimflow_runtime as rt
from trimflow_runtime import frames, accelerator, classify, __main__
pkg = rt.load_package({str(package)!r})
frame = frames.Frame("f", __import__("numpy").zeros((28, 28, 1), "uint8"))
frames.preprocess(frame, pkg.input_shape)
try:
    rt.open_accelerator(pkg, "pynq")
except rt.DeployError as e:
    print("pynq:", e)
print(sorted(m for m in ("torch", "brevitas", "flow", "finn", "qonnx", "onnx") if m in sys.modules))
"""
    env = {**os.environ, "PYTHONPATH": str(RUNTIME_DIR)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd="/",
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("[]"), proc.stdout
    assert "pynq: deployment package" in proc.stdout and "has no bitfile" in proc.stdout


# ---------------------------------------------------------------- bad inputs


def test_package_problems_are_named(package, tmp_path):
    with pytest.raises(rt.DeployError, match="does not exist"):
        rt.load_package(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(rt.DeployError, match="manifest.json is missing"):
        rt.load_package(tmp_path / "empty")
    broken = tmp_path / "broken"
    shutil.copytree(package, broken)
    (broken / "model" / "accel.onnx").unlink()
    with pytest.raises(rt.DeployError, match=r"incomplete, missing: accel_model \(model/accel.onnx\)"):
        rt.load_package(broken)
    manifest = json.loads((package / "manifest.json").read_text())
    (broken / "model" / "accel.onnx").write_bytes(b"")
    for field, value, message in (("format", "other/9", "this runtime reads"),
                                  ("input", {"shape": [28, 28], "dtype": "uint8"}, "input.shape must be"),
                                  ("input", {"shape": [1, 28, 28], "dtype": "float32"}, "uint8 only")):
        (broken / "manifest.json").write_text(json.dumps({**manifest, field: value}))
        with pytest.raises(rt.DeployError, match=message):
            rt.load_package(broken)
    (broken / "manifest.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "host_tail"}))
    with pytest.raises(rt.DeployError, match="missing field.*host_tail"):
        rt.load_package(broken)


def test_package_built_for_another_board(package):
    with pytest.raises(rt.DeployError, match="built for board pynq-z2 .*not zcu104.*BOARD=zcu104"):
        rt.load_package(package, board="zcu104")
    pkg = rt.load_package(package)
    with pytest.raises(rt.DeployError, match=r"this board is Ultra96-V2 \(\$BOARD\).*built for Pynq-Z2"):
        check_running_board(pkg, {"BOARD": "Ultra96-V2"})
    check_running_board(pkg, {"BOARD": "Pynq-Z2"})
    check_running_board(pkg, {"BOARD": "pynq_z2"})
    check_running_board(pkg, {})
    with pytest.raises(rt.DeployError, match="this board is Pynq-Z1"):
        check_running_board(pkg, {"BOARD": "Pynq-Z1"})


def test_pynq_backend_drives_finns_overlay_as_its_settings_say(package, model, reference, tmp_path, monkeypatch):
    """The board backend's wiring, with finn-plus-driver's overlay class replaced by one that records its
    arguments and computes with the package's own HW model (pynq itself exists only on a board)."""
    board_pkg = tmp_path / "deploy"
    shutil.copytree(package, board_pkg)
    (board_pkg / "bitfile").mkdir()
    (board_pkg / "bitfile" / "finn-accel.bit").write_bytes(b"bit")
    (board_pkg / "bitfile" / "finn-accel.hwh").write_text("<hwh/>")
    (board_pkg / "driver").mkdir()
    settings = {"driver_type": "FINNDMAOverlay", "platform": "zynq-iodma", "fclk_mhz": 100.0,
                "io_shape_dict": {"ishape_normal": [[1, 28, 28, 1]]}, "runtime_weights": False}
    (board_pkg / "driver" / "settings.json").write_text(json.dumps({"driver_information": settings}))
    manifest = json.loads((board_pkg / "manifest.json").read_text())
    manifest["files"].update(bitfile="bitfile/finn-accel.bit", hwh="bitfile/finn-accel.hwh",
                             driver_settings="driver/settings.json")
    (board_pkg / "manifest.json").write_text(json.dumps(manifest))
    pkg = rt.load_package(board_pkg, board="pynq-z2")
    assert pkg.backends()[0] == "pynq"
    emulator = rt.open_accelerator(pkg, "finn-python")
    made = []

    class Overlay:
        def __init__(self, bitfile_name, **kwargs):
            made.append((bitfile_name, kwargs))
            self._batch = kwargs["batch_size"]
            self.resized = []

        @property
        def batch_size(self):
            return self._batch

        @batch_size.setter
        def batch_size(self, n):
            self.resized.append(n)
            self._batch = n

        def execute(self, x):
            assert len(x) == self._batch
            return emulator.execute(x)

    fake = types.SimpleNamespace(get_driver_class=lambda name: {"FINNDMAOverlay": Overlay}[name])
    monkeypatch.setitem(sys.modules, "finn_plus_driver", fake)
    monkeypatch.setenv("BOARD", "Pynq-Z2")
    with rt.open_accelerator(pkg, "pynq", batch_size=4) as accel:
        frames = [Frame(str(i), np.transpose(img, (1, 2, 0))) for i, img in enumerate(model["images"][:10])]
        res = rt.classify(pkg, accel, frames, batch_size=4)
    bitfile, kwargs = made[0]
    assert bitfile == str(board_pkg / "bitfile" / "finn-accel.bit")
    assert kwargs["platform"] == "zynq-iodma" and kwargs["batch_size"] == 4 and kwargs["download"] is True
    assert kwargs["runtime_weight_dir"] == str(board_pkg / "driver" / "runtime_weights")  # not cwd-relative
    assert accel.overlay.resized == [2]  # 10 frames = 4 + 4 + 2: buffers reallocated once, for the last batch
    np.testing.assert_array_equal(res.predictions, reference[:10].argmax(1))
    emulator.close()
    monkeypatch.setenv("BOARD", "Pynq-Z1")
    with pytest.raises(rt.DeployError, match="this board is Pynq-Z1"):
        rt.open_accelerator(pkg, "pynq")


def test_backend_without_its_files(package):
    pkg = rt.load_package(package)
    with pytest.raises(rt.DeployError, match="has no bitfile.*make synth"):
        rt.open_accelerator(pkg, "pynq")
    with pytest.raises(rt.DeployError, match="unknown backend"):
        rt.open_accelerator(pkg, "gpu")
    with rt.open_accelerator(pkg, "finn-python") as accel:
        with pytest.raises(rt.DeployError, match=r"expected uint8 \(N, 28, 28, 1\)"):
            accel.execute(np.zeros((1, 1, 28, 28), np.uint8))


def test_wrong_size_and_channels_are_errors_unless_converted():
    img = np.arange(28 * 28, dtype=np.uint32).reshape(28, 28, 1).astype(np.uint8)
    big = Frame("big.png", np.repeat(np.repeat(img, 2, axis=0), 2, axis=1))
    with pytest.raises(rt.DeployError, match=r"big.png: size 56x56, the accelerator takes 28x28; pass --resize"):
        rt.preprocess(big, (1, 28, 28))
    from PIL import Image
    pil = np.asarray(Image.fromarray(big.pixels[:, :, 0]).resize((28, 28), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(rt.preprocess(big, (1, 28, 28), PreprocessConfig(resize=True))[0], pil)

    bgr = np.zeros((28, 28, 3), np.uint8)
    bgr[..., 2] = 255  # pure red in OpenCV's BGR order
    rgb_frame = Frame("cam", bgr)
    with pytest.raises(rt.DeployError, match="3 channel.*takes 1; pass --convert-channels"):
        rt.preprocess(rgb_frame, (1, 28, 28))
    gray = rt.preprocess(rgb_frame, (1, 28, 28), PreprocessConfig(convert_channels=True))
    assert gray.shape == (1, 28, 28) and int(gray[0, 0, 0]) == 76  # round(0.299 * 255)
    with pytest.raises(rt.DeployError, match="4 channel"):
        rt.preprocess(Frame("rgba", np.zeros((28, 28, 4), np.uint8)), (1, 28, 28), PreprocessConfig(True, True))
    with pytest.raises(rt.DeployError, match="pixels must be uint8"):
        rt.preprocess(Frame("f", np.full((28, 28), 300)), (1, 28, 28))
    with pytest.raises(rt.DeployError, match="pixels must be uint8"):
        rt.preprocess(Frame("f", np.full((28, 28), 0.5)), (1, 28, 28))
    assert rt.preprocess(Frame("f", np.full((28, 28), 200, np.int64)), (1, 28, 28)).dtype == np.uint8


def test_frames_are_preprocessed_exactly_as_image_folder_training_did(tmp_path):
    """A model trained on an image folder (grayscale, resized, inverted, autocontrasted): the runtime reads the
    manifest's record of it and turns a photo into the very pixels the training images had."""
    from PIL import Image

    from trimflow.data.image_folder import ImageFolderOptions, _read
    from trimflow.data.meta import preprocessing

    rng = np.random.default_rng(0)
    photo = tmp_path / "photo.png"
    Image.fromarray(rng.integers(40, 200, (45, 37, 3), dtype=np.uint8)).save(photo)
    opts = ImageFolderOptions(size=(28, 28), mode="L", invert=True, normalize="autocontrast")
    trained_on = _read(photo, opts)  # (1, 28, 28), what training fed the model
    root = tmp_path / "ds"
    (root / "a").mkdir(parents=True)
    (root / "trimflow-dataset.yaml").write_text("size: [28, 28]\nmode: L\ninvert: true\nnormalize: autocontrast\n")
    record = {"mode": "L", "size": [28, 28], **preprocessing(f"folder:{root}")}
    assert record["resize"] == "bilinear" and record["invert"] and record["autocontrast"] and record["convert"]
    (frame,) = folder_frames(tmp_path)
    got = rt.preprocess(frame, (1, 28, 28), PreprocessConfig(bgr=False), record)
    np.testing.assert_array_equal(got, trained_on)
    # without the record (an IDX-trained model) the same photo is an error, not a silent squeeze
    with pytest.raises(rt.DeployError, match="3 channel"):
        rt.preprocess(frame, (1, 28, 28))
    # the gray conversion without PIL is PIL's own
    rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    from trimflow_runtime.frames import _gray
    np.testing.assert_array_equal(_gray(rgb)[:, :, 0], np.asarray(Image.fromarray(rgb).convert("L")))


def test_bad_npy_batches(tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros((4, 784), np.uint8))
    with pytest.raises(rt.DeployError, match=r"expected \(N, C, H, W\) or \(N, H, W\)"):
        list(npy_frames(tmp_path / "flat.npy"))
    with pytest.raises(rt.DeployError, match="does not exist"):
        list(npy_frames(tmp_path / "absent.npy"))
    (tmp_path / "noimg").mkdir()
    with pytest.raises(rt.DeployError, match="has no images"):
        list(folder_frames(tmp_path / "noimg"))
    three = list(npy_frames(_save(tmp_path / "gray.npy", np.ones((3, 28, 28), np.uint8))))
    assert [f.pixels.shape for f in three] == [(28, 28, 1)] * 3


def _save(path: Path, arr: np.ndarray) -> Path:
    np.save(path, arr)
    return path


def test_camera_absent(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 -> ImportError
    with pytest.raises(rt.DeployError, match="camera not available: OpenCV"):
        next(camera_frames(0))

    class Closed:
        def __init__(self, device):
            self.device = device

        def isOpened(self):  # noqa: N802 - OpenCV's name
            return False

    monkeypatch.setitem(sys.modules, "cv2", types.SimpleNamespace(VideoCapture=Closed))
    with pytest.raises(rt.DeployError, match="could not open video device 0"):
        next(camera_frames(0))


def test_cli_reports_errors_without_traceback(package):
    env = {**os.environ, "PYTHONPATH": str(RUNTIME_DIR)}
    proc = subprocess.run([sys.executable, "-m", "trimflow_runtime", "--package", str(package), "--npy",
                           "/nonexistent.npy", "--backend", "pynq"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("trimflow_runtime: error: ") and "Traceback" not in proc.stderr


@pytest.mark.rtlsim
@pytest.mark.slow
def test_verilator_backend_agrees_with_finn_python(package, reference, model, tmp_path):
    pkg = rt.load_package(package)
    frames = [Frame(str(i), np.transpose(img, (1, 2, 0))) for i, img in enumerate(model["images"][:16])]
    with rt.open_accelerator(pkg, "verilator", work_dir=str(tmp_path / "sim")) as accel:
        res = rt.classify(pkg, accel, frames, batch_size=16)
    np.testing.assert_array_equal(res.predictions, reference[:16].argmax(1))
