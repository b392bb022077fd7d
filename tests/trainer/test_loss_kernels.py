"""The loss kernels and the speed knobs: fused and checkpointed-chunked LM head + CE give the plain
loss and gradients; selective checkpointing marks the layers it says; the ZeRO stage in effect."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ctxext_trainer.fused_ce import fused_ce_sum
from ctxext_trainer.loss import chunked_ce_sum
from ctxext_trainer.speed import (
    SINGLE_RANK_ZERO_ENV,
    decoder_layers,
    effective_zero_stage,
    enable_activation_checkpointing,
    sdpa_backends,
    sdpa_priority,
)


def _problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, nn.Linear]:
    torch.manual_seed(seed)
    hidden = torch.randn(2, 37, 16, requires_grad=True)
    labels = torch.randint(0, 50, (2, 37))
    labels[0, :5] = -100
    labels[1, -1] = -100
    return hidden, labels, nn.Linear(16, 50, bias=False)


def _grads(loss: torch.Tensor, hidden: torch.Tensor, head: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    hg, wg = torch.autograd.grad(loss, (hidden, head.weight))
    return hg, wg


@pytest.mark.parametrize("kernel", ["fused", "chunked"])
@pytest.mark.parametrize("chunk", [8, 37, 1000])
def test_loss_kernels_match_the_plain_cross_entropy_and_its_gradients(kernel, chunk):
    hidden, labels, head = _problem()
    plain = F.cross_entropy(head(hidden).view(-1, 50), labels.view(-1), ignore_index=-100, reduction="sum")
    want = _grads(plain * 0.7, hidden, head)  # a scaled loss, as the SP loss scale does
    if kernel == "fused":
        got_loss = fused_ce_sum(hidden, labels, head.weight, chunk)
    else:
        got_loss = chunked_ce_sum(hidden, labels, head, chunk_tokens=chunk)
    assert torch.allclose(got_loss, plain, atol=1e-4)
    got = _grads(got_loss * 0.7, hidden, head)
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w, atol=1e-5)


def test_fused_loss_with_a_tied_weight_accumulates_both_gradients():
    torch.manual_seed(1)
    emb = nn.Embedding(50, 16)
    ids = torch.randint(0, 50, (1, 20))
    labels = torch.randint(0, 50, (1, 20))
    plain = F.cross_entropy(emb(ids)[0] @ emb.weight.t(), labels[0], reduction="sum")
    (want,) = torch.autograd.grad(plain, emb.weight)
    (got,) = torch.autograd.grad(fused_ce_sum(emb(ids), labels, emb.weight, 6), emb.weight)
    assert torch.allclose(got, want, atol=1e-5)


def test_selective_checkpointing_marks_evenly_spread_layers(tiny_model: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
    assert enable_activation_checkpointing(model, 1) == 1
    assert [layer.gradient_checkpointing for layer in decoder_layers(model)] == [True, False]
    assert enable_activation_checkpointing(model, None) == 2
    assert all(layer.gradient_checkpointing for layer in decoder_layers(model))


def test_a_single_rank_runs_zero_1_unless_told_otherwise(monkeypatch):
    assert [effective_zero_stage(z, 1) for z in (0, 1, 2, 3)] == [0, 1, 1, 1]
    assert effective_zero_stage(3, 2) == 3
    monkeypatch.setenv(SINGLE_RANK_ZERO_ENV, "0")
    assert effective_zero_stage(3, 1) == 0


def test_sdpa_priority_keeps_results_on_cpu():
    q = k = v = torch.randn(1, 2, 8, 4)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    with sdpa_priority(sdpa_backends("cudnn,flash,efficient,math")):
        got = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(got, ref, atol=1e-6)
