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
    """Twenty distinct configs (levels differ per config: per-config σ slots, lookup tables)."""
    configs = [
        rules.resolve_rules(
            ["N1", "N2", "N4", "N5", "N7", "N8"] if i % 2 else ["N3", "N6", "WE4"],
            {"N2": {"run": 2 + i}, "N5": {"level": 1 + i / 10}, "N6": {"m": 3 + i % 5, "k": 2}},
        )
        for i in range(20)
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


def test_ascending_runs_of_indices_and_permutations_agree():
    """An ascending run of indices is stepped as a slice, anything else is gathered: same masks."""
    rng = np.random.default_rng(13)
    K, T = 30, 50
    cfgs = [NELSON, WE, rules.resolve_rules("nelson", {"N2": {"run": 7}, "N7": {"run": 12}})] * 10
    x = _random_block(rng, T, K)
    centre = rng.choice([-1.0, 0.0, 1.0], (T, K))
    sigma = rng.choice([0.5, 1.0, 2.0], (T, K))
    banks = [rules.RuleBank(cfgs) for _ in range(3)]
    got = np.zeros((3, T, K), dtype=np.uint32)
    for t in range(T):
        args = (x[t], centre[t], sigma[t], centre[t] - 3 * sigma[t], centre[t] + 3 * sigma[t])
        got[0, t] = banks[0].step(np.arange(K), *args)
        lo, hi = np.arange(0, 11), np.arange(11, K)
        got[1, t, lo] = banks[1].step(lo, *(a[lo] for a in args))
        got[1, t, hi] = banks[1].step(hi, *(a[hi] for a in args))
        perm = rng.permutation(K)
        got[2, t, perm] = banks[2].step(perm, *(a[perm] for a in args))
    assert (got[0] == got[1]).all() and (got[0] == got[2]).all()
    for k in range(K):
        args = (x[:, k], centre[:, k], sigma[:, k], centre[:, k] - 3 * sigma[:, k])
        want = rules.evaluate(*args, centre[:, k] + 3 * sigma[:, k], cfgs[k])
        assert got[0, :, k].tolist() == want.tolist()


def test_configs_a_weighted_or_cannot_separate_use_lookup_tables():
    """A test that is WE3 for one config and N6 for another, which gets N6 elsewhere."""
    other = rules.resolve_rules(["N6", "WE3"], {"N6": {"level": 1.5}})
    cfgs = [NELSON, other] * 4
    bank = rules.RuleBank(cfgs)
    rng = np.random.default_rng(17)
    x = _random_block(rng, 60, len(cfgs))
    got = np.array([bank.step(slice(None), x[t], 0.0, 1.0, -3.0, 3.0) for t in range(60)])
    assert bank._prog is not None and bank._prog.groups  # the table path ran
    for k, cfg in enumerate(cfgs):
        assert got[:, k].tolist() == rules.evaluate(x[:, k], 0.0, 1.0, -3.0, 3.0, cfg).tolist()


def test_wide_steps_equal_batch():
    """Steps wider than the spelled-out constants (broadcast columns instead)."""
    K = rules._SPELL_MAX + 100
    rng = np.random.default_rng(19)
    cfgs = [NELSON, WE, rules.resolve_rules("nelson", {"N6": {"level": 1.5}})] * (K // 3 + 1)
    cfgs = cfgs[:K]
    x = _random_block(rng, 25, K)
    bank = rules.RuleBank(cfgs)
    perm = rng.permutation(K)
    got = np.zeros((25, K), dtype=np.uint32)
    for t in range(25):
        if t % 2:
            got[t] = bank.step(slice(None), x[t], 0.0, 1.0, -3.0, 3.0)
        else:
            got[t, perm] = bank.step(perm, x[t, perm], 0.0, 1.0, -3.0, 3.0)
    for k in rng.choice(K, 150, replace=False).tolist():
        assert got[:, k].tolist() == rules.evaluate(x[:, k], 0.0, 1.0, -3.0, 3.0, cfgs[k]).tolist()


def test_reset_after_every_window_is_full():
    """Counts saturate at 64 (the bank then skips them); a reset must still restart N7's window."""
    n7 = rules.resolve_rules(["N7"])
    bank = rules.RuleBank([n7, n7])
    for _ in range(70):
        bank.step(slice(None), [0.5, 0.5], 0.0, 1.0, -3.0, 3.0)
    bank.reset([0])
    out = [bank.step(slice(None), [0.5, 0.5], 0.0, 1.0, -3.0, 3.0).tolist() for _ in range(15)]
    assert [o[0] for o in out] == [0] * 14 + [1 << 6]
    assert [o[1] for o in out] == [1 << 6] * 15
    assert bank.carry(0).count == 15 and bank.carry(1).count == 64


def test_one_point_program_with_lookup_tables_and_saturated_counts():
    """The one-point program (``_OnePoint``) where configs give one test different codes (the
    masks come from per-config lookup tables) and after every count reached the window cap
    (the within rules then take every history bit): equal to the array program throughout."""
    a = rules.resolve_rules(["N5", "WE2", "N7"], {"WE2": {"m": 3, "k": 2, "level": 1.5}})
    b = rules.resolve_rules(["WE2", "N7"])  # WE2 here is N5's test of config a
    cfgs = [a, b, a]
    one, arr = rules.RuleBank(cfgs), rules.RuleBank(cfgs)
    rng = np.random.default_rng(7)
    z = rng.choice([0.2, -0.3, 0.8, 1.7, -1.7, 2.3, -2.4], size=(3, 160))
    z[:, 40:70] = 0.1  # a long run within 1σ: N7
    fired = set()
    for t in range(z.shape[1]):
        for i in range(3):
            got = one.step(np.array([i]), np.array([z[i, t]]), 0.0, 1.0, -3.0, 3.0)
            want = arr.step([i], [z[i, t]], 0.0, 1.0, -3.0, 3.0)
            assert got.tolist() == want.tolist(), (t, i)
            fired.add(int(got[0]))
            assert (one._regs == arr._regs).all() and (one._count == arr._count).all()
    assert one._prog.groups and one._prog.one is not None  # the lookup-table path ran
    assert one._sat and arr._sat  # and ran with saturated counts
    hits = rules.violation_indices(np.array(sorted(fired)), ["N5", "WE2", "N7"])
    assert all(hits.values()), hits  # each code fired somewhere
