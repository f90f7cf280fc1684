"""Small pieces the ``shopspc`` sub-commands share: times, one-line errors, tables, JSON."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from collector.timefmt import parse_rfc3339

__all__ = ["UsageError", "console", "now_us", "parse_time", "print_json", "table", "when"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class UsageError(Exception):
    """A bad request: said in one line, exit 2."""


def now_us() -> int:
    """The wall clock in µs since the epoch."""
    return time.time_ns() // 1000


def parse_time(text: str, now: int, what: str) -> int:
    """µs since the epoch from RFC 3339 (naive = UTC), ``now``, ``-2h``/``2h`` ago, ``+2h`` ahead."""
    t = text.strip()
    if t == "now":
        return now
    m = re.fullmatch(r"([+-]?)(\d+(?:\.\d+)?)([smhdw])", t)
    if m:
        delta = int(float(m[2]) * _UNIT_S[m[3]] * 1_000_000)
        return now + delta if m[1] == "+" else now - delta
    try:
        return parse_rfc3339(t)
    except ValueError:
        raise UsageError(
            f"{what} {text!r} is not RFC 3339 (2026-11-26T08:00:00Z), 'now', "
            "or relative like -2h, +30m, -7d"
        ) from None


def when(us: int | None) -> str:
    """A time for a table: to the second (JSON output keeps the µs)."""
    if us is None:
        return "—"
    return (_EPOCH + timedelta(seconds=int(us) // 1_000_000)).strftime("%Y-%m-%d %H:%M:%SZ")


def print_json(obj: Any) -> None:
    """``obj`` as indented JSON on stdout (UTF-8 text kept, NaN refused)."""
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, indent=1, allow_nan=False) + "\n")


def console() -> Any:
    """A rich console that shows user text (comments, reasons, serials) exactly as typed."""
    from rich.console import Console

    return Console(highlight=False, markup=False, emoji=False)


def table(
    title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], whole: Collection[str] = ()
) -> None:
    """A titled table on stdout; columns named in ``whole`` (ids, paths, times) never wrap."""
    from rich.table import Table
    from rich.text import Text

    t = Table(title=Text(title), title_justify="left")
    for c in columns:
        t.add_column(Text(c), overflow="fold", no_wrap=c in whole)
    for r in rows:
        t.add_row(*(Text(cell) for cell in r))
    console().print(t)
