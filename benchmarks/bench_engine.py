"""Streaming engine benchmark: :class:`spc.engine.Engine` against a naive per-object engine.

Each run feeds K characteristics one point each per tick (a full micro-batch
``idx = 0..K-1``). Runs: I-MR with all eight Nelson rules on x and rule 1 on
the moving range; I-MR with rule 1 only on both charts (the engine without
the run-rule bank, to show where the time goes); EWMA; CUSUM. The naive
baseline (:mod:`benchmarks.naive_engine`) is timed in the same process in
interleaved rounds (engine, naive, engine, naive, …) after both have been
checked to produce the same violation masks; the reported ratio is the
median of the per-round ratios. Timed blocks run with the cyclic garbage
collector off, as ``timeit`` does: with 10 000 naive objects alive a
collection triggered by the engine's few per-call allocations traverses
the naive heap and would be charged to the engine (``--gc`` keeps it on).

The process's glibc allocator is told to keep freed memory (``mallopt``:
M_TOP_PAD 64 MiB, M_TRIM_THRESHOLD and M_MMAP_THRESHOLD 256 MiB) unless
``--no-malloc-tuning``: the engine frees and reallocates K-sized arrays every
tick and, with a fragmented heap (the naive baseline's Python objects), the
default allocator returns that memory to the kernel and page-faults it back
each tick, which at K = 10 000 can cost more than the arithmetic. A gateway
sets the same with ``MALLOC_TOP_PAD_`` / ``MALLOC_TRIM_THRESHOLD_`` /
``MALLOC_MMAP_THRESHOLD_`` in its environment.

No target is asserted: the numbers are reported as measured.

    python -m benchmarks.bench_engine [--sizes 100 1000 10000] [--rounds 5] [--quick]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import platform
import statistics
import time
import tracemalloc
from typing import Any

import numpy as np

from benchmarks.naive_engine import make_naive
from spc.engine import Engine, Spec

__all__ = ["main"]

RUNS = {
    "imr_nelson": ("imr", {"rules": "nelson"}),
    "imr_rule1": ("imr", {"rules": ["N1"]}),
    "ewma": ("ewma", {}),
    "cusum": ("cusum", {}),
}
WARMUP_TICKS = 20  # fills the 15-point rule windows before anything is timed


_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc malloc.h


def _tune_malloc() -> bool:
    """Ask glibc to keep freed memory (see the module docstring); False where unavailable."""
    name = ctypes.util.find_library("c")
    if not name or platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL(name)
        return all(
            libc.mallopt(param, value) == 1
            for param, value in (
                (_M_TOP_PAD, 64 << 20),
                (_M_TRIM_THRESHOLD, 256 << 20),
                (_M_MMAP_THRESHOLD, 256 << 20),
            )
        )
    except (OSError, AttributeError):
        return False


def _engine(chart: str, K: int, kw: dict[str, Any]) -> Engine:
    return Engine([Spec(chart, center=0.0, sigma=1.0, **kw)] * K)


def _data(K: int, ticks: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (ticks, K))
    x[:, ::7] += 0.8  # some characteristics drift, so rules and signals fire
    return x


def _naive_tick(objs: list, row: list[float]) -> list:
    return [o.update(v) for o, v in zip(objs, row, strict=True)]


def _check_same(chart: str, kw: dict[str, Any], K: int) -> None:
    """Engine and naive baseline agree on every mask over 60 ticks (else the ratio means nothing)."""
    eng = _engine(chart, K, kw)
    objs = [make_naive(chart, 0.0, 1.0) for _ in range(K)]
    idx = np.arange(K)
    x = _data(K, 60, seed=7)
    rule1_only = kw.get("rules") == ["N1"]
    for row in x:
        pts = eng.process(idx, row)
        got = _naive_tick(objs, row.tolist())
        if chart == "imr":
            centre = np.array([g[0] for g in got], dtype=np.uint32)
            disp = np.array([g[1] for g in got], dtype=np.uint32)
            if rule1_only:
                centre &= np.uint32(1)
            ok = np.array_equal(pts.mask, centre) and np.array_equal(pts.disp_mask, disp)
        else:
            ok = np.array_equal(pts.mask, np.array(got, dtype=np.uint32))
        if not ok:
            raise AssertionError(f"engine and naive baseline disagree on {chart} {kw}")


def _time_engine(eng: Engine, idx: np.ndarray, x: np.ndarray, min_time: float) -> float:
    """Seconds per tick, over at least ``min_time`` seconds."""
    ticks = x.shape[0]
    n = 0
    t0 = time.perf_counter()
    while True:
        eng.process(idx, x[n % ticks])
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_time and n >= 3:
            return elapsed / n


def _time_naive(objs: list, rows: list[list[float]], min_time: float) -> float:
    n = 0
    t0 = time.perf_counter()
    while True:
        _naive_tick(objs, rows[n % len(rows)])
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_time and n >= 1:
            return elapsed / n


def _naive_bytes(chart: str, K: int) -> float:
    """Python heap bytes per naive characteristic after its windows have filled."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    objs = [make_naive(chart, 0.0, 1.0) for _ in range(K)]
    for row in _data(K, WARMUP_TICKS, seed=3).tolist():
        _naive_tick(objs, row)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del objs
    return (after - before) / K


def bench(name: str, K: int, rounds: int, min_time: float, keep_gc: bool = False) -> dict[str, Any]:
    """One run: engine vs naive at K characteristics."""
    chart, kw = RUNS[name]
    _check_same(chart, kw, min(K, 200))
    idx = np.arange(K)
    x = _data(K, 64, seed=1)
    eng = _engine(chart, K, kw)
    objs = [make_naive(chart, 0.0, 1.0) for _ in range(K)]
    rows = x.tolist()
    for t in range(WARMUP_TICKS):
        eng.process(idx, x[t])
        _naive_tick(objs, rows[t])
    eng_s, naive_s, ratios = [], [], []
    for _ in range(rounds):
        gc_was = gc.isenabled()
        if not keep_gc:
            gc.disable()
        try:
            e = _time_engine(eng, idx, x, min_time)
            n = _time_naive(objs, rows, min_time)
        finally:
            if gc_was:
                gc.enable()
        eng_s.append(e)
        naive_s.append(n)
        ratios.append(n / e)
    e_med = statistics.median(eng_s)
    n_med = statistics.median(naive_s)
    return {
        "run": name,
        "chart": chart,
        "K": K,
        "engine_us_per_tick": round(e_med * 1e6, 2),
        "engine_points_per_s": round(K / e_med),
        "naive_us_per_tick": round(n_med * 1e6, 2),
        "naive_points_per_s": round(K / n_med),
        "ratio_median": round(statistics.median(ratios), 1),
        "ratio_rounds": [round(r, 1) for r in ratios],
        "engine_bytes_per_char": round(eng.bytes_per_characteristic, 1),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark and return the results (also printed as JSON by ``python -m``)."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_engine")
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10_000])
    ap.add_argument("--runs", nargs="+", choices=sorted(RUNS), default=list(RUNS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.3, help="seconds per timed block")
    ap.add_argument("--quick", action="store_true", help="small sizes, 2 rounds (smoke test)")
    ap.add_argument("--gc", action="store_true", help="keep the garbage collector on while timing")
    ap.add_argument(
        "--no-malloc-tuning", action="store_true", help="leave glibc's allocator at its defaults"
    )
    args = ap.parse_args(argv)
    tuned = False if args.no_malloc_tuning else _tune_malloc()
    if args.quick:
        args.sizes, args.rounds, args.min_time = [100, 1000], 2, 0.05
    results = [
        bench(name, K, args.rounds, args.min_time, args.gc)
        for name in args.runs
        for K in args.sizes
    ]
    memory = {
        chart: {
            "engine_bytes_per_char": round(_engine(chart, 1000, kw).bytes_per_characteristic, 1),
            "naive_bytes_per_char": round(_naive_bytes(chart, 1000), 1),
        }
        for chart, kw in (RUNS["imr_nelson"], RUNS["ewma"], RUNS["cusum"])
    }
    return {
        "benchmark": "engine",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
        "rounds": args.rounds,
        "gc_during_timing": args.gc,
        "malloc_tuned": tuned,
        "results": results,
        "memory": memory,
    }


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
