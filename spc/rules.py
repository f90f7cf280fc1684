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
characteristic (bit 0 = newest point). All its configs are compiled together
into one straight-line program of fused array operations over the low bits of
those registers (``uint16`` when no window exceeds 16 points): one masked
comparison for every run test, one bit count for the k-of-m tests, one
weighted OR for the masks, each config keeping its own tests. A step costs
the same few dozen numpy calls whatever the mix of configs, on scratch
buffers allocated once.
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
    "npz_bytes",
    "resolve_rules",
    "standardize",
    "violation_indices",
]

#: Contiguous runs shorter than this are gathered unless their slice views are bound already.
_SLICE_MIN = 32
_BOUND_CAP = 256  # cached call shapes (views into the scratch buffers: small objects)

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

_ONE = np.uint64(1)
_U8_ONE = np.uint8(1)
_U8_CAP = np.uint8(MAX_WINDOW)

# A bank keeps a history at every σ level any of its configs uses (one slot
# per level, so the flags of a step are one comparison with constants) unless
# that needs more than this many slots beyond the largest config's own count;
# then slot j holds each config's own j-th level, compared per characteristic.
_UNION_SLACK = 1

# steps of up to this many characteristics get their constant columns spelled out (a
# same-shape operand is cheaper than a broadcast one for short rows, dearer for long)
_SPELL_MAX = 4096

# an operand of a compiled instruction: (buffer, row) or ("k", value), a per-row constant
_Operand = tuple[str, int]


@dataclass(frozen=True)
class _Ins:
    """One array operation of a compiled rule program, on single rows of the scratch buffers.

    Buffers: ``st`` the register stack (gathered copies, histories, derived
    registers), ``hb`` boolean hits, ``cb`` bit counts. ``fn`` is a ufunc
    (inputs, then the output) or ``np.copyto`` (output, then input).
    Consecutive instructions whose rows step evenly are merged into one call.
    """

    fn: Any
    out: _Operand
    ins: tuple[_Operand, ...]
    kdtype: str = "D"  # dtype of constants: "D" (the stack's) or "u8"


@dataclass(frozen=True)
class _Merged:
    fn: Any
    out: tuple[str, int, int, int]  # buffer, first row, step, count
    ins: tuple[tuple[str, int, int, int] | np.ndarray, ...]


def _progression(rows: list[int]) -> tuple[int, int] | None:
    """(first, step) if ``rows`` step evenly upwards (one row: step 1), else None."""
    if len(rows) == 1:
        return rows[0], 1
    step = rows[1] - rows[0]
    if step <= 0 or any(b - a != step for a, b in itertools.pairwise(rows)):
        return None
    return rows[0], step


def _merge(seq: list[_Ins], dtype: np.dtype) -> list[_Merged]:
    """Fuse runs of like instructions on evenly stepped rows into single calls."""
    out: list[_Merged] = []
    i = 0
    while i < len(seq):
        group = [seq[i]]
        j = i + 1
        while j < len(seq) and _mergeable(group, seq[j]):
            group.append(seq[j])
            j += 1
        first = group[0]
        cnt = len(group)
        o0, ostep = _progression([g.out[1] for g in group])  # type: ignore[misc]
        ins: list[tuple[str, int, int, int] | np.ndarray] = []
        for p, op in enumerate(first.ins):
            if op[0] == "k":
                dt = dtype if first.kdtype == "D" else np.dtype(np.uint8)
                ins.append(np.array([g.ins[p][1] for g in group], dtype=dt).reshape(cnt, 1))
            else:
                r0, st = _progression([g.ins[p][1] for g in group])  # type: ignore[misc]
                ins.append((op[0], r0, st, cnt))
        out.append(_Merged(first.fn, (first.out[0], o0, ostep, cnt), tuple(ins)))
        i = j
    return out


def _mergeable(group: list[_Ins], nxt: _Ins) -> bool:
    first = group[0]
    if nxt.fn is not first.fn or nxt.kdtype != first.kdtype or nxt.out[0] != first.out[0]:
        return False
    if len(nxt.ins) != len(first.ins) or any(
        a[0] != b[0] for a, b in zip(first.ins, nxt.ins, strict=True)
    ):
        return False
    cand = [*group, nxt]
    if _progression([g.out[1] for g in cand]) is None:
        return False
    for p, op in enumerate(first.ins):
        if op[0] != "k" and _progression([g.ins[p][1] for g in cand]) is None:
            return False
    # one call reads every input before it writes: no member may read another's output
    outs = [g.out for g in cand]
    if len(set(outs)) != len(outs):
        return False
    return not any(op in outs and op != g.out for g in cand for op in g.ins if op[0] != "k")


@dataclass
class _BankProgram:
    """The configs of a bank compiled into a straight-line array program.

    Every distinct test (a rule kind with its parameters and σ slot) of any
    config is evaluated for every characteristic of a step; each
    characteristic then keeps the tests of its config. A test is one or two
    alternatives (either side of the centre, up or down), an alternative one
    to three register terms: ``eq`` (all masked bits set), ``cnt`` (at least
    k masked bits set) or ``any`` (some masked bit set). The first ``eq``
    mask of every stack row runs as one fused layer; the other terms are
    gathered into one block. Each test ends in a row of the "fires" block of
    ``hb``; the masks are a weighted OR of those rows (one byte lane per
    ``lanes`` entry), per characteristic cut to its config's tests
    (``entab``) and codes (``allowtab``), or, where that cannot separate the
    configs, looked up per 8 rows in per-config tables (``groups``).
    """

    S: int
    R: int
    dtype: np.dtype
    nrows: dict[str, int]
    derive: list[_Merged]
    w_rows: tuple[int, int] | None  # st rows of the within registers (they take the valid mask)
    base: int  # st row of U (the gathered block comes first)
    gather: np.ndarray | None  # st rows copied into the gathered block
    tests: list[_Merged]
    fires: tuple[int, int]  # hb rows
    limit: int | None  # hb row of x > UCL (x < LCL in the next)
    lanes: list[tuple[int, np.ndarray]]  # (byte of the mask, uint8 weights (F, 1))
    entab: np.ndarray | None  # (F, T) bool: fires rows each config uses (where they clash)
    allowtab: np.ndarray | None  # (T,) uint16 codes of each config
    groups: list[tuple[int, int, np.ndarray, np.ndarray]]  # (hb a, b, weights, lut)
    valid: np.ndarray  # (MAX_WINDOW + 1,) masks of the plotted points, in dtype
    lv: np.ndarray | None  # (S, 1) levels when every config shares the slots
    nlv: np.ndarray | None
    lvtab: np.ndarray  # (S, T) each config's level per slot (NaN: none)
    nlvtab: np.ndarray
    one: _OnePoint | None = None  # the program for one point at a time, made on first use


def _run_key(rule: RuleSpec, slot: int) -> tuple[Any, ...]:
    kind = rule.kind
    if kind == "side":
        return ("run", int(rule.run), slot)  # type: ignore[arg-type]
    if kind == "k_of_m":
        k, m = int(rule.k), int(rule.m)  # type: ignore[arg-type]
        if k == 1:
            return ("run", 1, slot)  # the point itself beyond
        if k == m:
            return ("run", m, slot)  # m in a row on one side
        return ("k_of_m", k, m, slot)
    if kind in ("trend", "alternate"):
        return (kind, int(rule.run))  # type: ignore[arg-type]
    return (kind, int(rule.run), slot)  # type: ignore[arg-type]


_Term = tuple[str, int, int, int]  # (eq | cnt | any, stack row, mask, k)


def _test_terms(key: tuple[Any, ...], st_rows: Mapping[str, int]) -> list[list[_Term]]:
    """The alternatives of one test, each a list of terms."""

    def mask(n: int) -> int:
        return (1 << n) - 1

    kind = key[0]
    if kind == "run":
        n, p = key[1], 2 + 2 * key[2]
        return [[("eq", p, mask(n), 0)], [("eq", p + 1, mask(n), 0)]]
    if kind == "trend":
        n = key[1]
        return [[("eq", 0, mask(n - 1), 0)], [("eq", 1, mask(n - 1), 0)]]
    if kind == "alternate":
        n = key[1]
        alt = [("eq", st_rows["NZ"], mask(n - 1), 0)]
        if n > 2:
            alt.append(("eq", st_rows["X"], mask(n - 2), 0))
        return [alt]
    if kind == "k_of_m":
        k, m, p = key[1], key[2], 2 + 2 * key[3]
        if k == 2:
            # the point itself and any of the m − 1 before it: no bit count
            older = mask(m) ^ 1
            return [
                [("eq", p, 1, 0), ("any", p, older, 0)],
                [("eq", p + 1, 1, 0), ("any", p + 1, older, 0)],
            ]
        return [
            [("eq", p, 1, 0), ("cnt", p, mask(m), k)],
            [("eq", p + 1, 1, 0), ("cnt", p + 1, mask(m), k)],
        ]
    n, s = key[1], key[2]
    if kind == "within":
        return [[("eq", st_rows[f"W{s}"], mask(n), 0)]]
    p = 2 + 2 * s
    return [
        [("eq", st_rows[f"B{s}"], mask(n), 0), ("any", p, mask(n), 0), ("any", p + 1, mask(n), 0)]
    ]


def _compile_bank(
    configs: Sequence[RuleConfig], slot_maps: Sequence[Mapping[float, int]], S: int, union: bool
) -> _BankProgram:
    T = len(configs)
    R = 2 + 2 * S
    keys: dict[tuple[Any, ...], int] = {}
    weights: list[list[int]] = []  # per test, per config: code bits
    limit_bits = [0] * T
    window = 1
    for t, cfg in enumerate(configs):
        for r in cfg.rules:
            window = max(window, r.window)
            if r.kind == "limit":
                limit_bits[t] |= 1 << r.bit
                continue
            slot = slot_maps[t][float(r.level)] if r.level is not None else -1
            key = _run_key(r, slot)
            if key not in keys:
                keys[key] = len(keys)
                weights.append([0] * T)
            weights[keys[key]][t] |= 1 << r.bit
    dtype = next(
        np.dtype(d)
        for d in (np.uint8, np.uint16, np.uint32, np.uint64)
        if np.iinfo(d).bits >= window
    )
    kinds = {k[0] for k in keys}
    b_slots = sorted({k[-1] for k in keys if k[0] in ("within", "beyond_both")})
    w_slots = sorted({k[-1] for k in keys if k[0] == "within"})
    # the register stack: U, D, (P, N) per slot, then derived registers, within ones last
    st_rows: dict[str, int] = {}
    nst = R
    if "alternate" in kinds:
        st_rows["NZ"] = nst
        nst += 1
        if any(k[0] == "alternate" and k[1] > 2 for k in keys):
            st_rows["X"] = nst
            nst += 1
    for s in b_slots:
        st_rows[f"B{s}"] = nst
        nst += 1
    for s in w_slots:
        st_rows[f"W{s}"] = nst
        nst += 1
    alts = [_test_terms(key, st_rows) for key in keys]

    # eq terms: the first mask on each stack row runs in the fused layer (hit row = stack
    # row); the count, any and further eq terms are gathered into one block
    layer: dict[int, int] = {}
    terms: dict[_Term, None] = {}
    uses: dict[_Term, int] = {}
    for test in alts:
        for alt in test:
            for term in alt:
                terms.setdefault(term)
                uses[term] = uses.get(term, 0) + 1
                if term[0] == "eq" and term[1] not in layer:
                    layer[term[1]] = term[2]
    in_layer = {term for term in terms if term[0] == "eq" and layer[term[1]] == term[2]}

    # a gathered term second in an alternative goes in the order of the alternatives' first
    # terms, so that the ANDs combining them step evenly and fuse
    partner: dict[_Term, int] = {}
    for test in alts:
        for alt in test:
            if len(alt) > 1 and alt[0] in in_layer:
                partner[alt[1]] = min(partner.get(alt[1], nst), alt[0][1])

    def order(kind: str) -> list[_Term]:
        chosen = (t for t in terms if t[0] == kind and t not in in_layer)
        return sorted(chosen, key=lambda t: (partner.get(t, nst), t[1:]))

    # the stack: the gathered block (count, any, further eq terms: copies of history rows),
    # then U, D, (P, N) per slot, then the derived registers; a hit lands in hb at its row
    block = order("cnt") + order("any") + order("eq")
    G = len(block)
    ncnt = sum(1 for t in block if t[0] == "cnt")
    nany = sum(1 for t in block if t[0] == "any")
    hit: dict[_Term, int] = {term: G + term[1] for term in in_layer}
    for j, term in enumerate(block):
        hit[term] = j

    # the fires block of hb: the within registers' layer rows (their tests' only term),
    # then tests ending in an OR, then those ending in an AND, then copies, then limits
    w_first = G + nst - len(w_slots)
    fires_row: dict[int, int] = {}
    for ti, (key, test) in enumerate(zip(keys, alts, strict=True)):
        term = test[0][0]
        if key[0] == "within" and term in in_layer:
            fires_row[ti] = hit[term]
    or_tests = [ti for ti, test in enumerate(alts) if len(test) == 2]
    and_tests = [ti for ti, test in enumerate(alts) if len(test) == 1 and len(test[0]) > 1]
    copy_tests = [
        ti
        for ti, test in enumerate(alts)
        if len(test) == 1 and len(test[0]) == 1 and ti not in fires_row
    ]
    any_limit = any(limit_bits)
    n_fires = len(w_slots) + len(or_tests) + len(and_tests) + len(copy_tests) + 2 * any_limit
    fires0 = w_first
    nhb = fires0 + n_fires

    def st(row: str | int) -> _Operand:
        return ("st", G + (row if isinstance(row, int) else st_rows[row]))

    derive: list[_Ins] = []  # ORs first, so that they fuse
    if "NZ" in st_rows:
        derive.append(_Ins(np.bitwise_or, st("NZ"), (st(0), st(1))))
    for s in b_slots:
        derive.append(_Ins(np.bitwise_or, st(f"B{s}"), (st(2 + 2 * s), st(3 + 2 * s))))
    if "X" in st_rows:
        derive.append(_Ins(np.right_shift, st("X"), (st(0), ("k", 1))))
        derive.append(_Ins(np.bitwise_xor, st("X"), (st("X"), st(0))))
    for s in w_slots:
        derive.append(_Ins(np.invert, st(f"W{s}"), (st(f"B{s}"),)))

    seq: list[_Ins] = []
    gather = np.array([G + t[1] for t in block], dtype=np.intp) if block else None
    # one AND masks the whole stack (rows without a test: mask 0)
    masks = [t[2] for t in block] + [layer.get(r, 0) for r in range(nst)]
    top = G + max(layer) + 1 if layer else G
    for r in range(top):
        seq.append(_Ins(np.bitwise_and, ("st", r), (("st", r), ("k", masks[r]))))
    for j in range(ncnt):
        seq.append(_Ins(np.bitwise_count, ("cb", j), (("st", j),)))
    for j in range(ncnt):
        seq.append(_Ins(np.greater_equal, ("hb", j), (("cb", j), ("k", block[j][3])), "u8"))
    for j in range(ncnt, ncnt + nany):
        seq.append(_Ins(np.not_equal, ("hb", j), (("st", j), ("k", 0))))
    for r in range(ncnt + nany, top):
        seq.append(_Ins(np.equal, ("hb", r), (("st", r), ("k", masks[r]))))
    nst += G

    # terms into alternatives (AND), alternatives into tests (OR)
    nxt = fires0 + len(w_slots)
    first_and: list[_Ins] = []
    second_and: list[_Ins] = []

    def combine(alt: list[_Term], dest: int) -> int:
        rows = [hit[t] for t in alt]
        if len(rows) == 1:
            return rows[0]
        first_and.append(_Ins(np.bitwise_and, ("hb", dest), (("hb", rows[0]), ("hb", rows[1]))))
        for r in rows[2:]:
            second_and.append(_Ins(np.bitwise_and, ("hb", dest), (("hb", dest), ("hb", r))))
        return dest

    ors: list[tuple[int, int, int]] = []  # (alternative 0 row, alternative 1 row, test)
    for ti in or_tests:
        ends = []
        for alt in alts[ti]:
            if len(alt) > 1 and uses[alt[0]] > 1:
                dest = nhb
                nhb += 1
            else:
                dest = hit[alt[0]]
            ends.append(combine(alt, dest))
        ors.append((ends[0], ends[1], ti))
    ors.sort()
    for _, _, ti in ors:
        fires_row[ti] = nxt
        nxt += 1
    for ti in and_tests:
        fires_row[ti] = nxt
        combine(alts[ti][0], nxt)
        nxt += 1
    copies = []
    for ti in copy_tests:
        fires_row[ti] = nxt
        copies.append(_Ins(np.copyto, ("hb", nxt), (("hb", hit[alts[ti][0][0]]),)))
        nxt += 1
    limit = None
    if any_limit:
        limit = nxt
        nxt += 2
    assert nxt == fires0 + n_fires
    first_and.sort(key=lambda ins: ins.out[1])
    seq += first_and + second_and
    seq += [_Ins(np.bitwise_or, ("hb", fires_row[ti]), (("hb", a), ("hb", b))) for a, b, ti in ors]
    seq += copies

    # code bits of the fires rows, per config; "every" is their union over the configs
    W = [[0] * n_fires for _ in range(T)]
    for ti, row in fires_row.items():
        for t in range(T):
            W[t][row - fires0] = weights[ti][t]
    if limit is not None:
        for t in range(T):
            W[t][limit - fires0] = W[t][limit + 1 - fires0] = limit_bits[t]
    every = [0] * n_fires
    for t in range(T):
        for r in range(n_fires):
            every[r] |= W[t][r]
    allowed = [_or_all(W[t]) for t in range(T)]
    # a weighted OR with the union weights, cut to each config's codes, is exact if no
    # row a config uses brings a code of the config that it gets from another row
    clash = [r for r in range(n_fires) for t in range(T) if not W[t][r] and every[r] & allowed[t]]
    exact = all(
        every[r] & allowed[t] == W[t][r] for t in range(T) for r in range(n_fires) if W[t][r]
    )
    lanes: list[tuple[int, np.ndarray]] = []
    groups: list[tuple[int, int, np.ndarray, np.ndarray]] = []
    entab = allowtab = None
    if n_fires and exact:
        for byte in (0, 1):
            w8 = [(w >> (8 * byte)) & 0xFF for w in every]
            if any(w8):
                lanes.append((byte, np.array(w8, dtype=np.uint8).reshape(-1, 1)))
        if T > 1:
            allowtab = np.array(allowed, dtype=np.uint16)
            if clash:
                entab = np.array([[bool(W[t][r]) for t in range(T)] for r in range(n_fires)])
    elif n_fires:
        for a in range(0, n_fires, 8):
            b = min(a + 8, n_fires)
            lut = np.zeros((T, 256), dtype=np.uint32)
            p = np.arange(256)
            for i in range(b - a):
                on = (p >> i) & 1 == 1
                for t in range(T):
                    lut[t, on] |= np.uint32(W[t][a + i])
            w8 = np.array([1 << i for i in range(b - a)], dtype=np.uint8).reshape(-1, 1)
            groups.append((fires0 + a, fires0 + b, w8, lut.reshape(-1)))
    lvtab = np.full((S, T), np.nan)
    for t, cfg in enumerate(configs):
        for level in cfg.levels:
            lvtab[slot_maps[t][level], t] = level
    lv = nlv = None
    if union:
        # every slot is one level, whichever configs use it
        lv = np.array([row[row == row][0] for row in lvtab]).reshape(S, 1)
        nlv = -lv
    valid = np.array([(1 << c) - 1 for c in range(MAX_WINDOW + 1)], dtype=np.uint64).astype(dtype)
    return _BankProgram(
        S=S,
        R=R,
        dtype=dtype,
        nrows={"st": nst, "hb": nhb, "cb": ncnt},
        derive=_merge(derive, dtype),
        w_rows=(w_first, nst) if w_slots else None,
        base=G,
        gather=gather,
        tests=_merge(seq, dtype),
        fires=(fires0, fires0 + n_fires),
        limit=limit,
        lanes=lanes,
        entab=entab,
        allowtab=allowtab,
        groups=groups,
        valid=valid,
        lv=lv,
        nlv=nlv,
        lvtab=lvtab,
        nlvtab=-lvtab,
    )


# the array operations of a compiled program, as Python expressions on ints (the st rows are
# unsigned ints of the program's width, the hb rows 0/1, the cb rows bit counts)
_PY_OPS: dict[Any, str] = {
    np.bitwise_or: "{0} | {1}",
    np.bitwise_and: "{0} & {1}",
    np.bitwise_xor: "{0} ^ {1}",
    np.right_shift: "{0} >> {1}",
    np.invert: "~{0} & {mask}",
    np.bitwise_count: "{0}.bit_count()",
    np.greater_equal: "int({0} >= {1})",
    np.not_equal: "int({0} != {1})",
    np.equal: "int({0} == {1})",
    np.copyto: "{0}",
}


class _OnePoint:
    """A compiled bank program for one point of one characteristic, on Python ints.

    At the rates of single-value messages a step judges one point, and the
    array program costs its numpy calls (about forty) whatever the size. Here
    the same instructions, unrolled row by row from the same compiled program,
    run as one generated Python function (``run``) on the point's registers;
    the levels, enabled rows, codes and lookup tables are taken per config.
    """

    def __init__(self, pr: _BankProgram, configs: int) -> None:
        bits = pr.dtype.itemsize * 8
        self.mask = (1 << bits) - 1
        self.limit = None if pr.limit is None else pr.limit - pr.fires[0]
        self.valid = [int(v) for v in pr.valid.tolist()]
        T = configs
        if pr.lv is not None:
            lv = [float(v) for v in pr.lv[:, 0].tolist()]
            self.levels = [lv] * T
        else:
            self.levels = [[float(v) for v in pr.lvtab[:, t].tolist()] for t in range(T)]
        # the mask of the fires rows: per row its code bits (lanes), cut per config
        self.weights: list[int] | None = None
        self.enabled: list[list[int]] | None = None
        self.allow: list[int] | None = None
        self.groups: list[tuple[int, int, list[int]]] = []
        if pr.lanes:
            w = [0] * (pr.fires[1] - pr.fires[0])
            for byte, w8 in pr.lanes:
                for r, v in enumerate(w8[:, 0].tolist()):
                    w[r] |= int(v) << (8 * byte)
            self.weights = w
            if pr.entab is not None:
                self.enabled = [[int(v) for v in pr.entab[:, t].tolist()] for t in range(T)]
            if pr.allowtab is not None:
                self.allow = [int(v) for v in pr.allowtab.tolist()]
        else:
            for a, b, _w8, lut in pr.groups:
                self.groups.append((a - pr.fires[0], b - pr.fires[0], lut.tolist()))
        self.per_config = T > 1
        self.run = self._generate(pr)

    def _generate(self, pr: _BankProgram) -> Any:
        G = pr.base
        lines = ["def run(g, valid):"]
        lines += [f"    s{G + r} = g[{r}]" for r in range(pr.R)]

        def emit(ops: list[_Merged]) -> None:
            for m in ops:
                form = _PY_OPS[m.fn]
                ob, o0, ostep, cnt = m.out
                for j in range(cnt):
                    args = []
                    for spec in m.ins:
                        if isinstance(spec, np.ndarray):
                            args.append(str(int(spec[j, 0])))
                        else:
                            buf, r0, step, _ = spec
                            args.append(f"{buf[0]}{r0 + j * step}")
                    out = f"{ob[0]}{o0 + j * ostep}"
                    lines.append(f"    {out} = " + form.format(*args, mask=self.mask))

        emit(pr.derive)
        if pr.w_rows is not None:
            lines += [f"    s{r} &= valid" for r in range(*pr.w_rows)]
        if pr.gather is not None:
            lines += [f"    s{j} = s{int(r)}" for j, r in enumerate(pr.gather.tolist())]
        emit(pr.tests)
        f0, f1 = pr.fires
        if pr.limit is not None:  # the limit rows are the caller's
            lines += [f"    h{pr.limit} = 0", f"    h{pr.limit + 1} = 0"]
        lines.append("    return [" + ", ".join(f"h{r}" for r in range(f0, f1)) + "]")
        scope: dict[str, Any] = {}
        exec(compile("\n".join(lines), "<rule bank: one point>", "exec"), scope)
        return scope["run"]

    def mask_of(self, fires: list[int], cfg: int) -> int:
        """The code bits of one point's fires rows, for its config."""
        out = 0
        if self.weights is not None:
            en = self.enabled[cfg] if self.enabled is not None else None
            for r, (f, w) in enumerate(zip(fires, self.weights, strict=True)):
                if f and (en is None or en[r]):
                    out |= w
            if self.allow is not None:
                out &= self.allow[cfg]
            return out
        for a, b, lut in self.groups:
            ix = 0
            for i in range(b - a):
                if fires[a + i]:
                    ix |= 1 << i
            if self.per_config:
                ix += cfg << 8
            out |= lut[min(ix, len(lut) - 1)]
        return out


def _or_all(values: Sequence[int]) -> int:
    out = 0
    for v in values:
        out |= v
    return out


class _Bound:
    """Views for one shape of call (a slice of the bank, or n gathered characteristics)."""

    __slots__ = (
        "EN",
        "F",
        "F0",
        "F1",
        "FN",
        "FP",
        "LH",
        "LL",
        "LV",
        "NLV",
        "W",
        "allow",
        "cfg",
        "count",
        "derive",
        "fires",
        "gather",
        "groups",
        "ix",
        "lanes",
        "last",
        "o8",
        "o16",
        "regs",
        "stR",
        "tables",
        "tests",
        "tmp32",
        "valid",
        "z",
    )


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """``arrays`` as the bytes of an ``.npz`` (no pickles)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


class RuleBank:
    """Streaming run rules for many characteristics at once, batch-exact.

    Characteristic ``i`` is judged with ``configs[i]``; configs may differ in
    codes and parameters. The state is a few numpy arrays indexed by
    characteristic: a column of ``uint64`` bit histories (up, down, then
    beyond +level / −level for each σ slot; bit 0 = newest plotted point),
    the last plotted value and the count of plotted points (capped at 64).
    Parameters live in small per-config tables (identical configs share an
    entry), so a characteristic costs 8·(2 + 2·S) + 13 bytes: S is the number
    of distinct σ levels of all configs (3 for ``nelson``: 77 bytes), or, if
    that exceeds the largest config's own count by more than one, that count.

    A step is one straight-line array program for all characteristics and
    configs (see :class:`_BankProgram`) on scratch the bank keeps between
    steps (for ``nelson`` about 90 bytes per characteristic of the widest
    step, 150 up to 4 096 wide; not counted in :attr:`nbytes`). A ``slice`` or an ascending
    run of indices updates the histories in place; other index arrays gather
    and scatter them. Feeding a series point by point, in any split, gives
    exactly the masks of :func:`evaluate` on the whole series.
    """

    def __init__(self, configs: Sequence[RuleConfig | str | Sequence[str]] = ()) -> None:
        self._configs: list[RuleConfig] = []
        self._config_ids: dict[RuleConfig, int] = {}
        self._slot_maps: list[dict[float, int]] = []
        self._S = 0
        self._union = True
        self._cfg = np.zeros(0, dtype=np.uint32)
        self._regs = np.zeros((2, 0), dtype=np.uint64)  # (rows, characteristics)
        self._last = np.zeros(0, dtype=np.float64)
        self._count = np.zeros(0, dtype=np.uint8)
        self._arange = np.zeros(0, dtype=np.intp)
        self._prog: _BankProgram | None = None
        self._sat = False  # every count is at the cap (counts then stay put)
        self._bufs: dict[str, np.ndarray] = {}
        self._cap = 0
        self._bound: dict[tuple[Any, ...], _Bound] = {}
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

    def _rows(self, cid: int) -> list[int]:
        """History rows of config ``cid``: U, D, then (P, N) per level of the config."""
        slots = self._slot_maps[cid]
        rows = [0, 1]
        for level in self._configs[cid].levels:
            rows += [2 + 2 * slots[level], 3 + 2 * slots[level]]
        return rows

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
        old_configs = len(self._configs)
        for j, cfg in enumerate(resolved):
            cid = self._config_ids.get(cfg)
            if cid is None:
                cid = len(self._configs)
                self._configs.append(cfg)
                self._config_ids[cfg] = cid
            ids[j] = cid
        if len(self._configs) > old_configs or not self._slot_maps:
            self._relayout(old_configs)
        n = len(resolved)
        self._cfg = np.concatenate((self._cfg, ids))
        fresh = np.zeros((self._regs.shape[0], n), dtype=np.uint64)
        self._regs = np.concatenate((self._regs, fresh), axis=1)
        self._last = np.concatenate((self._last, np.full(n, np.nan)))
        self._count = np.concatenate((self._count, np.zeros(n, dtype=np.uint8)))
        self._arange = np.arange(len(self), dtype=np.intp)
        self._changed()
        for j, carry in enumerate(carries or ()):
            if carry is not None:
                self._set_carry(start + j, carry, f"carries[{j}]")
        return np.arange(start, start + n, dtype=np.intp)

    def _relayout(self, old_configs: int) -> None:
        """Choose the σ slots for the configs now known; move the kept histories."""
        levels = sorted({lv for cfg in self._configs for lv in cfg.levels})
        most = max((len(cfg.levels) for cfg in self._configs), default=0)
        if len(levels) <= most + _UNION_SLACK:
            union = {lv: j for j, lv in enumerate(levels)}
            maps = [union] * len(self._configs)
            S, is_union = len(levels), True
        else:
            maps = [{lv: j for j, lv in enumerate(cfg.levels)} for cfg in self._configs]
            S, is_union = most, False
        old_rows = [self._rows(c) for c in range(old_configs)]
        old_regs = self._regs
        self._slot_maps = maps
        self._S = S
        self._union = is_union
        self._prog = None
        if (old_rows and any(self._rows(c) != old_rows[c] for c in range(old_configs))) or (
            old_regs.shape[0] != 2 + 2 * S
        ):
            regs = np.zeros((2 + 2 * S, old_regs.shape[1]), dtype=np.uint64)
            for c in range(old_configs):
                chars = np.flatnonzero(self._cfg == c)
                if chars.size:
                    regs[np.ix_(self._rows(c), chars)] = old_regs[np.ix_(old_rows[c], chars)]
            self._regs = regs

    def _changed(self) -> None:
        """State arrays were replaced or counts lowered: drop cached views, recheck the cap."""
        self._bound.clear()
        self._sat = False

    def reset(self, idx: Any) -> None:
        """Forget the history of characteristics ``idx`` (their windows start afresh)."""
        idx = np.asarray(idx, dtype=np.intp)
        self._regs[:, idx] = 0
        self._last[idx] = np.nan
        self._count[idx] = 0
        self._sat = False

    # ------------------------------------------------------------------ carry

    def carry(self, i: int) -> RuleCarry:
        """The history of characteristic ``i`` as a :class:`RuleCarry`."""
        cid = int(self._cfg[i])
        lv = self._configs[cid].levels
        col = [int(v) for v in self._regs[self._rows(cid), i]]
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
        cid = int(self._cfg[i])
        lv = self._configs[cid].levels
        col = np.zeros(2 + 2 * len(lv), dtype=np.uint64)
        if carry.count:
            col[0], col[1] = carry.up, carry.down
            for j, level in enumerate(lv):
                try:
                    col[2 + 2 * j], col[3 + 2 * j] = carry.history(level)
                except SpcInputError as e:
                    raise SpcInputError(path, e.message) from None
        self._regs[:, i] = 0
        self._regs[self._rows(cid), i] = col
        self._last[i] = carry.last_x if carry.count else np.nan
        self._count[i] = min(carry.count, MAX_WINDOW)
        self._sat = False

    # ------------------------------------------------------------------ step

    def _program(self) -> _BankProgram:
        if self._prog is None:
            self._prog = _compile_bank(self._configs, self._slot_maps, self._S, self._union)
            self._bufs = {}
            self._cap = 0
            self._bound.clear()
        return self._prog

    def _buffers(self, n: int) -> None:
        """Make room for steps of up to ``n`` characteristics (kept, grown geometrically)."""
        if n <= self._cap:
            return
        self._program()
        self._cap = max(n, 2 * self._cap, 64)
        self._bufs = {}
        self._bound.clear()

    def _scratch(self, name: str, n: int) -> np.ndarray:
        """Scratch ``name`` viewed as (rows, n): contiguous for every n, made on first use.

        All shapes of call share the flat buffers (a step uses them one at a time).
        """
        pr = self._prog
        assert pr is not None
        rows, dt = {
            "z": (1, np.float64),
            "F": (pr.R, bool),
            "G": (pr.R, np.uint64),
            "last": (1, np.float64),
            "count": (1, np.uint8),
            "cfg": (1, np.uint32),
            "st": (pr.nrows["st"], pr.dtype),
            "hb": (pr.nrows["hb"], bool),
            "cb": (pr.nrows["cb"], np.uint8),
            "t8": (pr.fires[1] - pr.fires[0], np.uint8),
            "t16": (pr.fires[1] - pr.fires[0], np.uint16),
            "o8": (1, np.uint8),
            "o16": (1, np.uint16),
            "ix": (1, np.intp),
            "tmp32": (1, np.uint32),
            "valid": (1, pr.dtype),
            "LV": (pr.S, np.float64),
            "NLV": (pr.S, np.float64),
            "EN": (pr.fires[1] - pr.fires[0], bool),
            "allow": (1, np.uint16),
        }[name]
        flat = self._bufs.get(name)
        if flat is None:
            flat = self._bufs[name] = np.empty(rows * self._cap, dtype=dt)
        return flat[: rows * n].reshape(rows, n)

    def _bind(self, key: tuple[Any, ...], n: int) -> _Bound:
        """Views for calls of this shape; per-characteristic tables of a slice are gathered once."""
        pr = self._program()
        self._buffers(n)

        def buf(name: str) -> np.ndarray:
            return self._scratch(name, n)

        b = _Bound()
        sliced = key[0] == "s"
        if sliced:
            sl = slice(key[1], key[2], key[3])
            b.regs = self._regs[:, sl]
            b.last = self._last[sl]
            b.count = self._count[sl]
        else:
            b.regs = buf("G")
            b.last = buf("last")[0]
            b.count = buf("count")[0]
        b.cfg = buf("cfg")[0] if not sliced or pr.groups else None
        b.z = buf("z")[0]
        b.F = buf("F")
        b.F0, b.F1 = b.F[0], b.F[1]
        b.FP, b.FN = b.F[2::2], b.F[3::2]
        G = pr.base
        st = buf("st")
        bufs = {"st": st, "hb": buf("hb"), "cb": buf("cb")}
        b.stR = st[G : G + pr.R]
        b.gather = (st[G:], pr.gather - G, st[:G]) if pr.gather is not None else None
        b.W = st[pr.w_rows[0] : pr.w_rows[1]] if pr.w_rows else None
        b.valid = buf("valid")[0] if pr.w_rows else None
        b.o8 = buf("o8")[0]
        b.o16 = buf("o16")[0] if len(pr.lanes) == 2 else None
        b.ix = buf("ix")[0] if pr.groups else None
        b.tmp32 = buf("tmp32")[0] if pr.groups else None
        hb = bufs["hb"]
        if pr.limit is not None:
            b.LH, b.LL = hb[pr.limit], hb[pr.limit + 1]
        else:
            b.LH = b.LL = None
        f0, f1 = pr.fires
        b.fires = hb[f0:f1]
        fires8 = b.fires.view(np.uint8)
        t8 = buf("t8")
        if len(pr.lanes) == 2 and n <= _SPELL_MAX:
            # two bytes in one pass: dearer per element (a cast), cheaper per call
            w16 = (pr.lanes[1][1].astype(np.uint16) << 8) | pr.lanes[0][1]
            b.lanes = [(fires8, w16, buf("t16"), -1)]
        else:
            b.lanes = [(fires8, w8, t8, byte) for byte, w8 in reversed(pr.lanes)]
        b.groups = [(hb[a:c].view(np.uint8), w8, t8[: c - a], lut) for a, c, w8, lut in pr.groups]
        # per-characteristic tables: constant for a slice, gathered per call otherwise
        b.LV = b.NLV = None
        b.EN = b.allow = None
        b.tables = not sliced and (
            (pr.lv is None and pr.S > 0) or pr.entab is not None or pr.allowtab is not None
        )
        if b.tables:
            if pr.lv is None and pr.S:
                b.LV, b.NLV = buf("LV"), buf("NLV")
            b.EN = buf("EN") if pr.entab is not None else None
            b.allow = buf("allow")[0] if pr.allowtab is not None else None
        if sliced:
            cfg = self._cfg[sl]
            if pr.lv is None and pr.S:
                b.LV = np.take(pr.lvtab, cfg, axis=1)
                b.NLV = -b.LV
            if pr.entab is not None:
                b.EN = np.take(pr.entab, cfg, axis=1)
            if pr.allowtab is not None:
                b.allow = np.take(pr.allowtab, cfg)
        # constant columns: spelled out for small steps (no broadcasting), shared by equal ones
        spelled: dict[bytes, np.ndarray] = {}

        def const(col: np.ndarray) -> Any:
            if (col == col[0, 0]).all():
                return col[0, 0]  # a scalar broadcasts cheaply
            if n > _SPELL_MAX:
                return col
            k = col.tobytes() + col.dtype.str.encode()
            if k not in spelled:
                spelled[k] = np.ascontiguousarray(np.broadcast_to(col, (col.shape[0], n)))
            return spelled[k]

        def bind(ops: list[_Merged]) -> list[tuple[Any, tuple[Any, ...]]]:
            out = []
            for m in ops:
                views: list[Any] = []
                for spec in (m.out, *m.ins):
                    if isinstance(spec, np.ndarray):
                        views.append(const(spec))
                    else:
                        name, r0, step, cnt = spec
                        if cnt == 1:
                            views.append(bufs[name][r0])
                        else:
                            views.append(bufs[name][r0 : r0 + (cnt - 1) * step + 1 : step])
                if m.fn is np.copyto:
                    out.append((m.fn, tuple(views)))
                else:
                    out.append((m.fn, (*views[1:], views[0])))
            return out

        b.derive = bind(pr.derive)
        b.tests = bind(pr.tests)
        # one entry per call shape: gathered calls are keyed by their size, which varies
        # from batch to batch under streaming load; a small cap made them rebind often
        if len(self._bound) > _BOUND_CAP:
            self._bound.clear()
        self._bound[key] = b
        return b

    def step(self, idx: Any, x: Any, center: Any, sigma: Any, lcl: Any, ucl: Any) -> np.ndarray:
        """Judge one new point for each characteristic in ``idx``; returns their ``uint32`` masks.

        ``idx`` holds characteristic indices, unique within one call (split a
        micro-batch with several points of one characteristic into rounds), or
        a ``slice`` (``slice(None)``: every characteristic, in order, without
        gathering; an ascending run of indices is taken as that slice). ``x``,
        ``center``, ``sigma``, ``lcl``, ``ucl`` are aligned with it (scalars
        are broadcast). A missing point (NaN x, center or sigma) changes
        nothing and gets mask 0.
        """
        K = self._cfg.shape[0]
        if (
            type(idx) is np.ndarray
            and idx.shape == (1,)
            and idx.dtype.kind in "iu"
            and 0 <= idx[0] < K
        ):
            one = self._step_one(int(idx[0]), x, center, sigma, lcl, ucl)
            if one is not None:
                return one
        sel: np.ndarray | None = None
        if isinstance(idx, slice):
            start, stop, stride = idx.indices(K)
            n = len(range(start, stop, stride))
        else:
            sel = np.asarray(idx, dtype=np.intp)
            if sel.ndim != 1:
                sel = sel.reshape(-1)
            n = sel.shape[0]
            if n:
                a = int(sel[0])
                if (
                    a >= 0
                    and int(sel[-1]) == a + n - 1
                    and a + n <= K
                    and (n < 3 or (sel == self._arange[a : a + n]).all())
                    # a short run not seen before is gathered: binding views for each new
                    # slice costs more than gathering a few columns (single-value messages)
                    and (n >= _SLICE_MIN or ("s", a, a + n, 1) in self._bound)
                ):
                    start, stop, stride = a, a + n, 1
                    sel = None
        xa = np.asarray(x, dtype=np.float64)
        if xa.shape != (n,):
            xa = np.broadcast_to(xa, (n,))
        if n == 0:
            return np.zeros(0, dtype=np.uint32)
        key = ("s", start, stop, stride) if sel is None else ("i", n)
        b = self._bound.get(key)
        if b is None:
            b = self._bind(key, n)
        pr = self._prog
        assert pr is not None
        z = b.z
        with np.errstate(all="ignore"):
            np.subtract(xa, center, out=z)
            np.divide(z, sigma, out=z)
            if not _all_positive(sigma):
                standardize(xa, center, sigma, out=z)
            total = np.add.reduce(z)
        bad = None
        if total != total:  # NaN: a missing point (or ±inf of both signs)
            ok = z == z
            if not ok.all():
                # missing points keep their state: saved here, put back at the end
                bad = np.flatnonzero(~ok)
                cols = start + bad * stride if sel is None else sel[bad]
                saved = (self._regs[:, cols], self._last[cols], self._count[cols])
        regs, last = b.regs, b.last
        if sel is not None:
            np.take(self._last, sel, out=last)  # checks the indices
            np.take(self._regs, sel, axis=1, out=regs, mode="wrap")
            if b.tables:
                cfg = np.take(self._cfg, sel, out=b.cfg, mode="wrap")
                if b.LV is not None:
                    np.take(pr.lvtab, cfg, axis=1, out=b.LV, mode="clip")
                    np.negative(b.LV, out=b.NLV)
                if b.EN is not None:
                    np.take(pr.entab, cfg, axis=1, out=b.EN, mode="clip")
                if b.allow is not None:
                    np.take(pr.allowtab, cfg, out=b.allow, mode="clip")
        # the newest flags shifted into the histories
        np.left_shift(regs, _ONE, out=regs)
        np.greater(xa, last, out=b.F0)
        np.less(xa, last, out=b.F1)
        if pr.S:
            if b.LV is None:
                np.greater(z, pr.lv, out=b.FP)
                np.less(z, pr.nlv, out=b.FN)
            else:
                np.greater(z, b.LV, out=b.FP)
                np.less(z, b.NLV, out=b.FN)
        np.bitwise_or(regs, b.F, out=regs)
        np.copyto(b.stR, regs, casting="unsafe")
        if sel is None:
            np.copyto(last, xa)
        else:
            self._last[sel] = xa
            self._regs[:, sel] = regs
        for fn, args in b.derive:
            fn(*args)
        if not self._sat:
            cnt = b.count
            if sel is not None:
                np.take(self._count, sel, out=cnt)
            np.add(cnt, _U8_ONE, out=cnt)
            np.minimum(cnt, _U8_CAP, out=cnt)
            if sel is not None:
                self._count[sel] = cnt
            if b.W is not None:
                np.take(pr.valid, cnt, out=b.valid)
                np.bitwise_and(b.W, b.valid, out=b.W)
        if b.gather is not None:
            src, rows, dst = b.gather
            src.take(rows, 0, dst, "clip")
        for fn, args in b.tests:
            fn(*args)
        if b.LH is not None:
            np.greater(xa, ucl, out=b.LH)
            np.less(xa, lcl, out=b.LL)
        out = np.empty(n, dtype=np.uint32)
        if b.lanes:
            if b.EN is not None:
                np.bitwise_and(b.fires, b.EN, out=b.fires)
            # a weighted OR of the fires rows, one byte of the masks at a time (high first)
            o8 = b.o8
            for k, (f8, w8, t8, byte) in enumerate(b.lanes):
                np.multiply(f8, w8, out=t8)
                if byte < 0:
                    np.bitwise_or.reduce(t8, axis=0, out=b.o16)
                    np.copyto(out, b.o16)
                    break
                np.bitwise_or.reduce(t8, axis=0, out=o8)
                if k:
                    np.bitwise_or(out, o8, out=out)
                elif byte:
                    np.left_shift(o8, 8, out=out, dtype=np.uint32)
                else:
                    np.copyto(out, o8)
            if b.allow is not None:
                np.bitwise_and(out, b.allow, out=out)
        elif b.groups:
            if len(self._configs) > 1:
                if sel is None:
                    np.copyto(b.cfg, self._cfg[start:stop:stride])
                elif not b.tables:
                    np.take(self._cfg, sel, out=b.cfg, mode="wrap")
            for gi, (f8, w8, t8, lut) in enumerate(b.groups):
                np.multiply(f8, w8, out=t8)
                np.bitwise_or.reduce(t8, axis=0, out=b.o8)
                ix = b.o8
                if len(self._configs) > 1:
                    ix = np.left_shift(b.cfg, 8, out=b.ix)
                    np.add(ix, b.o8, out=ix)
                if gi == 0:
                    np.take(lut, ix, out=out, mode="clip")
                else:
                    np.take(lut, ix, out=b.tmp32, mode="clip")
                    out |= b.tmp32
        else:
            out.fill(0)
        if bad is not None:
            out[bad] = 0
            self._regs[:, cols], self._last[cols], self._count[cols] = saved
        if not self._sat:
            self._sat = bool(self._count.min() >= MAX_WINDOW)
        return out

    def _step_one(
        self, i: int, x: Any, center: Any, sigma: Any, lcl: Any, ucl: Any
    ) -> np.ndarray | None:
        """:meth:`step` for one point of characteristic ``i``, on Python ints and floats
        (:class:`_OnePoint`): the same registers, count and masks as the array program.
        None (nothing done) when an argument holds more than one value."""
        xf, c, sg = _one_float(x), _one_float(center), _one_float(sigma)
        hi, lo = _one_float(ucl), _one_float(lcl)
        if xf is None or c is None or sg is None or hi is None or lo is None:
            return None
        pr = self._program()
        one = pr.one
        if one is None:
            one = pr.one = _OnePoint(pr, len(self._configs))
        if sg > 0:
            z = (xf - c) / sg
        elif sg <= 0:  # standardize: ±inf off the centre, 0 on it; a negative σ is missing
            d = xf - c
            z = math.nan if sg < 0 or d != d else (0.0 if d == 0 else math.copysign(math.inf, d))
        else:
            z = math.nan
        out = np.zeros(1, dtype=np.uint32)
        if z != z:  # a missing point changes nothing
            if not self._sat:
                self._sat = bool(self._count.min() >= MAX_WINDOW)
            return out
        cfg = int(self._cfg[i])
        last = float(self._last[i])
        flags = [xf > last, xf < last]
        for lv in one.levels[cfg]:
            flags += (z > lv, z < -lv)
        regs = self._regs[:, i].tolist()
        m64 = 0xFFFF_FFFF_FFFF_FFFF
        regs = [((v << 1) & m64) | f for v, f in zip(regs, flags, strict=True)]
        self._regs[:, i] = regs
        self._last[i] = xf
        mask = one.mask
        valid = mask
        if not self._sat:
            n = min(int(self._count[i]) + 1, MAX_WINDOW)
            self._count[i] = n
            valid = one.valid[n]
        fires = one.run([v & mask for v in regs], valid)
        if one.limit is not None:
            fires[one.limit] = int(xf > hi)
            fires[one.limit + 1] = int(xf < lo)
        out[0] = one.mask_of(fires, cfg)
        if not self._sat:
            self._sat = bool(self._count.min() >= MAX_WINDOW)
        return out

    # ------------------------------------------------------------------ persistence

    def _levels_matrix(self) -> np.ndarray:
        most = max((len(cfg.levels) for cfg in self._configs), default=0)
        levels = np.full((len(self._configs), most), np.nan)
        for t, cfg in enumerate(self._configs):
            levels[t, : len(cfg.levels)] = cfg.levels
        return levels[self._cfg]

    def _export_regs(self) -> np.ndarray:
        """(K, 2 + 2·L) histories, each characteristic's in its config's level order."""
        most = max((len(cfg.levels) for cfg in self._configs), default=0)
        out = np.zeros((len(self), 2 + 2 * most), dtype=np.uint64)
        for cid in range(len(self._configs)):
            chars = np.flatnonzero(self._cfg == cid)
            rows = self._rows(cid)
            out[np.ix_(chars, np.arange(len(rows)))] = self._regs[np.ix_(rows, chars)].T
        return out

    def state_dict(self) -> dict[str, Any]:
        """The histories as plain JSON types (restore with :meth:`from_state`)."""
        lv = self._levels_matrix()
        return {
            "format": _STATE_FORMAT,
            "version": _STATE_VERSION,
            "levels": [[v for v in row if not math.isnan(v)] for row in lv.tolist()],
            "regs": self._export_regs().tolist(),
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
        self._sat = False
        # checked per characteristic (the first bad one is named), copied per group
        groups: dict[tuple[tuple[float, ...], int], list[int]] = {}
        fresh: list[int] = []
        for i, old in enumerate(levels):
            if len(regs[i]) < 2 + 2 * len(old):
                raise SpcInputError(f"state.regs[{i}]", "too few histories for its levels")
            cid = int(self._cfg[i])
            new_lv = self._configs[cid].levels
            if not set(new_lv) <= set(old):
                if strict:
                    raise SpcInputError(
                        f"state.levels[{i}]",
                        f"saved history has levels {list(old)}, the config needs {list(new_lv)}",
                    )
                fresh.append(i)
                continue
            groups.setdefault((tuple(old), cid), []).append(i)
        for (old, cid), chars in groups.items():
            pos = [0, 1]
            for level in self._configs[cid].levels:
                o = old.index(level)
                pos += [2 + 2 * o, 3 + 2 * o]
            if isinstance(regs, np.ndarray):
                block = regs[np.ix_(chars, pos)].astype(np.uint64)
            else:
                block = np.array([[regs[i][p] for p in pos] for i in chars], dtype=np.uint64)
            self._regs[np.ix_(self._rows(cid), chars)] = block.T
        if fresh:
            self.reset(fresh)

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The arrays :meth:`to_bytes` stores, as copies that later steps leave alone: take
        them where the bank must not move, encode them elsewhere with :func:`npz_bytes`."""
        return {
            "version": np.array([_STATE_VERSION]),
            "levels": self._levels_matrix(),
            "regs": self._export_regs(),
            "last": self._last.copy(),
            "count": self._count.copy(),
        }

    def to_bytes(self) -> bytes:
        """Compact binary state (an ``.npz`` without pickles); restore with :meth:`from_bytes`."""
        return npz_bytes(self.state_arrays())

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


def _one_float(v: Any) -> float | None:
    """The value of a scalar or a one-element array as a Python float; None for more."""
    if type(v) is float:
        return v
    a = v if isinstance(v, np.ndarray) else np.asarray(v, dtype=np.float64)
    if a.size != 1:
        return None
    return float(a.reshape(-1)[0])


def _all_positive(sigma: Any) -> bool:
    """Whether every σ is > 0, so z needs none of :func:`standardize`'s fixes."""
    if type(sigma) is float:
        return sigma > 0
    s = np.asarray(sigma)
    if s.ndim == 0:
        return bool(s > 0)
    return not s.size or bool(np.fmin.reduce(s, axis=None) > 0)
