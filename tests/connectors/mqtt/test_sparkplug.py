"""Sparkplug B decoding: payloads built with the test encoder in spb.py."""

from __future__ import annotations

import contextlib
import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.mqtt.sparkplug import SparkplugDecodeError, decode_payload
from tests.connectors.mqtt import spb


def test_payload_fields() -> None:
    data = spb.payload(
        [spb.metric("bore", alias=3, timestamp=1_700_000_000_123, datatype=spb.DOUBLE, value=12.5)],
        timestamp=1_700_000_000_000,
        seq=7,
        uuid="abc",
    )
    p = decode_payload(data)
    assert p.timestamp_ms == 1_700_000_000_000
    assert p.seq == 7
    (m,) = p.metrics
    assert (m.name, m.alias, m.timestamp_ms, m.datatype, m.value) == (
        "bore",
        3,
        1_700_000_000_123,
        spb.DOUBLE,
        12.5,
    )
    assert not m.is_null
    assert not m.is_historical


@pytest.mark.parametrize(
    ("datatype", "value", "expected"),
    [
        (spb.INT8, -5, -5.0),
        (spb.INT16, -30000, -30000.0),
        (spb.INT32, -(2**31), float(-(2**31))),
        (spb.INT32, 123, 123.0),
        (spb.UINT32, 2**32 - 1, float(2**32 - 1)),
        (spb.INT64, -(2**40), float(-(2**40))),
        (spb.UINT64, 2**63 + 1, float(2**63 + 1)),
        (spb.FLOAT, 1.25, 1.25),
        (spb.DOUBLE, -0.001, -0.001),
        (spb.BOOLEAN, True, 1.0),
        (spb.BOOLEAN, False, 0.0),
    ],
)
def test_numeric_types(datatype: int, value: object, expected: float) -> None:
    (m,) = decode_payload(spb.payload([spb.metric("x", datatype=datatype, value=value)])).metrics
    assert m.value == expected
    assert m.datatype == datatype


def test_string_is_not_numeric_and_null_is_flagged() -> None:
    p = decode_payload(
        spb.payload(
            [
                spb.metric("s", datatype=spb.STRING, value="hello"),
                spb.metric("n", datatype=spb.DOUBLE, is_null=True),
                spb.metric("h", datatype=spb.FLOAT, value=2.0, historical=True),
            ]
        )
    )
    s, n, h = p.metrics
    assert s.value is None
    assert s.text == "hello"
    assert n.is_null
    assert n.value is None
    assert h.is_historical
    assert h.value == 2.0


def test_nan_double_decodes_as_nan() -> None:
    (m,) = decode_payload(
        spb.payload([spb.metric("x", datatype=spb.DOUBLE, value=math.nan)])
    ).metrics
    assert math.isnan(m.value)


def test_unknown_fields_are_skipped() -> None:
    # properties (9, a nested message), a fixed32 and a fixed64 in unknown field numbers
    extra = spb.f_bytes(9, b"\x0a\x01k") + spb.key(40, 5) + b"\0\0\0\0" + spb.key(41, 1) + b"\0" * 8
    data = spb.payload([spb.metric("x", datatype=spb.INT32, value=4, extra=extra)])
    data += spb.f_bytes(5, b"body") + spb.f_varint(99, 1)
    (m,) = decode_payload(data).metrics
    assert m.value == 4.0


def test_empty_payload() -> None:
    p = decode_payload(b"")
    assert p.metrics == []
    assert p.seq is None


@pytest.mark.parametrize(
    "data",
    [
        b"\x08",  # timestamp key, no varint
        b"\x08\xff\xff",  # truncated varint
        spb.key(2, 2) + b"\x10abc",  # metric length past the end
        spb.key(2, 2) + b"\x02" + spb.key(13, 1) + b"\x00",  # metric with a truncated double
        b"\x0b",  # wire type 3 (group)
        b"\x00\x00",  # field number 0
        spb.key(1, 2) + b"\x00",  # timestamp with the wrong wire type
        b"\x08" + b"\xff" * 11,  # varint too long
        b'{"not": "protobuf"}',
    ],
)
def test_malformed_raises(data: bytes) -> None:
    with pytest.raises(SparkplugDecodeError):
        decode_payload(data)


def test_many_metrics_round_trip() -> None:
    values = [i * 0.5 for i in range(200)]
    data = spb.payload(
        [spb.metric(f"m{i}", alias=i, datatype=spb.DOUBLE, value=v) for i, v in enumerate(values)],
        seq=255,
    )
    p = decode_payload(data)
    assert [m.value for m in p.metrics] == values
    assert [m.alias for m in p.metrics] == list(range(200))
    assert struct.pack("<d", p.metrics[3].value) == struct.pack("<d", 1.5)


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_arbitrary_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    with contextlib.suppress(SparkplugDecodeError):
        decode_payload(data)


@given(
    st.lists(
        st.tuples(
            st.text(max_size=10),
            st.integers(0, 2**64 - 1),
            st.floats(allow_nan=False),
            st.integers(-(2**31), 2**31 - 1),
        ),
        max_size=20,
    ),
    st.integers(0, 255),
)
@settings(max_examples=100, deadline=None)
def test_round_trip(metrics: list[tuple[str, int, float, int]], seq: int) -> None:
    encoded = []
    for name, alias, dbl, i32 in metrics:
        encoded.append(spb.metric(name, alias=alias, datatype=spb.DOUBLE, value=dbl))
        encoded.append(spb.metric(name, datatype=spb.INT32, value=i32))
    p = decode_payload(spb.payload(encoded, seq=seq))
    assert p.seq == seq
    assert len(p.metrics) == 2 * len(metrics)
    for (name, alias, dbl, i32), m_d, m_i in zip(
        metrics, p.metrics[::2], p.metrics[1::2], strict=True
    ):
        assert (m_d.name, m_d.alias, m_d.value) == (name, alias, dbl)
        assert (m_i.name, m_i.value) == (name, float(i32))
