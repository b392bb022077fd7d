"""Load the stage's starting model (a local Hugging Face Llama-family directory) with its new theta.

The theta goes into ``config.rope_parameters`` *before* the model is built, and the rotary module
is rebuilt afterwards all the same (:func:`ctxext_trainer.rope.set_rope_theta`), so neither a
config that transformers re-standardises nor a cached rotary module can keep the old base.
Loading is offline (``HF_HUB_OFFLINE=1``, ``local_files_only``). Under ZeRO-3 a
``HfDeepSpeedConfig`` kept alive during ``from_pretrained`` makes transformers build the model
inside ``deepspeed.zero.Init``, so no rank ever holds the full model.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ctxext_trainer.rope import apply_stage_rope, set_rope_theta
from ctxext_trainer.speed import decoder_layers, enable_activation_checkpointing


@dataclass
class LoadedModel:
    model: Any
    attn_implementation: str
    dtype: torch.dtype
    hf_ds_config: Any = None
    """Keeps transformers' ZeRO-3 awareness alive while the engine exists."""
    checkpointed_layers: int | None = None
    """Decoder layers that recompute in backward (None: checkpointing off)."""
    num_layers: int = 0


def attention_implementation(device: str) -> str:
    """flash_attention_2 on CUDA when the package is installed, else sdpa (Ulysses needs one of them);
    under sdpa, torch picks its fastest backend (flash / cuDNN / memory-efficient, math on CPU), in
    the order ``CTXEXT_SDPA_BACKENDS`` sets (:mod:`ctxext_trainer.speed`)."""
    if device == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def training_dtype(device: str) -> torch.dtype:
    """bf16 on GPU (DeepSpeed keeps fp32 master weights), fp32 on CPU."""
    return torch.bfloat16 if device == "cuda" else torch.float32


def resolve_model_path(model_path: str) -> str:
    """The directory (or offline Hugging Face cache id) ``from_pretrained`` gets for a stage's model_path.

    ``file://`` and ``builtin://`` become local directories; a plain path stays; anything else that
    is not a directory is taken as a repo id in the offline cache (``HF_HOME``, the operator's
    ``hf://`` convention). ``s3://`` is not supported yet.

    >>> resolve_model_path("file:///models/llama-3-8b"), resolve_model_path("meta-llama/Meta-Llama-3-8B")
    ('/models/llama-3-8b', 'meta-llama/Meta-Llama-3-8B')
    """
    from ctxext.model_info import local_model_dir

    if model_path.startswith("s3://"):
        raise ValueError(f"model path {model_path!r}: s3:// is not supported yet; put the model on a PVC")
    local = local_model_dir(model_path)
    return str(local) if local is not None else model_path


def load_causal_lm(model_dir: str | Path, *, theta: float, seq_len: int, device: str,
                   activation_checkpointing: bool, ds_config: dict[str, Any] | None = None,
                   checkpointed_layers: int | None = None) -> LoadedModel:
    """The model of ``model_dir`` with the stage's RoPE theta, ready for ``deepspeed.initialize``.

    With ``activation_checkpointing``, ``checkpointed_layers`` decoder layers recompute in backward
    (None = all; :func:`ctxext_trainer.speed.enable_activation_checkpointing`)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = resolve_model_path(str(model_dir))
    if Path(path).is_dir() and not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"model directory {path} has no config.json")
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    apply_stage_rope(config, theta, seq_len)
    attn = attention_implementation(device)
    dtype = training_dtype(device)
    hf_ds_config = None
    if ds_config is not None and ds_config.get("zero_optimization", {}).get("stage") == 3:
        from transformers.integrations import HfDeepSpeedConfig

        hf_ds_config = HfDeepSpeedConfig(ds_config)
    model = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=dtype, attn_implementation=attn,
                                                 local_files_only=True)
    set_rope_theta(model, theta, seq_len)
    model.config.use_cache = False
    checkpointed = None
    if activation_checkpointing:
        checkpointed = enable_activation_checkpointing(model, checkpointed_layers)
    return LoadedModel(model=model, attn_implementation=attn, dtype=dtype, hf_ds_config=hf_ds_config,
                       checkpointed_layers=checkpointed, num_layers=len(decoder_layers(model)))


def load_for_evaluation(model_dir: str | Path, *, device: str) -> Any:
    """The exported stage model, whole on this rank, in eval mode (after the engine is released).

    Evaluation runs on the saved model — exactly what the next stage starts from — so it needs no
    ZeRO-3 gathering in lock-step and no sequence parallelism (Ulysses passes through in eval mode).
    """
    from transformers import AutoModelForCausalLM
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()  # else from_pretrained would partition the model again
    model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=training_dtype(device),
                                                      attn_implementation=attention_implementation(device),
                                                      local_files_only=True)
    model.config.use_cache = False  # the export says True for inference servers; evaluation asks for a cache only
    # where it decodes (eval.generate), never for losses
    if device == "cuda":
        model = model.to(torch.device("cuda", torch.cuda.current_device()))
    return model.eval()
