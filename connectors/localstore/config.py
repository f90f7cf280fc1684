"""Configuration of the embedded series store: one SQLite file, a retention and a size bound."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["SINK_CONFIG", "LocalStoreConfig"]


class LocalStoreConfig(BaseModel):
    """Where the embedded store keeps series, for how long and how big it may grow.

    The store is one SQLite file (WAL mode) that ``shopspc series query`` and
    ``shopspc series export`` read, also while the gateway is writing.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(
        default="series.sqlite",
        min_length=1,
        description="The SQLite file (created with its directory if missing; a relative path "
        "is relative to the service's working directory).",
    )
    retention_days: float | None = Field(
        default=90.0,
        gt=0,
        le=36_500,
        description="Points older than this many days are deleted by prune (null: keep forever).",
    )
    max_size_mb: float = Field(
        default=1024.0,
        ge=1,
        le=1_000_000,
        description="The file may not grow beyond this many MiB; a write that would is refused "
        "(retryable: prune frees space for new points).",
    )
    when_full: Literal["refuse", "drop_oldest"] = Field(
        default="refuse",
        description="refuse: a write that does not fit fails (retryable) until prune makes room; "
        "drop_oldest: the oldest tenth of the stored time span is deleted (repeatedly, up to "
        "8 times) to fit it, so the store keeps the newest points.",
    )
    prune_interval_s: float = Field(
        default=3600.0,
        gt=0,
        le=7 * 86400,
        description="The sink prunes by itself at most this often, before a write.",
    )
    precision: Literal["ns", "us", "ms", "s"] = Field(
        default="us",
        description="Timestamp precision of the line protocol handed to the sink "
        "(the same as the InfluxDB sink's when both get the same batches).",
    )
    synchronous: Literal["full", "normal"] = Field(
        default="full",
        description="full: every write is on disk when it returns (safe to drop it from the "
        "outbox); normal: faster, the last writes may be lost on power loss.",
    )


SINK_CONFIG = LocalStoreConfig
"""The model the gateway config loader validates a ``kind: localstore`` sink section with."""
