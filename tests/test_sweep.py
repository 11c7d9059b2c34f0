"""Design-space sweeps (trimflow.sweep): the grid, the Pareto front, the folder lock (quick), and real Ray clusters on
127.0.0.1 running real trials of a tiny net, no mocks (slow): stage sharing, a trial that does not fit, resume,
--synth without Vivado, and a worker killed mid-trial."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from trimflow import FlowError
from trimflow.finn.adapter import vivado_available
from trimflow.sweep import load_spec, pareto_front, trials
from trimflow.sweep.engine import run_sweep
from trimflow.sweep.front import stage_sharing
from trimflow.sweep.spec import base_config_dict, trial_config
from trimflow.sweep.trials import read_attempts

VENV_BIN = Path(sys.executable).parent
# tiny everything: each trial is relevance → trim → QAT → export → FINN compile of an 8/8-kernel net
TINY = ["eval_images=100", "relevance.images=100", "trim.calib_images=100", "trim.allocation=rank",
        "finetune.epochs=0.005", "quantize.train.epochs=0.005", "quantize.calibration_batches=1",
        "quantize.calibration_batch_size=32", "export.verify_images=8", "compile.verify_images=2",
        "compile.pareto_points=0", "compile.folding=auto", "compile.verify=false"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from trimflow.models import build_model, save_checkpoint
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    model = build_model("cnv", widths=(8, 8), strides=(2, 2)).eval()
    save_checkpoint(path, model, {"name": "cnv", "kwargs": {"widths": [8, 8], "strides": [2, 2]}})
    return path


def _spec_file(tmp_path: Path, model: Path, axes: dict, **extra) -> Path:
    # accuracy_floor 0: the untrained tiny net is near chance, which is not a collapse here
    spec = {"axes": axes, "set": [f"model={model}", *TINY], "accuracy_floor": 0.0, **extra}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _sweep_cli(*args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "trimflow"), "sweep", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def _brute_force_front(records: list[dict]) -> set[str]:
    ok = [r for r in records if r["status"] == "ok"]

    def beaten(r):  # by a trial of the same board: each board has its own front
        return any(o is not r and o.get("board") == r.get("board") and o["accuracy"] >= r["accuracy"] and o["fps"] >= r["fps"]
                   and o["binding_share"] <= r["binding_share"]
                   and (o["accuracy"], o["fps"], o["binding_share"]) != (r["accuracy"], r["fps"], r["binding_share"])
                   for o in ok)

    return {r["id"] for r in ok if not beaten(r)}


# ------------------------------------------------------------------ quick: the grid and the front


def test_grid_has_one_trial_per_combination_with_its_settings():
    spec = load_spec(None, {"axes": {"budget": [1.0, 0.5], "bits": ["W8A8", "W2A2"], "board": ["pynq-z2", "kv260"],
                                     "target_fps": [None, 2000]}})
    grid = trials(spec)
    assert len(grid) == 16 and len({t.id for t in grid}) == 16
    base = base_config_dict(spec)
    t = next(t for t in grid if t.id == "kv260-b0.50-W2A2-fps2000")
    cfg = trial_config(base, t)
    assert (cfg.quantize.weight_bits, cfg.quantize.act_bits, cfg.trim.budget) == (2, 2, 0.5)
    assert cfg.hwtrim.target_fps == 2000 and cfg.compile.folding_fps == 2000
    assert cfg.hwtrim.budgets[0] == 0.5 and max(cfg.hwtrim.budgets) == 0.5  # the search starts at the budget
    plain = trial_config(base, next(t for t in grid if t.id == "kv260-b0.50-W2A2"))
    assert plain.hwtrim.target_fps is None and plain.compile.folding_fps is None
    assert Path(base["model"]).is_absolute()  # workers may start elsewhere


@pytest.mark.parametrize("overrides, message", [
    ({"axes": {"bits": ["W4"]}}, "axes.bits: 'W4' is not of the form"),
    ({"axes": {"budget": [1.5]}}, "axes.budget: 1.5 is not a fraction"),
    ({"axes": {"board": []}}, "axes.board: needs at least one value"),
    ({"axes": {"bitz": ["W4A4"]}}, "unknown key(s) bitz"),
    ({"until": "synth"}, "until: 'synth' is not one of compile, simulate"),
])
def test_bad_sweep_input_names_the_key(overrides, message):
    with pytest.raises(FlowError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_spec(None, overrides)


def test_front_is_the_non_dominated_set():
    def rec(i, acc, fps, share, status="ok"):
        return {"id": f"t{i}", "status": status, "accuracy": acc, "fps": fps, "binding_share": share}

    records = [rec(0, 0.90, 1000, 0.5), rec(1, 0.90, 1000, 0.6),  # 1: dominated by 0 (more of the board)
               rec(2, 0.80, 5000, 0.9), rec(3, 0.95, 100, 0.2), rec(4, 0.85, 900, 0.5),  # 4: dominated by 0
               rec(5, 0.99, 9999, 0.1, status="failed"),  # failed trials never count
               rec(6, 0.90, 1000, 0.5)]  # equal to 0: neither dominates, both stay
    front = pareto_front(records)
    assert [r["id"] for r in front] == ["t3", "t0", "t6", "t2"]  # best accuracy first
    assert {r["id"] for r in front} == _brute_force_front(records)
    # each board has its own front: a small board's design beaten by a larger board's stays on its front
    small = {**rec(7, 0.90, 500, 0.9), "board": "small"}
    front = pareto_front([*({**r, "board": "big"} for r in records), small])
    assert "t7" in {r["id"] for r in front} and len(front) == 5
    assert {r["id"] for r in front} == _brute_force_front([*({**r, "board": "big"} for r in records), small])


def test_stage_sharing_counts_each_shared_build_once():
    def rec(i, rel_key, trim_key):
        return {"id": f"t{i}", "status": "ok", "stages": {"relevance": {"key": rel_key, "seconds": 10.0},
                                                         "trim": {"key": trim_key, "seconds": 30.0},
                                                         "quantize": {"key": f"q{i}", "seconds": 50.0}}}

    # 4 trials, one relevance build, two trim builds (two budgets × two bit widths)
    shared = stage_sharing([rec(0, "r", "a"), rec(1, "r", "a"), rec(2, "r", "b"), rec(3, "r", "b")])
    assert shared == {"without_sharing_s": 160.0, "with_sharing_s": 70.0, "saved_s": 90.0, "shared_builds": 3}


def test_a_second_sweep_on_the_same_folder_is_refused(tmp_path):
    from trimflow.build_lock import build_lock
    with build_lock(tmp_path):  # as a running sweep holds it
        with pytest.raises(FlowError, match=f"{tmp_path} is in use by pid {os.getpid()}"):
            run_sweep(load_spec(None, {}), tmp_path)


# ------------------------------------------------------------------ a real local cluster


def test_one_trial_on_a_local_cluster_resumes_and_retries_failures(tmp_path, tiny_model):
    # The quick one of the real-cluster tests (a local Ray cluster of 1 CPU started by the command itself, one
    # trial of the tiny net); the two-trial and the killed-worker ones below are slow.
    spec = _spec_file(tmp_path, tiny_model, {"budget": [0.5], "bits": ["W4A4"], "board": ["pynq-z2"]})
    out = tmp_path / "sweep"
    run = _sweep_cli(str(spec), "--out", str(out), "--workers", "1")
    assert run.returncode == 0, run.stderr[-3000:]
    record_path = out / "trials" / "pynq-z2-b0.50-W4A4" / "trial.json"
    first = json.loads(record_path.read_text())
    assert first["status"] == "ok" and first["fps"] > 0 and 0 < first["binding_share"] <= 1
    # stored: nothing runs, even with --retry-failed (the trial did not fail)
    again = _sweep_cli(str(spec), "--out", str(out), "--workers", "1", "--retry-failed")
    assert again.returncode == 0 and "1 stored, 0 to run" in again.stderr
    # a trial stored as failed runs again with --retry-failed (its stages come from the cache)
    record_path.write_text(json.dumps({**first, "status": "failed", "reason": "made up by the test"}))
    plain = _sweep_cli(str(spec), "--out", str(out), "--workers", "1")
    assert "1 stored, 0 to run" in plain.stderr
    retried = _sweep_cli(str(spec), "--out", str(out), "--workers", "1", "--retry-failed")
    assert retried.returncode == 0 and "0 stored, 1 to run" in retried.stderr, retried.stderr[-3000:]
    second = json.loads(record_path.read_text())
    assert second["status"] == "ok" and second["attempt"] != first["attempt"]
    assert all(st["cached"] for st in second["stages"].values())


# slow: 105-197 s on the shared 2-core machine (load 10-17), and under load above ~20 Ray's fixed 30 s raylet start-up
# budget runs out (trimflow then stops with one line, after 3 tries)
@pytest.mark.slow
def test_local_cluster_sweep_shares_stages_records_failures_and_resumes(tmp_path, tiny_model):
    board = yaml.safe_load(open("boards/zybo-z7-10.yaml"))
    board.update(name="tiny-board", capacity={"LUT": 500, "FF": 1000, "BRAM18": 2, "DSP": 1, "URAM": 0},
                 shell_overhead={"LUT": 0, "FF": 0, "BRAM18": 0, "DSP": 0, "URAM": 0})
    board_file = tmp_path / "tiny-board.yaml"
    board_file.write_text(yaml.safe_dump(board))
    spec = _spec_file(tmp_path, tiny_model, {"budget": [0.5], "bits": ["W4A4"], "board": ["pynq-z2", str(board_file)]})
    out = tmp_path / "sweep"
    run = _sweep_cli(str(spec), "--out", str(out), "--workers", "2")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 shared stage builds for 2 trials" in run.stderr  # one relevance, one trim
    results = json.loads((out / "results.json").read_text())
    by_id = {r["id"]: r for r in results["trials"]}
    ok, failed = by_id["pynq-z2-b0.50-W4A4"], by_id["tiny-board-b0.50-W4A4"]
    assert ok["status"] == "ok" and 0 < ok["binding_share"] <= 1 and ok["fps"] > 0
    # the design does not fit the tiny board: recorded with the reason, and the sweep went on
    assert failed["status"] == "failed" and "does not fit board tiny-board" in failed["reason"]
    # both trials took relevance and trim from the one shared build (same cache keys, stage folders copied)
    assert ok["stages"]["relevance"]["cached"] and ok["stages"]["trim"]["cached"]
    assert not ok["stages"]["quantize"]["cached"]
    assert results["front"] == ["pynq-z2-b0.50-W4A4"]
    assert (out / "sweep.md").read_text().count("make synth BOARD=pynq-z2") == 1
    assert (out / "front-fps.png").stat().st_size > 0 and (out / "front-lut.png").stat().st_size > 0
    # the trial folder is a normal build folder: `trimflow build --build-dir` on it reuses every stage
    cfg_file = out / "trials" / ok["id"] / "config.yaml"
    from trimflow.config import load_flow_config
    from trimflow.sweep.trials import stage_keys
    assert ok["root"] == str(out / "trials" / ok["id"] / "pynq-z2")
    keys = stage_keys(load_flow_config(cfg_file), "pynq-z2", Path(ok["root"]), "compile")
    assert keys["compile"] == ok["stages"]["compile"]["key"]

    # resumes: both records are reused (no cluster starts); --synth without Vivado says so and stops before it
    again = _sweep_cli(str(spec), "--out", str(out), "--workers", "2", "--synth", "1")
    assert "2 stored, 0 to run" in again.stderr
    if not vivado_available():
        assert again.returncode == 2 and "Vivado is not on this machine" in again.stderr
        assert f"make synth BOARD=pynq-z2 CONFIG={cfg_file}" in again.stderr
        assert not (Path(ok["root"]) / "synth").exists()
    for trial_id in by_id:
        assert [a["event"] for a in read_attempts(out / "trials" / trial_id)] == ["start", "done"]


# ------------------------------------------------------------------ a head and a second worker node, one killed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def two_node_cluster(tmp_path):
    """`ray start --head` and a second `ray start --address` node, 1 CPU each, on 127.0.0.1; each in its own
    process group, which the teardown ends (by group id: nothing else on the machine is touched)."""
    import shutil
    import tempfile
    ray = str(VENV_BIN / "ray")
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run([ray, "get-auth-token", "--generate"], env=env, capture_output=True, timeout=60)
    # Ray's unix sockets live under the temp dir, and a socket path must stay under 108 bytes
    temp_dir = tempfile.mkdtemp(prefix="tf-ray-", dir="/tmp")
    address = f"127.0.0.1:{_free_port()}"
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--block", "--disable-usage-stats"]
    procs: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> None:
        log = open(tmp_path / f"ray-{name}.log", "w")
        procs.append(subprocess.Popen([ray, "start", *args, *common], env=env, start_new_session=True,
                                      stdout=log, stderr=subprocess.STDOUT))

    def wait_for(what: str, ready) -> None:
        deadline = time.time() + 180
        while True:
            status = subprocess.run([ray, "status", "--address", address], env=env, capture_output=True, text=True,
                                    timeout=60)
            if ready(status):
                return
            dead = [p for p in procs if p.poll() is not None]
            assert not dead and time.time() < deadline, (
                f"{what}: " + " | ".join(f.read_text()[-1500:] for f in tmp_path.glob("ray-*.log")))
            time.sleep(2)

    try:
        start("head", "--head", "--port", address.split(":")[1], "--temp-dir", temp_dir, "--include-dashboard", "false")
        wait_for("the Ray head did not come up", lambda s: s.returncode == 0)
        start("worker", "--address", address)
        wait_for("the second Ray node did not join", lambda s: "/2.0 CPU" in s.stdout)
        yield address, env
    finally:
        for p in reversed(procs):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    break
                time.sleep(3 if sig == signal.SIGTERM else 0)
            p.wait(timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_two_node_cluster_survives_a_killed_worker(tmp_path, tiny_model, two_node_cluster):
    address, env = two_node_cluster
    spec = _spec_file(tmp_path, tiny_model, {"budget": [1.0, 0.5], "bits": ["W4A4", "W2A2"], "board": ["pynq-z2"]})
    out = tmp_path / "sweep"
    killed: list[dict] = []

    def kill_first_trial_worker():
        # wait until a trial has run a few seconds (past the shared stages, into its own), then SIGKILL its worker
        deadline = time.time() + 600
        while time.time() < deadline and not killed:
            for trial_dir in sorted((out / "trials").glob("*")) if (out / "trials").exists() else []:
                events = read_attempts(trial_dir)
                if events and events[-1]["event"] == "start" and time.time() - events[-1]["time"] > 3:
                    os.kill(events[-1]["pid"], signal.SIGKILL)
                    killed.append({"trial": trial_dir.name, **events[-1]})
                    return
            time.sleep(0.3)

    watcher = threading.Thread(target=kill_first_trial_worker, daemon=True)
    watcher.start()
    run = _sweep_cli(str(spec), "--out", str(out), "--address", address, env=env)
    watcher.join(timeout=5)
    assert run.returncode == 0, run.stderr[-3000:]
    assert killed, "no trial was running long enough to be killed"
    results = json.loads((out / "results.json").read_text())
    records = results["trials"]
    # every trial completed, and none ran twice to completion
    assert len(records) == 4 and all(r["status"] == "ok" for r in records), [r.get("reason") for r in records]
    for r in records:
        events = read_attempts(out / "trials" / r["id"])
        assert [e["event"] for e in events].count("done") == 1, (r["id"], events)
        assert r["attempt"] == next(e["attempt"] for e in events if e["event"] == "done")
    # the killed trial was retried by Ray: a second attempt, in another worker process
    retried = read_attempts(out / "trials" / killed[0]["trial"])
    starts = [e for e in retried if e["event"] == "start"]
    assert len(starts) >= 2 and starts[0]["pid"] == killed[0]["pid"] != starts[-1]["pid"]
    # both nodes ran trials
    assert len({e["node"] for r in records for e in read_attempts(out / "trials" / r["id"])}) == 2
    # the front is the non-dominated set of the recorded trials
    assert set(results["front"]) == _brute_force_front(records)
