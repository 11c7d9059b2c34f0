"""Can the default relevance trim reach >= 4x fewer MACs within 1 pt of the float net? One longer fine-tune.

    .venv/bin/python bench/trim_long.py                       # 25 % MACs, 3 epochs with distillation
    .venv/bin/python bench/trim_long.py --budget 0.25 --epochs 3 --distill 0.5 --steps 2

Trims the default checkpoint like the flow's trim stage (RelevanceConfig(), policy budget, the flow's default
allocation unless --allocation says otherwise), then
fine-tunes on the whole training set with the float net as the distillation teacher, and writes
bench/results/trim-long.json (+ .md) with the accuracy after trimming, after every epoch, and the gap to float.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trimflow.artifacts import atomic_path, write_json  # noqa: E402
from trimflow.config import FlowConfig  # noqa: E402
from trimflow.criteria import score  # noqa: E402
from trimflow.data import load_dataset, subset  # noqa: E402
from trimflow.graph import count_params_macs  # noqa: E402
from trimflow.models import load_checkpoint  # noqa: E402
from trimflow.relevance import RelevanceConfig  # noqa: E402
from trimflow.train import TrainConfig, evaluate, train  # noqa: E402
from trimflow.trim import TrimConfig, iterative_trim, trim_model  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="checkpoints/cnv-fashion-mnist.pt")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--budget", type=float, default=0.25, help="fraction of MACs kept")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--distill", type=float, default=0.5)
    p.add_argument("--augment", action="store_true")
    p.add_argument("--steps", type=int, default=1, help=">1: iterative trim, 1 epoch-share fine-tune per step")
    p.add_argument("--statistic", default=RelevanceConfig.statistic)
    p.add_argument("--weighting", default=RelevanceConfig.weighting)
    p.add_argument("--allocation", default=FlowConfig().trim.allocation, help="rank | sensitivity")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="bench/results/trim-long")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = load_checkpoint(args.checkpoint)
    model.eval()
    train_set = load_dataset("fashion-mnist", "train", args.data_dir)
    test_set = load_dataset("fashion-mnist", "test", args.data_dir)
    calib = subset(train_set, 2000, 0)
    rcfg = RelevanceConfig(statistic=args.statistic, weighting=args.weighting)
    tcfg = TrimConfig(policy="budget", budget=args.budget, budget_metric="macs", round_to=4, compensation="mean",
                      recalibrate_bn=True, allocation=args.allocation)
    ft = TrainConfig(epochs=1, lr=args.lr, augment=args.augment, distill_weight=args.distill, seed=0)
    start = time.perf_counter()
    result = {"args": vars(args), "relevance": dataclasses.asdict(rcfg), "trim": dataclasses.asdict(tcfg),
              "float": evaluate(model, test_set)}
    if args.steps > 1:  # the steps' fine-tunes are part of the schedule: the first epoch is split over them
        trimmed, _ = iterative_trim(model, lambda m: score(m, calib, "relevance", rcfg), tcfg, calib, train_set,
                                    ft, steps=args.steps, teacher=model)
        epochs_left = args.epochs - 1
    else:
        trimmed, _ = trim_model(model, score(model, calib, "relevance", rcfg), tcfg, calib)
        epochs_left = args.epochs
    p0, m0 = count_params_macs(model, calib.shape)
    p1, m1 = count_params_macs(trimmed, calib.shape)
    result.update(macs_kept=m1 / m0, params_kept=p1 / p0, macs=m1, params=p1, trimmed=evaluate(trimmed, test_set))
    print(result, flush=True)
    # one cosine schedule over the whole fine-tune, evaluated once at the end (per-epoch restarts would reset it)
    if epochs_left > 0:
        train(trimmed, train_set, dataclasses.replace(ft, epochs=epochs_left), teacher=model, desc="fine-tune")
    result["finetuned"] = evaluate(trimmed, test_set)
    result["gap_pt"] = round(100 * (result["float"] - result["finetuned"]), 2)
    result["seconds"] = round(time.perf_counter() - start, 1)
    out = Path(args.out)
    write_json(out.with_suffix(".json"), result)
    with atomic_path(out.with_suffix(".md")) as tmp:
        tmp.write_text(f"`bench/trim_long.py {' '.join(sys.argv[1:])}`: {result['macs_kept']:.3f} of the MACs "
                       f"({1 / result['macs_kept']:.2f}x fewer), {result['params_kept']:.3f} of the params; float "
                       f"{result['float']:.4f}, after trim {result['trimmed']:.4f}, after {args.epochs} epoch(s) "
                       f"fine-tune (distill {args.distill}) {result['finetuned']:.4f}: "
                       f"{-result['gap_pt']:+.2f} pt vs float\n")
    print(result, flush=True)


if __name__ == "__main__":
    main()
