"""Design-space sweeps: trim budget × bit width × board (× target fps × trim criterion) on Ray, with the normal
stage cache shared between trials, the Pareto front of the results, and the builds behind it.

spec.py (the grid and each trial's config) → engine.py (the Ray task graph, resume, lock) → trials.py (what a worker
runs) → front.py (front, table, plots); command.py is `trimflow sweep`.
"""

from trimflow.sweep.engine import SweepRun, run_sweep
from trimflow.sweep.front import pareto_front, write_results
from trimflow.sweep.spec import Axes, SweepSpec, Trial, load_spec, trials

__all__ = ["Axes", "SweepRun", "SweepSpec", "Trial", "load_spec", "pareto_front", "run_sweep", "trials",
           "write_results"]
