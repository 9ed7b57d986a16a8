"""The verdict rule of ``genssl reproduce``, written once: a paired t-test across seeds with a Holm correction.

Why paired: seed ``k`` is shared by every cell of an experiment (same data order, same initialisation seed, same
fine-tuning seed), so the runs of two cells with the same seed are a pair, and the question is whether the
per-seed *differences* are consistently on one side of zero. Comparing two means against the sum of their spreads
(this package's first rule) ignores that pairing and has no stated error rate.

Why Holm: one ``genssl reproduce`` run judges a dozen claims; at p < 0.05 each, one of them would come out "held"
by chance about half the time. Holm's step-down correction keeps the chance of any false "held" in a run below
5% and is never less powerful than Bonferroni.

The rule, for a claim "cell A beats cell B" on a metric:

* the per-seed differences ``d_k`` are oriented so that ``d_k > 0`` favours the claim (A's value minus B's when
  higher is better, B's minus A's when lower is better);
* the test is the two-sided paired t-test on ``d`` (``t = mean(d) / (sd(d) / sqrt(n))``, ``n - 1`` degrees of
  freedom, ``sd`` the sample SD, ddof = 1); the effect is ``mean(d)`` with its 95% t interval;
* the p-values of all the claims of a run are Holm-corrected together (:func:`holm`); a claim is **held** when
  its corrected p < 0.05 and the effect is positive, **not held** when corrected p < 0.05 and the effect is
  negative (a significant reversal), **inconclusive** otherwise;
* a claim is **pending**, with no test, while either cell lacks a seed the other has, or the cells share fewer
  seeds than the run defines (a resumed run still going), or fewer than 2 (no spread to test against). Pending
  claims still count in the Holm family (as p = 1), so finishing them cannot make other verdicts easier.

With 3 seeds (2 degrees of freedom) a claim needs |t| > 4.3 to reach p < 0.05 before correction, and more after
it: few small-scale differences survive, which is the honest reading of 3 seeds, not a defect of the rule.

Borderline claims get more seeds, once (:func:`is_borderline`; the thresholds are pre-registered in ``genssl
reproduce``'s definitions, key ``borderline``): a claim judged on the run's seeds with uncorrected p below the
threshold (0.2) but Holm-corrected p >= 0.05 is *borderline*; its two cells run more seeds (5) and it is judged
again on them, in the same Holm family as the others (which keep their seeds). A claim still undecided then
stays inconclusive: there is no third look. Deciding to add seeds after looking at p is a two-stage design whose
false-"held" rate is somewhat above the nominal 5% (the second look reuses the first seeds); the rule is fixed
before the runs so that it cannot be tuned to a result.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

__all__ = ["ALPHA", "Comparison", "compare_paired", "format_p", "format_t", "holm", "is_borderline", "judge",
           "sample_sd"]

ALPHA = 0.05
"""Family-wise error rate of one run's verdicts (after the Holm correction)."""

MIN_SEEDS = 2


def sample_sd(values: Sequence[float]) -> float:
    """The sample standard deviation (ddof = 1, the ``n - 1`` denominator); 0.0 for fewer than two values."""
    return statistics.stdev(values) if len(values) >= 2 else 0.0


@dataclass(frozen=True)
class Comparison:
    """One claim "``better`` beats ``worse``", tested across the seeds the two cells share.

    ``effect`` is the mean per-seed difference oriented for the claim (> 0 favours it), ``ci_low`` / ``ci_high``
    its 95% t interval, ``sd`` the sample SD (ddof = 1) of the differences, ``t`` / ``p`` the two-sided paired
    t-test, ``p_holm`` the Holm-corrected p (set by :func:`judge`), ``verdict`` one of ``held``, ``not held``,
    ``inconclusive``, ``pending``. Pending comparisons carry ``None`` in every number and a ``reason``.
    """

    better: str
    worse: str
    seeds: tuple[int, ...]
    effect: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    sd: float | None = None
    t: float | None = None
    p: float | None = None
    p_holm: float | None = None
    verdict: str = "pending"
    reason: str = ""

    @property
    def pending(self) -> bool:
        return self.p is None

    def describe(self, digits: int = 3) -> str:
        """``effect +0.012 [95% CI -0.003, +0.027], paired t-test t(2) = 3.10, p = 0.090, Holm p = 0.540, 3 seeds``."""
        if self.pending:
            return self.reason
        return (f"effect {self.effect:+.{digits}f} [95% CI {self.ci_low:+.{digits}f}, {self.ci_high:+.{digits}f}], "
                f"paired t-test t({len(self.seeds) - 1}) = {format_t(self.t)}, {format_p(self.p, 'p')}, "
                f"{format_p(self.p_holm, 'Holm p')}, seeds {', '.join(map(str, self.seeds))}")


def format_p(p: float | None, name: str = "") -> str:
    """``0.023``, ``< 0.001`` or ``-``; with ``name``: ``p = 0.023``, ``p < 0.001``."""
    text = "-" if p is None else ("< 0.001" if p < 0.001 else f"{p:.3f}")
    if not name:
        return text
    return f"{name} {text}" if text.startswith("<") else f"{name} = {text}"


def format_t(t: float) -> str:
    return "inf" if math.isinf(t) else ("-inf" if t == -math.inf else f"{t:.2f}")


def compare_paired(better: Mapping[int, float], worse: Mapping[int, float], higher_is_better: bool,
                   expected_seeds: int | None = None, better_name: str = "better",
                   worse_name: str = "worse") -> Comparison:
    """Test "``better`` beats ``worse``" on per-seed values (``{seed: value}``) with a paired t-test.

    Returns a pending :class:`Comparison` when the seeds do not pair up (see the module docstring). ``p_holm``
    and the verdict are left for :func:`judge`, which sees every comparison of the run.
    """
    from scipy import stats

    seeds = tuple(sorted(set(better) & set(worse)))
    needed = max(MIN_SEEDS, expected_seeds or 0)
    unpaired = sorted(set(better) ^ set(worse))
    if unpaired or len(seeds) < needed:
        reason = (f"pending: seed(s) {', '.join(map(str, unpaired))} in one cell only" if unpaired else
                  f"pending: {len(seeds)} paired seed(s) so far, a verdict needs {needed}")
        return Comparison(better_name, worse_name, seeds, reason=reason)
    sign = 1.0 if higher_is_better else -1.0
    differences = [sign * (better[s] - worse[s]) for s in seeds]
    n = len(differences)
    effect, sd = statistics.mean(differences), sample_sd(differences)
    standard_error = sd / math.sqrt(n)
    quantile = float(stats.t.ppf(1 - ALPHA / 2, n - 1))
    if standard_error == 0.0:  # identical differences: no spread, the sign alone decides
        t = 0.0 if effect == 0.0 else math.copysign(math.inf, effect)
        p = 1.0 if effect == 0.0 else 0.0
    else:
        t = effect / standard_error
        p = float(2 * stats.t.sf(abs(t), n - 1))
    return Comparison(better_name, worse_name, seeds, effect=effect, ci_low=effect - quantile * standard_error,
                      ci_high=effect + quantile * standard_error, sd=sd, t=t, p=p)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order.

    Sorted ascending, the i-th smallest (from 0) is multiplied by ``m - i``; a running maximum keeps the adjusted
    values in the same order as the raw ones, and they are capped at 1.
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def judge(comparisons: Sequence[Comparison], alpha: float = ALPHA) -> list[Comparison]:
    """The verdicts of one run: Holm-correct the p-values of ``comparisons`` together (pending ones count as
    p = 1) and mark each claim held / not held / inconclusive / pending."""
    adjusted = holm([1.0 if c.pending else c.p for c in comparisons])
    judged = []
    for comparison, p_holm in zip(comparisons, adjusted, strict=True):
        if comparison.pending:
            judged.append(comparison)
            continue
        verdict = "inconclusive"
        if p_holm < alpha:
            verdict = "held" if comparison.effect > 0 else "not held"
        judged.append(replace(comparison, p_holm=p_holm, verdict=verdict))
    return judged


def is_borderline(comparison: Comparison, p_below: float, alpha: float = ALPHA) -> bool:
    """Whether a judged comparison (one of :func:`judge`'s results) is close but undecided: uncorrected
    ``p < p_below`` and Holm-corrected ``p >= alpha``. Pending comparisons are not borderline (no test yet)."""
    return not comparison.pending and comparison.p < p_below and comparison.p_holm >= alpha
