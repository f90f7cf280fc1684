"""Raw MQTT 3.1.1 publishing for the benchmarks' load generators (packets encoded in advance).

paho's per-message Python path costs a sizeable share of a core at the rates
the benchmarks drive, on the box the gateway shares; a producer that spends
that would measure itself. These helpers encode CONNECT and QoS 1 PUBLISH
packets and count CONNACK and PUBACKs from a reader thread.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["Pubacks", "connect_packet", "publish_packet"]


def _varint(n: int) -> bytes:
    """MQTT remaining length."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return len(b).to_bytes(2, "big") + b


def publish_packet(topic: str, payload: bytes, mid: int) -> bytes:
    """An MQTT 3.1.1 PUBLISH packet, QoS 1, packet id ``mid``."""
    body = _str(topic) + mid.to_bytes(2, "big") + payload
    return b"\x32" + _varint(len(body)) + body


def connect_packet(client_id: str, keepalive: int = 60) -> bytes:
    """An MQTT 3.1.1 CONNECT packet with a clean session."""
    body = _str("MQTT") + b"\x04\x02" + keepalive.to_bytes(2, "big") + _str(client_id)
    return b"\x10" + _varint(len(body)) + body


class Pubacks:
    """Counts PUBACKs (and checks the CONNACK) read by a thread from the producer's socket."""

    def __init__(self, sock: Any, expected: int) -> None:
        self.sock = sock
        self.expected = expected
        self.acked = 0
        self.connack = threading.Event()
        self.refused: int | None = None
        self.done = threading.Event()
        self.progress = threading.Event()  # set whenever PUBACKs were counted
        self.thread = threading.Thread(target=self._read, name="pubacks", daemon=True)

    def _read(self) -> None:
        buf = b""
        while not self.done.is_set():
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            while len(buf) >= 2:
                # CONNACK and PUBACK are 4 bytes with a 1-byte remaining length; nothing else comes
                kind, size = buf[0] >> 4, buf[1]
                if len(buf) < 2 + size:
                    break
                if kind == 2:
                    self.refused = buf[3] or None
                    self.connack.set()
                elif kind == 4:
                    self.acked += 1
                    if self.acked >= self.expected:
                        self.done.set()
                buf = buf[2 + size :]
            self.progress.set()
        self.done.set()
        self.progress.set()
