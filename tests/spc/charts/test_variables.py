"""I-MR, X̄-R, X̄-S (spc/charts/variables.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spc.charts.variables import (
    Known,
    estimate_imr,
    estimate_xbar,
    imr_chart,
    moving_ranges,
    subgroup_stats,
    xbar_chart,
)
from spc.constants import c4, d2, d3
from spc.errors import SpcInputError
from tests.data.pistonrings import PHASE1, PHASE2

NAN = math.nan


def test_piston_rings_xbar_r_montgomery_example_6_1() -> None:
    """Montgomery, ISQC 6th ed., Example 6.1 / Table 6.3: x̄̄ = 74.001, R̄ = 0.023,
    x̄ limits 73.988 / 74.014, R chart LCL 0, UCL 0.049 (D4·R̄ = 2.114·0.023 ≈ 0.0486).
    The book rounds to 3 decimals; we compare at that precision."""
    x, r = xbar_chart(np.array(PHASE1))
    assert round(x.estimate.center, 3) == 74.001
    assert round(r.center[0], 3) == 0.023
    assert round(x.lcl[0], 3) == 73.988
    assert round(x.ucl[0], 3) == 74.014
    assert r.lcl[0] == 0.0
    assert (
        round(r.ucl[0], 3) == 0.048
    )  # 2.114 × 0.02276 = 0.04812; the book's 0.049 uses R̄ rounded to 0.023
    assert not np.any((x.statistics > x.ucl) | (x.statistics < x.lcl))


def test_piston_rings_against_qcc_vignette() -> None:
    """R qcc 3.0 vignette, ``qcc(diameter[1:25,], type = "xbar")``: centre 74.00118,
    StdDev 0.009785039, LCL 73.98805, UCL 74.01431. qcc divides R̄ by a 3-decimal
    d2(5) = 2.326, we by the exact 2.3259289…, so σ̂ agrees to ~3e-5 relative."""
    x, r = xbar_chart(np.array(PHASE1))
    assert x.estimate.center == pytest.approx(74.00118, abs=5e-6)
    assert np.nanmean(r.statistics) == pytest.approx(0.02276, abs=1e-12)
    assert x.estimate.sigma == pytest.approx(0.009785039, rel=5e-5)
    assert x.estimate.sigma == pytest.approx(0.02276 / d2(5), rel=1e-12)
    assert x.lcl[0] == pytest.approx(73.98805, abs=1e-5)
    assert x.ucl[0] == pytest.approx(74.01431, abs=1e-5)


def test_piston_rings_phase2_judged_against_frozen_phase1() -> None:
    """Phase II points (Table 6.4) use the Phase I estimate unchanged; the last
    samples' means (74.0196, 74.0234 by hand from the table) lie above the UCL."""
    x, r = xbar_chart(np.array(PHASE1), np.array(PHASE2))
    assert len(x) == 40
    assert np.all(x.center == x.estimate.center)
    assert np.all(x.ucl == x.ucl[0])
    assert x.statistics[37] == pytest.approx(74.0196)
    assert x.statistics[38] == pytest.approx(74.0234)
    above = np.flatnonzero(x.statistics > x.ucl)
    assert 37 in above and 38 in above
    assert np.all(above >= 25)


def test_xbar_r_hand_derived() -> None:
    """Two subgroups [1,2,3], [2,4,6]: x̄ = 2, 4; R = 2, 4; grand mean 3;
    σ̂ = mean(R_i/d2(3)) = 3/d2(3); x̄ limits 3 ± 3σ̂/√3; R centre d2(3)σ̂ = 3."""
    x, r = xbar_chart(np.array([[1.0, 2, 3], [2, 4, 6]]))
    s = 3 / d2(3)
    assert x.estimate.sigma == pytest.approx(s, rel=1e-15)
    assert x.statistics.tolist() == [2.0, 4.0]
    assert x.ucl[0] == pytest.approx(3 + 3 * s / math.sqrt(3))
    assert x.sigma[0] == pytest.approx(s / math.sqrt(3))
    assert r.statistics.tolist() == [2.0, 4.0]
    assert r.center[0] == pytest.approx(3.0)
    assert r.sigma[0] == pytest.approx(d3(3) * s)
    assert r.lcl[0] == max(0.0, 3.0 - 3 * d3(3) * s)
    assert r.dispersion and not x.dispersion


def _ragged() -> np.ndarray:
    # subgroup sizes 5, 3, 4, 2 with missing observations as NaN
    return np.array(
        [
            [10.0, 12.0, 11.0, 13.0, 9.0],
            [11.0, NAN, 14.0, 10.0, NAN],
            [12.0, 12.5, NAN, 9.5, 10.0],
            [NAN, 8.0, 11.0, NAN, NAN],
        ]
    )


def test_subgroup_stats_skip_missing() -> None:
    """n_i counts non-null observations; R and S use only those (contracts/analyze.md, data)."""
    st_ = subgroup_stats(_ragged())
    assert st_.n.tolist() == [5, 3, 4, 2]
    assert st_.mean.tolist() == pytest.approx([11.0, 35 / 3, 11.0, 9.5])
    assert st_.range.tolist() == pytest.approx([4.0, 4.0, 3.0, 3.0])
    assert st_.sd[3] == pytest.approx(np.std([8.0, 11.0], ddof=1))


@pytest.mark.parametrize("method", ["rbar", "sbar", "rbar-weighted", "sbar-weighted", "pooled"])
def test_sigma_methods_variable_n_hand_derived(method: str) -> None:
    """Each σ̂ method of contracts/analyze.md, written out independently of the implementation."""
    data = _ragged()
    n = np.array([5, 3, 4, 2])
    R = np.array([4.0, 4.0, 3.0, 3.0])
    S = np.array([np.std(row[~np.isnan(row)], ddof=1) for row in data])
    D2 = np.array([d2(k) for k in n])
    D3 = np.array([d3(k) for k in n])
    C4 = np.array([c4(k) for k in n])
    expected = {
        "rbar": np.mean(R / D2),
        "sbar": np.mean(S / C4),
        "rbar-weighted": np.sum((D2**2 / D3**2) * R / D2) / np.sum(D2**2 / D3**2),
        "sbar-weighted": np.sum((C4**2 / (1 - C4**2)) * S / C4) / np.sum(C4**2 / (1 - C4**2)),
        "pooled": math.sqrt(np.sum((n - 1) * S**2) / np.sum(n - 1)) / c4(int(np.sum(n - 1)) + 1),
    }[method]
    est = estimate_xbar(data, method)
    assert est.sigma == pytest.approx(expected, rel=1e-13)
    assert est.method == method
    # centre is the n-weighted grand mean of all observations (spc-semantics.md)
    assert est.center == pytest.approx(np.nanmean(data), rel=1e-15)


def test_variable_n_limits_per_subgroup() -> None:
    """X̄ limits use each n_i; R and S centres are d2(n_i)σ̂ and c4(n_i)σ̂ (spc-semantics.md, Variable n)."""
    data = _ragged()
    x, r = xbar_chart(data)
    s = x.estimate.sigma
    for i, k in enumerate([5, 3, 4, 2]):
        assert x.sigma[i] == pytest.approx(s / math.sqrt(k))
        assert r.center[i] == pytest.approx(d2(k) * s)
        assert r.sigma[i] == pytest.approx(d3(k) * s)
    _, sc = xbar_chart(data, dispersion="s")
    s2 = sc.estimate.sigma
    for i, k in enumerate([5, 3, 4, 2]):
        assert sc.center[i] == pytest.approx(c4(k) * s2)
        assert sc.sigma[i] == pytest.approx(s2 * math.sqrt(1 - c4(k) ** 2))
        assert sc.lcl[i] == pytest.approx(max(0.0, c4(k) * s2 - 3 * s2 * math.sqrt(1 - c4(k) ** 2)))


def test_n1_subgroup_plots_null_on_r_chart() -> None:
    """A subgroup with n_i = 1 plots null on R/S; its X̄ point uses σ̂/√1 (contracts/analyze.md, edge cases)."""
    x, r = xbar_chart(np.array([[1.0, 3.0], [2.0, NAN], [4.0, 6.0]]))
    assert math.isnan(r.statistics[1]) and math.isnan(r.center[1]) and math.isnan(r.ucl[1])
    assert x.statistics[1] == 2.0
    assert x.sigma[1] == pytest.approx(x.estimate.sigma)


def test_all_missing_subgroup_is_a_missing_point() -> None:
    x, r = xbar_chart(np.array([[1.0, 3.0], [NAN, NAN], [4.0, 6.0]]))
    assert math.isnan(x.statistics[1]) and math.isnan(x.ucl[1]) and x.n[1] == 0


def test_known_standards_and_partial_known() -> None:
    """known may give center, sigma or both; the other is estimated; method 'known' when σ is given."""
    data = np.array(PHASE1)
    both = estimate_xbar(data, known=Known(center=74.0, sigma=0.01))
    assert (both.center, both.sigma, both.method) == (74.0, 0.01, "known")
    only_c = estimate_xbar(data, known=Known(center=74.0))
    assert only_c.center == 74.0 and only_c.method == "rbar"
    only_s = estimate_xbar(data, known=Known(sigma=0.01))
    assert only_s.center == pytest.approx(np.mean(data)) and only_s.method == "known"


def test_nsigmas() -> None:
    x, _ = xbar_chart(np.array(PHASE1), nsigmas=2.0)
    assert x.ucl[0] - x.center[0] == pytest.approx(2 * x.sigma[0])


def test_exclusions_change_estimate_not_plot() -> None:
    """Excluded Phase I subgroups are left out of the estimate but still plotted."""
    data = np.array(PHASE1)
    ex = np.zeros(25, dtype=bool)
    ex[[13, 20]] = True
    x_all, _ = xbar_chart(data)
    x_ex, _ = xbar_chart(data, exclude=ex)
    keep = data[~ex]
    assert x_ex.estimate.center == pytest.approx(keep.mean())
    assert x_ex.estimate.sigma == pytest.approx(np.ptp(keep, axis=1).mean() / d2(5))
    assert np.array_equal(x_ex.statistics, x_all.statistics)
    with pytest.raises(SpcInputError, match="one flag per Phase I point"):
        xbar_chart(data, exclude=np.zeros(3, dtype=bool))


def test_xbar_needs_a_subgroup_of_two() -> None:
    with pytest.raises(SpcInputError, match="two or more"):
        estimate_xbar(np.array([[1.0], [2.0]]))


def test_imr_hand_derived() -> None:
    """y = [2,4,6,4,2,4,6,4]: mean 4, MR̄ = 2, σ̂ = 2/d2(2) = 1.7725;
    x limits 4 ± 3σ̂ = −1.3174 / 9.3174; MR centre d2(2)σ̂ = 2, UCL 2 + 3 d3(2) σ̂."""
    y = np.array([2.0, 4, 6, 4, 2, 4, 6, 4])
    x, mr = imr_chart(y)
    s = 2 / d2(2)
    assert x.estimate.sigma == pytest.approx(s, rel=1e-15)
    assert x.ucl[0] == pytest.approx(4 + 3 * s)
    assert x.lcl[0] == pytest.approx(4 - 3 * s)
    assert math.isnan(mr.statistics[0])
    assert mr.statistics[1:].tolist() == [2.0] * 7
    assert mr.center[0] == pytest.approx(2.0)
    assert mr.ucl[0] == pytest.approx(2 + 3 * d3(2) * s)
    assert mr.lcl[0] == 0.0  # 2 − 3·0.8525·1.7725 < 0, clipped
    # UCL/MR̄ is D4(2) = 1 + 3·d3(2)/d2(2) = 3.2665…, printed as 3.267 (Montgomery Appendix VI)
    assert round(mr.ucl[0] / 2.0, 3) == 3.267


def test_imr_sd_method() -> None:
    y = np.array([1.0, 5.0, 2.0, 8.0])
    est = estimate_imr(y, "sd")
    assert est.sigma == pytest.approx(np.std(y, ddof=1) / c4(4))


def test_imr_phase2_first_mr_uses_last_phase1_value() -> None:
    """contracts/analyze.md: the first Phase II moving range uses the last Phase I value."""
    x, mr = imr_chart(np.array([1.0, 2.0, 4.0]), np.array([7.0, 6.0]))
    assert mr.statistics[3] == 3.0 and mr.statistics[4] == 1.0
    assert x.estimate.sigma == pytest.approx(1.5 / d2(2))


def test_moving_ranges_skip_missing() -> None:
    """spc-semantics.md rule 6: the series is the plotted points only, so MR bridges a gap."""
    got = moving_ranges(np.array([1.0, NAN, 4.0, 3.0]))
    assert math.isnan(got[0]) and math.isnan(got[1])
    assert got[2:].tolist() == [3.0, 1.0]


def test_imr_exclusion_drops_moving_ranges_touching_excluded_points() -> None:
    y = np.array([1.0, 2.0, 100.0, 3.0, 4.0])
    ex = np.array([False, False, True, False, False])
    est = estimate_imr(y, exclude=ex)
    assert est.center == pytest.approx(2.5)
    assert est.sigma == pytest.approx(1.0 / d2(2))  # MRs 1 and 1 only


def test_imr_needs_two_values() -> None:
    with pytest.raises(SpcInputError, match="two values"):
        estimate_imr(np.array([1.0]))
    est = estimate_imr(np.array([1.0]), known=Known(sigma=2.0))
    assert est.sigma == 2.0


def test_constant_data_is_valid() -> None:
    x, mr = imr_chart(np.full(5, 3.0))
    assert x.estimate.sigma == 0.0 and x.ucl[0] == 3.0
    xb, r = xbar_chart(np.full((4, 3), 3.0))
    assert xb.estimate.sigma == 0.0 and r.ucl[0] == 0.0


finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(finite, min_size=2, max_size=6), min_size=2, max_size=12), st.floats(0.1, 5)
)
def test_properties_xbar(rows: list[list[float]], k: float) -> None:
    """LCL ≤ centre ≤ UCL, σ ≥ 0, R LCL ≥ 0; shifting data shifts the centre only."""
    width = max(len(r) for r in rows)
    data = np.array([r + [NAN] * (width - len(r)) for r in rows])
    x, r = xbar_chart(data, nsigmas=k)
    assert np.all(x.lcl <= x.center + 1e-9) and np.all(x.center <= x.ucl + 1e-9)
    assert np.all(r.lcl >= 0) and np.all(x.sigma >= 0)
    shifted, _ = xbar_chart(data + 10.0, nsigmas=k)
    assert shifted.estimate.center == pytest.approx(x.estimate.center + 10.0, abs=1e-6)
    assert shifted.estimate.sigma == pytest.approx(x.estimate.sigma, abs=1e-6)
