"""Training-job backends: the one interface between the stage state machine and a Kubeflow API.

A backend knows four things about its API and nothing about curricula:

* :meth:`Backend.build`: the object of one stage attempt (a pure function of the job, its plan, the
  stage and the attempt; :class:`ctxext.errors.SpecError` naming the manifest field for anything the
  API cannot carry, before anything is created);
* :meth:`Backend.observe`: the attempt's state, reduced to :class:`ctxext.controller.observe.ObservedJob`;
* :meth:`Backend.suspend_patch`: the merge patch that suspends or resumes it;
* :attr:`Backend.resource`: the ``(group, version, plural)`` it is created in and watched as.

Two implementations: :mod:`.pytorchjob` (Kubeflow training-operator v1, ``kubeflow.org/v1``) and
:mod:`.trainjob` (Kubeflow Trainer v2, ``trainer.kubeflow.org/v1alpha1``). A third API (JobSet, RayJob)
is one more module and one more entry in :data:`BACKENDS`.

>>> sorted(BACKENDS), get_backend("trainjob").kind
(['pytorchjob', 'trainjob'], 'TrainJob')
>>> get_backend("rayjob")
Traceback (most recent call last):
...
ctxext.errors.SpecError: --backend: unknown backend 'rayjob'; choose pytorchjob or trainjob
"""

from __future__ import annotations

from typing import Any, Protocol

from ctxext.api.job import ContextExtensionJob
from ctxext.config import OperatorConfig
from ctxext.controller.observe import ObservedJob
from ctxext.errors import SpecError
from ctxext.planner import Plan


class Backend(Protocol):
    """One Kubeflow training API (see the module docstring)."""

    @property
    def name(self) -> str:
        """Short name: ``pytorchjob`` or ``trainjob`` (``ctxext render --backend``)."""

    @property
    def kind(self) -> str: ...

    @property
    def api_version(self) -> str: ...

    @property
    def resource(self) -> tuple[str, str, str]:
        """``(group, version, plural)`` of the objects it creates."""

    def build(self, job: ContextExtensionJob, plan: Plan, stage: int, *, attempt: int = 1,
              learning_rate: float | None = None, config: OperatorConfig | None = None,
              suspend: bool | None = None, steps: int | None = None,
              result_key: str | None = None) -> dict[str, Any]:
        """The object of ``stage`` attempt ``attempt`` (arguments as :func:`.builder.build_pytorchjob`)."""
        ...

    def observe(self, obj: dict[str, Any]) -> ObservedJob:
        """What the object says about itself."""
        ...

    def suspend_patch(self, suspend: bool) -> dict[str, Any]:
        """Merge patch that suspends (True) or resumes (False) the object."""
        ...


def _registry() -> dict[str, Backend]:
    from ctxext.controller.backends.pytorchjob import PYTORCHJOB
    from ctxext.controller.backends.trainjob import TRAINJOB

    return {b.name: b for b in (PYTORCHJOB, TRAINJOB)}


BACKENDS: dict[str, Backend] = _registry()
DEFAULT_BACKEND = "pytorchjob"


def get_backend(name: str) -> Backend:
    """The backend called ``name`` (case-insensitive); a plain :class:`SpecError` for any other."""
    try:
        return BACKENDS[name.strip().lower()]
    except KeyError:
        raise SpecError([("--backend", f"unknown backend {name!r}; choose {' or '.join(sorted(BACKENDS))}")]) from None


def by_kind(kind: str | None) -> Backend:
    """The backend whose objects are of ``kind`` (``PyTorchJob`` or ``TrainJob``); PyTorchJob for None.

    >>> by_kind("TrainJob").name, by_kind(None).name
    ('trainjob', 'pytorchjob')
    """
    for backend in BACKENDS.values():
        if backend.kind == kind:
            return backend
    if kind is None:
        return BACKENDS[DEFAULT_BACKEND]
    raise KeyError(f"no backend for kind {kind!r}")


def observe_job(obj: dict[str, Any]) -> ObservedJob:
    """Reduce a PyTorchJob or a TrainJob (by its ``kind``) to an :class:`ObservedJob`."""
    return by_kind(obj.get("kind")).observe(obj)
