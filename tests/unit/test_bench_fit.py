"""The growth-exponent fit of bench/trainer_step.py (``_harness.fit_power_law``) and its summary.

Pure: nothing is trained or timed here.
"""

from __future__ import annotations

import math

import pytest

from tests.unit.helpers import load_bench

harness = load_bench("_harness")


@pytest.mark.parametrize("b", [0.0, 0.5, 1.0, 1.37, 2.0])
def test_fit_recovers_exact_power_laws(b):
    xs = [1024, 4096, 16384]
    a, got = harness.fit_power_law(xs, [7.5 * x**b for x in xs])
    assert got == pytest.approx(b, abs=1e-9)
    assert a == pytest.approx(7.5, rel=1e-9)


def test_fit_is_least_squares_on_log_log_not_endpoints():
    # Unevenly spaced x (log2 x = 0, 1, 3) with log2 y = 0, 2, 3: the least-squares slope is
    # Σ(dx·dy)/Σdx² = (39/9)/(42/9) = 13/14, the endpoint slope 1, the first pair's 2.
    a, b = harness.fit_power_law([1.0, 2.0, 8.0], [1.0, 4.0, 8.0])
    assert b == pytest.approx(13 / 14)
    assert a == pytest.approx(2 ** (3 / 7))  # log2 a = mean log2 y − b·mean log2 x = 5/3 − (13/14)(4/3)


def test_fit_two_points_is_the_slope():
    _, b = harness.fit_power_law([1000, 10000], [50.0, 500.0 * math.sqrt(10)])
    assert b == pytest.approx(1.5)


@pytest.mark.parametrize(("xs", "ys"), [([1, 2], [1.0]), ([1, 2], [0.0, 1.0]), ([-1, 2], [1.0, 1.0]),
                                        ([4, 4], [1.0, 2.0]), ([4], [1.0])])
def test_fit_rejects_bad_input(xs, ys):
    with pytest.raises(ValueError):
        harness.fit_power_law(xs, ys)


def test_summary_ratios_and_exponents_per_side_and_mode():
    step = load_bench("trainer_step")

    def cell(side, n, ckpt, growth, wall=1.0, status="ok"):
        return {"side": side, "seqLen": n, "checkpointing": ckpt, "status": status, "wallSeconds": wall,
                "cpuSeconds": wall, "peakMiB": 400.0 + growth, "growthMiB": growth}

    lengths = [1024, 4096, 16384]
    cells = [cell("ctxext", n, "off", 0.01 * n, wall=2.0) for n in lengths]
    cells += [cell("plain", n, "off", 1e-4 * n**1.5) for n in lengths]
    cells += [cell("ctxext", n, "on", 5.0 * n**0.5) for n in lengths[:2]]
    cells += [cell("ctxext", 16384, "on", 1.0, status="timeout")]
    rows, fits = step.summarize_cells(cells)
    by = {(f["side"], f["checkpointing"]): f for f in fits}
    assert by[("ctxext", "off")]["b"] == 1.0
    assert by[("plain", "off")]["b"] == 1.5
    assert by[("ctxext", "on")]["b"] == 0.5 and by[("ctxext", "on")]["lengths"] == [1024, 4096]
    assert by[("plain", "on")]["b"] is None  # no completed plain cell with checkpointing
    off = {r["seqLen"]: r for r in rows if r["checkpointing"] == "off"}
    assert off[4096]["ratio"] == 2.0
    on16 = next(r for r in rows if r["checkpointing"] == "on" and r["seqLen"] == 16384)
    assert on16["ratio"] is None and on16["ctxextWallSeconds"] is None
