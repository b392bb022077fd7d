"""Block kernels of the zigzag ring: attention of one query block against one K/V block, returning
its log-sum-exp, and the backward of that block given the *final* output and log-sum-exp.

Two kernels with one interface (``forward(q, k, v, causal, scale) → (out, lse)``, ``backward(dout, q,
k, v, out, lse, causal, scale) → (dq, dk, dv)``, q (b, h, s, d), k/v (b, h_kv, s, d), results fp32):

* ``aten`` — torch's own flash-attention ops, which take and give the log-sum-exp
  (``_scaled_dot_product_flash_attention`` on CUDA, ``..._for_cpu`` on CPU). No extra package; the
  same kernels ``sdpa`` uses, so a ring block runs at sdpa speed and memory.
* ``math`` — plain PyTorch in fp32, chunked over :data:`QUERY_CHUNK` queries: exact, the reference
  and the fallback.

:func:`kernel_for` picks ``aten`` when a one-off probe (a small random block, forward and backward,
against ``math``) passes on this device and dtype, else ``math`` — private ATen ops can change
between torch versions, and a silent wrong gradient is worse than a slow one. On CUDA a failed probe
is an error (:class:`RingKernelUnavailable`), not a fallback: ``math`` materialises fp32 scores of
``QUERY_CHUNK`` queries × the whole K/V block (at 1M over Ulysses 8 × ring 4: 4096 × 262,144 × 4 B
per head, 16 GiB for a rank's 4 heads, and again for the exp), a certain out-of-memory at long
lengths that a warning would only announce. ``CTXEXT_RING_KERNEL=math|aten`` forces one (``math`` on CUDA: short
stages, or to debug).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

log = logging.getLogger(__name__)
QUERY_CHUNK = 4096
KERNEL_ENV = "CTXEXT_RING_KERNEL"
_CHOSEN: dict[tuple[str, torch.dtype], Any] = {}


def _expand(kv: torch.Tensor, groups: int) -> torch.Tensor:
    return kv if groups == 1 else kv.repeat_interleave(groups, dim=1)


def _fold(grad: torch.Tensor, like: torch.Tensor, groups: int) -> torch.Tensor:
    """A KV head's gradient is the sum over the query heads that share it."""
    return grad if groups == 1 else grad.view(like.shape[0], like.shape[1], groups, *like.shape[2:]).sum(2)


def _mask(sq: int, sk: int, start: int, causal: bool, device: torch.device) -> torch.Tensor | None:
    """True where query ``start + i`` may not see key ``j`` (causal, square block)."""
    if not causal:
        return None
    rows = torch.arange(start, start + sq, device=device).unsqueeze(1)
    return torch.arange(sk, device=device).unsqueeze(0) > rows


class MathKernel:
    name = "math"

    @staticmethod
    def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact attention of one block.

        >>> q, k, v = torch.randn(1, 2, 5, 4), torch.randn(1, 1, 5, 4), torch.randn(1, 1, 5, 4)
        >>> out, _ = MathKernel.forward(q, k, v, True, 0.5)
        >>> ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.5,
        ...                                                        enable_gqa=True)
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

    @staticmethod
    def backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                 lse: torch.Tensor, causal: bool, scale: float) -> tuple[torch.Tensor, ...]:
        """Flash attention's backward recurrence: ``P = exp(S − lse)``, ``dS = P ∘ (dP − rowsum(dO ∘ O))``."""
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
        return dq, _fold(dk, k, groups), _fold(dv, v, groups)


class AtenKernel:
    name = "aten"

    @staticmethod
    def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        groups = q.shape[1] // k.shape[1]
        q, kx, vx = q.contiguous(), _expand(k, groups).contiguous(), _expand(v, groups).contiguous()
        if q.is_cuda:
            out, lse, *_ = torch.ops.aten._scaled_dot_product_flash_attention(q, kx, vx, 0.0, causal, False,
                                                                               scale=scale)
        else:
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, kx, vx, 0.0, causal, scale=scale)
        return out.float(), lse.float()

    @staticmethod
    def backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                 lse: torch.Tensor, causal: bool, scale: float) -> tuple[torch.Tensor, ...]:
        groups = q.shape[1] // k.shape[1]
        dtype = q.dtype
        q, kx, vx = q.contiguous(), _expand(k, groups).contiguous(), _expand(v, groups).contiguous()
        dout, out, lse = dout.to(dtype).contiguous(), out.to(dtype).contiguous(), lse.float().contiguous()
        if q.is_cuda:
            none = torch.empty(0, device=q.device)
            seed = torch.zeros((), dtype=torch.int64, device=q.device)
            dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_backward(
                dout, q, kx, vx, out, lse, none, none, q.shape[2], kx.shape[2], 0.0, causal, seed, seed, scale=scale)
        else:
            dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                dout, q, kx, vx, out, lse, 0.0, causal, scale=scale)
        return dq.float(), _fold(dk.float(), k, groups), _fold(dv.float(), v, groups)


def _probe(kernel: Any, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why ``kernel`` disagrees with :class:`MathKernel` on a small block (None: it agrees)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v, dout = (torch.randn(1, 4, 128, 64, generator=g).to(device, dtype) for _ in range(4))
    k, v = k[:, :2], v[:, :2]
    tol = 1e-3 if dtype == torch.float32 else 3e-2
    try:
        for causal in (True, False):
            ref_out, ref_lse = MathKernel.forward(q, k, v, causal, 0.125)
            out, lse = kernel.forward(q, k, v, causal, 0.125)
            want = MathKernel.backward(dout, q, k, v, ref_out, ref_lse, causal, 0.125)
            got = kernel.backward(dout, q, k, v, ref_out, ref_lse, causal, 0.125)
            for a, b in zip((out, lse, *got), (ref_out, ref_lse, *want), strict=True):
                err = float((a - b).abs().max() / b.abs().max().clamp(min=1e-6))
                if not err < tol:
                    return f"differs from the math kernel by {err:.2e} (causal={causal})"
    except (RuntimeError, TypeError, AttributeError) as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


class RingKernelUnavailable(RuntimeError):
    """torch's flash-attention ops fail their probe on CUDA, and the exact kernel would not fit."""


def kernel_for(device: torch.device, dtype: torch.dtype) -> Any:
    """The block kernel for ``device``/``dtype`` (probed once per pair; see the module docstring)."""
    key = (device.type, dtype)
    if key not in _CHOSEN:
        forced = os.environ.get(KERNEL_ENV, "").strip().lower()
        if forced in ("math", "aten"):
            _CHOSEN[key] = MathKernel if forced == "math" else AtenKernel
        else:
            problem = _probe(AtenKernel, device, dtype)
            if problem and device.type == "cuda":
                raise RingKernelUnavailable(
                    f"ring attention: torch {torch.__version__}'s flash-attention ops fail their check on "
                    f"{device.type}/{str(dtype).removeprefix('torch.')} ({problem}); the exact PyTorch kernel "
                    f"would hold fp32 scores of {QUERY_CHUNK} queries x every key of a ring block and run out "
                    f"of memory at long lengths. Use a trainer image whose torch has working flash-attention "
                    f"ops, or set {KERNEL_ENV}=math to run the exact kernel anyway (short stages only)")
            if problem:
                log.warning("ring attention: torch's flash-attention ops unusable on %s/%s (%s); using the exact "
                            "PyTorch kernel", device.type, dtype, problem)
            _CHOSEN[key] = MathKernel if problem else AtenKernel
    return _CHOSEN[key]
