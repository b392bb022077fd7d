"""`ctxext plan`, `ctxext validate`, `ctxext crd`: look at a manifest without running anything."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.table import Table

from ctxext.api.crd import crd_yaml
from ctxext.api.job import ContextExtensionJob
from ctxext.cli.common import OutputFormat, console, emit, err_console, reports_errors
from ctxext.errors import SpecError
from ctxext.manifest import job_name, load_job, load_jobs
from ctxext.planner import Plan, PlannedStage, plan_curriculum

MANIFEST = typer.Argument(..., help="ContextExtensionJob manifest (YAML).", show_default=False)


def _fmt_tokens(n: int) -> str:
    return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)


def _fmt_sp(stage: PlannedStage) -> str:
    """SP column: the degree, and its Ulysses × ring split when there is a ring (``16 (8×2)``)."""
    if stage.ring_degree == 1:
        return str(stage.sequence_parallel)
    return f"{stage.sequence_parallel} ({stage.ulysses_degree}×{stage.ring_degree})"


def layout_lines(plan: Plan) -> list[str]:
    """One line per stage: how its ranks split a sequence, and selective checkpointing if any."""
    lines = []
    for s in plan.stages:
        parts = [s.sequence_parallel_layout] if s.sequence_parallel > 1 else []
        if s.checkpointed_layers is not None:
            parts.append(f"activation checkpointing on {s.checkpointed_layers} layers (selective)")
        if parts:
            lines.append(f"stage {s.index}: " + "; ".join(parts))
    return lines


def plan_table(plan: Plan, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("stage", "seqLen", "ropeTheta", "steps", "lr", "batch×accum", "nodes×procs", "SP", "DP",
                "ZeRO", "tokens/step", "est. GiB/rank"):
        table.add_column(col, justify="right")
    for s in plan.stages:
        table.add_row(
            f"{s.index}/{len(plan.stages)}", _fmt_tokens(s.seq_len), f"{s.rope_theta:,.0f}", str(s.steps),
            f"{s.learning_rate:g}", f"{s.batch_size}×{s.gradient_accumulation}",
            f"{s.nodes}×{s.processes_per_node}", _fmt_sp(s), str(s.data_parallel), str(s.zero_stage),
            f"{s.tokens_per_step:,}", "-" if s.estimated_memory_gib is None else f"{s.estimated_memory_gib:.1f}",
        )
    return table


@reports_errors
def plan(manifest: Path = MANIFEST,
         output: OutputFormat = typer.Option(OutputFormat.table, "-o", "--output", help="table, json or yaml.")
         ) -> None:
    """Show the curriculum a manifest would run: stages, theta, batch layout, memory per rank."""
    job = load_job(manifest)
    result = plan_curriculum(job.spec)
    if output is OutputFormat.table:
        name = job_name(job, manifest)
        console.print(plan_table(result, f"{name}: {_fmt_tokens(result.original_context_length)} → "
                                 f"{_fmt_tokens(result.target_context_length)} ({result.theta_rule})"))
        for line in layout_lines(result):
            console.print(line, highlight=False)
        for w in result.warnings:
            err_console.print(f"[yellow]warning:[/] {w}", highlight=False)
    else:
        emit(result.to_wire(), output)


@reports_errors
def validate(manifest: Path = MANIFEST) -> None:
    """Check a manifest (schema, cross-field rules and the plan) without running it."""
    for job in load_jobs(manifest):
        result = plan_curriculum(job.spec)
        for w in result.warnings:
            err_console.print(f"[yellow]warning:[/] {w}", highlight=False)
        _check_backend(job, result)
        if not job.metadata.get("name"):
            err_console.print(f"[yellow]warning:[/] no metadata.name: `ctxext run` names this job "
                              f"{job_name(job, manifest)!r} after the file; kubectl apply needs metadata.name",
                              highlight=False)
        console.print(f"{manifest}: {job_name(job, manifest)} is valid "
                      f"({len(result.stages)} stages)", highlight=False)


def _check_backend(job: ContextExtensionJob, plan: Plan) -> None:
    """spec.backend TrainJob: what a TrainJob cannot carry is an error here too; Auto: a warning, since an
    operator on a cluster that serves only TrainJob would refuse it (``ctxext.controller.backends.choice``)."""
    from ctxext.controller.backends import get_backend

    try:
        for stage in plan.stages:
            get_backend("trainjob").build(job, plan, stage.index)
    except SpecError as exc:
        if job.spec.backend == "TrainJob":
            raise
        if job.spec.backend == "Auto":
            err_console.print(f"[yellow]warning:[/] on a cluster that serves only TrainJob (Kubeflow Trainer v2, no "
                              f"PyTorchJob CRD) the operator refuses this job: {exc}", highlight=False)


@reports_errors
def crd() -> None:
    """Print the ContextExtensionJob CustomResourceDefinition (YAML)."""
    sys.stdout.write(crd_yaml())


def register(app: typer.Typer) -> None:
    app.command()(plan)
    app.command()(validate)
    app.command()(crd)
