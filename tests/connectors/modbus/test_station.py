"""The simulated Modbus gauge read by the real Modbus connector (pymodbus TCP server on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytest

from connectors.base import ConnectorError, Sample
from connectors.modbus.config import ModbusSourceConfig
from connectors.modbus.source import ModbusSource
from connectors.modbus.station import ModbusStation, check_port_free, connector_config
from tests.servers import cancel_and_wait, free_port

pytestmark = pytest.mark.integration

CHARS = ("od", "runout")


@dataclass
class FakePart:
    number: int
    values: dict[str, float]


def parts():
    counter = itertools.count(1)

    def next_part() -> FakePart:
        n = next(counter)
        return FakePart(n, {"od": 49.98 + n / 100, "runout": 0.002 * n})

    return next_part


async def test_connector_reads_parts_through_the_trigger_handshake() -> None:
    port = free_port()
    station = ModbusStation(port, CHARS, parts(), rate=50.0)
    cfg = ModbusSourceConfig.model_validate(connector_config(port, CHARS, poll_interval=0.02))
    source = ModbusSource(cfg, "gauge")
    got: list[Sample] = []

    async def emit(batch: Sequence[Sample]) -> None:
        got.extend(batch)

    async with asyncio.TaskGroup() as tg:
        st = tg.create_task(station.run())
        await asyncio.wait_for(station.started.wait(), 10)
        src = tg.create_task(source.run(emit))
        for _ in range(500):
            if station.acked >= 3:
                break
            await asyncio.sleep(0.02)
        src.cancel()
        st.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await src
    assert station.acked >= 3
    by_serial: dict[str, dict[str, Sample]] = {}
    for s in got:
        by_serial.setdefault(s.serial or "", {})[s.binding] = s
    for n in (1, 2, 3):
        part = by_serial[str(n)]
        # float32 on the wire: compare at float32 precision.
        assert part["od"].value == pytest.approx(float(np.float32(49.98 + n / 100)))
        assert part["runout"].value == pytest.approx(float(np.float32(0.002 * n)))
        assert part["od"].fields["trigger"] == "gauge-result"
    assert len([s for s in got if s.binding == "od"]) == len(by_serial)


async def test_missing_ack_never_stalls_the_gauge() -> None:
    station = ModbusStation(free_port(), CHARS[:1], parts(), rate=100.0, ack_timeout_s=0.05)
    task = asyncio.create_task(station.run())
    try:
        for _ in range(500):
            if station.unacked >= 3:
                break
            await asyncio.sleep(0.02)
    finally:
        await cancel_and_wait(task)
    assert station.unacked >= 3


def test_one_or_two_characteristics() -> None:
    with pytest.raises(ValueError):
        connector_config(502, ["a", "b", "c"])


async def test_a_taken_port_is_a_clear_error() -> None:
    port = free_port()
    first = ModbusStation(port, CHARS, parts(), rate=10.0, ack_timeout_s=0.05)
    task = asyncio.create_task(first.run())
    try:
        await asyncio.wait_for(first.started.wait(), 10)
        with pytest.raises(ConnectorError, match="cannot listen") as info:
            await ModbusStation(port, CHARS, parts()).run()
        assert not info.value.retryable
    finally:
        await cancel_and_wait(task)


@pytest.mark.parametrize("address", ["127.0.0.1", "0.0.0.0"])
async def test_a_port_held_by_another_program_is_named_before_the_server_starts(
    address: str,
) -> None:
    # A plain listening socket stands for "another program" (a second demo, a real server).
    with socket.create_server((address, 0)) as holder:
        port = holder.getsockname()[1]
        station = ModbusStation(port, CHARS, parts())
        with pytest.raises(ConnectorError) as info:
            await asyncio.wait_for(station.run(), 20)
    assert info.value.where == f"modbus station 127.0.0.1:{port}"
    assert f"port {port} is already in use by another program" in info.value.message
    assert not info.value.retryable
    assert not station.started.is_set()


def test_a_port_left_in_time_wait_is_no_conflict() -> None:
    # A connection of an earlier run closed by the server side lingers in TIME_WAIT.
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = server.accept()
        conn.close()
        client.close()
    check_port_free("modbus station", "127.0.0.1", port, "test")
