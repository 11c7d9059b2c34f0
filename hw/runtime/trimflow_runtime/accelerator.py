"""The accelerator behind one interface, with interchangeable backends.

`Accelerator.execute(batch)` takes uint8 frames already in the accelerator's input layout (the package's
`accel_input`, batch first, e.g. N x H x W x C) and returns the integer outputs of the dataflow partition (before the
host tail). Backends:
- "pynq": the bitfile on the board through the finn-plus-driver overlay named in driver/settings.json.
- "finn-python": host-only emulation; FINN executes the package's HW-layer model node by node in Python.
  (FINN's op registry imports torch, which is why this backend cannot run on a board.)
- "verilator": host-only, cycle-accurate; trimflow's Verilator simulation (trimflow.sim) of the generated RTL.
"""

from __future__ import annotations

import abc
import importlib.util
import json
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from trimflow_runtime import DeployError
from trimflow_runtime.package import Package, check_running_board

BACKENDS = ("pynq", "finn-python", "verilator")


class Accelerator(abc.ABC):
    name = "accelerator"

    def __init__(self, pkg: Package):
        self.pkg = pkg
        self.in_shape = tuple(int(d) for d in pkg.manifest["accel_input"]["shape"][1:])

    def check_batch(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch)
        if batch.dtype != np.uint8 or tuple(batch.shape[1:]) != self.in_shape:
            raise DeployError(f"{self.name}: expected uint8 (N, {', '.join(map(str, self.in_shape))}), "
                              f"got {batch.dtype} {batch.shape}")
        return batch

    @abc.abstractmethod
    def execute(self, batch: np.ndarray) -> np.ndarray:
        """uint8 (N, *accel input shape) -> integer outputs (N, *accel output shape), as float or int array."""

    def close(self) -> None:
        pass

    def __enter__(self) -> "Accelerator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class PynqAccelerator(Accelerator):
    name = "pynq"

    def __init__(self, pkg: Package, batch_size: int = 1, download: bool = True):
        super().__init__(pkg)
        pkg.check_backend("pynq")
        check_running_board(pkg)
        try:
            from finn_plus_driver import get_driver_class
        except ImportError as e:
            raise DeployError(f"the pynq backend needs PYNQ and finn-plus-driver on the board ({e}); install with "
                              "`pip3 install finn-plus-driver==1.6.1` (it needs numpy<2)") from None
        settings_path = pkg.file("driver_settings")
        settings = json.loads(settings_path.read_text())["driver_information"]
        # FINN's driver resolves these relative to the working directory; the package can be run from anywhere.
        settings.setdefault("runtime_weight_dir", str(settings_path.parent / "runtime_weights"))
        settings.setdefault("mlo_weight_dir", str(settings_path.parent / "mlo_weights"))
        settings["batch_size"] = int(batch_size)
        cls = get_driver_class(settings["driver_type"])
        self.overlay = cls(str(pkg.file("bitfile")), download=download, **settings)

    def execute(self, batch: np.ndarray) -> np.ndarray:
        batch = self.check_batch(batch)
        if self.overlay.batch_size != len(batch):
            self.overlay.batch_size = len(batch)  # reallocates the DMA buffers
        return np.asarray(self.overlay.execute(batch))


def _finn_session(work_dir: Path):
    """FINN needs its settings (a build dir) before any of its ops run; use trimflow's adapter when present."""
    try:
        from trimflow.finn.adapter import finn_session
    except ImportError:
        raise DeployError("the finn-python and verilator backends run on the build host, inside trimflow's "
                          "environment (import flow failed); on a board use --backend pynq") from None
    return finn_session(work_dir)


class FinnPythonAccelerator(Accelerator):
    name = "finn-python"

    def __init__(self, pkg: Package, work_dir: str | None = None):
        super().__init__(pkg)
        pkg.check_backend("finn-python")
        self._tmp = None if work_dir else tempfile.TemporaryDirectory(prefix="trimflow-runtime-")
        self.work_dir = Path(work_dir or self._tmp.name)
        with _finn_session(self.work_dir):
            from qonnx.core.modelwrapper import ModelWrapper

            self.model = ModelWrapper(str(pkg.file("accel_model")))
        self.iname = self.model.graph.input[0].name
        self.oname = self.model.graph.output[0].name

    def execute(self, batch: np.ndarray) -> np.ndarray:
        batch = self.check_batch(batch)
        with _finn_session(self.work_dir):
            from finn.core.onnx_exec import execute_onnx

            outs = [execute_onnx(self.model, {self.iname: img[None].astype(np.float32)})[self.oname]
                    for img in batch]
        return np.concatenate(outs) if outs else np.zeros((0,))

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


class VerilatorAccelerator(Accelerator):
    name = "verilator"

    def __init__(self, pkg: Package, work_dir: str | None = None):
        super().__init__(pkg)
        pkg.check_backend("verilator")
        self.work_dir = Path(work_dir) if work_dir else pkg.root / ".verilator"
        try:
            from trimflow import FlowError
            from trimflow.sim import SimConfig, build_simulator
        except ImportError as e:
            raise DeployError(f"the verilator backend needs trimflow's trimflow.sim on the build host ({e})") from None
        try:
            with _finn_session(self.work_dir / "codegen"):
                self.sim = build_simulator(pkg.file("hw_model"), self.work_dir / "sim", SimConfig(),
                                           fpga_part=pkg.part,
                                           clk_ns=float(pkg.manifest.get("clock_period_ns", 10.0)))
        except FlowError as e:
            raise DeployError(f"verilator backend: {e}") from None
        self._flow_error = FlowError

    def execute(self, batch: np.ndarray) -> np.ndarray:
        batch = self.check_batch(batch)
        try:
            return np.asarray(self.sim.run(batch).outputs)
        except self._flow_error as e:
            raise DeployError(f"verilator backend: {e}") from None


def default_backend(pkg: Package) -> str:
    """pynq on a board (pynq importable and a bitfile present), else the fastest host backend the package has."""
    have = pkg.backends()
    if "pynq" in have and importlib.util.find_spec("pynq") is not None:
        return "pynq"
    for b in ("finn-python", "verilator"):
        if b in have:
            return b
    raise DeployError(f"deployment package {pkg.root} has files for no backend usable here "
                      f"(it has: {', '.join(have) or 'none'}; pynq needs a PYNQ board)")


def open_accelerator(pkg: Package, backend: str = "auto", **kwargs: Any) -> Accelerator:
    if backend == "auto":
        backend = default_backend(pkg)
    classes = {"pynq": PynqAccelerator, "finn-python": FinnPythonAccelerator, "verilator": VerilatorAccelerator}
    if backend not in classes:
        raise DeployError(f"unknown backend {backend!r}; choose auto or one of {', '.join(BACKENDS)}")
    return classes[backend](pkg, **kwargs)


def apply_host_ops(ops: Sequence[dict], x: np.ndarray) -> np.ndarray:
    """Apply the manifest's host_head / host_tail ops to a batch (batch dimension first)."""
    for op in ops:
        kind = op["op"]
        if kind == "Transpose":
            x = np.transpose(x, op["perm"])
        elif kind == "Reshape":
            x = np.reshape(x, (x.shape[0], *op["shape"][1:]))
        elif kind in ("Mul", "Add", "Sub", "Div"):
            c = np.asarray(op["const"], dtype=np.float32)
            a, b = (c, x.astype(np.float32)) if op.get("const_first") else (x.astype(np.float32), c)
            x = {"Mul": np.multiply, "Add": np.add, "Sub": np.subtract, "Div": np.divide}[kind](a, b)
        else:
            raise DeployError(f"manifest host op {kind!r} is not supported by this runtime")
    return x
