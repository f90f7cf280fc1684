"""The streaming SPC engine: K characteristics judged at once, state in numpy arrays.

Configuration and state live in arrays indexed by characteristic; a
micro-batch of samples (characteristic, value[, size]) goes in, one row per
plotted point comes out (:class:`Points`). Nothing on the hot path is a Python
object per characteristic or per sample: a batch is split into *rounds* by the
rank of each sample within its characteristic, and each round is vectorised
over the characteristics it touches (one group per chart kind).

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

from spc.charts.timeweighted import cusum_standardize, ewma_factor, ewma_limits, ewma_saturation
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
from spc.rules import BITS, RuleBank, RuleConfig, make_rule, resolve_rules
from spc.series import Estimate

__all__ = ["CHARTS", "Engine", "Points", "Spec"]

#: Chart kinds the engine runs, in the order of their internal codes.
CHARTS: tuple[str, ...] = ("imr", "xbar-r", "xbar-s", "p", "np", "c", "u", "ewma", "cusum")
_IMR, _XBAR_R, _XBAR_S, _P, _NP, _C, _U, _EWMA, _CUSUM = range(len(CHARTS))
_KIND = {name: code for code, name in enumerate(CHARTS)}
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
    ``sigma`` is ignored). ``subgroup_size`` m: that many consecutive values
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
    if isinstance(limits, LimitsRecord) and limits.chart and limits.chart != chart:
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


@dataclass
class _Out:
    """Columns of the points one kind group produced in one round, with their batch positions."""

    pos: np.ndarray
    cols: dict[str, np.ndarray]


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
        self._kinds_present = np.zeros(len(CHARTS), dtype=np.int64)
        self._tables(2)
        self._mark = np.zeros(0, dtype=np.intp)
        self._scratch_n = 0
        self._arange = np.arange(0, dtype=np.intp)
        self._nan = np.zeros(0)
        if specs:
            self.add(specs)

    # ------------------------------------------------------------------ shape

    def __len__(self) -> int:
        return int(self._kind.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of per-characteristic configuration and state, rule banks and open subgroups included."""
        own = sum(getattr(self, "_" + name).nbytes for name in _ARRAYS)
        return int(own + self._buf.nbytes + self._centre_bank.nbytes + self._disp_bank.nbytes)

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
        self._kinds_present = np.bincount(self._kind, minlength=len(CHARTS))
        max_m = int(self._m.max()) if len(self) else 1
        if max_m + 1 > self._d2t.shape[0]:
            self._tables(max_m)
        self._mark = np.zeros(len(self), dtype=np.intp)
        self._has_attr = bool(self._kinds_present[list(_ATTRIBUTE)].any())
        present = np.flatnonzero(self._kinds_present)
        self._single_kind = int(present[0]) if present.size == 1 else None
        self._all_m1 = {
            kind: bool((self._m[self._kind == kind] == 1).all()) for kind in _TIMEWEIGHTED
        }
        centre_users = ~np.isin(self._kind, _TIMEWEIGHTED)
        disp_users = np.isin(self._kind, _DISPERSION)
        self._any_reset = bool(np.count_nonzero(self._reset))
        self._centre_limit_bits = self._limit_only(self._rc_centre[centre_users])
        self._disp_limit_bits = self._limit_only(self._rc_disp[disp_users])

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
        attr = np.isin(self._kind[idx], _ATTRIBUTE)
        self._center[idx] = float(record.center)
        self._sigma[idx] = np.where(attr, np.nan, float(record.sigma))
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

    # ------------------------------------------------------------------ processing

    def _scratch(self, n: int) -> None:
        if n > self._scratch_n:
            size = max(n, 2 * self._scratch_n, 64)
            self._arange = np.arange(size, dtype=np.intp)
            nan = np.full(size, np.nan)
            nan.flags.writeable = False
            self._nan = nan
            self._zeros_u32 = np.zeros(size, dtype=np.uint32)
            self._zeros_u32.flags.writeable = False
            self._scratch_n = size

    def process(self, idx: Any, value: Any, size: Any = None) -> Points:
        """Feed a micro-batch of samples; returns the points it completed.

        ``idx[j]`` is the characteristic of sample j, ``value[j]`` its value
        (for attribute charts the count; NaN = missing observation), ``size[j]``
        the sample size / inspection area (required for p, np and u; ignored
        otherwise). Samples of one characteristic are taken in arrival order.
        The whole batch is validated before any state changes.
        """
        idx = np.asarray(idx, dtype=np.intp).reshape(-1)
        v = np.asarray(value, dtype=np.float64).reshape(-1)
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
        # characteristics lo..lo+B-1 in order (a full tick) are read and
        # written through slices (views) instead of gathers and scatters
        run = hi - lo == B - 1 and not np.count_nonzero(idx[1:] <= idx[:-1])
        if (lo < 0 or hi >= K) if run else (idx.min() < 0 or idx.max() >= K):
            raise SpcInputError("idx", f"characteristic index out of range 0..{K - 1}")
        inf = np.isinf(v)
        if np.count_nonzero(inf):
            bad = int(np.flatnonzero(inf)[0])
            raise SpcInputError(f"value[{bad}]", "must be finite (NaN marks a missing observation)")
        if self._has_attr:
            self._check_attributes(idx, v, sz)
        self._scratch(B)
        ar = self._arange[:B]
        if run:
            outs = self._round(idx, v, sz, None, slice(lo, lo + B))
            return self._assemble(outs, B, single_round=True)
        mark = self._mark
        mark[idx] = ar
        if not np.count_nonzero(mark[idx] != ar):
            outs = self._round(idx, v, sz, None)
            return self._assemble(outs, B, single_round=True)
        outs = []
        for pos in self._rounds(idx):
            outs += self._round(idx[pos], v[pos], None if sz is None else sz[pos], pos)
        return self._assemble(outs, B, single_round=False)

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
    def _rounds(idx: np.ndarray) -> list[np.ndarray]:
        """Batch positions split by rank within characteristic; each list is in arrival order."""
        B = idx.shape[0]
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

    def _round(
        self,
        c: np.ndarray,
        v: np.ndarray,
        sz: np.ndarray | None,
        pos: np.ndarray | None,
        s: slice | None = None,
    ) -> list[_Out]:
        """One round: each characteristic in ``c`` at most once (``s``: the same as a slice)."""
        kind = self._single_kind
        if kind is not None:
            return self._group(kind, c, v, sz, pos, c if s is None else s)
        kinds = self._kind[c if s is None else s]
        counts = np.bincount(kinds, minlength=len(CHARTS))
        outs: list[_Out] = []
        for k in np.flatnonzero(counts).tolist():
            sel = np.flatnonzero(kinds == k)
            p = sel if pos is None else pos[sel]
            cs = c[sel]
            outs += self._group(k, cs, v[sel], None if sz is None else sz[sel], p, cs)
        return outs

    def _group(
        self,
        kind: int,
        c: np.ndarray,
        v: np.ndarray,
        sz: np.ndarray | None,
        pos: np.ndarray | None,
        s: np.ndarray | slice,
    ) -> list[_Out]:
        """One kind's samples of a round; ``s`` indexes state (``c`` itself, or a slice equal to it)."""
        if pos is None:
            pos = self._arange[: c.shape[0]]
        if kind == _IMR:
            return [self._imr(c, s, v, pos)]
        if kind in _ATTRIBUTE:
            return [self._attribute(kind, c, s, v, sz, pos)]
        if self._all_m1.get(kind, False):
            # individual values: x/1 is x, no buffer needed
            n = (v == v).astype(np.int64)
            if kind == _EWMA:
                return [self._ewma(c, s, pos, n, v)]
            return [self._cusum(c, s, pos, n, v)]
        done = self._subgroups(c, v, pos)
        if done is None:
            return []
        dc, dpos, n, mean, rng, sd = done
        if kind == _EWMA:
            return [self._ewma(dc, dc, dpos, n, mean)]
        if kind == _CUSUM:
            return [self._cusum(dc, dc, dpos, n, mean)]
        return [self._xbar(kind, dc, dpos, n, mean, rng, sd)]

    def _subgroups(self, c: np.ndarray, v: np.ndarray, pos: np.ndarray):
        """Add values to open subgroups; (chars, positions, n, mean, range, sd) of those completed.

        m = 1 characteristics (EWMA/CUSUM on individual values) complete at
        once: x/1 is x, so their statistics need no buffer. None if nothing completed.
        """
        m = self._m[c]
        multi = m > 1
        if not multi.any():
            nan = self._nan[: c.shape[0]]
            return c, pos, (v == v).astype(np.int64), v, nan, nan
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
            return (dc, dpos, *stats) if dc.size else None
        single = ~multi
        cs, vs, ps = c[single], v[single], pos[single]
        nan = np.full(cs.size, np.nan)
        s_stats = [(vs == vs).astype(np.int64), vs, nan, nan]
        return (
            np.concatenate([dc, cs]),
            np.concatenate([dpos, ps]),
            *(np.concatenate([a, b]) for a, b in zip(stats, s_stats, strict=True)),
        )

    # ------------------------------------------------------------------ chart kinds

    def _common(self, c: np.ndarray, s: np.ndarray | slice) -> dict[str, np.ndarray]:
        if isinstance(s, slice):
            pt = self._npts[s].copy()
            self._npts[s] += 1
            return {"char": c.copy(), "point": pt, "limits": self._lid[s].copy()}
        pt = self._npts[s]
        self._npts[s] = pt + 1
        return {"char": c.copy(), "point": pt, "limits": self._lid[s]}

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

    def _imr(self, c: np.ndarray, s: np.ndarray | slice, x: np.ndarray, pos: np.ndarray) -> _Out:
        center = self._center[s]
        sigma = self._sigma[s]
        if isinstance(s, slice):  # views of the config arrays must not leak into Points
            center = center.copy()
            sigma = sigma.copy()
        k = self._nsig[s]
        lcl, ucl = control_band(center, sigma, k)
        prev = self._last[s]
        mr = x - prev
        np.abs(mr, out=mr)
        missing = np.isnan(x)
        B = c.shape[0]
        if np.count_nonzero(missing):
            self._last[s] = np.where(missing, prev, x)
            n = (~missing).astype(np.float64)
        else:
            self._last[s] = x
            n = np.ones(B)
        mc, ms, mlo, mhi = range_limits(_D2_2, _D3_2, sigma, k)
        cols = self._common(c, s)
        nan = self._nan[:B]
        cols.update(
            statistic=x.copy(),
            center=center,
            lcl=lcl,
            ucl=ucl,
            sigma=sigma,
            n=n,
            mask=self._centre_mask(s, x, center, sigma, lcl, ucl),
            disp_statistic=mr,
            disp_center=mc,
            disp_lcl=mlo,
            disp_ucl=mhi,
            disp_sigma=ms,
            disp_mask=self._disp_mask(s, mr, mc, ms, mlo, mhi),
            ewma=nan,
            cusum_upper=nan,
            cusum_lower=nan,
        )
        return _Out(pos, cols)

    def _xbar(self, kind, c, pos, n, mean, rng, sd) -> _Out:
        center = self._center[c]
        sigma = self._sigma[c]
        k = self._nsig[c]
        ctr, sig, lcl, ucl = xbar_limits(n, center, sigma, k)
        if kind == _XBAR_R:
            dc, ds, dlo, dhi = range_limits(self._d2t[n], self._d3t[n], sigma, k)
            dstat = rng
        else:
            dc, ds, dlo, dhi = sd_limits(self._c4t[n], sigma, k)
            dstat = sd
        cols = self._common(c, c)
        nan = self._nan[: c.shape[0]]
        cols.update(
            statistic=mean,
            center=ctr,
            lcl=lcl,
            ucl=ucl,
            sigma=sig,
            n=n.astype(np.float64),
            mask=self._centre_mask(c, mean, ctr, sig, lcl, ucl),
            disp_statistic=dstat,
            disp_center=dc,
            disp_lcl=dlo,
            disp_ucl=dhi,
            disp_sigma=ds,
            disp_mask=self._disp_mask(c, dstat, dc, ds, dlo, dhi),
            ewma=nan,
            cusum_upper=nan,
            cusum_lower=nan,
        )
        return _Out(pos, cols)

    def _attribute(self, kind, c, s, count, sz, pos) -> _Out:
        # Mirrors the arithmetic of spc.charts.attributes (p_series & co. and their
        # _series helper) operation for operation, so limits are bit-identical.
        B = c.shape[0]
        p = self._center[s]
        if isinstance(s, slice):
            p = p.copy()
        k = self._nsig[s]
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
            n = np.ones(B)
            stat = count.copy()
            center = p
            sigma = np.sqrt(p)
        else:
            n = sz
            stat = count / n
            center = p
            sigma = np.sqrt(p / n)
        lcl = np.maximum(center - k * sigma, 0.0)
        ucl = center + k * sigma
        if upper is not None:
            ucl = np.minimum(ucl, upper)
        cols = self._common(c, s)
        nan = self._nan[:B]
        cols.update(
            statistic=stat,
            center=center,
            lcl=lcl,
            ucl=ucl,
            sigma=sigma,
            n=np.array(n, dtype=np.float64),
            mask=self._centre_mask(s, stat, center, sigma, lcl, ucl),
            disp_statistic=nan,
            disp_center=nan,
            disp_lcl=nan,
            disp_ucl=nan,
            disp_sigma=nan,
            disp_mask=self._zeros_u32[:B],
            ewma=nan,
            cusum_upper=nan,
            cusum_lower=nan,
        )
        return _Out(pos, cols)

    def _ewma(self, c, s, pos, n, mean) -> _Out:
        lam = self._par_a[s]
        L = self._par_b[s]
        center = self._center[s]
        sigma = self._sigma[s]
        nf = n.astype(np.float64)
        ok = (n > 0) & (mean == mean)
        z_prev = self._st_a[s]
        B = c.shape[0]
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
        cols = self._common(c, s)
        nan = self._nan[:B]
        cols.update(
            statistic=stat,
            center=center,
            lcl=lcl,
            ucl=ucl,
            sigma=sig,
            n=nf,
            mask=signal * _BIT_EWMA,
            disp_statistic=nan,
            disp_center=nan,
            disp_lcl=nan,
            disp_ucl=nan,
            disp_sigma=nan,
            disp_mask=self._zeros_u32[:B],
            ewma=path,
            cusum_upper=nan,
            cusum_lower=nan,
        )
        return _Out(pos, cols)

    def _cusum(self, c, s, pos, n, mean) -> _Out:
        k = self._par_a[s]
        h = self._par_b[s]
        nf = n.astype(np.float64)
        ok = (n > 0) & (mean == mean)
        B = c.shape[0]
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
        cols = self._common(c, s)
        nan = self._nan[:B]
        cols.update(
            statistic=stat,
            center=center,
            lcl=lcl,
            ucl=ucl,
            sigma=sigma,
            n=nf,
            mask=sig_up * _BIT_CUP | sig_lo * _BIT_CLO,
            disp_statistic=nan,
            disp_center=nan,
            disp_lcl=nan,
            disp_ucl=nan,
            disp_sigma=nan,
            disp_mask=self._zeros_u32[:B],
            ewma=nan,
            cusum_upper=up,
            cusum_lower=lo,
        )
        return _Out(pos, cols)

    def _assemble(self, outs: list[_Out], B: int, single_round: bool) -> Points:
        if not outs:
            return _empty_points()
        if len(outs) == 1:
            o = outs[0]
            if single_round and o.pos.shape[0] == B:
                return Points(**o.cols)
            order = np.argsort(o.pos, kind="stable")
            return Points(**{k: a[order] for k, a in o.cols.items()})
        pos = np.concatenate([o.pos for o in outs])
        order = np.argsort(pos, kind="stable")
        cols = {name: np.concatenate([o.cols[name] for o in outs])[order] for name in outs[0].cols}
        return Points(**cols)

    # ------------------------------------------------------------------ persistence

    def snapshot(self) -> bytes:
        """The whole engine (configuration, open subgroups, carries, rule histories) as bytes.

        An ``.npz`` without pickles; :meth:`restore` gives an engine that
        continues exactly as this one would.
        """
        header = {
            "format": _FORMAT,
            "version": _VERSION,
            "limit_ids": self._limit_ids,
            "rule_configs": [_config_json(c) for c in self._rule_configs],
        }
        arrays = {name: getattr(self, "_" + name) for name in _ARRAYS}
        buf = io.BytesIO()
        np.savez(
            buf,
            header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
            buf=self._buf,
            centre_bank=np.frombuffer(self._centre_bank.to_bytes(), dtype=np.uint8),
            disp_bank=np.frombuffer(self._disp_bank.to_bytes(), dtype=np.uint8),
            **arrays,
        )
        return buf.getvalue()

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


def _limit_mask(bits: np.uint32, x: np.ndarray, lcl: np.ndarray, ucl: np.ndarray) -> np.ndarray:
    """Rule 1 alone, as RuleBank computes it: NaN anywhere (a missing point) never hits."""
    if not bits:
        return np.zeros(x.shape[0], dtype=np.uint32)
    hit = (x > ucl) | (x < lcl)
    return hit * bits
