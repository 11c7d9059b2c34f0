"""Every setting reaches its target: repeated --set, unknown --force stages, keys the chosen policy ignores."""

from __future__ import annotations

import logging

import pytest
import yaml

from trimflow import FlowError
from trimflow.cli import main
from trimflow.config import load_flow_config


def test_repeated_set_accumulates(capsys):
    argv = ["config", "--set", "trim.budget=0.4", "--set", "quantize.weight_bits=2", "compile.pareto_points=2"]
    assert main(argv) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["trim"]["budget"] == 0.4
    assert cfg["quantize"]["weight_bits"] == 2
    assert cfg["compile"]["pareto_points"] == 2


def test_unknown_force_stage_is_an_error(tmp_path, capsys):
    rc = main(["relevance", "--build-dir", str(tmp_path), "--force", "relevance", "--force", "nosuchstage"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "unknown stage(s) nosuchstage" in err and "relevance, trim, quantize" in err
    assert not any(tmp_path.rglob("stage.json"))


def test_key_the_policy_ignores_is_named_in_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="trimflow"):
        cfg = load_flow_config(None, ["trim.keep=0.4", "trim.budget=0.3"])
    assert cfg.trim.policy == "budget" and cfg.trim.budget == 0.3
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "trim.keep" in lines[0] and "policy=budget" in lines[0]

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="trimflow"):
        load_flow_config(None, ["trim.policy=uniform", "trim.allocation=rank", "trim.keep=0.4", "trim.budget=0.3",
                                "hwtrim.accuracy_floor=0.5"])
    lines = sorted(r.getMessage() for r in caplog.records)
    assert [line.split()[2] for line in lines] == ["hwtrim.accuracy_floor", "trim.allocation", "trim.budget"]
    assert "policy=uniform" in lines[2] and "hwtrim.target_fps" in lines[0]


def test_reconstruct_keys_need_reconstruct_compensation(caplog):
    with caplog.at_level(logging.WARNING, logger="trimflow"):
        load_flow_config(None, ["trim.compensation=mean", "trim.reconstruct.ridge=0.1"])
    assert [r.getMessage().split()[2] for r in caplog.records] == ["trim.reconstruct.ridge"]
    assert "compensation=mean" in caplog.records[0].getMessage()


def test_target_fps_overrides_trim_budget(caplog):
    with caplog.at_level(logging.WARNING, logger="trimflow"):
        cfg = load_flow_config(None, ["trim.budget=0.3", "hwtrim.accuracy_floor=0.5"], target_fps=2000)
    assert [r.getMessage().split()[2] for r in caplog.records] == ["trim.budget"]
    # --target-fps is one goal for both of its consumers: the trim budget search and the folding
    assert (cfg.hwtrim.target_fps, cfg.compile.folding_fps) == (2000, 2000)


def test_old_target_fps_key_names_the_new_ones():
    # compile.target_fps used to drive the folding and the trim budget both; it is an error, not a silent change
    with pytest.raises(FlowError, match=r"compile\.target_fps is no longer a key: .*compile\.folding_fps.*"
                                        r"hwtrim\.target_fps"):
        load_flow_config(None, ["compile.target_fps=100"])
    # the folding target alone leaves the trim budget fixed
    cfg = load_flow_config(None, ["compile.folding_fps=100"])
    assert cfg.hwtrim.target_fps is None and cfg.compile.folding_fps == 100


def test_config_command_offers_only_what_it_uses(capsys):
    # `trimflow config` prints the effective config: a board, a build folder, stages to force or an output level
    # change nothing there, so it does not offer them
    from trimflow.cli import main

    with pytest.raises(SystemExit):
        main(["config", "--help"])
    usage = capsys.readouterr().out
    assert "--set" in usage and "--explain" in usage
    assert not any(flag in usage for flag in ("--force", "--board", "--build-dir", "--quiet"))
