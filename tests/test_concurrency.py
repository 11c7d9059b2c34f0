"""Two builds into one build directory: the second is refused with a message naming the first, never interleaved;
a lock left by a killed build is taken over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

from trimflow import FlowError
from trimflow.build_lock import HOLDER_FILE, LOCK_FILE
from trimflow.cli import main
from trimflow.stage_cache import Pipeline, StageSpec

ROOT = Path(__file__).resolve().parent.parent


def _slow_stages(tag: str, started: threading.Event | None = None, release: threading.Event | None = None):
    def first(ctx, cfg):
        if started is not None:
            started.set()
            assert release.wait(60)
        (ctx.out_dir / "who.txt").write_text(tag)
        return {"tag": tag}

    def second(ctx, cfg):
        (ctx.out_dir / "who.txt").write_text(tag + "/" + (ctx.inputs["a"] / "who.txt").read_text())
        return {"tag": tag}

    return [StageSpec("a", first, config=tag), StageSpec("b", second, config=tag, deps=("a",))]


def test_second_build_into_a_locked_directory_is_refused_and_nothing_interleaves(tmp_path):
    started, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def first_build():
        try:
            Pipeline(tmp_path, _slow_stages("first", started, release), Console(quiet=True)).run()
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    worker = threading.Thread(target=first_build)
    worker.start()
    assert started.wait(60)
    holder = json.loads((tmp_path / HOLDER_FILE).read_text())
    assert holder["pid"] == os.getpid()
    with pytest.raises(FlowError, match=rf"build directory {tmp_path} is in use by pid {os.getpid()} .*wait for"):
        Pipeline(tmp_path, _slow_stages("second"), Console(quiet=True)).run()
    release.set()
    worker.join(60)
    assert not errors
    # every stage is the first build's: the refused one wrote nothing, not even a temporary folder
    assert (tmp_path / "a" / "who.txt").read_text() == "first"
    assert (tmp_path / "b" / "who.txt").read_text() == "first/first"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a", "b", LOCK_FILE])
    # once the first is done the directory is free again: the second build runs (serialised, not interleaved)
    Pipeline(tmp_path, _slow_stages("second"), Console(quiet=True)).run()
    assert (tmp_path / "b" / "who.txt").read_text() == "second/second"


def test_lock_of_a_killed_build_is_taken_over(tmp_path):
    code = ("import time; from trimflow.build_lock import build_lock\n"
            f"with build_lock({str(tmp_path)!r}):\n    print('held', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(FlowError, match=rf"in use by pid {proc.pid} "):
            Pipeline(tmp_path, _slow_stages("x"), Console(quiet=True)).run()
        proc.send_signal(signal.SIGKILL)  # no cleanup runs: its holder record stays behind
        proc.wait(30)
    finally:
        proc.kill()
        proc.wait()
    assert json.loads((tmp_path / HOLDER_FILE).read_text())["pid"] == proc.pid
    console = Console(record=True, width=400)
    Pipeline(tmp_path, _slow_stages("after"), console).run()
    text = console.export_text()
    assert f"taking over the lock of {tmp_path} left by pid {proc.pid}" in text and "no longer running" in text
    assert not (tmp_path / HOLDER_FILE).exists()  # released at the end
    assert (tmp_path / "b" / "who.txt").read_text() == "after/after"


@pytest.mark.slow
@pytest.mark.timeout(1800)  # three interpreters and a stage: a minute when idle, far more on a loaded machine
def test_two_real_builds_into_one_directory(tmp_path):
    """Two `trimflow relevance` processes into one build directory: the second stops with a message naming the
    first, which finishes normally; the stage folder holds the first one's config."""
    build = tmp_path / "build"
    # the second process imports everything first and starts its build on a line from us, so that it reaches the
    # lock while the first is inside its stage however slow the machine is
    second = subprocess.Popen(
        [sys.executable, "-c", "import sys, trimflow.build, trimflow.config, trimflow.cli as c; print('ready', "
         "flush=True); sys.stdin.readline(); sys.exit(c.main(sys.argv[1:]))", "relevance", "--build-dir", str(build),
         "--set", "relevance.images=100", "eval_images=100"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = subprocess.Popen([sys.executable, "-m", "trimflow.cli", "relevance", "--build-dir", str(build), "--set",
                              "relevance.images=3000", "eval_images=200"], cwd=ROOT, stderr=subprocess.PIPE,
                             text=True)
    try:
        assert second.stdout.readline().strip() == "ready"
        deadline = time.time() + 600
        while time.time() < deadline and not list(build.glob("pynq-z2/.relevance.*.tmp")):
            time.sleep(0.1)
        _, err = second.communicate("go\n", timeout=600)
        assert second.returncode == 2, err
        assert f"is in use by pid {first.pid}" in err and "Traceback" not in err
        assert first.wait(600) == 0, first.stderr.read()
    finally:
        first.kill()
        second.kill()
    stage = json.loads((build / "pynq-z2" / "relevance" / "stage.json").read_text())
    assert stage["config"][0]["images"] == 3000  # the first build's settings, whole
    assert main(["relevance", "--build-dir", str(build), "--set", "relevance.images=100", "eval_images=100"]) == 0
