"""RFC 3339 times as the contracts write them: UTC, microseconds, ``Z`` (exact for integer µs)."""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta

__all__ = ["parse_rfc3339", "rfc3339"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def rfc3339(time_us: int) -> str:
    """``2026-11-26T09:30:00.123456Z`` for µs since the epoch."""
    sec, us = divmod(int(time_us), 1_000_000)
    return f"{_second(sec)}.{us:06d}Z"


@functools.lru_cache(maxsize=4096)
def _second(sec: int) -> str:
    # the date and time of one second, formatted once: an alarm's samples share seconds
    return (_EPOCH + timedelta(seconds=sec)).strftime("%Y-%m-%dT%H:%M:%S")


def parse_rfc3339(text: str, *, require_zone: bool = False) -> int:
    """µs since the epoch of an RFC 3339 time (``Z`` or an offset; without one, UTC), exact.

    Raises ValueError for text that is not such a time, or has no zone when
    ``require_zone``.
    """
    t = datetime.fromisoformat(text)
    if t.tzinfo is None:
        if require_zone:
            raise ValueError(f"{text!r} needs a time zone (e.g. Z)")
        t = t.replace(tzinfo=UTC)
    d = t - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds
