"""A TrainJob's pod restarted (the runtime's Job backoffLimit) inside an attempt that already ended for good
exits at once with that attempt's code, and never trains again (#22: Kubeflow's torch-distributed runtime
restarts a failed trainer up to 6 times; ctxext decides retries itself). The real ``python -m ctxext_trainer``
on a stage config built for the shipped tiny example; the model path does not exist, so a trainer that does
start fails with a different code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ctxext.manifest import job_from_object
from ctxext.planner import plan_curriculum
from ctxext.results import StageResult, write_result
from ctxext.stage_config import build_stage_config
from tests.unit.helpers import example


def stage_config(tmp_path: Path, job_name: str) -> Path:
    job = job_from_object(example("tiny-cpu.yaml"))
    config = build_stage_config(job, plan_curriculum(job.spec), 1, attempt=2, job_name=job_name,
                                model_path=str(tmp_path / "no-model"), output_dir=str(tmp_path / "out"),
                                device="cpu")
    path = tmp_path / "stage.json"
    path.write_text(config.model_dump_json(by_alias=True))
    return path


def run(config: Path, trainjob: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CTXEXT_TRAINJOB"}
    if trainjob:
        env["CTXEXT_TRAINJOB"] = trainjob
    return subprocess.run([sys.executable, "-m", "ctxext_trainer", "--stage-config", str(config)], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(("code", "exit_code"), [("NonFiniteGradients", 3), ("UnsupportedModel", 2)])
def test_a_restarted_trainjob_pod_of_an_ended_attempt_exits_with_its_code(tmp_path, code, exit_code):
    config = stage_config(tmp_path, "t-s1-a2")
    write_result(tmp_path / "out", StageResult(status="Failed", reason="stopped", reason_code=code,
                                               job_name="t-s1-a2", stage=1, attempt=2))
    before = (tmp_path / "out" / "result.json").read_text()
    done = run(config, "t-s1-a2")
    assert done.returncode == exit_code, done.stderr
    assert "attempt t-s1-a2 already ended" in done.stderr and code in done.stderr
    assert (tmp_path / "out" / "result.json").read_text() == before  # nothing rewritten, nothing trained
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["result.json"]


def test_another_attempts_result_or_a_pytorchjob_pod_runs_the_stage(tmp_path):
    config = stage_config(tmp_path, "t-s1-a2")
    write_result(tmp_path / "out", StageResult(status="Failed", reason="stopped", reason_code="NonFiniteGradients",
                                               job_name="t-s1-a1", stage=1, attempt=1))
    other = run(config, "t-s1-a2")  # attempt 1's result: attempt 2 runs (and fails: there is no model)
    assert other.returncode not in (0, 3) and "already ended" not in other.stderr
    assert json.loads((tmp_path / "out" / "result.json").read_text())["jobName"] == "t-s1-a2"
    write_result(tmp_path / "out", StageResult(status="Failed", reason="stopped", reason_code="NonFiniteGradients",
                                               job_name="t-s1-a2", stage=1, attempt=2))
    plain = run(config, None)  # not a TrainJob (a PyTorchJob, or `ctxext run`, which reuses job names): runs
    assert plain.returncode not in (0, 3) and "already ended" not in plain.stderr
