"""Child process for test_kill.py: writes batches of 500 spc lines through the sink, printing each
batch number after ``write`` returned, until killed (bounded to 400 batches)."""

from __future__ import annotations

import asyncio
import sys

from connectors.influxdb.lineprotocol import spc_line
from connectors.localstore import LocalStoreConfig, LocalStoreSink

BATCH = 500


async def main(path: str, first: int) -> None:
    sink = LocalStoreSink(LocalStoreConfig(path=path, retention_days=None))
    try:
        for b in range(first, first + 400):
            lines = [
                spc_line(
                    gateway="gw",
                    line="L1",
                    station="S1",
                    characteristic=f"c{i % 5}",
                    chart="imr",
                    time_us=b * BATCH + i,
                    statistic=float(b),
                )
                for i in range(BATCH)
            ]
            await sink.write([x for x in lines if x is not None])
            sys.stdout.write(f"{b}\n")
            sys.stdout.flush()
    finally:
        await sink.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
