"""The flow's stages, one module each, in pipeline order:

1. relevance — score every kernel                            → relevance.json
2. trim      — remove kernels, refit, fine-tune               → model.pt (float)
3. quantize  — Brevitas QAT                                   → model.pt (quantized)
4. export    — QONNX, checked against Brevitas               → model.qonnx.onnx
5. compile   — FINN: HW layers, folding, estimates, RTL       → finn/ (the compiled design, trimflow.finn.design)
6. simulate  — Verilator on real images, FIFO sizing          → verilator/, fifo_depths.json
7. synth     — Vivado bitfile where it exists; deploy package → deploy/
8. report    — report.md / report.json / plots

Each module has spec(inputs) (what the stage's cache key holds and which stages it reads) and run(inputs, ctx,
config) (the body, a thin call into the libraries beside this package: trimflow.trim, trimflow.finn, trimflow.sim,
...). trimflow.build puts them in this order (this package imports none of them, so that the typed results in
trimflow.stages.results are importable on their own); trimflow.stage_cache runs and caches them.
"""
