"""Turn the stage summaries of one build into report.md, report.json and the plots they show."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trimflow.artifacts import atomic_path, to_jsonable, write_json
from trimflow.report import plots
from trimflow.report.markdown import mega, num, pct, table


def _accuracy_rows(s: dict[str, Any]) -> list[tuple[str, str, str]]:
    rel, trim, quant = s.get("relevance", {}), s.get("trim", {}), s.get("quantize", {})
    rep = trim.get("report", {})
    rows = [
        ("float (pretrained)", pct(rel.get("float_accuracy")), "float32"),
        ("trimmed, before fine-tune", pct(trim.get("accuracy_before_finetune")), "float32"),
        ("trimmed + fine-tuned", pct(trim.get("accuracy")), "float32"),
        ("trimmed + quantized (QAT)", pct(quant.get("accuracy")), quant.get("bits_label", "")),
    ]
    sim = s.get("simulate", {})
    if sim.get("accuracy") is not None:
        rows.append((f"RTL simulation ({sim.get('images')} images)", pct(sim["accuracy"]), "Verilator"))
    if rep:
        rows[1] = (rows[1][0], rows[1][1], f"{rep.get('criterion')}; compensated: {len(rep.get('compensated', []))}"
                   " layers")
    return rows


def _kernels_rows(rep: dict[str, Any]) -> list[tuple]:
    return [(", ".join(layer.get("producers", [layer.get("name")])), layer["total"], layer["kept"],
             pct(layer["kept"] / layer["total"], 0)) for layer in rep.get("layers", [])]


def _fit_rows(fit: dict[str, Any]) -> list[tuple]:
    return [(r["resource"], num(r.get("dataflow")), num(r.get("shell")), num(r["estimate"]), num(r["cap"]),
             num(r["capacity"]), f"{r['percent']:.1f} %", "ok" if r["ok"] else "**over**")
            for r in fit.get("rows", [])]


def _pareto_section(pareto: dict[str, Any], link_prefix: str) -> list[str]:
    shell = pareto["shell_overhead"]["LUT"]
    cap = pareto["limits"]["LUT"]
    rows = [(num(p["fps"]), num(p["resources"]["LUT"] + shell), pct((p["resources"]["LUT"] + shell) / cap, 1),
             num(p["resources"]["FF"]), num(p["resources"]["BRAM18"]), num(p["resources"]["DSP"]),
             "**build**" if p.get("chosen") else p["source"]) for p in pareto["points"]]
    chosen = pareto.get("chosen") or {}
    lines = ["## Throughput vs LUT (Pareto set)", "",
             f"The folding optimiser rerun under lower LUT budgets and lower fps targets; the non-dominated plans "
             f"({len(pareto['points'])} of {len(pareto.get('tried', []))} distinct ones, {pareto.get('seconds', 0):.0f}"
             f" s). LUT includes the board shell ({num(shell)}); FF/BRAM18/DSP are the design alone. Foldings: "
             f"`{pareto.get('file', 'pareto.json')}` in the compile stage.", "",
             table(("fps", "LUT", "of cap", "FF", "BRAM18", "DSP", "found by"), rows), ""]
    if chosen and not pareto.get("chosen_on_front"):
        why = ("does not fit the board" if not chosen.get("fits") else
               "is dominated: a plan above fits every cap with no more LUTs and at least its fps (the optimiser's "
               "search is a heuristic and missed it)")
        lines += [f"The build's plan ({num(chosen['fps'])} fps, {num(chosen['resources']['LUT'] + shell)} LUT) "
                  f"{why}.", ""]
    return lines + [f"![fps vs LUT]({link_prefix}pareto.png)", ""]


def write_report(summaries: dict[str, Any], board: Any, cfg: Any, out_dir: Path,
                 seconds: dict[str, float] | None = None, link_prefix: str = "report/") -> list[Path]:
    out_dir = Path(out_dir)
    s = summaries
    trim, comp, exp, sim = s.get("trim", {}), s.get("compile", {}), s.get("export", {}), s.get("simulate", {})
    rep = trim.get("report", {})
    written: list[Path] = []
    md: list[str] = [f"# trimflow build report — {board.name}", ""]
    fits = comp.get("fits")
    md += [f"**Board** {board.name} ({board.part}, {1000.0 / board.clock_period_ns:.0f} MHz) — "
           f"**{'fits' if fits else 'does NOT fit'}**; estimated **{num(comp.get('fps'))} fps**, latency "
           f"{comp.get('latency_us', 0):.1f} µs at the board clock.", ""]

    md += ["## Accuracy (test set)", "", table(("model", "accuracy", "notes"), _accuracy_rows(s)), ""]
    ver = exp.get("verify", {})
    if ver:
        md += [f"QONNX execution vs Brevitas forward on {ver.get('images', '?')} real test images: max |diff| "
               f"{ver.get('max_abs_diff', float('nan')):.3g}, top-1 agreement {pct(ver.get('top1_agreement'))}.", ""]
    fver = comp.get("verification") or {}
    if fver:
        md += [f"FINN python execution vs QONNX on {fver.get('n_images')} real test images: streamlined model max "
               f"|diff| {fver.get('streamlined_max_abs_diff', float('nan')):.3g}, HW-layer model (+ host tail) max "
               f"|diff| {fver.get('hw_max_abs_diff', float('nan')):.3g} (tolerance {fver.get('tolerance', 0):.3g}),"
               f" top-1 agreement {pct(fver.get('argmax_agreement'))} — "
               f"{'**ok**' if fver.get('ok') else '**MISMATCH**'}.", ""]

    md += ["## Size", "", table(("", "params", "MACs / image"), [
        ("pretrained", num(rep.get("params_before")), mega(rep.get("macs_before"))),
        ("trimmed", num(rep.get("params_after")), mega(rep.get("macs_after"))),
    ]), ""]
    if rep.get("macs_before"):
        md += [f"Trimming keeps {pct(rep['macs_after'] / rep['macs_before'], 1)} of the MACs and "
               f"{pct(rep['params_after'] / rep['params_before'], 1)} of the parameters.", ""]
    hw = trim.get("hwtrim")
    if hw:
        md += [f"### Trim budget chosen for {num(hw['target_fps'])} fps on {hw['board']}", "",
               f"Each budget: trim by relevance, quick PTQ (no QAT), FINN estimate with the fastest folding within the "
               f"caps. Chosen: **{hw['budget']:g}** of the MACs (first that fits at the target; PTQ accuracy floor "
               f"{pct(hw['accuracy_floor'])}).", "", hw["table"], ""]
    if rep.get("layers"):
        md += ["### Kernels kept per layer", "", table(("layer", "kernels", "kept", "share"), _kernels_rows(rep)),
               ""]
    rel_layers = s.get("relevance", {}).get("layers") or {}
    if rel_layers:
        kept = {p: layer.get("kept_indices") for layer in rep.get("layers", []) for p in layer.get("producers", [])}
        data = {name: {"scores": info["scores"], "kept": kept.get(name) or range(len(info["scores"]))}
                for name, info in rel_layers.items() if "scores" in info}
        if data:
            written.append(plots.relevance_plot(data, out_dir / "relevance.png"))
            md += [f"![relevance per layer]({link_prefix}relevance.png)", ""]

    if comp.get("layers"):
        md += ["## FINN estimate per layer", "",
               table(("layer", "op", "PE", "SIMD", "LUT", "BRAM18", "DSP", "cycles"),
                     [(r["name"], r["op_type"], r.get("pe") or "", r.get("simd") or "", num(r["lut"]),
                       num(r["bram18"]), num(r["dsp"]), num(r["cycles"])) for r in comp["layers"]]), "",
               f"Bottleneck: `{comp.get('bottleneck')}` with {num(comp.get('max_cycles'))} cycles per image.", ""]
        written.append(plots.layer_resources_plot(comp["layers"], out_dir / "layers.png"))
        md += [f"![per-layer resources]({link_prefix}layers.png)", ""]
    fit = comp.get("fit") or {}
    if fit.get("rows"):
        md += ["## Resources vs the board", "",
               table(("resource", "dataflow (FINN)", "shell", "estimate", "cap", "device", "use", ""),
                     _fit_rows(fit)), "",
               "The dataflow figures are FINN's per-layer estimates completed for what FINN leaves out (how: below); "
               "the shell column is the board file's estimate of the DMA/interconnect around the accelerator.", ""]
        md += [f"- {n}" for n in (comp.get("estimates") or {}).get("notes", [])] + [""]
        written.append(plots.resources_plot(fit["rows"], out_dir / "resources.png"))
        md += [f"![resources vs caps]({link_prefix}resources.png)", ""]
    if comp:
        md += ["## Throughput", "", table(("", "value"), [
            ("clock", f"{comp.get('clock_period_ns')} ns"),
            ("slowest layer", f"{comp.get('bottleneck')} ({num(comp.get('max_cycles'))} cycles)"),
            ("estimated fps", num(comp.get("fps"))),
            ("latency", f"{comp.get('latency_us', 0):.1f} µs"),
            ("all layers RTL", str(comp.get("all_rtl"))),
        ]), ""]
    pareto = (comp.get("folding_plan") or {}).get("pareto")
    if pareto and pareto.get("points"):
        md += _pareto_section(pareto, link_prefix)
        written.append(plots.pareto_plot(pareto, out_dir / "pareto.png"))
    if sim and not sim.get("skipped"):
        md += ["## Cycle-accurate simulation (Verilator)", "", table(("check", "result"), _sim_rows(sim)), ""]

    points = []
    if rep.get("macs_before"):
        points = [("float", rep["macs_before"], s.get("relevance", {}).get("float_accuracy") or 0),
                  ("trimmed", rep["macs_after"], trim.get("accuracy") or 0),
                  ("quantized", rep["macs_after"], s.get("quantize", {}).get("accuracy") or 0)]
        written.append(plots.accuracy_size_plot(points, out_dir / "accuracy_size.png"))
        md += [f"![accuracy vs size]({link_prefix}accuracy_size.png)", ""]

    if seconds:
        md += ["## Wall time per stage", "", table(("stage", "seconds"),
                                                   [(k, f"{v:.1f}") for k, v in seconds.items()]), ""]
    md_path = out_dir / "report.md"
    with atomic_path(md_path) as tmp:
        tmp.write_text("\n".join(md))
    json_path = out_dir / "report.json"
    write_json(json_path, {"board": to_jsonable(board), "config": to_jsonable(cfg), "stages": summaries,
                           "seconds": seconds or {}})
    return [md_path, json_path, *written]


def _sim_rows(sim: dict) -> list[tuple[str, str]]:
    n = sim["images"]
    yes = {True: "yes", False: "**no**"}
    rows = [
        ("images (test set)", f"{n:,}"),
        ("outputs bit-exact vs FINN's python model", f"{yes[sim['bit_exact_vs_finn_python']]} "
                                                     f"({sim['mismatching_images_vs_finn']} images differ)"),
    ]
    if "bit_exact_vs_xsim" in sim:
        rows.append((f"bit-exact vs FINN's XSim ({sim['xsim_images']} images)", yes[sim["bit_exact_vs_xsim"]]))
    differ = sim.get("mismatching_images_vs_qonnx")
    rows += [
        ("logits vs QONNX (after the host tail)", f"max abs. difference {sim['max_abs_diff_vs_qonnx']:.3g}"
         + (f"; {differ} of {n:,} images beyond 1e-4 relative (FINN's float thresholds round boundary cases the "
            "other way; see flow/verify.py)" if differ else "")),
        ("top-1 agreement vs QONNX", pct(sim["top1_agreement_vs_qonnx"])),
        ("accuracy: simulated accelerator / quantized model (QONNX)",
         f"{pct(sim['accuracy'])} / {pct(sim['qonnx_accuracy'])}"),
        ("initiation interval: measured / FINN estimate (cycles)",
         f"{num(sim['ii_cycles'])} / {num(sim['estimated_ii_cycles'])} = {sim['ii_ratio']:.3f}"
         + (" **(more than 20 % off)**" if sim["ii_flagged"] else "")),
        ("measured fps at the board clock", num(sim["measured_fps"])),
        ("latency, first image (cycles)", num(sim["latency_cycles"])),
        ("simulator speed", f"{num(sim['sim_cycles_per_s'])} cycles/s, {sim['sim_images_per_s']:.1f} images/s"),
    ]
    return rows
