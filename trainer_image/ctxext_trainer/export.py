"""Write the stage's final Hugging Face model directory ``<output_dir>/model`` (safetensors + tokenizer).

All ranks call :func:`export_model` (under ZeRO-3 the full weights are gathered layer by layer to
rank 0); rank 0 writes ``model.tmp/`` and renames it to ``model/``. ``config.json`` carries the
stage's ``rope_parameters`` (the base model's RoPE type and parameters, with the stage's ``rope_theta``) and
``max_position_embeddings >= seqLen``, so the next stage — or any transformers user — loads the
model with the theta it was trained at.

``config.json`` also carries the keys transformers 4.x, converters and inference servers read
(:func:`legacy_rope_keys`): a top-level ``rope_theta``, and ``rope_scaling`` (``null`` for the
default type). Without them such a reader falls back to its default base (10000 / 500000) and
silently runs a 1M-token model at the wrong theta. transformers 5 reads both forms and agrees.
"""

from __future__ import annotations

import json
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


def legacy_rope_keys(rope_parameters: dict[str, Any]) -> dict[str, Any]:
    """The transformers-4.x view of 5.x ``rope_parameters``: top-level ``rope_theta`` and ``rope_scaling``.

    4.x keeps the base out of ``rope_scaling`` and has ``rope_scaling: null`` for plain RoPE.

    >>> legacy_rope_keys({"rope_type": "default", "rope_theta": 3580165449.0})
    {'rope_theta': 3580165449.0, 'rope_scaling': None}
    >>> legacy_rope_keys({"rope_type": "llama3", "rope_theta": 2.5e6, "factor": 8.0, "low_freq_factor": 1.0,
    ...                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})["rope_scaling"]
    ... # doctest: +NORMALIZE_WHITESPACE
    {'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
     'original_max_position_embeddings': 8192}
    """
    scaling = {k: v for k, v in rope_parameters.items() if k != "rope_theta"}
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    return {"rope_theta": float(rope_parameters["rope_theta"]),
            "rope_scaling": None if rope_type == "default" else scaling}


def add_legacy_rope_keys(model_dir: Path) -> None:
    """Write :func:`legacy_rope_keys` into ``model_dir/config.json`` (next to ``rope_parameters``)."""
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    params = config.get("rope_parameters")
    if isinstance(params, dict) and "rope_theta" in params:  # per-layer-type (nested) RoPE has no 4.x form
        config.update(legacy_rope_keys(params))
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


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
        add_legacy_rope_keys(tmp)
        tokenizer.save(tmp)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    barrier()
    return final
