"""Configuration of the InfluxDB sink: the v2 API (token, org, bucket) or the 1.x ``/write`` API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from connectors.influxdb.lineprotocol import Precision

__all__ = ["SINK_CONFIG", "InfluxSinkConfig"]

_V2_ONLY = ("org", "bucket", "token_env")
_V1_ONLY = ("database", "username", "password_env", "retention_policy")


class InfluxSinkConfig(BaseModel):
    """Where and how the InfluxDB sink writes line protocol.

    ``api: v2`` writes to ``/api/v2/write`` (InfluxDB 2.x/3.x and compatible
    servers) with ``org``, ``bucket`` and a token read from the environment
    variable ``token_env``. ``api: v1`` writes to ``/write?db=`` (InfluxDB 1.x)
    with ``database``, an optional retention policy and optional basic-auth
    credentials (password from ``password_env``). Secrets never live in the file.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    api: Literal["v2", "v1"] = Field(
        default="v2", description="Which write API: v2 (/api/v2/write) or v1 (/write?db=)."
    )
    url: str = Field(
        description="Base URL of the server, e.g. http://127.0.0.1:8086 (http or https).",
        pattern=r"^https?://[^\s]+$",
    )
    # v2
    org: str | None = Field(default=None, description="v2: organization name.")
    bucket: str | None = Field(default=None, description="v2: bucket name (required for v2).")
    token_env: str | None = Field(
        default=None,
        description="v2: environment variable holding the API token (none: no token is sent).",
    )
    # v1
    database: str | None = Field(default=None, description="v1: database (required for v1).")
    retention_policy: str | None = Field(
        default=None, description="v1: retention policy (none: the database's default)."
    )
    username: str | None = Field(default=None, description="v1: user for basic auth (optional).")
    password_env: str | None = Field(
        default=None, description="v1: environment variable holding the user's password."
    )
    # both
    precision: Precision = Field(
        default="us",
        description="Timestamp precision written: ns, us, ms or s (coarser = smaller payloads; "
        "two points of one series within one tick overwrite each other).",
    )
    batch_size: int = Field(
        default=5000, ge=1, le=100_000, description="Lines per HTTP request at most."
    )
    gzip: bool = Field(default=True, description="Compress request bodies with gzip.")
    timeout_s: float = Field(
        default=10.0, gt=0, le=300, description="Timeout of one HTTP request in seconds."
    )
    max_isolation_requests: int = Field(
        default=64,
        ge=0,
        le=10_000,
        description="When the server rejects a batch as malformed, up to this many extra "
        "requests per write split it to find the bad lines; the rest is rejected as a whole.",
    )

    @model_validator(mode="after")
    def _api_fields(self) -> InfluxSinkConfig:
        if self.api == "v2":
            if not self.bucket:
                raise ValueError("api v2 needs 'bucket'")
            wrong = [k for k in _V1_ONLY if getattr(self, k) is not None]
        else:
            if not self.database:
                raise ValueError("api v1 needs 'database'")
            if self.password_env is not None and self.username is None:
                raise ValueError("'password_env' needs 'username'")
            wrong = [k for k in _V2_ONLY if getattr(self, k) is not None]
        if wrong:
            raise ValueError(f"{', '.join(wrong)} do not apply to api {self.api}")
        return self


SINK_CONFIG = InfluxSinkConfig
"""The model the gateway config loader validates a ``kind: influxdb`` sink section with."""
