"""The streaming SPC engine: K characteristics judged at once, state in numpy arrays.

Configuration and state live in arrays indexed by characteristic; a
micro-batch of samples (characteristic, value[, size]) goes in, one row per
plotted point comes out (:class:`Points`). Nothing on the hot path is a Python
object per characteristic or per sample. How a batch is run:

* Each characteristic at most once (a tick): one vectorised pass per chart
  kind present. A tick that is characteristics ``lo..lo+B-1`` in order reads
  and writes state through slices instead of gathers; for a whole tick the
  kind groups are found at :meth:`Engine.add`. Limits that depend only on the
  configuration (I-MR's four, EWMA's once its factor saturates) are computed at
  ``add`` / ``set_limits`` / ``restore`` into a limits matrix and copied per
  tick. The I-MR, EWMA and CUSUM kernels write their float columns straight
  into one freshly allocated block (rows of ``_FROWS``) that the returned
  Points is made of, one block for all kinds of the tick.
* Several samples of a characteristic: split into *rounds* by the rank of each
  sample within its characteristic, each round as a tick. A characteristic
  with a long run in one call (a backfill) is instead run through the batch
  functions with carries (``Engine._long``) when that is cheaper than the
  rounds it would add.

Streaming equals batch (``spc-semantics.md``): the engine computes subgroup
statistics with :func:`~spc.charts.variables.subgroup_stats`, limits with the
same formula functions as the batch series (``xbar_limits``, ``range_limits``,
``sd_limits``, ``control_band``, ``ewma_limits``), and run rules with
:class:`~spc.rules.RuleBank`, so feeding a series in any split gives the
statistics, limits and violations of the batch path with the same frozen
estimate, bit for bit. Subgroups of ``m`` consecutive values are gathered as
NaN-padded rows of width exactly ``m`` (NumPy's pairwise summation depends on
the row width, so the batch data must have width ``m`` too).

The engine is time-free and pure: no clock, no I/O. Its whole state is a
:meth:`Engine.snapshot` (bytes) away from a restart (:meth:`Engine.restore`).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from spc.charts.timeweighted import (
    CusumCarry,
    EwmaCarry,
    cusum_series,
    cusum_standardize,
    ewma_factor,
    ewma_limits,
    ewma_saturation,
    ewma_series,
)
from spc.charts.variables import (
    control_band,
    range_limits,
    sd_limits,
    subgroup_stats,
    xbar_limits,
)
from spc.constants import c4_array, d2, d2_array, d3, d3_array
from spc.errors import SpcInputError
from spc.limits import LimitsRecord
from spc.rules import (
    BITS,
    MAX_WINDOW,
    RuleBank,
    RuleConfig,
    evaluate_with_carry,
    make_rule,
    npz_bytes,
    resolve_rules,
    standardize,
)
from spc.series import Estimate

__all__ = ["CHARTS", "Engine", "Points", "Spec", "encode_snapshot"]

#: Chart kinds the engine runs, in the order of their internal codes.
CHARTS: tuple[str, ...] = ("imr", "xbar-r", "xbar-s", "p", "np", "c", "u", "ewma", "cusum")
_IMR, _XBAR_R, _XBAR_S, _P, _NP, _C, _U, _EWMA, _CUSUM = range(len(CHARTS))
_KIND = {name: code for code, name in enumerate(CHARTS)}
_RUN_MIN = 32  # shorter runs of characteristics are gathered, not sliced
_ATTRIBUTE = (_P, _NP, _C, _U)
_DISPERSION = (_IMR, _XBAR_R, _XBAR_S)
_TIMEWEIGHTED = (_EWMA, _CUSUM)

_BIT_EWMA = np.uint32(1 << BITS["EWMA"])
_BIT_CUP = np.uint32(1 << BITS["CUSUM_UPPER"])
_BIT_CLO = np.uint32(1 << BITS["CUSUM_LOWER"])
_D2_2 = d2(2)
_D3_2 = d3(2)

_FORMAT = "shopspc.engine"
_VERSION = 1

# Limits-record params the engine adopts (the keys ``analyze.limits_record`` writes).
_RECORD_PARAMS = ("nsigmas", "ewma_lambda", "ewma_L", "cusum_k", "cusum_h", "cusum_head_start")

RuleSpecLike = str | Sequence[str] | RuleConfig | None


@dataclass(frozen=True)
class Spec:
    """Configuration of one characteristic (no state: that lives in the engine's arrays).

    ``chart`` is one of :data:`CHARTS`. ``center``/``sigma`` are the frozen
    limits (process centre and σ̂; for p/np/c/u the centre is p̄, c̄ or ū and
    ``sigma`` is NaN — except that a finite ``sigma`` on a p or u chart is
    Laney's σ_z, which widens the limits to σ_i·σ_z as a ``p-laney`` /
    ``u-laney`` record from ``analyze`` freezes them). ``subgroup_size`` m: that many consecutive values
    form one subgroup (1 for imr and attribute charts, ≥ 2 for X̄-R/X̄-S, any
    m ≥ 1 for EWMA/CUSUM). ``rules`` (centre chart) and ``rules_dispersion``
    (R, S or MR chart) take what :func:`spc.rules.resolve_rules` takes;
    by default the centre chart gets ``nelson`` and the dispersion chart the
    centre's rule-1 codes (N1/WE1), as in ``analyze``. EWMA and CUSUM charts
    signal through their own bits and take no run rules. ``rule_params``
    overrides rule parameters by code. EWMA: ``ewma_lambda`` λ ∈ (0, 1],
    ``ewma_L``; CUSUM: ``cusum_k``, ``cusum_h``, ``cusum_head_start`` (σ units
    of the plotted statistic) and ``cusum_reset`` (restart both sums at the
    head start after a signal). ``limits_id`` names the record the limits
    come from.
    """

    chart: str
    center: float
    sigma: float = math.nan
    subgroup_size: int = 1
    nsigmas: float = 3.0
    rules: RuleSpecLike = None
    rules_dispersion: RuleSpecLike = None
    rule_params: Mapping[str, Mapping[str, Any]] | None = None
    ewma_lambda: float = 0.2
    ewma_L: float = 3.0  # noqa: N815 (the contract and limits records spell it L)
    cusum_k: float = 0.5
    cusum_h: float = 5.0
    cusum_head_start: float = 0.0
    cusum_reset: bool = False
    limits_id: str = ""

    @classmethod
    def from_limits(cls, chart: str, limits: LimitsRecord | Estimate, **kwargs: Any) -> Spec:
        """A spec whose centre, σ, id and chart parameters come from a frozen record.

        The record's ``params`` (``nsigmas``, ``ewma_lambda``, ``ewma_L``,
        ``cusum_k``, ``cusum_h``, ``cusum_head_start``) are adopted unless
        ``kwargs`` gives them; an :class:`Estimate` carries no id or params.
        """
        _check_record_chart(chart, limits, "limits")
        base: dict[str, Any] = {"center": float(limits.center), "sigma": float(limits.sigma)}
        if isinstance(limits, LimitsRecord):
            base["limits_id"] = limits.id
            for key, value in limits.params:
                if key in _RECORD_PARAMS:
                    base[key] = float(value)
        base.update(kwargs)
        return cls(chart=chart, **base)


def _check_record_chart(chart: str, limits: Any, path: str) -> None:
    # a Laney record ("p-laney", "u-laney") judges the p or u chart it adjusts
    if (
        isinstance(limits, LimitsRecord)
        and limits.chart
        and limits.chart not in (chart, f"{chart}-laney")
    ):
        raise SpcInputError(
            f"{path}.chart", f"a {limits.chart!r} limits record cannot judge a {chart!r} chart"
        )
    if not isinstance(limits, (LimitsRecord, Estimate)):
        raise SpcInputError(path, "must be a LimitsRecord or an Estimate")


@dataclass(frozen=True)
class Points:
    """The plotted points one :meth:`Engine.process` call produced, one row each (columnar).

    Rows follow the arrival order of the sample that completed each point.
    ``char`` is the characteristic index, ``point`` its 0-based point number
    (the position in the batch series of that characteristic). ``statistic``,
    ``center``, ``lcl``, ``ucl``, ``sigma`` (zone width of the statistic) and
    ``n`` describe the centre chart (individual value, X̄, p, np, c, u, or for
    EWMA/CUSUM the subgroup mean against the EWMA limits / the CUSUM's
    centre 0 and ∓h); ``mask`` holds its violation bits (:data:`spc.rules.BITS`,
    including ``EWMA``, ``CUSUM_UPPER``, ``CUSUM_LOWER``). The ``disp_*``
    columns are the R, S or MR chart (NaN, mask 0, where the chart has none).
    ``ewma``, ``cusum_upper`` and ``cusum_lower`` are the time-weighted paths
    (NaN where unused). ``limits`` indexes :attr:`Engine.limits_ids`: the
    record the point was judged against. A missing point is a row whose
    statistic is NaN and whose masks are 0. Columns that do not apply to a
    chart (all NaN or all 0) may be one shared read-only array; every other
    column is the caller's own.
    """

    char: np.ndarray
    point: np.ndarray
    statistic: np.ndarray
    center: np.ndarray
    lcl: np.ndarray
    ucl: np.ndarray
    sigma: np.ndarray
    n: np.ndarray
    mask: np.ndarray
    disp_statistic: np.ndarray
    disp_center: np.ndarray
    disp_lcl: np.ndarray
    disp_ucl: np.ndarray
    disp_sigma: np.ndarray
    disp_mask: np.ndarray
    ewma: np.ndarray
    cusum_upper: np.ndarray
    cusum_lower: np.ndarray
    limits: np.ndarray

    def __len__(self) -> int:
        return int(self.char.shape[0])

    @classmethod
    def _make(cls, cols: dict[str, np.ndarray]) -> Points:
        """A Points from all its columns, without the frozen dataclass ``__init__``.

        The engine's hot path: ``__init__`` sets each of the 19 fields through
        ``object.__setattr__`` (about 2 µs per tick); the engine always passes
        every field, so filling ``__dict__`` gives the same object.
        """
        p = object.__new__(cls)
        p.__dict__.update(cols)
        return p

    @classmethod
    def concat(cls, parts: Sequence[Points]) -> Points:
        """Rows of several results, in order."""
        if not parts:
            return _empty_points()
        return cls(
            **{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)}
        )

    def select(self, rows: Any) -> Points:
        """The rows ``rows`` (an index array or boolean mask)."""
        return Points(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    def of(self, char: int) -> Points:
        """The rows of one characteristic."""
        return self.select(self.char == char)


_INT_COLS = {
    "char": np.intp,
    "point": np.int64,
    "mask": np.uint32,
    "disp_mask": np.uint32,
    "limits": np.int32,
}


def _empty_points() -> Points:
    return Points(
        **{f.name: np.zeros(0, dtype=_INT_COLS.get(f.name, np.float64)) for f in fields(Points)}
    )


# --------------------------------------------------------------------------- rule configs


def _config_json(cfg: RuleConfig) -> list[list[Any]]:
    return [[r.code, r.run, r.k, r.m, r.level] for r in cfg.rules]


def _config_from_json(items: list[list[Any]]) -> RuleConfig:
    rules = []
    for code, run, k, m, level in items:
        params = {
            name: value
            for name, value in (("run", run), ("k", k), ("m", m), ("level", level))
            if value is not None
        }
        if code in ("N2", "WE4"):  # side rules carry level 0, which make_rule does not take
            params.pop("level", None)
        rules.append(make_rule(code, params))
    return RuleConfig(tuple(rules))


_NONE = RuleConfig(())


def _resolve(spec: Spec, path: str) -> tuple[RuleConfig, RuleConfig]:
    kind = _KIND[spec.chart]
    params = spec.rule_params
    if kind in _TIMEWEIGHTED:
        for name in ("rules", "rules_dispersion"):
            value = getattr(spec, name)
            if value is not None and resolve_rules(value, params, f"{path}.{name}").codes:
                raise SpcInputError(
                    f"{path}.{name}", f"{spec.chart} signals through its own bits; no run rules"
                )
        return _NONE, _NONE
    centre = resolve_rules(
        "nelson" if spec.rules is None else spec.rules,
        params,
        f"{path}.rules",
        overrides_path=f"{path}.rule_params",
    )
    if kind not in _DISPERSION:
        if spec.rules_dispersion is not None and resolve_rules(spec.rules_dispersion).codes:
            raise SpcInputError(
                f"{path}.rules_dispersion", f"a {spec.chart} chart has no dispersion chart"
            )
        return centre, _NONE
    if spec.rules_dispersion is None:
        disp_spec: Any = [c for c in centre.codes if c in ("N1", "WE1")]
    else:
        disp_spec = spec.rules_dispersion
    disp = resolve_rules(
        disp_spec, params, f"{path}.rules_dispersion", overrides_path=f"{path}.rule_params"
    )
    return centre, disp


def _rules_key(spec: Spec) -> Any:
    """A hashable key for the rule settings of a spec (None when they are not hashable)."""
    if spec.rule_params is not None:
        return None
    parts = []
    for value in (spec.rules, spec.rules_dispersion):
        parts.append(tuple(value) if isinstance(value, list) else value)
    key = (spec.chart, *parts)
    try:
        hash(key)
    except TypeError:
        return None
    return key


# --------------------------------------------------------------------------- validation


def _finite(value: Any, path: str, *, lo: float | None = None, lo_open: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise SpcInputError(path, f"must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise SpcInputError(path, f"must be finite, got {value!r}")
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise SpcInputError(path, f"must be {'>' if lo_open else '≥'} {lo:g}, got {value!r}")
    return v


def _check_limits(kind: int, center: Any, sigma: Any, path: str) -> tuple[float, float]:
    """Validated (centre, σ) for a chart kind; σ is NaN for attribute charts."""
    if kind in _ATTRIBUTE:
        c = _finite(center, f"{path}.center", lo=0.0)
        if kind in (_P, _NP) and c > 1.0:
            raise SpcInputError(f"{path}.center", f"p̄ must lie in [0, 1], got {center!r}")
        if (
            kind in (_P, _U)
            and sigma is not None
            and not (isinstance(sigma, float) and math.isnan(sigma))
        ):
            # Laney p′/u′: σ carries σ_z, the overdispersion factor of the limits
            return c, _finite(sigma, f"{path}.sigma", lo=0.0)
        return c, math.nan
    return _finite(center, f"{path}.center"), _finite(sigma, f"{path}.sigma", lo=0.0)


def _check_spec(spec: Spec, path: str) -> None:
    if not isinstance(spec, Spec):
        raise SpcInputError(path, f"must be a Spec, got {type(spec).__name__}")
    if spec.chart not in _KIND:
        raise SpcInputError(
            f"{path}.chart", f"unknown chart {spec.chart!r} (one of {', '.join(CHARTS)})"
        )
    kind = _KIND[spec.chart]
    m = spec.subgroup_size
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
        raise SpcInputError(f"{path}.subgroup_size", f"must be an integer ≥ 1, got {m!r}")
    if kind in (_IMR, *_ATTRIBUTE) and m != 1:
        raise SpcInputError(f"{path}.subgroup_size", f"{spec.chart} plots single values (m = 1)")
    if kind in (_XBAR_R, _XBAR_S) and m < 2:
        raise SpcInputError(f"{path}.subgroup_size", f"{spec.chart} needs subgroups of m ≥ 2")
    _check_limits(kind, spec.center, spec.sigma, path)
    _finite(spec.nsigmas, f"{path}.nsigmas", lo=0.0, lo_open=True)
    lam = _finite(spec.ewma_lambda, f"{path}.ewma_lambda", lo=0.0, lo_open=True)
    if lam > 1.0:
        raise SpcInputError(f"{path}.ewma_lambda", f"must lie in (0, 1], got {lam!r}")
    _finite(spec.ewma_L, f"{path}.ewma_L", lo=0.0, lo_open=True)
    _finite(spec.cusum_k, f"{path}.cusum_k", lo=0.0)
    _finite(spec.cusum_h, f"{path}.cusum_h", lo=0.0, lo_open=True)
    _finite(spec.cusum_head_start, f"{path}.cusum_head_start", lo=0.0)


# --------------------------------------------------------------------------- engine

# Per-characteristic arrays and their dtypes. Parameters and state of the
# time-weighted charts share columns (a characteristic is EWMA or CUSUM, never
# both): par_a = λ | k, par_b = L | h, par_c = the t from which the EWMA factor
# is constant (ewma_saturation) | head start; st_a = z | C⁺, st_b = t | C⁻.
_ARRAYS: dict[str, Any] = {
    "kind": np.int8,
    "m": np.int32,
    "off": np.int64,
    "fill": np.int32,
    "center": np.float64,
    "sigma": np.float64,
    "nsig": np.float64,
    "par_a": np.float64,
    "par_b": np.float64,
    "par_c": np.float64,
    "reset": np.bool_,
    "st_a": np.float64,
    "st_b": np.float64,
    "last": np.float64,
    "npts": np.int64,
    "lid": np.int32,
    "rc_centre": np.int32,
    "rc_disp": np.int32,
}


# The limits matrix (``Engine._lim``, characteristics along axis 1): row 0 is σ and
# row 1 the centre (``_sigma`` and ``_center`` are views of these rows, so they are
# the configuration itself); the rows after them are derived from the configuration
# once, at add / set_limits / restore, so a tick copies limits instead of
# recomputing them:
#   imr:   LCL, UCL, MR LCL, MR UCL
#   ewma:  LCL, UCL, σ once the factor saturates (n = 1)
# There are as many derived rows as the kinds present need (4 with I-MR, 3 with
# EWMA, else none): they cost 8 bytes per characteristic each. Every value is the
# same formula call on the same numbers as the batch path, so it is the same float
# whether computed here or per tick.
_L_SIGMA, _L_CENTER = 0, 1
_NDERIVED = {_IMR: 4, _EWMA: 3}

# 0-d arrays, not Python or NumPy scalars: a ufunc converts those on every call
# (about 0.25 µs each at small K); the numbers are the same
_ONE = np.array(1, dtype=np.int64)
_F_ONE = np.array(1.0)
_D2_2A = np.array(_D2_2)
_D3_2A = np.array(_D3_2)
_BIT_EWMA_A = np.array(_BIT_EWMA)
_BIT_CUP_A = np.array(_BIT_CUP)
_BIT_CLO_A = np.array(_BIT_CLO)

#: Samples of one characteristic in one call from which the call runs them through
#: the batch functions (``Engine._long``) instead of one round per sample.
_LONG_RUN = 128
#: What a long run costs in rounds, plus MAX_WINDOW + 1 rule-bank steps when it has one.
_LONG_COST = 8

#: Row of each float column in a Points block. Per-sample kernels (:meth:`Engine._imr`,
#: ``_ewma_fast``, ``_cusum_fast``) write their rows of such a block, so a batch of
#: several kinds fills one block; rows 0..5 are the limits matrix's order for I-MR.
_FROWS = (
    "sigma",
    "center",
    "lcl",
    "ucl",
    "disp_lcl",
    "disp_ucl",
    "statistic",
    "disp_center",
    "disp_statistic",
    "disp_sigma",
    "n",
    "ewma",
    "cusum_upper",
    "cusum_lower",
)
_NF = len(_FROWS)
# the float columns each kind leaves NaN (its kernels return the others)
_NO_DISP = ("disp_statistic", "disp_center", "disp_lcl", "disp_ucl", "disp_sigma")
_NO_PATHS = ("ewma", "cusum_upper", "cusum_lower")
_UNPLOTTED = dict.fromkeys(_ATTRIBUTE, (*_NO_DISP, *_NO_PATHS))
_UNPLOTTED.update(dict.fromkeys(_DISPERSION, _NO_PATHS))
_UNPLOTTED[_EWMA] = (*_NO_DISP, "cusum_upper", "cusum_lower")
_UNPLOTTED[_CUSUM] = (*_NO_DISP, "ewma")
# the rows of a block a block kernel (I-MR, EWMA and CUSUM fast paths) leaves unwritten
_BLOCK_UNUSED = {
    k: np.array([_FROWS.index(name) for name in _UNPLOTTED[k]], dtype=np.intp)
    for k in (_IMR, _EWMA, _CUSUM)
}


class Engine:
    """Streaming SPC for many characteristics at once (see the module docstring).

    ``Engine(specs)`` adds ``specs``; :meth:`add` adds more; :meth:`process`
    feeds a micro-batch; :meth:`set_limits` adopts a new frozen record;
    :meth:`snapshot` / :meth:`restore` persist the whole state.
    """

    def __init__(self, specs: Sequence[Spec] = ()) -> None:
        for name, dt in _ARRAYS.items():
            setattr(self, "_" + name, np.zeros(0, dtype=dt))
        self._buf = np.zeros(0, dtype=np.float64)
        self._limit_ids: list[str] = []
        self._limit_index: dict[str, int] = {}
        self._rule_configs: list[RuleConfig] = []
        self._rule_index: dict[RuleConfig, int] = {}
        self._centre_bank = RuleBank()
        self._disp_bank = RuleBank()
        self._tables(2)
        self._scratch_n = 0
        self._rb_n = -1
        self._rb = b""
        self._scratch(0)
        self._after_config()
        if specs:
            self.add(specs)

    # ------------------------------------------------------------------ shape

    def __len__(self) -> int:
        return int(self._kind.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of per-characteristic configuration and state, rule banks and open subgroups included."""
        own = sum(getattr(self, "_" + name).nbytes for name in _ARRAYS)
        derived = self._lim[2:].nbytes  # rows 0 and 1 are _sigma and _center, counted above
        return int(
            own + derived + self._buf.nbytes + self._centre_bank.nbytes + self._disp_bank.nbytes
        )

    @property
    def bytes_per_characteristic(self) -> float:
        """:attr:`nbytes` divided by the number of characteristics."""
        return self.nbytes / max(1, len(self))

    @property
    def limits_ids(self) -> tuple[str, ...]:
        """Distinct limits-record ids; :attr:`Points.limits` indexes this."""
        return tuple(self._limit_ids)

    def limits_id(self, i: int) -> str:
        """The id of the record characteristic ``i`` is judged against now."""
        return self._limit_ids[int(self._lid[i])]

    def chart(self, i: int) -> str:
        """The chart kind of characteristic ``i``."""
        return CHARTS[int(self._kind[i])]

    def rule_configs(self, i: int) -> tuple[RuleConfig, RuleConfig]:
        """(centre, dispersion) rule configs of characteristic ``i``."""
        return self._rule_configs[int(self._rc_centre[i])], self._rule_configs[
            int(self._rc_disp[i])
        ]

    # ------------------------------------------------------------------ config

    def _tables(self, max_m: int) -> None:
        """Constant tables by subgroup size n = 0..max_m (identical values to d2_array & co.)."""
        n = np.arange(max_m + 1)
        self._d2t = d2_array(n)
        self._d3t = d3_array(n)
        self._c4t = c4_array(n)

    def _lid_of(self, limits_id: str) -> int:
        i = self._limit_index.get(limits_id)
        if i is None:
            i = len(self._limit_ids)
            self._limit_ids.append(limits_id)
            self._limit_index[limits_id] = i
        return i

    def _rc_of(self, cfg: RuleConfig) -> int:
        i = self._rule_index.get(cfg)
        if i is None:
            i = len(self._rule_configs)
            self._rule_configs.append(cfg)
            self._rule_index[cfg] = i
        return i

    def add(self, specs: Sequence[Spec]) -> np.ndarray:
        """Add characteristics; returns their indices. Validates everything before adding anything."""
        if isinstance(specs, Spec):
            specs = [specs]
        specs = list(specs)
        resolved = []
        seen: dict[Any, tuple[RuleConfig, RuleConfig]] = {}
        for j, spec in enumerate(specs):
            path = f"specs[{j}]"
            _check_spec(spec, path)
            key = _rules_key(spec)
            if key is None or key not in seen:
                rc = _resolve(spec, path)
                if key is not None:
                    seen[key] = rc
            resolved.append(seen[key] if key is not None else rc)
        start = len(self)
        n = len(specs)
        if n == 0:
            return np.zeros(0, dtype=np.intp)
        new: dict[str, np.ndarray] = {name: np.zeros(n, dtype=dt) for name, dt in _ARRAYS.items()}
        slots = 0
        for j, spec in enumerate(specs):
            kind = _KIND[spec.chart]
            m = int(spec.subgroup_size)
            c, s = _check_limits(kind, spec.center, spec.sigma, f"specs[{j}]")
            new["kind"][j] = kind
            new["m"][j] = m
            new["off"][j] = self._buf.shape[0] + slots
            slots += m if m > 1 else 0
            new["center"][j] = c
            new["sigma"][j] = s
            new["nsig"][j] = float(spec.nsigmas)
            if kind == _EWMA:
                new["par_a"][j] = float(spec.ewma_lambda)
                new["par_b"][j] = float(spec.ewma_L)
                new["par_c"][j] = ewma_saturation(float(spec.ewma_lambda))
                new["st_a"][j] = c  # z_0 = centre
            elif kind == _CUSUM:
                hs = float(spec.cusum_head_start)
                new["par_a"][j] = float(spec.cusum_k)
                new["par_b"][j] = float(spec.cusum_h)
                new["par_c"][j] = hs
                new["reset"][j] = bool(spec.cusum_reset)
                new["st_a"][j] = hs
                new["st_b"][j] = -hs
            new["last"][j] = math.nan
            new["lid"][j] = self._lid_of(spec.limits_id)
            new["rc_centre"][j] = self._rc_of(resolved[j][0])
            new["rc_disp"][j] = self._rc_of(resolved[j][1])
        for name in _ARRAYS:
            setattr(self, "_" + name, np.concatenate([getattr(self, "_" + name), new[name]]))
        self._buf = np.concatenate([self._buf, np.full(slots, np.nan)])
        self._centre_bank.extend([c for c, _ in resolved])
        self._disp_bank.extend([d for _, d in resolved])
        self._after_config()
        return np.arange(start, start + n, dtype=np.intp)

    def _after_config(self) -> None:
        """Rebuild everything derived from the configuration arrays (after add / restore)."""
        K = len(self)
        self._kinds_present = np.bincount(self._kind, minlength=len(CHARTS))
        max_m = int(self._m.max()) if K else 1
        if max_m + 1 > self._d2t.shape[0]:
            self._tables(max_m)
        self._mark = np.zeros(K, dtype=np.intp)
        self._has_attr = bool(self._kinds_present[list(_ATTRIBUTE)].any())
        present = np.flatnonzero(self._kinds_present)
        self._single_kind = int(present[0]) if present.size == 1 else None
        self._all_m1 = {
            kind: bool((self._m[self._kind == kind] == 1).all()) for kind in _TIMEWEIGHTED
        }
        # every kind present plots one point per sample (no subgroups)
        self._per_sample = all(
            k in (_IMR, *_ATTRIBUTE) or self._all_m1.get(k, False) for k in present.tolist()
        )
        centre_users = ~np.isin(self._kind, _TIMEWEIGHTED)
        disp_users = np.isin(self._kind, _DISPERSION)
        self._any_reset = bool(np.count_nonzero(self._reset))
        self._centre_limit_bits = self._limit_only(self._rc_centre[centre_users])
        self._disp_limit_bits = self._limit_only(self._rc_disp[disp_users])
        # the limits matrix: σ and centre become views of its rows 0 and 1
        rows = 2 + max([_NDERIVED.get(k, 0) for k in present.tolist()], default=0)
        lim = np.empty((rows, K))
        lim[_L_SIGMA] = self._sigma
        lim[_L_CENTER] = self._center
        self._lim = lim
        self._sigma = lim[_L_SIGMA]
        self._center = lim[_L_CENTER]
        self._derive(slice(None))
        self._n_cusum_odd, self._n_mr_lcl = self._odd(slice(None))
        # kind groups of a whole tick (idx = 0..K-1), found once here instead of per tick
        self._groups: list[tuple[int, slice | np.ndarray]] = []
        for kind in present.tolist():
            members = np.flatnonzero(self._kind == kind)
            a, b = int(members[0]), int(members[-1]) + 1
            self._groups.append((kind, slice(a, b) if b - a == members.size else members))

    def _odd(self, sel: slice | np.ndarray) -> tuple[int, int]:
        """Among characteristics ``sel`` (unique): CUSUMs with σ ≤ 0 (no fast path) and
        I-MRs whose MR LCL is above 0 (an MR, ≥ 0, can fall below it)."""
        kind = self._kind[sel]
        cusum = np.count_nonzero((kind == _CUSUM) & ~(self._sigma[sel] > 0.0))
        imr = 0
        if self._kinds_present[_IMR]:
            imr = np.count_nonzero((kind == _IMR) & (self._lim[4, sel] > 0.0))
        return int(cusum), int(imr)

    def _derive(self, sel: slice | np.ndarray) -> None:
        """Recompute the derived rows of the limits matrix for characteristics ``sel``."""
        lim = self._lim
        if lim.shape[0] == 2:
            return
        kind = self._kind[sel]
        center, sigma, k = self._center[sel], self._sigma[sel], self._nsig[sel]
        D = np.full((lim.shape[0] - 2, kind.shape[0]), np.nan)
        i = np.flatnonzero(kind == _IMR)
        if i.size:
            # the formulas of imr_series: control_band and range_limits with d2(2), d3(2)
            lcl, ucl = control_band(center[i], sigma[i], k[i])
            _, _, mlo, mhi = range_limits(_D2_2, _D3_2, sigma[i], k[i])
            D[0, i], D[1, i], D[2, i], D[3, i] = lcl, ucl, mlo, mhi
        i = np.flatnonzero(kind == _EWMA)
        if i.size:
            # ewma_limits at n = 1 with the saturated factor √(λ/(2−λ)) (ewma_saturation)
            lam = self._par_a[sel][i]
            factor = np.sqrt(lam / (2.0 - lam))
            sig, lcl, ucl = ewma_limits(
                center[i], sigma[i], 1.0, lam, self._par_b[sel][i], None, factor
            )
            D[0, i], D[1, i], D[2, i] = lcl, ucl, sig
        lim[2:, sel] = D

    def _limit_only(self, rc: np.ndarray) -> np.uint32 | None:
        """The bits of the one config all these characteristics share, if it has only rule 1.

        Rule 1 (N1/WE1) looks at the point alone, so such a bank's histories are
        never read and its mask is ``(x > UCL) | (x < LCL)`` times the bits.
        """
        ids = np.unique(rc)
        if ids.size != 1:
            return None if ids.size else np.uint32(0)
        cfg = self._rule_configs[int(ids[0])]
        if any(r.kind != "limit" for r in cfg.rules):
            return None
        return np.uint32(cfg.bits)

    def set_limits(self, idx: Any, record: LimitsRecord | Estimate) -> None:
        """Judge the next points of characteristics ``idx`` against ``record``.

        Takes effect for the next plotted point (an open subgroup is judged
        against it when it completes). Run-rule windows, moving ranges and the
        EWMA/CUSUM sums continue across the change (Phase I/II boundary). A
        :class:`LimitsRecord` must be for the same chart kind; its ``params``
        (``nsigmas``, ``ewma_*``, ``cusum_*``) are adopted; an EWMA that has
        plotted no point yet restarts at the new centre (z₀ = centre).
        """
        idx = np.atleast_1d(np.asarray(idx, dtype=np.intp))
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise SpcInputError("idx", f"characteristic index out of range 0..{len(self) - 1}")
        if not isinstance(record, (LimitsRecord, Estimate)):
            raise SpcInputError("record", "must be a LimitsRecord or an Estimate")
        kinds = np.unique(self._kind[idx])
        for kind in kinds.tolist():
            _check_record_chart(CHARTS[kind], record, "record")
            _check_limits(kind, record.center, record.sigma, "record")
        params = dict(record.params) if isinstance(record, LimitsRecord) else {}
        updates = {key: float(v) for key, v in params.items() if key in _RECORD_PARAMS}
        if updates:
            # the same checks as a Spec with these parameters
            probe = Spec("imr", 0.0, 1.0, **updates)
            _check_spec(probe, "record.params")
        uniq = np.unique(idx)
        odd_before = self._odd(uniq)
        attr = np.isin(self._kind[idx], _ATTRIBUTE)
        self._center[idx] = float(record.center)
        laney_ok = np.isin(self._kind[idx], (_P, _U))  # σ_z of a Laney record, NaN otherwise
        self._sigma[idx] = np.where(attr & ~laney_ok, np.nan, float(record.sigma))
        if "nsigmas" in updates:
            self._nsig[idx] = updates["nsigmas"]
        ew = idx[self._kind[idx] == _EWMA]
        if ew.size:
            if "ewma_lambda" in updates:
                self._par_a[ew] = updates["ewma_lambda"]
                self._par_c[ew] = ewma_saturation(updates["ewma_lambda"])
            if "ewma_L" in updates:
                self._par_b[ew] = updates["ewma_L"]
            fresh = ew[self._st_b[ew] == 0]
            self._st_a[fresh] = float(record.center)
        cu = idx[self._kind[idx] == _CUSUM]
        if cu.size:
            for key, arr in (
                ("cusum_k", self._par_a),
                ("cusum_h", self._par_b),
                ("cusum_head_start", self._par_c),
            ):
                if key in updates:
                    arr[cu] = updates[key]
        self._lid[idx] = self._lid_of(record.id if isinstance(record, LimitsRecord) else "")
        self._derive(uniq)
        odd_after = self._odd(uniq)
        self._n_cusum_odd += odd_after[0] - odd_before[0]
        self._n_mr_lcl += odd_after[1] - odd_before[1]

    # ------------------------------------------------------------------ processing

    def _scratch(self, n: int) -> None:
        if n > self._scratch_n or not self._scratch_n:
            size = max(n, 2 * self._scratch_n, 64)
            self._arange = np.arange(size, dtype=np.intp)
            nan = np.full(size, np.nan)
            nan.flags.writeable = False
            self._nan = nan
            self._zeros_u32 = np.zeros(size, dtype=np.uint32)
            self._zeros_u32.flags.writeable = False
            self._tmp = np.empty(size)  # the engine's own temporaries; never handed out
            self._zeros_f = np.zeros(size)
            self._zeros_f.flags.writeable = False
            self._scratch_n = size

    def _range_bytes(self, B: int) -> bytes:
        if self._rb_n != B:
            self._rb = self._arange[:B].tobytes()
            self._rb_n = B
        return self._rb

    def process(self, idx: Any, value: Any, size: Any = None) -> Points:
        """Feed a micro-batch of samples; returns the points it completed.

        ``idx[j]`` is the characteristic of sample j, ``value[j]`` its value
        (for attribute charts the count; NaN = missing observation), ``size[j]``
        the sample size / inspection area (required for p, np and u; ignored
        otherwise). Samples of one characteristic are taken in arrival order.
        The whole batch is validated before any state changes.

        The returned columns are the caller's own: no later call writes them.
        The float columns may be rows of one freshly allocated block.
        """
        idx = np.asarray(idx, dtype=np.intp)
        if idx.ndim != 1:
            idx = idx.reshape(-1)
        v = np.asarray(value, dtype=np.float64)
        if v.ndim != 1:
            v = v.reshape(-1)
        B = idx.shape[0]
        if v.shape[0] != B:
            raise SpcInputError("value", f"{v.shape[0]} values for {B} indices")
        sz = None
        if size is not None:
            sz = np.asarray(size, dtype=np.float64).reshape(-1)
            if sz.shape[0] != B:
                raise SpcInputError("size", f"{sz.shape[0]} sizes for {B} indices")
        if B == 0:
            return _empty_points()
        K = len(self)
        lo, hi = int(idx[0]), int(idx[-1])
        self._scratch(B)
        # characteristics lo..lo+B-1 in order (a full tick) are read and
        # written through slices (views) instead of gathers and scatters
        if hi - lo != B - 1:
            run = False
        elif lo == 0:
            # idx == 0..B-1: one memcmp (the bytes of 0..B-1 are cached)
            run = idx.tobytes() == self._range_bytes(B)
        else:
            run = not np.count_nonzero(idx[1:] <= idx[:-1])
        if (lo < 0 or hi >= K) if run else (idx.min() < 0 or idx.max() >= K):
            raise SpcInputError("idx", f"characteristic index out of range 0..{K - 1}")
        # all finite: no infinity to reject and no missing value to skip
        fin = np.count_nonzero(np.isfinite(v)) == B
        if not fin:
            inf = np.isinf(v)
            if np.count_nonzero(inf):
                bad = int(np.flatnonzero(inf)[0])
                raise SpcInputError(
                    f"value[{bad}]", "must be finite (NaN marks a missing observation)"
                )
        if self._has_attr:
            self._check_attributes(idx, v, sz)
        kind = self._single_kind
        if run and B < _RUN_MIN and B != K:
            # a short run (single-value messages) is gathered: the rule banks bind views per
            # distinct slice, which costs more than gathering a few columns
            run = False
        if run:
            s = slice(lo, lo + B)
            if kind is not None:
                return self._single(*self._group(kind, idx, s, v, sz, fin))
            # kind groups: found at add() for a whole tick (then lo = 0 and a
            # position is a characteristic index), else found here
            groups = self._groups if B == K else _by_kind(self._kind[s])
            return self._several(groups, idx, s, lo, v, sz, fin)
        mark = self._mark
        ar = self._arange[:B]
        mark[idx] = ar
        if not np.count_nonzero(mark[idx] != ar):
            # every characteristic at most once: one round, gathered
            if kind is not None:
                return self._single(*self._group(kind, idx, idx, v, sz, fin))
            return self._several(_by_kind(self._kind[idx]), idx, idx, 0, v, sz, fin)
        return self._repeated(idx, v, sz, fin)

    def _repeated(self, idx: np.ndarray, v: np.ndarray, sz: np.ndarray | None, fin: bool) -> Points:
        """A batch with several samples of some characteristic: long runs, then rounds."""
        B = idx.shape[0]
        kind = self._single_kind
        parts = []
        rest = None
        order = np.argsort(idx, kind="stable")
        sidx = idx[order]
        first = np.flatnonzero(np.concatenate(([True], sidx[1:] != sidx[:-1])))
        length = np.diff(np.concatenate((first, [B])))
        longs = self._long_plan(sidx[first], length)
        if longs.size:
            # long runs of a few characteristics: the batch functions, not a round per sample
            keep = np.ones(B, dtype=bool)
            for j in longs.tolist():
                pos = order[first[j] : first[j] + length[j]]  # arrival order (stable sort)
                keep[pos] = False
                i = int(sidx[first[j]])
                rel, cols = self._long(i, v[pos], None if sz is None else sz[pos])
                if cols is not None:
                    parts.append((pos, rel, cols))
            rest = np.flatnonzero(keep)
        if rest is None:
            rounds = self._rounds(idx, order)
        else:
            rounds = self._rounds(idx[rest]) if rest.size else []
        for pos in rounds:
            if rest is not None:
                pos = rest[pos]
            c = idx[pos]
            vr = v[pos]
            szr = None if sz is None else sz[pos]
            groups = [(kind, None)] if kind is not None else _by_kind(self._kind[c])
            for k, sel in groups:
                cs, vs, ps, ss = (
                    (c, vr, szr, pos)
                    if sel is None
                    else (c[sel], vr[sel], None if szr is None else szr[sel], pos[sel])
                )
                rel, cc, st, f, mask, dmask, _ = self._group(k, cs, cs, vs, ps, fin)
                if f is not None:
                    parts.append((ss, rel, self._finish(k, cc, st, f, mask, dmask)))
        return self._merge(parts, B)

    def _check_attributes(self, idx: np.ndarray, v: np.ndarray, sz: np.ndarray | None) -> None:
        kind = self._kind[idx]
        attr = (kind >= _P) & (kind <= _U)
        if not attr.any():
            return
        with np.errstate(invalid="ignore"):
            neg = attr & (v < 0)
            if neg.any():
                j = int(np.flatnonzero(neg)[0])
                raise SpcInputError(f"value[{j}]", f"a count cannot be negative, got {v[j]:g}")
            sized = attr & (kind != _C)
            if not sized.any():
                return
            if sz is None:
                raise SpcInputError("size", "required for p, np and u charts")
            counted = sized & ~np.isnan(v)
            bad = counted & ~(sz > 0) | counted & np.isinf(sz)
            if bad.any():
                j = int(np.flatnonzero(bad)[0])
                raise SpcInputError(f"size[{j}]", f"a size must be finite and > 0, got {sz[j]:g}")
            over = counted & ((kind == _P) | (kind == _NP)) & (v > sz)
            if over.any():
                j = int(np.flatnonzero(over)[0])
                raise SpcInputError(
                    f"value[{j}]", f"count {v[j]:g} exceeds its sample size {sz[j]:g}"
                )

    @staticmethod
    def _rounds(idx: np.ndarray, order: np.ndarray | None = None) -> list[np.ndarray]:
        """Batch positions split by rank within characteristic; each list is in arrival order.

        ``order``: ``np.argsort(idx, kind="stable")`` when the caller has it.
        """
        B = idx.shape[0]
        if order is None:
            order = np.argsort(idx, kind="stable")
        s = idx[order]
        start = np.empty(B, dtype=bool)
        start[0] = True
        np.not_equal(s[1:], s[:-1], out=start[1:])
        ar = np.arange(B)
        first = np.maximum.accumulate(np.where(start, ar, 0))
        rank = np.empty(B, dtype=np.intp)
        rank[order] = ar - first
        by_rank = np.argsort(rank, kind="stable")
        counts = np.bincount(rank)
        return np.split(by_rank, np.cumsum(counts)[:-1])

    # ------------------------------------------------------------------ assembly

    def _single(self, rel, c, s, f, mask, dmask, block) -> Points:
        """The Points of a batch that was one kind group (:meth:`_group`'s result)."""
        if f is None:
            return _empty_points()
        cols = self._finish(self._single_kind, c, s, f, mask, dmask)
        if rel is not None and rel.shape[0] > 1 and np.count_nonzero(rel[1:] < rel[:-1]):
            order = np.argsort(rel, kind="stable")
            cols = {k: a[order] for k, a in cols.items()}
        return Points._make(cols)

    def _finish(self, kind, c, s, f, mask, dmask) -> dict[str, np.ndarray]:
        """All columns of a group's points: its float columns (``f``, taken over; NaN for
        those the kind does not plot) plus char, point, limits and masks."""
        n = c.shape[0]
        char, point, limits = self._common(c, s)
        nan = self._nan[:n]
        for name in _UNPLOTTED[kind]:
            f[name] = nan
        f["char"] = char
        f["point"] = point
        f["mask"] = mask
        f["disp_mask"] = self._zeros_u32[:n] if dmask is None else dmask
        f["limits"] = limits
        return f

    def _several(self, groups, idx, s, lo, v, sz, fin) -> Points:
        """A batch of several kind groups, each characteristic at most once.

        ``groups``: (kind, batch positions: a slice or an index array); ``s``
        indexes the batch's state (a slice from ``lo``, or ``idx``).
        """
        B = idx.shape[0]
        if not self._per_sample:
            parts = []
            for k, sel in groups:
                c = idx[sel]
                st = slice(sel.start + lo, sel.stop + lo) if isinstance(sel, slice) else c
                ps = None if sz is None else sz[sel]
                rel, cc, cs, f, mask, dmask, _ = self._group(k, c, st, v[sel], ps, fin)
                if f is not None:
                    parts.append((sel, rel, self._finish(k, cc, cs, f, mask, dmask)))
            return self._merge(parts, B)
        # one point per sample: every group writes its rows of one float block
        F = np.empty((_NF, B))
        mask = np.empty(B, dtype=np.uint32)
        dmask = np.zeros(B, dtype=np.uint32)
        for k, sel in groups:
            c = idx[sel]
            ps = None if sz is None else sz[sel]
            if isinstance(sel, slice):
                st = slice(sel.start + lo, sel.stop + lo)
                G = F[:, sel]
            else:
                st = c
                G = np.empty((_NF, sel.shape[0]))
            _, _, _, f, m, dm, block = self._group(k, c, st, v[sel], ps, fin, G)
            if block:
                G[_BLOCK_UNUSED[k]] = np.nan
            else:
                for r, name in enumerate(_FROWS):
                    G[r] = f.get(name, np.nan)
            if not isinstance(sel, slice):
                F[:, sel] = G
            mask[sel] = m
            if dm is not None:
                dmask[sel] = dm
        char, point, limits = self._common(idx, s)
        cols = dict(zip(_FROWS, F, strict=True))
        cols["char"] = char
        cols["point"] = point
        cols["mask"] = mask
        cols["disp_mask"] = dmask
        cols["limits"] = limits
        return Points._make(cols)

    def _merge(self, parts: list[tuple[Any, Any, dict]], B: int) -> Points:
        """Rows of several groups in arrival order: (batch positions, rel, columns) each."""
        if not parts:
            return _empty_points()
        if len(parts) == 1 and parts[0][1] is None and _is_all(parts[0][0], B):
            return Points._make(parts[0][2])
        if all(rel is None for _, rel, _ in parts) and sum(_size(p) for p, _, _ in parts) == B:
            # one row per sample: scatter each group into columns of the whole batch
            out = {}
            for name, first in parts[0][2].items():
                col = np.empty(B, dtype=first.dtype)
                for p, _, cols in parts:
                    col[p] = cols[name]
                out[name] = col
            return Points._make(out)
        pos = []
        for p, rel, _ in parts:
            ap = self._arange[p] if isinstance(p, slice) else p
            pos.append(ap if rel is None else ap[rel])
        order = np.argsort(np.concatenate(pos), kind="stable")
        names = parts[0][2]
        return Points._make(
            {n: np.concatenate([cols[n] for _, _, cols in parts])[order] for n in names}
        )

    # ------------------------------------------------------------------ chart kinds

    def _group(self, kind, c, s, v, sz, fin, F=None):
        """One kind's samples, each characteristic at most once; ``s`` indexes state
        (``c`` itself, or a slice equal to it). ``fin``: every value is finite.

        Returns ``(rel, c, s, f, mask, disp_mask, block)`` for the points it
        completed: ``rel`` None (one per sample, in order) or the input positions
        completing them; their characteristics and state index; ``f`` their float
        columns (None: no point); ``disp_mask`` None when the chart has none;
        ``block``: the columns are rows of ``F`` (rows of :data:`_FROWS`; a fresh
        block when ``F`` is None), the kind's other rows unwritten.
        """
        if kind == _IMR:
            F = np.empty((_NF, c.shape[0])) if F is None else F
            f, mask, dmask = self._imr(s, v, fin, F)
            return None, c, s, f, mask, dmask, True
        if kind in _ATTRIBUTE:
            f, mask = self._attribute(kind, s, v, sz)
            return None, c, s, f, mask, None, False
        if self._all_m1.get(kind, False):
            # individual values: x/1 is x, no buffer needed
            if not fin:  # a value elsewhere in the batch may be the missing one
                fin = not np.count_nonzero(np.isnan(v))
            if kind == _EWMA:
                if fin:
                    F = np.empty((_NF, c.shape[0])) if F is None else F
                    f, mask = self._ewma_fast(s, v, F)
                    return None, c, s, f, mask, None, True
                f, mask = self._ewma(s, (v == v).astype(np.int64), v)
                return None, c, s, f, mask, None, False
            if fin and not self._n_cusum_odd:
                F = np.empty((_NF, c.shape[0])) if F is None else F
                f, mask = self._cusum_fast(s, v, F)
                return None, c, s, f, mask, None, True
            f, mask = self._cusum(s, (v == v).astype(np.int64), v)
            return None, c, s, f, mask, None, False
        done = self._subgroups(c, v)
        if done is None:
            return None, None, None, None, None, None, False
        rel, dc, n, mean, rng, sd = done
        if kind == _EWMA:
            f, mask = self._ewma(dc, n, mean)
            return rel, dc, dc, f, mask, None, False
        if kind == _CUSUM:
            f, mask = self._cusum(dc, n, mean)
            return rel, dc, dc, f, mask, None, False
        f, mask, dmask = self._xbar(kind, dc, n, mean, rng, sd)
        return rel, dc, dc, f, mask, dmask, False

    def _subgroups(self, c: np.ndarray, v: np.ndarray):
        """Add values to open subgroups; (rel, chars, n, mean, range, sd) of those completed.

        ``rel``: positions within ``c`` of the completing samples (None: all, in
        order). m = 1 characteristics (EWMA/CUSUM on individual values) complete
        at once: x/1 is x, so their statistics need no buffer. None if nothing completed.
        """
        m = self._m[c]
        multi = m > 1
        if not multi.any():
            nan = self._nan[: c.shape[0]]
            return None, c, (v == v).astype(np.int64), v, nan, nan
        pos = self._arange[: c.shape[0]]
        whole = multi.all()
        cm, vm, pm, mm = (c, v, pos, m) if whole else (c[multi], v[multi], pos[multi], m[multi])
        fill = self._fill[cm]
        self._buf[self._off[cm] + fill] = vm
        fill += 1
        full = fill == mm
        fill[full] = 0
        self._fill[cm] = fill
        dc = cm[full]
        dpos = pm[full]
        dm = mm[full]
        stats = [np.zeros(0, np.int64), np.zeros(0), np.zeros(0), np.zeros(0)]
        if dc.size:
            widths = np.unique(dm).tolist()
            if len(widths) == 1:
                st = subgroup_stats(self._buf[self._off[dc][:, None] + self._arange[: widths[0]]])
                stats = [st.n, st.mean, st.range, st.sd]
            else:
                # one gather per subgroup size: the row width must be exactly m (pairwise sums)
                stats = [
                    np.zeros(dc.size, np.int64),
                    np.empty(dc.size),
                    np.empty(dc.size),
                    np.empty(dc.size),
                ]
                for w in widths:
                    sel = dm == w
                    st = subgroup_stats(self._buf[self._off[dc[sel]][:, None] + self._arange[:w]])
                    for arr, val in zip(stats, (st.n, st.mean, st.range, st.sd), strict=True):
                        arr[sel] = val
        if whole:
            return (dpos, dc, *stats) if dc.size else None
        single = ~multi
        cs, vs, ps = c[single], v[single], pos[single]
        if not (dc.size or cs.size):
            return None
        nan = np.full(cs.size, np.nan)
        s_stats = [(vs == vs).astype(np.int64), vs, nan, nan]
        return (
            np.concatenate([dpos, ps]),
            np.concatenate([dc, cs]),
            *(np.concatenate([a, b]) for a, b in zip(stats, s_stats, strict=True)),
        )

    def _common(
        self, c: np.ndarray, s: np.ndarray | slice
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(char, point, limits) columns; advances the point counters."""
        if isinstance(s, slice):
            npts = self._npts[s]
            pt = npts.copy()
            npts += _ONE
            return c.copy(), pt, self._lid[s].copy()
        pt = self._npts[s]
        self._npts[s] = pt + _ONE
        return c.copy(), pt, self._lid[s]

    def _centre_mask(self, s, x, center, sigma, lcl, ucl) -> np.ndarray:
        """Centre-chart rule masks; ``s`` (indices or a slice of them) selects the bank's rows."""
        bits = self._centre_limit_bits
        if bits is None:
            return self._centre_bank.step(s, x, center, sigma, lcl, ucl)
        return _limit_mask(bits, x, lcl, ucl)

    def _disp_mask(self, s, x, center, sigma, lcl, ucl) -> np.ndarray:
        """Dispersion-chart rule masks, as :meth:`_centre_mask`."""
        bits = self._disp_limit_bits
        if bits is None:
            return self._disp_bank.step(s, x, center, sigma, lcl, ucl)
        return _limit_mask(bits, x, lcl, ucl)

    def _limits(self, rows: slice, s: np.ndarray | slice, out: np.ndarray) -> None:
        """Copy rows ``rows`` of the limits matrix, columns ``s``, into ``out``."""
        if isinstance(s, slice):
            out[...] = self._lim[rows, s]
        else:
            np.take(self._lim[rows], s, axis=1, out=out, mode="clip")

    def _imr(self, s: np.ndarray | slice, x: np.ndarray, fin: bool, F: np.ndarray):
        """I-MR points into rows 0..10 of ``F``; returns (float columns, mask, MR mask)."""
        sigma, center, lcl, ucl, mlo, mhi, xs, mc, mr, ms, n = F[:11]
        # σ, centre, LCL, UCL, MR LCL, MR UCL: the limits matrix's rows 0..5
        if isinstance(s, slice):
            F[:6] = self._lim[:6, s]
        else:
            self._limits(slice(0, 6), s, F[:6])
        xs[...] = x
        prev = self._last[s]
        np.subtract(x, prev, out=mr)
        np.abs(mr, out=mr)
        if fin:
            self._last[s] = x
            n.fill(1.0)
        else:
            missing = np.isnan(x)
            self._last[s] = np.where(missing, prev, x)
            np.logical_not(missing, out=n)
        # range_limits(d2(2), d3(2), σ, k): its centre and σ (its limits are rows 4, 5)
        np.multiply(_D2_2A, sigma, out=mc)
        np.multiply(_D3_2A, sigma, out=ms)
        cb, db = self._centre_limit_bits, self._disp_limit_bits
        if cb is None:
            mask = self._centre_bank.step(s, xs, center, sigma, lcl, ucl)
        else:
            mask = _limit_mask(cb, xs, lcl, ucl)
        if db is None:
            dmask = self._disp_bank.step(s, mr, mc, ms, mlo, mhi)
        else:
            # an MR is ≥ 0 or NaN: while every MR LCL is clipped to 0, MR < LCL never holds
            dmask = _limit_mask(db, mr, mlo if self._n_mr_lcl else None, mhi)
        f = {
            "statistic": xs,
            "center": center,
            "lcl": lcl,
            "ucl": ucl,
            "sigma": sigma,
            "n": n,
            "disp_statistic": mr,
            "disp_center": mc,
            "disp_lcl": mlo,
            "disp_ucl": mhi,
            "disp_sigma": ms,
        }
        return f, mask, dmask

    def _xbar_cols(self, kind, center, sigma, k, n, mean, rng, sd) -> dict:
        """Float columns of X̄ points with sizes ``n`` (per-point centre, σ and k arrays)."""
        ctr, sig, lcl, ucl = xbar_limits(n, center, sigma, k)
        if kind == _XBAR_R:
            dc, ds, dlo, dhi = range_limits(self._d2t[n], self._d3t[n], sigma, k)
            dstat = rng
        else:
            dc, ds, dlo, dhi = sd_limits(self._c4t[n], sigma, k)
            dstat = sd
        return {
            "statistic": mean,
            "center": ctr,
            "lcl": lcl,
            "ucl": ucl,
            "sigma": sig,
            "n": n.astype(np.float64),
            "disp_statistic": dstat,
            "disp_center": dc,
            "disp_lcl": dlo,
            "disp_ucl": dhi,
            "disp_sigma": ds,
        }

    def _xbar(self, kind, c, n, mean, rng, sd):
        f = self._xbar_cols(kind, self._center[c], self._sigma[c], self._nsig[c], n, mean, rng, sd)
        mask = self._centre_mask(c, f["statistic"], f["center"], f["sigma"], f["lcl"], f["ucl"])
        dmask = self._disp_mask(
            c, f["disp_statistic"], f["disp_center"], f["disp_sigma"], f["disp_lcl"], f["disp_ucl"]
        )
        return f, mask, dmask

    @staticmethod
    def _attribute_cols(kind, p, k, count, sz, z) -> dict:
        """Float columns of attribute points; ``p`` (the caller's own array) and ``k`` per point.

        Mirrors the arithmetic of spc.charts.attributes (p_series & co. and their
        _series helper) operation for operation, so limits are bit-identical.
        """
        upper = None
        if kind == _P:
            n = sz
            stat = count / n
            center = p
            sigma = np.sqrt(p * (1.0 - p) / n)
            upper = 1.0
        elif kind == _NP:
            n = sz
            stat = count.copy()
            center = n * p
            sigma = np.sqrt(n * p * (1.0 - p))
            upper = n
        elif kind == _C:
            n = np.ones(count.shape[0])
            stat = count.copy()
            center = p
            sigma = np.sqrt(p)
        else:
            n = sz
            stat = count / n
            center = p
            sigma = np.sqrt(p / n)
        if kind in (_P, _U) and not np.isnan(z).all():
            # Laney p′/u′: σ_i·σ_z, as laney_p_series / laney_u_series compute it
            sigma = np.where(z == z, sigma * z, sigma)
        lcl = np.maximum(center - k * sigma, 0.0)
        ucl = center + k * sigma
        if upper is not None:
            ucl = np.minimum(ucl, upper)
        return {
            "statistic": stat,
            "center": center,
            "lcl": lcl,
            "ucl": ucl,
            "sigma": sigma,
            "n": np.array(n, dtype=np.float64),
        }

    def _attribute(self, kind, s, count, sz):
        p = self._center[s]
        if isinstance(s, slice):
            p = p.copy()
        f = self._attribute_cols(kind, p, self._nsig[s], count, sz, self._sigma[s])
        return f, self._centre_mask(s, f["statistic"], f["center"], f["sigma"], f["lcl"], f["ucl"])

    def _ewma_fast(self, s: np.ndarray | slice, x: np.ndarray, F: np.ndarray):
        """EWMA of individual values (m = 1), every value present, into ``F``: :meth:`_ewma`'s numbers."""
        B = x.shape[0]
        sig, center, lcl, ucl = F[:4]
        stat, n, z = F[6], F[10], F[11]
        # centre and the saturated LCL, UCL, σ (limits matrix rows 1..4)
        if isinstance(s, slice):
            F[1:4] = self._lim[1:4, s]
            sig[...] = self._lim[4, s]
        else:
            self._limits(slice(1, 4), s, F[1:4])
            self._lim[4].take(s, out=sig, mode="clip")
        stat[...] = x
        lam = self._par_a[s]
        # λ·x + (1 − λ)·z, the operations of ewma_series
        np.multiply(lam, x, out=z)
        tmp = self._tmp[:B]
        np.subtract(_F_ONE, lam, out=tmp)
        tmp *= self._st_a[s]
        z += tmp
        self._st_a[s] = z
        if isinstance(s, slice):
            t = self._st_b[s]
            t += _F_ONE
        else:
            t = self._st_b[s] + _F_ONE
            self._st_b[s] = t
        young = np.less(t, self._par_c[s])
        if np.count_nonzero(young):
            # before saturation the factor needs pow (ewma_factor), as in _ewma
            y = np.flatnonzero(young)
            ly, ty = lam[y], t[y]
            sy, loy, hiy = ewma_limits(
                center[y], self._sigma[s][y], 1.0, ly, self._par_b[s][y], ty, ewma_factor(ly, ty)
            )
            sig[y] = sy
            lcl[y] = loy
            ucl[y] = hiy
        n.fill(1.0)
        hit = np.greater(z, ucl)
        hit |= np.less(z, lcl)
        f = {
            "statistic": stat,
            "center": center,
            "lcl": lcl,
            "ucl": ucl,
            "sigma": sig,
            "n": n,
            "ewma": z,
        }
        return f, hit * _BIT_EWMA_A

    def _ewma(self, s, n, mean):
        lam = self._par_a[s]
        L = self._par_b[s]
        center = self._center[s]
        sigma = self._sigma[s]
        nf = n.astype(np.float64)
        ok = (n > 0) & (mean == mean)
        z_prev = self._st_a[s]
        B = n.shape[0]
        every = np.count_nonzero(ok) == B
        # the same operations as ewma_series: λ·x̄ + (1 − λ)·z, limits from ewma_limits
        z = lam * mean + (1.0 - lam) * z_prev
        if every:
            t = self._st_b[s] + 1.0
        else:
            z = np.where(ok, z, z_prev)
            t = self._st_b[s] + ok
        self._st_a[s] = z
        self._st_b[s] = t
        t1 = t if every else np.maximum(t, 1.0)
        # past saturation the factor is √(λ/(2−λ)) exactly (ewma_saturation), so
        # pow runs only for young characteristics; the numbers are ewma_factor's
        factor = np.sqrt(lam / (2.0 - lam))
        young = t1 < self._par_c[s]
        if np.count_nonzero(young):
            factor[young] = ewma_factor(lam[young], t1[young])
        sig, lcl, ucl = ewma_limits(center, sigma, nf, lam, L, t1, factor)
        if every:
            path = z
            stat = mean.copy()
            center = center.copy()
        else:
            path = np.where(ok, z, np.nan)
            sig = np.where(ok, sig, np.nan)
            lcl = np.where(ok, lcl, np.nan)
            ucl = np.where(ok, ucl, np.nan)
            stat = np.where(ok, mean, np.nan)
            center = np.where(ok, center, np.nan)
        with np.errstate(invalid="ignore"):
            signal = (path > ucl) | (path < lcl)
        f = {
            "statistic": stat,
            "center": center,
            "lcl": lcl,
            "ucl": ucl,
            "sigma": sig,
            "n": nf,
            "ewma": path,
        }
        return f, signal * _BIT_EWMA

    def _cusum_fast(self, s: np.ndarray | slice, x: np.ndarray, F: np.ndarray):
        """CUSUM of individual values (m = 1), every value present, every σ > 0, into ``F``:
        :meth:`_cusum`'s numbers."""
        B = x.shape[0]
        sigma, center, lcl, ucl = F[:4]
        stat, n, up, lo = F[6], F[10], F[12], F[13]
        h = self._par_b[s]
        np.negative(h, out=lcl)
        ucl[...] = h
        center.fill(0.0)
        sigma.fill(1.0)
        n.fill(1.0)
        stat[...] = x
        # cusum_standardize(x − μ0, σ/√1): σ/√1 is σ, and σ > 0 everywhere
        zi = self._tmp[:B]
        np.subtract(x, self._center[s], out=zi)
        zi /= self._sigma[s]
        k = self._par_a[s]
        # As _cusum, without its errstate: x is finite and σ > 0, so a sum can only
        # become inf − inf after an overflow, which warns (as in _cusum) anyway.
        # fmax/fmin: Python's max(0.0, nan) in cusum_series is 0.0; an array of
        # zeros instead of the scalar 0.0 (same function, a vectorised loop).
        zeros = self._zeros_f[:B]
        np.add(self._st_a[s], zi, out=up)
        up -= k
        np.fmax(zeros, up, out=up)
        np.add(self._st_b[s], zi, out=lo)
        lo += k
        np.fmin(zeros, lo, out=lo)
        sig_up = np.greater(up, ucl)
        sig_lo = np.less(lo, lcl)
        nxt_a, nxt_b = up, lo
        if self._any_reset:
            rs = self._reset[s] & (sig_up | sig_lo)
            if np.count_nonzero(rs):
                hs = self._par_c[s]
                nxt_a = np.where(rs, hs, up)
                nxt_b = np.where(rs, -hs, lo)
        self._st_a[s] = nxt_a
        self._st_b[s] = nxt_b
        f = {
            "statistic": stat,
            "center": center,
            "lcl": lcl,
            "ucl": ucl,
            "sigma": sigma,
            "n": n,
            "cusum_upper": up,
            "cusum_lower": lo,
        }
        return f, sig_up * _BIT_CUP_A | sig_lo * _BIT_CLO_A

    def _cusum(self, s, n, mean):
        k = self._par_a[s]
        h = self._par_b[s]
        nf = n.astype(np.float64)
        ok = (n > 0) & (mean == mean)
        B = n.shape[0]
        every = np.count_nonzero(ok) == B
        with np.errstate(divide="ignore", invalid="ignore"):
            zi = cusum_standardize(mean - self._center[s], self._sigma[s] / np.sqrt(nf))
            # fmax/fmin: Python's max(0.0, nan) in cusum_series is 0.0 (inf − inf cases)
            cp = np.fmax(0.0, self._st_a[s] + zi - k)
            cm = np.fmin(0.0, self._st_b[s] + zi + k)
        if every:
            up, lo, nxt_a, nxt_b = cp, cm, cp, cm
        else:
            up = np.where(ok, cp, np.nan)
            lo = np.where(ok, cm, np.nan)
            nxt_a = np.where(ok, cp, self._st_a[s])
            nxt_b = np.where(ok, cm, self._st_b[s])
        with np.errstate(invalid="ignore"):
            sig_up = up > h
            sig_lo = lo < -h
        if self._any_reset:
            rs = self._reset[s] & (sig_up | sig_lo)
            if np.count_nonzero(rs):
                hs = self._par_c[s]
                nxt_a = np.where(rs, hs, nxt_a)
                nxt_b = np.where(rs, -hs, nxt_b)
        self._st_a[s] = nxt_a
        self._st_b[s] = nxt_b
        if every:
            stat = mean.copy()
            center = np.zeros(B)
            lcl = -h
            ucl = h.copy()
            sigma = np.ones(B)
        else:
            stat = np.where(ok, mean, np.nan)
            center = np.where(ok, 0.0, np.nan)
            lcl = np.where(ok, -h, np.nan)
            ucl = np.where(ok, h, np.nan)
            sigma = np.where(ok, 1.0, np.nan)
        f = {
            "statistic": stat,
            "center": center,
            "lcl": lcl,
            "ucl": ucl,
            "sigma": sigma,
            "n": nf,
            "cusum_upper": up,
            "cusum_lower": lo,
        }
        return f, sig_up * _BIT_CUP | sig_lo * _BIT_CLO

    # ------------------------------------------------------------------ long runs

    def _long_plan(self, chars: np.ndarray, length: np.ndarray) -> np.ndarray:
        """Which characteristics (positions in ``chars``) to run through :meth:`_long`.

        Rounds are vectorised over characteristics, so a call costs about one
        round per sample of its longest run; :meth:`_long` costs about
        :data:`_LONG_COST` rounds per characteristic (more when its rule bank has
        to be brought up to date). Take the longest runs out while that is cheaper.
        """
        cand = np.flatnonzero(length >= _LONG_RUN)
        if not cand.size:
            return cand
        cand = cand[np.argsort(-length[cand], kind="stable")]
        c = chars[cand]
        kind = self._kind[c]
        banked = np.zeros(c.size, dtype=bool)
        if self._centre_limit_bits is None:
            banked |= ~np.isin(kind, _TIMEWEIGHTED)
        if self._disp_limit_bits is None:
            banked |= np.isin(kind, _DISPERSION)
        cost = np.cumsum(np.where(banked, _LONG_COST + MAX_WINDOW + 1, _LONG_COST))
        others = length.copy()
        others[cand] = 0
        # rounds left after taking the first j: the longest run not taken
        left = np.concatenate((length[cand][1:], [0]))
        left = np.maximum(left, others.max())
        total = np.concatenate(([length[cand][0]], cost + left))
        return cand[: int(np.argmin(total))]

    def _long(self, i: int, x: np.ndarray, sz: np.ndarray | None) -> tuple:
        """All of one call's samples of characteristic ``i`` (a long run), in arrival order.

        The vectorised batch functions (``subgroup_stats``, the limit formulas,
        ``ewma_series`` / ``cusum_series`` with carries, ``evaluate_with_carry``
        seeded from the rule bank) replace one round per sample; the state after
        the run is what stepping through it would leave, so later calls continue
        exactly (spc-semantics.md, "Streaming equals batch").
        """
        kind = int(self._kind[i])
        if kind == _IMR:
            return None, self._long_imr(i, x)
        if kind in _ATTRIBUTE:
            P = x.shape[0]
            f = self._attribute_cols(
                kind,
                np.full(P, self._center[i]),
                np.full(P, self._nsig[i]),
                x,
                sz,
                np.full(P, self._sigma[i]),
            )
            mask = self._long_mask(self._centre_bank, self._centre_limit_bits, i, f)
            return None, self._long_cols(i, f, mask, None)
        m = int(self._m[i])
        rel = None
        if m == 1:
            n, mean, rng, sd = (x == x).astype(np.int64), x, None, None
        else:
            done = self._long_subgroups(i, x, m)
            if done is None:
                return None, None
            rel, n, mean, rng, sd = done
        if kind == _EWMA:
            return rel, self._long_ewma(i, n, mean)
        if kind == _CUSUM:
            return rel, self._long_cusum(i, n, mean)
        P = n.shape[0]
        f = self._xbar_cols(
            kind,
            np.full(P, self._center[i]),
            np.full(P, self._sigma[i]),
            np.full(P, self._nsig[i]),
            n,
            mean,
            rng,
            sd,
        )
        mask = self._long_mask(self._centre_bank, self._centre_limit_bits, i, f)
        dmask = self._long_mask(self._disp_bank, self._disp_limit_bits, i, f, "disp_")
        return rel, self._long_cols(i, f, mask, dmask)

    def _long_subgroups(self, i: int, x: np.ndarray, m: int):
        """(rel, n, mean, range, sd) of the subgroups a run completes; the rest stays open."""
        off, fill = int(self._off[i]), int(self._fill[i])
        vals = np.concatenate((self._buf[off : off + fill], x))
        P = vals.shape[0] // m
        left = vals.shape[0] - P * m
        if P:
            rows = vals[: P * m].reshape(P, m)
            # the buffer as the tick path leaves it: the last whole subgroup, then the open one
            self._buf[off : off + m] = rows[-1]
        self._buf[off : off + left] = vals[P * m :]
        self._fill[i] = left
        if not P:
            return None
        st = subgroup_stats(rows)
        rel = (m - fill - 1) + m * np.arange(P)  # the sample completing each subgroup
        return rel, st.n, st.mean, st.range, st.sd

    def _long_imr(self, i: int, x: np.ndarray) -> dict:
        P = x.shape[0]
        F = np.empty((11, P))
        sigma, center, lcl, ucl, mlo, mhi, xs, mc, mr, ms, n = F
        F[:6] = self._lim[:6, i, None]
        xs[...] = x
        present = np.flatnonzero(x == x)
        mr.fill(np.nan)
        if present.size:
            xp = x[present]
            prev = np.empty(present.size)
            prev[0] = self._last[i]
            prev[1:] = xp[:-1]
            # |x − the previous plotted value|, as the tick path's subtract and abs
            d = np.subtract(xp, prev)
            mr[present] = np.abs(d)
            self._last[i] = xp[-1]
        n[...] = x == x
        mc.fill(np.multiply(_D2_2, sigma[0]))
        ms.fill(np.multiply(_D3_2, sigma[0]))
        f = {
            "statistic": xs,
            "center": center,
            "lcl": lcl,
            "ucl": ucl,
            "sigma": sigma,
            "n": n,
            "disp_statistic": mr,
            "disp_center": mc,
            "disp_lcl": mlo,
            "disp_ucl": mhi,
            "disp_sigma": ms,
        }
        mask = self._long_mask(self._centre_bank, self._centre_limit_bits, i, f)
        dmask = self._long_mask(self._disp_bank, self._disp_limit_bits, i, f, "disp_")
        return self._long_cols(i, f, mask, dmask)

    def _long_mask(self, bank: RuleBank, bits: Any, i: int, f: dict, pre: str = "") -> np.ndarray:
        """Rule masks of a run of characteristic ``i``'s points; advances the bank."""
        x, center, sigma = f[pre + "statistic"], f[pre + "center"], f[pre + "sigma"]
        lcl, ucl = f[pre + "lcl"], f[pre + "ucl"]
        if bits is not None:
            return _limit_mask(bits, x, lcl, ucl)
        res = evaluate_with_carry(x, center, sigma, lcl, ucl, bank.config(i), bank.carry(i))
        # The bank remembers at most MAX_WINDOW plotted points (its windows) and the
        # last value: stepping the last MAX_WINDOW + 1 plotted points leaves it in
        # the state stepping all of them would (the first one only supplies the
        # previous value of the second, then shifts out).
        z = standardize(x, center, sigma)
        plotted = np.flatnonzero(z == z)  # the bank skips the others (missing points)
        one = slice(i, i + 1)
        for j in plotted[-(MAX_WINDOW + 1) :].tolist():
            bank.step(
                one,
                x[j : j + 1],
                center[j : j + 1],
                sigma[j : j + 1],
                lcl[j : j + 1],
                ucl[j : j + 1],
            )
        return res.mask

    def _long_ewma(self, i: int, n: np.ndarray, mean: np.ndarray) -> dict:
        nf = n.astype(np.float64)
        est = Estimate(float(self._center[i]), float(self._sigma[i]), "known")
        lam, L = float(self._par_a[i]), float(self._par_b[i])
        carry = EwmaCarry(float(self._st_a[i]), int(self._st_b[i]))
        s, carry = ewma_series(mean, nf, est, lam, L, carry=carry)
        self._st_a[i] = carry.z
        self._st_b[i] = float(carry.t)
        path = s.extra["ewma"]
        with np.errstate(invalid="ignore"):
            signal = (path > s.ucl) | (path < s.lcl)
        f = _series_cols(s, nf)
        f["ewma"] = path
        return self._long_cols(i, f, signal * _BIT_EWMA, None)

    def _long_cusum(self, i: int, n: np.ndarray, mean: np.ndarray) -> dict:
        nf = n.astype(np.float64)
        est = Estimate(float(self._center[i]), float(self._sigma[i]), "known")
        k, h, hs = float(self._par_a[i]), float(self._par_b[i]), float(self._par_c[i])
        carry = CusumCarry(float(self._st_a[i]), float(self._st_b[i]))
        s, carry = cusum_series(mean, nf, est, k, h, hs, reset=bool(self._reset[i]), carry=carry)
        self._st_a[i] = carry.upper
        self._st_b[i] = carry.lower
        up, lo = s.extra["cusum_upper"], s.extra["cusum_lower"]
        with np.errstate(invalid="ignore"):
            mask = (up > h) * _BIT_CUP | (lo < -h) * _BIT_CLO
        f = _series_cols(s, nf)
        f["cusum_upper"] = up
        f["cusum_lower"] = lo
        return self._long_cols(i, f, mask, None)

    def _long_cols(self, i: int, f: dict, mask: np.ndarray, dmask: np.ndarray | None) -> dict:
        """All columns of a run's points: ``f`` (float columns) plus char, point, limits, masks."""
        P = f["statistic"].shape[0]
        start = int(self._npts[i])
        self._npts[i] = start + P
        nan = self._nan[:P]  # P ≤ the batch size, which _scratch covers
        cols = {
            "char": np.full(P, i, dtype=np.intp),
            "point": np.arange(start, start + P, dtype=np.int64),
            "mask": mask,
            "disp_mask": np.zeros(P, dtype=np.uint32) if dmask is None else dmask,
            "limits": np.full(P, self._lid[i], dtype=np.int32),
        }
        for name in _FROWS:
            cols[name] = f.get(name, nan)
        return cols

    # ------------------------------------------------------------------ persistence

    def snapshot(self) -> bytes:
        """The whole engine (configuration, open subgroups, carries, rule histories) as bytes.

        An ``.npz`` without pickles; :meth:`restore` gives an engine that
        continues exactly as this one would.
        """
        return encode_snapshot(self.snapshot_arrays())

    def snapshot_arrays(self) -> dict[str, Any]:
        """What :meth:`snapshot` stores, copied now (later calls leave the copies alone).

        The zip encoding costs most of a snapshot: a caller that must take the
        state where the engine cannot move (an event loop) takes this there and
        runs :func:`encode_snapshot` elsewhere.
        """
        return {
            "header": {
                "format": _FORMAT,
                "version": _VERSION,
                "limit_ids": list(self._limit_ids),
                "rule_configs": [_config_json(c) for c in self._rule_configs],
            },
            "buf": self._buf.copy(),
            "centre_bank": self._centre_bank.state_arrays(),
            "disp_bank": self._disp_bank.state_arrays(),
            "arrays": {name: getattr(self, "_" + name).copy() for name in _ARRAYS},
        }

    @classmethod
    def restore(cls, blob: bytes) -> Engine:
        """Rebuild an engine from :meth:`snapshot` bytes."""
        try:
            with np.load(io.BytesIO(blob), allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
            header = json.loads(data["header"].tobytes().decode())
        except (OSError, ValueError, KeyError) as e:
            raise SpcInputError("snapshot", f"not an engine snapshot: {e}") from None
        if header.get("format") != _FORMAT or header.get("version") != _VERSION:
            raise SpcInputError("snapshot", "not an engine snapshot (format/version)")
        eng = cls()
        K = data["kind"].shape[0]
        for name, dt in _ARRAYS.items():
            arr = data.get(name)
            if arr is None or arr.shape != (K,):
                raise SpcInputError(f"snapshot.{name}", f"missing or not {K} entries")
            setattr(eng, "_" + name, np.array(arr, dtype=dt))
        eng._buf = np.array(data["buf"], dtype=np.float64)
        eng._limit_ids = list(header["limit_ids"])
        eng._limit_index = {s: i for i, s in enumerate(eng._limit_ids)}
        eng._rule_configs = [_config_from_json(c) for c in header["rule_configs"]]
        eng._rule_index = {c: i for i, c in enumerate(eng._rule_configs)}
        centre = [eng._rule_configs[i] for i in eng._rc_centre.tolist()]
        disp = [eng._rule_configs[i] for i in eng._rc_disp.tolist()]
        eng._centre_bank = RuleBank.from_bytes(centre, data["centre_bank"].tobytes())
        eng._disp_bank = RuleBank.from_bytes(disp, data["disp_bank"].tobytes())
        eng._after_config()
        return eng


def encode_snapshot(parts: Mapping[str, Any]) -> bytes:
    """:meth:`Engine.snapshot_arrays` as the bytes :meth:`Engine.restore` reads."""
    return npz_bytes(
        {
            "header": np.frombuffer(json.dumps(parts["header"]).encode(), dtype=np.uint8),
            "buf": parts["buf"],
            "centre_bank": np.frombuffer(npz_bytes(parts["centre_bank"]), dtype=np.uint8),
            "disp_bank": np.frombuffer(npz_bytes(parts["disp_bank"]), dtype=np.uint8),
            **parts["arrays"],
        }
    )


def _series_cols(s: Any, nf: np.ndarray) -> dict[str, np.ndarray]:
    """The centre-chart columns of a batch ChartSeries."""
    return {
        "statistic": s.statistics,
        "center": s.center,
        "lcl": s.lcl,
        "ucl": s.ucl,
        "sigma": s.sigma,
        "n": nf,
    }


def _by_kind(kinds: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(kind, positions) for each chart kind present in ``kinds``."""
    counts = np.bincount(kinds, minlength=len(CHARTS))
    return [(k, np.flatnonzero(kinds == k)) for k in np.flatnonzero(counts).tolist()]


def _size(p: slice | np.ndarray) -> int:
    return p.stop - p.start if isinstance(p, slice) else int(p.shape[0])


def _is_all(p: slice | np.ndarray, B: int) -> bool:
    return isinstance(p, slice) and p.start == 0 and p.stop == B


def _limit_mask(
    bits: np.uint32, x: np.ndarray, lcl: np.ndarray | None, ucl: np.ndarray
) -> np.ndarray:
    """Rule 1 alone, as RuleBank computes it: NaN anywhere (a missing point) never hits."""
    if not bits:
        return np.zeros(x.shape[0], dtype=np.uint32)
    if lcl is None:  # the caller knows that x < LCL never holds
        hit = x > ucl
    else:
        hit = (x > ucl) | (x < lcl)
    if bits == 1:  # N1 alone: the mask is the hit itself (astype is cheaper than a multiply)
        return hit.astype(np.uint32)
    return hit * bits
