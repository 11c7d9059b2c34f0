"""Cycle-accurate simulation of FINN-generated RTL with Verilator (no Vivado needed)."""

from trimflow.sim.simulator import SimConfig, SimResult, Simulator, build_simulator, diagnose_stall

__all__ = ["SimConfig", "SimResult", "Simulator", "build_simulator", "diagnose_stall"]
