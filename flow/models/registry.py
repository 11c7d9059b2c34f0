"""Name → constructor for the models trimflow can build from a checkpoint's arch record."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from trimflow import FlowError
from trimflow.models.cnv import CNVLike
from trimflow.models.mobilenet import MobileNetLike
from trimflow.models.onnx_to_torch import build_graph_net
from trimflow.models.resnet import ResNet8


def _user_module(target: str, kwargs: dict[str, Any] | None = None, source: str | None = None) -> nn.Module:
    from trimflow.models.importers import build_module  # importers uses io, which imports this registry
    return build_module(target, kwargs, source)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "cnv": CNVLike,
    "resnet8": ResNet8,  # kwargs blocks=2 / 3: ResNet-14 / ResNet-20
    "mobilenet": MobileNetLike,
    "graph": build_graph_net,  # imported ONNX / TorchScript networks (arch kwargs: {"spec": ...})
    "module": _user_module,  # a user's PyTorch class (arch kwargs: {"target": "pkg.mod:Class", "kwargs": {...}})
}


def build_model(name: str, **kwargs: Any) -> nn.Module:
    if name not in MODELS:
        raise FlowError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    try:
        return MODELS[name](**kwargs)
    except TypeError as e:
        raise FlowError(f"model {name!r}: bad arguments {kwargs}: {e}") from None
