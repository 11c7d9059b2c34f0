"""The fps-vs-LUT Pareto set (trimflow.finn.pareto): written by the compile stage next to folding.json, its points
non-dominated, sorted and within their budgets, the build's plan on or under the front, and plotted in the report."""

import dataclasses
import json

import pytest

from trimflow import FlowError

torch = pytest.importorskip("torch")

from tests.helpers import tiny_board  # noqa: E402  (a board a third of a Zybo Z7-10's LUTs: LUTs bind)

POINTS = 4


@pytest.fixture(scope="module")
def compiled(qonnx_path, tmp_path_factory):
    from trimflow.finn.compile import CompileConfig, compile_model

    out = tmp_path_factory.mktemp("pareto") / "finn"
    board = tiny_board()
    cfg = CompileConfig(folding="optimize", verify=False, generate_code=False, pareto_points=POINTS)
    return compile_model(qonnx_path, board, cfg, out), out, board


def _lut(p, pareto):
    return p["resources"]["LUT"] + pareto["shell_overhead"]["LUT"]


def test_compile_writes_the_pareto_set_next_to_the_folding(compiled):
    result, out, _ = compiled
    pareto = json.loads((out / "pareto.json").read_text())
    folding = json.loads((out / "folding.json").read_text())
    assert result.folding_plan["pareto"]["points"] == [{k: v for k, v in p.items() if k != "folding"}
                                                      for p in pareto["points"]]
    # the build's plan is the point marked chosen: same folding, same fps, same whole-design estimate
    chosen = pareto["chosen"]
    assert chosen["chosen"] and chosen["source"] == "build"
    assert chosen["folding"] == {k: v for k, v in folding.items() if k != "Defaults"}
    assert chosen["fps"] == pytest.approx(result.fps) and chosen["max_cycles"] == result.max_cycles
    assert chosen["resources"] == pytest.approx(result.estimates["totals"])
    # the two ends plus POINTS optimiser runs, of which some may find the same plan
    assert 3 <= len(pareto["tried"]) <= POINTS + 2 and len(pareto["points"]) >= 3
    assert not (out / "folding_search").exists()


def test_front_is_non_dominated_sorted_and_within_budgets(compiled):
    _, out, board = compiled
    pareto = json.loads((out / "pareto.json").read_text())
    front, shell = pareto["points"], board.shell_overhead
    luts, fps = [_lut(p, pareto) for p in front], [p["fps"] for p in front]
    assert luts == sorted(luts) and all(a < b for a, b in zip(fps, fps[1:]))  # more LUTs buy more fps
    assert len(set(luts)) == len(luts)
    for p in front:
        assert p["fits"] and _lut(p, pareto) <= p["lut_budget"] <= board.limit("LUT")
        for r in ("FF", "BRAM18", "DSP"):
            assert p["resources"][r] + shell[r] <= board.limit(r)
    for q in (q for q in pareto["tried"] if q["fits"]):  # no plan that fits beats a front point
        for p in front:
            assert not (_lut(q, pareto) <= _lut(p, pareto) and q["fps"] >= p["fps"]
                        and (_lut(q, pareto), q["fps"]) != (_lut(p, pareto), p["fps"]))
    assert front[0]["source"] == "fully folded"
    # the build's plan is on the front, or under it: a front point at most as large is at least as fast
    chosen = pareto["chosen"]
    assert any(_lut(p, pareto) <= _lut(chosen, pareto) and p["fps"] >= chosen["fps"] for p in front)
    assert pareto["chosen_on_front"] == any(p["chosen"] for p in front)


def test_from_the_compiled_hw_model_the_build_plan_is_found_again(compiled, tmp_path):
    from trimflow.finn.pareto import pareto_front

    result, out, board = compiled
    pset = pareto_front(out / "hw_model.onnx", board, tmp_path / "scratch", points=0)
    assert pset.chosen.fps == pytest.approx(result.fps) and pset.chosen.resources["LUT"] == pytest.approx(
        result.estimates["totals"]["LUT"])
    assert [p.source for p in pset.tried] == ["fully folded", "build"] and not (tmp_path / "scratch").exists()


def test_non_dominated_on_made_up_points():
    from trimflow.finn.pareto import ParetoPoint, non_dominated

    def pt(lut, fps, chosen=False):
        return ParetoPoint(fps=fps, max_cycles=int(1e8 / fps), resources={"LUT": lut}, lut_budget=10_000,
                           source="t", limited_by="", chosen=chosen)

    pts = [pt(500, 100), pt(400, 100), pt(900, 300), pt(700, 300, chosen=True), pt(700, 300), pt(800, 250),
           pt(1000, 290), pt(1200, 400)]
    front = non_dominated(pts)
    assert [(p.resources["LUT"], p.fps) for p in front] == [(400, 100), (700, 300), (1200, 400)]
    assert front[1].chosen  # of two equal points, the build's is kept
    assert non_dominated([]) == []


def test_argument_errors(compiled, tmp_path):
    from trimflow.finn.compile import CompileConfig
    from trimflow.finn.pareto import pareto_front

    _, out, board = compiled
    with pytest.raises(FlowError, match="pareto_points"):
        CompileConfig(pareto_points=-1)
    with pytest.raises(FlowError, match="pareto_points"):
        CompileConfig(pareto_points=True)
    with pytest.raises(FlowError, match="points"):
        pareto_front(out / "hw_model.onnx", board, tmp_path, points=-2)
    with pytest.raises(FlowError, match="does not exist"):
        pareto_front(tmp_path / "nope.onnx", board, tmp_path, points=2)


def test_report_plots_the_front_and_links_it(compiled, tmp_path):
    from trimflow.config import FlowConfig
    from trimflow.report import write_report

    result, _, board = compiled
    written = write_report({"compile": dataclasses.asdict(result)}, board, FlowConfig(), tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert tmp_path / "pareto.png" in written and (tmp_path / "pareto.png").stat().st_size > 1000
    assert "](report/pareto.png)" in md and "Pareto set" in md
    assert ("**build**" in md) == result.folding_plan["pareto"]["chosen_on_front"]


def test_report_verdict_is_the_sized_designs_when_fifos_were_sized(compiled, tmp_path):
    # The compile stage charges every FIFO an assumed depth; once the simulation has sized them, the sized
    # design's fit is the verdict (a design that fits only with too-shallow FIFOs does not fit).
    import copy

    from trimflow.config import FlowConfig
    from trimflow.report import write_report

    result, _, board = compiled
    comp = dataclasses.asdict(result)
    assert comp["fits"]
    over = copy.deepcopy(comp["fit"])
    over["rows"][0].update(ok=False, estimate=over["rows"][0]["cap"] + 1)
    totals = {"LUT": 1.0, "FF": 1.0, "BRAM18": 0.0, "URAM": 0.0, "DSP": 0.0}
    sizing = {"fifos": [{"depth": 300}], "ii_sized": 10, "ii_deep": 10, "bit_exact": True,
              "fifo_config": "fifo_depths.json", "estimate_charged": {"totals": totals},
              "estimate_sized": {"totals": totals}, "fits_sized": False, "fit_sized": over,
              "deeper_than_charged": ["A -> B: 511 > 64"]}
    # every key a simulate summary has (the report reads it as trimflow.stages.results.SimulateResult)
    sim = {"images": 8, "bit_exact_vs_finn_python": True, "mismatching_images_vs_finn": 0,
           "max_abs_diff_vs_qonnx": 0.0, "matches_qonnx": True, "mismatching_images_vs_qonnx": 0,
           "top1_agreement_vs_qonnx": 1.0, "accuracy": 0.5, "qonnx_accuracy": 0.5, "cycles_per_image": 10,
           "ii_cycles": 10, "latency_cycles": 30, "estimated_ii_cycles": 10, "ii_ratio": 1.0, "ii_flagged": False,
           "measured_fps": 1e7, "latency_us": 0.3, "estimated_latency_us": 0.3, "sim_cycles_per_s": 1e5,
           "sim_images_per_s": 1.0}
    write_report({"compile": comp, "simulate": {**sim, "fifo_sizing": sizing}}, board, FlowConfig(), tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "**does NOT fit** (FIFO depths sized by simulation)" in md and "**over**" in md
    write_report({"compile": comp, "simulate": {**sim, "fifo_sizing": {**sizing, "fits_sized": True,
                                                                       "fit_sized": comp["fit"]}}},
                 board, FlowConfig(), tmp_path)
    assert "**fits** (FIFO depths sized by simulation)" in (tmp_path / "report.md").read_text()
