"""Bad input and faults, one table row each: what a careless or hostile user of `trimflow` can do wrong.

Every row runs the real command line (trimflow.cli.main, in-process for speed; a few as real processes at the end)
and asserts the exit code, a one-line message that names the problem and the fix (regexes, no traceback), that no
stage folder appeared under its final name (and no temporary one stayed behind), and that the good run after it
still works. The good run is one cheap `trimflow relevance` on small settings, run once for real and then served
from its cache after every row, which also proves the row did not damage the cache.

Faults that need a file system of their own (full disk, read-only mount) mount a small tmpfs and are skipped where
mounting is not allowed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml

from trimflow.cli import main

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = ROOT / "checkpoints" / "cnv-fashion-mnist.pt"
SMALL = ["eval_images=200", "relevance.images=200"]
BOARD = "pynq-z2"


# -- fixtures: the shared good build, and the user's own files the rows break --------------------------------------
NETS = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 7 * 7, classes))

    def forward(self, x):
        return self.head(self.features(x))


class WithRecurrent(nn.Module):
    def __init__(self, cell="LSTM"):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.rnn = getattr(nn, cell)(8 * 28, 32, batch_first=True)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        y = self.conv(x).permute(0, 2, 1, 3).flatten(2)
        return self.fc(self.rnn(y)[0][:, -1])


class WithGELU(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.act = nn.GELU()
        self.fc = nn.Linear(8 * 28 * 28, 10)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).flatten(1))
'''


@dataclasses.dataclass
class Env:
    """What a row's setup gets: its own folder, the shared good build dir and user files, and an ExitStack for
    undoing mounts and helper processes."""
    tmp: Path
    shared: Path
    files: dict[str, Path]
    stack: contextlib.ExitStack

    @property
    def build(self) -> Path:
        return self.tmp / "build"


@pytest.fixture(scope="module")
def user_files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("user")
    (d / "nets.py").write_text(NETS)
    sys.path.insert(0, str(d))
    import importlib
    nets = importlib.import_module("nets")
    torch.manual_seed(0)
    net = nets.Net().eval()
    files = {"nets": d / "nets.py"}
    torch.save(net.state_dict(), files.setdefault("state", d / "net_state.pt"))
    torch.jit.trace(net, torch.zeros(1, 1, 28, 28)).save(str(files.setdefault("script", d / "net_script.pt")))
    torch.save(nets.WithRecurrent("LSTM").state_dict(), files.setdefault("lstm", d / "lstm_state.pt"))
    torch.save(nets.WithRecurrent("GRU").state_dict(), files.setdefault("gru", d / "gru_state.pt"))
    torch.jit.trace(nets.WithRecurrent("LSTM").eval(), torch.zeros(1, 1, 28, 28)).save(
        str(files.setdefault("lstm_script", d / "lstm_script.pt")))
    torch.save(nets.WithGELU().state_dict(), files.setdefault("gelu", d / "gelu_state.pt"))
    bad = {k: v.clone() for k, v in net.state_dict().items()}  # state_dict() shares the parameters' storage
    bad["features.0.weight"][0, 0, 0, 0] = float("nan")
    torch.save(bad, files.setdefault("nan_state", d / "nan_state.pt"))
    onnx_path = files.setdefault("onnx", d / "net.onnx")
    torch.onnx.export(net, (torch.zeros(1, 1, 28, 28),), str(onnx_path), dynamo=False, opset_version=13)
    payload = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    for name, value in (("nan", float("nan")), ("inf", float("inf"))):
        broken = {**payload, "state_dict": dict(payload["state_dict"])}
        key = next(k for k, v in broken["state_dict"].items() if v.is_floating_point())
        broken["state_dict"][key] = broken["state_dict"][key].clone()
        broken["state_dict"][key].view(-1)[3] = value
        torch.save(broken, files.setdefault(f"{name}_ckpt", d / f"{name}.pt"))
    return files


def good_args(build: Path) -> list[str]:
    return ["relevance", "--build-dir", str(build), "--set", *SMALL]


@pytest.fixture(scope="module")
def shared_build(tmp_path_factory) -> Path:
    build = tmp_path_factory.mktemp("shared") / "build"
    assert main(good_args(build)) == 0
    return build


# -- helpers the rows use --------------------------------------------------------------------------------------------
def write_idx(path: Path, array: np.ndarray) -> Path:
    codes = {np.uint8: 0x08}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape)
    data = header + array.tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def idx_dataset(root: Path, n_train: int = 20, n_test: int = 10, labels_max: int = 9) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz",
                  (np.arange(n) % (labels_max + 1)).astype(np.uint8))
    return root


def image_folder(root: Path, classes: int = 10, per_class: int = 5, size=(28, 28), mode="L") -> Path:
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c:02d}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = size if mode == "L" else (*size, 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / f"c{c:02d}" / f"{i}.png")
    return root


def board_file(env: Env, name: str = "myboard", **changes) -> Path:
    data = yaml.safe_load((ROOT / "boards" / f"{BOARD}.yaml").read_text())
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        elif value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path = env.tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def tmpfs(env: Env, name: str, options: str) -> Path:
    """A fresh tmpfs at env.tmp/name (unmounted after the row); skips the row where mounting is not allowed."""
    where = env.tmp / name
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
    env.stack.callback(subprocess.run, ["umount", "-l", str(where)])
    return where


def unwritable(env: Env, path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:  # root writes through any mode bits; the immutable attribute stops even root
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
            pytest.skip("root without chattr: cannot make a folder unwritable")
        env.stack.callback(subprocess.run, ["chattr", "-i", str(path)])
    else:
        path.chmod(0o555)
        env.stack.callback(path.chmod, 0o755)
    return path


def lock_holder(env: Env, build: Path) -> int:
    """A live process holding the build lock of build/<board>; returns its pid."""
    code = ("import sys, time; from trimflow.build_lock import build_lock\n"
            f"with build_lock({str(build / BOARD)!r}):\n    print('held', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    env.stack.callback(proc.wait)
    env.stack.callback(proc.kill)
    assert proc.stdout.readline().strip() == "held"
    return proc.pid


def on_board(env: Env, **changes) -> list[str]:
    return flow(env, extra=("--board", str(board_file(env, **changes))))


def flow(env: Env, *sets: str, build: Path | None = None, stage: str = "relevance", extra=()) -> list[str]:
    return [stage, "--build-dir", str(build or env.build), *extra, "--set", *SMALL, *sets]


def cfg_file(env: Env, text: str | bytes, name: str = "my.yaml") -> Path:
    path = env.tmp / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def imp(env: Env, source: Path | str, *extra: str, out: Path | None = None) -> list[str]:
    return ["import", str(source), "--out", str(out or env.tmp / "mine.pt"), *extra]


# -- the table -------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Row:
    id: str
    setup: Callable[[Env], list[str]]
    needles: tuple[str, ...]  # regexes that must all appear in stderr: the problem, and what to do
    rc: int = 2
    slow: bool = False
    completed: tuple[str, ...] = ()  # stages that legitimately finish before the one that refuses
    absent: tuple[str, ...] = ()  # regexes that must not appear (e.g. our temporary files instead of the user's)


def idx_row(mutate: Callable[[Path], None]) -> Callable[[Env], list[str]]:
    def setup(env: Env) -> list[str]:
        d = idx_dataset(env.tmp / "data")
        mutate(d)
        return flow(env, extra=("--data-dir", str(d)))
    return setup


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def folder_row(make: Callable[[Path], None], **options) -> Callable[[Env], list[str]]:
    def setup(env: Env) -> list[str]:
        root = env.tmp / "images"
        root.mkdir()
        make(root)
        (root / "trimflow-dataset.yaml").write_text(yaml.safe_dump({"mode": "L", **options}))
        return flow(env, f"dataset=folder:{root}")
    return setup


def _symlink_loop_file(root: Path) -> None:
    image_folder(root)
    os.symlink("loop.png", root / "c03" / "loop.png")


def _symlink_loop_dir(root: Path) -> None:
    image_folder(root)
    os.symlink("c10", root / "c10")


def _dangling(root: Path) -> None:
    image_folder(root)
    os.symlink("/nonexistent/x.png", root / "c01" / "gone.png")


def _huge(root: Path) -> None:
    from PIL import Image
    image_folder(root)
    Image.new("L", (4000, 28)).save(root / "c00" / "0.png")


def _zero_bytes(root: Path) -> None:
    image_folder(root)
    (root / "c02" / "empty.png").write_bytes(b"")


def _empty_test_split(root: Path) -> None:
    image_folder(root / "train")
    for c in range(10):
        (root / "test" / f"c{c:02d}").mkdir(parents=True)


def _mixed_sizes(root: Path) -> None:
    from PIL import Image
    image_folder(root)
    Image.new("L", (30, 30)).save(root / "c05" / "odd.png")


ROWS = [
    # ---- config files and --set ------------------------------------------------------------------------------------
    Row("config-top-level-list", lambda e: ["relevance", "--config", str(cfg_file(e, "- trim:\n    budget: 0.4\n")),
                                            "--build-dir", str(e.build)],
        (r"my\.yaml: the top level must be a mapping", r"remove the leading")),
    Row("config-missing", lambda e: ["relevance", "--config", str(e.tmp / "nope.yaml"), "--build-dir", str(e.build)],
        (r"nope\.yaml does not exist",)),
    Row("config-is-folder", lambda e: ["relevance", "--config", str(e.tmp), "--build-dir", str(e.build)],
        (r"config file .* is a folder, not a file", r"give an existing file")),
    Row("config-bad-yaml", lambda e: ["relevance", "--config", str(cfg_file(e, "trim: [budget: 0.4\n")),
                                      "--build-dir", str(e.build)],
        (r"my\.yaml: not valid YAML: line 2, column 1: expected ',' or '\]', but got",)),
    Row("config-binary", lambda e: ["relevance", "--config", str(cfg_file(e, bytes(range(256)) * 4)),
                                    "--build-dir", str(e.build)], (r"my\.yaml: not a text file", r"UTF-8")),
    Row("config-unknown-key", lambda e: ["relevance", "--config", str(cfg_file(e, "trimm: {budget: 0.4}\n")),
                                         "--build-dir", str(e.build)], (r"unknown key\(s\) trimm", r"allowed:")),
    Row("set-unknown-nested-key", lambda e: flow(e, "trim.kep=0.3"), (r"unknown key\(s\) kep", r"allowed:")),
    # keys the board file or the top-level dataset decide: setting one is an error, not silently overwritten
    Row("set-board-decided-part", lambda e: flow(e, "simulate.sim.fpga_part=xc7z020clg400-1"),
        (r"simulate\.sim: fpga_part is not a setting: the board file decides it", r"boards/<board>\.yaml: part")),
    Row("set-board-decided-clock", lambda e: flow(e, "simulate.sim.clk_ns=5"),
        (r"clk_ns is not a setting: the board file decides it", r"clock_period_ns")),
    Row("set-verify-dataset", lambda e: flow(e, "compile.verify_dataset=mnist"),
        (r"compile: verify_dataset is not a setting: the top-level `dataset` decides it",)),
    Row("set-without-equals", lambda e: flow(e, "trim.budget"), (r"--set 'trim\.budget'", r"KEY\.PATH=VALUE")),
    Row("set-bad-yaml", lambda e: flow(e, "trim.budget=[0.4,"),
        (r"--set 'trim\.budget=\[0\.4,': the value is not valid YAML \(line 1, column \d+: ", r"quoted string")),
    Row("set-wrong-type", lambda e: flow(e, "eval_images=lots"), (r"eval_images", r"expected int|not a valid")),
    Row("eval-images-zero", lambda e: flow(e, "eval_images=0"), (r"eval_images must be >= 1", r"null")),
    Row("eval-images-negative", lambda e: flow(e, "eval_images=-5"), (r"eval_images must be >= 1",)),
    Row("relevance-images-zero", lambda e: flow(e, "relevance.images=0"), (r"images must be >= 1",)),
    Row("finetune-epochs-negative", lambda e: flow(e, "finetune.epochs=-1"), (r"epochs must be >= 0",)),
    Row("bits-zero", lambda e: flow(e, "quantize.weight_bits=0"), (r"weight_bits must be an integer from 1",)),
    Row("bits-huge", lambda e: flow(e, "quantize.act_bits=64"), (r"act_bits must be an integer from 1 to 8",)),
    Row("budget-zero", lambda e: flow(e, "trim.budget=0"), (r"budget must be in \(0, 1\]",)),
    Row("budget-above-one", lambda e: flow(e, "trim.budget=1.5"), (r"budget must be in \(0, 1\]",)),
    Row("target-fps-inf", lambda e: flow(e, extra=("--target-fps", "inf")),
        (r"target_fps \(--target-fps\) must be a positive, finite number", r"inf")),
    Row("target-fps-nan", lambda e: flow(e, extra=("--target-fps", "nan")), (r"finite number",)),
    Row("target-fps-negative", lambda e: flow(e, extra=("--target-fps", "-5")), (r"positive, finite",)),
    Row("target-fps-zero-set", lambda e: flow(e, "hwtrim.target_fps=0"), (r"positive, finite",)),
    Row("target-fps-old-key", lambda e: flow(e, "compile.target_fps=100"),
        (r"compile\.target_fps is no longer a key", r"compile\.folding_fps", r"hwtrim\.target_fps")),
    Row("force-unknown-stage", lambda e: flow(e, extra=("--force", "trimm")), (r"unknown stage", r"relevance")),
    Row("unknown-dataset", lambda e: flow(e, "dataset=imagenet"), (r"unknown dataset 'imagenet'", r"known:"),
        absent=(r"▶",)),  # before any stage starts
    # ---- the model -------------------------------------------------------------------------------------------------
    Row("model-is-folder", lambda e: flow(e, f"model={e.tmp}"), (r"model checkpoint .* is a folder, not a file",
                                                                r"set `model:` .* to a trimflow checkpoint")),
    Row("model-missing", lambda e: flow(e, f"model={e.tmp / 'missing.pt'}"),
        (r"missing\.pt does not exist", r"set `model:`")),
    Row("model-is-onnx", lambda e: flow(e, f"model={e.files['onnx']}"),
        (r"net\.onnx is an ONNX file", r"trimflow import .*net\.onnx")),
    Row("model-is-state-dict", lambda e: flow(e, f"model={e.files['state']}"),
        (r"net_state\.pt is not a trimflow checkpoint", r"trimflow import .*--class")),
    Row("model-is-torchscript", lambda e: flow(e, f"model={e.files['script']}"),
        (r"net_script\.pt is a TorchScript file, not a trimflow checkpoint", r"trimflow import")),
    Row("model-empty-file", lambda e: flow(e, f"model={cfg_file(e, b'', 'empty.pt')}"),
        (r"empty\.pt is not a trimflow checkpoint", r"trimflow import")),
    Row("model-text-file", lambda e: flow(e, f"model={cfg_file(e, 'hello', 'notes.pt')}"),
        (r"notes\.pt is not a trimflow checkpoint",)),
    Row("model-nan-weights", lambda e: flow(e, f"model={e.files['nan_ckpt']}"),
        (r"nan\.pt: tensor '.*' holds 1 NaN/Inf", r"re-export")),
    Row("model-inf-weights", lambda e: flow(e, f"model={e.files['inf_ckpt']}"),
        (r"inf\.pt: tensor '.*' holds 1 NaN/Inf", r"good training checkpoint")),
    # ---- boards ----------------------------------------------------------------------------------------------------
    Row("board-unknown-name", lambda e: flow(e, extra=("--board", "pynq-z3")), (r"unknown board 'pynq-z3'",
                                                                                r"pynq-z2")),
    Row("board-file-missing", lambda e: flow(e, extra=("--board", str(e.tmp / "b.yaml"))),
        (r"b\.yaml does not exist",)),
    Row("board-fake-part", lambda e: on_board(e, part="xc9zfoo-nosuch-1"),
        (r"myboard\.yaml: part 'xc9zfoo-nosuch-1' is not an FPGA part", r"full Vivado part name")),
    Row("board-part-typo", lambda e: on_board(e, part="xc7z020clg400-l"),
        (r"part 'xc7z020clg400-l'", r"did you mean xc7z020clg400-1")),
    Row("board-absurd-lut", lambda e: on_board(e, capacity={"LUT": 10**9}),
        (r"capacity\.LUT = 1,000,000,000 is more than any FPGA has", r"real LUT count")),
    Row("board-more-dsp-than-part", lambda e: on_board(e, capacity={"DSP": 5000}),
        (r"capacity\.DSP = 5,000, but part xc7z020clg400-1 has 220", r"caps\.DSP")),
    Row("board-cap-above-one", lambda e: on_board(e, caps={"LUT": 1.5}),
        (r"caps\.LUT is a fraction",)),
    Row("board-negative-cap", lambda e: on_board(e, caps={"DSP": -0.1}),
        (r"caps\.DSP must be a non-negative",)),
    Row("board-missing-part", lambda e: on_board(e, part=None),
        (r"missing field\(s\) part",)),
    Row("board-zero-clock", lambda e: on_board(e, clock_period_ns=0),
        (r"clock_period_ns must be a number in \[1, 100\]",)),
    Row("board-axi-width", lambda e: on_board(e, axi_width_bits=33),
        (r"axi_width_bits must be 32/64",)),
    Row("board-zero-lut", lambda e: on_board(e, capacity={"LUT": 0}),
        (r"capacity\.LUT must be positive",)),
    Row("board-top-level-list", lambda e: flow(e, extra=("--board", str(cfg_file(e, "- name: x\n", "lst.yaml")))),
        (r"lst\.yaml: the top level must be a mapping",)),
    Row("board-shell-flow", lambda e: on_board(e, shell_flow="pcie"),
        (r"shell_flow 'pcie' is not one of",)),
    # ---- build directory and file system -----------------------------------------------------------------------
    Row("build-dir-below-file", lambda e: flow(e, build=cfg_file(e, "x", "afile") / "build"),
        (r"cannot write .*afile/build", r"not a folder", r"--build-dir")),
    Row("build-dir-is-file", lambda e: flow(e, build=cfg_file(e, "x", "bfile")),
        (r"bfile", r"not a folder", r"--build-dir")),
    Row("build-dir-unwritable", lambda e: flow(e, build=unwritable(e, e.tmp / "locked") / "build"),
        (r"locked/build", r"[Pp]ermission denied|not permitted", r"make it writable|check that path and its "
                                                                   r"permissions")),
    Row("build-dir-read-only-mount", lambda e: flow(e, build=tmpfs(e, "ro", "ro,size=1m") / "build"),
        (r"cannot write .*ro/build", r"read-only", r"--build-dir")),
    Row("disk-full-during-stage", lambda e: flow(e, build=tmpfs(e, "full", "size=48k") / "build"),
        (r"cannot write .*relevance", r"the disk is full", r"bytes free", r"free some space")),
    Row("build-dir-locked", lambda e: (lock_holder(e, e.build), flow(e))[1],
        (r"build directory .* is in use by pid \d+", r"wait for that build")),
    # ---- datasets --------------------------------------------------------------------------------------------------
    Row("data-dir-missing", lambda e: flow(e, extra=("--data-dir", str(e.tmp / "nodata"))),
        (r"data_dir .*nodata is not a folder; give the folder that holds the fashion-mnist files",),
        absent=(r"▶",)),
    Row("idx-truncated-gz", idx_row(lambda d: truncate(d / "t10k-images-idx3-ubyte.gz")),
        (r"t10k-images-idx3-ubyte\.gz: truncated or corrupt gzip", r"download it again")),
    Row("idx-not-gzip", idx_row(lambda d: (d / "t10k-labels-idx1-ubyte.gz").write_bytes(b"plain text, not gzip")),
        (r"t10k-labels-idx1-ubyte\.gz: truncated or corrupt gzip",)),
    Row("idx-bad-magic", idx_row(lambda d: (d / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\1\2\3\4"))),
        (r"not an IDX file",)),
    Row("idx-count-mismatch", idx_row(lambda d: write_idx(d / "t10k-labels-idx1-ubyte.gz",
                                                          np.zeros(7, np.uint8))), (r"10 images but 7 labels",)),
    Row("labels-exceed-head", idx_row(lambda d: write_idx(d / "t10k-labels-idx1-ubyte.gz",
                                                          np.full(10, 12, np.uint8))),
        (r"10 test label\(s\) outside 0\.\.9", r"fix the label file")),
    Row("empty-test-split", idx_row(lambda d: (write_idx(d / "t10k-images-idx3-ubyte.gz", np.zeros((0, 28, 28),
                                                                                                   np.uint8)),
                                               write_idx(d / "t10k-labels-idx1-ubyte.gz", np.zeros(0, np.uint8)))),
        (r"the test split has no images", r"put test images there")),
    Row("folder-symlink-loop-file", folder_row(_symlink_loop_file), (r"loop\.png is a symlink loop", r"remove it")),
    Row("folder-symlink-loop-dir", folder_row(_symlink_loop_dir), (r"c10 is a symlink loop", r"remove it")),
    Row("folder-dangling-symlink", folder_row(_dangling), (r"gone\.png points to nothing", r"remove it")),
    Row("folder-huge-image", folder_row(_huge), (r"0\.png is 4000x28 pixels", r"set size: \[H, W\]")),
    Row("folder-zero-byte-image", folder_row(_zero_bytes), (r"empty\.png cannot be read as an image",)),
    Row("folder-empty", folder_row(lambda r: None), (r"no class subfolders",)),
    Row("folder-empty-test-split", folder_row(_empty_test_split), (r"no images for split 'test'",)),
    Row("folder-mixed-sizes", folder_row(_mixed_sizes), (r"odd\.png is 30x30", r"set size")),
    Row("folder-bad-option", folder_row(image_folder, sise=[28, 28]), (r"unknown key\(s\) sise",)),
    Row("folder-zero-size-option", folder_row(image_folder, size=[0, 28]), (r"size must be \[H, W\] with positive",)),
    Row("folder-more-classes-than-head", folder_row(lambda r: image_folder(r, classes=12)),
        (r"outputs 10 classes, the dataset has 12",)),
    Row("folder-rgb-for-gray-model", folder_row(lambda r: image_folder(r, mode="RGB"), mode="RGB"),
        (r"cannot take \(3, 28, 28\) images",)),
    # ---- import ----------------------------------------------------------------------------------------------------
    Row("import-torchscript-ok", lambda e: imp(e, e.files["script"], "--dataset", "fashion-mnist",
                                               "--eval-images", "50"),
        (r"imported .*net_script\.pt \(torchscript\) → .*mine\.pt", r"10 classes"), rc=0),
    Row("import-class-ok", lambda e: imp(e, e.files["state"], "--class", f"{e.files['nets']}:Net",
                                         "--input-shape", "1,28,28"),
        (r"imported .*net_state\.pt \(pytorch\)", r"mine\.json"), rc=0),
    Row("import-onnx-ok", lambda e: imp(e, e.files["onnx"]), (r"imported .*net\.onnx \(onnx\)",), rc=0),
    Row("import-lstm", lambda e: imp(e, e.files["lstm"], "--class", f"{e.files['nets']}:WithRecurrent",
                                     "--input-shape", "1,28,28"),
        (r"lstm_state\.pt: layer 'rnn' is LSTM, an unsupported layer type", r"Replace it")),
    Row("import-gru", lambda e: imp(e, e.files["gru"], "--class", f"{e.files['nets']}:WithRecurrent",
                                    "--kwargs", '{"cell": "GRU"}', "--input-shape", "1,28,28"),
        (r"gru_state\.pt: layer 'rnn' is GRU",)),
    Row("import-torchscript-lstm", lambda e: imp(e, e.files["lstm_script"], "--input-shape", "1,28,28"),
        (r"TorchScript .*lstm_script\.pt \(exported to ONNX\)", r"LSTM"), absent=(r"/tmp/tmp\w+/model\.onnx",)),
    Row("import-gelu", lambda e: imp(e, e.files["gelu"], "--class", f"{e.files['nets']}:WithGELU",
                                     "--input-shape", "1,28,28"), (r"gelu_state\.pt: layer 'act' is GELU",)),
    Row("import-nan-weights", lambda e: imp(e, e.files["nan_state"], "--class", f"{e.files['nets']}:Net",
                                            "--input-shape", "1,28,28"), (r"nan_state\.pt: tensor 'features\.0\.weight'"
                                                                          r" holds 1 NaN/Inf", r"re-export")),
    Row("import-missing-source", lambda e: imp(e, e.tmp / "nothing.onnx"), (r"nothing\.onnx does not exist",)),
    Row("import-garbage-onnx", lambda e: imp(e, cfg_file(e, b"\x08\x01garbage", "bad.onnx")),
        (r"bad\.onnx: not a readable ONNX model",)),
    Row("import-bad-kwargs", lambda e: imp(e, e.files["state"], "--class", f"{e.files['nets']}:Net",
                                           "--kwargs", "{classes: 10"), (r"--kwargs is not JSON",)),
    Row("import-bad-class", lambda e: imp(e, e.files["state"], "--class", "no_such_module:Net"),
        (r"cannot import no_such_module", r"PYTHONPATH")),
    Row("import-wrong-state", lambda e: imp(e, e.files["lstm"], "--class", f"{e.files['nets']}:Net",
                                            "--input-shape", "1,28,28"), (r"lstm_state\.pt does not match the model",)),
    Row("import-torchscript-no-shape", lambda e: imp(e, e.files["script"]), (r"needs --input-shape C,H,W or a --dataset",)),
    Row("import-out-disk-full", lambda e: imp(e, e.files["state"], "--class", f"{e.files['nets']}:Net",
                                              "--input-shape", "1,28,28", out=tmpfs(e, "tiny", "size=12k") / "m.pt"),
        (r"cannot write .*m\.pt", r"the disk is full", r"free some space")),
    # ---- a config that sets every bit width to 1: refused by the quantize stage (zero-padded convolutions) -------
    Row("all-bits-one", lambda e: flow(e, *(f"quantize.{k}=1" for k in ("weight_bits", "act_bits", "input_bits",
                                                                         "first_layer_weight_bits",
                                                                         "last_layer_weight_bits")),
                                       "finetune.epochs=0.02", "trim.calib_images=100",
                                       "trim.sensitivity.images=100", "quantize.train.epochs=0.01", stage="quantize"),
        (r"act_bits=1 .*zero-padded convolutions", r"Use act_bits >= 2"), slow=True,
        completed=("relevance", "trim")),
]


def _stage_dirs(build: Path) -> dict[str, float]:
    """Every stage folder (and temporary one) under a build root, with its stage.json's mtime."""
    out = {}
    if build.is_dir():
        for board in build.iterdir():
            if board.is_dir():
                for d in board.iterdir():
                    if d.is_dir() and d.name != ".cache":  # the sensitivity tables' cache, not a stage
                        stamp = d / "stage.json"
                        out[d.name] = stamp.stat().st_mtime_ns if stamp.exists() else -1
    return out


@pytest.mark.parametrize("row", [pytest.param(r, id=r.id, marks=[pytest.mark.slow] if r.slow else [])
                                 for r in ROWS])
def test_bad_input(row: Row, tmp_path, shared_build, user_files, capsys):
    before = _stage_dirs(shared_build)
    with contextlib.ExitStack() as stack:
        env = Env(tmp_path, shared_build, user_files, stack)
        argv = row.setup(env)
        capsys.readouterr()
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == row.rc, err
        assert "Traceback" not in err
        for needle in row.needles:
            assert re.search(needle, err, re.S), f"{needle!r} not in:\n{err}"
        for needle in row.absent:
            assert not re.search(needle, err), err
        if row.rc:
            error_lines = [line for line in err.splitlines() if line.startswith("trimflow: error:")]
            assert len(error_lines) == 1, err
            assert err.rstrip().splitlines()[-1] in error_lines, err  # one line: no continuation after it
            out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else None
            assert out is None or not out.exists()  # a refused import writes nothing
            if "--build-dir" in argv:  # neither a stage folder of the refused stage nor a temporary one
                build = Path(argv[argv.index("--build-dir") + 1])
                assert sorted(_stage_dirs(build)) == sorted(row.completed)
    # the good run after it (from the cache, unless someone edited the stage code meanwhile)
    assert _stage_dirs(shared_build) == before
    assert main(good_args(shared_build)) == 0, capsys.readouterr().err


def test_table_has_every_case():
    ids = {r.id for r in ROWS}
    assert len(ROWS) >= 60 and len(ids) == len(ROWS)
    for case in ("import-torchscript-ok", "import-class-ok", "import-lstm", "board-fake-part", "config-top-level-list",
                 "model-is-folder", "idx-truncated-gz", "build-dir-below-file", "build-dir-unwritable",
                 "disk-full-during-stage", "model-is-onnx", "eval-images-zero", "target-fps-inf", "build-dir-locked",
                 "folder-huge-image", "empty-test-split", "model-nan-weights", "labels-exceed-head",
                 "folder-symlink-loop-dir", "board-absurd-lut", "all-bits-one", "build-dir-read-only-mount"):
        assert case in ids


# -- real processes: exit codes, no traceback, signals -------------------------------------------------------------
def _run(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trimflow.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow  # three interpreter start-ups and a stage stopped half-way: ~30 s, minutes on a loaded machine
def test_real_processes_exit_codes_and_sigterm(tmp_path, user_files):
    """Three real `trimflow` processes at once (they share the CPU, so this costs one start-up): a refused board,
    a successful import (exit 0), and a relevance stage stopped by SIGTERM, which must leave no stage folder."""
    fake = tmp_path / "fake.yaml"
    data = yaml.safe_load((ROOT / "boards" / f"{BOARD}.yaml").read_text())
    fake.write_text(yaml.safe_dump({**data, "part": "xc9zfoo-nosuch-1"}))
    board = _run(["relevance", "--board", str(fake), "--build-dir", str(tmp_path / "b1")])
    out = tmp_path / "mine.pt"
    imported = _run(["import", str(user_files["script"]), "--out", str(out), "--input-shape", "1,28,28"])
    build = tmp_path / "b2"
    # 3,000 images: the stage runs long enough to be stopped inside it
    victim = _run(["relevance", "--build-dir", str(build), "--set", "relevance.images=3000", "eval_images=200"])
    deadline = time.time() + 300
    while time.time() < deadline and not list(build.glob(f"{BOARD}/.relevance.*.tmp")):
        time.sleep(0.2)
    assert list(build.glob(f"{BOARD}/.relevance.*.tmp")), "the stage never started"
    victim.send_signal(signal.SIGTERM)
    results = {name: (p.wait(timeout=600), *p.communicate()) for name, p in
               (("board", board), ("import", imported), ("victim", victim))}
    rc, _, err = results["board"]
    assert rc == 2 and "Traceback" not in err and "part 'xc9zfoo-nosuch-1' is not an FPGA part" in err
    rc, _, err = results["import"]
    assert rc == 0 and "Traceback" not in err and "imported" in err and out.exists(), err
    rc, _, err = results["victim"]
    assert rc == 128 + signal.SIGTERM, err
    assert "terminated (SIGTERM); completed stages are cached" in err and "Traceback" not in err
    assert _stage_dirs(build) == {}
