"""Target boards (boards/*.yaml) and the check that a compiled design fits one.

FINN's folding never checks a design against the board (finn.util.platforms has capacities but the builder does
not use them), so trimflow does it here, with FINN's guideline utilisation limits as default caps: a design above
them may still place, but timing closure gets unlikely.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
from pathlib import Path
from typing import Any, Iterable, Mapping


from trimflow import FlowError
from trimflow.config_parsing import load_yaml
from trimflow.resources import BOARDS_DIR

RESOURCES = ("LUT", "FF", "BRAM18", "URAM", "DSP")
SHELL_FLOWS = ("vivado_zynq", "ip_only")
# Xilinx's guideline limits, as in finn.util.platforms.DEFAULT_RES_LIMITS.
DEFAULT_CAPS = {"LUT": 0.70, "FF": 0.50, "BRAM18": 0.80, "URAM": 0.80, "DSP": 0.80}


@dataclasses.dataclass(frozen=True)
class Board:
    name: str
    description: str
    part: str
    finn_board: str | None  # key of finn.util.basic.pynq_part_map; None → FINN's part-only flow
    shell_flow: str  # "vivado_zynq" (FINN builds the Zynq shell) or "ip_only" (user integrates the IP)
    clock_period_ns: float
    axi_width_bits: int
    capacity: dict[str, int]
    shell_overhead: dict[str, int]  # estimate for the DMA/interconnect around the dataflow IP
    caps: dict[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_CAPS))
    source: str = ""  # the YAML file it came from

    def __post_init__(self) -> None:
        where = self.source or f"board {self.name!r}"
        if not self.name or not self.part:
            raise FlowError(f"{where}: 'name' and 'part' must be non-empty")
        if self.shell_flow not in SHELL_FLOWS:
            raise FlowError(f"{where}: shell_flow {self.shell_flow!r} is not one of {SHELL_FLOWS}")
        if self.shell_flow == "vivado_zynq" and not self.finn_board:
            raise FlowError(f"{where}: shell_flow vivado_zynq needs finn_board (FINN builds the shell per board)")
        if not (isinstance(self.clock_period_ns, (int, float)) and 1.0 <= self.clock_period_ns <= 100.0):
            raise FlowError(f"{where}: clock_period_ns must be a number in [1, 100], got {self.clock_period_ns!r}")
        if self.axi_width_bits not in (32, 64, 128, 256, 512):
            raise FlowError(f"{where}: axi_width_bits must be 32/64/128/256/512, got {self.axi_width_bits!r}")
        for field, table, kind in (
            ("capacity", self.capacity, int),
            ("shell_overhead", self.shell_overhead, int),
            ("caps", self.caps, float),
        ):
            if not isinstance(table, Mapping) or set(table) != set(RESOURCES):
                got = sorted(table) if isinstance(table, Mapping) else table
                raise FlowError(f"{where}: '{field}' must have exactly the keys {list(RESOURCES)}, got {got}")
            for r, v in table.items():
                if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (kind is int and v != int(v)):
                    raise FlowError(f"{where}: {field}.{r} must be a non-negative {kind.__name__}, got {v!r}")
                if field == "caps" and v > 1.0:
                    raise FlowError(f"{where}: caps.{r} is a fraction of the capacity (0–1), got {v!r}")
        if self.capacity["LUT"] == 0:
            raise FlowError(f"{where}: capacity.LUT must be positive")
        check_part(self.part, where)
        check_capacity(self.part, self.capacity, where)

    @property
    def clock_mhz(self) -> float:
        return 1000.0 / self.clock_period_ns

    def limit(self, resource: str) -> int:
        """The largest usable count of `resource` under the utilisation cap."""
        return math.floor(self.capacity[resource] * self.caps[resource])

    # The board arithmetic every fit check, folding search and throughput figure uses, in one place. A "design"
    # below is the dataflow partition alone: the shell overhead is the board's, added here.

    def room(self, resource: str) -> int:
        """What the design may use of `resource`: the cap less the shell overhead (negative when the shell alone
        is over the cap)."""
        return self.limit(resource) - self.shell_overhead[resource]

    def over(self, design: Mapping[str, float], resources: Iterable[str] = RESOURCES) -> list[str]:
        """The resources (of `resources`, in that order) where the design plus the shell overhead is above the cap;
        a resource the design does not name counts as 0 (not estimated: the shell alone is checked)."""
        # `not <=`: an estimate that is NaN (a broken cost model) is over, never a fit
        return [r for r in resources if not design.get(r, 0.0) + self.shell_overhead[r] <= self.limit(r)]

    def fits(self, design: Mapping[str, float], resources: Iterable[str] = RESOURCES) -> bool:
        """Whether the design plus the shell overhead stays within the cap of every one of `resources`."""
        return not self.over(design, resources)

    @property
    def clock_hz(self) -> float:
        return 1e9 / self.clock_period_ns

    def fps(self, cycles: float) -> float:
        """Frames per second at the board clock when a frame takes `cycles` (the slowest layer's cycles, or an
        initiation interval)."""
        return self.clock_hz / cycles

    def cycles_for(self, fps: float) -> float:
        """The cycles per frame that give `fps` at the board clock (the inverse of fps())."""
        return self.clock_hz / fps

    def latency_us(self, cycles: float) -> float:
        """`cycles` at the board clock, in microseconds."""
        return cycles * self.clock_period_ns / 1000.0


# No FPGA has more than this of a resource (the largest Versal / UltraScale+ parts have ~4.5 M LUTs, ~7,400 DSPs,
# ~10,800 BRAM18, ~1,300 URAM); a capacity above it is a typo, not a board.
MAX_CAPACITY = {"LUT": 10_000_000, "FF": 20_000_000, "BRAM18": 30_000, "URAM": 5_000, "DSP": 20_000}
_PART_SHAPE = re.compile(r"^xc[a-z0-9]+(-[a-z0-9]+)+$", re.IGNORECASE)
_PACKAGE_END = re.compile(r"[a-z]{2,4}\d{3,4}$")  # a 7-series package inside the first segment (clg400)


@functools.lru_cache(maxsize=1)
def known_parts() -> dict[str, dict]:
    """Every FPGA part FINN's board tables (finn.util.basic.part_map) and our boards/*.yaml name, each with the
    capacity a board file of ours gives it (only "name", the part as spelled there, when FINN alone knows it)."""
    import yaml
    parts: dict[str, dict] = {}
    try:
        from finn.util.basic import part_map
        parts.update({p.lower(): {"name": p} for p in part_map.values()})
    except Exception:  # FINN missing or broken: our own tables still name the parts of every board we ship
        pass
    for path in sorted(BOARDS_DIR.glob("*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        if isinstance(data.get("part"), str) and isinstance(data.get("capacity"), dict):
            parts[data["part"].lower()] = {**data["capacity"], "source": f"boards/{path.name}", "name": data["part"]}
    return parts


def _plausible(part: str) -> bool:
    # <device>[<package>]-[<package>-]<speed grade>[-<temperature>], the speed grade starting with a digit:
    # xc7z020clg400-1, xczu3eg-sbva484-1-i, xck26-sfvc784-2LV-c
    segments = part.lower().split("-")
    if not _PART_SHAPE.match(part) or len(segments) < 2:
        return False
    speed = segments[1] if _PACKAGE_END.search(segments[0]) else segments[2] if len(segments) > 2 else ""
    return speed[:1].isdigit()


def _device(part: str) -> str:
    # xc7z020clg400-1 -> xc7z020, xczu3eg-sbva484-1-i -> xczu3eg: the die, without package and speed grade
    return _PACKAGE_END.sub("", part.lower().split("-")[0])


def check_part(part: str, where: str) -> None:
    """FlowError unless `part` is a part FINN or our boards know, or another package / speed grade of such a die.

    Vivado would only refuse an unknown part at synthesis; without this, an estimate-only build reports a fit and
    a frame rate for a device that does not exist."""
    parts = known_parts()
    if part.lower() in parts:
        return
    if _plausible(part) and _device(part) in {_device(p) for p in parts}:
        return
    close = [parts[p]["name"] for p in difflib.get_close_matches(part.lower(), list(parts), n=3, cutoff=0.5)]
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise FlowError(f"{where}: part {part!r} is not an FPGA part FINN or the board tables know; {hint}"
                    f"use the full Vivado part name of the board's device (known: "
                    f"{', '.join(sorted(p['name'] for p in parts.values()))})")


def check_capacity(part: str, capacity: Mapping[str, int], where: str) -> None:
    """FlowError for a capacity no FPGA has, or more than the board tables give `part`. Less is allowed: it
    reserves resources for other logic."""
    for r, v in capacity.items():
        if v > MAX_CAPACITY[r]:
            raise FlowError(f"{where}: capacity.{r} = {v:,} is more than any FPGA has (at most "
                            f"{MAX_CAPACITY[r]:,}); give the device's real {r} count")
    known = known_parts().get(part.lower(), {})
    for r, v in capacity.items():
        if r in known and v > known[r]:
            raise FlowError(f"{where}: capacity.{r} = {v:,}, but part {part} has {known[r]:,} ({known['source']}); "
                            f"give the real count (use caps.{r}, a fraction, to limit what the design may use)")


def list_boards() -> list[str]:
    return sorted(p.stem for p in BOARDS_DIR.glob("*.yaml"))


def load_board(name: str | Path) -> Board:
    """Load a board by name (boards/<name>.yaml) or from a YAML file path."""
    path = Path(name)
    if path.suffix not in (".yaml", ".yml"):
        path = BOARDS_DIR / f"{name}.yaml"
        if not path.is_file():
            raise FlowError(f"unknown board {str(name)!r}; valid boards: {', '.join(list_boards())}")
    elif not path.is_file():
        raise FlowError(f"board file {path} does not exist")
    return board_from_dict(load_yaml(path), source=str(path))


def board_from_dict(data: Any, source: str = "board") -> Board:
    if not isinstance(data, dict):
        raise FlowError(f"{source}: expected a mapping of board fields")
    fields = {f.name for f in dataclasses.fields(Board)} - {"source"}
    required = fields - {"caps", "finn_board"}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise FlowError(f"{source}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(fields))}")
    missing = sorted(required - set(data))
    if missing:
        raise FlowError(f"{source}: missing field(s) {', '.join(missing)}")
    kwargs = dict(data)
    # Caps may name only the resources they change; the rest keep FINN's guideline limits.
    caps = kwargs.pop("caps", None) or {}
    if not isinstance(caps, dict):
        raise FlowError(f"{source}: 'caps' must be a mapping of resource → fraction")
    kwargs["caps"] = {**DEFAULT_CAPS, **caps}
    kwargs.setdefault("finn_board", None)
    try:
        return Board(**kwargs, source=source)
    except TypeError as e:
        raise FlowError(f"{source}: {e}") from None


def format_boards_table(boards: Iterable[Board] | None = None) -> str:
    """A plain-text table of the boards for `trimflow boards`."""
    boards = list(boards) if boards is not None else [load_board(n) for n in list_boards()]
    header = ("board", "part", "FINN board", "MHz", "LUT", "FF", "BRAM18", "DSP", "URAM")
    rows = [
        (
            b.name,
            b.part,
            b.finn_board or "- (part only)",
            f"{b.clock_mhz:.0f}",
            *(f"{b.capacity[r]:,}" for r in ("LUT", "FF", "BRAM18", "DSP", "URAM")),
        )
        for b in boards
    ]
    return _table(header, rows, left=(0, 1, 2))


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]], left: tuple[int, ...] = (0,)) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    def line(cells: Iterable[str]) -> str:
        cells = [str(c).ljust(w) if i in left else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(cells)

    return "\n".join([line(header), line("-" * w for w in widths), *(line(r) for r in rows)])


@dataclasses.dataclass(frozen=True)
class ResourceFit:
    resource: str
    dataflow: float | None  # FINN's estimate for the dataflow partition; None: not estimated (FINN has no FF model)
    shell: int  # the board's shell overhead estimate
    estimate: float  # dataflow + shell
    cap: int  # usable count under the utilisation cap
    capacity: int
    percent: float  # estimate as % of capacity
    ok: bool


@dataclasses.dataclass(frozen=True)
class FitReport:
    board: str
    rows: tuple[ResourceFit, ...]
    largest_layers: tuple[tuple[str, dict[str, float]], ...] = ()

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    @property
    def over(self) -> list[str]:
        return [r.resource for r in self.rows if not r.ok]

    def table(self) -> str:
        header = ("resource", "dataflow", "shell", "estimate", "cap", "capacity", "%", "")
        rows = [
            (
                r.resource,
                "n/a" if r.dataflow is None else f"{r.dataflow:,.0f}",
                f"{r.shell:,}",
                f"{r.estimate:,.0f}",
                f"{r.cap:,}",
                f"{r.capacity:,}",
                f"{r.percent:.1f}",
                "ok" if r.ok else "OVER",
            )
            for r in self.rows
        ]
        return _table(header, rows)


class BoardFitError(FlowError):
    def __init__(self, report: FitReport):
        self.report = report
        lines = [f"design does not fit board {report.board} (over: {', '.join(report.over)}):", report.table()]
        if report.largest_layers:
            lines.append("largest layers:")
            keys = [r for r in report.over if r != "FF"] or ["LUT"]  # FINN estimates no FF per layer
            for name, res in report.largest_layers:
                lines.append(f"  {name}: " + ", ".join(f"{k} {res.get(k, 0):,.0f}" for k in keys))
        lines.append(
            "Fold the layers more (lower the target fps, or compile.folding: optimize), trim more kernels, "
            "or pick a larger board."
        )
        super().__init__("\n".join(lines))


def check_fit(
    resources: Mapping[str, float],
    board: Board,
    layers: Mapping[str, Mapping[str, float]] | None = None,
    n_largest: int = 5,
) -> FitReport:
    """Check dataflow resource estimates (+ the board's shell overhead) against the board's utilisation caps.

    `resources` maps resource names (RESOURCES) to the dataflow partition's estimate; a missing one is "not
    estimated" (shown as n/a, checked with the shell overhead only).
    `layers` (name → resources) is only used to name the largest layers in the report.
    """
    unknown = sorted(set(resources) - set(RESOURCES))
    if unknown:
        raise FlowError(f"check_fit: unknown resource(s) {unknown}; expected some of {list(RESOURCES)}")
    over_cap = board.over({r: float(v) for r, v in resources.items()})
    rows = []
    for r in RESOURCES:
        dataflow = float(resources[r]) if r in resources else None
        shell = board.shell_overhead[r]
        est = (dataflow or 0.0) + shell  # the figure shown; the verdict is board.over's
        cap, capacity = board.limit(r), board.capacity[r]
        pct = 100.0 * est / capacity if capacity else (0.0 if est == 0 else math.inf)
        rows.append(ResourceFit(r, dataflow, shell, est, cap, capacity, pct, r not in over_cap))
    largest: list[tuple[str, dict[str, float]]] = []
    if layers:
        over = over_cap or ["LUT"]

        def share(item: tuple[str, Mapping[str, float]]) -> float:
            # rank by the largest fraction of capacity the layer takes among the overflowing resources
            return max(float(item[1].get(r, 0)) / max(board.capacity[r], 1) for r in over)

        ranked = sorted(layers.items(), key=share, reverse=True)[:n_largest]
        largest = [(n, {k: float(v) for k, v in res.items()}) for n, res in ranked]
    return FitReport(board.name, tuple(rows), tuple(largest))
