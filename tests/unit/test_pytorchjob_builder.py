"""The PyTorchJob builder (pure): replicas, container, volumes, env, scheduling, run policy."""

from __future__ import annotations

import json

import pytest

from ctxext.config import OperatorConfig
from ctxext.controller.builder import build_pytorchjob
from ctxext.controller.paths import base_model_path, stage_model_path
from ctxext.manifest import job_from_object
from ctxext.model_info import BUILTIN_DIR
from ctxext.planner import plan_curriculum
from ctxext.stage_config import ENV_VAR, load_stage_config
from tests.unit.helpers import example, minimal

ARCH = {"numLayers": 2, "hiddenSize": 256, "intermediateSize": 512, "numAttentionHeads": 8, "vocabSize": 1000}


def gpu_job(**spec):
    obj = minimal(
        resources={"gpusPerNode": 4, "gpuMemoryGiB": 80, "image": "reg/trainer:1", "cpu": "32", "memory": "200Gi",
                   "sharedMemoryGiB": 16},
        curriculum={"stages": [{"seqLen": 16384, "nodes": 1}, {"seqLen": 65536, "nodes": 3}]},
        checkpoint={"claimName": "ckpt", "mountPath": "/ckpt"},
        data={"source": "pvc://corpus/slimpajama"},
        scheduling={"queueName": "gpu-queue", "priorityClassName": "high", "nodeSelector": {"gpu": "h100"},
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "affinity": {"nodeAffinity": {}}},
        runPolicy={"cleanPodPolicy": "Running", "ttlSecondsAfterFinished": 3600, "activeDeadlineSeconds": 7200},
        env=[{"name": "NCCL_IB_HCA", "value": "mlx5"}],
        **spec)
    obj["metadata"]["namespace"] = "team-a"
    obj["spec"]["model"]["credentialsSecretRef"] = {"name": "hf-token"}
    obj["spec"]["model"]["architecture"] = ARCH
    return job_from_object(obj)


def build(job, stage=1, **kw):
    return build_pytorchjob(job, plan_curriculum(job.spec), stage, **kw)


def container(body, replica="Master"):
    return body["spec"]["pytorchReplicaSpecs"][replica]["template"]["spec"]["containers"][0]


def env_of(body, replica="Master"):
    return {e["name"]: e.get("value") for e in container(body, replica)["env"]}


def test_single_node_stage_has_only_a_master_and_string_nproc():
    body = build(gpu_job(), 1, config=OperatorConfig(trainer_service_account="ctxext-trainer"))
    assert body["metadata"]["name"] == "t-s1-a1" and body["metadata"]["namespace"] == "team-a"
    assert set(body["spec"]["pytorchReplicaSpecs"]) == {"Master"}
    assert body["spec"]["nprocPerNode"] == "4"
    c = container(body)
    assert c["name"] == "pytorch" and c["image"] == "reg/trainer:1"
    assert c["command"] == ["python", "-m", "ctxext_trainer.launch", "--module", "ctxext_trainer"]
    assert c["resources"]["limits"] == {"cpu": "32", "memory": "200Gi", "nvidia.com/gpu": "4"}
    pod = body["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert pod["serviceAccountName"] == "ctxext-trainer" and pod["securityContext"]["runAsNonRoot"] is True


def test_multi_node_stage_adds_workers_for_the_other_nodes():
    body = build(gpu_job(), 2, attempt=3)
    assert body["metadata"]["name"] == "t-s2-a3"
    assert body["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] == 1
    assert body["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 2
    labels = body["metadata"]["labels"]
    assert labels["ctxext.dev/job"] == "t" and labels["ctxext.dev/stage"] == "2"
    assert labels["ctxext.dev/attempt"] == "3" and labels["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert labels["app.kubernetes.io/managed-by"] == "ctxext-operator"


def test_volumes_model_data_checkpoint_and_shm():
    body = build(gpu_job(), 2)
    pod = body["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    assert vols["checkpoints"]["persistentVolumeClaim"] == {"claimName": "ckpt", "readOnly": False}
    assert vols["model"]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    assert vols["data"]["persistentVolumeClaim"]["claimName"] == "corpus"
    mounts = {m["name"]: m["mountPath"] for m in container(body)["volumeMounts"]}
    assert mounts == {"dshm": "/dev/shm", "checkpoints": "/ckpt", "model": "/models/models", "data": "/data/corpus"}


def test_stage_config_env_chains_stages_and_secrets_stay_references():
    job = gpu_job()
    one, two = build(job, 1), build(job, 2, learning_rate=1e-6)
    cfg1 = load_stage_config(env_of(one)[ENV_VAR])
    cfg2 = load_stage_config(env_of(two)[ENV_VAR])
    assert cfg1.model_path == "/models/models/llama" and cfg1.output_dir == "/ckpt/team-a/t/stage-1"
    assert cfg2.model_path == "/ckpt/team-a/t/stage-1/model" and cfg2.learning_rate == 1e-6
    assert cfg2.device == "cuda" and cfg2.report.kind == "kubernetes" and cfg2.report.name == "t"
    assert two["metadata"]["annotations"]["ctxext.dev/learning-rate"] == repr(1e-6)
    env = env_of(one)
    assert env["NCCL_IB_HCA"] == "mlx5" and env["OMP_NUM_THREADS"] == "8"
    assert container(one)["envFrom"] == [{"secretRef": {"name": "hf-token"}}]
    assert "hf-token" not in json.dumps(env)


def test_scheduling_and_run_policy():
    body = build(gpu_job(suspend=True))
    pod = body["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert pod["priorityClassName"] == "high" and pod["nodeSelector"] == {"gpu": "h100"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["affinity"] == {"nodeAffinity": {}}
    assert body["spec"]["runPolicy"] == {"backoffLimit": 0, "cleanPodPolicy": "Running", "suspend": True,
                                         "ttlSecondsAfterFinished": 3600, "activeDeadlineSeconds": 7200}


def test_pods_of_a_finished_attempt_never_run_on_and_a_queued_job_starts_suspended():
    """#27 items 1, 2: cleanPodPolicy None would keep a finished job's running pods (training-operator v1.9
    common/job.go deletes none under None); a Kueue-queued job is created suspended for Kueue to admit."""
    def run_policy(**spec):
        return build(job_from_object(minimal(**spec)))["spec"]["runPolicy"]

    assert run_policy(runPolicy={"cleanPodPolicy": "None"})["cleanPodPolicy"] == "Running"
    assert run_policy(runPolicy={"cleanPodPolicy": "All"})["cleanPodPolicy"] == "All"
    assert run_policy() == {"backoffLimit": 0, "cleanPodPolicy": "Running", "suspend": False}
    assert run_policy(scheduling={"queueName": "team-a"})["suspend"] is True


def test_cpu_job_uses_processes_per_node_and_no_gpus():
    job = job_from_object(example("tiny-cpu.yaml"))
    body = build(job)
    assert body["spec"]["nprocPerNode"] == "2"
    assert "resources" not in container(body)
    assert load_stage_config(env_of(body)[ENV_VAR]).device == "cpu"


@pytest.mark.parametrize("source, path", [
    ("pvc://models/llama-3-8b", "/models/models/llama-3-8b"),
    ("file:///opt/models/llama", "/opt/models/llama"),
    ("hf://meta-llama/Meta-Llama-3-8B", "meta-llama/Meta-Llama-3-8B"),
    ("builtin://tiny", str(BUILTIN_DIR / "tiny")),
    ("s3://bucket/llama/", "s3://bucket/llama/"),
])
def test_model_sources(source, path):
    job = job_from_object(minimal(model={"source": source, "ropeTheta": 500000, "headDim": 128,
                                         "originalContextLength": 8192}))
    assert base_model_path(job.spec) == path
    assert stage_model_path(job.spec, "ns", "t", 3) == "/ckpt/ns/t/stage-2/model"


def test_hf_source_mounts_the_cache_claim_offline():
    obj = minimal(model={"source": "hf://org/repo", "ropeTheta": 500000, "headDim": 128,
                         "originalContextLength": 8192})
    job = job_from_object(obj)
    body = build(job, config=OperatorConfig(hf_cache_claim="hf-cache"))
    env = env_of(body)
    assert env["HF_HUB_OFFLINE"] == "1" and env["HF_HOME"] == "/models/hf-cache"
    mounts = {m["name"]: m for m in container(body)["volumeMounts"]}
    assert mounts["hf-cache"]["readOnly"] is True


def test_builder_is_pure_and_deterministic():
    job = gpu_job()
    assert build(job, 2) == build(job, 2)



def test_pods_keep_metrics_up_for_the_final_scrape():
    env = env_of(build(gpu_job()))
    assert float(env["CTXEXT_METRICS_LINGER_SECONDS"]) >= 30  # two 15 s scrape intervals


def _grace(body, replica="Master"):
    return body["spec"]["pytorchReplicaSpecs"][replica]["template"]["spec"]["terminationGracePeriodSeconds"]


def test_grace_period_comes_from_the_step_estimate_and_grows_with_the_stage():
    job = job_from_object(example("llama3-8b-1m.yaml"))
    plan = plan_curriculum(job.spec)
    graces = [_grace(build_pytorchjob(job, plan, s.index)) for s in plan.stages]
    assert graces == [s.termination_grace_period_seconds for s in plan.stages]
    assert all(g >= 120 for g in graces) and graces[-1] > graces[0]  # 1M-token micro-batches take minutes
    assert all(s.estimated_step_seconds and s.estimated_step_seconds > 30 for s in plan.stages)
    body = build_pytorchjob(job, plan, 4)
    assert _grace(body, "Worker") == _grace(body)


def test_an_explicit_grace_period_wins():
    obj = example("llama3-8b-1m.yaml")
    obj["spec"].setdefault("checkpoint", {})["terminationGracePeriodSeconds"] = 1800
    job = job_from_object(obj)
    assert {_grace(build(job, s)) for s in (1, 2, 3, 4)} == {1800}


def test_the_torchrun_agent_gives_its_workers_the_grace_period():
    """PID 1 is torchrun: it SIGKILLs the workers TORCH_ELASTIC_SHUTDOWN_TIMEOUT (30 s unset) after SIGTERM."""
    job = job_from_object(example("llama3-8b-1m.yaml"))
    plan = plan_curriculum(job.spec)
    for s in plan.stages:
        body = build_pytorchjob(job, plan, s.index)
        for replica in body["spec"]["pytorchReplicaSpecs"]:
            timeout = int(env_of(body, replica)["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"])
            assert timeout == _grace(body, replica) - 10 and timeout > 30


def test_gpu_pods_use_expandable_segments_unless_the_job_sets_its_own_allocator():
    """#25 item 4: fragmentation from ZeRO-3's gather/release churn (bench/planner_memory.py --heap both)."""
    assert env_of(build(gpu_job()))["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    own = gpu_job()
    own.spec.env.append(type(own.spec.env[0])(name="PYTORCH_CUDA_ALLOC_CONF", value="max_split_size_mb:512"))
    assert env_of(build(own))["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:512"
    names = [e["name"] for e in container(build(own))["env"]]
    assert names.count("PYTORCH_CUDA_ALLOC_CONF") == 1
    assert "PYTORCH_CUDA_ALLOC_CONF" not in env_of(build(job_from_object(example("tiny-cpu.yaml"))))
