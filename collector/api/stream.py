"""Live push over Server-Sent Events: ``GET /api/v1/stream`` (operator role).

Events:

* ``point`` — one per judged batch, columnar: ``eval_us`` (when the gateway
  judged it, µs since the epoch) and per point ``path``, ``time_us``,
  ``statistic``, ``center``, ``lcl``, ``ucl``, ``zone``, ``violations``, ``limits_id``.
* ``alarm`` — every alarm event (the payload of ``contracts/alarms-mqtt.md``).
* ``state`` — every characteristic state message (the retained state topic's payload)
  plus its characteristic's ``path`` (null when it cannot be told).
* ``lag`` — ``{"dropped": n}``: this client was too slow and missed ``n`` events
  (refetch the state over REST).

Fan-out: each event is encoded once and put into every client's bounded
queue (``queue_size`` events). A full queue drops the event for that client
only and counts it; the gateway never waits for a client. A comment line
every ``keepalive_s`` keeps proxies from closing an idle stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from collector.alarms import Outcome
from collector.api.auth import AsOperator
from collector.api.recent import zones
from collector.pipeline import JudgedPoints

__all__ = ["CharStates", "StreamHub", "stream_router"]

_CLOSE = object()


def _floats(a: np.ndarray) -> list[float | None]:
    return [x if math.isfinite(x) else None for x in a.tolist()]


_STATES = ("in_control", "out_of_control", "no_data", "suspended")


class CharStates:
    """Each characteristic's alarm state (as last published) and the path of a state message."""

    def __init__(self, alarms: Any, paths: list[str]) -> None:
        self._alarms = alarms
        self.paths = list(paths)

    def state(self, i: int) -> tuple[str, str | None] | None:
        """``(state, reason)`` of characteristic ``i`` as last published, if known."""
        found = self._alarms.state_of(i)
        return found if found is not None and found[0] in _STATES else None


@dataclass(eq=False)
class Subscriber:
    """One SSE client: its bounded queue and what it missed."""

    queue: asyncio.Queue[Any]
    dropped: int = 0  # total for this client
    missed: int = 0  # since its last lag event
    closed: bool = field(default=False)


class StreamHub:
    """Fans gateway events out to SSE clients (listeners run in the event loop)."""

    def __init__(
        self,
        paths: list[str],
        queue_size: int = 256,
        keepalive_s: float = 15.0,
        states: CharStates | None = None,
    ) -> None:
        self.paths = np.array(paths, dtype=object)
        self.states = states
        self.queue_size = queue_size
        self.keepalive_s = keepalive_s
        self._subs: set[Subscriber] = set()
        self._ids = 0
        self.queued = 0
        self.dropped = 0
        self.closed = False

    @property
    def subscribers(self) -> int:
        """Clients connected now."""
        return len(self._subs)

    def subscribe(self) -> Subscriber:
        """A new client's subscription (call :meth:`unsubscribe` when it goes)."""
        sub = Subscriber(asyncio.Queue(self.queue_size))
        if self.closed:
            sub.closed = True
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        """Forget a client."""
        self._subs.discard(sub)

    def close(self) -> None:
        """End every stream (server shutdown); later subscribers end at once."""
        self.closed = True
        for sub in self._subs:
            sub.closed = True
            # a full queue: its reader sees ``closed`` after the next item
            with contextlib.suppress(asyncio.QueueFull):
                sub.queue.put_nowait(_CLOSE)

    def publish(self, event: str, data: Any) -> None:
        """Encode ``data`` once and queue it for every client (dropping for full queues)."""
        if not self._subs:
            return
        self._ids += 1
        text = (
            f"event: {event}\nid: {self._ids}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
        )
        for sub in self._subs:
            try:
                sub.queue.put_nowait(text)
                self.queued += 1
            except asyncio.QueueFull:
                sub.dropped += 1
                sub.missed += 1
                self.dropped += 1

    def on_points(self, judged: JudgedPoints) -> None:
        """A gateway point listener: one ``point`` event per judged batch."""
        if not self._subs or judged.n == 0:
            return
        n, pts = judged.n, judged.points
        chars = np.asarray(pts.char[:n], dtype=np.intp)
        self.publish(
            "point",
            {
                "eval_us": time.time_ns() // 1000,
                "path": self.paths[chars].tolist(),
                "time_us": np.asarray(judged.time_us[:n]).tolist(),
                "statistic": _floats(pts.statistic[:n]),
                "center": _floats(pts.center[:n]),
                "lcl": _floats(pts.lcl[:n]),
                "ucl": _floats(pts.ucl[:n]),
                "zone": zones(pts.statistic[:n], pts.center[:n], pts.sigma[:n]).tolist(),
                "violations": judged.violations,
                "limits_id": judged.limits_id,
            },
        )

    def on_alarm(self, outcome: Outcome) -> None:
        """A gateway alarm listener: ``alarm`` and ``state`` events (with the state's ``path``)."""
        if not self._subs:
            return
        for ev in outcome.events:
            self.publish("alarm", ev)
        for st in outcome.states:
            self.publish("state", st)  # a state message names its characteristic's path

    async def events(self, sub: Subscriber) -> AsyncIterator[str]:
        """The SSE text of one client until the hub closes (the caller unsubscribes)."""
        yield "retry: 2000\n: connected\n\n"
        while not sub.closed:
            try:
                item = await asyncio.wait_for(sub.queue.get(), self.keepalive_s)
            except TimeoutError:
                yield ": keepalive\n\n"
                continue
            if item is _CLOSE:
                return
            if sub.missed:
                missed, sub.missed = sub.missed, 0
                yield f"event: lag\ndata: {json.dumps({'dropped': missed})}\n\n"
            yield item


def stream_router() -> APIRouter:
    """``GET /stream`` (mount under ``/api/v1``)."""
    r = APIRouter(tags=["stream"])

    @r.get("/stream", response_class=StreamingResponse)
    async def stream(request: Request, p: AsOperator) -> StreamingResponse:
        """Server-Sent Events: ``point``, ``alarm``, ``state`` and ``lag`` (see the module docs)."""
        hub: StreamHub = request.app.state.api.stream

        async def body() -> AsyncIterator[str]:
            sub = hub.subscribe()
            try:
                async for chunk in hub.events(sub):
                    yield chunk
            finally:
                hub.unsubscribe(sub)

        return StreamingResponse(
            body(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return r
