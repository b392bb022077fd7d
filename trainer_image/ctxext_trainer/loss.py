"""The training loss: chunked LM head + cross-entropy, aggregated correctly under sequence parallelism.

**Chunking.** Logits of a 64K-token shard at a 128K vocabulary would take 32 GiB in fp32. The LM
head and cross-entropy run on ``LOSS_CHUNK_TOKENS`` tokens at a time, so at most one chunk's logits
exist at once (the planner's memory estimate assumes exactly this): fused — each chunk's gradients
made in the forward pass (:mod:`ctxext_trainer.fused_ce`, or Liger-Kernel's on CUDA) — or, under
ZeRO-3, each chunk under activation checkpointing (recomputed in backward).

**Aggregation.** With sequence-parallel degree ``sp`` each rank holds ``1/sp`` of a sequence's
tokens, and the true gradient is the *sum* of the ranks' contributions. Each rank backpropagates
its own share of the sequence-mean loss::

    loss_rank = Σ_{own tokens} CE  /  N_sequence      N_sequence = all-reduce(valid tokens, sp group)

Worked example, sp = 2, tokens 3 + 1 with CE sums 6.0 and 2.0: N = 4, rank 0 backpropagates
6/4 = 1.5, rank 1 2/4 = 0.5; their sum 2.0 is the sequence mean (6 + 2) / 4.

How DeepSpeed 0.19 then reduces gradients over the ranks differs by ZeRO stage (measured, and read
in its source). DeepSpeed knows only the Ulysses ranks as "sequence parallel" (its ``mpu``); ring
ranks are data-parallel ranks to it. With ``sp = ulysses · ring``:

* ZeRO 0–2 divide the all-reduced sum by ``world / ulysses`` (``engine.allreduce_bucket`` and
  ``stage_1_and_2`` divide by ``world / sp_ds``): they *sum* over the Ulysses ranks but *average*
  over the ring ranks → the loss is scaled by ``ring``;
* ZeRO-3's reduce-scatter path (``reduce_scatter: true``, which :mod:`ctxext_trainer.engine` pins)
  divides by the whole partition group (``reduce_scatter_coalesced`` pre-divides by the world
  size): it *averages* over the whole sequence → the loss is scaled by ``sp``
  (:func:`sequence_parallel_loss_scale`).

The Ulysses tutorial instead all-gathers per-rank losses *with autograd*, so every rank holds the
full mean and the all-gather's backward sums ``sp`` copies: right at ZeRO-3 by accident, ``sp``×
too large at ZeRO 0–2. ``tests/trainer/test_sequence_parallel_gradients.py`` pins the behaviour
for every ZeRO stage against a single process.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ctxext.memory import LOSS_CHUNK_TOKENS
from ctxext_trainer.distributed import all_reduce_sum
from ctxext_trainer.fused_ce import fused_ce_sum, liger_ce_sum
from ctxext_trainer.speed import sdpa_priority

IGNORE_INDEX = -100


def _chunk_ce_sum(hidden: torch.Tensor, labels: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
    logits = lm_head(hidden).float()
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")


def chunked_ce_sum(hidden: torch.Tensor, labels: torch.Tensor, lm_head: nn.Module,
                   chunk_tokens: int = LOSS_CHUNK_TOKENS, recompute: bool = True) -> torch.Tensor:
    """Σ cross-entropy over the valid labels of ``hidden`` (b, s, h), ``chunk_tokens`` tokens at a time.

    >>> head = nn.Linear(4, 7, bias=False)
    >>> h, y = torch.randn(1, 10, 4), torch.randint(0, 7, (1, 10))
    >>> full = F.cross_entropy(head(h).view(-1, 7), y.view(-1), reduction="sum")
    >>> bool(torch.allclose(chunked_ce_sum(h, y, head, chunk_tokens=3), full, atol=1e-5))
    True
    """
    flat_h = hidden.reshape(-1, hidden.shape[-1])
    flat_y = labels.reshape(-1)
    total = flat_h.new_zeros((), dtype=torch.float32)
    for start in range(0, flat_h.shape[0], chunk_tokens):
        h, y = flat_h[start:start + chunk_tokens], flat_y[start:start + chunk_tokens]
        if recompute and torch.is_grad_enabled():
            part = checkpoint(_chunk_ce_sum, h, y, lm_head, use_reentrant=False)
        else:
            part = _chunk_ce_sum(h, y, lm_head)
        total = total + part
    return total


def sequence_parallel_loss_scale(zero_stage: int, sp_size: int, ulysses_size: int | None = None) -> float:
    """Factor on each rank's loss that makes DeepSpeed's reduced gradient the single-process one.

    ``ulysses_size`` defaults to ``sp_size`` (Ulysses only). Ulysses 2 × ring 2 at ZeRO 2 → 2, at ZeRO 3 → 4:

    >>> sequence_parallel_loss_scale(2, 4), sequence_parallel_loss_scale(3, 4), sequence_parallel_loss_scale(3, 1)
    (1.0, 4.0, 1.0)
    >>> sequence_parallel_loss_scale(2, 4, ulysses_size=2), sequence_parallel_loss_scale(3, 4, ulysses_size=2)
    (2.0, 4.0)
    """
    if sp_size <= 1:
        return 1.0
    if zero_stage == 3:
        return float(sp_size)
    return float(sp_size // (ulysses_size or sp_size))


class CausalLMTrainModule(nn.Module):
    """Wraps a HF causal LM; ``forward`` returns (loss to backpropagate, CE sum, valid-token count).

    ``loss_scale`` is :func:`sequence_parallel_loss_scale` of the engine's ZeRO stage and layout;
    ``loss_kernel`` one of :func:`ctxext_trainer.fused_ce.loss_kernel`'s answers; ``sdpa_backends``
    an SDPA priority order for the model's forward (:mod:`ctxext_trainer.speed`; empty = torch's).

    The HF model is ``self.lm`` (saved with ``lm.`` prefixes in DeepSpeed checkpoints).
    """

    def __init__(self, lm: nn.Module, sp_group: Any = None, chunk_tokens: int = LOSS_CHUNK_TOKENS,
                 loss_scale: float = 1.0, loss_kernel: str = "chunked", sdpa_backends: list[Any] | None = None):
        super().__init__()
        self.lm = lm
        self.sp_group = sp_group
        self.loss_scale = loss_scale
        self.chunk_tokens = chunk_tokens
        self.loss_kernel = loss_kernel
        self.sdpa_backends = sdpa_backends or []

    def _ce_sum(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        lm: Any = self.lm
        if self.loss_kernel == "liger":
            return liger_ce_sum(hidden, labels, lm.lm_head.weight)
        if self.loss_kernel == "fused" and torch.is_grad_enabled():
            return fused_ce_sum(hidden, labels, lm.lm_head.weight, self.chunk_tokens)
        return chunked_ce_sum(hidden, labels, lm.lm_head, self.chunk_tokens)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor,
                position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lm: Any = self.lm
        with sdpa_priority(self.sdpa_backends):
            out = lm.model(input_ids=input_ids, position_ids=position_ids, use_cache=False)
        ce_sum = self._ce_sum(out.last_hidden_state, labels)
        count = (labels != IGNORE_INDEX).sum().to(torch.float32)
        seq_count = all_reduce_sum(count.detach().clone(), self.sp_group) if self.sp_group is not None else count
        loss = ce_sum * (self.loss_scale / seq_count.clamp(min=1.0))
        return loss, ce_sum.detach(), count.detach()
