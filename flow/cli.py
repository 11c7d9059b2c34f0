"""`trimflow` command line: one sub-command per stage (each runs the pipeline up to it), plus build / boards."""

from __future__ import annotations

import argparse
import warnings
import sys
from pathlib import Path

from rich.console import Console

from trimflow import FlowError

STAGE_COMMANDS = {
    "relevance": "score every kernel by its activation over the representative set",
    "trim": "remove the least relevant kernels (and the inputs that consumed them)",
    "quantize": "convert to Brevitas and fine-tune (QAT) at low bit width",
    "export": "export QONNX and check it against the Brevitas forward",
    "compile": "FINN: streamline, convert to HW layers, fold, estimate, generate RTL/HLS",
    "simulate": "cycle-accurate Verilator simulation of the generated accelerator",
    "report": "write report.md / report.json and plots",
}


def _add_flow_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--board", default="pynq-z2", help="board name from boards/ (see `trimflow boards`)")
    p.add_argument("--config", help="YAML file overriding the default flow config")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override single config values, e.g. trim.keep=0.4 quantize.weight_bits=2")
    p.add_argument("--data-dir", help="folder with the dataset files (default: the dataset's usual places)")
    p.add_argument("--build-dir", default="build", help="root of the build folders (default: build/)")
    p.add_argument("--target-fps", type=float, help="throughput the folding must reach")
    p.add_argument("--force", nargs="*", default=[], metavar="STAGE", help="rerun these stages even if cached")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trimflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="run every stage for a board and write the report")
    _add_flow_args(b)
    for name, text in STAGE_COMMANDS.items():
        _add_flow_args(sub.add_parser(name, help=text))
    sub.add_parser("boards", help="list the boards and their resource limits")
    pre = sub.add_parser("pretrain", help="train a zoo model from scratch with the recorded recipe")
    pre.add_argument("--out", default="checkpoints/cnv-fashion-mnist.pt")
    pre.add_argument("--config", help="YAML with a PretrainConfig (model, dataset, train)")
    pre.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    pre.add_argument("--data-dir")
    imp = sub.add_parser("import", help="turn a PyTorch/TorchScript/ONNX model into a trimflow checkpoint")
    from trimflow.models.importers import add_cli_arguments
    add_cli_arguments(imp)
    cfg = sub.add_parser("config", help="print the effective flow config as YAML")
    _add_flow_args(cfg)
    return parser


def _flow_config(args):
    from trimflow.config import load_flow_config
    return load_flow_config(args.config, args.set, data_dir=args.data_dir, target_fps=args.target_fps)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Brevitas warns on import about an optional CUDA kernel package that CPU-only users never need.
    warnings.filterwarnings("ignore", message="fast_hadamard_transform")
    console = Console(stderr=True)
    try:
        if args.command == "boards":
            from trimflow.boards import format_boards_table
            print(format_boards_table())
        elif args.command == "pretrain":
            from trimflow.configs import from_dict, load_yaml, merge, parse_set
            from trimflow.pretrain import PretrainConfig, pretrain
            data = merge(load_yaml(args.config) if args.config else {}, parse_set(args.set))
            info = pretrain(from_dict(PretrainConfig, data, "pretrain"), args.out, args.data_dir)
            console.print(f"test accuracy {info['test_accuracy']:.4f} → {args.out}")
        elif args.command == "import":
            from trimflow.models.importers import config_from_cli, import_model
            info = import_model(config_from_cli(args), args.out)
            console.print(f"imported {args.source} → {args.out} ({info.get('arch', {}).get('name', '?')})")
        elif args.command == "config":
            import yaml
            from trimflow.configs import to_dict
            print(yaml.safe_dump(to_dict(_flow_config(args)), sort_keys=False))
        else:
            from trimflow.build import run_flow
            until = None if args.command == "build" else args.command
            result = run_flow(_flow_config(args), args.board, Path(args.build_dir), until=until,
                              force=args.force, console=console)
            if result.report_path is not None:
                console.print(f"[bold]report:[/bold] {result.report_path}")
        return 0
    except FlowError as e:
        print(f"trimflow: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("trimflow: interrupted; completed stages are cached, rerun the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
