"""Child process for the ``kill -9`` test: writes to an outbox in a loop and reports each commit.

Usage: ``python outbox_writer.py PATH SEED``. Each loop appends a batch of
series payloads to stream ``influx`` (``synchronous=NORMAL``), a few numbered
alarm events to stream ``alarms`` (``FULL``, counter ``alarm``), and now and
then acks the oldest influx entries. Lines on stdout, flushed, written only
after the call returned (that is, after the outbox acknowledged it):

* ``I first last`` — influx seqs first..last are committed;
* ``A first last n_first n_last`` — alarm seqs and their counter numbers;
* ``k first last`` — about to ack influx first..last (outcome unknown if killed now);
* ``K first last`` — that ack committed.

The loop is bounded so a child the test failed to kill still ends.

``python outbox_writer.py PATH SEED --fsize BYTES`` instead caps the size of
files this process may write (``RLIMIT_FSIZE``, so the OS refuses the write as
on a full device), appends until the outbox raises, prints the ``I`` lines and
then ``E <error text>``, and exits 0.
"""

from __future__ import annotations

import random
import resource
import signal
import sys

from collector.outbox import Outbox, OutboxError, StreamPolicy


def fill_until_refused(path: str, limit: int) -> None:
    """Append under a file-size cap until the outbox refuses; report the error."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of dying
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    with Outbox(path) as outbox:
        try:
            for _ in range(20_000):
                seqs = outbox.append("influx", [b"x" * 1000] * 20)
                sys.stdout.write(f"I {seqs[0]} {seqs[-1]}\n")
        except OutboxError as e:
            sys.stdout.write(f"E {e}\n")


def main() -> None:
    """Write until killed (or 20 000 loops)."""
    if len(sys.argv) == 5 and sys.argv[3] == "--fsize":
        fill_until_refused(sys.argv[1], int(sys.argv[4]))
        return
    path, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    out = sys.stdout
    with Outbox(path, streams={"influx": StreamPolicy(synchronous="NORMAL")}) as outbox:
        for i in range(20_000):
            size = rng.randint(1, 400)
            seqs = outbox.append("influx", [b"measurement value=%d" % j for j in range(size)])
            out.write(f"I {seqs[0]} {seqs[-1]}\n")
            out.flush()
            count = rng.randint(1, 4)
            res = outbox.append_numbered(
                "alarms", "alarm", count, lambda numbers: [b"alarm %d" % n for n in numbers]
            )
            out.write(f"A {res.seqs[0]} {res.seqs[-1]} {res.numbers[0]} {res.numbers[-1]}\n")
            out.flush()
            if i % 3 == 2:
                head = outbox.peek("influx", rng.randint(1, 300), now=float("inf"))
                if head:
                    out.write(f"k {head[0].seq} {head[-1].seq}\n")
                    out.flush()
                    outbox.ack("influx", [e.seq for e in head])
                    out.write(f"K {head[0].seq} {head[-1].seq}\n")
                    out.flush()


if __name__ == "__main__":
    main()
