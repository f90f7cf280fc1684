"""The last plotted points of every characteristic, in numpy ring buffers (for the HTTP API).

:class:`RecentPoints` is fed by :attr:`collector.pipeline.Gateway.point_listeners`
with each :class:`~collector.pipeline.JudgedPoints` batch: one vectorised write
per batch, no Python object per point. :meth:`RecentPoints.query` returns
:class:`RecentColumns` in time order, with each point's zone (spc-semantics.md:
``z = (x − CL)/σ``; C: |z| ≤ 1, B: 1 < |z| ≤ 2, A: 2 < |z| ≤ 3, ``out`` beyond,
``""`` for a missing point or an unknown σ; boundaries belong to the inner zone)
and the 5M1E context of the sample that completed it (contract shape).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from collector.pipeline import JudgedPoints, batch_ranks, contract_context, violation_codes

__all__ = ["RecentColumns", "RecentPoints", "zones"]

_FLOAT_COLS = (
    "statistic",
    "center",
    "lcl",
    "ucl",
    "sigma",
    "disp_statistic",
    "disp_center",
    "disp_lcl",
    "disp_ucl",
)
_ZONE_NAMES = np.array(["C", "B", "A", "out", ""], dtype=object)


def zones(statistic: np.ndarray, center: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Zone of each point (``C``, ``B``, ``A``, ``out``; ``""`` when z is not defined)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.abs((statistic - center) / sigma)
    k = np.searchsorted(np.array([1.0, 2.0, 3.0]), z, side="left")
    k = np.where(np.isfinite(z), k, 4)
    return _ZONE_NAMES[k]


@dataclass(frozen=True)
class RecentColumns:
    """Recent points of one characteristic, oldest first (columns of equal length).

    ``mask``/``disp_mask`` are the violation bit masks (``spc.rules.BITS``),
    ``violations`` their rule codes, ``z`` the standardised centre-chart value
    and ``zone`` its zone.
    """

    time_us: np.ndarray
    statistic: np.ndarray
    center: np.ndarray
    lcl: np.ndarray
    ucl: np.ndarray
    sigma: np.ndarray
    disp_statistic: np.ndarray
    disp_center: np.ndarray
    disp_lcl: np.ndarray
    disp_ucl: np.ndarray
    mask: np.ndarray
    disp_mask: np.ndarray
    limits_id: list[str]
    serial: list[str | None]
    z: np.ndarray
    zone: list[str]
    violations: list[str]
    context: list[dict[str, Any] | None]

    def __len__(self) -> int:
        return int(self.time_us.shape[0])


class RecentPoints:
    """Per-characteristic ring buffers of the last ``capacity`` plotted points.

    Call :meth:`on_points` with every judged batch (register it in
    ``gateway.point_listeners``); it runs in the event loop, as does :meth:`query`.
    """

    def __init__(self, n_chars: int, capacity: int = 1000) -> None:
        if capacity < 1:
            raise ValueError(f"capacity: must be at least 1, not {capacity}")
        self.capacity = capacity
        self.n_chars = n_chars
        shape = (n_chars, capacity)
        self.time_us = np.zeros(shape, dtype=np.int64)
        self._f = {name: np.full(shape, np.nan) for name in _FLOAT_COLS}
        self.mask = np.zeros(shape, dtype=np.uint64)
        self.disp_mask = np.zeros(shape, dtype=np.uint64)
        self.limits = np.zeros(shape, dtype=np.int32)
        self.serial = np.full(shape, None, dtype=object)
        self.context = np.full(shape, None, dtype=object)  # references, shared within a batch
        self.count = np.zeros(n_chars, dtype=np.int64)  # points written since start
        self.limits_ids: list[str] = []
        self._limits_index: dict[str, int] = {}

    def _limit_codes(self, ids: list[str]) -> np.ndarray:
        # hashing in C (dict.fromkeys, map): a batch usually holds one or two record ids
        for lid in dict.fromkeys(ids):
            if lid not in self._limits_index:
                self._limits_index[lid] = len(self.limits_ids)
                self.limits_ids.append(lid)
        if ids and ids.count(ids[0]) == len(ids):
            return np.full(len(ids), self._limits_index[ids[0]], dtype=np.int32)
        return np.fromiter(map(self._limits_index.__getitem__, ids), dtype=np.int32, count=len(ids))

    def on_points(self, judged: JudgedPoints) -> None:
        """Write one batch of judged points into the rings (vectorised)."""
        n = judged.n
        if n == 0:
            return
        pts = judged.points
        chars = np.asarray(pts.char[:n], dtype=np.intp)
        # rank of each row among its characteristic's rows in this batch (stable)
        rank, per_char = batch_ranks(chars, self.n_chars)
        # rows overwritten later in the same batch are left out (fancy assignment order)
        keep = rank >= per_char[chars] - self.capacity
        rows = np.flatnonzero(keep) if not keep.all() else slice(None)
        c = chars[rows]
        slot = (self.count[c] + rank[rows]) % self.capacity
        self.time_us[c, slot] = np.asarray(judged.time_us[:n], dtype=np.int64)[rows]
        for name in _FLOAT_COLS:
            self._f[name][c, slot] = np.asarray(getattr(pts, name)[:n], dtype=np.float64)[rows]
        self.mask[c, slot] = np.asarray(pts.mask[:n]).astype(np.uint64)[rows]
        self.disp_mask[c, slot] = np.asarray(pts.disp_mask[:n]).astype(np.uint64)[rows]
        self.limits[c, slot] = self._limit_codes(judged.limits_id)[rows]
        if judged.serial.count(None) == len(judged.serial):
            self.serial[c, slot] = None
        else:
            self.serial[c, slot] = np.array(judged.serial, dtype=object)[rows]
        if judged.context:
            ctx = np.empty(n, dtype=object)
            ctx[:] = judged.context[:n]
            self.context[c, slot] = ctx[rows]
        else:
            self.context[c, slot] = None
        self.count += per_char

    def query(self, char: int, since_us: int | None = None, limit: int = 1000) -> RecentColumns:
        """The newest ``limit`` points of characteristic ``char`` (at or after ``since_us``), oldest first."""
        if not 0 <= char < self.n_chars:
            raise IndexError(f"no characteristic with index {char}")
        total = int(self.count[char])
        have = min(total, self.capacity)
        idx = (np.arange(total - have, total) % self.capacity).astype(np.intp)
        t = self.time_us[char, idx]
        if since_us is not None:
            sel = t >= since_us
            idx, t = idx[sel], t[sel]
        if limit >= 0 and idx.shape[0] > limit:
            idx, t = idx[idx.shape[0] - limit :], t[t.shape[0] - limit :]
        cols = {name: self._f[name][char, idx] for name in _FLOAT_COLS}
        mask = self.mask[char, idx]
        disp = self.disp_mask[char, idx]
        with np.errstate(invalid="ignore", divide="ignore"):
            z = (cols["statistic"] - cols["center"]) / cols["sigma"]
        flagged = np.flatnonzero((mask | disp) != 0).tolist()
        violations = [""] * idx.shape[0]
        for j in flagged:
            codes = violation_codes(int(mask[j])) + violation_codes(int(disp[j]))
            violations[j] = ",".join(dict.fromkeys(codes))
        ids = np.array(self.limits_ids or [""], dtype=object)
        return RecentColumns(
            time_us=t,
            **cols,
            mask=mask,
            disp_mask=disp,
            limits_id=ids[self.limits[char, idx]].tolist() if self.limits_ids else [""] * len(t),
            serial=self.serial[char, idx].tolist(),
            z=z,
            zone=zones(cols["statistic"], cols["center"], cols["sigma"]).tolist(),
            violations=violations,
            context=[
                None if ctx is None else contract_context(ctx, int(ts))
                for ctx, ts in zip(self.context[char, idx].tolist(), t.tolist(), strict=True)
            ],
        )
