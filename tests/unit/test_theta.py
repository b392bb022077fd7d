"""The theta rules: published values, the formulas, and their error paths."""

import doctest
import itertools
import math

import pytest

from ctxext import memory, naming, planner, theta
from ctxext.theta import (
    MAX_ROPE_THETA,
    ThetaError,
    inverse_frequencies,
    ntk_theta,
    rope_parameters,
    scaling_law_theta,
    stage_theta,
)


def test_scaling_law_reproduces_gradients_1048k_checkpoint():
    # rope_theta in the config.json of gradientai/Llama-3-8B-Instruct-Gradient-1048k
    assert abs(scaling_law_theta(500000, 8192, 1048576) - 3580165449) <= 1


def test_scaling_law_matches_its_formula_and_is_identity_at_l0():
    got = scaling_law_theta(10000, 4096, 32768)
    expected = 10000 ** (math.log(32768 / (2 * math.pi)) / math.log(4096 / (2 * math.pi)))
    assert got == pytest.approx(expected, rel=1e-12)
    assert scaling_law_theta(500000, 8192, 8192) == pytest.approx(500000)


def test_ntk_reproduces_gradients_65k_stage():
    assert round(ntk_theta(500000, 128, 29)) == 15296098


def test_ntk_default_alpha_is_length_ratio():
    got = stage_theta("ntk", base_theta=500000, original_length=8192, seq_len=65536, head_dim=128)
    assert got == pytest.approx(500000 * 8 ** (128 / 126))


def test_override_wins_over_rule_and_fixed_needs_it():
    assert stage_theta("scaling-law", base_theta=5e5, original_length=8192, seq_len=65536, head_dim=128,
                       override=123.0) == 123.0
    with pytest.raises(ThetaError, match="fixed needs an explicit ropeTheta"):
        stage_theta("fixed", base_theta=5e5, original_length=8192, seq_len=65536, head_dim=128)


@pytest.mark.parametrize("call, message", [
    (lambda: scaling_law_theta(1.0, 8192, 65536), "base ropeTheta > 1"),
    (lambda: scaling_law_theta(5e5, 6, 65536), "originalContextLength > 2π"),
    (lambda: scaling_law_theta(10.0, 16, 1 << 27), "above the maximum"),
    (lambda: ntk_theta(5e5, 127, 2), "even headDim"),
    (lambda: ntk_theta(5e5, 128, 0.5), "ntkAlpha must be >= 1"),
    (lambda: ntk_theta(1e14, 128, 1e6), "above the maximum"),
    (lambda: stage_theta("ntk", base_theta=5e5, original_length=8192, seq_len=65536, head_dim=128,
                         override=float("inf")), "positive finite"),
    (lambda: stage_theta("ntk", base_theta=5e5, original_length=8192, seq_len=65536, head_dim=128,
                         override=-1.0), "positive finite"),
])
def test_bad_inputs_raise_theta_error(call, message):
    with pytest.raises(ThetaError, match=message):
        call()


def test_rope_parameters_for_transformers_5():
    assert rope_parameters(3580165449) == {"rope_type": "default", "rope_theta": 3580165449.0}
    with pytest.raises(ThetaError):
        rope_parameters(MAX_ROPE_THETA * 10)


def test_inverse_frequencies_shape_and_range():
    inv = inverse_frequencies(500000.0, 128)
    assert len(inv) == 64 and inv[0] == 1.0
    assert inv[-1] == pytest.approx(500000.0 ** (-126 / 128))
    assert all(a > b for a, b in itertools.pairwise(inv))


@pytest.mark.parametrize("module", [theta, planner, memory, naming])
def test_docstring_examples_hold(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
