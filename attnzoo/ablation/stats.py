"""Statistics for ablation tables: paired Δ with t intervals, paired t-tests, Holm, power and MDE.

The question an ablation asks is "does block X change the metric compared with the plain backbone
trained the same way?". Runs are paired by seed (same seed -> same weight-init stream, data order,
subset and augmentation for both), so everything here works on the per-seed differences
d_i = a_i - b_i (i = 1..n), using the final-epoch numbers only:

* **interval** (Student 1908; NIST/SEMATECH e-Handbook of Statistical Methods, sec. 7.3.1)::

      mean(d) ± t_{1-α/2, n-1} · sd(d) / sqrt(n),   sd with n - 1 in the denominator

* **p-value**: the two-sided paired t-test of mean(d) = 0, ``2 · P(T_{n-1} > |t|)``,
  t = mean(d) / (sd(d) / sqrt(n)).
* **Holm–Bonferroni** (Holm 1979, "A simple sequentially rejective multiple test procedure"):
  the m variants compared with one baseline form one family; with p sorted ascending,
  p_adj(i) = max_{j <= i} min(1, (m - j + 1) · p_(j)). Rejecting where p_adj < α controls the
  family-wise error rate at α, whatever the dependence between the tests (the variants share their
  baseline, so the tests are dependent).
* **power** of the two-sided paired t-test at α for a true mean difference δ, spread σ and n pairs:
  with df = n - 1, c = t_{1-α/2, df} and noncentrality λ = δ / (σ / sqrt(n)),
  power = P(T' > c) + P(T' < -c), T' noncentral t(df, λ) (``scipy.stats.nct``; no normal
  approximation, which overstates power badly at n = 3).
* **minimum detectable effect** (MDE): the δ > 0 at which that power is 80%, for the observed sd of
  the paired differences at the current n (solved with ``scipy.optimize.brentq``).
* **seeds needed**: the smallest n whose power reaches 80% for a given δ (0.3 pp in the report) at
  the observed sd.

NOTE: the sd is itself estimated from n pairs (2 degrees of freedom at n = 3), so the MDE and the
seeds needed are estimates with wide uncertainty; the report calls them "at the observed spread".
Quantiles, p-values and power come from ``scipy.stats`` (t, nct).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from scipy import optimize, stats

__all__ = [
    "t_quantile_975", "mean_std", "PairedDiff", "paired_difference", "holm", "paired_power",
    "min_detectable_effect", "seeds_needed",
]

ALPHA = 0.05
POWER = 0.80
MAX_SEEDS = 10_000  # seeds_needed gives up (returns None) beyond this


def t_quantile_975(df: int) -> float:
    """Two-sided 95% critical value t_{0.975, df} of Student's t (df >= 1), from scipy.stats.t."""
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ValueError(f"degrees of freedom must be an int >= 1, got {df!r}")
    return float(stats.t.ppf(0.975, df))


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1 in the denominator; NaN for a single value)."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("mean_std needs at least one value")
    n = len(xs)
    mean = math.fsum(xs) / n
    if n == 1:
        return mean, math.nan
    return mean, math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))


@dataclass(frozen=True)
class PairedDiff:
    """mean(a - b) over n pairs: 95% t interval [low, high], sd of the differences, two-sided paired
    t-test p-value. NaN interval, sd and p when n < 2; p = 1 (or 0) when sd = 0 and mean = 0 (or not)."""

    mean: float
    low: float
    high: float
    n: int
    sd: float = math.nan
    p: float = math.nan

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    @property
    def significant(self) -> bool | None:
        """True when the (unadjusted) 95% interval excludes 0; None when there is none (n < 2).
        The report's *significant* column uses Holm-adjusted p-values instead (:func:`holm`)."""
        if self.n < 2 or math.isnan(self.low):
            return None
        return self.low > 0 or self.high < 0


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> PairedDiff:
    """Paired-difference t interval and paired t-test for mean(a_i - b_i); ``a``, ``b`` aligned by seed."""
    if len(a) != len(b):
        raise ValueError(f"paired samples must have the same length, got {len(a)} and {len(b)}")
    if not a:
        raise ValueError("paired_difference needs at least one pair")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95, got {confidence!r}")
    d = [float(x) - float(y) for x, y in zip(a, b)]
    mean, sd = mean_std(d)
    n = len(d)
    if n < 2:
        return PairedDiff(mean, math.nan, math.nan, n)
    se = sd / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * se
    if se == 0:
        p = 1.0 if mean == 0 else 0.0
    else:
        p = float(2 * stats.t.sf(abs(mean) / se, n - 1))
    return PairedDiff(mean, mean - half, mean + half, n, sd, p)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the input order; NaN entries stay NaN and do not count
    towards the family size m."""
    idx = [i for i, p in enumerate(pvalues) if p is not None and not math.isnan(p)]
    for i in idx:
        if not 0 <= pvalues[i] <= 1:
            raise ValueError(f"p-values must lie in [0, 1], got {pvalues[i]!r} at position {i}")
    out = [math.nan] * len(pvalues)
    m = len(idx)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        out[i] = running
    return out


def _check(sd: float, n: int, alpha: float) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"a paired t-test needs n >= 2 pairs (an int), got {n!r}")
    if not sd >= 0:
        raise ValueError(f"sd must be a number >= 0, got {sd!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), e.g. 0.05, got {alpha!r}")


def paired_power(delta: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test at ``alpha`` for a true mean difference ``delta``, sd of
    the differences ``sd`` and ``n`` pairs (noncentral t, scipy.stats.nct)."""
    _check(sd, n, alpha)
    df = n - 1
    crit = float(stats.t.ppf(1 - alpha / 2, df))
    if sd == 0:
        return 1.0 if delta != 0 else alpha
    ncp = abs(delta) / (sd / math.sqrt(n))
    upper = float(stats.nct.sf(crit, df, ncp))
    if not math.isfinite(upper):
        upper = 1.0 - float(stats.nct.cdf(crit, df, ncp))
    lower = float(stats.nct.cdf(-crit, df, ncp))
    if not math.isfinite(lower):
        # scipy's nct returns NaN for some astronomically small lower tails (e.g. df 2, ncp 50);
        # P(T' < -c) <= P(T' < 0) = Phi(-ncp), which is then far below double precision of the sum
        lower = 0.0
    return upper + lower


def min_detectable_effect(sd: float, n: int, power: float = POWER, alpha: float = ALPHA) -> float:
    """The smallest |δ| the two-sided paired t-test detects with probability ``power`` at ``alpha``,
    for sd of the differences ``sd`` and ``n`` pairs; in the units of ``sd``. 0 when sd = 0."""
    _check(sd, n, alpha)
    if not alpha < power < 1:
        raise ValueError(f"power must be in (alpha, 1), e.g. 0.8, got {power!r}")
    if sd == 0:
        return 0.0
    se = sd / math.sqrt(n)
    f = lambda delta: paired_power(delta, sd, n, alpha) - power  # noqa: E731  (increasing in delta)
    hi = se
    while f(hi) < 0:
        hi *= 2
    return float(optimize.brentq(f, 0.0, hi, xtol=1e-12 * max(1.0, hi), rtol=1e-12))


def seeds_needed(delta: float, sd: float, power: float = POWER, alpha: float = ALPHA,
                 max_n: int = MAX_SEEDS) -> int | None:
    """The smallest n >= 2 (seeds per variant, paired with the baseline's) whose paired t-test power
    for a true difference ``delta`` at sd ``sd`` reaches ``power``; None beyond ``max_n`` or when
    delta = 0."""
    if delta == 0:
        return None
    _check(sd, 2, alpha)
    if sd == 0:
        return 2
    ok = lambda n: paired_power(delta, sd, n, alpha) >= power  # noqa: E731  (power grows with n)
    if not ok(max_n):
        return None
    lo, hi = 1, 2  # invariant: not ok(lo) (or lo = 1), ok(hi)
    while not ok(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, max_n)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return max(hi, 2)
