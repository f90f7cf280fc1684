"""Run rules: rule data, hand-derived edge cases from spc-semantics.md, a slow reference.

Each edge-case test names the line of ``spc-semantics.md`` ("Run rules") it
relies on. :func:`reference` is a deliberately plain per-point implementation
written from the rule wording; the property tests in ``test_rules_properties.py``
compare the vectorised batch and streaming paths with it.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from spc import rules
from spc.errors import SpcInputError

NELSON = rules.resolve_rules("nelson")
WE = rules.resolve_rules("we")


# --------------------------------------------------------------------------- reference


def ref_z(x: float, c: float, s: float) -> float | None:
    """z = (x − CL)/σ; None = missing point. σ = 0: ±inf off the centre, 0 on it."""
    if math.isnan(x) or math.isnan(c) or math.isnan(s) or s < 0:
        return None
    d = x - c
    if math.isnan(d):
        return None
    if s == 0:
        return math.inf if d > 0 else -math.inf if d < 0 else 0.0
    return d / s


def _ref_rule(
    rule: rules.RuleSpec, xs: list[float], zs: list[float], lo: float, hi: float, p: int
) -> bool:
    """Does plotted point p (of values xs, z values zs; limits lo, hi) complete ``rule``?"""
    if rule.kind == "limit":
        return xs[p] > hi or xs[p] < lo
    if rule.kind == "k_of_m":
        lv, k, m = rule.level, rule.k, rule.m
        window = zs[max(0, p - m + 1) : p + 1]
        above = zs[p] > lv and sum(1 for z in window if z > lv) >= k
        below = zs[p] < -lv and sum(1 for z in window if z < -lv) >= k
        return above or below
    L = rule.run
    if p < L - 1:
        return False
    win = zs[p - L + 1 : p + 1]
    if rule.kind == "side":
        return all(z > 0 for z in win) or all(z < 0 for z in win)
    if rule.kind == "within":
        return all(abs(z) <= rule.level for z in win)
    if rule.kind == "beyond_both":
        lv = rule.level
        return (
            all(abs(z) > lv for z in win) and any(z > lv for z in win) and any(z < -lv for z in win)
        )
    # trend / alternate: the L − 1 differences ending at p, on the plotted x values
    signs = []
    for q in range(p - L + 2, p + 1):
        signs.append(1 if xs[q] > xs[q - 1] else -1 if xs[q] < xs[q - 1] else 0)
    if rule.kind == "trend":
        return all(s == 1 for s in signs) or all(s == -1 for s in signs)
    assert rule.kind == "alternate"
    return all(s != 0 for s in signs) and all(
        signs[j] != signs[j - 1] for j in range(1, len(signs))
    )


def reference(x, center, sigma, lcl, ucl, config: rules.RuleConfig) -> list[int]:
    """Per-point masks computed the slow, obvious way (missing points skipped, mask 0)."""
    n = len(x)
    bc = [
        np.broadcast_to(np.asarray(v, dtype=float), (n,)).tolist()
        for v in (center, sigma, lcl, ucl)
    ]
    cs, ss, los, his = bc
    xs = np.asarray(x, dtype=float).tolist()
    idx, px, pz = [], [], []
    for i in range(n):
        z = ref_z(xs[i], cs[i], ss[i])
        if z is not None:
            idx.append(i)
            px.append(xs[i])
            pz.append(z)
    out = [0] * n
    for p, i in enumerate(idx):
        for rule in config.rules:
            if _ref_rule(rule, px, pz, los[i], his[i], p):
                out[i] |= 1 << rules.BITS[rule.code]
    return out


def flagged(x, config=NELSON, center=0.0, sigma=1.0, lcl=-3.0, ucl=3.0) -> dict[str, list[int]]:
    """Violations by code from the batch path, checked against the reference and the bank."""
    x = np.asarray(x, dtype=float)
    cfg = config if isinstance(config, rules.RuleConfig) else rules.resolve_rules(config)
    mask = rules.evaluate(x, center, sigma, lcl, ucl, cfg)
    assert mask.dtype == np.uint32
    assert mask.tolist() == reference(x, center, sigma, lcl, ucl, cfg)
    bank = rules.RuleBank([cfg])
    args = [np.broadcast_to(np.asarray(v, dtype=float), x.shape) for v in (center, sigma, lcl, ucl)]
    streamed = [int(bank.step([0], [x[i]], *(a[i] for a in args))[0]) for i in range(len(x))]
    assert streamed == mask.tolist()
    return rules.violation_indices(mask, cfg.codes)


def only(code: str, **params) -> rules.RuleConfig:
    return rules.resolve_rules([code], {code: params} if params else None)


# --------------------------------------------------------------------------- rule data


def test_codes_bits_and_sets_are_stable():
    """Rules are data with stable codes (CONVENTIONS: "Rules are data with stable codes")."""
    assert list(rules.BITS) == [
        *(f"N{i}" for i in range(1, 9)),
        *(f"WE{i}" for i in range(1, 5)),
        "EWMA",
        "CUSUM_UPPER",
        "CUSUM_LOWER",
    ]
    assert list(rules.BITS.values()) == list(range(15))
    assert rules.RULE_SETS["none"] == ()
    assert rules.resolve_rules("none").codes == ()
    assert NELSON.codes == tuple(f"N{i}" for i in range(1, 9))
    assert WE.codes == ("WE1", "WE2", "WE3", "WE4")
    assert set(rules.RULE_TEXT) == set(rules.BITS)
    assert rules.RULES["N2"].bit == 1 and rules.RULES["WE4"].bit == 11


def test_default_parameters_follow_the_semantics_table():
    """The table of spc-semantics.md "Run rules" gives every default."""
    r = rules.RULES
    assert (r["N2"].kind, r["N2"].run) == ("side", 9)
    assert (r["N3"].kind, r["N3"].run) == ("trend", 6)
    assert (r["N4"].kind, r["N4"].run) == ("alternate", 14)
    assert (r["N5"].k, r["N5"].m, r["N5"].level) == (2, 3, 2.0)
    assert (r["N6"].k, r["N6"].m, r["N6"].level) == (4, 5, 1.0)
    assert (r["N7"].run, r["N7"].level) == (15, 1.0)
    assert (r["N8"].run, r["N8"].level) == (8, 1.0)
    assert (r["WE2"].k, r["WE2"].m, r["WE2"].level) == (2, 3, 2.0)
    assert (r["WE3"].k, r["WE3"].m, r["WE3"].level) == (4, 5, 1.0)
    assert (r["WE4"].kind, r["WE4"].run) == ("side", 8)
    assert r["N1"].kind == r["WE1"].kind == "limit"
    assert r["N1"].run is None and r["N1"].level is None
    assert r["N2"].text == "9 points in a row on the same side of the centre line"
    assert r["N5"].text == "2 of 3 points in a row beyond 2σ, same side"
    assert r["N8"].text == "8 points in a row beyond 1σ, with points on both sides"
    assert rules.RULE_TEXT["N7"] == "15 points in a row within 1σ of the centre line (either side)"


def test_overrides_change_parameters_and_text():
    cfg = rules.resolve_rules(
        ["N2", "N5", "N7"],
        {"N2": {"run": 7}, "N5": {"k": 3, "m": 4.0, "level": 1.5}, "N6": {"k": 1}},
    )
    n2, n5, n7 = cfg.rules
    assert n2.run == 7 and n2.text == "7 points in a row on the same side of the centre line"
    assert (n5.k, n5.m, n5.level) == (3, 4, 1.5)
    assert n5.text == "3 of 4 points in a row beyond 1.5σ, same side"
    assert n7 == rules.RULES["N7"]
    assert cfg.levels == (0.0, 1.0, 1.5)
    assert cfg.bits == (1 << 1) | (1 << 4) | (1 << 6)
    assert cfg.get("N5") is n5 and cfg.get("N3") is None


@pytest.mark.parametrize(
    ("spec", "overrides", "path", "needle"),
    [
        (["N1", "N2", "N9"], None, "rules[2]", "N9"),
        (["N1", "n2"], None, "rules[1]", "n2"),
        (["N1", 3], None, "rules[1]", "3"),
        (["N2", "N2"], None, "rules[1]", "duplicate"),
        ("western", None, "rules", "western"),
        (42, None, "rules", "rule-set"),
        ("nelson", {"N9": {"run": 3}}, "rule_params.N9", "N9"),
        ("nelson", {"N2": 9}, "rule_params.N2", "object"),
        ("nelson", {"N2": {"run": 1}}, "rule_params.N2.run", "2..64"),
        ("nelson", {"N2": {"run": 65}}, "rule_params.N2.run", "2..64"),
        ("nelson", {"N2": {"run": 8.5}}, "rule_params.N2.run", "integer"),
        ("nelson", {"N2": {"run": True}}, "rule_params.N2.run", "integer"),
        ("nelson", {"N2": {"run": "9"}}, "rule_params.N2.run", "integer"),
        ("nelson", {"N2": {"level": 1.0}}, "rule_params.N2.level", "takes run"),
        ("nelson", {"N1": {"run": 3}}, "rule_params.N1.run", "no parameters"),
        ("nelson", {"N5": {"k": 4, "m": 3}}, "rule_params.N5.k", "exceed"),
        ("nelson", {"N5": {"k": 0}}, "rule_params.N5.k", "1..64"),
        ("nelson", {"N5": {"m": 65, "k": 2}}, "rule_params.N5.m", "1..64"),
        ("nelson", {"N6": {"level": 0}}, "rule_params.N6.level", "greater than 0"),
        ("nelson", {"N6": {"level": -1}}, "rule_params.N6.level", "greater than 0"),
        ("nelson", {"N7": {"level": float("nan")}}, "rule_params.N7.level", "finite"),
        ("nelson", {"N8": {"level": float("inf")}}, "rule_params.N8.level", "finite"),
        ("nelson", {"N3": {"steps": 5}}, "rule_params.N3.steps", "takes run"),
    ],
)
def test_resolve_rules_errors_name_the_path(spec, overrides, path, needle):
    with pytest.raises(SpcInputError) as err:
        rules.resolve_rules(spec, overrides)
    assert err.value.path == path
    assert needle in err.value.message


def test_resolve_rules_path_argument_and_passthrough():
    with pytest.raises(SpcInputError) as err:
        rules.resolve_rules(["N1", "X"], path="rules_dispersion")
    assert err.value.path == "rules_dispersion[1]"
    assert rules.resolve_rules(NELSON) is NELSON
    assert rules.resolve_rules(NELSON, {"N2": {"run": 5}}).get("N2").run == 5
    assert rules.resolve_rules(("WE1", "N1")).codes == ("WE1", "N1")
    # an override for a valid code that is not selected is ignored
    assert rules.resolve_rules("we", {"N2": {"run": 5}}) == WE


def test_parameter_limits_are_inclusive():
    assert rules.make_rule("N2", {"run": 2}).run == 2
    assert rules.make_rule("N2", {"run": 64}).run == 64
    assert rules.make_rule("N5", {"k": 64, "m": 64}).k == 64
    assert rules.make_rule("N5", {"k": 1, "m": 1}).m == 1
    assert rules.make_rule("N3", {"run": np.int64(7)}).run == 7
    assert rules.make_rule("N7", {"level": 1e-9}).level == 1e-9


def test_violation_indices_order_and_empty_lists():
    mask = np.array([0, 1 << 1, (1 << 1) | (1 << 12), 1 << 8], dtype=np.uint32)
    got = rules.violation_indices(mask, ["WE1", "N2", "N1", "EWMA"])
    assert list(got) == ["WE1", "N2", "N1", "EWMA"]
    assert got == {"WE1": [3], "N2": [1, 2], "N1": [], "EWMA": [2]}
    assert all(type(i) is int for v in got.values() for i in v)
    with pytest.raises(SpcInputError):
        rules.violation_indices(mask, ["N9"])


# --------------------------------------------------------------------------- standardisation


def test_standardize_sigma_zero_and_missing():
    """spc-semantics "Run rules": z_i = (x_i − CL_i)/σ_i; constant data (σ = 0) is valid."""
    x = np.array([1.0, 2.0, 3.0, np.nan, 2.0, 2.0, 5.0])
    c = np.array([2.0, 2.0, 2.0, 2.0, np.nan, 2.0, 1.0])
    s = np.array([0.0, 0.0, 0.0, 1.0, 1.0, np.nan, -1.0])
    z = rules.standardize(x, c, s)
    assert z[:3].tolist() == [-math.inf, 0.0, math.inf]
    assert np.isnan(z[3:]).all()
    assert rules.standardize(3.0, 1.0, 0.5) == 4.0
    assert rules.standardize(1.0, 1.0, 0.0) == 0.0
    assert rules.standardize(-0.5, 1.0, -0.0) == -math.inf
    assert np.isnan(rules.standardize(1.0, 1.0, -2.0))


# --------------------------------------------------------------------------- edge cases


def test_n1_strict_on_the_limits():
    """Edge 1 "Boundaries are strict" and N1 "x > UCL or x < LCL": a point on UCL is in control."""
    x = [3.0, 3.0000000001, -3.0, -3.0000001, 0.0]
    assert flagged(x, "nelson")["N1"] == [1, 3]
    assert flagged(x, "we")["WE1"] == [1, 3]


def test_n1_uses_the_real_clipped_limits():
    """N1 "(the real, possibly clipped, limits)": a clipped LCL of 0 flags −0.5 even at z = −1.5."""
    got = flagged([-0.5, 0.0, 0.2], center=1.0, sigma=1.0, lcl=0.0, ucl=4.0)
    assert got["N1"] == [0]


def test_nan_limits_never_trigger_n1():
    """N1 with an undefined limit (null): x > NaN and x < NaN are both false."""
    x = [100.0, -100.0, 100.0]
    got = flagged(x, center=0.0, sigma=1.0, lcl=np.nan, ucl=np.nan)
    assert got["N1"] == []
    got = flagged(x, center=0.0, sigma=1.0, lcl=np.nan, ucl=3.0)
    assert got["N1"] == [0, 2]
    got = flagged(x, center=0.0, sigma=1.0, lcl=[np.nan, -3.0, -3.0], ucl=[np.nan, np.nan, 3.0])
    assert got["N1"] == [1, 2]


def test_zone_lines_belong_to_the_inner_zone():
    """Edge 1: "beyond kσ" is z > k or z < −k; a point exactly on a zone line is inner."""
    assert flagged([2.0, 2.0, 2.0, -2.0, -2.0])["N5"] == []
    assert flagged([2.0, 2.0000001])["N5"] == []
    assert flagged([2.0000001, 2.0000001])["N5"] == [1]
    assert flagged([-2.0000001, -2.5])["N5"] == [1]
    assert flagged([1.0] * 6 + [-1.0] * 6)["N6"] == []
    assert flagged([1.5, 1.5, 1.0, 1.5])["N6"] == []
    assert flagged([1.5, 1.5, 1.0, 1.5, 1.5])["N6"] == [4]
    assert flagged([1.0, -1.0] * 5)["N8"] == []
    assert flagged([1.5, -1.5] * 3 + [1.0, -1.5])["N8"] == []


def test_n7_within_is_inclusive():
    """Edge 1: "N7's within 1σ is |z| ≤ 1": 15 points on ±1 lines and the centre line flag."""
    x = [1.0, -1.0, 0.0] * 5
    assert flagged(x)["N7"] == [14]
    x = [1.0, -1.0, 0.0] * 5 + [0.5]
    assert flagged(x)["N7"] == [14, 15]
    x[7] = 1.0000001
    assert flagged(x)["N7"] == []


def test_centre_line_point_breaks_side_runs():
    """Edge 2: "A point exactly on the centre line is on neither side: it breaks N2/WE4 runs"."""
    x = [0.5] * 8 + [0.0] + [0.5] * 8
    assert flagged(x)["N2"] == []
    assert flagged(x, "we")["WE4"] == [7, 16]
    x = [0.5] * 4 + [0.0] + [0.5] * 9
    assert flagged(x)["N2"] == [13]
    x = [-0.5] * 7 + [0.0] + [-0.5] * 8
    assert flagged(x, "we")["WE4"] == [15]


def test_twelve_points_on_one_side_flag_the_last_four():
    """Edge 3: "12 points on one side flag points 9, 10, 11 and 12 for N2" (0-based 8..11)."""
    assert flagged([0.3] * 12)["N2"] == [8, 9, 10, 11]
    assert flagged([-0.3] * 12)["N2"] == [8, 9, 10, 11]
    assert flagged([0.3] * 12, "we")["WE4"] == [7, 8, 9, 10, 11]


def test_side_change_restarts_the_run():
    """Edge 3 "the flagged point is the one that completes the pattern"; sides never mix."""
    x = [0.3] * 5 + [-0.3] * 9
    assert flagged(x)["N2"] == [13]


def test_nothing_resets_after_a_signal():
    """Edge 3: "Nothing resets after a signal": overlapping windows keep flagging."""
    got = flagged([2.5, 2.5, 2.5, 2.5])
    assert got["N5"] == [1, 2, 3]
    assert got["N6"] == [3]
    assert flagged([1, 2, 3, 4, 5, 6, 7, 8])["N3"] == [5, 6, 7]


def test_k_of_m_window_is_cut_short_at_the_start():
    """Edge 4: "two points beyond +2σ at positions 0 and 1 flag position 1"."""
    assert flagged([2.5, 2.5])["N5"] == [1]
    assert flagged([2.5, 2.5], "we")["WE2"] == [1]
    assert flagged([1.5] * 4)["N6"] == [3]
    assert flagged([1.5] * 4, "we")["WE3"] == [3]
    assert flagged([1.5] * 3)["N6"] == []
    assert flagged([2.5])["N5"] == []


def test_k_of_m_flags_only_a_point_beyond_itself():
    """Edge 4: "point i is flagged when it is itself beyond on side s"."""
    assert flagged([2.5, 2.5, 0.0])["N5"] == [1]
    assert flagged([2.5, 0.0, 2.5])["N5"] == [2]
    assert flagged([2.5, 0.0, 0.0, 2.5])["N5"] == []
    assert flagged([1.5, 1.5, 1.5, 0.0, 1.5])["N6"] == [4]
    assert flagged([1.5, 1.5, 1.5, 1.5, 0.0])["N6"] == [3]


def test_k_of_m_other_side_never_counts():
    """Edge 4: "Points on the other side never count"."""
    assert flagged([2.5, -2.5])["N5"] == []
    assert flagged([-2.5, 2.5, -2.5])["N5"] == [2]
    assert flagged([2.5, -2.5, -0.5, 2.5])["N5"] == []
    assert flagged([1.5, 1.5, -1.5, 1.5])["N6"] == []
    assert flagged([1.5, 1.5, -1.5, 1.5, 1.5])["N6"] == [4]
    assert flagged([-1.5, -1.5, 1.5, -1.5, -1.5])["N6"] == [4]


def test_trend_counts_strict_changes_and_ties_break_it():
    """N3 "(5 strict changes)" and edge 5: "A tie breaks a trend (N3)"."""
    assert flagged([1, 2, 3, 4, 5])["N3"] == []
    assert flagged([1, 2, 3, 4, 5, 6])["N3"] == [5]
    assert flagged([6, 5, 4, 3, 2, 1])["N3"] == [5]
    assert flagged([1, 2, 3, 3, 4, 5, 6, 7])["N3"] == []
    assert flagged([1, 2, 3, 3, 4, 5, 6, 7, 8])["N3"] == [8]
    assert flagged([1, 2, 3, 4, 3, 2, 1, 0])["N3"] == []
    assert flagged([1, 2, 3, 4, 3, 2, 1, 0, -1])["N3"] == [8]  # 4 is the first of six falling


def test_alternation_counts_differences_and_ties_break_it():
    """N4 "(13 differences of alternating sign)" and edge 5: a tie breaks an alternation."""
    alt = [0.0, 1.0] * 7
    assert flagged(alt)["N4"] == [13]
    assert flagged(alt[:13])["N4"] == []
    assert flagged([*alt, 0.0, 1.0])["N4"] == [13, 14, 15]
    tie = [*alt[:7], alt[6], *alt[7:]]
    assert flagged(tie)["N4"] == []
    # a run of two ups breaks it too
    broken = [0.0, 1.0, 0.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0]
    assert flagged(broken)["N4"] == []
    assert flagged([*broken, 2.0, 1.0, 2.0])["N4"] == [16]


def test_missing_points_are_skipped():
    """Edge 6: "Missing points are skipped: the series is the plotted points only"."""
    nan = np.nan
    x = [0.5] * 4 + [nan] + [0.5] * 5
    got = flagged(x)
    assert got["N2"] == [9]
    mask = rules.evaluate(x, 0.0, 1.0, -3.0, 3.0, NELSON)
    assert mask[4] == 0
    # the trend compares with the previous plotted point
    assert flagged([1, 2, nan, 3, 4, nan, nan, 5, 6])["N3"] == [8]
    # a NaN σ makes the point missing too, even far beyond the limits
    got = flagged([2.5, 100.0, 2.5], sigma=[1.0, nan, 1.0])
    assert got["N5"] == [2] and got["N1"] == []
    # so does a NaN centre
    got = flagged([2.5, 100.0, 2.5], center=[0.0, nan, 0.0])
    assert got["N5"] == [2] and got["N1"] == []
    assert flagged([nan, nan, nan])["N1"] == []
    assert rules.evaluate([], 0.0, 1.0, -3.0, 3.0, NELSON).shape == (0,)


def test_n8_needs_both_sides():
    """N8 "8 points in a row beyond 1σ, with points on both sides"."""
    assert flagged([1.5] * 10)["N8"] == []
    assert flagged([-1.5] * 10)["N8"] == []
    assert flagged([1.5] * 7 + [-1.5])["N8"] == [7]
    assert flagged([-1.5] + [1.5] * 8)["N8"] == [7]
    assert flagged([1.5, -1.5] + [1.5] * 8)["N8"] == [7, 8]
    assert flagged([1.5, -1.5] * 3 + [0.5, 1.5, -1.5])["N8"] == []


def test_sigma_zero_constant_data():
    """ "Constant data ... are valid" (analyze contract): σ = 0 gives z = ±inf off the centre, 0 on it."""
    got = flagged([5.0] * 16, center=5.0, sigma=0.0, lcl=5.0, ucl=5.0)
    assert got["N7"] == [14, 15]
    assert got["N1"] == got["N2"] == got["N5"] == []
    got = flagged([6.0] * 10, center=5.0, sigma=0.0, lcl=5.0, ucl=5.0)
    assert got["N1"] == list(range(10))
    assert got["N2"] == [8, 9]
    assert got["N5"] == list(range(1, 10))
    assert got["N6"] == list(range(3, 10))
    assert got["N7"] == [] and got["N8"] == []
    got = flagged([4.0, 6.0] * 5, center=5.0, sigma=0.0, lcl=5.0, ucl=5.0)
    assert got["N8"] == [7, 8, 9]
    assert got["N4"] == []


def test_variable_centre_and_sigma_trend_on_x_zones_on_z():
    """ "N3, N4 compare the plotted values x_i themselves"; zones use each point's own CL and σ."""
    x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    centre = [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    got = flagged(x, center=centre, sigma=1.0, lcl=-100.0, ucl=100.0)
    assert got["N3"] == [5]  # x rises although z falls 1, 0, −1, …
    # same x, different σ: z = 2.5 then 5/3 (inside 2σ): no N5
    got = flagged([5.0, 5.0], center=0.0, sigma=[2.0, 3.0], lcl=-100.0, ucl=100.0)
    assert got["N5"] == []
    got = flagged([5.0, 5.0], center=[0.0, 0.5], sigma=2.0, lcl=-100.0, ucl=100.0)
    assert got["N5"] == [1]
    # a falling x can still be above the centre line throughout
    x = [9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]
    got = flagged(x, center=[8.5 - i for i in range(9)], sigma=1.0, lcl=-100.0, ucl=100.0)
    assert got["N2"] == [8] and got["N3"] == [5, 6, 7, 8]


def test_configurable_parameters():
    """Minitab-style K values: every run, k, m and level is a parameter."""
    assert flagged([0.3] * 4, only("N2", run=3))["N2"] == [2, 3]
    assert flagged([1, 2, 3], only("N3", run=3))["N3"] == [2]
    assert flagged([1, 2, 1, 2], only("N4", run=3))["N4"] == [2, 3]
    assert flagged([1, 2, 2, 1], only("N4", run=2))["N4"] == [1, 3]
    assert flagged([1.6, 1.6, 1.6], only("N5", k=3, m=3, level=1.5))["N5"] == [2]
    assert flagged([1.5, 1.5, 1.5], only("N5", k=3, m=3, level=1.5))["N5"] == []
    assert flagged([0.6, 0.0, 0.0, 0.6], only("N6", k=2, m=4, level=0.5))["N6"] == [3]
    assert flagged([2.5, 0, 0, 0, 0, 2.5], only("N6", k=1, m=1, level=2))["N6"] == [0, 5]
    assert flagged([1.9, -1.9, 0.0], only("N7", run=3, level=2))["N7"] == [2]
    assert flagged([2.1, -2.1, 2.1], only("N8", run=3, level=2))["N8"] == [2]
    assert flagged([0.3] * 8, only("WE4", run=7))["WE4"] == [6, 7]


def test_run_of_64_needs_its_full_length():
    """A run needs its full length (no cut short), up to the 64-point maximum."""
    assert flagged([0.3] * 63, only("N2", run=64))["N2"] == []
    assert flagged([0.3] * 66, only("N2", run=64))["N2"] == [63, 64, 65]
    assert flagged([0.5] * 70, only("N7", run=64))["N7"] == list(range(63, 70))
    assert flagged(list(range(70)), only("N3", run=64))["N3"] == list(range(63, 70))
    assert flagged([0.0, 1.0] * 35, only("N4", run=64))["N4"] == list(range(63, 70))
    x = [2.5] + [0.0] * 62 + [2.5]
    assert flagged(x, only("N5", k=2, m=64))["N5"] == [63]
    assert flagged([2.5, *x], only("N5", k=2, m=64))["N5"] == [1, 64]


def test_phase_two_continues_the_windows():
    """Phase I/II: "Run-rule windows continue across the Phase I/II boundary"."""
    x = np.array([0.5] * 5 + [0.5] * 4 + [2.5, 2.5, -0.2])
    whole = rules.evaluate(x, 0.0, 1.0, -3.0, 3.0, NELSON)
    first = rules.evaluate_with_carry(x[:5], 0.0, 1.0, -3.0, 3.0, NELSON)
    rest = rules.evaluate_with_carry(x[5:], 0.0, 1.0, -3.0, 3.0, NELSON, first.carry)
    assert np.concatenate((first.mask, rest.mask)).tolist() == whole.tolist()
    assert rules.violation_indices(rest.mask, ["N2", "N5"]) == {"N2": [3, 4, 5], "N5": [5]}
    assert rest.carry.count == len(x)
    assert json.loads(json.dumps(rest.carry.to_dict())) == rest.carry.to_dict()
    assert rules.RuleCarry.from_dict(rest.carry.to_dict()) == rest.carry


def test_carry_must_keep_the_levels_the_config_needs():
    carry = rules.evaluate_with_carry([0.5, 1.5], 0.0, 1.0, -3.0, 3.0, WE).carry
    assert carry.levels == (0.0, 1.0, 2.0)
    with pytest.raises(SpcInputError) as err:
        rules.evaluate_with_carry([0.5], 0.0, 1.0, -3.0, 3.0, only("N7", level=1.5), carry)
    assert err.value.path == "carry"
    # a config needing fewer levels is fine
    rules.evaluate_with_carry([0.5], 0.0, 1.0, -3.0, 3.0, only("N2"), carry)


def test_input_shapes_are_checked():
    with pytest.raises(SpcInputError) as err:
        rules.evaluate([1.0, 2.0], [0.0, 0.0, 0.0], 1.0, -3.0, 3.0, NELSON)
    assert err.value.path == "center"
    with pytest.raises(SpcInputError):
        rules.evaluate([[1.0]], 0.0, 1.0, -3.0, 3.0, NELSON)
    # a spec instead of a config is resolved
    assert rules.evaluate([4.0], 0.0, 1.0, -3.0, 3.0, "we").tolist() == [1 << 8]


# --------------------------------------------------------------------------- longer series


def _random_series(rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
    z = rng.choice([-3.5, -2.5, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.5], n)
    drift = np.repeat(rng.normal(0, 0.7, n // 50 + 1), 50)[:n]  # long runs off centre
    z = np.where(rng.random(n) < 0.5, z, np.round(drift * 2) / 2)
    center = rng.integers(-2, 3, n).astype(float)
    sigma = rng.choice([0.5, 1.0, 2.0], n)
    x = center + z * sigma
    x[rng.random(n) < 0.02] = np.nan
    sigma[rng.random(n) < 0.01] = np.nan
    sigma[rng.random(n) < 0.01] = 0.0
    lcl = center - 3 * sigma
    ucl = center + 3 * sigma
    return x, center, sigma, lcl, ucl


@pytest.mark.parametrize("chunk", [64, 128, 640, 1 << 16])
def test_batch_matches_reference_across_chunk_boundaries(chunk):
    rng = np.random.default_rng(chunk)
    cfg = rules.resolve_rules(
        [*NELSON.codes, *WE.codes],
        {"N2": {"run": 5}, "N7": {"run": 6, "level": 1.5}, "N8": {"run": 4}},
    )
    args = _random_series(rng, 3000)
    want = reference(*args, cfg)
    mask, _ = rules._evaluate(
        *args, cfg, None, False, chunk=chunk, word_chunk=chunk // 64 + 1, cuts_min=0
    )
    assert mask.tolist() == want
    got = rules.evaluate_with_carry(*args, cfg)
    assert got.mask.tolist() == want


@pytest.mark.parametrize("chunk", [64, 192])
def test_dense_violations_across_chunks(chunk):
    """Constant data on the centre line flags N7 at almost every point (dense bit scatter)."""
    n = 1000
    x = np.full(n, 3.0)
    mask, _ = rules._evaluate(x, 3.0, 0.0, 3.0, 3.0, NELSON, None, False, chunk=chunk, word_chunk=2)
    assert np.flatnonzero(mask).tolist() == list(range(14, n))
    assert set(mask[14:].tolist()) == {1 << 6}


@pytest.mark.parametrize(
    "bad",
    [
        {},
        {"levels": [0.0], "pos": [], "neg": [], "up": 0, "down": 0, "count": 1},
        {"levels": ["x"], "pos": [1], "neg": [1], "up": 0, "down": 0, "count": 1},
    ],
)
def test_carry_from_dict_rejects_garbage(bad):
    with pytest.raises(SpcInputError) as err:
        rules.RuleCarry.from_dict(bad)
    assert err.value.path == "carry"
