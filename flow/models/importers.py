"""Bring a user's own network into trimflow: a PyTorch class + state_dict, a TorchScript file, or a float ONNX file.

Every import ends in a trimflow checkpoint whose arch record rebuilds the network without the source file where
possible:
- PyTorch class: arch {"name": "module", "kwargs": {"target": "pkg.mod:Class" or "path/file.py:Class",
  "kwargs": {...}}}; rebuilding imports the class again, so it must stay importable.
- ONNX and TorchScript: the graph is converted by `trimflow.models.onnx_to_torch` (TorchScript is first exported to
  ONNX by torch's TorchScript exporter, which handles ScriptModules natively) and the arch is
  {"name": "graph", "kwargs": {"spec": ...}}, which holds the whole layer structure: the source file is not needed
  afterwards.
Both kinds rebuild torch Conv2d / Linear / BatchNorm2d modules, so a trimmed checkpoint loads through
`trimflow.models.io.resize_to_state`.

Our images reach models as floats in [0, 1]. A network trained on another input range — 0..255 pixels, or
per-channel (x - mean) / std — gets that mapping folded into the convolutions that read the input
(`fold_input_normalization`), so no extra layer reaches FINN. A pure scale is exact; a mean shift is exact only
where the first convolution does not zero-pad (at the borders the original padded with normalised zeros, the folded
layer pads with raw zeros), which the import report says.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import math
import os
import tempfile
import types
import zipfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.fx
from torch import nn

from trimflow import FlowError, first_line
from trimflow.data import load_dataset, subset

KINDS = ("auto", "onnx", "torchscript", "pytorch")


@dataclasses.dataclass(frozen=True)
class ImportConfig:
    source: str  # .onnx file, TorchScript file, or (kind pytorch) a state_dict file
    kind: str = "auto"  # auto: .onnx → onnx; class_path given → pytorch; otherwise torchscript
    class_path: str | None = None  # "package.module:ClassName" or "path/to/file.py:ClassName" (kind pytorch)
    model_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    input_shape: tuple[int, ...] | None = None  # C, H, W; default: the ONNX input, else the dataset's images
    input_scale: float = 1.0  # the model wants (x * input_scale - mean) / std for our x in [0, 1]
    input_mean: tuple[float, ...] | None = None  # per input channel (or one value for all)
    input_std: tuple[float, ...] | None = None
    rescale: bool = False  # divide all activations by a power of two so the logits' std is ~4 (see rescale_activations)
    dataset: str | None = None  # when given: check channels/classes fit and measure test accuracy
    data_dir: str | None = None
    eval_images: int | None = None  # test images for the accuracy figure; None = the whole split

    def __post_init__(self):
        if self.kind not in KINDS:
            raise FlowError(f"import: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind == "pytorch" and not self.class_path:
            raise FlowError("import: kind 'pytorch' needs the model's class, --class MODULE:CLASS ('package.module:"
                            "ClassName' or 'path/file.py:ClassName')")
        if self.class_path is not None and ":" not in self.class_path:
            raise FlowError(f"import: --class {self.class_path!r} must look like 'package.module:ClassName' or "
                            "'path/file.py:ClassName'")
        if self.input_shape is not None and (len(self.input_shape) != 3 or min(self.input_shape) < 1):
            raise FlowError(f"import: input_shape must be C, H, W, got {self.input_shape}")
        if not math.isfinite(self.input_scale) or self.input_scale <= 0:
            raise FlowError(f"import: input_scale must be a positive number, got {self.input_scale}")
        if self.input_std is not None and any(s <= 0 for s in self.input_std):
            raise FlowError(f"import: input_std must be positive, got {self.input_std}")
        if self.eval_images is not None and self.eval_images < 1:
            raise FlowError(f"import: eval_images must be >= 1, got {self.eval_images}")

    def resolved_kind(self) -> str:
        """The kind to import as; auto looks into the file (FlowError for a torch.save file without --class, or a
        file that is none of the three)."""
        if self.kind != "auto":
            return self.kind
        if self.class_path:
            return "pytorch"
        found = file_kind(self.source)
        if found == "torch.save":
            raise FlowError(f"import: {self.source} is a torch.save file (a state_dict or a pickled model), not "
                            "TorchScript: give the model's class with --class MODULE:CLASS ('package.module:Class' "
                            "or 'path/file.py:Class')")
        if found is None:
            raise FlowError(f"import: {self.source} is neither an ONNX file (.onnx), a TorchScript file nor a "
                            "torch.save state_dict; export the model to one of them")
        return found


def file_kind(path: str | os.PathLike) -> str | None:
    """onnx (by the suffix), torchscript, torch.save (a state_dict or a pickled object), or None, by the file's
    contents: both torch formats are zip archives (or, torch.save before 1.6, a pickle), but only TorchScript's
    holds its code."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return "onnx"
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
            if any("/code/" in n or n.endswith("/constants.pkl") for n in names):
                return "torchscript"
            return "torch.save" if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names) else None
        with open(path, "rb") as f:
            return "torch.save" if f.read(2) == b"\x80\x02" else None  # the legacy format's pickle protocol 2
    except OSError:
        return None


def import_model(cfg: ImportConfig, out: str | os.PathLike) -> dict[str, Any]:
    """Import `cfg.source` and write the trimflow checkpoint `out` plus `out` with .json (what was done, checks).

    Returns that info dict: kind, arch name, input shape, output classes, the largest difference to the source
    model on probe inputs (onnxruntime / TorchScript), the fold applied, and test accuracy when a dataset is given.
    """
    from trimflow.artifacts import write_json
    from trimflow.models.io import save_checkpoint

    source = Path(cfg.source)
    if not source.exists():
        raise FlowError(f"import: {source} does not exist")
    kind = cfg.resolved_kind()
    spec_ds = _dataset_spec(cfg.dataset)
    shape = tuple(cfg.input_shape) if cfg.input_shape else (spec_ds.shape if spec_ds else None)
    if kind == "pytorch":
        model, arch = _import_pytorch(cfg, source)
        diff = 0.0
    elif kind == "onnx":
        model, arch, diff = _import_onnx(source)
    else:
        if shape is None:
            raise FlowError(f"import: TorchScript {source} needs --input-shape C,H,W or a --dataset to take it "
                            "from")
        model, arch, diff = _import_torchscript(source, shape)
    check_structure(model, f"import: {source}")
    if shape is None:
        shape = tuple(arch["kwargs"]["spec"]["input_shape"]) if arch["name"] == "graph" else None
    if shape is None:
        raise FlowError(f"import: give --input-shape C,H,W or a --dataset for {source}")
    _check_traceable(model, str(source))
    fold = fold_input_normalization(model, cfg.input_scale, cfg.input_mean, cfg.input_std, shape[0])
    classes = check_model_fits(model, shape, spec_ds.classes if spec_ds else None,
                               where=f"{source}" + (f" on dataset {cfg.dataset!r}" if cfg.dataset else ""))
    factor = 1.0
    if cfg.rescale:
        probe = (load_dataset(cfg.dataset, "train", cfg.data_dir).images[:256].float() / 255 if cfg.dataset
                 else torch.from_numpy(_probe_inputs(tuple(shape))))
        factor = logit_rescale_factor(model, probe)
        rescale_activations(model, factor, probe)
    info: dict[str, Any] = {"source": str(source), "kind": kind, "arch": arch["name"], "input_shape": list(shape),
                            "classes": classes, "max_abs_diff_to_source": diff, "input_fold": fold,
                            "activations_divided_by": factor}
    if cfg.dataset:
        from trimflow.train import evaluate
        test = subset(load_dataset(cfg.dataset, "test", cfg.data_dir), cfg.eval_images)
        info["dataset"] = cfg.dataset
        info["test_images"] = len(test)
        info["test_accuracy"] = evaluate(model, test)
    meta = {"imported_from": str(source), "kind": kind, "input_fold": fold, "activations_divided_by": factor}
    if cfg.dataset:
        meta.update(dataset=cfg.dataset, test_accuracy=info["test_accuracy"])
    save_checkpoint(out, model, arch, meta=meta)
    write_json(Path(out).with_suffix(".json"), info)
    return info


def _dataset_spec(name: str | None):
    if name is None:
        return None
    from trimflow.data.registry import DATASETS, resolve_dataset
    resolve_dataset(name)
    if name not in DATASETS:
        raise FlowError(f"import: unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


# -- PyTorch class + state_dict --------------------------------------------------------------------------------
def build_module(target: str, kwargs: dict[str, Any] | None = None, source: str | None = None) -> nn.Module:
    """Instantiate `target` ("package.module:ClassName" or "path/to/file.py:ClassName") with `kwargs`.

    `source`: the code of the class's file, as `trimflow import --class file.py:Class` stores it in the checkpoint;
    the class is then built from it, wherever the file is now.
    """
    mod_name, sep, cls_name = target.rpartition(":")
    if not sep or not mod_name or not cls_name:
        raise FlowError(f"model class {target!r} must look like 'package.module:ClassName'")
    try:
        if source is not None:
            module = types.ModuleType(f"trimflow_user_{Path(mod_name).stem}")
            module.__file__ = f"<checkpoint copy of {mod_name}>"
            exec(compile(source, module.__file__, "exec"), module.__dict__)  # the user's own code, from their import
        elif mod_name.endswith(".py"):
            path = Path(mod_name)
            if not path.is_file():
                raise FlowError(f"model class {target!r}: file {path} does not exist")
            spec = importlib.util.spec_from_file_location(f"trimflow_user_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            module = importlib.import_module(mod_name)
    except FlowError:
        raise
    except Exception as e:
        raise FlowError(f"model class {target!r}: cannot import {mod_name} ({type(e).__name__}: {e}); put the "
                        f"folder that holds {mod_name.split('.')[0]} on PYTHONPATH, or import the model again with "
                        "`trimflow import --class path/to/file.py:Class` so the checkpoint carries the code") from None
    cls = getattr(module, cls_name, None)
    if cls is None:
        raise FlowError(f"model class {target!r}: {mod_name} has no attribute {cls_name!r}")
    try:
        model = cls(**(kwargs or {}))
    except TypeError as e:
        raise FlowError(f"model class {target!r}: bad arguments {kwargs}: {e}") from None
    if not isinstance(model, nn.Module):
        raise FlowError(f"model class {target!r} did not build an nn.Module (got {type(model).__name__})")
    return model


def _portable_target(class_path: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's record of a user class: a module path as given, or a file's code (never its location)."""
    mod_name, _, cls_name = class_path.rpartition(":")
    if not mod_name.endswith(".py"):
        return {"target": class_path, "kwargs": kwargs}  # resolved on PYTHONPATH when the checkpoint is loaded
    return {"target": f"{Path(mod_name).name}:{cls_name}", "kwargs": kwargs, "source": Path(mod_name).read_text()}


def _import_pytorch(cfg: ImportConfig, source: Path) -> tuple[nn.Module, dict[str, Any]]:
    from trimflow.models.io import load_state_strict

    model = build_module(cfg.class_path, cfg.model_kwargs)  # type: ignore[arg-type]
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:
        if "Weights only load failed" in str(e):  # torch.save(model): unpickling it would run arbitrary code
            raise FlowError(f"import: {source} holds a pickled model object, not a state_dict; save it with "
                            "torch.save(model.state_dict(), path), or export it to TorchScript or ONNX") from None
        raise FlowError(f"import: {source} is not a loadable state_dict ({type(e).__name__}: {first_line(e)}); save "
                        "it with torch.save(model.state_dict(), path)") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model_state_dict", "model"):  # common training-script wrappers
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FlowError(f"import: {source} does not hold a state_dict (a mapping of names to tensors)")
    load_state_strict(model, state, source=str(source))
    model.eval()
    return model, {"name": "module", "kwargs": _portable_target(cfg.class_path, dict(cfg.model_kwargs))}


# -- ONNX and TorchScript ---------------------------------------------------------------------------------------
def _probe_inputs(shape: tuple[int, ...], scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(0).random((4, *shape), dtype=np.float32) * scale).astype(np.float32)


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def _check_close(ref: np.ndarray, got: np.ndarray, what: str) -> float:
    diff = _max_diff(ref, got)
    if ref.shape != got.shape or diff > 1e-4 * max(1.0, float(np.max(np.abs(ref)))):
        raise FlowError(f"import: the converted model does not reproduce {what} (max difference {diff:.3g}); "
                        "please report the model")
    return diff


def _import_onnx(source: Path) -> tuple[nn.Module, dict[str, Any], float]:
    from trimflow.models.onnx_to_torch import onnx_to_torch

    model, spec = onnx_to_torch(source)
    x = _probe_inputs(tuple(spec["input_shape"]))
    with torch.no_grad():
        ours = model(torch.from_numpy(x)).numpy()
    diff = float("nan")
    try:
        import onnxruntime as ort
    except ImportError:  # the converter is still exact; we just cannot prove it here
        return model, {"name": "graph", "kwargs": {"spec": spec}}, diff
    sess = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name
    batch = sess.get_inputs()[0].shape[0]
    # Files that fix the batch to 1 (like the ONNX zoo's) get one image per call.
    ref = (np.concatenate([sess.run(None, {in_name: x[i:i + 1]})[0] for i in range(len(x))])
           if batch == 1 else sess.run(None, {in_name: x})[0])
    diff = _check_close(ref, ours, f"onnxruntime's output of {source}")
    return model, {"name": "graph", "kwargs": {"spec": spec}}, diff


def _import_torchscript(source: Path, shape: tuple[int, ...]) -> tuple[nn.Module, dict[str, Any], float]:
    from trimflow.models.onnx_to_torch import onnx_to_torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated, but users have files
            scripted = torch.jit.load(str(source), map_location="cpu")
    except Exception as e:
        raise FlowError(f"import: {source} is not a TorchScript file ({type(e).__name__}: {first_line(e)}); for a "
                        "plain state_dict give --class MODULE:CLASS") from None
    scripted.eval()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
                torch.onnx.export(scripted, (torch.zeros(1, *shape),), str(onnx_path), dynamo=False,
                                  opset_version=13, do_constant_folding=False,  # keep BN layers
                                  input_names=["input"], output_names=["logits"],
                                  dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        except Exception as e:
            raise FlowError(f"import: TorchScript {source} cannot be exported to ONNX for conversion "
                            f"({type(e).__name__}: {e})") from None
        try:
            model, spec = onnx_to_torch(onnx_path)
        except FlowError as e:  # name the user's file, not our temporary export of it
            raise FlowError(str(e).replace(str(onnx_path), f"TorchScript {source} (exported to ONNX)")) from None
    x = _probe_inputs(shape)
    with torch.no_grad():
        ref = scripted(torch.from_numpy(x)).numpy()
        ours = model(torch.from_numpy(x)).numpy()
    diff = _check_close(ref, ours, f"TorchScript {source}")
    return model, {"name": "graph", "kwargs": {"spec": spec}}, diff


def check_structure(model: nn.Module, where: str) -> None:
    """FlowError naming the first layer the flow cannot carry to FINN (recurrent, attention, ... layers), or the
    first non-finite weight; `where` starts the message (the user's file). The quantize stage applies the same
    layer rule, so a model refused here would only have failed later."""
    from trimflow.quantize import _check_supported
    try:
        _check_supported(model)
    except FlowError as e:
        raise FlowError(f"{where}: {str(e).removeprefix('model: ')}") from None
    check_finite(model.state_dict(), where)


def check_finite(state: dict[str, torch.Tensor], where: str) -> None:
    for name, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise FlowError(f"{where}: tensor {name!r} holds {bad} NaN/Inf value(s) of {t.numel()}; the weights are "
                            "broken (a diverged training run?): re-export them from a good training checkpoint")


def check_model_file(path: str | os.PathLike) -> None:
    """FlowError unless `path` (the flow's `model:`) is a trimflow checkpoint with finite weights. A user's own
    model file (ONNX, TorchScript, a state_dict) gets the `trimflow import` command that converts it."""
    from trimflow.models.io import read_checkpoint

    path = Path(path)
    fix = (f"convert it first with `trimflow import {path} --out checkpoints/mine.pt` (add --class module:Class for "
           "a state_dict) and set model: checkpoints/mine.pt")
    kind = file_kind(path) if path.is_file() else None
    if kind in ("onnx", "torchscript"):  # torch.load would warn and dispatch to torch.jit.load for TorchScript
        raise FlowError(f"model {path} is {'an ONNX' if kind == 'onnx' else 'a TorchScript'} file, not a trimflow "
                        f"checkpoint; {fix}")
    try:
        payload = read_checkpoint(path)
    except FlowError as e:
        raise FlowError(f"model {path} is not a trimflow checkpoint ({str(e).splitlines()[0]}); if it is your own "
                        f"model, {fix}") from None
    check_finite(payload["state_dict"], f"model {path}")


def import_summary(info: dict[str, Any], out: str | os.PathLike) -> str:
    """The line `trimflow import` prints: what it wrote and what the model is."""
    shape = "x".join(str(v) for v in info["input_shape"])
    acc = (f", test accuracy {info['test_accuracy']:.4f} on {info['test_images']} {info['dataset']} images"
           if "test_accuracy" in info else "")
    return (f"imported {info['source']} ({info['kind']}) → {out} (+ {Path(out).with_suffix('.json')}): "
            f"{info['classes']} classes, input {shape}{acc}")


def _check_traceable(model: nn.Module, where: str) -> None:
    try:
        torch.fx.symbolic_trace(model)
    except Exception as e:
        raise FlowError(f"import: {where}: torch.fx cannot trace the model ({type(e).__name__}: {e}); trimming "
                        "needs a traceable forward — export the model to ONNX and import that instead") from None


# -- input range and dataset checks ----------------------------------------------------------------------------
def _per_channel(values: tuple[float, ...] | None, channels: int, default: float, what: str) -> torch.Tensor:
    if values is None:
        return torch.full((channels,), default)
    if len(values) == 1:
        return torch.full((channels,), float(values[0]))
    if len(values) != channels:
        raise FlowError(f"import: input_{what} has {len(values)} values, the model has {channels} input channels")
    return torch.tensor(values, dtype=torch.float32)


def fold_input_normalization(model: nn.Module, scale: float = 1.0, mean: tuple[float, ...] | None = None,
                             std: tuple[float, ...] | None = None, channels: int | None = None) -> dict[str, Any]:
    """Make `model`, which expects (x * scale - mean) / std, take x in [0, 1] by changing its input convolutions.

    Returns what was folded: {"scale", "mean", "std", "layers", "exact"}. Raises FlowError if the input is read
    by anything but Conv2d modules, or a mean must be folded into a conv without bias.
    """
    if scale == 1.0 and mean is None and std is None:
        return {"scale": 1.0, "mean": None, "std": None, "layers": [], "exact": True}
    gm = torch.fx.symbolic_trace(model)
    inp = next(n for n in gm.graph.nodes if n.op == "placeholder")
    readers = list(inp.users)
    convs = []
    for n in readers:
        mod = gm.get_submodule(n.target) if n.op == "call_module" else None
        if not isinstance(mod, nn.Conv2d) or mod.groups != 1:
            raise FlowError(f"import: the model input is read by {n.target if n.op != 'placeholder' else n.name} "
                            f"({n.op}), not only by (ungrouped) Conv2d layers; cannot fold the input "
                            "normalisation into the first layer")
        convs.append((str(n.target), model.get_submodule(str(n.target))))
    c = channels or convs[0][1].in_channels
    m = _per_channel(mean, c, 0.0, "mean")
    s = _per_channel(std, c, 1.0, "std")
    exact = True
    with torch.no_grad():
        for name, conv in convs:
            w = conv.weight / s.view(1, -1, 1, 1)
            if bool((m != 0).any()):
                if conv.bias is None:
                    raise FlowError(f"import: input_mean needs a bias in the first layer {name!r}, which has "
                                    "none; normalise the dataset instead")
                conv.bias -= (w * m.view(1, -1, 1, 1)).sum((1, 2, 3))
                exact = exact and all(p == 0 for p in _padding(conv))
            conv.weight.copy_(w * scale)
    return {"scale": scale, "mean": None if mean is None else list(mean), "std": None if std is None else list(std),
            "layers": [n for n, _ in convs], "exact": exact}


def _padding(conv: nn.Conv2d) -> tuple[int, ...]:
    if isinstance(conv.padding, str):  # "valid" pads nothing; "same" pads unless the kernel is 1x1
        return (0,) if conv.padding == "valid" or max(conv.kernel_size) == 1 else (1,)
    return conv.padding


def check_model_fits(model: nn.Module, shape: tuple[int, ...], classes: int | None, where: str) -> int:
    """Run one zero image of `shape` through `model`; FlowError unless it gives (1, classes) logits.

    Returns the model's number of outputs.
    """
    model.eval()
    with torch.no_grad():
        try:
            out = model(torch.zeros(1, *shape))
        except RuntimeError as e:
            first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
            hint = f" (its first layer takes {first.in_channels} channels)" if isinstance(first, nn.Conv2d) else ""
            raise FlowError(f"{where}: the model cannot take {tuple(shape)} images{hint}: "
                            f"{str(e).splitlines()[0]}") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise FlowError(f"{where}: the model must return (batch, classes) logits, got "
                        f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
    if classes is not None and out.shape[1] != classes:
        raise FlowError(f"{where}: the model outputs {out.shape[1]} classes, the dataset has {classes}")
    return int(out.shape[1])


# -- activation scale -------------------------------------------------------------------------------------------
# Layers through which dividing the input by a divides the output by a (positively homogeneous, no offsets).
_HOMOGENEOUS = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity, nn.Dropout,
                nn.Sequential)


def logit_rescale_factor(model: nn.Module, images: torch.Tensor, target_std: float = 4.0) -> float:
    """The power of two that brings the std of `model`'s logits on `images` nearest to `target_std`."""
    with torch.no_grad():
        std = float(model.eval()(images).std())
    if not math.isfinite(std) or std <= 0:
        raise FlowError(f"import: the model's logits have std {std} on the probe images; cannot rescale")
    return float(2.0 ** round(math.log2(std / target_std)))


def rescale_activations(model: nn.Module, factor: float, probe: torch.Tensor) -> None:
    """Divide every activation of `model`, and so its logits, by `factor`, without changing its predictions.

    Some imported nets (the ONNX zoo MNIST CNN: logits in the thousands) were trained without any control of
    their activation range; fine-tuning them with our learning rates diverges. Because the net is built from
    layers that commute with a positive scale, dividing the weights and biases of the first Conv/Linear layers
    and every later bias by `factor` divides each activation by it, exactly when `factor` is a power of two.
    BatchNorm would re-normalise the scale away (and such nets do not need this), so it is refused; functional
    ops that do not commute with scaling are caught by checking the result on `probe` images.
    """
    if factor == 1.0:
        return
    if factor <= 0:
        raise FlowError(f"import: activation rescale factor must be positive, got {factor}")
    for name, m in model.named_modules():
        if m is model or isinstance(m, (nn.Conv2d, nn.Linear) + _HOMOGENEOUS):
            continue
        if not list(m.children()):  # a leaf we do not know commutes with scaling
            raise FlowError(f"import: rescale works on nets of Conv2d / Linear / ReLU / pooling / flatten layers; "
                            f"layer {name!r} is a {type(m).__name__}; import without rescale")
    gm = torch.fx.symbolic_trace(model)
    first, todo = set(), [n for n in gm.graph.nodes if n.op == "placeholder"]
    while todo:  # the Conv/Linear layers the input reaches before any other weight layer
        for user in todo.pop().users:
            mod = gm.get_submodule(str(user.target)) if user.op == "call_module" else None
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                first.add(str(user.target))
            else:
                todo.append(user)
    with torch.no_grad():
        before = model.eval()(probe)
        saved = {k: v.clone() for k, v in model.state_dict().items()}
        for name, m in model.named_modules():
            if not isinstance(m, (nn.Conv2d, nn.Linear)):
                continue
            if name in first:
                m.weight /= factor
            if m.bias is not None:
                m.bias /= factor
        after = model(probe) * factor
        if not torch.allclose(after, before, rtol=1e-4, atol=1e-4 * float(before.abs().max())):
            model.load_state_dict(saved)
            raise FlowError("import: this model's output does not scale with its activations (an offset or a "
                            "non-homogeneous function in forward); import without rescale")


# -- command line (the lead's `trimflow import` sub-command calls these) -----------------------------------------
def add_cli_arguments(p) -> None:
    """Arguments of `trimflow import SOURCE --out CHECKPOINT ...` on an argparse (sub)parser."""
    p.add_argument("source", help="a .onnx file, a TorchScript file, or (with --class) a state_dict file")
    p.add_argument("--out", required=True, help="trimflow checkpoint to write (plus a .json next to it)")
    p.add_argument("--kind", choices=KINDS, default="auto")
    p.add_argument("--class", dest="class_path", metavar="MODULE:CLASS",
                   help="the model's class, 'package.module:ClassName' or 'path/file.py:ClassName'")
    p.add_argument("--kwargs", default="{}", help="JSON object of the class's constructor arguments")
    p.add_argument("--input-shape", help="C,H,W (default: the ONNX input or the dataset's images)")
    p.add_argument("--input-scale", type=float, default=1.0,
                   help="the model wants x * SCALE for our x in [0, 1] (255 for nets trained on raw pixels)")
    p.add_argument("--input-mean", help="per-channel mean the model subtracts after scaling, e.g. 0.485,0.456,0.406")
    p.add_argument("--input-std", help="per-channel std the model divides by after the mean")
    p.add_argument("--rescale", action="store_true",
                   help="divide all activations by a power of two so logits are O(1) (for nets with huge logits)")
    p.add_argument("--dataset", help="check the model fits this dataset and measure its test accuracy")
    p.add_argument("--data-dir")
    p.add_argument("--eval-images", type=int)


def config_from_cli(args) -> ImportConfig:
    import json

    def floats(text: str | None, what: str) -> tuple[float, ...] | None:
        if text is None:
            return None
        try:
            return tuple(float(v) for v in text.split(","))
        except ValueError:
            raise FlowError(f"import: {what} must be comma-separated numbers, got {text!r}") from None

    try:
        kwargs = json.loads(args.kwargs)
    except json.JSONDecodeError as e:
        raise FlowError(f"import: --kwargs is not JSON ({e})") from None
    if not isinstance(kwargs, dict):
        raise FlowError("import: --kwargs must be a JSON object, e.g. '{\"classes\": 10}'")
    shape = floats(args.input_shape, "--input-shape")
    return ImportConfig(source=args.source, kind=args.kind, class_path=args.class_path, model_kwargs=kwargs,
                        input_shape=tuple(int(v) for v in shape) if shape else None, input_scale=args.input_scale,
                        input_mean=floats(args.input_mean, "--input-mean"),
                        input_std=floats(args.input_std, "--input-std"), rescale=args.rescale,
                        dataset=args.dataset, data_dir=args.data_dir, eval_images=args.eval_images)
