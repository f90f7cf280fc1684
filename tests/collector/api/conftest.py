"""A real Gateway (no sources, a recording sink) for the API tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from collector.config import GatewayConfig
from collector.pipeline import Gateway
from connectors.base import ConnectorStats, Quality, Sample

T0 = 1_764_000_000_000_000


def char(cid: str, **over: Any) -> dict[str, Any]:
    """A characteristic on line l1 (I-MR, centre 10, σ 1, specs 4…16)."""
    base = {
        "id": cid,
        "site": "s1",
        "area": "a1",
        "line": "l1",
        "station": "st1",
        "chart": "imr",
        "value": {"source": "dev", "binding": cid},
        "limits": {"center": 10.0, "sigma": 1.0},
        "lsl": 4.0,
        "usl": 16.0,
    }
    base.update(over)
    return base


def config(*chars: dict[str, Any]) -> GatewayConfig:
    """A gateway config with one (fake) MQTT source ``dev``."""
    return GatewayConfig.model_validate(
        {
            "version": 1,
            "gateway": {"id": "gw-api"},
            "sources": {"dev": {"kind": "mqtt"}},
            "characteristics": list(chars),
        }
    )


class RecordingSink:
    """Keeps nothing; stands in for a real sink."""

    def __init__(self) -> None:
        self.name = "rec"
        self.stats = ConnectorStats(state="connected")
        self.precision = "us"

    async def write(self, batch: Sequence[Any]) -> Any:
        return None

    async def close(self) -> None:
        return None


class IdleSource:
    """A source that never emits (its stats are what /health shows)."""

    def __init__(self, name: str = "dev") -> None:
        self.name = name
        self.kind = "mqtt"
        self.stats = ConnectorStats(state="connected")


def sample(binding: str, value: float, k: int, serial: str | None = None) -> Sample:
    """A good sample at T0 + k ms."""
    return Sample(binding, value, Quality.GOOD, T0 + k * 1000, T0 + k * 1000, serial=serial)


@pytest.fixture
def gateway(tmp_path):
    """A gateway with characteristics a, b (l1) and c (line l2)."""
    gw = Gateway(
        config(char("a"), char("b"), char("c", line="l2")),
        {},
        data_dir=tmp_path / "gw",
        sources=[IdleSource()],
        sinks=[RecordingSink()],
    )
    yield gw
    gw.close()
