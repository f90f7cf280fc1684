"""Planted patterns of the simulated stations: deterministic, chunk-invariant, with the planted property."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.patterns import KINDS, Pattern, PatternStream, series

N = 4000


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_series_other_seed_other_series(kind: str) -> None:
    pat = Pattern(kind=kind, nominal=10.0, sigma=0.5)  # type: ignore[arg-type]
    np.testing.assert_array_equal(series(pat, 200, 7), series(pat, 200, 7))
    assert not np.array_equal(series(pat, 200, 7), series(pat, 200, 8))


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    cuts=st.lists(st.integers(0, 60), min_size=1, max_size=6),
    seed=st.integers(0, 2**32 - 1),
)
def test_chunks_equal_one_take(kind: str, cuts: list[int], seed: int) -> None:
    pat = Pattern(kind=kind, start=17)  # type: ignore[arg-type]
    stream = PatternStream(pat, seed)
    parts = [stream.take(n) for n in cuts]
    np.testing.assert_array_equal(np.concatenate(parts), series(pat, sum(cuts), seed))


def test_in_control_is_noise_around_nominal() -> None:
    x = series(Pattern("in_control", nominal=25.0, sigma=0.01), N, 1)
    assert abs(x.mean() - 25.0) < 4 * 0.01 / np.sqrt(N)
    assert 0.009 < x.std() < 0.011


def test_shift_moves_the_mean_by_k_sigma_after_start() -> None:
    pat = Pattern("shift", nominal=5.0, sigma=0.2, start=100, k=2.0)
    x = series(pat, 100 + N, 3)
    before, after = x[:100], x[100:]
    assert abs(before.mean() - 5.0) < 4 * 0.2 / np.sqrt(100)
    assert abs(after.mean() - (5.0 + 2.0 * 0.2)) < 4 * 0.2 / np.sqrt(N)


def test_trend_has_the_planted_slope() -> None:
    pat = Pattern("trend", nominal=0.0, sigma=1.0, start=50, slope=0.05)
    x = series(pat, 50 + N, 4)
    i = np.arange(N)
    slope, _ = np.polyfit(i, x[50:], 1)
    assert slope == pytest.approx(0.05, abs=0.002)
    flat, _ = np.polyfit(np.arange(50), x[:50], 1)
    assert abs(flat) < 0.1


def test_mixture_alternates_two_populations_k_sigma_apart() -> None:
    pat = Pattern("mixture", nominal=1.0, sigma=0.1, start=0, k=4.0)
    x = series(pat, N, 5)
    even, odd = x[0::2], x[1::2]
    assert even.mean() - odd.mean() == pytest.approx(0.4, abs=0.02)
    assert x.mean() == pytest.approx(1.0, abs=0.02)
    assert even.std() == pytest.approx(0.1, rel=0.1)


def test_outliers_are_rare_and_k_sigma_off() -> None:
    pat = Pattern("outliers", nominal=0.0, sigma=1.0, start=10, k=8.0, p=0.05)
    x = series(pat, 10 + N, 6)
    assert not np.any(np.abs(x[:10]) > 5)
    far = np.abs(x[10:]) > 5
    assert 0.03 < far.mean() < 0.07
    assert np.any(x[10:] > 5) and np.any(x[10:] < -5)


@pytest.mark.parametrize("kwargs", [{"kind": "wobble"}, {"sigma": 0.0}, {"start": -1}, {"p": 1.5}])
def test_bad_patterns_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Pattern(**kwargs)
