"""The embedded series store: points of the timeseries contract in one SQLite file (stdlib ``sqlite3``).

This is the only module of the connector that imports ``sqlite3``; it
translates its errors into :class:`~connectors.base.ConnectorError`
(retryable or not).

Schema (generic, like InfluxDB's own series index + TSM, so every measurement
of the contract and any later one fits without a migration)::

    series(id INTEGER PRIMARY KEY, measurement, tags, characteristic,
           UNIQUE(measurement, tags))        -- tags: canonical JSON, keys sorted
    points(series_id, time_us, fields,       -- fields: JSON object, typed values
           PRIMARY KEY(series_id, time_us)) WITHOUT ROWID

``points`` is clustered on (series, time): a query for one characteristic
over a time range finds its few series in the small ``series`` table (indexed
on (measurement, characteristic)) and reads each as one contiguous range of
the B-tree (in time order, stopped at the limit; several series are merged).
Retention deletes per series by the same key, so no index on time
alone is kept (it would cost every write).

Writes follow InfluxDB: the same series key and timestamp is one point, a
later write merges its fields into it (``json_patch``: new values win, fields
not written are kept). Writing a batch twice therefore equals writing it once,
and replaying an outbox never duplicates. A batch is one transaction.

The file size is bounded with ``PRAGMA max_page_count``: a write that would
grow the file beyond it is rolled back whole and raises :class:`StoreFullError`
(retryable; pruning frees pages that later writes reuse).
"""

from __future__ import annotations

import csv
import heapq
import itertools
import json
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Literal

from connectors.base import ConnectorError
from connectors.influxdb.lineprotocol import Precision, encode_line
from connectors.localstore.parse import LineProtocolError, ParsedPoint, parse_line, split_lines

__all__ = [
    "EXPORT_FORMATS",
    "ExportFormat",
    "LineError",
    "LinesWritten",
    "ParsedBatch",
    "PruneResult",
    "Row",
    "SeriesStore",
    "StoreFullError",
    "StoreStats",
    "iso_us",
    "parse_batch",
]

SCHEMA_VERSION = 1
ExportFormat = Literal["csv", "lp", "jsonl"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("csv", "lp", "jsonl")
_MIN_US = -(2**63)
_MAX_US = 2**63 - 1
_US_PER_DAY = 86_400_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    measurement TEXT NOT NULL,
    tags TEXT NOT NULL,
    characteristic TEXT,
    UNIQUE (measurement, tags)
);
CREATE INDEX IF NOT EXISTS series_by_characteristic ON series (measurement, characteristic);
CREATE TABLE IF NOT EXISTS points (
    series_id INTEGER NOT NULL,
    time_us INTEGER NOT NULL,
    fields TEXT NOT NULL,
    PRIMARY KEY (series_id, time_us)
) WITHOUT ROWID;
"""
_UPSERT = (
    "INSERT INTO points (series_id, time_us, fields) VALUES (?, ?, ?) "
    "ON CONFLICT (series_id, time_us) DO UPDATE SET fields = json_patch(fields, excluded.fields)"
)

# primary result codes (sqlite3.h)
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_IOERR = 10
_SQLITE_FULL = 13
_RETRYABLE = {_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_IOERR}


class StoreFullError(ConnectorError):
    """The store reached ``max_size`` (or the disk is full); nothing of the batch was written."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(where, message, retryable=True)


@dataclass(frozen=True, slots=True)
class Row:
    """One point read back: time in µs since the epoch, its tags and its typed fields."""

    time_us: int
    tags: dict[str, str]
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class LineError:
    """A batch item that is not valid line protocol: its index in the batch, text and why."""

    index: int
    line: str
    message: str


@dataclass(frozen=True, slots=True)
class LinesWritten:
    """What :meth:`SeriesStore.write_lines` did: items stored, and items refused as malformed."""

    accepted: int
    points: int
    errors: tuple[LineError, ...] = ()


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What :meth:`SeriesStore.prune` deleted."""

    points: int
    series: int
    cutoff_us: int | None


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Size and content of the store (counting points reads the whole file: not for hot paths)."""

    path: str
    size_bytes: int
    max_size_bytes: int
    free_bytes: int
    series: int
    points: int
    points_by_measurement: dict[str, int]
    oldest_us: int | None
    newest_us: int | None


def iso_us(time_us: int) -> str:
    """Microseconds since the epoch as ISO 8601 UTC (``2026-11-26T08:00:00.000001Z``)."""
    try:
        return (_EPOCH + timedelta(microseconds=time_us)).isoformat().replace("+00:00", "Z")
    except OverflowError:
        return ""


# The gateway writes from a worker thread while its event loop judges and publishes alarms.
# Pure-Python work holds the interpreter lock until the loop has waited a whole switch
# interval (5 ms) for it; letting it go every _YIELD_EVERY lines bounds that wait to about
# half a millisecond (parsing and preparing that many lines takes about 0.5-1 ms here).
_YIELD_EVERY = 32


def _yield_gil() -> None:
    """Let a thread waiting for the interpreter lock (the event loop) run now."""
    time.sleep(0)


def _tags_json(tags: Mapping[str, str]) -> str:
    return json.dumps(dict(sorted(tags.items())), ensure_ascii=False, separators=(",", ":"))


def _fields_json(fields: Mapping[str, Any]) -> str:
    return json.dumps(dict(fields), ensure_ascii=False, allow_nan=False, separators=(",", ":"))


class SeriesStore:
    """Points of the timeseries contract in one SQLite file (WAL mode); thread-safe, blocking.

    ``max_size_bytes`` bounds the file (None: unbounded); ``retention_days``
    is what :meth:`prune` keeps (None: everything). ``readonly`` opens an
    existing store for queries only (several readers may run while one
    process writes). Use as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        retention_days: float | None = None,
        max_size_bytes: int | None = None,
        synchronous: Literal["full", "normal"] = "full",
        readonly: bool = False,
    ) -> None:
        self.path = Path(path)
        self.retention_days = retention_days
        self.readonly = readonly
        self._where = f"localstore {self.path}"
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str], int] = {}
        # until the file tells (an error while opening is translated with these)
        self._page_size = 4096
        self.max_size_bytes = 2**62
        self._conn = self._connect(synchronous)
        try:
            self._page_size = int(self._conn.execute("PRAGMA page_size").fetchone()[0])
            if max_size_bytes is not None:
                pages = max(int(max_size_bytes) // self._page_size, 8)
                self._conn.execute(f"PRAGMA max_page_count = {pages}")
            self.max_size_bytes = (
                int(self._conn.execute("PRAGMA max_page_count").fetchone()[0]) * self._page_size
            )
        except sqlite3.Error as exc:
            self._conn.close()
            raise self._translate(exc, "open") from exc

    def _connect(self, synchronous: str) -> sqlite3.Connection:
        if self.readonly and not self.path.is_file():
            raise ConnectorError(self._where, "no store at this path", retryable=False)
        try:
            if self.readonly:
                # mode=rw: never creates a file; query_only: never writes one
                uri = self.path.resolve().as_uri() + "?mode=rw"
                conn = sqlite3.connect(
                    uri, uri=True, isolation_level=None, check_same_thread=False, timeout=5.0
                )
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False, timeout=5.0
                )
        except (OSError, sqlite3.Error) as exc:
            raise ConnectorError(self._where, f"cannot open: {exc}", retryable=False) from exc
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise ConnectorError(
                    self._where,
                    f"schema version {version} is newer than this shopspc ({SCHEMA_VERSION})",
                    retryable=False,
                )
            if self.readonly:
                if version == 0:
                    raise ConnectorError(self._where, "not a shopspc series store", retryable=False)
                conn.execute("PRAGMA query_only = 1")
            else:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise ConnectorError(
                        self._where, f"cannot use WAL journal mode (got {mode})", retryable=False
                    )
                conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
                conn.executescript(_SCHEMA)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except ConnectorError:
            conn.close()
            raise
        except sqlite3.Error as exc:
            conn.close()
            raise self._translate(exc, "open") from exc
        return conn

    def __enter__(self) -> SeriesStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the file (a clean close checkpoints the WAL into it). Idempotent."""
        with self._lock:
            self._conn.close()

    # -- errors -----------------------------------------------------------

    def _size_bytes(self) -> int:
        return int(self._conn.execute("PRAGMA page_count").fetchone()[0]) * self._page_size

    def _translate(self, exc: sqlite3.Error, doing: str) -> ConnectorError:
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code == _SQLITE_FULL:
            try:
                size = self._size_bytes()
            except sqlite3.Error:
                size = 0
            mib = 1024 * 1024
            if size + 2 * self._page_size >= self.max_size_bytes:
                why = (
                    f"the store is full ({size / mib:.1f} MiB of max_size_mb "
                    f"{self.max_size_bytes / mib:.1f}); prune old points, shorten "
                    f"retention_days or raise max_size_mb"
                )
            else:
                why = f"the disk is full ({size / mib:.1f} MiB in the store)"
            return StoreFullError(self._where, f"{doing}: {why}")
        return ConnectorError(self._where, f"{doing}: {exc}", retryable=code in _RETRYABLE)

    # -- writing ----------------------------------------------------------

    def write(self, points: Iterable[ParsedPoint]) -> int:
        """Store points in one transaction (same series and time: fields merged); returns the count.

        Raises :class:`StoreFullError` (nothing written) when the size bound is reached.
        """
        if self.readonly:
            raise ConnectorError(self._where, "opened read-only", retryable=False)
        with self._lock:
            conn = self._conn
            new: dict[tuple[str, str], int] = {}
            rows = []
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for n, p in enumerate(points):
                        if n and not n % _YIELD_EVERY:
                            _yield_gil()
                        key = (p.measurement, _tags_json(p.tags))
                        sid = self._series.get(key) or new.get(key)
                        if sid is None:
                            sid = new[key] = self._series_id(key, p.tags.get("characteristic"))
                        rows.append((sid, p.time_us, _fields_json(p.fields)))
                    conn.executemany(_UPSERT, rows)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise self._translate(exc, "write") from exc
            self._series.update(new)
        return len(rows)

    def _series_id(self, key: tuple[str, str], characteristic: str | None) -> int:
        row = self._conn.execute(
            "SELECT id FROM series WHERE measurement = ? AND tags = ?", key
        ).fetchone()
        if row is not None:
            return int(row[0])
        cur = self._conn.execute(
            "INSERT INTO series (measurement, tags, characteristic) VALUES (?, ?, ?)",
            (*key, characteristic),
        )
        return int(cur.lastrowid or 0)

    def write_lines(
        self, batch: Sequence[str | bytes], precision: Precision = "us"
    ) -> LinesWritten:
        """Parse and store line protocol: one item per batch entry (an item may hold several lines).

        An item with any malformed line is refused whole and reported in
        ``errors``; the others are stored in one transaction.
        """
        parsed = parse_batch(batch, precision)
        if parsed.points:
            self.write(parsed.points)
        return LinesWritten(parsed.accepted, len(parsed.points), parsed.errors)

    def prune(self, now_us: int) -> PruneResult:
        """Delete points older than ``retention_days`` before ``now_us``, and series left empty."""
        if self.retention_days is None:
            return PruneResult(0, 0, None)
        cutoff = int(now_us) - int(self.retention_days * _US_PER_DAY)
        return self._delete_before(lambda: cutoff, "prune")

    def drop_oldest(self, fraction: float = 0.1) -> PruneResult:
        """Make room: delete the oldest ``fraction`` of the stored time span (at least its oldest µs).

        For a store that should keep the newest points when full instead of
        refusing them; the span is taken from the oldest and newest points.
        """
        if not 0 < fraction <= 1:
            raise ValueError("fraction must be in (0, 1]")

        def cutoff() -> int | None:
            oldest, newest = self._span()
            if oldest is None or newest is None:
                return None
            return min(oldest + max(1, int((newest - oldest) * fraction)), _MAX_US)

        return self._delete_before(cutoff, "drop oldest")

    def _span(self) -> tuple[int | None, int | None]:
        # per series by the primary key, then over the series: no full scan
        oldest, newest = self._conn.execute(
            "SELECT MIN((SELECT MIN(time_us) FROM points WHERE series_id = s.id)), "
            "MAX((SELECT MAX(time_us) FROM points WHERE series_id = s.id)) "
            "FROM series AS s"
        ).fetchone()
        return oldest, newest

    def _delete_before(self, cutoff_of: Callable[[], int | None], doing: str) -> PruneResult:
        if self.readonly:
            raise ConnectorError(self._where, "opened read-only", retryable=False)
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    cutoff = cutoff_of()
                    if cutoff is None:
                        conn.execute("ROLLBACK")
                        return PruneResult(0, 0, None)
                    before = conn.total_changes
                    ids = [r[0] for r in conn.execute("SELECT id FROM series")]
                    # per series by the primary key: no index on time alone is needed
                    conn.executemany(
                        "DELETE FROM points WHERE series_id = ? AND time_us < ?",
                        [(sid, cutoff) for sid in ids],
                    )
                    n_points = conn.total_changes - before
                    cur = conn.execute(
                        "DELETE FROM series WHERE NOT EXISTS "
                        "(SELECT 1 FROM points WHERE points.series_id = series.id)"
                    )
                    n_series = cur.rowcount
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise self._translate(exc, doing) from exc
            finally:
                self._series.clear()
        return PruneResult(n_points, n_series, cutoff)

    # -- reading ----------------------------------------------------------

    def _select_series(
        self, measurement: str | None, tags: Mapping[str, str] | None
    ) -> dict[int, tuple[str, dict[str, str]]]:
        sql = "SELECT id, measurement, tags FROM series"
        where: list[str] = []
        args: list[Any] = []
        if measurement is not None:
            where.append("measurement = ?")
            args.append(measurement)
        if tags and "characteristic" in tags:
            where.append("characteristic = ?")
            args.append(tags["characteristic"])
        if where:
            sql += " WHERE " + " AND ".join(where)
        out: dict[int, tuple[str, dict[str, str]]] = {}
        for sid, meas, tags_text in self._conn.execute(sql + " ORDER BY id", args):
            series_tags = json.loads(tags_text)
            if tags and any(series_tags.get(k) != v for k, v in tags.items()):
                continue
            out[sid] = (meas, series_tags)
        return out

    def query(
        self,
        measurement: str,
        *,
        tags: Mapping[str, str] | None = None,
        since_us: int | None = None,
        until_us: int | None = None,
        limit: int | None = 1000,
        newest_first: bool = False,
    ) -> list[Row]:
        """Points of ``measurement`` whose tags include ``tags``, in ``[since_us, until_us)``.

        Ordered by time (oldest first, or newest first), at most ``limit`` rows
        (None: all). Points of several series at the same time follow series order.
        """
        if limit is not None and limit < 0:
            raise ValueError("limit must be >= 0")
        with self._lock:
            try:
                series = self._select_series(measurement, tags)
                if not series:
                    return []
                if limit == 0:
                    return []
                direction = "DESC" if newest_first else "ASC"
                sql = (
                    "SELECT time_us, ?, fields FROM points WHERE series_id = ? "
                    f"AND time_us >= ? AND time_us < ? ORDER BY time_us {direction} LIMIT ?"
                )
                lo = _MIN_US if since_us is None else int(since_us)
                hi = _MAX_US if until_us is None else int(until_us)
                # one primary-key range per series, read in order and stopped at the
                # limit, then merged: no sort of every point in the range
                ordered = sorted(series, reverse=newest_first)
                per_series = [
                    self._conn.execute(sql, (sid, sid, lo, hi, -1 if limit is None else limit))
                    for sid in ordered
                ]
                merged = (
                    heapq.merge(*per_series, key=_time_and_series, reverse=newest_first)
                    if len(per_series) > 1
                    else per_series[0]
                )
                return [
                    Row(time_us, dict(series[sid][1]), json.loads(fields))
                    for time_us, sid, fields in itertools.islice(merged, limit)
                ]
            except sqlite3.Error as exc:
                raise self._translate(exc, "query") from exc

    def measurements(self) -> list[str]:
        """The measurements that have series in the store, sorted."""
        with self._lock:
            try:
                return [
                    r[0]
                    for r in self._conn.execute(
                        "SELECT DISTINCT measurement FROM series ORDER BY measurement"
                    )
                ]
            except sqlite3.Error as exc:
                raise self._translate(exc, "query") from exc

    def _iter_points(
        self,
        series: dict[int, tuple[str, dict[str, str]]],
        since_us: int | None,
        until_us: int | None,
    ) -> Iterator[tuple[str, dict[str, str], int, dict[str, Any]]]:
        lo = _MIN_US if since_us is None else int(since_us)
        hi = _MAX_US if until_us is None else int(until_us)
        # series by series, each one primary-key range: streams without a sort
        for sid in sorted(series):
            meas, tags = series[sid]
            cur = self._conn.execute(
                "SELECT time_us, fields FROM points WHERE series_id = ? "
                "AND time_us >= ? AND time_us < ? ORDER BY time_us",
                (sid, lo, hi),
            )
            for time_us, fields in cur:
                yield meas, tags, time_us, json.loads(fields)

    def export(
        self,
        fp: IO[str],
        fmt: ExportFormat,
        *,
        measurement: str | None = None,
        tags: Mapping[str, str] | None = None,
        since_us: int | None = None,
        until_us: int | None = None,
        precision: Precision = "us",
    ) -> int:
        """Write the selected points to the text file ``fp``; returns how many.

        ``lp``: line protocol (canonical, the encoder's escaping, ``precision``
        timestamps: replayable into InfluxDB); ``jsonl``: one JSON object per
        point (measurement, time, time_us, tags, fields); ``csv``: a header row
        (measurement, time, time_us, the tag keys, then the field keys; a field
        named like a tag is ``field:<key>``), one row per point. Grouped by
        series, each in time order.
        """
        if fmt not in EXPORT_FORMATS:
            raise ValueError(f"format {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")
        with self._lock:
            try:
                series = self._select_series(measurement, tags)
                if fmt == "csv":
                    return self._export_csv(fp, series, since_us, until_us)
                count = 0
                for meas, stags, time_us, fields in self._iter_points(series, since_us, until_us):
                    if fmt == "lp":
                        line = encode_line(meas, stags, fields, time_us, precision)
                        if line is None:
                            continue
                        fp.write(line + "\n")
                    else:
                        record = {
                            "measurement": meas,
                            "time": iso_us(time_us),
                            "time_us": time_us,
                            "tags": stags,
                            "fields": fields,
                        }
                        fp.write(json.dumps(record, ensure_ascii=False) + "\n")
                    count += 1
                return count
            except sqlite3.Error as exc:
                raise self._translate(exc, "export") from exc

    def _export_csv(
        self,
        fp: IO[str],
        series: dict[int, tuple[str, dict[str, str]]],
        since_us: int | None,
        until_us: int | None,
    ) -> int:
        tag_keys = sorted({k for _, tags in series.values() for k in tags})
        cur = self._conn.execute(
            "SELECT DISTINCT j.key FROM points, json_each(points.fields) AS j "
            "WHERE points.series_id IN (SELECT value FROM json_each(?)) "
            "AND time_us >= ? AND time_us < ?",
            (
                json.dumps(sorted(series)),
                _MIN_US if since_us is None else int(since_us),
                _MAX_US if until_us is None else int(until_us),
            ),
        )
        field_keys = sorted(r[0] for r in cur)
        writer = csv.writer(fp, lineterminator="\n")
        writer.writerow(
            [
                "measurement",
                "time",
                "time_us",
                *tag_keys,
                *(f"field:{k}" if k in tag_keys else k for k in field_keys),
            ]
        )
        count = 0
        for meas, tags, time_us, fields in self._iter_points(series, since_us, until_us):
            writer.writerow(
                [
                    meas,
                    iso_us(time_us),
                    time_us,
                    *(tags.get(k, "") for k in tag_keys),
                    *(_csv_cell(fields.get(k)) for k in field_keys),
                ]
            )
            count += 1
        return count

    def stats(self) -> StoreStats:
        """Size, bound and content of the store (scans the points: for the CLI, not per write)."""
        with self._lock:
            try:
                conn = self._conn
                free = int(conn.execute("PRAGMA freelist_count").fetchone()[0]) * self._page_size
                by_meas: dict[str, int] = dict(
                    conn.execute(
                        "SELECT s.measurement, COUNT(*) FROM points p "
                        "JOIN series s ON s.id = p.series_id "
                        "GROUP BY s.measurement ORDER BY s.measurement"
                    )
                )
                n_series = int(conn.execute("SELECT COUNT(*) FROM series").fetchone()[0])
                oldest, newest = self._span()
                return StoreStats(
                    path=str(self.path),
                    size_bytes=self._size_bytes(),
                    max_size_bytes=self.max_size_bytes,
                    free_bytes=free,
                    series=n_series,
                    points=sum(by_meas.values()),
                    points_by_measurement=by_meas,
                    oldest_us=oldest,
                    newest_us=newest,
                )
            except sqlite3.Error as exc:
                raise self._translate(exc, "stats") from exc


@dataclass(frozen=True, slots=True)
class ParsedBatch:
    """A batch of line protocol parsed: the points of the good items, their count, the bad items."""

    points: list[ParsedPoint]
    accepted: int
    errors: tuple[LineError, ...]


def parse_batch(batch: Sequence[str | bytes], precision: Precision = "us") -> ParsedBatch:
    """Parse batch items (an item may hold several lines); an item with a bad line is an error whole."""
    points: list[ParsedPoint] = []
    errors: list[LineError] = []
    accepted = 0
    for index, item in enumerate(batch):
        if index and not index % _YIELD_EVERY:
            _yield_gil()
        try:
            parsed = [
                _parse_numbered(line, n, precision) for n, line in enumerate(split_lines(item), 1)
            ]
        except LineProtocolError as exc:
            text = item.decode("utf-8", "replace") if isinstance(item, bytes) else item
            errors.append(LineError(index, text, str(exc)))
            continue
        points.extend(parsed)
        accepted += 1
    return ParsedBatch(points, accepted, tuple(errors))


def _time_and_series(row: tuple[int, int, str]) -> tuple[int, int]:
    return row[0], row[1]


def _parse_numbered(line: str, number: int, precision: Precision) -> ParsedPoint:
    try:
        return parse_line(line, precision)
    except LineProtocolError as exc:
        if number == 1:
            raise
        raise LineProtocolError(f"line {number}: {exc.message}", exc.column) from None


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    return value
