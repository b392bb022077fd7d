"""The trainer's launcher reads the ``PET_*`` variables Kubeflow Trainer's torch plugin injects into a TrainJob.

The TrainJob backend sets none of them (the plugin refuses a TrainJob that does); the plugin (v2.3.0,
``pkg/runtime/framework/plugins/torch/torch.go``) sets ``PET_NNODES`` = numNodes, ``PET_NPROC_PER_NODE``
= numProcPerNode, ``PET_NODE_RANK`` from the pod's job completion index, ``PET_MASTER_ADDR`` =
``<trainjob>-node-0-0.<trainjob>`` and ``PET_MASTER_PORT`` = 29500. The container command's torchrun
(``ctxext_trainer.launch``) must take its rendezvous from exactly these.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ctxext.controller.backends.trainjob import RESERVED_ENV, build_trainjob
from ctxext.planner import plan_curriculum
from tests.unit.test_trainjob_builder import gpu_job


@pytest.mark.parametrize("node_rank", [0, 2])
def test_launcher_takes_nodes_procs_rank_and_master_from_the_torch_plugins_env(monkeypatch, node_rank):
    from torch.distributed.run import parse_args

    job = gpu_job()
    tj = build_trainjob(job, plan_curriculum(job.spec), 2)
    trainer, name = tj["spec"]["trainer"], tj["metadata"]["name"]
    injected = {"PET_NNODES": str(trainer["numNodes"]), "PET_NPROC_PER_NODE": str(trainer["numProcPerNode"]),
                "PET_NODE_RANK": str(node_rank), "PET_MASTER_ADDR": f"{name}-node-0-0.{name}",
                "PET_MASTER_PORT": "29500"}
    assert set(injected) == set(RESERVED_ENV)
    for key, value in injected.items():
        monkeypatch.setenv(key, value)
    command = trainer["command"]
    assert command[:3] == ["python", "-m", "ctxext_trainer.launch"]
    args = parse_args(command[3:])  # what ctxext_trainer.launch.main parses
    assert (args.nnodes, args.nproc_per_node, args.node_rank) == ("3", "4", node_rank)
    assert (args.master_addr, args.master_port) == ("t-s2-a1-node-0-0.t-s2-a1", 29500)
    assert args.module and args.training_script == "ctxext_trainer"


def test_launcher_exports_credentials_mounted_as_files_to_its_workers(tmp_path):
    """#22 item 2: a TrainJob's credentials Secret arrives as files (kubelet's layout: one file per key plus
    ``..data``); the launcher (the pod's PID 1) exports each key so that every torchrun worker has it, as
    envFrom gives a PyTorchJob's. A real ``ctxext_trainer.launch`` with 2 worker processes."""
    secret = tmp_path / "credentials"
    (secret / "..2026_12_07_14_00_00.1").mkdir(parents=True)
    (secret / "..2026_12_07_14_00_00.1" / "HF_TOKEN").write_text("hf_secret_value")
    (secret / "..data").symlink_to("..2026_12_07_14_00_00.1")
    (secret / "HF_TOKEN").symlink_to("..data/HF_TOKEN")
    out = tmp_path / "seen"
    worker = tmp_path / "show_env.py"
    worker.write_text("import os, pathlib\n"
                      f"pathlib.Path({str(out)!r} + os.environ['RANK']).write_text(os.environ.get('HF_TOKEN', ''))\n")
    env = {**os.environ, "CTXEXT_CREDENTIALS_DIR": str(secret), "PET_NNODES": "1", "PET_NPROC_PER_NODE": "2",
           "PET_NODE_RANK": "0", "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": "0", "OMP_NUM_THREADS": "1"}
    env.pop("HF_TOKEN", None)
    run = subprocess.run([sys.executable, "-m", "ctxext_trainer.launch", "--rdzv-backend", "c10d",
                          "--rdzv-endpoint", "127.0.0.1:0", str(worker)], env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert [Path(f"{out}{r}").read_text() for r in (0, 1)] == ["hf_secret_value"] * 2
    assert "HF_TOKEN" in run.stdout and "hf_secret_value" not in run.stdout + run.stderr
