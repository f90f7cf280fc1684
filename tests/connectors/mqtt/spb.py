"""A tiny Sparkplug B protobuf *encoder* for tests (the connector only decodes).

Field numbers from ``sparkplug_b.proto`` (Eclipse Sparkplug 3.0):
Payload: 1 timestamp (uint64), 2 metrics (Metric, repeated), 3 seq (uint64), 4 uuid (string).
Metric: 1 name, 2 alias, 3 timestamp, 4 datatype, 5 is_historical, 7 is_null,
10 int_value (uint32), 11 long_value (uint64), 12 float_value (fixed32),
13 double_value (fixed64), 14 boolean_value, 15 string_value, 9 properties (PropertySet).
"""

from __future__ import annotations

import struct
from typing import Any

INT8, INT16, INT32, INT64 = 1, 2, 3, 4
UINT32, UINT64, FLOAT, DOUBLE, BOOLEAN, STRING = 7, 8, 9, 10, 11, 12


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def key(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def f_varint(number: int, value: int) -> bytes:
    return key(number, 0) + varint(value)


def f_bytes(number: int, data: bytes) -> bytes:
    return key(number, 2) + varint(len(data)) + data


def metric(
    name: str | None = None,
    *,
    alias: int | None = None,
    timestamp: int | None = None,
    datatype: int | None = None,
    value: Any = None,
    is_null: bool = False,
    historical: bool = False,
    extra: bytes = b"",
) -> bytes:
    """Encode a Metric; the value field is chosen from ``datatype`` as the spec says."""
    out = b""
    if name is not None:
        out += f_bytes(1, name.encode())
    if alias is not None:
        out += f_varint(2, alias)
    if timestamp is not None:
        out += f_varint(3, timestamp)
    if datatype is not None:
        out += f_varint(4, datatype)
    if historical:
        out += f_varint(5, 1)
    if is_null:
        out += f_varint(7, 1)
    out += extra
    if value is not None and not is_null:
        if datatype in (INT8, INT16, INT32, UINT32):
            out += f_varint(10, value & 0xFFFFFFFF)  # signed: two's complement in 32 bits
        elif datatype in (INT64, UINT64):
            out += f_varint(11, value & 0xFFFFFFFFFFFFFFFF)
        elif datatype == FLOAT:
            out += key(12, 5) + struct.pack("<f", value)
        elif datatype == DOUBLE:
            out += key(13, 1) + struct.pack("<d", value)
        elif datatype == BOOLEAN:
            out += f_varint(14, int(bool(value)))
        elif datatype == STRING:
            out += f_bytes(15, value.encode())
    return out


def payload(
    metrics: list[bytes], *, timestamp: int | None = None, seq: int | None = None, uuid: str = ""
) -> bytes:
    """Encode a Payload."""
    out = b""
    if timestamp is not None:
        out += f_varint(1, timestamp)
    for m in metrics:
        out += f_bytes(2, m)
    if seq is not None:
        out += f_varint(3, seq)
    if uuid:
        out += f_bytes(4, uuid.encode())
    return out
