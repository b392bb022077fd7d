"""Evaluation out of memory: a failure no retry mends (the trainer imports this without the evaluation package)."""

from __future__ import annotations

import torch


class EvaluationOutOfMemory(RuntimeError):
    """Evaluation ran out of memory; every retry would (the message says what to change)."""

    REASON_CODE = "EvaluationOutOfMemory"


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocator's out-of-memory error (CUDA's, or the CPU allocator's).

    >>> out_of_memory(torch.OutOfMemoryError("CUDA out of memory")), out_of_memory(ValueError("x"))
    (True, False)
    >>> out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"))
    True
    """
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))
