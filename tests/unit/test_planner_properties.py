"""Property tests: generated curricula are well-formed for any sound spec."""

import itertools

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ctxext.errors import SpecError
from ctxext.manifest import job_from_object
from ctxext.planner import plan_curriculum, stage_lengths
from tests.unit.helpers import minimal


@st.composite
def specs(draw):
    l0 = draw(st.sampled_from([128, 512, 2048, 4096, 8192, 32768]))
    growth = draw(st.integers(2, 16))
    target = draw(st.integers(l0 + 1, min(l0 * growth ** 6, 1 << 24)))
    rule = draw(st.sampled_from(["scaling-law", "ntk"]))
    theta0 = draw(st.sampled_from([10000.0, 500000.0, 1e6]))
    return minimal(model={"source": "pvc://m/x", "ropeTheta": theta0, "headDim": 128, "originalContextLength": l0},
                   targetContextLength=target, curriculum={"thetaRule": rule, "growthFactor": growth},
                   resources={"gpusPerNode": 8, "gpuMemoryGiB": 80})


@settings(max_examples=200, deadline=None)
@given(specs())
def test_generated_stages_increase_end_at_target_and_theta_grows(obj):
    try:
        plan = plan_curriculum(job_from_object(obj).spec)
    except SpecError as exc:  # a small L0 with a big theta0 can leave the representable range: say so
        assume("above the maximum" not in str(exc))
        raise
    lengths = [s.seq_len for s in plan.stages]
    assert lengths[-1] == obj["spec"]["targetContextLength"]
    assert lengths[0] > plan.original_context_length
    assert all(a < b for a, b in itertools.pairwise(lengths))
    thetas = [s.rope_theta for s in plan.stages]
    assert thetas[0] > plan.base_rope_theta
    assert all(a < b for a, b in itertools.pairwise(thetas))
    assert [s.index for s in plan.stages] == list(range(1, len(lengths) + 1))


@given(st.integers(16, 1 << 20), st.integers(2, 64), st.integers(1, 1 << 22))
def test_stage_lengths_shape(l0, growth, extra):
    target = l0 + extra
    lengths = stage_lengths(l0, target, growth)
    assert lengths[-1] == target and all(a < b for a, b in itertools.pairwise(lengths))
    generated = lengths[:-1]
    assert not generated or generated[0] == l0 * growth
    assert all(b == a * growth for a, b in itertools.pairwise(generated))
    assert target <= (generated[-1] if generated else l0) * growth
