"""RuleBank: memory, characteristics added and reset, missing points, persistence."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spc import rules
from spc.errors import SpcInputError

NELSON = rules.resolve_rules("nelson")
WE = rules.resolve_rules("we")


def feed(bank: rules.RuleBank, i: int, xs, center=0.0, sigma=1.0, lcl=-3.0, ucl=3.0) -> list[int]:
    return [int(bank.step([i], [x], center, sigma, lcl, ucl)[0]) for x in xs]


def test_state_is_about_77_bytes_per_characteristic():
    """Memory target: rule state ~100 bytes per characteristic (CONVENTIONS "Hot paths are arrays")."""
    K = 1000
    bank = rules.RuleBank([NELSON] * K)
    assert bank.nbytes / K == 77
    mixed = rules.RuleBank([NELSON, WE, "none", ["N1", "N3", "N4"]] * 250)
    assert mixed.nbytes / K == 77
    assert len(mixed) == K


def test_step_broadcasts_scalars_and_keeps_characteristics_apart():
    bank = rules.RuleBank([NELSON, NELSON])
    for _ in range(8):
        out = bank.step([0, 1], [0.5, -0.5], 0.0, 1.0, -3.0, 3.0)
        assert out.tolist() == [0, 0]
    out = bank.step([1, 0], [-0.5, 0.5], 0.0, 1.0, -3.0, 3.0)
    assert out.tolist() == [1 << 1, 1 << 1]
    out = bank.step(np.array([1]), np.array([3.5]), 0.0, 1.0, -3.0, 3.0)
    assert out.tolist() == [1 << 0]


def test_missing_point_changes_nothing():
    """Edge 6 "Missing points are skipped": NaN x, centre or σ leave the state untouched."""
    bank = rules.RuleBank([NELSON])
    feed(bank, 0, [0.5, 1.5, 2.5])
    before = bank.state_dict()
    assert bank.step([0], [np.nan], 0.0, 1.0, -3.0, 3.0).tolist() == [0]
    assert bank.step([0], [9.0], np.nan, 1.0, -3.0, 3.0).tolist() == [0]
    assert bank.step([0], [9.0], 0.0, np.nan, -3.0, 3.0).tolist() == [0]
    assert bank.state_dict() == before
    assert feed(bank, 0, [2.5]) == [1 << 4]  # N5 continues across the gaps


def test_extend_with_more_levels_keeps_existing_histories():
    bank = rules.RuleBank([["N2"]])
    assert bank.nbytes == 8 * 4 + 13
    feed(bank, 0, [0.5] * 8)
    new = bank.extend([rules.resolve_rules(["N5", "N6", "N7", "N8"], {"N7": {"level": 0.5}})])
    assert new.tolist() == [1]
    assert feed(bank, 0, [0.5]) == [1 << 1]
    assert feed(bank, 1, [2.5, 2.5]) == [0, 1 << 4]


def test_rule_using_different_levels_per_characteristic():
    """The same code at different levels in different configs (per-row history columns)."""
    custom = rules.resolve_rules("nelson", {"N6": {"level": 1.5}, "N5": {"level": 1.0}})
    bank = rules.RuleBank([NELSON, custom])
    xs = [1.2, 1.2, 1.2, 1.2, 1.6, 1.6, 1.6, 1.6]
    want0 = rules.evaluate(xs, 0.0, 1.0, -3.0, 3.0, NELSON).tolist()
    want1 = rules.evaluate(xs, 0.0, 1.0, -3.0, 3.0, custom).tolist()
    assert want0 != want1
    got = [bank.step([0, 1], [x, x], 0.0, 1.0, -3.0, 3.0).tolist() for x in xs]
    assert [g[0] for g in got] == want0
    assert [g[1] for g in got] == want1


def test_reset_starts_the_windows_afresh():
    bank = rules.RuleBank([NELSON, NELSON])
    feed(bank, 0, [0.5] * 8)
    feed(bank, 1, [0.5] * 8)
    bank.reset([0])
    assert feed(bank, 0, [0.5]) == [0]
    assert feed(bank, 1, [0.5]) == [1 << 1]
    assert bank.carry(0).count == 1 and bank.carry(1).count == 9


def test_carry_round_trip_through_extend():
    x = [0.5, -1.5, 2.5, 2.5, 1.0, 3.0]
    bank = rules.RuleBank([WE])
    feed(bank, 0, x)
    carry = bank.carry(0)
    assert carry == rules.evaluate_with_carry(x, 0.0, 1.0, -3.0, 3.0, WE).carry
    (j,) = bank.extend([WE], [carry])
    assert bank.carry(j) == carry
    with pytest.raises(SpcInputError) as err:
        bank.extend([WE, rules.resolve_rules(["N7"], {"N7": {"level": 0.7}})], [None, carry])
    assert err.value.path == "carries[1]"
    with pytest.raises(SpcInputError):
        bank.extend([WE], [carry, carry])


def test_state_dict_is_json_and_restores():
    bank = rules.RuleBank([NELSON, WE, "none"])
    feed(bank, 0, [0.5, 1.5, -2.5, 2.5])
    feed(bank, 1, [0.5, 2.5])
    state = json.loads(json.dumps(bank.state_dict()))
    assert state["last_x"] == [2.5, 2.5, None]
    again = rules.RuleBank.from_state([NELSON, WE, "none"], state)
    assert again.state_dict() == bank.state_dict()
    binary = rules.RuleBank.from_bytes([NELSON, WE, "none"], bank.to_bytes())
    assert binary.state_dict() == bank.state_dict()


def test_restore_with_changed_config():
    """A run-length change keeps the history; a new σ level needs strict=False (fresh start)."""
    bank = rules.RuleBank([NELSON, NELSON])
    feed(bank, 0, [0.5] * 6)
    feed(bank, 1, [0.5] * 6)
    state = bank.state_dict()
    shorter = rules.resolve_rules("nelson", {"N2": {"run": 7}})
    other = rules.resolve_rules("nelson", {"N7": {"level": 1.5}})
    fewer = rules.resolve_rules(["N2", "N5"])
    restored = rules.RuleBank.from_state([shorter, fewer], state)
    assert feed(restored, 0, [0.5]) == [1 << 1]
    assert feed(restored, 1, [0.5, 0.5, 0.5]) == [0, 0, 1 << 1]
    with pytest.raises(SpcInputError) as err:
        rules.RuleBank.from_state([NELSON, other], state)
    assert err.value.path == "state.levels[1]"
    lenient = rules.RuleBank.from_state([NELSON, other], state, strict=False)
    assert lenient.carry(0).count == 6 and lenient.carry(1).count == 0
    with pytest.raises(SpcInputError):
        rules.RuleBank.from_bytes([NELSON, other], bank.to_bytes())


def test_restore_rejects_foreign_state():
    bank = rules.RuleBank([NELSON])
    with pytest.raises(SpcInputError):
        rules.RuleBank.from_state([NELSON], {"format": "x", "version": 1})
    with pytest.raises(SpcInputError) as err:
        rules.RuleBank.from_state([NELSON, NELSON], bank.state_dict())
    assert err.value.path == "state.levels"
    with pytest.raises(SpcInputError):
        rules.RuleBank.from_bytes([NELSON], b"not an npz")
    with pytest.raises(SpcInputError):
        rules.RuleBank.from_bytes([NELSON, NELSON], bank.to_bytes())


def test_many_characteristics_in_one_round_equal_batch():
    rng = np.random.default_rng(7)
    K, T = 300, 60
    cfgs = [NELSON, WE, rules.resolve_rules(["N3", "N4", "N7"], {"N7": {"run": 5}})] * (K // 3)
    z = rng.choice([-2.5, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.5, 3.5], (T, K))
    x = np.round(z + np.cumsum(rng.normal(0, 0.3, (T, K)), axis=0), 1)
    x[rng.random((T, K)) < 0.03] = np.nan
    bank = rules.RuleBank(cfgs)
    order = np.arange(K)
    got = np.empty((T, K), dtype=np.uint32)
    for t in range(T):
        rng.shuffle(order)
        got[t, order] = bank.step(order, x[t, order], 0.0, 1.0, -3.0, 3.0)
    for k in range(K):
        assert got[:, k].tolist() == rules.evaluate(x[:, k], 0.0, 1.0, -3.0, 3.0, cfgs[k]).tolist()


def _random_block(rng: np.random.Generator, T: int, K: int) -> np.ndarray:
    z = rng.choice([-2.5, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.5, 3.5], (T, K))
    x = np.round(z + np.cumsum(rng.normal(0, 0.3, (T, K)), axis=0), 1)
    x[rng.random((T, K)) < 0.03] = np.nan
    return x


def test_many_distinct_configs_use_per_characteristic_tables():
    """More distinct configs than the grouping limit: one program, per-characteristic tables."""
    configs = [
        rules.resolve_rules(
            ["N1", "N2", "N4", "N5", "N7", "N8"] if i % 2 else ["N3", "N6", "WE4"],
            {"N2": {"run": 2 + i}, "N5": {"level": 1 + i / 10}, "N6": {"m": 3 + i % 5, "k": 2}},
        )
        for i in range(rules._GROUP_MAX + 4)
    ]
    K = len(configs) * 3
    cfgs = configs * 3
    rng = np.random.default_rng(11)
    x = _random_block(rng, 50, K)
    bank = rules.RuleBank(cfgs)
    got = np.empty((50, K), dtype=np.uint32)
    order = np.arange(K)
    for t in range(50):
        rng.shuffle(order)
        got[t, order] = bank.step(order, x[t, order], 0.0, 1.0, -3.0, 3.0)
    for k in range(K):
        assert got[:, k].tolist() == rules.evaluate(x[:, k], 0.0, 1.0, -3.0, 3.0, cfgs[k]).tolist()


def test_slices_select_characteristics_without_gathering():
    rng = np.random.default_rng(5)
    K, T = 40, 40
    cfgs = [NELSON, WE] * (K // 2)
    x = _random_block(rng, T, K)
    bank = rules.RuleBank(cfgs)
    got = np.zeros((T, K), dtype=np.uint32)
    for t in range(T):
        if t % 3 == 0:
            got[t] = bank.step(slice(None), x[t], 0.0, 1.0, -3.0, 3.0)
        else:
            got[t, 1::2] = bank.step(slice(1, None, 2), x[t, 1::2], 0.0, 1.0, -3.0, 3.0)
            got[t, 0::2] = bank.step(slice(0, K, 2), x[t, 0::2], 0.0, 1.0, -3.0, 3.0)
    for k in range(K):
        assert got[:, k].tolist() == rules.evaluate(x[:, k], 0.0, 1.0, -3.0, 3.0, cfgs[k]).tolist()


def test_adding_a_config_with_more_levels_midstream():
    rng = np.random.default_rng(9)
    x = _random_block(rng, 30, 2)
    bank = rules.RuleBank([NELSON])
    first = [int(bank.step([0], x[t, :1], 0.0, 1.0, -3.0, 3.0)[0]) for t in range(15)]
    wide = rules.resolve_rules("nelson", {"N7": {"level": 0.5}, "N8": {"level": 1.5}})
    bank.extend([wide])
    rest = [bank.step([0, 1], x[t], 0.0, 1.0, -3.0, 3.0).tolist() for t in range(15, 30)]
    whole0 = rules.evaluate(x[:, 0], 0.0, 1.0, -3.0, 3.0, NELSON).tolist()
    assert first + [r[0] for r in rest] == whole0
    assert [r[1] for r in rest] == rules.evaluate(x[15:, 1], 0.0, 1.0, -3.0, 3.0, wide).tolist()


def test_empty_step_and_empty_bank():
    bank = rules.RuleBank([])
    assert bank.step([], [], 0.0, 1.0, -3.0, 3.0).shape == (0,)
    assert bank.nbytes == 0 and bank.state_dict()["regs"] == []
    bank = rules.RuleBank([NELSON])
    assert bank.step(np.array([], dtype=int), [], 0.0, 1.0, -3.0, 3.0).shape == (0,)
