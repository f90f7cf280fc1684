"""The MQTT load generator of :mod:`benchmarks.bench_gateway`, run as its own process.

Publishes ``--messages`` QoS 1 messages to a broker on 127.0.0.1 as fast as the
broker acknowledges them, with at most ``--window`` unacknowledged at a time
(so a slow subscriber slows the producer instead of piling messages up in
memory). Raw MQTT 3.1.1 packets encoded in advance (:mod:`benchmarks.rawmqtt`):
paho's per-message cost made the producer, not the gateway, the limit.
``--layout single``: one value per message on ``<prefix>/c<k>``;
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
import contextlib
import json
import random
import socket
import time

from benchmarks.rawmqtt import Pubacks, connect_packet, publish_packet

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
    packets = [
        publish_packet(a.prefix + suffix, body, k % 65535 + 1)
        for k, (suffix, body) in enumerate(msgs)
    ]
    n = len(packets)
    window = min(a.window, 65535)  # packet ids stay unique among the unacknowledged
    sock = socket.create_connection(("127.0.0.1", a.port), timeout=10)
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    acks = Pubacks(sock, n)
    acks.thread.start()
    deadline = time.monotonic() + a.timeout
    try:
        sock.sendall(connect_packet(f"bench-producer-{a.prefix.replace('/', '-')}", 30))
        if not acks.connack.wait(10) or acks.refused:
            raise SystemExit(f"producer: no CONNACK from the broker (refused: {acks.refused})")
        first = time.monotonic()
        k = 0
        while k < n and time.monotonic() < deadline:  # bounded: the parent reports a shortfall
            room = window - (k - acks.acked)
            if room <= 0:
                acks.progress.wait(0.01)
                acks.progress.clear()
                continue
            j = min(n, k + room, k + 256)
            sock.sendall(b"".join(packets[k:j]))
            k = j
        acks.done.wait(max(0.0, deadline - time.monotonic()))
        last = time.monotonic()
        with contextlib.suppress(OSError):
            sock.sendall(b"\xe0\x00")  # DISCONNECT
    finally:
        acks.done.set()
        sock.close()
    print(json.dumps({"first": first, "last": last, "acked": acks.acked, "messages": n}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
