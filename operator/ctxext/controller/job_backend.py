"""The engine's side of backends: which Kubeflow API a job runs on, and whether its spec fits that API.

Per pass, :meth:`JobBackends.resolve` answers, cheapest source first:

1. the kind of the job's own training jobs (an adopted or running job keeps its API, whatever the cluster
   serves now or says in ``status.backend``);
2. ``status.backend``, recorded by an earlier pass;
3. otherwise :func:`ctxext.controller.backends.choice.choose`, on what the cluster serves (discovery and the
   ClusterTrainingRuntime, asked at most every :data:`SERVED_TTL_SECONDS`, or every resync if that is
   shorter, for all jobs together).

A finished job asks nothing. Then :meth:`JobBackends.check` builds every stage's attempt 1 with the chosen
backend (once per spec generation and backend) so that what that API cannot carry — a priority class on a
TrainJob — is an ``InvalidSpec`` naming the field before anything is created, not an error at creation.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ctxext.api.job import ContextExtensionJob
from ctxext.config import OperatorConfig
from ctxext.controller.backends import Backend, by_kind
from ctxext.controller.backends.choice import Choice, Problem, Served, choose
from ctxext.controller.backends.trainjob import TRAINJOB
from ctxext.controller.observe import ObservedJob
from ctxext.errors import SpecError
from ctxext.planner import Plan

#: How long one discovery answer serves every job that has yet to choose (a CRD installed after that is
#: seen by the next pass after it, at the latest by the resync).
SERVED_TTL_SECONDS = 30.0


@dataclass(frozen=True)
class Resolved:
    backend: Backend | None
    """The backend to create and suspend with (None: the job cannot start, see ``problem``)."""
    problem: Problem | None = None
    """Why no backend could be chosen (the job fails with it until the cluster is mended)."""


class JobBackends:
    """Kept by the engine: the last discovery answer and the last spec check per job."""

    def __init__(self, config: OperatorConfig, served: Callable[[], Awaitable[Served]]):
        self.config, self._ask = config, served
        self._served: tuple[float, Served] | None = None
        self._checked: dict[str, tuple[Any, str, SpecError | None]] = {}

    async def served(self) -> Served:
        now = time.monotonic()
        ttl = min(SERVED_TTL_SECONDS, self.config.resync_seconds)
        if self._served is None or now - self._served[0] >= ttl:
            self._served = (now, await self._ask())
        return self._served[1]

    async def resolve(self, job: ContextExtensionJob | None, plan: Plan | None, status: dict[str, Any],
                      own: Iterable[ObservedJob], *, finished: bool) -> Resolved:
        """The job's backend (see the module docstring); ``own`` are the training jobs it owns."""
        newest = max(own, key=lambda j: (j.stage, j.attempt), default=None)
        if newest is not None:
            return Resolved(by_kind(newest.kind))
        if status.get("backend") in ("PyTorchJob", "TrainJob"):
            return Resolved(by_kind(status["backend"]))
        if finished or job is None:
            return Resolved(None)
        answer = choose(str(job.spec.backend), self.config.backend, await self.served(),
                        self.config.training_runtime, trainjob_fits=self._fits(job, plan))
        if isinstance(answer, Choice):
            return Resolved(by_kind(answer.kind))
        return Resolved(None, answer)

    def _fits(self, job: ContextExtensionJob, plan: Plan | None) -> bool:
        """Can a TrainJob carry this spec? (Only asked while choosing; a spec that does not plan is InvalidSpec
        on either API.)"""
        return plan is None or self._misfit(TRAINJOB, job, plan) is None

    def _misfit(self, backend: Backend, job: ContextExtensionJob, plan: Plan) -> SpecError | None:
        try:
            for stage in plan.stages:  # the baseline evaluation (stage 0) runs stage 1's pod
                backend.build(job, plan, stage.index, config=self.config, result_key="0" * 32)
        except SpecError as exc:
            return SpecError([(field, f"{message} (spec.backend / the operator chose {backend.kind})")
                              for field, message in exc.problems])
        return None

    def check(self, key: str, generation: Any, backend: Backend, job: ContextExtensionJob,
              plan: Plan) -> SpecError | None:
        """What ``backend`` cannot carry of this spec (None: every stage builds), cached per generation."""
        generation = (job.metadata.get("uid"), generation)  # a re-applied job of the same name starts at 1 again
        cached = self._checked.get(key)
        if cached is not None and cached[:2] == (generation, backend.name):
            return cached[2]
        error = self._misfit(backend, job, plan)
        self._checked[key] = (generation, backend.name, error)
        return error

    def forget(self, key: str) -> None:
        self._checked.pop(key, None)
