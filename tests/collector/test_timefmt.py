"""RFC 3339 formatting and parsing, exact to the microsecond."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.timefmt import parse_rfc3339, rfc3339

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@given(st.integers(-(10**15), 10**17))
def test_format_equals_datetime_and_parses_back(t: int) -> None:
    text = rfc3339(t)
    assert text == (EPOCH + timedelta(microseconds=t)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert parse_rfc3339(text) == t


def test_offsets_naive_times_and_zones() -> None:
    assert parse_rfc3339("1970-01-01T01:00:00.000001+01:00") == 1
    assert parse_rfc3339("1970-01-02") == 86_400_000_000  # no zone: UTC
    with pytest.raises(ValueError, match="time zone"):
        parse_rfc3339("1970-01-02T00:00:00", require_zone=True)
    with pytest.raises(ValueError):
        parse_rfc3339("yesterday")
