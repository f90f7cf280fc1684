"""The audited limits store: effective dating, history, audit trail, atomicity, integrity."""

from __future__ import annotations

import json
import math
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.limitstore import (
    BACKDATE_TOLERANCE_US,
    LimitsStore,
    LimitsStoreError,
    TamperedRecordError,
    control_limits,
)
from spc.limits import Exclusion, LimitsRecord

P = "plant/machining/line-7/op20/bore"
Q = "plant/machining/line-7/op30/depth"
T0 = 1_764_144_000_000_000  # 2025-11-26T08:00:00Z
H = 3_600_000_000


def rec(center: float, sigma: float = 0.01, chart: str = "imr", **kw: object) -> LimitsRecord:
    """A limits record with the gateway's params."""
    return LimitsRecord(
        chart=chart,
        center=center,
        sigma=sigma,
        method=kw.pop("method", "mr"),  # type: ignore[arg-type]
        n_points=25,
        params=(("nsigmas", 3.0),),
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def store(tmp_path: Path) -> LimitsStore:
    s = LimitsStore(tmp_path / "limits.db")
    yield s
    s.close()


def put(store: LimitsStore, path: str, r: LimitsRecord, eff: int, now: int = T0, **kw: object):
    return store.assign(
        path,
        r,
        user=kw.pop("user", "qe.anna"),  # type: ignore[arg-type]
        reason=kw.pop("reason", "test"),  # type: ignore[arg-type]
        source=kw.pop("source", "cli"),  # type: ignore[arg-type]
        effective_from_us=eff,
        now_us=now,
        **kw,  # type: ignore[arg-type]
    )


def test_effective_dating_with_future_assignment(store: LimitsStore) -> None:
    a, b = rec(25.0), rec(25.1)
    put(store, P, a, T0)
    put(store, P, b, T0 + 2 * H)  # scheduled: pending until then
    assert store.effective(P, T0 - 1) is None
    assert store.effective(P, T0) == a
    assert store.effective(P, T0 + 2 * H - 1) == a
    assert store.effective(P, T0 + 2 * H) == b
    assert [x.limits_id for x in store.pending(T0)] == [b.id]
    assert store.pending(T0 + 2 * H) == []
    assert store.current_all(T0 + H) == {P: a}
    assert store.current_all(T0 + 3 * H) == {P: b}


def test_ties_go_to_the_later_assignment(store: LimitsStore) -> None:
    a, b = rec(1.0), rec(2.0)
    put(store, P, a, T0 + H)
    put(store, P, b, T0 + H)
    assert store.effective(P, T0 + H) == b
    put(store, P, a, T0 + H)
    assert store.effective(P, T0 + H) == a
    assert store.current_assignments(T0 + H)[P].seq == 3


def test_history_is_the_timeline_and_paths_are_separate(store: LimitsStore) -> None:
    a, b, c = rec(1.0), rec(2.0), rec(3.0)
    put(store, P, a, T0)
    put(store, P, c, T0 + 5 * H)  # made second, in force last
    put(store, P, b, T0 + H)
    put(store, Q, b, T0)
    hist = store.history(P)
    assert [h.limits_id for h in hist] == [a.id, b.id, c.id]
    assert [h.seq for h in hist] == [1, 3, 2]
    assert [h.effective_from_us for h in hist] == [T0, T0 + H, T0 + 5 * H]
    assert store.paths() == [P, Q]
    assert store.current_all(T0 + 2 * H) == {P: b, Q: b}


def test_audit_keeps_who_when_why_old_and_new(store: LimitsStore) -> None:
    a = rec(25.0, 0.01)
    b = rec(25.02, 0.012, chart="xbar-r", method="rbar")
    put(store, P, a, T0, user="qe.anna", reason="initial capability study")
    ch = put(
        store,
        P,
        b,
        T0 + H,
        now=T0 + H,
        user="qe.bob",
        reason="new spindle",
        action="recompute",
        subgroup_size=5,
    )
    assert ch.previous == a and ch.record == b
    first, second = store.audit(P)
    assert first.old_limits_id is None and first.old is None
    assert first.new_limits_id == a.id
    assert (second.user, second.why, second.action, second.at_us) == (
        "qe.bob",
        "new spindle",
        "recompute",
        T0 + H,
    )
    assert second.old_limits_id == a.id and second.new_limits_id == b.id
    assert second.old["center"] == 25.0 and second.old["sigma"] == 0.01
    k = 3 * 0.012 / math.sqrt(5)
    assert second.new["lcl"] == pytest.approx(25.02 - k)
    assert second.new["ucl"] == pytest.approx(25.02 + k)
    assert second.new["method"] == "rbar" and second.new["n_points"] == 25
    assert second.host
    assert store.changes_since(1) == [second]
    assert store.last_seq() == 2
    assert store.audit(Q) == []
    json.dumps(second.to_json())  # publishable as is


def test_refusals_name_the_field(store: LimitsStore) -> None:
    with pytest.raises(ValueError, match=r"^user"):
        put(store, P, rec(1.0), T0, user="  ")
    with pytest.raises(ValueError, match=r"^reason"):
        put(store, P, rec(1.0), T0, reason="")
    with pytest.raises(ValueError, match=r"^source"):
        put(store, P, rec(1.0), T0, source="someone")
    with pytest.raises(ValueError, match=r"^effective_from"):
        put(store, P, rec(1.0), T0 - BACKDATE_TOLERANCE_US - 1)
    put(store, P, rec(1.0), T0 - BACKDATE_TOLERANCE_US)  # within the clock-skew tolerance
    put(store, P, rec(2.0), T0 - 10 * H, allow_backdate=True)
    with pytest.raises(ValueError, match=r"^record"):
        put(store, P, LimitsRecord("imr", 1.0, 1.0, "mr", 3, id="L-0000000000000000"), T0)
    with pytest.raises(ValueError, match=r"^limits_id"):
        store.revert(P, "L-0000000000000000", user="u", reason="r", now_us=T0)
    assert len(store.audit()) == 2


def test_revert_and_cancel_are_audited(store: LimitsStore) -> None:
    a, b, c = rec(1.0), rec(2.0), rec(3.0)
    put(store, P, a, T0)
    put(store, P, b, T0 + H, now=T0 + H)
    back = store.revert(P, a.id, user="qe.anna", reason="b was wrong", now_us=T0 + 2 * H)
    assert back.audit.action == "revert" and back.previous == b and back.record == a
    assert store.effective(P, T0 + 2 * H) == a
    plan = put(store, P, c, T0 + 5 * H, now=T0 + 2 * H)
    entry = store.cancel(
        plan.assignment.seq, user="qe.bob", reason="trial postponed", now_us=T0 + 3 * H
    )
    assert entry.action == "cancel"
    assert (entry.old_limits_id, entry.new_limits_id) == (c.id, a.id)
    assert store.pending(T0 + 3 * H) == []
    assert store.effective(P, T0 + 6 * H) == a
    assert store.history(P)[-1].cancelled
    with pytest.raises(ValueError, match="already cancelled"):
        store.cancel(plan.assignment.seq, user="u", reason="r", now_us=T0 + 3 * H)
    with pytest.raises(ValueError, match="already in force"):
        store.cancel(back.assignment.seq, user="u", reason="r", now_us=T0 + 3 * H)
    assert [e.action for e in store.audit(P)] == ["assign", "assign", "revert", "assign", "cancel"]
    assert store.verify() == []


def test_a_failed_change_leaves_nothing(
    store: LimitsStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    put(store, P, rec(1.0), T0)

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("power cut")

    monkeypatch.setattr(store, "_append_audit", boom)
    b = rec(2.0)
    with pytest.raises(RuntimeError):
        put(store, P, b, T0 + H)
    monkeypatch.undo()
    assert store.record(b.id) is None
    assert len(store.history(P)) == 1
    assert len(store.audit()) == 1
    assert store.effective(P, T0 + 2 * H) == rec(1.0)


def test_reopen_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "limits.db"
    r = rec(
        25.0,
        exclusions=(Exclusion(3, "probe fault"),),
        window=("2025-11-26T08:00:00Z", "2025-11-26T09:00:00Z"),
    )
    r = r.with_provenance("qe.anna", "2025-11-26T09:00:00Z", "capability study")
    with LimitsStore(path) as s:
        put(s, P, r, T0)
    with LimitsStore(path, readonly=True) as s:
        back = s.effective(P, T0)
        assert back == r and back.created_by == "qe.anna" and back.exclusions == r.exclusions
        assert len(s.audit()) == 1
        with pytest.raises(LimitsStoreError, match="read-only"):
            put(s, P, rec(2.0), T0)
    with LimitsStore(path) as s:
        put(s, P, rec(2.0), T0 + H)
        assert len(s.history(P)) == 2
        assert s.verify() == []


def test_foreign_files_are_refused_untouched(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    before = other.read_bytes()
    with pytest.raises(LimitsStoreError, match=r"other\.db.*not a shopspc limits store"):
        LimitsStore(other)
    assert other.read_bytes() == before
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(LimitsStoreError, match=r"junk\.db.*not a shopspc limits store"):
        LimitsStore(junk)
    with pytest.raises(LimitsStoreError, match="no limits store"):
        LimitsStore(tmp_path / "missing.db", readonly=True)


def test_tampered_record_is_reported_with_its_id(tmp_path: Path) -> None:
    path = tmp_path / "limits.db"
    a = rec(25.0)
    with LimitsStore(path) as s:
        put(s, P, a, T0)
    conn = sqlite3.connect(path)
    with pytest.raises(sqlite3.IntegrityError, match="immutable"):
        conn.execute("UPDATE records SET record = '{}'")
    conn.execute("DROP TRIGGER records_immutable")
    data = json.loads(conn.execute("SELECT record FROM records").fetchone()[0])
    data["center"] = 25.5  # widen nothing, just move the centre
    conn.execute("UPDATE records SET record = ?", (json.dumps(data),))
    conn.commit()
    conn.close()
    with LimitsStore(path) as s:
        with pytest.raises(TamperedRecordError, match=a.id) as info:
            s.effective(P, T0)
        assert info.value.limits_id == a.id
        assert any(a.id in p for p in s.verify())


def test_audit_is_append_only_and_chained(tmp_path: Path) -> None:
    path = tmp_path / "limits.db"
    with LimitsStore(path) as s:
        put(s, P, rec(1.0), T0)
        put(s, P, rec(2.0), T0 + H)
        put(s, P, rec(3.0), T0 + 2 * H)
    conn = sqlite3.connect(path)
    for sql in ("UPDATE audit SET why = 'x'", "DELETE FROM audit"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute(sql)
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("DROP TRIGGER audit_no_delete")
    conn.execute("UPDATE audit SET user = 'someone else' WHERE seq = 2")
    conn.execute("DELETE FROM audit WHERE seq = 3")
    conn.commit()
    conn.close()
    with LimitsStore(path) as s:
        problems = s.verify()
    assert any("audit 2: content" in p for p in problems)
    assert any("rows 3…3 are missing" in p for p in problems)


def test_control_limits_per_chart() -> None:
    assert control_limits(rec(10.0, 1.0)) == (7.0, 13.0)
    lcl, ucl = control_limits(rec(10.0, 1.0, chart="xbar-s", method="sbar"), 4)
    assert (lcl, ucl) == (8.5, 11.5)
    c = LimitsRecord("c", 4.0, math.nan, "cbar", 20, params=(("nsigmas", 3.0),))
    assert control_limits(c) == (0.0, 10.0)
    p = LimitsRecord("p", 0.1, math.nan, "pbar", 20)
    assert control_limits(p) == (None, None)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    plan=st.lists(
        st.tuples(st.integers(0, 6), st.integers(0, 3), st.booleans()), min_size=1, max_size=12
    ),
    probes=st.lists(st.integers(-1, 7), min_size=1, max_size=8),
)
def test_effective_equals_a_naive_model(
    tmp_path_factory: pytest.TempPathFactory,
    plan: list[tuple[int, int, bool]],
    probes: list[int],
) -> None:
    """effective(t) is the latest (effective_from, seq) at or before t among those not cancelled."""
    records = [rec(float(i)) for i in range(4)]
    path = tmp_path_factory.mktemp("prop") / "limits.db"
    live: list[tuple[int, int, LimitsRecord]] = []
    with LimitsStore(path) as s:
        for hour, which, cancel in plan:
            ch = put(s, P, records[which], T0 + hour * H, now=T0 - H)
            if cancel:
                s.cancel(ch.assignment.seq, user="u", reason="r", now_us=T0 - H)
            else:
                live.append((T0 + hour * H, ch.assignment.seq, records[which]))
        for hour in probes:
            t = T0 + hour * H
            due = [x for x in live if x[0] <= t]
            want = max(due, key=lambda x: (x[0], x[1]))[2] if due else None
            assert s.effective(P, t) == want
            assert s.current_all(t).get(P) == want
        assert s.verify() == []


def test_a_missing_record_is_damage_not_no_limits(tmp_path: Path) -> None:
    path = tmp_path / "limits.db"
    a = rec(25.0)
    with LimitsStore(path) as s:
        put(s, P, a, T0)
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER records_kept")
    conn.execute("DELETE FROM records")
    conn.commit()
    conn.close()
    with LimitsStore(path) as s:
        with pytest.raises(TamperedRecordError, match=f"{a.id}.*assignment #1 .* missing"):
            s.effective(P, T0)
        with pytest.raises(TamperedRecordError):
            s.current_all(T0)


def test_two_writers_keep_one_chain(tmp_path: Path) -> None:
    """Two store objects (as the CLI and the gateway) writing at once: every change lands, chained."""
    path = tmp_path / "limits.db"
    stores = [LimitsStore(path), LimitsStore(path)]
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(15):
                put(stores[k], f"{P}{k}", rec(k * 100.0 + i), T0 + i * H, user=f"writer{k}")
        except BaseException as e:  # reported below, in the test thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    try:
        assert errors == []
        assert not any(t.is_alive() for t in threads)
        assert [e.seq for e in stores[0].audit()] == list(range(1, 31))
        assert stores[1].verify() == []
        assert len(stores[0].history(f"{P}1")) == 15
    finally:
        for s in stores:
            s.close()


def test_import_legacy_limits_json(tmp_path: Path) -> None:
    a, b = rec(25.0), rec(3.0, chart="xbar-r", method="rbar")
    legacy = tmp_path / "limits.json"
    legacy.write_text(json.dumps({P: a.to_json(), Q: b.to_json()}))
    with LimitsStore(tmp_path / "limits.db") as s:
        put(s, Q, rec(3.1), T0 - H, now=T0 - H)  # already managed: not overwritten
        changes = s.import_json(legacy, now_us=T0)
        assert [c.assignment.path for c in changes] == [P]
        assert s.effective(P, T0) == a and s.effective(Q, T0) == rec(3.1)
        assert s.audit(P)[0].action == "import" and s.audit(P)[0].source == "import"
        assert s.import_json(legacy, now_us=T0 + H) == []
        legacy.write_text("{not json")
        with pytest.raises(LimitsStoreError, match=r"limits\.json: cannot import"):
            s.import_json(legacy)


_WRITER = """
import sys
from collector.limitstore import LimitsStore
from spc.limits import LimitsRecord
path, start, t0 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with LimitsStore(path) as s:
    for i in range(start, start + 100_000):
        r = LimitsRecord("imr", float(i), 1.0, "mr", 25)
        c = s.assign("a/b/c/d/e", r, user="writer", reason="kill test", source="api",
                     effective_from_us=t0 + i, now_us=t0 + i)
        print(c.audit.seq, r.id, flush=True)
"""


def test_kill_9_mid_change_keeps_every_change_whole(tmp_path: Path) -> None:
    """SIGKILL while changes commit: each returned change is there with its record and audit row."""
    path = tmp_path / "limits.db"
    rng = np.random.default_rng(3)
    reported: dict[int, str] = {}
    start = 0
    for _ in range(3):
        stop_after = int(rng.integers(5, 40))
        with subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), str(start), str(T0)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as proc:
            assert proc.stdout is not None
            for _ in range(stop_after):
                line = proc.stdout.readline()
                if not line.endswith("\n"):
                    break
                seq, lid = line.split()
                reported[int(seq)] = lid
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            err = proc.stderr.read() if proc.stderr else ""
        assert "Traceback" not in err, err
        with LimitsStore(path) as s:
            entries = {e.seq: e for e in s.audit()}
            for seq, lid in reported.items():
                assert entries[seq].new_limits_id == lid
                assert s.record(lid) is not None
            hist = s.history("a/b/c/d/e")
            assert len(hist) == len(entries)
            assert {h.seq for h in hist} == {e.assignment_seq for e in entries.values()}
            assert s.verify() == []
            start = len(entries) + 1
    assert len(reported) >= 3
