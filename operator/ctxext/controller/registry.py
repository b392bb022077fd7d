"""Per-ContextExtensionJob memory of the controller: bounded, and freed when the job is deleted. Pure.

For each CEJ (key ``namespace/name``) the controller keeps one :class:`JobState`:

* ``body`` — the newest version of the CEJ it knows (from the watch or from its own status patch's
  response), trimmed of what no pass reads (``managedFields``, ``last-applied-configuration`` and
  kopf's annotations) and stored as compact JSON: about 3 KB per job instead of ~30 KB of dicts.
* ``seen`` — what the last pass read (:class:`~ctxext.controller.changes.Seen`), to tell the events
  that need a pass from those that do not.
* ``created`` — PyTorchJobs this process created or patched and the watch has not shown yet (at
  most one entry per stage attempt, dropped as soon as the index has caught up). A pass merges them
  into what the index shows, so it never asks to create a job it just created.

Nothing else is kept per job: the owned PyTorchJobs themselves live in kopf's index (one small
:class:`Owned` per PyTorchJob, maintained by kopf from the watch and emptied when they go).

>>> reg = Registry()
>>> reg.offer("ns/a", {"metadata": {"name": "a", "resourceVersion": "7", "managedFields": [{}]}})
True
>>> reg.offer("ns/a", {"metadata": {"name": "a", "resourceVersion": "5"}})  # older: ignored
False
>>> reg.body("ns/a")
{'metadata': {'name': 'a', 'resourceVersion': '7'}}
>>> reg.forget("ns/a"); len(reg)
0
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ctxext.controller.changes import Seen
from ctxext.controller.observe import ObservedJob

#: Annotations no pass reads; some are as large as the object itself.
DROPPED_ANNOTATION_PREFIXES = ("kopf.zalando.org/", "kubectl.kubernetes.io/last-applied-configuration",
                               "ctxext.dev/last-handled-configuration")


def resource_version(body: Mapping[str, Any]) -> int | None:
    """metadata.resourceVersion as a number, None when absent or not numeric.

    The API server's versions are etcd revisions, which only grow; where one is not numeric, every
    body offered counts as newer (plain arrival order).
    """
    raw = (body.get("metadata") or {}).get("resourceVersion")
    try:
        return int(str(raw))
    except ValueError:
        return None


def trim(body: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a CEJ without ``managedFields`` and the annotations no pass reads."""
    meta = dict(body.get("metadata") or {})
    meta.pop("managedFields", None)
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                   if not k.startswith(DROPPED_ANNOTATION_PREFIXES)}
    if annotations:
        meta["annotations"] = annotations
    else:
        meta.pop("annotations", None)
    return {**{k: v for k, v in body.items() if k != "metadata"}, "metadata": meta}


@dataclass(frozen=True)
class Owned:
    """One owned PyTorchJob as kept in the index: its resourceVersion and what a pass needs of it."""

    version: int
    job: ObservedJob


#: Version of an entry recorded just before its create call: any observed version replaces it.
PENDING = -1


def merge_owned(indexed: Iterable[Owned], created: Mapping[str, Owned]) -> tuple[dict[str, ObservedJob],
                                                                                dict[str, Owned]]:
    """The owned PyTorchJobs by name (the newer of index and ``created``), and what is left of ``created``.

    >>> from ctxext.controller.observe import ObservedJob as J
    >>> old, new = Owned(3, J(name="x", stage=1, attempt=1, state="Running")), \\
    ...     Owned(9, J(name="x", stage=1, attempt=1, state="Running", suspended=True))
    >>> jobs, left = merge_owned([old], {"x": new})  # our suspend patch is newer than the index
    >>> jobs["x"].suspended, list(left)
    (True, ['x'])
    >>> jobs, left = merge_owned([new], {"x": Owned(PENDING, old.job)})  # the index caught up
    >>> jobs["x"].suspended, left
    (True, {})
    """
    newest: dict[str, Owned] = {}
    for owned in indexed:
        if owned.job.name not in newest or owned.version > newest[owned.job.name].version:
            newest[owned.job.name] = owned
    left: dict[str, Owned] = {}
    for name, mine in created.items():
        seen = newest.get(name)
        if seen is None or mine.version > seen.version:
            newest[name] = mine
            left[name] = mine
    return {name: owned.job for name, owned in newest.items()}, left


@dataclass
class JobState:
    """What the controller remembers about one ContextExtensionJob (see the module docstring)."""

    body_json: bytes | None = None
    version: int | None = None
    seen: Seen | None = None
    created: dict[str, Owned] = field(default_factory=dict)


class Registry:
    """Every :class:`JobState`, by ``namespace/name``."""

    def __init__(self) -> None:
        self._states: dict[str, JobState] = {}

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, key: object) -> bool:
        return key in self._states

    def get(self, key: str) -> JobState | None:
        return self._states.get(key)

    def state(self, key: str) -> JobState:
        return self._states.setdefault(key, JobState())

    def offer(self, key: str, body: Mapping[str, Any]) -> bool:
        """Keep ``body`` if it is newer than the one kept; True when kept."""
        state = self.state(key)
        version = resource_version(body)
        if state.version is not None and version is not None and version <= state.version:
            return False
        state.body_json = json.dumps(trim(body), separators=(",", ":")).encode()
        state.version = version
        return True

    def body(self, key: str) -> dict[str, Any] | None:
        state = self._states.get(key)
        if state is None or state.body_json is None:
            return None
        return dict(json.loads(state.body_json))

    def expected(self, key: str, name: str) -> ObservedJob | None:
        """A PyTorchJob as this process created or patched it, if the watch has not shown it since."""
        state = self._states.get(key)
        owned = state.created.get(name) if state else None
        return owned.job if owned else None

    def forget(self, key: str) -> None:
        self._states.pop(key, None)
