"""`ctxext run`: the whole curriculum on one machine, with the cluster's planner, trainer and gates.

For each stage not yet done: write ``stage-<i>/stage-config.json``, run
``python -m ctxext_trainer.launch --standalone --nproc-per-node N -m ctxext_trainer --stage-config F``
(gloo on CPU, ``OMP_NUM_THREADS=1`` per process), poll ``train_log.jsonl`` for the progress bars,
then read result.json (the trainer evaluates the stage), judge it and write the verdict back into
result.json; a failed attempt is retried as ``failurePolicy`` says. Before stage 1 the base model is
evaluated at stage 1's lengths (``baseline/evaluation.json``). Every decision (what is evaluated,
the gates, retries, the learning-rate backoff, a gate retry's extra steps) is
:mod:`ctxext.decide`'s, the same the operator makes. Ctrl-C sends SIGTERM to the trainer, which saves a checkpoint; a
rerun skips finished stages and the trainer resumes from its checkpoint. No torch in this process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from ctxext.api.job import ContextExtensionJob
from ctxext.controller.model import retry_message
from ctxext.decide import NO_RESULT, Verdict, baseline_needed, judge, next_attempt, stop_message
from ctxext.local_run.display import StageBars, checks_table, summary_table
from ctxext.local_run.layout import Workdir, base_model_dir, local_stage_config, world_size, write_stage_config
from ctxext.local_run.progress import RunMetrics, read_progress
from ctxext.local_run.report import build_report, run_lengths, write_report_md
from ctxext.planner import Plan
from ctxext.results import RESULT_FILE, StageResult, read_result, write_result

POLL_SECONDS = 0.5
TERM_GRACE_SECONDS = 120
EXIT_INTERRUPTED = 130


@dataclass(kw_only=True)
class RunOptions:
    workdir: Path
    nproc: int | None = None
    metrics_port: int = 0
    """Run-level /metrics port (0: none); trainer ranks use metrics_port + 1 + rank."""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONUNBUFFERED="1")
    return env


def trainer_command(config_path: Path, nproc: int) -> list[str]:
    # ctxext_trainer.launch is torchrun that exits with the trainer's code and, on Ctrl-C's SIGTERM,
    # quietly with 143 (plain torchrun leaves a SignalException traceback in trainer.log).
    return [sys.executable, "-m", "ctxext_trainer.launch", "--standalone", "--nproc-per-node", str(nproc),
            "-m", "ctxext_trainer", "--stage-config", str(config_path)]


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the trainer's process group (the trainer checkpoints), then wait; kill if it hangs."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=TERM_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


class BaselineError(RuntimeError):
    """The base model could not be evaluated: the run fails before any training."""


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


class LocalRun:
    """One `ctxext run` of one manifest in one workdir."""

    def __init__(self, job: ContextExtensionJob, plan: Plan, opts: RunOptions, console: Console):
        self.job, self.plan, self.opts, self.console = job, plan, opts, console
        self.name = job.metadata.get("name") or "local"
        self.wd = Workdir(opts.workdir)
        self.nproc = world_size(plan, opts.nproc)
        self.metrics = RunMetrics(self.name, len(plan.stages))
        self.started = time.monotonic()
        self.ran = False
        """True once this invocation evaluated or trained anything (a rerun of a finished run does not)."""

    def _trainer_port(self) -> int:
        return self.opts.metrics_port + 1 if self.opts.metrics_port else 0

    def baseline(self) -> dict[str, Any]:
        """The base model evaluated at stage 1's lengths, once per workdir (:mod:`ctxext.decide`): the
        same trainer run (``evaluate_only``, stage 0) the operator's ``<cej>-s0-a1`` job runs."""
        if self.wd.baseline_file.exists():
            return dict(json.loads(self.wd.baseline_file.read_text()))
        if not baseline_needed(self.job.spec, report=True):
            return {}
        self.wd.baseline_dir.mkdir(parents=True, exist_ok=True)
        log, attempt = self.wd.baseline_dir / "evaluate.log", 1
        self.ran = True
        while True:  # failed evaluations are retried as failurePolicy says, as the operator retries its s0 job
            config = local_stage_config(self.job, self.plan, self.wd, 0, metrics_port=0, attempt=attempt)
            path = self.wd.baseline_dir / "stage-config.json"
            path.write_text(json.dumps(config.to_wire(), indent=2, sort_keys=True))
            (self.wd.baseline_dir / RESULT_FILE).unlink(missing_ok=True)  # a failed attempt's
            self.console.print(f"evaluating the base model {base_model_dir(self.job)} at {config.eval_lengths} …")
            with log.open("ab") as out:
                rc = subprocess.call(trainer_command(path, self.nproc), env=_env(), stdout=out, stderr=out,
                                     start_new_session=True)
            result = read_result(self.wd.baseline_dir)
            if rc == 0 and result is not None and result.status == "Succeeded":
                break
            verdict = judge(result.to_wire() if result is not None else None, gates=[], stage_seq_len=config.seq_len,
                            original_length=self.plan.original_context_length, baseline=None)
            reason = verdict.reason if result is not None else f"{NO_RESULT} (the trainer exited with code {rc})"
            n = next_attempt(verdict.code, attempt=attempt, policy=self.job.spec.failure_policy, learning_rate=None,
                             steps=0, planned_steps=0)
            if not n.retry:
                raise BaselineError("the base model could not be evaluated, so no stage was trained: "
                                    f"{stop_message('baseline evaluation', attempt, reason or '', n.why_not)}; "
                                    f"see {log}")
            self.console.print(retry_message("baseline evaluation", attempt, reason or "", None, n.delay_seconds,
                                             None))
            time.sleep(n.delay_seconds)
            attempt += 1
        self.wd.baseline_file.write_text(json.dumps(result.evaluation, indent=2, sort_keys=True))
        return dict(result.evaluation)

    def run_attempt(self, index: int, bars: StageBars, *, attempt: int, learning_rate: float | None,
                    steps: int | None) -> tuple[str, StageResult | None, int | None]:
        """Run one attempt of stage ``index``: ("ran" | "interrupted", its result or None, exit code)."""
        config = local_stage_config(self.job, self.plan, self.wd, index, metrics_port=self._trainer_port(),
                                    attempt=attempt, learning_rate=learning_rate, steps=steps)
        path = write_stage_config(self.wd, index, config)
        resumed = self.wd.stage_state(index) in ("partial", "failed")
        (self.wd.stage_dir(index) / RESULT_FILE).unlink(missing_ok=True)  # a stale Failed/Preempted one
        bars.start(index, "resuming from checkpoint" if resumed else "")
        log = self.wd.stage_dir(index) / "trainer.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(trainer_command(path, self.nproc), env=_env(), stdout=out, stderr=out,
                                    start_new_session=True)
            try:
                while proc.poll() is None:
                    time.sleep(POLL_SECONDS)
                    p = read_progress(config, self.nproc)
                    if p is not None:
                        bars.update(index, p)
                        self.metrics.on_progress(index, p)
                        if p.step >= config.steps:
                            bars.note(index, "evaluating")
            except KeyboardInterrupt:
                bars.note(index, "interrupted: saving a checkpoint")
                _terminate(proc)
                bars.finish(index, steps=None, loss=None, note="interrupted")
                return "interrupted", None, None
        return "ran", self.wd.result(index), proc.returncode

    def run_stage(self, index: int, bars: StageBars, baseline: dict[str, Any]) -> tuple[str, str | None]:
        """Attempts of stage ``index`` until one passes or :func:`ctxext.decide.next_attempt` says stop:
        ("done" | "failed" | "interrupted", reason). The same decisions as the operator's."""
        stage, policy = self.plan.stages[index - 1], self.job.spec.failure_policy
        attempt, lr, steps = 1, stage.learning_rate, stage.steps
        label = f"stage {index}/{len(self.plan.stages)}"
        while True:
            outcome, result, rc = self.run_attempt(index, bars, attempt=attempt, learning_rate=lr, steps=steps)
            if outcome == "interrupted":
                return "interrupted", None
            verdict = self._judge(index, result, bars, baseline)
            if verdict.passed:
                return "done", None
            reason = verdict.reason or ""
            if result is None:
                reason = (f"{NO_RESULT} (the trainer exited with code {rc}; see "
                          f"{self.wd.stage_dir(index) / 'trainer.log'})")
            n = next_attempt(verdict.code, attempt=attempt, policy=policy, learning_rate=lr, steps=steps,
                             planned_steps=stage.steps)
            if not n.retry:
                return "failed", stop_message(label, attempt, reason, n.why_not)
            self.console.print(retry_message(label, attempt, reason, result.to_wire() if result else None,
                                             n.delay_seconds, n.learning_rate,
                                             n.steps if verdict.code == "GateFailed" else None))
            time.sleep(n.delay_seconds)
            attempt = attempt + 1
            lr, steps = (n.learning_rate if n.learning_rate is not None else lr), (n.steps or steps)

    def _judge(self, index: int, result: StageResult | None, bars: StageBars, baseline: dict[str, Any]) -> Verdict:
        """Judge the attempt (:func:`ctxext.decide.judge`) and write the verdict into its result.json."""
        stage = self.plan.stages[index - 1]
        if result is None:
            bars.finish(index, steps=None, loss=None, note=f"[red]{NO_RESULT}[/]")
            return judge(None, gates=[], stage_seq_len=stage.seq_len, original_length=0, baseline=None)
        self.metrics.on_evaluation(index, result.evaluation)
        verdict = judge(result.to_wire(), gates=self.job.spec.evaluation.gates, stage_seq_len=stage.seq_len,
                        original_length=self.plan.original_context_length, baseline=baseline or None)
        result = result.model_copy(update={"gates": [o.to_dict() for o in verdict.gates], "baseline": baseline})
        if verdict.code == "GateFailed":
            result = result.model_copy(update={"status": "Failed", "reason": verdict.reason,
                                               "reason_code": "GateFailed"})
        write_result(self.wd.stage_dir(index), result)
        note = "[green]done[/]" if verdict.passed else (
            "[red]gate failed[/]" if verdict.code == "GateFailed" else f"[red]{result.reason}[/]")
        bars.finish(index, steps=result.steps_done, loss=result.final_loss, note=note)
        return verdict

    def run(self) -> int:
        signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the run like Ctrl-C: checkpoint, then exit
        # Explicitly, too: a process started in the background by a non-interactive shell inherits SIGINT
        # ignored, and Python then installs no KeyboardInterrupt handler, so `kill -INT` did nothing.
        signal.signal(signal.SIGINT, _interrupt)
        self.wd.claim(self.job)
        self.metrics.serve(self.opts.metrics_port)
        self.metrics.on_stage(0, 0)
        try:
            baseline = self.baseline()
        except BaselineError as exc:
            return self.finish("Failed", str(exc), {})
        self.metrics.on_evaluation(0, baseline)
        status, reason, done = "Succeeded", None, 0
        with StageBars(self.console, self.plan) as bars:
            for stage in self.plan.stages:
                self.metrics.on_stage(stage.index, done)
                previous = self.wd.result(stage.index)
                if previous is not None and previous.status == "Succeeded":
                    bars.start(stage.index)
                    bars.finish(stage.index, steps=previous.steps_done, loss=previous.final_loss,
                                note="done (earlier run)")
                    done += 1
                    continue
                self.ran = True
                outcome, reason = self.run_stage(stage.index, bars, baseline)
                if outcome != "done":
                    status = "Interrupted" if outcome == "interrupted" else "Failed"
                    break
                done += 1
        self.metrics.on_stage(0, done)
        return self.finish(status, reason, baseline)

    def _wall_seconds(self, results: list[StageResult]) -> float:
        """Wall time of the run across invocations: what report.json said before (else the stages' own
        times), plus this invocation's if it did anything — a rerun of a finished run keeps its time."""
        try:
            earlier = float(json.loads(self.wd.report_json.read_text())["wallSeconds"])
        except (OSError, ValueError, KeyError, TypeError):
            earlier = sum(r.wall_seconds or 0.0 for r in results) if not self.ran else 0.0
        return earlier + (time.monotonic() - self.started if self.ran else 0.0)

    def finish(self, status: str, reason: str | None, baseline: dict[str, Any]) -> int:
        results = [r for s in self.plan.stages if (r := self.wd.result(s.index)) is not None]
        model = None
        if status == "Succeeded":
            final = self.wd.stage_dir(len(self.plan.stages)) / "model"
            shutil.rmtree(self.wd.final_model, ignore_errors=True)
            shutil.copytree(final, self.wd.final_model)
            model = str(self.wd.final_model)
        report = build_report(job_name=self.name, plan=self.plan, baseline=baseline, results=results,
                              lengths=run_lengths(self.plan, self.job.spec.evaluation.lengths),
                              status=status, wall_seconds=self._wall_seconds(results), model_path=model)
        if reason:
            report["reason"] = reason
        self.wd.report_json.write_text(json.dumps(report, indent=2))
        write_report_md(self.wd, report)
        self.console.print(summary_table(report))
        if report["checks"]:
            self.console.print(checks_table(report))
        self.console.print(f"report: {self.wd.report_json}  {self.wd.report_md}" +
                           (f"  model: {model}" if model else ""))
        if status == "Interrupted":
            self.console.print(f"[yellow]interrupted[/]: rerun the same command to resume in {self.wd.root}")
            return EXIT_INTERRUPTED
        if status == "Failed":
            self.metrics.on_failure()
            self.console.print(f"[bold red]failed:[/] {reason}")
            return 1
        return 0
