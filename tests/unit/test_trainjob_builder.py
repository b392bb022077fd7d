"""The TrainJob backend (pure): the TrainJob of a stage attempt, refusals, status, suspend patch."""

from __future__ import annotations

import pytest

from ctxext.config import OperatorConfig
from ctxext.controller.backends import BACKENDS, get_backend
from ctxext.controller.backends.trainjob import RESERVED_ENV, build_trainjob
from ctxext.controller.builder import build_pytorchjob
from ctxext.errors import SpecError
from ctxext.manifest import job_from_object
from ctxext.planner import plan_curriculum
from ctxext.stage_config import ENV_VAR, load_stage_config
from tests.unit.helpers import minimal

ARCH = {"numLayers": 2, "hiddenSize": 256, "intermediateSize": 512, "numAttentionHeads": 8, "vocabSize": 1000}
TRAINJOB = get_backend("trainjob")


def gpu_job(scheduling=None, run_policy=None, credentials=False, env=(), pod=None):
    """A 2-stage GPU job (stage 2 on 3 nodes) with everything a TrainJob can carry."""
    obj = minimal(
        resources={"gpusPerNode": 4, "gpuMemoryGiB": 80, "image": "reg/trainer:1", "cpu": "32", "memory": "200Gi",
                   "sharedMemoryGiB": 16, "extraResources": {"rdma/ib": "1"}},
        curriculum={"stages": [{"seqLen": 16384, "nodes": 1}, {"seqLen": 65536, "nodes": 3}]},
        checkpoint={"claimName": "ckpt", "mountPath": "/ckpt"},
        data={"source": "pvc://corpus/slimpajama"},
        scheduling=scheduling or {"queueName": "gpu-queue", "nodeSelector": {"gpu": "h100"},
                                  "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                                  "affinity": {"nodeAffinity": {}}},
        runPolicy=run_policy or {"activeDeadlineSeconds": 7200},
        env=[{"name": "NCCL_IB_HCA", "value": "mlx5"}, *env],
        pod=pod or {"imagePullSecrets": ["regcred"], "capabilities": ["IPC_LOCK"],
                    "labels": {"team": "llm"}, "annotations": {"k8s.v1.cni.cncf.io/networks": "ib"}})
    obj["metadata"]["namespace"] = "team-a"
    obj["spec"]["model"]["architecture"] = ARCH
    if credentials:
        obj["spec"]["model"]["credentialsSecretRef"] = {"name": "hf-token"}
    return job_from_object(obj)


def both(job, stage=1, **kw):
    plan = plan_curriculum(job.spec)
    return build_pytorchjob(job, plan, stage, **kw), build_trainjob(job, plan, stage, **kw)


def node_patch(tj):
    (patch,) = tj["spec"]["runtimePatches"]
    (rjob,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert rjob["name"] == "node"
    return rjob["template"]["spec"]["template"]


def test_same_name_labels_annotations_and_queue_as_the_pytorchjob():
    ptj, tj = both(gpu_job(), 2, attempt=3, result_key="k" * 32, learning_rate=1e-5)
    assert tj["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and tj["kind"] == "TrainJob"
    assert tj["metadata"] == ptj["metadata"]
    assert tj["metadata"]["name"] == "t-s2-a3" and tj["metadata"]["namespace"] == "team-a"
    assert tj["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert tj["metadata"]["annotations"]["ctxext.dev/result-key"] == "k" * 32
    # Under a Kueue queue the attempt starts suspended, as the PyTorchJob does; an explicit value wins.
    assert tj["spec"]["suspend"] is True
    assert both(gpu_job(), 1, suspend=False)[1]["spec"]["suspend"] is False


def test_trainer_carries_image_command_nodes_procs_resources_and_env():
    ptj, tj = both(gpu_job(), 2)
    trainer = tj["spec"]["trainer"]
    master = ptj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert trainer["image"] == "reg/trainer:1" and trainer["command"] == master["command"]
    assert trainer["numNodes"] == 3 and trainer["numProcPerNode"] == 4
    assert trainer["resourcesPerNode"]["limits"] == {"cpu": "32", "memory": "200Gi", "nvidia.com/gpu": "4",
                                                     "rdma/ib": "1"}
    # the PyTorchJob's env, plus the TrainJob's own name for rank 0's status.trainerStatus writes
    assert trainer["env"] == [*master["env"], {"name": "CTXEXT_TRAINJOB", "value": tj["metadata"]["name"]}]
    assert not {e["name"] for e in trainer["env"]} & set(RESERVED_ENV)  # the torch plugin injects them
    config = load_stage_config(next(e["value"] for e in trainer["env"] if e["name"] == ENV_VAR))
    assert config.job_name == "t-s2-a1" and config.stage == 2
    assert tj["spec"]["runtimeRef"] == {"name": "torch-distributed", "kind": "ClusterTrainingRuntime",
                                        "apiGroup": "trainer.kubeflow.org"}
    assert tj["spec"]["activeDeadlineSeconds"] == 7200
    other = build_trainjob(gpu_job(), plan_curriculum(gpu_job().spec), 1,
                           config=OperatorConfig(training_runtime="ctxext-torch"))
    assert other["spec"]["runtimeRef"]["name"] == "ctxext-torch"


def test_pod_settings_go_through_one_runtime_patch_on_the_node_container():
    ptj, tj = both(gpu_job(), 2, config=OperatorConfig(trainer_service_account="ctxext-trainer"))
    pod = ptj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    patch = node_patch(tj)
    assert tj["spec"]["runtimePatches"][0]["manager"] == "ctxext.dev/operator"
    # The PyTorchJob pod's labels and annotations, plus each local rank's metrics port (a TrainJob pod cannot
    # declare container ports; the chart's PodMonitor reads these instead).
    metrics = [p for p in pod["spec"]["containers"][0]["ports"] if p["name"].startswith("metrics-")]
    ports = {f"ctxext.dev/metrics-port-{r}": str(p["containerPort"]) for r, p in enumerate(metrics)}
    assert patch["metadata"]["labels"] == pod["metadata"]["labels"] and patch["metadata"]["labels"]["team"] == "llm"
    assert patch["metadata"]["annotations"] == {**pod["metadata"]["annotations"], **ports} and len(ports) == 4
    for key in ("volumes", "securityContext", "terminationGracePeriodSeconds", "serviceAccountName",
                "imagePullSecrets", "nodeSelector", "tolerations", "affinity"):
        assert patch["spec"][key] == pod["spec"][key], key
    (container,) = patch["spec"]["containers"]
    assert container["name"] == "node"
    assert set(container) == {"name", "volumeMounts", "securityContext"}
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["IPC_LOCK"]}
    assert {m["name"] for m in container["volumeMounts"]} == {"dshm", "checkpoints", "model", "data"}


@pytest.mark.parametrize(("job", "field"), [
    (gpu_job(scheduling={"priorityClassName": "high"}), "spec.scheduling.priorityClassName"),
    (gpu_job(pod={"runtimeClassName": "nvidia"}), "spec.pod.runtimeClassName"),
    (gpu_job(env=[{"name": "PET_MASTER_PORT", "value": "1"}]), "spec.env[1].name"),
    (gpu_job(run_policy={"ttlSecondsAfterFinished": 60}), "spec.runPolicy.ttlSecondsAfterFinished"),
    (gpu_job(run_policy={"cleanPodPolicy": "All"}), "spec.runPolicy.cleanPodPolicy"),
])
def test_what_a_trainjob_cannot_carry_is_refused_naming_the_field(job, field):
    with pytest.raises(SpecError) as err:
        build_trainjob(job, plan_curriculum(job.spec), 1)
    assert [p for p, _ in err.value.problems] == [field]
    assert "TrainJob" in str(err.value)
    build_pytorchjob(job, plan_curriculum(job.spec), 1)  # the PyTorchJob carries it


def test_every_refusal_at_once_and_an_operator_setting_by_its_variable():
    job = gpu_job(scheduling={"priorityClassName": "high"}, pod={"runtimeClassName": "nvidia"}, credentials=True)
    with pytest.raises(SpecError) as err:
        build_trainjob(job, plan_curriculum(job.spec), 1, config=OperatorConfig(image_pull_policy="Always"))
    assert [p for p, _ in err.value.problems] == [
        "spec.scheduling.priorityClassName", "spec.pod.runtimeClassName", "CTXEXT_IMAGE_PULL_POLICY"]


def test_credentials_travel_as_a_read_only_secret_volume_never_as_values_or_envfrom():
    """#22 item 2: a TrainJob cannot carry envFrom, so the Secret is mounted as files that the launcher exports."""
    job = gpu_job(credentials=True)
    tj = build_trainjob(job, plan_curriculum(job.spec), 1)
    text = str(tj)
    assert "envFrom" not in text and "hf-token" in text
    patch = tj["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    pod = patch["template"]["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "ctxext-credentials")
    assert volume == {"name": "ctxext-credentials", "secret": {"secretName": "hf-token", "defaultMode": 0o440}}
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "ctxext-credentials")
    assert mount == {"name": "ctxext-credentials", "mountPath": "/var/run/secrets/ctxext/credentials",
                     "readOnly": True}
    assert {"name": "CTXEXT_CREDENTIALS_DIR", "value": "/var/run/secrets/ctxext/credentials"} in \
        tj["spec"]["trainer"]["env"]
    assert "ctxext-credentials" not in str(build_trainjob(gpu_job(), plan_curriculum(job.spec), 1))


def test_stage_zero_and_attempts_are_deterministic():
    job = gpu_job()
    plan = plan_curriculum(job.spec)
    assert build_trainjob(job, plan, 0) == build_trainjob(job, plan, 0)
    assert build_trainjob(job, plan, 0)["metadata"]["name"] == "t-s0-a1"
    assert build_trainjob(job, plan, 0)["spec"]["trainer"]["numNodes"] == 1


def test_names_leave_room_for_jobset_pod_hostnames():
    """JobSet names the trainer pods' hostnames ``<trainjob>-node-0-<index>`` (a DNS label: ≤ 63 characters)."""
    obj = minimal(curriculum={"stages": [{"seqLen": 65536, "nodes": 64}]},
                  resources={"gpusPerNode": 8, "gpuMemoryGiB": 80})
    obj["metadata"]["name"] = "a-very-long-context-extension-job-name-that-is-63-characters-xx"
    obj["spec"]["model"]["architecture"] = ARCH
    job = job_from_object(obj)
    tj = build_trainjob(job, plan_curriculum(job.spec), 1, attempt=999)
    nodes = tj["spec"]["trainer"]["numNodes"]
    assert nodes == 64
    assert len(f"{tj['metadata']['name']}-node-0-{nodes - 1}") <= 63


def condition(kind, status="True", reason="", message="", at="2026-01-02T03:04:05Z"):
    return {"type": kind, "status": status, "reason": reason, "message": message, "lastTransitionTime": at}


def jobs_status(**counts):
    return [{"name": "node", **{k: counts.get(k, 0) for k in ("active", "ready", "succeeded", "failed",
                                                                "suspended")}}]


@pytest.mark.parametrize(("status", "state"), [
    ({}, "Pending"),
    ({"jobsStatus": jobs_status(active=1)}, "Created"),
    ({"jobsStatus": jobs_status(active=1, ready=1)}, "Running"),
    ({"conditions": [condition("Suspended", reason="Suspended")], "jobsStatus": jobs_status(suspended=1)},
     "Suspended"),
    ({"conditions": [condition("Suspended", "False", "Resumed")]}, "Created"),
    ({"conditions": [condition("Suspended", "False", "Resumed"), condition("Complete", message="done")],
      "jobsStatus": jobs_status(succeeded=1, ready=1)}, "Succeeded"),
    ({"conditions": [condition("Failed", reason="DeadlineExceeded")], "jobsStatus": jobs_status(ready=1)},
     "Failed"),
])
def test_observe_reads_trainjob_conditions_and_jobs_status(status, state):
    job = gpu_job()
    tj = build_trainjob(job, plan_curriculum(job.spec), 2, attempt=2, learning_rate=2e-5, result_key="r" * 32)
    tj["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    tj["metadata"]["ownerReferences"] = [{"kind": "ContextExtensionJob", "uid": "u-1", "controller": True}]
    seen = TRAINJOB.observe({**tj, "status": status})
    assert seen.state == state and seen.terminal == (state in ("Succeeded", "Failed"))
    assert (seen.name, seen.stage, seen.attempt, seen.learning_rate) == ("t-s2-a2", 2, 2, 2e-5)
    assert seen.owner_uid == "u-1" and seen.result_key == "r" * 32 and seen.suspended is True
    if seen.terminal:
        assert seen.finished_at is not None and seen.finished_at.year == 2026
    else:
        assert seen.finished_at is None


def test_suspend_patches_and_resources_of_both_backends():
    assert TRAINJOB.suspend_patch(True) == {"spec": {"suspend": True}}
    assert BACKENDS["pytorchjob"].suspend_patch(False) == {"spec": {"runPolicy": {"suspend": False}}}
    assert TRAINJOB.resource == ("trainer.kubeflow.org", "v1alpha1", "trainjobs")
    job = gpu_job()
    assert BACKENDS["pytorchjob"].build(job, plan_curriculum(job.spec), 1) == \
        build_pytorchjob(job, plan_curriculum(job.spec), 1)
    with pytest.raises(SpecError, match="choose pytorchjob or trainjob"):
        get_backend("jobset")


def test_render_backend_trainjob_prints_the_trainjob_and_refuses_in_plain_words():
    import yaml
    from typer.testing import CliRunner

    from ctxext.cli.main import app
    from tests.unit.helpers import EXAMPLES

    runner = CliRunner()
    out = runner.invoke(app, ["render", str(EXAMPLES / "tiny-cpu.yaml"), "--backend", "trainjob", "--stage", "2",
                              "--attempt", "3", "-n", "team-a"])
    assert out.exit_code == 0, out.output
    body = yaml.safe_load(out.stdout)
    assert body["kind"] == "TrainJob" and body["metadata"]["name"] == "tiny-cpu-s2-a3"
    assert body["metadata"]["namespace"] == "team-a" and body["spec"]["trainer"]["numProcPerNode"] == 2
    # The shipped GPU example sets a priority class: one plain error naming it, exit 2, no traceback.
    out = runner.invoke(app, ["render", str(EXAMPLES / "llama3-8b-1m.yaml"), "--backend", "trainjob"])
    assert out.exit_code == 2 and "Traceback" not in out.output
    assert out.output.startswith("error: spec.scheduling.priorityClassName: a TrainJob cannot set")
    out = runner.invoke(app, ["render", str(EXAMPLES / "tiny-cpu.yaml"), "--backend", "rayjob"])
    assert out.exit_code == 2 and "--backend: unknown backend 'rayjob'; choose pytorchjob or trainjob" in out.output
