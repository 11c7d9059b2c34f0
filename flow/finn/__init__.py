"""FINN compilation for trimflow.

adapter  — the only place that touches finn-plus's environment (import FINN through it)
compile  — CompileConfig / compile_model: QONNX → estimates, generated RTL, fit check, verification
folding  — optimize_folding: PE/SIMD per layer for the most fps within a board's caps
reports  — parse FINN's estimate JSONs; format a compile summary
"""
