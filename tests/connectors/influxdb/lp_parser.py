"""A small line-protocol parser written from the spec, to check the encoder against (tests only).

It reads the canonical escaping our encoder writes: in identifiers a
backslash escapes the next character (``\\n``, ``\\r``, ``\\t`` are newline,
carriage return, tab); string field values are double-quoted with ``\\"``,
``\\\\`` and the same control escapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_CONTROL = {"n": "\n", "r": "\r", "t": "\t"}


@dataclass
class ParsedLine:
    measurement: str
    tags: dict[str, str]
    fields: dict[str, Any]
    timestamp: int


class _Reader:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def ident(self, stops: str) -> str:
        out = []
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch == "\\":
                if self.pos + 1 >= len(self.text):
                    raise ValueError(f"dangling backslash at {self.pos}")
                nxt = self.text[self.pos + 1]
                out.append(_CONTROL.get(nxt, nxt))
                self.pos += 2
                continue
            if ch in stops:
                break
            if ch in "\n\r":
                raise ValueError(f"raw newline at {self.pos}")
            out.append(ch)
            self.pos += 1
        return "".join(out)

    def expect(self, ch: str) -> None:
        if self.peek() != ch:
            raise ValueError(f"expected {ch!r} at {self.pos}, got {self.peek()!r}")
        self.pos += 1

    def string(self) -> str:
        self.expect('"')
        out = []
        while True:
            if self.pos >= len(self.text):
                raise ValueError("unterminated string")
            ch = self.text[self.pos]
            if ch == "\\":
                nxt = self.text[self.pos + 1]
                if nxt not in '"\\nrt':
                    raise ValueError(f"unknown string escape \\{nxt}")
                out.append(_CONTROL.get(nxt, nxt))
                self.pos += 2
                continue
            if ch == '"':
                self.pos += 1
                return "".join(out)
            if ch in "\n\r":
                raise ValueError("raw newline in string")
            out.append(ch)
            self.pos += 1

    def scalar(self) -> Any:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in ", ":
            self.pos += 1
        raw = self.text[start : self.pos]
        if raw in ("true", "false"):
            return raw == "true"
        if raw.endswith("i"):
            return int(raw[:-1])
        return float(raw)


def parse_line(text: str) -> ParsedLine:
    """Parse one line; raises ValueError when it is not valid line protocol."""
    r = _Reader(text)
    measurement = r.ident(", ")
    if not measurement:
        raise ValueError("empty measurement")
    tags: dict[str, str] = {}
    while r.peek() == ",":
        r.pos += 1
        key = r.ident("=, ")
        r.expect("=")
        value = r.ident(", =")
        if not key or not value:
            raise ValueError("empty tag key or value")
        tags[key] = value
    r.expect(" ")
    fields: dict[str, Any] = {}
    while True:
        key = r.ident("=, ")
        r.expect("=")
        if not key:
            raise ValueError("empty field key")
        fields[key] = r.string() if r.peek() == '"' else r.scalar()
        if r.peek() != ",":
            break
        r.pos += 1
    r.expect(" ")
    stamp = text[r.pos :]
    if not stamp.lstrip("-").isdigit():
        raise ValueError(f"bad timestamp {stamp!r}")
    return ParsedLine(measurement, tags, fields, int(stamp))
