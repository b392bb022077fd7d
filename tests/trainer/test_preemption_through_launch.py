"""Preemption as a pod sees it (issue 25 item 2): SIGTERM reaches only PID 1, the torchrun agent
``python -m ctxext_trainer.launch``, which forwards it to its workers and SIGKILLs them after
``TORCH_ELASTIC_SHUTDOWN_TIMEOUT`` (30 s when unset). The command and that variable come from the
operator's PyTorchJob builder; the stage's step 2 is made to last 40 s past the SIGTERM (the
``CTXEXT_SLOW_STEP`` hook), like a 1M-token micro-batch. The checkpoint of step 2 must be written,
the pod must exit with the preemption code, and the resumed run must equal a straight run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ctxext.controller.builder import build_pytorchjob
from ctxext.manifest import job_from_object
from ctxext.planner import plan_curriculum
from ctxext.results import read_result
from ctxext.stage_config import ENV_VAR
from ctxext_trainer import exit_codes
from tests.unit.helpers import example

from .conftest import free_port, stage_config, train_log, trainer_env

GRACE_SECONDS = 90
SLOW_SECONDS = 40


def pod_command_and_shutdown_env() -> tuple[list[str], dict[str, str]]:
    """The trainer container's command and torchrun shutdown variable, as the builder writes them."""
    obj = example("tiny-cpu.yaml")
    obj["spec"].setdefault("checkpoint", {})["terminationGracePeriodSeconds"] = GRACE_SECONDS
    job = job_from_object(obj)
    body = build_pytorchjob(job, plan_curriculum(job.spec), 1)
    pod = body["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == GRACE_SECONDS
    container = pod["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if e["name"].startswith("TORCH_ELASTIC")}
    command = [sys.executable if part == "python" else part for part in container["command"]]
    return command, env


def start_pod(config: dict[str, Any], nproc: int = 2, **extra: str) -> subprocess.Popen[str]:
    """The pod's process: the builder's command, the stage config in its env var, Kubeflow's PET_* vars
    (``nproc`` workers; also used by ``bench/gpu_check_preemption.py``)."""
    command, shutdown_env = pod_command_and_shutdown_env()
    env = trainer_env(**shutdown_env, **extra)
    env.update({ENV_VAR: json.dumps(config), "PET_NNODES": "1", "PET_NPROC_PER_NODE": str(nproc), "PET_NODE_RANK": "0",
                "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(free_port())})
    return subprocess.Popen(command, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    output, _ = proc.communicate(timeout=400)
    return proc.returncode, output


@pytest.mark.distributed
def test_sigterm_to_the_torchrun_agent_checkpoints_a_step_longer_than_30s(tiny_model: Path, corpus: Path,
                                                                           tmp_path: Path) -> None:
    common: dict[str, Any] = dict(zero_stage=2, steps=4, checkpoint_interval=100, seq_len=64,
                                  lr_schedule="cosine", warmup_steps=1)
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    rc, output = finish(start_pod(stage_config(tiny_model, corpus, straight, **common)))
    assert rc == exit_codes.OK, output[-4000:]

    pod = start_pod(stage_config(tiny_model, corpus, cut, **common), CTXEXT_SLOW_STEP="2@1",
                    CTXEXT_SLOW_STEP_SECONDS=str(SLOW_SECONDS))
    deadline = time.monotonic() + 300
    while not train_log(cut) and pod.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [r["step"] for r in train_log(cut)] == [1], "step 1 never finished"
    os.kill(pod.pid, signal.SIGTERM)  # what the kubelet does: PID 1 only
    signalled = time.monotonic()
    rc, output = finish(pod)
    waited = time.monotonic() - signalled
    assert rc == exit_codes.PREEMPTED, output[-4000:]
    assert waited > SLOW_SECONDS > 30  # the workers outlived torchrun's default shutdown timeout
    result = read_result(cut)
    assert result is not None and result.reason_code == "Preempted" and result.steps_done == 2, output[-4000:]
    assert result.reason == "preempted after step 2; checkpoint step-2 saved"
    assert (cut / "checkpoints" / "step-2" / "MANIFEST.json").is_file()

    rc, output = finish(start_pod(stage_config(tiny_model, corpus, cut, attempt=2, **common)))
    assert rc == exit_codes.OK, output[-4000:]
    final = read_result(cut)
    assert final is not None and final.status == "Succeeded" and final.resumed_from_step == 2
    want = {r["step"]: (r["loss"], r["gradNorm"]) for r in train_log(straight)}
    got = {r["step"]: (r["loss"], r["gradNorm"]) for r in train_log(cut)}
    assert sorted(got) == [1, 2, 3, 4] and got == want  # exact: the resume redoes nothing, skips nothing
