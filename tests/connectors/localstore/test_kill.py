"""``kill -9`` while the sink writes: every batch whose write returned is in the file, no batch is
there in part, and the file opens and takes writes again (a few rounds on one file)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

from connectors.localstore import SeriesStore

WRITER = Path(__file__).with_name("store_writer.py")
ROOT = Path(__file__).resolve().parents[3]
BATCH = 500
ROUNDS = 3


def test_killed_writer_loses_nothing_acknowledged_and_no_half_batch(tmp_path: Path) -> None:
    path = tmp_path / "series.sqlite"
    rng = random.Random(7)
    acknowledged: set[int] = set()
    first = 0
    for _ in range(ROUNDS):
        child = subprocess.Popen(
            [sys.executable, str(WRITER), str(path), str(first)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        assert child.stdout is not None
        try:
            stop_after = rng.randint(2, 12)
            for _ in range(stop_after):  # bounded: the child prints one line per batch
                line = child.stdout.readline()
                if not line:
                    break
                acknowledged.add(int(line))
            child.send_signal(signal.SIGKILL)
            rest, _ = child.communicate(timeout=30)
            acknowledged.update(int(x) for x in rest.split())
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=30)
            child.stdout.close()
        with SeriesStore(path) as store:
            rows = store.query("spc", limit=None)
            batches: dict[int, int] = {}
            for r in rows:
                b = int(r.fields["statistic"])
                batches[b] = batches.get(b, 0) + 1
            assert acknowledged <= set(batches)
            assert all(n == BATCH for n in batches.values()), "a batch is stored in part"
            first = max(batches) + 1
    assert len(acknowledged) >= ROUNDS * 2
