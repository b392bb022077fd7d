"""Write the stage's final Hugging Face model directory ``<output_dir>/model`` (safetensors + tokenizer).

All ranks call :func:`export_model` (under ZeRO-3 the full weights are gathered layer by layer to
rank 0); rank 0 writes ``model.tmp/`` and renames it to ``model/``. ``config.json`` carries the
stage's ``rope_parameters`` (the base model's RoPE type and parameters, with the stage's ``rope_theta``) and
``max_position_embeddings >= seqLen``, so the next stage — or any transformers user — loads the
model with the theta it was trained at.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ctxext_trainer.distributed import barrier

PREFIX = "lm."


def full_state_dict(engine: Any, zero_stage: int) -> dict[str, Any] | None:
    """The HF model's full state dict on rank 0 (None elsewhere under ZeRO-3)."""
    state = engine._zero3_consolidated_16bit_state_dict() if zero_stage == 3 else engine.module.state_dict()
    if state is None:
        return None
    return {k[len(PREFIX):] if k.startswith(PREFIX) else k: v.detach().cpu().contiguous() for k, v in state.items()}


def export_model(engine: Any, lm: Any, tokenizer: Any, output_dir: Path, *, zero_stage: int, is_rank0: bool) -> Path:
    """Save ``<output_dir>/model`` atomically; returns its path."""
    state = full_state_dict(engine, zero_stage)
    final, tmp = output_dir / "model", output_dir / "model.tmp"
    if is_rank0:
        assert state is not None
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        use_cache = lm.config.use_cache
        lm.config.use_cache = True
        try:
            lm.save_pretrained(str(tmp), state_dict=state, safe_serialization=True)
        finally:
            lm.config.use_cache = use_cache
        tokenizer.save(tmp)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    barrier()
    return final
