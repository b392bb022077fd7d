"""Shared pydantic base for the API: camelCase names, unknown fields rejected, CRD annotations.

Every API model derives from :class:`ApiModel`. Field names are snake_case in Python and
camelCase on the wire (``seq_len`` ↔ ``seqLen``); unknown fields are errors, as in the CRD's
structural schema. :func:`cel` attaches a CEL ``x-kubernetes-validations`` rule to a model or a
field; the CRD generator (:mod:`ctxext.api.crd`) copies it into the schema.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

GROUP = "ctxext.dev"
VERSION = "v1alpha1"
KIND = "ContextExtensionJob"
PLURAL = "contextextensionjobs"
SINGULAR = "contextextensionjob"
SHORT_NAMES = ["cej"]
API_VERSION = f"{GROUP}/{VERSION}"


class ApiModel(BaseModel):
    """Base of every spec/status model."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        validate_default=False,
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as it appears in Kubernetes: camelCase keys, unset optionals left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def cel(rule: str, message: str, *, field_path: str | None = None, reason: str | None = None) -> dict:
    """One ``x-kubernetes-validations`` entry."""
    out: dict[str, Any] = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    if reason:
        out["reason"] = reason
    return out


def k8s(**extensions: Any) -> dict[str, Any]:
    """``json_schema_extra`` carrying Kubernetes schema extensions (``x-kubernetes-*``)."""
    return {f"x-kubernetes-{k.replace('_', '-')}": v for k, v in extensions.items()}


def immutable(what: str) -> dict[str, Any]:
    """A CEL transition rule that keeps a field as it was created."""
    return k8s(validations=[cel("self == oldSelf", f"{what} cannot change once the job exists; "
                                "create a new ContextExtensionJob instead")])
