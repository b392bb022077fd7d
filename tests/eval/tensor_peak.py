"""Peak bytes of the tensors created inside a ``with TensorPeak() as p:`` block (CPU or any device).

Every tensor an ATen op returns is counted by its storage until the last tensor viewing that storage
is freed, so ``p.peak`` is the high-water mark of what the block allocated on top of what already
existed (weights and inputs made before the block are not counted). A measurement, not a model: it
sees every op of the forward, including the ones transformers and the ring run.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class TensorPeak(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[int, list[int]] = {}  # storage pointer → [tensors alive, bytes]

    def _release(self, key: int) -> None:
        entry = self._refs.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self._refs[key]

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and not t.is_meta:
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if not key:
                    continue
                entry = self._refs.get(key)
                if entry is None:
                    entry = self._refs[key] = [0, storage.nbytes()]
                    self.live += entry[1]
                    self.peak = max(self.peak, self.live)
                entry[0] += 1
                weakref.finalize(t, self._release, key)
        return out
