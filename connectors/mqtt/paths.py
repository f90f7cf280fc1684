"""Field paths into decoded JSON: ``a.b[0].c`` — dotted keys with ``[i]`` list indices.

Paths are parsed once when the config is validated (:func:`parse_path`) and then
resolved per message (:func:`resolve`). The empty path is the document itself.
Keys that contain ``.``, ``[`` or ``]`` cannot be expressed (a stated limitation).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["FieldPath", "PathError", "format_path", "parse_path", "resolve"]

FieldPath = tuple[str | int, ...]

_KEY = re.compile(r"[^.\[\]]+")
_INDEX = re.compile(r"\[(-?\d+)\]")


class PathError(LookupError):
    """A path that does not lead to a value in this document."""


def parse_path(text: str) -> FieldPath:
    """Parse ``"a.b[0].c"`` into ``("a", "b", 0, "c")``; ``""`` is the root.

    Raises ``ValueError`` on a malformed path (empty key, unbalanced brackets).
    """
    if text == "":
        return ()
    parts: list[str | int] = []
    pos = 0
    expect_key = True
    while pos < len(text):
        m = _INDEX.match(text, pos)
        if m:
            parts.append(int(m.group(1)))
            pos = m.end()
            expect_key = False
            continue
        if not expect_key:
            if text[pos] != ".":
                raise ValueError(f"path {text!r}: expected '.' or '[' at column {pos + 1}")
            pos += 1
            expect_key = True
            if pos == len(text):
                raise ValueError(f"path {text!r}: ends with '.'")
            continue
        m = _KEY.match(text, pos)
        if not m:
            raise ValueError(f"path {text!r}: expected a key or [index] at column {pos + 1}")
        parts.append(m.group(0))
        pos = m.end()
        expect_key = False
    return tuple(parts)


def format_path(path: FieldPath) -> str:
    """The text form of a parsed path (for status texts)."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "(root)"


def resolve(doc: Any, path: FieldPath) -> Any:
    """The value at ``path`` in ``doc``; raises :class:`PathError` saying where it stopped."""
    # the hot path (several look-ups per value of a batched message): plain indexing,
    # the step-by-step walk below only to say where a failing path stopped
    cur = doc
    try:
        for part in path:
            if part.__class__ is int and cur.__class__ is not list:
                raise TypeError
            cur = cur[part]
        return cur
    except (KeyError, IndexError, TypeError):
        return _walk(doc, path)


def _walk(doc: Any, path: FieldPath) -> Any:
    cur = doc
    for i, part in enumerate(path):
        if isinstance(part, int):
            if not isinstance(cur, list):
                raise PathError(f"{format_path(path[:i])} is not a list")
            try:
                cur = cur[part]
            except IndexError:
                raise PathError(f"{format_path(path[: i + 1])} is out of range") from None
        else:
            if not isinstance(cur, dict):
                raise PathError(f"{format_path(path[:i])} is not an object")
            try:
                cur = cur[part]
            except KeyError:
                raise PathError(f"{format_path(path[: i + 1])} is missing") from None
    return cur
