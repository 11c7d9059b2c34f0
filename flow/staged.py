"""A model's forward pass over a fixed set of batches, run in stages and resumed where it stopped.

Reconstruction refits layers in execution order and needs, for each one, its input in the trimmed net *after* the
layers before it were refitted. Running the net from the images up to each layer costs one partial forward pass
per layer and batch, quadratic in depth (a third of ResNet-14's trim time). Here the traced graph (torch.fx, the
same trace the channel graph uses) is executed node by node and each batch's live values are kept, so asking for
the next layer's input only runs the nodes between the two layers; a layer refitted in between is then run with
its new weights, as the quadratic scheme would. Values no later node reads are dropped as soon as they are dead.

The sensitivity probes use the same machinery the other way round: a probe differs from the untrimmed net only from
the probed group's producers on, so the untrimmed pass up to there (`prefix_before`) is computed once per group and
every probe resumes from it.

Keeping every batch's live values costs memory of the calibration set's largest live activations (1 GB for 2,000
images at 64x64 with 32 channels, 12 GB at 224x224). `memory_mb` bounds it: batches whose values do not fit beside
the ones kept are dropped after use and run again from the images when next asked for (the depth-quadratic cost,
for those batches only), with the same values.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterable, Iterator

import torch
import torch.fx
from torch import nn

from trimflow import FlowError
from trimflow.graph import trace


@dataclasses.dataclass
class Prefix:
    """The state of a staged pass before node `pos`: what a pass on a net identical up to there can resume from."""

    nodes: list[tuple[str, str, Any]]  # (name, op, target) of the nodes already run: checked against the resumer
    pos: int
    batches: list[torch.Tensor]
    envs: list[dict[str, Any]]  # per batch, the live values by node name (cloned by whoever resumes)
    positions: list[int]  # per batch, the node it stopped before: pos, or 0 for a batch dropped to bound memory


def _nbytes(env: dict[str, Any]) -> int:
    """Memory held by one batch's live values (a view and its base counted once)."""
    storages = {v.untyped_storage().data_ptr(): v.untyped_storage().nbytes()
                for v in env.values() if isinstance(v, torch.Tensor)}
    return sum(storages.values())


def _signature(nodes: list[torch.fx.Node]) -> list[tuple[str, str, Any]]:
    return [(n.name, n.op, n.target if isinstance(n.target, str) else getattr(n.target, "__name__", n.target))
            for n in nodes]


class StagedForward:
    """`model`'s forward pass over `batches`, advanced on demand; or resumed from a `prefix` of an identical net.

    memory_mb: the most the live values kept between requests may take (None: no bound); `recomputed` counts the
    batches run again from the images because of it.
    """

    def __init__(self, model: nn.Module, batches: Iterable[torch.Tensor] | None = None, prefix: Prefix | None = None,
                 memory_mb: float | None = None):
        if (batches is None) == (prefix is None):
            raise ValueError("StagedForward takes either batches or a prefix")
        self.memory = None if memory_mb is None else memory_mb * 2**20
        self.recomputed = 0
        self._dropped: set[int] = set()  # batches whose values were dropped to bound memory
        self.gm = trace(model)  # shares model's submodules: weights changed in place are seen by later nodes
        self.nodes = list(self.gm.graph.nodes)
        self._first_placeholder = next((i for i, n in enumerate(self.nodes) if n.op == "placeholder"), -1)
        last_use: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            for arg in node.all_input_nodes:
                last_use[arg.name] = i
        self._dead_after: dict[int, list[str]] = {}
        for name, i in last_use.items():
            self._dead_after.setdefault(i, []).append(name)
        if prefix is not None:
            if _signature(self.nodes[:prefix.pos]) != prefix.nodes:
                raise FlowError("internal: a staged pass resumed on another graph")
            self.batches = prefix.batches
            # cloned: a prefix serves many resumers, and an in-place op (ReLU(inplace=True)) must not reach it
            self._envs = [{k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in env.items()}
                          for env in prefix.envs]
            self._pos = list(prefix.positions)
            self._dropped = {b for b, p in enumerate(self._pos) if p < prefix.pos}  # dropped by the prefix's pass
        else:
            self.batches = list(batches)
            self._restart()

    def _restart(self) -> None:
        self._envs = [{} for _ in self.batches]
        self._pos = [0] * len(self.batches)
        self._dropped = set()

    def _run(self, b: int, stop: int) -> None:
        """Run batch b's nodes up to (not including) index `stop`."""
        env = self._envs[b]
        with torch.no_grad():
            for i in range(self._pos[b], stop):
                node = self.nodes[i]
                args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), lambda n: env[n.name])
                if node.op == "placeholder":  # the image; any further argument keeps its default
                    value = self.batches[b] if i == self._first_placeholder else (args or (None,))[0]
                elif node.op == "get_attr":
                    value = functools.reduce(getattr, node.target.split("."), self.gm)
                elif node.op == "call_module":
                    value = self.gm.get_submodule(node.target)(*args, **kwargs)
                elif node.op == "call_function":
                    value = node.target(*args, **kwargs)
                elif node.op == "call_method":
                    value = getattr(args[0], node.target)(*args[1:], **kwargs)
                else:
                    raise FlowError(f"internal: the staged pass cannot run node {node.name} ({node.op})")
                env[node.name] = value
                for name in self._dead_after.get(i, ()):
                    env.pop(name, None)
        self._pos[b] = stop

    def _index(self, module: str) -> int:
        for i, node in enumerate(self.nodes):
            if node.op == "call_module" and node.target == module:
                return i
        raise FlowError(f"reconstruction: layer {module} is not reached by the model's forward pass")

    def _advance(self, stop: int) -> Iterator[int]:
        """Run the batches to `stop` one after another, yielding each index when it is there. A batch whose values
        do not fit in the memory bound beside those kept is dropped once its caller has had it."""
        if any(p > stop for p in self._pos):  # asked out of order: run again from the images
            self._restart()
        kept = 0
        for b in range(len(self.batches)):
            if b in self._dropped and stop > 0:
                self.recomputed += 1
                self._dropped.discard(b)
            self._run(b, stop)
            yield b
            if self.memory is None:
                continue
            size = _nbytes(self._envs[b])
            if kept + size > self.memory:
                self._envs[b], self._pos[b] = {}, 0
                self._dropped.add(b)
            else:
                kept += size

    def input_of(self, module: str) -> Iterator[torch.Tensor]:
        """Per batch, lazily, the input of `module`'s first call, with every layer before it as it is now."""
        i = self._index(module)  # an unknown layer is an error now, not when the first batch is asked for
        name = self.nodes[i].args[0].name
        return (self._envs[b][name] for b in self._advance(i))

    def prefix_before(self, modules: Iterable[str]) -> Prefix:
        """The pass advanced to just before the first call of any of `modules`, as a Prefix to resume from."""
        stop = min(self._index(m) for m in modules)
        for _ in self._advance(stop):
            pass
        return Prefix(_signature(self.nodes[:stop]), stop, self.batches,
                      [dict(env) for env in self._envs], list(self._pos))

    def outputs(self) -> list[Any]:
        """Per batch, the model's output (the pass run to its end)."""
        out = self.nodes[-1]
        return [torch.fx.node.map_arg(out.args[0], lambda n, b=b: self._envs[b][n.name])
                for b in self._advance(len(self.nodes) - 1)]
