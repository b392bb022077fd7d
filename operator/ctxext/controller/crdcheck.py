"""Start-up check: does the API server serve the ContextExtensionJob CRD this operator was built with?

``helm upgrade`` never touches ``crds/``: after an upgrade the cluster may still serve the old schema,
and the API server would silently prune every field the old schema lacks (a new spec field a user sets
would vanish before the operator sees it). So the operator compares the served CRD with its own
(:func:`ctxext.api.crd.crd`) before it starts, and refuses to run on a mismatch, saying what to do.

>>> ours = {"spec": {"versions": [{"name": "v1alpha1", "served": True, "storage": True, "schema": {
...     "openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object", "properties": {
...         "pod": {"type": "object"}, "suspend": {"type": "boolean"}}}}}}}]}}
>>> old = {"spec": {"versions": [{"name": "v1alpha1", "served": True, "storage": True, "schema": {
...     "openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object", "properties": {
...         "suspend": {"type": "boolean"}}}}}}}]}}
>>> crd_problems(ours, ours), crd_problems(old, ours)
([], ['the served schema lacks spec.pod'])
"""

from __future__ import annotations

from typing import Any

from ctxext.api.base import GROUP, PLURAL, VERSION

CRD_NAME = f"{PLURAL}.{GROUP}"
FIX = ("apply this release's CRD (Helm does not upgrade CRDs): kubectl apply --server-side --force-conflicts "
       "-f crds/ctxext.dev_contextextensionjobs.yaml (in the chart: charts/ctxext/crds/), then restart the operator")


def _version(crd: dict[str, Any]) -> dict[str, Any] | None:
    return next((v for v in (crd.get("spec") or {}).get("versions") or [] if v.get("name") == VERSION), None)


def _paths(schema: dict[str, Any], prefix: str = "") -> set[str]:
    """Every property path of a structural schema (``spec.pod.labels``, ``status.stages[]``)."""
    out = set()
    for name, sub in (schema.get("properties") or {}).items():
        path = f"{prefix}{name}"
        out.add(path)
        out |= _paths(sub, path + ".")
        if isinstance(sub.get("items"), dict):
            out |= _paths(sub["items"], path + "[].")
    return out


def _topmost(paths: set[str]) -> list[str]:
    """Drop the paths under another one in the set: ``spec.pod`` says it all, not also ``spec.pod.labels``."""
    return sorted(p for p in paths if not any(p.startswith(q + ".") or p.startswith(q + "[].") for q in paths))


def crd_problems(served: dict[str, Any], ours: dict[str, Any], limit: int = 5) -> list[str]:
    """What differs between the served CRD and ours, in plain words ([] when they agree)."""
    mine, theirs = _version(ours), _version(served)
    if theirs is None:
        return [f"the served CRD has no version {VERSION}"]
    problems = []
    if not theirs.get("served"):
        problems.append(f"version {VERSION} is not served")
    schema = ((theirs.get("schema") or {}).get("openAPIV3Schema")) or {}
    expected = (((mine or {}).get("schema") or {}).get("openAPIV3Schema")) or {}
    lacking, extra = _topmost(_paths(expected) - _paths(schema)), _topmost(_paths(schema) - _paths(expected))
    if lacking:
        problems.append("the served schema lacks " + ", ".join(lacking[:limit])
                        + (f" and {len(lacking) - limit} more" if len(lacking) > limit else ""))
    if extra:
        problems.append("the served schema has fields this operator does not know: " + ", ".join(extra[:limit])
                        + (f" and {len(extra) - limit} more" if len(extra) > limit else ""))
    if not problems and schema != expected:
        problems.append("the served schema's validation rules differ from this operator's")
    return problems


def check_served_crd(read: Any) -> str | None:
    """Read the served CRD with ``read(name)`` (ApiextensionsV1Api's, returning a dict) and compare it with
    ours. Returns the error to stop with, or None. Other API errors are raised: a 403 (no rights to read
    CRDs, as when the operator watches a list of namespaces) means the caller cannot check."""
    from kubernetes.client import ApiException

    from ctxext.api.crd import crd

    try:
        served = read(CRD_NAME)
    except ApiException as exc:
        if exc.status == 404:
            return f"CustomResourceDefinition {CRD_NAME} is not installed: {FIX}"
        raise
    problems = crd_problems(served, crd())
    if problems:
        return f"the served CustomResourceDefinition {CRD_NAME} is not this operator's ({'; '.join(problems)}): {FIX}"
    return None
