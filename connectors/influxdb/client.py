"""The only module that talks HTTP to InfluxDB (and the only importer of ``influxdb_client``).

Two blocking clients with one method, :meth:`post`, that sends one body of
line protocol and classifies the answer:

* 2xx → :class:`PostResult` ``ok``;
* 400/422 (malformed points, field type conflicts) → :class:`PostResult` with
  ``rejected`` and the server's message: the caller dead-letters those lines;
* 401/403 (credentials), 404 (database/bucket not found) and other 4xx →
  :class:`~connectors.base.ConnectorError` ``retryable=False``;
* 429, 5xx, timeouts, refused or reset connections →
  :class:`~connectors.base.ConnectorError` ``retryable=True``.

The v2 client uses ``influxdb-client``'s synchronous write API (raw line
protocol bytes, gzip and precision set by the client). ``influxdb-client``
cannot reach 1.x's ``/write?db=``, so the v1 client is ``http.client`` from
the standard library. Both block: the sink runs them in a worker thread.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import urllib.parse
from dataclasses import dataclass

import urllib3
from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

from connectors.base import ConnectorError
from connectors.influxdb.lineprotocol import Precision

__all__ = ["PostResult", "V1Client", "V2Client", "classify"]

_MESSAGE_LIMIT = 2000
_PRECISION_V2 = {
    "ns": WritePrecision.NS,
    "us": WritePrecision.US,
    "ms": WritePrecision.MS,
    "s": WritePrecision.S,
}
_PRECISION_V1 = {"ns": "n", "us": "u", "ms": "ms", "s": "s"}


@dataclass(frozen=True, slots=True)
class PostResult:
    """The answer to one write request that the caller must act on: accepted or rejected."""

    status: int
    rejected: bool
    message: str = ""


def server_message(body: bytes | str | None) -> str:
    """The error text of an InfluxDB answer body (JSON ``message``/``error``, else the text)."""
    if body is None:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        text = str(data.get("message") or data.get("error") or text)
    return text.strip()[:_MESSAGE_LIMIT]


def classify(where: str, status: int, message: str) -> PostResult:
    """Turn an HTTP status into a :class:`PostResult` or raise :class:`ConnectorError`."""
    if 200 <= status < 300:
        return PostResult(status, rejected=False)
    detail = f"HTTP {status}: {message}" if message else f"HTTP {status}"
    if status in (400, 422):
        return PostResult(status, rejected=True, message=detail)
    if status == 429 or status >= 500:
        raise ConnectorError(where, detail, retryable=True)
    if status in (401, 403):
        raise ConnectorError(where, f"not authorized ({detail})", retryable=False)
    if status == 404:
        raise ConnectorError(where, f"not found ({detail})", retryable=False)
    raise ConnectorError(where, detail, retryable=False)


class V2Client:
    """Writes to ``/api/v2/write`` through ``influxdb-client`` (blocking)."""

    def __init__(
        self,
        *,
        where: str,
        url: str,
        org: str | None,
        bucket: str,
        token: str | None,
        precision: Precision,
        gzip_body: bool,
        timeout_s: float,
    ) -> None:
        self.where = where
        self._bucket = bucket
        self._org = org or ""
        self._precision = _PRECISION_V2[precision]
        self._client = InfluxDBClient(
            url=url,
            token=token or "",
            org=self._org,
            timeout=int(timeout_s * 1000),
            enable_gzip=gzip_body,
        )
        self._write = self._client.write_api(write_options=SYNCHRONOUS)

    def post(self, body: bytes) -> PostResult:
        """Send one body of line protocol; see the module docstring for the outcomes."""
        try:
            self._write.write(
                bucket=self._bucket, org=self._org, record=body, write_precision=self._precision
            )
        except ApiException as exc:
            if not exc.status:  # the client's own wrapper of TLS errors, no HTTP answer
                raise ConnectorError(self.where, f"{exc.reason}", retryable=False) from exc
            return classify(self.where, int(exc.status), server_message(exc.body))
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ConnectorError(self.where, _transport_text(exc), retryable=True) from exc
        return PostResult(204, rejected=False)

    def close(self) -> None:
        """Release the connection pool."""
        self._write.close()
        self._client.close()


class V1Client:
    """Writes to InfluxDB 1.x ``/write?db=`` with ``http.client`` (blocking, one connection per request)."""

    def __init__(
        self,
        *,
        where: str,
        url: str,
        database: str,
        retention_policy: str | None,
        username: str | None,
        password: str | None,
        precision: Precision,
        gzip_body: bool,
        timeout_s: float,
    ) -> None:
        self.where = where
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConnectorError(where, f"bad url {url!r}", retryable=False)
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        query = {"db": database, "precision": _PRECISION_V1[precision]}
        if retention_policy:
            query["rp"] = retention_policy
        self._path = f"{parts.path.rstrip('/')}/write?{urllib.parse.urlencode(query)}"
        self._headers = {"Content-Type": "text/plain; charset=utf-8"}
        if gzip_body:
            self._headers["Content-Encoding"] = "gzip"
        if username is not None:
            token = base64.b64encode(f"{username}:{password or ''}".encode()).decode("ascii")
            self._headers["Authorization"] = f"Basic {token}"
        self._gzip = gzip_body
        self._timeout = timeout_s

    def post(self, body: bytes) -> PostResult:
        """Send one body of line protocol; see the module docstring for the outcomes."""
        payload = gzip.compress(body, compresslevel=5) if self._gzip else body
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=self._timeout)
        try:
            conn.request("POST", self._path, body=payload, headers=self._headers)
            response = conn.getresponse()
            answer = response.read()
            status = response.status
        except (OSError, http.client.HTTPException) as exc:
            raise ConnectorError(self.where, _transport_text(exc), retryable=True) from exc
        finally:
            conn.close()
        return classify(self.where, status, server_message(answer))

    def close(self) -> None:
        """Nothing to release: each request opens and closes its own connection."""


def _transport_text(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:_MESSAGE_LIMIT]
