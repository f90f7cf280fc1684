"""Configuration of the MQTT input connector (one broker connection per source).

A source subscribes to one or more topic filters. Each subscription says how its
payloads are decoded (``json``, ``sparkplug_b`` or ``value``) and how values in
them map to binding ids. Field paths are dotted keys with ``[i]`` indices
(``data.gauges[0].value``); the empty path is the whole document.

A binding id may contain ``{n}`` to insert topic level *n* (0-based) of the
message's topic: with the filter ``plant/+/gauge/+`` the binding
``"{1}.{3}"`` turns ``plant/line1/gauge/bore`` into ``line1.bore``. Only levels
before a ``#`` may be named, so every matching topic has them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from connectors.mqtt.paths import FieldPath, parse_path

__all__ = [
    "SOURCE_CONFIG",
    "BatchLayout",
    "FieldBinding",
    "MqttPublisherConfig",
    "MqttSourceConfig",
    "Subscription",
    "TlsConfig",
    "check_topic_filter",
    "topic_levels_in",
]

_LEVEL_REF = re.compile(r"\{(\d+)\}")


def check_topic_filter(topic: str) -> str:
    """Validate an MQTT topic filter: ``+`` is a whole level, ``#`` a whole last level."""
    if not topic:
        raise ValueError("a topic filter may not be empty")
    if "\x00" in topic:
        raise ValueError("a topic filter may not contain NUL")
    if len(topic.encode("utf-8")) > 65535:
        raise ValueError("a topic filter is at most 65535 bytes")
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ValueError(f"{topic!r}: '#' must be a whole level and the last one")
        if "+" in level and level != "+":
            raise ValueError(f"{topic!r}: '+' must be a whole level (level {i}: {level!r})")
    return topic


def level_ref() -> re.Pattern[str]:
    """The pattern of a topic level reference ``{n}`` in a binding id template."""
    return _LEVEL_REF


def topic_levels_in(template: str) -> list[int]:
    """The topic level numbers a binding template refers to (``"{1}.{3}"`` → ``[1, 3]``)."""
    return [int(m) for m in _LEVEL_REF.findall(template)]


def _path(value: str | None) -> str | None:
    if value is not None:
        parse_path(value)
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsConfig(_Strict):
    """TLS towards the broker. Without ``ca_file`` the system trust store is used."""

    ca_file: Path | None = Field(None, description="PEM file of CA certificates to trust")
    cert_file: Path | None = Field(None, description="client certificate (PEM) for mutual TLS")
    key_file: Path | None = Field(None, description="private key (PEM) of the client certificate")
    insecure: bool = Field(
        False,
        description="skip host name and certificate verification (test benches only)",
    )

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class FieldBinding(_Strict):
    """One value in a JSON payload bound to a binding id."""

    id: str = Field(..., min_length=1, description="binding id; may use {n} topic levels")
    path: str = Field(..., description="field path of the value, e.g. 'gauges.bore'")

    _check_path = field_validator("path")(_path)


class BatchLayout(_Strict):
    """Many values per message: an array of objects, one sample per object.

    Paths here are relative to each item. Item-level ``serial_path``,
    ``timestamp_path``, ``quality_path`` and ``context`` take precedence over
    the subscription's (which are relative to the whole payload).
    """

    items_path: str = Field(
        ..., description="path of the array of items ('' if the payload is one)"
    )
    value_path: str = Field(..., description="path of the value inside an item")
    binding_path: str | None = Field(None, description="path of the binding id inside an item")
    binding: str | None = Field(None, description="fixed binding id (may use {n} topic levels)")
    serial_path: str | None = Field(None, description="path of the part serial inside an item")
    timestamp_path: str | None = Field(None, description="path of the timestamp inside an item")
    quality_path: str | None = Field(None, description="path of the quality inside an item")
    context: dict[str, str] = Field(
        default_factory=dict, description="field name → path inside an item, copied to fields"
    )

    _check_paths = field_validator(
        "items_path", "value_path", "binding_path", "serial_path", "timestamp_path", "quality_path"
    )(_path)

    @field_validator("context")
    @classmethod
    def _context_paths(cls, v: dict[str, str]) -> dict[str, str]:
        for p in v.values():
            parse_path(p)
        return v

    @model_validator(mode="after")
    def _one_id(self) -> BatchLayout:
        if (self.binding_path is None) == (self.binding is None):
            raise ValueError("give exactly one of binding_path and binding")
        return self


class Subscription(_Strict):
    """One topic filter, its payload format and how its values map to binding ids.

    For ``json`` give exactly one of: ``binding`` + ``value_path`` (one value per
    message), ``bindings`` (several values), or ``batch`` (an array of items).
    For ``value`` (the whole payload is one number in text) give ``binding``.
    For ``sparkplug_b`` give ``metrics`` (metric name → binding id).
    """

    topic: str = Field(..., description="topic filter; '+' one level, '#' the rest")
    format: Literal["json", "sparkplug_b", "value"] = Field("json", description="payload format")
    qos: Literal[0, 1, 2] | None = Field(None, description="overrides the source's qos")
    binding: str | None = Field(None, description="binding id of the one value (may use {n})")
    value_path: str | None = Field(None, description="json: path of the one value")
    bindings: list[FieldBinding] | None = Field(None, description="json: several values")
    batch: BatchLayout | None = Field(None, description="json: an array of items")
    metrics: dict[str, str] | None = Field(
        None, description="sparkplug_b: metric name → binding id (may use {n})"
    )
    serial_path: str | None = Field(None, description="json: path of the part serial")
    timestamp_path: str | None = Field(None, description="json: path of the source timestamp")
    timestamp_unit: Literal["s", "ms", "us"] = Field(
        "ms",
        description="unit of a numeric timestamp (epoch); strings are RFC 3339",
    )
    quality_path: str | None = Field(
        None, description="json: path of a quality ('good'/'uncertain'/'bad' or true/false)"
    )
    context: dict[str, str] = Field(
        default_factory=dict, description="json: field name → path, copied into Sample.fields"
    )

    _check_topic = field_validator("topic")(check_topic_filter)
    _check_paths = field_validator("value_path", "serial_path", "timestamp_path", "quality_path")(
        _path
    )

    @field_validator("context")
    @classmethod
    def _context_paths(cls, v: dict[str, str]) -> dict[str, str]:
        for p in v.values():
            parse_path(p)
        return v

    @model_validator(mode="after")
    def _layout(self) -> Subscription:
        json_only = {
            "value_path": self.value_path,
            "bindings": self.bindings,
            "batch": self.batch,
            "serial_path": self.serial_path,
            "timestamp_path": self.timestamp_path,
            "quality_path": self.quality_path,
            "context": self.context or None,
        }
        if self.format == "json":
            layouts = [
                self.binding is not None or self.value_path is not None,
                self.bindings is not None,
                self.batch is not None,
            ]
            if sum(layouts) != 1:
                raise ValueError("json: give exactly one of binding+value_path, bindings or batch")
            if layouts[0] and (self.binding is None or self.value_path is None):
                raise ValueError("json: binding and value_path go together")
            if self.bindings is not None and not self.bindings:
                raise ValueError("json: bindings is empty")
            if self.metrics is not None:
                raise ValueError("metrics is for sparkplug_b")
        else:
            extra = sorted(k for k, v in json_only.items() if v is not None)
            if extra:
                raise ValueError(f"{self.format}: {', '.join(extra)}: json only")
            if self.format == "value":
                if self.binding is None:
                    raise ValueError("value: binding is required")
                if self.metrics is not None:
                    raise ValueError("metrics is for sparkplug_b")
            else:
                if not self.metrics:
                    raise ValueError("sparkplug_b: metrics (name → binding id) is required")
                if self.binding is not None:
                    raise ValueError("sparkplug_b: use metrics, not binding")
        self._check_templates()
        return self

    def _check_templates(self) -> None:
        levels = self.topic.split("/")
        named = len(levels) - 1 if levels[-1] == "#" else len(levels)
        templates = [self.binding or ""]
        templates += [b.id for b in self.bindings or ()]
        templates += list((self.metrics or {}).values())
        if self.batch is not None and self.batch.binding is not None:
            templates.append(self.batch.binding)
        for t in templates:
            for n in topic_levels_in(t):
                if n >= named:
                    raise ValueError(
                        f"binding {t!r} names topic level {{{n}}} but {self.topic!r} "
                        f"has {named} fixed levels (0-based, before any '#')"
                    )

    def parsed(self, path: str | None) -> FieldPath | None:
        """A path of this subscription, parsed (None stays None)."""
        return None if path is None else parse_path(path)


class MqttSourceConfig(_Strict):
    """One MQTT broker connection and its subscriptions."""

    host: str = Field(..., min_length=1, description="broker host name or address")
    port: int = Field(1883, ge=1, le=65535, description="broker port (8883 is usual for TLS)")
    client_id: str = Field(
        ...,
        min_length=1,
        max_length=256,
        description="stable client id: the broker keeps the persistent session under it",
    )
    username: str | None = Field(None, description="user name, if the broker wants one")
    password_env: str | None = Field(
        None, description="name of the environment variable holding the password"
    )
    tls: TlsConfig | None = Field(None, description="TLS settings; absent = plain TCP")
    keepalive: int = Field(30, ge=5, le=65535, description="MQTT keepalive (seconds)")
    protocol: Literal["5", "3.1.1"] = Field("5", description="MQTT protocol version")
    qos: Literal[0, 1, 2] = Field(1, description="subscription QoS (1: at least once)")
    persistent_session: bool = Field(
        True,
        description="keep the session (subscriptions, queued QoS≥1 messages) across disconnects",
    )
    session_expiry_s: int = Field(
        86400,
        ge=0,
        le=0xFFFFFFFF,
        description="MQTT 5: how long the broker keeps the session after a disconnect",
    )
    connect_timeout_s: float = Field(10.0, gt=0, description="TCP connect and CONNACK timeout")
    queue_size: int = Field(
        10000,
        ge=1,
        description="received messages buffered for the source; when full, reading the socket pauses",
    )
    queue_block_s: float = Field(
        2.0,
        ge=0,
        description="buffer full this long: QoS 0 messages arriving then are dropped (QoS≥1 never)",
    )
    max_batch: int = Field(1000, ge=1, description="messages turned into one emitted batch")
    retained: Literal["skip", "accept"] = Field(
        "skip",
        description="retained messages are a stale last value re-sent on every (re)subscribe: "
        "skip them (default) or map them like live ones",
    )
    reconnect_base_s: float = Field(0.5, gt=0, description="first reconnect delay ceiling")
    reconnect_cap_s: float = Field(30.0, gt=0, description="largest reconnect delay")
    subscriptions: list[Subscription] = Field(..., min_length=1, description="topic filters")

    @model_validator(mode="after")
    def _checks(self) -> MqttSourceConfig:
        if self.password_env is not None and self.username is None:
            raise ValueError("password_env needs a username")
        seen: set[str] = set()
        for s in self.subscriptions:
            if s.topic in seen:
                raise ValueError(f"topic filter {s.topic!r} is subscribed twice")
            seen.add(s.topic)
        return self


class MqttPublisherConfig(_Strict):
    """The broker connection that delivers alarms, states and gateway status to MES.

    The connection keeps a persistent session (MQTT 5: clean start off and a
    session expiry interval; 3.1.1: clean session off) so acknowledgement
    commands sent while the gateway is away are queued by the broker.
    """

    host: str = Field("127.0.0.1", min_length=1, description="broker host name or address")
    port: int = Field(1883, ge=1, le=65535, description="broker port (8883 is usual for TLS)")
    client_id: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="stable client id (the broker keeps the session under it); "
        "absent: shopspc-{gateway_id}",
    )
    protocol: Literal["5", "3.1.1"] = Field("5", description="MQTT protocol version")
    keepalive_s: int = Field(
        30,
        ge=1,
        le=65535,
        description="MQTT keepalive (seconds); the broker publishes the Last Will "
        "(status offline) about 1.5 keepalives after the gateway vanished",
    )
    username: str | None = Field(None, description="user name, if the broker wants one")
    password_env: str | None = Field(
        None, description="name of the environment variable holding the password"
    )
    tls: TlsConfig | None = Field(None, description="TLS settings; absent = plain TCP")
    session_expiry_s: int = Field(
        86400,
        ge=0,
        le=0xFFFFFFFF,
        description="MQTT 5: how long the broker keeps the session after a disconnect",
    )
    max_inflight: int = Field(
        100, ge=1, le=65535, description="QoS 1 messages sent but not yet acknowledged (PUBACK)"
    )
    batch_size: int = Field(
        500, ge=1, description="outbox entries published (and acknowledged) per batch"
    )
    connect_timeout_s: float = Field(10.0, gt=0, description="TCP connect and CONNACK timeout")
    publish_timeout_s: float = Field(
        10.0,
        gt=0,
        description="a batch without all its PUBACKs after this long counts as a lost connection",
    )
    stop_drain_s: float = Field(
        5.0, ge=0, description="on stop, how long pending alarms may still be published"
    )
    reconnect_base_s: float = Field(0.5, gt=0, description="first reconnect delay ceiling")
    reconnect_cap_s: float = Field(30.0, gt=0, description="largest reconnect delay")

    @model_validator(mode="after")
    def _checks(self) -> MqttPublisherConfig:
        if self.password_env is not None and self.username is None:
            raise ValueError("password_env needs a username")
        return self


SOURCE_CONFIG = MqttSourceConfig
