"""FIFO sizing by simulation (trimflow.sim.fifo_sizing) on built designs: per-stream depths, the estimate before and
after, and the sized design checked in Verilator (bit-exact vs FINN's python model, II, no deadlock).

    .venv/bin/python bench/fifo.py --design "default net=build/pynq-z2" \
        --design "ResNet-8=build-resnet8/pynq-z2:configs/resnet8.yaml" --ptq "MNIST zoo=configs/mnist-zoo.yaml" \
        [--images 100]

--design NAME=BUILD/<board>[:CONFIG] takes a build whose compile stage has run (`make build`); --ptq NAME=CONFIG
compiles the config's checkpoint untrimmed after post-training quantization (ptq_compile), for when a full build
is out of reach. Per design: a Verilator simulator with deep FIFOs (SIZING_DEPTH) is built, the FIFOs are sized on the
first SIZING_IMAGES test images, then `--images` test images run through the sized design and through the design
with the simulator's old fixed depth (32 beats per link, a whole image in front of each join): both must equal FINN's
python execution, and the II must not change. The estimate is trimflow.finn.estimates' (the compile stage's fit
check) with every FIFO at the charged depth (64 per stream, an image in front of each join) and with the sized
depths. Writes bench/results/fifo.json and fifo.md (the existing entries of other designs are kept).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trimflow.artifacts import read_json  # noqa: E402
from trimflow.boards import load_board  # noqa: E402

RESULTS = ROOT / "bench" / "results"
WORK = Path("/tmp/trimflow-bench-fifo")
OLD_DEPTH = 32  # the simulator's FIFO depth before sizing (SimConfig.fifo_depth's default until the design owned it)


def _slug(name: str) -> str:
    # Verilator's generated make runs through sh: no parentheses or commas in the paths
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")


def _images(cfg, n: int) -> np.ndarray:
    from trimflow.data import load_dataset, subset

    return subset(load_dataset(cfg.dataset, "test", data_dir=cfg.data_dir), n, seed=3).images.numpy()


def ptq_compile(name: str, config: str | None) -> tuple[Path, str]:
    """A config's checkpoint, untrimmed, quantized with calibrated activations only (bench/folding.py's
    untrimmed_qonnx) and compiled by the compile stage (optimiser folding, generated RTL): a design of that network
    without the build's trimming and training, for when a full build is out of reach (FIFO sizing depends on the
    folded shapes, not on the weights). Returns the compile dir and the config path."""
    from folding import untrimmed_qonnx

    from trimflow.config import load_flow_config
    from trimflow.finn.compile import compile_model

    cfg = load_flow_config(config)
    work = WORK / _slug(name)
    out = work / "compile"
    if not (out / "compile.json").is_file():
        q = untrimmed_qonnx(work / "model.qonnx.onnx", config)
        ccfg = dataclasses.replace(cfg.compile, pareto_points=0, verify=False, fail_if_not_fit=False)
        compile_model(q, load_board("pynq-z2"), ccfg, out)
    return out, config


def bench_design(name: str, compile_dir: Path, config: str | None, n_images: int) -> dict:
    from trimflow.config import load_flow_config
    from trimflow.finn.adapter import finn_session
    from trimflow.finn.design import load as load_design
    from trimflow.finn.design import relocate_compile_dir
    from trimflow.finn.execute import execute_hw_model
    from trimflow.finn.fifos import record_sized_fifos
    from trimflow.sim import SimConfig, build_simulator
    from trimflow.sim.fifo_sizing import SIZING_DEPTH, SIZING_IMAGES, size_fifos

    compile_dir = relocate_compile_dir(compile_dir)
    compiled = read_json(compile_dir / "compile.json")
    board = load_board(compiled["board"])
    hw = compile_dir / "hw_model.onnx"
    work = WORK / _slug(name)
    work.mkdir(parents=True, exist_ok=True)
    print(f"{name}: {compile_dir} ({board.name}, {compiled['fps']:,.0f} fps estimated)", flush=True)
    t0 = time.perf_counter()
    # -O0: the C++ builds several times faster, and a few hundred images simulate in seconds either way
    sim = build_simulator(hw, work / "sim", SimConfig(fifo_depth=SIZING_DEPTH, optimize=False),
                          fpga_part=board.part, clk_ns=board.clock_period_ns)
    print(f"  simulator built in {time.perf_counter() - t0:.0f} s", flush=True)
    images = _images(load_flow_config(config), max(n_images, SIZING_IMAGES))
    sizing = size_fifos(sim, images[:SIZING_IMAGES])
    print(f"  sized {len(sizing.fifos)} FIFOs in {sizing.seconds:.0f} s: II {sizing.ii_sized:.1f} "
          f"(deep {sizing.ii_deep:.1f}), rounds {sizing.rounds}", flush=True)
    design = load_design(compile_dir)
    record = record_sized_fifos(hw, sizing, board, work, design)
    run = images[:n_images]
    sized = sim.run(run, fifo_limits=sizing.limits())
    # the simulator's old design: OLD_DEPTH per link, a whole image in front of each join (as SimConfig built it)
    def old_depth(f: dict) -> int:
        fifo = design.fifo_at(f["producer"], f["producer_port"], f["consumer"], f["consumer_port"])
        return max(OLD_DEPTH, fifo.min_depth if fifo is not None else 0)

    old_limits = {f["name"]: old_depth(f) for f in sim.manifest["fifos"]}
    old = sim.run(run, fifo_limits=old_limits)
    with finn_session(work / "finn-exec"):
        ref = execute_hw_model(hw, run.transpose(0, 2, 3, 1)).reshape(sized.outputs.shape)
    est = compiled["max_cycles"]
    # the sizing record first: its own run (SIZING_IMAGES images) keeps its figures under sizing_*, and this
    # run's figures below (all `images`) are the ones the table reports
    out = {
        **record, "sizing_images": record["images"], "sizing_ii": record["ii_sized"],
        "name": name, "design": str(compile_dir), "board": board.name, "images": len(run),
        "bit_exact_sized": bool(np.array_equal(sized.outputs, ref)),
        "bit_exact_old": bool(np.array_equal(old.outputs, ref)),
        "ii_sized": sized.ii, "ii_old": old.ii, "ii_estimate": est, "latency_sized": sized.latency,
        "latency_old": old.latency, "est_latency_cycles": sized.est_latency,
        "clock_period_ns": board.clock_period_ns,
    }
    print(f"  {len(run)} images: II sized {sized.ii:.1f} / old {old.ii:.1f} / estimate {est}; bit-exact "
          f"{out['bit_exact_sized']} / {out['bit_exact_old']}; fits sized {record['fits_sized']}", flush=True)
    return out


def _port(f: dict) -> str:
    return f" (input {f['consumer_port']})" if f["consumer_port"] else ""


def _r(t: dict) -> str:
    return f"{t['LUT']:,.0f} / {t['FF']:,.0f} / {t['BRAM18']:,.0f}"


def markdown(data: dict) -> str:
    lines = ["# FIFO sizing by simulation (no Vivado)", "",
             "trimflow.sim.fifo_sizing: Verilator run with deep FIFOs (free-running: reference II and outputs), "
             "again with the input paced at that II (each FIFO's peak fill level), depth = peak + 1 rounded up to "
             "the end of its cost step in FINN's FIFO model (trimflow.finn.fifos.finn_depth), then the sized design "
             "runs free (each FIFO capped at depth - 1, as fifo.sv's registered ready allows one less than ours): "
             "same outputs, same II, no deadlock. Estimates: trimflow.finn.estimates (design only, no shell), FIFOs "
             "by FINN's fifo.sv cost model (SRL up to 33 entries, LUTRAM up to 257, BRAM18 above). *Charged*: the "
             "compile stage's assumption (64 per stream, an image in front of each join).", ""]
    for d in data["designs"]:
        ch, sz = d["estimate_charged"], d["estimate_sized"]
        us = d["clock_period_ns"] / 1000.0
        lines += [f"## {d['name']} ({d['board']}, `{d['design']}`)", "",
                  "| | charged (64 / image at joins) | sized by simulation |", "|---|---|---|",
                  f"| FIFOs: count, LUT / FF / BRAM18 | {ch['fifos']['count']:.0f}, {_r(ch['fifos'])} | "
                  f"{sz['fifos']['count']:.0f}, {_r(sz['fifos'])} |",
                  f"| design total LUT / FF / BRAM18 | {_r(ch['totals'])} | {_r(sz['totals'])} |",
                  f"| fits the board (sized) | | {'yes' if d['fits_sized'] else 'NO'} |", "",
                  f"Verilator, {d['images']} test images: II sized **{d['ii_sized']:,.1f}** cycles vs "
                  f"{d['ii_old']:,.1f} with the simulator's old depths (32 per link, an image at joins) vs "
                  f"{d['ii_deep']:,.1f} with deep FIFOs (sizing run, {d.get('sizing_images', '?')} images) vs FINN's estimate {d['ii_estimate']:,}; "
                  f"bit-exact vs FINN's python model: sized {'yes' if d['bit_exact_sized'] else 'NO'}, old "
                  f"{'yes' if d['bit_exact_old'] else 'NO'}; no deadlock. First-image latency "
                  f"{d['latency_sized']:,} cycles = {d['latency_sized'] * us:,.1f} µs (FINN's estimate, the sum "
                  f"of the layers' cycles: {d['est_latency_cycles'] * us:,.1f} µs). Sizing: {d['seconds']:.0f} s, "
                  f"input paced at {d['pace']:,} cycles per image, {d['rounds']} round(s). FIFOs deeper than the "
                  f"compile stage charged: {', '.join(d['deeper_than_charged']) or 'none'}.", "",
                  "| FIFO (producer → consumer) | width | peak | depth | storage |", "|---|---|---|---|---|"]
        lines += [f"| {f['producer']} → {f['consumer']}{_port(f)} | {f['width']} | {f['peak']} | {f['depth']} | "
                  f"{f['style']} |" for f in d["fifos"]]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--design", action="append", default=[],
                    help="NAME=BUILD_DIR/<board>[:CONFIG] (a build whose compile stage ran; repeatable)")
    ap.add_argument("--ptq", action="append", default=[],
                    help="NAME=CONFIG (or NAME=default): the config's checkpoint untrimmed, PTQ + compile stage")
    ap.add_argument("--images", type=int, default=100, help="test images through the sized and the old design")
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "fifo.json"
    jobs = []
    for spec in args.design:
        name, _, rest = spec.partition("=")
        build, _, config = rest.partition(":")
        jobs.append((name, lambda b=build: (Path(b) / "compile" / "finn", None), config or None))
    for spec in args.ptq:
        name, _, config = spec.partition("=")
        conf = None if config in ("", "default") else config
        jobs.append((name, lambda n=name, c=conf: ptq_compile(n, c), conf))
    if not jobs:
        raise SystemExit("give at least one --design or --ptq")
    for name, make, config in jobs:
        compile_dir, _ = make()
        row = bench_design(name, compile_dir, config, args.images)
        # read late: several runs may write here, each keeps the others' designs
        data = json.loads(path.read_text()) if path.exists() else {"designs": []}
        data["designs"] = [d for d in data["designs"] if d["name"] != name] + [row]
        path.write_text(json.dumps(data, indent=2, default=str) + "\n")  # after each design: resumable
        (RESULTS / "fifo.md").write_text(markdown(data) + "\n")
    print(markdown(data))


if __name__ == "__main__":
    main()
