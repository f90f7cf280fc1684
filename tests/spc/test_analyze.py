"""shopspc analyze: contracts/analyze.md request validation and response shape."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spc.analyze import analyze_json, loads_request, parse_request
from spc.constants import d2
from spc.errors import SpcInputError
from tests.data.pistonrings import PHASE1, PHASE2

IMR = {"chart": "imr", "data": [2, 4, 6, 4, 2, 4, 6, 4]}


def _strict_json(obj) -> dict:
    """Round-trip through JSON refusing NaN/Infinity: numbers must be plain JSON or null."""
    return json.loads(json.dumps(obj, allow_nan=False))


def _err(body) -> SpcInputError:
    with pytest.raises(SpcInputError) as info:
        analyze_json(body)
    return info.value


# --------------------------------------------------------------------------- validation

BAD = [
    ([], "", "expected an object"),
    ({"chart": "pareto", "data": [1]}, "chart", "unknown chart"),
    ({"chart": "imr"}, "data", "missing"),
    ({"chart": "imr", "data": []}, "data", "must not be empty"),
    ({"chart": "imr", "data": 5}, "data", "expected a list"),
    ({"chart": "imr", "data": [1, "2", 3]}, "data[1]", "expected a number"),
    ({"chart": "imr", "data": [1, True, 3]}, "data[1]", "expected a number"),
    ({"chart": "imr", "data": [1.0]}, "data", "two values"),
    ({"chart": "xbar-r", "data": [[1], [2], [3]]}, "data", "two or more"),
    ({"chart": "xbar-r", "data": [1, 2, 3]}, "data", "subgroups"),
    ({"chart": "xbar-r", "data": [[1, 2], [3, "x"]]}, "data[1][1]", "expected a number"),
    ({"chart": "xbar-r", "data": [[1, 2], 3]}, "data[1]", "expected a list"),
    ({"chart": "p", "data": [1, 2]}, "sizes", "required"),
    ({"chart": "p", "data": [1, 2], "sizes": [10]}, "sizes", "one size per point"),
    ({"chart": "p", "data": [1, 2], "sizes": [10, 0]}, "sizes[1]", "greater than 0"),
    ({"chart": "u", "data": [1, 2], "sizes": [1.5, -2]}, "sizes[1]", "greater than 0"),
    ({"chart": "c", "data": [1, -2]}, "data[1]", "negative"),
    ({"chart": "c", "data": [1, None]}, "data[1]", "expected a number, got null"),
    ({"chart": "p", "data": [1, 12], "sizes": [10, 10]}, "data[1]", "larger than its sample size"),
    (
        {"chart": "np", "data": [1, 2], "sizes": [10, 10], "phase2": {"data": [11], "sizes": [10]}},
        "phase2.data[0]",
        "larger",
    ),
    (
        {"chart": "np", "data": [1, 2], "sizes": [10, 10], "phase2": {"data": [1]}},
        "phase2.sizes",
        "required",
    ),
    ({"chart": "imr", "data": [1, 2], "phase2": {}}, "phase2.data", "missing"),
    ({"chart": "imr", "data": [1, 2], "phase2": {"data": []}}, "phase2.data", "must not be empty"),
    ({**IMR, "rules": ["N1", "N9"]}, "rules[1]", "unknown rule code"),
    ({**IMR, "rules": "western"}, "rules", "unknown rule set"),
    ({**IMR, "rules_dispersion": ["X1"]}, "rules_dispersion[0]", "unknown rule code"),
    ({**IMR, "sigma_method": "rbar"}, "sigma_method", "unknown sigma_method"),
    (
        {"chart": "xbar-r", "data": [[1, 2], [3, 4]], "sigma_method": "mr"},
        "sigma_method",
        "unknown",
    ),
    ({**IMR, "nsigmas": 0}, "nsigmas", "greater than 0"),
    ({**IMR, "nsigmas": -1}, "nsigmas", "greater than 0"),
    ({**IMR, "known": {"sigma": 0}}, "known.sigma", "greater than 0"),
    ({**IMR, "known": {"sigma": -1}}, "known.sigma", "greater than 0"),
    ({**IMR, "known": {"center": "a"}}, "known.center", "expected a number"),
    ({"chart": "ewma", "data": [1, 2, 3], "ewma": {"lambda": 0}}, "ewma.lambda", "(0, 1]"),
    ({"chart": "ewma", "data": [1, 2, 3], "ewma": {"lambda": 1.5}}, "ewma.lambda", "(0, 1]"),
    ({"chart": "cusum", "data": [1, 2, 3], "cusum": {"h": 0}}, "cusum.h", "greater than 0"),
    ({"chart": "cusum", "data": [1, 2, 3], "cusum": {"k": -0.1}}, "cusum.k", "negative"),
    ({**IMR, "capability": {"lsl": 5, "usl": 5}}, "capability.lsl", "below USL"),
    ({**IMR, "capability": {"lsl": 6, "usl": 5}}, "capability.lsl", "below USL"),
    ({**IMR, "capability": {}}, "capability", "lsl, usl"),
    (
        {
            "chart": "rules",
            "values": [1, 2],
            "center": [0],
            "sigma": [1, 1],
            "lcl": [-3, -3],
            "ucl": [3, 3],
        },
        "center",
        "differs",
    ),
    (
        {"chart": "rules", "values": [1, 2], "center": [0, 0], "sigma": [1, 1], "lcl": [-3, -3]},
        "ucl",
        "missing",
    ),
    ({**IMR, "colour": "red"}, "colour", "unknown key"),
    ({**IMR, "exclude": [99]}, "exclude[0]", "index"),
]


@pytest.mark.parametrize(
    ("body", "path", "message"), BAD, ids=[f"{b[1] or 'body'}:{b[2]}" for b in BAD]
)
def test_bad_requests_name_the_path(body, path: str, message: str) -> None:
    """contracts/analyze.md, Validation: each of these is a bad request naming its path."""
    err = _err(body)
    assert err.path == path
    assert message in err.message


def test_nan_and_infinity_are_not_json() -> None:
    """Non-finite numbers are not JSON: a missing observation is null."""
    for text in ('{"chart": "imr", "data": [1, NaN]}', '{"chart": "imr", "data": [1, Infinity]}'):
        with pytest.raises(SpcInputError, match="not JSON"):
            loads_request(text)
    with pytest.raises(SpcInputError, match="finite"):
        analyze_json({"chart": "imr", "data": [1, 1e400 * 0 if False else 10**400]})


def test_deep_nesting_and_garbage_do_not_crash_the_parser() -> None:
    """Deeply nested or huge input must not crash the parser."""
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(SpcInputError):
        analyze_json(loads_request('{"chart": "imr", "data": ' + deep + "}"))
    with pytest.raises(SpcInputError, match="not valid JSON"):
        loads_request(b"\xff\xfe{")
    with pytest.raises(SpcInputError, match="not valid JSON"):
        loads_request("{")
    big = {"chart": "imr", "data": list(range(200_000))}
    out = analyze_json(big)
    assert len(out["charts"][0]["statistics"]) == 200_000


def test_valid_edge_inputs() -> None:
    """Constant data, missing observations, all-zero counts and a one-sided spec are valid."""
    const = analyze_json({"chart": "imr", "data": [5, 5, 5, 5], "capability": {"usl": 6}})
    assert const["charts"][0]["ucl"] == [5.0] * 4
    assert const["capability"]["Cp"]["value"] is None
    _strict_json(const)
    miss = analyze_json(
        {"chart": "xbar-r", "data": [[1, None, 3], [2, 2, None], [None, None, None]]}
    )
    assert miss["charts"][0]["n"] == [2, 2, 0]
    assert miss["charts"][0]["statistics"][2] is None
    zeros = analyze_json({"chart": "p", "data": [0, 0, 0], "sizes": [10, 10, 10]})
    assert zeros["charts"][0]["center"] == [0.0, 0.0, 0.0]
    one_sided = analyze_json({**IMR, "capability": {"lsl": -10}})
    cap = one_sided["capability"]
    assert cap["Cp"]["value"] is None and cap["Pp"]["value"] is None and cap["Cpm"]["value"] is None
    assert cap["Cpk"]["value"] == cap["Cpl"]["value"]


# --------------------------------------------------------------------------- response


def test_xbar_r_response_shape_piston_rings() -> None:
    """Every per-point array has one entry per plotted point, Phase I then Phase II; 0-based indices."""
    out = _strict_json(
        analyze_json({"chart": "xbar-r", "data": PHASE1, "phase2": {"data": PHASE2}})
    )
    assert out["chart"] == "xbar-r"
    assert out["constants"] == "exact"
    names = [c["name"] for c in out["charts"]]
    assert names == ["xbar", "r"]
    for c in out["charts"]:
        for key in ("statistics", "center", "lcl", "ucl", "sigma", "n"):
            assert len(c[key]) == 40, key
        assert c["estimate"]["method"] == "rbar"
    xbar, r = out["charts"]
    assert list(xbar["violations"]) == ["N1", "N2", "N3", "N4", "N5", "N6", "N7", "N8"]
    assert list(r["violations"]) == ["N1"]  # dispersion charts get rule 1 only by default
    # Hand check from Table 6.4: samples 37-39 (0-based 36-38) have means above the UCL.
    assert xbar["violations"]["N1"] == [36, 37, 38]
    assert round(xbar["estimate"]["center"], 3) == 74.001


def test_imr_response_and_mr_first_point_null() -> None:
    out = _strict_json(analyze_json(IMR))
    x, mr = out["charts"]
    assert (x["name"], mr["name"]) == ("x", "mr")
    assert mr["statistics"][0] is None
    assert x["estimate"] == {"center": 4.0, "sigma": 2.0 / d2(2), "method": "mr"}
    assert x["sigma"][0] == pytest.approx(2.0 / d2(2))


def test_rules_we_on_dispersion_and_rules_dispersion_override() -> None:
    out = analyze_json({**IMR, "rules": "we"})
    assert list(out["charts"][0]["violations"]) == ["WE1", "WE2", "WE3", "WE4"]
    assert list(out["charts"][1]["violations"]) == ["WE1"]
    out = analyze_json({**IMR, "rules_dispersion": ["N1", "N2"]})
    assert list(out["charts"][1]["violations"]) == ["N1", "N2"]
    out = analyze_json({**IMR, "rules": "none"})
    assert out["charts"][0]["violations"] == {}


def test_rule_params_reach_the_rules() -> None:
    """Minitab-style K values: N2 with run 3 flags the third point of a run of three."""
    body = {
        "chart": "rules",
        "values": [1, 1, 1],
        "center": [0] * 3,
        "sigma": [1] * 3,
        "lcl": [-3] * 3,
        "ucl": [3] * 3,
    }
    assert analyze_json({**body, "rules": ["N2"]})["charts"][0]["violations"]["N2"] == []
    got = analyze_json({**body, "rules": ["N2"], "rule_params": {"N2": {"run": 3}}})
    assert got["charts"][0]["violations"]["N2"] == [2]


def test_rules_chart_uses_given_limits() -> None:
    out = analyze_json(
        {
            "chart": "rules",
            "values": [0.5, 3.5, None, 4],
            "center": [0] * 4,
            "sigma": [1] * 4,
            "lcl": [-3] * 4,
            "ucl": [3, 3, 3, None],
        }
    )
    c = out["charts"][0]
    assert c["violations"]["N1"] == [1]  # an undefined (null) limit never triggers N1
    assert c["statistics"][2] is None


def test_ewma_and_cusum_response() -> None:
    data = [10, 10.5, 11, 12, 13, 13, 14]
    e = analyze_json(
        {
            "chart": "ewma",
            "data": data,
            "known": {"center": 10, "sigma": 1},
            "ewma": {"lambda": 0.5, "L": 2},
        }
    )
    c = e["charts"][0]
    assert c["name"] == "ewma" and "ewma" in c
    assert c["ewma"][0] == pytest.approx(10.0)  # 0.5·10 + 0.5·10
    assert c["sigma"][0] == pytest.approx(math.sqrt(0.5 / 1.5 * (1 - 0.25)))
    assert list(c["violations"]) == ["EWMA"]
    # z = 10, 10.25, 10.625, 11.3125; UCL_t = 10 + 2·√(1/3·(1 − 0.25^t)): 11.0, 11.118, 11.146, 11.152
    assert c["violations"]["EWMA"] == [3, 4, 5, 6]
    cu = analyze_json(
        {
            "chart": "cusum",
            "data": data,
            "known": {"center": 10, "sigma": 1},
            "cusum": {"k": 0.5, "h": 4},
        }
    )
    k = cu["charts"][0]
    assert k["cusum_upper"][:4] == pytest.approx([0.0, 0.0, 0.5, 2.0])
    assert all(v <= 0 for v in k["cusum_lower"])
    assert k["violations"]["CUSUM_UPPER"][0] == 4  # 2.0 + 3 − 0.5 = 4.5 > 4
    assert k["violations"]["CUSUM_LOWER"] == []
    sub = analyze_json({"chart": "ewma", "data": PHASE1})
    assert sub["charts"][0]["estimate"]["method"] == "rbar"
    assert sub["charts"][0]["n"][0] == 5


def test_attribute_charts_and_laney() -> None:
    p = analyze_json({"chart": "p", "data": [5, 10, 8], "sizes": [100, 200, 100]})["charts"][0]
    assert p["estimate"]["center"] == pytest.approx(23 / 400)  # ΣD/Σn, never the mean of ratios
    assert p["ucl"][0] != p["ucl"][1]  # stair-step limits
    c = analyze_json({"chart": "c", "data": [3, 5, 4], "sizes": [1, 2, 3]})["charts"][0]
    assert c["center"] == [4.0] * 3  # c ignores sizes
    lp = analyze_json(
        {"chart": "p", "data": [5, 10, 8, 30], "sizes": [100, 200, 100, 300], "laney": True}
    )["charts"][0]
    assert lp["name"] == "p" and lp["estimate"]["method"] == "laney"


def test_exclusions_in_request() -> None:
    out = analyze_json(
        {
            "chart": "imr",
            "data": [1, 2, 100, 3, 4],
            "exclude": [{"index": 2, "reason": "dropped part"}],
        }
    )
    assert out["charts"][0]["estimate"]["center"] == pytest.approx(2.5)
    assert out["excluded"] == [{"index": 2, "reason": "dropped part"}]
    assert out["charts"][0]["statistics"][2] == 100.0


def test_capability_keys_and_stability() -> None:
    out = _strict_json(
        analyze_json(
            {"chart": "xbar-r", "data": PHASE1, "capability": {"lsl": 73.95, "usl": 74.05}}
        )
    )
    cap = out["capability"]
    for key in ("Cp", "Cpl", "Cpu", "Cpk", "Cpm", "Pp", "Ppl", "Ppu", "Ppk"):
        assert set(cap[key]) >= {"value", "lower", "upper"}
    for key in ("sigma_within", "sigma_overall", "expected_ppm_outside", "observed_ppm_outside"):
        assert key in cap
    assert cap["sigma_within"] == pytest.approx(out["charts"][0]["estimate"]["sigma"])
    assert cap["Cp"]["value"] == pytest.approx(0.1 / (6 * cap["sigma_within"]))
    assert cap["stable"] is True
    shifted = [[v + (0.05 if i > 20 else 0) for v in row] for i, row in enumerate(PHASE1)]
    cap2 = analyze_json(
        {"chart": "xbar-r", "data": shifted, "capability": {"lsl": 73.95, "usl": 74.15}}
    )["capability"]
    assert cap2["stable"] is False and "not" in cap2["warning"]


def test_short_run_charts() -> None:
    out = analyze_json(
        {
            "chart": "dnom",
            "data": [1, 2, 3, 10, 12, 11],
            "parts": ["a"] * 3 + ["b"] * 3,
            "nominal": {"a": 2, "b": 11},
        }
    )
    assert out["charts"][0]["statistics"] == [-1.0, 0.0, 1.0, -1.0, 1.0, 0.0]
    assert (
        _err({"chart": "dnom", "data": [1, 2], "parts": ["a", "b"], "nominal": {"a": 1}}).path
        == "nominal"
    )
    z = analyze_json(
        {"chart": "zmr", "data": [1, 2, 3, 10, 12, 11], "parts": ["a"] * 3 + ["b"] * 3}
    )
    assert z["charts"][0]["center"][0] == 0.0 and z["charts"][0]["ucl"][0] == 3.0


def test_parse_request_fills_defaults() -> None:
    req = parse_request(IMR)
    assert req.nsigmas == 3.0 and req.rules == "nelson"
    assert req.ewma == {"lambda": 0.2, "L": 3.0}
    assert req.cusum == {"k": 0.5, "h": 5.0, "head_start": 0.0}


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False)), min_size=2, max_size=60),
    st.sampled_from(["imr", "ewma", "cusum"]),
)
def test_any_valid_individuals_give_strict_json(values, chart) -> None:
    """Whatever the data, the response is plain JSON (no NaN, no Infinity) or a clean bad-request error."""
    try:
        out = analyze_json({"chart": chart, "data": values})
    except SpcInputError as err:
        assert err.path == "data"  # noqa: PT017 - either outcome is valid; only its shape is checked
        return
    _strict_json(out)
    assert all(len(c["statistics"]) == len(values) for c in out["charts"])


def test_big_arrays_are_numpy_free_json() -> None:
    out = analyze_json({"chart": "imr", "data": np.arange(10.0).tolist()})
    assert all(type(v) is float for v in out["charts"][0]["statistics"])


def test_response_carries_frozen_limits_record() -> None:
    """The Phase I estimate comes back as a frozen limits record with a content id (CONVENTIONS habit 4)."""
    from spc.limits import LimitsRecord

    body = {
        "chart": "imr",
        "data": [1, 2, 100, 3, 4],
        "exclude": [{"index": 2, "reason": "dropped part"}],
    }
    rec = analyze_json(body)["limits"]
    assert rec["chart"] == "imr" and rec["method"] == "mr" and rec["n_points"] == 5
    assert rec["exclusions"] == [{"index": 2, "reason": "dropped part"}]
    assert LimitsRecord.from_json(rec).id == rec["id"]
    assert analyze_json(body)["limits"]["id"] == rec["id"]  # deterministic
    assert analyze_json({**body, "nsigmas": 2.5})["limits"]["id"] != rec["id"]
