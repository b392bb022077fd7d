"""What a TrainJob says about itself, reduced to :class:`ObservedJob` (the PyTorchJob states). Pure.

Kubeflow Trainer v2.3.0 writes three condition types on a TrainJob: ``Suspended`` (reason
``Suspended``, or ``Resumed`` with status False), ``Complete`` and ``Failed`` (copied from its JobSet;
reason ``DeadlineExceeded`` after ``activeDeadlineSeconds``), and ``jobsStatus[]``: per replicated job
the number of its child Jobs that are active, ready, succeeded, failed or suspended (the torch runtime
has one replicated job, ``node``, with one Job holding every node's pod). There is no Running
condition; it is read from ``jobsStatus`` instead:

=====================================================  ===========
TrainJob                                                state
=====================================================  ===========
``Complete`` True                                       Succeeded
``Failed`` True                                         Failed
``Suspended`` True                                      Suspended
a ``jobsStatus`` entry with ``ready`` > 0 (all pods     Running
running or done)
any other ``jobsStatus`` entry, or ``Suspended`` False  Created
nothing yet                                             Pending
=====================================================  ===========

>>> tj = {"metadata": {"name": "j-s1-a1", "labels": {"ctxext.dev/stage": "1", "ctxext.dev/attempt": "1"}},
...       "spec": {"suspend": False},
...       "status": {"jobsStatus": [{"name": "node", "active": 1, "ready": 1, "succeeded": 0, "failed": 0,
...                                  "suspended": 0}]}}
>>> observe(tj).state
'Running'
>>> tj["status"]["conditions"] = [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
...     "message": "TrainJob exceeded its active deadline", "lastTransitionTime": "2026-01-02T03:04:05Z"}]
>>> o = observe(tj); o.state, o.message, o.finished_at.isoformat()
('Failed', 'TrainJob exceeded its active deadline', '2026-01-02T03:04:05+00:00')
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ctxext.controller import observe as ptj_observe
from ctxext.controller.observe import ObservedJob, parse_time

#: Condition types, in the order they win when several are True, and the state each means.
CONDITION_STATES = (("Complete", "Succeeded"), ("Failed", "Failed"), ("Suspended", "Suspended"))


def _count(entry: dict[str, Any], key: str) -> int:
    try:
        return int(entry.get(key) or 0)
    except (TypeError, ValueError):
        return 0


def observe(obj: dict[str, Any]) -> ObservedJob:
    """Reduce a TrainJob (a dict as the API returns it) to an :class:`ObservedJob`.

    Name, stage, attempt, learning rate, owner, result key and the waiting clock (creation, then each
    Suspended transition) are read as for a PyTorchJob: the metadata is the same.
    """
    base = ptj_observe.observe(obj)
    status = obj.get("status") or {}
    conditions = status.get("conditions") or []
    true = [c for c in conditions if c.get("status") == "True"]
    state, message, finished = "Pending", None, None
    for kind, meaning in CONDITION_STATES:
        found = [c for c in true if c.get("type") == kind]
        if found:
            state, message = meaning, found[-1].get("message")
            if meaning in ptj_observe.TERMINAL:
                finished = parse_time(found[-1].get("lastTransitionTime"))
            break
    else:
        jobs = [j for j in status.get("jobsStatus") or [] if isinstance(j, dict)]
        if any(_count(j, "ready") > 0 for j in jobs):
            state = "Running"
        elif jobs or any(c.get("type") == "Suspended" for c in conditions):
            state = "Created"
    return dataclasses.replace(base, state=state, message=message, finished_at=finished,
                               suspended=bool((obj.get("spec") or {}).get("suspend")))
