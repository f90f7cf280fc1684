"""The Modbus source against a real pymodbus server over TCP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math

import pytest

from connectors import base
from connectors.base import Quality, Sample
from connectors.modbus.client import ModbusClient, ModbusExceptionError, ModbusLinkError
from connectors.modbus.config import ModbusSourceConfig
from connectors.modbus.decode import PlanItem, encode_value, plan_requests
from connectors.modbus.source import ModbusSource
from tests.connectors.modbus.conftest import (
    HOST,
    SimServer,
    running,
    wait_until,
    wait_until_async,
)

pytestmark = pytest.mark.integration

ORDERS = ["ABCD", "CDAB", "BADC", "DCBA"]
VALUES = {
    "int16": -1234,
    "uint16": 54321,
    "int32": -123456789,
    "uint32": 3_000_000_000,
    "int64": -(2**50) - 7,
    "float32": 123.5,
    "float64": -9876.54321,
}


def config(port: int, points: list[dict], **device: object) -> ModbusSourceConfig:
    dev = {
        "name": "plc",
        "transport": {"type": "tcp", "host": HOST, "port": port},
        "timeout": 0.5,
        "retries": 0,
        "poll_interval": 0.05,
        "reconnect_min": 0.05,
        "reconnect_max": 0.2,
        "points": points,
    }
    dev.update(device)
    return ModbusSourceConfig.model_validate({"devices": [dev]})


def latest(batches: list[list[Sample]]) -> dict[str, Sample]:
    out: dict[str, Sample] = {}
    for batch in batches:
        for s in batch:
            out[s.binding] = s
    return out


async def _not(check) -> bool:
    return not await check()


def test_registered_as_modbus() -> None:
    # The registry itself, not source_class(): that imports every connector folder,
    # and another connector's state must not decide this test.
    assert base._SOURCES["modbus"] is ModbusSource


async def test_every_type_and_order_decodes(modbus_server: SimServer) -> None:
    points: list[dict] = []
    expected: dict[str, float] = {}
    address = 0
    for function in (3, 4):
        for dtype, value in VALUES.items():
            for order in ORDERS:
                regs = encode_value(value, dtype, order)
                await modbus_server.set(function, address, regs)
                pid = f"f{function}.{dtype}.{order}"
                points.append(
                    {
                        "id": pid,
                        "function": function,
                        "address": address,
                        "data_type": dtype,
                        "order": order,
                    }
                )
                expected[pid] = float(value)
                address += len(regs)
    await modbus_server.set(3, 250, [200])
    points.append(
        {"id": "scaled", "function": "holding", "address": 250, "scale": 0.5, "offset": -1}
    )
    expected["scaled"] = 99.0
    await modbus_server.set(1, 5, [True, False, True])
    await modbus_server.set(2, 9, [True])
    points += [
        {"id": "coil5", "function": "coils", "address": 5},
        {"id": "coil6", "function": "coils", "address": 6},
        {"id": "coil7", "function": "coils", "address": 7},
        {"id": "di9", "function": "discrete_inputs", "address": 9},
    ]
    expected |= {"coil5": 1.0, "coil6": 0.0, "coil7": 1.0, "di9": 1.0}

    source = ModbusSource(config(modbus_server.port, points), "test")
    async with running(source) as batches:
        await wait_until(lambda: len(latest(batches)) == len(points))
    got = latest(batches)
    for pid, value in expected.items():
        s = got[pid]
        assert s.quality is Quality.GOOD, (pid, s.status)
        assert s.value == pytest.approx(value, rel=1e-6), pid
        assert s.source_time_us is None
        assert s.gateway_time_us > 0


@pytest.mark.parametrize(
    ("max_regs", "max_gap"),
    [(125, 0), (6, 0), (125, 3), (4, 1)],
)
async def test_requests_sent_match_the_plan(
    modbus_server: SimServer, max_regs: int, max_gap: int
) -> None:
    layout = [(3, 0, "float32"), (3, 2, "int16"), (3, 3, "uint32"), (3, 7, "int16")]
    layout += [(3, 10, "float64"), (3, 20, "uint16"), (4, 0, "int32"), (4, 2, "uint16")]
    layout += [(1, 0, "bool"), (1, 1, "bool"), (1, 5, "bool")]
    points = [
        {"id": f"p{i}", "function": f, "address": a, "data_type": t}
        for i, (f, a, t) in enumerate(layout)
    ]
    cfg = config(
        modbus_server.port,
        points,
        max_registers_per_request=max_regs,
        max_bits_per_request=2,
        max_gap=max_gap,
    )
    dev = cfg.devices[0]
    plan = plan_requests(
        [PlanItem(p.function, p.address, p.count) for p in dev.points], dev.limit, dev.max_gap
    )
    expected = [(r.function, r.address, r.count) for r in plan]
    source = ModbusSource(cfg, "test")
    async with running(source) as batches:
        await wait_until(lambda: len(batches) >= 2)
    # The first cycle's requests, as the server received them, are exactly the plan.
    first = [(r.function, r.address, r.count) for r in modbus_server.received[: len(expected)]]
    assert first == expected
    assert len(batches[0]) == len(points)
    assert all(s.quality is Quality.GOOD for s in batches[0])
    assert len(expected) < len(points)  # something was coalesced


async def test_illegal_address_gives_bad_samples_and_counts(modbus_server: SimServer) -> None:
    points = [
        {"id": "ok", "function": "holding", "address": 0},
        {"id": "missing", "function": "holding", "address": 1000, "data_type": "float32"},
    ]
    await modbus_server.set(3, 0, [17])
    source = ModbusSource(config(modbus_server.port, points), "test")
    async with running(source) as batches:
        await wait_until(lambda: len(batches) >= 3)
    for batch in batches[:3]:
        by_id = {s.binding: s for s in batch}
        assert by_id["ok"].quality is Quality.GOOD
        assert by_id["ok"].value == 17
        bad = by_id["missing"]
        assert bad.quality is Quality.BAD
        assert math.isnan(bad.value)
        assert "ILLEGAL_DATA_ADDRESS" in bad.status
    stats = source.devices["plc"]
    assert stats.exception_responses >= 3
    assert stats.online is True  # an exception response is not a lost link
    assert source.stats.bad_samples >= 3
    assert "holding 1000" in source.stats.last_error


async def test_malformed_values_are_bad_not_a_crash(modbus_server: SimServer) -> None:
    await modbus_server.set(3, 0, encode_value(math.nan, "float32"))
    await modbus_server.set(3, 2, encode_value(math.inf, "float32"))
    await modbus_server.set(3, 4, encode_value(250.0, "float32"))
    await modbus_server.set(3, 6, encode_value(-5.0, "float32"))
    await modbus_server.set(3, 8, encode_value(50.0, "float32"))
    rng = {"plausible_min": 0, "plausible_max": 100}
    points = [
        {"id": "nan", "function": 3, "address": 0, "data_type": "float32"},
        {"id": "inf", "function": 3, "address": 2, "data_type": "float32"},
        {"id": "high", "function": 3, "address": 4, "data_type": "float32"} | rng,
        {"id": "low", "function": 3, "address": 6, "data_type": "float32"} | rng,
        {"id": "fine", "function": 3, "address": 8, "data_type": "float32"} | rng,
    ]
    source = ModbusSource(config(modbus_server.port, points), "test")
    async with running(source) as batches:
        await wait_until(lambda: len(batches) >= 2)
    by_id = {s.binding: s for s in batches[0]}
    assert by_id["fine"].quality is Quality.GOOD and by_id["fine"].value == 50.0
    for pid in ("nan", "inf", "high", "low"):
        assert by_id[pid].quality is Quality.BAD, pid
        assert math.isnan(by_id[pid].value)
    assert "not a finite number" in by_id["inf"].status
    assert "above plausible_max" in by_id["high"].status
    assert "below plausible_min" in by_id["low"].status
    stats = source.devices["plc"]
    assert stats.not_finite >= 2 and stats.implausible >= 2


async def test_server_restart_marks_a_gap_then_recovers(
    modbus_server: SimServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="connectors.modbus.source")
    await modbus_server.set(3, 0, [1, 2])
    points = [
        {"id": "a", "function": "holding", "address": 0},
        {"id": "b", "function": "holding", "address": 1},
    ]
    source = ModbusSource(config(modbus_server.port, points), "test")
    async with running(source) as batches:
        await wait_until(lambda: len(batches) >= 2)
        await modbus_server.stop()
        n_before = len(batches)
        await wait_until(
            lambda: sum(1 for b in batches[n_before:] for s in b if s.quality is Quality.BAD) >= 4
        )
        await modbus_server.start()
        await modbus_server.set(3, 0, [11, 12])
        await wait_until(lambda: latest(batches)["a"].value == 11)
        await wait_until(lambda: source.stats.state == "connected")
    samples = [s for b in batches for s in b]
    qualities = [s.quality for s in samples if s.binding == "a"]
    first_bad = qualities.index(Quality.BAD)
    assert Quality.GOOD in qualities[:first_bad]
    assert Quality.GOOD in qualities[first_bad:]
    bad = [s for s in samples if s.quality is Quality.BAD]
    assert {s.binding for s in bad} == {"a", "b"}
    assert all(s.status for s in bad)
    assert source.stats.reconnects == 1
    lost = [r for r in caplog.records if "lost device plc" in r.getMessage()]
    regained = [r for r in caplog.records if "regained device plc" in r.getMessage()]
    assert len(lost) == 1 and len(regained) == 1


async def test_trigger_handshake_end_to_end(modbus_server: SimServer) -> None:
    trig = {
        "name": "part",
        "ready": {"function": "coils", "address": 0, "value": 1},
        "block": [
            {"id": "serial", "function": "holding", "address": 100, "data_type": "uint32"},
            {"id": "dia", "function": "holding", "address": 102, "data_type": "float32"},
            {"id": "depth", "function": "holding", "address": 104, "data_type": "float32"},
        ],
        "serial_point": "serial",
        "ack": {"function": "coil", "address": 1, "value": 1, "reset": 0},
    }
    cfg = config(modbus_server.port, [], triggers=[trig])
    source = ModbusSource(cfg, "test")

    async def publish(serial: int, dia: float, depth: float) -> None:
        await modbus_server.set(3, 100, encode_value(serial, "uint32"))
        await modbus_server.set(3, 102, encode_value(dia, "float32"))
        await modbus_server.set(3, 104, encode_value(depth, "float32"))
        await modbus_server.set(1, 0, [True])

    async def ack() -> bool:
        return bool((await modbus_server.get(1, 1))[0])

    async with running(source) as batches:
        await wait_until(lambda: source.devices["plc"].requests >= 2)
        assert batches == []  # nothing ready, nothing read
        await publish(4711, 10.5, 3.25)
        await wait_until_async(ack)
        # The PLC takes the part away: ready drops, the source resets the ack.
        await modbus_server.set(1, 0, [False])
        await wait_until_async(lambda: _not(ack))
        await publish(4712, 11.0, 3.5)
        await wait_until(lambda: len(batches) >= 2)
    assert len(batches) == 2
    first, second = batches
    assert {s.binding for s in first} == {"dia", "depth"}
    assert all(s.serial == "4711" for s in first)
    assert all(s.fields == {"trigger": "part"} for s in first)
    assert len({s.gateway_time_us for s in first}) == 1  # one part, one time
    assert {s.binding: s.value for s in first} == {"dia": 10.5, "depth": 3.25}
    assert all(s.serial == "4712" for s in second)
    # Each block was read in one request of 6 registers.
    blocks = [r for r in modbus_server.received if r.function == 3]
    assert [(r.address, r.count) for r in blocks] == [(100, 6), (100, 6)]
    assert source.devices["plc"].parts == 2


async def test_pacing_spaces_requests_to_a_device(modbus_server: SimServer) -> None:
    """Every request starts at least `pacing` after the previous one (a lower bound only)."""
    starts: list[float] = []

    class Recording(ModbusClient):
        async def read(self, function: int, address: int, count: int) -> list[int]:
            starts.append(asyncio.get_running_loop().time())
            return await super().read(function, address, count)

    points = [
        {"id": "a", "function": "holding", "address": 0},
        {"id": "b", "function": "holding", "address": 50},
        {"id": "c", "function": "input", "address": 0},
    ]
    cfg = config(modbus_server.port, points, pacing=0.05, poll_interval=0.01)
    source = ModbusSource(cfg, "test", client_factory=Recording)
    async with running(source):
        await wait_until(lambda: len(starts) >= 7)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.05 - 1e-3


async def test_client_errors_name_device_function_and_address(modbus_server: SimServer) -> None:
    cfg = config(modbus_server.port, [{"id": "a", "function": "holding", "address": 0}])
    client = ModbusClient(cfg.devices[0], "line1")
    await client.connect()
    try:
        with pytest.raises(ModbusExceptionError) as info:
            await client.read(4, 299, 5)
        assert info.value.where == "line1 plc unit 1 input 299"
        assert info.value.code == 2 and not info.value.retryable
    finally:
        client.close()
    await modbus_server.stop()
    with pytest.raises(ModbusLinkError) as link:
        await client.read(3, 0, 1)
    assert link.value.retryable
    with pytest.raises(ModbusLinkError) as refused:
        await client.connect()
    assert refused.value.retryable and f"{HOST}:{modbus_server.port}" in refused.value.message
    client.close()


def _trigger(**over: object) -> dict:
    trig = {
        "name": "part",
        "ready": {"function": "holding", "address": 200, "value": 7},
        "block": [{"id": "dia", "function": "holding", "address": 102, "data_type": "float32"}],
        "ack": {"function": "register", "address": 201, "value": 1, "reset": 0},
    }
    trig.update(over)
    return trig


async def test_trigger_ack_refused_emits_the_part_once(
    modbus_server: SimServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="connectors.modbus.source")
    await modbus_server.set(3, 102, encode_value(1.5, "float32"))
    await modbus_server.set(3, 200, [7])
    trig = _trigger(ack={"function": "register", "address": 1000, "value": 1})
    source = ModbusSource(config(modbus_server.port, [], triggers=[trig]), "test")
    async with running(source) as batches:
        await wait_until(lambda: source.devices["plc"].exception_responses >= 4)
    assert len(batches) == 1
    (s,) = batches[0]
    assert (s.binding, s.value, s.quality, s.fields) == (
        "dia",
        1.5,
        Quality.GOOD,
        {"trigger": "part"},
    )
    assert source.devices["plc"].acks == 0
    warnings = [r for r in caplog.records if "trigger part" in r.getMessage()]
    assert len(warnings) == 1 and "ILLEGAL_DATA_ADDRESS" in warnings[0].getMessage()


async def test_trigger_block_read_failure_is_bad_and_not_acked(modbus_server: SimServer) -> None:
    await modbus_server.set(3, 200, [7])
    trig = _trigger(
        block=[
            {"id": "dia", "function": "holding", "address": 102, "data_type": "float32"},
            {"id": "gone", "function": "input", "address": 5000},
        ]
    )
    source = ModbusSource(config(modbus_server.port, [], triggers=[trig]), "test")
    async with running(source) as batches:
        await wait_until(lambda: len(batches) >= 2)
    by_id = {s.binding: s for s in batches[0]}
    assert by_id["dia"].quality is Quality.GOOD
    assert by_id["gone"].quality is Quality.BAD and "ILLEGAL_DATA_ADDRESS" in by_id["gone"].status
    assert (await modbus_server.get(3, 201))[0] == 0  # never acknowledged
    assert source.devices["plc"].acks == 0
