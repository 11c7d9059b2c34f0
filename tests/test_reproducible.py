"""Two clean runs of the stages up to export, same inputs and seed, give byte-identical artifacts: every file of
every stage folder has the same sha256, except each stage's timing.json (wall times live there and nowhere else)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trimflow.artifacts import file_digest, read_json
from trimflow.stage_cache import TIMING_FILE

ROOT = Path(__file__).resolve().parent.parent

# every stage runs for real (the default sensitivity allocation too), on as few images as keeps it meaningful
SMALL = ["eval_images=50", "relevance.images=100", "trim.calib_images=50", "finetune.epochs=0.002",
         "quantize.train.epochs=0.002", "quantize.calibration_batches=1", "quantize.calibration_batch_size=16",
         "export.verify_images=8"]
# Wall-clock fields inside artifacts that the stage code (trimflow.relevance, trimflow.trim) still writes; each
# belongs in the stage's timing file. Only these may explain a difference, and only as an expected failure.
WALL_CLOCK_FIELDS = {"seconds"}


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): file_digest(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != TIMING_FILE and p.parent != root}


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in WALL_CLOCK_FIELDS}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _same_without_wall_clock(a: Path, b: Path) -> bool:
    if a.suffix == ".json":
        return _strip(read_json(a)) == _strip(read_json(b))
    if a.suffix == ".pt":
        pa, pb = (torch.load(p, map_location="cpu", weights_only=True) for p in (a, b))
        sa, sb = pa.pop("state_dict"), pb.pop("state_dict")
        return (sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
                and _strip(pa) == _strip(pb))
    return False


@pytest.mark.slow
@pytest.mark.timeout(3600)  # two runs of four stages: minutes on an idle 2-core machine, half an hour on a loaded one
def test_two_clean_runs_up_to_export_are_byte_identical(tmp_path):
    # two real `trimflow export` processes side by side: separate interpreters, nothing shared but the inputs
    procs = [subprocess.Popen([sys.executable, "-m", "trimflow.cli", "export", "--build-dir", str(tmp_path / name),
                               "--set", *SMALL], cwd=ROOT, stderr=subprocess.PIPE, text=True)
             for name in ("one", "two")]
    for proc in procs:
        _, err = proc.communicate(timeout=3000)
        assert proc.returncode == 0, err[-3000:]
    runs = [tmp_path / name / "pynq-z2" for name in ("one", "two")]
    first, second = (_digests(r) for r in runs)
    assert first.keys() == second.keys()
    assert {k.split("/")[0] for k in first} == {"relevance", "trim", "quantize", "export", ".cache"}
    assert all((r / s / TIMING_FILE).exists() for r in runs for s in ("relevance", "trim", "quantize", "export"))
    differ = sorted(k for k in first if first[k] != second[k])
    unexplained = [k for k in differ if not _same_without_wall_clock(runs[0] / k, runs[1] / k)]
    assert not unexplained, f"differ between two runs of the same inputs: {unexplained} (all that differ: {differ})"
    if differ:
        pytest.xfail(f"only wall-clock 'seconds' fields written by the stage code differ, in {differ} "
                     "(RelevanceScores.seconds in relevance.json; the trim report's sensitivity seconds in the "
                     "trimmed checkpoint's meta and trim/stage.json): they belong in timing.json")
