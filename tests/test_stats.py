"""attnzoo.ablation.stats against hand-computed values, closed forms and simulation.

Closed forms used as independent references: Student's t with df = 1 is the Cauchy distribution,
F(t) = 1/2 + atan(t)/pi; with df = 2, F(t) = 1/2 + t / (2 sqrt(2 + t^2)). Sample sizes for the
one-sample (paired) t-test at alpha = 0.05 two-sided, power 0.80: Cohen's d = 0.5 -> n = 34,
d = 0.8 -> n = 15 (the values G*Power and Cohen 1988's tables give).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from attnzoo.ablation.stats import (
    holm, mean_std, min_detectable_effect, paired_difference, paired_power, seeds_needed, t_quantile_975,
)


def test_paired_interval_and_p_value_match_the_df2_closed_form():
    # diffs 2, 3, 4 pp: mean 3, sd 1, se 1/sqrt(3); t_{0.975,2} = sqrt(2 q^2 / (1 - q^2)), q = 0.95
    d = paired_difference([80.0, 82.0, 84.0], [78.0, 79.0, 80.0])
    t975 = math.sqrt(2 * 0.95**2 / (1 - 0.95**2))
    assert d.n == 3 and d.mean == pytest.approx(3.0) and d.sd == pytest.approx(1.0)
    assert (d.low, d.high) == pytest.approx((3 - t975 / math.sqrt(3), 3 + t975 / math.sqrt(3)), abs=1e-9)
    t = 3 * math.sqrt(3)
    assert d.p == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)  # 2 (1 - F(t)) at df = 2
    assert d.significant is True


def test_paired_interval_at_df1_is_the_cauchy_quantile_and_not_significant():
    d = paired_difference([1.0, 0.0], [0.0, 1.0])  # diffs +1, -1: mean 0, sd sqrt(2), se 1
    q = math.tan(math.pi * 0.475)
    assert (d.low, d.high) == pytest.approx((-q, q), rel=1e-9) and d.p == pytest.approx(1.0)
    assert d.significant is False


def test_paired_difference_edge_cases():
    single = paired_difference([1.0], [0.5])
    assert single.mean == 0.5 and math.isnan(single.low) and math.isnan(single.p) and single.significant is None
    same = paired_difference([1.0, 2.0], [0.0, 1.0])  # sd 0, mean 1: certain
    assert same.p == 0.0 and same.low == same.high == 1.0
    with pytest.raises(ValueError, match="same length"):
        paired_difference([1.0], [1.0, 2.0])


def test_t_quantile_matches_closed_forms_and_rejects_bad_df():
    assert t_quantile_975(1) == pytest.approx(math.tan(math.pi * 0.475), rel=1e-12)
    assert t_quantile_975(2) == pytest.approx(math.sqrt(2 * 0.95**2 / (1 - 0.95**2)), rel=1e-12)
    assert t_quantile_975(10_000) == pytest.approx(1.959964, abs=1e-3)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="degrees of freedom"):
            t_quantile_975(bad)


def test_mean_std_uses_sample_std():
    assert mean_std([1.0, 2.0, 3.0, 4.0]) == pytest.approx((2.5, math.sqrt(5 / 3)))
    m, s = mean_std([7.0])
    assert m == 7.0 and math.isnan(s)
    with pytest.raises(ValueError):
        mean_std([])


def test_holm_matches_hand_computation():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.6, 0.7]) == [1.0, 1.0]  # capped at 1
    out = holm([0.02, math.nan, 0.5])  # NaN is not a test: m = 2
    assert out[0] == pytest.approx(0.04) and math.isnan(out[1]) and out[2] == pytest.approx(0.5)
    assert holm([]) == [] and holm([0.2]) == [0.2]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.1, 1.5])


def test_power_at_the_mde_is_80_percent_by_noncentral_t_and_by_simulation():
    sd, n = 0.4, 3
    mde = min_detectable_effect(sd, n)
    # noncentral t, computed here without the module's helper
    crit, ncp = sps.t.ppf(0.975, n - 1), mde / (sd / math.sqrt(n))
    assert sps.nct.sf(crit, n - 1, ncp) + sps.nct.cdf(-crit, n - 1, ncp) == pytest.approx(0.80, abs=1e-9)
    # simulation: the share of paired t-tests on N(mde, sd) differences that reject at 5%
    rng = np.random.default_rng(0)
    d = rng.normal(mde, sd, size=(200_000, n))
    t = d.mean(1) / (d.std(1, ddof=1) / math.sqrt(n))
    assert np.mean(np.abs(t) > crit) == pytest.approx(0.80, abs=0.005)
    # the normal approximation (z_.975 + z_.8) sd / sqrt(n) would understate it badly at n = 3
    assert mde > 2 * (1.959964 + 0.841621) * sd / math.sqrt(n)
    assert min_detectable_effect(2 * sd, n) == pytest.approx(2 * mde)  # linear in sd
    assert min_detectable_effect(0.0, n) == 0.0


def test_seeds_needed_matches_published_sample_sizes():
    assert seeds_needed(0.5, 1.0) == 34 and seeds_needed(0.8, 1.0) == 15
    assert seeds_needed(0.3, 0.6) == 34  # only the ratio delta / sd matters
    n = seeds_needed(0.3, 0.25)
    assert paired_power(0.3, 0.25, n) >= 0.8 > paired_power(0.3, 0.25, n - 1)
    assert seeds_needed(0.3, 0.0) == 2 and seeds_needed(0.0, 1.0) is None
    assert seeds_needed(1e-3, 10.0, max_n=100) is None


def test_power_stays_finite_where_scipy_nct_tail_is_nan():
    # scipy.stats.nct.cdf(-4.30, 2, 50) is NaN; the power is 1 to double precision there
    assert paired_power(50 / math.sqrt(3), 1.0, 3) == pytest.approx(1.0)
    assert min_detectable_effect(1e-9, 3) == pytest.approx(1e-9 * min_detectable_effect(1.0, 3))
    assert seeds_needed(0.3, 1e-6) == 2


def test_power_rejects_impossible_inputs():
    with pytest.raises(ValueError, match="n >= 2"):
        paired_power(1.0, 1.0, 1)
    with pytest.raises(ValueError, match="sd"):
        min_detectable_effect(-1.0, 3)
    with pytest.raises(ValueError, match="power"):
        min_detectable_effect(1.0, 3, power=0.01)
