"""Turn the stage summaries of one build into report.md, report.json and the plots they show."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from trimflow.artifacts import atomic_path, to_jsonable, write_json
from trimflow.data.meta import class_names
from trimflow.report import plots
from trimflow.report.markdown import mega, num, pct, table
from trimflow.report.provenance import CONFIG_FILE
from trimflow.stages.results import BuildResults, SimulateResult, Skipped


def _accuracy_rows(r: BuildResults) -> list[tuple[str, str, str]]:
    rel, trim, quant, sim = r.relevance, r.trim, r.quantize, r.simulated
    rep = trim.report if trim else {}
    rows = [
        ("float (pretrained)", pct(rel.float_accuracy if rel else None), "float32"),
        ("trimmed, before fine-tune", pct(trim.accuracy_before_finetune if trim else None), "float32"),
        ("trimmed + fine-tuned", pct(trim.accuracy if trim else None), "float32"),
        ("trimmed + quantized (QAT)", pct(quant.accuracy if quant else None), quant.bits_label if quant else ""),
    ]
    if sim is not None:
        rows.append((f"RTL simulation ({sim.images} images)", pct(sim.accuracy), "Verilator"))
    if rep:
        comp = rep.get("config", {}).get("compensation", "none")
        rows[1] = (rows[1][0], rows[1][1], f"{rep.get('criterion')}; compensation {comp}: "
                   f"{len(rep.get('compensated', []))} layers")
        if trim.accuracy_before_finetune_uncompensated is not None:
            rows.insert(2, ("trimmed, before fine-tune, no compensation",
                            pct(trim.accuracy_before_finetune_uncompensated), "same kernels removed"))
    return rows


def compensation_section(rep: dict[str, Any]) -> list[str]:
    """Per refitted layer: how well the least-squares refit reproduces the untrimmed layer (trimflow.reconstruct)."""
    records = rep.get("reconstruction") or []
    if not records:
        return []
    rows = [(r["layer"], num(r.get("samples")), num(r.get("unknowns")), f"{r['error_before']:.4f}",
             f"{r['error_after']:.4f}", f"{r['ridge']:g}", r.get("fallback", "")) if "skipped" not in r
            else (r["layer"], "", "", "", "", "", f"not refitted: {r['skipped']}") for r in records]
    fallback = [r["layer"] for r in records if r.get("fallback")]
    searched = any("held_out_error" in r for r in records)
    return ["## Compensation: least-squares refit of each later layer", "",
            "Each layer whose input changed was refitted on the representative images (no labels) to reproduce "
            "the untrimmed net's output. Error: residual energy of the layer's output relative to its variance, "
            "with the trimmed weights (before) and after the refit. "
            + ("Ridge: the one of trim.reconstruct.ridge_search whose fits on the other folds of the images "
               "reproduced each held-out fold best (per-ridge errors in report.json). " if searched else "")
            + "Layers with fewer samples than unknowns or an ill-conditioned system get at least the larger "
            "(fallback) ridge term: " + (", ".join(fallback) if fallback else "none") + ".", "",
            table(("layer", "samples", "unknowns", "error before", "error after", "ridge", "note"), rows), ""]


def allocation_lines(rep: dict[str, Any]) -> list[str]:
    """Which allocation the sensitivity guard kept (trim.sensitivity.guard), with the divergences that decided it."""
    check = rep.get("allocation_check")
    if not check:
        return []
    if check.get("same_as_rank"):
        why = "it keeps the same kernel counts as one fraction per layer (rank)"
    elif check.get("unchecked"):
        why = f"not compared with rank: {check['unchecked']}"
    else:
        kl = check["kl"]
        why = (f"KL divergence from the untrimmed net on {num(check['images'])} calibration images: sensitivity "
               f"{kl['sensitivity']:.4f}, rank {kl['rank']:.4f}")
    return [f"Kernels shared out by **{check['used']}** allocation ({why}).", ""]


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


def _synthesis_section(synth: Any, prov: dict[str, Any]) -> list[str]:
    lines = ["## Synthesis and deployment", ""]
    nxt = prov.get("synth_command")
    if synth is None:
        lines += ["Not run in this build (the flow stopped before the synth stage)."]
    elif isinstance(synth, Skipped):
        lines += [f"**Not synthesised** — {synth.skipped}. That package (`synth/{synth.deploy}`) runs the "
                  "accelerator in FINN's python model or Verilator (`python -m trimflow_runtime --backend "
                  "finn-python|verilator`)."]
    else:
        plan = synth.plan or {}  # trimflow.finn.synth.SynthPlan's JSON
        lines += [f"**Synthesised** in {synth.wall_s:.0f} s: FINN output in `synth/{synth.finn_dir}`, "
                  f"deployment package in `synth/{synth.deploy_dir}`"
                  + (f" (steps: {', '.join(plan.get('steps', []))})" if plan.get("steps") else "") + "."]
        nxt = None
    lines += [""]
    if nxt:
        lines += ["Next, for a bitfile of exactly this build (Docker image `make docker`, Vivado on the host; the "
                  "effective config carries every setting, so the cached stages are reused):", "",
                  f"    {nxt}", ""]
        lines += [f"- {note}" for note in prov.get("synth_caveats", [])]
        lines += [""] if prov.get("synth_caveats") else []
    if prov.get("deploy_command"):
        lines += ["Then copy it to the board:", "", f"    {prov['deploy_command']}", ""]
    return lines


def _provenance_section(prov: dict[str, Any], cfg_yaml: str) -> list[str]:
    versions = ", ".join(f"{k} {v}" for k, v in prov.get("versions", {}).items())
    rows = [("date", prov.get("date", "")), ("command", f"`{prov.get('command', '')}`"),
            ("working directory", f"`{prov.get('cwd', '')}`"),
            ("trimflow", f"{prov.get('trimflow')} (git {prov.get('git')}; code digest {prov.get('code_digest')})"),
            ("tools", versions),
            ("effective config", f"`{CONFIG_FILE}` next to this report (below)")]
    return (["## Provenance", "", table(("", ""), rows), "",
             "<details><summary>effective config</summary>", "", "```yaml", cfg_yaml.rstrip(), "```", "",
             "</details>", ""])


def _fifo_rows(f: dict | None) -> list[tuple[str, str]]:
    """FIFO sizing by simulation (trimflow.sim.fifo_sizing): depths, what they cost against the compile estimate's
    assumed depths, and whether the sized design still fits."""
    if not f:
        return []
    depths = [x["depth"] for x in f["fifos"]]
    a, b = f["estimate_charged"]["totals"], f["estimate_sized"]["totals"]
    deeper = f.get("deeper_than_charged") or []
    return [
        ("FIFO depths, sized by simulation", f"{len(depths)} FIFOs, depths {min(depths)}–{max(depths)}; II "
         f"{num(f['ii_sized'])} cycles sized vs {num(f['ii_deep'])} with deep FIFOs, outputs "
         f"{'identical' if f['bit_exact'] else 'DIFFERENT'}; FINN FIFO config `simulate/{f['fifo_config']}`, "
         "which the synth stage builds (synth.fifo_sizing auto) instead of FINN's XSim sizing"),
        ("estimate with the sized FIFOs (design, no shell)", f"LUT {num(a['LUT'])} → {num(b['LUT'])}, FF "
         f"{num(a['FF'])} → {num(b['FF'])}, BRAM18 {num(a['BRAM18'])} → {num(b['BRAM18'])} (compile stage: depth "
         f"64 per stream); {'fits' if f['fits_sized'] else '**does NOT fit**'}"
         + (f"; deeper than charged: {', '.join(deeper)}" if deeper else "")),
    ]


def _latency(comp: Any, sim: SimulateResult | None, board: Any) -> str:
    """The first image's latency as the simulation measured it, FINN's estimate (the sum of every layer's cycles,
    as if the layers did not overlap) beside it; the estimate alone when there was no simulation."""
    est = f"{comp.latency_us if comp else 0:.1f} µs"
    if sim is None or not sim.latency_cycles:
        return f"{est} (FINN's estimate: sum of the layers' cycles)"
    measured = board.latency_us(sim.latency_cycles)
    return f"**{measured:,.1f} µs** simulated (first image; FINN's estimate {est})"


def write_report(summaries: dict[str, Any], board: Any, cfg: Any, out_dir: Path,
                 seconds: dict[str, float] | None = None, link_prefix: str = "report/",
                 provenance: dict[str, Any] | None = None) -> list[Path]:
    """report.md, report.json, the effective config (config.yaml) and the plots, into out_dir.

    `provenance`: trimflow.report.provenance.collect_for_build's record (command, versions, next commands)."""
    out_dir = Path(out_dir)
    results = BuildResults.from_json(summaries)
    trim, comp, sim = results.trim, results.compile, results.simulated
    rep = trim.report if trim else {}  # trimflow.trim.TrimReport's JSON
    written: list[Path] = []
    md: list[str] = [f"# trimflow build report — {board.name}", ""]
    sized = (sim.fifo_sizing if sim else None) or {}
    # with FIFOs sized by simulation the verdict is the sized design's: the compile stage charged assumed depths
    fits = sized["fits_sized"] if sized else (comp.fits if comp else None)
    md += [f"**Board** {board.name} ({board.part}, {board.clock_mhz:.0f} MHz) — "
           f"**{'fits' if fits else 'does NOT fit'}**"
           f"{' (FIFO depths sized by simulation)' if sized else ''}; estimated **{num(comp.fps if comp else None)} "
           f"fps**, latency {_latency(comp, sim, board)} at the board clock.", ""]
    md += _synthesis_section(results.synth, provenance or {})

    md += ["## Accuracy (test set)", "", table(("model", "accuracy", "notes"), _accuracy_rows(results)), ""]
    names = class_names(cfg.dataset)
    md += [f"Dataset `{cfg.dataset}`" + (f", {len(names)} classes: {', '.join(names)}" if names else "")
           + (f"; every accuracy on {cfg.eval_images:,} test images" if cfg.eval_images else
              "; every accuracy on the whole test split") + ".", ""]
    ver = results.export.verify if results.export else {}
    if ver:
        md += [f"QONNX execution vs Brevitas forward on {ver.get('images', '?')} real test images: max |diff| "
               f"{ver.get('max_abs_diff', float('nan')):.3g}, top-1 agreement {pct(ver.get('top1_agreement'))}.", ""]
    fver = (comp.verification if comp else None) or {}  # trimflow.finn.compile.Verification's JSON
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
    hw = trim.hwtrim if trim else None
    if hw:
        md += [f"### Trim budget chosen for {num(hw['target_fps'])} fps on {hw['board']}", "",
               f"Each budget: trim by relevance, quick PTQ (no QAT), FINN estimate with the fastest folding within the "
               f"caps. Chosen: **{hw['budget']:g}** of the MACs (the largest budget tried that fits at the target: "
               "the ladder, then hwtrim.refine bisection steps towards the larger budget before it; PTQ accuracy floor "
               f"{pct(hw['accuracy_floor'])} on {num(trim.validation['images'])} validation images held "
               f"out of the training split, seed {trim.validation['seed']}; never the test split).",
               "", hw["table"], ""]
    md += allocation_lines(rep)
    md += compensation_section(rep)
    if rep.get("layers"):
        md += ["### Kernels kept per layer", "", table(("layer", "kernels", "kept", "share"), _kernels_rows(rep)),
               ""]
    rel_layers = (results.relevance.layers if results.relevance else None) or {}
    if rel_layers:
        kept = {p: layer.get("kept_indices") for layer in rep.get("layers", []) for p in layer.get("producers", [])}
        data = {name: {"scores": info["scores"], "kept": kept.get(name) or range(len(info["scores"])),
                       **({"gains": info["gains"]} if "gains" in info else {})}
                for name, info in rel_layers.items() if "scores" in info}
        if data:
            written.append(plots.relevance_plot(data, out_dir / "relevance.png"))
            md += [f"![relevance per layer]({link_prefix}relevance.png)", ""]

    if comp and comp.layers:
        md += ["## FINN estimate per layer", "",
               table(("layer", "op", "PE", "SIMD", "LUT", "BRAM18", "DSP", "cycles"),
                     [(r["name"], r["op_type"], r.get("pe") or "", r.get("simd") or "", num(r["lut"]),
                       num(r["bram18"]), num(r["dsp"]), num(r["cycles"])) for r in comp.layers]), "",
               f"Bottleneck: `{comp.bottleneck}` with {num(comp.max_cycles)} cycles per image.", ""]
        written.append(plots.layer_resources_plot(comp.layers, out_dir / "layers.png"))
        md += [f"![per-layer resources]({link_prefix}layers.png)", ""]
    fit = sized.get("fit_sized") or (comp.fit if comp else None) or {}
    if fit.get("rows"):
        md += ["## Resources vs the board", "",
               table(("resource", "dataflow (FINN)", "shell", "estimate", "cap", "device", "use", ""),
                     _fit_rows(fit)), "",
               "The dataflow figures are FINN's per-layer estimates completed for what FINN leaves out (how: below); "
               "the shell column is the board file's estimate of the DMA/interconnect around the accelerator."
               + (" FIFOs at the depths the simulation sized (the compile stage's estimate, with every FIFO at its "
                  "assumed depth, is in the simulation section)." if sized else ""), ""]
        md += [f"- {n}" for n in ((comp.estimates if comp else None) or {}).get("notes", [])] + [""]
        written.append(plots.resources_plot(fit["rows"], out_dir / "resources.png"))
        md += [f"![resources vs caps]({link_prefix}resources.png)", ""]
    if comp:
        md += ["## Throughput", "", table(("", "value"), [
            ("clock", f"{comp.clock_period_ns} ns"),
            ("slowest layer", f"{comp.bottleneck} ({num(comp.max_cycles)} cycles)"),
            ("estimated fps", num(comp.fps)),
            ("latency", _latency(comp, sim, board)),
            ("all layers RTL", str(comp.all_rtl)),
        ]), ""]
    pareto = ((comp.folding_plan if comp else None) or {}).get("pareto")
    if pareto and pareto.get("points"):
        md += _pareto_section(pareto, link_prefix)
        written.append(plots.pareto_plot(pareto, out_dir / "pareto.png"))
    if sim is not None:
        md += ["## Cycle-accurate simulation (Verilator)", "", table(("check", "result"), _sim_rows(sim)), ""]

    points = []
    if rep.get("macs_before"):
        rel, quant = results.relevance, results.quantize
        points = [("float", rep["macs_before"], (rel.float_accuracy if rel else 0) or 0),
                  ("trimmed", rep["macs_after"], trim.accuracy or 0),
                  ("quantized", rep["macs_after"], (quant.accuracy if quant else 0) or 0)]
        written.append(plots.accuracy_size_plot(points, out_dir / "accuracy_size.png"))
        md += [f"![accuracy vs size]({link_prefix}accuracy_size.png)", ""]

    if seconds:
        md += ["## Wall time per stage", "", table(("stage", "seconds"),
                                                   [(k, f"{v:.1f}") for k, v in seconds.items()]), ""]
    prov = provenance or {}
    cfg_yaml = yaml.safe_dump(to_jsonable(cfg), sort_keys=False)
    with atomic_path(out_dir / CONFIG_FILE) as tmp:
        tmp.write_text(cfg_yaml)
    written.append(out_dir / CONFIG_FILE)
    md += _provenance_section(prov, cfg_yaml)
    md_path = out_dir / "report.md"
    with atomic_path(md_path) as tmp:
        tmp.write_text("\n".join(md))
    json_path = out_dir / "report.json"
    write_json(json_path, {"board": to_jsonable(board), "config": to_jsonable(cfg), "stages": summaries,
                           "seconds": seconds or {}, "provenance": prov})
    return [md_path, json_path, *written]


def _sim_rows(sim: SimulateResult) -> list[tuple[str, str]]:
    n = sim.images
    yes = {True: "yes", False: "**no**"}
    rows = [
        ("images (test set)", f"{n:,}"),
        ("outputs bit-exact vs FINN's python model", f"{yes[sim.bit_exact_vs_finn_python]} "
                                                     f"({sim.mismatching_images_vs_finn} images differ)"),
    ]
    if sim.bit_exact_vs_xsim is not None:
        rows.append((f"bit-exact vs FINN's XSim ({sim.xsim_images} images)", yes[sim.bit_exact_vs_xsim]))
    differ = sim.mismatching_images_vs_qonnx
    rows += [
        ("logits vs QONNX (after the host tail)", f"max abs. difference {sim.max_abs_diff_vs_qonnx:.3g}"
         + (f"; {differ} of {n:,} images beyond 1e-4 relative (FINN's float thresholds round boundary cases the "
            "other way; see flow/verify.py)" if differ else "")),
        ("top-1 agreement vs QONNX", pct(sim.top1_agreement_vs_qonnx)),
        ("accuracy: simulated accelerator / quantized model (QONNX)",
         f"{pct(sim.accuracy)} / {pct(sim.qonnx_accuracy)}"),
        ("initiation interval: measured / FINN estimate (cycles)",
         f"{num(sim.ii_cycles)} / {num(sim.estimated_ii_cycles)} = {sim.ii_ratio:.3f}"
         + (" **(more than 20 % off)**" if sim.ii_flagged else "")),
        ("measured fps at the board clock", num(sim.measured_fps)),
        ("latency, first image (cycles)", num(sim.latency_cycles)),
        *_fifo_rows(sim.fifo_sizing),
        ("simulator speed", f"{num(sim.sim_cycles_per_s)} cycles/s, {sim.sim_images_per_s:.1f} images/s"),
    ]
    return rows
