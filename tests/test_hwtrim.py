"""Hardware-aware trimming (trimflow.hwtrim): a tiny net on a tiny board, and the loop's decisions and errors."""

from types import SimpleNamespace

import pytest

from tests.helpers import tiny_board
from trimflow import FlowError

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def setup():
    from trimflow.data import load_dataset, subset
    from trimflow.models.cnv import CNVLike
    from trimflow.relevance import RelevanceConfig, compute_relevance

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = CNVLike(widths=(8, 16), strides=(1, 2)).eval()
    train = subset(load_dataset("fashion-mnist", "train"), 256, seed=0)
    test = subset(load_dataset("fashion-mnist", "test"), 64, seed=1)
    return model, compute_relevance(model, train, RelevanceConfig(images=128)), train, test


def _run(setup, tmp_path, target_fps, budgets=(1.0, 0.5), floor=0.0, board=None, refine=0):
    from trimflow.finn.compile import CompileConfig
    from trimflow.hwtrim import fit_by_trimming
    from trimflow.quantize import QuantConfig
    from trimflow.trim import TrimConfig

    model, scores, train, test = setup
    return fit_by_trimming(model, scores, board or tiny_board(), target_fps, TrimConfig(round_to=4, calib_images=128),
                           QuantConfig(calibration_batch_size=32), CompileConfig(), train, test, floor,
                           tmp_path / "work", budgets=budgets, refine=refine)


def test_untrimmed_misses_target_trimmed_meets_it(setup, tmp_path):
    res = _run(setup, tmp_path, 20000)
    first, second = res.iterations
    assert res.budget == 0.5 and len(res.iterations) == 2
    assert first.fits and not first.meets_target and first.fps < 20000
    assert first.kept == {"features.0": "8/8", "features.3": "16/16"} and first.macs_fraction == 1.0
    assert second.meets_target and second.fps >= 20000 and second.macs_fraction <= 0.5
    # what was trimmed is what is returned, and it is what the iteration reports
    convs = [m for m in res.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [int(v.split("/")[0]) for v in second.kept.values()]
    # resources include the board's (here zero) shell and stay under the caps of the tiny board
    board = tiny_board()
    assert all(second.resources[r] <= board.limit(r) for r in ("LUT", "FF", "BRAM18", "DSP"))
    assert second.percent["LUT"] == pytest.approx(100 * second.resources["LUT"] / 6000)
    assert "| 0.5 |" in res.to_json()["table"]
    assert not (tmp_path / "work").exists()  # candidates' builds are removed


def test_target_beyond_any_folding_is_a_clear_error(setup, tmp_path):
    # every layer fully parallel: the 28x28 first convolution alone needs at least 784 cycles per image, so no
    # folding passes 1e8 / 784 ≈ 127k fps at 100 MHz
    with pytest.raises(FlowError, match=r"out of reach.*at most ([\d,]+) fps") as e:
        _run(setup, tmp_path, 500000)
    best = float(e.value.args[0].split("at most ")[1].split(" fps")[0].replace(",", ""))
    assert 10000 < best <= 1e8 / 784


def _fake_iteration(budget, fps, fits, acc=0.9, lut=3000.0):
    from trimflow.hwtrim import HwTrimIteration

    res = {"LUT": lut, "FF": 1000.0, "BRAM18": 10.0, "DSP": 4.0, "URAM": 0.0}
    return HwTrimIteration(budget, budget, 1000, {"c1": "8/8"}, acc, res,
                           {r: 100 * v / 6000 for r, v in res.items()}, fps, 1e5, fits,
                           fits and fps >= 1000, "", 0.1)


@pytest.fixture
def fake(monkeypatch, setup):
    """fit_by_trimming with its candidate evaluation replaced by a table of iterations."""
    import trimflow.hwtrim as hwtrim

    table: dict[float, object] = {}

    def candidate(float_model, scores, budget, *args, **kwargs):
        return table[budget], float_model, SimpleNamespace(sensitivity=None)  # the trim report's field it reads

    monkeypatch.setattr(hwtrim, "_candidate", candidate)
    return table


def test_stops_at_first_budget_that_meets_the_target(fake, setup, tmp_path):
    fake.update({1.0: _fake_iteration(1.0, 400, True), 0.5: _fake_iteration(0.5, 1200, True),
                 0.25: _fake_iteration(0.25, 3000, True)})
    res = _run(setup, tmp_path, 1000, budgets=(0.25, 1.0, 0.5))  # order does not matter: largest first
    assert res.budget == 0.5 and [i.budget for i in res.iterations] == [1.0, 0.5]


def test_refine_bisects_towards_the_larger_budget_that_missed(fake, setup, tmp_path):
    # 1.0 misses, 0.5 meets: 0.75 misses, 0.625 meets -> 0.625 (trims least of those that meet); the table keeps
    # every candidate in the order tried
    fake.update({1.0: _fake_iteration(1.0, 400, True), 0.5: _fake_iteration(0.5, 1200, True),
                 0.75: _fake_iteration(0.75, 900, True), 0.625: _fake_iteration(0.625, 1000, True)})
    res = _run(setup, tmp_path, 1000, refine=2)
    assert res.budget == 0.625 and [i.budget for i in res.iterations] == [1.0, 0.5, 0.75, 0.625]
    # a candidate under the accuracy floor is not taken even when it is fast enough
    fake[0.75] = _fake_iteration(0.75, 2000, True, acc=0.5)
    res = _run(setup, tmp_path, 1000, refine=1, floor=0.8)
    assert res.budget == 0.5
    # the first budget of the ladder meets the target: nothing larger to try
    fake[1.0] = _fake_iteration(1.0, 1500, True)
    res = _run(setup, tmp_path, 1000, refine=2)
    assert res.budget == 1.0 and len(res.iterations) == 1


def test_accuracy_floor_before_a_fit_raises_with_table(fake, setup, tmp_path):
    fake.update({1.0: _fake_iteration(1.0, 400, True, acc=0.85), 0.5: _fake_iteration(0.5, 800, True, acc=0.6)})
    with pytest.raises(FlowError, match=r"PTQ accuracy 60.00 % at budget 0.5 is below the floor 80.00 %") as e:
        _run(setup, tmp_path, 1000, floor=0.8)
    msg = str(e.value)
    assert "| 1 | 1.000 | 8 | 85.00 %" in msg and "| 0.5 |" in msg
    # fits at 800 fps with half the MACs → 1000 fps needs about 0.5 · 800/1000 = 0.40
    assert "about 0.40 of the original" in msg


def test_nothing_fits_reports_needed_budget(fake, setup, tmp_path):
    # over the LUT cap (0.7 · 6000 = 4200) even fully folded: 4200/8400 → half of the last budget's MACs
    fake.update({1.0: _fake_iteration(1.0, 50, False, lut=16000.0), 0.5: _fake_iteration(0.5, 60, False, lut=8400.0)})
    with pytest.raises(FlowError, match="even the most folded design is over the board's caps") as e:
        _run(setup, tmp_path, 1000)
    assert "about 0.25 of the original" in str(e.value)


def test_argument_errors(setup, tmp_path):
    with pytest.raises(FlowError, match="positive target fps"):
        _run(setup, tmp_path, 0)
    with pytest.raises(FlowError, match="accuracy_floor"):
        _run(setup, tmp_path, 100, floor=80)
