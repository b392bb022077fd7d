"""The PyTorchJob backend (Kubeflow training-operator v1): an adapter over :mod:`ctxext.controller.builder`
and :mod:`ctxext.controller.observe`, which stay the source of truth for this API.

>>> PYTORCHJOB.suspend_patch(True)
{'spec': {'runPolicy': {'suspend': True}}}
>>> PYTORCHJOB.resource
('kubeflow.org', 'v1', 'pytorchjobs')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ctxext.api.job import ContextExtensionJob
from ctxext.config import OperatorConfig
from ctxext.controller import builder, observe
from ctxext.planner import Plan


@dataclass(frozen=True)
class PyTorchJobBackend:
    """``kubeflow.org/v1`` PyTorchJob: one Master pod (global rank 0) and ``nodes - 1`` Worker pods."""

    name: str = "pytorchjob"
    kind: str = builder.KIND
    api_version: str = builder.API_VERSION
    resource: tuple[str, str, str] = ("kubeflow.org", "v1", "pytorchjobs")

    def build(self, job: ContextExtensionJob, plan: Plan, stage: int, *, attempt: int = 1,
              learning_rate: float | None = None, config: OperatorConfig | None = None,
              suspend: bool | None = None, steps: int | None = None,
              result_key: str | None = None) -> dict[str, Any]:
        return builder.build_pytorchjob(job, plan, stage, attempt=attempt, learning_rate=learning_rate,
                                        config=config, suspend=suspend, steps=steps, result_key=result_key)

    def observe(self, obj: dict[str, Any]) -> observe.ObservedJob:
        return observe.observe(obj)

    def suspend_patch(self, suspend: bool) -> dict[str, Any]:
        return {"spec": {"runPolicy": {"suspend": suspend}}}


PYTORCHJOB = PyTorchJobBackend()
