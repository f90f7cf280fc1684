"""d2, d3, c4 at full precision (spc-semantics.md, "Constants")."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, special

from spc.constants import c4, c4_array, d2, d2_array, d3, d3_array

# ASTM STP 15D / Montgomery, Introduction to SQC, 6th ed., Appendix Table VI (3-4 decimals).
TABLE = {
    2: (1.128, 0.853, 0.7979),
    3: (1.693, 0.888, 0.8862),
    4: (2.059, 0.880, 0.9213),
    5: (2.326, 0.864, 0.9400),
    6: (2.534, 0.848, 0.9515),
    7: (2.704, 0.833, 0.9594),
    8: (2.847, 0.820, 0.9650),
    9: (2.970, 0.808, 0.9693),
    10: (3.078, 0.797, 0.9727),
    15: (3.472, 0.756, 0.9823),
    20: (3.735, 0.729, 0.9869),
    25: (3.931, 0.708, 0.9896),
}


@pytest.mark.parametrize("n", sorted(TABLE))
def test_agrees_with_printed_table(n: int) -> None:
    """Rounded to the table's decimals, the computed constants equal the printed ones."""
    t_d2, t_d3, t_c4 = TABLE[n]
    assert round(d2(n), 3) == t_d2
    assert round(d3(n), 3) == t_d3
    assert round(c4(n), 4) == t_c4


def test_closed_forms() -> None:
    """Closed forms: d2(2) = 2/√π, d2(3) = 3/√π, d3(2) = √(2 − 4/π), c4(2) = √(2/π).

    For n = 2 the range is √2·|Z|; E|Z| = √(2/π). d2(3) = 3/√π is the known
    closed form for the expected range of three normals.
    """
    assert d2(2) == pytest.approx(2 / math.sqrt(math.pi), rel=1e-15)
    assert d2(3) == pytest.approx(3 / math.sqrt(math.pi), rel=1e-13)
    assert d3(2) == pytest.approx(math.sqrt(2 - 4 / math.pi), rel=1e-15)
    assert c4(2) == pytest.approx(math.sqrt(2 / math.pi), rel=1e-15)


@pytest.mark.parametrize("n", [4, 7, 12])
def test_d2_d3_against_adaptive_quadrature_of_range_density(n: int) -> None:
    """Independent check: E[W] and E[W²] from the range density by adaptive quadrature.

    f_W(w) = n(n−1) ∫ φ(x) φ(x+w) [Φ(x+w) − Φ(x)]^(n−2) dx.
    """

    def density(w: float) -> float:
        def inner(x: float) -> float:
            return special.ndtr(x + w) - special.ndtr(x)

        phi = lambda t: math.exp(-t * t / 2) / math.sqrt(2 * math.pi)  # noqa: E731
        val, _ = integrate.quad(
            lambda x: phi(x) * phi(x + w) * inner(x) ** (n - 2), -10, 10, limit=200
        )
        return n * (n - 1) * val

    m1, _ = integrate.quad(lambda w: w * density(w), 0, 14, limit=200)
    m2, _ = integrate.quad(lambda w: w * w * density(w), 0, 14, limit=200)
    assert d2(n) == pytest.approx(m1, rel=1e-9)
    assert d3(n) == pytest.approx(math.sqrt(m2 - m1 * m1), rel=1e-8)


def test_c4_large_n_uses_log_gamma() -> None:
    """c4(n) → 1 − 1/(4n) for large n (series expansion); no overflow at n = 10⁶."""
    for n in (1000, 10**6):
        assert c4(n) == pytest.approx(1 - 1 / (4 * n) - 7 / (32 * n * n), rel=1e-9)


def test_n1_is_undefined_and_bad_n_rejected() -> None:
    """n = 1 has no range or SD: NaN. n = 0, negative or fractional n is an error."""
    assert math.isnan(d2(1)) and math.isnan(d3(1)) and math.isnan(c4(1))
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="positive integer"):
            d2(bad)  # type: ignore[arg-type]


def test_array_forms() -> None:
    """The *_array helpers map each n (NaN below 2)."""
    n = np.array([0, 1, 2, 5, 5, 3])
    got = d2_array(n)
    assert np.isnan(got[:2]).all()
    assert got[2:].tolist() == [d2(2), d2(5), d2(5), d2(3)]
    assert d3_array(np.array([5]))[0] == d3(5)
    assert c4_array(np.array([5]))[0] == c4(5)


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=2, max_value=60))
def test_monotone(n: int) -> None:
    """d2 grows with n, d3 shrinks for n ≥ 3, c4 rises towards 1."""
    assert d2(n + 1) > d2(n)
    assert c4(n) < c4(n + 1) < 1
    if n >= 3:
        assert d3(n + 1) < d3(n)
