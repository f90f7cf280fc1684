"""Turn one MQTT message into samples, as a subscription's config says: pure, no I/O.

A payload that does not decode, or a value that is missing or not a finite
number, becomes a ``quality=bad`` sample (value NaN, a status text) for each
binding the message was meant for — when the binding is known without the
payload (a fixed or topic-derived id). When it is not (ids inside an unreadable
payload) there is no sample, only an error. Every problem is reported in
:attr:`Mapped.errors` so the source can count it; nothing here raises on bad data.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from connectors.base import Quality, Sample
from connectors.mqtt.config import BatchLayout, Subscription, level_ref
from connectors.mqtt.paths import FieldPath, PathError, format_path, parse_path, resolve
from connectors.mqtt.sparkplug import SparkplugDecodeError, decode_payload

__all__ = ["Mapped", "SubscriptionMapper", "topic_matches"]

_LEVEL_REF = level_ref()
_NAN = float("nan")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
_UNIT_US = {"s": 1_000_000, "ms": 1_000, "us": 1}
_QUALITY_WORDS = {
    "good": Quality.GOOD,
    "ok": Quality.GOOD,
    "uncertain": Quality.UNCERTAIN,
    "bad": Quality.BAD,
}


def topic_matches(topic_filter: str, topic: str) -> bool:
    """True when ``topic`` matches ``topic_filter`` (MQTT rules, incl. ``$`` topics vs wildcards)."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for i, f in enumerate(f_levels):
        if f == "#":
            return True
        if i >= len(t_levels):
            return False
        if f != "+" and f != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)


@dataclass(slots=True)
class Mapped:
    """What one message produced: samples (good or bad) and the problems found."""

    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Meta:
    """Per-message or per-item data shared by the samples it yields."""

    serial: str | None = None
    time_us: int | None = None
    quality: Quality = Quality.GOOD
    status: str = ""
    fields: dict[str, Any] = field(default_factory=dict)


def _number(raw: Any) -> tuple[float | None, str]:
    """A finite float from a JSON value, or None and why not."""
    if raw is None:
        return None, "value is null"
    if isinstance(raw, bool):
        return float(raw), ""
    if isinstance(raw, int | float):
        v = float(raw)
    elif isinstance(raw, str):
        try:
            v = float(raw.strip())
        except ValueError:
            return None, f"value {raw[:40]!r} is not a number"
    else:
        return None, f"value is a {type(raw).__name__}, not a number"
    if not math.isfinite(v):
        return None, f"value {v} is not finite"
    return v, ""


def _time_us(raw: Any, unit: str) -> int:
    """Epoch µs from an RFC 3339 string or an epoch number in ``unit``; ValueError if neither."""
    if isinstance(raw, bool) or raw is None:
        raise ValueError(f"timestamp {raw!r} is neither RFC 3339 text nor a number")
    if isinstance(raw, int):
        return raw * _UNIT_US[unit]
    if isinstance(raw, float):
        if not math.isfinite(raw):
            raise ValueError(f"timestamp {raw} is not finite")
        return round(raw * _UNIT_US[unit])
    if isinstance(raw, str):
        try:
            dt = datetime.fromisoformat(raw)
        except ValueError:
            raise ValueError(f"timestamp {raw[:40]!r} is not RFC 3339") from None
        if dt.tzinfo is None:
            raise ValueError(f"timestamp {raw[:40]!r} has no UTC offset")
        return (dt - _EPOCH) // _ONE_US
    raise ValueError(f"timestamp is a {type(raw).__name__}")


def _quality(raw: Any) -> tuple[Quality, str]:
    if isinstance(raw, bool):
        return (Quality.GOOD, "") if raw else (Quality.BAD, "device reported bad quality")
    if isinstance(raw, str):
        q = _QUALITY_WORDS.get(raw.strip().lower())
        if q is not None:
            return q, "" if q is Quality.GOOD else f"device reported {q.value} quality"
    return Quality.UNCERTAIN, f"quality {str(raw)[:40]!r} not recognised"


def _fill(template: str, levels: list[str]) -> str:
    """Insert topic levels into a binding id template (``{n}``, 0-based)."""
    if "{" not in template:
        return template
    return _LEVEL_REF.sub(lambda m: levels[int(m.group(1))], template)


class _Paths:
    """Parsed optional paths of a subscription or a batch layout."""

    def __init__(self, owner: Subscription | BatchLayout) -> None:
        self.serial = _opt(owner.serial_path)
        self.timestamp = _opt(owner.timestamp_path)
        self.quality = _opt(owner.quality_path)
        self.context = {name: parse_path(p) for name, p in owner.context.items()}

    @property
    def any(self) -> bool:
        return bool(
            self.serial is not None
            or self.timestamp is not None
            or self.quality is not None
            or self.context
        )


def _opt(path: str | None) -> FieldPath | None:
    return None if path is None else parse_path(path)


class SubscriptionMapper:
    """Maps messages of one subscription to samples; keeps Sparkplug aliases learned from births."""

    def __init__(self, sub: Subscription) -> None:
        self.sub = sub
        self._unit = sub.timestamp_unit
        self._paths = _Paths(sub)
        self._value = _opt(sub.value_path)
        self._bindings = [(b.id, parse_path(b.path)) for b in sub.bindings or ()]
        self._batch = sub.batch
        if sub.batch is not None:
            b = sub.batch
            self._items = parse_path(b.items_path)
            self._item_value = parse_path(b.value_path)
            self._item_binding = _opt(b.binding_path)
            self._item_paths = _Paths(b)
        # Sparkplug DDATA usually carries aliases only; names come from the birth certificates.
        self._aliases: dict[str, dict[int, str]] = {}

    def matches(self, topic: str) -> bool:
        """True when a message on ``topic`` belongs to this subscription."""
        return topic_matches(self.sub.topic, topic)

    def map(self, topic: str, payload: bytes, gateway_time_us: int) -> Mapped:
        """Samples for one message (never raises on bad data)."""
        out = Mapped()
        levels = topic.split("/")
        fmt = self.sub.format
        if fmt == "json":
            self._map_json(levels, payload, gateway_time_us, out)
        elif fmt == "value":
            self._map_value(levels, payload, gateway_time_us, out)
        else:
            self._map_sparkplug(topic, levels, payload, gateway_time_us, out)
        return out

    # -- helpers -------------------------------------------------------------

    def _bad(self, out: Mapped, binding: str, status: str, gw: int, meta: _Meta | None = None):
        out.samples.append(
            Sample(
                binding=binding,
                value=_NAN,
                quality=Quality.BAD,
                gateway_time_us=gw,
                source_time_us=meta.time_us if meta else None,
                serial=meta.serial if meta else None,
                fields=dict(meta.fields) if meta else {},
                status=status,
            )
        )

    def _known_bindings(self, levels: list[str]) -> list[str]:
        """Binding ids this message is for, when they do not depend on the payload."""
        if self.sub.binding is not None:
            return [_fill(self.sub.binding, levels)]
        if self._bindings:
            return [_fill(i, levels) for i, _ in self._bindings]
        if self._batch is not None and self._batch.binding is not None:
            return [_fill(self._batch.binding, levels)]
        return []

    def _meta(self, doc: Any, paths: _Paths, base: _Meta | None, out: Mapped) -> _Meta:
        meta = (
            _Meta(base.serial, base.time_us, base.quality, base.status, dict(base.fields))
            if base
            else _Meta()
        )
        if paths.serial is not None:
            try:
                raw = resolve(doc, paths.serial)
                meta.serial = None if raw is None else str(raw)
            except PathError:
                pass  # a part without a serial is still a measurement
        if paths.timestamp is not None:
            try:
                meta.time_us = _time_us(resolve(doc, paths.timestamp), self._unit)
            except (PathError, ValueError) as exc:
                meta.time_us = None
                meta.quality = max_quality(meta.quality, Quality.UNCERTAIN)
                meta.status = f"timestamp: {exc}"
                out.errors.append(meta.status)
        if paths.quality is not None:
            try:
                q, why = _quality(resolve(doc, paths.quality))
            except PathError as exc:
                q, why = Quality.UNCERTAIN, f"quality: {exc}"
            meta.quality = max_quality(meta.quality, q)
            if why:
                meta.status = f"{meta.status}; {why}" if meta.status else why
        for name, p in paths.context.items():
            with contextlib.suppress(PathError):  # context is optional per message
                raw = resolve(doc, p)
                # fields end up as InfluxDB fields: scalars only, structures as compact JSON
                if isinstance(raw, dict | list):
                    meta.fields[name] = json.dumps(raw, separators=(",", ":"))
                elif raw is not None:
                    meta.fields[name] = raw
        return meta

    def _value_sample(
        self, out: Mapped, binding: str, doc: Any, path: FieldPath, gw: int, meta: _Meta
    ) -> None:
        try:
            raw = resolve(doc, path)
        except PathError as exc:
            status = f"{binding}: {exc}"
            out.errors.append(status)
            self._bad(out, binding, str(exc), gw, meta)
            return
        value, why = _number(raw)
        if value is None:
            out.errors.append(f"{binding}: {format_path(path)}: {why}")
            self._bad(out, binding, f"{format_path(path)}: {why}", gw, meta)
            return
        if meta.quality is Quality.BAD:
            self._bad(out, binding, meta.status, gw, meta)
            return
        out.samples.append(
            Sample(
                binding=binding,
                value=value,
                quality=meta.quality,
                gateway_time_us=gw,
                source_time_us=meta.time_us,
                serial=meta.serial,
                fields=meta.fields,
                status=meta.status,
            )
        )

    # -- formats -------------------------------------------------------------

    def _map_json(self, levels: list[str], payload: bytes, gw: int, out: Mapped) -> None:
        try:
            doc = json.loads(payload)
        except (UnicodeDecodeError, ValueError) as exc:
            status = f"payload is not JSON: {exc}"
            out.errors.append(status)
            for b in self._known_bindings(levels):
                self._bad(out, b, status, gw)
            return
        meta = self._meta(doc, self._paths, None, out) if self._paths.any else _Meta()
        if self._value is not None:
            b = _fill(self.sub.binding or "", levels)
            self._value_sample(out, b, doc, self._value, gw, meta)
        elif self._bindings:
            for template, path in self._bindings:
                self._value_sample(out, _fill(template, levels), doc, path, gw, meta)
        else:
            self._map_batch(levels, doc, gw, meta, out)

    def _map_batch(self, levels: list[str], doc: Any, gw: int, meta: _Meta, out: Mapped) -> None:
        assert self._batch is not None
        fixed = self._batch.binding
        try:
            items = resolve(doc, self._items)
            if not isinstance(items, list):
                raise PathError(f"{format_path(self._items)} is not a list")
        except PathError as exc:
            out.errors.append(f"batch: {exc}")
            if fixed is not None:
                self._bad(out, _fill(fixed, levels), f"batch: {exc}", gw, meta)
            return
        for n, item in enumerate(items):
            if fixed is not None:
                binding = _fill(fixed, levels)
            else:
                assert self._item_binding is not None
                try:
                    raw = resolve(item, self._item_binding)
                except PathError as exc:
                    out.errors.append(f"batch item {n}: binding id: {exc}")
                    continue
                if not isinstance(raw, str | int) or isinstance(raw, bool) or raw == "":
                    out.errors.append(f"batch item {n}: binding id {raw!r} is not a name")
                    continue
                binding = str(raw)
            item_meta = (
                self._meta(item, self._item_paths, meta, out) if self._item_paths.any else meta
            )
            self._value_sample(out, binding, item, self._item_value, gw, item_meta)

    def _map_value(self, levels: list[str], payload: bytes, gw: int, out: Mapped) -> None:
        assert self.sub.binding is not None
        binding = _fill(self.sub.binding, levels)
        try:
            text = bytes(payload).decode("utf-8")
        except UnicodeDecodeError:
            text = None
        value, why = _number(text) if text is not None else (None, "payload is not UTF-8 text")
        if value is None:
            out.errors.append(f"{binding}: {why}")
            self._bad(out, binding, why, gw)
            return
        out.samples.append(Sample(binding, value, Quality.GOOD, gw))

    def _map_sparkplug(
        self, topic: str, levels: list[str], payload: bytes, gw: int, out: Mapped
    ) -> None:
        assert self.sub.metrics is not None
        try:
            p = decode_payload(payload)
        except SparkplugDecodeError as exc:
            out.errors.append(f"sparkplug payload: {exc}")
            return
        # spBv1.0/<group>/<type>/<edge>[/<device>]: key aliases by the topic without the type
        device = "/".join(levels[:2] + levels[3:]) if len(levels) >= 4 else topic
        aliases = self._aliases.setdefault(device, {})
        base_fields: dict[str, Any] = {} if p.seq is None else {"seq": p.seq}
        for m in p.metrics:
            if m.name is not None and m.alias is not None:
                aliases[m.alias] = m.name
            name = (
                m.name
                if m.name is not None
                else aliases.get(m.alias)
                if m.alias is not None
                else None
            )
            if name is None or name not in self.sub.metrics:
                continue
            template = self.sub.metrics[name]
            binding = _fill(template, levels)
            ts = m.timestamp_ms if m.timestamp_ms is not None else p.timestamp_ms
            fields = dict(base_fields)
            if m.is_historical:
                fields["historical"] = True
            src = None if ts is None else ts * 1000
            if m.is_null or m.value is None:
                why = (
                    "metric is null"
                    if m.is_null
                    else f"metric datatype {m.datatype} is not numeric"
                )
                out.errors.append(f"{binding}: {why}")
                out.samples.append(
                    Sample(binding, _NAN, Quality.BAD, gw, src, fields=fields, status=why)
                )
                continue
            if not math.isfinite(m.value):
                why = f"metric value {m.value} is not finite"
                out.errors.append(f"{binding}: {why}")
                out.samples.append(
                    Sample(binding, _NAN, Quality.BAD, gw, src, fields=fields, status=why)
                )
                continue
            out.samples.append(Sample(binding, m.value, Quality.GOOD, gw, src, fields=fields))


_RANK = {Quality.GOOD: 0, Quality.UNCERTAIN: 1, Quality.BAD: 2}


def max_quality(a: Quality, b: Quality) -> Quality:
    """The worse of two qualities."""
    return a if _RANK[a] >= _RANK[b] else b
