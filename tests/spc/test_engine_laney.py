"""Laney p′/u′ in the streaming engine equal the batch charts bit for bit (spc-semantics.md,
"Streaming equals batch"): σ_z travels in the frozen record's sigma."""

from __future__ import annotations

import numpy as np
import pytest

from spc.analyze import analyze_json
from spc.engine import Engine, Spec
from spc.errors import SpcInputError
from spc.limits import LimitsRecord
from spc.rules import violation_indices


def _data(chart: str, seed: int) -> tuple[list[float], list[float]]:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(800, 1200, size=60).astype(float)
    # overdispersed: the rate itself wanders between points
    rate = np.clip(rng.normal(0.05, 0.012, size=60), 0.001, 0.5)
    counts = rng.binomial(sizes.astype(int), rate).astype(float)
    if chart == "u":
        sizes = sizes / 100.0  # inspection areas, not integers
    return counts.tolist(), sizes.tolist()


@pytest.mark.parametrize("chart", ["p", "u"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_laney_stream_equals_analyze(chart: str, seed: int) -> None:
    counts, sizes = _data(chart, seed)
    body = {
        "chart": chart,
        "laney": True,
        "data": counts[:40],
        "sizes": sizes[:40],
        "phase2": {"data": counts[40:], "sizes": sizes[40:]},
    }
    batch = analyze_json(body)
    record = LimitsRecord.from_json(batch["limits"])
    assert record.chart == f"{chart}-laney"
    assert record.sigma > 1.0  # overdispersion was planted
    engine = Engine([Spec.from_limits(chart, record)])
    got = engine.process(np.zeros(60, dtype=np.intp), np.array(counts), np.array(sizes))
    series = batch["charts"][0]
    for ours, theirs in (
        (got.statistic, "statistics"),
        (got.center, "center"),
        (got.lcl, "lcl"),
        (got.ucl, "ucl"),
        (got.sigma, "sigma"),
    ):
        assert ours.tolist() == series[theirs], theirs
    codes = list(series["violations"])
    assert violation_indices(got.mask, codes) == series["violations"]


def test_plain_p_record_keeps_binomial_limits() -> None:
    """A p record (σ NaN) gives the ordinary p chart; a Laney σ_z of 1 gives the same limits."""
    counts, sizes = _data("p", 7)
    plain = Engine([Spec(chart="p", center=0.05)])
    laney1 = Engine([Spec(chart="p", center=0.05, sigma=1.0)])
    a = plain.process(np.zeros(60, dtype=np.intp), np.array(counts), np.array(sizes))
    b = laney1.process(np.zeros(60, dtype=np.intp), np.array(counts), np.array(sizes))
    assert a.ucl.tolist() == b.ucl.tolist()
    assert a.sigma.tolist() == b.sigma.tolist()


def test_laney_sigma_must_not_be_negative() -> None:
    with pytest.raises(SpcInputError, match="sigma"):
        Engine([Spec(chart="u", center=1.0, sigma=-0.5)])
    with pytest.raises(SpcInputError, match="cannot judge"):
        Engine([Spec.from_limits("np", LimitsRecord("p-laney", 0.05, 1.3, "laney", 40))])
