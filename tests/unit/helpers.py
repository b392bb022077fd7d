"""Small builders for manifests used across unit tests."""

from __future__ import annotations

import copy
import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def example(name: str) -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / name).read_text())


def minimal(**spec: Any) -> dict[str, Any]:
    """A small valid manifest; keyword arguments replace top-level spec fields."""
    base: dict[str, Any] = {
        "apiVersion": "ctxext.dev/v1alpha1",
        "kind": "ContextExtensionJob",
        "metadata": {"name": "t"},
        "spec": {
            "model": {"source": "pvc://models/llama", "ropeTheta": 500000, "headDim": 128,
                      "originalContextLength": 8192},
            "targetContextLength": 65536,
        },
    }
    base["spec"].update(copy.deepcopy(spec))
    return base


def with_path(obj: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Copy of obj with a dotted path set (``spec.curriculum.stages.0.seqLen``); value DELETE removes it."""
    out = copy.deepcopy(obj)
    node: Any = out
    parts = path.split(".")
    for part in parts[:-1]:
        key: Any = int(part) if part.isdigit() else part
        if isinstance(node, dict) and key not in node:
            node[key] = {}
        node = node[key]
    last: Any = int(parts[-1]) if parts[-1].isdigit() else parts[-1]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return out


DELETE = object()


BENCH = Path(__file__).resolve().parents[2] / "bench"


def load_bench(name: str) -> ModuleType:
    """Import a bench/ script as a module (the scripts import each other as top-level modules)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)
