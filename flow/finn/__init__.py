"""FINN compilation for trimflow.

adapter  — the only place that touches finn-plus's environment (import FINN through it)
compile  — CompileConfig / compile_model: QONNX → estimates, generated RTL, fit check, verification
design   — the compile output folder's layout, the host-side ops around the accelerator, relocation after a move
rules    — finn-plus's rules trimflow depends on (MVAU_rtl SIMD < MW, pool / window-generator tie, step tracking,
           absolute paths), each with why
folding  — optimize_folding: PE/SIMD per layer for the most fps within a board's caps
reports  — parse FINN's estimate JSONs; format a compile summary
"""
