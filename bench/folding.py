"""Folding benchmark: trimflow's optimiser vs FINN's target_fps heuristic vs a hand folding, within a board's caps.

    .venv/bin/python bench/folding.py [--part cnv|boards|all] [--trimmed Q.onnx] [--untrimmed Q.onnx]

(a) cnv: Brevitas' CNV-W2A2 (brevitas_examples.bnn_pynq, random weights: folding and resources do not depend on
    the weight values, only on shapes and bit widths) on the PYNQ-Z2 (xc7z020, 10 ns, caps 70 % LUT / 50 % FF /
    80 % BRAM18 / 80 % DSP, plus the board's shell overhead).
(b) boards: the trimflow default net, trimmed (QONNX from `trimflow export`) and untrimmed, on pynq-z2,
    zybo-z7-10 and kv260.
(c) pareto: the fps-vs-LUT Pareto set (trimflow.finn.pareto) of CNV-W2A2 (RTL MVAUs) and of the nets given with
    --trimmed/--untrimmed on pynq-z2, with the optimiser's build plan marked; one PNG per net.

Each design is judged by the same fit check as the compile stage (trimflow.finn.estimates: FINN's per-layer estimates
plus RTL-MVAU LUTs, FF, FIFOs, width converters, shell). FINN's heuristic is swept over target_fps and the fastest
design that fits is kept; "fits (FINN only)" says whether it would fit by FINN's own layer estimates + DWCs +
shell (what the compile stage checked before), to show what the honest estimate changes.
Writes bench/results/folding.json and folding.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trimflow.artifacts import read_json  # noqa: E402
from trimflow.boards import load_board  # noqa: E402
from trimflow.finn.compile import CompileConfig, compile_model  # noqa: E402

RESULTS = ROOT / "bench" / "results"
WORK = Path("/tmp/trimflow-bench-folding")

# finn-examples' hand folding of CNV-W2A2 for the PYNQ boards (build/bnn-pynq/folding_config/cnv-w2a2_folding_config
# .json), as (PE, SIMD) per matrix layer in network order: six convolutions, three fully connected layers. The
# sliding-window generator feeding a convolution takes that convolution's SIMD and each standalone threshold layer
# the PE of the layer it follows, as in that file.
CNV_HAND = [(8, 3), (16, 16), (8, 16), (8, 16), (4, 8), (1, 8), (1, 2), (2, 2), (5, 1)]


def cnv_qonnx(path: Path) -> Path:
    import torch
    from brevitas.export import export_qonnx
    from brevitas_examples.bnn_pynq.models import model_with_cfg

    if not path.exists():
        torch.manual_seed(0)
        model, _ = model_with_cfg("cnv_2w2a", pretrained=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        export_qonnx(model.eval(), torch.rand(1, 3, 32, 32), export_path=str(path))
    return path


def untrimmed_qonnx(path: Path, config: Path | None = None) -> Path:
    """A config's checkpoint (default: the default flow's), untrimmed, quantized as that flow does (default W4A4,
    8-bit input / first / last layer) with calibrated activations only: folding, resources and the hardware's
    timing depend on shapes and bit widths, not on QAT."""
    if not path.exists():
        from trimflow.config import load_flow_config
        from trimflow.data import load_dataset, subset
        from trimflow.export import export_qonnx
        from trimflow.models import load_checkpoint
        from trimflow.quantize import calibrate_activations, convert_model
        from trimflow.resources import locate

        cfg = load_flow_config(config)
        model, _ = load_checkpoint(locate(cfg.model, "model"))
        calib = subset(load_dataset(cfg.dataset, "train", data_dir=cfg.data_dir), 256, seed=0)
        qmodel = convert_model(model, cfg.quantize)
        calibrate_activations(qmodel, calib, 2, 128)
        path.parent.mkdir(parents=True, exist_ok=True)
        export_qonnx(qmodel, tuple(calib.shape), path)
    return path


def _cfg(**kw) -> CompileConfig:
    return CompileConfig(generate_code=False, verify=False, fail_if_not_fit=False, **kw)


def _row(result, seconds: float, **extra) -> dict:
    fit = {r["resource"]: r for r in result.fit["rows"]}
    board = load_board(result.board)
    finn_only = {r: result.totals.get(r, 0.0) + result.width_converters.get(r, 0.0) + board.shell_overhead[r]
                 for r in ("LUT", "BRAM18", "DSP", "URAM")}
    return {
        "fps": result.fps, "max_cycles": result.max_cycles, "bottleneck": result.bottleneck, "fits": result.fits,
        "fits_finn_only": all(v <= board.limit(r) for r, v in finn_only.items()),
        "percent": {r: round(fit[r]["percent"], 1) for r in ("LUT", "FF", "BRAM18", "DSP")},
        "estimate": {r: fit[r]["estimate"] for r in ("LUT", "FF", "BRAM18", "DSP")},
        "finn_only_percent": {r: round(100 * finn_only[r] / board.capacity[r], 1) for r in ("LUT", "BRAM18", "DSP")},
        "hls_nodes": len(result.hls_nodes), "seconds": round(seconds, 1), **extra,
    }


def compile_row(qonnx: Path, board: str, cfg: CompileConfig, tag: str, **extra) -> dict:
    out = WORK / f"{qonnx.stem}-{board}-{tag}"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    result = compile_model(qonnx, load_board(board), cfg, out)
    row = _row(result, time.perf_counter() - t0, **extra)
    if result.folding_plan:
        row["limited_by"] = result.folding_plan["limited_by"]
    shutil.rmtree(out, ignore_errors=True)
    return row


def finn_best(qonnx: Path, board: str, hw_model: Path, prefer: str = "rtl") -> dict:
    """FINN's SetFolding searched fairly (trimflow.finn.baseline: every distinct folding it produces, fastest
    first), the fastest fitting one under each yardstick recompiled through FINN's builder at its target_fps."""
    from trimflow.finn.baseline import finn_baseline

    base = finn_baseline(hw_model, load_board(board), WORK / f"{qonnx.stem}-{board}-baseline", log=print)
    out = {"distinct_foldings": len(base.foldings), "evaluated": base.evaluated, "search_seconds": base.seconds,
           "foldings": [{"target_cycles": f.target_cycles, "target_fps": round(f.target_fps, 2), "fps": f.fps,
                         "fits_finn": f.fits_finn, "fits": f.fits, "finn": f.finn, "completed": f.completed}
                        for f in base.foldings]}
    for key, f in (("best", base.best), ("best_finn_yardstick", base.best_finn)):
        if f is None or (key == "best_finn_yardstick" and f is base.best):
            out[key] = out.get("best") if f is not None else None  # the same folding: compiled once
            continue
        row = compile_row(qonnx, board, _cfg(folding="auto", folding_fps=f.target_fps, prefer=prefer),
                          f"finn{f.target_cycles}", target_fps=f.target_fps)
        if row["max_cycles"] != f.max_cycles:  # the builder must reproduce the folding the search judged
            raise SystemExit(f"{board}: FINN at target {f.target_fps:.1f} gave {row['max_cycles']} cycles, the "
                             f"search {f.max_cycles}")
        out[key] = row
        print(f"  FINN best ({key}): target {f.target_fps:.1f} -> {row['fps']:.1f} fps, fits {row['fits']} "
              f"(FINN-only {row['fits_finn_only']})", flush=True)
    return out


def _hw_nodes(qonnx: Path, board: str, prefer: str = "rtl"):
    """The fully folded HW-layer graph FINN builds for `qonnx` (node names for a folding config)."""
    from qonnx.core.modelwrapper import ModelWrapper

    out = WORK / f"{qonnx.stem}-{board}-nodes"
    shutil.rmtree(out, ignore_errors=True)
    compile_model(qonnx, load_board(board), _cfg(folding="auto", prefer=prefer), out)
    model = ModelWrapper(str(out / "hw_model.onnx"))
    return model, out


def folding_from_mvau(model, mvau: list[tuple[int, int]]) -> dict:
    """A FINN folding config from (PE, SIMD) per MVAU in graph order; generators take their MVAU's SIMD,
    thresholds the PE of the layer they follow."""
    from qonnx.custom_op.registry import getCustomOp

    nodes = list(model.graph.node)
    mv = [n for n in nodes if n.op_type.startswith("MVAU")]
    if len(mv) != len(mvau):
        raise SystemExit(f"hand folding has {len(mvau)} entries, the net has {len(mv)} MVAUs")
    conf: dict = {"Defaults": {}}
    for n, (pe, simd) in zip(mv, mvau):
        conf[n.name] = {"PE": pe, "SIMD": simd}
        prod = model.find_producer(n.input[0])
        if prod is not None and prod.op_type.startswith("ConvolutionInputGenerator"):
            conf[prod.name] = {"SIMD": simd}
        cons = model.find_consumer(n.output[0])
        if cons is not None and cons.op_type.startswith("Thresholding"):
            ch = getCustomOp(cons).get_nodeattr("NumChannels")
            conf[cons.name] = {"PE": pe if ch % pe == 0 else 1}
    return conf


def mvau_dims(model) -> list[tuple[int, int, int]]:
    """(MW, MH, output pixels) per MVAU."""
    from qonnx.custom_op.registry import getCustomOp

    dims = []
    for n in model.graph.node:
        if n.op_type.startswith("MVAU"):
            inst = getCustomOp(n)
            mw, mh = inst.get_nodeattr("MW"), inst.get_nodeattr("MH")
            dims.append((mw, mh, inst.get_exp_cycles() // (mw * mh // (inst.get_nodeattr("PE")
                                                                    * inst.get_nodeattr("SIMD")))))
    return dims


def hand_mvau(dims: list[tuple[int, int, int]], cycles: int, in_channels: list[int]) -> list[tuple[int, int]]:
    """The rule a person applies by hand (as in finn-examples' configs): every matrix layer gets under one cycle
    budget per image; parallelism goes first into SIMD along the input channels (a divisor of the channel count,
    so the window generator keeps up), then into PE along the output channels."""
    out = []
    for (mw, mh, pix), cin in zip(dims, in_channels):
        need = pix * mw * mh / cycles
        simds = [d for d in range(1, cin + 1) if cin % d == 0 and mw % d == 0]
        simd = next((d for d in simds if d >= need), simds[-1])
        pes = [d for d in range(1, mh + 1) if mh % d == 0]
        pe = next((d for d in pes if d * simd >= need), pes[-1])
        out.append((pe, simd))
    return out


def hand_sweep(qonnx: Path, board: str, model, in_channels: list[int]) -> dict:
    """The hand rule at cycle budgets 2^k (k searched by bisection, as a person halving the budget would),
    fastest fitting kept."""
    dims = mvau_dims(model)
    top = max(p * mw * mh for mw, mh, p in dims).bit_length() - 1
    tried: dict[int, dict] = {}

    def run(k: int) -> dict:
        budget = 1 << k
        mv = hand_mvau(dims, budget, in_channels)
        path = WORK / f"{qonnx.stem}-{board}-hand{budget}.json"
        path.write_text(json.dumps(folding_from_mvau(model, mv)))
        row = compile_row(qonnx, board, _cfg(folding=str(path)), f"hand{budget}", cycle_budget=budget,
                          mvau_pe_simd=mv)
        tried[k] = row
        print(f"  hand budget {budget:8d}: {row['fps']:10.1f} fps, fits {row['fits']}", flush=True)
        return row

    lo, hi = top, 6  # fully folded (fits, or nothing does) .. 64 cycles
    if run(lo)["fits"] and not run(hi)["fits"]:
        while lo - hi > 1:
            mid = (lo + hi) // 2
            if run(mid)["fits"]:
                lo = mid
            else:
                hi = mid
    fitting = [r for r in tried.values() if r["fits"]]
    best = max(fitting, key=lambda r: r["fps"]) if fitting else tried[top]
    return {**best, "seconds": round(sum(r["seconds"] for r in tried.values()), 1)}


def bench_cnv(prefer: str) -> dict:
    q = cnv_qonnx(WORK / "cnv_w2a2.onnx")
    board = "pynq-z2"
    print(f"CNV-W2A2 on {board}, prefer {prefer}", flush=True)
    model, nodes_dir = _hw_nodes(q, board, prefer)
    hls = sorted({n.op_type for n in model.graph.node if n.op_type.endswith("_hls")})
    t0 = time.perf_counter()
    opt = compile_row(q, board, _cfg(folding="optimize", prefer=prefer), f"opt-{prefer}")
    opt["optimizer_seconds"] = round(time.perf_counter() - t0, 1)
    print(f"  optimiser: {opt['fps']:.1f} fps, fits {opt['fits']}", flush=True)
    path = WORK / f"cnv-hand-{prefer}.json"
    path.write_text(json.dumps(folding_from_mvau(model, CNV_HAND)))
    hand = compile_row(q, board, _cfg(folding=str(path), prefer=prefer), f"hand-{prefer}", mvau_pe_simd=CNV_HAND)
    print(f"  finn-examples hand folding: {hand['fps']:.1f} fps, fits {hand['fits']}", flush=True)
    finn = finn_best(q, board, nodes_dir / "hw_model.onnx", prefer)
    shutil.rmtree(nodes_dir, ignore_errors=True)
    return {"net": "CNV-W2A2 (brevitas_examples.bnn_pynq, random weights)", "board": board, "prefer": prefer,
            "hls_node_types": hls, "optimizer": opt, "finn_target_fps_best": finn, "hand_finn_examples": hand,
            "reference_issue": {"finn_target_fps_best": 1510 if prefer == "hls" else 579, "hand_finn_examples": 868}}


def _in_channels(model) -> list[int]:
    from qonnx.custom_op.registry import getCustomOp

    chans = []
    for n in model.graph.node:
        if n.op_type.startswith("MVAU"):
            prod = model.find_producer(n.input[0])
            inst = getCustomOp(n)
            if prod is not None and prod.op_type.startswith("ConvolutionInputGenerator"):
                chans.append(getCustomOp(prod).get_nodeattr("IFMChannels"))
            else:
                chans.append(inst.get_nodeattr("MW"))
    return chans


def bench_boards(nets: dict[str, Path], boards=("pynq-z2", "zybo-z7-10", "kv260"), old: list[dict] | None = None
                 ) -> list[dict]:
    """`old`: the previous run's rows; with them the hand-rule sweep is not rerun but taken from there (the hand
    rule does not depend on the FINN baseline search)."""
    rows = []
    for net, q in nets.items():
        for board in boards:
            print(f"{net} on {board}", flush=True)
            model, nodes_dir = _hw_nodes(q, board)
            opt = compile_row(q, board, _cfg(folding="optimize"), "opt")
            print(f"  optimiser: {opt['fps']:.1f} fps, fits {opt['fits']} ({opt['seconds']} s)", flush=True)
            finn = finn_best(q, board, nodes_dir / "hw_model.onnx")
            prev = [r["hand"] for r in old or [] if r["net"] == net and r["board"] == board]
            hand = prev[0] if prev else hand_sweep(q, board, model, _in_channels(model))
            shutil.rmtree(nodes_dir, ignore_errors=True)
            rows.append({"net": net, "board": board, "optimizer": opt, "finn_target_fps_best": finn, "hand": hand})
    return rows


def bench_hwtrim(board_name: str, target_fps: float, scores_path: Path) -> dict:
    """fit_by_trimming on the default checkpoint: the budget ladder for `board_name` at `target_fps`, with the fit
    table of the untrimmed candidate and of the chosen one."""
    import torch

    from trimflow.boards import FitReport, ResourceFit
    from trimflow.config import FlowConfig
    from trimflow.data import load_dataset, subset
    from trimflow.hwtrim import fit_by_trimming, format_iterations
    from trimflow.models import load_checkpoint
    from trimflow.relevance import RelevanceScores

    torch.set_num_threads(1)
    cfg = FlowConfig()
    model, _ = load_checkpoint(ROOT / cfg.model)
    scores = RelevanceScores.load(scores_path)
    train = load_dataset(cfg.dataset, "train")
    calib = subset(train, cfg.relevance.images, cfg.relevance.seed)
    test = subset(load_dataset(cfg.dataset, "test"), 1000, seed=4)
    work = WORK / f"hwtrim-{board_name}"
    shutil.rmtree(work, ignore_errors=True)
    t0 = time.perf_counter()
    res = fit_by_trimming(model, scores, load_board(board_name), target_fps, cfg.trim, cfg.quantize, cfg.compile,
                          calib, test, 0.80, work, keep_work=True)
    seconds = time.perf_counter() - t0

    def fit_table(budget: float) -> str:
        fit = json.loads((work / f"budget-{budget:g}" / "compile" / "compile.json").read_text())["fit"]
        return FitReport(fit["board"], tuple(ResourceFit(**r) for r in fit["rows"])).table()

    out = {"board": board_name, "target_fps": target_fps, "chosen_budget": res.budget, "seconds": round(seconds, 1),
           "iterations": [dataclasses.asdict(i) for i in res.iterations], "table": format_iterations(res.iterations),
           "fit_untrimmed": fit_table(1.0), "fit_chosen": fit_table(res.budget)}
    shutil.rmtree(work, ignore_errors=True)
    return out


def bench_rounding(boards: tuple[str, ...], budgets: tuple[float, ...], roundings: tuple[int, ...],
                   scores_path: Path) -> list[dict]:
    """Kept channel counts rounded to multiples of `round_to` (trim.round_to): what folding-friendly counts buy.

    The default checkpoint and flow settings (relevance scores of the default build, sensitivity allocation, refit),
    at each MAC budget and rounding: quick PTQ on held-out training images, then the optimiser's fastest folding
    within each board's caps (hwtrim's candidate, estimates only). A count with more small divisors lets the
    optimiser pick the PE/SIMD it wants instead of the next divisor down."""
    import torch

    from trimflow.stages.inputs import Datasets
    from trimflow.config import FlowConfig
    from trimflow.data import subset
    from trimflow.hwtrim import _candidate
    from trimflow.models import load_checkpoint
    from trimflow.relevance import RelevanceScores
    from trimflow.trim import cached_sensitivity

    torch.set_num_threads(1)
    cfg = FlowConfig()
    data = Datasets(cfg)
    model, _ = load_checkpoint(ROOT / cfg.model)
    scores = RelevanceScores.load(scores_path)
    calib = subset(data.train, cfg.trim.calib_images, cfg.trim.seed)
    val = subset(data.val, cfg.hwtrim.val_images, seed=4)
    rows = []
    for r in roundings:
        tcfg = dataclasses.replace(cfg.trim, round_to=r)
        sens, _ = cached_sensitivity(WORK / ".cache", model, scores, calib, tcfg, progress=False)
        for budget in budgets:
            for board in boards:
                out = WORK / f"rounding-{board}-{budget:g}-{r}"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir(parents=True)
                it, _, _ = _candidate(model, scores, budget, tcfg, cfg.quantize, cfg.compile, load_board(board),
                                      1.0, calib, val, cfg.hwtrim.calib_batches, out, sensitivity=sens)
                shutil.rmtree(out, ignore_errors=True)
                row = {"board": board, "budget": budget, "round_to": r, **dataclasses.asdict(it),
                       "cycles": load_board(board).cycles_for(it.fps) if it.fps else None}
                rows.append(row)
                print(f"  {board} budget {budget:g} round_to {r}: {it.fps:,.0f} fps, LUT {it.resources['LUT']:,.0f}, "
                      f"PTQ {100 * it.ptq_accuracy:.2f} %, kept {' '.join(v.split('/')[0] for v in it.kept.values())}",
                      flush=True)
    return rows


def _rounding_md(rows: list[dict]) -> list[str]:
    out = ["## Channel counts that suit the folding (trim.round_to)", "",
           "Default checkpoint and trim settings (sensitivity allocation, refit), kept counts rounded up to multiples "
           "of round_to; quick PTQ accuracy on 1,000 held-out training images; the optimiser's fastest folding "
           "within the caps (estimates, LUT/FF/BRAM18/DSP incl. FIFOs, width converters and shell). `bench/folding.py "
           "--part rounding --scores build-default/pynq-z2/relevance/relevance.json`.", "",
           "| board | budget | round_to | kernels kept | MACs kept | PTQ acc | fps | cycles / image | LUT | BRAM18 | DSP | "
           "limited by |", "|" + "---|" * 12]
    for r in rows:
        out.append("| " + " | ".join([
            r["board"], f"{r['budget']:g}", str(r["round_to"]), " ".join(v.split("/")[0] for v in r["kept"].values()),
            f"{r['macs_fraction']:.3f}", f"{100 * r['ptq_accuracy']:.2f} %", f"{r['fps']:,.0f}",
            f"{r['cycles']:,.0f}" if r["cycles"] else "n/a", f"{r['resources']['LUT']:,.0f}",
            f"{r['resources']['BRAM18']:,.0f}", f"{r['resources']['DSP']:,.0f}", r["limited_by"]]) + " |")
    return out + [""]


def bench_goal(builds: list[Path]) -> list[dict]:
    """The goal rows from finished `make build BOARD=<b> TARGET_FPS=<f>` builds (read, nothing rebuilt): accuracy
    against the float net, the compile estimate, the simulated II, the fit with the FIFO depths the simulation
    sized, and the speed-up over FINN's fairly searched best fitting folding of the untrimmed net (--part boards)."""
    rows = []
    for root in builds:
        stage = {n: read_stage(root, n) for n in ("relevance", "trim", "quantize", "compile", "simulate")}
        comp, sim = stage["compile"], stage["simulate"]
        sized = sim.get("fifo_sizing") or {}
        rows.append({
            "build": str(root), "board": comp["board"], "command": f"make build BOARD={comp['board']} TARGET_FPS="
            f"{stage['trim']['hwtrim']['target_fps']:g} BUILD_DIR={root.parent}",
            "target_fps": stage["trim"]["hwtrim"]["target_fps"], "budget": stage["trim"]["hwtrim"]["budget"],
            "hwtrim_table": stage["trim"]["hwtrim"]["table"],
            "macs_fraction": stage["trim"]["report"]["macs_after"] / stage["trim"]["report"]["macs_before"],
            "float_accuracy": stage["relevance"]["float_accuracy"], "finetuned": stage["trim"]["accuracy"],
            "quantized": stage["quantize"]["accuracy"], "fps_estimate": comp["fps"], "fits_charged": comp["fits"],
            "fits_sized": sized.get("fits_sized"), "fit_sized_table": sized.get("fit_sized_table"),
            "ii": sim.get("ii_cycles"), "ii_estimate": sim.get("estimated_ii_cycles"), "ii_ratio": sim.get("ii_ratio"),
            "measured_fps": sim.get("measured_fps"), "bit_exact": sim.get("bit_exact_vs_finn_python"),
            "sim_images": sim.get("images"), "sim_accuracy": sim.get("accuracy"),
            "qonnx_accuracy": sim.get("qonnx_accuracy"), "latency_us": sim.get("latency_us")})
    return rows


def read_stage(root: Path, name: str) -> dict:
    from trimflow.stage_cache import STAGE_FILE

    return read_json(root / name / STAGE_FILE)["summary"]


def _goal_md(rows: list[dict], boards: list[dict]) -> list[str]:
    base = {r["board"]: r["finn_target_fps_best"] for r in boards if r["net"] == "untrimmed"
            and r["finn_target_fps_best"].get("best")}
    out = ["## The goal: trimming + optimiser vs FINN's fairly searched best of the untrimmed net", "",
           "Default checkpoint and settings; `TARGET_FPS` = 3x FINN's best fitting folding of the untrimmed net "
           "(completed estimate, (b) above). The trim stage's hardware-aware search (hwtrim) picks the MAC budget; "
           "accuracies on the whole Fashion-MNIST test split, simulation on 1,000 test images. Rows: "
           "`bench/folding.py --part goal --goal-builds <build>/<board> ...` reading the finished builds.", "",
           "| board | command | budget | W4A4 (float 92.72 %) | fps estimate | simulated II / estimate | fits (FIFOs sized by "
           "simulation) | FINN best, untrimmed: completed / FINN's own estimate | speed-up (completed / FINN's own) |",
           "|" + "---|" * 9]
    for r in rows:
        b = base.get(r["board"])
        fb = (b["best"]["fps"], b["best_finn_yardstick"]["fps"]) if b else (None, None)
        out.append("| " + " | ".join([
            r["board"], f"`{r['command']}`", f"{r['budget']:g} ({r['macs_fraction']:.3f} of the MACs)",
            f"{100 * r['quantized']:.2f} % ({100 * (r['quantized'] - r['float_accuracy']):+.2f} pt)",
            f"{r['fps_estimate']:,.0f}",
            f"{r['ii']:,.0f} / {r['ii_estimate']:,.0f} = {r['ii_ratio']:.3f}; bit-exact {r['bit_exact']}"
            if r["ii"] else "not simulated",
            "yes" if r["fits_sized"] else "NO" if r["fits_sized"] is not None else "n/a",
            f"{fb[0]:,.0f} / {fb[1]:,.0f}" if b else "n/a",
            f"**{r['fps_estimate'] / fb[0]:.2f}x** / {r['fps_estimate'] / fb[1]:.2f}x" if b else "n/a"]) + " |")
    out.append("")
    for r in rows:
        out += [f"{r['board']}: the budget search (PTQ accuracy on held-out training images, estimates only):", "",
                r["hwtrim_table"], ""]
    return out


def bench_pareto(qonnx: Path, net: str, board: str = "pynq-z2", points: int = 8, prefer: str = "rtl") -> dict:
    """The Pareto set of `qonnx` on `board` from the fully folded HW model, `points` optimiser runs between the
    fully folded design and the build's plan (planned here exactly as the compile stage plans it)."""
    from trimflow.finn.pareto import pareto_front
    from trimflow.report.plots import pareto_plot

    print(f"Pareto set: {net} on {board} ({points} runs)", flush=True)
    _, nodes_dir = _hw_nodes(qonnx, board, prefer)
    pset = pareto_front(nodes_dir / "hw_model.onnx", load_board(board), WORK / "pareto-scratch", points=points)
    shutil.rmtree(nodes_dir, ignore_errors=True)
    data = {"net": net, "prefer": prefer, "points_requested": points, **pset.summary(),
            "front_foldings": [p.folding for p in pset.points]}
    slug = "-".join("".join(c if c.isalnum() else " " for c in f"{net.split(' (')[0]} {board}").lower().split())
    data["plot"] = pareto_plot(data, RESULTS / f"pareto-{slug}.png", f"{net.split(' (')[0]} on {board}").name
    for p in data["tried"]:
        print(f"  {'front' if p in data['points'] else '     '} {p['source']:22s} {p['fps']:10.1f} fps "
              f"{p['resources']['LUT'] + data['shell_overhead']['LUT']:8.0f} LUT fits {p['fits']}", flush=True)
    print(f"  {pset.seconds} s", flush=True)
    return data


def _pareto_md(c: dict) -> list[str]:
    shell, cap = c["shell_overhead"]["LUT"], c["limits"]["LUT"]
    rows = []
    for p in c["points"]:
        lut = p["resources"]["LUT"] + shell
        rows.append(f"| {p['fps']:,.{0 if p['fps'] >= 100 else 1}f} | {lut:,.0f} | {100 * lut / cap:.1f} | "
                    f"{p['resources']['FF']:,.0f} | {p['resources']['BRAM18']:,.0f} | {p['resources']['DSP']:,.0f} | "
                    f"{'**build (optimiser)**' if p['chosen'] else p['source']} |")
    ch = c["chosen"]
    tail = ("" if c["chosen_on_front"] else
            f" The build's plan ({ch['fps']:,.0f} fps, {ch['resources']['LUT'] + shell:,.0f} LUT) is not on the front"
            f"{'' if ch['fits'] else ' (does not fit)'}.")
    return [f"## (c) Pareto set (fps vs LUT): {c['net']} on {c['board']} ({c['part']}, "
            f"{c['clock_period_ns']:g} ns), MVAUs {c['prefer'].upper()}", "",
            f"The optimiser (plan_within_caps) under LUT budgets between the fully folded design and the build's "
            f"plan, and under fps targets between the two; {len(c['points'])} non-dominated of "
            f"{len(c['tried'])} distinct plans, {c['seconds']:.0f} s. LUT includes the board shell ({shell:,}); "
            f"LUT cap {cap:,}. FF / BRAM18 / DSP: the design alone (caps {c['limits']['FF']:,} / "
            f"{c['limits']['BRAM18']:,} / {c['limits']['DSP']:,} incl. shell).{tail}", "",
            "| fps | LUT | % of cap | FF | BRAM18 | DSP | found by |", "|---|---|---|---|---|---|---|", *rows, "",
            f"![fps vs LUT]({c['plot']})", ""]


def _fmt(r: dict | None) -> str:
    """fps | fits (completed / FINN-only) | % LUT/FF/BRAM18/DSP completed | % LUT/BRAM18/DSP FINN-only | seconds"""
    if r is None:
        return "none fits | | | |"
    p, f = r["percent"], r["finn_only_percent"]
    return (f"{r['fps']:,.0f} | {'yes' if r['fits'] else 'NO'} / {'yes' if r['fits_finn_only'] else 'NO'} | "
            f"{p['LUT']} / {p['FF']} / {p['BRAM18']} / {p['DSP']} | {f['LUT']} / {f['BRAM18']} / {f['DSP']} | "
            f"{r['seconds']}")


def _finn_label(f: dict, key: str) -> str:
    r = f[key]
    return "" if r is None else f" (target {r['target_fps']:,.1f})"


def _finn_foldings(f: dict) -> str:
    over = [g for g in f["foldings"] if g["fits"] is not None]
    return (f"{f['distinct_foldings']} distinct foldings from SetFolding, the fastest {f['evaluated']} estimated "
            f"({f['search_seconds']} s); fps (fits completed / FINN-only) from the fastest down: " + ", ".join(
                f"{g['fps']:,.0f} ({'y' if g['fits'] else 'n'}/{'y' if g['fits_finn'] else 'n'})"
                for g in reversed(over)))


YARDSTICKS = ("Fits: completed / FINN-only. *Completed*: trimflow.finn.estimates (FINN's layer estimates + RTL-MVAU "
              "LUTs + FF + FIFOs at depth 64 + width converters + board shell), what the compile stage checks; "
              "*FINN-only*: FINN's own layer estimates + width converters + shell, what a FINN user reading FINN's "
              "reports would check (LUT / BRAM18 / DSP; FINN has no FF model). FINN's best: every distinct folding "
              "FINN's SetFolding produces (stepping the frame budget to one cycle below the last folding's "
              "bottleneck, trimflow.finn.baseline), the fastest that fits under each yardstick, recompiled through "
              "FINN's builder at that target_fps.")


def markdown(data: dict) -> str:
    lines = ["# Folding: trimflow optimiser vs FINN target_fps vs hand folding", "",
             "Estimates only (no synthesis): FINN's per-layer cycles; fps at the board clock. Resources as % of the "
             "device. " + YARDSTICKS + " Seconds: wall time of all compiles for that row (hand: every cycle budget "
             "tried).", ""]
    head = ["| folding | fps | fits | % LUT / FF / BRAM18 / DSP (completed) | % LUT / BRAM18 / DSP (FINN-only) | s |",
            "|---|---|---|---|---|---|"]
    for c in data.get("cnv", []):
        f = c["finn_target_fps_best"]
        lines += [f"## (a) {c['net']} on {c['board']} (xc7z020, 10 ns), MVAUs preferred {c['prefer'].upper()}", "",
                  *head, f"| trimflow optimiser | {_fmt(c['optimizer'])} |",
                  f"| FINN best fitting, completed estimate{_finn_label(f, 'best')} | {_fmt(f['best'])} |",
                  f"| FINN best fitting, FINN's own estimate{_finn_label(f, 'best_finn_yardstick')} | "
                  f"{_fmt(f['best_finn_yardstick'])} |",
                  f"| finn-examples hand folding | {_fmt(c['hand_finn_examples'])} |", "",
                  f"HLS layers: {', '.join(c['hls_node_types']) or 'none'}. Issue reference: FINN best "
                  f"{c['reference_issue']['finn_target_fps_best']:,} fps, hand "
                  f"{c['reference_issue']['hand_finn_examples']} fps.", "", _finn_foldings(f), ""]
    if "hwtrim" in data:
        h = data["hwtrim"]
        lines += [f"## Hardware-aware trimming: {h['board']} at {h['target_fps']:g} fps", "",
                  f"Default checkpoint, relevance scores of the default flow, budgets largest first; each candidate "
                  f"is PTQ'd (no QAT), exported and compiled (optimiser, estimates only). Chosen budget "
                  f"**{h['chosen_budget']:g}**; {h['seconds']} s in all.", "", h["table"], "",
                  "Untrimmed (budget 1.0), resources vs caps:", "", "```", h["fit_untrimmed"], "```", "",
                  f"Chosen (budget {h['chosen_budget']:g}):", "", "```", h["fit_chosen"], "```", ""]
    if "boards" in data:
        lines += ["## (b) trimflow default net", ""]
        for r in data["boards"]:
            f = r["finn_target_fps_best"]
            if "best" not in f:  # a row of the old geometric sweep: rerun --part boards
                continue
            lines += [f"### {r['net']} on {r['board']}", "", *head,
                      f"| trimflow optimiser | {_fmt(r['optimizer'])} |",
                      f"| FINN best fitting, completed estimate{_finn_label(f, 'best')} | {_fmt(f['best'])} |",
                      f"| FINN best fitting, FINN's own estimate{_finn_label(f, 'best_finn_yardstick')} | "
                      f"{_fmt(f['best_finn_yardstick'])} |",
                      f"| hand rule (best cycle budget) | {_fmt(r['hand'])} |", "", _finn_foldings(f), ""]
        goal = [(r["board"], r["optimizer"]["fps"], u["finn_target_fps_best"]["best"]["fps"])
                for r in data["boards"] if r["net"].startswith("trimmed") and r["optimizer"]["fits"]
                and "best" in r["finn_target_fps_best"]
                for u in data["boards"] if u["net"] == "untrimmed" and u["board"] == r["board"]
                and u["finn_target_fps_best"].get("best")]
        if goal:
            lines += ["Goal (trimmed + optimiser vs FINN's fairly searched best fitting folding of the untrimmed net, "
                      "completed estimate): "
                      + "; ".join(f"{b} {o:,.0f} / {f:,.0f} = {o / f:.2f}x" for b, o, f in goal),
                      ""]
    if data.get("goal"):
        lines += _goal_md(data["goal"], data.get("boards", []))
    if data.get("rounding"):
        lines += _rounding_md(data["rounding"])
    for c in data.get("pareto", []):
        lines += _pareto_md(c)
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("cnv", "boards", "hwtrim", "pareto", "rounding", "goal", "all"),
                    default="all")
    ap.add_argument("--round-to", nargs="+", type=int, default=[1, 4, 8, 16], help="--part rounding")
    ap.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.4], help="--part rounding")
    ap.add_argument("--goal-builds", nargs="+", type=Path, default=[], help="--part goal: <build-dir>/<board> folders")
    ap.add_argument("--pareto-points", type=int, default=8, help="optimiser runs per Pareto set (--part pareto)")
    ap.add_argument("--scores", type=Path, help="relevance.json of the default flow (--part hwtrim)")
    ap.add_argument("--hw-board", default="zybo-z7-10")
    ap.add_argument("--target-fps", type=float, default=2000.0)
    ap.add_argument("--trimmed", type=Path, help="QONNX of the default trimmed net (trimflow export)")
    ap.add_argument("--untrimmed", type=Path, help="QONNX of the untrimmed default net (default: the default "
                    "checkpoint quantized with calibrated activations, written to the bench's work folder)")
    ap.add_argument("--boards", nargs="*", default=["pynq-z2", "zybo-z7-10"])
    ap.add_argument("--reuse-hand", action="store_true", help="--part boards: take the hand-rule rows from the "
                    "existing folding.json instead of rerunning their sweep")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS / "folding.json"
    new = {}
    if args.part in ("cnv", "all"):
        new["cnv"] = [bench_cnv("rtl"), bench_cnv("hls")]
    if args.part in ("boards", "all"):
        nets = {k: v for k, v in (("trimmed (0.5 MACs)", args.trimmed),
                                  ("untrimmed", args.untrimmed or untrimmed_qonnx(WORK / "untrimmed.qonnx.onnx"))) if v}
        old = json.loads(json_path.read_text()).get("boards") if args.reuse_hand and json_path.exists() else None
        new["boards"] = bench_boards(nets, tuple(args.boards), old)
    if args.part in ("pareto", "all"):
        nets = {"CNV-W2A2 (brevitas_examples.bnn_pynq, random weights)": cnv_qonnx(WORK / "cnv_w2a2.onnx"),
                **{k: v for k, v in (("trimflow default net, trimmed (0.5 MACs)", args.trimmed),
                                     ("trimflow default net, untrimmed", args.untrimmed)) if v}}
        new["pareto"] = [bench_pareto(q, net, points=args.pareto_points) for net, q in nets.items()]
    if args.part == "goal":
        new["goal"] = bench_goal(args.goal_builds)
    if args.part == "rounding":
        if not args.scores:
            raise SystemExit("--part rounding needs --scores (build/<board>/relevance/relevance.json)")
        new["rounding"] = bench_rounding(tuple(args.boards), tuple(args.budgets), tuple(args.round_to), args.scores)
    if args.part == "hwtrim":
        if not args.scores:
            raise SystemExit("--part hwtrim needs --scores (build/<board>/relevance/relevance.json)")
        new["hwtrim"] = bench_hwtrim(args.hw_board, args.target_fps, args.scores)
    # read late: the parts may run as separate processes, each keeps the other's results (and --part boards runs
    # of other nets / boards keep their rows)
    data = json.loads(json_path.read_text()) if json_path.exists() else {}
    if "boards" in new:
        done = {(r["net"], r["board"]) for r in new["boards"]}
        new["boards"] = [r for r in data.get("boards", []) if (r["net"], r["board"]) not in done] + new["boards"]
    data = {**data, **new}
    json_path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    (RESULTS / "folding.md").write_text(markdown(data) + "\n")
    print(markdown(data))


if __name__ == "__main__":
    main()
