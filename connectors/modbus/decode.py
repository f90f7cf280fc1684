"""Registers to values and the request planner: pure functions, no pymodbus, no I/O.

Byte orders name where the bytes of a value sit in the registers as received,
for a 32-bit value with bytes A (most significant) … D:

* ``ABCD`` big-endian, the Modbus default: registers ``[AB, CD]``;
* ``CDAB`` word-swapped (little-endian word order): ``[CD, AB]``;
* ``BADC`` byte-swapped within each word: ``[BA, DC]``;
* ``DCBA`` fully little-endian: ``[DC, BA]``.

64-bit values follow the same rule over four registers (word swap reverses all
four words); 16-bit values are only affected by the byte swap (``BADC``/``DCBA``).

The planner groups points by function, sorts them by address and merges
neighbours greedily into as few requests as the device's per-request limit and
the allowed gap permit (greedy is optimal for this interval covering problem).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "CHECK_ABOVE",
    "CHECK_BELOW",
    "CHECK_GOOD",
    "CHECK_NOT_FINITE",
    "BlockDecoder",
    "Checked",
    "PlanItem",
    "Request",
    "check_values",
    "decode_many",
    "decode_value",
    "encode_value",
    "plan_requests",
]

_NUMPY: dict[str, str] = {
    "int16": ">i2",
    "uint16": ">u2",
    "int32": ">i4",
    "uint32": ">u4",
    "int64": ">i8",
    "float32": ">f4",
    "float64": ">f8",
}
_STRUCT: dict[str, str] = {
    "int16": ">h",
    "uint16": ">H",
    "int32": ">i",
    "uint32": ">I",
    "int64": ">q",
    "float32": ">f",
    "float64": ">d",
}
_WORDS: dict[str, int] = {
    "bool": 1,
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "int64": 4,
    "float64": 4,
}


def _swaps(order: str) -> tuple[bool, bool]:
    """(word swap, byte swap) for a byte order name."""
    if order not in ("ABCD", "CDAB", "BADC", "DCBA"):
        raise ValueError(f"unknown byte order {order!r}")
    return order in ("CDAB", "DCBA"), order in ("BADC", "DCBA")


def decode_many(
    registers: Sequence[int] | np.ndarray,
    offsets: Sequence[int] | np.ndarray,
    dtype: str,
    order: str,
) -> np.ndarray:
    """Decode one value of ``dtype`` at each of ``offsets`` into ``registers`` (float64 array).

    ``registers`` are 16-bit words as received (for ``bool``: bits, 0/1).
    64-bit integers beyond ±2^53 lose precision in the float64 result.
    """
    regs = np.asarray(registers, dtype=np.int64)
    offs = np.asarray(offsets, dtype=np.intp)
    if dtype == "bool":
        return (regs[offs] != 0).astype(np.float64)
    if dtype not in _NUMPY:
        raise ValueError(f"unknown data type {dtype!r}")
    n = _WORDS[dtype]
    words = regs[offs[:, None] + np.arange(n)] & 0xFFFF
    word_swap, byte_swap = _swaps(order)
    if word_swap:
        words = words[:, ::-1]
    if byte_swap:
        words = ((words >> 8) | (words << 8)) & 0xFFFF
    raw = np.ascontiguousarray(words, dtype=">u2").tobytes()
    return np.frombuffer(raw, dtype=_NUMPY[dtype]).astype(np.float64)


def decode_value(registers: Sequence[int], dtype: str, order: str = "ABCD") -> float:
    """Decode one value from the registers it occupies (a convenience over :func:`decode_many`)."""
    return float(decode_many(registers, [0], dtype, order)[0])


def encode_value(value: float, dtype: str, order: str = "ABCD") -> list[int]:
    """The registers that hold ``value`` as ``dtype`` in ``order`` (inverse of :func:`decode_value`).

    Raises ValueError when an integer value does not fit the type.
    """
    if dtype == "bool":
        return [1 if value else 0]
    if dtype not in _STRUCT:
        raise ValueError(f"unknown data type {dtype!r}")
    code = _STRUCT[dtype]
    try:
        packed = struct.pack(code, value if dtype.startswith("float") else int(value))
    except struct.error as exc:
        raise ValueError(f"{value!r} does not fit {dtype}: {exc}") from None
    words = [int.from_bytes(packed[i : i + 2], "big") for i in range(0, len(packed), 2)]
    word_swap, byte_swap = _swaps(order)
    if byte_swap:
        words = [((w >> 8) | (w << 8)) & 0xFFFF for w in words]
    if word_swap:
        words.reverse()
    return words


CHECK_GOOD = 0
CHECK_NOT_FINITE = 1
CHECK_BELOW = 2
CHECK_ABOVE = 3


@dataclass(frozen=True)
class Checked:
    """Engineering values and a per-value check code (``CHECK_*``)."""

    values: np.ndarray
    codes: np.ndarray


def check_values(
    raw: np.ndarray, scale: np.ndarray, offset: np.ndarray, low: np.ndarray, high: np.ndarray
) -> Checked:
    """Scale and offset raw values, then flag non-finite and implausible ones.

    ``low``/``high`` are the plausible range per value (±inf when unset). The
    values keep their (scaled) number even when flagged, for status texts.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        values = raw * scale + offset
        codes = np.full(values.shape, CHECK_GOOD, dtype=np.int8)
        codes[values < low] = CHECK_BELOW
        codes[values > high] = CHECK_ABOVE
    codes[~np.isfinite(values)] = CHECK_NOT_FINITE
    return Checked(values, codes)


@dataclass(frozen=True)
class PlanItem:
    """Something to read: ``count`` registers/bits at ``address`` with read ``function``."""

    function: int
    address: int
    count: int


@dataclass(frozen=True)
class Request:
    """One read request and the indices (into the planned items) of the items it covers."""

    function: int
    address: int
    count: int
    members: tuple[int, ...]


def plan_requests(
    items: Sequence[PlanItem], limit: Callable[[int], int], max_gap: int = 0
) -> list[Request]:
    """Merge items into as few requests as possible, in (function, address) order.

    Items of the same function are merged while the merged span stays within
    ``limit(function)`` and the unread gap between neighbours is at most
    ``max_gap``; overlapping items share a request. Every item lands in exactly
    one request. Raises ValueError when a single item is longer than its limit.
    """
    order = sorted(range(len(items)), key=lambda i: (items[i].function, items[i].address))
    requests: list[Request] = []
    cur_fn = cur_start = cur_end = -1
    members: list[int] = []

    def close() -> None:
        if members:
            requests.append(Request(cur_fn, cur_start, cur_end - cur_start, tuple(members)))

    for i in order:
        it = items[i]
        lim = limit(it.function)
        if it.count < 1 or it.count > lim:
            raise ValueError(f"item {i} needs {it.count} registers, the limit is {lim}")
        end = it.address + it.count
        if (
            members
            and it.function == cur_fn
            and it.address - cur_end <= max_gap
            and max(cur_end, end) - cur_start <= lim
        ):
            cur_end = max(cur_end, end)
            members.append(i)
            continue
        close()
        cur_fn, cur_start, cur_end, members = it.function, it.address, end, [i]
    close()
    return requests


class BlockDecoder:
    """Decodes the registers of one request into values for its members, a group at a time.

    Built once per planned request: members with the same type and order are
    decoded together by :func:`decode_many`.
    """

    def __init__(
        self,
        start: int,
        addresses: Sequence[int],
        dtypes: Sequence[str],
        orders: Sequence[str],
    ) -> None:
        groups: dict[tuple[str, str], list[int]] = {}
        for j, key in enumerate(zip(dtypes, orders, strict=True)):
            groups.setdefault(key, []).append(j)
        self.size = len(addresses)
        self._groups = [
            (
                dtype,
                order,
                np.asarray(idx, dtype=np.intp),
                np.asarray([addresses[j] - start for j in idx], dtype=np.intp),
            )
            for (dtype, order), idx in groups.items()
        ]

    def decode(self, registers: Sequence[int] | np.ndarray) -> np.ndarray:
        """Raw values (float64) for every member, in member order."""
        regs = np.asarray(registers, dtype=np.int64)
        out = np.empty(self.size, dtype=np.float64)
        for dtype, order, idx, offs in self._groups:
            out[idx] = decode_many(regs, offs, dtype, order)
        return out
