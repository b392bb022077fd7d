"""Which Kubeflow API runs a job's stage attempts. Pure: the answers of the cluster come in as arguments.

The choice is made once per job, before its first attempt, and kept in ``status.backend``; a job that
already owns training jobs keeps their kind whatever the cluster serves now. Before that:

1. ``spec.backend`` (``PyTorchJob`` or ``TrainJob``) wins; ``Auto`` (the default) defers to the operator's
   ``CTXEXT_BACKEND``;
2. ``CTXEXT_BACKEND`` ``pytorchjob`` or ``trainjob`` forces one; ``auto`` (the default) takes the API the
   cluster serves: TrainJob when both are served and the ClusterTrainingRuntime exists (Kubeflow's current
   API, and the one its migration guide points to) unless the spec needs what only a PyTorchJob carries
   (a priority class), else PyTorchJob when it is served, else TrainJob;
3. a forced API the cluster does not serve, a TrainJob runtime that does not exist, or a cluster that serves
   neither API is a :class:`Problem`: the job fails before anything is created, with a condition that names
   the CRD (or runtime) to install, and starts by itself once it is there.

>>> choose("Auto", "auto", Served(pytorchjob=True, trainjob=True, runtime=True), "torch-distributed").kind
'TrainJob'
>>> choose("Auto", "auto", Served(pytorchjob=True, trainjob=True, runtime=False), "torch-distributed").kind
'PyTorchJob'
>>> choose("PyTorchJob", "trainjob", Served(pytorchjob=True, trainjob=True, runtime=True), "x").kind
'PyTorchJob'
>>> p = choose("Auto", "auto", Served(pytorchjob=False, trainjob=False, runtime=None), "torch-distributed")
>>> print(p.reason, p.message.split(":")[0])
TrainingApiMissing this cluster serves neither PyTorchJob (kubeflow.org/v1) nor TrainJob (trainer.kubeflow.org/v1alpha1)
"""

from __future__ import annotations

from dataclasses import dataclass

#: Condition reasons of a job that cannot start for want of a training API or runtime (recoverable).
API_MISSING = "TrainingApiMissing"
RUNTIME_MISSING = "TrainingRuntimeMissing"

PYTORCHJOB_CRD = ("PyTorchJob (kubeflow.org/v1): install Kubeflow training-operator v1.9 "
                  "(CRD pytorchjobs.kubeflow.org, kubectl apply --server-side -k "
                  "'github.com/kubeflow/trainer.git/manifests/overlays/standalone?ref=v1.9.4')")
TRAINJOB_CRD = ("TrainJob (trainer.kubeflow.org/v1alpha1): install Kubeflow Trainer v2 (CRD "
                "trainjobs.trainer.kubeflow.org and its runtimes, "
                "https://www.kubeflow.org/docs/components/trainer/operator-guides/installation/)")


@dataclass(frozen=True)
class Served:
    """What the cluster serves: each API (None: could not tell) and whether the runtime exists."""

    pytorchjob: bool | None
    trainjob: bool | None
    runtime: bool | None
    """The ClusterTrainingRuntime named by CTXEXT_TRAINING_RUNTIME (None: not served, or not readable)."""


@dataclass(frozen=True)
class Choice:
    kind: str
    """``PyTorchJob`` or ``TrainJob``."""


@dataclass(frozen=True)
class Problem:
    reason: str
    message: str


def _runtime_missing(runtime: str) -> Problem:
    return Problem(RUNTIME_MISSING, f"the ClusterTrainingRuntime {runtime} that TrainJobs run on does not exist: "
                   "install Kubeflow Trainer's runtimes (kubectl get clustertrainingruntimes), or point the "
                   f"operator's CTXEXT_TRAINING_RUNTIME (chart value operator.trainingRuntime) at one that exists, "
                   "or set spec.backend: PyTorchJob; the job starts once it exists")


def _forced(kind: str, served: Served, runtime: str, why: str) -> Choice | Problem:
    if kind == "PyTorchJob":
        if served.pytorchjob is False:
            return Problem(API_MISSING, f"{why} asks for PyTorchJob, which this cluster does not serve: "
                           f"{PYTORCHJOB_CRD}, or run on TrainJob; the job starts once it is served")
        return Choice("PyTorchJob")
    if served.trainjob is False:
        return Problem(API_MISSING, f"{why} asks for TrainJob, which this cluster does not serve: "
                       f"{TRAINJOB_CRD}, or run on PyTorchJob; the job starts once it is served")
    if served.runtime is False:
        return _runtime_missing(runtime)
    return Choice("TrainJob")


def choose(requested: str, operator_default: str, served: Served, runtime: str, *,
           trainjob_fits: bool = True) -> Choice | Problem:
    """The API of a job that has none yet (see the module docstring).

    ``requested`` is ``spec.backend`` (Auto, PyTorchJob, TrainJob); ``operator_default`` is ``CTXEXT_BACKEND``
    (auto, pytorchjob, trainjob); ``runtime`` names the ClusterTrainingRuntime, for messages.
    ``trainjob_fits`` is False for a spec that a TrainJob cannot carry (a priority class): ``auto`` then takes
    PyTorchJob where it is served, instead of refusing the job.
    """
    if requested in ("PyTorchJob", "TrainJob"):
        return _forced(requested, served, runtime, "spec.backend")
    if operator_default in ("pytorchjob", "trainjob"):
        kind = "PyTorchJob" if operator_default == "pytorchjob" else "TrainJob"
        return _forced(kind, served, runtime, f"the operator's CTXEXT_BACKEND={operator_default}")
    if served.pytorchjob and not trainjob_fits:
        return Choice("PyTorchJob")  # what it needs only a PyTorchJob carries, and the cluster serves one
    if served.trainjob and served.runtime is not False and (served.runtime or not served.pytorchjob):
        return Choice("TrainJob")  # both served and the runtime exists, or TrainJob is all there is
    if served.pytorchjob is not False:
        return Choice("PyTorchJob")  # served (or cannot tell: the create call will say)
    if served.trainjob:
        return _runtime_missing(runtime)
    return Problem(API_MISSING, "this cluster serves neither PyTorchJob (kubeflow.org/v1) nor TrainJob "
                   f"(trainer.kubeflow.org/v1alpha1): install one of them. {TRAINJOB_CRD}; or {PYTORCHJOB_CRD}. "
                   "The job starts once one is served")
