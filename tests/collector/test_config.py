"""Gateway configuration: every problem at once, with file, line and dotted key (CONVENTIONS habit 6)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from collector.config import ConfigError, parse_config
from collector.yamlpos import YamlError, dotted, load_yaml

GOOD = """\
version: 1
gateway: {id: gw-sz-01}
characteristics:
  - id: bore_dia
    site: sz
    area: machining
    line: L1
    station: OP20
    unit: mm
    nominal: 25.0
    lsl: 24.97
    usl: 25.03
    chart: xbar-r
    subgroup: {size: 5, close_on: [material_lot]}
    rules: nelson
    severity: {default: major, N1: critical}
    value: {static: 25.0}
    context:
      operator: {static: Zhang San}
      machine: {static: M-07}
      gauge: {id: {static: G-12}, calibration_due: {static: 2027-01-31}}
"""


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "plant.yaml")
    return [str(p) for p in info.value.problems]


def test_good_config() -> None:
    cfg, connectors = parse_config(GOOD, "plant.yaml")
    ch = cfg.characteristics[0]
    assert ch.path == "sz/machining/L1/OP20/bore_dia"
    assert ch.subgroup.size == 5
    assert ch.severity["N1"] == "critical"
    assert connectors == {}


def test_unknown_key_names_file_line_and_key() -> None:
    text = GOOD.replace("    unit: mm\n", "    unit: mm\n    colour: red\n")
    assert _problems(text) == ["plant.yaml:10: characteristics[0].colour: unknown key"]


def test_all_field_problems_at_once() -> None:
    text = GOOD.replace("id: bore_dia", "id: bore dia").replace("rules: nelson", "rules: [N1, N9]")
    got = _problems(text)
    assert len(got) == 2
    assert got[0].startswith("plant.yaml:4: characteristics[0].id:")
    assert got[1].startswith("plant.yaml:15: characteristics[0].rules: unknown rule code 'N9'")


def test_spec_limits_and_subgroup_checks() -> None:
    got = _problems(GOOD.replace("lsl: 24.97", "lsl: 25.5"))
    assert got == ["plant.yaml:4: characteristics[0]: LSL 25.5 must be below USL 25.03"]
    got = _problems(
        GOOD.replace("subgroup: {size: 5, close_on: [material_lot]}", "subgroup: {size: 1}")
    )
    assert "needs subgroup.size ≥ 2" in got[0]


def test_unknown_source_and_connector_kind() -> None:
    text = GOOD.replace("value: {static: 25.0}", "value: {source: plc9, binding: bore}")
    assert _problems(text) == [
        "plant.yaml:17: characteristics[0].value.source: no source named 'plc9' (sources: none defined)"
    ]
    text = GOOD.replace(
        "gateway: {id: gw-sz-01}\n",
        "gateway: {id: gw-sz-01}\nsources:\n  plc1: {kind: telepathy}\n",
    )
    assert _problems(text) == [
        "plant.yaml:4: sources.plc1.kind: no source connector of kind 'telepathy'"
    ]


def test_duplicate_characteristic_path() -> None:
    second = GOOD.split("characteristics:\n", 1)[1]
    got = _problems(GOOD + second)
    assert got == [
        "plant.yaml:22: characteristics[1].id: sz/machining/L1/OP20/bore_dia is already defined by characteristics[0]"
    ]


def test_version_is_required() -> None:
    assert _problems(GOOD.replace("version: 1\n", "")) == ["plant.yaml:1: version: Field required"]
    assert "version" in _problems(GOOD.replace("version: 1", "version: 2"))[0]


def test_yaml_errors_have_positions() -> None:
    assert _problems("version: 1\nversion: 1\n") == ["plant.yaml:2: (top): duplicate key 'version'"]
    assert _problems("version: [1\n")[0].startswith("plant.yaml:2: (top): invalid YAML")
    assert _problems("- 1\n") == [
        "plant.yaml:1: (top): the file must be a mapping with `version: 1` at the top"
    ]


def test_yamlpos_lines_and_dotted() -> None:
    doc = load_yaml("a:\n  b:\n    - c: 1\n      d: 2\n", "x.yaml")
    assert doc.line_of(("a", "b", 0, "d")) == 4
    assert doc.line_of(("a", "b", 0, "zz")) == 3
    assert dotted(("a", "b", 0, "d")) == "a.b[0].d"
    with pytest.raises(YamlError):
        load_yaml("a: !!python/object:os.system x\n")


def test_check_config_cli(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        GOOD.replace("unit: mm", "unit: mm\n    colour: red").replace("lsl: 24.97", "lsl: 26")
    )
    ok = subprocess.run(
        [sys.executable, "-m", "collector.cli", "check-config", str(good)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout and "1 characteristic" in ok.stdout
    no = subprocess.run(
        [sys.executable, "-m", "collector.cli", "check-config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert no.returncode == 2
    assert f"{bad}:10: characteristics[0].colour: unknown key" in no.stderr
    assert "Traceback" not in no.stderr


def test_committed_json_schema_is_current() -> None:
    """config/shopspc.schema.json is what `shopspc schema` generates now (regenerate it when models change)."""
    import json

    from collector.config import json_schema

    root = Path(__file__).resolve().parents[2]
    committed = json.loads((root / "config" / "shopspc.schema.json").read_text(encoding="utf-8"))
    assert committed == json.loads(json.dumps(json_schema(), sort_keys=True))
    sources = committed["properties"]["sources"]["additionalProperties"]["oneOf"]
    kinds = {
        committed["$defs"][ref["$ref"].rsplit("/", 1)[1]]["properties"]["kind"]["const"]
        for ref in sources
    }
    assert kinds == {"modbus", "mqtt", "opcua"}
    assert committed["$defs"]["Characteristic"]["additionalProperties"] is False


@pytest.mark.parametrize(
    "name", sorted(p.name for p in (Path(__file__).parents[2] / "config").glob("*.yaml"))
)
def test_every_example_config_in_config_dir_loads(name: str) -> None:
    """The documented example configurations in config/ pass the loader `shopspc run` uses."""
    from collector.config import load_config

    cfg, connectors = load_config(Path(__file__).parents[2] / "config" / name)
    assert cfg.characteristics and set(connectors) == set(cfg.sources) | set(cfg.sinks)


def test_plant_example_uses_the_alarm_and_chart_features() -> None:
    from collector.config import load_config

    cfg, _ = load_config(Path(__file__).parents[2] / "config" / "plant.example.yaml")
    charts = {c.id: c for c in cfg.characteristics}
    assert charts["final-test-rejects"].sample_size is not None
    assert charts["flatness"].shortrun is not None and charts["bore-dia"].klass == "critical-dim"
    assert cfg.alarms.mqtt is not None and cfg.alarms.webhook is not None
    assert cfg.alarms.process_state and cfg.alarms.severity["critical-dim"]["N1"] == "critical"


def test_api_section_sets_the_http_api() -> None:
    text = GOOD.replace(
        "version: 1\n",
        "version: 1\napi:\n  cookie_secure: true\n  recent_points: 500\n  recent_save_s: 5\n",
    )
    cfg, _ = parse_config(text, "plant.yaml")
    assert cfg.api.cookie_secure is True and cfg.api.recent_points == 500
    assert parse_config(GOOD, "plant.yaml")[0].api.cookie_secure == "auto"  # the default
    bad = GOOD.replace("version: 1\n", "version: 1\napi:\n  recent_points: 5\n  cookie: x\n")
    got = _problems(bad)
    assert any("api.recent_points" in p and "10" in p for p in got), got
    assert any("api.cookie: unknown key" in p for p in got), got


def test_http_address_splits_host_and_port() -> None:
    from collector.config import Gateway

    assert Gateway(http="[::1]:8470").http_address == ("::1", 8470)
    assert Gateway(http="0.0.0.0:9000").http_address == ("0.0.0.0", 9000)
    assert Gateway(http="").http_address is None
