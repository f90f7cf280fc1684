"""The one module that imports httpx: POST signed JSON alarm events to a webhook.

Errors are translated into :class:`ConnectorError`: connect errors, timeouts,
broken connections, 5xx, 408 and 429 are retryable; any other non-2xx answer
(400, 401, 403, 404, 410, 422, a redirect that is not followed …) is a
permanent refusal, with the status and the first 200 characters of the body.

Signature (when a secret is configured): ``X-Shopspc-Timestamp`` is the Unix
time in seconds and ``X-Shopspc-Signature`` is ``sha256=`` + the hex HMAC-SHA256
of ``f"{timestamp}.".encode() + body`` under the secret. Receivers check it
with :func:`verify_signature` (or the same few lines in their language) and
reject stale timestamps to stop replays.
"""

from __future__ import annotations

import hashlib
import hmac
import ssl
import time

import httpx

from connectors.base import ConnectorError
from connectors.webhook.config import WebhookConfig

__all__ = ["WebhookClient", "sign", "verify_signature"]

_RETRYABLE_STATUS = {408, 429}


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``X-Shopspc-Signature`` value: ``sha256=<hex HMAC-SHA256(secret, "{timestamp}." + body)>``."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    secret: bytes | str,
    timestamp: str | int,
    body: bytes,
    header: str,
    tolerance_s: float = 300.0,
    *,
    now: float | None = None,
) -> bool:
    """For receivers: True when ``header`` signs ``body`` at ``timestamp`` and the time is fresh.

    ``timestamp`` is the ``X-Shopspc-Timestamp`` header, ``header`` the
    ``X-Shopspc-Signature`` header, ``body`` the raw request body (bytes, before
    any JSON parsing). A timestamp more than ``tolerance_s`` away from ``now``
    (default: the current time) is rejected, so a captured request cannot be
    replayed later. The comparison is constant-time.
    """
    key = secret.encode() if isinstance(secret, str) else secret
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    t = time.time() if now is None else now
    if abs(t - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(key, ts, body), header)


class WebhookClient:
    """One HTTP client (connection pool) posting to the configured URL.

    ``secret`` is the signing secret itself (the notifier reads it from the
    environment); None sends unsigned requests.
    """

    def __init__(self, cfg: WebhookConfig, secret: bytes | None = None) -> None:
        self.cfg = cfg
        self.where = f"webhook {cfg.url}"
        self._secret = secret
        verify: ssl.SSLContext | bool = cfg.verify_tls
        if cfg.ca_file is not None and cfg.verify_tls:
            try:
                verify = ssl.create_default_context(cafile=str(cfg.ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise ConnectorError(self.where, f"TLS setup: {exc}", retryable=False) from exc
        self._client = httpx.AsyncClient(
            timeout=cfg.timeout_s, verify=verify, headers=cfg.headers, follow_redirects=False
        )

    async def post(self, body: bytes, *, event_id: str, now: float | None = None) -> int:
        """POST ``body`` (JSON) with the signature headers; returns the 2xx status.

        Raises :class:`ConnectorError`, retryable or not (see the module docstring).
        """
        ts = int(time.time() if now is None else now)
        headers = {
            "Content-Type": "application/json",
            "X-Shopspc-Timestamp": str(ts),
            "X-Shopspc-Event-Id": event_id,
        }
        if self._secret is not None:
            headers["X-Shopspc-Signature"] = sign(self._secret, ts, body)
        try:
            resp = await self._client.post(self.cfg.url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise ConnectorError(self.where, f"timeout: {exc!r}", retryable=True) from exc
        except httpx.TransportError as exc:  # refused, reset, DNS, TLS handshake, protocol
            raise ConnectorError(
                self.where, f"{type(exc).__name__}: {exc}", retryable=True
            ) from exc
        status = resp.status_code
        if 200 <= status < 300:
            return status
        text = resp.text[:200]
        retryable = status >= 500 or status in _RETRYABLE_STATUS
        raise ConnectorError(self.where, f"HTTP {status}: {text}", retryable=retryable)

    async def close(self) -> None:
        """Close the connection pool (idempotent)."""
        await self._client.aclose()
