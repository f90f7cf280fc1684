"""Payload mapping: one value, many, batched, context, serial, timestamps, bad data, Sparkplug."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.base import Quality
from connectors.mqtt.config import Subscription
from connectors.mqtt.mapping import SubscriptionMapper, max_quality, topic_matches
from tests.connectors.mqtt import spb

GW = 1_764_144_000_000_000  # 2025-11-26T08:00:00Z in µs


def mapper(**kw: Any) -> SubscriptionMapper:
    kw.setdefault("topic", "plant/+/gauge/+")
    return SubscriptionMapper(Subscription.model_validate(kw))


def js(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def test_single_value_with_topic_template() -> None:
    m = mapper(binding="{1}.{3}", value_path="value")
    out = m.map("plant/line1/gauge/bore", js({"value": 12.5}), GW)
    assert out.errors == []
    (s,) = out.samples
    assert (s.binding, s.value, s.quality) == ("line1.bore", 12.5, Quality.GOOD)
    assert s.gateway_time_us == GW
    assert s.source_time_us is None
    assert s.server_time_us is None


def test_many_values_serial_context_quality() -> None:
    m = mapper(
        bindings=[{"id": "od", "path": "d.od"}, {"id": "id", "path": "d.vals[1]"}],
        serial_path="part.sn",
        context={"lot": "meta.lot", "operator": "meta.op", "absent": "meta.nope"},
        quality_path="q",
    )
    doc = {
        "d": {"od": 49.98, "vals": [0, 30]},
        "part": {"sn": 1234},
        "meta": {"lot": "L7", "op": "ann"},
        "q": "good",
    }
    out = m.map("plant/l/gauge/x", js(doc), GW)
    assert out.errors == []
    od, id_ = out.samples
    assert (od.binding, od.value, id_.binding, id_.value) == ("od", 49.98, "id", 30.0)
    for s in out.samples:
        assert s.serial == "1234"
        assert dict(s.fields) == {"lot": "L7", "operator": "ann"}
        assert s.quality is Quality.GOOD


@pytest.mark.parametrize(
    ("q", "quality", "status"),
    [
        ("uncertain", Quality.UNCERTAIN, "device reported uncertain quality"),
        ("BAD", Quality.BAD, "device reported bad quality"),
        (False, Quality.BAD, "device reported bad quality"),
        (True, Quality.GOOD, ""),
        (192, Quality.UNCERTAIN, "not recognised"),
    ],
)
def test_quality_field(q: Any, quality: Quality, status: str) -> None:
    m = mapper(binding="b", value_path="v", quality_path="q")
    (s,) = m.map("plant/l/gauge/x", js({"v": 1.0, "q": q}), GW).samples
    assert s.quality is quality
    assert status in s.status
    assert math.isnan(s.value) == (quality is Quality.BAD)


@pytest.mark.parametrize(
    ("raw", "unit", "expected"),
    [
        ("2025-11-26T08:00:00.125Z", "ms", GW + 125_000),
        ("2025-11-26T09:00:00.000001+01:00", "ms", GW + 1),
        (1_764_144_000, "s", GW),
        (1_764_144_000.25, "s", GW + 250_000),
        (1_764_144_000_125, "ms", GW + 125_000),
        (1_764_144_000_000_007, "us", GW + 7),
    ],
)
def test_timestamps(raw: Any, unit: str, expected: int) -> None:
    m = mapper(binding="b", value_path="v", timestamp_path="t", timestamp_unit=unit)
    out = m.map("plant/l/gauge/x", js({"v": 2, "t": raw}), GW)
    assert out.errors == []
    (s,) = out.samples
    assert s.source_time_us == expected
    assert s.time_us == expected
    assert s.quality is Quality.GOOD


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("2025-11-26T08:00:00", "no UTC offset"),
        ("yesterday", "not RFC 3339"),
        (True, "neither"),
        ({"a": 1}, "dict"),
        (None, "neither"),
    ],
)
def test_bad_timestamp_is_uncertain_and_counted(raw: Any, why: str) -> None:
    m = mapper(binding="b", value_path="v", timestamp_path="t")
    out = m.map("plant/l/gauge/x", js({"v": 2, "t": raw}), GW)
    (s,) = out.samples
    assert s.value == 2.0
    assert s.quality is Quality.UNCERTAIN
    assert s.source_time_us is None
    assert why in s.status
    assert len(out.errors) == 1


def test_missing_timestamp_is_uncertain() -> None:
    m = mapper(binding="b", value_path="v", timestamp_path="t")
    out = m.map("plant/l/gauge/x", js({"v": 2}), GW)
    assert out.samples[0].quality is Quality.UNCERTAIN
    assert "t is missing" in out.samples[0].status


def test_malformed_json_gives_bad_samples_for_known_bindings() -> None:
    m = mapper(bindings=[{"id": "{3}.a", "path": "a"}, {"id": "{3}.b", "path": "b"}])
    out = m.map("plant/l/gauge/g7", b'{"a": 1, "b":', GW)
    assert [s.binding for s in out.samples] == ["g7.a", "g7.b"]
    for s in out.samples:
        assert s.quality is Quality.BAD
        assert math.isnan(s.value)
        assert "not JSON" in s.status
    assert len(out.errors) == 1


def test_non_utf8_payload() -> None:
    out = mapper(binding="b", value_path="v").map("plant/l/gauge/x", b"\xff\xfe\x00", GW)
    (s,) = out.samples
    assert s.quality is Quality.BAD
    assert out.errors


@pytest.mark.parametrize(
    ("doc", "why"),
    [
        ({"w": 1}, "v is missing"),
        ({"v": "abc"}, "is not a number"),
        ({"v": None}, "null"),
        ({"v": [1]}, "list, not a number"),
        ({"v": {"x": 1}}, "dict, not a number"),
    ],
)
def test_missing_or_non_numeric_value(doc: Any, why: str) -> None:
    out = mapper(binding="b", value_path="v").map("plant/l/gauge/x", js(doc), GW)
    (s,) = out.samples
    assert s.quality is Quality.BAD
    assert math.isnan(s.value)
    assert why in s.status
    assert len(out.errors) == 1


@pytest.mark.parametrize(
    "payload", [b'{"v": NaN}', b'{"v": Infinity}', b'{"v": "nan"}', b'{"v": -Infinity}']
)
def test_non_finite_values_are_bad(payload: bytes) -> None:
    (s,) = mapper(binding="b", value_path="v").map("plant/l/gauge/x", payload, GW).samples
    assert s.quality is Quality.BAD
    assert "not finite" in s.status


def test_numeric_strings_and_booleans_are_numbers() -> None:
    m = mapper(bindings=[{"id": "s", "path": "s"}, {"id": "b", "path": "b"}])
    s, b = m.map("plant/l/gauge/x", js({"s": " 12.5 ", "b": True}), GW).samples
    assert (s.value, b.value) == (12.5, 1.0)


def test_one_bad_field_does_not_spoil_the_others() -> None:
    m = mapper(bindings=[{"id": "a", "path": "a"}, {"id": "b", "path": "b"}])
    a, b = m.map("plant/l/gauge/x", js({"a": 1, "b": "x"}), GW).samples
    assert a.quality is Quality.GOOD
    assert b.quality is Quality.BAD


def test_batched_items_with_binding_path() -> None:
    m = mapper(
        topic="plant/+/cmm",
        batch={
            "items_path": "results",
            "value_path": "v",
            "binding_path": "char",
            "timestamp_path": "t",
            "serial_path": "sn",
            "context": {"probe": "p"},
        },
        timestamp_unit="s",
        context={"lot": "lot"},
        serial_path="sn",
    )
    doc = {
        "lot": "L7",
        "sn": "MSG-SN",
        "results": [
            {"char": "width", "v": 3.2, "t": 1_764_144_000, "sn": "A1", "p": 2},
            {"char": "height", "v": 1.1, "t": 1_764_144_001},
            {"char": "depth", "v": "x", "t": 1},
            {"v": 5},
            {"char": 42, "v": 6, "t": 2},
            {"char": "nots", "v": 8},
            {"char": None, "v": 7},
        ],
    }
    out = m.map("plant/l1/cmm", js(doc), GW)
    by = {s.binding: s for s in out.samples}
    assert set(by) == {"width", "height", "depth", "42", "nots"}
    assert by["width"].value == 3.2
    assert by["width"].source_time_us == GW
    assert by["width"].serial == "A1"
    assert dict(by["width"].fields) == {"lot": "L7", "probe": 2}
    assert by["height"].source_time_us == GW + 1_000_000
    assert by["height"].serial == "MSG-SN"  # falls back to the message's serial
    assert dict(by["height"].fields) == {"lot": "L7"}
    assert by["depth"].quality is Quality.BAD
    assert by["42"].value == 6.0
    assert by["42"].quality is Quality.GOOD
    assert by["nots"].quality is Quality.UNCERTAIN  # timestamp configured but missing
    assert by["nots"].value == 8.0
    # depth non-numeric, item 3 no id, nots without timestamp, item 6 null id
    assert len(out.errors) == 4


def test_batched_root_array_with_fixed_binding() -> None:
    m = mapper(
        topic="plant/+/gauge/+", batch={"items_path": "", "value_path": "", "binding": "{3}"}
    )
    out = m.map("plant/l/gauge/bore", b"[1, 2.5, 3]", GW)
    assert [(s.binding, s.value) for s in out.samples] == [
        ("bore", 1.0),
        ("bore", 2.5),
        ("bore", 3.0),
    ]


def test_batched_not_a_list() -> None:
    fixed = mapper(batch={"items_path": "items", "value_path": "v", "binding": "{3}"})
    out = fixed.map("plant/l/gauge/bore", js({"items": {"v": 1}}), GW)
    (s,) = out.samples
    assert s.binding == "bore"
    assert s.quality is Quality.BAD
    assert "not a list" in s.status
    by_path = mapper(batch={"items_path": "items", "value_path": "v", "binding_path": "id"})
    out = by_path.map("plant/l/gauge/bore", b"garbage", GW)
    assert out.samples == []  # the ids are inside the payload: nothing to attribute it to
    assert len(out.errors) == 1


@pytest.mark.parametrize(
    ("payload", "value", "quality"),
    [
        (b"12.5", 12.5, Quality.GOOD),
        (b" -3\n", -3.0, Quality.GOOD),
        (b"1e3", 1000.0, Quality.GOOD),
        (b"abc", math.nan, Quality.BAD),
        (b"", math.nan, Quality.BAD),
        (b"nan", math.nan, Quality.BAD),
        (b"\xff", math.nan, Quality.BAD),
    ],
)
def test_value_format(payload: bytes, value: float, quality: Quality) -> None:
    m = mapper(format="value", binding="{3}")
    (s,) = m.map("plant/l/gauge/bore", payload, GW).samples
    assert s.binding == "bore"
    assert s.quality is quality
    assert (math.isnan(s.value) and math.isnan(value)) or s.value == value


def sp_mapper() -> SubscriptionMapper:
    return mapper(
        topic="spBv1.0/+/+/+/+",
        format="sparkplug_b",
        metrics={"Gauge/Bore": "{4}.bore", "Gauge/Oval": "{4}.oval", "Txt": "txt", "Nul": "nul"},
    )


def test_sparkplug_ddata() -> None:
    data = spb.payload(
        [
            spb.metric("Gauge/Bore", timestamp=1_764_144_000_125, datatype=spb.DOUBLE, value=12.5),
            spb.metric("Gauge/Oval", datatype=spb.FLOAT, value=0.25),
            spb.metric("Unmapped", datatype=spb.DOUBLE, value=1.0),
            spb.metric("Txt", datatype=spb.STRING, value="hi"),
            spb.metric("Nul", datatype=spb.DOUBLE, is_null=True),
        ],
        timestamp=1_764_144_000_000,
        seq=4,
    )
    out = sp_mapper().map("spBv1.0/plant1/DDATA/edge1/dev9", data, GW)
    by = {s.binding: s for s in out.samples}
    assert set(by) == {"dev9.bore", "dev9.oval", "txt", "nul"}
    assert by["dev9.bore"].value == 12.5
    assert by["dev9.bore"].source_time_us == GW + 125_000
    assert by["dev9.oval"].value == 0.25
    assert by["dev9.oval"].source_time_us == GW  # the payload's timestamp
    assert by["dev9.bore"].fields["seq"] == 4
    assert by["txt"].quality is Quality.BAD
    assert "not numeric" in by["txt"].status
    assert by["nul"].quality is Quality.BAD
    assert "null" in by["nul"].status
    assert len(out.errors) == 2


def test_sparkplug_aliases_learned_from_birth() -> None:
    m = sp_mapper()
    birth = spb.payload([spb.metric("Gauge/Bore", alias=7, datatype=spb.DOUBLE, value=1.0)], seq=0)
    first = m.map("spBv1.0/plant1/DBIRTH/edge1/dev9", birth, GW)
    assert [s.value for s in first.samples] == [1.0]
    data = spb.payload([spb.metric(alias=7, datatype=spb.DOUBLE, value=2.0)], seq=1)
    (s,) = m.map("spBv1.0/plant1/DDATA/edge1/dev9", data, GW).samples
    assert (s.binding, s.value) == ("dev9.bore", 2.0)
    # another device's alias 7 is unknown: ignored, not mis-attributed
    assert m.map("spBv1.0/plant1/DDATA/edge1/dev8", data, GW).samples == []


def test_sparkplug_malformed_is_counted_not_raised() -> None:
    out = sp_mapper().map("spBv1.0/plant1/DDATA/edge1/dev9", b"\x12\x50abc", GW)
    assert out.samples == []
    assert out.errors and "sparkplug" in out.errors[0]


def test_sparkplug_nan_metric_is_bad() -> None:
    data = spb.payload([spb.metric("Gauge/Bore", datatype=spb.DOUBLE, value=math.nan)])
    (s,) = sp_mapper().map("spBv1.0/plant1/DDATA/edge1/dev9", data, GW).samples
    assert s.quality is Quality.BAD


@pytest.mark.parametrize(
    ("flt", "topic", "match"),
    [
        ("a/+/c", "a/b/c", True),
        ("a/+/c", "a/b/d", False),
        ("a/+", "a/b/c", False),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("#", "x/y", True),
        ("#", "$SYS/x", False),
        ("+/x", "$SYS/x", False),
        ("$SYS/#", "$SYS/x", True),
        ("a/b", "a/b", True),
        ("a/b", "a/b/", False),
        ("+/+", "/x", True),
    ],
)
def test_topic_matches(flt: str, topic: str, match: bool) -> None:
    assert topic_matches(flt, topic) is match


def test_max_quality() -> None:
    assert max_quality(Quality.GOOD, Quality.BAD) is Quality.BAD
    assert max_quality(Quality.UNCERTAIN, Quality.GOOD) is Quality.UNCERTAIN


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("vtqsxr"), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(st.one_of(_json_values.map(lambda d: json.dumps(d).encode()), st.binary(max_size=64)))
@settings(max_examples=200, deadline=None)
def test_any_payload_maps_without_raising(payload: bytes) -> None:
    mappers = [
        mapper(binding="b", value_path="v", timestamp_path="t", quality_path="q", serial_path="s"),
        mapper(
            batch={"items_path": "r", "value_path": "v", "binding_path": "x", "timestamp_path": "t"}
        ),
        mapper(batch={"items_path": "", "value_path": "", "binding": "{3}"}),
        mapper(format="value", binding="b"),
        sp_mapper(),
    ]
    for m in mappers:
        topic = "spBv1.0/g/DDATA/e/d" if m.sub.format == "sparkplug_b" else "plant/l/gauge/g"
        out = m.map(topic, payload, GW)
        for s in out.samples:
            assert (s.quality is Quality.BAD) == math.isnan(s.value)
            assert s.quality is Quality.GOOD or s.status


def test_structured_context_becomes_json_text() -> None:
    m = mapper(binding="b", value_path="v", context={"tool": "tool", "n": "n", "ok": "ok"})
    (s,) = m.map(
        "plant/l/gauge/x", js({"v": 1, "tool": {"id": 3, "wear": [1, 2]}, "n": 4, "ok": None}), GW
    ).samples
    assert dict(s.fields) == {"tool": '{"id":3,"wear":[1,2]}', "n": 4}
