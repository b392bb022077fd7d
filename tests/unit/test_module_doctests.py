"""Every worked example in a docstring of the ``ctxext`` package (no torch) runs as a test."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil

import pytest

import ctxext

MODULES = sorted(m.name for m in pkgutil.walk_packages(ctxext.__path__, "ctxext."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_hold(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
    # A module that shows examples must have them run (a typo'd prompt or an example doctest cannot
    # find would otherwise pass as "0 of 0 failed").
    shown = inspect.getsource(module).count(">>> ")
    assert result.attempted >= shown > 0 or shown == 0, f"{name}: {shown} examples shown, {result.attempted} ran"


def test_the_package_has_worked_examples_and_they_run() -> None:
    ran = sum(doctest.testmod(importlib.import_module(n), optionflags=doctest.ELLIPSIS).attempted for n in MODULES)
    assert ran >= 100, ran  # 122 on 2026-12-07
