"""Accuracy after trimming, per criterion x MAC budget, with/without compensation and BN recalibration.

    .venv/bin/python bench/trim.py                                   # small settings, a few minutes on 2 cores
    .venv/bin/python bench/trim.py --budgets 0.3 0.5 0.7 --finetune-epochs 1 --train-images 60000

Each row: the criterion, the MAC budget, kept MACs/params, accuracy right after trimming (plain, mean
compensation, BN recalibration, both) and, if --finetune-epochs > 0, after an identical short fine-tune of the
compensated + recalibrated model. Writes JSON and a markdown table next to each other.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flow import FlowError  # noqa: E402
from flow.artifacts import atomic_path, write_json  # noqa: E402
from flow.criteria import CRITERIA, score  # noqa: E402
from flow.data import load_dataset, subset  # noqa: E402
from flow.models import load_checkpoint  # noqa: E402
from flow.relevance import RelevanceConfig  # noqa: E402
from flow.train import TrainConfig, evaluate, train  # noqa: E402
from flow.trim import TrimConfig, trim_model  # noqa: E402

VARIANTS = {"plain": (False, False), "compensated": (True, False), "recalibrated": (False, True),
            "both": (True, True)}


def run(args) -> list[dict]:
    model, _ = load_checkpoint(args.checkpoint)
    train_set = subset(load_dataset("fashion-mnist", "train", args.data_dir), args.train_images, args.seed)
    test_set = subset(load_dataset("fashion-mnist", "test", args.data_dir), args.test_images, args.seed)
    calib = subset(train_set, args.calib_images, args.seed)
    rows = [{"criterion": "none", "budget": 1.0, "plain": evaluate(model, test_set)}]
    for criterion in args.criteria:
        start = time.perf_counter()
        scores = score(model, calib, criterion, RelevanceConfig(images=args.calib_images, seed=args.seed,
                                                                statistic=args.statistic, where=args.where))
        score_s = time.perf_counter() - start
        for budget in args.budgets:
            row = {"criterion": criterion, "budget": budget, "score_seconds": round(score_s, 2)}
            try:
                for variant, (comp, recal) in VARIANTS.items():
                    cfg = TrimConfig(criterion=criterion, policy=args.policy, budget=budget, keep=budget,
                                     budget_metric="macs", round_to=args.round_to, normalize=args.normalize,
                                     compensate=comp, recalibrate_bn=recal, calib_images=args.calib_images, seed=args.seed)
                    trimmed, report = trim_model(model, scores, cfg, calib)
                    row[variant] = evaluate(trimmed, test_set)
                row["macs_kept"] = round(report.macs_after / report.macs_before, 4)
                row["params_kept"] = round(report.params_after / report.params_before, 4)
                row["kept"] = {layer["name"]: layer["kept"] for layer in report.layers}
                if args.finetune_epochs > 0:
                    tcfg = TrainConfig(epochs=args.finetune_epochs, lr=args.lr, seed=args.seed)
                    train(trimmed, train_set, tcfg, desc=f"finetune {criterion} {budget}")
                    row["finetuned"] = evaluate(trimmed, test_set)
            except FlowError as e:
                row["error"] = str(e)
            print({k: v for k, v in row.items() if k != "kept"}, flush=True)
            rows.append(row)
    return rows


def markdown(rows: list[dict], args) -> str:
    cols = ["criterion", "budget", "macs_kept", "params_kept"] + list(VARIANTS) + \
        (["finetuned"] if args.finetune_epochs > 0 else [])
    lines = [f"Trim benchmark: policy={args.policy}, normalize={args.normalize}, relevance={args.statistic}@"
             f"{args.where}, {args.test_images} test images, "
             f"{args.calib_images} calibration images, fine-tune {args.finetune_epochs} epoch(s) on "
             f"{args.train_images} images", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:.4f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + (f" error: {r['error']}" if "error" in r else "") + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="checkpoints/cnv-fashion-mnist.pt")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--criteria", nargs="+", default=["relevance", "l1", "random"], choices=CRITERIA)
    p.add_argument("--budgets", nargs="+", type=float, default=[0.5], help="fraction of MACs kept")
    p.add_argument("--policy", default="budget", choices=["budget", "uniform", "global"],
                   help="uniform/global read --budgets as the kernel keep ratio")
    p.add_argument("--statistic", default="mean", help="relevance statistic (flow.relevance.STATISTICS)")
    p.add_argument("--where", default="post_act", help="where relevance reads activations")
    p.add_argument("--round-to", type=int, default=1)
    p.add_argument("--normalize", default="rank", choices=["none", "l2", "max", "rank"],
                   help="how budget/global compare scores across layers")
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--calib-images", type=int, default=2000)
    p.add_argument("--train-images", type=int, default=10000)
    p.add_argument("--finetune-epochs", type=float, default=0.0)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="build/bench/trim")
    args = p.parse_args()
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    rows = run(args)
    out = Path(args.out)
    write_json(out.with_suffix(".json"), {"args": vars(args), "rows": rows})
    with atomic_path(out.with_suffix(".md")) as tmp:
        tmp.write_text(markdown(rows, args))
    print(markdown(rows, args))


if __name__ == "__main__":
    main()
