"""Config validation: defaults, function names, limits, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from connectors.modbus.config import SOURCE_CONFIG, ModbusSourceConfig

HERE = Path(__file__).resolve()
SAMPLE = HERE.parents[3] / "connectors" / "modbus" / "sample.yaml"


def device(**over: object) -> dict:
    d: dict = {
        "name": "press-1",
        "transport": {"type": "tcp", "host": "127.0.0.1", "port": 5020},
        "points": [{"id": "force", "function": "holding", "address": 0, "data_type": "float32"}],
    }
    d.update(over)
    return d


def errors(body: dict) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        ModbusSourceConfig.model_validate(body)
    return [
        (".".join(str(p) for p in e["loc"]), e["msg"]) for e in info.value.errors(include_url=False)
    ]


def test_defaults_and_names() -> None:
    cfg = ModbusSourceConfig.model_validate({"devices": [device()]})
    dev = cfg.devices[0]
    assert dev.max_registers_per_request == 125
    assert dev.unit_id == 1
    p = dev.points[0]
    assert (p.function, p.dtype, p.order, p.count) == (3, "float32", "ABCD", 2)
    bit = (
        ModbusSourceConfig.model_validate(
            {"devices": [device(points=[{"id": "b", "function": "coils", "address": 3}])]}
        )
        .devices[0]
        .points[0]
    )
    assert (bit.function, bit.dtype) == (1, "bool")
    assert SOURCE_CONFIG is ModbusSourceConfig


def test_sample_yaml_validates() -> None:
    doc = yaml.safe_load(SAMPLE.read_text())
    (section,) = doc["sources"].values()
    body = {k: v for k, v in section.items() if k != "kind"}
    assert section["kind"] == "modbus"
    cfg = ModbusSourceConfig.model_validate(body)
    assert cfg.devices


def test_rtu_transport() -> None:
    cfg = ModbusSourceConfig.model_validate(
        {"devices": [device(transport={"type": "rtu", "port": "/dev/ttyUSB0", "parity": "E"})]}
    )
    assert cfg.devices[0].transport.parity == "E"


@pytest.mark.parametrize(
    ("point", "key", "fragment"),
    [
        ({"address": 70000}, "devices.0.points.0.address", "less than or equal"),
        ({"address": 65535}, "devices.0.points.0", "runs past 65535"),
        ({"function": "coils"}, "devices.0.points.0", "cannot be read with a bit function"),
        ({"function": 7}, "devices.0.points.0.function", ""),
        ({"order": "XYZW"}, "devices.0.points.0.order", ""),
        ({"plausible_min": 5, "plausible_max": 1}, "devices.0.points.0", "plausible_min"),
        ({"bogus": 1}, "devices.0.points.0.bogus", "Extra inputs"),
    ],
)
def test_point_errors_name_the_key(point: dict, key: str, fragment: str) -> None:
    p = {"id": "force", "function": "holding", "address": 0, "data_type": "float32"} | point
    found = errors({"devices": [device(points=[p])]})
    assert any(k == key and fragment in m for k, m in found), found


def test_point_longer_than_max_registers() -> None:
    found = errors({"devices": [device(max_registers_per_request=1)]})
    assert any("points.0.data_type" in m for _, m in found), found


def test_duplicate_binding_ids_across_devices() -> None:
    found = errors({"devices": [device(), device(name="press-2")]})
    assert any("devices.1.points.0.id" in m and "devices.0.points.0.id" in m for _, m in found)


def test_duplicate_device_names() -> None:
    found = errors(
        {
            "devices": [
                device(),
                device(points=[{"id": "other", "function": "input", "address": 1}]),
            ]
        }
    )
    assert any("devices.1.name" in m for _, m in found)


def test_trigger_validation() -> None:
    trig = {
        "name": "part",
        "ready": {"function": "coils", "address": 0},
        "block": [{"id": "d1", "function": "holding", "address": 10, "data_type": "float32"}],
        "ack": {"function": "coil", "address": 1},
        "serial_point": "nope",
    }
    found = errors({"devices": [device(points=[], triggers=[trig])]})
    assert any("serial_point" in m for _, m in found), found
    trig["serial_point"] = None
    trig["ack"] = {"function": "holding_registers", "address": 1}
    found = errors({"devices": [device(points=[], triggers=[trig])]})
    assert any(k.startswith("devices.0.triggers.0.ack.function") for k, _ in found), found


def test_device_needs_something_to_read() -> None:
    found = errors({"devices": [device(points=[])]})
    assert any("points" in m for _, m in found)


def test_frozen() -> None:
    cfg = ModbusSourceConfig.model_validate({"devices": [device()]})
    with pytest.raises(ValidationError):
        cfg.devices[0].unit_id = 3  # type: ignore[misc]


def test_gateway_loader_reports_file_line_and_dotted_key() -> None:
    """The gateway's loader finds SOURCE_CONFIG by kind and locates our errors."""
    from collector.config import ConfigError, parse_config

    text = "version: 1\n" + SAMPLE.read_text()
    _, connectors = parse_config(text, "plant.yaml")
    assert isinstance(connectors["press-line"], ModbusSourceConfig)
    broken = text.replace("address: 102", "address: 70000")
    with pytest.raises(ConfigError) as info:
        parse_config(broken, "plant.yaml")
    (problem,) = info.value.problems
    assert problem.key == "sources.press-line.devices[0].triggers[0].block[1].address"
    lines = SAMPLE.read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if "address: 102" in line)
    assert problem.line == index + 2  # one line for "version: 1", one for 1-based numbering


def test_devices_sharing_a_serial_port() -> None:
    rtu = {"type": "rtu", "port": "/dev/ttyS0", "baudrate": 9600}
    ok = {"devices": [device(transport=rtu), device(name="b", transport=rtu, unit_id=2)]}
    ok["devices"][1]["points"] = [{"id": "other", "function": "input", "address": 0}]
    ModbusSourceConfig.model_validate(ok)
    same_unit = {"devices": [ok["devices"][0], {**ok["devices"][1], "unit_id": 1}]}
    assert any("devices.1.unit_id" in m for _, m in errors(same_unit))
    other_speed = {
        "devices": [ok["devices"][0], {**ok["devices"][1], "transport": rtu | {"baudrate": 19200}}]
    }
    assert any(
        "devices.1.transport" in m and "serial settings differ" in m for _, m in errors(other_speed)
    )
