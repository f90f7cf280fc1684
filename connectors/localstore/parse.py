"""A small strict InfluxDB line-protocol parser: the inverse of :mod:`connectors.influxdb.lineprotocol`.

Pure functions, no I/O. It reads the canonical escaping the encoder writes
(in identifiers a backslash escapes comma, equals sign, space and backslash;
``\\n``, ``\\r``, ``\\t`` are newline, carriage return and tab, also inside
string values) and ordinary line protocol from other writers (a backslash
before any other character is kept literally, as InfluxDB does).

Strict where a lenient reading would lose data or idempotence: a line without
a timestamp, an empty tag value, a repeated tag or field key, NaN/inf, an
integer outside int64 and trailing garbage are errors, each with its column.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

__all__ = ["LineProtocolError", "ParsedPoint", "parse_line", "split_lines", "to_us"]

Precision = Literal["ns", "us", "ms", "s"]

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1

# One token each; the alternatives are disjoint, so matching never backtracks badly.
_MEASUREMENT = re.compile(r"(?:[^,\\ \n\r]|\\.)+")
_KEY = re.compile(r"(?:[^,=\\ \n\r]|\\.)+")
_STRING = re.compile(r'"((?:[^"\\\n\r]|\\.)*)"')
_BARE = re.compile(r'[^,\\ "\n\r]+')
_FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INT = re.compile(r"([+-]?\d+)[iu]")
_STAMP = re.compile(r"-?\d+")
_BOOLS = {
    "t": True,
    "T": True,
    "true": True,
    "True": True,
    "TRUE": True,
    "f": False,
    "F": False,
    "false": False,
    "False": False,
    "FALSE": False,
}
_ESCAPED = re.compile(r"\\(.)")
_CONTROL = {"n": "\n", "r": "\r", "t": "\t"}
_IDENT_ESCAPES = {",": ",", "=": "=", " ": " ", "\\": "\\", **_CONTROL}
_STRING_ESCAPES = {'"': '"', "\\": "\\", **_CONTROL}
_TO_US = {"ns": (1, 1000), "us": (1, 1), "ms": (1000, 1), "s": (1_000_000, 1)}


class LineProtocolError(ValueError):
    """A line that is not valid line protocol; ``column`` is 1-based."""

    def __init__(self, message: str, column: int) -> None:
        super().__init__(f"column {column}: {message}")
        self.message = message
        self.column = column


@dataclass(frozen=True, slots=True)
class ParsedPoint:
    """One parsed point: measurement, tags (unescaped), typed fields, time in µs since the epoch."""

    measurement: str
    tags: Mapping[str, str]
    fields: Mapping[str, Any]
    time_us: int


def _ident(raw: str) -> str:
    if "\\" not in raw:
        return raw
    return _ESCAPED.sub(lambda m: _IDENT_ESCAPES.get(m[1], m[0]), raw)


def _string(raw: str) -> str:
    if "\\" not in raw:
        return raw
    return _ESCAPED.sub(lambda m: _STRING_ESCAPES.get(m[1], m[0]), raw)


def _bare_value(raw: str, column: int) -> Any:
    if raw in _BOOLS:
        return _BOOLS[raw]
    m = _INT.fullmatch(raw)
    if m:
        value = int(m[1])
        if raw.endswith("u") and value < 0:
            raise LineProtocolError(f"negative unsigned integer {raw!r}", column)
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise LineProtocolError(f"integer {raw!r} is outside int64", column)
        return value
    if _FLOAT.fullmatch(raw):
        value = float(raw)
        if value in (float("inf"), float("-inf")):
            raise LineProtocolError(f"float {raw!r} is out of range", column)
        return value
    raise LineProtocolError(f"field value {raw!r} is not a number, boolean or string", column)


def to_us(stamp: int, precision: Precision) -> int:
    """A timestamp in ``precision`` as integer microseconds (floored for ns)."""
    try:
        mul, div = _TO_US[precision]
    except KeyError:
        raise ValueError(f"precision {precision!r} is not one of ns, us, ms, s") from None
    return stamp * mul // div


# Parsed heads (measurement and tags) of lines without a backslash in them: a gateway's
# lines repeat one head per characteristic and measurement, and parsing it is about half
# the work. Such a head ends at the line's first space (a space in a name is escaped).
_HEADS: dict[str, tuple[str, Mapping[str, str]]] = {}
_HEADS_MAX = 8192


def parse_line(line: str, precision: Precision = "us") -> ParsedPoint:
    """Parse one line of line protocol (no newline in it); raises :class:`LineProtocolError`."""
    n = len(line)
    space = line.find(" ")
    cached = _HEADS.get(line[:space]) if space > 0 else None
    if cached is not None:
        measurement, tags = cached
        pos = space
    else:
        measurement, tags, pos = _parse_head(line, n)
        head = line[:pos]
        if "\\" not in head:
            if len(_HEADS) >= _HEADS_MAX:
                _HEADS.clear()
            _HEADS[head] = (measurement, tags)
    return _parse_rest(line, n, pos, measurement, tags, precision)


def _parse_head(line: str, n: int) -> tuple[str, Mapping[str, str], int]:
    """Measurement and tags (read-only: a cached head is shared) and where they end."""
    m = _MEASUREMENT.match(line)
    if not m:
        raise LineProtocolError("expected a measurement name", 1)
    measurement = _ident(m[0])
    pos = m.end()
    tags: dict[str, str] = {}
    while pos < n and line[pos] == ",":
        km = _KEY.match(line, pos + 1)
        if not km:
            raise LineProtocolError("expected a tag key after ','", pos + 2)
        pos = km.end()
        if pos >= n or line[pos] != "=":
            raise LineProtocolError("expected '=' after the tag key", pos + 1)
        vm = _KEY.match(line, pos + 1)
        if not vm:
            raise LineProtocolError("empty tag value", pos + 2)
        key = _ident(km[0])
        if key in tags:
            raise LineProtocolError(f"tag {key!r} appears twice", km.start() + 1)
        tags[key] = _ident(vm[0])
        pos = vm.end()
    return measurement, MappingProxyType(tags), pos


def _parse_rest(
    line: str,
    n: int,
    pos: int,
    measurement: str,
    tags: Mapping[str, str],
    precision: Precision,
) -> ParsedPoint:
    """The fields and the timestamp after the head that ends at ``pos``."""
    if pos >= n or line[pos] != " ":
        raise LineProtocolError("expected a space before the fields", pos + 1)
    pos += 1
    fields: dict[str, Any] = {}
    while True:
        km = _KEY.match(line, pos)
        if not km:
            raise LineProtocolError("expected a field key", pos + 1)
        pos = km.end()
        if pos >= n or line[pos] != "=":
            raise LineProtocolError("expected '=' after the field key", pos + 1)
        pos += 1
        key = _ident(km[0])
        if key in fields:
            raise LineProtocolError(f"field {key!r} appears twice", km.start() + 1)
        if pos < n and line[pos] == '"':
            sm = _STRING.match(line, pos)
            if not sm:
                raise LineProtocolError("unterminated string value", pos + 1)
            fields[key] = _string(sm[1])
            pos = sm.end()
        else:
            bm = _BARE.match(line, pos)
            if not bm:
                raise LineProtocolError("expected a field value", pos + 1)
            fields[key] = _bare_value(bm[0], pos + 1)
            pos = bm.end()
        if pos < n and line[pos] == ",":
            pos += 1
            continue
        break
    if pos >= n:
        raise LineProtocolError(
            "no timestamp (a point without one would be stamped on arrival: not idempotent)",
            pos + 1,
        )
    if line[pos] != " ":
        raise LineProtocolError("expected a space before the timestamp", pos + 1)
    tm = _STAMP.fullmatch(line, pos + 1)
    if not tm:
        raise LineProtocolError(f"bad timestamp {line[pos + 1 :]!r}", pos + 2)
    stamp = int(tm[0])
    time_us = to_us(stamp, precision)
    if not _INT64_MIN <= time_us <= _INT64_MAX:
        raise LineProtocolError(f"timestamp {tm[0]} is outside int64 µs", pos + 2)
    return ParsedPoint(measurement, tags, fields, time_us)


def split_lines(item: str | bytes) -> list[str]:
    """The lines of one batch item: split at newlines; blank and ``#`` comment lines dropped.

    Raises :class:`LineProtocolError` (column 1) when bytes are not UTF-8.
    """
    if isinstance(item, bytes | bytearray | memoryview):
        try:
            text = bytes(item).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise LineProtocolError(f"not UTF-8 ({exc.reason} at byte {exc.start})", 1) from None
    else:
        text = item
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise LineProtocolError(
                f"not encodable as UTF-8 ({exc.reason})", exc.start + 1
            ) from None
    out = []
    for line in text.split("\n"):
        line = line.removesuffix("\r").lstrip(" \t")
        if line and not line.startswith("#"):
            out.append(line)
    return out
