"""Fused LM head + cross-entropy: the gradients are computed chunk by chunk *in the forward pass*.

The checkpointed chunked loss (:func:`ctxext_trainer.loss.chunked_ce_sum`) bounds logits memory but
runs the LM-head matmul three times per chunk (forward, recomputation, backward: 8·V·h FLOPs per
token; the head is ~20 % of a 1B Llama's matmul FLOPs). Here each chunk's logits are made once and
turned at once into the loss and its gradients with respect to the hidden states and the head
weight — ``dlogits = softmax(logits) − onehot(label)`` on valid labels — so the head costs
6·V·h FLOPs per token like an unchunked loss, at one chunk of logits of memory. The backward pass
only scales the stored gradients by the incoming gradient (a scalar: the loss is a sum).

Worked example (one token, vocabulary 2, weight rows w0 = [1, 0], w1 = [0, 1], hidden [2, 0],
label 1): logits [2, 0], softmax [0.881, 0.119], CE = −log 0.119 = 2.127; dlogits =
[0.881, −0.881], dhidden = dlogits @ W = [0.881, −0.881], dW = dlogitsᵀ ⊗ hidden =
[[1.762, 0], [−1.762, 0]].

:func:`loss_kernel` picks Liger-Kernel's Triton fused linear cross-entropy on CUDA when
``liger_kernel`` is installed, else this one; under ZeRO-3 (the head weight is partitioned and only
gathered inside the module's own forward) the checkpointed chunked loss.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

IGNORE_INDEX = -100


class FusedLinearCrossEntropy(torch.autograd.Function):
    """Σ CE(hidden · weightᵀ, labels) over labels ≠ −100; hidden (n, h), weight (V, h), labels (n,).

    >>> h = torch.tensor([[2.0, 0.0]], requires_grad=True)
    >>> w = torch.eye(2, requires_grad=True)
    >>> loss = FusedLinearCrossEntropy.apply(h, w, torch.tensor([1]), 4096)
    >>> loss.backward()
    >>> round(loss.item(), 3), [round(x, 3) for x in h.grad[0].tolist()], round(w.grad[1, 0].item(), 3)
    (2.127, [0.881, -0.881], -1.762)
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                chunk_tokens: int) -> torch.Tensor:
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_tokens):
            h, y = hidden[start:start + chunk_tokens], labels[start:start + chunk_tokens]
            logits = (h @ weight.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            valid = y != IGNORE_INDEX
            safe = torch.where(valid, y, 0)
            total += ((lse - logits.gather(1, safe.unsqueeze(1)).squeeze(1)) * valid).sum()
            dlogits = torch.exp(logits.sub_(lse.unsqueeze(1)))  # softmax, in place of the logits
            dlogits[torch.arange(len(y), device=y.device), safe] -= 1.0
            dlogits *= valid.unsqueeze(1)
            dlogits = dlogits.to(hidden.dtype)
            grad_hidden[start:start + chunk_tokens] = dlogits @ weight
            grad_weight += (dlogits.t() @ h).float()
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return total

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_out.to(grad_hidden.dtype), grad_weight * grad_out.to(grad_weight.dtype), None, None


def fused_ce_sum(hidden: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, chunk_tokens: int) -> torch.Tensor:
    """Σ CE of ``hidden`` (b, s, h) against ``labels`` (b, s) through the head ``weight`` (V, h)."""
    flat_h = hidden.reshape(-1, hidden.shape[-1])
    out: torch.Tensor = FusedLinearCrossEntropy.apply(flat_h, weight, labels.reshape(-1), chunk_tokens)
    return out


def liger_ce_sum(hidden: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Liger-Kernel's fused linear cross-entropy, summed (CUDA, Triton)."""
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    out = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="sum")(
        weight, hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1))
    return (out[0] if isinstance(out, tuple) else out).float()


def loss_kernel(device: str, zero_stage: int) -> str:
    """``liger`` | ``fused`` | ``chunked`` (see the module docstring).

    >>> loss_kernel("cpu", 1), loss_kernel("cpu", 3)
    ('fused', 'chunked')
    """
    if zero_stage == 3:
        return "chunked"
    if device == "cuda" and importlib.util.find_spec("liger_kernel") is not None:
        return "liger"
    return "fused"
