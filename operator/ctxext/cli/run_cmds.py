"""`ctxext run` (the whole curriculum locally) and `ctxext init-tiny` (train the demo base model)."""

from __future__ import annotations

from pathlib import Path

import typer

from ctxext.cli.common import console, fail, reports_errors
from ctxext.manifest import job_name, load_job
from ctxext.planner import plan_curriculum

MANIFEST = typer.Argument(..., help="ContextExtensionJob manifest (YAML).", show_default=False)


def _trainer_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers", "ctxext_trainer"))


@reports_errors
def run(manifest: Path = MANIFEST,
        workdir: Path | None = typer.Option(None, "--workdir", help="Run directory (default: ./ctxext-runs/<name>). "
                                            "Rerunning with the same one resumes."),
        nproc: int | None = typer.Option(None, "--nproc", min=1, max=64,
                                         help="Trainer processes per stage (default: the plan's, 2 on CPU)."),
        metrics_port: int = typer.Option(9400, "--metrics-port", min=0, max=65535,
                                         help="Serve run metrics on this port (trainer ranks on port+1+rank); "
                                              "0 disables.")) -> None:
    """Run a ContextExtensionJob on this machine: each stage with torchrun (CPU, gloo), evaluation, gates,
    checkpoints. Ctrl-C stops after saving a checkpoint; the same command resumes where it stopped."""
    from ctxext.local_run.layout import world_size
    from ctxext.local_run.ports import check_ports_free
    from ctxext.local_run.runner import LocalRun, RunOptions

    job = load_job(manifest)
    plan = plan_curriculum(job.spec)
    if not _trainer_available():
        raise fail("`ctxext run` needs the trainer extra (torch, transformers, deepspeed): "
                   "pip install 'ctxext[trainer]'")
    name = job_name(job, manifest)
    job.metadata["name"] = name  # the workdir, report and metrics all use it (LocalRun's own fallback: "local")
    check_ports_free(metrics_port, world_size(plan, nproc))
    opts = RunOptions(workdir=workdir or Path("ctxext-runs") / name, nproc=nproc, metrics_port=metrics_port)
    console.print(f"[bold]{name}[/]: {plan.original_context_length} → {plan.target_context_length} tokens in "
                  f"{len(plan.stages)} stages ({plan.theta_rule}); workdir {opts.workdir}"
                  + (f"; metrics on http://127.0.0.1:{metrics_port}/metrics" if metrics_port else ""))
    for w in plan.warnings:
        console.print(f"[yellow]warning:[/] {w}")
    code = LocalRun(job, plan, opts, console).run()
    if code:
        raise typer.Exit(code)


@reports_errors
def init_tiny(directory: Path = typer.Argument(..., help="Output model directory.", show_default=False),
              seed: int = typer.Option(0, help="Seed of weights, data order and passkey samples."),
              init_from: Path | None = typer.Option(None, help="Continue training this saved tiny model."),
              steps: int = typer.Option(1500, min=1, help="Optimizer steps (the cosine schedule spans them)."),
              batch_size: int = typer.Option(16, min=1, help="Sequences per step."),
              learning_rate: float = typer.Option(2e-3, "--lr", min=0.0, help="Peak learning rate."),
              answer_weight: float = typer.Option(1.0, min=0.0, help="Loss weight of passkey answer tokens."),
              passkey_ratio: float = typer.Option(0.5, min=0.0, max=1.0, help="Fraction of each batch that is "
                                                  "passkey samples (the rest is corpus text)."),
              short_fact_ratio: float = typer.Option(0.0, min=0.0, max=1.0, help="Fraction of the passkey "
                                                     "samples that state the key once, briefly (varies its "
                                                     "distance from the question)."),
              theta_jitter: str | None = typer.Option(None, metavar="LO,HI", help="Train each step with a RoPE "
                                                      "theta drawn log-uniformly from [LO, HI] (saved with 10000)."),
              stop_accuracy: float | None = typer.Option(None, help="Stop (after a cool-down) once a progress "
                                                         "check reaches this passkey accuracy at 128."),
              ) -> None:
    """Train the tiny demo base model (byte vocabulary, 128 tokens) on the shipped corpus and passkey samples,
    then check it retrieves passkeys at 128 tokens (>= 0.95)."""
    if not _trainer_available():
        raise fail("`ctxext init-tiny` needs the trainer extra: pip install 'ctxext[trainer]'")
    from ctxext_trainer.tiny.base import PASS_BAR, BaseTrainingConfig, train_base

    cfg = BaseTrainingConfig(seed=seed, init_from=str(init_from) if init_from else None, steps=steps,
                             batch_size=batch_size, learning_rate=learning_rate, passkey_ratio=passkey_ratio,
                             answer_weight=answer_weight, stop_accuracy=stop_accuracy,
                             short_fact_ratio=short_fact_ratio,
                             theta_jitter=_theta_range(theta_jitter))
    metrics = train_base(directory, cfg, log=console.print)
    console.print(f"saved {directory}: passkey@{cfg.original_length} {metrics['passkeyAccuracy']:.3f}, "
                  f"held-out perplexity {metrics['heldOutPerplexity']:.3f}, {metrics['wallSeconds']:.0f}s")
    if float(metrics["passkeyAccuracy"]) < PASS_BAR:
        raise fail(f"passkey accuracy {metrics['passkeyAccuracy']:.3f} at {cfg.original_length} is below "
                   f"{PASS_BAR}; train longer (--steps) or try another --seed", code=1)


def _theta_range(text: str | None) -> tuple[float, float] | None:
    """``"LO,HI"`` → (LO, HI), positive and increasing; a clear error otherwise.

    >>> _theta_range("1e4,1e6"), _theta_range(None)
    ((10000.0, 1000000.0), None)
    """
    if text is None:
        return None
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise fail(f"--theta-jitter must be two numbers LO,HI (e.g. 1e4,1e6), got {text!r}") from None
    if not (0 < lo <= hi < float("inf")):
        raise fail(f"--theta-jitter needs 0 < LO <= HI, got {text!r}")
    return lo, hi


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("init-tiny")(init_tiny)
