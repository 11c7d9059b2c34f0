"""What each stage returns: a small typed summary.

A stage's run() returns one of these; the stage cache writes it into the stage's stage.json as JSON whose keys are
the field names (the keys the report, the sweep and earlier builds' report.json read), and the report reads it back
with from_json() and uses the fields. A field marked OMIT_IF_NONE is left out of the JSON when it is None (it exists
only for some builds: XSim where Vivado is, FIFO sizing when enabled), so the JSON has the keys it always had.
The compile and synth stages return their libraries' own dataclasses (trimflow.finn.compile.CompileResult,
trimflow.finn.synth.SynthResult). Nested records (the trim report, per-layer rows) stay the JSON they are.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, TypeVar

from trimflow import FlowError
from trimflow.artifacts import OMIT_IF_NONE

if TYPE_CHECKING:
    from trimflow.finn.compile import CompileResult
    from trimflow.finn.synth import SynthResult

T = TypeVar("T")


def from_json(cls: type[T], data: dict[str, Any], stage: str) -> T:
    """A stage summary read back from its JSON (a stage.json's summary, or report.json's stages)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise FlowError(f"the {stage} stage's summary has keys {', '.join(unknown)} that {cls.__name__} does not "
                        "know; rerun that stage with this trimflow")
    try:
        return cls(**data)
    except TypeError as e:
        raise FlowError(f"the {stage} stage's summary is incomplete ({e}); rerun that stage with this trimflow") \
            from None


@dataclasses.dataclass(frozen=True)
class RelevanceResult:
    float_accuracy: float  # the untrimmed checkpoint on the test images
    layers: dict[str, dict[str, Any]]  # per scored layer: score statistics and the scores


@dataclasses.dataclass(frozen=True)
class TrimResult:
    report: Any  # trimflow.trim.TrimReport (its JSON once read back)
    accuracy_before_finetune: float
    accuracy_before_finetune_uncompensated: float | None  # the same kernels removed without compensation
    validation: dict[str, Any]  # the held-out images: {"images", "seed"}
    accuracy: float  # after the fine-tune
    hwtrim: dict[str, Any] | None  # trimflow.hwtrim.HwTrimResult's JSON with a target fps


@dataclasses.dataclass(frozen=True)
class QuantizeResult:
    accuracy: float
    bits_label: str
    qat_epochs: float


@dataclasses.dataclass(frozen=True)
class ExportResult:
    qonnx: str  # file name in the stage folder
    verify: dict[str, Any]  # QONNX execution vs the Brevitas forward (trimflow.export.verify_qonnx)


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A stage that had nothing to do in this build (simulate with 0 images, synth without Vivado)."""

    skipped: str  # why
    deploy: str | None = dataclasses.field(default=None, metadata=OMIT_IF_NONE)  # synth: the package it still made


@dataclasses.dataclass(frozen=True)
class SimulateResult:
    images: int
    bit_exact_vs_finn_python: bool
    mismatching_images_vs_finn: int
    # float logits after the host tail: agreement by trimflow.verify's rule (rare rounding-boundary images allowed)
    max_abs_diff_vs_qonnx: float
    matches_qonnx: bool
    mismatching_images_vs_qonnx: int
    top1_agreement_vs_qonnx: float
    accuracy: float
    qonnx_accuracy: float
    cycles_per_image: float
    ii_cycles: float
    latency_cycles: float
    estimated_ii_cycles: float
    ii_ratio: float
    ii_flagged: bool
    measured_fps: float | None
    latency_us: float
    estimated_latency_us: float
    sim_cycles_per_s: float
    sim_images_per_s: float
    # trimflow.finn.fifos.record_sized_fifos's record, with simulate.sim.size_fifos
    fifo_sizing: dict[str, Any] | None = dataclasses.field(default=None, metadata=OMIT_IF_NONE)
    xsim_images: int | None = dataclasses.field(default=None, metadata=OMIT_IF_NONE)  # where Vivado is
    bit_exact_vs_xsim: bool | None = dataclasses.field(default=None, metadata=OMIT_IF_NONE)


@dataclasses.dataclass(frozen=True)
class ReportResult:
    files: list[str]


@dataclasses.dataclass(frozen=True)
class BuildResults:
    """The typed summaries a report covers, read back from their JSON (None: that stage is not part of it)."""

    relevance: RelevanceResult | None = None
    trim: TrimResult | None = None
    quantize: QuantizeResult | None = None
    export: ExportResult | None = None
    compile: CompileResult | None = None
    simulate: SimulateResult | Skipped | None = None
    synth: SynthResult | Skipped | None = None

    @classmethod
    def from_json(cls, summaries: dict[str, dict[str, Any]]) -> BuildResults:
        # The compile and synth summaries are their libraries' dataclasses; read back, their nested records
        # (per-layer rows, host ops, the synthesis plan) stay the JSON mappings they were written as.
        from trimflow.finn.compile import CompileResult
        from trimflow.finn.synth import SynthResult
        kinds: dict[str, Any] = {"relevance": RelevanceResult, "trim": TrimResult, "quantize": QuantizeResult,
                                 "export": ExportResult, "compile": CompileResult, "simulate": SimulateResult,
                                 "synth": SynthResult}
        return cls(**{name: from_json(Skipped if "skipped" in data else kinds[name], data, name)
                      for name, data in summaries.items() if name in kinds and data})

    @property
    def simulated(self) -> SimulateResult | None:
        """The simulation's result, None when it did not run (not in this report, or skipped)."""
        return self.simulate if isinstance(self.simulate, SimulateResult) else None
