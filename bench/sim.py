"""Verilator simulator of a compiled design: build time, simulation speed, cycles vs FINN's estimate, bit-exactness.

    .venv/bin/python bench/sim.py --compile-dir build/pynq-z2/compile/finn            # 1000 images
    .venv/bin/python bench/sim.py --compile-dir DIR --images 200 --ref-images 50

Reports the Verilator compile time, simulated cycles per wall second, images per second of the simulator and of
FINN's python execution of the same HW model (`execute_hw_model`, the bit-exact reference), measured cycles per
image and steady-state II against FINN's estimate (its slowest layer), and whether the outputs match the reference.
The compile dir is copied into the work dir first (`trimflow.finn.design.relocate_compile_dir` rewrites paths in
place, and other runs may share the original). Writes `<out>.json` and `<out>.md` (default bench/results/sim.*).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trimflow import FlowError  # noqa: E402
from trimflow.artifacts import atomic_path, read_json, write_json  # noqa: E402


def _folding(hw: Path) -> dict[str, dict[str, int]]:
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    out = {}
    for node in ModelWrapper(str(hw)).graph.node:
        inst = getCustomOp(node)
        attrs = {a: int(inst.get_nodeattr(a)) for a in ("PE", "SIMD") if a in inst.get_nodeattr_types()}
        if attrs:
            out[node.name] = attrs
    return out


def run(args) -> dict:
    from trimflow.data import load_dataset
    from trimflow.finn.adapter import finn_session
    from trimflow.finn.design import relocate_compile_dir
    from trimflow.finn.execute import execute_hw_model
    from trimflow.sim import SimConfig, build_simulator

    src = Path(args.compile_dir).resolve()
    if not (src / "hw_model.onnx").is_file():
        raise FlowError(f"{src} holds no hw_model.onnx; pass the compile stage's finn/ directory")
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-sim.")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    copy = work / "finn"
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(src, copy, symlinks=True)
    if (copy / "compile.json").is_file():
        copy = relocate_compile_dir(copy)
    hw = copy / "hw_model.onnx"
    row: dict = {"compile_dir": str(src), "images": args.images, "host": platform.node(),
                 "fifo_depth": args.fifo_depth}
    if (copy / "compile.json").is_file():
        c = read_json(copy / "compile.json")
        row.update({k: c.get(k) for k in ("board", "clock_period_ns", "max_cycles", "bottleneck")})
    with finn_session(work / "finn_session"):
        row["folding"] = _folding(hw)  # from the HW model itself (compile.json may predate a refolding)

    test = load_dataset(args.dataset, "test", args.data_dir)
    images = np.asarray(test.images[: args.images])
    if len(images) < args.images:
        raise FlowError(f"{args.dataset} test split has only {len(images)} images")

    cfg = SimConfig(fifo_depth=args.fifo_depth)
    t0 = time.monotonic()
    sim = build_simulator(hw, work / "sim", cfg)
    row["build_s"] = round(time.monotonic() - t0, 1)  # FINN PrepareIP + Verilator, whole call
    row["verilator_compile_s"] = sim.compile_s

    res = sim.run(images)
    s = res.summary()
    row.update({k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items()
                if k not in ("layer_est_cycles", "link_backpressure")})
    row["layer_est_cycles"] = s["layer_est_cycles"]
    row["sim_wall_s"] = round(res.wall_s, 3)

    n_ref = min(args.ref_images or args.images, args.images)
    nhwc = images[:n_ref].transpose(0, 2, 3, 1)
    with finn_session(work / "finn_session"):
        execute_hw_model(hw, nhwc[:1])  # warm-up: imports and first-call setup are not per-image cost
        t0 = time.monotonic()
        ref = execute_hw_model(hw, nhwc)
        ref_wall = time.monotonic() - t0
    row.update({"ref_images": n_ref, "ref_wall_s": round(ref_wall, 3),
                "ref_images_per_s": round(n_ref / ref_wall, 3),
                "speedup_vs_python": round(res.images_per_s / (n_ref / ref_wall), 1),
                "bit_exact": bool(np.array_equal(res.outputs[:n_ref], ref.reshape(res.outputs[:n_ref].shape)))})
    return row


def markdown(row: dict) -> str:
    if "error" in row:
        return f"# Verilator simulator benchmark\n\n{row['compile_dir']}: **refused / failed**: {row['error']}\n"
    reused = row["build_s"] < row["verilator_compile_s"] / 2
    lines = [
        "# Verilator simulator benchmark", "",
        f"Design: `{row['compile_dir']}` ({row.get('board', '?')}, bottleneck {row.get('bottleneck', '?')}); "
        f"{row['images']} images, host `{row['host']}`.", "",
        "MVAU folding (PE, SIMD): " + ", ".join(f"{k} ({v.get('PE')}, {v.get('SIMD')})"
                                               for k, v in row.get("folding", {}).items() if k.startswith("MVAU")),
        "",
        "| metric | value |", "|---|---|",
        f"| Verilator compile (s) | {row['verilator_compile_s']} |",
        f"| build_simulator total (s) | {row['build_s']}"
        f"{' (cached simulator reused; the compile time above is from its build)' if reused else ''} |",
        f"| simulated cycles | {row['total_cycles']} |",
        f"| simulation wall time (s) | {row['sim_wall_s']} |",
        f"| simulated cycles / s | {row['cycles_per_s']:.0f} |",
        f"| simulator images / s | {row['images_per_s']:.1f} |",
        f"| FINN python execution images / s ({row['ref_images']} images) | {row['ref_images_per_s']:.2f} |",
        f"| speed-up vs FINN python | {row['speedup_vs_python']}x |",
        f"| bit-exact vs FINN python | {row['bit_exact']} |",
        f"| measured cycles / image | {row['cycles_per_image']:.1f} |",
        f"| measured II (cycles) | {row['ii']:.1f} |",
        f"| FINN estimated II (slowest layer) | {row['est_ii']} |",
        f"| II / estimate | {row['ii_ratio']:.3f}{' (flagged)' if row['ii_flagged'] else ''} |",
        f"| latency, first image (cycles) | {row['latency']} (FINN sum of layers: {row['est_latency']}) |",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--compile-dir", required=True, help="the compile stage's finn/ dir (hw_model.onnx, compile.json)")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--ref-images", type=int, default=0, help="images for FINN's python execution (0 = --images)")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--fifo-depth", type=int, default=32, help="SimConfig.fifo_depth")
    p.add_argument("--work", default=None, help="where the copy and the simulator go (default: a new temp dir)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "sim"))
    args = p.parse_args()
    try:
        row = run(args)
    except FlowError as e:
        row = {"compile_dir": str(Path(args.compile_dir).resolve()), "images": args.images, "error": str(e)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out.with_suffix(".json"), {"args": vars(args), "result": row})
    with atomic_path(out.with_suffix(".md")) as tmp:
        tmp.write_text(markdown(row))
    print(markdown(row))
    if "error" in row:
        sys.exit(1)


if __name__ == "__main__":
    main()
