"""Checkpoints: the arch record that rebuilds the module, its state_dict, and free-form metadata.

A trimmed checkpoint has narrower tensors than its arch builds; loading resizes Conv2d / Linear / BatchNorm
modules to the stored shapes (only when the checkpoint says it was trimmed, so a mismatching checkpoint is still
an error that names the tensors).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trimflow import FlowError, first_line
from trimflow.artifacts import atomic_path, to_jsonable
from trimflow.models.registry import build_model

FORMAT = "trimflow-checkpoint/1"


def write_payload(path: str | os.PathLike, payload: dict[str, Any], model: nn.Module) -> None:
    """Save `payload` plus the model's state_dict with torch.save, atomically.

    Everything but the tensors goes through to_jsonable: payloads are read back with weights_only=True, which
    refuses any class of ours."""
    payload = {k: to_jsonable(v) for k, v in payload.items()}
    payload["state_dict"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    # Through a buffer: torch.save names the zip's top folder after the file it writes to, which here would be
    # the random temporary name; a buffer gets a fixed one, so the same payload gives the same bytes.
    buf = io.BytesIO()
    torch.save(payload, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def read_payload(path: str | os.PathLike, fmt: str, what: str, hint: str) -> dict[str, Any]:
    """Load a payload written by write_payload and check its format tag; `what` names it in errors."""
    path = Path(path)
    if not path.exists():
        raise FlowError(f"{what} {path} does not exist; {hint}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise FlowError(f"{what} {path} cannot be read ({type(e).__name__}: {first_line(e)})") from None
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise FlowError(f"{path} is not a trimflow {what} (expected format {fmt!r}); {hint}")
    return payload


def save_checkpoint(path: str | os.PathLike, model: nn.Module, arch: dict[str, Any],
                    meta: dict[str, Any] | None = None, trimmed: bool = False) -> None:
    write_payload(path, {"format": FORMAT, "arch": arch, "trimmed": trimmed, "meta": meta or {}}, model)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    return read_payload(path, FORMAT, "checkpoint", "save it with `trimflow pretrain`, trimflow.models.importers or "
                                                    "trimflow.models.save_checkpoint")


def load_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the float model stored at `path`; returns (model in eval mode, the checkpoint payload)."""
    payload = read_checkpoint(path)
    arch = payload["arch"]
    model = build_model(arch["name"], **arch.get("kwargs", {}))
    state = payload["state_dict"]
    if payload.get("trimmed"):
        resize_to_state(model, state)
    load_state_strict(model, state, source=str(path))
    model.eval()
    return model, payload


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        parts = [f"{label} {_few(keys)}" for label, keys in
                 (("missing in the checkpoint:", missing), ("not in the model:", unexpected),
                  ("shapes differ:", wrong)) if keys]
        raise FlowError(f"checkpoint {source} does not match the model ({'; '.join(parts)}); check that the "
                        "checkpoint was saved from this model definition and arguments")
    model.load_state_dict(state)


def _few(keys: list[str], shown: int = 4) -> str:
    # one line, however many keys differ: the first few name the layers, the count says how far apart they are
    return ", ".join(keys[:shown]) + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


def resize_to_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Replace Conv2d/Linear/BatchNorm modules by ones whose tensors have the shapes stored in `state`."""
    for name, module in list(model.named_modules()):
        key = f"{name}.weight" if name else "weight"
        if key not in state:
            continue
        w = state[key]
        if isinstance(module, nn.Conv2d) and w.shape != module.weight.shape:
            groups = module.groups
            if groups > 1:  # depthwise stays depthwise: groups follow the channel count
                groups = w.shape[0] if module.groups == module.out_channels else groups
            new = nn.Conv2d(w.shape[1] * groups, w.shape[0], module.kernel_size, module.stride, module.padding,
                            module.dilation, groups, module.bias is not None, module.padding_mode)
        elif isinstance(module, nn.Linear) and w.shape != module.weight.shape:
            new = nn.Linear(w.shape[1], w.shape[0], module.bias is not None)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and w.shape != module.weight.shape:
            new = type(module)(w.shape[0], module.eps, module.momentum, module.affine, module.track_running_stats)
        else:
            continue
        _set_submodule(model, name, new)


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
