"""The durable outbox: accepted measurements and alarm events live here until a sink confirms them.

Everything the gateway acknowledges goes through this file first. A sink (the
InfluxDB writer, the MQTT alarm publisher) drains its *stream* in ``seq`` order,
removes an entry only after the far side confirmed it (:meth:`Outbox.ack`),
postpones it after a transient failure (:meth:`Outbox.retry_later`, the caller
computes the capped, jittered delay with ``connectors.base.Backoff``) and moves
it to the dead-letter table when the far side rejects it for good
(:meth:`Outbox.dead_letter`: counted, listed, never retried unless someone
deliberately calls :meth:`Outbox.requeue_dead`). Each stream has one consumer:
:meth:`Outbox.peek` does not lease entries, so two drainers of the same stream
would deliver them twice.

Storage is one SQLite file in WAL mode, standard library ``sqlite3`` only.

Durability — when :meth:`Outbox.append` returns, the entries are committed; that
is the acknowledgement point. How far "committed" reaches is SQLite's
``synchronous`` setting of that commit:

* ``FULL`` (the default): the WAL is fsynced at every commit. The entries
  survive ``kill -9`` of the process *and* power loss or a kernel panic.
  Costs one fsync per append call (milliseconds on flash), so batch.
* ``NORMAL``: in WAL mode the commit is written to the WAL in the OS page cache
  and fsynced only at checkpoints. The entries survive ``kill -9`` (the kernel
  still holds the pages) but the last commits before a power loss may be lost;
  the database is never corrupted either way. Good for bulk series where a few
  seconds lost at a power cut are acceptable and fsync rates matter.

The level is chosen per stream (:class:`StreamPolicy`), falling back to the
outbox default. SQLite's setting belongs to the connection and can only change
between transactions, so it is switched before each write; a ``FULL`` commit
also makes every earlier ``NORMAL`` commit durable (the fsync covers the whole
WAL). Counters (:meth:`Outbox.next_seq`) and :meth:`Outbox.transaction` use the
outbox default, because an alarm ``seq`` handed out must never be handed out
again, even after a power cut.

Numbering — every entry gets a ``seq`` from an ``AUTOINCREMENT`` key: strictly
increasing across all streams of the file, never reused after deletes or
restarts. Alarm events need a per-gateway number without the gaps other streams
would leave, so the outbox also keeps named persistent counters
(:meth:`Outbox.next_seq`). :meth:`Outbox.append_numbered` and
:meth:`Outbox.transaction` draw counter values and append the payloads that
carry them in one transaction: a crash either keeps both or neither, so the
counter never runs ahead of, or behind, the events.

Bounds and overflow policy — each stream may have ``max_entries`` and
``max_bytes`` (payload bytes of pending entries; dead letters do not count).
An append that would exceed them raises :class:`OutboxFull` naming the stream
and the limit, and stores nothing of that call: the caller applies
backpressure (stops accepting, keeps its own bounded queue, counts refusals);
the outbox never drops accepted data to make room. ``max_file_bytes`` caps the
whole file (SQLite ``max_page_count``); reaching it, or a full disk, raises
:class:`OutboxDiskFull` (also an :class:`OutboxFull`) naming the file; the
failed transaction is rolled back and everything committed before stays intact.
Acks still work when full (they free pages), so draining makes room again.
Dead letters are bounded separately by ``max_dead`` per stream (default
100 000): beyond it the oldest dead letters are deleted, counted in
``StreamCounts.dead_dropped`` and logged, so a sink that rejects everything
cannot fill the disk with rejects. Pages freed by a drained backlog are reused;
:meth:`Outbox.compact` gives them back to the filesystem.

Threads and asyncio — one connection guarded by a lock: every method is
thread-safe and short (microseconds to an fsync). :attr:`Outbox.aio` gives the
same methods as coroutines that run in a worker thread via
:func:`asyncio.to_thread`, so the event loop never waits on an fsync. A call
cancelled while its thread is committing still commits (at-least-once: the
entry may be delivered although the caller saw ``CancelledError``).
One process owns the file; other processes may read it (inspection tools).

Errors — every SQLite failure surfaces as :class:`OutboxError` whose text names
the file and the operation. A file that is not an outbox (another database,
garbage, a newer schema) is refused at open and left untouched. Damage inside
an outbox surfaces at the first operation that reads the damaged page;
:meth:`Outbox.check` reads everything (for start-up diagnostics and support).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from collector.sqlitefile import check_identity

__all__ = [
    "AsyncOutbox",
    "DeadLetter",
    "Entry",
    "NumberedAppend",
    "Outbox",
    "OutboxCounts",
    "OutboxDiskFull",
    "OutboxError",
    "OutboxFull",
    "OutboxTransaction",
    "StreamCounts",
    "StreamPolicy",
]

log = logging.getLogger(__name__)

Synchronous = Literal["FULL", "NORMAL"]
_SYNC_LEVELS = ("NORMAL", "FULL")  # weakest first

# 'SPCO' — marks the file as ours, so a wrong path is refused instead of altered.
APPLICATION_ID = 0x5350434F
SCHEMA_VERSION = 1
# Conservative: SQLite before 3.32 allows only 999 bound parameters per statement.
_CHUNK = 500
#: ``checkpoint="background"``: the WAL size (pages) at which SQLite checkpoints inside a
#: commit after all, should :meth:`Outbox.checkpoint` not be called (its default is 1 000)
BACKSTOP_CHECKPOINT_PAGES = 16384

_SCHEMA = """
CREATE TABLE streams (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    pending       INTEGER NOT NULL DEFAULT 0,
    pending_bytes INTEGER NOT NULL DEFAULT 0,
    dead          INTEGER NOT NULL DEFAULT 0,
    dead_bytes    INTEGER NOT NULL DEFAULT 0,
    appended      INTEGER NOT NULL DEFAULT 0,
    acked         INTEGER NOT NULL DEFAULT 0,
    dead_lettered INTEGER NOT NULL DEFAULT 0,
    dead_dropped  INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE entries (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id    INTEGER NOT NULL,
    created      REAL NOT NULL,
    next_attempt REAL NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    payload      BLOB NOT NULL
);
CREATE INDEX entries_by_stream ON entries (stream_id);
CREATE TABLE dead (
    seq        INTEGER PRIMARY KEY,
    stream_id  INTEGER NOT NULL,
    created    REAL NOT NULL,
    attempts   INTEGER NOT NULL,
    last_error TEXT,
    reason     TEXT NOT NULL,
    dead_at    REAL NOT NULL,
    payload    BLOB NOT NULL
);
CREATE INDEX dead_by_stream ON dead (stream_id);
CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
"""
# The payload column is last so reading the small columns never touches overflow pages.
_ENTRY_COLUMNS = "seq, created, attempts, next_attempt, last_error, payload"
_INSERT_ENTRY = (
    "INSERT INTO entries (stream_id, created, next_attempt, payload) VALUES (?, ?, ?, ?)"
)
# a counter drawn in one statement (UPSERT … RETURNING: SQLite 3.35+), else read then written
_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)
_DRAW = (
    "INSERT INTO counters (name, value) VALUES (?1, ?2) "
    "ON CONFLICT (name) DO UPDATE SET value = value + ?2 RETURNING value"
)


class OutboxError(Exception):
    """Any outbox failure; the text names the file and what was being done."""

    def __init__(self, path: str | os.PathLike[str], message: str) -> None:
        self.path = str(path)
        self.message = message
        super().__init__(f"outbox {self.path}: {message}")


class OutboxFull(OutboxError):  # noqa: N818 -- the name the callers and the brief use
    """An append would exceed a configured limit of a stream; nothing of that call was stored.

    ``limit`` is the name of the limit (``max_entries``, ``max_bytes``,
    ``max_file_bytes`` or ``disk``), ``maximum`` its value (None for the disk).
    The caller applies backpressure and tries again after the sink drained.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        stream: str | None,
        limit: str,
        maximum: int | None,
        message: str,
    ) -> None:
        self.stream = stream
        self.limit = limit
        self.maximum = maximum
        super().__init__(path, message)


class OutboxDiskFull(OutboxFull):
    """The disk or the ``max_file_bytes`` cap is full (SQLITE_FULL); committed entries are intact."""


@dataclass(frozen=True, slots=True)
class StreamPolicy:
    """Per-stream settings; ``None`` means the outbox-wide default.

    ``synchronous``: ``"FULL"`` (survives power loss) or ``"NORMAL"`` (survives
    ``kill -9``, not power loss). ``max_entries`` / ``max_bytes``: bound on the
    pending entries / their payload bytes; exceeding raises :class:`OutboxFull`.
    ``max_dead``: dead letters kept; the oldest beyond it are dropped and counted.
    """

    synchronous: Synchronous | None = None
    max_entries: int | None = None
    max_bytes: int | None = None
    max_dead: int | None = None


@dataclass(frozen=True, slots=True)
class Entry:
    """A pending entry: ``created`` and ``next_attempt`` are Unix seconds, ``last_error`` the retry reason."""

    seq: int
    stream: str
    created: float
    attempts: int
    next_attempt: float
    last_error: str | None
    payload: bytes


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An entry the far side rejected for good, with the reason and when (Unix seconds)."""

    seq: int
    stream: str
    created: float
    attempts: int
    last_error: str | None
    reason: str
    dead_at: float
    payload: bytes


@dataclass(frozen=True, slots=True)
class StreamCounts:
    """Self-metrics of one stream.

    ``pending``/``pending_bytes`` and ``dead``/``dead_bytes`` are current sizes
    (payload bytes); ``appended``, ``acked``, ``dead_lettered`` and
    ``dead_dropped`` (dead letters deleted beyond ``max_dead``) are totals
    since the file was created (they survive restarts). ``oldest_created`` is
    the creation time of the oldest pending entry (the backlog age), None if empty.
    """

    pending: int
    pending_bytes: int
    dead: int
    dead_bytes: int
    appended: int
    acked: int
    dead_lettered: int
    dead_dropped: int
    oldest_created: float | None


@dataclass(frozen=True, slots=True)
class OutboxCounts:
    """Self-metrics of the outbox.

    ``file_bytes`` is the database plus its WAL on disk; ``free_bytes`` the part
    of the database that is free pages (reused by later appends, returned to the
    filesystem by :meth:`Outbox.compact`).
    """

    path: str
    file_bytes: int
    free_bytes: int
    streams: Mapping[str, StreamCounts]


@dataclass(frozen=True, slots=True)
class NumberedAppend:
    """Result of :meth:`Outbox.append_numbered`: outbox ``seqs`` and the counter ``numbers`` used."""

    seqs: list[int]
    numbers: range


def _level(value: str) -> Synchronous:
    upper = value.upper()
    if upper not in _SYNC_LEVELS:
        raise ValueError(f"synchronous must be 'FULL' or 'NORMAL', not {value!r}")
    return upper  # type: ignore[return-value]


def _check_limit(name: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"{name} must be a positive integer or None, not {value!r}")


def _check_stream(stream: str) -> None:
    if not isinstance(stream, str) or not stream:
        raise ValueError(f"stream must be a non-empty string, not {stream!r}")


def _payloads(payloads: Iterable[bytes]) -> list[bytes]:
    out = []
    for i, p in enumerate(payloads):
        if not isinstance(p, bytes | bytearray | memoryview):
            raise TypeError(f"payload {i} is {type(p).__name__}, expected bytes")
        out.append(bytes(p))
    return out


def _seqs(seqs: Iterable[int]) -> list[int]:
    return sorted({int(s) for s in seqs})


def _chunks(values: list[int]) -> Iterator[list[int]]:
    for i in range(0, len(values), _CHUNK):
        yield values[i : i + _CHUNK]


def _delete_counted(
    conn: sqlite3.Connection, table: str, sid: int, seqs: list[int]
) -> tuple[int, int]:
    """Delete ``seqs`` of stream ``sid`` from ``entries`` or ``dead``; (rows, payload bytes) removed."""
    n_total = size_total = 0
    for chunk in _chunks(seqs):
        where = f"stream_id=? AND seq IN ({_marks(len(chunk))})"
        n, size = conn.execute(
            f"SELECT count(*), coalesce(sum(length(payload)), 0) FROM {table} WHERE {where}",
            (sid, *chunk),
        ).fetchone()
        conn.execute(f"DELETE FROM {table} WHERE {where}", (sid, *chunk))
        n_total += n
        size_total += size
    return n_total, size_total


def _marks(n: int) -> str:
    return ",".join("?" * n)


class OutboxTransaction:
    """Writes that commit together; obtained from :meth:`Outbox.transaction`."""

    def __init__(self, outbox: Outbox, conn: sqlite3.Connection, now: float) -> None:
        self._outbox = outbox
        self._conn: sqlite3.Connection | None = conn
        self._now = now

    def _live(self) -> sqlite3.Connection:
        if self._conn is None:
            raise OutboxError(self._outbox.path, "the transaction has already ended")
        return self._conn

    def next_seq(self, name: str, count: int = 1) -> range:
        """Draw ``count`` values of the persistent counter ``name`` (first value 1)."""
        return self._outbox._draw(self._live(), name, count)

    def append(self, stream: str, payloads: Iterable[bytes]) -> list[int]:
        """Append ``payloads`` to ``stream``; returns their outbox seqs.

        Stream bounds apply: :class:`OutboxFull` here rolls back the whole
        transaction if it propagates out of the ``with`` block.
        """
        _check_stream(stream)
        return self._outbox._insert(self._live(), stream, _payloads(payloads), self._now)

    def execute(
        self, sql: str, params: Sequence[object] | Mapping[str, object] = ()
    ) -> list[tuple]:
        """Run one statement on the caller's own tables (see ``Outbox(tables=...)``); returns rows.

        It commits or rolls back with the rest of the transaction.
        """
        try:
            return self._live().execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise self._outbox._translate(e, f"execute {sql.split(None, 2)[:2]}") from e

    def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> None:
        """Run one statement for each row of parameters, inside the transaction."""
        try:
            self._live().executemany(sql, rows)
        except sqlite3.Error as e:
            raise self._outbox._translate(e, f"execute {sql.split(None, 2)[:2]}") from e


class Outbox:
    """A durable, bounded, multi-stream outbox in one SQLite file (WAL mode).

    ``path``: the database file; its directory must exist. ``synchronous``: the
    default durability (``"FULL"``: survives power loss; ``"NORMAL"``: survives
    ``kill -9`` only). ``max_entries`` / ``max_bytes``: default per-stream
    bounds on pending entries / payload bytes. ``max_dead``: default
    per-stream bound on dead letters (None: unbounded). ``streams``: per-stream
    overrides. ``max_file_bytes``: hard cap on the database file.
    ``busy_timeout``: seconds to wait for another process's lock.
    ``tables``: the caller's own schema (``CREATE TABLE IF NOT EXISTS …;``
    statements), created at open, so state that must commit together with
    entries (alarm states beside their events) lives in the same file and is
    written through :meth:`OutboxTransaction.execute`, read with :meth:`query`.
    ``checkpoint``: ``"auto"`` (SQLite's default: the commit that takes the WAL
    past 1 000 pages copies them into the main file, and fsyncs it, before it
    returns) or ``"background"``: commits leave that to :meth:`checkpoint`,
    which the owner calls from a worker thread, so no commit on a latency path
    pays for a whole checkpoint; SQLite's own checkpoint stays as a backstop
    at :data:`BACKSTOP_CHECKPOINT_PAGES`, should nobody call it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Synchronous = "FULL",
        max_entries: int | None = None,
        max_bytes: int | None = None,
        max_dead: int | None = 100_000,
        streams: Mapping[str, StreamPolicy] | None = None,
        max_file_bytes: int | None = None,
        busy_timeout: float = 5.0,
        tables: str = "",
        checkpoint: Literal["auto", "background"] = "auto",
    ) -> None:
        self.path = Path(path)
        self._tables = tables
        if checkpoint not in ("auto", "background"):
            raise ValueError(f"checkpoint must be 'auto' or 'background', not {checkpoint!r}")
        self._background_checkpoint = checkpoint == "background"
        self._ckpt: sqlite3.Connection | None = None  # checkpoint()'s own connection
        self._lock_ckpt = threading.Lock()
        self._default_sync = _level(synchronous)
        _check_limit("max_entries", max_entries)
        _check_limit("max_bytes", max_bytes)
        _check_limit("max_dead", max_dead)
        _check_limit("max_file_bytes", max_file_bytes)
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._max_dead = max_dead
        self._max_file_bytes = max_file_bytes
        self._policies: dict[str, StreamPolicy] = {}
        for name, policy in (streams or {}).items():
            _check_stream(name)
            if policy.synchronous is not None:
                _level(policy.synchronous)
            _check_limit(f"streams[{name!r}].max_entries", policy.max_entries)
            _check_limit(f"streams[{name!r}].max_bytes", policy.max_bytes)
            _check_limit(f"streams[{name!r}].max_dead", policy.max_dead)
            self._policies[name] = policy
        self._lock = threading.Lock()
        self._sync_now: str | None = None
        # stream name -> id: rows of `streams` are never deleted nor renumbered, so an id once
        # committed holds for the file's life; ids met inside a write wait in _sids_new until
        # its COMMIT (a rolled-back INSERT of a new stream must not be remembered)
        self._sids: dict[str, int] = {}
        self._sids_new: dict[str, int] = {}
        self._tx_thread: int | None = None  # the thread inside transaction(), if any
        self._busy_timeout = busy_timeout
        self._readers: list[sqlite3.Connection] = []  # idle read-only connections (snapshot)
        self._lock_readers = threading.Lock()
        self._conn: sqlite3.Connection | None = self._open()

    # -- opening -------------------------------------------------------------------

    def _connect(self, *, read_only: bool = False) -> sqlite3.Connection:
        """A new connection to the file (any thread, autocommit, ``busy_timeout``)."""
        return sqlite3.connect(
            f"{self.path.resolve().as_uri()}?mode=ro" if read_only else self.path,
            uri=read_only,
            timeout=self._busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )

    def _open(self) -> sqlite3.Connection:
        if str(self.path) == ":memory:" or str(self.path).startswith("file:"):
            raise OutboxError(self.path, "the outbox needs a file path (WAL mode)")
        if not self.path.parent.is_dir():
            raise OutboxError(self.path, f"directory {self.path.parent} does not exist")
        if self.path.exists() and not self.path.is_file():
            raise OutboxError(self.path, "exists but is not a regular file")
        try:
            conn = self._connect()
        except sqlite3.Error as e:
            raise OutboxError(self.path, f"cannot open: {e}") from e
        try:
            self._prepare(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        fresh = check_identity(
            conn,
            self.path,
            what="shopspc outbox",
            application_id=APPLICATION_ID,
            schema_version=SCHEMA_VERSION,
            error=OutboxError,
        )
        try:
            if fresh:
                # Only takes effect before WAL mode and the first table; lets compact()
                # return the pages of a drained backlog to the filesystem.
                conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise OutboxError(
                    self.path,
                    f"cannot switch to WAL mode (journal_mode={mode}); "
                    "is it on a network filesystem?",
                )
            # Bound the WAL file left behind after a checkpoint; the backlog lives in the main file.
            conn.execute("PRAGMA journal_size_limit=67108864")
            if self._background_checkpoint:
                conn.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_CHECKPOINT_PAGES}")
            if self._max_file_bytes is not None:
                page_size = conn.execute("PRAGMA page_size").fetchone()[0]
                pages = max(1, self._max_file_bytes // page_size)
                conn.execute(f"PRAGMA max_page_count={pages}")
            self._set_sync(conn, self._default_sync)
            if fresh:
                conn.execute("BEGIN IMMEDIATE")
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                conn.execute("COMMIT")
            if self._tables.strip():
                conn.execute("BEGIN IMMEDIATE")
                for statement in self._tables.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("COMMIT")
        except sqlite3.Error as e:
            if conn.in_transaction:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise self._translate(e, "open") from e

    # -- plumbing ------------------------------------------------------------------

    def _set_sync(self, conn: sqlite3.Connection, level: str) -> None:
        if self._sync_now != level:
            conn.execute(f"PRAGMA synchronous={level}")
            self._sync_now = level

    def _policy_sync(self, stream: str) -> str:
        policy = self._policies.get(stream)
        return policy.synchronous if policy and policy.synchronous else self._default_sync

    def _limits(self, stream: str) -> tuple[int | None, int | None]:
        policy = self._policies.get(stream)
        max_entries = policy.max_entries if policy and policy.max_entries else self._max_entries
        max_bytes = policy.max_bytes if policy and policy.max_bytes else self._max_bytes
        return max_entries, max_bytes

    def _dead_limit(self, stream: str) -> int | None:
        policy = self._policies.get(stream)
        return policy.max_dead if policy and policy.max_dead else self._max_dead

    def _translate(self, e: sqlite3.Error, what: str, stream: str | None = None) -> OutboxError:
        code = getattr(e, "sqlite_errorcode", None)
        if code == sqlite3.SQLITE_FULL:
            cap = (
                f"the max_file_bytes cap ({self._max_file_bytes} bytes)"
                if self._max_file_bytes is not None
                else "the disk"
            )
            return OutboxDiskFull(
                self.path,
                stream,
                "max_file_bytes" if self._max_file_bytes is not None else "disk",
                self._max_file_bytes,
                f"{what}: {cap} is full ({e}); this write was not stored, "
                "everything committed before is intact",
            )
        if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
            return OutboxError(
                self.path, f"{what}: the file is damaged ({e}); it was left untouched"
            )
        name = getattr(e, "sqlite_errorname", None)
        return OutboxError(self.path, f"{what}: {e}" + (f" ({name})" if name else ""))

    def _acquire(self) -> None:
        if self._tx_thread == threading.get_ident():
            # The lock is not re-entrant: waiting for it here would deadlock.
            raise OutboxError(
                self.path, "called inside outbox.transaction(); use the transaction object"
            )
        self._lock.acquire()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise OutboxError(self.path, "the outbox is closed")
        return self._conn

    @contextmanager
    def _write(
        self, what: str, level: str, stream: str | None = None
    ) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock; sqlite errors become OutboxError, rolled back."""
        self._acquire()
        try:
            conn = self._connection()
            try:
                self._set_sync(conn, level)
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")
                if self._sids_new:
                    self._sids.update(self._sids_new)
                    self._sids_new.clear()
            except BaseException as e:
                self._sids_new.clear()
                if conn.in_transaction:
                    # SQLite may already have rolled back (SQLITE_FULL); nothing left to undo.
                    with suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                if isinstance(e, sqlite3.Error):
                    raise self._translate(e, what, stream) from e
                raise
        finally:
            self._lock.release()

    @contextmanager
    def _read(self, what: str) -> Iterator[sqlite3.Connection]:
        self._acquire()
        try:
            conn = self._connection()
            try:
                yield conn
            except sqlite3.Error as e:
                raise self._translate(e, what) from e
        finally:
            self._lock.release()

    def _stream_id(self, conn: sqlite3.Connection, stream: str) -> int | None:
        """The stream's id (None: no such stream yet); remembered once committed."""
        sid = self._sids.get(stream)
        if sid is not None:
            return sid
        row = conn.execute("SELECT id FROM streams WHERE name=?", (stream,)).fetchone()
        if row is None:
            return None
        (self._sids_new if conn.in_transaction else self._sids)[stream] = row[0]
        return row[0]

    def _insert(
        self, conn: sqlite3.Connection, stream: str, payloads: list[bytes], now: float
    ) -> list[int]:
        if not payloads:
            return []
        sid = self._stream_id(conn, stream)
        if sid is None:
            sid = conn.execute("INSERT INTO streams (name) VALUES (?)", (stream,)).lastrowid
            self._sids_new[stream] = sid  # remembered if this write commits
        size = sum(len(p) for p in payloads)
        if self._limits(stream) != (None, None):
            pending, pending_bytes = conn.execute(
                "SELECT pending, pending_bytes FROM streams WHERE id=?", (sid,)
            ).fetchone()
            self._enforce(stream, pending + len(payloads), pending_bytes + size)
        n = len(payloads)
        if n == 1:
            last = conn.execute(_INSERT_ENTRY, (sid, now, now, payloads[0])).lastrowid
        else:
            # AUTOINCREMENT under the write lock numbers one statement's rows consecutively
            conn.executemany(_INSERT_ENTRY, [(sid, now, now, p) for p in payloads])
            last = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
        first = last - n + 1
        conn.execute(
            "UPDATE streams SET pending=pending+?, pending_bytes=pending_bytes+?, "
            "appended=appended+? WHERE id=?",
            (len(payloads), size, len(payloads), sid),
        )
        return list(range(first, last + 1))

    def _enforce(self, stream: str, entries: int, size: int) -> None:
        max_entries, max_bytes = self._limits(stream)
        if max_entries is not None and entries > max_entries:
            raise OutboxFull(
                self.path,
                stream,
                "max_entries",
                max_entries,
                f"stream {stream!r} is full: {entries} pending entries would exceed "
                f"max_entries={max_entries}; nothing of this call was stored",
            )
        if max_bytes is not None and size > max_bytes:
            raise OutboxFull(
                self.path,
                stream,
                "max_bytes",
                max_bytes,
                f"stream {stream!r} is full: {size} pending payload bytes would exceed "
                f"max_bytes={max_bytes}; nothing of this call was stored",
            )

    @staticmethod
    def _draw(conn: sqlite3.Connection, name: str, count: int) -> range:
        if not isinstance(name, str) or not name:
            raise ValueError(f"counter name must be a non-empty string, not {name!r}")
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be a positive integer, not {count!r}")
        if _RETURNING:
            # fetchall: the statement must be done before the transaction commits
            ((last,),) = conn.execute(_DRAW, (name, count)).fetchall()
            return range(last - count + 1, last + 1)
        row = conn.execute("SELECT value FROM counters WHERE name=?", (name,)).fetchone()
        last = row[0] if row else 0
        conn.execute(
            "INSERT OR REPLACE INTO counters (name, value) VALUES (?, ?)", (name, last + count)
        )
        return range(last + 1, last + count + 1)

    # -- writing -------------------------------------------------------------------

    def append(
        self, stream: str, payloads: Iterable[bytes], *, now: float | None = None
    ) -> list[int]:
        """Store ``payloads`` in ``stream`` in one transaction and return their seqs.

        Durable when it returns (see the module text for ``FULL`` vs ``NORMAL``):
        acknowledge upstream only after this returned. ``now`` (Unix seconds,
        default the wall clock) is the creation time and the first due time.
        Raises :class:`OutboxFull` when a bound would be exceeded (nothing is
        stored) and :class:`OutboxError` for any storage failure.
        """
        _check_stream(stream)
        batch = _payloads(payloads)
        if not batch:
            return []
        t = time.time() if now is None else float(now)
        with self._write(f"append to {stream!r}", self._policy_sync(stream), stream) as conn:
            return self._insert(conn, stream, batch, t)

    def append_numbered(
        self,
        stream: str,
        counter: str,
        count: int,
        build: Callable[[range], Sequence[bytes]],
        *,
        now: float | None = None,
    ) -> NumberedAppend:
        """Draw ``count`` values of ``counter`` and append ``build(numbers)`` atomically.

        ``build`` gets the drawn range and returns exactly ``count`` payloads
        (e.g. alarm events carrying their ``seq``). Counter and entries commit
        in one transaction at the outbox default durability. If ``build``
        raises, nothing is stored and the counter is not advanced.
        """
        with self.transaction(now=now) as tx:
            numbers = tx.next_seq(counter, count)
            payloads = list(build(numbers))
            if len(payloads) != count:
                raise ValueError(f"build returned {len(payloads)} payloads for {count} numbers")
            seqs = tx.append(stream, payloads)
        return NumberedAppend(seqs=seqs, numbers=numbers)

    @contextmanager
    def transaction(
        self, *, now: float | None = None, synchronous: Synchronous | None = None
    ) -> Iterator[OutboxTransaction]:
        """A write transaction for several appends and counter draws that commit together.

        Usage: ``with outbox.transaction() as tx: n = tx.next_seq("alarm");
        tx.append("alarms-mqtt", [...]); tx.append("influx", [...])``. Commits
        when the block ends, rolls back everything if it raises. Holds the
        outbox lock meanwhile, so keep the block short and free of I/O; calling
        other outbox methods inside it raises :class:`OutboxError` (use ``tx``).
        The durability is ``synchronous`` or the outbox default.
        """
        t = time.time() if now is None else float(now)
        level = self._default_sync if synchronous is None else _level(synchronous)
        with self._write("transaction", level) as conn:
            tx = OutboxTransaction(self, conn, t)
            self._tx_thread = threading.get_ident()
            try:
                yield tx
            finally:
                self._tx_thread = None
                tx._conn = None  # a kept reference must not write outside the transaction

    def next_seq(self, name: str, count: int = 1) -> range:
        """Draw ``count`` values of the persistent counter ``name``: strictly increasing, first 1.

        Committed at the outbox default durability before it returns; a value is
        never handed out twice, across restarts too (values drawn but never used
        leave a gap, which is what a subscriber should see).
        """
        with self._write(f"next_seq {name!r}", self._default_sync) as conn:
            return self._draw(conn, name, count)

    def query(self, sql: str, params: Sequence[object] | Mapping[str, object] = ()) -> list[tuple]:
        """Read rows of the caller's own tables (see ``tables``) or of the outbox's."""
        with self._read(f"query {sql.split(None, 2)[:2]}") as conn:
            return conn.execute(sql, params).fetchall()

    def snapshot(
        self, sql: str, params: Sequence[object] | Mapping[str, object] = ()
    ) -> list[tuple]:
        """As :meth:`query`, on a read-only connection of its own (a WAL snapshot of the last
        commit): it neither takes the outbox's lock nor waits for a writer, and writers do not
        wait for it. For history queries that may scan (journals, Pareto, closed records)
        from worker threads while the owner keeps committing."""
        what = f"snapshot {sql.split(None, 2)[:2]}"
        conn = self._reader(what)
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise self._translate(e, what) from e
        finally:
            with self._lock_readers:
                if self._conn is not None:
                    self._readers.append(conn)
                    conn = None  # type: ignore[assignment]
            if conn is not None:  # the outbox was closed meanwhile
                conn.close()

    def _reader(self, what: str) -> sqlite3.Connection:
        with self._lock_readers:
            if self._conn is None:
                raise OutboxError(self.path, "the outbox is closed")
            if self._readers:
                return self._readers.pop()
        try:
            conn = self._connect(read_only=True)
            conn.execute("PRAGMA query_only=1")
        except sqlite3.Error as e:
            raise self._translate(e, what) from e
        return conn

    def counter(self, name: str) -> int:
        """The last value drawn from counter ``name`` (0 if never drawn)."""
        with self._read(f"counter {name!r}") as conn:
            row = conn.execute("SELECT value FROM counters WHERE name=?", (name,)).fetchone()
        return row[0] if row else 0

    def ack(self, stream: str, seqs: Iterable[int]) -> int:
        """Remove delivered entries; unknown or already removed seqs are ignored. Returns how many."""
        wanted = _seqs(seqs)
        if not wanted:
            return 0
        with self._write(f"ack in {stream!r}", self._policy_sync(stream), stream) as conn:
            sid = self._stream_id(conn, stream)
            if sid is None:
                return 0
            n_total, size_total = _delete_counted(conn, "entries", sid, wanted)
            conn.execute(
                "UPDATE streams SET pending=pending-?, pending_bytes=pending_bytes-?, "
                "acked=acked+? WHERE id=?",
                (n_total, size_total, n_total, sid),
            )
        return n_total

    def retry_later(
        self,
        stream: str,
        seqs: Iterable[int],
        delay: float,
        error: str = "",
        *,
        now: float | None = None,
    ) -> int:
        """Count a failed attempt and make the entries due again at ``now + delay``.

        The caller computes ``delay`` (capped and jittered, ``Backoff``);
        ``error`` is kept as ``last_error``. Returns how many entries were updated.
        """
        wanted = _seqs(seqs)
        if not wanted:
            return 0
        if not math.isfinite(delay) or delay < 0:
            raise ValueError(f"delay must be a finite number >= 0, not {delay!r}")
        due = (time.time() if now is None else float(now)) + delay
        updated = 0
        with self._write(f"retry_later in {stream!r}", self._policy_sync(stream), stream) as conn:
            sid = self._stream_id(conn, stream)
            if sid is None:
                return 0
            for chunk in _chunks(wanted):
                cur = conn.execute(
                    "UPDATE entries SET attempts=attempts+1, next_attempt=?, last_error=? "
                    f"WHERE stream_id=? AND seq IN ({_marks(len(chunk))})",
                    (due, error, sid, *chunk),
                )
                updated += cur.rowcount
        return updated

    def dead_letter(
        self, stream: str, seqs: Iterable[int], reason: str, *, now: float | None = None
    ) -> int:
        """Move entries the far side rejected for good into the dead-letter table with ``reason``.

        They stop being delivered, are counted and listed (:meth:`dead_letters`)
        and come back only through :meth:`requeue_dead`. Returns how many moved.
        """
        wanted = _seqs(seqs)
        if not wanted:
            return 0
        t = time.time() if now is None else float(now)
        with self._write(f"dead_letter in {stream!r}", self._policy_sync(stream), stream) as conn:
            sid = self._stream_id(conn, stream)
            if sid is None:
                return 0
            n_total = size_total = 0
            for chunk in _chunks(wanted):
                where = f"stream_id=? AND seq IN ({_marks(len(chunk))})"
                n, size = conn.execute(
                    f"SELECT count(*), coalesce(sum(length(payload)), 0) FROM entries WHERE {where}",
                    (sid, *chunk),
                ).fetchone()
                conn.execute(
                    "INSERT INTO dead (seq, stream_id, created, attempts, last_error, reason, "
                    "dead_at, payload) SELECT seq, stream_id, created, attempts, last_error, ?, ?, "
                    f"payload FROM entries WHERE {where}",
                    (reason, t, sid, *chunk),
                )
                conn.execute(f"DELETE FROM entries WHERE {where}", (sid, *chunk))
                n_total += n
                size_total += size
            conn.execute(
                "UPDATE streams SET pending=pending-?, pending_bytes=pending_bytes-?, "
                "dead=dead+?, dead_bytes=dead_bytes+?, dead_lettered=dead_lettered+? WHERE id=?",
                (n_total, size_total, n_total, size_total, n_total, sid),
            )
            dropped = self._drop_excess_dead(conn, stream, sid)
        if dropped:
            log.warning(
                "outbox %s: stream %r holds more than max_dead=%d dead letters; "
                "dropped the %d oldest",
                self.path,
                stream,
                self._dead_limit(stream),
                dropped,
            )
        return n_total

    def _drop_excess_dead(self, conn: sqlite3.Connection, stream: str, sid: int) -> int:
        limit = self._dead_limit(stream)
        if limit is None:
            return 0
        dead = conn.execute("SELECT dead FROM streams WHERE id=?", (sid,)).fetchone()[0]
        excess = dead - limit
        if excess <= 0:
            return 0
        oldest = "SELECT seq FROM dead WHERE stream_id=? ORDER BY seq LIMIT ?"
        n, size = conn.execute(
            f"SELECT count(*), coalesce(sum(length(payload)), 0) FROM dead WHERE seq IN ({oldest})",
            (sid, excess),
        ).fetchone()
        conn.execute(f"DELETE FROM dead WHERE seq IN ({oldest})", (sid, excess))
        conn.execute(
            "UPDATE streams SET dead=dead-?, dead_bytes=dead_bytes-?, dead_dropped=dead_dropped+? "
            "WHERE id=?",
            (n, size, n, sid),
        )
        return n

    def requeue_dead(self, stream: str, seqs: Iterable[int], *, now: float | None = None) -> int:
        """Deliberately put dead letters back as pending, due at ``now``, attempts reset to 0.

        They keep their original seq (and so their place in the order: an
        in-order drain delivers them before newer entries). Stream bounds apply
        (:class:`OutboxFull`). Returns how many were requeued.
        """
        wanted = _seqs(seqs)
        if not wanted:
            return 0
        t = time.time() if now is None else float(now)
        with self._write(f"requeue_dead in {stream!r}", self._policy_sync(stream), stream) as conn:
            row = conn.execute(
                "SELECT id, pending, pending_bytes FROM streams WHERE name=?", (stream,)
            ).fetchone()
            if row is None:
                return 0
            sid, pending, pending_bytes = row
            n_total = size_total = 0
            for chunk in _chunks(wanted):
                where = f"stream_id=? AND seq IN ({_marks(len(chunk))})"
                n, size = conn.execute(
                    f"SELECT count(*), coalesce(sum(length(payload)), 0) FROM dead WHERE {where}",
                    (sid, *chunk),
                ).fetchone()
                self._enforce(stream, pending + n_total + n, pending_bytes + size_total + size)
                conn.execute(
                    "INSERT INTO entries (seq, stream_id, created, next_attempt, attempts, "
                    f"last_error, payload) SELECT seq, stream_id, created, ?, 0, NULL, payload "
                    f"FROM dead WHERE {where}",
                    (t, sid, *chunk),
                )
                conn.execute(f"DELETE FROM dead WHERE {where}", (sid, *chunk))
                n_total += n
                size_total += size
            conn.execute(
                "UPDATE streams SET pending=pending+?, pending_bytes=pending_bytes+?, "
                "dead=dead-?, dead_bytes=dead_bytes-? WHERE id=?",
                (n_total, size_total, n_total, size_total, sid),
            )
        return n_total

    def purge_dead(self, stream: str, seqs: Iterable[int]) -> int:
        """Delete dead letters for good (a deliberate, operator-driven action). Returns how many."""
        wanted = _seqs(seqs)
        if not wanted:
            return 0
        with self._write(f"purge_dead in {stream!r}", self._policy_sync(stream), stream) as conn:
            sid = self._stream_id(conn, stream)
            if sid is None:
                return 0
            n_total, size_total = _delete_counted(conn, "dead", sid, wanted)
            conn.execute(
                "UPDATE streams SET dead=dead-?, dead_bytes=dead_bytes-? WHERE id=?",
                (n_total, size_total, sid),
            )
        return n_total

    # -- reading -------------------------------------------------------------------

    def peek(
        self,
        stream: str,
        limit: int = 100,
        *,
        now: float | None = None,
        in_order: bool = False,
        after: int = 0,
    ) -> list[Entry]:
        """Up to ``limit`` pending entries of ``stream`` that are due (``next_attempt <= now``), by seq.

        ``after``: only entries with a larger seq (those before it are in flight).

        Entries stay until acked. With ``in_order=True`` the result stops at the
        first entry that is not yet due (head-of-line blocking, for consumers
        such as the alarm publisher that must deliver strictly in order); by
        default later due entries are returned past a postponed one
        (idempotent sinks such as InfluxDB).
        """
        if limit < 1:
            return []
        t = time.time() if now is None else float(now)
        with self._read(f"peek {stream!r}") as conn:
            sid = self._stream_id(conn, stream)
            if sid is None:
                return []
            if in_order:
                rows = conn.execute(
                    f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE stream_id=? AND seq>? "
                    "ORDER BY seq LIMIT ?",
                    (sid, after, limit),
                ).fetchall()
            else:
                rows = conn.execute(
                    f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE stream_id=? AND seq>? "
                    "AND next_attempt<=? ORDER BY seq LIMIT ?",
                    (sid, after, t, limit),
                ).fetchall()
        out = []
        for seq, created, attempts, next_attempt, last_error, payload in rows:
            if next_attempt > t:
                break
            out.append(Entry(seq, stream, created, attempts, next_attempt, last_error, payload))
        return out

    def next_due(self, stream: str, *, in_order: bool = False) -> float | None:
        """When the next entry of ``stream`` becomes due (Unix seconds), None if nothing is pending.

        With ``in_order=True`` this is the head entry's due time (cheap); else
        the earliest due time of any pending entry (scans the stream).
        """
        with self._read(f"next_due {stream!r}") as conn:
            sid = self._stream_id(conn, stream)
            if sid is None:
                return None
            if in_order:
                row = conn.execute(
                    "SELECT next_attempt FROM entries WHERE stream_id=? ORDER BY seq LIMIT 1",
                    (sid,),
                ).fetchone()
            else:
                row = conn.execute(
                    "SELECT min(next_attempt) FROM entries WHERE stream_id=?", (sid,)
                ).fetchone()
        return None if row is None else row[0]

    def dead_letters(
        self, stream: str, limit: int = 100, *, after_seq: int = 0
    ) -> list[DeadLetter]:
        """Dead letters of ``stream`` by seq, ``limit`` at a time; page with ``after_seq``."""
        with self._read(f"dead_letters {stream!r}") as conn:
            sid = self._stream_id(conn, stream)
            if sid is None:
                return []
            rows = conn.execute(
                "SELECT seq, created, attempts, last_error, reason, dead_at, payload FROM dead "
                "WHERE stream_id=? AND seq>? ORDER BY seq LIMIT ?",
                (sid, after_seq, limit),
            ).fetchall()
        return [
            DeadLetter(seq, stream, created, attempts, last_error, reason, dead_at, payload)
            for seq, created, attempts, last_error, reason, dead_at, payload in rows
        ]

    def counts(self) -> OutboxCounts:
        """Per-stream pending/dead-letter counts and totals, and the file size, for self-metrics."""
        with self._read("counts") as conn:
            rows = conn.execute(
                "SELECT id, name, pending, pending_bytes, dead, dead_bytes, appended, acked, "
                "dead_lettered, dead_dropped FROM streams ORDER BY name"
            ).fetchall()
            streams = {}
            for sid, name, *numbers in rows:
                oldest = conn.execute(
                    "SELECT created FROM entries WHERE stream_id=? ORDER BY seq LIMIT 1", (sid,)
                ).fetchone()
                streams[name] = StreamCounts(*numbers, oldest_created=oldest[0] if oldest else None)
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        size = 0
        for suffix in ("", "-wal"):
            with suppress(FileNotFoundError):
                size += os.stat(f"{self.path}{suffix}").st_size
        return OutboxCounts(
            path=str(self.path), file_bytes=size, free_bytes=free * page_size, streams=streams
        )

    def compact(self) -> int:
        """Return free pages (left by a drained backlog) to the filesystem; returns bytes freed.

        Cheap when little is free; the WAL is checkpointed so the file shrinks now.
        """
        with self._read("compact") as conn:
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            before = conn.execute("PRAGMA freelist_count").fetchone()[0]
            # executescript steps the pragma to completion; execute() would free one page.
            conn.executescript("PRAGMA incremental_vacuum;")
            after = conn.execute("PRAGMA freelist_count").fetchone()[0]
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        return (before - after) * page_size

    def check(self) -> list[str]:
        """Consistency problems, empty when sound: SQLite's integrity check and the stream counters.

        Reads the whole file: for tests, start-up diagnostics and support, not the hot path.
        """
        with self._read("check") as conn:
            problems = [
                r[0] for r in conn.execute("PRAGMA integrity_check").fetchall() if r[0] != "ok"
            ]
            for table, column in (("entries", "pending"), ("dead", "dead")):
                for name, kept, actual, kept_b, actual_b in conn.execute(
                    f"SELECT s.name, s.{column}, count(t.seq), s.{column}_bytes, "
                    f"coalesce(sum(length(t.payload)), 0) FROM streams s "
                    f"LEFT JOIN {table} t ON t.stream_id = s.id GROUP BY s.id"
                ):
                    if (kept, kept_b) != (actual, actual_b):
                        problems.append(
                            f"stream {name!r}: {column} counter says {kept} entries/{kept_b} bytes, "
                            f"table holds {actual}/{actual_b}"
                        )
        return problems

    # -- lifecycle -----------------------------------------------------------------

    @property
    def aio(self) -> AsyncOutbox:
        """The same operations as coroutines, each run in a worker thread."""
        return AsyncOutbox(self)

    def checkpoint(self) -> tuple[int, int]:
        """Copy the committed WAL frames into the main file; (frames in the WAL, frames copied).

        A PASSIVE checkpoint on a connection of its own: it waits for no writer
        and no writer waits for it (nor for the outbox lock), so it belongs in a
        worker thread beside an owner that commits on a latency path (see
        ``checkpoint="background"``). Frames that a reader still needs stay until
        a later call; once all are copied, the next commit starts the WAL afresh.
        """
        with self._lock_ckpt:
            conn = self._ckpt
            if conn is None:
                if self._conn is None:
                    raise OutboxError(self.path, "the outbox is closed")
                try:
                    conn = self._connect()
                    # NORMAL syncs what a checkpoint must (the WAL before, the file after)
                    conn.execute("PRAGMA synchronous=NORMAL")
                except sqlite3.Error as e:
                    raise self._translate(e, "checkpoint") from e
                self._ckpt = conn
            try:
                _busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error as e:
                raise self._translate(e, "checkpoint") from e
        return max(0, frames), max(0, copied)

    def close(self) -> None:
        """Close the file (idempotent). SQLite checkpoints the WAL into the main file."""
        with self._lock_ckpt:
            ckpt, self._ckpt = self._ckpt, None
            if ckpt is not None:
                ckpt.close()
        self._acquire()
        try:
            with self._lock_readers:
                readers, self._readers = self._readers, []
                conn, self._conn = self._conn, None
            for reader in readers:
                reader.close()
            if conn is not None:
                conn.close()
        finally:
            self._lock.release()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else "open"
        return f"Outbox({str(self.path)!r}, {state}, synchronous={self._default_sync})"


class AsyncOutbox:
    """Coroutine twins of :class:`Outbox` methods, each run via :func:`asyncio.to_thread`.

    The wrapped outbox's lock serialises them with any synchronous callers.
    :meth:`Outbox.transaction` has no twin (a lock held across ``await`` would
    block other threads); use :meth:`append_numbered`, which runs whole in one thread.
    """

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    async def append(
        self, stream: str, payloads: Iterable[bytes], *, now: float | None = None
    ) -> list[int]:
        """See :meth:`Outbox.append`."""
        return await asyncio.to_thread(self.outbox.append, stream, list(payloads), now=now)

    async def append_numbered(
        self,
        stream: str,
        counter: str,
        count: int,
        build: Callable[[range], Sequence[bytes]],
        *,
        now: float | None = None,
    ) -> NumberedAppend:
        """See :meth:`Outbox.append_numbered` (``build`` runs in the worker thread)."""
        return await asyncio.to_thread(
            self.outbox.append_numbered, stream, counter, count, build, now=now
        )

    async def next_seq(self, name: str, count: int = 1) -> range:
        """See :meth:`Outbox.next_seq`."""
        return await asyncio.to_thread(self.outbox.next_seq, name, count)

    async def peek(
        self,
        stream: str,
        limit: int = 100,
        *,
        now: float | None = None,
        in_order: bool = False,
        after: int = 0,
    ) -> list[Entry]:
        """See :meth:`Outbox.peek`."""
        return await asyncio.to_thread(
            self.outbox.peek, stream, limit, now=now, in_order=in_order, after=after
        )

    async def ack(self, stream: str, seqs: Iterable[int]) -> int:
        """See :meth:`Outbox.ack`."""
        return await asyncio.to_thread(self.outbox.ack, stream, list(seqs))

    async def retry_later(
        self,
        stream: str,
        seqs: Iterable[int],
        delay: float,
        error: str = "",
        *,
        now: float | None = None,
    ) -> int:
        """See :meth:`Outbox.retry_later`."""
        return await asyncio.to_thread(
            self.outbox.retry_later, stream, list(seqs), delay, error, now=now
        )

    async def dead_letter(
        self, stream: str, seqs: Iterable[int], reason: str, *, now: float | None = None
    ) -> int:
        """See :meth:`Outbox.dead_letter`."""
        return await asyncio.to_thread(self.outbox.dead_letter, stream, list(seqs), reason, now=now)

    async def requeue_dead(
        self, stream: str, seqs: Iterable[int], *, now: float | None = None
    ) -> int:
        """See :meth:`Outbox.requeue_dead`."""
        return await asyncio.to_thread(self.outbox.requeue_dead, stream, list(seqs), now=now)

    async def dead_letters(
        self, stream: str, limit: int = 100, *, after_seq: int = 0
    ) -> list[DeadLetter]:
        """See :meth:`Outbox.dead_letters`."""
        return await asyncio.to_thread(self.outbox.dead_letters, stream, limit, after_seq=after_seq)

    async def next_due(self, stream: str, *, in_order: bool = False) -> float | None:
        """See :meth:`Outbox.next_due`."""
        return await asyncio.to_thread(self.outbox.next_due, stream, in_order=in_order)

    async def query(
        self, sql: str, params: Sequence[object] | Mapping[str, object] = ()
    ) -> list[tuple]:
        return await asyncio.to_thread(self.outbox.query, sql, params)

    async def counts(self) -> OutboxCounts:
        """See :meth:`Outbox.counts`."""
        return await asyncio.to_thread(self.outbox.counts)
