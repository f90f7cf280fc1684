"""Configuration of the alarm webhook: where alarm events are POSTed and how they are signed."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["WebhookConfig"]

# Set by the client on every request; a configured header may not override them.
RESERVED_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "host",
        "x-shopspc-timestamp",
        "x-shopspc-signature",
        "x-shopspc-event-id",
    }
)


class WebhookConfig(BaseModel):
    """One HTTP endpoint that receives every alarm event as a JSON POST, in order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(..., description="endpoint URL, http:// or https://")
    secret_env: str | None = Field(
        None,
        description="name of the environment variable holding the HMAC-SHA256 signing secret; "
        "absent: requests are not signed",
    )
    timeout_s: float = Field(10.0, gt=0, description="connect, write and read timeout per request")
    headers: dict[str, str] = Field(
        default_factory=dict, description="extra request headers (e.g. a static API key name)"
    )
    verify_tls: bool = Field(True, description="verify the server certificate (https)")
    ca_file: Path | None = Field(
        None, description="PEM file of CA certificates to trust (absent: the system store)"
    )
    batch_size: int = Field(100, ge=1, description="outbox entries read per round")
    stop_drain_s: float = Field(
        5.0, ge=0, description="on stop, how long pending events may still be posted"
    )
    retry_base_s: float = Field(0.5, gt=0, description="first retry delay ceiling")
    retry_cap_s: float = Field(60.0, gt=0, description="largest retry delay")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        scheme, sep, rest = v.partition("://")
        if not sep or scheme.lower() not in ("http", "https") or not rest or rest.startswith("/"):
            raise ValueError(f"{v!r}: an http:// or https:// URL with a host is required")
        return v

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        clash = sorted(k for k in v if k.lower() in RESERVED_HEADERS)
        if clash:
            raise ValueError(f"headers set by the notifier itself: {', '.join(clash)}")
        return v
