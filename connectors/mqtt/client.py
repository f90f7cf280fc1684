"""The one module that imports paho-mqtt: a connection as a small asyncio surface.

paho runs inside the asyncio event loop, not in a network thread of its own
(:class:`_OnLoop`): the selector tells it when the socket can be read or
written (``loop_read``/``loop_write``), a timer runs its keepalive
(``loop_misc``), and its callbacks run in the loop directly. Only the blocking
TCP connect and TLS handshake run in a worker thread. A gateway under load
then has no second Python thread contending for the GIL with the one that
judges, and no hand-off per message; reads take what the socket has in one
``recv`` (:class:`_Client`) instead of three system calls per packet.
One :class:`MqttClient` is one connection: the source builds a new one for every
(re)connect, so no paho state outlives a connection — the *broker* keeps the
persistent session (fixed client id, clean_start/clean_session False).

Delivery: messages are acknowledged manually (paho ``manual_ack``) only after
the source has emitted the samples made from them (:meth:`MqttClient.ack`), so a
QoS 1/2 message that was received but not yet emitted when the connection or the
gateway went away is redelivered by the broker: at least once, never lost where
the protocol allows it.

Buffer and overflow policy: ``queue_size`` received messages wait for the
source. When the buffer is full the client stops reading its socket
(backpressure: TCP, then the broker, holds the rest). A QoS≥1 message is never
dropped — the broker sends no more than its in-flight window un-acknowledged
(MQTT 5: our Receive Maximum ≤ ``queue_size``). After ``queue_block_s`` of a
full buffer, reading resumes for QoS 0: a QoS 0 message that arrives while the
buffer is still full is dropped (the newest) and counted in
:attr:`MqttClient.dropped`.

Errors are translated into :class:`ConnectorError`: bad credentials, a client id
the broker rejects, TLS certificate failures and missing TLS files are not
retryable; refused connections, timeouts, DNS failures and lost connections are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from connectors.base import ConnectorError
from connectors.mqtt.config import MqttPublisherConfig, MqttSourceConfig, TlsConfig

__all__ = [
    "Message",
    "MqttClient",
    "MqttLink",
    "MqttPublisher",
    "Outgoing",
    "PublishRefusedError",
    "Published",
]

log = logging.getLogger(__name__)

# CONNACK reason codes (MQTT 5 numbering; paho maps 3.1.1 return codes onto them)
# after which trying again cannot help until someone changes the configuration.
_FATAL_CONNACK = {
    0x84,  # unsupported protocol version
    0x85,  # client identifier not valid
    0x86,  # bad user name or password
    0x87,  # not authorized
    0x8A,  # banned
    0x8C,  # bad authentication method
}


@dataclass(frozen=True, slots=True)
class Message:
    """One received PUBLISH: topic, raw payload, and when the gateway received it (µs, UTC)."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    received_us: int
    mid: int = 0


class _ClosingSSLSocket(ssl.SSLSocket):
    """paho leaves the socket open when the TLS handshake fails; close it there."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


class _PahoLog:
    """paho's log sink: its socket errors at ERROR would repeat what the source logs once
    per outage, so everything is DEBUG except exceptions caught in our callbacks (bugs)."""

    def log(self, level: int, fmt: str, *args: Any) -> None:
        if fmt.startswith("Caught exception"):
            log.error("paho: " + fmt, *args)
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("paho: " + fmt, *args)


def _set_tls(client: paho.Client, tls: TlsConfig, where: str) -> None:
    """Configure TLS on a paho client; a bad file or setting is not retryable."""
    try:
        ctx = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file) if tls.ca_file else None
        )
        if tls.cert_file is not None and tls.key_file is not None:
            ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        if tls.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        ctx.sslsocket_class = _ClosingSSLSocket
        client.tls_set_context(ctx)
        if tls.insecure:
            client.tls_insecure_set(True)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ConnectorError(where, f"TLS setup: {exc}", retryable=False) from exc


def _nodelay(sock: Any, where: str) -> None:
    # Messages are small and latency matters more than packet count.
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        log.debug("%s: could not set TCP_NODELAY", where)


_READ_CHUNK = 65536
_PUBACK_HEAD = bytes((paho.PUBACK, 2))  # PUBACK, remaining length 2 (the packet id)
_MISC_INTERVAL_S = 1.0  # paho's own loop runs loop_misc about once a second


class _Client(paho.Client):
    """paho's client reading its socket in chunks.

    paho asks the socket for each packet's first byte, its length bytes and
    its body separately: three system calls per packet. This takes what the
    socket has (up to 64 KiB) in one ``recv`` and serves paho's reads from
    that buffer. ``_sock_recv`` is paho's own single point of socket reads
    (paho 2.0–2.2; tests/connectors/mqtt/test_client.py checks it is there).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = bytearray()

    def _sock_recv(self, bufsize: int) -> bytes:
        buf = self._rbuf
        if not buf:
            data = super()._sock_recv(_READ_CHUNK)  # BlockingIOError when there is nothing
            if not data:
                return b""  # end of stream: paho sees the connection lost
            if len(data) <= bufsize:
                return data
            buf += data
        out = bytes(buf[:bufsize])
        del buf[:bufsize]
        return out

    #: Receives ``(topic, payload, qos, retain, mid)`` of each QoS 0/1 PUBLISH without paho's
    #: message object and MQTT 5 property parsing (the source uses neither); None: paho's path.
    fast_publish: Callable[[str, bytes, int, bool, int], None] | None = None

    def _handle_publish(self) -> Any:
        """paho's PUBLISH handling, decoded here for QoS 0 and 1 when ``fast_publish`` is set.

        paho builds a Properties object (MQTT 5) and an MQTTMessage per message, about a
        third of the gateway's receive cost; the source needs topic, payload, QoS, retain
        and packet id only (it sets no per-topic callbacks). Anything unusual (QoS 2, a
        malformed or aliased packet) takes paho's own path, which reports it as always.
        """
        deliver = self.fast_publish
        header = self._in_packet["command"]
        qos = (header & 0x06) >> 1
        if deliver is None or qos == 2:
            return super()._handle_publish()
        pkt = self._in_packet["packet"]
        try:
            end = 2 + int.from_bytes(pkt[0:2], "big")
            topic = pkt[2:end].decode("utf-8")
            mid = 0
            if qos:
                mid = int.from_bytes(pkt[end : end + 2], "big")
                end += 2
            if self._protocol == paho.MQTTv5:
                size, mult = 0, 1
                while True:  # the properties' length (variable byte integer), then skip them
                    byte = pkt[end]
                    end += 1
                    size += (byte & 127) * mult
                    if byte < 128:
                        break
                    mult *= 128
                    if mult > 128**3:
                        raise ValueError("properties length over 4 bytes")
                end += size
        except (ValueError, IndexError, UnicodeDecodeError):
            return super()._handle_publish()
        if not topic or end > len(pkt) or (qos and not mid):
            return super()._handle_publish()
        try:
            deliver(topic, bytes(pkt[end:]), qos, bool(header & 0x01), mid)
        except Exception:
            log.exception("handling a message received on %r failed", topic)
        return paho.MQTT_ERR_SUCCESS

    def ack_many(self, mids: Sequence[int]) -> None:
        """PUBACK QoS 1 messages (manual acknowledgement), all in one queued write."""
        if mids:
            packet = b"".join([_PUBACK_HEAD + mid.to_bytes(2, "big") for mid in mids])
            self._packet_queue(paho.PUBACK, packet, 0, 0)

    def buffered(self) -> bool:
        """Bytes already read from the socket but not yet parsed (TLS: or still decrypted)."""
        if self._rbuf:
            return True
        sock = self._sock
        return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0


class _OnLoop:
    """Runs a paho client's network I/O in the asyncio event loop (no network thread).

    paho reports its socket through the socket callbacks; reads and writes
    run when the selector says the socket is ready, ``loop_misc``
    (keepalive, ping timeout) once a second. A callback that fires in the
    connect worker thread is carried over to the loop. ``paused`` stops
    reading (receive-buffer backpressure) until :meth:`resume`.
    """

    def __init__(self, client: _Client, where: str) -> None:
        self.client = client
        self.where = where
        self.loop: asyncio.AbstractEventLoop | None = None
        self.paused = False
        self._thread: int | None = None
        self._sock: Any = None
        self._misc: asyncio.TimerHandle | None = None
        self._write_soon = False  # a write attempt is scheduled (see _want_write)
        self._writer = False  # the selector watches the socket for writability
        client.on_socket_open = self._on_open
        client.on_socket_close = self._on_close
        client.on_socket_register_write = self._on_want_write
        client.on_socket_unregister_write = self._on_no_write

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._thread = threading.get_ident()

    def call(self, fn: Any, *args: Any) -> None:
        """Run ``fn(*args)`` in the event loop: now if this is the loop's thread."""
        loop = self.loop
        if loop is None:
            return
        if threading.get_ident() == self._thread:
            fn(*args)
            return
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            loop.call_soon_threadsafe(fn, *args)

    # paho's socket callbacks (the connect thread or the loop)
    def _on_open(self, client: Any, userdata: Any, sock: Any) -> None:
        _nodelay(sock, self.where)
        self.call(self._attach, sock)

    def _on_close(self, client: Any, userdata: Any, sock: Any) -> None:
        self.call(self._detach, sock)

    def _on_want_write(self, client: Any, userdata: Any, sock: Any) -> None:
        self.call(self._want_write, sock)

    def _on_no_write(self, client: Any, userdata: Any, sock: Any) -> None:
        self.call(self._no_write, sock)

    # the loop's side
    def _attach(self, sock: Any) -> None:
        assert self.loop is not None
        if sock.fileno() < 0:  # closed before the loop got to it
            return
        self._sock = sock
        if not self.paused:
            self.loop.add_reader(sock, self._read)
        self._misc = self.loop.call_later(_MISC_INTERVAL_S, self._tick)

    def _detach(self, sock: Any) -> None:
        if self._sock is not sock or self.loop is None:
            return
        self._sock = None
        self._writer = False
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(sock)
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_writer(sock)
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None

    def _want_write(self, sock: Any) -> None:
        # paho queued a packet. Whoever queued it usually flushes at once (acks, publishes),
        # and a loopback socket takes it whole: registering a writer first would cost two
        # epoll_ctl calls and a selector turn per write. So the write is tried in the next
        # turn, and the selector is asked only for what the socket could not take.
        if self._sock is sock and self.loop is not None and not self._write_soon:
            self._write_soon = True
            self.loop.call_soon(self._write_now, sock)

    def _write_now(self, sock: Any) -> None:
        self._write_soon = False
        client = self.client
        if self._sock is not sock or self.loop is None or not client.want_write():
            return
        client.loop_write()
        if self._sock is sock and client.want_write() and not self._writer:
            self._writer = True
            self.loop.add_writer(sock, client.loop_write)

    def _no_write(self, sock: Any) -> None:
        if self._sock is sock and self.loop is not None and self._writer:
            self._writer = False
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_writer(sock)

    def _read(self) -> None:
        client = self.client
        while True:
            if client.loop_read() != paho.MQTT_ERR_SUCCESS:
                return  # paho closed the socket and reported the loss
            if self.paused or self._sock is None or not client.buffered():
                return  # the selector calls again when the socket has more

    def _tick(self) -> None:
        self._misc = None
        if self._sock is None:
            return
        self.client.loop_misc()
        if self._sock is not None and self.loop is not None:
            self._misc = self.loop.call_later(_MISC_INTERVAL_S, self._tick)

    def flush(self) -> None:
        """Write what paho has queued now, not at the selector's next turn (latency)."""
        if self._sock is not None and self.client.want_write():
            self.client.loop_write()

    def pause(self) -> None:
        """Stop reading the socket until :meth:`resume` (the receive buffer is full)."""
        if self.paused:
            return
        self.paused = True
        if self._sock is not None and self.loop is not None:
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(self._sock)

    def resume(self) -> None:
        """Read again; what was already read from the socket is parsed now."""
        if not self.paused:
            return
        self.paused = False
        if self._sock is not None and self.loop is not None:
            self.loop.add_reader(self._sock, self._read)
            if self.client.buffered():
                self.loop.call_soon(self._read)

    async def close(self) -> None:
        """Send DISCONNECT (a clean one keeps a session and drops the Will) and close.

        The socket is closed even when the caller is cancelled while DISCONNECT waits
        for room in a full send buffer (a stop that cancels twice left it open)."""
        client = self.client
        try:
            if self._sock is not None:
                client.disconnect()
                client.loop_write()  # paho closes the socket once DISCONNECT is written
                for _ in range(100):  # a full send buffer: give it a second
                    if self._sock is None:
                        break
                    await asyncio.sleep(0.01)
                    if self._sock is not None:
                        client.loop_write()
        finally:
            self.abort()

    def abort(self) -> None:
        """Close the socket now, without DISCONNECT (the end of :meth:`close`)."""
        sock = self._sock
        if sock is not None:
            self._detach(sock)
            sock.close()


async def _close_after_opening(opening: asyncio.Future[None] | None, io: _OnLoop) -> None:
    """Wait for a connect still running in its thread, then close the connection.

    Cancelled meanwhile (a stop that cancels again), the socket the connect opens is
    closed when the connect ends, and one already open is closed now: never left for
    the garbage collector."""
    try:
        if opening is not None:
            with contextlib.suppress(Exception):
                # shielded: cancelling this wait must not cancel the connect's task, which
                # would end while its thread goes on and opens a socket nobody closes
                await asyncio.shield(opening)
    finally:
        if opening is not None and not opening.done():
            # after the loop attached the socket (queued by the thread before it returned)
            opening.add_done_callback(lambda _: io.call(io.abort))
        await io.close()


async def _opened(
    where: str,
    opening: asyncio.Future[None],
    connack: asyncio.Future[tuple[bool, int, str]],
    timeout_s: float,
) -> bool:
    """Wait for the socket (``opening``) and then CONNACK; True when the session was kept.

    Errors: TLS verification and malformed settings are final; refused,
    timed-out and lost connections are retryable; a refused CONNACK is final
    for bad credentials and authorisation (``_FATAL_CONNACK``).
    """
    try:
        await asyncio.shield(opening)
    except ssl.SSLCertVerificationError as exc:
        raise ConnectorError(where, f"TLS: {exc}", retryable=False) from exc
    except (OSError, ssl.SSLError) as exc:  # refused, timeout, DNS, TLS handshake
        raise ConnectorError(where, f"connect: {exc}", retryable=True) from exc
    except ValueError as exc:
        raise ConnectorError(where, f"connect: {exc}", retryable=False) from exc
    try:
        session_present, code, text = await asyncio.wait_for(connack, timeout_s)
    except TimeoutError:
        raise ConnectorError(where, f"no CONNACK within {timeout_s} s", retryable=True) from None
    if code >= 0x80:
        raise ConnectorError(
            where, f"broker refused the connection: {text}", retryable=code not in _FATAL_CONNACK
        )
    return session_present


class _Lost:
    """Queue marker: the connection ended (``reason``)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class MqttClient:
    """One MQTT connection: connect, subscribe, receive batches, acknowledge, close.

    ``where`` prefixes error texts (``mqtt line1 127.0.0.1:1883``). ``password``
    is the secret itself (the source reads it from the environment).
    """

    def __init__(self, cfg: MqttSourceConfig, where: str, password: str | None = None) -> None:
        self.cfg = cfg
        self.where = where
        self.dropped = 0
        self.session_present = False
        self._password = password
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[Message | _Lost] = asyncio.Queue()
        self._full = False  # the buffer filled up and has not had room since
        self._unblock: asyncio.TimerHandle | None = None
        self._connack: asyncio.Future[tuple[bool, int, str]] | None = None
        self._subacks: dict[int, asyncio.Future[list[Any]]] = {}
        self._lost: str | None = None
        self._closed = False
        self._drop_logged = False
        v5 = cfg.protocol == "5"
        self._client = _Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            clean_session=None if v5 else not cfg.persistent_session,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            reconnect_on_failure=False,  # reconnects are ours, with Backoff
            manual_ack=True,
        )
        self._client.connect_timeout = cfg.connect_timeout_s
        # A bug in a callback must not break the connection; paho logs it instead.
        self._client.suppress_exceptions = True
        self._client.enable_logger(_PahoLog())  # type: ignore[arg-type]
        self._io = _OnLoop(self._client, where)
        self._opening: asyncio.Future[None] | None = None
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.fast_publish = self._received
        if cfg.username is not None:
            self._client.username_pw_set(cfg.username, password)
        if cfg.tls is not None:
            self._set_tls()

    def _set_tls(self) -> None:
        assert self.cfg.tls is not None
        _set_tls(self._client, self.cfg.tls, self.where)

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._io.bind(loop)

    # -- paho callbacks (in the loop; CONNACK may come while connect's thread ends) ----

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._io.call(self._set_connack, bool(flags.session_present), int(rc.value), str(rc))

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._io.call(self._set_lost, f"connection lost ({rc})")

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        self._io.call(self._set_suback, mid, list(codes))

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self._received(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), msg.mid)

    def _received(self, topic: str, payload: bytes, qos: int, retain: bool, mid: int) -> None:
        received_us = time.time_ns() // 1000
        queue = self._queue
        if queue.qsize() >= self.cfg.queue_size:
            if not self._full:
                # stop reading: TCP and the broker hold the rest; QoS 0 is dropped only
                # once the buffer has stayed full for queue_block_s (reading resumes then)
                self._full = True
                self._io.pause()
                assert self._loop is not None
                self._unblock = self._loop.call_later(self.cfg.queue_block_s, self._io.resume)
            elif qos == 0 and not self._io.paused:
                self.dropped += 1
                if not self._drop_logged:
                    self._drop_logged = True
                    log.warning(
                        "%s: receive buffer full (%d messages) for %s s, dropping QoS 0 messages",
                        self.where,
                        self.cfg.queue_size,
                        self.cfg.queue_block_s,
                    )
                return
            # a QoS≥1 message is never dropped: the broker's in-flight window bounds them
        queue.put_nowait(Message(topic, payload, qos, retain, received_us, mid))

    def _room(self) -> None:
        """The source took messages: read again once the buffer has room."""
        if self._full and self._queue.qsize() < self.cfg.queue_size:
            self._full = False
            if self._unblock is not None:
                self._unblock.cancel()
                self._unblock = None
            self._io.resume()

    def _set_connack(self, session_present: bool, code: int, text: str) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_result((session_present, code, text))

    def _set_lost(self, reason: str) -> None:
        if self._lost is None:
            self._lost = reason
            self._queue.put_nowait(_Lost(reason))  # after every message received before it
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(ConnectorError(self.where, reason, retryable=True))
        for fut in self._subacks.values():
            if not fut.done():
                fut.set_exception(ConnectorError(self.where, reason, retryable=True))

    def _set_suback(self, mid: int, codes: list[Any]) -> None:
        fut = self._subacks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(codes)

    # -- public API ----------------------------------------------------------

    async def connect(self) -> bool:
        """Open the connection and wait for CONNACK; True when the broker kept our session."""
        self._bind(asyncio.get_running_loop())
        assert self._loop is not None
        self._connack = self._loop.create_future()
        cfg = self.cfg
        kwargs: dict[str, Any] = {}
        if cfg.protocol == "5":
            props = Properties(PacketTypes.CONNECT)
            if cfg.persistent_session:
                props.SessionExpiryInterval = cfg.session_expiry_s
            # never more un-acknowledged QoS≥1 messages in flight than the buffer holds
            props.ReceiveMaximum = min(cfg.queue_size, 65535)
            kwargs = {"clean_start": not cfg.persistent_session, "properties": props}

        def open_() -> None:  # the blocking TCP connect and TLS handshake
            self._client.connect(cfg.host, cfg.port, cfg.keepalive, **kwargs)

        # Shielded so that close() can wait for a connect the caller gave up on.
        self._opening = asyncio.ensure_future(asyncio.to_thread(open_))
        self.session_present = await _opened(
            self.where, self._opening, self._connack, cfg.connect_timeout_s
        )
        return self.session_present

    async def subscribe(self, topics: Sequence[tuple[str, int]]) -> list[int]:
        """Subscribe to ``(filter, qos)`` pairs, wait for SUBACK; returns the granted QoS each.

        A filter the broker refuses raises a non-retryable :class:`ConnectorError`
        (an ACL or a filter the broker does not support will not change by waiting).
        """
        assert self._loop is not None
        if self.cfg.protocol == "5":
            retain = (
                SubscribeOptions.RETAIN_DO_NOT_SEND
                if self.cfg.retained == "skip"
                else SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE
            )
            req: list[Any] = [
                (t, SubscribeOptions(qos=q, retainHandling=retain)) for t, q in topics
            ]
        else:
            req = list(topics)
        rc, mid = self._client.subscribe(req)
        if rc != paho.MQTT_ERR_SUCCESS or mid is None:
            raise ConnectorError(self.where, f"subscribe: {paho.error_string(rc)}", retryable=True)
        fut = self._loop.create_future()
        self._subacks[mid] = fut
        if self._lost is not None:
            raise ConnectorError(self.where, self._lost, retryable=True)
        try:
            codes = await asyncio.wait_for(fut, self.cfg.connect_timeout_s)
        except TimeoutError:
            raise ConnectorError(self.where, "no SUBACK in time", retryable=True) from None
        finally:
            self._subacks.pop(mid, None)
        granted: list[int] = []
        for (topic, _), code in zip(topics, codes, strict=False):
            value = int(code.value) if hasattr(code, "value") else int(code)
            if value >= 0x80:
                raise ConnectorError(
                    self.where, f"subscribe {topic!r} refused: {code}", retryable=False
                )
            granted.append(value)
        return granted

    async def receive(self, max_messages: int) -> list[Message]:
        """Wait for at least one message and return up to ``max_messages`` in arrival order.

        Raises a retryable :class:`ConnectorError` once the connection is lost and
        every message received before that has been returned.
        """
        if self._lost is not None and self._queue.empty():
            raise ConnectorError(self.where, self._lost, retryable=True)
        first = await self._queue.get()
        if isinstance(first, _Lost):
            raise ConnectorError(self.where, first.reason, retryable=True)
        out = [first]
        queue = self._queue
        while len(out) < max_messages and not queue.empty():
            item = queue.get_nowait()
            if isinstance(item, _Lost):
                break  # self._lost is set: the next call raises
            out.append(item)
        self._room()
        return out

    def ack(self, messages: Sequence[Message]) -> None:
        """Acknowledge QoS≥1 messages (after their samples were emitted), in arrival order."""
        if self._lost is not None or self._closed:
            return  # the broker redelivers them on the next connection
        self._client.ack_many([m.mid for m in messages if m.qos == 1])
        for m in messages:
            if m.qos == 2:
                self._client.ack(m.mid, m.qos)
        self._io.flush()

    async def close(self) -> None:
        """Disconnect (a clean DISCONNECT keeps a persistent session) and close the socket."""
        if self._closed:
            return
        self._closed = True
        if self._unblock is not None:
            self._unblock.cancel()
        await _close_after_opening(self._opening, self._io)


# -- for the simulated station (connectors/mqtt/station.py) ------------------------------
# `shopspc simulate` publishes inspection batches; this keeps paho's publishing API here too.


class MqttPublisher:
    """A plain MQTT 5 publishing connection (clean start, no TLS) for the simulated station."""

    def __init__(self, host: str, port: int, client_id: str, timeout_s: float = 5.0) -> None:
        self.where = f"mqtt station {host}:{port}"
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5
        )
        self._client.enable_logger(_PahoLog())  # type: ignore[arg-type]
        self._started = False

    async def connect(self) -> None:
        """Connect and start the network thread; paho reconnects by itself after a loss."""

        def open_() -> None:
            self._client.connect(self.host, self.port, keepalive=30)
            self._client.loop_start()

        try:
            await asyncio.to_thread(open_)
        except (OSError, ValueError) as exc:
            raise ConnectorError(self.where, f"connect: {exc}", retryable=True) from exc
        self._started = True

    async def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Publish and wait (bounded by ``timeout_s``) until the broker has it (QoS ≥ 1)."""
        info = self._client.publish(topic, payload, qos=qos)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            raise ConnectorError(self.where, paho.error_string(info.rc), retryable=True)
        try:
            await asyncio.to_thread(info.wait_for_publish, self.timeout_s)
        except RuntimeError as exc:  # not queued (no connection): paho keeps retrying
            raise ConnectorError(self.where, f"publish: {exc}", retryable=True) from exc

    async def close(self) -> None:
        """Disconnect and stop the network thread; idempotent."""
        if not self._started:
            return
        self._started = False

        def stop() -> None:
            self._client.disconnect()
            self._client.loop_stop()

        await asyncio.to_thread(stop)


# -- alarm delivery to MES (collector/notify.py) ------------------------------------------


class Outgoing(NamedTuple):
    """One message to publish: a plain ``(topic, payload, qos, retain)`` tuple works too."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


class PublishRefusedError(ConnectorError):
    """The broker refused some messages of a batch (PUBACK reason code ≥ 0x80), e.g. an ACL.

    ``refused`` maps the index of each refused message in the batch to the
    broker's reason; every other message of the batch was acknowledged.
    Not retryable: sending the same message again gets the same answer.
    """

    def __init__(self, where: str, refused: dict[int, str], topics: Sequence[str]) -> None:
        first = min(refused)
        super().__init__(
            where,
            f"broker refused {len(refused)} message(s); first #{first} "
            f"on {topics[first]!r}: {refused[first]}",
            retryable=False,
        )
        self.refused = refused


class MqttLink:
    """One publishing connection with confirmation, a Last Will and a persistent session.

    :meth:`publish_many` returns only when the broker acknowledged (PUBACK) every
    message, so the caller may then remove them from its durable outbox. The
    ``will`` is set before connecting: the broker publishes it when the
    connection ends without a clean DISCONNECT (crash, power or network loss);
    :meth:`close` disconnects cleanly, which discards it.

    Received messages (of :meth:`subscribe`) are handed to ``on_message(topic,
    payload)`` in the event loop; paho acknowledges them on receipt. When the
    connection ends, ``on_lost(reason)`` is called once (not after :meth:`close`)
    and every later call raises a retryable :class:`ConnectorError`; reconnecting
    is the caller's (a new :class:`MqttLink`, with ``Backoff``).
    """

    def __init__(
        self,
        cfg: MqttPublisherConfig,
        client_id: str,
        *,
        password: str | None = None,
        will: Outgoing | None = None,
        on_message: Callable[[str, bytes], None] | None = None,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.where = f"mqtt publisher {cfg.host}:{cfg.port}"
        self.session_present = False
        self._will = will
        self._on_message_cb = on_message
        self._on_lost_cb = on_lost
        self._v5 = cfg.protocol == "5"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connack: asyncio.Future[tuple[bool, int, str]] | None = None
        self._subacks: dict[int, asyncio.Future[list[Any]]] = {}
        self._pubacks: dict[int, asyncio.Future[tuple[int, str]]] = {}
        self._opening: asyncio.Future[None] | None = None
        self._lost: str | None = None
        self._closed = False
        self._client = _Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=None if self._v5 else False,
            protocol=paho.MQTTv5 if self._v5 else paho.MQTTv311,
            reconnect_on_failure=False,
        )
        self._client.connect_timeout = cfg.connect_timeout_s
        self._client.suppress_exceptions = True
        self._client.enable_logger(_PahoLog())  # type: ignore[arg-type]
        self._client.max_inflight_messages_set(cfg.max_inflight)
        self._io = _OnLoop(self._client, self.where)
        self._call = self._io.call
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message
        if cfg.username is not None:
            self._client.username_pw_set(cfg.username, password)
        if cfg.tls is not None:
            _set_tls(self._client, cfg.tls, self.where)
        if will is not None:
            props = None
            if self._v5:
                props = Properties(PacketTypes.WILLMESSAGE)
                props.ContentType = "application/json"
            self._client.will_set(will.topic, will.payload, will.qos, will.retain, props)

    # -- paho callbacks (in the loop; CONNACK may come while connect's thread ends) ----

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._call(self._set_connack, bool(flags.session_present), int(rc.value), str(rc))

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._call(self._set_lost, f"connection lost ({rc})")

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        self._call(_resolve, self._subacks, mid, list(codes))

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        self._call(_resolve, self._pubacks, mid, (int(rc.value), str(rc)))

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self._call(self._deliver, msg.topic, bytes(msg.payload))

    def _set_connack(self, session_present: bool, code: int, text: str) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_result((session_present, code, text))

    def _set_lost(self, reason: str) -> None:
        if self._lost is not None:
            return
        self._lost = reason
        for fut in [self._connack, *self._subacks.values(), *self._pubacks.values()]:
            if fut is not None and not fut.done():
                fut.set_exception(ConnectorError(self.where, reason, retryable=True))
        if self._on_lost_cb is not None and not self._closed:
            self._on_lost_cb(reason)

    def _deliver(self, topic: str, payload: bytes) -> None:
        if self._on_message_cb is None:
            return
        try:
            self._on_message_cb(topic, payload)
        except Exception:
            log.exception("%s: message handler failed on %r", self.where, topic)

    def _check(self) -> None:
        if self._lost is not None:
            raise ConnectorError(self.where, self._lost, retryable=True)
        if self._closed:
            raise ConnectorError(self.where, "closed", retryable=True)

    # -- public API ----------------------------------------------------------

    async def connect(self) -> bool:
        """Open the connection and wait for CONNACK; True when the broker kept our session."""
        self._loop = asyncio.get_running_loop()
        self._io.bind(self._loop)
        self._connack = self._loop.create_future()
        cfg = self.cfg
        kwargs: dict[str, Any] = {}
        if self._v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = cfg.session_expiry_s
            kwargs = {"clean_start": False, "properties": props}

        def open_() -> None:  # the blocking TCP connect and TLS handshake
            self._client.connect(cfg.host, cfg.port, cfg.keepalive_s, **kwargs)

        # Shielded so that close() can wait for a connect the caller gave up on.
        self._opening = asyncio.ensure_future(asyncio.to_thread(open_))
        assert self._connack is not None
        self.session_present = await _opened(
            self.where, self._opening, self._connack, cfg.connect_timeout_s
        )
        return self.session_present

    async def subscribe(self, topic_filter: str, qos: int = 1) -> int:
        """Subscribe and wait for SUBACK; returns the granted QoS (refused: not retryable)."""
        self._check()
        assert self._loop is not None
        rc, mid = self._client.subscribe(topic_filter, qos)
        if rc != paho.MQTT_ERR_SUCCESS or mid is None:
            raise ConnectorError(self.where, f"subscribe: {paho.error_string(rc)}", retryable=True)
        fut = self._loop.create_future()
        self._subacks[mid] = fut
        try:
            (code,) = await asyncio.wait_for(fut, self.cfg.connect_timeout_s)
        except TimeoutError:
            raise ConnectorError(self.where, "no SUBACK in time", retryable=True) from None
        finally:
            self._subacks.pop(mid, None)
        value = int(code.value) if hasattr(code, "value") else int(code)
        if value >= 0x80:
            raise ConnectorError(
                self.where, f"subscribe {topic_filter!r} refused: {code}", retryable=False
            )
        return value

    async def publish_many(
        self,
        msgs: Sequence[Outgoing | tuple[str, bytes, int, bool]],
        *,
        content_type: str | None = "application/json",
    ) -> None:
        """Publish ``msgs`` in order (up to ``max_inflight`` unacknowledged) and wait for every PUBACK.

        ``content_type`` is sent as the MQTT 5 property (ignored on 3.1.1).
        Raises a retryable :class:`ConnectorError` when the connection is lost or
        not every PUBACK came within ``publish_timeout_s`` (the link is then
        unusable: reconnect), and :class:`PublishRefusedError` when the broker refused
        some messages (all others were acknowledged).
        """
        await self.publish_nowait(msgs, content_type=content_type).wait()

    def publish_nowait(
        self,
        msgs: Sequence[Outgoing | tuple[str, bytes, int, bool]],
        *,
        content_type: str | None = "application/json",
    ) -> Published:
        """Publish ``msgs`` in order now (written to the socket before this returns, as far
        as the in-flight window allows); :meth:`Published.wait` waits for their PUBACKs.

        Raises a retryable :class:`ConnectorError` at once when the link is down; other
        errors as :meth:`publish_many`, from ``wait``.
        """
        self._check()
        assert self._loop is not None
        props = None
        if self._v5 and content_type:
            props = Properties(PacketTypes.PUBLISH)
            props.ContentType = content_type
        out = Published(self)
        try:
            for i, (topic, payload, qos, retain) in enumerate(msgs):
                info = self._client.publish(
                    topic, payload, qos=qos, retain=retain, properties=props
                )
                if info.rc != paho.MQTT_ERR_SUCCESS:
                    self._check()
                    raise ConnectorError(
                        self.where,
                        f"publish #{i} on {topic!r}: {paho.error_string(info.rc)}",
                        retryable=True,
                    )
                # paho runs in this loop: the PUBACK cannot come before this is registered
                fut = self._loop.create_future()
                self._pubacks[info.mid] = fut
                out.topics.append(topic)
                out.waiting.append(fut)
                out.mids.append(info.mid)
        except BaseException:
            out.forget()
            raise
        finally:
            self._io.flush()
        return out

    async def close(self, graceful_payload: bytes | None = None) -> None:
        """Publish ``graceful_payload`` retained on the Will's topic if given, then disconnect cleanly.

        A clean DISCONNECT makes the broker discard the Will. Idempotent; a
        failure of the final publish is logged, not raised.
        """
        if self._closed:
            return
        if graceful_payload is not None and self._will is not None and self._lost is None:
            try:
                await self.publish_many([Outgoing(self._will.topic, graceful_payload, 1, True)])
            except ConnectorError as exc:
                log.warning("%s: final status not published: %s", self.where, exc.message)
        self._closed = True
        await _close_after_opening(self._opening, self._io)


class Published:
    """Messages handed to the broker by :meth:`MqttLink.publish_nowait`; ``wait`` for the PUBACKs."""

    def __init__(self, link: MqttLink) -> None:
        self.link = link
        self.topics: list[str] = []
        self.waiting: list[asyncio.Future[tuple[int, str]]] = []
        self.mids: list[int] = []

    def forget(self) -> None:
        for mid in self.mids:
            self.link._pubacks.pop(mid, None)
        for fut in self.waiting:
            if fut.done() and not fut.cancelled():
                fut.exception()  # retrieved: a lost link fails them all, we raise once

    async def wait(self) -> None:
        """Return once every message was acknowledged; raises as :meth:`MqttLink.publish_many`."""
        link = self.link
        if not self.waiting:
            return
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*self.waiting), link.cfg.publish_timeout_s
            )
        except TimeoutError:
            missing = sum(not f.done() for f in self.waiting)
            reason = (
                f"no PUBACK for {missing} of {len(self.waiting)} messages within "
                f"{link.cfg.publish_timeout_s} s"
            )
            link._set_lost(reason)
            raise ConnectorError(link.where, reason, retryable=True) from None
        finally:
            self.forget()
        refused = {i: text for i, (code, text) in enumerate(results) if code >= 0x80}
        if refused:
            raise PublishRefusedError(link.where, refused, self.topics)


def _resolve(futures: dict[int, asyncio.Future[Any]], mid: int, value: Any) -> None:
    fut = futures.get(mid)
    if fut is not None and not fut.done():
        fut.set_result(value)
