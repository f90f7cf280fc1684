"""A minimal protobuf wire-format decoder for Sparkplug B ``Payload`` messages.

Only the fields the gateway needs are decoded; everything else is skipped by
wire type, so newer producers with extra fields still decode. Field numbers are
those of ``sparkplug_b.proto`` (Eclipse Sparkplug 3.0, ``org.eclipse.tahu.protobuf``)::

    message Payload {
      optional uint64 timestamp = 1;   // ms since the Unix epoch
      repeated Metric metrics   = 2;
      optional uint64 seq       = 3;
      optional string uuid      = 4;   // skipped
      optional bytes  body      = 5;   // skipped
    }
    message Metric {
      optional string name          = 1;
      optional uint64 alias         = 2;
      optional uint64 timestamp     = 3;   // ms since the Unix epoch
      optional uint32 datatype      = 4;
      optional bool   is_historical = 5;
      optional bool   is_transient  = 6;
      optional bool   is_null       = 7;
      // 8 metadata, 9 properties: skipped
      oneof value {
        uint32 int_value     = 10;   // Int8/16/32 (two's complement in 32 bits), UInt8/16/32
        uint64 long_value    = 11;   // Int64 (two's complement in 64 bits), UInt64, DateTime
        float  float_value   = 12;
        double double_value  = 13;
        bool   boolean_value = 14;
        string string_value  = 15;
        // 16 bytes, 17 dataset, 18 template, 19 extension: skipped (not numeric)
      }
    }
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

__all__ = ["DataType", "Metric", "Payload", "SparkplugDecodeError", "decode_payload"]


class DataType:
    """Sparkplug B metric data type codes (the ``DataType`` enum of the spec)."""

    INT8 = 1
    INT16 = 2
    INT32 = 3
    INT64 = 4
    UINT8 = 5
    UINT16 = 6
    UINT32 = 7
    UINT64 = 8
    FLOAT = 9
    DOUBLE = 10
    BOOLEAN = 11
    STRING = 12
    DATETIME = 13
    TEXT = 14


_SIGNED32 = {DataType.INT8, DataType.INT16, DataType.INT32}


class SparkplugDecodeError(ValueError):
    """The bytes are not a well-formed Sparkplug B payload."""


@dataclass(slots=True)
class Metric:
    """One decoded metric. ``value`` is None when the metric has no numeric value."""

    name: str | None = None
    alias: int | None = None
    timestamp_ms: int | None = None
    datatype: int | None = None
    is_historical: bool = False
    is_null: bool = False
    value: float | None = None
    text: str | None = None  # string_value, kept only to name it in a status text


@dataclass(slots=True)
class Payload:
    """One decoded Sparkplug B payload."""

    timestamp_ms: int | None = None
    seq: int | None = None
    metrics: list[Metric] = field(default_factory=list)


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise SparkplugDecodeError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise SparkplugDecodeError("varint longer than 10 bytes")


def _fields(buf: bytes):
    """Yield ``(field_number, wire_type, value)``; value is int for varint/fixed, bytes for LEN."""
    pos = 0
    n = len(buf)
    while pos < n:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise SparkplugDecodeError("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            if pos + 8 > n:
                raise SparkplugDecodeError("truncated 64-bit field")
            value = buf[pos : pos + 8]
            pos += 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > n:
                raise SparkplugDecodeError(f"field {number}: length {length} past the end")
            value = buf[pos : pos + length]
            pos += length
        elif wire == 5:
            if pos + 4 > n:
                raise SparkplugDecodeError("truncated 32-bit field")
            value = buf[pos : pos + 4]
            pos += 4
        else:
            raise SparkplugDecodeError(f"field {number}: unsupported wire type {wire}")
        yield number, wire, value


def _expect(number: int, wire: int, want: int) -> None:
    if wire != want:
        raise SparkplugDecodeError(f"field {number}: wire type {wire}, expected {want}")


def _decode_metric(buf: bytes) -> Metric:
    m = Metric()
    raw_int: int | None = None
    for number, wire, value in _fields(buf):
        if number == 1:
            _expect(number, wire, 2)
            try:
                m.name = value.decode("utf-8")
            except UnicodeDecodeError:
                raise SparkplugDecodeError("metric name is not UTF-8") from None
        elif number == 2:
            _expect(number, wire, 0)
            m.alias = value
        elif number == 3:
            _expect(number, wire, 0)
            m.timestamp_ms = value
        elif number == 4:
            _expect(number, wire, 0)
            m.datatype = value
        elif number == 5:
            _expect(number, wire, 0)
            m.is_historical = bool(value)
        elif number == 7:
            _expect(number, wire, 0)
            m.is_null = bool(value)
        elif number in (10, 11):
            _expect(number, wire, 0)
            raw_int = value & (0xFFFFFFFF if number == 10 else 0xFFFFFFFFFFFFFFFF)
            m.value = float(raw_int)
        elif number == 12:
            _expect(number, wire, 5)
            m.value = struct.unpack("<f", value)[0]
        elif number == 13:
            _expect(number, wire, 1)
            m.value = struct.unpack("<d", value)[0]
        elif number == 14:
            _expect(number, wire, 0)
            m.value = 1.0 if value else 0.0
        elif number == 15:
            _expect(number, wire, 2)
            m.text = value.decode("utf-8", errors="replace")
            m.value = None
        # other fields (metadata, properties, bytes, dataset, template …) are skipped
    if raw_int is not None:
        if m.datatype in _SIGNED32 and raw_int >= 1 << 31:
            m.value = float(raw_int - (1 << 32))
        elif m.datatype == DataType.INT64 and raw_int >= 1 << 63:
            m.value = float(raw_int - (1 << 64))
    return m


def decode_payload(data: bytes) -> Payload:
    """Decode a Sparkplug B payload (NBIRTH/DBIRTH/NDATA/DDATA); raises :class:`SparkplugDecodeError`."""
    p = Payload()
    for number, wire, value in _fields(bytes(data)):
        if number == 1:
            _expect(number, wire, 0)
            p.timestamp_ms = value
        elif number == 2:
            _expect(number, wire, 2)
            p.metrics.append(_decode_metric(value))
        elif number == 3:
            _expect(number, wire, 0)
            p.seq = value
    return p
