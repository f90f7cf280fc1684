"""Points of the four measurements of contracts/timeseries.md, made with the InfluxDB encoders."""

from __future__ import annotations

from typing import Any

from connectors.influxdb.lineprotocol import alarm_line, gateway_line, measurement_line, spc_line

T0 = 1_764_144_000_000_000  # 2025-11-26T08:00:00Z in µs


def contract_points(time_us: int = T0, characteristic: str = "bore") -> list[dict[str, Any]]:
    """One point of each measurement: measurement name, tags, fields as the encoder is given them."""
    base = {
        "gateway": "gw-1",
        "line": "line 7",
        "station": "op,20",
        "characteristic": characteristic,
    }
    return [
        {
            "measurement": "measurement",
            "tags": {**base, "source": "opcua"},
            "fields": {
                "value": 25.0012,
                "quality": "good",
                "serial": 'SN "42"\\x',
                "lot": "L=1, A",
                "operator": "Zoë\nNight",
                "cavity": 3,
                "rework": False,
            },
            "time_us": time_us,
        },
        {
            "measurement": "spc",
            "tags": {**base, "chart": "xbar"},
            "fields": {
                "statistic": 25.001,
                "center": 25.0,
                "lcl": 24.99,
                "ucl": 25.01,
                "sigma": 0.0031,
                "n": 5,
                "ewma": 25.0004,
                "violations": "N1,N5",
                "limits_id": "lim-2025-11-01",
            },
            "time_us": time_us + 1,
        },
        {
            "measurement": "alarm",
            "tags": {**base, "rule": "N1", "severity": "high"},
            "fields": {
                "alarm_id": "a-17",
                "event": "acknowledged",
                "value": 25.04,
                "seq": 2,
                "user": "j.doe",
                "comment": "tool\tchanged, checked",
            },
            "time_us": time_us + 2,
        },
        {
            "measurement": "gateway",
            "tags": {"gateway": "gw-1", "component": "outbox"},
            "fields": {"queue_depth": 12, "outbox_bytes": 40960, "state": "connected", "up": True},
            "time_us": time_us + 3,
        },
    ]


def encode(point: dict[str, Any]) -> str:
    """The line of a :func:`contract_points` point, through the measurement's own encoder."""
    t, f, m = point["tags"], point["fields"], point["measurement"]
    if m == "measurement":
        context = {k: v for k, v in f.items() if k not in ("value", "quality", "serial")}
        line = measurement_line(
            **t,
            value=f["value"],
            quality=f["quality"],
            serial=f["serial"],
            time_us=point["time_us"],
            context=context,
        )
    elif m == "spc":
        line = spc_line(**t, **f, time_us=point["time_us"])
    elif m == "alarm":
        line = alarm_line(**t, **f, time_us=point["time_us"])
    else:
        line = gateway_line(**t, metrics=f, time_us=point["time_us"])
    assert line is not None
    return line
