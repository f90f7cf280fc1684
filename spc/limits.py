"""Frozen limits records: the Phase I result that Phase II points are judged against.

A record carries its provenance (method, data window, excluded points with
their reasons, who and when) and an id derived from its content, so the same
estimate always has the same id and an alarm can name the record it was
judged against. Time and user come in as arguments: ``spc`` has no clock.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from spc.series import Estimate

__all__ = ["Exclusion", "LimitsRecord"]


@dataclass(frozen=True)
class Exclusion:
    """A Phase I point left out of the estimate, and why."""

    index: int
    reason: str


@dataclass(frozen=True)
class LimitsRecord:
    """An immutable, serialisable Phase I estimate with provenance.

    ``chart`` is the chart type (``imr``, ``xbar-r`` …), ``center``/``sigma``
    the process centre and σ̂ (for attribute charts the centre is p̄, c̄ or ū
    and ``sigma`` is NaN, or σ_z for Laney charts), ``method`` the σ̂ method or
    ``known``. ``window`` describes the Phase I data (first/last sample time or
    index, as the caller chooses). ``params`` holds chart parameters that
    shape the limits (nsigmas, EWMA λ and L, CUSUM k and h …).
    """

    chart: str
    center: float
    sigma: float
    method: str
    n_points: int
    window: tuple[str, str] = ("", "")
    exclusions: tuple[Exclusion, ...] = ()
    params: tuple[tuple[str, float], ...] = ()
    created_by: str = ""
    created_at: str = ""
    reason: str = ""
    id: str = field(default="")

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", self.content_id())

    @property
    def estimate(self) -> Estimate:
        """The estimate this record freezes, as chart functions take it."""
        return Estimate(center=self.center, sigma=self.sigma, method=self.method)

    def content_id(self) -> str:
        """``L-`` and 16 hex digits of SHA-256 over what the limits depend on (not who or when)."""
        body = {
            "chart": self.chart,
            "center": _num(self.center),
            "sigma": _num(self.sigma),
            "method": self.method,
            "n_points": self.n_points,
            "window": list(self.window),
            "exclusions": [[e.index, e.reason] for e in self.exclusions],
            "params": [[k, _num(v)] for k, v in self.params],
        }
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        return "L-" + digest[:16]

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types; NaN becomes None."""
        d = asdict(self)
        d["center"] = _num(self.center)
        d["sigma"] = _num(self.sigma)
        d["window"] = list(self.window)
        d["exclusions"] = [{"index": e.index, "reason": e.reason} for e in self.exclusions]
        d["params"] = {k: _num(v) for k, v in self.params}
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LimitsRecord:
        """Inverse of :meth:`to_json`; the stored id must match the content."""
        rec = cls(
            chart=d["chart"],
            center=math.nan if d["center"] is None else float(d["center"]),
            sigma=math.nan if d["sigma"] is None else float(d["sigma"]),
            method=d["method"],
            n_points=int(d["n_points"]),
            window=tuple(d.get("window", ("", ""))),
            exclusions=tuple(
                Exclusion(int(e["index"]), e["reason"]) for e in d.get("exclusions", ())
            ),
            params=tuple(sorted((k, float(v)) for k, v in d.get("params", {}).items())),
            created_by=d.get("created_by", ""),
            created_at=d.get("created_at", ""),
            reason=d.get("reason", ""),
        )
        if d.get("id") and d["id"] != rec.id:
            raise ValueError(f"limits record id {d['id']!r} does not match its content ({rec.id})")
        return rec

    def with_provenance(self, created_by: str, created_at: str, reason: str = "") -> LimitsRecord:
        """The same limits with who, when and why filled in (the id is unchanged)."""
        return replace(self, created_by=created_by, created_at=created_at, reason=reason)


def _num(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
