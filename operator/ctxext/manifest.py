"""Read ContextExtensionJob manifests from files, safely, with errors that name the field.

YAML aliases are refused (a "billion laughs" manifest cannot expand), files are capped at
:data:`MAX_MANIFEST_BYTES` (the API server's own request limit is 3 MiB), and every problem —
unreadable file, broken YAML, another kind of object, unknown field, wrong type, a broken
cross-field rule — is a :class:`SpecError` whose message starts with the field path.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ctxext.api.base import API_VERSION, KIND
from ctxext.api.job import ContextExtensionJob
from ctxext.api.validation import spec_rule_violations
from ctxext.errors import SpecError, from_validation_error

MAX_MANIFEST_BYTES = 1 << 20
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_LETTER_FIRST = re.compile(r"^[a-z]")


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors/aliases."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(
                None, None, "YAML aliases (*name) are not allowed in manifests", event.start_mark)
        return super().compose_node(parent, index)


def parse_documents(text: str, source: str = "<manifest>") -> list[Any]:
    """All YAML documents in ``text`` (empty ones dropped)."""
    try:
        return [d for d in yaml.load_all(text, Loader=_NoAliasLoader) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError([("", f"{source}: invalid YAML{where}: {problem}")]) from None
    except RecursionError:
        raise SpecError([("", f"{source}: YAML nested too deeply")]) from None


def read_manifest_text(path: str | Path) -> str:
    p = Path(path)
    try:
        if p.is_dir():
            raise SpecError([("", f"{p} is a directory, not a manifest file")])
        if p.stat().st_size > MAX_MANIFEST_BYTES:
            raise SpecError([("", f"{p} is larger than {MAX_MANIFEST_BYTES // 1024} KiB; not a manifest")])
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([("", f"{p}: no such file")]) from None
    except UnicodeDecodeError:
        raise SpecError([("", f"{p} is not UTF-8 text")]) from None
    except OSError as exc:
        raise SpecError([("", f"cannot read {p}: {exc.strerror or exc}")]) from None


def drop_nulls(node: Any) -> Any:
    """Remove ``key: null`` entries, as the API server does for non-nullable fields before defaulting.

    >>> drop_nulls({"a": None, "b": {"c": None, "d": 1}, "e": [None, {"f": None}]})
    {'b': {'d': 1}, 'e': [None, {}]}
    """
    if isinstance(node, dict):
        return {k: drop_nulls(v) for k, v in node.items() if v is not None}
    if isinstance(node, list):
        return [drop_nulls(v) for v in node]
    return node


def non_finite_paths(node: Any, path: str = "") -> list[str]:
    """Field paths of NaN/infinite numbers (YAML ``.nan``/``.inf``, which JSON — and so Kubernetes —
    cannot carry); reported as such rather than as a failed bound ("less than or equal to 1e15 (got nan)").

    >>> non_finite_paths({"spec": {"a": float("nan"), "b": [1.0, float("-inf")], "c": 2}})
    ['spec.a', 'spec.b[1]']
    """
    if isinstance(node, float) and not math.isfinite(node):
        return [path]
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in non_finite_paths(v, f"{path}.{k}" if path else str(k))]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in non_finite_paths(v, f"{path}[{i}]")]
    return []


def job_name(job: ContextExtensionJob, path: str | Path) -> str:
    """The job's metadata.name, or (for ``ctxext run`` of a manifest without one) the file's stem.

    >>> job_name(ContextExtensionJob.model_construct(metadata={}), "runs/my-job.yaml")
    'my-job'
    """
    name = job.metadata.get("name")
    return name if isinstance(name, str) and name else Path(path).stem


def job_from_object(obj: Any, source: str = "<manifest>") -> ContextExtensionJob:
    """Validate one parsed object as a ContextExtensionJob (schema and cross-field rules)."""
    if not isinstance(obj, dict):
        raise SpecError([("", f"{source}: expected a Kubernetes object (a mapping), got {type(obj).__name__}")])
    kind, api_version = obj.get("kind"), obj.get("apiVersion")
    if kind != KIND or api_version != API_VERSION:
        raise SpecError([("kind", f"{source}: expected apiVersion {API_VERSION}, kind {KIND}; got "
                          f"apiVersion {api_version!r}, kind {kind!r}")])
    if nan := non_finite_paths(obj):
        raise SpecError([(p, "must be a finite number (.nan and .inf are not numbers Kubernetes accepts)")
                         for p in nan])
    try:
        # Strict, through JSON, like the API server: "65536" is not an integer, 5.0 is not an integer,
        # but enum values arrive as strings. YAML-only types (dates) are passed on as strings.
        job = ContextExtensionJob.model_validate_json(json.dumps(drop_nulls(obj), default=str), strict=True)
    except ValidationError as exc:
        raise from_validation_error(exc) from None
    except RecursionError:
        raise SpecError([("spec", "nested too deeply")]) from None
    problems = spec_rule_violations(job.spec)
    name = job.metadata.get("name")
    if not isinstance(name, str | None) or (isinstance(name, str) and not _NAME.match(name)):
        problems.insert(0, ("metadata.name", f"must be a DNS-1123 label of at most 63 characters, got {name!r:.80}"))
    elif isinstance(name, str) and not _LETTER_FIRST.match(name):  # the same words as the CRD's rule
        problems.insert(0, ("metadata.name", f"must start with a letter (a-z), got {name!r}: the training pods are "
                            "named after the job, and Kubernetes requires those names to start with a letter"))
    if problems:
        raise SpecError(problems)
    return job


def load_jobs(path: str | Path) -> list[ContextExtensionJob]:
    """Every ContextExtensionJob in a manifest file; other kinds are an error."""
    docs = parse_documents(read_manifest_text(path), str(path))
    if not docs:
        raise SpecError([("", f"{path}: no YAML document found")])
    return [job_from_object(d, f"{path} (document {i + 1})" if len(docs) > 1 else str(path))
            for i, d in enumerate(docs)]


def load_job(path: str | Path) -> ContextExtensionJob:
    """The one ContextExtensionJob in a manifest file."""
    jobs = load_jobs(path)
    if len(jobs) > 1:
        raise SpecError([("", f"{path} holds {len(jobs)} ContextExtensionJobs; give one per file")])
    return jobs[0]
