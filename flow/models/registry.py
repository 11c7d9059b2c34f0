"""Name → constructor for the models trimflow can build from a checkpoint's arch record."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from flow import FlowError
from flow.models.cnv import CNVLike

MODELS: dict[str, Callable[..., nn.Module]] = {
    "cnv": CNVLike,
}


def build_model(name: str, **kwargs: Any) -> nn.Module:
    if name not in MODELS:
        raise FlowError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    try:
        return MODELS[name](**kwargs)
    except TypeError as e:
        raise FlowError(f"model {name!r}: bad arguments {kwargs}: {e}") from None
