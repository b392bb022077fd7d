"""Every TrainJob the TrainJob backend builds is accepted by the upstream Kubeflow Trainer v2.3.0 CRDs.

The CRDs and the built-in ``torch-distributed`` ClusterTrainingRuntime are unmodified upstream files
(github.com/kubeflow/trainer, tag v2.3.0, commit 658725bd: manifests/base/crds/ and
manifests/base/runtimes/torch_distributed.yaml) in tests/k8s/crds/kubeflow-trainer/. This module installs
them on the session's API server unless they are already served there. The API server runs no
Trainer webhook or controller: what it checks is the CRD schema (strict field validation: no unknown
or misplaced field, types, required fields) and the CRD's CEL rules (name, managedBy, immutability).
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config

from ctxext.config import OperatorConfig
from ctxext.controller.backends import get_backend
from ctxext.controller.backends.trainjob import GROUP, PLURAL, VERSION
from ctxext.decide import baseline_needed
from ctxext.errors import SpecError
from ctxext.manifest import job_from_object
from ctxext.planner import plan_curriculum
from tests.unit.helpers import EXAMPLES, example, minimal
from tests.unit.test_trainjob_builder import gpu_job

pytestmark = pytest.mark.apiserver
ROOT = Path(__file__).resolve().parents[2]
TRAINER_CRDS = ROOT / "tests" / "k8s" / "crds" / "kubeflow-trainer"
NS = "team-b"
TRAINJOB = get_backend("trainjob")


def _install(api_client: client.ApiClient) -> None:
    """Install the Trainer CRDs and the torch-distributed runtime where they are not served yet."""
    ext = client.ApiextensionsV1Api(api_client)
    custom = client.CustomObjectsApi(api_client)
    for path in sorted(TRAINER_CRDS.glob("trainer.kubeflow.org_*.yaml")):
        crd = yaml.safe_load(path.read_text())
        try:
            ext.create_custom_resource_definition(crd, _preload_content=False)
        except client.ApiException as exc:
            if exc.status != 409:  # already installed (by conftest)
                raise
        spec = crd["spec"]
        version = next(v["name"] for v in spec["versions"] if v.get("storage"))
        deadline = time.monotonic() + 60
        while True:  # Established, then listable (the first requests may get 429/404)
            try:
                got = json.loads(ext.read_custom_resource_definition(crd["metadata"]["name"],
                                                                     _preload_content=False).data)
                if any(c["type"] == "Established" and c["status"] == "True"
                       for c in (got.get("status") or {}).get("conditions") or []):
                    custom.list_cluster_custom_object(spec["group"], version, spec["names"]["plural"], limit=1)
                    break
            except client.ApiException as exc:
                if exc.status not in (404, 429, 503):
                    raise
            assert time.monotonic() < deadline, f"CRD {crd['metadata']['name']} did not become ready"
            time.sleep(0.1)
    runtime = yaml.safe_load((TRAINER_CRDS / "torch_distributed_runtime.yaml").read_text())
    try:
        custom.create_cluster_custom_object(GROUP, VERSION, "clustertrainingruntimes", runtime,
                                            field_validation="Strict")
    except client.ApiException as exc:
        if exc.status != 409:
            raise


@pytest.fixture(scope="module")
def api(k8s_api):
    config.load_kube_config(config_file=k8s_api)
    with config.new_client_from_config(config_file=k8s_api) as api_client:
        _install(api_client)
    return client.CustomObjectsApi()


def without_priority_class(obj: dict) -> dict:
    """The manifest as a TrainJob can run it: no pod priority class (see the refusal test)."""
    out = copy.deepcopy(obj)
    out["spec"]["scheduling"].pop("priorityClassName")
    return out


def jobs():
    """Every shipped example (all stages; llama3-8b-1m runs on 1, 2, 4 and 8 nodes), a 3-node job with every
    carriable setting, an hf:// job and a 63-character name, each stage (and the baseline evaluation)."""
    hf = minimal(model={"source": "hf://org/repo", "ropeTheta": 500000, "headDim": 128,
                        "originalContextLength": 8192})
    hf["metadata"]["name"] = "hf"
    long_name = minimal()
    long_name["metadata"]["name"] = "a-very-long-context-extension-job-name-that-is-63-characters-xx"
    examples = sorted(EXAMPLES.glob("*.yaml"))
    assert {p.name for p in examples} >= {"tiny-cpu.yaml", "llama3-8b-1m.yaml"}
    cases = [job_from_object(without_priority_class(example(p.name)) if p.name == "llama3-8b-1m.yaml"
                             else example(p.name)) for p in examples]
    creds = gpu_job(credentials=True)  # #22 item 2: the credentials Secret as a read-only volume
    creds.metadata["name"] = "creds"
    cases += [gpu_job(), creds, job_from_object(hf), job_from_object(long_name)]
    for job in cases:
        job.metadata["namespace"] = NS
        plan = plan_curriculum(job.spec)
        stages = [s.index for s in plan.stages]
        yield from ((job, plan, stage) for stage in ([0, *stages] if baseline_needed(job.spec) else stages))


def test_every_trainjob_built_for_the_examples_is_accepted_strictly(api):
    cfg = OperatorConfig(trainer_service_account="ctxext-trainer", hf_cache_claim="hf-cache")
    names, nodes = [], set()
    for job, plan, stage in jobs():
        body = TRAINJOB.build(job, plan, stage, attempt=2, learning_rate=1e-6, config=cfg, result_key="k" * 32)
        created = api.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, body, field_validation="Strict")
        names.append(created["metadata"]["name"])
        nodes.add(body["spec"]["trainer"]["numNodes"])
        # The server kept what we sent: nothing pruned as unknown, nothing misplaced.
        for key in ("trainer", "runtimeRef", "runtimePatches", "suspend"):
            assert created["spec"][key] == body["spec"][key], (created["metadata"]["name"], key)
        assert created["metadata"]["labels"] == body["metadata"]["labels"]
    assert len(names) == len(set(names)) >= 12
    assert nodes >= {1, 2, 3, 4, 8}
    for name in names:
        api.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)


def test_the_gpu_example_is_refused_for_its_priority_class_only():
    job = job_from_object(example("llama3-8b-1m.yaml"))
    with pytest.raises(SpecError) as err:
        TRAINJOB.build(job, plan_curriculum(job.spec), 1)
    assert [p for p, _ in err.value.problems] == ["spec.scheduling.priorityClassName"]


def test_suspend_patch_and_trainer_status_round_trip_on_the_server(api):
    job = gpu_job()
    job.metadata["namespace"] = NS
    body = TRAINJOB.build(job, plan_curriculum(job.spec), 2, attempt=1)
    api.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, body, field_validation="Strict")
    name = body["metadata"]["name"]
    try:
        assert TRAINJOB.observe(api.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)).suspended
        patched = api.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name, TRAINJOB.suspend_patch(False),
                                                     field_validation="Strict")
        assert not TRAINJOB.observe(patched).suspended and patched["spec"]["trainer"] == body["spec"]["trainer"]
        # Status as Trainer v2.3.0 writes it (its CRD requires every field below): read back as Succeeded.
        now = "2026-01-02T03:04:05Z"
        status = {"conditions": [
            {"type": "Suspended", "status": "False", "reason": "Resumed", "message": "TrainJob is resumed",
             "lastTransitionTime": now},
            {"type": "Complete", "status": "True", "reason": "AllJobsCompleted", "message": "jobset completed",
             "lastTransitionTime": now}],
            "jobsStatus": [{"name": "node", "active": 0, "ready": 0, "succeeded": 1, "failed": 0, "suspended": 0}]}
        done = api.patch_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, name, {"status": status},
                                                         field_validation="Strict")
        seen = TRAINJOB.observe(done)
        assert (seen.state, seen.stage, seen.attempt, seen.message) == ("Succeeded", 2, 1, "jobset completed")
    finally:
        api.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)


@pytest.mark.parametrize(("manifest", "stage"), [("tiny-cpu.yaml", "0"), ("tiny-cpu.yaml", "2"),
                                                 ("llama3-8b-1m.yaml", "4")])
def test_render_backend_trainjob_output_is_accepted_by_kubectl(api, k8s_api, tmp_path, manifest, stage):
    path = EXAMPLES / manifest
    if manifest == "llama3-8b-1m.yaml":
        path = tmp_path / manifest
        path.write_text(yaml.safe_dump(without_priority_class(example(manifest))))
    proc = subprocess.run([sys.executable, "-m", "ctxext.cli.main", "render", str(path), "--backend", "trainjob",
                           "--stage", stage, "--attempt", "2", "--learning-rate", "2e-5", "-n", NS],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed (scripts/setup.sh installs it)"
    # kubectl validates strictly by default and reads the YAML as YAML 1.2, as a user's `kubectl apply` would.
    applied = subprocess.run([kubectl, "--kubeconfig", k8s_api, "apply", "--dry-run=server", "-o", "json", "-f", "-"],
                             input=proc.stdout, capture_output=True, text=True, timeout=120)
    assert applied.returncode == 0, applied.stderr
    obj = json.loads(applied.stdout)
    # The server keeps every field it was given and defaults only managedBy (Trainer's own controller).
    assert obj["kind"] == "TrainJob" and obj["spec"].pop("managedBy") == "trainer.kubeflow.org/trainjob-controller"
    assert obj["spec"] == yaml.safe_load(proc.stdout)["spec"]
    if stage != "0":  # the base model's evaluation trains nothing: no learning rate to override
        assert obj["metadata"]["annotations"]["ctxext.dev/learning-rate"] == "2e-05"


def test_the_readme_runtime_is_accepted_and_a_trainjob_on_it_too(api):
    """The ClusterTrainingRuntime the README recommends (backoffLimit 0, restartPolicy Never) is a valid one."""
    text = (ROOT / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:]]
    (block,) = [b for b in blocks if "kind: ClusterTrainingRuntime" in b]
    runtime = yaml.safe_load(block)
    node = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]
    assert node["name"] == "node" and node["template"]["spec"]["backoffLimit"] == 0
    assert node["template"]["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    api.create_cluster_custom_object(GROUP, VERSION, "clustertrainingruntimes", runtime, field_validation="Strict")
    job = job_from_object(example("tiny-cpu.yaml"))
    job.metadata["namespace"] = NS
    body = TRAINJOB.build(job, plan_curriculum(job.spec), 1,
                          config=OperatorConfig(training_runtime=runtime["metadata"]["name"]))
    try:
        created = api.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, body, field_validation="Strict")
        assert created["spec"]["runtimeRef"]["name"] == "ctxext-torch"
        api.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, body["metadata"]["name"])
    finally:
        api.delete_cluster_custom_object(GROUP, VERSION, "clustertrainingruntimes", runtime["metadata"]["name"])
