"""One long sequence evaluated by all ranks of a sequence group: the training layout, without autograd.

The ``R`` ranks of a stage's sequence group hold one sequence in the zigzag layout of training
(:mod:`ctxext_trainer.zigzag`, as a ring of ``R``, Ulysses 1): rank ``r`` keeps chunks ``r`` and
``2R − 1 − r`` of ``2R`` and attends across the ring (:func:`ctxext_trainer.ring_attention.sharded_evaluation`),
so a rank holds ``n / R`` tokens' activations and two K/V blocks of ``n / R`` tokens, never the
whole sequence, and no KV cache. Worked example, n = 10 tokens, R = 2: padded at the end to 12
(a multiple of 2R; causal attention keeps the pads out of every real token's view), chunks of 3::

    rank 0 holds positions 0 1 2 | 9 10 11      rank 1 holds 3 4 5 | 6 7 8

Losses: each rank scores its positions whose next token is real (``p + 1 < n``), the group
all-gathers the ``n − 1`` values in position order. Greedy decoding: the rank that holds position
``n − 1`` picks the next token and the group agrees on it (an all-reduce); each new token re-runs
the sharded forward over the grown prompt (no cache: a retrieval answer is a few tokens, and a
cache of the whole prompt is exactly what does not fit).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ctxext_trainer.eval.generate import LOSS_CHUNK, model_device, unwrap
from ctxext_trainer.ring_attention import sharded_evaluation
from ctxext_trainer.zigzag import shard_indices


def padded_length(n: int, ranks: int) -> int:
    """``n`` rounded up to a multiple of ``2 · ranks`` (the zigzag chunks).

    >>> padded_length(10, 2), padded_length(12, 2), padded_length(5, 1)
    (12, 12, 5)
    """
    return n if ranks == 1 else -(-n // (2 * ranks)) * 2 * ranks


def local_positions(n: int, ranks: int, rank: int) -> list[int]:
    """Positions of a sequence of ``n`` tokens that ``rank`` of ``ranks`` holds (pads included).

    >>> local_positions(10, 2, 0), local_positions(10, 2, 1)
    ([0, 1, 2, 9, 10, 11], [3, 4, 5, 6, 7, 8])
    """
    return shard_indices(padded_length(n, ranks), ring=ranks, ulysses=1, ring_rank=rank, ulysses_rank=0) \
        if ranks > 1 else list(range(n))


def _hidden(lm: Any, ids: list[int], group: Any, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(this rank's last hidden states ``[1, n_local, h]``, their positions) of one sequence."""
    ranks, rank = dist.get_world_size(group), dist.get_rank(group)
    device = model_device(lm)
    positions = torch.tensor(local_positions(len(ids), ranks, rank), dtype=torch.long)
    full = torch.full((padded_length(len(ids), ranks),), pad_id, dtype=torch.long)
    full[:len(ids)] = torch.tensor(ids, dtype=torch.long)
    base = getattr(lm, "base_model", lm)
    with sharded_evaluation(lm, group):
        out = base(input_ids=full[positions][None].to(device), position_ids=positions[None].to(device),
                   use_cache=False)
    return out.last_hidden_state, positions


@torch.no_grad()
def sharded_token_losses(model: Any, ids: list[int], group: Any, pad_id: int = 0) -> torch.Tensor:
    """Next-token losses ``[n − 1]`` (float32, on CPU) of one sequence, equal on every rank of ``group``
    and equal to :func:`ctxext_trainer.eval.generate.token_losses` of the whole sequence."""
    lm = unwrap(model)
    hidden, positions = _hidden(lm, ids, group, pad_id)
    n = len(ids)
    keep = (positions + 1 < n).nonzero().flatten()
    targets = torch.tensor(ids, dtype=torch.long)[positions[keep] + 1].to(hidden.device)
    head = lm.get_output_embeddings()
    mine = torch.empty(len(keep), dtype=torch.float32, device=hidden.device)
    for a in range(0, len(keep), LOSS_CHUNK):
        logits = head(hidden[0, keep[a:a + LOSS_CHUNK].to(hidden.device)]).float()
        mine[a:a + LOSS_CHUNK] = F.cross_entropy(logits, targets[a:a + LOSS_CHUNK], reduction="none")
    parts: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(parts, (positions[keep].tolist(), mine.cpu()))
    losses = torch.empty(n - 1, dtype=torch.float32)
    for where, values in parts:
        losses[torch.tensor(where, dtype=torch.long)] = values
    return losses


@torch.no_grad()
def sharded_greedy(model: Any, prompt: list[int], *, max_new_tokens: int, group: Any, pad_id: int) -> list[int]:
    """The ``max_new_tokens`` greedy continuation tokens of one prompt, equal on every rank of ``group``."""
    lm = unwrap(model)
    head = lm.get_output_embeddings()
    ids, generated = list(prompt), []
    for _ in range(max_new_tokens):
        hidden, positions = _hidden(lm, ids, group, pad_id)
        last = (positions == len(ids) - 1).nonzero().flatten()
        token = torch.full((1,), -1, dtype=torch.long, device=hidden.device)
        if len(last):
            token[0] = head(hidden[0, last.to(hidden.device)]).float().argmax(-1)[0]
        token = token.cpu() if token.device.type != "cuda" else token  # gloo reduces CPU tensors only
        dist.all_reduce(token, op=dist.ReduceOp.MAX, group=group)
        ids.append(int(token.item()))
        generated.append(ids[-1])
    return generated
