"""Read FINN's estimate reports (report/estimate_layer_*.json) into per-layer rows and totals.

FINN writes one JSON per quantity keyed by node name; trimflow wants one row per layer. PE/SIMD are not in the
estimate reports, so they are read from the final HW model's node attributes.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from trimflow import FlowError

# FINN's resource keys → ours (trimflow.boards.RESOURCES). FINN estimates no flip-flops per layer.
_FINN_RESOURCES = {"LUT": "LUT", "BRAM_18K": "BRAM18", "URAM": "URAM", "DSP": "DSP"}
LAYER_RESOURCES = tuple(_FINN_RESOURCES.values())


@dataclasses.dataclass(frozen=True)
class LayerRow:
    name: str
    op_type: str
    pe: int | None
    simd: int | None
    lut: float
    bram18: float
    uram: float
    dsp: float
    cycles: int

    @property
    def resources(self) -> dict[str, float]:
        return {"LUT": self.lut, "BRAM18": self.bram18, "URAM": self.uram, "DSP": self.dsp}


@dataclasses.dataclass(frozen=True)
class EstimateReport:
    layers: tuple[LayerRow, ...]
    totals: dict[str, float]  # LUT/BRAM18/URAM/DSP summed over layers
    max_cycles: int
    bottleneck: str  # name of the layer with max_cycles
    critical_path_cycles: int  # latency in cycles as FINN estimates it
    finn_fps: float | None  # FINN's own fps estimate (at the clock it was built for)
    op_counts: dict[str, float]

    def table(self) -> str:
        header = ("layer", "op", "PE", "SIMD", "LUT", "BRAM18", "URAM", "DSP", "cycles")
        rows = [
            (r.name, r.op_type, _opt(r.pe), _opt(r.simd), f"{r.lut:,.0f}", f"{r.bram18:g}", f"{r.uram:g}",
             f"{r.dsp:g}", f"{r.cycles:,}")
            for r in self.layers
        ]
        t = self.totals
        rows.append(("total", "", "", "", f"{t['LUT']:,.0f}", f"{t['BRAM18']:g}", f"{t['URAM']:g}", f"{t['DSP']:g}",
                     f"{self.max_cycles:,} (max)"))
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
        fmt = lambda cells: "  ".join(  # noqa: E731
            str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        )
        return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)])


def _opt(v: int | None) -> str:
    return "" if v is None else str(v)


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FlowError(f"FINN report {path} is missing: did the generate_estimate_reports step run?") from None
    except json.JSONDecodeError as e:
        raise FlowError(f"FINN report {path} is not valid JSON: {e}") from None


def node_folding(model_path: str | Path) -> dict[str, tuple[str, int | None, int | None]]:
    """node name → (op type, PE, SIMD) from an ONNX model's node attributes (no FINN import needed)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    out = {}
    for n in model.graph.node:
        attrs = {a.name: a for a in n.attribute}
        pe = attrs["PE"].i if "PE" in attrs else None
        simd = attrs["SIMD"].i if "SIMD" in attrs else None
        out[n.name] = (n.op_type, pe, simd)
    return out


def parse_estimates(report_dir: str | Path, model_path: str | Path | None = None) -> EstimateReport:
    """Rows in graph order (when `model_path` is given, else report order) with totals."""
    report_dir = Path(report_dir)
    res = _read(report_dir / "estimate_layer_resources.json")
    cycles = _read(report_dir / "estimate_layer_cycles.json")
    perf_path = report_dir / "estimate_network_performance.json"
    perf = _read(perf_path) if perf_path.exists() else {}
    ops_path = report_dir / "op_and_param_counts.json"
    op_counts = _read(ops_path).get("total", {}) if ops_path.exists() else {}
    folding = node_folding(model_path) if model_path is not None else {}

    names = [n for n in folding if n in res] or [n for n in res if n != "total"]
    rows = []
    for name in names:
        r = res[name]
        op_type, pe, simd = folding.get(name, (name.rsplit("_", 1)[0], None, None))
        if name not in cycles:
            raise FlowError(f"FINN report {report_dir}/estimate_layer_cycles.json has no entry for layer {name}")
        rows.append(
            LayerRow(
                name=name,
                op_type=op_type,
                pe=pe,
                simd=simd,
                lut=float(r.get("LUT", 0)),
                bram18=float(r.get("BRAM_18K", 0)),
                uram=float(r.get("URAM", 0)),
                dsp=float(r.get("DSP", 0)),
                cycles=int(cycles[name]),
            )
        )
    if not rows:
        raise FlowError(f"FINN report {report_dir}/estimate_layer_resources.json lists no layers")
    totals = {k: sum(getattr(r, k.lower()) for r in rows) for k in LAYER_RESOURCES}
    bottleneck = max(rows, key=lambda r: r.cycles)
    return EstimateReport(
        layers=tuple(rows),
        totals=totals,
        max_cycles=bottleneck.cycles,
        bottleneck=bottleneck.name,
        # without FINN's report, a chain of layers takes at most the sum of their cycles
        critical_path_cycles=int(perf.get("critical_path_cycles", sum(r.cycles for r in rows))),
        finn_fps=perf.get("estimated_throughput_fps"),
        op_counts={k: float(v) for k, v in op_counts.items()},
    )


def format_compile_summary(result: Any) -> str:
    """Human-readable summary of a CompileResult (or its compile.json dict): layers, fit table, throughput."""
    from trimflow.artifacts import to_jsonable
    from trimflow.boards import FitReport, ResourceFit

    r = to_jsonable(result)
    rows = tuple(LayerRow(**row) for row in r["layers"])
    est = EstimateReport(rows, r["totals"], r["max_cycles"], r["bottleneck"], 0, None, {})
    fit = FitReport(r["fit"]["board"], tuple(ResourceFit(**x) for x in r["fit"]["rows"]))
    lines = [
        est.table(),
        "",
        f"board {r['board']} ({r['part']}) at {1000.0 / r['clock_period_ns']:.0f} MHz: "
        f"{r['fps']:,.0f} fps (bottleneck {r['bottleneck']}, {r['max_cycles']:,} cycles), "
        f"latency {r['latency_us']:,.1f} us",
    ]
    dwc = r.get("width_converters") or {}
    if dwc.get("count"):
        lines.append(f"+ {int(dwc['count'])} width converters FINN inserts between layers: {dwc['LUT']:,.0f} LUT "
                     f"(included in the fit check)")
    lines += [
        fit.table(),
        "fits" if r["fits"] else "DOES NOT FIT",
    ]
    if r.get("hls_nodes"):
        lines.append(f"HLS layers (need Vitis HLS): {', '.join(r['hls_nodes'])}")
    v = r.get("verification")
    if v:
        lines.append(
            f"verification on {v['n_images']} images: {'ok' if v['ok'] else 'MISMATCH'} "
            f"(max |FINN - QONNX| = {v['hw_max_abs_diff']:.3g}, argmax agreement {v['argmax_agreement']:.0%})"
        )
    return "\n".join(lines)
