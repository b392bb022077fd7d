"""Every worked example in a docstring of the ``ctxext`` package (no torch) runs as a test."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import ctxext

MODULES = sorted(m.name for m in pkgutil.walk_packages(ctxext.__path__, "ctxext."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_hold(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
