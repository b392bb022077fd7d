"""The base model's evaluation (stage config ``evaluate_only``, stage 0): no training.

Both paths run it before stage 1 when :func:`ctxext.decide.baseline_needed` says so: the operator as
the PyTorchJob ``<cej>-s0-a<n>`` on stage 1's pods, `ctxext run` with torchrun on stage 1's processes.
Every rank loads the base model at the base RoPE theta and runs the same
:func:`ctxext_trainer.eval.stage.evaluate_stage` a stage runs after training (the evaluation splits
its samples across ranks); rank 0 writes ``result.json`` (status Succeeded, ``evaluation`` = the
baseline, ``stepsDone`` 0) and reports it to ``status.results`` like a stage result.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ctxext.results import StageResult, write_result
from ctxext.stage_config import StageConfig
from ctxext_trainer import exit_codes
from ctxext_trainer.distributed import Topology
from ctxext_trainer.metrics import TrainerMetrics
from ctxext_trainer.model_loading import load_causal_lm, resolve_model_path
from ctxext_trainer.reporting import StatusReporter
from ctxext_trainer.rope import keep_rope_fp32
from ctxext_trainer.tokenizer import load_tokenizer


def evaluate_base(config: StageConfig, topo: Topology) -> int:
    """Evaluate ``config.model_path`` at ``config.rope_theta`` and ``config.eval_lengths``; exit code."""
    from ctxext_trainer.eval.stage import evaluate_stage  # owned by the evaluation package; lazy on purpose

    started = time.time()
    out = Path(config.output_dir)
    if topo.is_rank0:
        out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(resolve_model_path(config.model_path))
    lengths = config.eval_lengths or [config.seq_len]
    loaded = load_causal_lm(config.model_path, theta=config.rope_theta, seq_len=max(lengths), device=config.device,
                            activation_checkpointing=False)
    model = loaded.model
    keep_rope_fp32(model)
    if config.device == "cuda":
        model = model.to(torch.device("cuda", torch.cuda.current_device()))
    model.eval()
    metrics = TrainerMetrics(config, topo.rank)
    metrics.serve(config.metrics_port + topo.local_rank if config.metrics_port else 0)
    try:
        with torch.no_grad():
            evaluation = dict(evaluate_stage(model, tokenizer, config, output_dir=out, is_rank0=topo.is_rank0,
                                             registry=metrics.registry))
        result = StageResult(status="Succeeded", job_name=config.job_name, stage=0, attempt=config.attempt,
                             seq_len=config.seq_len, rope_theta=config.rope_theta, steps_done=0, total_steps=0,
                             model_path=config.model_path, evaluation=evaluation, wall_seconds=time.time() - started)
        if topo.is_rank0:
            write_result(out, result)
            StatusReporter(config, is_rank0=True).result(result.to_wire())
        return exit_codes.OK
    finally:
        metrics.close()
