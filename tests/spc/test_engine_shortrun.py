"""Short-run charts in the streaming engine: DNOM and Z-MR are I-MR on values transformed
per part with the frozen Phase I table, so the engine runs them as ``imr`` on
``deviations`` / ``standardize`` and must equal the batch short-run charts bit for bit."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from spc.charts.shortrun import (
    deviations,
    dnom_chart,
    estimate_dnom,
    estimate_zmr,
    standardize,
    zmr_chart,
)
from spc.engine import Engine, Points, Spec
from spc.rules import evaluate, resolve_rules


def _parts(seed: int) -> tuple[np.ndarray, list[str], dict[str, float]]:
    rng = np.random.default_rng(seed)
    nominal = {"A-100": 25.0, "B-200": 40.0, "C-300": 12.5}
    runs = rng.choice(list(nominal), size=12)
    parts: list[str] = []
    values: list[float] = []
    for part in runs:
        for _ in range(int(rng.integers(3, 9))):
            parts.append(str(part))
            scale = {"A-100": 0.01, "B-200": 0.03, "C-300": 0.005}[str(part)]
            values.append(nominal[str(part)] + rng.normal(0, scale))
    return np.array(values), parts, nominal


def _check(engine_points, x, mr) -> None:
    assert engine_points.statistic.tolist() == x.statistics.tolist()
    assert engine_points.ucl.tolist() == x.ucl.tolist()
    assert engine_points.lcl.tolist() == x.lcl.tolist()
    assert np.array_equal(engine_points.disp_statistic, mr.statistics, equal_nan=True)
    assert engine_points.disp_ucl.tolist() == mr.ucl.tolist()
    nelson = resolve_rules("nelson")
    expected = evaluate(x.statistics, x.center, x.sigma, x.lcl, x.ucl, nelson)
    assert engine_points.mask.tolist() == expected.tolist()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_dnom_streams_as_imr_on_deviations(seed: int) -> None:
    values, parts, nominal = _parts(seed)
    n1 = len(values) // 2
    est = estimate_dnom(values[:n1], parts[:n1], nominal)
    x, mr = dnom_chart(values[:n1], parts[:n1], nominal, values[n1:], parts[n1:])
    engine = Engine([Spec(chart="imr", center=est.center, sigma=est.sigma)])
    dev = deviations(values, parts, nominal)
    got = engine.process(np.zeros(dev.size, dtype=np.intp), dev)
    _check(got, x, mr)


@pytest.mark.parametrize("method", ["by-parts", "constant"])
@pytest.mark.parametrize("seed", [1, 2])
def test_zmr_streams_as_imr_on_standardized_values(seed: int, method: str) -> None:
    values, parts, _ = _parts(seed)
    n1 = len(values) // 2
    est = estimate_zmr(values[:n1], parts[:n1], sigma_method=method)
    x, mr = zmr_chart(values[:n1], parts[:n1], values[n1:], parts[n1:], sigma_method=method)
    engine = Engine([Spec(chart="imr", center=0.0, sigma=1.0)])
    z = standardize(values, parts, est)
    # fed in uneven micro-batches: streaming equals batch
    cuts = [0, 3, 4, 11, z.size]
    points = [
        engine.process(np.zeros(b - a, dtype=np.intp), z[a:b]) for a, b in itertools.pairwise(cuts)
    ]
    _check(Points.concat(points), x, mr)
