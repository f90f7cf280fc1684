"""Streaming engine benchmark: :class:`spc.engine.Engine` against a naive per-object engine.

Each run feeds K characteristics one point each per tick (a full micro-batch
``idx = 0..K-1``). Runs: I-MR with all eight Nelson rules on x and rule 1 on
the moving range; I-MR with rule 1 only on both charts (the engine without
the run-rule bank, to show where the time goes); EWMA; CUSUM; ``mixed``, a
third each of those I-MR, EWMA and CUSUM characteristics (added in blocks
of one kind, as a gateway adds its devices). The naive baseline
(:mod:`benchmarks.naive_engine`) is timed in the same process in
interleaved rounds (engine, naive, engine, naive, …) after both have been
checked to produce the same violation masks; the reported ratio is the
median of the per-round ratios.

``long_runs`` feeds one I-MR characteristic (Nelson rules) N samples in one
call (a backfill, a replayed buffer): figures per call and per sample.

The measurement runs in a child process whose glibc allocator keeps freed
memory (``MALLOC_TOP_PAD_`` 64 MiB, ``MALLOC_TRIM_THRESHOLD_`` and
``MALLOC_MMAP_THRESHOLD_`` 256 MiB) unless ``--no-malloc-tuning``: the engine
frees and reallocates K-sized arrays every tick and, with a fragmented heap
(here the naive baseline's Python objects), the default allocator hands that
memory back to the kernel and page-faults it in again each tick, which at
K = 10 000 costs more than the arithmetic. A gateway sets the same variables
in its environment. The child keeps the tuning away from other benchmarks
that ``python -m benchmarks`` runs in its own process.

No target is asserted: the numbers are reported as measured.

    python -m benchmarks.bench_engine [--sizes 100 1000 10000] [--long 1000 10000]
                                      [--rounds 5] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
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
    "mixed": ("mixed", {}),
}
MIXED = (("imr", {"rules": "nelson"}), ("ewma", {}), ("cusum", {}))
WARMUP_TICKS = 20  # fills the 15-point rule windows before anything is timed


MALLOC_ENV = {
    "MALLOC_TOP_PAD_": str(64 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(256 << 20),
    "MALLOC_MMAP_THRESHOLD_": str(256 << 20),
}


def _charts(chart: str, K: int, kw: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(chart, spec keywords) of each of the K characteristics of a run."""
    if chart != "mixed":
        return [(chart, kw)] * K
    return [MIXED[min(3 * j // K, 2)] for j in range(K)]


def _engine(chart: str, K: int, kw: dict[str, Any]) -> Engine:
    return Engine([Spec(c, center=0.0, sigma=1.0, **k) for c, k in _charts(chart, K, kw)])


def _naive(chart: str, K: int, kw: dict[str, Any]) -> list:
    return [make_naive(c, 0.0, 1.0) for c, _ in _charts(chart, K, kw)]


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
    objs = _naive(chart, K, kw)
    charts = _charts(chart, K, kw)
    idx = np.arange(K)
    x = _data(K, 60, seed=7)
    for row in x:
        pts = eng.process(idx, row)
        got = _naive_tick(objs, row.tolist())
        if not _same_masks(charts, pts.mask, pts.disp_mask, got):
            raise AssertionError(f"engine and naive baseline disagree on {chart} {kw}")


def _same_masks(charts: list, mask: np.ndarray, disp_mask: np.ndarray, got: list) -> bool:
    """The engine's masks equal the naive baseline's, point by point (rule 1 only: N1 alone)."""
    centre = np.array([g[0] if isinstance(g, tuple) else g for g in got], dtype=np.uint32)
    disp = np.array([g[1] if isinstance(g, tuple) else 0 for g in got], dtype=np.uint32)
    rule1 = np.array([k.get("rules") == ["N1"] for _, k in charts])
    centre[rule1] &= np.uint32(1)
    return np.array_equal(mask, centre) and np.array_equal(disp_mask, disp)


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


def bench(name: str, K: int, rounds: int, min_time: float) -> dict[str, Any]:
    """One run: engine vs naive at K characteristics."""
    chart, kw = RUNS[name]
    _check_same(chart, kw, min(K, 200))
    idx = np.arange(K)
    x = _data(K, 64, seed=1)
    eng = _engine(chart, K, kw)
    objs = _naive(chart, K, kw)
    rows = x.tolist()
    for t in range(WARMUP_TICKS):
        eng.process(idx, x[t])
        _naive_tick(objs, rows[t])
    eng_s, naive_s, ratios = [], [], []
    for _ in range(rounds):
        e = _time_engine(eng, idx, x, min_time)
        n = _time_naive(objs, rows, min_time)
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


def _long_data(N: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, N)
    x[N // 3 : N // 3 + 50] += 1.5  # a shift, so rules fire
    return x


def bench_long(N: int, rounds: int, min_time: float) -> dict[str, Any]:
    """One I-MR characteristic (Nelson rules), N samples per call, vs the naive object."""
    spec = Spec("imr", center=0.0, sigma=1.0, rules="nelson")
    x = _long_data(N, seed=5)
    idx = np.zeros(N, dtype=np.intp)
    pts = Engine([spec]).process(idx, x)
    obj = make_naive("imr", 0.0, 1.0)
    got = [obj.update(v) for v in x.tolist()]
    if not _same_masks([("imr", {})] * N, pts.mask, pts.disp_mask, got):
        raise AssertionError(f"engine and naive baseline disagree on a run of {N}")
    eng = Engine([spec])
    obj = make_naive("imr", 0.0, 1.0)
    rows = x.tolist()
    eng_s, naive_s, ratios = [], [], []
    for _ in range(rounds):
        e = _time_engine(eng, idx, x[None, :], min_time)
        n = _time_naive_run(obj, rows, min_time)
        eng_s.append(e)
        naive_s.append(n)
        ratios.append(n / e)
    e_med = statistics.median(eng_s)
    n_med = statistics.median(naive_s)
    return {
        "run": "imr_nelson_long",
        "samples_per_call": N,
        "engine_us_per_call": round(e_med * 1e6, 1),
        "engine_us_per_sample": round(e_med * 1e6 / N, 3),
        "naive_us_per_sample": round(n_med * 1e6 / N, 3),
        "ratio_median": round(statistics.median(ratios), 1),
        "ratio_rounds": [round(r, 1) for r in ratios],
    }


def _time_naive_run(obj: Any, row: list[float], min_time: float) -> float:
    n = 0
    t0 = time.perf_counter()
    while True:
        for v in row:
            obj.update(v)
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_time and n >= 1:
            return elapsed / n


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark and return the results (also printed as JSON by ``python -m``)."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_engine")
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10_000])
    ap.add_argument("--runs", nargs="+", choices=sorted(RUNS), default=list(RUNS))
    ap.add_argument(
        "--long", type=int, nargs="*", default=[1000, 10_000], help="samples per long-run call"
    )
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.3, help="seconds per timed block")
    ap.add_argument("--quick", action="store_true", help="small sizes, 2 rounds (smoke test)")
    ap.add_argument(
        "--no-malloc-tuning", action="store_true", help="leave glibc's allocator at its defaults"
    )
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not args.child and not args.no_malloc_tuning:
        argv = list(sys.argv[1:] if argv is None else argv)
        root = str(Path(__file__).resolve().parents[1])
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.bench_engine", "--child", *argv],
            env={**os.environ, **MALLOC_ENV, "PYTHONPATH": path},
            cwd=root,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode:
            raise RuntimeError(f"benchmark child failed:\n{done.stderr}")
        return json.loads(done.stdout)
    tuned = all(os.environ.get(k) == v for k, v in MALLOC_ENV.items())
    if args.quick:
        args.sizes, args.rounds, args.min_time, args.long = [100, 1000], 2, 0.05, [1000]
    results = [bench(name, K, args.rounds, args.min_time) for name in args.runs for K in args.sizes]
    long_runs = [bench_long(N, args.rounds, args.min_time) for N in args.long]
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
        "malloc_env": MALLOC_ENV if tuned else None,
        "results": results,
        "long_runs": long_runs,
        "memory": memory,
    }


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
