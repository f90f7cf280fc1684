"""Prometheus metrics of one gateway (``/metrics``), in a registry of the app's own.

Counters and gauges are read from the gateway at scrape time
(:class:`GatewayCollector`); the alarm latency histogram (event time − sample
time of every raised alarm) is fed by :meth:`ApiMetrics.on_alarm`, registered
in ``gateway.alarm_listeners``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from collector.alarms import Outcome
from collector.timefmt import parse_rfc3339

__all__ = ["CONTENT_TYPE", "ApiMetrics", "GatewayCollector"]

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# counters some connectors' stats have beyond ConnectorStats (OPC UA: OpcuaStats)
_CONNECTOR_EXTRA = (
    "gaps",
    "backfilled",
    "backfill_failed",
    "backfill_truncated",
    "backfill_duplicates",
)
# GatewayStats fields that are current values, not totals
_GAUGES = {"queue_depth", "outbox_pending", "alarm_pending"}
CONNECTOR_STATES = ("starting", "connected", "disconnected", "failed", "stopped")
_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0)


def _connector_counters(keys: tuple[str, ...]) -> dict[str, CounterMetricFamily]:
    return {
        k: CounterMetricFamily(
            f"shopspc_connector_{k}", f"connector {k.replace('_', ' ')}", labels=["connector"]
        )
        for k in keys
    }


class GatewayCollector:
    """Reads ``gateway.stats``, connector stats, outbox and alarm counts at each scrape."""

    def __init__(self, gateway: Any, stream: Any = None) -> None:
        self.gateway = gateway
        self.stream = stream

    def describe(self) -> list[Metric]:
        """Nothing up front: metrics are read at collect time (no registration-time scrape)."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The metric families at this moment."""
        gw = self.gateway
        for key, value in gw.stats.as_dict().items():
            name = f"shopspc_pipeline_{key}"
            doc = f"gateway pipeline {key.replace('_', ' ')}"
            fam = GaugeMetricFamily(name, doc) if key in _GAUGES else CounterMetricFamily(name, doc)
            fam.add_metric([], float(value))
            yield fam
        state = GaugeMetricFamily(
            "shopspc_connector_state",
            "1 for each connector's current state",
            labels=["connector", "role", "state"],
        )
        totals = _connector_counters(("samples", "bad_samples", "errors", "reconnects"))
        # an OPC UA source's gaps and history backfill (connectors.opcua.source.OpcuaStats)
        extra = _connector_counters(_CONNECTOR_EXTRA)
        for role, conns in (("source", gw.sources), ("sink", gw.sinks)):
            for c in conns:
                current = str(c.stats.state)
                states = (
                    CONNECTOR_STATES
                    if current in CONNECTOR_STATES
                    else (*CONNECTOR_STATES, current)
                )
                for s in states:
                    state.add_metric([c.name, role, s], 1.0 if s == current else 0.0)
                for k, fam in totals.items():
                    fam.add_metric([c.name], float(getattr(c.stats, k, 0)))
                for k, fam in extra.items():
                    if hasattr(c.stats, k):
                        fam.add_metric([c.name], float(getattr(c.stats, k)))
        yield state
        yield from totals.values()
        yield from (fam for fam in extra.values() if fam.samples)
        try:
            counts = gw.outbox.counts()
        except Exception as exc:  # a scrape reports what it can
            log.warning("metrics: outbox counts unavailable: %s", exc)
        else:
            pending = GaugeMetricFamily(
                "shopspc_outbox_pending", "outbox entries not yet delivered", labels=["stream"]
            )
            pending_bytes = GaugeMetricFamily(
                "shopspc_outbox_pending_bytes", "payload bytes not yet delivered", labels=["stream"]
            )
            dead = GaugeMetricFamily(
                "shopspc_outbox_dead_letters", "dead-lettered entries kept", labels=["stream"]
            )
            for name, sc in counts.streams.items():
                pending.add_metric([name], float(sc.pending))
                pending_bytes.add_metric([name], float(sc.pending_bytes))
                dead.add_metric([name], float(sc.dead))
            size = GaugeMetricFamily("shopspc_outbox_file_bytes", "outbox database size on disk")
            size.add_metric([], float(counts.file_bytes))
            yield from (pending, pending_bytes, dead, size)
        try:
            alarm_counts = gw.alarms.counts()
        except Exception as exc:
            log.warning("metrics: alarm counts unavailable: %s", exc)
        else:
            fam = GaugeMetricFamily(
                "shopspc_alarms", "open alarms by status and alarm-state counts", labels=["kind"]
            )
            for k, v in alarm_counts.items():
                if k != "seq":
                    fam.add_metric([k], float(v))
            yield fam
        if self.stream is not None:
            subs = GaugeMetricFamily("shopspc_stream_subscribers", "live SSE clients")
            subs.add_metric([], float(self.stream.subscribers))
            sent = CounterMetricFamily("shopspc_stream_events", "SSE events queued to clients")
            sent.add_metric([], float(self.stream.queued))
            dropped = CounterMetricFamily(
                "shopspc_stream_dropped", "SSE events dropped for slow clients"
            )
            dropped.add_metric([], float(self.stream.dropped))
            yield from (subs, sent, dropped)


class ApiMetrics:
    """The app's registry: :class:`GatewayCollector` plus the alarm latency histogram."""

    def __init__(self, gateway: Any, stream: Any = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(GatewayCollector(gateway, stream))  # type: ignore[arg-type]
        self.alarm_latency = Histogram(
            "shopspc_alarm_latency_seconds",
            "raised alarms: event time minus the completing sample's source time",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )

    def on_alarm(self, outcome: Outcome) -> None:
        """Observe the latency of every raised alarm of an outcome (an alarm listener)."""
        for ev in outcome.events:
            if ev.get("event") != "raised":
                continue
            try:
                latency = parse_rfc3339(ev["event_time"]) - parse_rfc3339(ev["sample_time"])
            except (KeyError, ValueError, TypeError):
                continue
            self.alarm_latency.observe(max(latency, 0) / 1e6)

    def render(self) -> bytes:
        """The text exposition format of every metric."""
        return generate_latest(self.registry)
