"""The line-protocol encoder: escaping, field types, precision, NaN, the contract's measurements."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.base import Quality, Sample
from connectors.influxdb.lineprotocol import (
    alarm_line,
    encode_columns,
    encode_line,
    encode_rows,
    escape_key,
    escape_measurement,
    escape_string,
    fields_text,
    format_field_value,
    format_timestamp,
    gateway_line,
    measurement_line,
    sample_line,
    series_prefix,
    spc_line,
)
from tests.connectors.influxdb.lp_parser import parse_line

T = 1_700_000_000_123_456  # µs


# --- escaping --------------------------------------------------------------------------


def test_measurement_escapes_comma_and_space_not_equals() -> None:
    assert escape_measurement("a,b c=d") == "a\\,b\\ c=d"


def test_key_escapes_comma_equals_space() -> None:
    assert escape_key("a,b=c d") == "a\\,b\\=c\\ d"


def test_string_escapes_quote_and_backslash() -> None:
    assert escape_string('say "hi" \\o/') == 'say \\"hi\\" \\\\o/'


def test_newlines_are_escaped_everywhere() -> None:
    assert escape_measurement("a\nb") == "a\\nb"
    assert escape_key("a\r\nb\t") == "a\\r\\nb\\t"
    assert escape_string("line1\nline2") == "line1\\nline2"


@pytest.mark.parametrize("name", ["", "#comment"])
def test_bad_measurement_names(name: str) -> None:
    with pytest.raises(ValueError):
        escape_measurement(name)


# --- field types -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1.5, "1.5"),
        (1.0, "1.0"),
        (0.1 + 0.2, "0.30000000000000004"),
        (1e16, "1e+16"),
        (5e-324, "5e-324"),
        (-0.0, "-0.0"),
        (np.float32(0.5), "0.5"),
        (3, "3i"),
        (-(2**63), "-9223372036854775808i"),
        (np.int64(7), "7i"),
        (True, "true"),
        (np.bool_(False), "false"),
        ("x", '"x"'),
    ],
)
def test_field_value_formats(value: object, text: str) -> None:
    assert format_field_value(value) == text


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, np.float64("nan"), None])
def test_unrepresentable_values_are_none(value: object) -> None:
    assert format_field_value(value) is None


def test_unsupported_type_raises() -> None:
    with pytest.raises(TypeError):
        format_field_value(b"bytes")


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_floats_round_trip_exactly(x: float) -> None:
    line = encode_line("m", {}, {"v": x}, 0)
    assert line is not None
    assert parse_line(line).fields["v"] == x


# --- precision -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("precision", "text"),
    [
        ("ns", "1700000000123456000"),
        ("us", "1700000000123456"),
        ("ms", "1700000000123"),
        ("s", "1700000000"),
    ],
)
def test_timestamp_precision(precision: str, text: str) -> None:
    assert format_timestamp(T, precision) == text  # type: ignore[arg-type]
    assert encode_line("m", {}, {"v": 1.0}, T, precision).endswith(" " + text)  # type: ignore[arg-type, union-attr]


def test_bad_precision() -> None:
    with pytest.raises(ValueError):
        format_timestamp(T, "m")  # type: ignore[arg-type]


# --- lines -----------------------------------------------------------------------------


def test_nan_field_is_omitted_and_line_without_fields_is_skipped() -> None:
    assert encode_line("m", {"a": "1"}, {"v": math.nan, "q": "bad"}, 5) == 'm,a=1 q="bad" 5'
    assert encode_line("m", {"a": "1"}, {"v": math.nan, "w": None}, 5) is None


def test_empty_tag_values_are_omitted_and_tags_sorted() -> None:
    line = encode_line("m", {"z": "1", "a": "2", "e": "", "n": None}, {"v": 1}, 5)
    assert line == "m,a=2,z=1 v=1i 5"


def test_empty_keys_raise() -> None:
    with pytest.raises(ValueError):
        encode_line("m", {"": "x"}, {"v": 1}, 5)
    with pytest.raises(ValueError):
        encode_line("m", {}, {"": 1}, 5)


def test_series_key_is_canonical() -> None:
    """Idempotent writes: tag order and repetition never change the line."""
    a = encode_line("m", {"b": "2", "a": "1"}, {"v": 1.5}, T)
    b = encode_line("m", dict(reversed(list({"b": "2", "a": "1"}.items()))), {"v": 1.5}, T)
    assert a == b == "m,a=1,b=2 v=1.5 1700000000123456"


# --- the contract's measurements ------------------------------------------------------


def test_measurement_point() -> None:
    line = measurement_line(
        gateway="gw1",
        line="L 1",
        station="st,2",
        characteristic="bore=d",
        source="opcua",
        value=12,
        quality="good",
        time_us=T,
        serial="SN-1",
        context={"lot": "LOT 7", "operator": "ann"},
    )
    assert line is not None
    p = parse_line(line)
    assert p.measurement == "measurement"
    assert p.tags == {
        "gateway": "gw1",
        "line": "L 1",
        "station": "st,2",
        "characteristic": "bore=d",
        "source": "opcua",
    }
    assert p.fields == {
        "value": 12.0,
        "quality": "good",
        "serial": "SN-1",
        "lot": "LOT 7",
        "operator": "ann",
    }
    assert "value=12.0" in line  # always a float, never an integer field
    assert p.timestamp == T


def test_bad_measurement_keeps_quality_without_value() -> None:
    line = measurement_line(
        gateway="g",
        line="l",
        station="s",
        characteristic="c",
        source="modbus",
        value=math.nan,
        quality="bad",
        time_us=T,
    )
    assert line is not None
    assert parse_line(line).fields == {"quality": "bad"}


def test_context_cannot_shadow_fields() -> None:
    with pytest.raises(ValueError):
        measurement_line(
            gateway="g",
            line="l",
            station="s",
            characteristic="c",
            source="mqtt",
            value=1.0,
            quality="good",
            time_us=T,
            context={"value": 2},
        )


def test_spc_point() -> None:
    line = spc_line(
        gateway="g",
        line="l",
        station="s",
        characteristic="c",
        chart="xbar",
        time_us=T,
        statistic=10.25,
        center=10.0,
        lcl=9.0,
        ucl=11.0,
        sigma=0.33,
        n=5,
        violations=["N1", "WE2"],
        limits_id="lim-3",
    )
    assert line is not None
    p = parse_line(line)
    assert p.measurement == "spc"
    assert p.tags["chart"] == "xbar"
    assert p.fields == {
        "statistic": 10.25,
        "center": 10.0,
        "lcl": 9.0,
        "ucl": 11.0,
        "sigma": 0.33,
        "n": 5,
        "violations": "N1,WE2",
        "limits_id": "lim-3",
    }


def test_spc_point_no_violations_is_empty_string_and_ewma_used() -> None:
    line = spc_line(
        gateway="g",
        line="l",
        station="s",
        characteristic="c",
        chart="ewma",
        time_us=T,
        statistic=1.0,
        ewma=1.1,
    )
    assert line is not None
    p = parse_line(line)
    assert p.fields["violations"] == ""
    assert p.fields["ewma"] == 1.1
    assert "cusum_upper" not in p.fields


def test_alarm_point() -> None:
    line = alarm_line(
        gateway="g",
        line="l",
        station="s",
        characteristic="c",
        rule="N1",
        severity="major",
        time_us=T,
        alarm_id="a-1",
        event="acknowledged",
        value=12.5,
        seq=3,
        user="bob",
        comment='gauge "B" re-zeroed\nchecked',
    )
    assert line is not None
    assert "\n" not in line
    p = parse_line(line)
    assert p.measurement == "alarm"
    assert p.tags == {
        "gateway": "g",
        "line": "l",
        "station": "s",
        "characteristic": "c",
        "rule": "N1",
        "severity": "major",
    }
    assert p.fields == {
        "alarm_id": "a-1",
        "event": "acknowledged",
        "value": 12.5,
        "seq": 3,
        "user": "bob",
        "comment": 'gauge "B" re-zeroed\nchecked',
    }


def test_gateway_point() -> None:
    line = gateway_line(
        gateway="g",
        component="outbox",
        time_us=T,
        metrics={"size": 12, "points_in": 100, "rate": 2.5, "state": "connected", "up": True},
    )
    assert line is not None
    p = parse_line(line)
    assert (p.measurement, p.tags) == ("gateway", {"component": "outbox", "gateway": "g"})
    assert p.fields == {"size": 12, "points_in": 100, "rate": 2.5, "state": "connected", "up": True}
    assert "size=12i" in line


# --- columnar fast path ---------------------------------------------------------------


def test_columns_match_single_lines() -> None:
    ts = np.array([T, T + 1000, T + 2000], dtype=np.int64)
    value = np.array([1.5, np.nan, 2.5])
    quality = np.array(["good", "bad", "good"], dtype=object)
    station = ["s 1", "s 2", ""]
    enc = encode_columns(
        "measurement",
        {"gateway": "g", "station": station, "source": "opcua", "line": None},
        {"value": value, "quality": quality, "n": np.array([1, 2, 3])},
        ts,
        "ms",
    )
    expected = [
        encode_line(
            "measurement",
            {"gateway": "g", "station": station[i], "source": "opcua"},
            {"value": float(value[i]), "quality": quality[i], "n": i + 1},
            int(ts[i]),
            "ms",
        )
        for i in range(3)
    ]
    assert enc.lines == expected
    assert enc.skipped == 0


def test_columns_skip_rows_without_fields() -> None:
    enc = encode_columns(
        "m",
        {"a": "x"},
        {"v": np.array([np.nan, 1.0, np.inf]), "s": np.array([None, None, None], dtype=object)},
        np.array([1, 2, 3]),
    )
    assert enc.lines == ["m,a=x v=1.0 2"]
    assert enc.skipped == 2


def test_columns_check_shapes() -> None:
    with pytest.raises(ValueError):
        encode_columns("m", {}, {"v": np.ones(2)}, np.array([1, 2, 3]))
    with pytest.raises(ValueError):
        encode_columns("m", {"t": ["a"]}, {"v": np.ones(3)}, np.array([1, 2, 3]))
    with pytest.raises(ValueError):
        encode_columns("m", {}, {"v": np.ones(3)}, np.array([1.0, 2.0, 3.0]))


# --- properties -----------------------------------------------------------------------

names = st.text(min_size=1, max_size=20).filter(lambda s: not s.startswith("#"))
keys = st.text(min_size=1, max_size=12)
values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
    st.text(max_size=30),
)


def _expected_field(v: object) -> object:
    return None if isinstance(v, float) and not math.isfinite(v) else v


@settings(max_examples=300, deadline=None)
@given(
    names,
    st.dictionaries(keys, st.text(max_size=20), max_size=5),
    st.dictionaries(keys, values, max_size=6),
    st.integers(min_value=0, max_value=2**62 // 1000),
    st.sampled_from(["ns", "us", "ms", "s"]),
)
def test_any_strings_round_trip(measurement, tags, fields, t_us, precision) -> None:
    line = encode_line(measurement, tags, fields, t_us, precision)
    kept = {k: _expected_field(v) for k, v in fields.items()}
    kept = {k: v for k, v in kept.items() if v is not None}
    if not kept:
        assert line is None
        return
    assert line is not None
    assert "\n" not in line
    assert "\r" not in line
    p = parse_line(line)
    assert p.measurement == measurement
    assert p.tags == {k: v for k, v in tags.items() if v}
    assert list(p.tags) == sorted(p.tags)
    assert p.fields == kept
    assert p.timestamp == int(format_timestamp(t_us, precision))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.text(max_size=8),
            st.floats(allow_nan=True, allow_infinity=True),
            st.integers(min_value=-(2**40), max_value=2**40),
            st.one_of(st.none(), st.text(max_size=8)),
            st.integers(min_value=0, max_value=2**50),
        ),
        max_size=20,
    )
)
def test_columns_equal_rows(rows) -> None:
    """Batch equals stream: the fast path writes exactly what encode_line writes row by row."""
    tag = [r[0] for r in rows]
    enc = encode_columns(
        "m x",
        {"const": "c", "tag": tag},
        {
            "f": np.array([r[1] for r in rows], dtype=np.float64),
            "i": np.array([r[2] for r in rows], dtype=np.int64),
            "s": np.array([r[3] for r in rows], dtype=object),
        },
        np.array([r[4] for r in rows], dtype=np.int64),
    )
    expected = [
        encode_line("m x", {"const": "c", "tag": r[0]}, {"f": r[1], "i": r[2], "s": r[3]}, r[4])
        for r in rows
    ]
    assert enc.lines == [x for x in expected if x is not None]
    assert enc.skipped == sum(x is None for x in expected)


def test_sample_line() -> None:
    sample = Sample(
        binding="bore",
        value=math.nan,
        quality=Quality.BAD,
        gateway_time_us=T + 5,
        server_time_us=T,
        serial="SN1",
        fields={"lot": "L7"},
        status="BadCommunicationError",
    )
    line = sample_line(
        sample, gateway="g", line="l", station="s", characteristic="bore", source="opcua"
    )
    assert line is not None
    p = parse_line(line)
    assert p.timestamp == T
    assert p.tags["source"] == "opcua"
    assert p.fields == {
        "quality": "bad",
        "serial": "SN1",
        "lot": "L7",
        "status": "BadCommunicationError",
    }


_texts = st.text(alphabet=st.sampled_from('ab ,="\\\n\t中x'), max_size=6)
_floats = st.floats(allow_nan=True, allow_infinity=True, width=64)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b,c", "d e"]),
            _floats,
            st.one_of(st.none(), _texts),
            st.dictionaries(
                st.sampled_from(["lot", "op x", "t=1"]),
                st.one_of(_texts, st.integers(-5, 5), _floats, st.booleans()),
                max_size=3,
            ),
            st.integers(0, 2**52),
        ),
        max_size=30,  # both encoders: field by field up to _FEW_ROWS rows, column-wise above
    ),
    st.sampled_from(["ns", "us", "ms", "s"]),
)
@settings(max_examples=200, deadline=None)
def test_rows_with_prefixes_and_extra_blocks_match_single_lines(rows, precision) -> None:
    prefixes = [series_prefix("m", {"char": c, "gw": "g 1"}) for c, *_ in rows]
    values = np.array([v for _, v, *_ in rows], dtype=np.float64)
    serials = [s for _, _, s, _, _ in rows]
    extra = [fields_text(ctx) for *_, ctx, _ in rows]
    times = np.array([t for *_, t in rows], dtype=np.int64)
    enc = encode_rows(prefixes, {"value": values, "serial": serials}, times, precision, extra=extra)
    expected = []
    for c, v, s, ctx, t in rows:
        line = encode_line(
            "m", {"char": c, "gw": "g 1"}, {"value": v, "serial": s, **ctx}, t, precision
        )
        if line is not None:
            expected.append(line)
    assert enc.lines == expected
    assert enc.skipped == len(rows) - len(expected)
