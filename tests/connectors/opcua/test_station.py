"""The simulated OPC UA station read by the real OPC UA connector (asyncua server on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from connectors.base import Backoff, ConnectorError, Sample
from connectors.opcua.config import OpcuaSourceConfig
from connectors.opcua.source import OpcuaSource
from connectors.opcua.station import OpcuaStation, connector_config
from tests.servers import cancel_and_wait, free_port

pytestmark = pytest.mark.integration

CHARS = ("bore", "flatness")


@dataclass
class FakePart:
    serial: str
    values: dict[str, float]
    context: dict[str, str] = field(default_factory=dict)
    time: datetime = field(default_factory=lambda: datetime.now(UTC))


def parts():
    counter = itertools.count(1)

    def next_part() -> FakePart:
        n = next(counter)
        return FakePart(
            f"P-{n:04d}",
            {"bore": 25.0 + n / 1000, "flatness": 0.01 * n},
            {"operator": "op-7", "program": "CMM-12", "lot": f"L{n // 100}", "gauge_id": "G-3"},
        )

    return next_part


async def test_connector_reads_parts_through_the_trigger_handshake() -> None:
    port = free_port()
    station = OpcuaStation(port, CHARS, parts(), rate=50.0, ack_timeout_s=5.0)
    cfg = OpcuaSourceConfig.model_validate(connector_config(port, CHARS))
    source = OpcuaSource(cfg, "cmm", backoff=Backoff(base=0.05, cap=0.2))
    got: list[Sample] = []

    async def emit(batch: Sequence[Sample]) -> None:
        got.extend(batch)

    async with asyncio.TaskGroup() as tg:
        st = tg.create_task(station.run())
        await asyncio.wait_for(station.started.wait(), 10)
        src = tg.create_task(source.run(emit))
        for _ in range(500):
            if source.triggers >= 3 and station.acked >= 3:
                break
            await asyncio.sleep(0.02)
        src.cancel()
        st.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await src
    assert source.triggers >= 3
    assert station.acked >= 3
    by_serial: dict[str, dict[str, Sample]] = {}
    for s in got:
        by_serial.setdefault(s.serial or "", {})[s.binding] = s
    for n in (1, 2, 3):
        part = by_serial[f"P-{n:04d}"]
        assert part["bore"].value == pytest.approx(25.0 + n / 1000)
        assert part["flatness"].value == pytest.approx(0.01 * n)
        assert part["cmm.operator"].fields["raw"] == "op-7"
        assert part["cmm.gauge_id"].fields["raw"] == "G-3"
        assert part["bore"].fields["trigger"] == "cmm-result"
    # Each part read once: the ack arrived before the station moved on.
    assert len([s for s in got if s.binding == "bore"]) == len(by_serial)


async def test_missing_ack_never_stalls_the_station() -> None:
    station = OpcuaStation(free_port(), CHARS, parts(), rate=100.0, ack_timeout_s=0.05)
    task = asyncio.create_task(station.run())
    try:
        for _ in range(500):
            if station.unacked >= 3:
                break
            await asyncio.sleep(0.02)
    finally:
        await cancel_and_wait(task)
    assert station.unacked >= 3
    assert station.acked == 0


async def test_a_taken_port_is_a_clear_error() -> None:
    port = free_port()
    first = OpcuaStation(port, CHARS, parts(), rate=10.0, ack_timeout_s=0.05)
    task = asyncio.create_task(first.run())
    try:
        await asyncio.wait_for(first.started.wait(), 10)
        with pytest.raises(ConnectorError, match="cannot listen") as info:
            await OpcuaStation(port, CHARS, parts()).run()
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
        station = OpcuaStation(port, CHARS, parts())
        with pytest.raises(ConnectorError) as info:
            await asyncio.wait_for(station.run(), 20)
    assert info.value.where == f"opcua station 127.0.0.1:{port}"
    assert f"port {port} is already in use by another program" in info.value.message
    assert not info.value.retryable
    assert not station.started.is_set()


async def test_started_means_the_port_accepts_connections() -> None:
    port = free_port()
    station = OpcuaStation(port, CHARS, parts(), rate=10.0, ack_timeout_s=0.05)
    task = asyncio.create_task(station.run())
    try:
        await asyncio.wait_for(station.started.wait(), 10)
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        await writer.wait_closed()
    finally:
        await cancel_and_wait(task)
