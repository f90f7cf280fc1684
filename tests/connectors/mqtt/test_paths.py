"""Field paths: parsing and resolving ``a.b[0].c``."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.mqtt.paths import PathError, format_path, parse_path, resolve


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("", ()),
        ("a", ("a",)),
        ("a.b.c", ("a", "b", "c")),
        ("a[0]", ("a", 0)),
        ("a[0].b[12][3].c", ("a", 0, "b", 12, 3, "c")),
        ("[1]", (1,)),
        ("[-1].v", (-1, "v")),
        ("gauge-1.bore_mm", ("gauge-1", "bore_mm")),
    ],
)
def test_parse(text: str, parsed: tuple) -> None:
    assert parse_path(text) == parsed


@pytest.mark.parametrize("text", ["a.", ".a", "a..b", "a[", "a[x]", "a]", "a[0]b", "a[0]."])
def test_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="path"):
        parse_path(text)


def test_resolve() -> None:
    doc = {"a": {"b": [{"c": 1.5}, {"c": 2}]}, "x": [[1, 2], [3, 4]]}
    assert resolve(doc, parse_path("a.b[1].c")) == 2
    assert resolve(doc, parse_path("x[1][0]")) == 3
    assert resolve(doc, parse_path("x[-1][-1]")) == 4
    assert resolve(doc, ()) is doc


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("a.z", "a.z is missing"),
        ("a.b[5]", r"a.b\[5\] is out of range"),
        ("a[0]", "a is not a list"),
        ("a.b.c", "a.b is not an object"),
    ],
)
def test_resolve_says_where_it_stopped(path: str, message: str) -> None:
    doc = {"a": {"b": [{"c": 1}]}}
    with pytest.raises(PathError, match=message):
        resolve(doc, parse_path(path))


def test_format_round_trip() -> None:
    for text in ("a.b[0].c", "[2].x", "a"):
        assert format_path(parse_path(text)) == text
    assert format_path(()) == "(root)"


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("ab0"), inner),
    max_leaves=8,
)


@given(_json, st.lists(st.one_of(st.sampled_from("ab0"), st.integers(0, 3)), max_size=3))
@settings(max_examples=300, deadline=None)
def test_fast_resolve_equals_the_step_by_step_walk(doc, parts) -> None:
    from connectors.mqtt.paths import _walk

    path = tuple(parts)
    try:
        expected = _walk(doc, path)
    except PathError as exc:
        with pytest.raises(PathError, match=re.escape(str(exc))):
            resolve(doc, path)
    else:
        assert resolve(doc, path) is expected
