"""Every PyTorchJob the builder makes is accepted by the upstream Kubeflow CRD (strict field validation)."""

from __future__ import annotations

import pytest
from kubernetes import client, config

from ctxext.config import OperatorConfig
from ctxext.controller.builder import build_pytorchjob
from ctxext.decide import baseline_needed
from ctxext.manifest import job_from_object
from ctxext.planner import plan_curriculum
from tests.unit.helpers import example, minimal
from tests.unit.test_pytorchjob_builder import gpu_job

pytestmark = pytest.mark.apiserver
NS = "team-b"
PTJ = ("kubeflow.org", "v1", NS, "pytorchjobs")


@pytest.fixture(scope="module")
def api(k8s_api):
    config.load_kube_config(config_file=k8s_api)
    return client.CustomObjectsApi()


def jobs():
    hf = minimal(model={"source": "hf://org/repo", "ropeTheta": 500000, "headDim": 128,
                        "originalContextLength": 8192})
    hf["metadata"]["name"] = "hf"
    long_name = minimal()
    long_name["metadata"]["name"] = "a-very-long-context-extension-job-name-that-is-63-characters-xx"
    cases = [job_from_object(example("tiny-cpu.yaml")), job_from_object(example("llama3-8b-1m.yaml")), gpu_job(),
             job_from_object(hf), job_from_object(long_name)]
    for job in cases:
        job.metadata["namespace"] = NS
        plan = plan_curriculum(job.spec)
        for stage in [0, *(s.index for s in plan.stages)] if baseline_needed(job.spec) else plan.stages:
            yield job, plan, stage if isinstance(stage, int) else stage.index


def test_rendered_jobs_are_accepted_by_the_kubeflow_crd(api):
    cfg = OperatorConfig(trainer_service_account="ctxext-trainer", hf_cache_claim="hf-cache")
    names = []
    for job, plan, stage in jobs():
        body = build_pytorchjob(job, plan, stage, attempt=2, learning_rate=1e-6, config=cfg)
        created = api.create_namespaced_custom_object(*PTJ, body, field_validation="Strict")
        names.append(created["metadata"]["name"])
        # The server kept what we sent (nothing pruned as unknown) and defaulted nothing away.
        assert created["spec"]["pytorchReplicaSpecs"] == body["spec"]["pytorchReplicaSpecs"]
        assert created["spec"]["nprocPerNode"] == body["spec"]["nprocPerNode"]
        assert len(created["metadata"]["name"]) <= 51
    assert len(names) == len(set(names)) >= 10
    for name in names:
        api.delete_namespaced_custom_object(*PTJ, name)
