"""InfluxDB line protocol, encoded by hand: no ``Point`` object per value, no library.

Pure functions (no I/O, no clock): escaping, field formatting, timestamps in a
chosen precision from integer microseconds, one encoder per measurement of the
timeseries contract (``contracts/timeseries.md``) and a
columnar fast path that encodes many points of one measurement from numpy
arrays with one ``repr`` per value.

Escaping follows the line protocol reference:

* measurement: comma and space;
* tag keys, tag values and field keys: comma, equals sign and space;
* string field values: double quote and backslash.

Besides those, every identifier escapes a backslash as ``\\\\`` (so an escape is
never ambiguous, e.g. a value ending in a backslash) and newline, carriage
return and tab as ``\\n``, ``\\r``, ``\\t``, also inside string values: an
encoded line never contains a raw newline, so a batch is lines joined by
``\\n`` and a dead-letter store can keep one line per record. Servers store
``\\n`` as the two characters backslash and ``n`` (there is no escape for a
newline in line protocol).

Lines are canonical: tags sorted by key, empty tag values omitted, so the same
point always gives the same series key and timestamp and a replay overwrites
instead of duplicating.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from connectors.base import Sample

__all__ = [
    "PRECISIONS",
    "EncodedLines",
    "Precision",
    "alarm_line",
    "encode_columns",
    "encode_line",
    "encode_rows",
    "escape_key",
    "escape_measurement",
    "escape_string",
    "fields_text",
    "format_field_value",
    "format_timestamp",
    "gateway_line",
    "measurement_line",
    "sample_line",
    "series_prefix",
    "spc_line",
]

Precision = Literal["ns", "us", "ms", "s"]
PRECISIONS: tuple[Precision, ...] = ("ns", "us", "ms", "s")

_CONTROL = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}
_ESCAPE_MEASUREMENT = str.maketrans({",": "\\,", " ": "\\ ", **_CONTROL})
_ESCAPE_KEY = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ ", **_CONTROL})
_ESCAPE_STRING = str.maketrans({'"': '\\"', **_CONTROL})


def escape_measurement(name: str) -> str:
    """A measurement name escaped for line protocol (comma, space; backslash, newline).

    Raises ValueError for an empty name or one starting with ``#`` (a comment line).
    """
    if not name or name.startswith("#"):
        raise ValueError(f"measurement name {name!r} is empty or starts with '#'")
    return name.translate(_ESCAPE_MEASUREMENT)


def escape_key(text: str) -> str:
    """A tag key, tag value or field key escaped (comma, equals, space; backslash, newline)."""
    return text.translate(_ESCAPE_KEY)


def escape_string(text: str) -> str:
    """The inside of a string field value escaped (double quote, backslash; newline)."""
    return text.translate(_ESCAPE_STRING)


def format_field_value(value: Any) -> str | None:
    """A field value in line protocol, or None when it is not representable.

    float → shortest round-trip ``repr`` (NaN/±inf → None: line protocol has no
    such values); bool → ``true``/``false``; int → ``<n>i``; str → quoted and
    escaped; None → None. numpy scalars count as their Python type.
    """
    if value is None:
        return None
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, int | np.integer):
        return f"{int(value)}i"
    if isinstance(value, float | np.floating):
        v = float(value)
        return repr(v) if math.isfinite(v) else None
    if isinstance(value, str):
        return f'"{value.translate(_ESCAPE_STRING)}"'
    raise TypeError(f"field value of type {type(value).__name__} is not float/int/bool/str")


_DIVISORS = {"us": 1, "ms": 1_000, "s": 1_000_000}


def format_timestamp(time_us: int, precision: Precision = "us") -> str:
    """Integer microseconds since the epoch as a timestamp in ``precision`` (floored)."""
    if precision == "ns":
        return str(int(time_us) * 1000)
    try:
        return str(int(time_us) // _DIVISORS[precision])
    except KeyError:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}") from None


def _tag_part(tags: Mapping[str, Any]) -> str:
    parts = []
    for key in sorted(tags):
        value = tags[key]
        if value is None:
            continue
        text = str(value)
        if not text:
            continue  # an empty tag value is invalid line protocol: the tag is omitted
        if not key:
            raise ValueError("empty tag key")
        parts.append(f",{key.translate(_ESCAPE_KEY)}={text.translate(_ESCAPE_KEY)}")
    return "".join(parts)


def encode_line(
    measurement: str,
    tags: Mapping[str, Any],
    fields: Mapping[str, Any],
    time_us: int,
    precision: Precision = "us",
) -> str | None:
    """One line of line protocol, or None when no field is representable.

    Tags are sorted by key and empty/None tag values omitted (canonical series
    key). Fields whose value is None, NaN or ±inf are left out.
    """
    field_parts = []
    for key, value in fields.items():
        text = format_field_value(value)
        if text is None:
            continue
        if not key:
            raise ValueError("empty field key")
        field_parts.append(f"{key.translate(_ESCAPE_KEY)}={text}")
    if not field_parts:
        return None
    return (
        f"{escape_measurement(measurement)}{_tag_part(tags)} "
        f"{','.join(field_parts)} {format_timestamp(time_us, precision)}"
    )


def measurement_line(
    *,
    gateway: str,
    line: str,
    station: str,
    characteristic: str,
    source: str,
    value: float,
    quality: str,
    time_us: int,
    serial: str | None = None,
    context: Mapping[str, Any] | None = None,
    precision: Precision = "us",
) -> str | None:
    """A ``measurement`` point: one value of a characteristic, context as fields never tags.

    ``value`` is always written as a float (so its field type never changes);
    a bad sample's NaN value is left out and only its quality is written.
    Context keys (lot, operator, …) may not shadow ``value``/``quality``/``serial``.
    """
    fields: dict[str, Any] = {"value": float(value), "quality": str(quality)}
    if serial is not None:
        fields["serial"] = str(serial)
    if context:
        for key, item in context.items():
            if key in ("value", "quality", "serial"):
                raise ValueError(f"context key {key!r} collides with a measurement field")
            fields[key] = item
    tags = {
        "gateway": gateway,
        "line": line,
        "station": station,
        "characteristic": characteristic,
        "source": source,
    }
    return encode_line("measurement", tags, fields, time_us, precision)


def sample_line(
    sample: Sample,
    *,
    gateway: str,
    line: str,
    station: str,
    characteristic: str,
    source: str,
    precision: Precision = "us",
) -> str | None:
    """The ``measurement`` point of a connector :class:`~connectors.base.Sample`.

    Uses the sample's best time (source, else server, else gateway), its value
    and quality, its serial, its ``fields`` as context fields and, for a
    sample with one (a non-good sample), its ``status`` text as a ``status`` field.
    """
    context = dict(sample.fields)
    if sample.status and "status" not in context:
        context["status"] = sample.status
    return measurement_line(
        gateway=gateway,
        line=line,
        station=station,
        characteristic=characteristic,
        source=source,
        value=sample.value,
        quality=str(sample.quality),
        time_us=sample.time_us,
        serial=sample.serial,
        context=context,
        precision=precision,
    )


def spc_line(
    *,
    gateway: str,
    line: str,
    station: str,
    characteristic: str,
    chart: str,
    time_us: int,
    statistic: float,
    center: float | None = None,
    lcl: float | None = None,
    ucl: float | None = None,
    sigma: float | None = None,
    n: int | None = None,
    ewma: float | None = None,
    cusum_upper: float | None = None,
    cusum_lower: float | None = None,
    violations: Sequence[str] | str = (),
    limits_id: str | None = None,
    precision: Precision = "us",
) -> str | None:
    """An ``spc`` point: one plotted statistic with its limits and violated rule codes.

    Numbers are floats (``n`` an integer); ``violations`` is written as
    comma-separated rule codes, empty when none.
    """
    values = {
        "statistic": statistic,
        "center": center,
        "lcl": lcl,
        "ucl": ucl,
        "sigma": sigma,
        "ewma": ewma,
        "cusum_upper": cusum_upper,
        "cusum_lower": cusum_lower,
    }
    fields: dict[str, Any] = {k: None if v is None else float(v) for k, v in values.items()}
    fields["n"] = None if n is None else int(n)
    fields["violations"] = violations if isinstance(violations, str) else ",".join(violations)
    fields["limits_id"] = limits_id
    tags = {
        "gateway": gateway,
        "line": line,
        "station": station,
        "characteristic": characteristic,
        "chart": chart,
    }
    return encode_line("spc", tags, fields, time_us, precision)


def alarm_line(
    *,
    gateway: str,
    line: str,
    station: str,
    characteristic: str,
    rule: str,
    severity: str,
    time_us: int,
    alarm_id: str,
    event: str,
    value: float | None = None,
    seq: int | None = None,
    user: str | None = None,
    comment: str | None = None,
    precision: Precision = "us",
) -> str | None:
    """An ``alarm`` point: one lifecycle event (raised, acknowledged, cleared, …) of an alarm."""
    fields = {
        "alarm_id": str(alarm_id),
        "event": str(event),
        "value": None if value is None else float(value),
        "seq": None if seq is None else int(seq),
        "user": user,
        "comment": comment,
    }
    tags = {
        "gateway": gateway,
        "line": line,
        "station": station,
        "characteristic": characteristic,
        "rule": rule,
        "severity": severity,
    }
    return encode_line("alarm", tags, fields, time_us, precision)


def gateway_line(
    *,
    gateway: str,
    component: str,
    time_us: int,
    metrics: Mapping[str, float | int | bool | str],
    precision: Precision = "us",
) -> str | None:
    """A ``gateway`` self-metrics point (queue depths, outbox size, counters, connector state).

    Keep each metric's Python type stable (int counters stay int): InfluxDB
    rejects a field whose type changes.
    """
    return encode_line(
        "gateway", {"gateway": gateway, "component": component}, metrics, time_us, precision
    )


@dataclass(frozen=True, slots=True)
class EncodedLines:
    """The result of :func:`encode_columns`: the lines, and how many rows had no representable field."""

    lines: list[str]
    skipped: int


def _column_texts(key: str, column: Any, n: int) -> tuple[list[str | None], bool]:
    """``key=value`` texts for one field column (None where missing), and whether any is missing."""
    ek = key.translate(_ESCAPE_KEY) + "="
    arr = np.asarray(column)
    if arr.shape != (n,):
        raise ValueError(f"field {key!r} has shape {arr.shape}, expected ({n},)")
    kind = arr.dtype.kind
    if kind == "f":
        ok = np.isfinite(arr)
        if not ok.any():  # a column the chart does not plot (EWMA, CUSUM of an I-MR point)
            return [None] * n, True
        texts: list[str | None] = [ek + repr(v) for v in arr.astype(np.float64).tolist()]
        missing = not ok.all()
        if missing:
            for i in np.flatnonzero(~ok).tolist():
                texts[i] = None
        return texts, missing
    if kind in "iu":
        return [f"{ek}{v}i" for v in arr.tolist()], False
    if kind == "b":
        return [ek + ("true" if v else "false") for v in arr.tolist()], False
    # strings/objects: None and non-finite floats omitted, each distinct string escaped once
    cache: dict[str, str] = {}
    texts = []
    for v in arr.tolist():
        if v.__class__ is str:
            t = cache.get(v)
            if t is None:
                t = cache[v] = f'{ek}"{v.translate(_ESCAPE_STRING)}"'
        else:
            t = format_field_value(v)
            if t is not None:
                t = ek + t
        texts.append(t)
    return texts, None in texts


def _tag_column(key: str, value: Any, n: int) -> list[str]:
    """``,key=value`` texts for one varying tag ("" where empty), each distinct value escaped once."""
    values = np.asarray(value, dtype=object).tolist()
    if len(values) != n:
        raise ValueError(f"tag {key!r} has {len(values)} values, expected {n}")
    if not key:
        raise ValueError("empty tag key")
    ek = "," + escape_key(key) + "="
    cache: dict[Any, str] = {}
    texts = []
    for v in values:
        t = cache.get(v)
        if t is None:
            text = "" if v is None else str(v)
            t = cache[v] = ek + escape_key(text) if text else ""
        texts.append(t)
    return texts


def _stamps(time_us: Any, precision: str) -> list[int]:
    ts = np.asarray(time_us)
    if ts.ndim != 1:
        raise ValueError("time_us must be one-dimensional")
    if ts.dtype.kind not in "iu":
        raise ValueError(f"time_us must be integer microseconds, got dtype {ts.dtype}")
    if precision == "ns":
        return (ts.astype(np.int64) * 1000).tolist()
    if precision in _DIVISORS:
        return (ts.astype(np.int64) // _DIVISORS[precision]).tolist()
    raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")


def series_prefix(measurement: str, tags: Mapping[str, Any]) -> str:
    """The measurement and its sorted, escaped tags: the start of a line, encoded once and reused.

    Feed it to :func:`encode_rows` (one per row) for a series written many times.
    """
    return escape_measurement(measurement) + _tag_part(tags)


def fields_text(fields: Mapping[str, Any]) -> str:
    """Fields encoded as ``k=v,k2=v2`` (None, NaN, ±inf left out): a block shared by many rows."""
    parts = []
    for key, value in fields.items():
        text = format_field_value(value)
        if text is None:
            continue
        if not key:
            raise ValueError("empty field key")
        parts.append(f"{key.translate(_ESCAPE_KEY)}={text}")
    return ",".join(parts)


_FEW_ROWS = 12  # up to this many rows, field by field (columns cost more per call than they save)


_KEYS: dict[str, str] = {}  # field key → escaped "key=" (a handful of names, reused per call)


def _key_eq(key: str) -> str:
    k = _KEYS.get(key)
    if k is None:
        if len(_KEYS) > 4096:
            _KEYS.clear()
        k = _KEYS[key] = key.translate(_ESCAPE_KEY) + "="
    return k


def _few_texts(col: Any) -> list[str | None]:
    """A short column's value texts (as :func:`format_field_value`), typed arrays at once."""
    if isinstance(col, np.ndarray):
        kind = col.dtype.kind
        values = col.tolist()
        if kind == "f":
            # v - v is 0.0 for a finite float, NaN for NaN and ±inf (left out)
            return [repr(v) if v - v == 0 else None for v in values]
        if kind in "iu":
            return [f"{v}i" for v in values]
        return [format_field_value(v) for v in values]
    return [format_field_value(v.item() if isinstance(v, np.generic) else v) for v in col]


def _encode_few(
    prefixes: Sequence[str],
    fields: Mapping[str, Any],
    stamps: list[int],
    extra: Sequence[str] | None,
) -> EncodedLines:
    n = len(stamps)
    cols = []
    for key, col in fields.items():
        if len(col) != n:
            raise ValueError(f"field {key!r} has {len(col)} values, expected {n}")
        cols.append((_key_eq(key), _few_texts(col)))
    if extra is not None and len(extra) != n:
        raise ValueError(f"{len(extra)} extra field blocks for {n} rows")
    lines = []
    skipped = 0
    for j in range(n):
        parts = [key + texts[j] for key, texts in cols if texts[j] is not None]
        if extra is not None and extra[j]:
            parts.append(extra[j])
        if not parts:
            skipped += 1
            continue
        lines.append(f"{prefixes[j]} {','.join(parts)} {stamps[j]}")
    return EncodedLines(lines, skipped)


def encode_rows(
    prefixes: Sequence[str],
    fields: Mapping[str, Any],
    time_us: Any,
    precision: Precision = "us",
    *,
    extra: Sequence[str] | None = None,
) -> EncodedLines:
    """Lines from per-row series prefixes (:func:`series_prefix`) and field columns.

    ``fields`` as in :func:`encode_columns`; ``extra[j]``, when given, is an
    already encoded field block (:func:`fields_text`, "" for none) appended
    after row j's fields. A column whose values are all missing is left out at
    no cost. The lines are exactly those :func:`encode_line` writes row by row.
    """
    stamps = _stamps(time_us, precision)
    n = len(stamps)
    if len(prefixes) != n:
        raise ValueError(f"{len(prefixes)} prefixes for {n} rows")
    if any(not key for key in fields):
        raise ValueError("empty field key")
    if n <= _FEW_ROWS:
        return _encode_few(prefixes, fields, stamps, extra)
    encoded = []
    for key, col in fields.items():
        texts, missing = _column_texts(key, col, n)
        if missing and all(t is None for t in texts):
            continue
        encoded.append((texts, missing))
    columns = [texts for texts, _ in encoded]
    if extra is not None:
        if len(extra) != n:
            raise ValueError(f"{len(extra)} extra field blocks for {n} rows")
        columns.append([e or None for e in extra])
        encoded.append((columns[-1], True))
    if columns and not any(missing for _, missing in encoded):
        bodies = (
            columns[0] if len(columns) == 1 else list(map(",".join, zip(*columns, strict=True)))
        )
        return EncodedLines(
            [f"{p} {b} {t}" for p, b, t in zip(prefixes, bodies, stamps, strict=True)], 0
        )  # type: ignore[arg-type]
    lines = []
    skipped = 0
    for prefix, stamp, *parts in zip(prefixes, stamps, *columns, strict=True):
        body = ",".join([p for p in parts if p is not None])
        if not body:
            skipped += 1
            continue
        lines.append(f"{prefix} {body} {stamp}")
    return EncodedLines(lines, skipped)


def encode_columns(
    measurement: str,
    tags: Mapping[str, Any],
    fields: Mapping[str, Any],
    time_us: Any,
    precision: Precision = "us",
) -> EncodedLines:
    """Many points of one measurement from columns, without a Python object per value.

    ``tags`` maps a key to either one value (the same for every row) or a
    sequence/array with one value per row; ``fields`` maps a key to an array
    (float, int, bool or object/str) with one value per row; ``time_us`` is an
    integer array of microseconds. Float NaN/inf and None values are left
    out; a row left with no field is skipped and counted in ``skipped``.
    The lines are exactly those :func:`encode_line` writes row by row.
    """
    n = len(_stamps(time_us, precision))
    # tag segments in key order; neighbouring constant tags merged into one string
    segments: list[str | list[str]] = [escape_measurement(measurement)]
    for key in sorted(tags):
        value = tags[key]
        if value is None or isinstance(value, str | int | float | bool):
            part = _tag_part({key: value})
            if isinstance(segments[-1], str):
                segments[-1] += part
            else:
                segments.append(part)
        else:
            segments.append(_tag_column(key, value, n))
    if len(segments) == 1:
        prefixes: Sequence[str] = [segments[0]] * n  # type: ignore[list-item]
    elif len(segments) <= 3 and isinstance(segments[1], list):
        before = segments[0]
        after = segments[2] if len(segments) == 3 else ""
        prefixes = [f"{before}{t}{after}" for t in segments[1]]
    else:
        columns_ = [[s] * n if isinstance(s, str) else s for s in segments]
        prefixes = ["".join(row) for row in zip(*columns_, strict=True)]
    return encode_rows(prefixes, fields, time_us, precision)
