"""`trimflow sweep`: the command-line face of trimflow.sweep (arguments, and what the command prints/writes)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console

from trimflow import FlowError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", nargs="?", help="sweep YAML (axes, config, set, until, ...); flags below override it")
    p.add_argument("--out", default="build/sweep", help="sweep folder (trials, results, front); default build/sweep")
    p.add_argument("--budgets", nargs="+", type=float, metavar="B", help="fractions of the MACs kept (1.0 = untrimmed)")
    p.add_argument("--bits", nargs="+", metavar="WxAy", help="weight/activation bits, e.g. W8A8 W4A4 W2A2")
    p.add_argument("--boards", nargs="+", metavar="BOARD", help="boards from boards/ (see `trimflow boards`)")
    p.add_argument("--target-fps", nargs="+", metavar="FPS",
                   help="throughput targets (trim until reached); 'none' = fastest folding at the fixed budget")
    p.add_argument("--criteria", nargs="+", metavar="NAME", help="trim criteria (trimflow.criteria)")
    p.add_argument("--config", help="base flow config YAML every trial starts from")
    p.add_argument("--set", action="extend", nargs="*", default=None, metavar="KEY=VALUE",
                   help="overrides of the base config (repeatable)")
    p.add_argument("--data-dir", help="dataset folder (must be at the same path on every node)")
    p.add_argument("--simulate", action="store_true", help="also run the Verilator simulation of every trial")
    p.add_argument("--address", help="join a running Ray cluster (host:port); default: start a local one")
    p.add_argument("--workers", type=int, help="CPUs of the local cluster (default: every core)")
    p.add_argument("--synth", type=int, metavar="K", help="then synthesise the front's K best designs (Vivado)")
    p.add_argument("--retry-failed", action="store_true",
                   help="run the trials recorded as failed again (the stored successful ones are kept)")


def spec_overrides(args: argparse.Namespace) -> dict[str, Any]:
    axes: dict[str, Any] = {}
    for flag, key in (("budgets", "budget"), ("bits", "bits"), ("boards", "board"), ("criteria", "criterion")):
        if getattr(args, flag):
            axes[key] = list(getattr(args, flag))
    if args.target_fps:
        axes["target_fps"] = [_fps(v) for v in args.target_fps]
    out: dict[str, Any] = {"axes": axes} if axes else {}
    for key in ("config", "data_dir"):
        if getattr(args, key):
            out[key] = getattr(args, key)
    if args.set is not None:
        out["set"] = list(args.set)
    if args.simulate:
        out["until"] = "simulate"
    return out


def _fps(text: str) -> float | None:
    if text.lower() in ("none", "null"):
        return None
    try:
        return float(text)
    except ValueError:
        raise FlowError(f"--target-fps {text!r}: expected a number or 'none'") from None


def run(args: argparse.Namespace, console: Console) -> None:
    from trimflow.sweep.engine import run_sweep, synthesize_front
    from trimflow.sweep.front import pareto_front, write_results
    from trimflow.sweep.spec import load_spec

    if args.synth is not None and args.synth < 1:
        raise FlowError(f"--synth {args.synth}: the number of front designs to synthesise must be >= 1")
    spec = load_spec(args.spec, spec_overrides(args))
    result = run_sweep(spec, Path(args.out), address=args.address, workers=args.workers, console=console,
                       retry_failed=args.retry_failed)
    data = write_results(result.out, result.records, extra={"wall_s": result.wall_s, "cpus": result.cpus,
                                                            "reused": result.reused})
    console.print(f"[bold]sweep:[/bold] {len(data['front'])} of {len(result.records)} trials on the front → "
                  f"{result.out / 'sweep.md'}")
    if args.synth:
        synthesize_front(result, pareto_front(result.records), args.synth, args.address, args.workers, console)
