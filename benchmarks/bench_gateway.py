"""End-to-end gateway benchmark on loopback: mosquitto → Gateway → VictoriaMetrics.

A Debian mosquitto and a VictoriaMetrics (its InfluxDB v2 write endpoint) run
on free 127.0.0.1 ports in a temp dir. Per scenario a :class:`Gateway` runs in
this process (one MQTT source, one ``influxdb`` v2 sink, K I-MR characteristics
with known limits, so no Phase I, and all Nelson rules) while
:mod:`benchmarks.producer`, a separate process, publishes N QoS 1 messages as
fast as the broker acknowledges them (at most ``window`` in flight):

* ``single``: one value per message (target ≥ 10 000 msg/s);
* ``batch``: ``per_message`` values per message (target ≥ 100 000 points/s).

The sustained rate is values accepted by the gateway divided by the time from
the first publish to the moment every line the gateway appended had been
written to VictoriaMetrics (gateway stats polled every 5 ms). Zero loss is then
checked by counting back from VictoriaMetrics' export API: ``measurement_value``
samples (one per value) and ``spc_statistic`` samples (one per I-MR point) per characteristic, against what was published. CPU seconds: this
process (the gateway, ``time.process_time``), the producer (``RUSAGE_CHILDREN``)
and the two servers (``/proc/<pid>/stat``) over the run. Each scenario stops
after ``timeout_s`` whatever happens; a shortfall is reported, not raised.

No target is asserted and there is no naive baseline (see ``note``).

    python -m benchmarks.bench_gateway [--chars 100] [--single 50000] [--batch 10000]
                                       [--per-message 10] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from collector.config import parse_config
from collector.pipeline import Gateway
from tests.servers import HOST, Server, free_port, mosquitto, require_binary, run_server

__all__ = ["cpu_of", "main", "missing_server", "victoria_metrics"]

ROOT = Path(__file__).resolve().parents[1]
TOKEN_ENV = "SHOPSPC_BENCH_TOKEN"
TARGETS = {"single": ("messages_per_s", 10_000), "batch": ("points_per_s", 100_000)}
NOTE = (
    "No naive baseline for the end-to-end run: the time goes to the broker, JSON decoding, "
    "the durable outbox (SQLite) and HTTP writes as much as to SPC, and a naive gateway "
    "with the same guarantees (QoS 1, durable outbox, every point written) would be a second "
    "gateway to maintain; absolute rates against the issue's targets are reported instead. "
    "Rates are information only: the machine is shared and the producer, mosquitto and "
    "VictoriaMetrics run on the same cores as the gateway."
)


@contextlib.contextmanager
def victoria_metrics(tmp: Path):
    """VictoriaMetrics on a free loopback port (as tests/connectors/influxdb/conftest.py starts it)."""
    binary = require_binary("victoria-metrics")
    port = free_port()
    argv = [
        binary,
        f"-httpListenAddr={HOST}:{port}",
        f"-storageDataPath={tmp / 'data'}",
        "-retentionPeriod=100y",
        "-dedup.minScrapeInterval=1ms",  # a replayed sample is then stored once
        "-loggerLevel=WARN",
    ]
    with run_server(argv, port, tmp, timeout=20.0) as server:
        yield server


def _vm_export(port: int, match: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"http://{HOST}:{port}/internal/force_flush", timeout=30) as r:
        r.read()
    url = f"http://{HOST}:{port}/api/v1/export?" + urllib.parse.urlencode({"match[]": match})
    with urllib.request.urlopen(url, timeout=60) as response:
        text = response.read().decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _count(port: int, name: str, station: str, **labels: str) -> Counter:
    """Samples per characteristic of the series ``name`` of ``station`` (and ``labels``)."""
    sel = ",".join(f'{k}="{v}"' for k, v in {"station": station, **labels}.items())
    counts: Counter = Counter()
    for series in _vm_export(port, f"{name}{{{sel}}}"):
        counts[series["metric"].get("characteristic", "")] += len(series["values"])
    return counts


def cpu_of(pid: int) -> float:
    """User + system CPU seconds of a running process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def config_text(scenario: str, K: int, mqtt_port: int, vm_port: int) -> str:
    """The gateway configuration of one scenario (YAML text)."""
    if scenario == "single":
        sub = (
            f"    - topic: bench/{scenario}/+\n"
            "      format: json\n"
            '      binding: "{2}"\n'
            "      value_path: v\n"
            "      timestamp_path: t\n"
            "      timestamp_unit: ms\n"
        )
    else:
        sub = (
            f"    - topic: bench/{scenario}\n"
            "      format: json\n"
            "      batch:\n"
            "        items_path: results\n"
            "        value_path: v\n"
            "        binding_path: c\n"
            "        timestamp_path: t\n"
            "      timestamp_unit: ms\n"
        )
    chars = "".join(
        f"- id: c{k:04d}\n"
        "  site: bench\n  area: a\n  line: l1\n"
        f"  station: st-{scenario}\n"
        "  chart: imr\n  rules: nelson\n"
        "  limits: {center: 0.0, sigma: 1.0}\n"
        f"  value: {{source: mqtt, binding: c{k:04d}}}\n"
        for k in range(K)
    )
    return (
        "version: 1\n"
        f"gateway:\n  id: bench-{scenario}\n"
        "sources:\n  mqtt:\n    kind: mqtt\n"
        f"    host: {HOST}\n    port: {mqtt_port}\n"
        f"    client_id: bench-gw-{scenario}\n"
        "    qos: 1\n    queue_size: 10000\n    max_batch: 1000\n"
        "    subscriptions:\n" + sub + "sinks:\n  vm:\n    kind: influxdb\n    api: v2\n"
        f"    url: http://{HOST}:{vm_port}\n"
        f"    org: bench\n    bucket: shopspc\n    token_env: {TOKEN_ENV}\n"
        "    batch_size: 5000\n    gzip: false\n    timeout_s: 30\n"
        "characteristics:\n" + chars
    )


async def _warm_up(gw: Gateway, port: int, scenario: str, timeout: float) -> bool:
    """Publish unmapped messages until the gateway has seen one (its subscription is live)."""
    import paho.mqtt.publish as publish  # only the warm-up here; the load is the producer's

    if scenario == "single":
        topic, body = f"bench/{scenario}/warmup", json.dumps({"v": 0.0, "t": 0})
    else:
        topic, body = f"bench/{scenario}", json.dumps({"results": [{"c": "warmup", "v": 0.0}]})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await asyncio.to_thread(publish.single, topic, body, qos=1, hostname=HOST, port=port)
        for _ in range(10):
            if gw.stats.unmapped:
                return True
            await asyncio.sleep(0.05)
    return False


async def _scenario(
    scenario: str,
    *,
    tmp: Path,
    broker: Server,
    vm: Server,
    K: int,
    messages: int,
    per_message: int,
    window: int,
    timeout_s: float,
    base_ms: int,
) -> dict[str, Any]:
    cfg, models = parse_config(config_text(scenario, K, broker.port, vm.port))
    gw = Gateway(
        cfg, models, data_dir=tmp / f"gw-{scenario}", metrics_interval_s=5.0, freeze_gc=True
    )  # as `shopspc run`
    stop = asyncio.Event()
    points = messages * per_message
    out: dict[str, Any] = {
        "characteristics": K,
        "messages": messages,
        "values_per_message": per_message,
        "points_expected": points,
    }

    async def drive() -> None:
        try:
            if not await _warm_up(gw, broker.port, scenario, 15.0):
                out["error"] = "the gateway never saw a warm-up message"
                return
            unmapped0 = gw.stats.unmapped
            lines0 = gw.stats.lines_appended
            samples0 = gw.stats.samples_in
            cpu0 = time.process_time()
            kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            srv0 = {"mosquitto": cpu_of(broker.pid), "victoria_metrics": cpu_of(vm.pid)}
            argv = [
                sys.executable,
                "-m",
                "benchmarks.producer",
                f"--port={broker.port}",
                f"--prefix=bench/{scenario}",
                f"--layout={scenario}",
                f"--messages={messages}",
                f"--per-message={per_message}",
                f"--chars={K}",
                f"--base-ms={base_ms}",
                f"--window={window}",
                f"--timeout={timeout_s}",
            ]
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            deadline = time.monotonic() + timeout_s + 10.0
            done_at = accepted_at = None
            s = gw.stats
            while time.monotonic() < deadline:
                accepted = s.samples_in - samples0 - (s.unmapped - unmapped0)
                if accepted_at is None and accepted >= points:
                    accepted_at = time.monotonic()
                # every value's measurement, point and alarm lines appended (not just processed:
                # the append is awaited) and everything appended written
                if (
                    accepted >= points
                    and s.points >= points
                    and s.lines_appended >= lines0 + accepted + s.points + s.alarms
                    and s.lines_written >= s.lines_appended
                ):
                    done_at = time.monotonic()
                    break
                await asyncio.sleep(0.005)
            cpu_gw = time.process_time() - cpu0
            srv = {
                "mosquitto": cpu_of(broker.pid) - srv0["mosquitto"],
                "victoria_metrics": cpu_of(vm.pid) - srv0["victoria_metrics"],
            }
            try:
                stdout, stderr = await asyncio.wait_for(proc.communicate(), 15.0)
            except TimeoutError:
                proc.kill()
                stdout, stderr = await proc.communicate()
            kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            prod = json.loads(stdout.decode().strip().splitlines()[-1]) if stdout.strip() else {}
            if proc.returncode:
                out["producer_error"] = stderr.decode(errors="replace")[-500:]
            out["messages_acked_by_broker"] = prod.get("acked")
            out["values_accepted"] = s.samples_in - samples0 - (s.unmapped - unmapped0)
            out["gateway_points"] = s.points
            out["alarms"] = s.alarms
            out["lines_appended"] = s.lines_appended
            out["lines_written"] = s.lines_written
            out["queue_waits"] = s.queue_waits
            out["sink_errors"] = s.sink_errors
            out["lines_dead"] = s.lines_dead
            if done_at is None or "first" not in prod:
                out["error"] = f"not every point reached VictoriaMetrics within {timeout_s} s"
                elapsed = time.monotonic() - (prod.get("first") or deadline - timeout_s - 10.0)
            else:
                elapsed = done_at - prod["first"]
                # where the time goes: publishing, the gateway taking every value, the sink
                out["publish_seconds"] = round(prod["last"] - prod["first"], 3)
                if accepted_at is not None:
                    out["all_accepted_seconds"] = round(accepted_at - prod["first"], 3)
            out["seconds"] = round(elapsed, 3)
            done_msgs = min(messages, out["values_accepted"] // per_message)
            out["messages_per_s"] = round(done_msgs / elapsed)
            out["points_per_s"] = round(out["values_accepted"] / elapsed)
            key, target = TARGETS[scenario]
            out["target"] = {key: target, "met": out[key] >= target and "error" not in out}
            out["cpu_seconds"] = {
                "gateway_process": round(cpu_gw, 2),
                "producer": round(
                    kids1.ru_utime + kids1.ru_stime - kids0.ru_utime - kids0.ru_stime, 2
                ),
                **{k: round(v, 2) for k, v in srv.items()},
            }
            out["gateway_cpu_us_per_point"] = round(
                1e6 * cpu_gw / max(1, out["values_accepted"]), 1
            )
        finally:
            stop.set()

    async with asyncio.timeout(timeout_s + 60.0):
        await asyncio.gather(gw.run(stop), drive())

    station = f"st-{scenario}"
    measured = _count(vm.port, "measurement_value", station)
    charted = _count(vm.port, "spc_statistic", station, chart="imr")
    expect = {f"c{k:04d}": points // K + (1 if k < points % K else 0) for k in range(K)}
    out["readback"] = {
        "measurement_value": {
            "expected": points,
            "found": sum(measured.values()),
            "characteristics_short": sum(1 for c, n in expect.items() if measured[c] < n),
        },
        "spc_statistic": {
            "expected": points,
            "found": sum(charted.values()),
            "characteristics_short": sum(1 for c, n in expect.items() if charted[c] < n),
        },
    }
    out["zero_loss"] = all(r["found"] == r["expected"] for r in out["readback"].values())
    return out


def missing_server() -> str | None:
    """Why the servers cannot start (a binary is not installed), or None."""
    for name in ("mosquitto", "victoria-metrics"):
        try:
            require_binary(name)
        except (pytest.skip.Exception, pytest.fail.Exception) as exc:
            return f"{exc.msg} (`make servers` installs them)"
    return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the servers, run both scenarios, stop the servers."""
    missing = missing_server()
    if missing:
        return {"note": NOTE, "skipped": missing}
    os.environ.setdefault(TOKEN_ENV, "not-checked-by-victoriametrics")
    # every value of a run gets its own millisecond, well in the past and inside retention
    base_ms = (time.time_ns() // 1_000_000) - 86_400_000
    results: dict[str, Any] = {"note": NOTE, "scenarios": {}}
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as d:
        tmp = Path(d)
        (tmp / "mqtt").mkdir()
        (tmp / "vm").mkdir()
        # the gateway logs every alarm (a cost it pays in service too): to a file, not the report
        handler = logging.FileHandler(tmp / "gateway.log")
        logging.getLogger().addHandler(handler)
        with (
            contextlib.closing(handler),
            mosquitto(tmp / "mqtt") as broker,
            victoria_metrics(tmp / "vm") as vm,
        ):
            plan = [("single", args.single, 1), ("batch", args.batch, args.per_message)]
            for i, (name, messages, per) in enumerate(plan):
                results["scenarios"][name] = asyncio.run(
                    _scenario(
                        name,
                        tmp=tmp,
                        broker=broker,
                        vm=vm,
                        K=args.chars,
                        messages=messages,
                        per_message=per,
                        window=args.window,
                        timeout_s=args.timeout,
                        base_ms=base_ms + i * 10_000_000,
                    )
                )
            for name, server in (("mosquitto", broker), ("victoria_metrics", vm)):
                results.setdefault("server_cpu_seconds_total", {})[name] = round(
                    cpu_of(server.pid), 2
                )
        logging.getLogger().removeHandler(handler)
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the end-to-end benchmark; returns the figures (``python -m benchmarks`` prints them)."""
    p = argparse.ArgumentParser(prog="bench_gateway")
    p.add_argument("--chars", type=int, default=100, help="characteristics (K)")
    p.add_argument("--single", type=int, default=50_000, help="single-value messages")
    p.add_argument("--batch", type=int, default=10_000, help="batched messages")
    p.add_argument("--per-message", type=int, default=10, help="values per batched message")
    p.add_argument("--window", type=int, default=1000, help="unacknowledged publishes at most")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per scenario at most")
    p.add_argument("--quick", action="store_true", help="a tenth of the messages")
    args = p.parse_args([] if argv is None else argv)
    if args.quick:
        args.single, args.batch = args.single // 10, args.batch // 10
    return run(args)


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
