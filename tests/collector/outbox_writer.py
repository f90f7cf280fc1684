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
"""

from __future__ import annotations

import random
import sys

from collector.outbox import Outbox, StreamPolicy


def main() -> None:
    """Write until killed (or 20 000 loops)."""
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
