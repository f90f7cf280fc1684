"""Property: the store keeps InfluxDB's semantics, so writing any batch twice equals writing it once."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.influxdb.lineprotocol import encode_line
from connectors.localstore.store import SeriesStore

names = st.sampled_from(["measurement", "spc", "alarm", "gateway"])
tag_values = st.sampled_from(["bore", "depth", "a b", "x,y=z", "\\", 'q"'])
field_values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
    st.text(max_size=6),
)
points = st.tuples(
    names,
    st.dictionaries(st.sampled_from(["characteristic", "chart", "line"]), tag_values, max_size=3),
    st.dictionaries(st.sampled_from(["value", "n", "quality", "ucl"]), field_values, min_size=1),
    st.integers(min_value=0, max_value=5),  # few distinct times: collisions are the point
)
batches = st.lists(points, max_size=25)


def _lines(batch: list[tuple[str, dict, dict, int]]) -> list[str]:
    out = []
    for meas, tags, fields, t in batch:
        line = encode_line(meas, tags, fields, t)
        assert line is not None
        out.append(line)
    return out


def _dump(store: SeriesStore) -> dict[tuple[str, str, int], dict[str, Any]]:
    out = {}
    for meas in store.measurements():
        for row in store.query(meas, limit=None):
            out[(meas, tuple(sorted(row.tags.items())), row.time_us)] = row.fields
    return out


def _model(batches: list[list[tuple[str, dict, dict, int]]]) -> dict:
    """InfluxDB: one point per series key and time; a later write's fields win, others are kept."""
    out: dict = {}
    for batch in batches:
        for meas, tags, fields, t in batch:
            key = (meas, tuple(sorted(tags.items())), t)
            out.setdefault(key, {}).update(fields)
    return out


@settings(max_examples=60, deadline=None)
@given(first=batches, second=batches)
def test_writing_a_batch_twice_equals_writing_it_once(first, second) -> None:
    with (
        tempfile.TemporaryDirectory() as tmp,
        SeriesStore(Path(tmp) / "once.sqlite") as once,
        SeriesStore(Path(tmp) / "twice.sqlite") as twice,
    ):
        once.write_lines(_lines(first))
        once.write_lines(_lines(second))
        for batch in (first, first, second, second):
            twice.write_lines(_lines(batch))
        assert _dump(once) == _dump(twice) == _model([first, second])
        assert once.stats().points == len(_model([first, second]))


@settings(max_examples=40, deadline=None)
@given(
    batch=batches,
    measurement=names,
    want=st.dictionaries(st.sampled_from(["characteristic", "chart"]), tag_values, max_size=2),
    since=st.one_of(st.none(), st.integers(min_value=0, max_value=5)),
    until=st.one_of(st.none(), st.integers(min_value=0, max_value=6)),
    limit=st.one_of(st.none(), st.integers(min_value=0, max_value=30)),
    newest_first=st.booleans(),
)
def test_query_equals_filtering_and_sorting_the_model(
    batch, measurement, want, since, until, limit, newest_first
) -> None:
    with tempfile.TemporaryDirectory() as tmp, SeriesStore(Path(tmp) / "s.sqlite") as store:
        store.write_lines(_lines(batch))
        got = store.query(
            measurement,
            tags=want,
            since_us=since,
            until_us=until,
            limit=limit,
            newest_first=newest_first,
        )
        expected = [
            (t, dict(tags), fields)
            for (meas, tags, t), fields in _model([batch]).items()
            if meas == measurement
            and all(dict(tags).get(k) == v for k, v in want.items())
            and (since is None or t >= since)
            and (until is None or t < until)
        ]
        times = sorted((t for t, _, _ in expected), reverse=newest_first)
        assert [r.time_us for r in got] == times[:limit]
        rows = [(r.time_us, r.tags, r.fields) for r in got]
        assert all(row in expected for row in rows)
        assert len({(t, tuple(sorted(tags.items()))) for t, tags, _ in rows}) == len(rows)
