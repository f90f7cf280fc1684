"""Frozen limits records (spc/limits.py; CONVENTIONS.md habit 4)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from spc.limits import Exclusion, LimitsRecord


def _rec(**kw) -> LimitsRecord:
    base = dict(
        chart="xbar-r",
        center=74.001,
        sigma=0.0098,
        method="rbar",
        n_points=25,
        window=("2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z"),
        exclusions=(Exclusion(13, "gauge dropped"),),
        params=(("nsigmas", 3.0),),
    )
    base.update(kw)
    return LimitsRecord(**base)


def test_id_is_deterministic_and_content_based() -> None:
    """The same estimate always has the same id; who/when/why do not change it."""
    a = _rec()
    b = _rec().with_provenance("qe.li", "2026-11-26T08:00:00Z", "weekly review")
    assert a.id == b.id and a.id.startswith("L-") and len(a.id) == 18
    assert _rec(sigma=0.0099).id != a.id
    assert _rec(exclusions=()).id != a.id


def test_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        _rec().center = 1.0  # type: ignore[misc]


def test_json_round_trip_and_tamper_detection() -> None:
    rec = _rec().with_provenance("qe.li", "2026-11-26T08:00:00Z", "initial study")
    text = json.dumps(rec.to_json())
    back = LimitsRecord.from_json(json.loads(text))
    assert back == rec
    assert back.estimate.center == 74.001 and back.estimate.method == "rbar"
    tampered = json.loads(text)
    tampered["center"] = 75.0
    with pytest.raises(ValueError, match="does not match"):
        LimitsRecord.from_json(tampered)


def test_nan_sigma_serialises_as_null() -> None:
    rec = _rec(chart="p", center=0.05, sigma=math.nan, method="pbar")
    d = rec.to_json()
    assert d["sigma"] is None
    assert math.isnan(LimitsRecord.from_json(d).sigma)
    assert LimitsRecord.from_json(d).id == rec.id
