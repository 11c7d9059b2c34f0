"""finn-plus 1.6.1's rules that trimflow depends on, in one place, each with why it holds.

Everything here is a fact about FINN (its RTL, its builder, the paths it writes), not a trimflow choice: the folding
search, the simulator's checker, the compile and synthesis stages all ask this module instead of restating a rule.
When finn-plus is upgraded, this is the file to re-check.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Any, Callable

# ---------------------------------------------------------------- MVAU_rtl: SIMD == MW loses outputs

# finn-rtllib's MVAU_rtl (mvu_vvu_axi.sv, finn-plus 1.6.1) cannot take back-pressure when SIMD == MW.
# Its output side is a queue that catches every result leaving the DSP pipeline; on back-pressure it locks the
# compute input ("OLock") and relies on the queue to absorb what is still in flight. The queue holds
# MAX_IN_FLIGHT + 1 entries with MAX_IN_FLIGHT = CORE_PIPELINE_DEPTH (3 + clog2(SIMD+1) for DSP48 cores), but
# with MW/SIMD = 1 every input beat completes an output, so when the lock engages it has to take the entry it
# already holds, the one arriving that cycle and one per pipeline stage: PIPELINE_DEPTH + 2 entries, where mvu.sv's
# PIPELINE_DEPTH is 3 + clog2(SIMD) + 1 (one more than the wrapper assumes when SIMD is not a power of two).
# A stall of about PIPELINE_DEPTH cycles therefore overflows it: Verilator stops on the RTL's own assertion
# ("Overflowing output queue"), hardware silently drops outputs (the signed queue pointer wraps to "empty").
# With MW/SIMD >= 2 at most ceil((PIPELINE_DEPTH + 1) / 2) + 1 entries are needed, always within the queue.
# Measured with the module alone under Verilator (W8A8, MH=8, PE=4): SIMD=MW=9 and SIMD=MW=8 overflow once the
# output stalls for 8 cycles; MW=18, SIMD=9 runs with 100-cycle stalls. This is the RTL, not a simulator artefact:
# the pipeline-depth and queue logic are the same in mvu.sv's behavioural (Verilator) and DSP (Vivado) paths.
# VVAU_rtl uses the same wrapper and very likely has the same limit; the simulator does not support it yet.


def mvau_rtl_loses_outputs(op_type: str, mw: int, simd: int) -> bool:
    """True when FINN's RTL matrix-vector unit drops outputs under back-pressure with this folding (SIMD == MW)."""
    return op_type == "MVAU_rtl" and simd == mw


def mvau_rtl_folding_issue(name: str, op_type: str, mw: int, simd: int) -> str | None:
    """Why FINN's RTL matrix-vector unit cannot run with this folding (None if it can), as a user-facing message.

    The constraint for a folding search: for MVAU_rtl, SIMD must be a proper divisor of MW (MW/SIMD >= 2).
    """
    if not mvau_rtl_loses_outputs(op_type, mw, simd):
        return None
    depth = 3 + (simd - 1).bit_length() + (simd == 1) + 1  # mvu.sv PIPELINE_DEPTH (DSP48 cores)
    fits = [d for d in range(1, mw // 2 + 1) if mw % d == 0]
    hint = (f"Fold it with SIMD={fits[-1]} (a proper divisor of MW, so MW/SIMD >= 2) and raise PE instead for "
            f"throughput" if fits else "MW=1 leaves no valid SIMD; implement this layer in HLS")
    return (f"layer {name} ({op_type}) has SIMD={simd} equal to its input length MW={mw}; FINN's RTL MVU "
            f"(finn-rtllib mvu_vvu_axi.sv) then finishes an output every cycle and overflows its output queue when "
            f"the next layer stalls for about its pipeline depth ({depth} cycles) "
            f"or longer: outputs are lost on hardware and the simulation stops with 'Overflowing output queue'. "
            f"{hint}")


# ---------------------------------------------------------------- max pool: folded like its window generator


def pool_window_generators(model: Any) -> dict[str, str]:
    """Pool node → the sliding-window generator that feeds it alone (FINN's InferPool pairs them).

    The generator emits each window as K beats of SIMD channels and the pool reads K beats of PE channels, so the
    two must be folded alike (SIMD = PE, one window position per beat): with different widths FINN inserts a width
    converter that regroups channels across window positions and the pool computes the wrong maxima, on hardware as
    in our simulation, while FINN's python model (which works on whole tensors) does not notice.
    """
    pairs = {}
    for node in model.graph.node:
        if not node.op_type.startswith("Pool"):
            continue
        src = model.find_producer(node.input[0])
        if (src is not None and src.op_type.startswith("ConvolutionInputGenerator")
                and len(model.find_consumers(src.output[0]) or []) == 1):
            pairs[node.name] = src.name
    return pairs


def tie_window_generator(swg: Any, pe: int) -> dict[str, int]:
    """Fold a pool's window generator (a FINN custom-op instance) as the pool: SIMD = the pool's PE, one window
    position per beat. Returns the folding it set."""
    folding = {"SIMD": pe}
    if "parallel_window" in swg.get_nodeattr_types():
        folding["parallel_window"] = 0  # a whole window per beat is not the K-beat layout the pool reads
    for a, v in folding.items():
        swg.set_nodeattr(a, v)
    return folding


# ---------------------------------------------------------------- FIFOs and width converters: how FINN inserts them

# FINN's InsertDWC adds a StreamingDataWidthConverter on every stream whose two ends' widths differ, and InsertFIFO
# (create_shallow_fifos=True, as step_set_fifo_depths runs it) a StreamingFIFO on every stream between two
# dataflow nodes, width converters included, plus one in front of the first node and one behind the last. A FIFO's
# depth is the larger of its producer's outFIFODepths and its consumer's inFIFODepths entry for that stream (FINN
# clamps the port index to the attribute's length, so a one-entry attribute covers every port). Both transforms
# leave the nodes they add unnamed, and SpecializeLayers, when it specialises anything, renames every node of the
# graph (GiveUniqueNodeNames: `<op_type>_<k>`, k counting that op type in graph order). The design
# (trimflow.finn.design) and the simulator refer to width converters by name; both insert them here and then
# specialise, so a width converter gets the same name, StreamingDataWidthConverter_rtl_<k>, in both, and the
# layers keep the names FINN gave them in the compile stage.


def insert_width_converters(model: Any) -> Any:
    """FINN's InsertDWC; each new node gets a provisional name `<op_type>_sim_<index>` until SpecializeLayers names
    it (above). Call inside a finn_session."""
    from finn.transformation.fpgadataflow.insert_dwc import InsertDWC

    model = model.transform(InsertDWC())
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_sim_{i}"
    return model


# ---------------------------------------------------------------- FINN's builder: which step failed


class StepTracker:
    """Wraps builder steps to learn which one failed and with what: FINN's builder (build_dataflow_cfg) only logs
    the failure and returns a non-zero code (or re-raises under pytest), so the step and the exception are lost
    unless the steps record them themselves."""

    def __init__(self) -> None:
        self.step: str | None = None
        self.error: BaseException | None = None
        self.trace: str = ""

    def wrap(self, fn: Callable, name: str | None = None) -> Callable:
        from finn.util.exception import FINNUserError

        name = name or fn.__name__

        def step(model: Any, cfg: Any) -> Any:
            self.step = name
            try:
                return fn(model, cfg)
            except Exception as e:
                self.error, self.trace = e, traceback.format_exc()
                logging.getLogger("build_dataflow").info("trimflow: step %s failed:\n%s", name, self.trace)
                # A FINNUserError makes the builder log one line instead of printing a traceback to the console.
                raise FINNUserError(f"{name}: {type(e).__name__}: {e}") from e

        step.__name__ = name  # the builder names steps (logs, intermediate model files) by __name__
        return step

    def failed(self, e: BaseException) -> None:
        """The builder itself raised `e` (it does under pytest): keep it unless a step already recorded its own."""
        if self.error is None:
            self.error, self.trace = e, traceback.format_exc()

    def what(self) -> str:
        """'<exception type>: <message>' of the failure, or where to look when none was caught."""
        return f"{type(self.error).__name__}: {self.error}" if self.error is not None else "see the log"


# ---------------------------------------------------------------- FINN's absolute paths


def rewrite_paths(root: Path, old: str, new: str) -> None:
    """Rewrite absolute paths `old…` to `new…` in every file under `root`.

    FINN bakes absolute paths into node attributes (code_gen_dir_*, ip_path, ...) and generated sources (e.g. a
    memstream's INIT_FILE), so a FINN output folder only works where it was built until they are rewritten."""
    import onnx

    for path in root.rglob("*"):
        if not path.is_file() or path.stat().st_size > 64 << 20:
            continue
        data = path.read_bytes()
        if old.encode() not in data:
            continue
        if path.suffix == ".onnx":  # protobuf strings are length-prefixed: edit them through onnx
            model = onnx.load(str(path), load_external_data=False)
            for node in _all_nodes(model.graph):
                for a in node.attribute:
                    if a.type == onnx.AttributeProto.STRING and old.encode() in a.s:
                        a.s = a.s.replace(old.encode(), new.encode())
            onnx.save(model, str(path))
        else:
            path.write_bytes(data.replace(old.encode(), new.encode()))


def _all_nodes(graph: Any) -> list:
    nodes = []
    for n in graph.node:
        nodes.append(n)
        for a in n.attribute:
            if a.g is not None and len(a.g.node):
                nodes.extend(_all_nodes(a.g))
    return nodes
