"""The gateway's HTTP API: REST under ``/api/v1``, sign-in and roles, SSE, Prometheus metrics."""
