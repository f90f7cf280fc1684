"""Offline analysis: one JSON request in, one JSON response out (``contracts/analyze.md``).

:func:`parse_request` validates a decoded request and names the path of the
first problem (:class:`~spc.errors.SpcInputError`); :func:`analyze` runs the
same chart, rule and capability code the live engine uses and returns a
plain-JSON response (NaN becomes ``null``). No I/O here: the CLI reads files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spc import rules as rules_mod
from spc.capability import capability as capability_report
from spc.charts import attributes, shortrun
from spc.charts.timeweighted import cusum_series, ewma_series
from spc.charts.variables import (
    IMR_METHODS,
    XBAR_METHODS,
    Known,
    estimate_imr,
    estimate_xbar,
    imr_series,
    subgroup_stats,
    xbar_series,
)
from spc.errors import SpcInputError
from spc.limits import Exclusion, LimitsRecord
from spc.series import ChartSeries, Estimate

__all__ = [
    "CHARTS",
    "AnalyzeRequest",
    "analyze",
    "analyze_json",
    "error_json",
    "loads_request",
    "parse_request",
]

CHARTS = ("imr", "xbar-r", "xbar-s", "p", "np", "c", "u", "ewma", "cusum", "rules", "dnom", "zmr")
VARIABLES = ("imr", "xbar-r", "xbar-s", "ewma", "cusum", "dnom", "zmr")
ATTRIBUTES = ("p", "np", "c", "u")
MAX_POINTS = 10_000_000

_TOP_KEYS = {
    "chart",
    "data",
    "sizes",
    "phase2",
    "known",
    "sigma_method",
    "nsigmas",
    "rules",
    "rules_dispersion",
    "rule_params",
    "ewma",
    "cusum",
    "capability",
    "values",
    "center",
    "sigma",
    "lcl",
    "ucl",
    "exclude",
    "laney",
    "parts",
    "nominal",
    "zmr_sigma",
}


@dataclass
class AnalyzeRequest:
    """A validated request: numpy arrays in place of JSON lists, defaults filled in."""

    chart: str
    data: np.ndarray
    sizes: np.ndarray | None = None
    phase2: np.ndarray | None = None
    phase2_sizes: np.ndarray | None = None
    individuals: bool = True
    known: Known = field(default_factory=Known)
    sigma_method: str | None = None
    nsigmas: float = 3.0
    rules: Any = "nelson"
    rules_dispersion: Any = None
    rule_params: dict[str, dict[str, float]] = field(default_factory=dict)
    ewma: dict[str, float] = field(default_factory=lambda: {"lambda": 0.2, "L": 3.0})
    cusum: dict[str, float] = field(default_factory=lambda: {"k": 0.5, "h": 5.0, "head_start": 0.0})
    capability: dict[str, Any] | None = None
    exclude: dict[int, str] = field(default_factory=dict)
    laney: bool = False
    parts: list[str] | None = None
    phase2_parts: list[str] | None = None
    nominal: dict[str, float] | None = None
    zmr_sigma: str = "by-parts"
    rules_input: dict[str, np.ndarray] | None = None


# ---------------------------------------------------------------- JSON reading


def loads_request(text: str | bytes) -> Any:
    """Decode request JSON, refusing NaN/Infinity and surviving deep nesting."""

    def bad_constant(name: str) -> Any:
        raise SpcInputError("", f"{name} is not JSON: a missing observation is null")

    try:
        return json.loads(text, parse_constant=bad_constant)
    except SpcInputError:
        raise
    except RecursionError:
        raise SpcInputError("", "request is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise SpcInputError("", f"not valid JSON: {exc}") from None


# ---------------------------------------------------------------- validation helpers


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _number(v: Any, path: str, *, allow_null: bool = False) -> float:
    if v is None and allow_null:
        return math.nan
    if not _is_num(v):
        kind = "null" if v is None else type(v).__name__
        raise SpcInputError(path, f"expected a number, got {kind}")
    f = float(v) if abs(v) < 1e308 or isinstance(v, float) else math.inf
    if not math.isfinite(f):
        raise SpcInputError(path, "numbers must be finite")
    return f


def _list(v: Any, path: str, *, nonempty: bool = True) -> list:
    if not isinstance(v, list):
        raise SpcInputError(
            path, f"expected a list, got {'null' if v is None else type(v).__name__}"
        )
    if nonempty and not v:
        raise SpcInputError(path, "must not be empty")
    if len(v) > MAX_POINTS:
        raise SpcInputError(path, f"more than {MAX_POINTS} entries")
    return v


def _object(v: Any, path: str, keys: set[str]) -> dict:
    if not isinstance(v, dict):
        raise SpcInputError(
            path, f"expected an object, got {'null' if v is None else type(v).__name__}"
        )
    for k in v:
        if k not in keys:
            where = f"{path}.{k}" if path else k
            raise SpcInputError(where, f"unknown key (expected one of {', '.join(sorted(keys))})")
    return v


def _numbers(v: Any, path: str, *, allow_null: bool) -> np.ndarray:
    items = _list(v, path)
    return np.array(
        [_number(x, f"{path}[{i}]", allow_null=allow_null) for i, x in enumerate(items)]
    )


def _values_or_subgroups(v: Any, path: str) -> tuple[np.ndarray, bool]:
    """A list of numbers (individuals) or a list of lists (subgroups, NaN-padded)."""
    items = _list(v, path)
    if all(not isinstance(x, list) for x in items):
        return np.array(
            [_number(x, f"{path}[{i}]", allow_null=True) for i, x in enumerate(items)]
        ), True
    rows = []
    for i, sub in enumerate(items):
        sub = _list(sub, f"{path}[{i}]", nonempty=False)
        rows.append([_number(x, f"{path}[{i}][{j}]", allow_null=True) for j, x in enumerate(sub)])
    width = max(1, max(len(r) for r in rows))
    arr = np.full((len(rows), width), np.nan)
    for i, r in enumerate(rows):
        arr[i, : len(r)] = r
    return arr, False


def _sizes(v: Any, path: str, count: int, *, allow_null: bool) -> np.ndarray:
    sizes = _numbers(v, path, allow_null=allow_null)
    if len(sizes) != count:
        raise SpcInputError(path, f"needs one size per point: {count} points, {len(sizes)} sizes")
    bad = np.flatnonzero(sizes <= 0)
    if bad.size:
        raise SpcInputError(f"{path}[{bad[0]}]", "a size must be greater than 0")
    return sizes


def _counts(v: Any, path: str) -> np.ndarray:
    # Attribute charts plot every inspected sample: a count is never missing.
    counts = _numbers(v, path, allow_null=False)
    bad = np.flatnonzero(counts < 0)
    if bad.size:
        raise SpcInputError(f"{path}[{bad[0]}]", "a count cannot be negative")
    return counts


def _rule_spec(v: Any, path: str) -> Any:
    if isinstance(v, str):
        if v not in rules_mod.RULE_SETS:
            raise SpcInputError(
                path, f"unknown rule set {v!r} (none, we, nelson, or a list of codes)"
            )
        return v
    items = _list(v, path, nonempty=False)
    for i, code in enumerate(items):
        if not isinstance(code, str) or code not in rules_mod.RULES:
            raise SpcInputError(f"{path}[{i}]", f"unknown rule code {code!r}")
    return list(items)


# ---------------------------------------------------------------- request


def parse_request(body: Any) -> AnalyzeRequest:
    """Validate a decoded request; raises :class:`SpcInputError` naming the offending path."""
    body = _object(body, "", _TOP_KEYS)
    chart = body.get("chart")
    if chart not in CHARTS:
        raise SpcInputError("chart", f"unknown chart {chart!r} (one of {', '.join(CHARTS)})")
    req = AnalyzeRequest(chart=chart, data=np.empty(0))
    if chart == "rules":
        return _parse_rules_chart(body, req)
    for k in ("values", "center", "sigma", "lcl", "ucl"):
        if k in body:
            raise SpcInputError(k, "only for chart 'rules'")
    if "data" not in body:
        raise SpcInputError("data", "missing")
    _parse_data(body, req)
    _parse_options(body, req)
    _check_estimable(req)
    return req


def _parse_data(body: dict, req: AnalyzeRequest) -> None:
    chart = req.chart
    p2 = None
    if "phase2" in body:
        p2 = _object(body["phase2"], "phase2", {"data", "sizes", "parts"})
        if "data" not in p2:
            raise SpcInputError("phase2.data", "missing")
    if chart in ATTRIBUTES:
        req.data = _counts(body["data"], "data")
        need_sizes = chart != "c"
        if need_sizes and "sizes" not in body:
            raise SpcInputError("sizes", f"required for a {chart} chart")
        if need_sizes:
            req.sizes = _sizes(body["sizes"], "sizes", len(req.data), allow_null=False)
        if p2 is not None:
            req.phase2 = _counts(p2["data"], "phase2.data")
            if need_sizes and "sizes" not in p2:
                raise SpcInputError("phase2.sizes", f"required for a {chart} chart")
            if need_sizes:
                req.phase2_sizes = _sizes(
                    p2["sizes"], "phase2.sizes", len(req.phase2), allow_null=False
                )
        if chart in ("p", "np"):
            for name, d, s in (
                ("data", req.data, req.sizes),
                ("phase2.data", req.phase2, req.phase2_sizes),
            ):
                if d is not None:
                    over = np.flatnonzero(d > s)
                    if over.size:
                        raise SpcInputError(
                            f"{name}[{over[0]}]", "count is larger than its sample size"
                        )
        return
    req.data, req.individuals = _values_or_subgroups(body["data"], "data")
    if p2 is not None:
        req.phase2, ind2 = _values_or_subgroups(p2["data"], "phase2.data")
        if ind2 != req.individuals and chart not in ("imr", "dnom", "zmr"):
            raise SpcInputError(
                "phase2.data", "must have the same shape as data (values or subgroups)"
            )
    if chart in ("imr", "dnom", "zmr"):
        req.data = _as_individuals(req.data, "data")
        if req.phase2 is not None:
            req.phase2 = _as_individuals(req.phase2, "phase2.data")
    elif chart in ("xbar-r", "xbar-s") and req.individuals:
        raise SpcInputError("data", f"{chart} takes a list of subgroups (lists of numbers)")
    if chart in ("dnom", "zmr"):
        req.parts = _parts(body.get("parts"), "parts", len(req.data))
        if p2 is not None:
            req.phase2_parts = _parts(p2.get("parts"), "phase2.parts", len(req.phase2))


def _as_individuals(arr: np.ndarray, path: str) -> np.ndarray:
    if arr.ndim == 1:
        return arr
    out = np.full(len(arr), np.nan)
    for i, row in enumerate(arr):
        present = row[~np.isnan(row)]
        if present.size > 1:
            raise SpcInputError(f"{path}[{i}]", "individual values: each subgroup holds one value")
        if present.size:
            out[i] = present[0]
    return out


def _parts(v: Any, path: str, count: int) -> list[str]:
    if v is None:
        raise SpcInputError(path, "required: the part number of each point")
    items = _list(v, path)
    if len(items) != count:
        raise SpcInputError(path, f"needs one part per point: {count} points, {len(items)} parts")
    for i, p in enumerate(items):
        if not isinstance(p, (str, int)) or isinstance(p, bool):
            raise SpcInputError(f"{path}[{i}]", "a part number is a string or integer")
    return [str(p) for p in items]


def _parse_options(body: dict, req: AnalyzeRequest) -> None:
    chart = req.chart
    if "known" in body:
        k = _object(body["known"], "known", {"center", "sigma"})
        center = None if k.get("center") is None else _number(k["center"], "known.center")
        sigma = None if k.get("sigma") is None else _number(k["sigma"], "known.sigma")
        if sigma is not None and sigma <= 0:
            raise SpcInputError("known.sigma", "must be greater than 0")
        if center is not None and chart in ("p",) and not 0 <= center <= 1:
            raise SpcInputError("known.center", "p̄ must lie in [0, 1]")
        if center is not None and chart in ("np", "c", "u") and center < 0:
            raise SpcInputError("known.center", "must not be negative")
        req.known = Known(center=center, sigma=sigma)
    if "sigma_method" in body:
        m = body["sigma_method"]
        allowed = {"imr": IMR_METHODS, "xbar-r": XBAR_METHODS, "xbar-s": XBAR_METHODS}.get(chart)
        if chart in ("ewma", "cusum"):
            allowed = IMR_METHODS if req.individuals else XBAR_METHODS
        if chart in ("dnom",):
            allowed = IMR_METHODS
        if allowed is None or m not in allowed:
            raise SpcInputError("sigma_method", f"unknown sigma_method {m!r} for {chart}")
        req.sigma_method = m
    if "nsigmas" in body:
        req.nsigmas = _number(body["nsigmas"], "nsigmas")
        if req.nsigmas <= 0:
            raise SpcInputError("nsigmas", "must be greater than 0")
    if "rules" in body:
        req.rules = _rule_spec(body["rules"], "rules")
    if "rules_dispersion" in body:
        req.rules_dispersion = _rule_spec(body["rules_dispersion"], "rules_dispersion")
    if "rule_params" in body:
        rp = _object(body["rule_params"], "rule_params", set(rules_mod.RULES))
        req.rule_params = {
            code: {
                key: _number(val, f"rule_params.{code}.{key}")
                for key, val in _object(
                    params, f"rule_params.{code}", set(rules_mod.RULE_PARAM_NAMES)
                ).items()
            }
            for code, params in rp.items()
        }
    if "ewma" in body:
        e = _object(body["ewma"], "ewma", {"lambda", "L"})
        if "lambda" in e:
            lam = _number(e["lambda"], "ewma.lambda")
            if not 0 < lam <= 1:
                raise SpcInputError("ewma.lambda", "must lie in (0, 1]")
            req.ewma["lambda"] = lam
        if "L" in e:
            L = _number(e["L"], "ewma.L")
            if L <= 0:
                raise SpcInputError("ewma.L", "must be greater than 0")
            req.ewma["L"] = L
    if "cusum" in body:
        c = _object(body["cusum"], "cusum", {"k", "h", "head_start"})
        for key in ("k", "h", "head_start"):
            if key in c:
                req.cusum[key] = _number(c[key], f"cusum.{key}")
        if req.cusum["h"] <= 0:
            raise SpcInputError("cusum.h", "must be greater than 0")
        if req.cusum["k"] < 0:
            raise SpcInputError("cusum.k", "must not be negative")
        if req.cusum["head_start"] < 0:
            raise SpcInputError("cusum.head_start", "must not be negative")
    if "capability" in body:
        if chart in ATTRIBUTES:
            raise SpcInputError("capability", "capability needs a variables chart")
        c = _object(body["capability"], "capability", {"lsl", "usl", "target", "confidence"})
        cap = {
            k: (None if c.get(k) is None else _number(c[k], f"capability.{k}"))
            for k in ("lsl", "usl", "target")
        }
        cap["confidence"] = (
            0.95
            if c.get("confidence") is None
            else _number(c["confidence"], "capability.confidence")
        )
        if cap["lsl"] is None and cap["usl"] is None:
            raise SpcInputError("capability", "needs lsl, usl or both")
        if cap["lsl"] is not None and cap["usl"] is not None and cap["lsl"] >= cap["usl"]:
            raise SpcInputError("capability.lsl", "LSL must be below USL")
        if not 0 < cap["confidence"] < 1:
            raise SpcInputError("capability.confidence", "must lie in (0, 1)")
        req.capability = cap
    if "exclude" in body:
        req.exclude = _exclusions(body["exclude"], len(req.data))
    if "laney" in body:
        if not isinstance(body["laney"], bool):
            raise SpcInputError("laney", "expected true or false")
        if body["laney"] and chart not in ("p", "u"):
            raise SpcInputError("laney", "Laney adjustment applies to p and u charts")
        req.laney = body["laney"]
    if "nominal" in body:
        if chart not in ("dnom", "zmr"):
            raise SpcInputError("nominal", "only for dnom and zmr charts")
        nom = _object(
            body["nominal"], "nominal", set(req.parts or ()) | set(req.phase2_parts or ())
        )
        req.nominal = {str(k): _number(v, f"nominal.{k}") for k, v in nom.items()}
    if chart == "dnom":
        missing = sorted(
            (set(req.parts or ()) | set(req.phase2_parts or ())) - set(req.nominal or {})
        )
        if missing:
            raise SpcInputError("nominal", f"no nominal for part {missing[0]!r}")
    if "zmr_sigma" in body:
        if chart != "zmr" or body["zmr_sigma"] not in ("by-parts", "constant"):
            raise SpcInputError("zmr_sigma", "zmr only: 'by-parts' or 'constant'")
        req.zmr_sigma = body["zmr_sigma"]


def _exclusions(v: Any, count: int) -> dict[int, str]:
    out: dict[int, str] = {}
    for i, item in enumerate(_list(v, "exclude", nonempty=False)):
        path = f"exclude[{i}]"
        if isinstance(item, dict):
            item = _object(item, path, {"index", "reason"})
            idx, reason = item.get("index"), item.get("reason", "")
            if not isinstance(reason, str):
                raise SpcInputError(f"{path}.reason", "expected a string")
        else:
            idx, reason = item, ""
        if not isinstance(idx, int) or isinstance(idx, bool) or not 0 <= idx < count:
            raise SpcInputError(path, f"expected a Phase I point index in 0..{count - 1}")
        out[idx] = reason
    return out


def _check_estimable(req: AnalyzeRequest) -> None:
    """Fewer than two points where an estimate needs them is a bad request."""
    if req.chart in ATTRIBUTES or req.known.sigma is not None:
        if req.chart not in ATTRIBUTES and np.all(np.isnan(req.data)) and req.known.center is None:
            raise SpcInputError("data", "no observations to estimate the centre from")
        return
    use = np.ones(len(req.data), dtype=bool)
    use[list(req.exclude)] = False
    if req.data.ndim == 1:
        if np.count_nonzero(~np.isnan(req.data[use])) < 2:
            raise SpcInputError("data", "needs at least two values to estimate σ")
    else:
        n = subgroup_stats(req.data).n
        if not np.any(n[use] >= 2):
            raise SpcInputError("data", "needs at least one subgroup with two or more observations")


def _parse_rules_chart(body: dict, req: AnalyzeRequest) -> AnalyzeRequest:
    for k in ("data", "sizes", "phase2", "known", "sigma_method", "ewma", "cusum", "capability"):
        if k in body:
            raise SpcInputError(k, "not used by chart 'rules'")
    arrays = {}
    for k in ("values", "center", "sigma", "lcl", "ucl"):
        if k not in body:
            raise SpcInputError(k, "missing")
        arrays[k] = _numbers(body[k], k, allow_null=True)
    n = len(arrays["values"])
    for k, a in arrays.items():
        if len(a) != n:
            raise SpcInputError(k, f"length {len(a)} differs from values ({n})")
    neg = np.flatnonzero(arrays["sigma"] < 0)
    if neg.size:
        raise SpcInputError(f"sigma[{neg[0]}]", "must not be negative")
    if "nsigmas" in body:
        raise SpcInputError("nsigmas", "not used by chart 'rules' (limits are given)")
    req.rules_input = arrays
    if "rules" in body:
        req.rules = _rule_spec(body["rules"], "rules")
    if "rule_params" in body:
        _parse_options({"rule_params": body["rule_params"]}, req)
    return req


# ---------------------------------------------------------------- running


def _jsonable(a: np.ndarray | float | None) -> Any:
    if a is None:
        return None
    if isinstance(a, np.ndarray):
        return [None if not math.isfinite(v) else v for v in a.astype(float).tolist()]
    f = float(a)
    return f if math.isfinite(f) else None


def _rule_config(spec: Any, params: dict[str, dict[str, float]], path: str) -> rules_mod.RuleConfig:
    return rules_mod.resolve_rules(spec, params or None, path=path)


def _dispersion_spec(req: AnalyzeRequest) -> Any:
    if req.rules_dispersion is not None:
        return req.rules_dispersion
    codes = rules_mod.resolve_rules(req.rules, None, path="rules").codes
    return [c for c in codes if c in ("N1", "WE1")]


@dataclass
class _Plotted:
    series: ChartSeries
    violations: dict[str, list[int]]


def _judge(series: ChartSeries, config: rules_mod.RuleConfig) -> _Plotted:
    mask = rules_mod.evaluate(
        series.statistics, series.center, series.sigma, series.lcl, series.ucl, config
    )
    return _Plotted(series, rules_mod.violation_indices(mask, config.codes))


def _signal_indices(flags: np.ndarray) -> list[int]:
    return [int(i) for i in np.flatnonzero(flags)]


def _series_json(p: _Plotted) -> dict[str, Any]:
    s = p.series
    out: dict[str, Any] = {
        "name": s.name,
        "statistics": _jsonable(s.statistics),
        "center": _jsonable(s.center),
        "lcl": _jsonable(s.lcl),
        "ucl": _jsonable(s.ucl),
        "sigma": _jsonable(s.sigma),
        "n": _jsonable(s.n),
    }
    for k, v in s.extra.items():
        out[k] = _jsonable(v)
    out["violations"] = p.violations
    e = s.estimate
    out["estimate"] = (
        None
        if e is None
        else {"center": _jsonable(e.center), "sigma": _jsonable(e.sigma), "method": e.method}
    )
    return out


def _exclude_mask(req: AnalyzeRequest) -> np.ndarray | None:
    if not req.exclude:
        return None
    mask = np.zeros(len(req.data), dtype=bool)
    mask[list(req.exclude)] = True
    return mask


def _stack_subgroups(a: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    if b is None:
        return a
    if a.ndim == 1:
        return np.concatenate([a, b])
    w = max(a.shape[1], b.shape[1])
    pad = lambda m: np.pad(m, ((0, 0), (0, w - m.shape[1])), constant_values=np.nan)  # noqa: E731
    return np.vstack([pad(a), pad(b)])


def _variables(req: AnalyzeRequest) -> tuple[list[_Plotted], Estimate, np.ndarray]:
    """Charts, the estimate and the Phase I observations (for capability) of a variables request."""
    centre_rules = _rule_config(req.rules, req.rule_params, "rules")
    disp_rules = _rule_config(_dispersion_spec(req), req.rule_params, "rules_dispersion")
    ex = _exclude_mask(req)
    chart = req.chart
    obs = req.data[
        ~np.isnan(req.data)
    ]  # Phase I observations, missing ones dropped (flattens subgroups)
    if chart in ("dnom", "zmr"):
        result = _short_run(req, ex)
        x, mr = result.x, result.mr
        return [_judge(x, centre_rules), _judge(mr, disp_rules)], x.estimate, obs
    if chart == "imr":
        est = estimate_imr(req.data, req.sigma_method or "mr", req.known, ex)
        x, mr = imr_series(_stack_subgroups(req.data, req.phase2), est, req.nsigmas)
        return [_judge(x, centre_rules), _judge(mr, disp_rules)], est, obs
    if chart in ("xbar-r", "xbar-s"):
        method = req.sigma_method or ("rbar" if chart == "xbar-r" else "sbar")
        est = estimate_xbar(req.data, method, req.known, ex)
        xb, disp = xbar_series(_stack_subgroups(req.data, req.phase2), est, req.nsigmas, chart[-1])
        return [_judge(xb, centre_rules), _judge(disp, disp_rules)], est, obs
    # ewma / cusum: individual values or subgroups
    if req.individuals:
        est = estimate_imr(req.data, req.sigma_method or "mr", req.known, ex)
    else:
        est = estimate_xbar(req.data, req.sigma_method or "rbar", req.known, ex)
    allx = _stack_subgroups(req.data, req.phase2)
    stats = subgroup_stats(allx)
    if chart == "ewma":
        s, _ = ewma_series(stats.mean, stats.n, est, req.ewma["lambda"], req.ewma["L"])
        path = s.extra["ewma"]
        with np.errstate(invalid="ignore"):
            flags = (path > s.ucl) | (path < s.lcl)
        return [_Plotted(s, {"EWMA": _signal_indices(flags)})], est, obs
    c = req.cusum
    s, _ = cusum_series(stats.mean, stats.n, est, c["k"], c["h"], c["head_start"])
    with np.errstate(invalid="ignore"):
        up = s.extra["cusum_upper"] > c["h"]
        lo = s.extra["cusum_lower"] < -c["h"]
    return (
        [_Plotted(s, {"CUSUM_UPPER": _signal_indices(up), "CUSUM_LOWER": _signal_indices(lo)})],
        est,
        obs,
    )


def _short_run(req: AnalyzeRequest, ex: np.ndarray | None) -> shortrun.ShortRunCharts:
    if req.chart == "dnom":
        return shortrun.dnom_chart(
            req.data,
            req.parts,
            req.nominal or {},
            req.phase2,
            req.phase2_parts,
            known_center=req.known.center,
            known_sigma=req.known.sigma,
            nsigmas=req.nsigmas,
            exclude=ex,
        )
    return shortrun.zmr_chart(
        req.data,
        req.parts,
        req.phase2,
        req.phase2_parts,
        sigma_method=req.zmr_sigma,
        nominal=req.nominal,
        known_sigma=req.known.sigma,
        nsigmas=req.nsigmas,
        exclude=ex,
    )


def _attribute(req: AnalyzeRequest) -> list[_Plotted]:
    centre_rules = _rule_config(req.rules, req.rule_params, "rules")
    name = "laney_" + req.chart if req.laney else req.chart
    fn: Callable[..., ChartSeries] = getattr(attributes, f"{name}_chart")
    kwargs: dict[str, Any] = {
        "known_center": req.known.center,
        "nsigmas": req.nsigmas,
        "exclude": _exclude_mask(req),
    }
    if req.chart == "c":
        s = fn(req.data, req.phase2, **kwargs)
    else:
        s = fn(req.data, req.sizes, req.phase2, req.phase2_sizes, **kwargs)
    return [_judge(s, centre_rules)]


def _rules_only(req: AnalyzeRequest) -> list[_Plotted]:
    a = req.rules_input or {}
    config = _rule_config(req.rules, req.rule_params, "rules")
    n = np.ones(len(a["values"]))
    s = ChartSeries("rules", a["values"], a["center"], a["lcl"], a["ucl"], a["sigma"], n, None)  # type: ignore[arg-type]
    return [_judge(s, config)]


def analyze(req: AnalyzeRequest) -> dict[str, Any]:
    """Run a validated request and return the response as plain JSON types."""
    capability_json = None
    if req.chart == "rules":
        plotted = _rules_only(req)
    elif req.chart in ATTRIBUTES:
        plotted = _attribute(req)
    else:
        plotted, est, obs = _variables(req)
        if req.capability is not None:
            n1 = len(req.data)
            in_control = not any(
                any(i < n1 for i in v) for p in plotted for v in p.violations.values()
            )
            cap = req.capability
            capability_json = capability_report(
                obs,
                center=est.center,
                sigma_within=est.sigma,
                lsl=cap["lsl"],
                usl=cap["usl"],
                target=cap["target"],
                confidence=cap["confidence"],
                in_control=in_control,
            ).to_json()
    out: dict[str, Any] = {
        "chart": req.chart,
        "constants": "exact",
        "phase1_points": len(req.data) if req.chart != "rules" else len(plotted[0].series),
        "charts": [_series_json(p) for p in plotted],
    }
    if req.exclude:
        out["excluded"] = [{"index": i, "reason": r} for i, r in sorted(req.exclude.items())]
    if req.chart != "rules":
        out["limits"] = limits_record(req, plotted[0].series.estimate).to_json()
    if req.capability is not None:
        out["capability"] = capability_json
    return out


def limits_record(req: AnalyzeRequest, est: Estimate) -> LimitsRecord:
    """The frozen Phase I limits record this analysis judged Phase II against.

    Its id depends only on what the limits depend on (chart, estimate,
    Phase I size, exclusions, parameters), so the live service can adopt the
    record from an offline study and alarms will name the same ``limits_id``.
    """
    params: list[tuple[str, float]] = [("nsigmas", req.nsigmas)]
    if req.chart == "ewma":
        params += [("ewma_L", req.ewma["L"]), ("ewma_lambda", req.ewma["lambda"])]
    if req.chart == "cusum":
        params += [(f"cusum_{k}", v) for k, v in sorted(req.cusum.items())]
    return LimitsRecord(
        chart=req.chart + ("-laney" if req.laney else ""),
        center=float(est.center),
        sigma=float(est.sigma),
        method=est.method,
        n_points=len(req.data),
        window=("0", str(len(req.data) - 1)),
        exclusions=tuple(Exclusion(i, r) for i, r in sorted(req.exclude.items())),
        params=tuple(sorted(params)),
    )


def analyze_json(body: Any) -> dict[str, Any]:
    """Validate and run a decoded request (raises :class:`SpcInputError` on a bad one)."""
    return analyze(parse_request(body))


def error_json(err: SpcInputError) -> dict[str, Any]:
    """The contract's error object for a bad request."""
    return {"error": {"path": err.path, "message": err.message}}
