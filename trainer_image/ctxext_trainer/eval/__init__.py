"""Long-context evaluation: passkey and needle-in-a-haystack grids, RULER-style multi-key needles
and variable tracking, perplexity by length and position, heatmaps, gauges.

Entry points: :func:`ctxext_trainer.eval.stage.evaluate_stage` (the trainer, after a stage) and
:func:`ctxext_trainer.eval.suite.evaluate_model` (the local runner's baseline, ``ctxext eval``).
The gates that read the result live in :mod:`ctxext.gates` (no torch).
"""
