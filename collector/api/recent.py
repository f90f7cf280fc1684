"""The last plotted points of every characteristic, in numpy ring buffers (for the HTTP API).

:class:`RecentPoints` is fed by :attr:`collector.pipeline.Gateway.point_listeners`
with each :class:`~collector.pipeline.JudgedPoints` batch: one vectorised write
per batch, no Python object per point. :meth:`RecentPoints.query` returns
:class:`RecentColumns` in time order, with each point's zone (spc-semantics.md:
``z = (x − CL)/σ``; C: |z| ≤ 1, B: 1 < |z| ≤ 2, A: 2 < |z| ≤ 3, ``out`` beyond,
``""`` for a missing point or an unknown σ; boundaries belong to the inner zone)
and the 5M1E context of the sample that completed it (contract shape).

The rings outlive a restart: :class:`RecentSaver` writes them to a file
(``recent_points.npz`` in the gateway's data directory) every ``recent_save_s``
and when the API closes, and :meth:`RecentPoints.restore` puts a saved file
back, matching characteristics by path (see :meth:`RecentPoints.restore`).
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from collector.pipeline import (
    JudgedPoints,
    batch_ranks,
    contract_context,
    subgroup_width,
    violation_codes,
)

__all__ = [
    "RECENT_SCHEMA",
    "RecentColumns",
    "RecentPoints",
    "RecentSaver",
    "chart_keys",
    "encode_recent",
    "zones",
]

log = logging.getLogger(__name__)

RECENT_SCHEMA = "shopspc.recent-points/1"
"""``schema`` of a saved rings file (its ``meta`` member)."""

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
_INT_COLS = ("time_us", "mask", "disp_mask", "limits")
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

    def take(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Copies of the rings of characteristics ``start`` … ``stop - 1`` (on the event loop)."""
        rows = slice(start, stop)
        part = {name: getattr(self, name)[rows].copy() for name in (*_INT_COLS, "count")}
        part.update((name, self._f[name][rows].copy()) for name in _FLOAT_COLS)
        part["serial"] = self.serial[rows].copy()
        part["context"] = self.context[rows].copy()  # references: the snapshots are not copied
        return part

    def restore(self, data: bytes, keys: Sequence[tuple[str, str]]) -> int:
        """Put rings saved by :class:`RecentSaver` back into these (empty) ones.

        ``keys`` gives each characteristic's (path, chart) as the saver's did
        (:func:`chart_keys`): a characteristic gets the points of the saved one
        with the same key, wherever it stood in the list, the newest
        ``capacity`` of them; one whose chart or subgroup size changed starts
        empty, since its old points plot another statistic. Returns how many
        characteristics got points. A damaged or foreign file raises
        ``ValueError`` and changes nothing.
        """
        if len(keys) != self.n_chars:
            raise ValueError(f"{len(keys)} keys for {self.n_chars} characteristics")
        if self.count.any():
            raise ValueError("the rings already hold points")
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            meta = orjson.loads(z["meta"].tobytes())
            if not isinstance(meta, dict) or meta.get("schema") != RECENT_SCHEMA:
                raise ValueError(f"not a {RECENT_SCHEMA} file")
            cols = {name: z[name] for name in (*_INT_COLS, *_FLOAT_COLS, "count", "context")}
            serial_list = orjson.loads(z["serial"].tobytes())
        saved = [(str(p), str(c)) for p, c in meta["keys"]]
        cap, n = int(meta["capacity"]), len(saved)
        ids, contexts = list(meta["limits_ids"]), list(meta["contexts"])
        if cols["count"].shape != (n,) or len(serial_list) != n * cap:
            raise ValueError(f"counts or serials do not fit {n} characteristics of {cap} points")
        for name, col in cols.items():
            if name != "count" and col.shape != (n, cap):
                raise ValueError(f"{name}: shape {col.shape}, not {(n, cap)}")
        serial = np.empty(n * cap, dtype=object)
        serial[:] = serial_list
        serial = serial.reshape(n, cap)
        ctx_table = np.empty(len(contexts) + 1, dtype=object)  # code -1: no context
        ctx_table[: len(contexts)] = contexts
        where = {k: j for j, k in enumerate(saved)}
        todo = []
        for i, key in enumerate(keys):
            j = where.get(tuple(key))
            total = int(cols["count"][j]) if j is not None else 0
            have = min(total, cap, self.capacity)
            if have <= 0:
                continue
            src = np.arange(total - have, total) % cap
            lim, ctx = cols["limits"][j, src], cols["context"][j, src]
            if (
                lim.min() < 0
                or lim.max() >= len(ids)
                or ctx.min() < -1
                or ctx.max() >= len(contexts)
            ):
                raise ValueError(f"{key[0]}: limits or context codes out of range")
            todo.append((i, j, src, have, lim, ctx))
        remap = self._limit_codes(ids) if ids else np.zeros(0, dtype=np.int32)
        for i, j, src, have, lim, ctx in todo:
            self.time_us[i, :have] = cols["time_us"][j, src]
            for name in _FLOAT_COLS:
                self._f[name][i, :have] = cols[name][j, src]
            self.mask[i, :have] = cols["mask"][j, src]
            self.disp_mask[i, :have] = cols["disp_mask"][j, src]
            self.limits[i, :have] = remap[lim]
            self.serial[i, :have] = serial[j, src]
            self.context[i, :have] = ctx_table[ctx]
            self.count[i] = have
        return len(todo)

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


def chart_keys(chars: Sequence[Any]) -> list[tuple[str, str]]:
    """(path, ``chart/subgroup size``) of each characteristic: what a saved ring is matched by."""
    return [(ch.path, f"{ch.chart}/{subgroup_width(ch)}") for ch in chars]


def encode_recent(
    parts: Sequence[dict[str, np.ndarray]],
    limits_ids: Sequence[str],
    keys: Sequence[tuple[str, str]],
    capacity: int,
) -> bytes:
    """The file :meth:`RecentPoints.restore` reads, from :meth:`RecentPoints.take` parts in
    order (run it off the event loop: 20–30 ms for 100 characteristics of 1 000 points).

    An uncompressed ``.npz`` (no pickles): one array per column, the context
    snapshots as a table (a batch's points share one) with a code per slot, the
    serials and ``meta`` (schema, capacity, keys, limits ids, contexts) as JSON.
    """
    cols = {
        name: np.concatenate([p[name] for p in parts])
        for name in (*_INT_COLS, *_FLOAT_COLS, "count")
    }
    # one table entry per distinct snapshot object, found by identity in C (the parts hold
    # the references, so the ids are unique): no Python step per slot under the GIL
    ctx = np.concatenate([p["context"] for p in parts])
    flat = ctx.ravel()
    ident = np.fromiter(map(id, flat.tolist()), dtype=np.int64, count=flat.shape[0])
    _, first, codes = np.unique(ident, return_index=True, return_inverse=True)
    table = flat[first].tolist()
    codes = codes.astype(np.int32).reshape(ctx.shape)
    if None in table:  # no context: code -1, not a table entry
        k = table.index(None)
        table.pop(k)
        codes[codes == k] = -1
        codes[codes > k] -= 1
    serial = orjson.dumps(np.concatenate([p["serial"] for p in parts]).ravel().tolist())
    meta = {
        "schema": RECENT_SCHEMA,
        "capacity": capacity,
        "keys": [list(k) for k in keys],
        "limits_ids": list(limits_ids),
        "contexts": table,
    }
    buf = io.BytesIO()
    np.savez(
        buf,
        **cols,
        context=codes,
        serial=np.frombuffer(serial, dtype=np.uint8),
        meta=np.frombuffer(orjson.dumps(meta, default=str), dtype=np.uint8),
    )
    return buf.getvalue()


class RecentSaver:
    """Keeps a :class:`RecentPoints` in ``path`` across restarts.

    :meth:`run` saves every ``interval_s``: the rings are copied on the event
    loop ``chunk`` characteristics at a time, with a turn of the loop between
    chunks (copying 100 characteristics of 1 000 points in one go held it for
    2–7 ms, a chunk of 16 for about 0.4 ms), then encoded and written in a
    worker thread. Each
    characteristic's points are copied whole, so each is consistent.
    :meth:`save` does it all at once (at shutdown); :meth:`load` restores.
    """

    def __init__(self, recent: RecentPoints, path: Path, chars: Sequence[Any], chunk: int = 16):
        self.recent = recent
        self.path = Path(path)
        self.keys = chart_keys(chars)
        self.chunk = max(1, chunk)
        self.saves = 0

    def load(self) -> int:
        """Restore from ``path`` if it exists; a bad file is logged and left for the next save."""
        if not self.path.exists():
            return 0
        try:
            got = self.recent.restore(self.path.read_bytes(), self.keys)
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
            log.warning("chart history in %s not restored (%s): charts start empty", self.path, exc)
            return 0
        log.info("chart history of %d characteristics restored from %s", got, self.path)
        return got

    def _encode(self, parts: list[dict[str, np.ndarray]], ids: list[str]) -> bytes:
        return encode_recent(parts, ids, self.keys, self.recent.capacity)

    def _write(self, data: bytes) -> None:
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, self.path)
        self.saves += 1

    def save(self) -> None:
        """Copy, encode and write now, in the caller's thread."""
        n = self.recent.n_chars
        parts = [self.recent.take(0, n)]
        self._write(self._encode(parts, list(self.recent.limits_ids)))

    async def save_async(self) -> None:
        """Copy in chunks on the loop, encode and write in a worker thread."""
        n, parts = self.recent.n_chars, []
        for start in range(0, n, self.chunk):
            if start:
                await asyncio.sleep(0)
            parts.append(self.recent.take(start, min(n, start + self.chunk)))
        ids = list(self.recent.limits_ids)  # append-only: covers every part's codes
        data = await asyncio.to_thread(self._encode, parts, ids)
        await asyncio.to_thread(self._write, data)

    async def run(self, interval_s: float) -> None:
        """Save every ``interval_s`` until cancelled; a failed save is logged and retried."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.save_async()
            except (OSError, ValueError) as exc:
                log.error("could not save the chart history to %s: %s", self.path, exc)
