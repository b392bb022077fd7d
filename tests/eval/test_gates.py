"""Stage gates on hand-made evaluations: pass/fail and messages that quote the numbers."""

from __future__ import annotations

import sys

from ctxext.api.spec import Gate
from ctxext.gates import GateOutcome, evaluate_gates, failed_summary

EVAL = {"passkeyAccuracy": {"128": 1.0, "512": 0.62}, "perplexity": {"128": 3.4, "512": 2.9}}
BASE = {"perplexity": {"128": 3.1, "512": 3.0}}


def run(*gates: Gate, evaluation=EVAL, baseline=BASE):
    return evaluate_gates(list(gates), evaluation, baseline=baseline, stage_seq_len=512, original_length=128)


def test_min_fails_and_quotes_numbers():
    (out,) = run(Gate(metric="passkeyAccuracy", at_length="stage", min=0.9))
    assert out == GateOutcome("passkeyAccuracy", 512, 0.62, False, "passkeyAccuracy at 512 = 0.62 < min 0.9")


def test_min_passes_at_original_length():
    (out,) = run(Gate(metric="passkeyAccuracy", at_length="original", min=0.9))
    assert out.passed and out.at_length == 128 and out.message == "passkeyAccuracy at 128 = 1 >= min 0.9"


def test_max_increase_fails_with_percent_and_base_value():
    (out,) = run(Gate(metric="perplexity", at_length="original", max_increase=0.05))
    assert not out.passed and out.value == 3.4
    assert out.message == "perplexity at 128 = 3.4 is +9.7% over the base model's 3.1 (maxIncrease 5%)"


def test_max_increase_passes_when_better_than_base():
    (out,) = run(Gate(metric="perplexity", at_length=512, max_increase=0.05))
    assert out.passed and "-3.3% under the base model's 3" in out.message


def test_max_and_min_together_every_bound_must_hold():
    (out,) = run(Gate(metric="perplexity", at_length=512, min=1.0, max=2.5))
    assert not out.passed and out.message == "perplexity at 512 = 2.9 > max 2.5"
    (ok,) = run(Gate(metric="perplexity", at_length=512, min=1.0, max=3.0))
    assert ok.passed and ok.message == "perplexity at 512 = 2.9 >= min 1; perplexity at 512 = 2.9 <= max 3"


def test_missing_metric_and_missing_length_fail_as_not_measured():
    missing, wrong_length = run(Gate(metric="needleAccuracy", min=0.5), Gate(metric="passkeyAccuracy", at_length=256,
                                                                             min=0.5))
    assert not missing.passed and missing.value is None
    assert missing.message == "needleAccuracy was not measured (the evaluation has: passkeyAccuracy, perplexity)"
    assert wrong_length.message == "passkeyAccuracy was not measured at 256 (measured at: 128, 512)"


def test_max_increase_without_baseline_fails_clearly():
    (none,) = run(Gate(metric="perplexity", at_length="original", max_increase=0.05), baseline=None)
    assert not none.passed
    assert none.message == ("perplexity at 128 = 3.4: maxIncrease 5% needs the base model's perplexity at 128, "
                            "but there is no baseline evaluation")
    (partial,) = run(Gate(metric="perplexity", at_length="original", max_increase=0.05),
                     baseline={"perplexity": {"512": 3.0}})
    assert "but the baseline's perplexity was not measured at 128 (measured at: 512)" in partial.message


def test_non_finite_value_fails():
    (out,) = run(Gate(metric="perplexity", at_length=128, max=10), evaluation={"perplexity": {"128": float("nan")}})
    assert not out.passed and "not finite" in out.message


def test_failed_summary_and_to_dict():
    outs = run(Gate(metric="passkeyAccuracy", min=0.9), Gate(metric="perplexity", at_length="original",
                                                              max_increase=0.05),
               Gate(metric="passkeyAccuracy", at_length="original", min=0.5))
    assert failed_summary(outs) == ("passkeyAccuracy at 512 = 0.62 < min 0.9; perplexity at 128 = 3.4 is +9.7% over "
                                    "the base model's 3.1 (maxIncrease 5%)")
    assert failed_summary(outs[2:]) == ""
    assert outs[0].to_dict() == {"metric": "passkeyAccuracy", "atLength": 512, "value": 0.62, "passed": False,
                                 "message": "passkeyAccuracy at 512 = 0.62 < min 0.9"}


def test_gates_module_does_not_import_torch():
    import subprocess

    code = "import sys, ctxext.gates, ctxext.cli.eval_cmds; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


EFFECTIVE = {"effectiveLength": 512, "effectiveLengthThreshold": 0.85,
             "retrievalAccuracy": {"128": 1.0, "512": 0.9, "1024": 0.4}}


def test_effective_length_without_bounds_must_reach_at_length():
    (stage,) = run(Gate(metric="effectiveLength"), evaluation=EFFECTIVE)  # atLength 'stage' = 512
    assert stage.passed and stage.value == 512 and stage.message == "effectiveLength = 512 >= 512"
    (longer,) = evaluate_gates([Gate(metric="effectiveLength")], EFFECTIVE, baseline=None, stage_seq_len=1024,
                               original_length=128)
    assert not longer.passed
    assert longer.message == "effectiveLength = 512 < 1024 (atLength; threshold 0.85)"


def test_effective_length_min_max_in_tokens():
    low, high, both = run(Gate(metric="effectiveLength", min=1024), Gate(metric="effectiveLength", max=256),
                          Gate(metric="effectiveLength", min=256, max=512), evaluation=EFFECTIVE)
    assert not low.passed and low.message == "effectiveLength = 512 < 1024 (bound; threshold 0.85)"
    assert not high.passed and high.message == "effectiveLength = 512 > 256 (bound; threshold 0.85)"
    assert both.passed and both.message == "effectiveLength = 512 >= 256; effectiveLength = 512 <= 512"


def test_effective_length_zero_and_missing():
    (zero,) = run(Gate(metric="effectiveLength", min=128), evaluation={**EFFECTIVE, "effectiveLength": 0})
    assert not zero.passed and zero.value == 0.0
    (missing,) = run(Gate(metric="effectiveLength"))
    assert not missing.passed and missing.value is None
    assert missing.message == "effectiveLength was not measured (no retrieval task ran)"


def test_retrieval_accuracy_gates_per_length_like_any_task():
    (out,) = run(Gate(metric="retrievalAccuracy", at_length=1024, min=0.85), evaluation=EFFECTIVE)
    assert not out.passed and out.message == "retrievalAccuracy at 1024 = 0.4 < min 0.85"
