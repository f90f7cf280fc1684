"""MqttSourceConfig validation: unknown keys, topic filters, layouts, templates, sample.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from connectors.mqtt.config import SOURCE_CONFIG, MqttSourceConfig, check_topic_filter

HERE = Path(__file__).resolve()
SAMPLE = HERE.parents[3] / "connectors" / "mqtt" / "sample.yaml"


def cfg(**sub: Any) -> dict[str, Any]:
    base_sub = {"topic": "plant/+/gauge", "binding": "bore", "value_path": "v"}
    base_sub.update(sub)
    return {"host": "127.0.0.1", "client_id": "gw-1", "subscriptions": [base_sub]}


def test_minimal_defaults() -> None:
    c = MqttSourceConfig.model_validate(cfg())
    assert c.port == 1883
    assert c.qos == 1
    assert c.protocol == "5"
    assert c.persistent_session
    assert c.subscriptions[0].format == "json"
    assert SOURCE_CONFIG is MqttSourceConfig


def test_unknown_keys_are_errors() -> None:
    with pytest.raises(ValidationError) as e:
        MqttSourceConfig.model_validate({**cfg(), "hostname": "x"})
    assert e.value.errors()[0]["type"] == "extra_forbidden"
    with pytest.raises(ValidationError, match="Extra inputs"):
        MqttSourceConfig.model_validate(cfg(valuepath="v"))
    with pytest.raises(ValidationError, match="Extra inputs"):
        MqttSourceConfig.model_validate({**cfg(), "tls": {"ca": "x"}})


def test_frozen() -> None:
    c = MqttSourceConfig.model_validate(cfg())
    with pytest.raises(ValidationError):
        c.host = "other"  # type: ignore[misc]


@pytest.mark.parametrize("topic", ["a/b", "a/+/c", "#", "a/#", "+", "+/+/#", "/a", "a//b"])
def test_good_filters(topic: str) -> None:
    assert check_topic_filter(topic) == topic


@pytest.mark.parametrize(
    ("topic", "why"),
    [
        ("a/#/b", "'#' must be a whole level and the last"),
        ("a/b#", "'#' must be a whole level"),
        ("a/b+/c", r"'\+' must be a whole level"),
        ("a+", r"'\+' must be a whole level"),
        ("", "empty"),
    ],
)
def test_bad_filters(topic: str, why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        MqttSourceConfig.model_validate(cfg(topic=topic))


@pytest.mark.parametrize(
    ("sub", "why"),
    [
        ({"value_path": None}, "binding and value_path go together"),
        ({"bindings": [{"id": "a", "path": "a"}]}, "exactly one of"),
        ({"binding": None, "value_path": None}, "exactly one of"),
        ({"value_path": "a..b"}, "path"),
        ({"context": {"lot": "x["}}, "path"),
        ({"format": "value"}, "value: value_path: json only"),
        ({"format": "value", "value_path": None, "serial_path": "s"}, "serial_path: json only"),
        ({"format": "value", "value_path": None, "binding": None}, "binding is required"),
        ({"format": "sparkplug_b", "value_path": None, "binding": None}, "metrics"),
        ({"binding": "{3}", "topic": "a/+/c"}, "topic level"),
        ({"binding": "{1}", "topic": "a/#"}, "topic level"),
        ({"metrics": {"x": "y"}}, "sparkplug_b"),
        ({"timestamp_unit": "ns"}, "timestamp_unit"),
        ({"qos": 3}, "qos"),
    ],
)
def test_bad_subscriptions(sub: dict[str, Any], why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        MqttSourceConfig.model_validate(cfg(**sub))


def test_batch_needs_one_id_source() -> None:
    batch = {"items_path": "items", "value_path": "v"}
    with pytest.raises(ValidationError, match="exactly one of binding_path and binding"):
        MqttSourceConfig.model_validate(cfg(binding=None, value_path=None, batch=batch))
    with pytest.raises(ValidationError, match="exactly one of binding_path and binding"):
        MqttSourceConfig.model_validate(
            cfg(
                binding=None, value_path=None, batch={**batch, "binding": "a", "binding_path": "id"}
            )
        )
    ok = MqttSourceConfig.model_validate(
        cfg(binding=None, value_path=None, batch={**batch, "binding": "{1}"})
    )
    assert ok.subscriptions[0].batch is not None


def test_connection_rules() -> None:
    with pytest.raises(ValidationError, match="password_env needs a username"):
        MqttSourceConfig.model_validate({**cfg(), "password_env": "PW"})
    with pytest.raises(ValidationError, match="cert_file and key_file go together"):
        MqttSourceConfig.model_validate({**cfg(), "tls": {"cert_file": "c.pem"}})
    with pytest.raises(ValidationError, match="client_id"):
        MqttSourceConfig.model_validate({**cfg(), "client_id": ""})
    two = cfg()
    two["subscriptions"] = two["subscriptions"] * 2
    with pytest.raises(ValidationError, match="subscribed twice"):
        MqttSourceConfig.model_validate(two)
    with pytest.raises(ValidationError, match="protocol"):
        MqttSourceConfig.model_validate({**cfg(), "protocol": "3.1"})


def test_sample_yaml_validates() -> None:
    doc = yaml.safe_load(SAMPLE.read_text(encoding="utf-8"))
    sections = doc["sources"]
    assert sections
    for section in sections.values():
        assert section["kind"] == "mqtt"
        body = {k: v for k, v in section.items() if k != "kind"}
        MqttSourceConfig.model_validate(body)


def test_sample_through_the_gateway_loader_and_errors_located() -> None:
    from collector.config import ConfigError, parse_config

    text = "version: 1\n" + SAMPLE.read_text(encoding="utf-8")
    _, connectors = parse_config(text, "gw.yaml")
    assert isinstance(connectors["line1-mqtt"], MqttSourceConfig)
    bad = text.replace("plant/line1/gauge/+", "plant/line1/gau+ge/+").replace(
        "value_path: value", "value_pth: value"
    )
    with pytest.raises(ConfigError) as e:
        parse_config(bad, "gw.yaml")
    found = {(p.key, p.message) for p in e.value.problems}
    lines = bad.splitlines()
    assert all(p.file == "gw.yaml" for p in e.value.problems)
    assert ("sources.line1-mqtt.subscriptions[0].value_pth", "unknown key") in found
    topic = next(p for p in e.value.problems if p.key.endswith("subscriptions[0].topic"))
    assert "'+' must be a whole level" in topic.message
    assert "gau+ge" in lines[topic.line - 1]
