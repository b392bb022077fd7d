"""Fuzzing the manifest path: any mutation of a valid manifest is either planned or refused with a
SpecError naming a field — never another exception (which the CLI would turn into exit 1)."""

import copy
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctxext.errors import SpecError
from ctxext.manifest import job_from_object
from ctxext.planner import plan_curriculum
from tests.unit.helpers import example, minimal

BASES = [minimal(), example("llama3-8b-1m.yaml"), example("tiny-cpu.yaml")]

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=300)
    | st.sampled_from(["", "stage", "original", "fixed", "ntk", "1e309", "-0", "\u202e\U0001f600", "a" * 5000]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


@st.composite
def mutated(draw):
    obj = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(obj) if p]
        path = draw(st.sampled_from(paths))
        parent = obj
        for part in path[:-1]:
            parent = parent[part]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(values)
    return obj


COUNTS = {"tried": 0, "refused": 0}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_manifests_are_planned_or_refused_by_field(obj):
    COUNTS["tried"] += 1
    try:
        plan = plan_curriculum(job_from_object(obj).spec)
    except SpecError as exc:
        COUNTS["refused"] += 1
        assert exc.problems and all(isinstance(p, str) and m for p, m in exc.problems)
        return
    assert plan.stages and all(math.isfinite(s.rope_theta) and s.rope_theta > 0 for s in plan.stages)
    assert plan.stages[-1].seq_len == plan.target_context_length
