"""Zigzag ring attention without torch.distributed: the chunk layout, the block kernels and the
online-softmax merge against plain attention, and the whole ring run in threads (one per ring rank,
queues for the neighbour exchange) against full causal attention — forward and gradients."""

from __future__ import annotations

import queue
import threading
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from ctxext_trainer import ring_kernels
from ctxext_trainer.data.batches import Layout
from ctxext_trainer.ring_attention import ring_backward, ring_forward
from ctxext_trainer.ring_kernels import AtenKernel, MathKernel
from ctxext_trainer.zigzag import Block, merge_into, ring_block, shard_indices, shard_ranges


@pytest.mark.parametrize(("length", "ring", "ulysses"), [(16, 2, 2), (24, 2, 3), (48, 4, 2), (32, 1, 4), (40, 5, 1)])
def test_shards_partition_the_sequence_and_each_ring_rank_holds_an_early_and_a_late_chunk(length, ring, ulysses):
    shards = {(g, u): shard_indices(length, ring=ring, ulysses=ulysses, ring_rank=g, ulysses_rank=u)
              for g in range(ring) for u in range(ulysses)}
    assert sorted(i for s in shards.values() for i in s) == list(range(length))
    assert len({len(s) for s in shards.values()}) == 1  # every rank holds as many tokens
    chunk = length // (2 * ring)
    for g in range(ring):
        local = [i for u in range(ulysses) for i in shards[(g, u)]]  # what Ulysses' all-to-all gathers
        assert local == sorted(local)  # position order: the diagonal block's causal mask is the global one
        if ring > 1:
            assert {i // chunk for i in local} == {g, 2 * ring - 1 - g}


def test_layout_ranges_are_the_zigzag_shards_and_lengths_must_be_cut_evenly():
    assert Layout(sp_rank=3, sp_size=4, ring_size=2).ranges(16) == shard_ranges(16, ring=2, ulysses=2, ring_rank=1,
                                                                                 ulysses_rank=1)
    assert Layout(sp_rank=3, sp_size=4, ring_size=2).token_multiple == 8
    with pytest.raises(ValueError, match="cannot be cut"):
        shard_ranges(18, ring=2, ulysses=2, ring_rank=0, ulysses_rank=0)


def test_ring_schedule_does_half_a_block_off_the_diagonal_on_every_rank():
    ring = 4
    for r in range(ring):
        kinds = [ring_block(r, (r - s) % ring) for s in range(ring)]
        assert kinds[0] is Block.DIAGONAL and Block.DIAGONAL not in kinds[1:]
        assert kinds.count(Block.EARLY_KEYS) == r and kinds.count(Block.LATE_QUERIES) == ring - 1 - r


def test_merging_blocks_over_disjoint_keys_equals_attention_over_all_of_them():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 6, 8), torch.randn(1, 2, 10, 8), torch.randn(1, 2, 10, 8)
    out, lse = torch.zeros(1, 2, 6, 8), torch.full((1, 2, 6), float("-inf"))
    for keys in (slice(0, 3), slice(3, 7), slice(7, 10)):
        merge_into(out, lse, *MathKernel.forward(q, k[:, :, keys], v[:, :, keys], False, 0.3))
    ref = F.scaled_dot_product_attention(q, k, v, scale=0.3)
    assert torch.allclose(out, ref, atol=1e-5)
    assert torch.allclose(lse, torch.logsumexp(q @ k.transpose(-1, -2) * 0.3, -1), atol=1e-5)


@pytest.mark.parametrize("kernel", [MathKernel, AtenKernel])
@pytest.mark.parametrize("causal", [True, False])
def test_block_kernels_match_autograd_with_grouped_kv_heads(kernel, causal, monkeypatch):
    monkeypatch.setattr(ring_kernels, "QUERY_CHUNK", 3)  # several query chunks (math kernel)
    torch.manual_seed(1)
    q = torch.randn(2, 4, 7, 8, requires_grad=True)
    k, v = (torch.randn(2, 2, 7, 8, requires_grad=True) for _ in range(2))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=0.25, enable_gqa=True)
    dout = torch.randn_like(ref)
    ref.backward(dout)
    out, lse = kernel.forward(q.detach(), k.detach(), v.detach(), causal, 0.25)
    assert torch.allclose(out, ref, atol=1e-5)
    assert torch.allclose(lse, MathKernel.forward(q.detach(), k.detach(), v.detach(), causal, 0.25)[1], atol=1e-5)
    grads = kernel.backward(dout, q.detach(), k.detach(), v.detach(), out, lse, causal, 0.25)
    for got, want in zip(grads, (q.grad, k.grad, v.grad), strict=True):
        assert torch.allclose(got, want, atol=1e-5)


def test_the_aten_kernel_is_chosen_only_where_its_probe_agrees_with_math(monkeypatch):
    monkeypatch.setattr(ring_kernels, "_CHOSEN", {})
    assert ring_kernels.kernel_for(torch.device("cpu"), torch.float32) is AtenKernel

    def wrong(*args):
        out, lse = MathKernel.forward(*args)
        return out * 1.01, lse

    monkeypatch.setattr(ring_kernels, "_CHOSEN", {})
    monkeypatch.setattr(AtenKernel, "forward", staticmethod(wrong))
    assert ring_kernels.kernel_for(torch.device("cpu"), torch.float32) is MathKernel
    monkeypatch.setattr(ring_kernels, "_CHOSEN", {})
    monkeypatch.setenv(ring_kernels.KERNEL_ENV, "aten")
    assert ring_kernels.kernel_for(torch.device("cpu"), torch.float32) is AtenKernel


def test_on_cuda_a_failed_probe_is_an_error_not_a_silent_fallback(monkeypatch):
    # The probe's verdict on a CUDA device (this machine has none): the aten ops disagree with math.
    monkeypatch.setattr(ring_kernels, "_probe", lambda *a: "differs from the math kernel by 5.00e-01 (causal=True)")
    monkeypatch.setattr(ring_kernels, "_CHOSEN", {})
    with pytest.raises(ring_kernels.RingKernelUnavailable) as err:
        ring_kernels.kernel_for(torch.device("cuda", 0), torch.bfloat16)
    message = str(err.value)
    assert "fail their check on cuda/bfloat16 (differs from the math kernel by 5.00e-01" in message
    assert f"{ring_kernels.KERNEL_ENV}=math" in message and "run out of memory" in message
    monkeypatch.setenv(ring_kernels.KERNEL_ENV, "math")  # the user's explicit choice is honoured
    assert ring_kernels.kernel_for(torch.device("cuda", 0), torch.bfloat16) is MathKernel
    monkeypatch.delenv(ring_kernels.KERNEL_ENV)
    monkeypatch.setattr(ring_kernels, "_CHOSEN", {})
    assert ring_kernels.kernel_for(torch.device("cpu"), torch.float32) is MathKernel  # CPU: slow, still fits


class _ThreadRing:
    """:class:`ctxext_trainer.ring_attention.RingComm` for ring ranks running as threads: the n-th
    receive a rank posts gets the n-th message its predecessor sent, as point-to-point messages
    between two ranks match in order in torch.distributed."""

    def __init__(self, rank: int, boxes: list[queue.Queue[Any]]):
        self.rank, self.size, self.boxes = rank, len(boxes), boxes
        self.sent = self.posted = 0
        self.early: dict[int, list[torch.Tensor]] = {}

    def start(self, *tensors: torch.Tensor) -> int:
        self.boxes[(self.rank + 1) % self.size].put((self.sent, [t.clone() for t in tensors]))
        self.sent += 1
        self.posted += 1
        return self.posted - 1

    def wait(self, ticket: int) -> list[torch.Tensor]:
        while ticket not in self.early:
            number, tensors = self.boxes[self.rank].get(timeout=30)
            self.early[number] = tensors
        return self.early.pop(ticket)

    def shift(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        return self.wait(self.start(*tensors))


def _run_ring(ring: int, fn: Any, per_rank_args: list[tuple[Any, ...]]) -> list[Any]:
    boxes: list[queue.Queue[Any]] = [queue.Queue() for _ in range(ring)]
    results: list[Any] = [None] * ring
    errors: list[BaseException] = []

    def work(r: int) -> None:
        try:
            results[r] = fn(*per_rank_args[r], _ThreadRing(r, boxes))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(r,)) for r in range(ring)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


@pytest.mark.parametrize("kernel", ["math", "aten"])
@pytest.mark.parametrize("ring", [2, 3, 4])
def test_threaded_zigzag_ring_equals_full_causal_attention_forward_and_backward(ring, kernel, monkeypatch):
    monkeypatch.setattr(ring_kernels, "_CHOSEN", {})
    monkeypatch.setenv(ring_kernels.KERNEL_ENV, kernel)
    torch.manual_seed(ring)
    length, scale = 8 * ring, 0.35
    q = torch.randn(1, 4, length, 8, requires_grad=True)
    k, v = (torch.randn(1, 2, length, 8, requires_grad=True) for _ in range(2))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
    dout = torch.randn_like(ref)
    ref.backward(dout)
    idx = [shard_indices(length, ring=ring, ulysses=1, ring_rank=r, ulysses_rank=0) for r in range(ring)]

    def local(t: torch.Tensor, r: int) -> torch.Tensor:
        return t.detach()[:, :, idx[r]]

    fwd = _run_ring(ring, lambda a, b, c, comm: ring_forward(a, b, c, scale, comm),
                    [(local(q, r), local(k, r), local(v, r)) for r in range(ring)])
    for r, (out, _) in enumerate(fwd):
        assert torch.allclose(out, local(ref, r), atol=1e-5)
    bwd = _run_ring(ring, lambda *a: ring_backward(*a[:6], scale, a[6]),
                    [(local(dout, r), local(q, r), local(k, r), local(v, r), *fwd[r]) for r in range(ring)])
    for r, (dq, dk, dv) in enumerate(bwd):
        for got, want in ((dq, q.grad), (dk, k.grad), (dv, v.grad)):
            assert torch.allclose(got, want[:, :, idx[r]], atol=1e-5)
