"""Where `ctxext run` keeps things, and which stages are already done. Pure; no torch.

A workdir holds one run of one manifest::

    <workdir>/
      run.json                  the manifest's spec hash, so a rerun with another spec is refused
      baseline/evaluation.json  the base model evaluated at stage 1's lengths (before stage 1)
      stage-1/                  the stage's output_dir: stage-config.json, checkpoints/, model/,
      stage-2/                  train_log.jsonl, result.json, eval/ (plots), trainer.log
      report.json  report.md  model -> stage-N/model (the final Hugging Face model)

A stage whose result.json says Succeeded is skipped on a rerun; any other stage is started again
and the trainer resumes from the latest checkpoint in its own ``checkpoints/`` directory, at the
step where it stopped. Stage ``i`` starts from ``stage-(i-1)/model`` (stage 1 from the base model).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ctxext.api.job import ContextExtensionJob
from ctxext.errors import SpecError
from ctxext.model_info import local_model_dir
from ctxext.planner import Plan
from ctxext.results import StageResult, read_result
from ctxext.stage_config import StageConfig, build_stage_config

StageState = Literal["done", "partial", "failed", "pending"]
RUN_FILE = "run.json"
STAGE_CONFIG_FILE = "stage-config.json"


def spec_digest(job: ContextExtensionJob) -> str:
    """A short hash of the spec: a workdir belongs to one spec."""
    text = json.dumps(job.spec.to_wire(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Workdir:
    """Paths of one local run."""

    root: Path

    def stage_dir(self, index: int) -> Path:
        return self.root / f"stage-{index}"

    def stage_config_path(self, index: int) -> Path:
        return self.stage_dir(index) / STAGE_CONFIG_FILE

    @property
    def baseline_dir(self) -> Path:
        return self.root / "baseline"

    @property
    def baseline_file(self) -> Path:
        return self.baseline_dir / "evaluation.json"

    @property
    def report_json(self) -> Path:
        return self.root / "report.json"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def final_model(self) -> Path:
        return self.root / "model"

    def claim(self, job: ContextExtensionJob) -> None:
        """Mark the workdir as this spec's; a SpecError if it holds a run of another spec."""
        self.root.mkdir(parents=True, exist_ok=True)
        path, digest = self.root / RUN_FILE, spec_digest(job)
        if path.exists():
            found = json.loads(path.read_text()).get("specDigest")
            if found != digest:
                raise SpecError([("--workdir", f"{self.root} holds a run of another spec ({found} != {digest}); "
                                  "use another --workdir or delete it")])
            return
        path.write_text(json.dumps({"job": job.metadata.get("name"), "specDigest": digest}, indent=2))

    def stage_state(self, index: int) -> StageState:
        """done (Succeeded result), failed (Failed result), partial (checkpoints, no result) or pending."""
        result = read_result(self.stage_dir(index))
        if result is not None:
            return "done" if result.status == "Succeeded" else "failed"
        ckpt = self.stage_dir(index) / "checkpoints"
        saved = ckpt.is_dir() and any(p.name != "OWNER" for p in ckpt.iterdir())  # OWNER: the trainer's claim
        return "partial" if saved else "pending"

    def result(self, index: int) -> StageResult | None:
        return read_result(self.stage_dir(index))


def base_model_dir(job: ContextExtensionJob) -> Path:
    """The base model's local directory (file:// or builtin://); other sources are an error locally."""
    directory = local_model_dir(job.spec.model.source)
    if directory is None:
        raise SpecError([("spec.model.source", f"{job.spec.model.source}: `ctxext run` needs a local model "
                          "(file:///path or builtin://tiny)")])
    if not (directory / "config.json").is_file():
        hint = " (create it with `ctxext init-tiny DIR`)" if job.spec.model.source.startswith("builtin://") else ""
        raise SpecError([("spec.model.source", f"{directory} holds no config.json{hint}")])
    return directory


def stage_model_path(job: ContextExtensionJob, workdir: Workdir, index: int) -> Path:
    """Where stage ``index`` (1-based) starts from."""
    return base_model_dir(job) if index == 1 else workdir.stage_dir(index - 1) / "model"


def local_stage_config(job: ContextExtensionJob, plan: Plan, workdir: Workdir, index: int, *,
                       metrics_port: int, attempt: int = 1, learning_rate: float | None = None,
                       steps: int | None = None) -> StageConfig:
    """The stage config `ctxext run` writes: CPU, output in ``stage-<i>/`` (``baseline/`` for stage 0,
    the base model's evaluation), ranks' metrics on ``metrics_port + rank`` (0 disables them)."""
    name = job.metadata.get("name") or "local"
    config = build_stage_config(job, plan, index, attempt=attempt, job_name=f"{name}-s{index}-local",
                                model_path=str(stage_model_path(job, workdir, max(index, 1))),
                                output_dir=str(workdir.stage_dir(index) if index else workdir.baseline_dir),
                                device="cpu", learning_rate=learning_rate, steps=steps)
    return config.model_copy(update={"metrics_port": metrics_port})


def write_stage_config(workdir: Workdir, index: int, config: StageConfig) -> Path:
    path = workdir.stage_config_path(index)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config.to_wire(), indent=2, sort_keys=True))
    return path


def world_size(plan: Plan, nproc: int | None) -> int:
    """Processes per stage: ``--nproc`` or the plan's; must be a multiple of every stage's SP degree."""
    n = nproc or max(s.world_size for s in plan.stages)
    for s in plan.stages:
        if n % s.sequence_parallel:
            raise SpecError([("--nproc", f"{n} processes cannot run stage {s.index}: its sequence-parallel "
                              f"degree {s.sequence_parallel} must divide the number of processes")])
    return n
