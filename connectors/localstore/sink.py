"""The embedded store sink: the same line-protocol batches as the InfluxDB sink, into a SQLite file.

The caller (the durable outbox) hands it the lines it hands the InfluxDB sink
and gets the same :class:`~connectors.influxdb.sink.WriteResult` back:

* an item that is not valid line protocol is returned in
  :attr:`WriteResult.rejected` (status 400, as InfluxDB would answer, with the
  parser's message and column) for the dead-letter store; the rest is written;
* a full store (``max_size_mb``) or a busy/failing disk raises
  :class:`~connectors.base.ConnectorError` ``retryable=True``: nothing of the
  batch was written, the caller keeps it and retries with backoff. With
  ``when_full: drop_oldest`` the oldest points are deleted instead until the
  batch fits (a tenth of the stored time span at a time, at most 8 times);
* a file that cannot be opened or is not a store raises ``retryable=False``.

Points older than ``retention_days`` are pruned before a write at most every
``prune_interval_s`` (and whenever the caller calls :meth:`LocalStoreSink.prune`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from connectors.base import ConnectorError, ConnectorStats, register_sink
from connectors.influxdb.lineprotocol import Precision
from connectors.influxdb.sink import RejectedLines, WriteResult
from connectors.localstore.config import LocalStoreConfig
from connectors.localstore.store import (
    LinesWritten,
    PruneResult,
    SeriesStore,
    StoreFullError,
    iso_us,
    parse_batch,
)

__all__ = ["LocalStoreSink", "LocalStoreSinkStats"]

log = logging.getLogger(__name__)

_MALFORMED = 400
_MAX_DROPS = 8


@dataclass
class LocalStoreSinkStats(ConnectorStats):
    """Sink counters: ``samples``/``lines_written`` items stored, ``bad_samples``/``lines_rejected``
    items refused as malformed, ``transactions`` batches committed, ``points_pruned`` by
    retention, ``points_dropped`` to make room (``when_full: drop_oldest``)."""

    lines_written: int = 0
    lines_rejected: int = 0
    transactions: int = 0
    points_pruned: int = 0
    points_dropped: int = 0


@register_sink("localstore")
class LocalStoreSink:
    """Writes line protocol into the embedded SQLite series store.

    ``clock`` returns seconds since the epoch (injectable for tests); it
    decides when to prune and what is old.
    """

    def __init__(
        self,
        config: LocalStoreConfig,
        name: str = "localstore",
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.name = name
        self.stats = LocalStoreSinkStats()
        self._clock = clock
        self._store: SeriesStore | None = None
        self._lock = asyncio.Lock()
        self._inflight: asyncio.Future[object] | None = None
        self._closed = False
        self._last_prune: float | None = None
        self._where = f"localstore {name} {config.path}"

    @property
    def precision(self) -> Precision:
        """The timestamp precision lines must be encoded in."""
        return self.config.precision

    def _open(self) -> SeriesStore:
        c = self.config
        return SeriesStore(
            c.path,
            retention_days=c.retention_days,
            max_size_bytes=int(c.max_size_mb * 1024 * 1024),
            synchronous=c.synchronous,
        )

    async def _run(self, fn: Callable[[], object]) -> object:
        # shielded: a cancelled write leaves its transaction to finish, close() waits for it
        self._inflight = asyncio.ensure_future(asyncio.to_thread(fn))
        try:
            return await asyncio.shield(self._inflight)
        finally:
            if self._inflight.done():
                self._inflight = None

    def _write_sync(self, batch: Sequence[str | bytes]) -> tuple[LinesWritten, PruneResult | None]:
        if self._store is None:
            self._store = self._open()
        store = self._store
        pruned = None
        now = self._clock()
        if self._last_prune is None or now - self._last_prune >= self.config.prune_interval_s:
            pruned = store.prune(int(now * 1_000_000))
            self._last_prune = now
        parsed = parse_batch(batch, self.config.precision)
        for attempt in range(_MAX_DROPS + 1):
            try:
                if parsed.points:
                    store.write(parsed.points)
                break
            except StoreFullError:
                if self.config.when_full != "drop_oldest" or attempt == _MAX_DROPS:
                    raise
                dropped = store.drop_oldest(0.1)
                if not dropped.points:
                    raise
                self.stats.points_dropped += dropped.points
                log.warning(
                    "%s: full: dropped the %d oldest point(s) (before %s) to make room",
                    self._where,
                    dropped.points,
                    iso_us(dropped.cutoff_us or 0),
                )
        return LinesWritten(parsed.accepted, len(parsed.points), parsed.errors), pruned

    async def write(self, batch: Sequence[str | bytes]) -> WriteResult:
        """Store lines (one item per entry; an item may hold several lines) in one transaction.

        Returns the accepted count and the items refused as malformed; raises
        :class:`ConnectorError` (``retryable`` or not) otherwise.
        """
        if self._closed:
            raise ConnectorError(self._where, "sink is closed", retryable=False)
        async with self._lock:
            try:
                written, pruned = await self._run(lambda: self._write_sync(batch))  # type: ignore[misc]
            except ConnectorError as exc:
                self._failed(exc)
                raise
        if pruned is not None:
            self._pruned(pruned)
        rejected = tuple(
            RejectedLines((e.index,), (e.line,), _MALFORMED, e.message) for e in written.errors
        )
        result = WriteResult(written.accepted, rejected, 1)
        self._succeeded(result)
        return result

    async def prune(self, now_us: int | None = None) -> PruneResult:
        """Delete points older than ``retention_days`` (before ``now_us``, default the clock)."""
        if self._closed:
            raise ConnectorError(self._where, "sink is closed", retryable=False)
        at_us = int(self._clock() * 1_000_000) if now_us is None else int(now_us)

        def run() -> PruneResult:
            if self._store is None:
                self._store = self._open()
            result = self._store.prune(at_us)
            self._last_prune = self._clock()
            return result

        async with self._lock:
            try:
                result = await self._run(run)
            except ConnectorError as exc:
                self._failed(exc)
                raise
        assert isinstance(result, PruneResult)
        self._pruned(result)
        return result

    def _pruned(self, result: PruneResult) -> None:
        self.stats.points_pruned += result.points
        if result.points:
            log.info(
                "%s: pruned %d point(s), %d series older than %s days",
                self._where,
                result.points,
                result.series,
                self.config.retention_days,
            )

    def _failed(self, exc: ConnectorError) -> None:
        self.stats.errors += 1
        self.stats.last_error = str(exc)
        state = "disconnected" if exc.retryable else "failed"
        if self.stats.state != state:
            log.log(
                logging.WARNING if exc.retryable else logging.ERROR,
                "%s: %s",
                self._where,
                exc.message,
            )
        self.stats.state = state

    def _succeeded(self, result: WriteResult) -> None:
        if self.stats.state in ("disconnected", "failed"):
            log.info("%s: writing again", self._where)
        self.stats.state = "connected"
        n_rejected = result.rejected_count
        self.stats.transactions += 1
        self.stats.lines_written += result.accepted
        self.stats.samples += result.accepted
        self.stats.lines_rejected += n_rejected
        self.stats.bad_samples += n_rejected
        for r in result.rejected:
            log.warning("%s: refused malformed line %d: %s", self._where, r.indices[0], r.message)

    async def close(self) -> None:
        """Wait for a transaction still in flight, then close the file. Idempotent."""
        self._closed = True
        if self._inflight is not None:
            with contextlib.suppress(Exception):
                await self._inflight
            self._inflight = None
        if self._store is not None:
            store, self._store = self._store, None
            store.close()
        self.stats.state = "stopped"
