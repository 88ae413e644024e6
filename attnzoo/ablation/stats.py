"""Summary statistics for ablation tables: mean ± sample std, and paired-difference t intervals.

The question an ablation asks is "does block X change top-1 compared with the plain backbone
trained the same way?". Runs are paired by seed (same seed -> same weight-init stream, data
order, subset and augmentation for both), so the interval is the paired-difference t interval
(Student 1908; any statistics text, e.g. NIST/SEMATECH e-Handbook of Statistical Methods, sec.
7.3.1 / 7.4.4):

    d_i = a_i - b_i,   mean(d) ± t_{0.975, n-1} · sd(d) / sqrt(n),   sd with n - 1 in the denominator.

A difference is called significant at the 95% level when that interval excludes 0 (the same as a
two-sided paired t-test at alpha = 0.05).
NOTE: no correction for comparing many blocks with one baseline (with 10 blocks, about one in two
ablations will show a "significant" block by chance at alpha = 0.05 each); the report says so.

t quantiles: scipy is not a dependency, so ``T_975`` holds the two-sided 95% critical values
t_{0.975, df} for df = 1..30 from the NIST/SEMATECH e-Handbook of Statistical Methods, sec.
1.3.6.7.2 "Critical Values of the Student's t Distribution"
(https://www.itl.nist.gov/div898/handbook/eda/section3/eda3672.htm), to 4 decimals. For df > 30 the
Cornish-Fisher expansion of Abramowitz & Stegun (1964), formula 26.7.5, to the 1/df^2 term is used,
t ≈ z + (z^3 + z)/(4 df) + (5z^5 + 16z^3 + 3z)/(96 df^2) with z = 1.959964; its error is below
1e-3 at df = 30 and shrinks with df (tests check both against a numerical integral of the t density).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

__all__ = ["T_975", "t_quantile_975", "mean_std", "PairedDiff", "paired_difference"]

# t_{0.975, df}, df = 1..30 (NIST/SEMATECH e-Handbook, 1.3.6.7.2)
T_975: tuple[float, ...] = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)
Z_975 = 1.959963984540054  # the standard normal's 0.975 quantile


def t_quantile_975(df: int) -> float:
    """Two-sided 95% critical value of Student's t with ``df`` degrees of freedom (df >= 1)."""
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ValueError(f"degrees of freedom must be an int >= 1, got {df!r}")
    if df <= len(T_975):
        return T_975[df - 1]
    z = Z_975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)  # A&S 26.7.5


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
    """mean(a - b) over n pairs with its 95% t interval [low, high]; NaN bounds when n < 2."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    @property
    def significant(self) -> bool | None:
        """True when the 95% interval excludes 0; None when there is no interval (n < 2)."""
        if self.n < 2 or math.isnan(self.low):
            return None
        return self.low > 0 or self.high < 0


def paired_difference(a: Sequence[float], b: Sequence[float]) -> PairedDiff:
    """Paired-difference 95% t interval for mean(a_i - b_i); ``a`` and ``b`` are aligned by seed."""
    if len(a) != len(b):
        raise ValueError(f"paired samples must have the same length, got {len(a)} and {len(b)}")
    if not a:
        raise ValueError("paired_difference needs at least one pair")
    d = [float(x) - float(y) for x, y in zip(a, b)]
    mean, sd = mean_std(d)
    n = len(d)
    if n < 2:
        return PairedDiff(mean, math.nan, math.nan, n)
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    return PairedDiff(mean, mean - half, mean + half, n)
