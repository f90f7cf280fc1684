"""The InfluxDB sink: writes batches of line protocol, chunked, and tells what the server rejected.

The caller (the durable outbox) encodes points with
:mod:`connectors.influxdb.lineprotocol` in :attr:`InfluxSink.precision` and
calls :meth:`InfluxSink.write`. The sink never retries by itself:

* a line the server rejects as malformed (HTTP 400/422) is returned in
  :attr:`WriteResult.rejected` with the server's message, for the dead-letter
  store; the rest of its request is still written (a rejected request is split
  in halves until the bad lines are found, within ``max_isolation_requests``);
* a retryable failure (timeout, refused, 429, 5xx) raises
  :class:`~connectors.base.ConnectorError` ``retryable=True``: the caller keeps
  the whole batch and retries it with backoff. Chunks written before the
  failure are written again then, which is harmless: the same line has the
  same series key and timestamp and overwrites itself;
* credentials, missing database/bucket or missing secrets raise
  ``retryable=False``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from connectors.base import ConnectorError, ConnectorStats, register_sink
from connectors.influxdb.client import PostResult, V1Client, V2Client
from connectors.influxdb.config import InfluxSinkConfig
from connectors.influxdb.lineprotocol import Precision

__all__ = ["InfluxSink", "InfluxSinkStats", "RejectedLines", "WriteResult"]

log = logging.getLogger(__name__)


@dataclass
class InfluxSinkStats(ConnectorStats):
    """Sink counters: ``samples``/``lines_written`` lines accepted, ``bad_samples``/``lines_rejected``
    lines rejected as malformed, ``requests`` HTTP requests sent."""

    lines_written: int = 0
    lines_rejected: int = 0
    requests: int = 0


@dataclass(frozen=True, slots=True)
class RejectedLines:
    """Lines the server refused as malformed (HTTP 400/422), with its message: dead-letter them.

    ``indices`` are the lines' positions in the batch given to :meth:`InfluxSink.write`
    (to find their outbox entries), ``lines`` their text.
    """

    indices: tuple[int, ...]
    lines: tuple[str, ...]
    status: int
    message: str


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What one :meth:`InfluxSink.write` did: lines accepted and lines rejected (never retried)."""

    accepted: int
    rejected: tuple[RejectedLines, ...] = ()
    requests: int = 0

    @property
    def rejected_count(self) -> int:
        """How many lines were rejected."""
        return sum(len(r.lines) for r in self.rejected)


@register_sink("influxdb")
class InfluxSink:
    """Writes line protocol to InfluxDB (v2 API or 1.x ``/write``) in chunks of ``batch_size`` lines.

    ``environ`` is where secrets are looked up (default ``os.environ``).
    """

    def __init__(
        self,
        config: InfluxSinkConfig,
        name: str = "influxdb",
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.name = name
        self.stats = InfluxSinkStats()
        self._environ = os.environ if environ is None else environ
        self._client: V1Client | V2Client | None = None
        self._lock = asyncio.Lock()
        self._inflight: asyncio.Future[PostResult] | None = None
        self._closed = False
        self._where = f"influxdb {name} {config.url}"

    @property
    def precision(self) -> Precision:
        """The timestamp precision lines must be encoded in."""
        return self.config.precision

    def _secret(self, variable: str | None) -> str | None:
        if variable is None:
            return None
        value = self._environ.get(variable)
        if value is None:
            raise ConnectorError(
                self._where, f"environment variable {variable} is not set", retryable=False
            )
        return value

    def _open(self) -> V1Client | V2Client:
        c = self.config
        if c.api == "v2":
            assert c.bucket is not None
            return V2Client(
                where=self._where,
                url=c.url,
                org=c.org,
                bucket=c.bucket,
                token=self._secret(c.token_env),
                precision=c.precision,
                gzip_body=c.gzip,
                timeout_s=c.timeout_s,
            )
        assert c.database is not None
        return V1Client(
            where=self._where,
            url=c.url,
            database=c.database,
            retention_policy=c.retention_policy,
            username=c.username,
            password=self._secret(c.password_env),
            precision=c.precision,
            gzip_body=c.gzip,
            timeout_s=c.timeout_s,
        )

    async def write(self, batch: Sequence[str | bytes]) -> WriteResult:
        """Write lines (one line of line protocol per item) in requests of ``batch_size`` items.

        An item holding several lines joined by ``\\n`` is kept or rejected as a whole.

        Returns the accepted count and the rejected lines with the server's
        message; raises :class:`ConnectorError` (``retryable`` or not) otherwise.
        """
        if self._closed:
            raise ConnectorError(self._where, "sink is closed", retryable=False)
        lines = [b if isinstance(b, bytes) else b.encode("utf-8") for b in batch]
        async with self._lock:
            try:
                if self._client is None:
                    self._client = self._open()
                result = await self._write_chunks(self._client, lines)
            except ConnectorError as exc:
                self._failed(exc)
                raise
        self._succeeded(result)
        return result

    async def _write_chunks(self, client: V1Client | V2Client, lines: list[bytes]) -> WriteResult:
        size = self.config.batch_size
        budget = self.config.max_isolation_requests
        accepted = 0
        requests = 0
        rejected: list[RejectedLines] = []
        for start in range(0, len(lines), size):
            # a stack of pending (first index, end index) slices, in order:
            # a rejected slice is split in halves until the bad lines are found
            pending = [(start, min(start + size, len(lines)))]
            while pending:
                lo, hi = pending.pop()
                outcome = await self._post(client, b"\n".join(lines[lo:hi]))
                requests += 1
                if not outcome.rejected:
                    accepted += hi - lo
                elif hi - lo == 1 or budget < 2:
                    rejected.append(
                        RejectedLines(
                            tuple(range(lo, hi)),
                            tuple(x.decode("utf-8", "replace") for x in lines[lo:hi]),
                            outcome.status,
                            outcome.message,
                        )
                    )
                else:
                    budget -= 2
                    mid = (lo + hi) // 2
                    pending.extend(((mid, hi), (lo, mid)))
        return WriteResult(accepted, tuple(rejected), requests)

    async def _post(self, client: V1Client | V2Client, body: bytes) -> PostResult:
        self.stats.requests += 1
        # shielded: a cancelled write leaves the request to finish, close() waits for it
        self._inflight = asyncio.ensure_future(asyncio.to_thread(client.post, body))
        try:
            return await asyncio.shield(self._inflight)
        finally:
            if self._inflight.done():
                self._inflight = None

    def _failed(self, exc: ConnectorError) -> None:
        self.stats.errors += 1
        self.stats.last_error = str(exc)
        if exc.retryable:
            if self.stats.state != "disconnected":
                log.warning("%s: lost the server: %s", self._where, exc.message)
            self.stats.state = "disconnected"
        else:
            if self.stats.state != "failed":
                log.error("%s: %s", self._where, exc.message)
            self.stats.state = "failed"

    def _succeeded(self, result: WriteResult) -> None:
        if self.stats.state in ("disconnected", "failed"):
            log.info("%s: server reachable again", self._where)
        self.stats.state = "connected"
        n_rejected = result.rejected_count
        self.stats.lines_written += result.accepted
        self.stats.samples += result.accepted
        self.stats.lines_rejected += n_rejected
        self.stats.bad_samples += n_rejected
        for r in result.rejected:
            log.warning("%s: server rejected %d line(s): %s", self._where, len(r.lines), r.message)

    async def close(self) -> None:
        """Wait for a request still in flight, then release the client. Idempotent."""
        self._closed = True
        if self._inflight is not None:
            with contextlib.suppress(Exception):
                await self._inflight
            self._inflight = None
        if self._client is not None:
            client, self._client = self._client, None
            client.close()
        self.stats.state = "stopped"
