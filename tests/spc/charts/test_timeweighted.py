"""EWMA and CUSUM (spc/charts/timeweighted.py; spc-semantics.md EWMA, CUSUM)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spc.charts.timeweighted import CusumCarry, EwmaCarry, cusum_series, ewma_factor, ewma_series
from spc.series import Estimate

EST = Estimate(center=10.0, sigma=1.0, method="known")


def test_ewma_hand_derived() -> None:
    """z0 = centre = 10, λ = 0.2: x = 11 → z1 = 10.2; x = 9 → z2 = 0.2·9 + 0.8·10.2 = 9.96.
    σ_1 = √(0.2/1.8·(1 − 0.8²)) = 0.2; σ_2 = √(0.2/1.8·(1 − 0.8⁴)) = 0.256125…"""
    s, carry = ewma_series(np.array([11.0, 9.0]), np.array([1.0, 1.0]), EST, lam=0.2, L=3.0)
    assert s.extra["ewma"].tolist() == pytest.approx([10.2, 9.96])
    assert s.sigma[0] == pytest.approx(0.2)
    assert s.sigma[1] == pytest.approx(math.sqrt(0.2 / 1.8 * (1 - 0.8**4)))
    assert s.ucl[1] == pytest.approx(10 + 3 * s.sigma[1])
    assert carry == EwmaCarry(z=pytest.approx(9.96), t=2)
    assert s.statistics.tolist() == [11.0, 9.0]


def test_ewma_asymptotic_factor_and_subgroup_size() -> None:
    """For large t the factor tends to √(λ/(2−λ)); σ_t scales with 1/√n_t (contracts/analyze.md)."""
    assert ewma_factor(0.2, 10_000) == pytest.approx(math.sqrt(0.2 / 1.8))
    s, _ = ewma_series(np.array([10.0, 10.0]), np.array([4.0, 1.0]), EST, lam=0.2)
    assert s.sigma[0] == pytest.approx(0.2 / 2)
    assert s.sigma[1] == pytest.approx(math.sqrt(0.2 / 1.8 * (1 - 0.8**4)))


def test_ewma_lambda_one_is_shewhart() -> None:
    """λ = 1: the EWMA is the statistic itself and σ_t = σ/√n (factor 1)."""
    x = np.array([9.0, 12.0, 10.5])
    s, _ = ewma_series(x, np.ones(3), EST, lam=1.0)
    assert s.extra["ewma"].tolist() == x.tolist()
    assert s.sigma.tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_ewma_missing_points_skipped() -> None:
    """A point with n = 0 is skipped: z carries over it, t does not advance, arrays NaN."""
    s, carry = ewma_series(np.array([11.0, math.nan, 11.0]), np.array([1.0, 0.0, 1.0]), EST)
    assert math.isnan(s.extra["ewma"][1]) and math.isnan(s.ucl[1])
    assert s.extra["ewma"][2] == pytest.approx(0.2 * 11 + 0.8 * 10.2)
    assert carry.t == 2


def test_cusum_hand_derived() -> None:
    """μ0 = 10, σ = 1, k = 0.5, h = 5: z = 1, 2, −3 → C⁺ = 0.5, 2.0, 0.0; C⁻ = 0, 0, −2.5."""
    s, carry = cusum_series(np.array([11.0, 12.0, 7.0]), np.ones(3), EST, k=0.5, h=5.0)
    assert s.extra["cusum_upper"].tolist() == [0.5, 2.0, 0.0]
    assert s.extra["cusum_lower"].tolist() == [0.0, 0.0, -2.5]
    assert carry == CusumCarry(upper=0.0, lower=-2.5)
    assert s.ucl.tolist() == [5.0] * 3 and s.lcl.tolist() == [-5.0] * 3


def test_cusum_standardizes_by_subgroup_size() -> None:
    """z = (x̄ − μ0)/(σ/√n): x̄ = 10.5 with n = 4 gives z = 1."""
    s, _ = cusum_series(np.array([10.5]), np.array([4.0]), EST, k=0.0)
    assert s.extra["cusum_upper"][0] == pytest.approx(1.0)


def test_cusum_head_start_and_reset() -> None:
    """FIR: C⁺0 = +H, C⁻0 = −H. reset=True restarts at the head start after a signal; no reset otherwise."""
    x = np.array([13.0, 13.0, 13.0, 10.0])
    s, _ = cusum_series(x, np.ones(4), EST, k=0.5, h=4.0, head_start=2.0)
    assert s.extra["cusum_upper"].tolist() == [4.5, 7.0, 9.5, 9.0]
    assert s.extra["cusum_lower"][0] == pytest.approx(min(0.0, -2.0 + 3 + 0.5))
    r, _ = cusum_series(x, np.ones(4), EST, k=0.5, h=4.0, head_start=2.0, reset=True)
    assert r.extra["cusum_upper"].tolist() == [4.5, 4.5, 4.5, 1.5]


def test_cusum_sigma_zero() -> None:
    """Constant data (σ̂ = 0): any deviation is infinitely far; no deviation adds nothing."""
    est = Estimate(center=1.0, sigma=0.0, method="mr")
    s, _ = cusum_series(np.array([1.0, 2.0]), np.ones(2), est)
    assert s.extra["cusum_upper"][0] == 0.0 and math.isinf(s.extra["cusum_upper"][1])


finite = st.floats(min_value=-100, max_value=100, allow_nan=False)


@settings(max_examples=80, deadline=None)
@given(st.lists(finite, min_size=1, max_size=40), st.integers(0, 40), st.floats(0.05, 1.0))
def test_split_equals_whole(xs: list[float], cut: int, lam: float) -> None:
    """Streaming equals batch: feeding the series in two calls with the carry gives identical values."""
    x = np.array(xs)
    n = np.ones(len(x))
    cut = min(cut, len(x))
    whole, c_all = ewma_series(x, n, EST, lam=lam)
    a, c1 = ewma_series(x[:cut], n[:cut], EST, lam=lam)
    b, c2 = ewma_series(x[cut:], n[cut:], EST, lam=lam, carry=c1)
    assert np.array_equal(
        np.concatenate([a.extra["ewma"], b.extra["ewma"]]), whole.extra["ewma"], equal_nan=True
    )
    assert np.array_equal(np.concatenate([a.ucl, b.ucl]), whole.ucl, equal_nan=True)
    assert c2 == c_all
    cw, cc = cusum_series(x, n, EST, head_start=1.0)
    ca, k1 = cusum_series(x[:cut], n[:cut], EST, head_start=1.0)
    cb, k2 = cusum_series(x[cut:], n[cut:], EST, head_start=1.0, carry=k1)
    assert np.array_equal(
        np.concatenate([ca.extra["cusum_upper"], cb.extra["cusum_upper"]]), cw.extra["cusum_upper"]
    )
    assert k2 == cc
    assert np.all(cw.extra["cusum_upper"] >= 0) and np.all(cw.extra["cusum_lower"] <= 0)
