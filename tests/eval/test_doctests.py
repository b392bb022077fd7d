"""The worked examples in the evaluation modules' docstrings are run as tests."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["ctxext.gates", "ctxext.cli.eval_cmds", "ctxext_trainer.eval.haystack", "ctxext_trainer.eval.tasks",
           "ctxext_trainer.eval.parallel", "ctxext_trainer.eval.perplexity", "ctxext_trainer.eval.generate",
           "ctxext_trainer.eval.sharded", "ctxext_trainer.eval.oom", "ctxext_trainer.eval.corpus"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0
