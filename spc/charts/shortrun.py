"""Short-run charts: several part numbers sharing one individuals chart.

Two charts, each an individuals/moving-range pair (series ``x`` and ``mr``):

* **DNOM** (deviation from nominal; Wheeler, *Short Run SPC*, 1991, calls it a
  difference chart): the statistic is d_i = x_i − nominal(part_i), charted as an
  I-MR pair. This assumes every part has the same process σ; only the level
  differs by part. Centre of the ``x`` chart: the mean Phase I deviation by
  default (``center="mean"``), or 0 with ``center="nominal"`` (the process is
  judged against the nominals themselves). σ̂ = MR̄/d2(2), the moving ranges
  taken between consecutive plotted deviations whatever their parts.
* **Z-MR** (standardized individuals; Minitab "Z-MR Chart"): z_i =
  (x_i − μ_part)/σ_part with μ_part the part's Phase I mean (or a given
  nominal) and σ_part from the moving ranges of that part's own consecutive
  observations (``sigma_method="by-parts"``, σ_part = MR̄_part/d2(2)) or one σ
  pooled over all parts' moving ranges (``"constant"``). The ``x`` chart has
  centre 0, σ 1 and limits ±k; the ``mr`` chart plots |z_i − z_{i−1}| between
  consecutive plotted points (across part changes) with centre d2(2), σ d3(2),
  UCL d2(2) + k·d3(2) and LCL max(0, d2(2) − k·d3(2)).

Both follow the chart-module shape: ``estimate_*`` (Phase I → frozen
estimate), ``*_series`` (points + estimate → series) and ``*_chart``
(Phase I then Phase II in one pair of series). The first MR point is NaN
(no previous value) unless ``prev``, the last statistic before these points,
is given; in ``*_chart`` the first Phase II moving range uses the last Phase I
point. Excluded Phase I points are still plotted; a moving range counts in an
estimate only when both of its points are used.

Part ids are any hashable values (str, int). ``nominal`` is a mapping
{part: nominal} or, for integer part ids 0…K−1, a sequence indexed by part id.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from spc.checks import finite_numbers, positive, use_mask
from spc.constants import d2, d3
from spc.errors import SpcInputError
from spc.series import ChartSeries, Estimate

__all__ = [
    "ZMR_METHODS",
    "ShortRunCharts",
    "ZmrEstimate",
    "deviations",
    "dnom_chart",
    "dnom_series",
    "estimate_dnom",
    "estimate_zmr",
    "standardize",
    "zmr_chart",
    "zmr_series",
]

ZMR_METHODS = ("by-parts", "constant")


@dataclass(frozen=True)
class ShortRunCharts:
    """The individuals (``x``) and moving-range (``mr``) series of a short-run chart.

    ``zmr`` holds the frozen per-part means and σ's of a Z-MR chart (None for DNOM).
    Iterating yields ``x`` then ``mr``, so ``x, mr = dnom_chart(...)`` works.
    """

    x: ChartSeries
    mr: ChartSeries
    zmr: ZmrEstimate | None = None

    def __iter__(self) -> Iterator[ChartSeries]:
        yield self.x
        yield self.mr


@dataclass(frozen=True)
class ZmrEstimate:
    """Frozen Phase I parameters of a Z-MR chart: μ and σ per part id.

    ``method`` is ``zmr-by-parts``, ``zmr-constant`` or ``known`` (every σ
    given). ``estimate`` is the :class:`Estimate` the plotted series carry:
    centre 0 and σ 1 (the z scale).
    """

    means: dict = field(default_factory=dict)
    sigmas: dict = field(default_factory=dict)
    method: str = "zmr-by-parts"

    @property
    def estimate(self) -> Estimate:
        """The z-scale estimate (centre 0, σ 1) with this estimate's method."""
        return Estimate(center=0.0, sigma=1.0, method=self.method)


# --------------------------------------------------------------------------- helpers


def _parts(parts, count: int, path: str, data_path: str) -> tuple[list, np.ndarray]:
    """Unique part ids in order of first appearance and each point's index into them."""
    seq = parts.tolist() if isinstance(parts, np.ndarray) else list(parts)
    if len(seq) != count:
        raise SpcInputError(path, f"has {len(seq)} entries but {data_path} has {count}")
    index: dict = {}
    codes = np.empty(count, dtype=np.intp)
    for i, p in enumerate(seq):
        try:
            codes[i] = index.setdefault(p, len(index))
        except TypeError as exc:
            raise SpcInputError(f"{path}[{i}]", f"a part id must be hashable, got {p!r}") from exc
    return list(index), codes


def _first(codes: np.ndarray, k: int) -> int:
    return int(np.flatnonzero(codes == k)[0])


def _lookup(table, part, at: str) -> float | None:
    """The entry for ``part`` in a mapping or an integer-indexed sequence (None if absent)."""
    if table is None:
        return None
    if isinstance(table, Mapping):
        if part not in table:
            return None
        value = table[part]
    else:
        arr = np.asarray(table, dtype=float)
        ok = isinstance(part, (int, np.integer)) and not isinstance(part, bool)
        if not ok or not 0 <= part < arr.size:
            raise SpcInputError(
                at, f"part {part!r} does not index the nominal sequence (length {arr.size})"
            )
        value = arr[part]
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise SpcInputError(f"nominal[{part!r}]", "must be a number") from exc
    if not math.isfinite(v):
        raise SpcInputError(f"nominal[{part!r}]", f"must be a finite number, got {value!r}")
    return v


def _nsigmas(k) -> float:
    return positive(k, "nsigmas")


def _used_mrs(x: np.ndarray, use: np.ndarray) -> np.ndarray:
    """|x_i − x_{i−1}| for adjacent pairs whose two points are both used."""
    return np.abs(np.diff(x))[use[1:] & use[:-1]]


def _pair(stat, est: Estimate, k: float, prev: float | None) -> tuple[ChartSeries, ChartSeries]:
    """The I-MR pair of an already-computed individuals statistic against ``est``."""
    m = stat.size
    s = float(est.sigma)
    center = np.full(m, float(est.center))
    sig = np.full(m, s)
    xs = ChartSeries("x", stat, center, center - k * sig, center + k * sig, sig, np.ones(m), est)
    mr = np.full(m, np.nan)
    mr[1:] = np.abs(np.diff(stat))
    if prev is not None:
        p = float(prev)
        if not math.isfinite(p):
            raise SpcInputError("prev", f"must be a finite number, got {prev!r}")
        mr[0] = abs(stat[0] - p)
    c_mr = np.full(m, d2(2) * s)
    s_mr = np.full(m, d3(2) * s)
    n_mr = np.where(np.isnan(mr), 0.0, 2.0)
    mrs = ChartSeries(
        "mr",
        mr,
        c_mr,
        np.maximum(c_mr - k * s_mr, 0.0),
        c_mr + k * s_mr,
        s_mr,
        n_mr,
        est,
        dispersion=True,
    )
    return xs, mrs


# --------------------------------------------------------------------------- DNOM


def deviations(values, parts, nominal, *, prefix: str = "") -> np.ndarray:
    """d_i = x_i − nominal(part_i); errors name ``{prefix}data[i]`` / ``{prefix}parts[i]``."""
    x = finite_numbers(values, f"{prefix}data")
    uniq, codes = _parts(parts, x.size, f"{prefix}parts", f"{prefix}data")
    if nominal is None:
        raise SpcInputError("nominal", "is required for a deviation-from-nominal chart")
    noms = np.empty(len(uniq))
    for k, part in enumerate(uniq):
        at = f"{prefix}parts[{_first(codes, k)}]"
        v = _lookup(nominal, part, at)
        if v is None:
            raise SpcInputError(at, f"no nominal is given for part {part!r}")
        noms[k] = v
    return x - noms[codes]


def estimate_dnom(
    values,
    parts,
    nominal,
    *,
    center: str = "mean",
    known_center=None,
    known_sigma=None,
    exclude=None,
) -> Estimate:
    """Phase I estimate for a DNOM chart: centre and σ̂ of the deviations from nominal.

    Centre: ``known_center`` if given, else the mean of the non-excluded
    deviations (``center="mean"``, Wheeler's choice) or 0 (``center="nominal"``).
    σ̂: ``known_sigma`` (method ``known``) or MR̄/d2(2) over adjacent pairs of
    non-excluded points (method ``dnom``). Constant deviations give σ̂ = 0.
    """
    d = deviations(values, parts, nominal)
    use = use_mask(d.size, exclude)
    if known_center is not None:
        try:
            c = float(known_center)
        except (TypeError, ValueError) as exc:
            raise SpcInputError("known.center", "must be a number") from exc
        if not math.isfinite(c):
            raise SpcInputError("known.center", f"must be a finite number, got {known_center!r}")
    elif center == "mean":
        c = float(np.mean(d[use]))
    elif center == "nominal":
        c = 0.0
    else:
        raise SpcInputError("center", f"must be 'mean' or 'nominal', got {center!r}")
    if known_sigma is not None:
        return Estimate(c, positive(known_sigma, "known.sigma"), "known")
    mrs = _used_mrs(d, use)
    if mrs.size == 0:
        raise SpcInputError(
            "data", "needs two consecutive non-excluded values to estimate σ from moving ranges"
        )
    return Estimate(c, float(np.mean(mrs)) / d2(2), "dnom")


def dnom_series(
    values,
    parts,
    nominal,
    estimate: Estimate,
    nsigmas: float = 3.0,
    prev: float | None = None,
) -> ShortRunCharts:
    """DNOM ``x`` and ``mr`` series of the deviations against a given estimate.

    ``x``: centre ``estimate.center``, σ = σ̂, limits ± k·σ̂. ``mr``: centre
    d2(2)·σ̂, σ = d3(2)·σ̂, UCL d2(2)σ̂ + k·d3(2)σ̂, LCL max(0, d2(2)σ̂ − k·d3(2)σ̂).
    ``prev`` is the last deviation before these points (for the first MR).
    """
    k = _nsigmas(nsigmas)
    d = deviations(values, parts, nominal)
    s = float(estimate.sigma)
    if not math.isfinite(s) or s < 0 or not math.isfinite(float(estimate.center)):
        raise SpcInputError("estimate", f"needs a finite centre and σ ≥ 0, got {estimate!r}")
    x, mr = _pair(d, estimate, k, prev)
    return ShortRunCharts(x, mr)


def dnom_chart(
    values,
    parts,
    nominal,
    phase2_values=None,
    phase2_parts=None,
    *,
    center: str = "mean",
    known_center=None,
    known_sigma=None,
    nsigmas: float = 3.0,
    exclude=None,
) -> ShortRunCharts:
    """DNOM chart over Phase I then Phase II observations; centre and σ̂ from Phase I."""
    est = estimate_dnom(
        values,
        parts,
        nominal,
        center=center,
        known_center=known_center,
        known_sigma=known_sigma,
        exclude=exclude,
    )
    d = deviations(values, parts, nominal)
    if phase2_values is not None or phase2_parts is not None:
        if phase2_values is None or phase2_parts is None:
            missing = "phase2.data" if phase2_values is None else "phase2.parts"
            raise SpcInputError(missing, "is required when the other Phase II array is given")
        d = np.concatenate([d, deviations(phase2_values, phase2_parts, nominal, prefix="phase2.")])
    k = _nsigmas(nsigmas)
    x, mr = _pair(d, est, k, None)
    return ShortRunCharts(x, mr)


# --------------------------------------------------------------------------- Z-MR


def estimate_zmr(
    values,
    parts,
    *,
    sigma_method: str = "by-parts",
    nominal=None,
    known_sigma=None,
    exclude=None,
) -> ZmrEstimate:
    """Phase I estimate for a Z-MR chart: μ and σ for every part id.

    μ_part: the part's ``nominal`` when one is given (a mapping may cover only
    some parts), else the mean of its non-excluded Phase I observations.

    σ_part (``known_sigma``, a number for all parts or a mapping per part, wins
    where given):

    * ``"by-parts"``: MR̄_part/d2(2), the moving ranges taken between
      consecutive observations of that part (its own subsequence, so two runs
      of the same part are joined), both non-excluded. A part needs two such
      observations.
    * ``"constant"``: one σ̂ = MR̄/d2(2) pooled over every part's within-part
      moving ranges, each moving range weighted equally.

    Minitab's Z-MR offers the same two plus "by runs" (no pooling) and
    "relative to size" (σ from ln x), and a median-MR option; this module does
    not claim to reproduce Minitab's pooling across runs exactly (Minitab may
    take moving ranges only within each run, where "by-parts" here also spans
    the break between two runs of the same part). A σ̂ of 0 (a part's values
    never change) is an error, as z would be infinite.

    The method is ``known`` when every σ comes from ``known_sigma``, else
    ``zmr-by-parts`` or ``zmr-constant``.
    """
    x = finite_numbers(values, "data")
    uniq, codes = _parts(parts, x.size, "parts", "data")
    use = use_mask(x.size, exclude)
    if sigma_method not in ZMR_METHODS:
        raise SpcInputError("sigma_method", f"must be one of {ZMR_METHODS}, got {sigma_method!r}")

    means: dict = {}
    for k, part in enumerate(uniq):
        at = f"parts[{_first(codes, k)}]"
        mu = _lookup(nominal, part, at)
        if mu is None:
            sel = use & (codes == k)
            if not sel.any():
                raise SpcInputError(
                    at, f"part {part!r} has no non-excluded Phase I value to estimate its mean"
                )
            mu = float(np.mean(x[sel]))
        means[part] = mu

    given: dict = {}
    if isinstance(known_sigma, Mapping):
        for part in uniq:
            if part in known_sigma:
                given[part] = positive(known_sigma[part], f"known.sigma[{part!r}]")
    elif known_sigma is not None:
        given = dict.fromkeys(uniq, positive(known_sigma, "known.sigma"))

    # Each part's moving ranges over its own subsequence of observations.
    own_mrs = {part: _used_mrs(x[codes == k], use[codes == k]) for k, part in enumerate(uniq)}
    pooled_sigma = math.nan
    if sigma_method == "constant" and len(given) < len(uniq):
        pooled = np.concatenate([own_mrs[p] for p in uniq if p not in given])
        if pooled.size == 0:
            raise SpcInputError(
                "data", "needs two consecutive non-excluded values of one part to estimate σ"
            )
        pooled_sigma = float(np.mean(pooled)) / d2(2)
        if pooled_sigma == 0:
            raise SpcInputError("data", "σ̂ = 0: no part's values ever change; z is undefined")

    sigmas: dict = {}
    for k, part in enumerate(uniq):
        if part in given:
            sigmas[part] = given[part]
        elif sigma_method == "constant":
            sigmas[part] = pooled_sigma
        else:
            at = f"parts[{_first(codes, k)}]"
            mrs = own_mrs[part]
            if mrs.size == 0:
                raise SpcInputError(
                    at,
                    f"part {part!r} needs two consecutive non-excluded Phase I values for σ̂ "
                    "by parts; use sigma_method='constant' or give known_sigma",
                )
            s = float(np.mean(mrs)) / d2(2)
            if s == 0:
                raise SpcInputError(at, f"part {part!r}: σ̂ = 0 (its values never change)")
            sigmas[part] = s
    method = "known" if len(given) == len(uniq) else f"zmr-{sigma_method}"
    return ZmrEstimate(means=means, sigmas=sigmas, method=method)


def standardize(values, parts, estimate: ZmrEstimate, *, prefix: str = "") -> np.ndarray:
    """z_i = (x_i − μ_part)/σ_part with the frozen per-part μ and σ of ``estimate``."""
    x = finite_numbers(values, f"{prefix}data")
    uniq, codes = _parts(parts, x.size, f"{prefix}parts", f"{prefix}data")
    mu = np.empty(len(uniq))
    sd = np.empty(len(uniq))
    for k, part in enumerate(uniq):
        if part not in estimate.means or part not in estimate.sigmas:
            raise SpcInputError(
                f"{prefix}parts[{_first(codes, k)}]",
                f"part {part!r} has no Phase I estimate (μ and σ)",
            )
        mu[k] = estimate.means[part]
        sd[k] = estimate.sigmas[part]
    return (x - mu[codes]) / sd[codes]


def zmr_series(
    values,
    parts,
    estimate: ZmrEstimate,
    nsigmas: float = 3.0,
    prev: float | None = None,
) -> ShortRunCharts:
    """Z-MR ``x`` (z values: centre 0, σ 1, limits ±k) and ``mr`` series against ``estimate``.

    ``mr``: |z_i − z_{i−1}|, centre d2(2), σ d3(2), UCL d2(2) + k·d3(2),
    LCL max(0, d2(2) − k·d3(2)). ``prev`` is the last z before these points.
    """
    k = _nsigmas(nsigmas)
    z = standardize(values, parts, estimate)
    x, mr = _pair(z, estimate.estimate, k, prev)
    return ShortRunCharts(x, mr, estimate)


def zmr_chart(
    values,
    parts,
    phase2_values=None,
    phase2_parts=None,
    *,
    sigma_method: str = "by-parts",
    nominal=None,
    known_sigma=None,
    nsigmas: float = 3.0,
    exclude=None,
) -> ShortRunCharts:
    """Z-MR chart over Phase I then Phase II observations; μ and σ per part from Phase I."""
    est = estimate_zmr(
        values,
        parts,
        sigma_method=sigma_method,
        nominal=nominal,
        known_sigma=known_sigma,
        exclude=exclude,
    )
    z = standardize(values, parts, est)
    if phase2_values is not None or phase2_parts is not None:
        if phase2_values is None or phase2_parts is None:
            missing = "phase2.data" if phase2_values is None else "phase2.parts"
            raise SpcInputError(missing, "is required when the other Phase II array is given")
        z = np.concatenate([z, standardize(phase2_values, phase2_parts, est, prefix="phase2.")])
    k = _nsigmas(nsigmas)
    x, mr = _pair(z, est.estimate, k, None)
    return ShortRunCharts(x, mr, est)
