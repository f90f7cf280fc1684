"""``kill -9`` during writes: nothing acknowledged is lost, the file stays sound, seqs go on.

A child process (``outbox_writer.py``) appends series batches (``NORMAL``) and
numbered alarm events (``FULL``) and acks old series entries, printing each
call after it returned. The test SIGKILLs it at a random point, reopens the
file and checks every acknowledged entry against it; then restarts the writer
on the same file, a few rounds.
"""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from collector.outbox import Outbox

WRITER = Path(__file__).with_name("outbox_writer.py")
ROUNDS = 4
MAX_LINES = 2_000


class Ledger:
    """What the children reported, across rounds."""

    def __init__(self) -> None:
        self.stream_of: dict[int, str] = {}
        self.number_of: dict[int, int] = {}
        self.acked: set[int] = set()
        self.maybe_acked: set[int] = set()
        self.max_seq = 0
        self.max_number = 0

    def feed(self, line: str) -> None:
        kind, *fields = line.split()
        first, last = int(fields[0]), int(fields[1])
        if kind in "IA":
            assert first > self.max_seq, f"seq {first} reused or went backwards: {line!r}"
            self.max_seq = last
        if kind == "I":
            self.stream_of.update(dict.fromkeys(range(first, last + 1), "influx"))
        elif kind == "A":
            n_first, n_last = int(fields[2]), int(fields[3])
            assert n_first == self.max_number + 1, f"counter skipped or repeated: {line!r}"
            self.max_number = n_last
            for seq, number in zip(range(first, last + 1), range(n_first, n_last + 1), strict=True):
                self.stream_of[seq] = "alarms"
                self.number_of[seq] = number
        elif kind == "k":
            self.maybe_acked.update(
                s for s in range(first, last + 1) if self.stream_of.get(s) == "influx"
            )
        elif kind == "K":
            done = {s for s in range(first, last + 1) if self.stream_of.get(s) == "influx"}
            self.acked |= done
            self.maybe_acked -= done
        else:
            raise AssertionError(f"unexpected line {line!r}")


def _run_and_kill(path: Path, seed: int, stop_after: int, ledger: Ledger) -> None:
    with subprocess.Popen(
        [sys.executable, str(WRITER), str(path), str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        try:
            for _ in range(stop_after):
                line = proc.stdout.readline()
                if not line.endswith("\n"):
                    break
                ledger.feed(line)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            # Lines already in the pipe were printed after their call returned: acknowledged too.
            rest, err = proc.communicate(timeout=30)
        # A line cut by the kill (no newline yet) was never fully reported: not acknowledged.
        for line in rest.splitlines(keepends=True):
            if line.endswith("\n"):
                ledger.feed(line)
        assert proc.returncode == -signal.SIGKILL, f"writer ended by itself: {err}"


def _verify(path: Path, ledger: Ledger) -> None:
    with Outbox(path) as outbox:
        assert outbox.check() == []
        influx = {e.seq for e in outbox.peek("influx", 10**7, now=math.inf)}
        alarms = outbox.peek("alarms", 10**7, now=math.inf)
        reported_influx = {s for s, name in ledger.stream_of.items() if name == "influx"}
        must_be_there = reported_influx - ledger.acked - ledger.maybe_acked
        assert must_be_there <= influx, f"lost: {sorted(must_be_there - influx)[:10]}"
        assert not (ledger.acked & influx), "acked entries came back"
        # Alarm events are never acked here: every one drawn is stored, with its number,
        # and the counter stands exactly at the last stored number (committed atomically).
        numbers = [int(e.payload.split()[1]) for e in alarms]
        assert numbers == list(range(1, len(numbers) + 1))
        assert outbox.counter("alarm") == len(numbers)
        assert len(numbers) >= ledger.max_number
        for e in alarms:
            if e.seq in ledger.number_of:
                assert ledger.number_of[e.seq] == int(e.payload.split()[1])
        assert set(ledger.number_of) <= {e.seq for e in alarms}
        # A later round must go on above whatever the killed one committed but did not report.
        ledger.max_seq = max([ledger.max_seq, *influx, *(e.seq for e in alarms)])
        ledger.max_number = len(numbers)
        # Resolved: an ack in flight at the kill either committed (absent now) or not.
        ledger.acked |= ledger.maybe_acked - influx
        ledger.maybe_acked = set()


def test_kill_minus_9_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """Several SIGKILLs at random moments: acknowledged entries survive, seq and counter go on."""
    path = tmp_path / "outbox.db"
    rng = random.Random(20261126)
    ledger = Ledger()
    for round_ in range(ROUNDS):
        stop_after = rng.randint(5, 200)
        _run_and_kill(path, seed=round_, stop_after=stop_after, ledger=ledger)
        assert ledger.stream_of, "the writer reported nothing"
        _verify(path, ledger)


@pytest.mark.parametrize("stop_after", [1, 2])
def test_kill_right_after_first_commits(tmp_path: Path, stop_after: int) -> None:
    """Killing a fresh file's writer right after its first commits leaves a sound outbox."""
    path = tmp_path / "outbox.db"
    ledger = Ledger()
    _run_and_kill(path, seed=7, stop_after=stop_after, ledger=ledger)
    _verify(path, ledger)


def test_os_refusing_writes_loses_nothing_committed(tmp_path: Path) -> None:
    """A write the OS refuses (file-size cap: EFBIG, like a full device) is a clear error.

    The failing append is not stored, everything committed before it is intact.
    """
    path = tmp_path / "outbox.db"
    done = subprocess.run(
        [sys.executable, str(WRITER), str(path), "0", "--fsize", "300000"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = done.stdout.splitlines()
    assert lines[-1].startswith("E "), done.stdout[-500:] + done.stderr
    assert str(path) in lines[-1] and "append to 'influx'" in lines[-1]
    committed = []
    for line in lines[:-1]:
        _, first, last = line.split()
        committed += range(int(first), int(last) + 1)
    assert committed
    with Outbox(path) as outbox:
        assert outbox.check() == []
        assert [e.seq for e in outbox.peek("influx", 10**6, now=math.inf)] == committed
