"""The step log's peak CUDA memory field: present with CUDA, absent elsewhere (bench/gpu_throughput.py reads it)."""

from __future__ import annotations

import torch

from ctxext_trainer import train_loop


def test_peak_device_memory_only_on_cuda(monkeypatch):
    assert train_loop.peak_device_memory("cpu") == {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a, **k: 3 * 1024**3)
    assert train_loop.peak_device_memory("cuda") == {"maxMemoryAllocated": 3 * 1024**3}
    assert train_loop.peak_device_memory("cpu") == {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train_loop.peak_device_memory("cuda") == {}
