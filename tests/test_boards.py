import dataclasses

import pytest
import yaml

from trimflow import FlowError
from trimflow.boards import (
    BoardFitError,
    board_from_dict,
    check_fit,
    format_boards_table,
    list_boards,
    load_board,
)

# Datasheet counts (BRAM18 = 2 × BRAM36).
EXPECTED = {
    "pynq-z1": ("xc7z020clg400-1", 53200, 106400, 280, 220, 0),
    "pynq-z2": ("xc7z020clg400-1", 53200, 106400, 280, 220, 0),
    "zybo-z7-10": ("xc7z010clg400-1", 17600, 35200, 120, 80, 0),
    "zybo-z7-20": ("xc7z020clg400-1", 53200, 106400, 280, 220, 0),
    "ultra96-v2": ("xczu3eg-sbva484-1-i", 70560, 141120, 432, 360, 0),
    "zcu104": ("xczu7ev-ffvc1156-2-e", 230400, 460800, 624, 1728, 96),
    "kv260": ("xck26-sfvc784-2LV-c", 117120, 234240, 288, 1248, 64),
}


def test_all_boards_load_with_datasheet_capacities():
    assert set(EXPECTED) <= set(list_boards())
    for name, (part, lut, ff, bram, dsp, uram) in EXPECTED.items():
        b = load_board(name)
        assert b.name == name and b.part == part
        assert b.capacity == {"LUT": lut, "FF": ff, "BRAM18": bram, "DSP": dsp, "URAM": uram}
        assert b.caps == {"LUT": 0.70, "FF": 0.50, "BRAM18": 0.80, "URAM": 0.80, "DSP": 0.80}


def test_finn_board_names_match_finn_part_map():
    from finn.util.basic import pynq_native_port_width, pynq_part_map

    for name in EXPECTED:
        b = load_board(name)
        if b.finn_board is None:
            assert b.shell_flow == "ip_only"
            continue
        assert pynq_part_map[b.finn_board] == b.part
        assert pynq_native_port_width[b.finn_board] == b.axi_width_bits


def test_unknown_board_lists_valid_ones():
    with pytest.raises(FlowError, match="unknown board 'pynq-z3'.*pynq-z2.*zybo-z7-10"):
        load_board("pynq-z3")


def _pynq_dict():
    return yaml.safe_load(open(load_board("pynq-z2").source).read())


def test_missing_and_bad_fields_name_file_and_field(tmp_path):
    data = _pynq_dict()
    del data["part"]
    p = tmp_path / "myboard.yaml"
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(FlowError, match=r"myboard\.yaml: missing field\(s\) part"):
        load_board(p)

    data = _pynq_dict()
    data["capacity"]["DSP"] = -3
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(FlowError, match=r"myboard\.yaml: capacity\.DSP must be a non-negative int"):
        load_board(p)

    data = _pynq_dict()
    data["clok_period_ns"] = 5
    with pytest.raises(FlowError, match="unknown field.*clok_period_ns"):
        board_from_dict(data, "x.yaml")

    data = _pynq_dict()
    data["caps"] = {"LUT": 1.5}
    with pytest.raises(FlowError, match=r"caps\.LUT is a fraction"):
        board_from_dict(data, "x.yaml")

    data = _pynq_dict()
    data["finn_board"] = None  # the Zynq shell flow needs FINN's board
    with pytest.raises(FlowError, match="vivado_zynq needs finn_board"):
        board_from_dict(data, "x.yaml")


def test_partial_caps_keep_defaults():
    data = _pynq_dict()
    data["caps"] = {"LUT": 0.9}
    b = board_from_dict(data)
    assert b.limit("LUT") == 47880  # floor(53200 * 0.9)
    assert b.limit("FF") == 53200
    assert b.limit("BRAM18") == 224


def test_check_fit_numbers_and_error_table():
    b = load_board("zybo-z7-10")  # caps: LUT 12320, BRAM18 96, DSP 64; shell 4000 LUT, 4 BRAM18
    layers = {"MVAU_0": {"LUT": 7000, "DSP": 40}, "MVAU_1": {"LUT": 1500, "DSP": 30}, "Thr_0": {"LUT": 100}}
    fit = check_fit({"LUT": 8600, "BRAM18": 92, "URAM": 0, "DSP": 70}, b, layers=layers)
    rows = {r.resource: r for r in fit.rows}
    assert rows["LUT"].estimate == 12600 and rows["LUT"].cap == 12320 and not rows["LUT"].ok
    assert rows["BRAM18"].estimate == 96 and rows["BRAM18"].ok  # exactly at the cap
    assert rows["DSP"].estimate == 70 and rows["DSP"].cap == 64 and not rows["DSP"].ok
    assert rows["FF"].dataflow is None and rows["FF"].estimate == 5500 and rows["FF"].ok
    assert rows["LUT"].percent == pytest.approx(100 * 12600 / 17600)
    assert fit.over == ["LUT", "DSP"] and not fit.ok
    assert [n for n, _ in fit.largest_layers][:2] == ["MVAU_0", "MVAU_1"]
    msg = str(BoardFitError(fit))
    assert "zybo-z7-10" in msg and "over: LUT, DSP" in msg
    assert "12,600" in msg and "12,320" in msg and "OVER" in msg and "MVAU_0: LUT 7,000, DSP 40" in msg

    ok = check_fit({"LUT": 8320, "BRAM18": 0, "URAM": 0, "DSP": 64}, b)
    assert ok.ok and ok.largest_layers == ()
    with pytest.raises(FlowError, match="unknown resource"):
        check_fit({"LUTS": 1}, b)


def test_boards_table_lists_every_board():
    table = format_boards_table()
    for name in list_boards():
        assert name in table
    assert "17,600" in table and "part only" in table


def test_board_is_frozen():
    b = load_board("pynq-z2")
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.part = "xc7z010clg400-1"  # type: ignore[misc]
    assert b.clock_mhz == pytest.approx(100.0)
