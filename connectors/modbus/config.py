"""Configuration of the Modbus input connector (pydantic v2, unknown keys are errors).

A source polls one or more devices over Modbus TCP or RTU. Each device lists
``points`` polled every ``poll_interval`` and ``triggers``: a result-ready
bit/register that, when set, makes the source read a block of points as one
part and write an acknowledgement back. See ``sample.yaml`` for an example.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator

__all__ = [
    "REGISTER_COUNT",
    "SOURCE_CONFIG",
    "AckConfig",
    "DataType",
    "DeviceConfig",
    "ModbusSourceConfig",
    "PointConfig",
    "ReadyConfig",
    "RtuTransport",
    "TcpTransport",
    "TriggerConfig",
    "WordOrder",
    "is_bit_function",
]

DataType = Literal["bool", "int16", "uint16", "int32", "uint32", "int64", "float32", "float64"]
WordOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]

#: Registers (16-bit words) each data type occupies; ``bool`` is one bit.
REGISTER_COUNT: dict[str, int] = {
    "bool": 1,
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "int64": 4,
    "float64": 4,
}

_READ_FUNCTIONS = {
    "coils": 1,
    "coil": 1,
    "discrete_inputs": 2,
    "discrete_input": 2,
    "holding": 3,
    "holding_registers": 3,
    "input": 4,
    "input_registers": 4,
}
_WRITE_FUNCTIONS = {"coil": 5, "register": 6, "holding": 6}


def _read_function(v: object) -> object:
    if isinstance(v, str):
        key = v.strip().lower()
        if key in _READ_FUNCTIONS:
            return _READ_FUNCTIONS[key]
        if key.isdigit():
            return int(key)
        raise ValueError(
            f"unknown read function {v!r} (coils, discrete_inputs, holding, input or 1-4)"
        )
    return v


def _write_function(v: object) -> object:
    if isinstance(v, str):
        key = v.strip().lower()
        if key in _WRITE_FUNCTIONS:
            return _WRITE_FUNCTIONS[key]
        if key.isdigit():
            return int(key)
        raise ValueError(f"unknown write function {v!r} (coil, register or 5/6)")
    return v


# The JSON Schema (editors) must accept the names too, which the before-validators map.
ReadFunction = Annotated[
    Literal[1, 2, 3, 4],
    BeforeValidator(_read_function),
    WithJsonSchema({"enum": [1, 2, 3, 4, *_READ_FUNCTIONS]}),
]
WriteFunction = Annotated[
    Literal[5, 6],
    BeforeValidator(_write_function),
    WithJsonSchema({"enum": [5, 6, *_WRITE_FUNCTIONS]}),
]
Address = Annotated[int, Field(ge=0, le=65535)]


def is_bit_function(function: int) -> bool:
    """True for the bit functions (1 coils, 2 discrete inputs), False for registers."""
    return function in (1, 2)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TcpTransport(_Model):
    """Modbus TCP: a host and port."""

    type: Literal["tcp"] = Field(description="Transport kind.")
    host: str = Field(description="Device host name or IP address.", min_length=1)
    port: int = Field(502, ge=1, le=65535, description="TCP port (502 is the Modbus default).")


class RtuTransport(_Model):
    """Modbus RTU over a serial line."""

    type: Literal["rtu"] = Field(description="Transport kind.")
    port: str = Field(description="Serial device path, e.g. /dev/ttyUSB0.", min_length=1)
    baudrate: int = Field(19200, gt=0, description="Bits per second.")
    parity: Literal["N", "E", "O"] = Field("N", description="Parity: N(one), E(ven), O(dd).")
    stopbits: Literal[1, 2] = Field(1, description="Stop bits.")
    bytesize: Literal[7, 8] = Field(8, description="Data bits per character.")


class PointConfig(_Model):
    """One value read from the device, emitted as samples with binding ``id``."""

    id: str = Field(min_length=1, description="Binding id (characteristic id or context tag).")
    function: ReadFunction = Field(
        description="Read function: coils (1), discrete_inputs (2), holding (3), input (4)."
    )
    address: Address = Field(description="Zero-based address of the first register/bit.")
    data_type: DataType | None = Field(
        None,
        description="Value type; default bool for coils/discrete inputs, uint16 for registers.",
    )
    order: WordOrder = Field(
        "ABCD",
        description="Byte order: ABCD big-endian, CDAB word-swapped, BADC byte-swapped, DCBA both.",
    )
    scale: float = Field(1.0, description="Engineering value = raw * scale + offset.")
    offset: float = Field(0.0, description="Added after scaling.")
    plausible_min: float | None = Field(
        None, description="Lowest plausible engineering value; below it the sample is bad."
    )
    plausible_max: float | None = Field(
        None, description="Highest plausible engineering value; above it the sample is bad."
    )

    @property
    def dtype(self) -> str:
        """The data type, with the default for the function filled in."""
        if self.data_type is not None:
            return self.data_type
        return "bool" if is_bit_function(self.function) else "uint16"

    @property
    def count(self) -> int:
        """Registers (or bits) this point occupies."""
        return REGISTER_COUNT[self.dtype]

    @model_validator(mode="after")
    def _check(self) -> PointConfig:
        bits = is_bit_function(self.function)
        if bits and self.dtype != "bool":
            raise ValueError(
                f"data_type: {self.dtype} cannot be read with a bit function "
                f"({self.function}); use holding (3) or input (4)"
            )
        if not bits and self.dtype == "bool":
            raise ValueError("data_type: bool needs a bit function (coils 1 or discrete_inputs 2)")
        if self.address + self.count - 1 > 65535:
            raise ValueError(
                f"address: {self.dtype} at {self.address} needs {self.count} registers "
                "and runs past 65535"
            )
        if (
            self.plausible_min is not None
            and self.plausible_max is not None
            and self.plausible_min > self.plausible_max
        ):
            raise ValueError("plausible_min is greater than plausible_max")
        return self


class ReadyConfig(_Model):
    """The result-ready flag a trigger watches."""

    function: ReadFunction = Field(description="Read function of the flag (1-4).")
    address: Address = Field(description="Address of the flag bit/register.")
    value: int = Field(1, ge=0, le=65535, description="Value that means a result is ready.")


class AckConfig(_Model):
    """The acknowledgement written after a block was read."""

    function: WriteFunction = Field(description="Write function: coil (5) or register (6).")
    address: Address = Field(description="Address of the ack coil/register.")
    value: int = Field(1, ge=0, le=65535, description="Value written as acknowledgement.")
    reset: int | None = Field(
        0,
        ge=0,
        le=65535,
        description="Written once the ready flag clears again (null: never written).",
    )


class TriggerConfig(_Model):
    """Result-ready handshake: ready set → read block → emit one part → write ack."""

    name: str = Field(min_length=1, description="Name used in logs and status texts.")
    ready: ReadyConfig
    block: list[PointConfig] = Field(min_length=1, description="Points read as one part.")
    ack: AckConfig
    serial_point: str | None = Field(
        None,
        description="Id of a block point holding the part serial; it goes into `serial` "
        "of every sample of the part and is not emitted itself.",
    )

    @model_validator(mode="after")
    def _check(self) -> TriggerConfig:
        if self.serial_point is not None and self.serial_point not in {p.id for p in self.block}:
            raise ValueError(f"serial_point: {self.serial_point!r} is not an id in block")
        return self


class DeviceConfig(_Model):
    """One Modbus device (a unit behind a TCP address or on a serial line)."""

    name: str = Field(min_length=1, description="Device name used in logs and errors.")
    transport: Annotated[TcpTransport | RtuTransport, Field(discriminator="type")]
    unit_id: int = Field(
        1,
        ge=0,
        le=255,
        description="Modbus unit/device id (1-247 on serial lines; TCP gateways may use 0 or 255).",
    )
    timeout: float = Field(1.0, gt=0, description="Seconds to wait for a response.")
    retries: int = Field(1, ge=0, le=10, description="Retries of a request that timed out.")
    poll_interval: float = Field(1.0, gt=0, description="Seconds between polls of `points`.")
    pacing: float = Field(
        0.0, ge=0, description="Minimum seconds between two requests to this device."
    )
    max_registers_per_request: int = Field(
        125, ge=1, le=125, description="Most registers one read request may ask for."
    )
    max_bits_per_request: int = Field(
        2000, ge=1, le=2000, description="Most coils/discrete inputs one read request may ask for."
    )
    max_gap: int = Field(
        0,
        ge=0,
        le=124,
        description="Unused registers/bits a request may read through to merge two points "
        "(0: only adjacent points; gaps may be unmapped on the device).",
    )
    reconnect_min: float = Field(0.5, gt=0, description="First reconnect delay ceiling (s).")
    reconnect_max: float = Field(30.0, gt=0, description="Reconnect delay cap (s).")
    points: list[PointConfig] = Field(default_factory=list, description="Polled points.")
    triggers: list[TriggerConfig] = Field(
        default_factory=list, description="Result-ready handshakes."
    )

    def limit(self, function: int) -> int:
        """Most registers/bits one request of ``function`` may ask for."""
        return (
            self.max_bits_per_request
            if is_bit_function(function)
            else self.max_registers_per_request
        )

    @model_validator(mode="after")
    def _check(self) -> DeviceConfig:
        if not self.points and not self.triggers:
            raise ValueError("points: a device needs points or triggers")
        groups = [("points", self.points)] + [
            (f"triggers.{i}.block", t.block) for i, t in enumerate(self.triggers)
        ]
        for key, points in groups:
            for j, p in enumerate(points):
                if p.count > self.limit(p.function):
                    raise ValueError(
                        f"{key}.{j}.data_type: {p.dtype} needs {p.count} registers, more than "
                        f"max_registers_per_request={self.max_registers_per_request}"
                    )
        if self.reconnect_min > self.reconnect_max:
            raise ValueError("reconnect_min is greater than reconnect_max")
        return self


class ModbusSourceConfig(_Model):
    """The Modbus source: a list of devices, each polled by its own task."""

    devices: list[DeviceConfig] = Field(min_length=1, description="Devices to poll.")

    @model_validator(mode="after")
    def _check(self) -> ModbusSourceConfig:
        seen: dict[str, str] = {}
        names: set[str] = set()
        # Devices on one serial port share the port: same line settings, distinct units.
        ports: dict[str, int] = {}
        units: dict[str, set[int]] = {}
        for i, dev in enumerate(self.devices):
            if dev.name in names:
                raise ValueError(f"devices.{i}.name: {dev.name!r} is used twice")
            names.add(dev.name)
            t = dev.transport
            if isinstance(t, RtuTransport):
                first = ports.setdefault(t.port, i)
                if self.devices[first].transport != t:
                    raise ValueError(
                        f"devices.{i}.transport: shares serial port {t.port} with "
                        f"devices.{first} but its serial settings differ"
                    )
                if dev.unit_id in units.setdefault(t.port, set()):
                    raise ValueError(
                        f"devices.{i}.unit_id: unit {dev.unit_id} on {t.port} is used twice"
                    )
                units[t.port].add(dev.unit_id)
            keyed = [(f"devices.{i}.points.{j}.id", p.id) for j, p in enumerate(dev.points)]
            for t_i, trig in enumerate(dev.triggers):
                keyed += [
                    (f"devices.{i}.triggers.{t_i}.block.{j}.id", p.id)
                    for j, p in enumerate(trig.block)
                ]
            for key, pid in keyed:
                if pid in seen:
                    raise ValueError(f"{key}: binding id {pid!r} is already used at {seen[pid]}")
                seen[pid] = key
        return self


#: The model the gateway loader validates a ``kind: modbus`` source section with.
SOURCE_CONFIG = ModbusSourceConfig
