"""collector.recompute: the core that ``shopspc limits recompute`` and the HTTP API share."""

from __future__ import annotations

from typing import Any

import pytest

from collector.cliutil import UsageError
from collector.config import Characteristic
from collector.recompute import (
    Point,
    WindowError,
    build,
    effective_us,
    match,
    parse_exclusion,
    subgroups,
)

MIN = 60_000_000
T0 = 1_764_000_000_000_000


def _char(spec: dict[str, Any]) -> Characteristic:
    return Characteristic.model_validate(spec)


def _bore(**extra: Any) -> Characteristic:
    return _char(
        {
            "id": "bore",
            "site": "s",
            "area": "a",
            "line": "l",
            "station": "st",
            "chart": "imr",
            "value": {"static": 0},
            **extra,
        }
    )


def test_subgroups_close_like_the_gateway() -> None:
    """m consecutive parts; a close_on change or an elapsed window_s closes a subgroup early."""
    ch = _char(
        {
            "id": "gap",
            "site": "s",
            "area": "a",
            "line": "l",
            "station": "st",
            "chart": "xbar-r",
            "subgroup": {"size": 3, "close_on": ["operator"], "window_s": 600},
            "value": {"static": 0},
        }
    )
    ops = ["A", "A", "A", "A", "B", "B", "B", "B", "B", "B"]
    times = [0, 1, 2, 3, 4, 5, 20, 21, 22, 23]  # minutes: 4 → 20 passes window_s (10 min)
    points = [
        Point(t * MIN, float(i), f"S{i}", {"operator": op})
        for i, (op, t) in enumerate(zip(ops, times, strict=True))
    ]
    groups, left = subgroups(ch, points)
    assert [[p.serial for p in g] for g in groups] == [
        ["S0", "S1", "S2"],
        ["S3"],  # closed early by the operator change
        ["S4", "S5"],  # closed early: S6 comes after window_s
        ["S6", "S7", "S8"],
    ]
    assert left == 1  # S9: an open subgroup, not used
    assert [p.group for p in points] == [0, 0, 0, 1, 2, 2, 3, 3, 3, -1]


def test_exclusions_are_read_as_written() -> None:
    """index:N, serial:S, time:T and time:T1..T2, or unprefixed; each with its own reason."""
    assert parse_exclusion("index:3", "r", "o").index == 3
    auto = parse_exclusion("7=setup piece", "r", "o")
    assert (auto.kind, auto.index, auto.reason) == ("auto-index", 7, "setup piece")
    assert parse_exclusion("SN-1", "r", "o").kind == "serial"
    span = parse_exclusion("time:2025-11-24T16:00:00Z..2025-11-24T16:01:00Z", "r", "o")
    assert (span.kind, span.hi - span.lo) == ("time", MIN)
    for bad, said in [
        ("=why", "empty exclusion"),
        ("index:x", "not a non-negative integer"),
        ("time:yesterday", "not an RFC 3339 time"),
        ("time:2025-11-24T16:01:00Z..2025-11-24T16:00:00Z", "is empty"),
        ("serial:S1=", "empty reason"),
    ]:
        with pytest.raises(UsageError, match=said) as err:
            parse_exclusion(bad, "r", "--exclude x")
        assert str(err.value).startswith("--exclude x: ")


def test_every_exclusion_must_match_a_point() -> None:
    points = [Point(T0 + k, float(k), f"S{k}", group=k) for k in range(4)]
    hits = match([parse_exclusion("serial:S2=scrap", "r", "o")], points, 4)
    assert hits == {2: ["serial S2: scrap"]}
    with pytest.raises(UsageError, match="index 9 is outside the window's 4 points"):
        match([parse_exclusion("index:9", "r", "o")], points, 4)
    with pytest.raises(UsageError, match="serial S9 matches no measurement"):
        match([parse_exclusion("serial:S9", "r", "o")], points, 4)


def test_build_makes_the_record_and_refuses_in_the_callers_words() -> None:
    """The record names window, exclusions, user and reason; a refusal names the caller's
    own option (the command line's --min-points, the API's min_points)."""
    ch = _bore()
    points = [Point(T0 + k * MIN, 10.0 + (k % 3) * 0.1, f"S{k}") for k in range(30)]

    def window(**over: Any) -> Any:
        """30 minutes of points, index 4 excluded."""
        return build(
            ch,
            points,
            "series.db",
            [parse_exclusion("index:4=probe slipped", "r", "o")],
            **{
                "since_us": T0,
                "until_us": T0 + 30 * MIN,
                "min_points": 20,
                "user": "li",
                "reason": "new tool",
                "now_us": T0 + 31 * MIN,
                **over,
            },
        )

    made = window()
    rec = made.record
    assert (made.measurements, made.subgroups, made.usable, made.left_over) == (30, 30, 29, 0)
    assert rec.created_by == "li" and rec.reason == "new tool" and rec.n_points == 30
    assert rec.window == ("2025-11-24T16:00:00Z", "2025-11-24T16:30:00Z")
    assert [(e.index, e.reason) for e in rec.exclusions] == [(4, "index 4: probe slipped")]
    assert made.counts("series.db")["source"] == "series.db"
    for name in ("--min-points", "min_points"):
        with pytest.raises(WindowError, match=rf"29 usable; 40 needed \({name}\)"):
            window(min_points=40, min_points_name=name)
    flat = [Point(T0 + k, 10.0, None) for k in range(30)]
    with pytest.raises(WindowError, match="no variation"):
        build(
            ch, flat, "x.csv", [], since_us=None, until_us=None, min_points=2, user="u",
            reason="r", now_us=T0,
        )  # fmt: skip


def test_a_past_effective_time_is_refused_in_the_callers_words() -> None:
    now = T0 + 60 * MIN
    assert effective_us(None, now, False) == now
    assert effective_us("-2h", now, True) == now - 120 * MIN
    with pytest.raises(UsageError, match=r"^--effective .*--allow-backdate to do it anyway\)$"):
        effective_us("-2h", now, False)
    with pytest.raises(UsageError, match=r"^effective .*only `shopspc limits"):
        effective_us("-2h", now, False, name="effective", override="only `shopspc limits ...`")
