"""Test-only (tests/chart/test_prometheus.py puts this directory on PYTHONPATH of `ctxext run`).

A trainer rank sets its evaluation gauges at the very end of its stage and then closes its /metrics
endpoint; a scraper polling every second would catch those last values only by luck. So that the
test is deterministic, ``TrainerMetrics.close`` first waits until the test says Prometheus has
scraped the endpoint once more: the rank writes ``held-<stage>-<rank>`` (with the time) into
``$CTXEXT_TEST_HOLD_DIR`` and waits for ``release-<stage>`` there (at most 180 s, never forever).
Nothing else changes: the exporter, its registry and its values are the trainer's own.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

TARGET = "ctxext_trainer.metrics"


def _hold(close: Any) -> Any:
    def held_close(self: Any, *args: Any, **kwargs: Any) -> None:
        hold_dir = Path(os.environ["CTXEXT_TEST_HOLD_DIR"])
        stage, rank = self.labels["stage"], self.rank
        tmp = hold_dir / f".held-{stage}-{rank}.tmp"
        tmp.write_text(repr(time.time()))
        tmp.replace(hold_dir / f"held-{stage}-{rank}")  # atomic: the test never reads a half-written file
        deadline = time.monotonic() + 180
        while not (hold_dir / f"release-{stage}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        close(self, *args, **kwargs)

    return held_close


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader):
        self.inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.inner.exec_module(module)
        cls = module.TrainerMetrics
        cls.close = _hold(cls.close)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


if os.environ.get("CTXEXT_TEST_HOLD_DIR"):
    sys.meta_path.insert(0, _Finder())
