"""The trainer's launcher reads the ``PET_*`` variables Kubeflow Trainer's torch plugin injects into a TrainJob.

The TrainJob backend sets none of them (the plugin refuses a TrainJob that does); the plugin (v2.3.0,
``pkg/runtime/framework/plugins/torch/torch.go``) sets ``PET_NNODES`` = numNodes, ``PET_NPROC_PER_NODE``
= numProcPerNode, ``PET_NODE_RANK`` from the pod's job completion index, ``PET_MASTER_ADDR`` =
``<trainjob>-node-0-0.<trainjob>`` and ``PET_MASTER_PORT`` = 29500. The container command's torchrun
(``ctxext_trainer.launch``) must take its rendezvous from exactly these.
"""

from __future__ import annotations

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
