"""Western Electric and Nelson run rules: rule data, batch evaluation, a streaming bank.

The rules, their stable codes and every edge case follow ``spc-semantics.md``
("Run rules"). Three entry points share one standardisation
(:func:`standardize`) and one set of per-point predicates, so they agree bit
for bit:

* :func:`evaluate` judges one whole series and returns a ``uint32`` violation
  bitmask per point (bit numbers in :data:`BITS`).
* :func:`evaluate_with_carry` does the same starting from a :class:`RuleCarry`
  (the compact history of earlier points) and returns the carry after the last
  point, so evaluating a series in pieces equals evaluating the concatenation.
* :class:`RuleBank` judges one new point for each of many characteristics at
  once, with all state in numpy arrays indexed by characteristic.

How the batch path is fast: every per-point predicate (beyond +level and
−level for each σ level in use, level 0 being the sides of the centre line;
up; down; beyond a control limit) becomes one bit in packed ``uint64`` words.
"n in a row" is an AND of shifted copies computed by doubling (O(log n) word
operations); "k of m" ANDs the point's own bit with an "at least k − 1 of the
m − 1 before" ladder of shifted copies (a bit-sliced counter for wide windows).
Word operations run on chunks that carry the word before them, which is all
the history a chunk needs because no window is longer than :data:`MAX_WINDOW`
(64) points. Where a chunk has one centre and one σ (frozen limits), the
σ-level predicates compare x with thresholds found once by searching the
floats with :func:`standardize` itself, so they stay exact without the
subtraction and division. Violations are then read back per rule: sparse
bits by position, dense ones in one masked pass.

The streaming bank keeps the same bits as 64-bit shift registers per
characteristic (bit 0 = newest point); each config is compiled into register
tests (``bitwise_count(register & mask) >= k``) so one step is a handful of
array operations for all characteristics with that config.
"""

from __future__ import annotations

import io
import itertools
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from spc.errors import SpcInputError

__all__ = [
    "BITS",
    "MAX_WINDOW",
    "RULES",
    "RULE_PARAM_NAMES",
    "RULE_SETS",
    "RULE_TEXT",
    "RuleBank",
    "RuleCarry",
    "RuleConfig",
    "RuleResult",
    "RuleSpec",
    "evaluate",
    "evaluate_with_carry",
    "make_rule",
    "resolve_rules",
    "standardize",
    "violation_indices",
]

#: Longest window any rule may look at (runs and k-of-m windows), in points.
MAX_WINDOW = 64

#: Stable bit of each code in a violation bitmask (``uint32``). EWMA and the two
#: CUSUM sides are reserved here for the time-weighted charts of the live engine.
BITS: dict[str, int] = {
    "N1": 0,
    "N2": 1,
    "N3": 2,
    "N4": 3,
    "N5": 4,
    "N6": 5,
    "N7": 6,
    "N8": 7,
    "WE1": 8,
    "WE2": 9,
    "WE3": 10,
    "WE4": 11,
    "EWMA": 12,
    "CUSUM_UPPER": 13,
    "CUSUM_LOWER": 14,
}

#: Names accepted in per-rule parameter overrides.
RULE_PARAM_NAMES: tuple[str, ...] = ("run", "k", "m", "level")

# kind -> the parameters it takes (in RULE_PARAM_NAMES order)
_KIND_PARAMS: dict[str, tuple[str, ...]] = {
    "limit": (),
    "side": ("run",),
    "trend": ("run",),
    "alternate": ("run",),
    "k_of_m": ("k", "m", "level"),
    "within": ("run", "level"),
    "beyond_both": ("run", "level"),
}

_DEFAULTS: dict[str, tuple[str, dict[str, Any]]] = {
    "N1": ("limit", {}),
    "N2": ("side", {"run": 9}),
    "N3": ("trend", {"run": 6}),
    "N4": ("alternate", {"run": 14}),
    "N5": ("k_of_m", {"k": 2, "m": 3, "level": 2.0}),
    "N6": ("k_of_m", {"k": 4, "m": 5, "level": 1.0}),
    "N7": ("within", {"run": 15, "level": 1.0}),
    "N8": ("beyond_both", {"run": 8, "level": 1.0}),
    "WE1": ("limit", {}),
    "WE2": ("k_of_m", {"k": 2, "m": 3, "level": 2.0}),
    "WE3": ("k_of_m", {"k": 4, "m": 5, "level": 1.0}),
    "WE4": ("side", {"run": 8}),
}

_RULE_CODES: tuple[str, ...] = tuple(_DEFAULTS)

#: Named rule sets accepted by :func:`resolve_rules`.
RULE_SETS: dict[str, tuple[str, ...]] = {
    "none": (),
    "we": ("WE1", "WE2", "WE3", "WE4"),
    "nelson": ("N1", "N2", "N3", "N4", "N5", "N6", "N7", "N8"),
}


def _text(kind: str, run: int | None, k: int | None, m: int | None, level: float | None) -> str:
    if kind == "limit":
        return "1 point beyond a control limit"
    if kind == "side":
        return f"{run} points in a row on the same side of the centre line"
    if kind == "trend":
        return f"{run} points in a row steadily increasing or decreasing"
    if kind == "alternate":
        return f"{run} points in a row alternating up and down"
    if kind == "k_of_m":
        return f"{k} of {m} points in a row beyond {level:g}σ, same side"
    if kind == "within":
        return f"{run} points in a row within {level:g}σ of the centre line (either side)"
    return f"{run} points in a row beyond {level:g}σ, with points on both sides"


@dataclass(frozen=True)
class RuleSpec:
    """One run rule with its parameters.

    ``kind`` is one of ``limit`` (N1/WE1: x > UCL or x < LCL), ``side``
    (N2/WE4: ``run`` points in a row on the same side of the centre line),
    ``trend`` (N3: ``run`` points steadily increasing or decreasing, i.e.
    ``run − 1`` strict changes), ``alternate`` (N4: ``run`` points, ``run − 1``
    differences of alternating sign), ``k_of_m`` (N5/N6/WE2/WE3: ``k`` of ``m``
    beyond ``level``·σ on the same side), ``within`` (N7: ``run`` points with
    |z| ≤ ``level``) and ``beyond_both`` (N8: ``run`` points with |z| >
    ``level`` and points on both sides). Parameters a kind does not take are
    ``None``; ``side`` rules have ``level`` 0 (the centre line). Build one with
    :func:`make_rule` (validated) or take the defaults from :data:`RULES`.
    """

    code: str
    text: str
    kind: str
    run: int | None = None
    k: int | None = None
    m: int | None = None
    level: float | None = None

    @property
    def bit(self) -> int:
        """The stable bit number of this rule's code in a violation bitmask."""
        return BITS[self.code]

    @property
    def window(self) -> int:
        """How many points (the newest included) the rule looks at."""
        if self.kind == "limit":
            return 1
        if self.kind == "k_of_m":
            return int(self.m)  # type: ignore[arg-type]
        return int(self.run)  # type: ignore[arg-type]


def _as_int(value: Any, path: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SpcInputError(path, f"must be an integer, got {value!r}")
    f = float(value)
    if not math.isfinite(f) or f != int(f):
        raise SpcInputError(path, f"must be an integer, got {value!r}")
    i = int(f)
    if not lo <= i <= hi:
        raise SpcInputError(path, f"must lie in {lo}..{hi}, got {i}")
    return i


def _as_level(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SpcInputError(path, f"must be a number, got {value!r}")
    f = float(value)
    if not (math.isfinite(f) and f > 0):
        raise SpcInputError(path, f"must be a finite number greater than 0, got {value!r}")
    return f


def make_rule(code: str, params: Mapping[str, Any] | None = None, path: str = "") -> RuleSpec:
    """Build the rule ``code`` with its default parameters, overridden by ``params``.

    ``params`` maps parameter names (``run``, ``k``, ``m``, ``level``; only those
    the rule takes) to values; integral floats such as ``9.0`` are accepted for
    the integer parameters. Runs lie in 2..64, ``1 ≤ k ≤ m ≤ 64``, ``level`` is
    finite and > 0. N1/WE1 take no parameter. Raises :class:`SpcInputError`
    with ``path.<param>`` (or ``path`` for an unknown code).
    """
    if code not in _DEFAULTS:
        raise SpcInputError(path, f"unknown rule code {code!r}")
    kind, defaults = _DEFAULTS[code]
    values = dict(defaults)
    allowed = _KIND_PARAMS[kind]
    prefix = f"{path}." if path else ""
    for name, value in (params or {}).items():
        if name not in allowed:
            takes = ", ".join(allowed) if allowed else "no parameters"
            raise SpcInputError(f"{prefix}{name}", f"{code} takes {takes}")
        values[name] = value
    run = k = m = None
    level: float | None = None
    if "run" in allowed:
        run = _as_int(values["run"], f"{prefix}run", 2, MAX_WINDOW)
    if kind == "k_of_m":
        m = _as_int(values["m"], f"{prefix}m", 1, MAX_WINDOW)
        k = _as_int(values["k"], f"{prefix}k", 1, MAX_WINDOW)
        if k > m:
            raise SpcInputError(f"{prefix}k", f"k = {k} must not exceed m = {m}")
    if "level" in allowed:
        level = _as_level(values["level"], f"{prefix}level")
    elif kind == "side":
        level = 0.0
    return RuleSpec(code, _text(kind, run, k, m, level), kind, run, k, m, level)


#: The rules with their default parameters (the semantics page), by code.
RULES: dict[str, RuleSpec] = {code: make_rule(code) for code in _RULE_CODES}

#: Default wording of every code, including the time-weighted signals.
RULE_TEXT: dict[str, str] = {code: spec.text for code, spec in RULES.items()} | {
    "EWMA": "EWMA beyond its control limits",
    "CUSUM_UPPER": "upper CUSUM above the decision interval h",
    "CUSUM_LOWER": "lower CUSUM below the decision interval −h",
}


@dataclass(frozen=True)
class RuleConfig:
    """The rules to apply to one series, in the order they were requested."""

    rules: tuple[RuleSpec, ...] = ()

    @property
    def codes(self) -> tuple[str, ...]:
        """The codes, in order."""
        return tuple(r.code for r in self.rules)

    @property
    def bits(self) -> int:
        """Bitmask of all the codes' bits."""
        out = 0
        for r in self.rules:
            out |= 1 << r.bit
        return out

    @property
    def levels(self) -> tuple[float, ...]:
        """Distinct σ levels the zone and side rules compare |z| with, ascending.

        The centre line is level 0 (N2/WE4). A carry or a bank keeps one pair of
        bit histories (beyond +level, beyond −level) per level.
        """
        return tuple(
            sorted({float(r.level) for r in self.rules if r.level is not None})  # type: ignore[arg-type]
        )

    def get(self, code: str) -> RuleSpec | None:
        """The rule with this code, or ``None`` when it is not in the config."""
        for r in self.rules:
            if r.code == code:
                return r
        return None


def resolve_rules(
    spec: str | Sequence[str] | RuleConfig,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    path: str = "rules",
    *,
    overrides_path: str = "rule_params",
) -> RuleConfig:
    """Turn a rule-set name or a list of codes into a :class:`RuleConfig`.

    ``spec`` is ``none``, ``we``, ``nelson`` or a list of codes (``N1``…``N8``,
    ``WE1``…``WE4``; no duplicates). ``overrides`` maps a code to its parameter
    overrides (see :func:`make_rule`); an override for a valid code that is not
    selected is ignored, so one parameter block can serve several charts.
    Errors name ``path`` (``rules[2]``) or ``overrides_path.CODE.param``.
    """
    if isinstance(spec, RuleConfig):
        codes: Sequence[Any] = spec.codes
    elif isinstance(spec, str):
        if spec not in RULE_SETS:
            names = ", ".join(RULE_SETS)
            raise SpcInputError(path, f"unknown rule set {spec!r} ({names}, or a list of codes)")
        codes = RULE_SETS[spec]
    elif isinstance(spec, Sequence):
        codes = spec
    else:
        raise SpcInputError(path, "must be a rule-set name or a list of rule codes")
    seen: set[str] = set()
    for i, code in enumerate(codes):
        if not isinstance(code, str) or code not in _DEFAULTS:
            raise SpcInputError(f"{path}[{i}]", f"unknown rule code {code!r}")
        if code in seen:
            raise SpcInputError(f"{path}[{i}]", f"duplicate rule code {code!r}")
        seen.add(code)
    overrides = overrides or {}
    if not isinstance(overrides, Mapping):
        raise SpcInputError(overrides_path, "must map rule codes to parameter objects")
    for code, params in overrides.items():
        if code not in _DEFAULTS:
            raise SpcInputError(f"{overrides_path}.{code}", f"unknown rule code {code!r}")
        if not isinstance(params, Mapping):
            raise SpcInputError(f"{overrides_path}.{code}", "must be an object of parameters")
    if isinstance(spec, RuleConfig) and not overrides:
        return spec
    rules = []
    for code in codes:
        params = overrides.get(code)
        if params is None and isinstance(spec, RuleConfig):
            rules.append(spec.get(code))
        else:
            rules.append(make_rule(code, params, f"{overrides_path}.{code}"))
    return RuleConfig(tuple(rules))


def violation_indices(mask: np.ndarray, codes: Sequence[str]) -> dict[str, list[int]]:
    """0-based indices of the points whose bit is set, one list per code (empty ones too).

    The keys follow ``codes`` order; ``codes`` may also name the reserved
    ``EWMA``/``CUSUM_UPPER``/``CUSUM_LOWER`` bits.
    """
    mask = np.asarray(mask)
    out: dict[str, list[int]] = {}
    for i, code in enumerate(codes):
        if code not in BITS:
            raise SpcInputError(f"codes[{i}]", f"unknown rule code {code!r}")
        out[code] = np.flatnonzero(mask & np.uint32(1 << BITS[code])).tolist()
    return out


# --------------------------------------------------------------------------- standardisation


def standardize(x: Any, center: Any, sigma: Any, out: np.ndarray | None = None) -> np.ndarray:
    """z = (x − center) / sigma per point; NaN marks a missing point.

    sigma = 0 (constant data) gives z = +inf above the centre, −inf below and 0
    on it. A point is missing when x, center or sigma is NaN, or sigma < 0.
    Batch and streaming both call this, so they classify every point alike.
    ``out`` (float64, the broadcast shape) receives the result if given.
    """
    x = np.asarray(x, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    if out is None:
        out = np.empty(np.broadcast_shapes(x.shape, np.shape(center), sigma.shape))
    with np.errstate(all="ignore"):
        z = np.subtract(x, center, out=out)
        np.divide(z, sigma, out=z)
        # fmin ignores NaN: a NaN σ already gives z = NaN, a zero or negative one needs fixing
        if sigma.size and not np.fmin.reduce(sigma, axis=None) > 0:
            odd = np.flatnonzero(np.broadcast_to(sigma <= 0, z.shape))
            if odd.size:
                d = (
                    np.broadcast_to(x, z.shape).ravel()[odd]
                    - np.broadcast_to(np.asarray(center, dtype=np.float64), z.shape).ravel()[odd]
                )
                s = np.broadcast_to(sigma, z.shape).ravel()[odd]
                # d·inf is ±inf for d ≠ 0 and NaN for d = 0 or NaN; d = 0 is z = 0
                fix = d * np.inf
                fix[d == 0] = 0.0
                fix[s < 0] = np.nan
                z.reshape(-1)[odd] = fix
    return z


_FMAX = np.finfo(np.float64).max


def _key(v: float) -> int:
    """Order-preserving integer for a float (−0.0 and +0.0 share 0)."""
    i = int(np.array(abs(v)).view(np.int64))
    return -i if math.copysign(1.0, v) < 0 else i


def _floats(keys: list[int]) -> np.ndarray:
    k = np.array(keys, dtype=np.int64)
    mag = np.abs(k).view(np.float64)
    return np.where(k < 0, -mag, mag)


def _first_true(pred: Any, lo: int, hi: int) -> int:
    """Smallest key in (lo, hi] where the monotone ``pred`` holds; pred(lo) is false, pred(hi) true.

    A 64-way search: each round evaluates ``pred`` on one small array.
    """
    while hi - lo > 1:
        step = max(1, (hi - lo) // 64)
        keys = list(range(lo + step, hi, step))[:63]
        if not keys:
            break
        hits = pred(_floats(keys))
        first = int(np.argmax(hits)) if hits.any() else len(keys)
        lo = keys[first - 1] if first else lo
        hi = keys[first] if first < len(keys) else hi
    return hi


def _x_thresholds(center: float, sigma: float, level: float) -> tuple[float, float] | None:
    """(hi, lo) with z(x) > level ⇔ x > hi and z(x) < −level ⇔ x < lo, exactly.

    z(x) = fl(fl(x − c)/σ) is monotone in x, so each predicate is a threshold on
    x. Finding it (by searching the floats, with :func:`standardize` itself)
    lets a series with one centre and one σ skip the subtraction and division
    yet classify every point exactly as z would. None if c or σ is unusable.
    """
    if not (math.isfinite(center) and math.isfinite(sigma) and sigma >= 0):
        return None

    def above(v: np.ndarray) -> np.ndarray:
        return standardize(v, center, sigma) > level

    def not_below(v: np.ndarray) -> np.ndarray:
        return ~(standardize(v, center, sigma) < -level)

    bottom, top = _key(-_FMAX), _key(_FMAX)
    cuts = []
    for pred, offset in ((above, level * sigma), (not_below, -level * sigma)):
        # a narrow bracket around c ± level·σ first, all finite floats if it misses
        with np.errstate(all="ignore"):
            guess = center + offset
        g = _key(guess) if math.isfinite(guess) else 0
        lo, hi = max(bottom, g - 64), min(top, g + 64)
        ends = pred(_floats([lo, hi]))
        if ends[0] or not ends[1]:
            lo, hi = bottom, top
            ends = pred(_floats([lo, hi]))
        if ends[0]:
            # true for every finite x (σ huge): only −inf is below
            if pred is above:
                return None
            cuts.append(-_FMAX)
        elif not ends[1]:
            # false for every finite x: only +inf is above
            if pred is not_below:
                return None
            cuts.append(_FMAX)
        else:
            first = _first_true(pred, lo, hi)
            # above: x > cut ⇔ key ≥ first; not_below: x < cut ⇔ key < first
            cuts.append(float(_floats([first - 1 if pred is above else first])[0]))
    return cuts[0], cuts[1]


# --------------------------------------------------------------------------- carry


_U64 = (1 << 64) - 1
_MASKS = np.array([(1 << n) - 1 for n in range(MAX_WINDOW + 1)], dtype=np.uint64)


@dataclass(frozen=True)
class RuleCarry:
    """What the rules remember of a series' earlier points (its last 64 plotted points).

    Each history is a 64-bit integer, bit 0 = the newest point: ``pos[i]`` /
    ``neg[i]`` say z > ``levels[i]`` / z < −``levels[i]``; ``up`` / ``down`` say
    the point rose / fell from its predecessor. ``last_x`` is the newest plotted
    value (NaN before the first point), ``count`` the number of plotted points
    so far, capped at 64. Carries are plain data: :meth:`to_dict` is JSON-ready.
    """

    levels: tuple[float, ...] = ()
    pos: tuple[int, ...] = ()
    neg: tuple[int, ...] = ()
    up: int = 0
    down: int = 0
    last_x: float = math.nan
    count: int = 0

    def history(self, level: float) -> tuple[int, int]:
        """The (pos, neg) histories at ``level``; :class:`SpcInputError` if not kept."""
        for lv, p, n in zip(self.levels, self.pos, self.neg, strict=True):
            if lv == level:
                return p, n
        raise SpcInputError(
            "carry", f"the carry keeps no history at level {level:g} (it has {list(self.levels)})"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "levels": list(self.levels),
            "pos": list(self.pos),
            "neg": list(self.neg),
            "up": self.up,
            "down": self.down,
            "last_x": None if math.isnan(self.last_x) else self.last_x,
            "count": self.count,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RuleCarry:
        """Inverse of :meth:`to_dict`."""
        try:
            last = d.get("last_x")
            levels = tuple(float(v) for v in d["levels"])
            pos = tuple(int(v) & _U64 for v in d["pos"])
            neg = tuple(int(v) & _U64 for v in d["neg"])
            if not len(levels) == len(pos) == len(neg):
                raise ValueError("levels, pos and neg differ in length")
            return cls(
                levels,
                pos,
                neg,
                int(d["up"]) & _U64,
                int(d["down"]) & _U64,
                math.nan if last is None else float(last),
                max(0, min(int(d["count"]), MAX_WINDOW)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise SpcInputError("carry", f"not a rule carry: {e}") from None


def _push(reg: int, flags: np.ndarray) -> int:
    """Shift the newest ``flags`` (oldest first) into a 64-bit history."""
    flags = flags[-64:]
    n = len(flags)
    if n == 0:
        return reg
    bits = int.from_bytes(np.packbits(flags[::-1], bitorder="little").tobytes(), "little")
    return ((reg << n) | bits) & _U64


def _carry_after(
    carry: RuleCarry,
    levels: tuple[float, ...],
    xt: np.ndarray,
    zt: np.ndarray,
    prev_x: float,
    n_plotted: int,
) -> RuleCarry:
    """The carry after ``n_plotted`` more points whose last ≤ 64 are ``xt``/``zt``.

    ``prev_x`` is the plotted value just before ``xt`` (the carry's ``last_x``
    when ``xt`` is the whole series).
    """
    if not n_plotted:
        return RuleCarry(
            levels,
            tuple(carry.history(lv)[0] if carry.count else 0 for lv in levels),
            tuple(carry.history(lv)[1] if carry.count else 0 for lv in levels),
            carry.up,
            carry.down,
            carry.last_x,
            carry.count,
        )
    pos, neg = [], []
    with np.errstate(all="ignore"):
        for lv in levels:
            p, q = carry.history(lv) if carry.count else (0, 0)
            pos.append(_push(p, zt > lv))
            neg.append(_push(q, zt < -lv))
        prev = np.concatenate(([prev_x], xt[:-1]))
        up = _push(carry.up, xt > prev)
        down = _push(carry.down, xt < prev)
    return RuleCarry(
        levels,
        tuple(pos),
        tuple(neg),
        up,
        down,
        float(xt[-1]),
        min(MAX_WINDOW, carry.count + n_plotted),
    )


# --------------------------------------------------------------------------- batch


@dataclass(frozen=True)
class RuleResult:
    """Batch result: a ``uint32`` bitmask per point and the carry after the last point."""

    mask: np.ndarray
    carry: RuleCarry


@dataclass(frozen=True)
class _Plan:
    """A config compiled for the batch path: which flag rows feed which rule."""

    levels: tuple[float, ...]
    limit_bits: int
    rules: tuple[RuleSpec, ...]
    need_updown: bool


@lru_cache(maxsize=256)
def _plan(config: RuleConfig) -> _Plan:
    limit_bits = 0
    rules = []
    for r in config.rules:
        if r.kind == "limit":
            limit_bits |= 1 << r.bit
        else:
            rules.append(r)
    need_updown = any(r.kind in ("trend", "alternate") for r in rules)
    return _Plan(config.levels, limit_bits, tuple(rules), need_updown)


def _shl(w: np.ndarray, s: int) -> np.ndarray:
    """Bit i of the result is bit i − s of ``w`` (towards later points), 0 < s < 64.

    Word 0 has nothing before it: its bits shifted in are 0.
    """
    out = w << np.uint64(s)
    out[1:] |= w[:-1] >> np.uint64(64 - s)
    return out


def _run(w: np.ndarray, n: int) -> np.ndarray:
    """Bit i set iff bits i−n+1..i of ``w`` are all set (n ≥ 1)."""
    r = w
    span = 1
    while span * 2 <= n:
        r = r & _shl(r, span)
        span *= 2
    if span < n:
        r = r & _shl(r, n - span)
    return r


def _any(w: np.ndarray, n: int) -> np.ndarray:
    """Bit i set iff any of bits i−n+1..i of ``w`` is set."""
    r = w
    span = 1
    while span * 2 <= n:
        r = r | _shl(r, span)
        span *= 2
    if span < n:
        r = r | _shl(r, n - span)
    return r


def _at_least(w: np.ndarray, k: int, m: int) -> np.ndarray:
    """Bit i set iff at least k of bits i−m+1..i of ``w`` are set."""
    if k == 1:
        return _any(w, m)
    if k == m:
        return _run(w, m)
    planes = [w.copy()]  # bit-sliced counter, least significant plane first
    for t in range(1, m):
        carry = _shl(w, t)
        for j in range(len(planes)):
            nxt = planes[j] & carry
            planes[j] ^= carry
            carry = nxt
        if (t + 1).bit_length() > len(planes):
            planes.append(carry)
    gt: np.ndarray | None = None
    eq: np.ndarray | None = None
    for j in range(len(planes) - 1, -1, -1):
        c = planes[j]
        if (k >> j) & 1:
            eq = c if eq is None else eq & c
        else:
            hit = c if eq is None else eq & c
            gt = hit if gt is None else gt | hit
            eq = ~c if eq is None else eq & ~c
    assert eq is not None
    return eq if gt is None else gt | eq


def _k_of_m(w: np.ndarray, k: int, m: int) -> np.ndarray:
    """Bit i set iff bit i is set and at least k of bits i−m+1..i are (k-of-m, one side)."""
    need = k - 1  # of the m − 1 points before
    if need == 0:
        return w
    if need == m - 1:
        return _run(w, m)
    if need * (m - 1) > 64:
        return w & _at_least(w, k, m)
    # at[j]: at least j of the shifted copies seen so far; only those that can still
    # reach `need` with the copies left are kept
    at: list[np.ndarray | None] = [None] * (need + 1)
    for t in range(1, m):
        v = _shl(w, t)
        left = m - 1 - t
        for j in range(min(need, t), 0, -1):
            if j + left < need:
                break
            below = v if j == 1 else (at[j - 1] & v if at[j - 1] is not None else None)
            if below is None:
                continue
            at[j] = below if at[j] is None else at[j] | below
    top = at[need]
    assert top is not None
    return w & top


class _MissingPointError(Exception):
    """A chunk held a missing point: start again on the compressed series."""


# Points per float-stage chunk (its temporaries stay in L2) and words per
# word-stage chunk; both measured on the benchmark, see benchmarks/bench_rules.py.
_CHUNK = 1 << 17
_WORD_CHUNK = 1 << 14
# below this many points in a chunk, finding x thresholds costs more than it saves
_CUTS_MIN = 8192


def _flag_words(
    x: np.ndarray,
    center: Any,
    sigma: Any,
    lcl: Any,
    ucl: Any,
    plan: _Plan,
    carry: RuleCarry,
    chunk: int,
    check_missing: bool,
    cuts_min: int = _CUTS_MIN,
) -> np.ndarray:
    """Per-point predicates of the plotted points ``x``, packed 64 to a ``uint64`` word.

    Rows: beyond +level / −level for each level of ``plan``, up, down, then
    (if the plan has N1/WE1) beyond a control limit. Word 0 of each row holds
    the carried history (bit 63 = the newest earlier point); bit i of word
    j ≥ 1 is point 64·(j − 1) + i. Raises _MissingPointError on a missing point
    if ``check_missing``.
    """
    n = len(x)
    nlev = len(plan.levels)
    nrows = 2 * nlev + 2 + (1 if plan.limit_bits else 0)
    nwords = (n + 63) // 64
    words = np.zeros((nrows, nwords + 1), dtype=np.uint64)
    if carry.count:
        for li, lv in enumerate(plan.levels):
            words[2 * li : 2 * li + 2, 0] = [_reverse64(r) for r in carry.history(lv)]
        words[2 * nlev, 0] = _reverse64(carry.up)
        words[2 * nlev + 1, 0] = _reverse64(carry.down)
    buf = np.empty((nrows, chunk), dtype=bool)
    scratch = np.empty(chunk, dtype=bool)
    scalar = [np.ndim(v) == 0 for v in (center, sigma, lcl, ucl)]
    need_z = bool(plan.rules) or check_missing
    # one centre and one σ (in a chunk): compare x with exact thresholds instead of
    # computing z; I-MR charts with frozen limits are like that
    cut_cache: dict[tuple[float, float], list[tuple[float, float]] | None] = {}

    def cuts_for(c0: float, s0: float) -> list[tuple[float, float]] | None:
        key = (c0, s0)
        if key not in cut_cache:
            found = [_x_thresholds(c0, s0, lv) for lv in plan.levels]
            ok = all(f is not None for f in found)
            cut_cache[key] = [f for f in found if f is not None] if ok else None
        return cut_cache[key]

    zero_row = plan.levels.index(0.0) if 0.0 in plan.levels else -1
    late_check = check_missing and zero_row >= 0
    zbuf: np.ndarray | None = None
    with np.errstate(all="ignore"):
        for a in range(0, n, chunk):
            b = min(a + chunk, n)
            m = b - a
            xs = x[a:b]
            c, s, lo, hi = (
                v if sc else v[a:b] for v, sc in zip((center, sigma, lcl, ucl), scalar, strict=True)
            )
            cuts = None
            if need_z and m >= cuts_min:
                c0 = c if scalar[0] else _constant(c)
                s0 = s if scalar[1] else _constant(s)
                if c0 is not None and s0 is not None:
                    cuts = cuts_for(float(c0), float(s0))
            if cuts is not None:
                if check_missing and not late_check and np.isnan(xs).any():
                    raise _MissingPointError
                for li, (cut_hi, cut_lo) in enumerate(cuts):
                    np.greater(xs, cut_hi, out=buf[2 * li, :m])
                    np.less(xs, cut_lo, out=buf[2 * li + 1, :m])
            elif need_z:
                if zbuf is None:
                    zbuf = np.empty(chunk)
                z = standardize(xs, c, s, out=zbuf[:m])
                if check_missing and not late_check and np.isnan(z).any():
                    raise _MissingPointError
                for li, lv in enumerate(plan.levels):
                    np.greater(z, lv, out=buf[2 * li, :m])
                    np.less(z, -lv, out=buf[2 * li + 1, :m])
            if plan.need_updown:
                prev = x[a - 1 : b - 1] if a else np.concatenate(([carry.last_x], x[: b - 1]))
                np.greater(xs, prev, out=buf[2 * nlev, :m])
                np.less(xs, prev, out=buf[2 * nlev + 1, :m])
            if plan.limit_bits:
                row = buf[-1, :m]
                np.greater(xs, hi, out=row)
                np.less(xs, lo, out=scratch[:m])
                row |= scratch[:m]
            width = ((m + 63) // 64) * 64
            if width > m:
                buf[:, m:width] = False
            packed = np.packbits(buf[:, :width], axis=1, bitorder="little").view(np.uint64)
            if late_check:
                # a missing point is on neither side of the centre line; so is a point on
                # it, which is rare: only those few are looked at
                off = packed[2 * zero_row] | packed[2 * zero_row + 1]
                if width > m:
                    off[-1] |= ~_MASKS[64 - (width - m)]
                if not (~off == 0).all():
                    cand = _bit_positions(~off, m)
                    probe = xs[cand] if cuts is not None else z[cand]
                    if np.isnan(probe).any():
                        raise _MissingPointError
            words[:, 1 + a // 64 : 1 + a // 64 + width // 64] = packed
    return words


def _constant(v: np.ndarray) -> float | None:
    """v's single value if all its entries are equal (and not NaN), else None."""
    v0 = v[0]
    if v0 == v[-1] and (v == v0).all():
        return float(v0)
    return None


def _reverse64(reg: int) -> int:
    """A 64-bit history (bit 0 newest) as the word before a series (bit 63 newest)."""
    return int(f"{reg & _U64:064b}"[::-1], 2)


def _rule_words(words: np.ndarray, plan: _Plan, valid0: np.uint64, word_chunk: int) -> np.ndarray:
    """Per rule of ``plan.rules``, the packed bits of the points that complete it.

    Works on chunks of ``word_chunk`` words, each preceded by the word before
    it: no window is longer than 64 points, so that word carries all the
    history a chunk needs.
    """
    nlev = len(plan.levels)
    nwords = words.shape[1] - 1
    out = np.zeros((len(plan.rules), nwords + 1), dtype=np.uint64)
    for j0 in range(1, nwords + 1, word_chunk):
        j1 = min(j0 + word_chunk, nwords + 1)
        w = words[:, j0 - 1 : j1]
        U = w[2 * nlev]
        D = w[2 * nlev + 1]
        for ri, r in enumerate(plan.rules):
            kind = r.kind
            run = r.run or 0
            if kind == "trend":
                res = _run(U, run - 1) | _run(D, run - 1)
            elif kind == "alternate":
                res = _run(U | D, run - 1)
                if run > 2:
                    res &= _run(U ^ _shl(U, 1), run - 2)
            else:
                li = plan.levels.index(float(r.level or 0.0))
                P = w[2 * li]
                N = w[2 * li + 1]
                if kind == "side":
                    res = _run(P, run) | _run(N, run)
                elif kind == "k_of_m":
                    k, m = r.k or 1, r.m or 1
                    res = _k_of_m(P, k, m) | _k_of_m(N, k, m)
                elif kind == "within":
                    W = ~(P | N)
                    if j0 == 1:
                        W[0] &= valid0
                    res = _run(W, run)
                else:  # beyond_both
                    res = _run(P | N, run) & _any(P, run) & _any(N, run)
            out[ri, j0:j1] = res[1:]
    return out


def _bit_positions(words: np.ndarray, n: int) -> np.ndarray:
    """Indices i < n of the set bits of ``words`` (bit i%64 of word i//64), unordered."""
    nz = np.flatnonzero(words)
    w = words[nz]
    parts = [nz[:0]]
    # one round per bit still set in the busiest word: fine while bits are sparse
    while nz.size:
        low = w & (~w + np.uint64(1))
        parts.append(nz * 64 + np.bitwise_count(low - np.uint64(1)))
        w &= w - np.uint64(1)
        more = w != 0
        nz = nz[more]
        w = w[more]
    pos = np.concatenate(parts)
    return pos[pos < n]


def _or_bits(out: np.ndarray, words: np.ndarray, bit: int) -> None:
    """OR ``bit`` into ``out[i]`` for every set bit i of ``words`` (bit i%64 of word i//64)."""
    n = out.shape[0]
    total = int(np.bitwise_count(words).sum(dtype=np.int64))
    if not total:
        return
    if total * 16 > n:
        # dense (long runs, constant data): one masked pass beats finding positions
        hit = np.unpackbits(words.view(np.uint8), bitorder="little", count=n).view(bool)
        np.bitwise_or(out, np.uint32(bit), out=out, where=hit)
    else:
        out[_bit_positions(words, n)] |= np.uint32(bit)


def _masks(
    x: np.ndarray,
    center: Any,
    sigma: Any,
    lcl: Any,
    ucl: Any,
    plan: _Plan,
    carry: RuleCarry,
    chunk: int,
    word_chunk: int,
    check_missing: bool,
    cuts_min: int,
) -> np.ndarray:
    """Violation masks of the plotted points ``x`` (see :func:`_flag_words` for missing)."""
    n = len(x)
    out = np.zeros(n, dtype=np.uint32)
    if not plan.rules and not plan.limit_bits and not check_missing:
        return out
    words = _flag_words(x, center, sigma, lcl, ucl, plan, carry, chunk, check_missing, cuts_min)
    if plan.limit_bits:
        _or_bits(out, words[-1, 1:], plan.limit_bits)
    if plan.rules:
        valid0 = np.uint64((int(_MASKS[carry.count]) << (64 - carry.count)) & _U64)
        per_rule = _rule_words(words, plan, valid0, word_chunk)
        for r, rw in zip(plan.rules, per_rule, strict=True):
            _or_bits(out, rw[1:], 1 << r.bit)
    return out


def _as_inputs(
    x: Any, center: Any, sigma: Any, lcl: Any, ucl: Any
) -> tuple[np.ndarray, Any, Any, Any, Any]:
    xa = np.asarray(x, dtype=np.float64)
    if xa.ndim != 1:
        raise SpcInputError("values", f"must be a 1-D series, got shape {xa.shape}")
    outs = []
    for name, v in (("center", center), ("sigma", sigma), ("lcl", lcl), ("ucl", ucl)):
        arr = np.asarray(v, dtype=np.float64)
        if arr.ndim == 0:
            outs.append(arr[()])
        elif arr.shape != xa.shape:
            raise SpcInputError(name, f"length {arr.size} does not match {xa.size} values")
        else:
            outs.append(arr)
    return xa, outs[0], outs[1], outs[2], outs[3]


def _pick(v: Any, sel: Any) -> Any:
    return v if np.ndim(v) == 0 else v[sel]


def _squeeze(v: Any) -> Any:
    """A per-point array whose entries are all equal as that one value (nothing to compress)."""
    if np.ndim(v) == 0 or not v.size:
        return v
    v0 = _constant(v)
    return v if v0 is None else np.float64(v0)


def _evaluate(
    x: Any,
    center: Any,
    sigma: Any,
    lcl: Any,
    ucl: Any,
    config: RuleConfig | str | Sequence[str],
    carry: RuleCarry | None,
    want_carry: bool,
    chunk: int = _CHUNK,
    word_chunk: int = _WORD_CHUNK,
    cuts_min: int = _CUTS_MIN,
) -> tuple[np.ndarray, RuleCarry | None]:
    if chunk <= 0 or chunk % 64 or word_chunk <= 0:
        raise ValueError("chunk must be a positive multiple of 64, word_chunk positive")
    xa, c, s, lo, hi = _as_inputs(x, center, sigma, lcl, ucl)
    if not isinstance(config, RuleConfig):
        config = resolve_rules(config)
    plan = _plan(config)
    carry = carry if carry is not None else RuleCarry()
    if carry.count:
        for lv in plan.levels:
            carry.history(lv)
    try:
        # assume no point is missing; the chunk loop finds out cheaply
        mask = _masks(xa, c, s, lo, hi, plan, carry, chunk, word_chunk, True, cuts_min)
        xp, cp, sp = xa, c, s
    except _MissingPointError:
        keep = ~np.isnan(standardize(xa, c, s))
        c, s, lo, hi = (_squeeze(v) for v in (c, s, lo, hi))
        xp, cp, sp = xa[keep], _pick(c, keep), _pick(s, keep)
        lk, hk = _pick(lo, keep), _pick(hi, keep)
        inner = _masks(xp, cp, sp, lk, hk, plan, carry, chunk, word_chunk, False, cuts_min)
        mask = np.zeros(len(xa), dtype=np.uint32)
        mask[keep] = inner
    if not want_carry:
        return mask, None
    n = len(xp)
    t = min(n, MAX_WINDOW)
    tail = slice(n - t, n)
    xt = xp[tail]
    zt = standardize(xt, _pick(cp, tail), _pick(sp, tail))
    prev_x = float(xp[n - t - 1]) if n > t else carry.last_x
    return mask, _carry_after(carry, plan.levels, xt, zt, prev_x, n)


def evaluate(
    x: Any, center: Any, sigma: Any, lcl: Any, ucl: Any, config: RuleConfig | str | Sequence[str]
) -> np.ndarray:
    """Violation bitmask (``uint32``, bits in :data:`BITS`) for each point of one series.

    ``x`` is the plotted series; ``center``, ``sigma`` (zone width of the
    plotted statistic), ``lcl`` and ``ucl`` are per-point arrays of the same
    length (scalars are broadcast). A NaN limit never triggers N1/WE1. A point
    whose x, center or sigma is NaN (or sigma < 0) is missing: it is skipped,
    the series being the plotted points only, and its mask is 0. ``config`` is
    a :class:`RuleConfig` (or a spec for :func:`resolve_rules`).
    """
    return _evaluate(x, center, sigma, lcl, ucl, config, None, False)[0]


def evaluate_with_carry(
    x: Any,
    center: Any,
    sigma: Any,
    lcl: Any,
    ucl: Any,
    config: RuleConfig | str | Sequence[str],
    carry: RuleCarry | None = None,
) -> RuleResult:
    """Like :func:`evaluate`, continuing after the points summarised by ``carry``.

    Returns the masks and the carry after the last point, so for any split
    ``evaluate_with_carry(b, …, carry=evaluate_with_carry(a, …).carry).mask``
    equals the tail of ``evaluate(a + b, …)``: run-rule windows continue across
    the split (the Phase I/II boundary). The carry must keep a history at every
    σ level ``config`` uses (:attr:`RuleConfig.levels`), else
    :class:`SpcInputError`; it can seed a :class:`RuleBank` characteristic.
    """
    mask, out = _evaluate(x, center, sigma, lcl, ucl, config, carry, True)
    assert out is not None
    return RuleResult(mask, out)


# --------------------------------------------------------------------------- streaming

_STATE_FORMAT = "shopspc.rules.RuleBank"
_STATE_VERSION = 1


@dataclass(frozen=True)
class _Program:
    """The configs of a bank compiled into register tests ("terms").

    A rule fires when one of its (at most 2) alternatives holds, an
    alternative when all its (at most 3) terms do. A term tests one register
    (a 64-bit history, bit 0 = newest point) under a mask: ``eq`` all masked
    bits set, ``any`` some set, ``count`` at least k set. Registers are the
    bank's histories (``U, D, P0, N0, P1, N1, …``) followed by derived ones
    (``NZ = U|D``; ``X = U ^ (U >> 1)``, alternation; ``B_l = P_l|N_l``;
    ``W_l = ~B_l`` over the plotted points, within level l) when some rule
    needs them. The term layout is the same for every config (one block per
    code any config uses, eq terms first, then any, then count); per config
    only the register row, the mask and k change, and a config without a code
    has that code's bit cleared at the end.
    """

    nslots: int
    levels: np.ndarray  # (T, S) float64, NaN where a config has fewer levels
    bits: np.ndarray  # (T,) uint32 codes each config enables
    limit_bits: np.ndarray  # (T,) uint32 N1/WE1 bits each config enables
    any_limit: bool
    derived: tuple[str, ...]  # derived registers, in stack order after the histories
    rows: np.ndarray  # (J, T) register row of each term, per config
    masks: np.ndarray  # (J, T) uint64
    ks: np.ndarray  # (J, T) uint8 (count terms)
    n_eq: int  # terms [0, n_eq) are eq, [n_eq, n_any) any, [n_any, J) count
    n_any: int
    alt_terms: np.ndarray  # (A + 1, 3) term rows per alternative; J = true, J + 1 = false
    rule_alts: np.ndarray  # (rules, 2) alternatives per rule; A = the always-false one
    rule_bits: np.ndarray  # (rules, 1) uint32
    static_rows: bool  # every config uses the same register rows


# terms of each kind of rule: alternatives of (register, mask, test)
_SHAPES: dict[str, list[list[tuple[str, str, str]]]] = {
    "side": [[("P", "run", "eq")], [("N", "run", "eq")]],
    "trend": [[("U", "run-1", "eq")], [("D", "run-1", "eq")]],
    "alternate": [[("NZ", "run-1", "eq"), ("X", "run-2", "eq")]],
    "k_of_m": [
        [("P", "newest", "eq"), ("P", "m", "count")],
        [("N", "newest", "eq"), ("N", "m", "count")],
    ],
    "within": [[("W", "run", "eq")]],
    "beyond_both": [[("B", "run", "eq"), ("P", "run", "any"), ("N", "run", "any")]],
}


def _compile(configs: list[RuleConfig], nslots: int) -> _Program:
    T = len(configs)
    S = nslots
    R = 2 + 2 * S
    levels = np.full((T, S), np.nan)
    bits = np.zeros(T, dtype=np.uint32)
    limit_bits = np.zeros(T, dtype=np.uint32)
    for t, cfg in enumerate(configs):
        levels[t, : len(cfg.levels)] = cfg.levels
        bits[t] = cfg.bits
        for r in cfg.rules:
            if r.kind == "limit":
                limit_bits[t] |= np.uint32(1 << r.bit)
    codes = [
        c for c in _RULE_CODES if RULES[c].kind != "limit" and any(cfg.get(c) for cfg in configs)
    ]
    kinds = {RULES[c].kind for c in codes}
    derived: list[str] = []
    if "alternate" in kinds:
        derived += ["NZ", "X"]
    if kinds & {"within", "beyond_both"}:
        derived += [f"B{j}" for j in range(S)]
    if "within" in kinds:
        derived += [f"W{j}" for j in range(S)]

    def row(reg: str, slot: int) -> int:
        fixed = {"U": 0, "D": 1, "P": 2 + 2 * slot, "N": 3 + 2 * slot}
        if reg in fixed:
            return fixed[reg]
        return R + derived.index(reg if reg in ("NZ", "X") else f"{reg}{slot}")

    # collect terms per test, each with (per-config rows, masks, ks) and its alternative slot
    found: dict[str, list[tuple[list[int], list[int], list[int], int, int]]] = {
        "eq": [],
        "any": [],
        "count": [],
    }
    alts: list[int] = []  # rule index of each alternative
    for ri, code in enumerate(codes):
        for alt in _SHAPES[RULES[code].kind]:
            ai = len(alts)
            alts.append(ri)
            for ti, (reg, mask_name, test) in enumerate(alt):
                rows_c, masks_c, ks_c = [], [], []
                for cfg in configs:
                    r = cfg.get(code)
                    if r is None:
                        rows_c.append(0)
                        masks_c.append(0)
                        ks_c.append(0)
                        continue
                    slot = cfg.levels.index(float(r.level)) if r.level is not None else 0
                    run = r.run or 0
                    width = {"run": run, "run-1": run - 1, "run-2": run - 2, "m": r.m or 0}
                    mask = 1 if mask_name == "newest" else int(_MASKS[width[mask_name]])
                    rows_c.append(row(reg, slot))
                    masks_c.append(mask)
                    ks_c.append((r.k or 1) if test == "count" else 0)
                found[test].append((rows_c, masks_c, ks_c, ai, ti))
    ordered = found["eq"] + found["any"] + found["count"]
    J = len(ordered)
    A = len(alts)
    alt_terms = np.full((A + 1, 3), J, dtype=np.intp)  # J: the always-true row
    alt_terms[A, 0] = J + 1  # the always-false alternative
    for j, (_, _, _, ai, ti) in enumerate(ordered):
        alt_terms[ai, ti] = j
    rule_alts = np.full((len(codes), 2), A, dtype=np.intp)
    taken = [0] * len(codes)
    for ai, ri in enumerate(alts):
        rule_alts[ri, taken[ri]] = ai
        taken[ri] += 1
    rows = np.array([o[0] for o in ordered], dtype=np.intp).reshape(J, T)
    return _Program(
        nslots=S,
        levels=levels,
        bits=bits,
        limit_bits=limit_bits,
        any_limit=bool(limit_bits.any()),
        derived=tuple(derived),
        rows=rows,
        masks=np.array([o[1] for o in ordered], dtype=np.uint64).reshape(J, T),
        ks=np.array([o[2] for o in ordered], dtype=np.uint8).reshape(J, T),
        n_eq=len(found["eq"]),
        n_any=len(found["eq"]) + len(found["any"]),
        alt_terms=alt_terms,
        rule_alts=rule_alts,
        rule_bits=np.array([1 << BITS[c] for c in codes], dtype=np.uint32).reshape(-1, 1),
        static_rows=bool((rows == rows[:, :1]).all()) if T else True,
    )


# up to this many distinct configs, a step runs each config's own program on its
# characteristics; beyond it, one program for all with per-characteristic tables
_GROUP_MAX = 16


class RuleBank:
    """Streaming run rules for many characteristics at once, batch-exact.

    Characteristic ``i`` is judged with ``configs[i]``; configs may differ in
    codes and parameters. The state is a few numpy arrays indexed by
    characteristic: a column of ``uint64`` bit histories (up, down, then
    beyond +level / −level for each σ level of its config; bit 0 = newest
    plotted point), the last plotted value and the count of plotted points
    (capped at 64). Parameters live in a small per-config table (identical
    configs share an entry), so a characteristic costs 8·(2 + 2·S) + 13 bytes,
    S being the most σ levels any config uses (3 for ``nelson``: 77 bytes).

    Feeding a series point by point, in any split, gives exactly the masks of
    :func:`evaluate` on the whole series.
    """

    def __init__(self, configs: Sequence[RuleConfig | str | Sequence[str]] = ()) -> None:
        self._configs: list[RuleConfig] = []
        self._config_ids: dict[RuleConfig, int] = {}
        self._cfg = np.zeros(0, dtype=np.uint32)
        self._regs = np.zeros((2, 0), dtype=np.uint64)  # (rows, characteristics)
        self._last = np.zeros(0, dtype=np.float64)
        self._count = np.zeros(0, dtype=np.uint8)
        self._nslots = 0
        self._progs: dict[int, _Program] = {}
        self._union_prog: _Program | None = None
        self.extend(configs)

    # ------------------------------------------------------------------ shape

    def __len__(self) -> int:
        return int(self._cfg.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of per-characteristic state (histories, last value, count, config id)."""
        return int(self._regs.nbytes + self._last.nbytes + self._count.nbytes + self._cfg.nbytes)

    def config(self, i: int) -> RuleConfig:
        """The rule config of characteristic ``i``."""
        return self._configs[int(self._cfg[i])]

    def extend(
        self,
        configs: Sequence[RuleConfig | str | Sequence[str]],
        carries: Sequence[RuleCarry | None] | None = None,
    ) -> np.ndarray:
        """Add characteristics (empty histories, or seeded from ``carries``); returns their indices.

        A carry (from :func:`evaluate_with_carry` on the history, say) must keep
        every σ level its config uses.
        """
        resolved = [c if isinstance(c, RuleConfig) else resolve_rules(c) for c in configs]
        if carries is not None and len(carries) != len(resolved):
            raise SpcInputError("carries", f"{len(carries)} carries for {len(resolved)} configs")
        start = len(self)
        ids = np.empty(len(resolved), dtype=np.uint32)
        grew = False
        for j, cfg in enumerate(resolved):
            cid = self._config_ids.get(cfg)
            if cid is None:
                cid = len(self._configs)
                self._configs.append(cfg)
                self._config_ids[cfg] = cid
                grew = True
            ids[j] = cid
        nslots = max([self._nslots, *(len(c.levels) for c in resolved)])
        if nslots > self._nslots:
            wider = np.zeros((2 + 2 * nslots, len(self)), dtype=np.uint64)
            wider[: self._regs.shape[0]] = self._regs
            self._regs = wider
            self._nslots = nslots
            self._progs.clear()
        if grew:
            self._union_prog = None
        n = len(resolved)
        self._cfg = np.concatenate((self._cfg, ids))
        fresh = np.zeros((self._regs.shape[0], n), dtype=np.uint64)
        self._regs = np.concatenate((self._regs, fresh), axis=1)
        self._last = np.concatenate((self._last, np.full(n, np.nan)))
        self._count = np.concatenate((self._count, np.zeros(n, dtype=np.uint8)))
        for j, carry in enumerate(carries or ()):
            if carry is not None:
                self._set_carry(start + j, carry, f"carries[{j}]")
        return np.arange(start, start + n, dtype=np.intp)

    def reset(self, idx: Any) -> None:
        """Forget the history of characteristics ``idx`` (their windows start afresh)."""
        idx = np.asarray(idx, dtype=np.intp)
        self._regs[:, idx] = 0
        self._last[idx] = np.nan
        self._count[idx] = 0

    # ------------------------------------------------------------------ carry

    def carry(self, i: int) -> RuleCarry:
        """The history of characteristic ``i`` as a :class:`RuleCarry`."""
        lv = self.config(i).levels
        col = [int(v) for v in self._regs[:, i]]
        return RuleCarry(
            lv,
            tuple(col[2 + 2 * j] for j in range(len(lv))),
            tuple(col[3 + 2 * j] for j in range(len(lv))),
            col[0],
            col[1],
            float(self._last[i]),
            int(self._count[i]),
        )

    def _set_carry(self, i: int, carry: RuleCarry, path: str) -> None:
        lv = self.config(i).levels
        col = np.zeros(self._regs.shape[0], dtype=np.uint64)
        if carry.count:
            col[0], col[1] = carry.up, carry.down
            for j, level in enumerate(lv):
                try:
                    col[2 + 2 * j], col[3 + 2 * j] = carry.history(level)
                except SpcInputError as e:
                    raise SpcInputError(path, e.message) from None
        self._regs[:, i] = col
        self._last[i] = carry.last_x if carry.count else np.nan
        self._count[i] = min(carry.count, MAX_WINDOW)

    # ------------------------------------------------------------------ step

    def step(self, idx: Any, x: Any, center: Any, sigma: Any, lcl: Any, ucl: Any) -> np.ndarray:
        """Judge one new point for each characteristic in ``idx``; returns their ``uint32`` masks.

        ``idx`` holds characteristic indices, unique within one call (split a
        micro-batch with several points of one characteristic into rounds), or
        a ``slice`` (``slice(None)``: every characteristic, in order, without
        gathering). ``x``, ``center``, ``sigma``, ``lcl``, ``ucl`` are aligned
        with it (scalars are broadcast). A missing point (NaN x, center or
        sigma) changes nothing and gets mask 0.
        """
        K = len(self)
        sel: Any
        if isinstance(idx, slice):
            start, stop, stride = idx.indices(K)
            n = len(range(start, stop, stride))
            sel = slice(start, stop, stride)
        else:
            sel = np.asarray(idx, dtype=np.intp).reshape(-1)
            n = sel.shape[0]
        x = np.broadcast_to(np.asarray(x, dtype=np.float64), (n,))
        z = np.broadcast_to(standardize(x, center, sigma), (n,))
        if n == 0:
            return np.zeros(0, dtype=np.uint32)
        if len(self._configs) == 1:
            return self._run(self._program(0), sel, x, z, lcl, ucl, None)
        cfg = self._cfg[sel]
        if len(self._configs) > _GROUP_MAX:
            return self._run(self._union(), sel, x, z, lcl, ucl, cfg)
        # one run per config present, on its own characteristics
        order = np.argsort(cfg, kind="stable")
        ordered = cfg[order]
        cuts = [0, *(np.flatnonzero(ordered[1:] != ordered[:-1]) + 1).tolist(), n]
        cols = np.arange(K)[sel] if isinstance(sel, slice) else sel
        lo = np.broadcast_to(np.asarray(lcl, dtype=np.float64), (n,))
        hi = np.broadcast_to(np.asarray(ucl, dtype=np.float64), (n,))
        out = np.empty(n, dtype=np.uint32)
        for a, b in itertools.pairwise(cuts):
            part = order[a:b]
            prog = self._program(int(ordered[a]))
            out[part] = self._run(prog, cols[part], x[part], z[part], lo[part], hi[part], None)
        return out

    def _program(self, cid: int) -> _Program:
        prog = self._progs.get(cid)
        if prog is None:
            prog = _compile([self._configs[cid]], self._nslots)
            self._progs[cid] = prog
        return prog

    def _union(self) -> _Program:
        if self._union_prog is None:
            self._union_prog = _compile(self._configs, self._nslots)
        return self._union_prog

    def _run(
        self,
        pr: _Program,
        sel: Any,
        x: np.ndarray,
        z: np.ndarray,
        lcl: Any,
        ucl: Any,
        cfg: np.ndarray | None,
    ) -> np.ndarray:
        """Step the characteristics ``sel`` with program ``pr`` (per-config tables if ``cfg``)."""
        n = x.shape[0]
        R = self._regs.shape[0]
        S = pr.nslots
        out = np.zeros(n, dtype=np.uint32)

        def per(table: np.ndarray) -> np.ndarray:
            # a (…, T) table's column for each characteristic (T = 1: broadcast)
            return table[..., :1] if cfg is None else table[..., cfg]

        stack = np.empty((R + len(pr.derived), n), dtype=np.uint64)
        new = stack[:R]
        last = self._last[sel]
        with np.errstate(all="ignore"):
            flags = np.empty((R, n), dtype=bool)
            np.greater(x, last, out=flags[0])
            np.less(x, last, out=flags[1])
            if S:
                lv = per(pr.levels.T)
                np.greater(z, lv, out=flags[2::2])
                np.less(z, -lv, out=flags[3::2])
            if isinstance(sel, slice):
                np.left_shift(self._regs[:, sel], np.uint64(1), out=new)
            else:
                np.take(self._regs, sel, axis=1, out=new)
                new <<= np.uint64(1)
            new |= flags
            count = np.minimum(self._count[sel] + np.uint8(1), np.uint8(MAX_WINDOW))
            if pr.any_limit:
                lim = np.greater(x, ucl)
                lim |= np.less(x, lcl)
                np.bitwise_or(out, per(pr.limit_bits), out=out, where=lim)
            J = pr.rows.shape[0]
            if J:
                self._derive(pr, stack, count)
                if cfg is None:
                    t = stack[pr.rows[:, 0]]
                else:
                    t = stack[pr.rows[:, cfg], np.arange(n)]
                masks = per(pr.masks)
                t &= masks
                tb = np.empty((J + 2, n), dtype=bool)
                tb[J] = True
                tb[J + 1] = False
                e, na = pr.n_eq, pr.n_any
                np.equal(t[:e], masks[:e], out=tb[:e])
                np.not_equal(t[e:na], 0, out=tb[e:na])
                if na < J:
                    np.greater_equal(np.bitwise_count(t[na:]), per(pr.ks[na:]), out=tb[na:J])
                alts = tb[pr.alt_terms].all(axis=1)
                hits = alts[pr.rule_alts].any(axis=1)
                out |= np.bitwise_or.reduce(hits * pr.rule_bits, axis=0)
            if cfg is not None:
                out &= pr.bits[cfg]
        ok = z == z
        if ok.all():
            self._regs[:, sel] = new
            self._last[sel] = x
            self._count[sel] = count
        else:
            out[~ok] = 0
            rows = np.arange(len(self))[sel][ok]
            self._regs[:, rows] = new[:, ok]
            self._last[rows] = x[ok]
            self._count[rows] = count[ok]
        return out

    @staticmethod
    def _derive(pr: _Program, stack: np.ndarray, count: np.ndarray) -> None:
        """Fill the derived registers (rows after the histories) the program asks for."""
        d = pr.derived
        S = pr.nslots
        r = 2 + 2 * S
        U, D = stack[0], stack[1]
        if "NZ" in d:
            np.bitwise_or(U, D, out=stack[r])
            np.right_shift(U, np.uint64(1), out=stack[r + 1])
            stack[r + 1] ^= U
            r += 2
        if S and "B0" in d:
            B = stack[r : r + S]
            np.bitwise_or(stack[2 : 2 + 2 * S : 2], stack[3 : 3 + 2 * S : 2], out=B)
            r += S
            if "W0" in d:
                W = stack[r : r + S]
                np.invert(B, out=W)
                W &= _MASKS[count]

    # ------------------------------------------------------------------ persistence

    def _levels_matrix(self) -> np.ndarray:
        levels = np.full((len(self._configs), self._nslots), np.nan)
        for t, cfg in enumerate(self._configs):
            levels[t, : len(cfg.levels)] = cfg.levels
        return levels[self._cfg]

    def state_dict(self) -> dict[str, Any]:
        """The histories as plain JSON types (restore with :meth:`from_state`)."""
        lv = self._levels_matrix()
        return {
            "format": _STATE_FORMAT,
            "version": _STATE_VERSION,
            "levels": [[v for v in row if not math.isnan(v)] for row in lv.tolist()],
            "regs": self._regs.T.tolist(),
            "last_x": [None if math.isnan(v) else v for v in self._last.tolist()],
            "count": self._count.tolist(),
        }

    @classmethod
    def from_state(
        cls,
        configs: Sequence[RuleConfig | str | Sequence[str]],
        state: Mapping[str, Any],
        *,
        strict: bool = True,
    ) -> RuleBank:
        """Rebuild a bank from ``configs`` and a :meth:`state_dict`.

        The histories are kept per σ level, so a config may change its codes or
        run lengths across a restart and keep its history; if it now needs a
        level the saved state lacks, that is an :class:`SpcInputError` naming
        ``state.levels[i]``, or with ``strict=False`` that characteristic
        starts afresh.
        """
        if state.get("format") != _STATE_FORMAT or state.get("version") != _STATE_VERSION:
            raise SpcInputError("state", "not a RuleBank state (format/version)")
        bank = cls(configs)
        K = len(bank)
        for key in ("levels", "regs", "last_x", "count"):
            if len(state[key]) != K:
                raise SpcInputError(f"state.{key}", f"{len(state[key])} entries for {K} configs")
        last = np.array([math.nan if v is None else v for v in state["last_x"]], dtype=np.float64)
        bank._restore(
            [tuple(float(v) for v in row) for row in state["levels"]],
            [[int(v) for v in row] for row in state["regs"]],
            last,
            np.asarray(state["count"], dtype=np.int64),
            strict,
        )
        return bank

    def _restore(
        self,
        levels: list[tuple[float, ...]],
        regs: list[list[int]] | np.ndarray,
        last: np.ndarray,
        count: np.ndarray,
        strict: bool,
    ) -> None:
        self._last[:] = last
        self._count[:] = np.clip(count, 0, MAX_WINDOW)
        for i, old in enumerate(levels):
            new_lv = self.config(i).levels
            row = regs[i]
            width = 2 + 2 * len(old)
            if len(row) < width:
                raise SpcInputError(f"state.regs[{i}]", "too few histories for its levels")
            if tuple(old) == new_lv:
                self._regs[:width, i] = row[:width]
                continue
            if not set(new_lv) <= set(old):
                if strict:
                    raise SpcInputError(
                        f"state.levels[{i}]",
                        f"saved history has levels {list(old)}, the config needs {list(new_lv)}",
                    )
                self.reset([i])
                continue
            self._regs[0, i] = row[0]
            self._regs[1, i] = row[1]
            for j, lv in enumerate(new_lv):
                o = old.index(lv)
                self._regs[2 + 2 * j, i] = row[2 + 2 * o]
                self._regs[3 + 2 * j, i] = row[3 + 2 * o]

    def to_bytes(self) -> bytes:
        """Compact binary state (an ``.npz`` without pickles); restore with :meth:`from_bytes`."""
        buf = io.BytesIO()
        np.savez(
            buf,
            version=np.array([_STATE_VERSION]),
            levels=self._levels_matrix(),
            regs=self._regs.T,
            last=self._last,
            count=self._count,
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(
        cls,
        configs: Sequence[RuleConfig | str | Sequence[str]],
        data: bytes,
        *,
        strict: bool = True,
    ) -> RuleBank:
        """Inverse of :meth:`to_bytes` (same rules as :meth:`from_state`)."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("version", "levels", "regs", "last", "count")}
        except (OSError, ValueError, KeyError) as e:
            raise SpcInputError("state", f"not a RuleBank state: {e}") from None
        if int(arrays["version"][0]) != _STATE_VERSION:
            raise SpcInputError("state", "unsupported RuleBank state version")
        bank = cls(configs)
        K = len(bank)
        if arrays["regs"].shape[0] != K:
            raise SpcInputError(
                "state", f"{arrays['regs'].shape[0]} characteristics for {K} configs"
            )
        levels = [tuple(v for v in row if not math.isnan(v)) for row in arrays["levels"].tolist()]
        bank._restore(levels, arrays["regs"], arrays["last"], arrays["count"], strict)
        return bank
