"""The worked examples in the trainer's docstrings (packing, theta/RoPE, loss, schedules, zigzag ring) run as tests."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["ctxext_trainer.rope", "ctxext_trainer.data.packing", "ctxext_trainer.data.augment",
           "ctxext_trainer.data.batches", "ctxext_trainer.data.sources", "ctxext_trainer.engine",
           "ctxext_trainer.loss", "ctxext_trainer.grad_stats", "ctxext_trainer.reporting", "ctxext_trainer.launch",
           "ctxext_trainer.model_loading", "ctxext_trainer.tokenizer", "ctxext_trainer.tiny.data",
           "ctxext_trainer.zigzag", "ctxext_trainer.ring_kernels", "ctxext_trainer.sequence_parallel",
           "ctxext_trainer.speed", "ctxext_trainer.fused_ce", "ctxext_trainer.export",
           "ctxext_trainer.resume_check", "ctxext_trainer.checkpoint", "ctxext_trainer.data.token_cache",
           "ctxext_trainer.trainjob_status", "ctxext_trainer.credentials",
           "ctxext_trainer.attempt_end"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0, f"{name} has no examples"
