"""Attribute charts (p, np, c, u, Laney p′/u′): published examples and hand derivations.

Sources of expected values, named in each test:

* Montgomery, D. C., *Introduction to Statistical Quality Control* — the
  orange-juice can p chart (Table 7.1 in the 6th ed.), the printed-circuit-board
  c chart and the personal-computer u chart. The data are those shipped with
  the R package ``qcc`` (datasets ``orangejuice``, ``circuit``, ``pcmanufact``,
  ``dyedcloth``; its documentation cites Montgomery, 2nd ed., 1991,
  pp. 152–155, 173–175, 181–182, 183–184). The printed values are rounded to
  4 (p) or 2 (c, u) decimals, so they are compared at that precision.
* Everything else is derived by hand in the test's docstring from the
  formulas in ``spc-semantics.md`` ("Charts and estimates") and
  ``contracts/analyze.md``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from spc.charts.attributes import (
    c_chart,
    c_series,
    estimate_c,
    estimate_laney_p,
    estimate_laney_u,
    estimate_np,
    estimate_p,
    estimate_u,
    laney_p_chart,
    laney_p_series,
    laney_u_chart,
    laney_u_series,
    np_chart,
    np_series,
    p_chart,
    p_series,
    u_chart,
    u_series,
)
from spc.constants import d2
from spc.errors import SpcInputError
from spc.series import Estimate

# Montgomery's orange-juice cans: 30 Phase I samples of n = 50, then 24 samples
# after the machine adjustment (qcc ``orangejuice``, trial = TRUE / FALSE).
OJ_PHASE1 = [12, 15, 8, 10, 4, 7, 16, 9, 14, 10, 5, 6, 17, 12, 22, 8, 10, 5, 13, 11, 20, 18, 24, 15, 9, 12, 7, 13, 9, 6]  # fmt: skip
OJ_PHASE2 = [9, 6, 12, 5, 6, 4, 6, 3, 7, 6, 2, 4, 3, 6, 5, 4, 8, 5, 6, 7, 5, 6, 3, 5]  # fmt: skip

# Montgomery's printed circuit boards: nonconformities in 26 inspection units
# of 100 boards, then 20 further units (qcc ``circuit``).
CIRCUIT_PHASE1 = [21, 24, 16, 12, 15, 5, 28, 20, 31, 25, 20, 24, 16, 19, 10, 17, 13, 22, 18, 39, 30, 24, 16, 19, 17, 15]  # fmt: skip
CIRCUIT_PHASE2 = [16, 18, 12, 15, 24, 21, 28, 20, 25, 19, 18, 21, 16, 22, 19, 12, 14, 9, 16, 21]  # fmt: skip

# Montgomery's personal computers: nonconformities in 20 samples of 5 computers
# (qcc ``pcmanufact``).
PC_COUNTS = [10, 12, 8, 14, 10, 16, 11, 7, 10, 15, 9, 5, 7, 11, 12, 6, 8, 10, 7, 5]

# Montgomery's dyed cloth: nonconformities per roll and roll size in units of
# 50 m² (qcc ``dyedcloth``), a u chart with non-integer, varying n.
CLOTH_COUNTS = [14, 12, 20, 11, 7, 10, 21, 16, 19, 23]
CLOTH_UNITS = [10, 8, 13, 10, 9.5, 10, 12, 10.5, 12, 12.5]

D2_2 = 2.0 / math.sqrt(math.pi)  # d2(2), exact


def beyond(series) -> list[int]:
    """0-based indices of points outside the (clipped) limits."""
    s = series.statistics
    return np.flatnonzero((s > series.ucl) | (s < series.lcl)).tolist()


# --------------------------------------------------------------------------- published examples


def test_p_chart_orange_juice_trial_limits_montgomery():
    """Montgomery, orange-juice cans (Table 7.1, 6th ed.): p̄ = 0.2313, UCL = 0.4102, LCL = 0.0524.

    Samples 15 and 23 (0-based 14 and 22) plot above the UCL, as in the book.
    """
    s = p_chart(OJ_PHASE1, [50] * 30)
    assert s.name == "p"
    assert s.estimate.method == "pbar"
    assert s.estimate.center == pytest.approx(347 / 1500, abs=0)
    assert s.center == pytest.approx([0.2313] * 30, abs=5e-5)
    assert s.ucl == pytest.approx([0.4102] * 30, abs=5e-5)
    assert s.lcl == pytest.approx([0.0524] * 30, abs=5e-5)
    assert s.statistics == pytest.approx(np.array(OJ_PHASE1) / 50)
    assert beyond(s) == [14, 22]


def test_p_chart_orange_juice_revised_limits_exclude_montgomery():
    """Montgomery's revised limits with samples 15 and 23 removed: p̄ = 0.2150, UCL 0.3893, LCL 0.0407.

    p̄ = (347 − 22 − 24)/(28·50) = 301/1400. The excluded points are still
    plotted; sample 21 (0-based 20, p = 0.40) now lies above the revised UCL,
    as the book remarks.
    """
    exclude = np.zeros(30, dtype=bool)
    exclude[[14, 22]] = True
    s = p_chart(OJ_PHASE1, [50] * 30, exclude=exclude)
    assert s.estimate.center == pytest.approx(301 / 1400, rel=1e-15)
    assert s.center == pytest.approx([0.2150] * 30, abs=5e-5)
    assert s.ucl == pytest.approx([0.3893] * 30, abs=5e-5)
    assert s.lcl == pytest.approx([0.0407] * 30, abs=5e-5)
    assert len(s) == 30
    assert s.statistics[[14, 22]] == pytest.approx([22 / 50, 24 / 50])
    assert beyond(s) == [14, 20, 22]


def test_p_chart_orange_juice_phase2_against_frozen_revised_limits():
    """Phase II (samples 31–54) judged against the frozen revised estimate (hand-derived).

    Centre 301/1400 on every Phase II point; LCL = p̄ − 3√(p̄(1−p̄)/50) ≈ 0.0407,
    so only sample 41 (0-based Phase II index 10, p = 2/50 = 0.04) is beyond a
    limit. Phase II points do not move the estimate.
    """
    exclude = np.zeros(30, dtype=bool)
    exclude[[14, 22]] = True
    s = p_chart(OJ_PHASE1, [50] * 30, OJ_PHASE2, [50] * 24, exclude=exclude)
    assert len(s) == 54
    p = 301 / 1400
    assert s.center == pytest.approx([p] * 54, rel=1e-15)
    sig = math.sqrt(p * (1 - p) / 50)
    assert s.lcl[30:] == pytest.approx([p - 3 * sig] * 24, rel=1e-14)
    assert [i for i in beyond(s) if i >= 30] == [40]


def test_p_chart_orange_juice_new_limits_from_phase2_data_clip_lcl():
    """Limits recomputed on samples 31–54 alone (hand-derived from the same data).

    p̄ = 133/1200 = 0.1108; UCL = p̄ + 3√(p̄(1−p̄)/50) = 0.2440; the raw LCL
    p̄ − 0.1332 = −0.0224 is clipped at 0, while ``sigma`` stays unclipped.
    """
    s = p_chart(OJ_PHASE2, [50] * 24)
    p = 133 / 1200
    sig = math.sqrt(p * (1 - p) / 50)
    assert s.center[0] == pytest.approx(0.1108, abs=5e-5)
    assert s.ucl[0] == pytest.approx(0.2440, abs=5e-5)
    assert p - 3 * sig == pytest.approx(-0.0224, abs=5e-5)
    assert np.all(s.lcl == 0.0)
    assert s.sigma == pytest.approx([sig] * 24, rel=1e-15)


def test_np_chart_orange_juice_is_n_times_p_chart():
    """np chart of the orange-juice data: centre n·p̄ = 347/30, limits = 50 × the p-chart limits.

    From Montgomery's p̄ = 0.2313: CL = 11.57, UCL = 50·0.4102 = 20.51, LCL = 50·0.0524 = 2.62.
    """
    s = np_chart(OJ_PHASE1, [50] * 30)
    p = p_chart(OJ_PHASE1, [50] * 30)
    assert s.name == "np"
    assert s.center == pytest.approx([347 / 30] * 30, rel=1e-15)
    assert s.ucl == pytest.approx(50 * p.ucl, rel=1e-14)
    assert s.lcl == pytest.approx(50 * p.lcl, rel=1e-14)
    assert s.sigma == pytest.approx(50 * p.sigma, rel=1e-14)
    assert s.statistics == pytest.approx(OJ_PHASE1)
    assert s.ucl[0] == pytest.approx(20.51, abs=0.005)
    assert s.lcl[0] == pytest.approx(2.62, abs=0.005)
    assert beyond(s) == [14, 22]


def test_c_chart_circuit_boards_montgomery():
    """Montgomery, circuit boards: c̄ = 516/26 = 19.85, UCL = 33.22, LCL = 6.48; samples 6, 20 out.

    The book rounds c̄ to 19.85 before adding 3√19.85, printing 33.22 where the
    exact value is 33.211; compared at ±0.01.
    """
    s = c_chart(CIRCUIT_PHASE1)
    assert s.name == "c"
    assert s.estimate.center == pytest.approx(516 / 26, rel=1e-15)
    assert s.estimate.method == "cbar"
    assert math.isnan(s.estimate.sigma)
    assert s.center[0] == pytest.approx(19.85, abs=0.005)
    assert s.ucl == pytest.approx([33.22] * 26, abs=0.01)
    assert s.lcl == pytest.approx([6.48] * 26, abs=0.005)
    assert s.sigma == pytest.approx([math.sqrt(516 / 26)] * 26, rel=1e-15)
    assert np.all(s.n == 1.0)
    assert beyond(s) == [5, 19]


def test_c_chart_circuit_boards_revised_and_phase2_montgomery():
    """Montgomery's revised c chart without samples 6 and 20: c̄ = 472/24 = 19.67, UCL 32.97, LCL 6.36.

    The 20 further inspection units are judged against the frozen revised
    limits; all lie inside (hand-checked: 9 ≤ C ≤ 28).
    """
    exclude = np.zeros(26, dtype=bool)
    exclude[[5, 19]] = True
    s = c_chart(CIRCUIT_PHASE1, CIRCUIT_PHASE2, exclude=exclude)
    assert len(s) == 46
    assert s.estimate.center == pytest.approx(472 / 24, rel=1e-15)
    assert s.center[0] == pytest.approx(19.67, abs=0.005)
    assert s.ucl == pytest.approx([32.97] * 46, abs=0.005)
    assert s.lcl == pytest.approx([6.36] * 46, abs=0.005)
    assert beyond(s) == [5, 19]


def test_u_chart_personal_computers_montgomery():
    """Montgomery, personal computers (n = 5 per sample): ū = 193/100 = 1.93, UCL 3.79, LCL 0.07."""
    s = u_chart(PC_COUNTS, [5] * 20)
    assert s.name == "u"
    assert s.estimate.method == "ubar"
    assert s.estimate.center == pytest.approx(1.93, rel=1e-15)
    assert s.ucl == pytest.approx([3.79] * 20, abs=0.005)
    assert s.lcl == pytest.approx([0.07] * 20, abs=0.005)
    assert s.statistics == pytest.approx(np.array(PC_COUNTS) / 5)
    assert beyond(s) == []


def test_u_chart_dyed_cloth_variable_area_stair_steps():
    """Montgomery, dyed cloth: ū = 153/107.5 = 1.42 (as printed); per-roll limits hand-derived.

    n_i is the roll size in 50 m² units (non-integer, e.g. 9.5): σ_i = √(ū/n_i),
    so each roll has its own limits, e.g. n = 8 → UCL = ū + 3√(ū/8) ≈ 2.689,
    LCL ≈ 0.158, and equal n give equal limits.
    """
    s = u_chart(CLOTH_COUNTS, CLOTH_UNITS)
    u = 153 / 107.5
    n = np.array(CLOTH_UNITS)
    assert s.estimate.center == pytest.approx(u, rel=1e-15)
    assert s.estimate.center == pytest.approx(1.42, abs=0.005)
    assert s.sigma == pytest.approx(np.sqrt(u / n), rel=1e-15)
    assert s.ucl == pytest.approx(u + 3 * np.sqrt(u / n), rel=1e-15)
    assert s.lcl == pytest.approx(u - 3 * np.sqrt(u / n), rel=1e-14)
    assert s.ucl[1] == pytest.approx(2.689, abs=5e-4)
    assert s.lcl[1] == pytest.approx(0.158, abs=5e-4)
    assert s.ucl[0] == s.ucl[3] == s.ucl[5]  # n = 10 three times
    assert np.all(np.diff(s.ucl[[1, 4, 0, 7, 6, 9, 2]]) < 0)  # UCL falls as n rises
    assert s.n == pytest.approx(n)


# --------------------------------------------------------------------------- hand-derived: p, np


def test_pbar_is_total_over_total_not_mean_of_ratios():
    """D = (1, 45), n = (10, 90): p̄ = 46/100 = 0.46, whereas the mean of ratios is (0.1 + 0.5)/2 = 0.3."""
    est = estimate_p([1, 45], [10, 90])
    assert est.center == pytest.approx(0.46, rel=1e-15)
    assert est.center != pytest.approx(0.3)
    assert est.method == "pbar"
    assert math.isnan(est.sigma)
    assert estimate_np([1, 45], [10, 90]) == est


def test_p_chart_stair_step_limits_with_variable_n():
    """D = (2, 10, 3), n = (20, 100, 50): p̄ = 15/170 = 3/34, p̄(1−p̄) = 93/1156.

    σ_i = √(93/1156/n_i): n = 20 → σ = 0.063423, LCL = 3/34 − 0.190269 < 0 → 0,
    UCL = 0.278505; n = 100 → σ = 0.028364, LCL = 0.003144, UCL = 0.173327;
    n = 50 → σ = 0.040112, LCL → 0, UCL = 0.208572.
    """
    s = p_chart([2, 10, 3], [20, 100, 50])
    p = 3 / 34
    sig = np.sqrt(93 / 1156 / np.array([20, 100, 50]))
    assert s.center == pytest.approx([p] * 3, rel=1e-15)
    assert s.sigma == pytest.approx(sig, rel=1e-14)
    assert s.ucl == pytest.approx(p + 3 * sig, rel=1e-14)
    assert s.lcl == pytest.approx([0.0, p - 3 * sig[1], 0.0], rel=1e-12, abs=0)
    assert s.ucl == pytest.approx([0.278505, 0.173327, 0.208572], abs=1e-6)
    assert s.lcl[1] == pytest.approx(0.003144, abs=1e-6)
    assert s.statistics == pytest.approx([0.1, 0.1, 0.06])
    assert s.n == pytest.approx([20, 100, 50])


def test_np_chart_variable_n_centre_per_point():
    """np with n = (20, 100, 50) and p̄ = 3/34: centre n_i·p̄ = (1.7647, 8.8235, 4.4118), σ = √(n_i p̄(1−p̄))."""
    s = np_chart([2, 10, 3], [20, 100, 50])
    n = np.array([20, 100, 50])
    p = 3 / 34
    assert s.center == pytest.approx(n * p, rel=1e-15)
    assert s.sigma == pytest.approx(np.sqrt(n * p * (1 - p)), rel=1e-14)
    assert s.ucl == pytest.approx(n * p + 3 * np.sqrt(n * p * (1 - p)), rel=1e-14)
    assert s.lcl == pytest.approx(np.maximum(n * p - 3 * np.sqrt(n * p * (1 - p)), 0), abs=1e-12)
    assert s.statistics == pytest.approx([2, 10, 3])


def test_p_ucl_clipped_at_one_and_np_ucl_at_n():
    """D = (4, 5, 5), n = 5: p̄ = 14/15, σ = √(14/15·1/15/5) = 0.111555.

    p: raw UCL = 0.9333 + 0.3347 = 1.268 → clipped to 1; LCL = 0.5987 (not
    clipped); sigma unclipped. np: raw UCL = 4.667 + 1.673 = 6.34 → clipped to n = 5.
    """
    p = p_chart([4, 5, 5], [5, 5, 5])
    sig = math.sqrt(14 / 15 * (1 / 15) / 5)
    assert np.all(p.ucl == 1.0)
    assert p.lcl == pytest.approx([14 / 15 - 3 * sig] * 3, rel=1e-14)
    assert p.sigma == pytest.approx([sig] * 3, rel=1e-14)
    npc = np_chart([4, 5, 5], [5, 5, 5])
    assert np.all(npc.ucl == 5.0)
    assert npc.center == pytest.approx([14 / 3] * 3, rel=1e-14)
    assert npc.sigma == pytest.approx([5 * sig] * 3, rel=1e-14)


def test_np_ucl_clipped_at_each_points_own_n():
    """n = (2, 100), D = (2, 80): p̄ = 82/102 = 0.80392, p̄(1−p̄) = 0.15763.

    n = 2: centre 1.6078, σ = √(2·0.15763) = 0.56149, raw UCL 3.2923 > 2 → clipped to 2.
    n = 100: centre 80.392, σ = 3.9704, raw UCL 92.30 < 100 is kept.
    """
    s = np_chart([2, 80], [2, 100])
    p = 82 / 102
    assert s.ucl[0] == 2.0
    assert s.center[0] + 3 * s.sigma[0] == pytest.approx(3.2923, abs=1e-4)
    assert s.ucl[1] == pytest.approx(100 * p + 3 * math.sqrt(100 * p * (1 - p)), rel=1e-14)
    assert s.ucl[1] == pytest.approx(92.30, abs=0.005)


def test_all_zero_counts_collapse_limits_to_zero():
    """All-zero counts are valid: p̄ = c̄ = ū = 0 → σ = 0 and every limit is 0 (contract, edge cases)."""
    for s in (
        p_chart([0, 0, 0], [5, 10, 5]),
        np_chart([0, 0, 0], [5, 10, 5]),
        c_chart([0, 0, 0]),
        u_chart([0, 0, 0], [1.5, 2, 3]),
        laney_p_chart([0, 0, 0], [5, 10, 5]),
        laney_u_chart([0, 0, 0], [1.5, 2, 3]),
    ):
        assert np.all(s.center == 0.0)
        assert np.all(s.lcl == 0.0)
        assert np.all(s.ucl == 0.0)
        assert np.all(s.sigma == 0.0)
        assert np.all(s.statistics == 0.0)
        assert beyond(s) == []


def test_all_zero_phase1_then_phase2_defect_is_beyond_ucl():
    """With p̄ = 0 frozen, any Phase II defective lies above UCL = 0 (N1 is x > UCL, strict)."""
    s = p_chart([0, 0, 0], [5, 5, 5], [0, 1], [5, 5])
    assert beyond(s) == [4]


def test_pbar_one_collapses_limits_to_one():
    """D = n everywhere: p̄ = 1 → σ = 0, LCL = UCL = 1 (p) and = n_i (np)."""
    p = p_chart([5, 7], [5, 7])
    assert np.all(p.center == 1.0)
    assert np.all(p.lcl == 1.0)
    assert np.all(p.ucl == 1.0)
    assert np.all(p.sigma == 0.0)
    npc = np_chart([5, 7], [5, 7])
    assert npc.lcl == pytest.approx([5, 7])
    assert npc.ucl == pytest.approx([5, 7])


def test_known_center_is_standard_given():
    """known_center = 0.1 with n = 100: centre 0.1, σ = √(0.1·0.9/100) = 0.03, limits 0.01 … 0.19."""
    s = p_chart([50, 60], [100, 100], known_center=0.1)
    assert s.estimate.method == "known"
    assert s.estimate.center == 0.1
    assert s.ucl == pytest.approx([0.19] * 2, rel=1e-14)
    assert s.lcl == pytest.approx([0.01] * 2, rel=1e-12)
    assert beyond(s) == [0, 1]
    assert estimate_c([1, 2], known_center=4).center == 4
    assert estimate_u([1, 2], [1, 1], known_center=0.5).method == "known"
    assert estimate_np([1, 2], [5, 5], known_center=0.5).method == "known"


def test_known_center_zero_is_allowed():
    """A standard of p̄ = 0 (or c̄ = 0) is valid: limits collapse to 0, any defect is beyond UCL."""
    s = c_chart([0, 3], known_center=0)
    assert np.all(s.ucl == 0) and beyond(s) == [1]


def test_exclusions_change_estimate_not_plotted_points():
    """D = (1, 9, 1), n = 10: all → p̄ = 11/30; excluding point 1 → p̄ = 2/20 = 0.1.

    Point 1 (p = 0.9) is still plotted and still has its own limits.
    """
    full = p_chart([1, 9, 1], [10, 10, 10])
    ex = p_chart([1, 9, 1], [10, 10, 10], exclude=[False, True, False])
    assert full.estimate.center == pytest.approx(11 / 30)
    assert ex.estimate.center == pytest.approx(0.1)
    assert ex.statistics == pytest.approx(full.statistics)
    assert len(ex) == 3
    assert beyond(ex) == [1]
    c = c_chart([2, 20, 4], exclude=np.array([0, 1, 0], dtype=bool))
    assert c.estimate.center == pytest.approx(3.0)
    u = u_chart([2, 20, 4], [1, 1, 2], exclude=[False, True, False])
    assert u.estimate.center == pytest.approx(6 / 3)


def test_phase2_uses_frozen_estimate_and_series_matches_chart():
    """The Phase II tail of ``p_chart`` equals ``p_series`` of the Phase II points with the Phase I estimate.

    Phase I D = (3, 5), n = (50, 50): p̄ = 0.08; the Phase II point 40/50 = 0.8
    does not move p̄.
    """
    chart = p_chart([3, 5], [50, 50], [40, 1], [50, 25])
    est = estimate_p([3, 5], [50, 50])
    assert est.center == pytest.approx(0.08)
    tail = p_series([40, 1], [50, 25], est)
    for name in ("statistics", "center", "lcl", "ucl", "sigma", "n"):
        np.testing.assert_array_equal(getattr(chart, name)[2:], getattr(tail, name))
    assert chart.estimate.center == est.center
    assert chart.estimate.method == "pbar"
    assert chart.center[3] == pytest.approx(0.08)
    assert chart.sigma[3] == pytest.approx(math.sqrt(0.08 * 0.92 / 25))


def test_series_functions_for_every_chart_match_their_chart():
    """np, c, u series with a frozen estimate equal the Phase II tail of the chart functions."""
    e = estimate_np([3, 5], [50, 50])
    np.testing.assert_array_equal(
        np_chart([3, 5], [50, 50], [7], [40]).ucl[2:], np_series([7], [40], e).ucl
    )
    e = estimate_c([3, 5])
    np.testing.assert_array_equal(c_chart([3, 5], [7]).ucl[2:], c_series([7], e).ucl)
    e = estimate_u([3, 5], [2, 2.5])
    np.testing.assert_array_equal(
        u_chart([3, 5], [2, 2.5], [7], [0.5]).ucl[2:], u_series([7], [0.5], e).ucl
    )


def test_nsigmas_scales_the_band_not_sigma():
    """nsigmas = 2: UCL = p̄ + 2σ_i; sigma (the zone width) is the same as with 3."""
    s2 = p_chart([10, 20], [100, 100], nsigmas=2)
    s3 = p_chart([10, 20], [100, 100])
    sig = math.sqrt(0.15 * 0.85 / 100)
    assert s2.ucl == pytest.approx([0.15 + 2 * sig] * 2, rel=1e-14)
    np.testing.assert_array_equal(s2.sigma, s3.sigma)


def test_u_allows_counts_above_size_and_non_integer_sizes():
    """u: C may exceed n (several defects per unit) and n may be an area such as 0.25."""
    s = u_chart([7, 1], [0.25, 1.75])
    assert s.statistics == pytest.approx([28, 1 / 1.75])
    assert s.estimate.center == pytest.approx(8 / 2)


# --------------------------------------------------------------------------- Laney p′ and u′


def test_laney_p_hand_derived():
    """D = (10, 20, 30, 20), n = 100: p̄ = 0.2, σ_i = √(0.16/100) = 0.04.

    z = (−2.5, 0, 2.5, 0); |Δz| = (2.5, 2.5, 2.5); σ_z = 2.5/d2(2) = 2.5·√π/2 = 2.215567.
    Limits 0.2 ± 3·0.04·σ_z = 0.2 ± 0.265868 → LCL clipped to 0, UCL 0.465868.
    The series keeps the name ``p``; sigma = σ_i·σ_z.
    """
    s = laney_p_chart([10, 20, 30, 20], [100] * 4)
    sz = 2.5 * math.sqrt(math.pi) / 2
    assert s.name == "p"
    assert s.estimate.method == "laney"
    assert s.estimate.center == pytest.approx(0.2, rel=1e-15)
    assert s.estimate.sigma == pytest.approx(sz, rel=1e-14)
    assert s.estimate.sigma == pytest.approx(2.215567, abs=1e-6)
    assert s.sigma == pytest.approx([0.04 * sz] * 4, rel=1e-14)
    assert s.ucl == pytest.approx([0.2 + 0.12 * sz] * 4, rel=1e-14)
    assert s.ucl[0] == pytest.approx(0.465868, abs=1e-6)
    assert np.all(s.lcl == 0.0)


def test_laney_exclusion_uses_only_adjacent_non_excluded_pairs():
    """Same data, point 2 excluded: p̄ = 50/300 = 1/6, σ_i = √(5/36/100) = √5/60.

    Pairs (0,1) used; (1,2) and (2,3) touch the excluded point and are
    dropped (no bridging 1→3). MR = |z1 − z0| = 0.1/σ_i = 6/√5, so
    σ_z = (6/√5)/d2(2) = 3√π/√5 = 2.378.
    """
    est = estimate_laney_p([10, 20, 30, 20], [100] * 4, exclude=[False, False, True, False])
    assert est.center == pytest.approx(1 / 6, rel=1e-15)
    assert est.sigma == pytest.approx(3 * math.sqrt(math.pi) / math.sqrt(5), rel=1e-13)


def test_laney_u_hand_derived():
    """C = (5, 15, 10, 10), n = 10: ū = 1, σ_i = √(1/10); z = (−√10/2, √10/2, 0, 0).

    |Δz| = (√10, √10/2, 0), mean √10/2; σ_z = (√10/2)/d2(2) = √(10π)/4 = 1.401248.
    """
    s = laney_u_chart([5, 15, 10, 10], [10] * 4)
    sz = math.sqrt(10 * math.pi) / 4
    assert s.name == "u"
    assert s.estimate == Estimate(pytest.approx(1.0), pytest.approx(sz, rel=1e-13), "laney")
    assert s.sigma == pytest.approx([math.sqrt(0.1) * sz] * 4, rel=1e-13)
    assert s.ucl == pytest.approx([1 + 3 * math.sqrt(0.1) * sz] * 4, rel=1e-13)
    assert np.all(s.lcl == 0.0)  # 1 − 3·0.3162·1.4012 < 0


def test_laney_with_sigma_z_one_equals_p_chart():
    """Laney's chart with σ_z = 1 is the p chart (Laney 2002; Minitab's "Sigma Z = 1" remark).

    Data built so that σ_z = 1: n = 100, p̄ = 0.2, σ_i = 0.04 and
    z alternating ±a with a = d2(2)/2, so every |Δz| = d2(2) and σ_z = 1
    (counts D = 20 ± 4a are non-integer, which the maths allows).
    """
    a = D2_2 / 2
    d = [20 + 4 * a, 20 - 4 * a] * 5
    lan = laney_p_chart(d, [100] * 10)
    plain = p_chart(d, [100] * 10)
    assert lan.estimate.sigma == pytest.approx(1.0, rel=1e-12)
    for name in ("statistics", "center", "lcl", "ucl", "sigma"):
        assert getattr(lan, name) == pytest.approx(getattr(plain, name), rel=1e-12)


def test_laney_series_with_unit_sigma_z_equals_p_and_u_series():
    """laney_*_series with Estimate(center, σ_z = 1) reproduces p_series / u_series exactly."""
    d, n = [3, 9, 0, 14], [40, 60, 25, 80]
    est = Estimate(0.12, 1.0, "laney")
    lp, pp = laney_p_series(d, n, est), p_series(d, n, est)
    lu, uu = laney_u_series(d, n, est), u_series(d, n, est)
    for a, b in ((lp, pp), (lu, uu)):
        for name in ("statistics", "center", "lcl", "ucl", "sigma", "n"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_laney_known_values():
    """known_sigma_z makes the method ``known``; a known p̄ alone keeps σ_z estimated (``laney``)."""
    est = estimate_laney_p([10, 20, 30, 20], [100] * 4, known_sigma_z=1.5)
    assert est == Estimate(pytest.approx(0.2), 1.5, "known")
    est = estimate_laney_p([10, 20, 30, 20], [100] * 4, known_center=0.2)
    assert est.method == "laney"
    assert est.sigma == pytest.approx(2.5 * math.sqrt(math.pi) / 2, rel=1e-14)
    est = estimate_laney_u([1, 2], [1, 1], known_center=2.0, known_sigma_z=0.5)
    assert est == Estimate(2.0, 0.5, "known")


def test_laney_phase2_frozen():
    """Phase II points use the Phase I p̄ and σ_z and do not change σ_z."""
    chart = laney_p_chart([10, 20, 30, 20], [100] * 4, [90], [100])
    est = estimate_laney_p([10, 20, 30, 20], [100] * 4)
    assert chart.estimate == est
    np.testing.assert_array_equal(chart.ucl[4:], laney_p_series([90], [100], est).ucl)
    assert beyond(chart) == [4]


def test_laney_needs_two_consecutive_points():
    """σ_z needs at least one moving range of two adjacent non-excluded points."""
    with pytest.raises(SpcInputError) as e:
        estimate_laney_p([3], [10])
    assert e.value.path == "data"
    with pytest.raises(SpcInputError):
        estimate_laney_u([3, 4, 5], [10, 10, 10], exclude=[False, True, False])


def test_laney_known_zero_center_with_defects_is_an_error():
    """p̄ = 0 given but a point has defects: σ_i = 0 and z is infinite → error at ``known.center``."""
    with pytest.raises(SpcInputError) as e:
        estimate_laney_p([0, 1, 0], [10, 10, 10], known_center=0.0)
    assert e.value.path == "known.center"


def test_laney_series_rejects_missing_sigma_z():
    """A p-chart Estimate (σ = NaN) cannot drive a Laney series."""
    with pytest.raises(SpcInputError) as e:
        laney_p_series([1], [10], estimate_p([1, 2], [10, 10]))
    assert e.value.path == "estimate.sigma"


# --------------------------------------------------------------------------- validation paths

SIZED = [p_chart, np_chart, u_chart, laney_p_chart, laney_u_chart]


@pytest.mark.parametrize("chart", SIZED)
@pytest.mark.parametrize(
    ("counts", "sizes", "path"),
    [
        ([1, -1, 2], [10, 10, 10], "data[1]"),
        ([1, 1, 2], [10, 10, 0], "sizes[2]"),
        ([1, 1, 2], [10, -3, 10], "sizes[1]"),
        ([1, 1, 2], [10, 10], "sizes"),
        ([1, np.nan, 2], [10, 10, 10], "data[1]"),
        ([1, 1, 2], [np.inf, 10, 10], "sizes[0]"),
        ([], [], "data"),
        ([[1, 2]], [[3, 4]], "data"),
        (["a", 1], [10, 10], "data"),
    ],
)
def test_sized_charts_reject_bad_phase1(chart, counts, sizes, path):
    """Each bad input raises SpcInputError naming the entry (contract, "Validation")."""
    with pytest.raises(SpcInputError) as e:
        chart(counts, sizes)
    assert e.value.path == path


@pytest.mark.parametrize("chart", [p_chart, np_chart, laney_p_chart])
def test_p_family_rejects_count_above_size(chart):
    """A p/np count above its size is a bad request, Phase I and Phase II."""
    with pytest.raises(SpcInputError) as e:
        chart([11, 1], [10, 10])
    assert e.value.path == "data[0]"
    with pytest.raises(SpcInputError) as e:
        chart([1, 1], [10, 10], [1, 6], [10, 5])
    assert e.value.path == "phase2.data[1]"


@pytest.mark.parametrize("chart", SIZED)
def test_sized_charts_reject_bad_phase2(chart):
    """Phase II errors carry the ``phase2.`` prefix; data and sizes must come together."""
    with pytest.raises(SpcInputError) as e:
        chart([1, 2], [10, 10], [1], [0])
    assert e.value.path == "phase2.sizes[0]"
    with pytest.raises(SpcInputError) as e:
        chart([1, 2], [10, 10], [1, 1], [5])
    assert e.value.path == "phase2.sizes"
    with pytest.raises(SpcInputError) as e:
        chart([1, 2], [10, 10], [1])
    assert e.value.path == "phase2.sizes"
    with pytest.raises(SpcInputError) as e:
        chart([1, 2], [10, 10], None, [5])
    assert e.value.path == "phase2.data"
    with pytest.raises(SpcInputError) as e:
        chart([1, 2], [10, 10], [], [])
    assert e.value.path == "phase2.data"


def test_c_chart_validation():
    """c: negative, non-finite and Phase II counts are checked; sizes are not taken at all."""
    for counts, path in (([1, -2], "data[1]"), ([np.inf], "data[0]"), ([], "data")):
        with pytest.raises(SpcInputError) as e:
            c_chart(counts)
        assert e.value.path == path
    with pytest.raises(SpcInputError) as e:
        c_chart([1, 2], [3, -1])
    assert e.value.path == "phase2.data[1]"


@pytest.mark.parametrize("estimate", [estimate_p, estimate_np, estimate_u])
def test_exclude_mask_validation(estimate):
    """``exclude`` needs one flag per Phase I point and may not remove every point."""
    with pytest.raises(SpcInputError) as e:
        estimate([1, 2], [10, 10], exclude=[True])
    assert e.value.path == "exclude"
    with pytest.raises(SpcInputError) as e:
        estimate([1, 2], [10, 10], exclude=[True, True])
    assert e.value.path == "exclude"


def test_all_excluded_is_fine_when_the_center_is_known():
    """With a known centre nothing is estimated, so excluding every point is harmless."""
    est = estimate_p([1, 2], [10, 10], exclude=[True, True], known_center=0.1)
    assert est.center == 0.1
    with pytest.raises(SpcInputError) as e:
        estimate_c([1, 2], exclude=[True, True])
    assert e.value.path == "exclude"


@pytest.mark.parametrize(
    ("call", "path"),
    [
        (lambda: p_chart([1], [10], known_center=1.5), "known.center"),
        (lambda: np_chart([1], [10], known_center=-0.1), "known.center"),
        (lambda: c_chart([1], known_center=-1), "known.center"),
        (lambda: u_chart([1], [1], known_center=math.inf), "known.center"),
        (lambda: p_chart([1], [10], known_center="x"), "known.center"),
        (lambda: p_chart([1], [10], nsigmas=0), "nsigmas"),
        (lambda: c_chart([1], nsigmas=-3), "nsigmas"),
        (lambda: u_chart([1], [1], nsigmas=math.nan), "nsigmas"),
        (lambda: laney_p_chart([1, 2], [10, 10], known_sigma_z=0), "known.sigma"),
        (lambda: p_series([1], [10], Estimate(1.2, math.nan, "pbar")), "estimate.center"),
        (lambda: c_series([1], Estimate(-1.0, math.nan, "cbar")), "estimate.center"),
    ],
)
def test_parameter_validation(call, path):
    """Standards, nsigmas and given estimates are checked with a path."""
    with pytest.raises(SpcInputError) as e:
        call()
    assert e.value.path == path


def test_d2_constant_used_by_laney_is_exact():
    """Laney divides by the exact d2(2) = 2/√π (spc-semantics "Constants"), not 1.128."""
    assert d2(2) == pytest.approx(D2_2, rel=1e-15)
