"""The MQTT load generator of :mod:`benchmarks.bench_gateway`, run as its own process.

Publishes ``--messages`` QoS 1 messages to a broker on 127.0.0.1 as fast as the
broker acknowledges them, with at most ``--window`` unacknowledged at a time
(so a slow subscriber slows the producer instead of piling messages up in
memory). ``--layout single``: one value per message on ``<prefix>/c<k>``;
``--layout batch``: ``--per-message`` items ``{"c": "c<k>", "v": …, "t": …}``
on ``<prefix>``. Characteristic ``k`` takes values round robin over
``--chars`` ids; every value of one characteristic has its own millisecond
timestamp (``--base-ms`` + the value's global index), so a store that keeps one
sample per series and millisecond keeps every one.

Prints one JSON line: ``{"first": t, "last": t, "acked": n}`` with
``time.monotonic()`` times (system-wide on Linux, comparable with the parent).
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time

import paho.mqtt.client as mqtt

__all__ = ["main", "payloads"]


def payloads(layout: str, messages: int, per_message: int, chars: int, base_ms: int, seed: int):
    """(topic suffix, payload bytes) of every message, in publishing order."""
    rng = random.Random(seed)
    if layout == "single":
        for m in range(messages):
            body = {"v": round(rng.gauss(0.0, 1.0), 6), "t": base_ms + m}
            yield f"/c{m % chars:04d}", json.dumps(body).encode()
        return
    for m in range(messages):
        items = []
        for j in range(per_message):
            g = m * per_message + j
            items.append(
                {"c": f"c{g % chars:04d}", "v": round(rng.gauss(0.0, 1.0), 6), "t": base_ms + g}
            )
        yield "", json.dumps({"results": items}).encode()


def main(argv: list[str] | None = None) -> int:
    """Publish the messages and print the timing line."""
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--layout", choices=["single", "batch"], required=True)
    p.add_argument("--messages", type=int, required=True)
    p.add_argument("--per-message", type=int, default=1)
    p.add_argument("--chars", type=int, default=100)
    p.add_argument("--base-ms", type=int, required=True)
    p.add_argument("--window", type=int, default=1000)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)

    msgs = list(payloads(a.layout, a.messages, a.per_message, a.chars, a.base_ms, a.seed))
    window = threading.BoundedSemaphore(a.window)
    acked = 0
    done = threading.Event()
    connected = threading.Event()

    def on_connect(client, userdata, flags, reason, props) -> None:
        connected.set()

    def on_publish(client, userdata, mid, reason, props) -> None:
        nonlocal acked
        acked += 1
        window.release()
        if acked >= len(msgs):
            done.set()

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-producer-{a.prefix.replace('/', '-')}"
    )
    client.max_inflight_messages_set(a.window)
    client.max_queued_messages_set(0)
    client.on_connect = on_connect
    client.on_publish = on_publish
    client.connect("127.0.0.1", a.port, keepalive=30)
    client.loop_start()
    deadline = time.monotonic() + a.timeout
    try:
        if not connected.wait(10):
            raise SystemExit("producer: no CONNACK from the broker within 10 s")
        first = time.monotonic()
        for suffix, body in msgs:
            if not window.acquire(timeout=max(0.0, deadline - time.monotonic())):
                break  # bounded: give up at the deadline, the parent reports the shortfall
            client.publish(a.prefix + suffix, body, qos=1)
        done.wait(max(0.0, deadline - time.monotonic()))
        last = time.monotonic()
    finally:
        client.disconnect()
        client.loop_stop()
    print(json.dumps({"first": first, "last": last, "acked": acked, "messages": len(msgs)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
