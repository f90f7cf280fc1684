"""The simulated MQTT station read by the real MQTT connector through a Debian mosquitto."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from connectors.base import Sample
from connectors.mqtt.config import MqttSourceConfig
from connectors.mqtt.source import MqttSource
from connectors.mqtt.station import MqttStation, connector_config
from tests.servers import HOST, Server, mosquitto

pytestmark = pytest.mark.integration

CHARS = ("width", "height")
TOPIC = "sim/vision/results"


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
            f"V-{n:04d}",
            {"width": 3.0 + n / 100, "height": 1.0 - n / 1000},
            {"operator": "op-2", "program": "VIS-3", "lot": "L1", "gauge_id": "CAM-2"},
        )

    return next_part


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Server]:
    with mosquitto(tmp_path) as server:
        yield server


def test_payload_has_at_least_ten_values() -> None:
    station = MqttStation(HOST, 1883, TOPIC, CHARS, parts())
    doc = json.loads(station.payload([station.next_part() for _ in range(station.batch_parts)]))
    assert doc["count"] == len(doc["results"]) >= 10
    assert doc["results"][0]["serial"] == "V-0001"


async def test_connector_reads_batches(broker: Server) -> None:
    cfg = MqttSourceConfig.model_validate(connector_config(HOST, broker.port, TOPIC))
    source = MqttSource(cfg, "vision")
    station = MqttStation(HOST, broker.port, TOPIC, CHARS, parts(), rate=200.0)
    got: list[Sample] = []

    async def emit(batch: Sequence[Sample]) -> None:
        got.extend(batch)

    async with asyncio.TaskGroup() as tg:
        src = tg.create_task(source.run(emit))
        for _ in range(500):
            if source.stats.state == "connected":
                break
            await asyncio.sleep(0.02)
        st = tg.create_task(station.run())
        for _ in range(500):
            if len({s.serial for s in got}) >= 12:
                break
            await asyncio.sleep(0.02)
        src.cancel()
        st.cancel()
    by_serial: dict[str, dict[str, Sample]] = {}
    for s in got:
        by_serial.setdefault(s.serial or "", {})[s.binding] = s
    assert len(by_serial) >= 12
    for n in (1, 2, 3):
        part = by_serial[f"V-{n:04d}"]
        assert part["width"].value == pytest.approx(3.0 + n / 100)
        assert part["height"].value == pytest.approx(1.0 - n / 1000)
        assert part["width"].fields["operator"] == "op-2"
        assert part["width"].fields["gauge_id"] == "CAM-2"
        assert part["width"].source_time_us is not None
