"""Configuration of the OPC UA input connector (one server endpoint per source)."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "BlockItem",
    "MessageMode",
    "NodeBinding",
    "OpcuaSourceConfig",
    "SecurityPolicy",
    "TimestampChoice",
    "TriggerConfig",
]

# ns=<index>;<type>=<id> or nsu=<uri>;<type>=<id>, or a bare i=/s=/g=/b= in namespace 0.
_NODE_ID = re.compile(r"^(?:(?:ns=\d+|nsu=[^;]+);)?[isgb]=.+$", re.DOTALL)


def _check_node_id(value: str) -> str:
    if not _NODE_ID.match(value):
        raise ValueError(
            f"{value!r} is not an OPC UA node id (expected 'ns=2;s=Line1.Gauge' or 'nsu=urn:x;i=42')"
        )
    return value


class SecurityPolicy(StrEnum):
    """Security policy of the secure channel."""

    NONE = "None"
    BASIC256SHA256 = "Basic256Sha256"


class MessageMode(StrEnum):
    """Message security mode of the secure channel."""

    NONE = "None"
    SIGN = "Sign"
    SIGN_AND_ENCRYPT = "SignAndEncrypt"


class TimestampChoice(StrEnum):
    """Which OPC UA timestamp becomes the sample's time (the other is the fallback, then gateway)."""

    SOURCE = "source"
    SERVER = "server"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeBinding(_Strict):
    """One variable node bound to a binding id (a characteristic id or a context tag name)."""

    id: str = Field(min_length=1, description="Binding id the samples carry (Sample.binding).")
    node: str = Field(description="Node id: 'ns=2;s=Line1.Bore' or 'nsu=urn:plc;s=Line1.Bore'.")
    mode: Literal["subscribe", "poll"] = Field(
        "subscribe", description="'subscribe' (monitored item) or 'poll' (periodic Read)."
    )
    sampling_interval_ms: float = Field(
        100.0, ge=0, description="subscribe: the server samples the value this often (ms)."
    )
    queue_size: int = Field(
        10,
        ge=2,
        description=(
            "subscribe: monitored-item queue on the server; > 1 so several changes within one "
            "publishing interval each arrive as a sample."
        ),
    )
    deadband: float | None = Field(
        None,
        ge=0,
        description=(
            "subscribe: absolute deadband; None (default) = every write is a sample, even an "
            "identical value (two parts measuring the same are two samples)."
        ),
    )
    poll_interval_s: float = Field(1.0, gt=0, description="poll: seconds between reads.")

    @field_validator("node")
    @classmethod
    def _node(cls, v: str) -> str:
        return _check_node_id(v)


class BlockItem(_Strict):
    """One value of an inspection result block."""

    id: str = Field(min_length=1, description="Binding id of this value.")
    node: str = Field(description="Node id of this value.")

    @field_validator("node")
    @classmethod
    def _node(cls, v: str) -> str:
        return _check_node_id(v)


class TriggerConfig(_Strict):
    """A result handshake: ready rises (or an event comes) → read the whole block in one request → ack."""

    id: str = Field(
        min_length=1, description="Name of this trigger (goes to Sample.fields['trigger'])."
    )
    ready_node: str | None = Field(
        None, description="Boolean node the device sets when a result is ready (or use event_node)."
    )
    event_node: str | None = Field(
        None,
        description=(
            "Object whose events (of event_type) each announce a result, e.g. 'i=2253' (Server); "
            "instead of ready_node."
        ),
    )
    event_type: str = Field("i=2041", description="Event type node id (default BaseEventType).")
    block: list[BlockItem] = Field(min_length=1, description="Values read together on ready.")
    ack_node: str | None = Field(
        None,
        description="Node the gateway writes after reading the block (required with ready_node).",
    )
    ack_value: bool | int | float | str = Field(True, description="Value written to ack_node.")
    ack_reset: bool | int | float | str | None = Field(
        None,
        description="Written to ack_node when ready falls again; None leaves resetting to the device.",
    )
    serial_node: str | None = Field(None, description="Optional part serial read with the block.")
    sampling_interval_ms: float = Field(50.0, ge=0, description="Sampling of the ready node (ms).")

    @field_validator("ready_node", "event_node", "event_type", "ack_node", "serial_node")
    @classmethod
    def _nodes(cls, v: str | None) -> str | None:
        return None if v is None else _check_node_id(v)

    @model_validator(mode="after")
    def _one_kind(self) -> TriggerConfig:
        if (self.ready_node is None) == (self.event_node is None):
            raise ValueError("a trigger has either ready_node or event_node")
        if self.ready_node is not None and self.ack_node is None:
            raise ValueError("a ready_node handshake needs ack_node")
        if self.ack_reset is not None and self.ready_node is None:
            raise ValueError("ack_reset applies to ready_node triggers only")
        return self


class OpcuaSourceConfig(_Strict):
    """One OPC UA server endpoint: how to connect, which nodes to read and how."""

    endpoint: str = Field(description="Server URL, e.g. 'opc.tcp://10.0.0.5:4840'.")
    security_policy: SecurityPolicy = Field(
        SecurityPolicy.NONE, description="None or Basic256Sha256."
    )
    security_mode: MessageMode = Field(
        MessageMode.NONE, description="None, Sign or SignAndEncrypt."
    )
    certificate_file: str | None = Field(
        None, description="Client application certificate (DER or PEM); needed with security."
    )
    private_key_file: str | None = Field(None, description="Private key of certificate_file (PEM).")
    server_certificate_file: str | None = Field(
        None, description="Pinned server certificate; when absent it is taken from GetEndpoints."
    )
    application_uri: str = Field(
        "urn:shopspc:gateway",
        description="Client application URI; must match the URI in the client certificate.",
    )
    user_certificate_file: str | None = Field(
        None, description="X.509 user certificate for certificate user authentication."
    )
    user_private_key_file: str | None = Field(None, description="Key of user_certificate_file.")
    username: str | None = Field(None, description="User name for user/password authentication.")
    password_env: str | None = Field(
        None, description="Name of the environment variable holding the password (never the file)."
    )
    timeout_s: float = Field(5.0, gt=0, description="Per-request timeout (seconds).")
    watchdog_interval_s: float = Field(
        1.0, gt=0, description="How often the session is probed to detect a dead connection."
    )
    publishing_interval_ms: float = Field(
        100.0, gt=0, description="Subscription publishing interval (ms)."
    )
    timestamp: TimestampChoice = Field(
        TimestampChoice.SOURCE,
        description="Sample time: 'source' or 'server' timestamp; falls back to the other, then gateway.",
    )
    default_max_nodes_per_read: int = Field(
        100, ge=1, description="Read chunk size when the server publishes no MaxNodesPerRead."
    )
    default_max_monitored_items_per_call: int = Field(
        1000,
        ge=1,
        description="Monitored items per create call when the server publishes no MaxMonitoredItemsPerCall.",
    )
    queue_size: int = Field(
        10_000,
        ge=1,
        description="Gateway-side sample queue; when full the oldest sample is dropped.",
    )
    reconnect_base_s: float = Field(0.5, gt=0, description="Backoff base delay (seconds).")
    reconnect_cap_s: float = Field(30.0, gt=0, description="Backoff cap (seconds).")
    backfill: bool = Field(
        True,
        description=(
            "After a reconnect, read the server's raw history of every subscribed node from just "
            "after the last source timestamp emitted and emit the missed values (fields.backfill) "
            "before the new subscription's."
        ),
    )
    backfill_max_s: float = Field(
        3600.0,
        gt=0,
        description="Backfill reads no further back than this many seconds before the reconnect.",
    )
    backfill_max_values: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="Backfill keeps at most this many values per node (the newest); more = truncated.",
    )
    backfill_timeout_s: float = Field(
        30.0,
        gt=0,
        description=(
            "Bound of one backfill (all nodes); on expiry the nodes not yet read count as failed "
            "and the subscription's values flow."
        ),
    )
    nodes: list[NodeBinding] = Field(
        default_factory=list, description="Subscribed or polled nodes."
    )
    triggers: list[TriggerConfig] = Field(
        default_factory=list, description="Result-ready handshakes."
    )

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        if not v.startswith("opc.tcp://"):
            raise ValueError("endpoint must start with opc.tcp://")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> OpcuaSourceConfig:
        secure = self.security_policy is not SecurityPolicy.NONE
        if secure != (self.security_mode is not MessageMode.NONE):
            raise ValueError(
                "security_policy and security_mode go together: both None, or Basic256Sha256 "
                "with Sign or SignAndEncrypt"
            )
        if secure and not (self.certificate_file and self.private_key_file):
            raise ValueError("a secure channel needs certificate_file and private_key_file")
        if (self.user_certificate_file is None) != (self.user_private_key_file is None):
            raise ValueError("user_certificate_file and user_private_key_file go together")
        if self.password_env and not self.username:
            raise ValueError("password_env without username")
        if not self.backfill:
            stray = sorted(k for k in self.model_fields_set if k.startswith("backfill_"))
            if stray:
                raise ValueError(f"{', '.join(stray)} without backfill: true has no effect")
        elif self.backfill_timeout_s < self.timeout_s:
            raise ValueError(
                f"backfill_timeout_s ({self.backfill_timeout_s:g}) is shorter than timeout_s "
                f"({self.timeout_s:g}): one history request could not finish"
            )
        ids = [n.id for n in self.nodes] + [b.id for t in self.triggers for b in t.block]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"binding ids must be unique, repeated: {', '.join(dupes)}")
        if not ids:
            raise ValueError("configure at least one node or trigger")
        return self


SOURCE_CONFIG = OpcuaSourceConfig
"""The model the gateway config loader validates a ``kind: opcua`` source section with."""
