"""The generated CRD on a real API server: examples admitted, invalid manifests rejected by name."""

import copy
import json

import pytest
from kubernetes import client, config

from ctxext.api.base import GROUP, PLURAL, VERSION
from tests.unit.helpers import example, minimal, with_path

pytestmark = pytest.mark.apiserver
NS = "team-a"


@pytest.fixture(scope="module")
def api(k8s_api):
    config.load_kube_config(config_file=k8s_api)
    return client.CustomObjectsApi()


def create(api, obj):
    return api.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, obj, field_validation="Strict")


def delete(api, name):
    api.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)


@pytest.mark.parametrize("name", ["llama3-8b-1m.yaml", "tiny-cpu.yaml"])
def test_examples_are_admitted_with_defaults(api, name):
    obj = example(name)
    obj["metadata"]["name"] = f"ex-{name.split('.')[0]}"
    created = create(api, obj)
    try:
        spec = created["spec"]
        assert spec["failurePolicy"]["maxRetries"] >= 0 and spec["suspend"] is False
        assert spec["curriculum"]["growthFactor"] == 4
        assert spec["evaluation"]["depths"]
    finally:
        delete(api, obj["metadata"]["name"])


INVALID = [
    (with_path(minimal(), "spec.targetContextLength", 4096), "targetContextLength must be greater"),
    (minimal(targetContextLength=65536, curriculum={"stages": [{"seqLen": 65536}, {"seqLen": 32768}]}),
     "strictly increasing"),
    (minimal(curriculum={"stages": [{"seqLen": 32768}]}), "last curriculum stage"),
    (minimal(curriculum={"stages": [{"seqLen": 4096}, {"seqLen": 65536}]}), "first curriculum stage"),
    (minimal(parallelism={"sequenceParallel": 3}), "sequence-parallel degree must divide"),
    (minimal(curriculum={"thetaRule": "fixed"}), "thetaRule fixed needs"),
    (with_path(minimal(), "spec.model.ropeTheta", 0), "spec.model.ropeTheta"),
    (with_path(minimal(), "spec.model.headDim", 127), "headDim must be even"),
    (with_path(minimal(), "spec.model.bogus", 1), 'unknown field "spec.model.bogus"'),
    (with_path(minimal(), "spec.targetContextLength", "big"), "spec.targetContextLength"),
    (with_path(minimal(), "spec.model.source", "ftp://x"), "spec.model.source"),
    (minimal(evaluation={"gates": [{"metric": "perplexity"}]}), "at least one of min, max, maxIncrease"),
    (minimal(evaluation={"gates": [{"metric": "effectiveLength", "maxIncrease": 0.1}]}), "not maxIncrease"),
    (minimal(evaluation={"gates": [{"metric": "passkeyAccuracy", "min": 80}]}), "between 0 and 1"),
    (minimal(evaluation={"gates": [{"metric": "retrievalAccuracy", "max": -0.5}]}), "between 0 and 1"),
    (with_path(minimal(), "spec.model", {"source": "s3://bucket/m/", "originalContextLength": 8192}),
     "model.ropeTheta is required"),
    (with_path(minimal(), "metadata.name", "x" * 64), "metadata.name"),
]


@pytest.mark.parametrize("obj, words", INVALID)
def test_invalid_manifests_are_rejected_naming_the_field(api, obj, words):
    obj = copy.deepcopy(obj)
    obj["metadata"].setdefault("name", "bad")
    with pytest.raises(client.ApiException) as err:
        create(api, obj)
    assert err.value.status in (400, 422), err.value.body  # 400: strict decoding (unknown field)
    assert words in json.loads(err.value.body)["message"]


def test_model_and_curriculum_are_immutable(api):
    obj = minimal()
    obj["metadata"]["name"] = "immutable"
    create(api, obj)
    try:
        patch = {"spec": {"targetContextLength": 131072}}
        with pytest.raises(client.ApiException) as err:
            api.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "immutable", patch)
        assert "cannot change once the job exists" in json.loads(err.value.body)["message"]
        ok = api.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "immutable", {"spec": {"suspend": True}})
        assert ok["spec"]["suspend"] is True
    finally:
        delete(api, "immutable")


def test_status_subresource_and_explain_schema(api, k8s_api):
    obj = minimal()
    obj["metadata"]["name"] = "status"
    create(api, obj)
    try:
        body = {"status": {"phase": "Running", "stage": "1/2", "seqLen": 32768, "ropeTheta": 2e6}}
        got = api.patch_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, "status", body)
        assert got["status"]["stage"] == "1/2"
    finally:
        delete(api, "status")
    with client.ApiClient() as raw:  # what `kubectl explain` reads
        resp = raw.rest_client.request("GET", f"{raw.configuration.host}/openapi/v3/apis/{GROUP}/{VERSION}")
        resp.read()
        doc = json.loads(resp.data)
    schemas = doc["components"]["schemas"]
    cej = next(v for k, v in schemas.items() if k.endswith("ContextExtensionJob"))
    assert "theta" in json.dumps(cej).lower()


def _python_rejects(obj) -> bool:
    from ctxext.errors import SpecError
    from ctxext.manifest import job_from_object

    try:
        job_from_object(obj)
    except SpecError:
        return True
    return False


def test_python_rules_and_cel_rules_agree(api):
    """ctxext validate and the API server accept and reject the same manifests."""
    from tests.unit.test_manifest_errors import BAD

    cases = [o for o, _ in INVALID] + [o for o, _, _ in BAD] + [example("llama3-8b-1m.yaml"), minimal()]
    for i, obj in enumerate(cases):
        obj = copy.deepcopy(obj)
        if len(obj["metadata"].get("name", "")) <= 63:  # keep the one case about an over-long name
            obj["metadata"]["name"] = f"parity-{i}"
        try:
            create(api, obj)
            server_rejects = False
            delete(api, obj["metadata"]["name"])
        except client.ApiException as err:
            assert err.status in (400, 422), err.body
            server_rejects = True
        assert server_rejects == _python_rejects(obj), f"case {i} disagrees: {json.dumps(obj['spec'])[:300]}"


def test_a_name_starting_with_a_digit_is_refused_in_plain_words(api):
    """#27 item 10: `8b-llama` would make the PyTorchJob `8b-llama-s1-a1`, whose pods can never be named."""
    obj = minimal()
    obj["metadata"]["name"] = "8b-llama"
    with pytest.raises(client.ApiException) as err:
        create(api, obj)
    assert err.value.status == 422
    assert "metadata.name must start with a letter (a-z): the training pods are named after the job" in \
        json.loads(err.value.body)["message"]
    obj["metadata"]["name"] = "llama-8b"
    create(api, obj)
    delete(api, "llama-8b")
