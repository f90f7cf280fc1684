"""The localstore sink: registration, config and sample, WriteResult like the InfluxDB sink's,
errors and state, prune schedule, close."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

import connectors.localstore
from connectors.base import ConnectorError, sink_class
from connectors.influxdb.lineprotocol import spc_line
from connectors.influxdb.sink import WriteResult
from connectors.localstore import LocalStoreConfig, LocalStoreSink, SeriesStore
from connectors.localstore.config import SINK_CONFIG
from tests.connectors.localstore.helpers import T0, contract_points, encode

SAMPLE = Path(connectors.localstore.__file__).parent / "sample.yaml"
DAY_S = 86_400.0


def line(t: int, characteristic: str = "bore") -> str:
    out = spc_line(
        gateway="gw",
        line="L1",
        station="S1",
        characteristic=characteristic,
        chart="imr",
        time_us=t,
        statistic=1.0,
        violations="N1,N2,N3,N5,N6",
    )
    assert out is not None
    return out


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_registered_and_config_model() -> None:
    assert sink_class("localstore") is LocalStoreSink
    assert SINK_CONFIG is LocalStoreConfig
    c = LocalStoreConfig()
    assert (c.path, c.retention_days, c.max_size_mb, c.precision) == (
        "series.sqlite",
        90.0,
        1024.0,
        "us",
    )
    assert LocalStoreConfig(retention_days=None).retention_days is None
    for bad in (
        {"max_size_mb": 0.5},
        {"retention_days": 0},
        {"path": ""},
        {"precision": "m"},
        {"url": "x"},
    ):
        with pytest.raises(ValidationError):
            LocalStoreConfig.model_validate(bad)
    with pytest.raises(ValidationError):
        c.path = "other"  # type: ignore[misc]


def test_sample_yaml_validates_and_goes_through_the_gateway_loader() -> None:
    from collector.config import ConfigError, parse_config

    text = SAMPLE.read_text(encoding="utf-8")
    for section in yaml.safe_load(text)["sinks"].values():
        assert section["kind"] == "localstore"
        LocalStoreConfig.model_validate({k: v for k, v in section.items() if k != "kind"})
    _, found = parse_config("version: 1\n" + text, "gw.yaml")
    assert isinstance(found["local"], LocalStoreConfig)
    with pytest.raises(ConfigError) as e:
        parse_config("version: 1\n" + text.replace("max_size_mb", "max_size"), "gw.yaml")
    assert any(p.key == "sinks.local.max_size" for p in e.value.problems)


async def test_write_result_like_influxdb_and_stats(tmp_path: Path) -> None:
    sink = LocalStoreSink(LocalStoreConfig(path=str(tmp_path / "s.sqlite")))
    try:
        batch = [encode(p) for p in contract_points()]
        result = await sink.write([*batch, "spc v=1", (batch[0] + "\nbroken").encode()])
        assert isinstance(result, WriteResult)
        assert (result.accepted, result.rejected_count, result.requests) == (4, 2, 1)
        assert [r.indices for r in result.rejected] == [(4,), (5,)]
        assert all(r.status == 400 for r in result.rejected)
        assert "no timestamp" in result.rejected[0].message
        assert result.rejected[1].lines == (batch[0] + "\nbroken",)
        s = sink.stats
        assert (s.state, s.lines_written, s.samples, s.lines_rejected, s.bad_samples) == (
            "connected",
            4,
            4,
            2,
            2,
        )
        assert sink.precision == "us"
        result = await sink.write(batch)  # a replay: accepted again, stored once
        assert result.accepted == 4
    finally:
        await sink.close()
    with SeriesStore(tmp_path / "s.sqlite", readonly=True) as store:
        assert store.stats().points == 4


async def test_precision_of_the_lines(tmp_path: Path) -> None:
    sink = LocalStoreSink(LocalStoreConfig(path=str(tmp_path / "s.sqlite"), precision="ms"))
    try:
        await sink.write(["m v=1 1500"])
    finally:
        await sink.close()
    with SeriesStore(tmp_path / "s.sqlite", readonly=True) as store:
        assert store.query("m")[0].time_us == 1_500_000


async def test_full_store_is_retryable_logged_once_then_recovers_after_prune(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock(T0 / 1e6)
    config = LocalStoreConfig(
        path=str(tmp_path / "s.sqlite"), max_size_mb=1, retention_days=1, prune_interval_s=3600
    )
    sink = LocalStoreSink(config, clock=clock)
    caplog.set_level(logging.INFO, logger="connectors.localstore.sink")
    try:
        t = T0
        failures = 0
        error: ConnectorError | None = None
        for _ in range(100):  # bounded: 1 MiB fills up long before
            batch = [line(t + i, f"c{i % 13}") for i in range(2000)]
            try:
                await sink.write(batch)
            except ConnectorError as exc:
                error = exc
                failures += 1
                if failures == 2:
                    break
                continue
            t += 2000
        assert failures == 2 and error is not None
        assert error.retryable
        assert "full" in error.message
        assert sink.stats.state == "disconnected"
        assert sink.stats.errors == 2
        lost = [r for r in caplog.records if "full" in r.getMessage()]
        assert len(lost) == 1 and lost[0].levelno == logging.WARNING
        # two days later the scheduled prune (before the write) makes room
        clock.now += 2 * DAY_S
        result = await sink.write(batch)
        assert result.accepted == len(batch)
        assert sink.stats.state == "connected"
        assert sink.stats.points_pruned > 0
        assert sum("writing again" in r.getMessage() for r in caplog.records) == 1
    finally:
        await sink.close()


async def test_prune_schedule_and_explicit_prune(tmp_path: Path) -> None:
    clock = Clock(T0 / 1e6)
    config = LocalStoreConfig(
        path=str(tmp_path / "s.sqlite"), retention_days=1, prune_interval_s=600
    )
    sink = LocalStoreSink(config, clock=clock)
    try:
        await sink.write([line(T0 - 2 * 86_400_000_000)])  # first write prunes (nothing yet)
        clock.now += 60  # within the interval: no prune before this write
        await sink.write([line(T0 - 3 * 86_400_000_000)])
        assert sink.stats.points_pruned == 0
        clock.now += 600
        await sink.write([line(T0)])
        assert sink.stats.points_pruned == 2
        await sink.write([line(T0 - 5 * 86_400_000_000)])
        result = await sink.prune(T0 * 1)
        assert (result.points, result.cutoff_us) == (1, T0 - 86_400_000_000)
        assert (await sink.prune()).points == 0
    finally:
        await sink.close()


async def test_unopenable_path_is_not_retryable(tmp_path: Path, caplog) -> None:
    (tmp_path / "dir.sqlite").mkdir()
    sink = LocalStoreSink(LocalStoreConfig(path=str(tmp_path / "dir.sqlite")))
    for _ in range(2):
        with pytest.raises(ConnectorError) as e:
            await sink.write([line(T0)])
        assert not e.value.retryable
    assert sink.stats.state == "failed"
    assert sum(r.levelno == logging.ERROR for r in caplog.records) == 1
    await sink.close()


async def test_close_is_idempotent_and_waits_for_a_cancelled_write(tmp_path: Path) -> None:
    sink = LocalStoreSink(LocalStoreConfig(path=str(tmp_path / "s.sqlite")))
    task = asyncio.create_task(sink.write([line(T0 + i) for i in range(2000)]))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await sink.close()
    await sink.close()
    assert sink.stats.state == "stopped"
    with pytest.raises(ConnectorError, match="closed") as e:
        await sink.write([line(T0)])
    assert not e.value.retryable
    with pytest.raises(ConnectorError, match="closed"):
        await sink.prune()
    # the shielded transaction finished or never started: never half a batch
    if (tmp_path / "s.sqlite").exists():
        with SeriesStore(tmp_path / "s.sqlite", readonly=True) as store:
            assert store.stats().points in (0, 2000)


async def test_when_full_drop_oldest_keeps_the_newest(tmp_path: Path, caplog) -> None:
    config = LocalStoreConfig(
        path=str(tmp_path / "s.sqlite"), max_size_mb=1, retention_days=None, when_full="drop_oldest"
    )
    sink = LocalStoreSink(config)
    caplog.set_level(logging.WARNING, logger="connectors.localstore.sink")
    try:
        t = T0
        for _ in range(15):  # bounded: about 3 MiB of points into a 1 MiB store
            result = await sink.write([line(t + i, f"c{i % 13}") for i in range(2000)])
            assert result.accepted == 2000
            t += 2000
        assert sink.stats.points_dropped > 0
        assert sink.stats.state == "connected" and sink.stats.errors == 0
        assert any("dropped" in r.getMessage() for r in caplog.records)
    finally:
        await sink.close()
    with SeriesStore(tmp_path / "s.sqlite", readonly=True) as store:
        stats = store.stats()
        assert stats.newest_us == t - 1
        assert stats.oldest_us is not None and stats.oldest_us > T0
        assert stats.size_bytes <= 1024 * 1024
        assert stats.points == 15 * 2000 - sink.stats.points_dropped
