"""`trimflow` command line: one sub-command per stage (each runs the pipeline up to it), plus build / boards."""

from __future__ import annotations

import argparse
import errno
import signal
import warnings
import sys
from pathlib import Path

from rich.console import Console

from trimflow import FlowError, __version__, first_line

STAGE_COMMANDS = {
    "relevance": "score every kernel by its activation over the representative set",
    "trim": "remove the least relevant kernels (and the inputs that consumed them)",
    "quantize": "convert to Brevitas and fine-tune (QAT) at low bit width",
    "export": "export QONNX and check it against the Brevitas forward",
    "compile": "FINN: streamline, convert to HW layers, fold, estimate, generate RTL/HLS",
    "simulate": "cycle-accurate Verilator simulation of the generated accelerator",
    "report": "write report.md / report.json and plots",
}


def _add_output_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("-q", "--quiet", action="store_true", help="print only warnings, errors and the result "
                   "(build/<board>/build.log still gets everything)")
    g.add_argument("-v", "--verbose", action="count", default=0, help="also debug lines, and tracebacks of errors")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    """What makes the effective flow config (`trimflow config` takes only these)."""
    p.add_argument("--config", help="YAML file overriding the default flow config")
    # action="extend": a second --set adds to the first instead of replacing it
    p.add_argument("--set", action="extend", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override single config values, e.g. trim.budget=0.4 quantize.weight_bits=2 "
                        "(repeatable; every key: docs/config.md or `trimflow config --explain KEY`)")
    p.add_argument("--data-dir", help="folder with the dataset files (default: the dataset's usual places)")
    p.add_argument("--target-fps", type=float, help="throughput to reach: the trim budget is chosen for it "
                   "(hwtrim.target_fps) and the folding aims for it (compile.folding_fps)")


def _add_flow_args(p: argparse.ArgumentParser) -> None:
    _add_output_args(p)
    p.add_argument("--board", default="pynq-z2", help="board name from boards/ (see `trimflow boards`)")
    _add_config_args(p)
    p.add_argument("--build-dir", default="build", help="root of the build folders (default: build/)")
    p.add_argument("--force", action="extend", nargs="*", default=[], metavar="STAGE",
                   help="rerun these stages even if cached (and what depends on them)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trimflow", description=__doc__)
    parser.add_argument("--version", action="version", version=f"trimflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="run every stage for a board and write the report")
    _add_flow_args(b)
    for name, text in STAGE_COMMANDS.items():
        _add_flow_args(sub.add_parser(name, help=text))
    sub.add_parser("boards", help="list the boards and their resource limits")
    pre = sub.add_parser("pretrain", help="train a zoo model from scratch with the recorded recipe")
    pre.add_argument("--out", default="checkpoints/cnv-fashion-mnist.pt")
    pre.add_argument("--config", help="YAML with a PretrainConfig (model, dataset, train)")
    pre.add_argument("--set", action="extend", nargs="*", default=[], metavar="KEY=VALUE")
    pre.add_argument("--data-dir")
    imp = sub.add_parser("import", help="turn a PyTorch/TorchScript/ONNX model into a trimflow checkpoint")
    from trimflow.models.importers import add_cli_arguments
    add_cli_arguments(imp)
    cfg = sub.add_parser("config", help="print the effective flow config as YAML")
    _add_config_args(cfg)  # no board, build folder, stages or output level: it only prints
    cfg.add_argument("--explain", metavar="KEY", help="print one key's type, default, allowed values and meaning "
                     "(a section such as `trim` lists its keys); every key: docs/config.md")
    from trimflow.sweep.command import add_arguments as add_sweep_arguments
    add_sweep_arguments(sub.add_parser("sweep", help="trim budget × bit width × board sweep on Ray, Pareto front"))
    return parser


def _flow_config(args):
    from trimflow.config import load_flow_config
    return load_flow_config(args.config, args.set, data_dir=args.data_dir, target_fps=args.target_fps)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Brevitas warns on import about an optional CUDA kernel package that CPU-only users never need.
    warnings.filterwarnings("ignore", message="fast_hadamard_transform")
    console = Console(stderr=True)
    from trimflow.logs import install
    restore_output = install(-1 if getattr(args, "quiet", False) else getattr(args, "verbose", 0))
    # SIGTERM (kill, a scheduler, `timeout`) unwinds like Ctrl-C, so the temporary stage folder is removed
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if _main_thread() else None
    try:
        if args.command == "boards":
            from trimflow.boards import format_boards_table
            print(format_boards_table())
        elif args.command == "pretrain":
            from trimflow.config_parsing import from_dict, load_yaml, merge, parse_set
            from trimflow.pretrain import PretrainConfig, pretrain
            data = merge(load_yaml(args.config) if args.config else {}, parse_set(args.set))
            info = pretrain(from_dict(PretrainConfig, data, "pretrain"), args.out, args.data_dir)
            console.print(f"test accuracy {info['test_accuracy']:.4f} → {args.out}")
        elif args.command == "import":
            from trimflow.models.importers import config_from_cli, import_model, import_summary
            info = import_model(config_from_cli(args), args.out)
            console.print(import_summary(info, args.out), soft_wrap=True, highlight=False)  # one line
        elif args.command == "sweep":
            from trimflow.sweep.command import run as run_sweep_command
            run_sweep_command(args, console)
        elif args.command == "config" and args.explain:
            from trimflow.config_docs import explain
            print(explain(args.explain))
        elif args.command == "config":
            import yaml
            from trimflow.config_parsing import to_dict
            print(yaml.safe_dump(to_dict(_flow_config(args)), sort_keys=False))
        else:
            from trimflow.build import run_flow
            until = None if args.command == "build" else args.command
            result = run_flow(_flow_config(args), args.board, Path(args.build_dir), until=until,
                              force=args.force, console=console)
            if result.report_path is not None:
                print(f"report: {result.report_path}")  # stdout: the result, shown under -q too
        return 0
    except FlowError as e:
        print(f"trimflow: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        what = "terminated (SIGTERM)" if isinstance(e, _Terminated) else "interrupted"
        print(f"trimflow: {what}; completed stages are cached, rerun the same command to resume",
              file=sys.stderr)
        return 128 + signal.SIGTERM if isinstance(e, _Terminated) else 130
    except OSError as e:
        # a path the user gave that is not what it should be (a folder for a file, a file for a folder, ...)
        if _verbose(args):
            raise
        from trimflow.artifacts import storage_problem
        # a permission error here may be a read as well as a write: only name what is known
        message = storage_problem(e) if e.errno not in (errno.EACCES, errno.EPERM) else None
        where = f" {e.filename}" if e.filename else ""
        message = message or f"cannot use{where}: {e.strerror or e}; check that path and its permissions"
        print(f"trimflow: error: {message}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug: one line by default, the traceback with -v
        if _verbose(args):
            raise
        print(f"trimflow: internal error: {type(e).__name__}: {first_line(e)} "
              "(rerun with -v for the traceback, and please report it)", file=sys.stderr)
        return 1
    finally:
        restore_output()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class _Terminated(KeyboardInterrupt):
    pass


def _on_sigterm(_signum, _frame):
    raise _Terminated()


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def _verbose(args) -> bool:
    return bool(getattr(args, "verbose", 0))


if __name__ == "__main__":
    sys.exit(main())
