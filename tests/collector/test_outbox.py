"""The durable outbox on a real SQLite file: order, ack, retry, dead letters, counters, bounds, errors."""

from __future__ import annotations

import asyncio
import math
import sqlite3
import threading
from pathlib import Path

import pytest

from collector.outbox import (
    Outbox,
    OutboxDiskFull,
    OutboxError,
    OutboxFull,
    StreamPolicy,
)

T0 = 1_700_000_000.0


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "outbox.db"


@pytest.fixture
def outbox(path: Path):
    with Outbox(path, synchronous="NORMAL") as ob:
        yield ob


def _all(ob: Outbox, stream: str) -> list[int]:
    return [e.seq for e in ob.peek(stream, 10**6, now=math.inf)]


def test_append_peek_in_seq_order_across_streams(outbox: Outbox) -> None:
    a = outbox.append("influx", [b"a1", b"a2"], now=T0)
    b = outbox.append("alarms-mqtt", [b"b1"], now=T0)
    c = outbox.append("influx", [bytearray(b"a3")], now=T0)
    assert a + b + c == sorted(a + b + c)
    assert len(set(a + b + c)) == 4
    entries = outbox.peek("influx", 10, now=T0)
    assert [e.seq for e in entries] == a + c
    assert [e.payload for e in entries] == [b"a1", b"a2", b"a3"]
    assert all(e.stream == "influx" and e.created == T0 and e.attempts == 0 for e in entries)
    assert [e.payload for e in outbox.peek("alarms-mqtt", 10, now=T0)] == [b"b1"]
    assert [e.seq for e in outbox.peek("influx", 2, now=T0)] == a
    assert outbox.peek("nothing-here", 10) == []
    assert outbox.append("influx", []) == []


def test_ack_removes_only_given_entries_and_is_idempotent(outbox: Outbox) -> None:
    seqs = outbox.append("s", [b"%d" % i for i in range(10)], now=T0)
    other = outbox.append("t", [b"x"], now=T0)
    assert outbox.ack("s", [*seqs[:3], seqs[5]]) == 4
    assert outbox.ack("s", seqs[:3]) == 0  # a repeated ack (at-least-once) is harmless
    assert outbox.ack("s", other) == 0  # a seq of another stream is not touched
    assert outbox.ack("unknown", seqs) == 0
    assert _all(outbox, "s") == seqs[3:5] + seqs[6:]
    assert _all(outbox, "t") == other
    counts = outbox.counts().streams["s"]
    assert (counts.pending, counts.pending_bytes, counts.appended, counts.acked) == (6, 6, 10, 4)


def test_ack_many_at_once(outbox: Outbox) -> None:
    """More seqs than SQLite's bound-parameter limit in one call."""
    seqs = outbox.append("s", [b"x"] * 2_500, now=T0)
    assert outbox.ack("s", seqs[:2_400]) == 2_400
    assert _all(outbox, "s") == seqs[2_400:]
    assert outbox.check() == []


def test_retry_later_postpones_and_counts_attempts(outbox: Outbox) -> None:
    seqs = outbox.append("s", [b"1", b"2", b"3"], now=T0)
    assert outbox.retry_later("s", seqs[:1], 30.0, "timeout", now=T0) == 1
    # Not due yet: the default peek goes past it, the in-order peek stops at it.
    assert [e.seq for e in outbox.peek("s", 10, now=T0 + 1)] == seqs[1:]
    assert outbox.peek("s", 10, now=T0 + 1, in_order=True) == []
    assert outbox.next_due("s", in_order=True) == T0 + 30
    assert outbox.next_due("s") == T0
    head = outbox.peek("s", 10, now=T0 + 30)[0]
    assert (head.seq, head.attempts, head.last_error, head.next_attempt) == (
        seqs[0],
        1,
        "timeout",
        T0 + 30,
    )
    outbox.retry_later("s", seqs, 5.0, "503", now=T0 + 30)
    assert outbox.peek("s", 10, now=T0 + 34) == []
    assert [e.attempts for e in outbox.peek("s", 10, now=T0 + 35)] == [2, 1, 1]
    assert outbox.next_due("empty") is None
    with pytest.raises(ValueError):
        outbox.retry_later("s", seqs, math.nan)


def test_in_order_peek_returns_the_due_head(outbox: Outbox) -> None:
    seqs = outbox.append("s", [b"1", b"2", b"3"], now=T0)
    outbox.retry_later("s", seqs[2:], 10.0, now=T0)
    assert [e.seq for e in outbox.peek("s", 10, now=T0, in_order=True)] == seqs[:2]


def test_dead_letters_are_listed_counted_and_requeued_deliberately(outbox: Outbox) -> None:
    seqs = outbox.append("influx", [b"ok", b"bad1", b"bad2", b"ok2"], now=T0)
    outbox.retry_later("influx", seqs[1:2], 1.0, "500", now=T0)
    moved = outbox.dead_letter("influx", seqs[1:3], "400: unable to parse", now=T0 + 5)
    assert moved == 2
    assert _all(outbox, "influx") == [seqs[0], seqs[3]]
    dead = outbox.dead_letters("influx")
    assert [(d.seq, d.payload, d.reason, d.dead_at) for d in dead] == [
        (seqs[1], b"bad1", "400: unable to parse", T0 + 5),
        (seqs[2], b"bad2", "400: unable to parse", T0 + 5),
    ]
    assert (dead[0].attempts, dead[0].last_error) == (1, "500")
    assert [d.seq for d in outbox.dead_letters("influx", 10, after_seq=seqs[1])] == [seqs[2]]
    c = outbox.counts().streams["influx"]
    assert (c.pending, c.dead, c.dead_bytes, c.dead_lettered) == (2, 2, 8, 2)
    # Put one back: it keeps its seq (its place in the order), attempts start again.
    assert outbox.requeue_dead("influx", [seqs[1]], now=T0 + 10) == 1
    entries = outbox.peek("influx", 10, now=T0 + 10)
    assert [e.seq for e in entries] == [seqs[0], seqs[1], seqs[3]]
    assert entries[1].attempts == 0
    assert outbox.purge_dead("influx", [seqs[2]]) == 1
    c = outbox.counts().streams["influx"]
    assert (c.pending, c.dead, c.dead_bytes) == (3, 0, 0)
    assert outbox.dead_letters("influx") == []
    assert outbox.check() == []


def test_dead_letters_are_bounded_oldest_dropped_and_counted(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Outbox(path, max_dead=3, streams={"alarms": StreamPolicy(max_dead=10)}) as ob:
        seqs = ob.append("influx", [b"%d" % i for i in range(6)])
        ob.dead_letter("influx", seqs[:2], "400")
        assert not caplog.records
        ob.dead_letter("influx", seqs[2:5], "400")
        assert [d.seq for d in ob.dead_letters("influx")] == seqs[2:5]
        c = ob.counts().streams["influx"]
        assert (c.dead, c.dead_bytes, c.dead_lettered, c.dead_dropped, c.pending) == (3, 3, 5, 2, 1)
        assert "max_dead=3" in caplog.text and "dropped the 2 oldest" in caplog.text
        alarms = ob.append("alarms", [b"a"] * 5)
        ob.dead_letter("alarms", alarms, "bad")  # its own, larger bound
        assert ob.counts().streams["alarms"].dead == 5
        assert ob.check() == []


def test_compact_returns_a_drained_backlog_to_the_filesystem(path: Path) -> None:
    with Outbox(path, synchronous="NORMAL") as ob:
        seqs = ob.append("influx", [b"x" * 200] * 5_000)
        ob.ack("influx", seqs[:-1])
        counts = ob.counts()
        assert counts.free_bytes > 500_000
        before = counts.file_bytes
        freed = ob.compact()
        assert freed >= counts.free_bytes // 2
        after = ob.counts()
        assert after.file_bytes < before and after.free_bytes < counts.free_bytes
        assert _all(ob, "influx") == seqs[-1:]
        assert ob.check() == []


@pytest.mark.parametrize("returning", [True, False], ids=["upsert-returning", "read-then-write"])
def test_counters_are_monotonic_across_reopen(
    path: Path, monkeypatch: pytest.MonkeyPatch, returning: bool
) -> None:
    """Both ways of drawing (one UPSERT … RETURNING on SQLite 3.35+, else a read and a write)."""
    import collector.outbox as outbox_module

    if returning and not outbox_module._RETURNING:
        pytest.skip(f"SQLite {sqlite3.sqlite_version} has no RETURNING")
    monkeypatch.setattr(outbox_module, "_RETURNING", returning)
    with Outbox(path) as ob:
        assert ob.counter("alarm") == 0
        assert ob.next_seq("alarm") == range(1, 2)
        assert ob.next_seq("alarm", 3) == range(2, 5)
        assert ob.next_seq("other") == range(1, 2)
    with Outbox(path) as ob:
        assert ob.counter("alarm") == 4
        assert ob.next_seq("alarm", 2) == range(5, 7)
        with pytest.raises(ValueError):
            ob.next_seq("alarm", 0)


def test_seq_never_reused_after_deleting_the_newest_and_reopening(path: Path) -> None:
    with Outbox(path) as ob:
        seqs = ob.append("s", [b"a", b"b", b"c"])
        ob.ack("s", seqs[1:])  # the newest ones
        ob.dead_letter("s", seqs[:1], "x")
        ob.purge_dead("s", seqs[:1])  # the table is now empty
    with Outbox(path) as ob:
        again = ob.append("s", [b"d"])
        assert again[0] > seqs[-1]


def test_a_new_stream_rolled_back_is_not_remembered(outbox: Outbox) -> None:
    """Stream ids are remembered once committed: the id of a stream whose creation rolled
    back goes to the next new stream, and the first stream's later entries stay its own."""

    def failing() -> None:
        with outbox.transaction(now=T0) as tx:
            tx.append("first", [b"lost"])
            raise KeyError("encoder failed")

    with pytest.raises(KeyError):
        failing()
    outbox.append("second", [b"s1"], now=T0)  # takes the id "first" had in the rollback
    outbox.append("first", [b"f1", b"f2"], now=T0)
    with outbox.transaction(now=T0) as tx:  # a stream created and appended twice in one commit
        tx.append("third", [b"t1"])
        tx.append("third", [b"t2"])
    assert [e.payload for e in outbox.peek("first", 10, now=math.inf)] == [b"f1", b"f2"]
    assert [e.payload for e in outbox.peek("second", 10, now=math.inf)] == [b"s1"]
    assert [e.payload for e in outbox.peek("third", 10, now=math.inf)] == [b"t1", b"t2"]
    counts = outbox.counts().streams
    assert (counts["first"].pending, counts["second"].pending, counts["third"].pending) == (2, 1, 2)


def test_append_returns_the_seqs_of_its_rows(outbox: Outbox) -> None:
    """One entry or many, the returned seqs are those peek shows, consecutive and increasing."""
    one = outbox.append("s", [b"a"], now=T0)
    many = outbox.append("s", [b"b", b"c", b"d"], now=T0)
    other = outbox.append("t", [b"e"], now=T0)
    assert len(one) == 1 and many == list(range(one[0] + 1, one[0] + 4))
    assert other == [many[-1] + 1]
    assert [(e.seq, e.payload) for e in outbox.peek("s", 10, now=math.inf)] == list(
        zip(one + many, [b"a", b"b", b"c", b"d"], strict=True)
    )


def test_append_numbered_commits_events_and_counter_together(outbox: Outbox) -> None:
    res = outbox.append_numbered(
        "alarms-mqtt", "alarm", 2, lambda ns: [b"seq=%d" % n for n in ns], now=T0
    )
    assert res.numbers == range(1, 3)
    assert [e.payload for e in outbox.peek("alarms-mqtt", 10, now=T0)] == [b"seq=1", b"seq=2"]

    def broken(numbers: range) -> list[bytes]:
        raise RuntimeError("cannot encode")

    with pytest.raises(RuntimeError):
        outbox.append_numbered("alarms-mqtt", "alarm", 1, broken)
    with pytest.raises(ValueError):
        outbox.append_numbered("alarms-mqtt", "alarm", 2, lambda ns: [b"one"])
    assert outbox.counter("alarm") == 2  # neither failed call advanced it
    assert len(_all(outbox, "alarms-mqtt")) == 2


def test_transaction_spans_streams_and_rolls_back(outbox: Outbox) -> None:
    with outbox.transaction(now=T0) as tx:
        (n,) = tx.next_seq("alarm")
        tx.append("alarms-mqtt", [b"event %d" % n])
        tx.append("influx", [b"alarm seq=%d" % n])
    assert outbox.counts().streams["influx"].pending == 1

    def failing() -> None:
        with outbox.transaction() as tx:
            tx.next_seq("alarm")
            tx.append("alarms-mqtt", [b"lost"])
            raise KeyError("encoder failed")

    with pytest.raises(KeyError):
        failing()
    with outbox.transaction() as kept, pytest.raises(OutboxError, match=r"inside outbox\."):
        outbox.append("influx", [b"would deadlock"])
    with pytest.raises(OutboxError, match="already ended"):
        kept.append("influx", [b"late"])
    assert outbox.counter("alarm") == 1
    assert len(_all(outbox, "alarms-mqtt")) == 1


def test_outbox_full_names_stream_and_limit_and_stores_nothing(path: Path) -> None:
    streams = {"alarms": StreamPolicy(max_entries=100, max_bytes=10_000, synchronous="FULL")}
    with Outbox(path, synchronous="NORMAL", max_entries=5, max_bytes=40, streams=streams) as ob:
        seqs = ob.append("influx", [b"x" * 8] * 4)
        with pytest.raises(OutboxFull) as info:
            ob.append("influx", [b"y"] * 2)
        err = info.value
        assert (err.stream, err.limit, err.maximum) == ("influx", "max_entries", 5)
        assert "'influx'" in str(err) and "max_entries=5" in str(err) and str(path) in str(err)
        with pytest.raises(OutboxFull) as info:
            ob.append("influx", [b"z" * 9])
        assert info.value.limit == "max_bytes"
        assert "max_bytes=40" in str(info.value)
        assert _all(ob, "influx") == seqs
        # Another stream has its own budget; the full one has room again after an ack.
        ob.append("alarms", [b"a"] * 50)
        ob.ack("influx", seqs[:2])
        ob.append("influx", [b"y"] * 2)
        # A requeue respects the bound too.
        ob.dead_letter("influx", seqs[2:3], "bad")
        ob.append("influx", [b"w", b"v"])
        with pytest.raises(OutboxFull):
            ob.requeue_dead("influx", seqs[2:3])
        assert ob.check() == []


def test_full_file_raises_clear_error_and_loses_nothing(path: Path) -> None:
    """SQLITE_FULL (here from max_page_count via max_file_bytes) as a full disk would raise it."""
    with Outbox(path, synchronous="NORMAL", max_file_bytes=64 * 1024) as ob:
        kept: list[int] = []

        def fill() -> None:
            for i in range(1_000):
                kept.extend(ob.append("influx", [b"%04d" % i + b"x" * 500] * 4))

        with pytest.raises(OutboxDiskFull) as info:
            fill()
        assert kept, "the file filled before the first append"
        message = str(info.value)
        assert str(path) in message and "full" in message and "append to 'influx'" in message
        assert isinstance(info.value, OutboxFull) and isinstance(info.value, OutboxError)
        assert _all(ob, "influx") == kept
        # Draining still works when full and makes room again.
        ob.ack("influx", kept[: len(kept) // 2])
        ob.append("influx", [b"after"])
        assert ob.check() == []
    with Outbox(path) as ob:
        assert _all(ob, "influx")[: len(kept) - len(kept) // 2] == kept[len(kept) // 2 :]


def test_garbage_file_is_refused_and_left_untouched(path: Path) -> None:
    junk = b"this is not a database, it is a shopping list\n" * 200
    path.write_bytes(junk)
    with pytest.raises(OutboxError) as info:
        Outbox(path)
    assert str(path) in str(info.value) and "untouched" in str(info.value)
    assert path.read_bytes() == junk


def test_foreign_database_and_newer_schema_are_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "other.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(OutboxError, match="not a shopspc outbox"):
        Outbox(foreign)
    newer = tmp_path / "newer.db"
    Outbox(newer).close()
    conn = sqlite3.connect(newer)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(OutboxError, match="schema version 99"):
        Outbox(newer)


def test_damaged_pages_are_reported_with_the_path(path: Path) -> None:
    """Damage past the header is found by the first operation that reads it."""
    with Outbox(path) as ob:
        ob.append("s", [b"p" * 3000] * 40)
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 6 * page
    data[3 * page : len(data) - page] = b"\xa5" * (len(data) - 4 * page)
    path.write_bytes(bytes(data))
    with Outbox(path) as ob:
        for operation in (
            lambda: ob.peek("s", 100, now=math.inf),
            lambda: ob.append("s", [b"x"]),
            ob.check,
        ):
            with pytest.raises(OutboxError) as info:
                operation()
            assert str(path) in str(info.value) and "damaged" in str(info.value)
    assert path.read_bytes() == data


def test_bad_paths_and_arguments(tmp_path: Path, outbox: Outbox) -> None:
    with pytest.raises(OutboxError, match="does not exist"):
        Outbox(tmp_path / "missing" / "outbox.db")
    with pytest.raises(OutboxError, match="not a regular file"):
        Outbox(tmp_path)
    with pytest.raises(ValueError):
        Outbox(tmp_path / "x.db", synchronous="OFF")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Outbox(tmp_path / "x.db", max_entries=0)
    with pytest.raises(TypeError, match="payload 1 is str"):
        outbox.append("s", [b"ok", "text"])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        outbox.append("", [b"x"])


def test_closed_outbox_raises(path: Path) -> None:
    ob = Outbox(path)
    ob.close()
    ob.close()
    with pytest.raises(OutboxError, match="closed"):
        ob.append("s", [b"x"])
    assert "closed" in repr(ob)


def test_counts_report_file_size_and_backlog_age(outbox: Outbox) -> None:
    outbox.append("s", [b"x" * 100] * 3, now=T0)
    outbox.append("s", [b"y"], now=T0 + 9)
    counts = outbox.counts()
    assert counts.path == str(outbox.path)
    assert counts.file_bytes > 0
    s = counts.streams["s"]
    assert (s.pending, s.pending_bytes, s.oldest_created) == (4, 301, T0)


def test_threads_share_one_outbox(outbox: Outbox) -> None:
    results: list[list[int]] = []

    def work(k: int) -> None:
        for i in range(20):
            results.append(outbox.append(f"s{k % 2}", [b"%d-%d" % (k, i)] * 5))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    seqs = [s for r in results for s in r]
    assert len(seqs) == len(set(seqs)) == 400
    assert sorted(_all(outbox, "s0") + _all(outbox, "s1")) == sorted(seqs)


async def test_async_wrappers(outbox: Outbox) -> None:
    aio = outbox.aio
    batches = await asyncio.gather(*(aio.append("s", [b"%d" % i] * 3, now=T0) for i in range(10)))
    seqs = sorted(s for b in batches for s in b)
    assert len(set(seqs)) == 30
    numbered = await aio.append_numbered("a", "alarm", 2, lambda ns: [b"%d" % n for n in ns])
    assert numbered.numbers == range(1, 3)
    assert await aio.next_seq("alarm") == range(3, 4)
    head = await aio.peek("s", 5, now=T0)
    assert [e.seq for e in head] == seqs[:5]
    assert await aio.retry_later("s", seqs[5:6], 1.0, "busy", now=T0) == 1
    assert await aio.dead_letter("s", seqs[6:7], "bad") == 1
    assert await aio.ack("s", seqs[:5]) == 5
    assert [d.seq for d in await aio.dead_letters("s")] == seqs[6:7]
    assert await aio.next_due("s", in_order=True) == T0 + 1
    assert await aio.requeue_dead("s", seqs[6:7]) == 1
    assert await aio.dead_letter("s", seqs[6:7], "bad again") == 1
    counts = await aio.counts()
    assert (counts.streams["s"].pending, counts.streams["s"].dead) == (24, 1)


_TABLES = "CREATE TABLE IF NOT EXISTS states (key TEXT PRIMARY KEY, value TEXT NOT NULL);"


def test_own_tables_commit_and_roll_back_with_the_entries(path: Path) -> None:
    with Outbox(path, tables=_TABLES) as ob:
        with ob.transaction() as tx:
            tx.execute("INSERT INTO states VALUES (?, ?)", ("a", "raised"))
            tx.append("mqtt", [b"event-a"])

        def crash() -> None:
            with ob.transaction() as tx:
                tx.executemany(
                    "INSERT OR REPLACE INTO states VALUES (?, ?)", [("a", "x"), ("b", "y")]
                )
                tx.append("mqtt", [b"event-b"])
                raise RuntimeError("crash before commit")

        with pytest.raises(RuntimeError):
            crash()
        assert ob.query("SELECT key, value FROM states ORDER BY key") == [("a", "raised")]
        assert [e.payload for e in ob.peek("mqtt", 10)] == [b"event-a"]
    # reopening an existing outbox keeps the rows and does not recreate the table
    with Outbox(path, tables=_TABLES) as ob:
        assert ob.query("SELECT value FROM states WHERE key=?", ("a",)) == [("raised",)]


def test_execute_errors_name_the_file(path: Path) -> None:
    with Outbox(path, tables=_TABLES) as ob:
        with pytest.raises(OutboxError, match=str(path)), ob.transaction() as tx:
            tx.execute("INSERT INTO nowhere VALUES (1)")
        with pytest.raises(OutboxError, match="no such table"):
            ob.query("SELECT * FROM nowhere")


async def test_async_query(path: Path) -> None:
    with Outbox(path, tables=_TABLES) as ob:
        with ob.transaction() as tx:
            tx.execute("INSERT INTO states VALUES ('k', 'v')")
        assert await ob.aio.query("SELECT value FROM states") == [("v",)]


def _in_thread(fn, timeout: float = 10.0):
    """Run ``fn`` in a thread; its result, or an AssertionError when it is still waiting."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "still waiting (for a lock?)"
    return out[0]


def test_snapshot_reads_the_last_commit_while_a_transaction_holds_the_lock(outbox: Outbox) -> None:
    outbox.append("s", [b"a", b"b"])
    count = "SELECT count(*) FROM entries"
    with outbox.transaction() as tx:
        tx.append("s", [b"c"])
        # the outbox's own reads wait for the lock; a snapshot does not, and sees the commit
        assert _in_thread(lambda: outbox.snapshot(count)) == [(2,)]
    assert outbox.snapshot(count) == [(3,)]
    assert outbox.query(count) == [(3,)]


def test_snapshot_reuses_its_connection_and_cannot_write(outbox: Outbox) -> None:
    outbox.append("s", [b"a"])
    for _ in range(3):
        assert outbox.snapshot("SELECT count(*) FROM entries WHERE stream_id > ?", (0,)) == [(1,)]
    assert len(outbox._readers) == 1  # one idle reader, reused
    with pytest.raises(OutboxError, match="snapshot"):
        outbox.snapshot("DELETE FROM entries")
    assert outbox.query("SELECT count(*) FROM entries") == [(1,)]


def test_snapshot_after_close_is_a_clear_error(path: Path) -> None:
    ob = Outbox(path, synchronous="NORMAL")
    assert ob.snapshot("SELECT 1") == [(1,)]
    reader = ob._readers[0]
    ob.close()
    with pytest.raises(sqlite3.ProgrammingError):
        reader.execute("SELECT 1")  # closed with the outbox
    with pytest.raises(OutboxError, match="closed"):
        ob.snapshot("SELECT 1")


def _wal_pages(path: Path) -> int:
    wal = Path(f"{path}-wal")
    return wal.stat().st_size // 4096 if wal.exists() else 0


@pytest.mark.parametrize("mode", ["auto", "background"])
def test_background_checkpoint_leaves_the_checkpoint_to_checkpoint(
    tmp_path: Path, mode: str
) -> None:
    # about 1 500 pages in 300 commits: past SQLite's own threshold of 1 000 pages
    path = tmp_path / f"{mode}.db"
    with Outbox(path, synchronous="NORMAL", checkpoint=mode) as ob:  # type: ignore[arg-type]
        for k in range(300):
            seqs = ob.append("s", [bytes([k % 251]) * 16000], now=T0)
            ob.ack("s", seqs)
        if mode == "auto":
            # a commit checkpointed and the WAL started again from its beginning
            assert _wal_pages(path) < 1100
            return
        assert _wal_pages(path) > 1400  # no commit checkpointed
        frames, copied = ob.checkpoint()
        assert frames == copied > 1400
        size = _wal_pages(path)
        seqs = ob.append("s", [b"after"], now=T0)
        # everything was copied, so this commit wrote from the WAL's beginning again
        frames, copied = ob.checkpoint()
        assert 0 < frames == copied < 20
        assert _wal_pages(path) == size
        assert [e.payload for e in ob.peek("s", 10, now=math.inf)] == [b"after"]
    with Outbox(path, synchronous="NORMAL") as ob:  # nothing lost by the checkpoints
        assert [e.seq for e in ob.peek("s", 10, now=math.inf)] == seqs


def test_checkpoint_waits_for_no_writer_and_errors_after_close(outbox: Outbox, path: Path) -> None:
    outbox.append("s", [b"x"], now=T0)
    with outbox.transaction(now=T0) as tx:
        tx.append("s", [b"y"])
        # a writer holds the file: a passive checkpoint copies what was committed before
        frames, copied = outbox.checkpoint()
        assert frames == copied > 0
    assert [e.payload for e in outbox.peek("s", 10, now=math.inf)] == [b"x", b"y"]
    with pytest.raises(ValueError, match="checkpoint must be"):
        Outbox(path, checkpoint="sometimes")  # type: ignore[arg-type]
    outbox.close()
    with pytest.raises(OutboxError, match="closed"):
        outbox.checkpoint()
