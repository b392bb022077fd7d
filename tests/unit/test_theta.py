"""The theta rules: published values, the formulas, and their error paths."""

import itertools
import math

import pytest

from ctxext.theta import (
    MAX_ROPE_THETA,
    RopeTypeError,
    ThetaError,
    inverse_frequencies,
    ntk_theta,
    rope_parameters,
    scaling_law_theta,
    stage_rope_parameters,
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


LLAMA32_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def test_stage_rope_parameters_keep_the_base_type_and_change_only_theta():
    assert stage_rope_parameters(LLAMA32_ROPE, 3580165449) == {**LLAMA32_ROPE, "rope_theta": 3580165449.0}
    linear = stage_rope_parameters({"type": "linear", "factor": 4.0, "rope_theta": 1e4}, 5e4)
    assert linear == {"rope_type": "linear", "factor": 4.0, "rope_theta": 5e4}  # legacy "type" key understood
    assert stage_rope_parameters({"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}, 2e4) == \
        {"rope_type": "default", "rope_theta": 2e4, "partial_rotary_factor": 0.5}


def test_length_dependent_parameters_are_pinned_to_the_base_model():
    no_original = {k: v for k, v in LLAMA32_ROPE.items() if k != "original_max_position_embeddings"}
    out = stage_rope_parameters(no_original, 1e7, base_max_position_embeddings=8192)
    assert out["original_max_position_embeddings"] == 8192 and out["rope_theta"] == 1e7
    yarn = stage_rope_parameters({"rope_type": "yarn", "rope_theta": 1e4, "factor": None,
                                  "original_max_position_embeddings": 4096}, 1e5, base_max_position_embeddings=16384)
    assert yarn["factor"] == 4.0 and yarn["original_max_position_embeddings"] == 4096
    with pytest.raises(RopeTypeError, match="original_max_position_embeddings"):
        stage_rope_parameters(no_original, 1e7)


@pytest.mark.parametrize(("params", "message"), [
    ({"rope_type": "dynamic", "factor": 2.0}, "'dynamic' cannot be theta-scaled: dynamic NTK recomputes the base"),
    ({"rope_type": "longrope", "short_factor": [1.0], "long_factor": [2.0]}, "'longrope' cannot be theta-scaled"),
    ({"rope_type": "su"}, "'su' cannot be theta-scaled: it is not one of default, linear, llama3, yarn"),
    ({"full_attention": {"rope_type": "default"}, "sliding_attention": {"rope_type": "default"}},
     "per-layer-type RoPE parameters"),
])
def test_rope_types_theta_scaling_cannot_rebase_are_refused(params, message):
    with pytest.raises(RopeTypeError, match=message):
        stage_rope_parameters(params, 1e6)


def test_inverse_frequencies_shape_and_range():
    inv = inverse_frequencies(500000.0, 128)
    assert len(inv) == 64 and inv[0] == 1.0
    assert inv[-1] == pytest.approx(500000.0 ** (-126 / 128))
    assert all(a > b for a, b in itertools.pairwise(inv))
