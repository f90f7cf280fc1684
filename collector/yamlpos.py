"""YAML loading that remembers where each value came from (file, line, column).

Config errors must point at file, line and dotted key (CONVENTIONS.md habit 6),
so the loader keeps a map from key paths (tuples of str keys and int indices)
to source marks, built from PyYAML's node tree. Duplicate keys are errors
(PyYAML silently keeps the last one).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["Located", "YamlError", "dotted", "load_yaml"]

Key = tuple[str | int, ...]
_SCALARS = yaml.SafeLoader(
    ""
)  # only its constructor is used, for tagged scalars (int, float, bool, null, dates)


@dataclass(frozen=True)
class YamlError(Exception):
    """A YAML syntax error, or a duplicate key, with its position."""

    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


@dataclass(frozen=True)
class Located:
    """A loaded YAML document and the line of every key path in it."""

    data: Any
    file: str
    lines: dict[Key, int]

    def line_of(self, path: Key) -> int:
        """The line of ``path``, or of its nearest ancestor that has one (1 for the root)."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 1)


def dotted(path: Key) -> str:
    """``("characteristics", 0, "lsl")`` → ``characteristics[0].lsl``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _construct(node: yaml.Node, path: Key, lines: dict[Key, int], file: str) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _construct(key_node, (*path, "<key>"), {}, file)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise YamlError(
                    file,
                    key_node.start_mark.line + 1,
                    key_node.start_mark.column + 1,
                    "a key must be a plain scalar",
                )
            if key in out:
                raise YamlError(
                    file,
                    key_node.start_mark.line + 1,
                    key_node.start_mark.column + 1,
                    f"duplicate key {dotted((*path, str(key)))!r}",
                )
            lines[(*path, str(key))] = (
                key_node.start_mark.line + 1
            )  # point at the key, not its value
            out[key] = _construct(value_node, (*path, str(key)), lines, file)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(child, (*path, i), lines, file) for i, child in enumerate(node.value)]
    return _SCALARS.construct_object(node, deep=True)


def load_yaml(text: str, file: str | Path = "<string>") -> Located:
    """Parse one YAML document safely; raise :class:`YamlError` with a position on bad YAML."""
    name = str(file)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        col = mark.column + 1 if mark else 1
        raise YamlError(name, line, col, f"invalid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise YamlError(name, 1, 1, f"invalid YAML: {exc}") from None
    lines: dict[Key, int] = {}
    if node is None:
        return Located({}, name, {(): 1})
    _SCALARS.constructed_objects = {}
    try:
        data = _construct(node, (), lines, name)
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        raise YamlError(
            name, mark.line + 1 if mark else 1, mark.column + 1 if mark else 1, str(exc.problem)
        ) from None
    return Located(data, name, lines)
