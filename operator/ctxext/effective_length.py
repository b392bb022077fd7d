"""Effective context length: the longest length up to which retrieval keeps working. Pure; no torch.

A single-needle passkey overclaims: Gradient's 1M-token Llama-3 passes single-needle NIAH to 1M, yet
RULER (Hsieh et al. 2024) puts its effective length at 16K. RULER averages the scores of several
tasks at each length and calls the longest length whose average stays above a threshold (0.85,
about Llama-2-7B's score at 4K) the *effective length*. Here:

* ``retrievalAccuracy[L]`` = mean accuracy at length ``L`` over the retrieval tasks that ran there
  (passkey, needle, multiKeyNiah, multiValueNiah, variableTracking; a task skipped at ``L`` because
  its prompt does not fit does not count);
* ``effectiveLength`` = the longest evaluated ``L`` such that ``retrievalAccuracy`` is at or above
  the threshold at ``L`` *and at every shorter evaluated length* (0 when the shortest already fails);
* ``effectiveLengthByTask`` = the same per task.

Worked example, threshold 0.85, passkey 1.0 / 1.0 / 0.94 and multiKeyNiah 0.9 / 0.6 / 0.1 at
128 / 512 / 1024: retrievalAccuracy = 0.95 / 0.8 / 0.52, so the effective length is 128, although
passkey alone would say 1024.

>>> ev = {"passkeyAccuracy": {"128": 1.0, "512": 1.0, "1024": 0.94},
...       "multiKeyNiahAccuracy": {"128": 0.9, "512": 0.6, "1024": 0.1}}
>>> out = effective_length_summary(ev, threshold=0.85)
>>> out["retrievalAccuracy"], out["effectiveLength"], out["effectiveLengthByTask"]
({'128': 0.95, '512': 0.8, '1024': 0.52}, 128, {'passkey': 1024, 'multiKeyNiah': 128})
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DEFAULT_THRESHOLD = 0.85
RETRIEVAL_METRICS = {"passkey": "passkeyAccuracy", "needle": "needleAccuracy", "multiKeyNiah": "multiKeyNiahAccuracy",
                     "multiValueNiah": "multiValueNiahAccuracy", "variableTracking": "variableTrackingAccuracy"}


def _by_length(values: Any) -> dict[int, float]:
    if not isinstance(values, Mapping):
        return {}
    out: dict[int, float] = {}
    for k, v in values.items():
        try:
            out[int(k)] = float(v)
        except (TypeError, ValueError):
            continue
    return out


def effective_length(scores: Mapping[int, float], threshold: float) -> int:
    """Longest length whose score, and that of every shorter length, is at least ``threshold``.

    >>> effective_length({128: 1.0, 512: 0.9, 1024: 0.86, 2048: 0.2}, 0.85)
    1024
    >>> effective_length({128: 0.5, 512: 1.0}, 0.85), effective_length({}, 0.85)
    (0, 0)
    """
    best = 0
    for length in sorted(scores):
        if scores[length] < threshold:
            break
        best = length
    return best


def effective_length_summary(evaluation: Mapping[str, Any], *, threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
    """``retrievalAccuracy``, ``effectiveLength``, ``effectiveLengthByTask`` and the threshold used, for an
    evaluation in the stage-result format; ``{}`` when no retrieval task ran."""
    per_task = {task: _by_length(evaluation.get(metric)) for task, metric in RETRIEVAL_METRICS.items()}
    per_task = {task: scores for task, scores in per_task.items() if scores}
    if not per_task:
        return {}
    lengths = sorted({n for scores in per_task.values() for n in scores})
    mean = {n: sum(s[n] for s in per_task.values() if n in s) / sum(1 for s in per_task.values() if n in s)
            for n in lengths}
    return {
        "retrievalAccuracy": {str(n): round(v, 6) for n, v in mean.items()},
        "effectiveLength": effective_length(mean, threshold),
        "effectiveLengthByTask": {task: effective_length(scores, threshold) for task, scores in per_task.items()},
        "effectiveLengthThreshold": threshold,
    }
