"""python3 -m trimflow_runtime --package DIR (--camera [N] | --folder DIR | --npy FILE [--labels FILE])"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from trimflow_runtime import DeployError
from trimflow_runtime.accelerator import BACKENDS, open_accelerator
from trimflow_runtime.classify import classify
from trimflow_runtime.frames import PreprocessConfig, camera_frames, folder_frames, npy_frames
from trimflow_runtime.package import load_package


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m trimflow_runtime", description=__doc__)
    p.add_argument("--package", default=str(Path(__file__).resolve().parent.parent),
                   help="deployment package folder (default: the one this runtime was copied into)")
    p.add_argument("--board", help="trimflow board name this must run on (e.g. pynq-z2); checked against the package")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--camera", nargs="?", const="0", metavar="DEVICE", help="OpenCV camera index or URL")
    src.add_argument("--folder", help="folder of images (png/jpg/pgm/... or one .npy per image)")
    src.add_argument("--npy", help=".npy batch of uint8 images, (N, C, H, W) or (N, H, W)")
    p.add_argument("--labels", help=".npy of integer labels for --npy: accuracy mode")
    p.add_argument("--frames", type=int, help="stop after this many frames (default: all; camera: forever)")
    p.add_argument("--backend", default="auto", choices=("auto", *BACKENDS))
    p.add_argument("--batch", type=int, default=1, help="frames per accelerator call")
    p.add_argument("--resize", action="store_true", help="resize frames to the model's size (PIL bilinear) instead of failing; models trained on an "
                        "image folder with a size resize as training did without it")
    p.add_argument("--convert-channels", action="store_true", help="convert RGB<->gray instead of failing")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        pkg = load_package(args.package, board=args.board)
        if args.labels and not args.npy:
            raise DeployError("--labels needs --npy (labels are matched to the batch by position)")
        if args.camera is not None:
            device = int(args.camera) if args.camera.isdigit() else args.camera
            frames = camera_frames(device, args.frames)
        elif args.folder:
            frames = folder_frames(args.folder)
        else:
            frames = npy_frames(args.npy)
        if args.frames is not None and args.camera is None:
            import itertools
            frames = itertools.islice(frames, args.frames)
        classes = pkg.classes

        def show(name: str, top: int, scores: np.ndarray) -> None:
            if not args.quiet:
                label = f" {classes[top]}" if top < len(classes) else ""
                print(f"{name}: class {top}{label} (score {scores[top]:.3f})", flush=True)

        # only OpenCV's camera frames are BGR; files are read as RGB
        cfg = PreprocessConfig(resize=args.resize, convert_channels=args.convert_channels,
                               bgr=args.camera is not None)
        with open_accelerator(pkg, args.backend) as accel:
            result = classify(pkg, accel, frames, cfg, args.batch, show)
            print(f"{result.frames} frames on {accel.name} ({pkg.board}): {result.fps:.1f} fps end to end, "
                  f"{result.accel_fps:.1f} fps accelerator")
        if args.labels:
            labels = np.load(args.labels, allow_pickle=False).reshape(-1)
            if args.frames is not None:
                labels = labels[: args.frames]
            print(f"accuracy: {result.accuracy(labels):.4f} over {result.frames} labelled images")
        return 0
    except DeployError as e:
        print(f"trimflow_runtime: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
