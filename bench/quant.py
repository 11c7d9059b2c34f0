"""Accuracy of QAT at several bit widths (8-bit first layer), with export verification; JSON + markdown table.

    .venv/bin/python bench/quant.py                       # small settings, a few minutes on 2 cores
    .venv/bin/python bench/quant.py --train-images 60000 --test-images 10000 --epochs 1

Each row: float accuracy, accuracy after calibration only (PTQ), after QAT, QAT seconds, and the QONNX export's
agreement with Brevitas. A configuration trimflow rejects (e.g. W1A1 on a zero-padded CNN) is a row with the error.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flow import FlowError  # noqa: E402
from flow.artifacts import atomic_path, write_json  # noqa: E402
from flow.data import load_dataset, subset  # noqa: E402
from flow.export import export_qonnx, verify_qonnx  # noqa: E402
from flow.models import build_model, load_checkpoint  # noqa: E402
from flow.quantize import QuantConfig, calibrate_activations, convert_model, quantize_model  # noqa: E402
from flow.train import TrainConfig, evaluate  # noqa: E402

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
        cfg = QuantConfig(weight_bits=w, act_bits=a, last_layer_weight_bits=last,
                          train=TrainConfig(epochs=args.epochs, batch_size=128, lr=args.lr, warmup_steps=10,
                                            seed=args.seed))
        ptq = convert_model(float_model, cfg)
        calibrate_activations(ptq, train, cfg.calibration_batches, cfg.calibration_batch_size, args.seed)
        row["ptq_accuracy"] = evaluate(ptq, test)
        start = time.perf_counter()
        quant = quantize_model(float_model, train, cfg, progress=True)
        row["qat_seconds"] = round(time.perf_counter() - start, 1)
        row["qat_accuracy"] = evaluate(quant, test)
        with tempfile.TemporaryDirectory() as tmp:
            path = export_qonnx(quant, tuple(test.shape), Path(tmp) / "model.onnx")
            report = verify_qonnx(path, quant, verify_images, progress=False)
        row["export_top1_agreement"] = report["top1_agreement"]
        row["export_max_abs_diff"] = report["max_abs_diff"]
    except FlowError as e:
        row["error"] = str(e)
    return row


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [f"# QAT bit-width sweep ({s['checkpoint']})", "",
             f"train images {s['train_images']}, test images {s['test_images']}, {s['epochs']} epoch(s) QAT, "
             f"lr {s['lr']}, seed {s['seed']}; float accuracy {result['float_accuracy']:.4f}", "",
             "| config | W (first/mid/last) | A | PTQ acc | QAT acc | QAT s | export top-1 agreement |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        bits = f"8/{r['weight_bits']}/{r['last_layer_weight_bits']}"
        if "error" in r:
            lines.append(f"| {r['config']} | {bits} | {r['act_bits']} | rejected: {r['error'].splitlines()[0]} "
                         "| | | |")
            continue
        lines.append(f"| {r['config']} | {bits} | {r['act_bits']} | {r['ptq_accuracy']:.4f} | "
                     f"{r['qat_accuracy']:.4f} | {r['qat_seconds']} | {r['export_top1_agreement']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="checkpoints/cnv-fashion-mnist.pt",
                   help="float checkpoint; 'fresh' = an untrained CNVLike (smoke test)")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {', '.join(CONFIGS)}")
    p.add_argument("--train-images", type=int, default=4000)
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--verify-images", type=int, default=32)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="build/bench/quant", help="writes quant.json and quant.md here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown:
        p.error(f"unknown config(s) {unknown}; known: {', '.join(CONFIGS)}")

    if args.checkpoint == "fresh":
        float_model = build_model("cnv").eval()
    else:
        float_model, _ = load_checkpoint(args.checkpoint)
    train = subset(load_dataset("fashion-mnist", "train"), args.train_images, seed=args.seed)
    test = subset(load_dataset("fashion-mnist", "test"), args.test_images, seed=args.seed)
    verify_images = subset(test, args.verify_images, seed=args.seed)
    result = {"settings": {k: v for k, v in vars(args).items()}, "float_accuracy": evaluate(float_model, test),
              "rows": []}
    for name in names:
        row = run_config(name, float_model, train, test, verify_images, args)
        result["rows"].append(row)
        print({k: (v[:100] if k == "error" else v) for k, v in row.items()}, flush=True)
    out = Path(args.out)
    write_json(out / "quant.json", result)
    with atomic_path(out / "quant.md") as tmp:
        tmp.write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
