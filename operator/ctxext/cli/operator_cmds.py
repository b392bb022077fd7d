"""`ctxext operator`, `ctxext render`, `ctxext local-executor`: the Kubernetes side of ctxext."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from ctxext.cli.common import reports_errors
from ctxext.config import OperatorConfig
from ctxext.errors import SpecError
from ctxext.manifest import load_job
from ctxext.planner import plan_curriculum
from ctxext.yaml_output import dump_yaml

MANIFEST = typer.Argument(..., help="ContextExtensionJob manifest (YAML).", show_default=False)


def _use_kubeconfig(kubeconfig: Path | None) -> None:
    if kubeconfig is None:
        return
    from kubernetes.config import kube_config

    os.environ["KUBECONFIG"] = str(kubeconfig)
    kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(kubeconfig)  # read once at import by the client


@reports_errors
def operator(
    kubeconfig: Path | None = typer.Option(None, help="Kubeconfig to use outside a cluster (default: "
                                           "in-cluster service account, else $KUBECONFIG or ~/.kube/config)."),
    namespace: list[str] = typer.Option([], "--namespace", "-n", help="Watch only these namespaces "
                                        "(repeatable; default CTXEXT_NAMESPACES, else all)."),
    metrics_port: int | None = typer.Option(None, help="Port of /metrics (default CTXEXT_METRICS_PORT, 8080)."),
    health_port: int | None = typer.Option(None, help="Port of /healthz (default CTXEXT_HEALTH_PORT, 8081)."),
    backend: str | None = typer.Option(None, help="Kubeflow API of jobs with spec.backend Auto: auto (what the "
                                       "cluster serves, TrainJob when both are and its runtime exists), "
                                       "pytorchjob or trainjob (default CTXEXT_BACKEND, auto)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Run the operator: reconcile ContextExtensionJobs into Kubeflow TrainJobs or PyTorchJobs, stage by stage.

    Settings come from CTXEXT_* environment variables (see operator/ctxext/config.py); the options
    here override them.
    """
    _use_kubeconfig(kubeconfig)
    overrides = {"namespaces": " ".join(namespace) if namespace else None, "metrics_port": metrics_port,
                 "health_port": health_port, "backend": backend}
    for key, value in overrides.items():
        if value is not None:
            os.environ[f"CTXEXT_{key.upper()}"] = str(value)
    settings = OperatorConfig.from_env()
    from ctxext.controller.runner import run

    run(settings, verbose=verbose)


@reports_errors
def render(
    manifest: Path = MANIFEST,
    stage: int = typer.Option(1, help="1-based stage number; 0 is the base model's evaluation job (run before "
                              "stage 1 when a maxIncrease gate needs it)."),
    attempt: int = typer.Option(1, help="1-based attempt number."),
    namespace: str | None = typer.Option(None, "--namespace", "-n", help="Namespace (default: the manifest's, "
                                         "else default)."),
    learning_rate: float | None = typer.Option(None, help="Override the stage's learning rate (as a retry "
                                               "after non-finite gradients would)."),
    backend: str = typer.Option("pytorchjob", help="pytorchjob (Kubeflow training-operator v1) or trainjob "
                                "(Kubeflow Trainer v2, on the ClusterTrainingRuntime CTXEXT_TRAINING_RUNTIME)."),
) -> None:
    """Print the PyTorchJob (or TrainJob) the operator would create for a stage attempt (YAML)."""
    from ctxext.controller.backends import get_backend

    chosen = get_backend(backend)
    job = load_job(manifest)
    if namespace:
        job.metadata["namespace"] = namespace
    plan = plan_curriculum(job.spec)
    if not 0 <= stage <= len(plan.stages):
        raise SpecError([("--stage", f"must be between 0 (the base model's evaluation) and {len(plan.stages)}, "
                          f"got {stage}")])
    if attempt < 1:
        raise SpecError([("--attempt", f"must be at least 1, got {attempt}")])
    body = chosen.build(job, plan, stage, attempt=attempt, learning_rate=learning_rate,
                        config=OperatorConfig.from_env())
    sys.stdout.write(dump_yaml(body))


@reports_errors
def local_executor(
    root: Path = typer.Option(..., help="Directory that stands for the pods' volumes: mount path P becomes "
                              "ROOT/P (/ckpt -> ROOT/ckpt); logs and state in ROOT/.executor/."),
    kubeconfig: Path | None = typer.Option(None, help="Kubeconfig (default $KUBECONFIG or ~/.kube/config)."),
    namespace: list[str] = typer.Option([], "--namespace", "-n", help="Only these namespaces (default all)."),
    poll: float = typer.Option(1.0, help="Seconds between passes over the PyTorchJobs and TrainJobs."),
    stop_grace: float = typer.Option(30.0, help="Seconds between SIGTERM and SIGKILL when stopping a job."),
) -> None:
    """Run PyTorchJobs and TrainJobs on this machine with torchrun: a development stand-in for the Kubeflow
    training-operator and Kubeflow Trainer (writes their conditions as they do)."""
    import logging

    from kubernetes import client, config

    from ctxext.controller.local_executor import LocalExecutor

    _use_kubeconfig(kubeconfig)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config.load_kube_config()
    root.mkdir(parents=True, exist_ok=True)
    LocalExecutor(client.CustomObjectsApi(), root, namespaces=namespace, poll=poll,
                  stop_grace=stop_grace).run_forever()


def register(app: typer.Typer) -> None:
    app.command()(operator)
    app.command()(render)
    app.command("local-executor")(local_executor)
