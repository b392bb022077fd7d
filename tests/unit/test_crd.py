"""The committed CRD and the chart's copy are exactly what the models generate; the schema is structural."""

from pathlib import Path

import yaml

from ctxext.api.crd import crd, crd_yaml

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "crds" / "ctxext.dev_contextextensionjobs.yaml"
CHART_COPY = ROOT / "charts" / "ctxext" / "crds" / "ctxext.dev_contextextensionjobs.yaml"


def test_committed_crd_has_not_drifted():
    assert COMMITTED.read_text() == crd_yaml(), "run: ctxext crd > crds/ctxext.dev_contextextensionjobs.yaml"


def test_chart_copy_is_identical():
    assert CHART_COPY.read_text() == COMMITTED.read_text(), "copy crds/ into charts/ctxext/crds/"


def _walk(node, path="openAPIV3Schema"):
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from _walk(child, f"{path}.{name}")
    if "items" in node:
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def test_every_field_is_described_and_typed():
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        if path == "openAPIV3Schema.metadata":  # the API server allows only name/generateName here
            continue
        assert node.get("description"), f"{path} has no description"
        assert node.get("type") or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        assert "$ref" not in node and "anyOf" not in node and "title" not in node, path


def test_printer_columns_and_names():
    c = crd()
    version = c["spec"]["versions"][0]
    assert [col["name"] for col in version["additionalPrinterColumns"] if "priority" not in col] == [
        "Phase", "Stage", "SeqLen", "Theta", "Loss", "PPL", "Age"]
    assert version["subresources"] == {"status": {}}
    assert c["spec"]["names"]["shortNames"] == ["cej"] and c["spec"]["scope"] == "Namespaced"


def test_curriculum_is_explained_with_cel_rules_and_defaults():
    spec = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    cur = spec["properties"]["curriculum"]
    assert "theta" in cur["description"].lower()
    assert cur["properties"]["thetaRule"]["enum"] == ["scaling-law", "ntk", "fixed"]
    assert cur["properties"]["thetaRule"]["default"] == "scaling-law"
    assert cur["default"] == {} and cur["properties"]["stages"]["maxItems"] == 16
    rules = [v["rule"] for v in spec["x-kubernetes-validations"]]
    assert any("targetContextLength >" in r for r in rules)
    assert any("oldSelf" in v["rule"] for v in cur["x-kubernetes-validations"])
    assert yaml.safe_load(crd_yaml()) == crd()
