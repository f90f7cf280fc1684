"""The strict line-protocol parser: the inverse of the InfluxDB encoders, errors with columns."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.influxdb.lineprotocol import encode_line
from connectors.localstore.parse import LineProtocolError, parse_line, split_lines, to_us
from tests.connectors.localstore.helpers import contract_points, encode

NASTY = [
    "a b",
    "a,b",
    "a=b",
    'q"uote',
    "back\\slash",
    "ends\\",
    "new\nline",
    "cr\rtab\t",
    "Zoë ∑",
    "\\n",
]


@pytest.mark.parametrize("point", contract_points(), ids=lambda p: p["measurement"])
def test_contract_lines_round_trip(point: dict) -> None:
    p = parse_line(encode(point))
    assert p.measurement == point["measurement"]
    assert p.tags == point["tags"]
    assert p.fields == point["fields"]
    assert p.time_us == point["time_us"]


@pytest.mark.parametrize("text", NASTY)
def test_escaping_edge_cases_round_trip(text: str) -> None:
    line = encode_line(
        "m" + text, {"k" + text: "v" + text, "plain": text}, {"f" + text: text, "x": 1.5}, 7
    )
    assert line is not None and "\n" not in line
    p = parse_line(line)
    assert p.measurement == "m" + text
    assert p.tags == {"k" + text: "v" + text, "plain": text}
    assert p.fields == {"f" + text: text, "x": 1.5}
    assert type(p.fields["x"]) is float


keys = st.text(min_size=1, max_size=8).filter(lambda s: not s.startswith("#"))
values = st.one_of(
    st.text(max_size=12),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
)


@settings(max_examples=200, deadline=None)
@given(
    measurement=keys,
    tags=st.dictionaries(keys, st.text(min_size=1, max_size=8), max_size=4),
    fields=st.dictionaries(keys, values, min_size=1, max_size=5),
    time_us=st.integers(min_value=-(2**62), max_value=2**62),
)
def test_any_encoded_line_parses_back(measurement, tags, fields, time_us) -> None:
    line = encode_line(measurement, tags, fields, time_us)
    assert line is not None
    p = parse_line(line)
    assert (p.measurement, dict(p.tags), p.time_us) == (measurement, tags, time_us)
    assert p.fields == fields
    assert [type(v) for v in p.fields.values()] == [type(v) for v in fields.values()]


@pytest.mark.parametrize(
    ("line", "message", "column"),
    [
        ("m v=1", "no timestamp", 6),
        ("m,t= v=1 1", "empty tag value", 5),
        ("m,=x v=1 1", "expected a tag key", 3),
        ("m,t v=1 1", "expected '='", 4),
        ("m,t=a,t=b v=1 1", "appears twice", 7),
        ("m v=1,v=2 1", "appears twice", 7),
        ("m v=NaN 1", "not a number", 5),
        ("m v=inf 1", "not a number", 5),
        ("m v=1e400 1", "out of range", 5),
        ("m v=9223372036854775808i 1", "outside int64", 5),
        ("m v=-1u 1", "negative unsigned", 5),
        ('m v="open 1', "unterminated string", 5),
        ("m v=1 1x", "bad timestamp", 7),
        ("m v=1 1 2", "bad timestamp", 7),
        ("m  v=1 1", "expected a field key", 3),
        ("m v=1  1", "bad timestamp", 7),
        ("m v= 1", "expected a field value", 5),
        ("m\\", "expected a space", 2),
        ("m", "expected a space", 2),
        (",t=1 v=1 1", "expected a measurement", 1),
        ("m 1", "expected '='", 4),
        ("m v=1 1 ", "bad timestamp", 7),
    ],
)
def test_malformed_lines_are_refused_with_a_column(line: str, message: str, column: int) -> None:
    with pytest.raises(LineProtocolError) as e:
        parse_line(line)
    assert message in e.value.message
    assert e.value.column == column
    assert str(e.value).startswith(f"column {column}: ")


def test_foreign_writers_literal_backslash_booleans_unsigned() -> None:
    p = parse_line(r"cpu\x,host=a\b v=T,w=FALSE,u=7u,f=-.5e-3,i=-3i,s=" + '"c:\\dir" 1')
    assert p.measurement == "cpu\\x"
    assert p.tags == {"host": "a\\b"}
    assert p.fields == {"v": True, "w": False, "u": 7, "f": -0.0005, "i": -3, "s": "c:\\dir"}


@pytest.mark.parametrize(
    ("precision", "stamp", "us"),
    [("ns", 1_500, 1), ("ns", -1, -1), ("us", 5, 5), ("ms", 5, 5_000), ("s", 5, 5_000_000)],
)
def test_precision_to_microseconds(precision, stamp, us) -> None:
    assert to_us(stamp, precision) == us
    assert parse_line(f"m v=1 {stamp}", precision).time_us == us


def test_bad_precision() -> None:
    with pytest.raises(ValueError, match="precision"):
        to_us(1, "m")  # type: ignore[arg-type]


def test_split_lines_comments_crlf_blank_and_bad_utf8() -> None:
    assert split_lines(b"# c\r\nm v=1 1\r\n\r\n  m v=2 2\n") == ["m v=1 1", "m v=2 2"]
    assert split_lines("") == []
    with pytest.raises(LineProtocolError, match="not UTF-8"):
        split_lines(b"m v=\xff 1")
    with pytest.raises(LineProtocolError, match="UTF-8"):
        split_lines("m v=\ud800 1")


def test_float_field_values_keep_their_bits() -> None:
    for v in (0.1, -0.0, 5e-324, 1.7976931348623157e308, 1 / 3):
        line = encode_line("m", {}, {"v": v}, 1)
        assert line is not None
        got = parse_line(line).fields["v"]
        assert got == v and math.copysign(1, got) == math.copysign(1, v)


def _outcome(line: str) -> tuple:
    try:
        p = parse_line(line)
    except LineProtocolError as exc:
        return ("error", exc.message, exc.column)
    return ("ok", p.measurement, dict(p.tags), p.fields, p.time_us)


_head_chars = st.sampled_from(list("mtab,= \\x1é"))


@settings(max_examples=300, deadline=None)
@given(
    heads=st.lists(st.text(_head_chars, min_size=1, max_size=12), min_size=1, max_size=3),
    rests=st.lists(
        st.one_of(
            st.sampled_from(["v=1 5", 'v=1.5,s="a b" 7', "v=1i", "=1 2", " v=1 3", "v=1 x"]),
            st.text(st.sampled_from(list('v=1.5i," x\\')), max_size=12),
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_a_cached_head_parses_as_the_first_time(heads: list[str], rests: list[str]) -> None:
    """Lines sharing a head (one per characteristic in a gateway's batches) reuse its parse;
    every line, valid or not, must come out as it does with nothing cached."""
    from connectors.localstore import parse

    lines = [f"{h} {r}" for r in rests for h in heads]
    fresh = []
    for line in lines:
        parse._HEADS.clear()
        fresh.append(_outcome(line))
    parse._HEADS.clear()
    assert [_outcome(line) for line in lines] == fresh  # the cache warms as it goes
    assert [_outcome(line) for line in lines] == fresh  # and now every head is cached


def test_the_tags_of_a_parsed_point_are_read_only() -> None:
    """A cached head is shared by every point of that series: nobody may change its tags."""
    a = parse_line("spc,characteristic=bore v=1 1")
    b = parse_line("spc,characteristic=bore v=2 2")
    assert a.tags == b.tags == {"characteristic": "bore"}
    with pytest.raises(TypeError):
        a.tags["characteristic"] = "x"  # type: ignore[index]
