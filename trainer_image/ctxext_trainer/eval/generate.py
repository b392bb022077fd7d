"""Batched greedy decoding with a KV cache (prefilled in chunks), and batched next-token losses
without one, for any HF causal LM.

Prompts of a batch are left-padded; positions count real tokens only, so a padded prompt sees the
same RoPE positions as it would alone::

    prompt A (5 tokens):  a a a a a      mask 1 1 1 1 1   positions 0 1 2 3 4
    prompt B (3 tokens):  _ _ b b b      mask 0 0 1 1 1   positions 0 0 0 1 2

Decoding always runs exactly ``max_new_tokens`` steps (no early stop), so every rank of a group
makes the same number of model calls — what a ZeRO-3-partitioned model needs, whose every forward
gathers weights collectively.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

LOSS_CHUNK = 1024
"""Positions per chunk when projecting hidden states to the vocabulary (bounds logits memory)."""
PREFILL_CHUNK = 4096
"""Prompt tokens per forward when prefilling the KV cache (bounds the MLP intermediates)."""


@contextlib.contextmanager
def own_attention() -> Iterator[None]:
    """Inside: every attention implementation is transformers' own again.

    DeepSpeed-Ulysses (``register_with_transformers``) replaces the core implementation (``sdpa``,
    or the ring) process-wide with a wrapper that sets the attention mask to None — in eval mode too
    (``disable_in_eval`` only skips the all-to-all). A left-padded batch would then attend to its pads.
    The replacement sits in the process-wide interface's local overrides; they are set aside here.
    """
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    overrides = dict(ALL_ATTENTION_FUNCTIONS._local_mapping)
    ALL_ATTENTION_FUNCTIONS._local_mapping.clear()
    try:
        yield
    finally:
        ALL_ATTENTION_FUNCTIONS._local_mapping.update(overrides)


def unwrap(model: Any) -> Any:
    """The Hugging Face module inside a DeepSpeed engine or DDP wrapper."""
    while isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model


def model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - parameterless stub
        return torch.device("cpu")


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, position_ids) of left-padded prompts.

    >>> ids, mask, pos = left_pad([[5, 6, 7], [8]], pad_id=0, device=torch.device("cpu"))
    >>> ids.tolist(), mask.tolist(), pos.tolist()
    ([[5, 6, 7], [0, 0, 8]], [[1, 1, 1], [0, 0, 1]], [[0, 1, 2], [0, 0, 0]])
    """
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if p:
            ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
            mask[i, width - len(p):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), pos.to(device)


def _cache_kwarg(lm: Any) -> str:
    """Name of the KV-cache argument: ``cache`` (transformers ≥ 5.2x) or ``past_key_values`` (earlier)."""
    params = inspect.signature(lm.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _cache_of(out: Any) -> Any:
    return out.cache if getattr(out, "cache", None) is not None else out.past_key_values


@torch.no_grad()
@own_attention()
def greedy_generate(model: Any, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, pad_id: int
                    ) -> list[list[int]]:
    """The ``max_new_tokens`` greedy continuation tokens of each prompt (padding masked, whatever
    attention wrapper a training stage registered: :func:`own_attention`)."""
    lm = unwrap(model)
    ids, mask, pos = left_pad(prompts, pad_id, model_device(lm))
    name, cache = _cache_kwarg(lm), None
    for start in range(0, ids.shape[1], PREFILL_CHUNK):  # chunked prefill: one chunk's MLP intermediates
        end = start + PREFILL_CHUNK
        out = lm(input_ids=ids[:, start:end], attention_mask=mask[:, :end], position_ids=pos[:, start:end],
                 use_cache=True, logits_to_keep=1, **({name: cache} if cache is not None else {}))
        cache = _cache_of(out)
    next_tok = out.logits[:, -1, :].argmax(-1)
    generated = [next_tok]
    for _ in range(max_new_tokens - 1):
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        pos = pos[:, -1:] + 1
        out = lm(input_ids=next_tok[:, None], attention_mask=mask, position_ids=pos, use_cache=True,
                 logits_to_keep=1, **{name: cache})
        cache = _cache_of(out)
        next_tok = out.logits[:, -1, :].argmax(-1)
        generated.append(next_tok)
    return torch.stack(generated, dim=1).tolist()


def truncate_at_eos(tokens: Sequence[int], eos_id: int | None) -> list[int]:
    """Tokens before the first end-of-sequence token.

    >>> truncate_at_eos([52, 53, 2, 54], eos_id=2)
    [52, 53]
    """
    out = list(tokens)
    if eos_id is not None and eos_id in out:
        out = out[: out.index(eos_id)]
    return out


@torch.no_grad()
def token_losses(model: Any, input_ids: torch.Tensor) -> torch.Tensor:
    """Next-token negative log-likelihood, shape ``[batch, length - 1]`` (float32): entry ``p - 1``
    is the loss of predicting token ``p`` from tokens ``0..p-1``. The vocabulary projection runs in
    chunks of :data:`LOSS_CHUNK` positions, so a 1M-token sequence never materializes full logits."""
    lm = unwrap(model)
    input_ids = input_ids.to(model_device(lm))
    base, head = getattr(lm, "base_model", None), lm.get_output_embeddings()
    if base is None or base is lm or head is None:  # no separate trunk: plain forward
        logits = lm(input_ids=input_ids, use_cache=False).logits[:, :-1].float()
        return F.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none")
    hidden = base(input_ids=input_ids, use_cache=False).last_hidden_state[:, :-1]
    targets = input_ids[:, 1:]
    parts = []
    for start in range(0, hidden.shape[1], LOSS_CHUNK):
        logits = head(hidden[:, start:start + LOSS_CHUNK]).float()
        parts.append(F.cross_entropy(logits.transpose(1, 2), targets[:, start:start + LOSS_CHUNK], reduction="none"))
    return torch.cat(parts, dim=1)
