"""Zigzag ring attention across the ring ranks of a sequence, as a transformers attention function.

Registered as attention implementation ``"ctxext_ring"`` (:func:`register`). Under Ulysses × ring,
DeepSpeed-Ulysses wraps it: Ulysses' all-to-all gives each rank its ring rank's whole local
sequence for a subset of heads, and this function attends across the ring. The chunk layout, the
per-step block and the softmax merge are in :mod:`ctxext_trainer.zigzag`.

**Forward** (ring of ``R``, this rank ``r``): ``R`` steps; at step ``s`` it holds rank
``(r − s) mod R``'s K/V, computes that block's ``(out, lse)`` and merges it, while the K/V move one
rank on (``send → r + 1``, ``receive ← r − 1``). **Backward** is explicit, the same ring again:
each block's gradients are computed from the *final* ``lse`` (so a block's softmax probabilities
are exact: ``P = exp(S − lse)``, ``dS = P ∘ (dP − rowsum(dO ∘ O))``), ``dQ`` stays, and ``dK``/``dV``
accumulators travel with their K/V; after the last step one more shift brings each home. The next
K/V are in flight while a block computes, so a rank holds two K/V blocks (its ``1/R`` of the
sequence each), never the whole sequence's.

Kernels: ``ring_flash_attn.zigzag_ring_flash_attn_func`` (the same zigzag layout, flash-attention
blocks) on CUDA when that package is installed; otherwise this ring with the block kernels of
:mod:`ctxext_trainer.ring_kernels` — torch's own flash-attention ops where a probe shows them right,
else exact fp32 PyTorch (on CPU; on CUDA a failed probe is an error). The kernel in use is reported
by :func:`kernel_name` (logged and written to the stage result).
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from ctxext_trainer.ring_kernels import kernel_for
from ctxext_trainer.zigzag import Block, merge_into, ring_block

NAME = "ctxext_ring"
_RING: dict[str, Any] = {"group": None, "eval_group": None}


class RingComm:
    """Neighbour exchange in the ring group: send to rank + 1, receive from rank − 1."""

    def __init__(self, group: Any):
        self.group = group
        self.size, self.rank = dist.get_world_size(group), dist.get_rank(group)
        self.next = dist.get_global_rank(group, (self.rank + 1) % self.size)
        self.prev = dist.get_global_rank(group, (self.rank - 1) % self.size)

    def start(self, *tensors: torch.Tensor) -> tuple[list[Any], list[torch.Tensor]]:
        """Post the exchange of ``tensors``; returns (requests to wait on, receive buffers)."""
        received = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in tensors]
        ops = [dist.P2POp(dist.isend, t.contiguous(), self.next, self.group) for t in tensors]
        ops += [dist.P2POp(dist.irecv, t, self.prev, self.group) for t in received]
        return dist.batch_isend_irecv(ops), received

    @staticmethod
    def wait(pending: tuple[list[Any], list[torch.Tensor]]) -> list[torch.Tensor]:
        for request in pending[0]:
            request.wait()
        return pending[1]

    def shift(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        return self.wait(self.start(*tensors))


def _parts(kind: Block, half: int) -> tuple[slice, slice, bool]:
    """(query rows, key rows, causal) of a block."""
    every = slice(None)
    if kind is Block.DIAGONAL:
        return every, every, True
    if kind is Block.EARLY_KEYS:
        return every, slice(0, half), False
    return slice(half, None), every, False


def ring_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                 comm: RingComm) -> tuple[torch.Tensor, torch.Tensor]:
    kernel = kernel_for(q.device, q.dtype)
    half = q.shape[2] // 2
    out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    lse = torch.full(q.shape[:-1], float("-inf"), dtype=torch.float32, device=q.device)
    kv = [k, v]
    for step in range(comm.size):
        pending = comm.start(*kv) if step < comm.size - 1 else None  # the next K/V travel during this block
        rows, keys, causal = _parts(ring_block(comm.rank, (comm.rank - step) % comm.size), half)
        block_out, block_lse = kernel.forward(q[:, :, rows], kv[0][:, :, keys], kv[1][:, :, keys], causal, scale)
        merge_into(out[:, :, rows], lse[:, :, rows], block_out, block_lse)
        if pending is not None:
            kv = comm.wait(pending)
    return out, lse


def ring_backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                  lse: torch.Tensor, scale: float, comm: RingComm) -> tuple[torch.Tensor, ...]:
    kernel = kernel_for(q.device, q.dtype)
    half = q.shape[2] // 2
    dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    kv = [k, v]
    dkv = [torch.zeros(k.shape, dtype=torch.float32, device=k.device),
           torch.zeros(v.shape, dtype=torch.float32, device=v.device)]
    for step in range(comm.size):
        pending = comm.start(*kv) if step < comm.size - 1 else None  # K/V move on during the block
        rows, keys, causal = _parts(ring_block(comm.rank, (comm.rank - step) % comm.size), half)
        dq_b, dk_b, dv_b = kernel.backward(dout[:, :, rows], q[:, :, rows], kv[0][:, :, keys], kv[1][:, :, keys],
                                           out[:, :, rows], lse[:, :, rows], causal, scale)
        dq[:, :, rows] += dq_b
        dkv[0][:, :, keys] += dk_b
        dkv[1][:, :, keys] += dv_b
        dkv = comm.shift(*dkv)  # after the last step this brings rank r + 1's completed accumulators home
        if pending is not None:
            kv = comm.wait(pending)
    return dq.to(q.dtype), dkv[0].to(k.dtype), dkv[1].to(v.dtype)


class ZigzagRingAttention(torch.autograd.Function):
    """``out = attention(q, k, v)`` over the whole sequence of the ring (zigzag layout, causal)."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                comm: RingComm) -> torch.Tensor:
        out, lse = ring_forward(q, k, v, scale, comm)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale, ctx.comm = scale, comm
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx: Any, dout: torch.Tensor) -> tuple[Any, ...]:
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = ring_backward(dout, q, k, v, out, lse, ctx.scale, ctx.comm)
        return dq, dk, dv, None, None


def _flash_ring_available(device: torch.device) -> bool:
    return device.type == "cuda" and importlib.util.find_spec("ring_flash_attn") is not None


def kernel_name(device: str) -> str:
    """Which ring kernel a stage on ``device`` uses (bf16 on CUDA, fp32 on CPU, as the trainer trains)."""
    if device == "cuda" and importlib.util.find_spec("ring_flash_attn") is not None:
        return "ring_flash_attn.zigzag_ring_flash_attn_func"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    at = torch.device("cuda", torch.cuda.current_device()) if device == "cuda" else torch.device("cpu")
    return f"ctxext zigzag ring, {kernel_for(at, dtype).name} blocks"


def ring_attention_forward(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: Any, dropout: float = 0.0, scaling: float | None = None,
                           **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers attention interface: q (b, h, s, d), k/v (b, h_kv, s, d) → ((b, s, h, d), None).

    Outside training (or with no ring configured) it is plain sdpa over what it is given, with its
    mask; inside :func:`sharded_evaluation` it is the ring's forward over that group, without autograd.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    evaluating = _RING["eval_group"] is not None
    group = _RING["eval_group"] if evaluating else _RING["group"]
    if group is None or not (module.training or evaluating) or dist.get_world_size(group) == 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **{k: v for k, v in kwargs.items() if k != "is_causal"})
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if evaluating and not torch.is_grad_enabled() and not _flash_ring_available(query.device):
        out, _ = ring_forward(query, key, value, scale, RingComm(group))  # no saved tensors, fp32 out freed here
        return out.to(query.dtype).transpose(1, 2).contiguous(), None
    if _flash_ring_available(query.device):
        from ring_flash_attn import zigzag_ring_flash_attn_func

        out = zigzag_ring_flash_attn_func(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                          dropout_p=0.0, softmax_scale=scale, causal=True, group=group)
        return out, None
    out = ZigzagRingAttention.apply(query, key, value, scale, RingComm(group))
    return out.transpose(1, 2).contiguous(), None


def register(group: Any) -> None:
    """Make ``"ctxext_ring"`` a transformers attention implementation attending across ``group``."""
    from transformers import AttentionInterface

    _RING["group"] = group
    AttentionInterface.register(NAME, ring_attention_forward)


def unregister() -> None:
    _RING["group"] = None


@contextlib.contextmanager
def sharded_evaluation(model: Any, group: Any) -> Iterator[None]:
    """Inside: ``model`` (eval mode, no grad) attends through the ring over ``group`` — each rank
    passes its zigzag shard of one sequence (:func:`ctxext_trainer.zigzag.shard_indices`, ring =
    the group, Ulysses 1) with the global ``position_ids``. On exit the model's own attention is back.
    """
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, ring_attention_forward)
    own = model.config._attn_implementation
    _RING["eval_group"] = group
    model.set_attn_implementation(NAME)
    try:
        yield
    finally:
        _RING["eval_group"] = None
        model.set_attn_implementation(own)
