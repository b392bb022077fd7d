"""Gates that could never be judged are refused at admission by the API server (CEL in the generated CRD), in
the same plain words as `ctxext validate` (#26 item 4). Gate lengths need the curriculum plan, so they are
refused by `ctxext validate` and the operator's InvalidSpec (tests/unit/test_decide.py), not here."""

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from ctxext.api.base import GROUP, PLURAL, VERSION
from tests.unit.helpers import minimal

pytestmark = pytest.mark.apiserver
NS = "gate-admission"


@pytest.fixture(scope="module")
def api(k8s_api):
    config.load_kube_config(config_file=k8s_api)
    return client.CustomObjectsApi()


def create(api, name, evaluation):
    obj = minimal(evaluation=evaluation)
    obj["metadata"]["name"] = name
    return api.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, obj, field_validation="Strict")


@pytest.mark.parametrize(("evaluation", "words"), [
    ({"enabled": False, "gates": [{"metric": "passkeyAccuracy", "min": 0.9}]},
     "spec.evaluation.enabled: Invalid value: gates are set but evaluation is disabled, so no stage "
     "could ever pass them: enable evaluation or remove the gates"),
    ({"tasks": ["perplexity"], "gates": [{"metric": "passkeyAccuracy", "min": 0.9}]},
     "every gated metric needs its task in evaluation.tasks (passkeyAccuracy: passkey, needleAccuracy: needle, "),
    ({"tasks": ["passkey"], "gates": [{"metric": "perplexity", "max": 10}]}, "perplexity: perplexity"),
    ({"tasks": ["perplexity"], "gates": [{"metric": "effectiveLength"}]},
     "retrievalAccuracy and effectiveLength: any retrieval task"),
    ({"gates": [{"metric": "needleAccuracy", "min": 0.5}]}, "needleAccuracy: needle"),  # default tasks
])
def test_an_unjudgeable_gate_is_refused_at_admission(api, evaluation, words):
    with pytest.raises(ApiException) as err:
        create(api, "refused", evaluation)
    assert err.value.status == 422 and words in err.value.body, err.value.body


def test_judgeable_gates_are_admitted(api):
    created = create(api, "admitted", {"tasks": ["needle", "perplexity"], "gates": [
        {"metric": "needleAccuracy", "min": 0.5}, {"metric": "effectiveLength"},
        {"metric": "perplexity", "maxIncrease": 0.1}, {"metric": "retrievalAccuracy", "min": 0.5}]})
    assert created["spec"]["evaluation"]["enabled"] is True
    api.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "admitted")
    created = create(api, "no-gates", {"enabled": False})  # evaluation off and no gates: fine
    api.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "no-gates")
