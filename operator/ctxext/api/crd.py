"""Generate the CustomResourceDefinition from the pydantic models (one source of truth).

``ctxext crd`` prints :func:`crd_yaml`; the committed ``crds/ctxext.dev_contextextensionjobs.yaml``
and the chart's copy must equal it (a test checks). Pydantic's JSON schema is turned into a
Kubernetes *structural* OpenAPI v3 schema: ``$ref`` inlined, ``Optional[X]`` → ``X``, enums typed,
``int | str`` → ``x-kubernetes-int-or-string``, draft-2020 ``exclusiveMinimum: n`` →
``minimum: n, exclusiveMinimum: true``, and object defaults reduced to ``{}`` so that the API
server fills nested defaults itself.
"""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import GenerateJsonSchema

from ctxext.api.base import GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION
from ctxext.api.job import ContextExtensionJobSpec, ContextExtensionJobStatus
from ctxext.yaml_output import dump_yaml

_KEEP = {"description", "type", "format", "enum", "pattern", "minimum", "maximum", "minLength",
         "maxLength", "minItems", "maxItems", "maxProperties", "default", "required"}
_PRIMITIVE = {"integer", "number", "string", "boolean"}
_RULES = "x-kubernetes-validations"


class SchemaError(ValueError):
    pass


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        target = defs[node["$ref"].split("/")[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        rules = [*target.get(_RULES, []), *node.get(_RULES, [])]  # the field's and its type's rules
        if rules:
            merged[_RULES] = rules
        return merged
    return node


def _structural(node: dict[str, Any], defs: dict[str, Any], path: str) -> dict[str, Any]:
    node = _resolve(node, defs)
    variants = node.get("anyOf")
    if variants is not None:
        real = [_resolve(v, defs) for v in variants if v.get("type") != "null"]
        types = {v.get("type") for v in real}
        outer = {k: v for k, v in node.items() if k != "anyOf"}
        if outer.get("default", "x") is None:
            outer.pop("default")
        if len(real) == 1:
            return _structural({**real[0], **outer}, defs, path)
        if types == {"integer", "string"}:
            merged = {k: v for k, v in outer.items() if k in _KEEP or k.startswith("x-kubernetes")}
            merged["x-kubernetes-int-or-string"] = True
            return merged
        raise SchemaError(f"{path}: unsupported union {types}")

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes") or key in _KEEP:
            out[key] = value
    if "exclusiveMinimum" in node:
        out["minimum"], out["exclusiveMinimum"] = node["exclusiveMinimum"], True
    if "exclusiveMaximum" in node:
        out["maximum"], out["exclusiveMaximum"] = node["exclusiveMaximum"], True
    if "enum" in node and "type" not in node:
        out["type"] = "string"
    if "const" in node:
        out["type"], out["enum"] = "string", [node["const"]]
    kind = out.get("type")
    if kind == "object" or "properties" in node:
        out["type"] = "object"
        if "properties" in node:
            out["properties"] = {
                name: _structural(child, defs, f"{path}.{name}") for name, child in node["properties"].items()
            }
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and "properties" not in node:
            extra = _resolve(extra, defs)
            if "description" not in extra and "description" in out:
                extra = {**extra, "description": f"A value of: {out['description']}"}
            out["additionalProperties"] = _structural(extra, defs, f"{path}[*]")
        if isinstance(out.get("default"), dict) and "properties" in node:
            out["default"] = {}
        if "properties" not in node and not isinstance(extra, dict):
            out["x-kubernetes-preserve-unknown-fields"] = True
    elif kind == "array":
        items = _resolve(node["items"], defs)
        if "description" not in items and "description" in out:
            items = {**items, "description": f"One entry of: {out['description']}"}
        out["items"] = _structural(items, defs, f"{path}[]")
    elif kind not in _PRIMITIVE and not out.get("x-kubernetes-int-or-string"):
        raise SchemaError(f"{path}: cannot express {node!r}")
    if "description" not in out:
        raise SchemaError(f"{path}: every field needs a description (write a docstring)")
    out["description"] = " ".join(out["description"].split())
    return out


class _FactoryDefaults(GenerateJsonSchema):
    """Also publish ``default_factory`` values as defaults, so the API server fills them in."""

    def default_schema(self, schema: Any) -> Any:
        if "default_factory" in schema and not schema.get("default_factory_takes_data"):
            schema = {**schema, "default": schema["default_factory"]()}
            schema.pop("default_factory")
        return super().default_schema(schema)


def openapi_schema(model: type, description: str | None = None) -> dict[str, Any]:
    """The structural schema of one pydantic model."""
    raw = model.model_json_schema(  # type: ignore[attr-defined]
        by_alias=True, mode="validation", schema_generator=_FactoryDefaults)
    defs = raw.pop("$defs", {})
    if description:
        raw["description"] = description
    return _structural(raw, defs, model.__name__)


def _column(name: str, path: str, kind: str, description: str, priority: int = 0) -> dict[str, Any]:
    col: dict[str, Any] = {"name": name, "type": kind, "jsonPath": path, "description": description}
    if priority:
        col["priority"] = priority
    return col


PRINTER_COLUMNS = [
    _column("Phase", ".status.phase", "string", "Pending, Running, Queued, Suspended, Succeeded or Failed"),
    _column("Stage", ".status.stage", "string", "current stage / number of stages"),
    _column("SeqLen", ".status.seqLen", "integer", "sequence length of the current stage"),
    _column("Theta", ".status.ropeTheta", "number", "RoPE theta of the current stage"),
    _column("Step", ".status.progress.step", "integer", "last optimizer step of the running stage", 1),
    _column("Loss", ".status.loss", "number", "latest training loss"),
    _column("PPL", ".status.perplexity", "number", "latest training perplexity"),
    _column("EffLen", ".status.effectiveLength", "integer",
            "effective context length measured by the latest evaluated stage", 1),
    _column("Target", ".spec.targetContextLength", "integer", "target context length", 1),
    _column("Backend", ".status.backend", "string", "Kubeflow API running the stages: PyTorchJob or TrainJob", 1),
    _column("Age", ".metadata.creationTimestamp", "date", "time since creation"),
]


#: The job's name starts every PyTorchJob, pod and Service name made from it, and those must be
#: DNS-1035 labels (a letter first): ``8b-llama`` would make ``8b-llama-s1-a1``, which never runs.
NAME_RULE = "self.metadata.name.matches('^[a-z]')"
NAME_MESSAGE = ("metadata.name must start with a letter (a-z): the training pods are named after the job, "
                "and Kubernetes requires those names to start with a letter")


def crd() -> dict[str, Any]:
    """The ContextExtensionJob CRD as a dict."""
    spec = openapi_schema(ContextExtensionJobSpec)
    status = openapi_schema(ContextExtensionJobStatus, "Observed state, maintained by the operator.")
    root = {
        "type": "object",
        "description": "ContextExtensionJob extends an LLM's context window by RoPE theta scaling, "
        "fine-tuning through a curriculum of ever longer sequences, one Kubeflow PyTorchJob per stage.",
        "required": ["spec"],
        _RULES: [{"rule": NAME_RULE, "message": NAME_MESSAGE, "fieldPath": ".metadata.name"}],
        "properties": {
            "apiVersion": {"type": "string", "description": "ctxext.dev/v1alpha1"},
            "kind": {"type": "string", "description": "ContextExtensionJob"},
            "metadata": {"type": "object", "properties": {
                "name": {"type": "string", "maxLength": 63, "description": "Job name (at most 63 "
                         "characters: it is a label value on every PyTorchJob; longer PyTorchJob names "
                         "are shortened with a hash, see ctxext.naming)."}}},
            "spec": spec,
            "status": status,
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "ctxext"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": KIND, "listKind": f"{KIND}List", "plural": PLURAL, "singular": SINGULAR,
                      "shortNames": SHORT_NAMES, "categories": ["ctxext", "ml"]},
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": root},
                "subresources": {"status": {}},
                "additionalPrinterColumns": PRINTER_COLUMNS,
            }],
        },
    }


def crd_yaml() -> str:
    """The CRD as YAML, exactly as committed under crds/."""
    header = "# Generated by `ctxext crd` from ctxext.api; do not edit by hand.\n"
    return header + dump_yaml(crd(), width=100)
