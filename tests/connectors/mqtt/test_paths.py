"""Field paths: parsing and resolving ``a.b[0].c``."""

from __future__ import annotations

import pytest

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
