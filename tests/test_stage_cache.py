"""The pipeline caches by a hash of its inputs, resumes after an interruption, and never reads a partial stage."""

from __future__ import annotations

import dataclasses
import json

import pytest

from trimflow import FlowError
from trimflow.stage_cache import Pipeline, StageSpec


def _counting_stages(calls: list[str], fail_in: str | None = None, a_config=1):
    def make(name):
        def run(ctx, cfg):
            calls.append(name)
            (ctx.out_dir / "out.txt").write_text(f"{name}:{cfg}")
            if name == fail_in:
                raise RuntimeError("boom")
            upstream = {d: (p / "out.txt").read_text() for d, p in ctx.inputs.items()}
            return {"cfg": cfg, "upstream": upstream}
        return run

    return [StageSpec("a", make("a"), a_config), StageSpec("b", make("b"), 2, deps=("a",)),
            StageSpec("c", make("c"), 3, deps=("b",))]


def test_second_run_is_cached(tmp_path):
    calls: list[str] = []
    Pipeline(tmp_path, _counting_stages(calls)).run()
    assert calls == ["a", "b", "c"]
    results = Pipeline(tmp_path, _counting_stages(calls)).run()
    assert calls == ["a", "b", "c"]
    assert all(r.cached for r in results.values())
    assert results["c"].summary["upstream"] == {"b": "b:2"}


def test_config_change_reruns_that_stage_and_downstream(tmp_path):
    calls: list[str] = []
    Pipeline(tmp_path, _counting_stages(calls)).run()
    calls.clear()
    Pipeline(tmp_path, _counting_stages(calls, a_config=5)).run()
    assert calls == ["a", "b", "c"]
    assert (tmp_path / "a" / "out.txt").read_text() == "a:5"


def test_interrupted_stage_leaves_no_output_and_resumes(tmp_path):
    calls: list[str] = []
    with pytest.raises(RuntimeError):
        Pipeline(tmp_path, _counting_stages(calls, fail_in="b")).run()
    assert (tmp_path / "a" / "stage.json").exists()
    assert not (tmp_path / "b").exists()  # the half-written directory never appears under its name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".b.")]
    calls.clear()
    Pipeline(tmp_path, _counting_stages(calls)).run()
    assert calls == ["b", "c"]


def test_until_and_force(tmp_path):
    calls: list[str] = []
    Pipeline(tmp_path, _counting_stages(calls)).run(until="b")
    assert calls == ["a", "b"]
    calls.clear()
    Pipeline(tmp_path, _counting_stages(calls)).run(force=["b"])
    assert calls == ["b", "c"]
    record = json.loads((tmp_path / "b" / "stage.json").read_text())
    assert record["summary"]["cfg"] == 2 and "seconds" not in record  # timings live in timing.json only
    assert json.loads((tmp_path / "b" / "timing.json").read_text())["seconds"] >= 0


def test_unknown_stage_is_a_clear_error(tmp_path):
    with pytest.raises(FlowError, match="unknown stage 'x'"):
        Pipeline(tmp_path, _counting_stages([])).run(until="x")


def test_unknown_force_stage_is_an_error_listing_the_stages(tmp_path):
    calls: list[str] = []
    with pytest.raises(FlowError, match=r"--force: unknown stage\(s\) nosuchstage; stages: a, b, c"):
        Pipeline(tmp_path, _counting_stages(calls)).run(force=["nosuchstage"])
    assert calls == []


def test_editing_a_stages_source_reruns_it(tmp_path, monkeypatch):
    """The code digest is over real files: edit one and the stages that run it rerun, the others stay cached."""
    from trimflow import sources
    pkg = tmp_path / "pkg"
    (pkg / "report").mkdir(parents=True)
    (pkg / "stage.py").write_text("X = 1\n")
    (pkg / "report" / "plots.py").write_text("Y = 1\n")
    monkeypatch.setattr(sources, "source_roots", lambda: [(pkg, "*.py")])
    calls: list[str] = []

    def stages():
        a, b, c = _counting_stages(calls)
        exclude = ("report/*",)  # as trimflow.build does: report code cannot change a and b
        return [dataclasses.replace(a, code_exclude=exclude), dataclasses.replace(b, code_exclude=exclude), c]

    Pipeline(tmp_path / "build", stages()).run()
    assert calls == ["a", "b", "c"]
    (pkg / "report" / "plots.py").write_text("Y = 2\n")
    calls.clear()
    Pipeline(tmp_path / "build", stages()).run()
    assert calls == ["c"]
    (pkg / "stage.py").write_text("X = 2\n")
    calls.clear()
    Pipeline(tmp_path / "build", stages()).run()
    assert calls == ["a", "b", "c"]
    calls.clear()
    Pipeline(tmp_path / "build", stages()).run()
    assert calls == []


def test_stage_keys_do_not_depend_on_where_the_board_file_lies(tmp_path):
    # `make synth` mounts the checkout elsewhere in its container, and a user may move a checkout: the same board
    # read from another path must give the same key to every stage, or the whole build would run again
    import shutil

    from trimflow.boards import load_board
    from trimflow.build import make_pipeline
    from trimflow.config import load_flow_config
    from trimflow.resources import BOARDS_DIR

    moved = tmp_path / "elsewhere" / "pynq-z2.yaml"
    moved.parent.mkdir()
    shutil.copyfile(BOARDS_DIR / "pynq-z2.yaml", moved)
    cfg = load_flow_config(None)
    keys = []
    for board in (load_board("pynq-z2"), load_board(moved)):
        assert board.source  # the two really come from two files
        pipeline = make_pipeline(cfg, board, tmp_path / "build" / board.name)
        done: dict[str, str] = {}
        for name in pipeline.order():
            done[name] = pipeline.key(name, done)
        keys.append(done)
    assert keys[0] == keys[1] and "compile" in keys[0]
