"""Accuracy of QAT at several bit widths (8-bit first layer), with export and FINN checks; JSON + markdown table.

    .venv/bin/python bench/quant.py                       # small settings, a few minutes on 2 cores
    .venv/bin/python bench/quant.py --train-images 60000 --test-images 10000 --epochs 1

Nets: the untrimmed default checkpoint and the trimmed one (the default build's trim stage, run or reused through
the pipeline under --build-dir). Each row: float accuracy, accuracy after calibration only (PTQ), after QAT, QAT
seconds per epoch, the QONNX export's agreement with Brevitas, and FINN's verdict on the export: streamlined with
no float node left in the hardware part (trimflow.export.check_streamlined on FINN's streamlined model) and FINN's
integer execution equal to QONNX (compile_model's verification). A configuration trimflow rejects (e.g. W1A1 on a
zero-padded CNN) is a row with the error.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trimflow import FlowError  # noqa: E402
from trimflow.artifacts import atomic_path, write_json  # noqa: E402
from trimflow.data import load_dataset, subset  # noqa: E402
from trimflow.boards import load_board  # noqa: E402
from trimflow.graph import count_params_macs  # noqa: E402
from trimflow.export import check_streamlined, export_qonnx, verify_qonnx  # noqa: E402
from trimflow.models import build_model, load_checkpoint  # noqa: E402
from trimflow.quantize import (QuantConfig, calibrate_activations, convert_model, qat_train_config,  # noqa: E402
                           quantize_model)
from trimflow.train import TrainConfig, evaluate  # noqa: E402

# name -> (weight_bits, act_bits, last_layer_weight_bits); the first layer keeps 8-bit weights throughout.
CONFIGS = {
    "W8A8": (8, 8, 8),
    "W4A4": (4, 4, 8),
    "W3A3": (3, 3, 8),
    "W2A2": (2, 2, 8),
    "W1A2": (1, 2, 8),
    "W1A1": (1, 1, 1),
}


def run_config(name: str, float_model, train, test, verify_images, args) -> dict:
    w, a, last = CONFIGS[name]
    row = {"config": name, "weight_bits": w, "act_bits": a, "first_layer_weight_bits": 8,
           "last_layer_weight_bits": last}
    try:
        train_cfg = TrainConfig(epochs=args.epochs, batch_size=128, lr=args.lr, warmup_steps=10, seed=args.seed)
        cfg = QuantConfig(weight_bits=w, act_bits=a, last_layer_weight_bits=last, train=train_cfg,
                          low_bit_lr=args.low_bit_lr or None)
        row["lr"] = qat_train_config(cfg).lr
        ptq = convert_model(float_model, cfg)
        calibrate_activations(ptq, train, cfg.calibration_batches, cfg.calibration_batch_size, args.seed)
        row["ptq_accuracy"] = evaluate(ptq, test)
        start = time.perf_counter()
        quant = quantize_model(float_model, train, cfg, progress=True)
        row["qat_seconds"] = round(time.perf_counter() - start, 1)
        # per pass over the full 60k training set, whatever subset this run trained on
        row["qat_seconds_per_60k_epoch"] = round(row["qat_seconds"] / args.epochs * 60000 / len(train), 1)
        row["qat_accuracy"] = evaluate(quant, test)
        with tempfile.TemporaryDirectory() as tmp:
            path = export_qonnx(quant, tuple(test.shape), Path(tmp) / "model.onnx")
            report = verify_qonnx(path, quant, verify_images, progress=False)
            row["export_top1_agreement"] = report["top1_agreement"]
            row["export_max_abs_diff"] = report["max_abs_diff"]
            row.update(finn_check(path, verify_images, Path(tmp) / "finn"))
    except FlowError as e:
        row["error"] = str(e)
    return row


def finn_check(qonnx_path: Path, images, out: Path) -> dict:
    """FINN's verdict on an export: fully streamlined, all layers hardware, integer execution equal to QONNX."""
    from qonnx.core.modelwrapper import ModelWrapper

    from trimflow.finn.compile import CompileConfig, compile_model

    cfg = CompileConfig(verify_images=len(images), generate_code=False)
    try:
        # the largest board, so the verdict is about FINN's conversion, not about fitting
        res = compile_model(qonnx_path, load_board("kv260"), cfg, out / "compile", verify_images=images)
    except FlowError as e:
        return {"finn_streamlined": False, "finn_error": str(e).splitlines()[0][:300]}
    leftovers = check_streamlined(ModelWrapper(str(out / "compile" / "finn" / "intermediate_models" /
                                                   "step_streamline.onnx")))
    v = res.verification
    return {"finn_streamlined": not leftovers, "finn_leftovers": leftovers[:5],
            "finn_matches_qonnx": bool(v and v.ok), "finn_images": v.n_images if v else 0,
            "finn_images_beyond_tolerance": v.hw_mismatches if v else None,
            "finn_top1_agreement": v.argmax_agreement if v else None,
            "finn_layer_types": sorted(set(res.node_types))}


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [f"# QAT bit-width sweep ({s['checkpoint']})", "",
             f"train images {s['train_images']}, test images {s['test_images']}, {s['epochs']} epoch(s) QAT, "
             f"lr {s['lr']} (≤ 2-bit configs: {s['low_bit_lr']}), seed {s['seed']}. s/epoch: QAT seconds scaled to one "
             "pass over 60k images. FINN: streamlined with no float node in the hardware part, and FINN's integer "
             "execution (HW layers + host tail) vs QONNX by flow/verify.py's rule (at most 5 % of the images past "
             "1e-4 of the logit range: rounding-boundary cases).", ""]
    for net in result["nets"]:
        lines += [f"## {net['net']} ({net['macs']:,} MACs, {net['params']:,} params; float accuracy "
                  f"{net['float_accuracy']:.4f})", "",
                  "| config | W (first/mid/last) | A | lr | PTQ acc | QAT acc | Δ vs float | s/epoch | "
                  "export top-1 agreement | FINN streamlined | FINN = QONNX |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in net["rows"]:
            bits = f"8/{r['weight_bits']}/{r['last_layer_weight_bits']}"
            if "error" in r:
                lines.append(f"| {r['config']} | {bits} | {r['act_bits']} | | rejected: "
                             f"{r['error'].splitlines()[0]} | | | | | | |")
                continue
            finn = "yes" if r.get("finn_streamlined") else f"no: {r.get('finn_error') or r.get('finn_leftovers')}"
            lines.append(f"| {r['config']} | {bits} | {r['act_bits']} | {r['lr']} | {r['ptq_accuracy']:.4f} | "
                         f"{r['qat_accuracy']:.4f} | {100 * (r['qat_accuracy'] - net['float_accuracy']):+.2f} pt | "
                         f"{r['qat_seconds_per_60k_epoch']} | {r['export_top1_agreement']:.3f} | {finn} | "
                         f"{_finn_agreement(r)} |")
        lines.append("")
    return "\n".join(lines)


def _finn_agreement(r: dict) -> str:
    if "finn_images" not in r:
        return "yes" if r.get("finn_matches_qonnx") else "no"
    verdict = "yes" if r["finn_matches_qonnx"] else "**no**"
    return (f"{verdict}: {r['finn_images_beyond_tolerance']}/{r['finn_images']} images past tolerance, top-1 "
            f"{100 * r['finn_top1_agreement']:.0f} %")


def trimmed_default(build_dir: str) -> Path:
    """The default build's trimmed float checkpoint (its trim stage, cached by the pipeline)."""
    from trimflow.build import run_flow
    from trimflow.config import load_flow_config

    result = run_flow(load_flow_config(None, []), "pynq-z2", Path(build_dir), until="trim")
    return result.results["trim"].dir / "model.pt"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="checkpoints/cnv-fashion-mnist.pt",
                   help="float checkpoint; 'fresh' = an untrained CNVLike (smoke test)")
    p.add_argument("--nets", default="untrimmed,trimmed",
                   help="untrimmed (--checkpoint) and/or trimmed (the default build's trim stage)")
    p.add_argument("--build-dir", default="build", help="where the default build's stages live (trimmed net)")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {', '.join(CONFIGS)}")
    p.add_argument("--train-images", type=int, default=4000)
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--verify-images", type=int, default=16)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--low-bit-lr", type=float, default=QuantConfig().low_bit_lr,
                   help="lr of configs with <= 2-bit weights or activations (0 = --lr)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="build/bench/quant", help="writes quant.json and quant.md here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown:
        p.error(f"unknown config(s) {unknown}; known: {', '.join(CONFIGS)}")
    nets = [n.strip() for n in args.nets.split(",") if n.strip()]
    if not nets or set(nets) - {"untrimmed", "trimmed"}:
        p.error(f"--nets takes untrimmed and/or trimmed, got {args.nets!r}")

    train = subset(load_dataset("fashion-mnist", "train"), args.train_images, seed=args.seed)
    test = subset(load_dataset("fashion-mnist", "test"), args.test_images, seed=args.seed)
    verify_images = subset(test, args.verify_images, seed=args.seed)
    result = {"settings": {k: v for k, v in vars(args).items()}, "nets": []}
    for net in nets:
        if net == "trimmed":
            float_model, _ = load_checkpoint(trimmed_default(args.build_dir))
        elif args.checkpoint == "fresh":
            float_model = build_model("cnv").eval()
        else:
            float_model, _ = load_checkpoint(args.checkpoint)
        params, macs = count_params_macs(float_model, tuple(test.shape))
        entry = {"net": net, "macs": macs, "params": params, "float_accuracy": evaluate(float_model, test),
                 "rows": []}
        result["nets"].append(entry)
        for name in names:
            row = run_config(name, float_model, train, test, verify_images, args)
            entry["rows"].append(row)
            print(net, {k: (v[:100] if k == "error" else v) for k, v in row.items()}, flush=True)
    out = Path(args.out)
    write_json(out / "quant.json", result)
    with atomic_path(out / "quant.md") as tmp:
        tmp.write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
