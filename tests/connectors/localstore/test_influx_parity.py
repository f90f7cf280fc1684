"""The same batches into a real influxd 1.6 (through the InfluxDB sink) and into the local store
give the same points: series keys, merge of fields at one timestamp, replays. And the store's
``lp`` export written into a fresh database gives them again."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from connectors.influxdb import InfluxSink, InfluxSinkConfig
from connectors.influxdb.lineprotocol import encode_line
from connectors.localstore import LocalStoreConfig, LocalStoreSink, SeriesStore
from tests.connectors.influxdb.conftest import influx_query, influxd
from tests.connectors.localstore.helpers import T0, contract_points, encode
from tests.servers import HOST

pytestmark = pytest.mark.integration
MEASUREMENTS = ("measurement", "spc", "alarm", "gateway")


def _plain(point: dict[str, Any]) -> dict[str, Any]:
    # newline, tab and backslash read differently in influxd 1.6 (README, Limitations)
    def clean(v: Any) -> Any:
        return (
            v.replace("\n", " ").replace("\t", " ").replace("\\", "/") if isinstance(v, str) else v
        )

    return {
        **point,
        "tags": {k: clean(v) for k, v in point["tags"].items()},
        "fields": {k: clean(v) for k, v in point["fields"].items()},
    }


def _batches() -> list[list[str]]:
    first = [encode(_plain(p)) for t in range(3) for p in contract_points(T0 + 10 * t)]
    depth = [encode(_plain(p)) for p in contract_points(T0, characteristic="depth")]
    merge = [  # same series and time as the first spc point: fields merge, statistic overwritten
        encode_line(
            "spc",
            {
                "gateway": "gw-1",
                "line": "line 7",
                "station": "op,20",
                "characteristic": "bore",
                "chart": "xbar",
            },
            {"statistic": 99.5, "cusum_upper": 1.25},
            T0 + 1,
        )
    ]
    return [first, depth, first, merge, depth]  # with replays


def _influx_points(port: int, db: str) -> set[tuple[Any, ...]]:
    out = set()
    for m in MEASUREMENTS:
        result = influx_query(port, f'SELECT * FROM "{m}" GROUP BY *', db=db)["results"][0]
        for series in result.get("series", []):
            columns = series["columns"]
            for values in series["values"]:
                row = dict(zip(columns, values, strict=True))
                time_us = row.pop("time")
                fields = {
                    k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v
                    for k, v in row.items()
                    if v is not None
                }
                out.add(
                    (
                        m,
                        tuple(sorted(series["tags"].items())),
                        time_us,
                        tuple(sorted(fields.items())),
                    )
                )
    return out


def _local_points(store: SeriesStore) -> set[tuple[Any, ...]]:
    out = set()
    for m in MEASUREMENTS:
        for r in store.query(m, limit=None):
            fields = {
                k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v
                for k, v in r.fields.items()
            }
            out.add((m, tuple(sorted(r.tags.items())), r.time_us, tuple(sorted(fields.items()))))
    return out


async def test_same_batches_same_points_as_influxd(tmp_path: Path) -> None:
    (tmp_path / "influxd").mkdir()
    with influxd(tmp_path / "influxd") as server:
        url = f"http://{HOST}:{server.port}"
        influx_query(server.port, "CREATE DATABASE direct")
        influx_query(server.port, "CREATE DATABASE replayed")
        influx = InfluxSink(InfluxSinkConfig(api="v1", url=url, database="direct"))
        local = LocalStoreSink(LocalStoreConfig(path=str(tmp_path / "series.sqlite")))
        try:
            for batch in _batches():
                a = await influx.write(batch)
                b = await local.write(batch)
                assert (
                    (a.accepted, a.rejected_count)
                    == (b.accepted, b.rejected_count)
                    == (len(batch), 0)
                )
        finally:
            await influx.close()
            await local.close()

        with SeriesStore(tmp_path / "series.sqlite", readonly=True) as store:
            mine = _local_points(store)
            fp = io.StringIO()
            store.export(fp, "lp")
        theirs = _influx_points(server.port, "direct")
        assert len(mine) == 3 * 4 + 3  # depth's gateway point is the bore one at T0
        assert mine == theirs
        merged = next(
            p
            for p in mine
            if p[0] == "spc" and p[2] == T0 + 1 and ("characteristic", "bore") in p[1]
        )
        assert dict(merged[3])["statistic"] == 99.5 and dict(merged[3])["cusum_upper"] == 1.25
        assert dict(merged[3])["limits_id"] == "lim-2025-11-01"

        replay = InfluxSink(InfluxSinkConfig(api="v1", url=url, database="replayed"))
        try:
            result = await replay.write(fp.getvalue().splitlines())
            assert result.rejected_count == 0
        finally:
            await replay.close()
        assert _influx_points(server.port, "replayed") == theirs
