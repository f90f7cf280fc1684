"""The InfluxDB sink against real servers on loopback ports.

No InfluxDB 2.x/3.x can be installed here: the v2 path (influxdb-client, gzip)
is tested against VictoriaMetrics' ``/api/v2/write`` compatibility endpoint,
the 1.x path against Debian influxd 1.6.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from connectors.base import ConnectorError
from connectors.influxdb import InfluxSink, InfluxSinkConfig
from connectors.influxdb.lineprotocol import (
    alarm_line,
    encode_columns,
    gateway_line,
    measurement_line,
    spc_line,
)
from tests.connectors.influxdb.conftest import influx_query, influxd, victoria_metrics, vm_export
from tests.servers import HOST, Server, free_port

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_000_000  # µs, 2023-11-14


def contract_lines(t0: int, precision: str = "us") -> list[str]:
    """One point of each of the contract's measurements (plus a second measurement point)."""
    common = {"gateway": "gw 1", "line": "L1", "station": "st,2", "characteristic": "bore=d"}
    lines = [
        measurement_line(
            **common,
            source="opcua",
            value=12.25,
            quality="good",
            time_us=t0,
            serial='SN"1',
            context={"lot": "LOT 7", "operator": "ann\nlee"},
            precision=precision,  # type: ignore[arg-type]
        ),
        measurement_line(
            **common,
            source="opcua",
            value=1e16,
            quality="good",
            time_us=t0 + 1000,
            precision=precision,  # type: ignore[arg-type]
        ),
        spc_line(
            **common,
            chart="xbar",
            time_us=t0,
            statistic=12.0,
            center=12.5,
            lcl=11.0,
            ucl=14.0,
            sigma=0.5,
            n=5,
            violations=["N1", "N5"],
            limits_id="lim-1",
            precision=precision,  # type: ignore[arg-type]
        ),
        alarm_line(
            **common,
            rule="N1",
            severity="major",
            time_us=t0,
            alarm_id="a-1",
            event="raised",
            value=12.0,
            seq=7,
            user="sys",
            comment="",
            precision=precision,  # type: ignore[arg-type]
        ),
        gateway_line(
            gateway="gw 1",
            component="outbox",
            time_us=t0,
            metrics={"size": 42, "points_in": 1000, "state": "connected"},
            precision=precision,  # type: ignore[arg-type]
        ),
    ]
    assert all(line is not None for line in lines)
    return [line for line in lines if line is not None]


def v2_config(server: Server, **kw: object) -> InfluxSinkConfig:
    return InfluxSinkConfig(
        api="v2",
        url=f"http://{HOST}:{server.port}",
        org="plant",
        bucket="shopspc",
        token_env="TEST_INFLUX_TOKEN",
        gzip=True,
        timeout_s=5,
        **kw,  # type: ignore[arg-type]
    )


def v1_config(port: int, database: str, **kw: object) -> InfluxSinkConfig:
    return InfluxSinkConfig(
        api="v1", url=f"http://{HOST}:{port}", database=database, timeout_s=5, **kw
    )  # type: ignore[arg-type]


ENV = {"TEST_INFLUX_TOKEN": "not-checked-by-victoriametrics"}


# --- v2 API (influxdb-client) against VictoriaMetrics ----------------------------------


def _series(exported: list[dict], name: str) -> dict:
    found = [s for s in exported if s["metric"]["__name__"] == name]
    assert len(found) == 1, (name, [s["metric"] for s in exported])
    return found[0]


async def test_v2_writes_contract_points_and_replay_adds_no_duplicate(vm: Server) -> None:
    sink = InfluxSink(v2_config(vm), "vm", environ=ENV)
    lines = contract_lines(T0)
    try:
        first = await sink.write(lines)
        again = await sink.write(lines)  # a replay, as the outbox does after a failure
    finally:
        await sink.close()
    assert (first.accepted, first.rejected) == (len(lines), ())
    assert (again.accepted, again.rejected) == (len(lines), ())
    assert sink.stats.lines_written == 2 * len(lines)
    assert sink.stats.state == "stopped"

    exported = vm_export(vm.port, '{__name__=~"(measurement|spc|alarm|gateway)_.*"}')
    value = _series(exported, "measurement_value")
    assert value["metric"] == {
        "__name__": "measurement_value",
        "gateway": "gw 1",
        "line": "L1",
        "station": "st,2",
        "characteristic": "bore=d",
        "source": "opcua",
    }
    # VictoriaMetrics keeps milliseconds; one sample per timestamp after the replay
    assert value["timestamps"] == [T0 // 1000, T0 // 1000 + 1]
    assert value["values"] == [12.25, 1e16]
    ucl = _series(exported, "spc_ucl")
    assert ucl["metric"]["chart"] == "xbar"
    assert (ucl["values"], ucl["timestamps"]) == ([14.0], [T0 // 1000])
    assert _series(exported, "spc_n")["values"] == [5]
    seq = _series(exported, "alarm_seq")
    assert (seq["metric"]["rule"], seq["metric"]["severity"]) == ("N1", "major")
    assert seq["values"] == [7]
    size = _series(exported, "gateway_size")
    assert size["metric"]["component"] == "outbox"
    assert size["values"] == [42]
    # context is a field, never a tag
    assert all("lot" not in s["metric"] and "serial" not in s["metric"] for s in exported)


async def test_v2_chunks_by_batch_size_and_columnar_path(vm: Server) -> None:
    n = 1234
    t = T0 + 10_000_000 + np.arange(n, dtype=np.int64) * 1000
    enc = encode_columns(
        "measurement",
        {
            "gateway": "gw-c",
            "line": "L2",
            "station": "s",
            "source": "modbus",
            "characteristic": np.where(np.arange(n) % 2 == 0, "even", "odd"),
        },
        {"value": np.arange(n) * 0.5, "quality": np.array(["good"] * n, dtype=object)},
        t,
    )
    sink = InfluxSink(v2_config(vm, batch_size=500), "vm", environ=ENV)
    try:
        result = await sink.write(enc.lines)
    finally:
        await sink.close()
    assert (result.accepted, result.requests) == (n, 3)
    exported = vm_export(vm.port, '{__name__="measurement_value",gateway="gw-c"}')
    by_char = {s["metric"]["characteristic"]: s for s in exported}
    assert sorted(by_char) == ["even", "odd"]
    even = by_char["even"]
    assert len(even["values"]) == (n + 1) // 2
    assert even["values"][:3] == [0.0, 1.0, 2.0]
    assert even["timestamps"][:2] == [int(t[0]) // 1000, int(t[2]) // 1000]


async def test_v2_missing_token_variable_is_not_retryable(vm: Server) -> None:
    sink = InfluxSink(v2_config(vm), "vm", environ={})
    with pytest.raises(ConnectorError) as info:
        await sink.write(contract_lines(T0))
    await sink.close()
    assert not info.value.retryable
    assert "TEST_INFLUX_TOKEN" in info.value.message


async def test_v2_server_message_on_400_is_a_rejection(vm: Server) -> None:
    """VictoriaMetrics accepts malformed lines (it skips them with a log line) but answers an
    unknown path with 400: enough to see a 400 through influxdb-client come back as a
    rejection carrying the server's message."""
    config = InfluxSinkConfig(
        api="v2", url=f"http://{HOST}:{vm.port}/no/such/prefix", bucket="b", gzip=True
    )
    sink = InfluxSink(config, "vm")
    try:
        result = await sink.write([f"m v=1.0 {T0}"])
    finally:
        await sink.close()
    assert result.accepted == 0
    assert result.rejected[0].status == 400
    assert result.rejected[0].lines == (f"m v=1.0 {T0}",)
    assert "unsupported path" in result.rejected[0].message


async def test_v2_unauthorized_is_not_retryable(tmp_path: Path) -> None:
    with victoria_metrics(tmp_path, "-httpAuth.username=shop", "-httpAuth.password=pw") as server:
        sink = InfluxSink(v2_config(server), "vm", environ=ENV)
        try:
            with pytest.raises(ConnectorError) as info:
                await sink.write(contract_lines(T0))
        finally:
            await sink.close()
    assert not info.value.retryable
    assert "401" in info.value.message
    assert sink.stats.last_error


async def test_v2_refused_is_retryable() -> None:
    config = InfluxSinkConfig(api="v2", url=f"http://{HOST}:{free_port()}", bucket="b")
    sink = InfluxSink(config, "nothing")
    try:
        with pytest.raises(ConnectorError) as info:
            await sink.write(contract_lines(T0))
    finally:
        await sink.close()
    assert info.value.retryable
    assert sink.stats.errors == 1


# --- 1.x API (http.client) against influxd 1.6 ----------------------------------------


def _create_db(port: int, name: str) -> None:
    answer = influx_query(port, f'CREATE DATABASE "{name}"')
    assert "error" not in answer["results"][0], answer


def _rows(port: int, db: str, q: str) -> list[dict]:
    return _rows_auth(port, db, q, None)


def _rows_auth(port: int, db: str, q: str, auth: tuple[str, str] | None) -> list[dict]:
    answer = influx_query(port, q, db, auth)
    series = answer["results"][0].get("series", [])
    rows = []
    for s in series:
        for values in s["values"]:
            rows.append(dict(zip(s["columns"], values, strict=True)))
    return rows


async def test_v1_writes_contract_points(influx1: Server) -> None:
    _create_db(influx1.port, "contract")
    t0 = T0 + 123  # microseconds survive in 1.x
    sink = InfluxSink(v1_config(influx1.port, "contract"), "v1")
    try:
        result = await sink.write(contract_lines(t0))
        again = await sink.write(contract_lines(t0))
    finally:
        await sink.close()
    assert result.rejected == () and again.rejected == ()
    rows = _rows(influx1.port, "contract", 'SELECT * FROM "measurement"')
    assert len(rows) == 2  # the replay overwrote, no duplicates
    first = rows[0]
    assert first["time"] == t0
    assert first["value"] == 12.25
    assert first["quality"] == "good"
    assert first["serial"] == 'SN"1'
    assert first["lot"] == "LOT 7"
    assert first["operator"] == "ann\\nlee"  # line protocol has no newline: stored escaped
    assert (first["gateway"], first["station"], first["characteristic"]) == (
        "gw 1",
        "st,2",
        "bore=d",
    )
    assert rows[1]["value"] == 1e16 and rows[1]["time"] == t0 + 1000
    spc = _rows(influx1.port, "contract", "SELECT * FROM spc")
    assert len(spc) == 1
    assert (spc[0]["ucl"], spc[0]["n"], spc[0]["violations"]) == (14.0, 5, "N1,N5")
    alarm = _rows(influx1.port, "contract", "SELECT * FROM alarm")
    assert (alarm[0]["seq"], alarm[0]["event"], alarm[0]["comment"]) == (7, "raised", "")
    gw = _rows(influx1.port, "contract", "SELECT * FROM gateway")
    assert (gw[0]["size"], gw[0]["state"], gw[0]["component"]) == (42, "connected", "outbox")


@pytest.mark.parametrize("precision", ["ns", "ms", "s"])
async def test_v1_precision(influx1: Server, precision: str) -> None:
    db = f"prec_{precision}"
    _create_db(influx1.port, db)
    t = T0 + 1_234_567  # µs: 1.234567 s after T0
    sink = InfluxSink(v1_config(influx1.port, db, precision=precision, gzip=False), "v1")
    try:
        result = await sink.write(contract_lines(t, precision))
    finally:
        await sink.close()
    assert result.rejected == ()
    rows = _rows(influx1.port, db, 'SELECT "value" FROM "measurement" LIMIT 1')
    expected = {"ns": t, "ms": t - 567, "s": t - 234_567}[precision]
    assert rows[0]["time"] == expected


async def test_v1_malformed_line_is_rejected_with_message_rest_written(influx1: Server) -> None:
    _create_db(influx1.port, "bad")
    good = [f"m,k=v value={i}.5 {T0 + i}" for i in range(7)]
    bad = "m,k=v value= 12"
    sink = InfluxSink(v1_config(influx1.port, "bad"), "v1")
    try:
        result = await sink.write([*good[:3], bad, *good[3:]])
    finally:
        await sink.close()
    assert result.accepted == 7
    assert len(result.rejected) == 1
    rejected = result.rejected[0]
    assert rejected.lines == (bad,)
    assert rejected.indices == (3,)
    assert rejected.status == 400
    assert "unable to parse" in rejected.message
    # isolating one bad line of eight: at most 1 + 2·log2(8) requests, never a retry loop
    assert result.requests <= 7
    assert sink.stats.lines_rejected == 1
    assert len(_rows(influx1.port, "bad", "SELECT * FROM m")) == 7


async def test_v1_field_type_conflict_is_rejected(influx1: Server) -> None:
    _create_db(influx1.port, "conflict")
    sink = InfluxSink(v1_config(influx1.port, "conflict"), "v1")
    try:
        await sink.write([f"m value=1.5 {T0}"])
        result = await sink.write([f"m value=2.5 {T0 + 1}", f'm value="text" {T0 + 2}'])
    finally:
        await sink.close()
    assert result.accepted == 1
    assert result.rejected[0].lines == (f'm value="text" {T0 + 2}',)
    assert "conflict" in result.rejected[0].message


async def test_v1_missing_database_is_not_retryable(influx1: Server) -> None:
    sink = InfluxSink(v1_config(influx1.port, "does_not_exist"), "v1")
    try:
        with pytest.raises(ConnectorError) as info:
            await sink.write(contract_lines(T0))
    finally:
        await sink.close()
    assert not info.value.retryable
    assert "database not found" in info.value.message
    assert sink.stats.state == "stopped"


async def test_v1_server_down_is_retryable_then_write_succeeds(tmp_path: Path) -> None:
    with influxd(tmp_path) as server:
        _create_db(server.port, "outage")
        sink = InfluxSink(v1_config(server.port, "outage"), "v1")
        try:
            assert (await sink.write([f"m v=1.0 {T0}"])).accepted == 1
            server.stop()
            with pytest.raises(ConnectorError) as info:
                await sink.write([f"m v=2.0 {T0 + 1}"])
            assert info.value.retryable
            assert sink.stats.state == "disconnected"
            server.restart()
            assert (await sink.write([f"m v=2.0 {T0 + 1}"])).accepted == 1
            assert sink.stats.state == "connected"
        finally:
            await sink.close()
        assert [r["v"] for r in _rows(server.port, "outage", "SELECT v FROM m")] == [1.0, 2.0]


async def test_v1_basic_auth(tmp_path: Path) -> None:
    with influxd(tmp_path, auth=True) as server:
        # with no user yet, 1.x allows creating the first admin without credentials
        influx_query(server.port, "CREATE USER shop WITH PASSWORD 'pw' WITH ALL PRIVILEGES")
        influx_query(server.port, 'CREATE DATABASE "secure"', auth=("shop", "pw"))
        sink = InfluxSink(
            v1_config(server.port, "secure", username="shop", password_env="PW"),
            "v1",
            environ={"PW": "pw"},
        )
        wrong = InfluxSink(
            v1_config(server.port, "secure", username="shop", password_env="PW"),
            "v1",
            environ={"PW": "nope"},
        )
        try:
            assert (await sink.write([f"m v=1.0 {T0}"])).accepted == 1
            with pytest.raises(ConnectorError) as info:
                await wrong.write([f"m v=1.0 {T0}"])
        finally:
            await sink.close()
            await wrong.close()
        rows = _rows_auth(server.port, "secure", "SELECT v FROM m", ("shop", "pw"))
    assert rows == [{"time": T0, "v": 1.0}]
    assert not info.value.retryable
    assert "not authorized" in info.value.message
