"""The whole flow on the committed pretrained net with small settings: every stage runs for real, the numbers the
stages report agree with each other, a second run is served from the cache, and bad input fails clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from trimflow import FlowError
from trimflow.boards import BoardFitError
from trimflow.build import run_flow
from trimflow.cli import main
from trimflow.config import load_flow_config

SMALL = [
    "eval_images=300", "relevance.images=300", "trim.calib_images=300", "finetune.epochs=0.02",
    "quantize.train.epochs=0.02", "quantize.calibration_batches=2", "export.verify_images=40",
    "compile.verify_images=4", "simulate.images=3",
]


@pytest.fixture(scope="module")
def small_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("build")
    cfg = load_flow_config(overrides=SMALL)
    return root, cfg, run_flow(cfg, "pynq-z2", root)


def test_every_stage_ran_and_the_report_is_written(small_build):
    root, _, result = small_build
    assert list(result.results) == ["relevance", "trim", "quantize", "export", "compile", "simulate", "synth",
                                    "report"]
    assert result.report_path == root / "pynq-z2" / "report.md"
    text = result.report_path.read_text()
    assert "Resources vs the board" in text and "estimated fps" in text
    report = json.loads((root / "pynq-z2" / "report.json").read_text())
    assert set(report["stages"]) >= {"relevance", "trim", "quantize", "export", "compile"}


def test_report_provenance_next_command_classes_and_log(small_build):
    from trimflow.config_parsing import from_dict
    from trimflow.config import FlowConfig
    from trimflow.data.meta import CLASS_NAMES
    from trimflow.logs import MAX_LINE
    from trimflow.report.provenance import TOOLS

    root, cfg, result = small_build
    board_dir = root / "pynq-z2"
    text = result.report_path.read_text()
    assert "## Provenance" in text and all(f"{tool} " in text for tool in TOOLS) and "verilator " in text
    # the next command rebuilds exactly this config: the effective config file it names reads back equal
    cmd = next(line.strip() for line in text.splitlines() if line.strip().startswith("make synth BOARD=pynq-z2"))
    config_path = cmd.split("CONFIG=")[1].split()[0]
    assert (board_dir / "config.yaml").samefile(config_path)
    assert from_dict(FlowConfig, yaml.safe_load((board_dir / "config.yaml").read_text())) == cfg
    assert Path(cmd.split("BUILD_DIR=")[1].split()[0]).resolve() == root.resolve()
    assert "Not synthesised" in text and "make deploy BOARD=pynq-z2" in text
    names = list(CLASS_NAMES["fashion-mnist"])
    assert ", ".join(names) in text
    manifest = json.loads((board_dir / "synth" / "deploy" / "manifest.json").read_text())
    assert manifest["classes"] == names
    assert manifest["preprocess"] == {"mode": "L", "size": [28, 28], "convert": False, "resize": None,
                                      "invert": False, "autocontrast": False, "dataset": "fashion-mnist"}
    log = (board_dir / "build.log").read_text().splitlines()
    assert max(map(len, log)) <= MAX_LINE and any("✓ report" in line for line in log)
    # FINN's steps as they ran, as trimflow's own lines (trimflow.finn.adapter._FinnStdout), not FINN's prints
    assert any("FINN step_streamline [" in line for line in log)
    # its other prints (the temporary paths) are debug lines there, never FINN's own time-stamped text
    assert not any("Running step:" in line for line in log)
    assert all(" FINN: " in line for line in log if "Build log is at" in line)


@pytest.mark.rtlsim
def test_default_net_simulated_bit_exact(small_build):
    # the committed default net, trimmed and quantized, as RTL in Verilator: a few real test images
    _, _, result = small_build
    sim = result.results["simulate"].summary
    assert sim["images"] == 3
    assert sim["bit_exact_vs_finn_python"] and sim["mismatching_images_vs_finn"] == 0
    assert sim["matches_qonnx"] and sim["top1_agreement_vs_qonnx"] == 1.0
    assert sim["accuracy"] == sim["qonnx_accuracy"]
    assert 0.8 < sim["ii_ratio"] < 1.2 and not sim["ii_flagged"]


def test_stage_numbers_agree(small_build):
    _, _, result = small_build
    s = {name: r.summary for name, r in result.results.items()}
    rep = s["trim"]["report"]
    assert 0.4 <= rep["macs_after"] / rep["macs_before"] <= 0.5  # budget 0.5 of MACs, rounded down to fit
    assert all(layer["kept"] % 4 == 0 for layer in rep["layers"])  # round_to=4
    # QONNX execution equals the Brevitas forward on real test images
    assert s["export"]["verify"]["top1_agreement"] == 1.0
    # FINN's python execution of the streamlined and the HW-layer model equals QONNX
    ver = s["compile"]["verification"]
    assert ver["ok"] and ver["hw_mismatches"] == 0 and ver["streamlined_mismatches"] == 0
    comp = s["compile"]
    assert comp["fits"] and comp["all_rtl"]
    assert comp["fps"] == pytest.approx(1e9 / (comp["max_cycles"] * comp["clock_period_ns"]), rel=1e-6)
    assert comp["max_cycles"] == max(layer["cycles"] for layer in comp["layers"])
    for row in comp["fit"]["rows"]:
        assert row["ok"] == (row["estimate"] <= row["cap"])


def test_second_run_is_fully_cached(small_build):
    root, cfg, first = small_build
    again = run_flow(cfg, "pynq-z2", root)
    assert all(r.cached for r in again.results.values())
    assert again.results["quantize"].summary == first.results["quantize"].summary


def test_board_too_small_fails_with_the_table(small_build, tmp_path):
    root, cfg, _ = small_build
    board = yaml.safe_load(open("boards/zybo-z7-10.yaml"))
    board.update(name="tiny-board", capacity={"LUT": 3000, "FF": 6000, "BRAM18": 10, "DSP": 6, "URAM": 0},
                 shell_overhead={"LUT": 0, "FF": 0, "BRAM18": 0, "DSP": 0, "URAM": 0})
    path = tmp_path / "tiny-board.yaml"
    path.write_text(yaml.safe_dump(board))
    with pytest.raises(BoardFitError) as err:
        run_flow(cfg, str(path), root)
    msg = str(err.value)
    assert "tiny-board" in msg and "BRAM18" in msg and "DSP" in msg


def test_cli_unknown_board_lists_the_valid_ones(capsys):
    assert main(["build", "--board", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown board 'nope'" in err and "pynq-z2" in err and "zybo-z7-10" in err


def test_cli_missing_checkpoint_and_bad_config_key(capsys, tmp_path):
    assert main(["relevance", "--build-dir", str(tmp_path), "--set", "model=missing.pt"]) == 2
    assert "missing.pt does not exist" in capsys.readouterr().err
    assert main(["config", "--set", "trim.kep=0.3"]) == 2
    assert "unknown key(s) kep" in capsys.readouterr().err


def test_flow_config_rejects_bad_values():
    with pytest.raises(FlowError, match="eval_images|expected int"):
        load_flow_config(overrides=["eval_images=lots"])


@pytest.mark.slow
@pytest.mark.rtlsim
@pytest.mark.xfail(reason="the simulate stage now builds its Verilator model for FIFO sizing (deep FIFOs with "
                          "run-time limits), so the runtime's build key differs and it recompiles (#14 follow-up)",
                   strict=False)
def test_runtime_verilator_backend_reuses_the_simulated_design(small_build, tmp_path):
    """The deployment package's Verilator backend on real test images, fast: the simulate stage already compiled
    this design, and build_simulator reuses a simulator whose key (model digest, build settings) matches."""
    import shutil
    import sys

    import numpy as np

    from trimflow.data import load_dataset, subset

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hw" / "runtime"))
    import trimflow_runtime as rt
    from trimflow_runtime.frames import Frame

    root, cfg, result = small_build
    board_dir = root / "pynq-z2"
    shutil.copytree(board_dir / "simulate" / "verilator", tmp_path / "sim")
    built = (tmp_path / "sim" / "sim").stat().st_mtime_ns
    pkg = rt.load_package(board_dir / "synth" / "deploy")
    images = subset(load_dataset(cfg.dataset, "test", cfg.data_dir), 4, seed=5).images.numpy()
    frames = [Frame(str(i), np.transpose(img, (1, 2, 0))) for i, img in enumerate(images)]
    with rt.open_accelerator(pkg, "verilator", work_dir=str(tmp_path)) as accel:
        assert (tmp_path / "sim" / "sim").stat().st_mtime_ns == built  # reused, not recompiled
        sim = rt.classify(pkg, accel, frames, batch_size=4)
    with rt.open_accelerator(pkg, "finn-python") as accel:
        ref = rt.classify(pkg, accel, frames, batch_size=4)
    assert sim.predictions == ref.predictions
    np.testing.assert_array_equal(np.stack(sim.scores), np.stack(ref.scores))
