"""Serve the API with uvicorn inside the caller's event loop (no thread, no signal handlers).

``shopspc run`` starts :func:`serve` as one more task of its ``TaskGroup`` and
sets ``stop`` on SIGTERM/SIGINT: live SSE streams end, open requests get
``graceful_s`` to finish, then the listener closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Generator
from typing import Any

import uvicorn

__all__ = ["serve"]

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handlers: the gateway owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def serve(
    app: Any,
    host: str,
    port: int,
    stop: asyncio.Event,
    *,
    graceful_s: float = 5.0,
    started: asyncio.Event | None = None,
    log_level: str = "warning",
) -> None:
    """Run ``app`` on ``host:port`` until ``stop`` is set, in the running event loop.

    ``started`` is set once the socket listens. Raises ``OSError`` when the
    address cannot be bound (uvicorn itself would exit the process).
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=graceful_s,
        server_header=False,
        proxy_headers=False,
    )
    server = _Server(config)

    async def watch() -> None:
        while not server.started and not server.should_exit:
            if stop.is_set():
                break
            await asyncio.sleep(0.02)
        if server.started:
            log.info("HTTP API listening on %s:%d", host, port)
            if started is not None:
                started.set()
        await stop.wait()
        api = getattr(getattr(app, "state", None), "api", None)
        if api is not None:
            api.stream.close()  # SSE streams never end by themselves
        server.should_exit = True

    watcher = asyncio.create_task(watch())
    try:
        await server.serve()
    except SystemExit:
        # uvicorn exits the process when it cannot bind; here it is the caller's error
        raise OSError(f"HTTP API cannot listen on {host}:{port} (see the log above)") from None
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    log.info("HTTP API on %s:%d stopped", host, port)
