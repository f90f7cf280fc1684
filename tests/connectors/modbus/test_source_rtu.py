"""The Modbus source over RTU: a real pymodbus serial server on a pty null modem (no hardware)."""

from __future__ import annotations

import math

import pytest

from connectors.base import Quality, Sample
from connectors.modbus.config import ModbusSourceConfig
from connectors.modbus.decode import PlanItem, encode_value, plan_requests
from connectors.modbus.source import ModbusSource
from tests.connectors.modbus.conftest import SimServer, running, wait_until

pytestmark = pytest.mark.integration


def config(tty: str, points: list[dict], **device: object) -> ModbusSourceConfig:
    dev = {
        "name": "gauge",
        "transport": {"type": "rtu", "port": tty, "baudrate": 115200, "parity": "N"},
        "timeout": 0.3,
        "retries": 0,
        "poll_interval": 0.05,
        "reconnect_min": 0.05,
        "reconnect_max": 0.2,
        "points": points,
    }
    dev.update(device)
    return ModbusSourceConfig.model_validate({"devices": [dev]})


def latest(batches: list[list[Sample]]) -> dict[str, Sample]:
    return {s.binding: s for b in batches for s in b}


async def test_rtu_values_plan_and_illegal_address(rtu_server: tuple[SimServer, str]) -> None:
    server, tty = rtu_server
    await server.set(3, 0, encode_value(-42.25, "float32", "CDAB"))
    await server.set(3, 2, encode_value(-7, "int16"))
    await server.set(3, 3, encode_value(123456, "uint32", "DCBA"))
    await server.set(4, 0, encode_value(2.0**40, "float64", "BADC"))
    await server.set(1, 3, [True])
    points = [
        {"id": "f", "function": "holding", "address": 0, "data_type": "float32", "order": "CDAB"},
        {"id": "i", "function": "holding", "address": 2, "data_type": "int16"},
        {"id": "u", "function": "holding", "address": 3, "data_type": "uint32", "order": "DCBA"},
        {"id": "d", "function": "input", "address": 0, "data_type": "float64", "order": "BADC"},
        {"id": "c", "function": "coils", "address": 3},
        {"id": "missing", "function": "holding", "address": 500},
    ]
    cfg = config(tty, points)
    dev = cfg.devices[0]
    plan = plan_requests(
        [PlanItem(p.function, p.address, p.count) for p in dev.points], dev.limit, dev.max_gap
    )
    source = ModbusSource(cfg, "rtu")
    async with running(source) as batches:
        await wait_until(lambda: len(batches) >= 2)
    got = {s.binding: s for s in batches[0]}
    assert got["f"].value == -42.25
    assert got["i"].value == -7
    assert got["u"].value == 123456
    assert got["d"].value == 2.0**40
    assert got["c"].value == 1.0
    assert all(got[k].quality is Quality.GOOD for k in "fiudc")
    assert got["missing"].quality is Quality.BAD and math.isnan(got["missing"].value)
    assert "ILLEGAL_DATA_ADDRESS" in got["missing"].status
    expected = [(r.function, r.address, r.count) for r in plan]
    assert [(r.function, r.address, r.count) for r in server.received[: len(expected)]] == expected
    assert len(expected) == 4  # holding 0..4 in one request, then 500, input, coils


async def test_rtu_server_gone_then_back(rtu_server: tuple[SimServer, str]) -> None:
    server, tty = rtu_server
    await server.set(3, 0, [5])
    source = ModbusSource(config(tty, [{"id": "a", "function": "holding", "address": 0}]), "rtu")
    async with running(source) as batches:
        await wait_until(lambda: len(batches) >= 2)
        await server.stop()
        n = len(batches)
        await wait_until(lambda: any(s.quality is Quality.BAD for b in batches[n:] for s in b))
        await server.start()
        await server.set(3, 0, [6])
        await wait_until(lambda: latest(batches)["a"].value == 6)
    bad = [s for b in batches for s in b if s.quality is Quality.BAD]
    assert bad and all(math.isnan(s.value) and s.status for s in bad)
    assert source.devices["gauge"].link_errors >= 1
    assert source.stats.reconnects == 1


async def test_rtu_units_share_one_port(rtu_server: tuple[SimServer, str]) -> None:
    """Two units and a silent third on one serial line: one open port, the silent unit is bad."""
    server, tty = rtu_server
    await server.set(3, 0, [111], unit=1)
    await server.set(3, 0, [222], unit=2)
    line = {"type": "rtu", "port": tty, "baudrate": 115200}
    common = {
        "transport": line,
        "timeout": 0.2,
        "retries": 0,
        "poll_interval": 0.05,
        "reconnect_min": 0.05,
        "reconnect_max": 0.2,
    }
    cfg = ModbusSourceConfig.model_validate(
        {
            "devices": [
                {"name": f"u{u}", "unit_id": u, **common, "points": [_pt(f"v{u}")]}
                for u in (1, 2, 9)
            ]
        }
    )
    source = ModbusSource(cfg, "rtu")
    async with running(source) as batches:
        await wait_until(
            lambda: (
                {"v1", "v2"} <= {s.binding for b in batches for s in b if s.quality is Quality.GOOD}
                and any(s.binding == "v9" for b in batches for s in b)
            )
        )
    good = {s.binding: s.value for b in batches for s in b if s.quality is Quality.GOOD}
    assert good == {"v1": 111, "v2": 222}
    silent = [s for b in batches for s in b if s.binding == "v9"]
    assert all(s.quality is Quality.BAD and "no response" in s.status for s in silent)
    # The silent unit did not take the shared port down with it.
    assert not [s for b in batches for s in b if s.binding != "v9" and s.quality is Quality.BAD]
    assert source.devices["u1"].online and source.devices["u2"].online
    assert source.devices["u9"].online is False


def _pt(pid: str) -> dict:
    return {"id": pid, "function": "holding", "address": 0}
