"""``python -m ctxext_trainer.tiny.evaluate --stage-config F --out FILE``: evaluate a model, no training.

`ctxext run` uses it for the baseline: the base model (``model_path``, at the config's ``rope_theta``)
through the same :func:`ctxext_trainer.eval.stage.evaluate_stage` the trainer runs after each stage,
at the config's ``eval_lengths``; plots go to ``output_dir``, the evaluation dict to ``--out``.
Single process: a one-rank gloo group is set up so sequence-parallel-aware code runs unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ctxext.stage_config import StageConfig, read_stage_config


def plot_title(config: StageConfig) -> str:
    """The baseline's plots are the base model's, not stage 1's: ``tiny-cpu base model (θ 10,000)``."""
    return f"{config.job} base model (θ {config.rope_theta:,.0f})"


def evaluate_config(config: StageConfig) -> dict[str, Any]:
    """The evaluation of ``config.model_path`` as the trainer would report it after a stage."""
    from ctxext_trainer.eval.stage import evaluate_stage
    from ctxext_trainer.model_loading import load_causal_lm
    from ctxext_trainer.tokenizer import load_tokenizer

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    lengths = config.eval_lengths or [config.seq_len]
    loaded = load_causal_lm(config.model_path, theta=config.rope_theta, seq_len=max(lengths), device="cpu",
                            activation_checkpointing=False)
    model = loaded.model
    model.eval()
    tokenizer = load_tokenizer(config.model_path)
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    own_group = not torch.distributed.is_initialized()
    if own_group:
        store = Path(tempfile.mkdtemp(prefix="ctxext-eval-")) / "store"
        torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    try:
        with torch.no_grad():
            return dict(evaluate_stage(model, tokenizer, config, output_dir=Path(config.output_dir), is_rank0=True,
                                       title=plot_title(config)))
    finally:
        if own_group:
            torch.distributed.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ctxext_trainer.tiny.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--stage-config", required=True, help="stage config (model_path, eval_lengths, evaluation)")
    parser.add_argument("--out", required=True, help="where to write the evaluation JSON")
    args = parser.parse_args(argv)
    evaluation = evaluate_config(read_stage_config(args.stage_config))
    out = Path(args.out)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(evaluation, indent=2, sort_keys=True))
    tmp.replace(out)
    return 0


if __name__ == "__main__":
    from ctxext_trainer.exit_codes import exit_now

    exit_now(main())  # gloo's threads must not turn a finished evaluation into an abort
