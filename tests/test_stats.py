"""The verdict rule (hf_genssl/stats.py) on cases whose answers are known or computed by hand."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from hf_genssl.stats import Comparison, compare_paired, holm, is_borderline, judge, sample_sd

T_975_DF2 = 4.302652729911275  # the 97.5% quantile of Student's t with 2 degrees of freedom (tables)


def two_sided_p_df2(t: float) -> float:
    """Student's t with 2 degrees of freedom has the closed-form CDF 1/2 + t / (2 sqrt(2 + t^2))."""
    return 1 - abs(t) / math.sqrt(2 + t * t)


def test_a_clear_win_is_held_with_the_hand_computed_t_p_and_interval():
    better = {0: 0.80, 1: 0.91, 2: 0.69}
    worse = {0: 0.70, 1: 0.80, 2: 0.60}  # differences 0.10, 0.11, 0.09: mean 0.10, sample SD 0.01
    comparison = compare_paired(better, worse, higher_is_better=True)
    assert comparison.seeds == (0, 1, 2)
    assert comparison.effect == pytest.approx(0.10)
    assert comparison.sd == pytest.approx(0.01)  # ddof = 1 (the population SD would be 0.00816)
    t = 0.10 / (0.01 / math.sqrt(3))
    assert comparison.t == pytest.approx(t)
    assert comparison.p == pytest.approx(two_sided_p_df2(t))
    half_width = T_975_DF2 * 0.01 / math.sqrt(3)
    assert (comparison.ci_low, comparison.ci_high) == pytest.approx((0.10 - half_width, 0.10 + half_width))
    [judged] = judge([comparison])
    assert judged.verdict == "held" and judged.p_holm == pytest.approx(comparison.p)


def test_the_paired_test_agrees_with_scipy_and_pairs_by_seed_not_by_order():
    from scipy import stats

    better = {2: 0.5, 0: 0.9, 1: 0.4, 3: 0.7}
    worse = {0: 0.85, 1: 0.38, 2: 0.41, 3: 0.66}
    comparison = compare_paired(better, worse, higher_is_better=True)
    reference = stats.ttest_rel([better[s] for s in range(4)], [worse[s] for s in range(4)])
    assert comparison.t == pytest.approx(reference.statistic)
    assert comparison.p == pytest.approx(reference.pvalue)


def test_a_tie_is_inconclusive():
    comparison = compare_paired({0: 1.1, 1: 0.9, 2: 1.0}, {0: 1.0, 1: 1.0, 2: 1.0}, higher_is_better=True)
    assert comparison.effect == pytest.approx(0.0, abs=1e-12) and comparison.p == pytest.approx(1.0)
    assert judge([comparison])[0].verdict == "inconclusive"


def test_a_reversal_is_not_held_and_lower_is_better_flips_the_sign():
    # perplexity, lower is better: the claimed "better" cell is higher in every seed, by 10 +- 1
    better = {0: 110.0, 1: 121.0, 2: 99.0}
    worse = {0: 100.0, 1: 110.0, 2: 90.0}
    comparison = compare_paired(better, worse, higher_is_better=False)
    assert comparison.effect == pytest.approx(-10.0) and comparison.ci_high < 0
    assert judge([comparison])[0].verdict == "not held"
    assert judge([compare_paired(worse, better, higher_is_better=False)])[0].verdict == "held"


def test_a_large_gap_with_an_inconsistent_sign_is_not_held():
    """The old rule (gap > sum of population SDs) called this held; the pairing shows one seed going the other way."""
    comparison = compare_paired({0: 0.90, 1: 0.88, 2: 0.70}, {0: 0.70, 1: 0.68, 2: 0.75}, higher_is_better=True)
    assert comparison.effect > 0 and judge([comparison])[0].verdict == "inconclusive"


def test_identical_differences_have_no_spread_and_are_decided_by_their_sign():
    comparison = compare_paired({0: 2.0, 1: 3.0}, {0: 1.0, 1: 2.0}, higher_is_better=True)
    assert comparison.t == math.inf and comparison.p == 0.0 and judge([comparison])[0].verdict == "held"
    same = compare_paired({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0}, higher_is_better=True)
    assert same.p == 1.0 and judge([same])[0].verdict == "inconclusive"


def test_holm_on_a_hand_computed_example():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == []


def test_the_correction_can_take_a_verdict_away():
    """p = 0.02 is held alone, not among four claims (Holm p 0.06)."""
    clear = compare_paired({0: 0.80, 1: 0.91, 2: 0.69}, {0: 0.70, 1: 0.80, 2: 0.60}, higher_is_better=True)
    target_t = 0.10 / (0.01 / math.sqrt(3))
    assert two_sided_p_df2(target_t) < 0.05 / 4  # the clear win survives four comparisons...
    borderline = compare_paired({0: 0.80, 1: 0.925, 2: 0.675}, {0: 0.70, 1: 0.80, 2: 0.60}, higher_is_better=True)
    assert 0.0125 < borderline.p < 0.05  # ...this one (differences 0.100, 0.125, 0.075) only alone
    assert judge([borderline])[0].verdict == "held"
    ties = [compare_paired({0: 1.1, 1: 0.9, 2: 1.0}, {0: 1.0, 1: 1.0, 2: 1.0}, True)] * 2
    judged = judge([borderline, clear, *ties])
    assert [c.verdict for c in judged] == ["inconclusive", "held", "inconclusive", "inconclusive"]
    assert judged[0].p_holm == pytest.approx(max(3 * borderline.p, 4 * clear.p))


def test_a_cell_missing_a_seed_is_pending_not_judged():
    missing = compare_paired({0: 0.9, 1: 0.9, 2: 0.9}, {0: 0.1, 1: 0.1}, higher_is_better=True)
    assert missing.pending and missing.verdict == "pending" and "seed(s) 2 in one cell only" in missing.reason
    short = compare_paired({0: 0.9, 1: 0.8}, {0: 0.1, 1: 0.2}, higher_is_better=True, expected_seeds=3)
    assert short.pending and "a verdict needs 3" in short.reason
    one = compare_paired({0: 0.9}, {0: 0.1}, higher_is_better=True)
    assert one.pending and "needs 2" in one.reason
    # pending claims count in the family (as p = 1) and keep their verdict
    clear = compare_paired({0: 0.80, 1: 0.91, 2: 0.69}, {0: 0.70, 1: 0.80, 2: 0.60}, higher_is_better=True)
    judged = judge([missing, clear])
    assert judged[0].verdict == "pending" and judged[0].p_holm is None
    assert judged[1].p_holm == pytest.approx(2 * clear.p)


def test_sample_sd_uses_n_minus_1():
    assert sample_sd([1.0, 2.0, 3.0]) == pytest.approx(1.0)  # population SD: 0.816
    assert sample_sd([5.0]) == 0.0


def test_describe_names_the_test_p_value_interval_and_seeds():
    [judged] = judge([compare_paired({0: 0.80, 1: 0.91, 2: 0.69}, {0: 0.70, 1: 0.80, 2: 0.60}, True)])
    text = judged.describe()
    assert "effect +0.100 [95% CI +0.075, +0.125]" in text and "paired t-test t(2) = 17.32" in text
    assert "p = 0.003" in text and "Holm p = 0.003" in text and "seeds 0, 1, 2" in text


def test_borderline_is_uncorrected_p_below_the_threshold_and_corrected_p_not_below_alpha():
    close = Comparison("a", "b", (0, 1, 2), effect=0.02, ci_low=-0.01, ci_high=0.05, sd=0.01, t=2.6, p=0.12,
                       p_holm=0.36, verdict="inconclusive")
    assert is_borderline(close, p_below=0.2)
    assert not is_borderline(replace(close, p=0.2), p_below=0.2)  # the threshold itself is not below it
    assert not is_borderline(replace(close, p=0.3, p_holm=0.9), p_below=0.2)  # far: stays inconclusive
    assert not is_borderline(replace(close, p=0.01, p_holm=0.049), p_below=0.2)  # decided on the first look
    assert is_borderline(replace(close, p=0.01, p_holm=0.05), p_below=0.2)  # corrected p = alpha is not < alpha
    assert is_borderline(replace(close, effect=-0.02, p=0.1, p_holm=0.3), p_below=0.2)  # either direction
    assert not is_borderline(Comparison("a", "b", (0,), reason="pending"), p_below=0.2)  # nothing tested yet
