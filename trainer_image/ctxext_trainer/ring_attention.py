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
accumulators travel with their K/V; after the last step one more shift brings each home. Memory is
one local block at a time: no rank ever holds the whole sequence's K/V.

Kernels: ``ring_flash_attn.zigzag_ring_flash_attn_func`` (the same zigzag layout, flash-attention
blocks) on CUDA when that package is installed; otherwise the exact PyTorch kernel here, fp32,
chunked over queries (:data:`QUERY_CHUNK`) so a block's score matrix stays bounded. The kernel in
use is reported by :func:`kernel_name` (logged and written to the stage result).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
import torch.distributed as dist

from ctxext_trainer.zigzag import Block, merge_into, ring_block

NAME = "ctxext_ring"
QUERY_CHUNK = 4096
_RING: dict[str, Any] = {"group": None}


def _expand(kv: torch.Tensor, groups: int) -> torch.Tensor:
    return kv if groups == 1 else kv.repeat_interleave(groups, dim=1)


def _mask(sq: int, sk: int, start: int, causal: bool, device: torch.device) -> torch.Tensor | None:
    """True where query ``start + i`` may not see key ``j`` (causal, square block)."""
    if not causal:
        return None
    rows = torch.arange(start, start + sq, device=device).unsqueeze(1)
    return torch.arange(sk, device=device).unsqueeze(0) > rows


def block_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                  scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact attention of one block: ``(out, lse)`` in fp32. q (b, h, sq, d); k, v (b, h_kv, sk, d).

    >>> q, k, v = torch.randn(1, 2, 5, 4), torch.randn(1, 1, 5, 4), torch.randn(1, 1, 5, 4)
    >>> out, _ = block_forward(q, k, v, True, 0.5)
    >>> ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.5, enable_gqa=True)
    >>> bool(torch.allclose(out, ref, atol=1e-5))
    True
    """
    groups = q.shape[1] // k.shape[1]
    kf, vf = _expand(k, groups).float(), _expand(v, groups).float()
    out = q.new_empty(q.shape, dtype=torch.float32)
    lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
    for start in range(0, q.shape[2], QUERY_CHUNK):
        qc = q[:, :, start:start + QUERY_CHUNK].float()
        scores = qc @ kf.transpose(-1, -2) * scale
        mask = _mask(qc.shape[2], kf.shape[2], start, causal, q.device)
        if mask is not None:
            scores.masked_fill_(mask, float("-inf"))
        chunk_lse = torch.logsumexp(scores, dim=-1)
        out[:, :, start:start + QUERY_CHUNK] = torch.exp(scores - chunk_lse.unsqueeze(-1)) @ vf
        lse[:, :, start:start + QUERY_CHUNK] = chunk_lse
    return out, lse


def block_backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                   lse: torch.Tensor, causal: bool, scale: float) -> tuple[torch.Tensor, ...]:
    """Gradients ``(dq, dk, dv)`` (fp32) of one block's share of the attention, given the final
    ``out`` and ``lse`` of these queries over *all* keys (flash-attention's backward recurrence)."""
    groups = q.shape[1] // k.shape[1]
    kf, vf = _expand(k, groups).float(), _expand(v, groups).float()
    dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    dk, dv = torch.zeros_like(kf), torch.zeros_like(vf)
    for start in range(0, q.shape[2], QUERY_CHUNK):
        sl = slice(start, start + QUERY_CHUNK)
        qc, doc = q[:, :, sl].float(), dout[:, :, sl].float()
        scores = qc @ kf.transpose(-1, -2) * scale
        mask = _mask(qc.shape[2], kf.shape[2], start, causal, q.device)
        if mask is not None:
            scores.masked_fill_(mask, float("-inf"))
        p = torch.exp(scores - lse[:, :, sl].unsqueeze(-1))
        dv += p.transpose(-1, -2) @ doc
        delta = (doc * out[:, :, sl].float()).sum(-1, keepdim=True)
        ds = p * (doc @ vf.transpose(-1, -2) - delta)
        dq[:, :, sl] = ds @ kf * scale
        dk += ds.transpose(-1, -2) @ qc * scale
    if groups > 1:  # a KV head's gradient is the sum over the query heads that share it
        dk = dk.view(k.shape[0], k.shape[1], groups, *k.shape[2:]).sum(2)
        dv = dv.view(v.shape[0], v.shape[1], groups, *v.shape[2:]).sum(2)
    return dq, dk, dv


class RingComm:
    """Neighbour exchange in the ring group: send to rank + 1, receive from rank − 1."""

    def __init__(self, group: Any):
        self.group = group
        self.size, self.rank = dist.get_world_size(group), dist.get_rank(group)
        self.next = dist.get_global_rank(group, (self.rank + 1) % self.size)
        self.prev = dist.get_global_rank(group, (self.rank - 1) % self.size)

    def shift(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        received = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in tensors]
        ops = [dist.P2POp(dist.isend, t.contiguous(), self.next, self.group) for t in tensors]
        ops += [dist.P2POp(dist.irecv, t, self.prev, self.group) for t in received]
        for request in dist.batch_isend_irecv(ops):
            request.wait()
        return received


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
    half = q.shape[2] // 2
    out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    lse = torch.full(q.shape[:-1], float("-inf"), dtype=torch.float32, device=q.device)
    kv = [k, v]
    for step in range(comm.size):
        rows, keys, causal = _parts(ring_block(comm.rank, (comm.rank - step) % comm.size), half)
        block_out, block_lse = block_forward(q[:, :, rows], kv[0][:, :, keys], kv[1][:, :, keys], causal, scale)
        merge_into(out[:, :, rows], lse[:, :, rows], block_out, block_lse)
        if step < comm.size - 1:
            kv = comm.shift(*kv)
    return out, lse


def ring_backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                  lse: torch.Tensor, scale: float, comm: RingComm) -> tuple[torch.Tensor, ...]:
    half = q.shape[2] // 2
    dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    kv = [k, v]
    dkv = [torch.zeros(k.shape, dtype=torch.float32, device=k.device),
           torch.zeros(v.shape, dtype=torch.float32, device=v.device)]
    for step in range(comm.size):
        rows, keys, causal = _parts(ring_block(comm.rank, (comm.rank - step) % comm.size), half)
        dq_b, dk_b, dv_b = block_backward(dout[:, :, rows], q[:, :, rows], kv[0][:, :, keys], kv[1][:, :, keys],
                                          out[:, :, rows], lse[:, :, rows], causal, scale)
        dq[:, :, rows] += dq_b
        dkv[0][:, :, keys] += dk_b
        dkv[1][:, :, keys] += dv_b
        if step < comm.size - 1:
            kv[0], kv[1], dkv[0], dkv[1] = comm.shift(*kv, *dkv)
        else:  # the accumulators of rank r + 1's K/V are complete here: send them home
            dkv = comm.shift(*dkv)
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
    """Which ring kernel a stage on ``device`` uses."""
    if device == "cuda" and importlib.util.find_spec("ring_flash_attn") is not None:
        return "ring_flash_attn.zigzag_ring_flash_attn_func"
    return "ctxext zigzag ring (PyTorch, fp32 blocks)"


def ring_attention_forward(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: Any, dropout: float = 0.0, scaling: float | None = None,
                           **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers attention interface: q (b, h, s, d), k/v (b, h_kv, s, d) → ((b, s, h, d), None).

    Outside training (or with no ring configured) it is plain causal sdpa over what it is given.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    group = _RING["group"]
    if group is None or not module.training or dist.get_world_size(group) == 1:
        return sdpa_attention_forward(module, query, key, value, None, dropout=dropout, scaling=scaling,
                                      **{k: v for k, v in kwargs.items() if k != "is_causal"})
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
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
