"""Small pure parts of the controller: PyTorchJob observation, conditions, config, local launch."""

from __future__ import annotations

import json
import sys

import pytest

from ctxext.config import OperatorConfig
from ctxext.controller.builder import build_pytorchjob
from ctxext.controller.local_launch import replica_processes, resolve_command
from ctxext.controller.model import Conditions, checkpoint_step
from ctxext.controller.observe import observe
from ctxext.errors import SpecError
from ctxext.manifest import job_from_object
from ctxext.planner import plan_curriculum
from tests.unit.helpers import minimal


def ptj(*conds, suspend=False):
    return {"metadata": {"name": "j-s2-a3", "labels": {"ctxext.dev/stage": "2", "ctxext.dev/attempt": "3"},
                         "annotations": {"ctxext.dev/learning-rate": "5e-05"}},
            "spec": {"runPolicy": {"suspend": suspend}},
            "status": {"conditions": [{"type": t, "status": s, "message": t.lower(),
                                       "lastTransitionTime": "2026-01-01T00:00:00Z"} for t, s in conds]}}


@pytest.mark.parametrize("conds, state", [
    ((), "Pending"),
    ((("Created", "True"),), "Created"),
    ((("Created", "True"), ("Running", "True")), "Running"),
    ((("Created", "True"), ("Running", "False"), ("Restarting", "True")), "Restarting"),
    ((("Created", "True"), ("Running", "True"), ("Suspended", "True")), "Suspended"),
    ((("Created", "True"), ("Running", "False"), ("Succeeded", "True")), "Succeeded"),
    ((("Created", "True"), ("Running", "True"), ("Failed", "True")), "Failed"),
])
def test_observe_reduces_conditions_to_one_state(conds, state):
    job = observe(ptj(*conds, suspend=True))
    assert (job.name, job.stage, job.attempt, job.state) == ("j-s2-a3", 2, 3, state)
    assert job.suspended and job.learning_rate == 5e-05
    assert (job.finished_at is not None) == (state in ("Succeeded", "Failed"))


def test_conditions_keep_transition_time_while_status_stays():
    conds = Conditions(None, now="t1", generation=4)
    assert conds.set("Ready", False, "InProgress", "stage 1/2")
    later = Conditions(conds.to_list(), now="t2", generation=4)
    assert not later.set("Ready", False, "InProgress", "stage 2/2")
    assert later.get("Ready")["lastTransitionTime"] == "t1" and later.get("Ready")["message"] == "stage 2/2"
    assert later.set("Ready", True, "Succeeded", "done") and later.get("Ready")["lastTransitionTime"] == "t2"
    assert checkpoint_step({"checkpoint": "/x/checkpoints/step-40/"}) == 40 and checkpoint_step(None) is None


def test_config_from_env_and_bad_values_name_the_variable():
    cfg = OperatorConfig.from_env({"CTXEXT_NAMESPACES": "a,b c", "CTXEXT_POST_EVENTS": "0",
                                   "CTXEXT_RESYNC_SECONDS": "2.5", "CTXEXT_TRAINER_COMMAND": "python -m x"})
    assert cfg.namespaces == ["a", "b", "c"] and cfg.post_events is False and cfg.resync_seconds == 2.5
    assert cfg.trainer_command == ["python", "-m", "x"]
    with pytest.raises(SpecError) as err:
        OperatorConfig.from_env({"CTXEXT_METRICS_PORT": "http"})
    assert err.value.field == "CTXEXT_METRICS_PORT"


def test_local_launch_maps_volumes_and_sets_kubeflow_env(tmp_path):
    obj = minimal(resources={"gpusPerNode": 0, "processesPerNode": 2},
                  curriculum={"stages": [{"seqLen": 65536, "nodes": 2}]},
                  data={"source": "pvc://corpus/books"}, checkpoint={"claimName": "ckpt"})
    job = job_from_object(obj)
    body = build_pytorchjob(job, plan_curriculum(job.spec), 1)
    procs = replica_processes(body, tmp_path, 29500)
    assert [p.replica for p in procs] == ["Master", "Worker-0"]
    assert procs[0].argv == [sys.executable, "-m", "ctxext_trainer.launch", "--module", "ctxext_trainer"]
    env = procs[1].env
    assert (env["PET_NNODES"], env["PET_NODE_RANK"], env["PET_NPROC_PER_NODE"], env["RANK"]) == ("2", "1", "2", "1")
    assert env["MASTER_ADDR"] == "127.0.0.1" and env["PET_MASTER_PORT"] == "29500"
    assert env["WORLD_SIZE"] == "4" and env["PYTHONUNBUFFERED"] == "1"  # envvar.go: replicas × nprocPerNode
    cfg = json.loads(env["CTXEXT_STAGE_CONFIG"])
    assert cfg["outputDir"] == f"{tmp_path}/ckpt/default/t/stage-1"
    assert cfg["modelPath"] == f"{tmp_path}/models/models/llama"
    assert cfg["data"]["source"] == f"file://{tmp_path}/data/corpus/books"
    assert set(procs[0].mkdirs) == {tmp_path / "ckpt", tmp_path / "models/models", tmp_path / "data/corpus"}


def test_resolve_command_prefers_this_environment():
    assert resolve_command(["python", "-m", "m"]) == [sys.executable, "-m", "m"]
    assert resolve_command([]) == [sys.executable, "-m", "ctxext_trainer"]
