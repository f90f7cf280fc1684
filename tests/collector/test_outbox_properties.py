"""State-machine test: random appends, acks, retries, dead letters, requeues and reopens.

Invariant after every step: each appended entry that was neither acked nor
dead-lettered is in the outbox exactly once, with its payload, in seq order;
due-time filtering and the counters agree with a plain-Python model.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from collector.outbox import Outbox

STREAMS = st.sampled_from(["influx", "alarms"])


class OutboxMachine(RuleBasedStateMachine):
    """Model: seq → (stream, payload, due) for pending, seq → (stream, payload) for dead."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="outbox-sm-"))
        self.path = self.dir / "outbox.db"
        self.outbox = Outbox(self.path, synchronous="NORMAL")
        self.now = 1_000.0
        self.pending: dict[int, tuple[str, bytes, float]] = {}
        self.dead: dict[int, tuple[str, bytes]] = {}
        self.max_seq = 0
        self.counter = 0

    def teardown(self) -> None:
        self.outbox.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _of(self, stream: str, table: dict) -> list[int]:
        return sorted(s for s, v in table.items() if v[0] == stream)

    @rule(stream=STREAMS, payloads=st.lists(st.binary(max_size=20), min_size=1, max_size=8))
    def append(self, stream: str, payloads: list[bytes]) -> None:
        seqs = self.outbox.append(stream, payloads, now=self.now)
        assert len(seqs) == len(payloads)
        assert seqs == sorted(seqs) and seqs[0] > self.max_seq
        self.max_seq = seqs[-1]
        for seq, payload in zip(seqs, payloads, strict=True):
            self.pending[seq] = (stream, payload, self.now)

    @rule(stream=STREAMS, count=st.integers(1, 3))
    def append_numbered(self, stream: str, count: int) -> None:
        res = self.outbox.append_numbered(
            stream, "n", count, lambda ns: [b"n%d" % n for n in ns], now=self.now
        )
        assert res.numbers == range(self.counter + 1, self.counter + count + 1)
        assert res.seqs[0] > self.max_seq
        self.counter += count
        self.max_seq = res.seqs[-1]
        for seq, n in zip(res.seqs, res.numbers, strict=True):
            self.pending[seq] = (stream, b"n%d" % n, self.now)

    @precondition(lambda self: self.pending)
    @rule(data=st.data(), stream=STREAMS)
    def ack(self, data: st.DataObject, stream: str) -> None:
        chosen = data.draw(st.lists(st.sampled_from(sorted(self.pending)), max_size=6))
        bogus = data.draw(st.lists(st.integers(1, self.max_seq + 5), max_size=2))
        mine = {s for s in chosen + bogus if self.pending.get(s, ("",))[0] == stream}
        assert self.outbox.ack(stream, chosen + bogus) == len(mine)
        for s in mine:
            del self.pending[s]

    @precondition(lambda self: self.pending)
    @rule(data=st.data(), delay=st.floats(0, 50))
    def retry_later(self, data: st.DataObject, delay: float) -> None:
        chosen = set(data.draw(st.lists(st.sampled_from(sorted(self.pending)), max_size=6)))
        by_stream: dict[str, list[int]] = {}
        for s in chosen:
            by_stream.setdefault(self.pending[s][0], []).append(s)
        for stream, seqs in by_stream.items():
            assert self.outbox.retry_later(stream, seqs, delay, "x", now=self.now) == len(seqs)
            for s in seqs:
                self.pending[s] = (stream, self.pending[s][1], self.now + delay)

    @precondition(lambda self: self.pending)
    @rule(data=st.data(), stream=STREAMS)
    def dead_letter(self, data: st.DataObject, stream: str) -> None:
        candidates = self._of(stream, self.pending)
        chosen = (
            set(data.draw(st.lists(st.sampled_from(candidates), max_size=4)))
            if candidates
            else set()
        )
        assert self.outbox.dead_letter(stream, chosen, "rejected", now=self.now) == len(chosen)
        for s in chosen:
            stream_, payload, _ = self.pending.pop(s)
            self.dead[s] = (stream_, payload)

    @precondition(lambda self: self.dead)
    @rule(data=st.data(), stream=STREAMS)
    def requeue(self, data: st.DataObject, stream: str) -> None:
        candidates = self._of(stream, self.dead)
        chosen = (
            set(data.draw(st.lists(st.sampled_from(candidates), max_size=4)))
            if candidates
            else set()
        )
        assert self.outbox.requeue_dead(stream, chosen, now=self.now) == len(chosen)
        for s in chosen:
            stream_, payload = self.dead.pop(s)
            self.pending[s] = (stream_, payload, self.now)

    @rule(dt=st.floats(0, 30))
    def tick(self, dt: float) -> None:
        self.now += dt

    @rule()
    def reopen(self) -> None:
        self.outbox.close()
        self.outbox = Outbox(self.path, synchronous="FULL")

    @invariant()
    def matches_model(self) -> None:
        for stream in ("influx", "alarms"):
            everything = self.outbox.peek(stream, 10_000, now=math.inf)
            expected = self._of(stream, self.pending)
            assert [e.seq for e in everything] == expected
            assert [e.payload for e in everything] == [self.pending[s][1] for s in expected]
            due = [e.seq for e in self.outbox.peek(stream, 10_000, now=self.now)]
            assert due == [s for s in expected if self.pending[s][2] <= self.now]
            head = self.outbox.peek(stream, 10_000, now=self.now, in_order=True)
            prefix = []
            for s in expected:
                if self.pending[s][2] > self.now:
                    break
                prefix.append(s)
            assert [e.seq for e in head] == prefix
            dead = [d.seq for d in self.outbox.dead_letters(stream, 10_000)]
            assert dead == self._of(stream, self.dead)
            counts = self.outbox.counts().streams.get(stream)
            if counts is not None:
                assert (counts.pending, counts.dead) == (len(expected), len(dead))
        assert self.outbox.counter("n") == self.counter


OutboxMachine.TestCase.settings = settings(
    max_examples=30, stateful_step_count=25, deadline=None, print_blob=True
)
test_outbox_state_machine = OutboxMachine.TestCase


def test_check_is_clean_after_the_machine(tmp_path: Path) -> None:
    """The counters kept in the streams table match the rows (what ``check`` verifies)."""
    with Outbox(tmp_path / "o.db") as ob:
        seqs = ob.append("s", [b"abc"] * 10)
        ob.ack("s", seqs[:3])
        ob.dead_letter("s", seqs[3:5], "r")
        ob.requeue_dead("s", seqs[3:4])
        ob.purge_dead("s", seqs[4:5])
        assert ob.check() == []
