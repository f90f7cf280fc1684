"""The SQLite store on real files: round trip of the contract, queries, upsert, retention, size bound."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from pathlib import Path

import pytest

from connectors.base import ConnectorError
from connectors.influxdb.lineprotocol import gateway_line, spc_line
from connectors.localstore.parse import parse_line
from connectors.localstore.store import SeriesStore, StoreFullError, iso_us
from tests.connectors.localstore.helpers import T0, contract_points, encode

DAY_US = 86_400_000_000


def spc(characteristic: str, time_us: int, statistic: float, **kw) -> str:
    line = spc_line(
        gateway="gw",
        line="L1",
        station="S1",
        characteristic=characteristic,
        chart=kw.pop("chart", "imr"),
        time_us=time_us,
        statistic=statistic,
        **kw,
    )
    assert line is not None
    return line


@pytest.fixture
def store(tmp_path: Path):
    with SeriesStore(tmp_path / "series.sqlite", retention_days=30) as s:
        yield s


def test_four_measurements_round_trip(store: SeriesStore) -> None:
    points = contract_points()
    result = store.write_lines([encode(p) for p in points])
    assert (result.accepted, result.points, result.errors) == (4, 4, ())
    for p in points:
        rows = store.query(p["measurement"])
        assert len(rows) == 1
        assert rows[0].time_us == p["time_us"]
        assert rows[0].tags == p["tags"]
        assert rows[0].fields == p["fields"]
        assert {k: type(v) for k, v in rows[0].fields.items()} == {
            k: type(v) for k, v in p["fields"].items()
        }
    assert store.measurements() == ["alarm", "gateway", "measurement", "spc"]


def test_query_filters_range_limit_order(store: SeriesStore) -> None:
    lines = [
        spc(c, T0 + i, float(i), chart=ch)
        for i in range(10)
        for c in ("bore", "depth")
        for ch in ("xbar", "r")
    ]
    store.write_lines(lines)
    rows = store.query("spc", tags={"characteristic": "bore"}, limit=None)
    assert len(rows) == 20
    assert [r.time_us for r in rows] == sorted(r.time_us for r in rows)
    assert {r.tags["chart"] for r in rows} == {"xbar", "r"}
    rows = store.query(
        "spc", tags={"characteristic": "bore", "chart": "r"}, since_us=T0 + 3, until_us=T0 + 7
    )
    assert [r.time_us for r in rows] == [T0 + 3, T0 + 4, T0 + 5, T0 + 6]
    assert [r.fields["statistic"] for r in rows] == [3.0, 4.0, 5.0, 6.0]
    rows = store.query(
        "spc", tags={"characteristic": "depth", "chart": "xbar"}, limit=3, newest_first=True
    )
    assert [r.time_us for r in rows] == [T0 + 9, T0 + 8, T0 + 7]
    assert store.query("spc", tags={"chart": "r"}, limit=None).__len__() == 20
    rows = store.query("spc", tags={"characteristic": "bore"}, limit=3, newest_first=True)
    assert [(r.time_us, r.tags["chart"]) for r in rows] == [
        (T0 + 9, "r"),
        (T0 + 9, "xbar"),
        (T0 + 8, "r"),
    ]
    rows = store.query("spc", since_us=T0 + 9, limit=None)
    assert [(r.tags["characteristic"], r.tags["chart"]) for r in rows] == [
        ("bore", "xbar"),
        ("bore", "r"),
        ("depth", "xbar"),
        ("depth", "r"),
    ]  # the same time: in series order (first written first)
    assert store.query("spc", tags={"characteristic": "nope"}) == []
    assert store.query("alarm") == []
    assert store.query("spc", limit=0) == []
    with pytest.raises(ValueError, match="limit"):
        store.query("spc", limit=-1)


def test_same_series_and_time_merges_fields_like_influxdb(store: SeriesStore) -> None:
    store.write_lines([spc("bore", T0, 1.0, center=0.5)])
    store.write_lines([spc("bore", T0, 2.0, ucl=3.0)])
    # tag order in the line does not matter: the series key is canonical
    store.write_lines(
        ["spc,station=S1,line=L1,gateway=gw,chart=imr,characteristic=bore lcl=-1.0 " + str(T0)]
    )
    rows = store.query("spc")
    assert len(rows) == 1
    assert rows[0].fields == {
        "statistic": 2.0,
        "center": 0.5,
        "ucl": 3.0,
        "lcl": -1.0,
        "violations": "",
    }
    assert store.stats().points == 1


def test_replayed_batch_is_not_duplicated(store: SeriesStore) -> None:
    batch = [encode(p) for t in range(5) for p in contract_points(T0 + 10 * t)]
    for _ in range(3):
        store.write_lines(batch)
    stats = store.stats()
    assert stats.points == 20
    assert stats.points_by_measurement == {"alarm": 5, "gateway": 5, "measurement": 5, "spc": 5}
    assert stats.series == 4
    assert (stats.oldest_us, stats.newest_us) == (T0, T0 + 43)


def test_malformed_items_refused_rest_written(store: SeriesStore) -> None:
    good = spc("bore", T0, 1.0)
    result = store.write_lines(
        [good, "spc v=1", good + "\n" + "broken", b"\xff", spc("bore", T0 + 1, 2.0)]
    )
    assert (result.accepted, result.points) == (2, 2)
    assert [(e.index, e.line) for e in result.errors] == [
        (1, "spc v=1"),
        (2, good + "\nbroken"),
        (3, "\ufffd"),
    ]
    assert "no timestamp" in result.errors[0].message
    assert result.errors[1].message.startswith("column 7: line 2: ")
    assert len(store.query("spc")) == 2


def test_retention_prune(tmp_path: Path) -> None:
    with SeriesStore(tmp_path / "s.sqlite", retention_days=2) as store:
        store.write_lines(
            [spc("old", T0, 1.0), spc("bore", T0, 1.0), spc("bore", T0 + 3 * DAY_US, 2.0)]
        )
        assert store.prune(T0 + 2 * DAY_US).points == 0  # exactly at the cutoff: kept
        result = store.prune(T0 + 4 * DAY_US)
        assert (result.points, result.series, result.cutoff_us) == (2, 1, T0 + 2 * DAY_US)
        assert [r.time_us for r in store.query("spc", limit=None)] == [T0 + 3 * DAY_US]
        # series ids forgotten by prune are not reused stale: new points land in a live series
        store.write_lines([spc("old", T0 + 5 * DAY_US, 3.0)])
        assert [
            r.fields["statistic"] for r in store.query("spc", tags={"characteristic": "old"})
        ] == [3.0]
    with SeriesStore(tmp_path / "k.sqlite") as keep:
        keep.write_lines([spc("bore", 0, 1.0)])
        assert keep.prune(T0).points == 0
        assert len(keep.query("spc")) == 1


def test_size_bound_refuses_whole_batch_then_prune_makes_room(tmp_path: Path) -> None:
    store = SeriesStore(tmp_path / "small.sqlite", retention_days=1, max_size_bytes=128 * 1024)
    try:
        t = T0
        written = 0
        error = None
        for _ in range(200):  # bounded: 128 KiB fill up long before
            batch = [spc(f"c{i % 7}", t + i, float(i), violations="N1,N2,N3") for i in range(200)]
            try:
                store.write_lines(batch)
            except StoreFullError as exc:
                error = exc
                break
            written += len(batch)
            t += 200
        assert error is not None and written > 0
        assert error.retryable
        assert "full" in error.message and "max_size_mb" in error.message
        assert store.stats().points == written  # nothing of the refused batch
        assert store.stats().size_bytes <= 128 * 1024
        store.prune(t + 2 * DAY_US)  # everything is older than a day
        assert store.stats().points == 0
        store.write_lines(batch)
        assert store.stats().points == len(batch)
        assert store.stats().size_bytes <= 128 * 1024
    finally:
        store.close()


def test_real_file_reopened_after_close_and_read_while_open(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "series.sqlite"
    lines = [encode(p) for p in contract_points()]
    writer = SeriesStore(path)
    writer.write_lines(lines[:2])
    with SeriesStore(path, readonly=True) as reader:  # a second connection sees the commit (WAL)
        assert len(reader.query("measurement")) == 1
        with pytest.raises(ConnectorError, match="read-only"):
            reader.write_lines(lines)
    writer.write_lines(lines[2:])
    writer.close()
    writer.close()  # idempotent
    with SeriesStore(path) as again:
        assert again.stats().points == 4
        again.write_lines(lines)  # the series cache is rebuilt from the file
        assert again.stats().series == 4
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_open_errors_are_not_retryable(tmp_path: Path) -> None:
    with pytest.raises(ConnectorError, match="no store") as e:
        SeriesStore(tmp_path / "missing.sqlite", readonly=True)
    assert not e.value.retryable
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(ConnectorError) as e:
        SeriesStore(junk)
    assert not e.value.retryable
    with pytest.raises(ConnectorError) as e:
        SeriesStore(tmp_path)  # a directory
    assert not e.value.retryable
    newer = tmp_path / "newer.sqlite"
    conn = sqlite3.connect(newer)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(ConnectorError, match="newer") as e:
        SeriesStore(newer)
    assert not e.value.retryable
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).close()
    with pytest.raises(ConnectorError, match="not a shopspc series store"):
        SeriesStore(other, readonly=True)


def _export(store: SeriesStore, fmt: str, **kw) -> str:
    fp = io.StringIO()
    count = store.export(fp, fmt, **kw)  # type: ignore[arg-type]
    text = fp.getvalue()
    assert count == len(text.splitlines()) - (1 if fmt == "csv" else 0) or fmt == "csv"
    return text


def test_export_lp_is_the_encoders_lines_and_replays(store: SeriesStore, tmp_path: Path) -> None:
    lines = [encode(p) for p in contract_points()]
    store.write_lines(lines)
    text = _export(store, "lp")
    assert sorted(text.splitlines()) == sorted(lines)
    with SeriesStore(tmp_path / "copy.sqlite") as copy:
        copy.write_lines(text.splitlines())
        assert _export(copy, "lp") == text
    ms = _export(store, "lp", measurement="gateway", precision="ms")
    assert (
        ms
        == gateway_line(
            gateway="gw-1",
            component="outbox",
            time_us=T0 + 3,
            metrics=contract_points()[3]["fields"],
            precision="ms",
        )
        + "\n"
    )


def test_export_jsonl_and_filters(store: SeriesStore) -> None:
    points = contract_points()
    store.write_lines([encode(p) for p in points])
    store.write_lines([encode(p) for p in contract_points(T0 + 100, characteristic="depth")])
    records = [
        json.loads(x) for x in _export(store, "jsonl", tags={"characteristic": "bore"}).splitlines()
    ]
    assert len(records) == 3  # the gateway measurement has no characteristic
    by_meas = {r["measurement"]: r for r in records}
    for p in points[:3]:
        r = by_meas[p["measurement"]]
        assert (r["tags"], r["fields"], r["time_us"]) == (p["tags"], p["fields"], p["time_us"])
        assert r["time"] == iso_us(p["time_us"])
    assert len(_export(store, "jsonl", since_us=T0 + 100).splitlines()) == 4
    assert len(_export(store, "jsonl", measurement="alarm", until_us=T0 + 100).splitlines()) == 1
    with pytest.raises(ValueError, match="format"):
        store.export(io.StringIO(), "xml")  # type: ignore[arg-type]


def test_export_csv_columns(store: SeriesStore) -> None:
    points = contract_points()
    store.write_lines([encode(p) for p in points])
    store.write_lines(["odd,value=t1 value=2i,ok=true " + str(T0)])  # a field named like a tag
    rows = list(csv.DictReader(io.StringIO(_export(store, "csv"))))
    assert len(rows) == 5
    header = list(rows[0])
    assert header[:3] == ["measurement", "time", "time_us"]
    assert "field:value" in header and "value" in header
    meas = next(r for r in rows if r["measurement"] == "measurement")
    assert meas["operator"] == "Zoë\nNight"
    assert meas["serial"] == 'SN "42"\\x'
    assert meas["station"] == "op,20"
    assert float(meas["field:value"]) == 25.0012
    assert meas["rework"] == "false"
    assert meas["rule"] == ""  # an alarm tag, empty for other measurements
    odd = next(r for r in rows if r["measurement"] == "odd")
    assert (odd["value"], odd["field:value"], odd["ok"]) == ("t1", "2", "true")


def test_stats_of_an_empty_store(store: SeriesStore) -> None:
    s = store.stats()
    assert (s.points, s.series, s.oldest_us, s.newest_us) == (0, 0, None, None)
    assert s.size_bytes > 0 and s.max_size_bytes > s.size_bytes


def test_iso_us() -> None:
    assert iso_us(0) == "1970-01-01T00:00:00Z"
    assert iso_us(1) == "1970-01-01T00:00:00.000001Z"
    assert iso_us(-1) == "1969-12-31T23:59:59.999999Z"
    assert iso_us(2**62) == ""


def test_parse_line_precision_used_by_write_lines(store: SeriesStore) -> None:
    store.write_lines(["m v=1 1500"], precision="ns")
    assert store.query("m")[0].time_us == 1
    assert parse_line("m v=1 2", "s").time_us == 2_000_000


def test_drop_oldest_deletes_the_oldest_part_of_the_span(store: SeriesStore) -> None:
    assert store.drop_oldest().points == 0  # empty: nothing to do
    store.write_lines([spc("bore", T0 + i * 100, float(i)) for i in range(10)])
    store.write_lines([spc("depth", T0 + 50, 0.0)])
    result = store.drop_oldest(0.1)  # span T0..T0+900: before T0+90
    assert (result.points, result.series, result.cutoff_us) == (2, 1, T0 + 90)
    assert store.query("spc", limit=1)[0].time_us == T0 + 100
    store.write_lines([spc("one", T0 + 500, 0.0)])
    assert store.drop_oldest(1.0).points == 9  # everything before the newest
    assert [r.time_us for r in store.query("spc", limit=None)] == [T0 + 900]
    with pytest.raises(ValueError, match="fraction"):
        store.drop_oldest(0)


def test_a_large_batch_lets_other_threads_run_every_32_lines(
    store: SeriesStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway writes from a worker thread: parsing and preparing rows give the
    interpreter lock away every 32 lines, so the event loop never waits a whole switch
    interval (5 ms) for it. What is stored is the same, malformed lines too."""
    import connectors.localstore.store as module

    yields: list[int] = []
    monkeypatch.setattr(module, "_yield_gil", lambda: yields.append(1))
    lines = [spc("bore", T0 + k, float(k)) for k in range(100)]
    lines[40] = "spc v=1"  # refused, still counted as a line parsed
    result = store.write_lines(lines)
    assert (result.accepted, result.points) == (99, 99)
    assert [e.index for e in result.errors] == [40]
    # parsing: at items 32, 64, 96; preparing rows: at points 32, 64, 96
    assert len(yields) == 6
    assert len(store.query("spc", limit=1000)) == 99
