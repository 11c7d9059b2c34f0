"""The compiled design (trimflow.finn.design.Design): written once by the compile stage, read by the estimate's
readers, the simulator, the synthesis path and the deployment package; a bad design file is one clear line."""

from __future__ import annotations

import dataclasses
import json

import pytest

from tests.helpers import fake_design
from trimflow import FlowError
from trimflow.finn.design import ASSUMED, DESIGN_FILE, Design, load


def _design(**changes) -> Design:
    return fake_design(**changes)


def test_design_round_trips_through_its_file(tmp_path):
    d = _design()
    assert d.save(tmp_path) == tmp_path / DESIGN_FILE
    back = load(tmp_path)
    assert back == d and load(tmp_path / DESIGN_FILE) == d
    assert back.fifo_at("MVAU_rtl_0", 0, "StreamingDataWidthConverter_rtl_0", 0).depth == 64
    assert back.fifo_at("MVAU_rtl_0", 0, "Thresholding_rtl_1", 0) is None
    assert [f.between_nodes for f in back.fifos] == [False, True, True, False]
    assert back.resources("fifos") == {"count": 4.0, "LUT": 40.0, "FF": 80.0, "BRAM18": 0.0, "URAM": 0.0,
                                       "DSP": 4.0}


@pytest.mark.parametrize("damage, words", [
    (None, "is missing"),
    ("{not json", "not readable JSON"),
    ({"version": 0}, "version 0"),
    ("extra-key", "unknown keys"),
    ("bad-end", "no layer or width converter"),
    ("bad-depth", "depth"),
])
def test_a_missing_corrupt_or_old_design_is_one_line_naming_the_file(tmp_path, damage, words):
    path = tmp_path / DESIGN_FILE
    if damage is not None:
        _design().save(tmp_path)
        data = json.loads(path.read_text())
        if isinstance(damage, dict):
            data.update(damage)
        elif damage == "extra-key":
            data["layers"][0]["speed"] = 3
        elif damage == "bad-end":
            data["fifos"][1]["consumer"] = "nowhere"
        elif damage == "bad-depth":
            data["fifos"][1]["depth"] = 1
        path.write_text(damage if isinstance(damage, str) and damage.startswith("{") else json.dumps(data))
    with pytest.raises(FlowError) as e:
        load(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and words in msg


@pytest.fixture(scope="module")
def compiled(qonnx_path, tmp_path_factory):
    pytest.importorskip("torch")
    from trimflow.boards import load_board
    from trimflow.finn.compile import CompileConfig, compile_model

    out = tmp_path_factory.mktemp("design") / "finn"
    result = compile_model(qonnx_path, load_board("pynq-z2"), CompileConfig(folding="optimize", verify=False), out)
    return result, out


def test_compile_writes_the_design_the_estimate_counted(compiled):
    result, out = compiled
    d = load(out)
    assert d.fifo_depths == ASSUMED and d.board == result.board and d.fits == result.fits
    assert [x.name for x in d.layers] == [r["name"] for r in result.layers]
    assert [x.op_type for x in d.layers] == result.node_types
    for layer, row in zip(d.layers, result.layers):
        assert layer.folding.get("PE") == row["pe"] and layer.folding.get("SIMD") == row["simd"]
        assert layer.cycles == row["cycles"]
    # the estimate counts exactly the design's FIFOs and width converters
    est = result.estimates
    assert d.resources("fifos") == est["fifos"] and d.resources("width_converters") == est["width_converters"]
    assert d.totals == est["totals"]
    assert sum(x.estimate["LUT"] for x in d.layers) == est["layers"]["LUT"]
    # FINN's FIFO on every stream: one per link between nodes, plus the partition's input and output
    nodes = len(d.layers) + len(d.width_converters)
    assert len(d.fifos) == nodes + 1 and {f.depth for f in d.fifos} == {est["fifo_depth"]}
    assert d.host_tail == result.host_tail and d.host_head == result.host_head


def test_simulator_builds_the_designs_fifos(compiled):
    from qonnx.core.modelwrapper import ModelWrapper

    from trimflow.finn.adapter import finn_session
    from trimflow.finn.design import HW_MODEL
    from trimflow.sim import stitch
    from trimflow.sim.simulator import _check_fifos, _prepare_model

    result, out = compiled
    d = load(out)
    with finn_session(out.parent / "sim-finn"):
        model = _prepare_model(ModelWrapper(str(out / HW_MODEL)), result.part, result.clock_period_ns)
        sim = stitch.plan(model, d.fifos)
        _check_fifos(sim, d.fifos)  # raises when they differ
        built = {(f["producer"], f["consumer"]): f["depth"] for f in sim.fifos()}
        assert built == {(f.producer, f.consumer): f.depth for f in d.fifos if f.between_nodes}
        deep = stitch.plan(model, d.fifos, fifo_depth=512)  # an override keeps the streams, not the depths
        assert {(f["producer"], f["consumer"]) for f in deep.fifos()} == set(built)
        assert {f["depth"] for f in deep.fifos()} == {512}
        other = dataclasses.replace(d.fifos[1], depth=d.fifos[1].depth + 1)
        with pytest.raises(FlowError, match="differ from the design"):
            _check_fifos(sim, [other if f is d.fifos[1] else f for f in d.fifos])
