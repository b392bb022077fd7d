"""Facts about the base model the planner needs: θ0, head dim, L0 and shape.

The spec's values win; what it leaves out is read from the checkpoint's ``config.json`` when the
source is local (``file://`` or the packaged ``builtin://`` models). On a cluster the operator
cannot read the model volume, so there the spec must carry them (the CRD says which).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctxext.api.spec import ModelArchitecture, ModelSpec
from ctxext.errors import SpecError

BUILTIN_DIR = Path(__file__).parent / "data"


@dataclass(frozen=True, kw_only=True)
class ModelInfo:
    """Resolved base-model facts."""

    rope_theta: float | None
    """θ0, the model's RoPE base."""
    head_dim: int | None
    """Attention head dimension d."""
    original_context_length: int | None
    """L0, the context the model was trained at."""
    architecture: ModelArchitecture | None
    """Shape, for the memory estimate."""
    config_path: str | None = None
    """The config.json the missing facts came from, if any."""
    rope_config: dict[str, Any] | None = None
    """The checkpoint's ``rope_parameters`` (or legacy ``rope_scaling``), when config.json was read."""


def local_model_dir(source: str) -> Path | None:
    """The local directory of a file:// or builtin:// source; None for remote sources.

    >>> local_model_dir("file:///models/llama-3-8b")
    PosixPath('/models/llama-3-8b')
    >>> str(local_model_dir("builtin://tiny")).endswith("data/tiny")
    True
    """
    if source.startswith("file://"):
        return Path(source[len("file://"):])
    if source.startswith("builtin://"):
        return BUILTIN_DIR / source[len("builtin://"):]
    return None


def _rope_theta_of(config: dict[str, Any]) -> float | None:
    params = config.get("rope_parameters") or {}
    if isinstance(params, dict) and "rope_theta" in params:
        return float(params["rope_theta"])
    return float(config["rope_theta"]) if "rope_theta" in config else None


def _rope_config_of(config: dict[str, Any]) -> dict[str, Any] | None:
    params = config.get("rope_parameters") or config.get("rope_scaling")
    return dict(params) if isinstance(params, dict) else None


def _architecture_of(config: dict[str, Any]) -> ModelArchitecture | None:
    try:
        return ModelArchitecture(
            num_layers=config["num_hidden_layers"], hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"], num_attention_heads=config["num_attention_heads"],
            num_key_value_heads=config.get("num_key_value_heads"), vocab_size=config["vocab_size"],
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        )
    except (KeyError, ValueError, TypeError):
        return None


def read_config(source: str) -> tuple[dict[str, Any], str] | None:
    """The parsed config.json of a local model, or None when there is none to read."""
    directory = local_model_dir(source)
    if directory is None:
        return None
    path = directory / "config.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SpecError([("spec.model.source", f"cannot read {path}: {exc}")]) from exc
    if not isinstance(data, dict):
        raise SpecError([("spec.model.source", f"{path} is not a JSON object")])
    return data, str(path)


def resolve_model_info(model: ModelSpec) -> ModelInfo:
    """Merge the spec with the checkpoint's config.json (spec first)."""
    found = read_config(model.source)
    config, config_path = found if found else ({}, None)
    heads = config.get("num_attention_heads")
    derived_head_dim = config.get("head_dim") or (config["hidden_size"] // heads
                                                  if heads and "hidden_size" in config else None)
    return ModelInfo(
        rope_theta=model.rope_theta if model.rope_theta is not None else _rope_theta_of(config),
        head_dim=model.head_dim if model.head_dim is not None else derived_head_dim,
        original_context_length=(model.original_context_length if model.original_context_length is not None
                                 else config.get("max_position_embeddings")),
        architecture=model.architecture or (_architecture_of(config) if config else None),
        config_path=config_path,
        rope_config=_rope_config_of(config),
    )
