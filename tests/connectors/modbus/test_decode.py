"""Pure decoding and planning: known vectors, round trips for every type and order, planner invariants."""

from __future__ import annotations

import itertools
import math
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.client import AsyncModbusTcpClient

from connectors.modbus.decode import (
    CHECK_ABOVE,
    CHECK_BELOW,
    CHECK_GOOD,
    CHECK_NOT_FINITE,
    BlockDecoder,
    PlanItem,
    check_values,
    decode_many,
    decode_value,
    encode_value,
    plan_requests,
)

ORDERS = ["ABCD", "CDAB", "BADC", "DCBA"]
INT_RANGES = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**53), 2**53),  # exact in float64
}
WORDS = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "int64": 4, "float32": 2, "float64": 4}


def test_float32_orders_known_vector() -> None:
    # 123.456 as float32 is 0x42F6E979: bytes A=42 B=F6 C=E9 D=79.
    assert encode_value(123.456, "float32", "ABCD") == [0x42F6, 0xE979]
    assert encode_value(123.456, "float32", "CDAB") == [0xE979, 0x42F6]
    assert encode_value(123.456, "float32", "BADC") == [0xF642, 0x79E9]
    assert encode_value(123.456, "float32", "DCBA") == [0x79E9, 0xF642]
    for order, regs in [
        ("ABCD", [0x42F6, 0xE979]),
        ("CDAB", [0xE979, 0x42F6]),
        ("BADC", [0xF642, 0x79E9]),
        ("DCBA", [0x79E9, 0xF642]),
    ]:
        assert decode_value(regs, "float32", order) == pytest.approx(123.456, rel=1e-6)


def test_int16_and_uint16() -> None:
    assert decode_value([0xFFFF], "int16") == -1
    assert decode_value([0xFFFF], "uint16") == 65535
    assert decode_value([0x0100], "uint16", "BADC") == 1
    assert decode_value([0x0100], "uint16", "CDAB") == 256  # word swap is a no-op on one word


def test_int64_word_swap_reverses_all_words() -> None:
    regs = encode_value(0x0102030405060708, "int64", "ABCD")
    assert regs == [0x0102, 0x0304, 0x0506, 0x0708]
    assert encode_value(0x0102030405060708, "int64", "CDAB") == [0x0708, 0x0506, 0x0304, 0x0102]
    assert encode_value(0x0102030405060708, "int64", "DCBA") == [0x0807, 0x0605, 0x0403, 0x0201]


def test_encode_rejects_out_of_range() -> None:
    with pytest.raises(ValueError):
        encode_value(70000, "uint16")
    with pytest.raises(ValueError):
        encode_value(-1, "uint32")


@pytest.mark.parametrize("dtype", list(WORDS))
@pytest.mark.parametrize("word_order", ["big", "little"])
def test_agrees_with_pymodbus_convert_from_registers(dtype: str, word_order: str) -> None:
    """Our ABCD/CDAB equal pymodbus's word_order big/little for every type it knows."""
    order = "ABCD" if word_order == "big" else "CDAB"
    rng = np.random.default_rng(7)
    dt = getattr(AsyncModbusTcpClient.DATATYPE, dtype.upper())
    for _ in range(50):
        regs = [int(x) for x in rng.integers(0, 65536, WORDS[dtype])]
        theirs = AsyncModbusTcpClient.convert_from_registers(regs, dt, word_order=word_order)
        ours = decode_value(regs, dtype, order)
        if isinstance(theirs, float) and math.isnan(theirs):
            assert math.isnan(ours)
        else:
            assert ours == float(theirs)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("dtype", list(INT_RANGES))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_integer_round_trip(dtype: str, order: str, data: st.DataObject) -> None:
    lo, hi = INT_RANGES[dtype]
    value = data.draw(st.integers(lo, hi))
    regs = encode_value(value, dtype, order)
    assert len(regs) == WORDS[dtype]
    assert all(0 <= r <= 0xFFFF for r in regs)
    assert decode_value(regs, dtype, order) == value


@pytest.mark.parametrize("order", ORDERS)
@settings(max_examples=80, deadline=None)
@given(value=st.floats(width=32, allow_nan=False))
def test_float32_round_trip(order: str, value: float) -> None:
    assert decode_value(encode_value(value, "float32", order), "float32", order) == value


@pytest.mark.parametrize("order", ORDERS)
@settings(max_examples=80, deadline=None)
@given(value=st.floats(allow_nan=False))
def test_float64_round_trip(order: str, value: float) -> None:
    assert decode_value(encode_value(value, "float64", order), "float64", order) == value


@pytest.mark.parametrize("order", ORDERS)
def test_nan_decodes_to_nan(order: str) -> None:
    regs = encode_value(math.nan, "float32", order)
    assert math.isnan(decode_value(regs, "float32", order))


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(width=32, allow_nan=False), min_size=1, max_size=20),
    order=st.sampled_from(ORDERS),
)
def test_decode_many_equals_one_at_a_time(values: list[float], order: str) -> None:
    regs: list[int] = []
    offsets = []
    for v in values:
        offsets.append(len(regs))
        regs += [*encode_value(v, "float32", order), 0xDEAD]  # a gap word between values
    many = decode_many(regs, offsets, "float32", order)
    assert many.tolist() == [decode_value(regs[o : o + 2], "float32", order) for o in offsets]


def test_block_decoder_mixed_types() -> None:
    regs = [0] * 12
    regs[0:2] = encode_value(-5, "int32", "CDAB")
    regs[2:4] = encode_value(2.5, "float32", "ABCD")
    regs[4] = encode_value(42, "uint16", "BADC")[0]
    regs[6:10] = encode_value(1.0e100, "float64", "DCBA")
    dec = BlockDecoder(
        100,
        [100, 102, 104, 106],
        ["int32", "float32", "uint16", "float64"],
        ["CDAB", "ABCD", "BADC", "DCBA"],
    )
    assert dec.decode(regs).tolist() == [-5.0, 2.5, 42.0, 1.0e100]


def test_bits_decode() -> None:
    assert decode_many([0, 1, 1, 0], [1, 3], "bool", "ABCD").tolist() == [1.0, 0.0]


def test_check_values_scale_offset_and_flags() -> None:
    raw = np.array([10.0, 1.0, math.inf, math.nan, -3.0])
    checked = check_values(
        raw,
        scale=np.array([0.1, 1.0, 1.0, 1.0, 1.0]),
        offset=np.array([1.0, 0.0, 0.0, 0.0, 0.0]),
        low=np.array([-math.inf, -math.inf, -math.inf, 0.0, 0.0]),
        high=np.array([math.inf, 0.5, math.inf, 1.0, 1.0]),
    )
    assert checked.values[0] == pytest.approx(2.0)
    assert checked.codes.tolist() == [
        CHECK_GOOD,
        CHECK_ABOVE,
        CHECK_NOT_FINITE,
        CHECK_NOT_FINITE,
        CHECK_BELOW,
    ]


# -- planner ---------------------------------------------------------------------------


def test_plan_merges_neighbours_and_splits_on_limit() -> None:
    items = [PlanItem(3, 0, 2), PlanItem(3, 2, 2), PlanItem(3, 4, 1), PlanItem(3, 10, 1)]
    reqs = plan_requests(items, lambda f: 5, max_gap=0)
    assert [(r.address, r.count, r.members) for r in reqs] == [(0, 5, (0, 1, 2)), (10, 1, (3,))]
    reqs = plan_requests(items, lambda f: 4, max_gap=0)
    assert [(r.address, r.count) for r in reqs] == [(0, 4), (4, 1), (10, 1)]
    reqs = plan_requests(items, lambda f: 125, max_gap=5)
    assert [(r.address, r.count) for r in reqs] == [(0, 11)]


def test_plan_separates_functions() -> None:
    items = [PlanItem(3, 0, 1), PlanItem(4, 1, 1), PlanItem(1, 0, 1), PlanItem(3, 1, 1)]
    reqs = plan_requests(items, lambda f: 125)
    assert [(r.function, r.address, r.count) for r in reqs] == [(1, 0, 1), (3, 0, 2), (4, 1, 1)]


def test_plan_rejects_item_longer_than_limit() -> None:
    with pytest.raises(ValueError):
        plan_requests([PlanItem(3, 0, 4)], lambda f: 2)


items_strategy = st.lists(
    st.builds(
        PlanItem,
        function=st.sampled_from([1, 2, 3, 4]),
        address=st.integers(0, 400),
        count=st.sampled_from([1, 2, 4]),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(items=items_strategy, limit=st.integers(4, 130), max_gap=st.integers(0, 10))
def test_plan_covers_every_item_once_within_limit(
    items: list[PlanItem], limit: int, max_gap: int
) -> None:
    reqs = plan_requests(items, lambda f: limit if f > 2 else limit * 2, max_gap)
    covered = sorted(m for r in reqs for m in r.members)
    assert covered == list(range(len(items)))
    for r in reqs:
        assert 1 <= r.count <= (limit if r.function > 2 else limit * 2)
        for m in r.members:
            it = items[m]
            assert it.function == r.function
            assert r.address <= it.address
            assert it.address + it.count <= r.address + r.count
    # Requests of one function never overlap, so no register is read twice.
    for f in (1, 2, 3, 4):
        spans = sorted((r.address, r.address + r.count) for r in reqs if r.function == f)
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end <= start


@settings(max_examples=200, deadline=None)
@given(items=items_strategy, limit=st.integers(4, 130))
def test_plan_is_minimal_for_adjacent_runs(items: list[PlanItem], limit: int) -> None:
    """With an unlimited gap the plan needs no more requests than a lower bound suggests."""
    reqs = plan_requests(items, lambda f: limit, max_gap=65535)
    for f in (1, 2, 3, 4):
        mine = [it for it in items if it.function == f]
        if not mine:
            continue
        span = max(it.address + it.count for it in mine) - min(it.address for it in mine)
        n = sum(1 for r in reqs if r.function == f)
        # Each request except the last one is more than limit - 4 wide (items are ≤ 4 long).
        assert n <= 1 + span // max(1, limit - 3)


def test_struct_sanity() -> None:
    # The float32 test vector above is what struct says.
    assert struct.pack(">f", 123.456).hex() == "42f6e979"
