"""FIFO sizing by simulation (trimflow.sim.fifo_sizing) and its FINN side (trimflow.finn.fifos): depths FINN builds,
written into the FINN model and its FIFO-config file, charged in the estimate; the sized design bit-exact at the
same II."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import SIM_PART as PART
from tests.helpers import rtl_hw_model as _hw_model
from trimflow import FlowError
from trimflow.finn.fifos import MIN_DEPTH, fifo_style, finn_depth


def test_finn_depth_rounds_to_the_end_of_a_cost_step():
    from finn.util.resource_models import _fifo_cost

    def cost(d, w):
        c = _fifo_cost(d, w, fifo_style(d, w), False)
        return fifo_style(d, w), c.lut, c.bram

    assert finn_depth(0, 8) == finn_depth(1, 8) >= MIN_DEPTH
    for need, width in ((3, 8), (20, 64), (40, 16), (200, 32), (300, 64), (1000, 36)):
        d = finn_depth(need, width)
        assert d >= need and cost(d, width) == cost(need, width)  # free margin only
        assert cost(d + 1, width) != cost(d, width)  # ... up to the end of the step
    # FINN's model: LUTRAM up to 257 entries, BRAM above (for a stream wide enough)
    assert fifo_style(finn_depth(200, 32), 32) == "distributed"
    assert fifo_style(finn_depth(300, 64), 64) == "block"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from trimflow.finn.adapter import finn_session

    tmp = tmp_path_factory.mktemp("fifo")
    with finn_session(tmp / "finn"):
        return tmp, _hw_model(tmp, finn_fifos=False)


@pytest.mark.slow  # a Brevitas export and FINN's conversion of the tiny net, three FINN graph rewrites
def test_sized_depths_reach_finn_model_config_and_estimate(tiny):
    """Depths written as FINN attributes become the StreamingFIFO depths FINN inserts, the FIFO-config file names
    FINN's FIFOs, and the estimate charges them (a deep one moves to BRAM)."""
    from qonnx.core.modelwrapper import ModelWrapper

    from trimflow.finn.adapter import finn_session
    from trimflow.finn.estimates import estimate_design
    from trimflow.finn.fifos import fifo_config, set_fifo_depths, with_fifos

    tmp, hw_path = tiny
    model = ModelWrapper(str(hw_path))
    mv = [n.name for n in model.graph.node if n.op_type == "MVAU_rtl"]
    nxt = model.find_consumer(model.get_nodes_by_op_type("MVAU_rtl")[0].output[0]).name
    links = [{"producer": mv[0], "producer_port": 0, "consumer": nxt, "consumer_port": 0, "depth": 1000},
             {"producer": "input", "producer_port": 0, "consumer": mv[1], "consumer_port": 0, "depth": 40}]
    with finn_session(tmp / "finn"):
        set_fifo_depths(model, links)
        built = with_fifos(model, PART)
        depths = sorted(int(n.attribute[[a.name for a in n.attribute].index("depth")].i)
                        for n in built.get_nodes_by_op_type("StreamingFIFO_rtl"))
        cfg = fifo_config(model, PART)
        sized = estimate_design(model, PART, tmp / "est-sized", sized_fifos=True)
        default = estimate_design(ModelWrapper(str(hw_path)), PART, tmp / "est-64")
    assert depths[-2:] == [40, 1000] and set(depths[:-2]) == {MIN_DEPTH}
    assert sorted(cfg["fifo_depths"].values()) == depths
    assert all(k.startswith("StreamingFIFO_rtl_") for k in cfg["fifo_depths"])
    assert sized.fifos["count"] == default.fifos["count"] == len(depths)
    assert sized.fifos["BRAM18"] > 0 == default.fifos["BRAM18"]  # 1000 entries: BRAM; 64: LUTs
    assert sized.fifos["LUT"] < default.fifos["LUT"]  # every other FIFO at depth 2 instead of 64


@pytest.mark.rtlsim
@pytest.mark.slow
def test_sizing_keeps_outputs_and_ii(tiny, test_images):  # noqa: F811
    from trimflow.finn.adapter import finn_session
    from trimflow.finn.execute import execute_hw_model
    from trimflow.sim import SimConfig, build_simulator
    from trimflow.sim.fifo_sizing import size_fifos

    tmp, hw_path = tiny
    sim = build_simulator(hw_path, tmp / "sim", SimConfig(fifo_depth=512, optimize=False))
    sizing = size_fifos(sim, test_images[:4])
    assert sizing.bit_exact and sizing.ii_sized <= sizing.ii_deep * 1.005
    assert len(sizing.fifos) == len(sim.manifest["fifos"]) >= 10
    assert all(f.peak + 1 <= f.depth < 512 for f in sizing.fifos)
    # the FIFO in front of the slowest layer (the first sliding-window generator's consumer chain) holds more than
    # a couple of beats: sizing measured real occupancy, not a constant
    assert max(f.peak for f in sizing.fifos) > 2
    # the sized run on all six images equals FINN's python model
    res = sim.run(test_images, fifo_limits=sizing.limits())
    with finn_session(tmp / "finn"):
        ref = execute_hw_model(hw_path, test_images.transpose(0, 2, 3, 1))
    assert np.array_equal(res.outputs, ref.reshape(res.outputs.shape))
    # limits are checked by name
    with pytest.raises(FlowError, match="does not have: nope"):
        sim.run(test_images[:1], fifo_limits={"nope": 3})
