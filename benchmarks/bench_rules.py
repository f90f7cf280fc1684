"""Run-rule benchmark: :mod:`spc.rules` against the naive engine of :mod:`benchmarks.naive_rules`.

(a) Batch: all eight Nelson rules over 10^7 points with :func:`spc.rules.evaluate`,
    against the naive per-point loop on a 2·10^5-point slice of the same data
    (per-point rates are compared). Two data sets (in-control noise, ~2 % of
    points flagged; drifting, ~12 % flagged) and two input forms: per-point
    arrays for centre, σ and limits (what ``analyze`` passes) and scalars.
(b) Streaming: :class:`spc.rules.RuleBank` with K = 100, 1 000, 10 000
    characteristics, one point each per tick (``idx = 0..K-1``, which the bank
    takes as a slice; also ``slice(None)``, a random permutation of the indices,
    which gathers and scatters, and ``slice(None)`` with per-characteristic
    arrays for centre, σ and limits, as the engine calls it), against K
    :class:`~benchmarks.naive_rules.NaiveRules` objects; a ``mixed`` run gives
    the characteristics three different configs.

Every pairing is first checked to produce identical masks. Rounds alternate
(vectorised, naive, vectorised, naive, …) and the reported ratio is the
median of the per-round ratios. Timed blocks run with the cyclic garbage
collector off, as ``timeit`` does. glibc's allocator is told to keep freed
memory (the same ``mallopt`` settings as ``bench_engine``; ``--no-malloc-tuning``
leaves it alone) so that big temporaries are not page-faulted back each call.
No target is asserted: the numbers are reported as measured.

    python -m benchmarks.bench_rules [--points 10000000] [--naive-points 200000]
                                     [--sizes 100 1000 10000] [--rounds 5] [--quick]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import os
import platform
import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.naive_rules import NaiveRules, naive_evaluate
from spc import rules

__all__ = ["main"]

NELSON = rules.resolve_rules("nelson")
MIXED = [
    NELSON,
    rules.resolve_rules("we"),
    rules.resolve_rules("nelson", {"N2": {"run": 7}, "N6": {"level": 1.5}, "N7": {"run": 12}}),
]
WARMUP_TICKS = 20  # fills the 15-point windows before anything is timed

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


def _machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
        "cpu": model,
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "threads_used": 1,
    }


def _series(n: int, seed: int, drift: bool) -> np.ndarray:
    """Normal noise (in control: ~2 % of points flagged); with ``drift``, slow shifts of
    the mean (~12 % flagged, long runs), a harder case for the output stage."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, n)
    if drift:
        x += np.repeat(rng.normal(0.0, 0.6, n // 500 + 1), 500)[:n]
    return x


def _timed(fn: Callable[[], Any], min_time: float) -> float:
    """Seconds per call of ``fn``, over at least ``min_time`` seconds (gc off)."""
    gc_was = gc.isenabled()
    gc.disable()
    try:
        n = 0
        t0 = time.perf_counter()
        while True:
            fn()
            n += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= min_time and n >= 2:
                return elapsed / n
    finally:
        if gc_was:
            gc.enable()


def bench_batch(points: int, naive_points: int, rounds: int, min_time: float) -> list[dict]:
    """(a): evaluate() over ``points`` vs the naive loop over ``naive_points``."""
    arrays = (np.zeros(points), np.ones(points), np.full(points, -3.0), np.full(points, 3.0))
    forms = {"arrays": arrays, "scalars": (0.0, 1.0, -3.0, 3.0)}
    sl = slice(0, naive_points)
    results = []
    for data in ("in_control", "drifting"):
        x = _series(points, seed=1, drift=data == "drifting")
        naive_args = [x[sl].tolist()] + [v[sl].tolist() for v in arrays]
        for form, limits in forms.items():
            mask = rules.evaluate(x, *limits, NELSON)
            if naive_evaluate(*naive_args, NELSON) != mask[sl].tolist():
                raise AssertionError(f"evaluate and the naive loop disagree ({data}, {form})")
            vec_s, naive_s, ratios = [], [], []
            for _ in range(rounds):
                v = _timed(lambda x=x, limits=limits: rules.evaluate(x, *limits, NELSON), min_time)
                nv = _timed(lambda args=naive_args: naive_evaluate(*args, NELSON), min_time)
                vec_s.append(v / points)
                naive_s.append(nv / naive_points)
                ratios.append((nv / naive_points) / (v / points))
            v_med, n_med = statistics.median(vec_s), statistics.median(naive_s)
            results.append(
                {
                    "data": data,
                    "form": form,
                    "rules": "nelson (N1-N8)",
                    "points": points,
                    "flagged_fraction": round(float(np.count_nonzero(mask)) / points, 4),
                    "naive_points": naive_points,
                    "vectorised_seconds": round(v_med * points, 4),
                    "vectorised_points_per_s": round(1 / v_med),
                    "naive_points_per_s": round(1 / n_med),
                    "ratio_median": round(statistics.median(ratios), 1),
                    "ratio_rounds": [round(r, 1) for r in ratios],
                }
            )
    return results


def _tick_data(K: int, ticks: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (ticks, K))
    x[:, ::7] += 0.8  # some characteristics drift, so rules fire
    return x


def _naive_tick(objs: list[NaiveRules], row: list[float]) -> list[int]:
    return [o.update(v, 0.0, 1.0, -3.0, 3.0) for o, v in zip(objs, row, strict=True)]


def _configs(run: str, K: int) -> list[rules.RuleConfig]:
    return [NELSON] * K if run == "nelson" else [MIXED[i % 3] for i in range(K)]


def bench_stream(run: str, K: int, rounds: int, min_time: float) -> dict[str, Any]:
    """(b): one RuleBank step per tick for K characteristics vs K naive objects.

    Four call forms: ``idx = 0..K-1`` (an ascending run, which the bank takes as a
    slice), ``slice(None)``, a fixed random permutation of 0..K-1 (the gathering
    path), and ``slice(None)`` with per-characteristic arrays for centre, σ and
    limits (what the engine passes).
    """
    cfgs = _configs(run, K)
    # same masks first (on up to 200 characteristics, 60 ticks), also through a permutation
    k = min(K, 200)
    check = _tick_data(k, 60, seed=7)
    bank = rules.RuleBank(cfgs[:k])
    permuted = rules.RuleBank(cfgs[:k])
    perm_k = np.random.default_rng(11).permutation(k)
    objs = [NaiveRules(c) for c in cfgs[:k]]
    for row in check:
        got = bank.step(np.arange(k), row, 0.0, 1.0, -3.0, 3.0)
        want = _naive_tick(objs, row.tolist())
        if got.tolist() != want:
            raise AssertionError(f"RuleBank and the naive engine disagree ({run})")
        got = permuted.step(perm_k, row[perm_k], 0.0, 1.0, -3.0, 3.0)
        if got.tolist() != [want[i] for i in perm_k]:
            raise AssertionError(f"RuleBank (permuted) and the naive engine disagree ({run})")
    x = _tick_data(K, 64, seed=1)
    rows = x.tolist()
    idx = np.arange(K)
    perm = np.random.default_rng(5).permutation(K)
    xp = np.ascontiguousarray(x[:, perm])
    arrays = (np.zeros(K), np.ones(K), np.full(K, -3.0), np.full(K, 3.0))
    bank = rules.RuleBank(cfgs)
    by_slice = rules.RuleBank(cfgs)
    by_perm = rules.RuleBank(cfgs)
    by_arrays = rules.RuleBank(cfgs)
    objs = [NaiveRules(c) for c in cfgs]
    for t in range(WARMUP_TICKS):
        bank.step(idx, x[t], 0.0, 1.0, -3.0, 3.0)
        by_slice.step(slice(None), x[t], 0.0, 1.0, -3.0, 3.0)
        by_perm.step(perm, xp[t], 0.0, 1.0, -3.0, 3.0)
        by_arrays.step(slice(None), x[t], *arrays)
        _naive_tick(objs, rows[t])
    tick = [0, 0, 0, 0, 0]

    def bank_tick() -> None:
        bank.step(idx, x[tick[0] % 64], 0.0, 1.0, -3.0, 3.0)
        tick[0] += 1

    def slice_tick() -> None:
        by_slice.step(slice(None), x[tick[1] % 64], 0.0, 1.0, -3.0, 3.0)
        tick[1] += 1

    def perm_tick() -> None:
        by_perm.step(perm, xp[tick[3] % 64], 0.0, 1.0, -3.0, 3.0)
        tick[3] += 1

    def arrays_tick() -> None:
        by_arrays.step(slice(None), x[tick[4] % 64], *arrays)
        tick[4] += 1

    def naive() -> None:
        _naive_tick(objs, rows[tick[2] % 64])
        tick[2] += 1

    bank_s, slice_s, perm_s, arrays_s, naive_s, ratios = [], [], [], [], [], []
    for _ in range(rounds):
        b = _timed(bank_tick, min_time)
        s = _timed(slice_tick, min_time)
        p = _timed(perm_tick, min_time)
        a = _timed(arrays_tick, min_time)
        n = _timed(naive, min_time)
        bank_s.append(b)
        slice_s.append(s)
        perm_s.append(p)
        arrays_s.append(a)
        naive_s.append(n)
        ratios.append(n / b)
    b_med, s_med, p_med, a_med, n_med = (
        statistics.median(v) for v in (bank_s, slice_s, perm_s, arrays_s, naive_s)
    )
    return {
        "run": run,
        "K": K,
        "bank_us_per_tick": round(b_med * 1e6, 1),
        "bank_points_per_s": round(K / b_med),
        "bank_slice_us_per_tick": round(s_med * 1e6, 1),
        "bank_slice_points_per_s": round(K / s_med),
        "bank_permuted_us_per_tick": round(p_med * 1e6, 1),
        "bank_arrays_us_per_tick": round(a_med * 1e6, 1),
        "naive_us_per_tick": round(n_med * 1e6, 1),
        "naive_points_per_s": round(K / n_med),
        "ratio_median": round(statistics.median(ratios), 1),
        "ratio_rounds": [round(r, 1) for r in ratios],
        "bank_bytes_per_char": round(bank.nbytes / K, 1),
    }


def _naive_bytes(K: int) -> float:
    """Python heap bytes per naive characteristic once its windows have filled."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    objs = [NaiveRules(NELSON) for _ in range(K)]
    for row in _tick_data(K, WARMUP_TICKS, seed=3).tolist():
        _naive_tick(objs, row)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del objs
    return (after - before) / K


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark and return the results (also printed as JSON by ``python -m``)."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_rules")
    ap.add_argument("--points", type=int, default=10_000_000)
    ap.add_argument("--naive-points", type=int, default=200_000)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10_000])
    ap.add_argument("--runs", nargs="+", choices=["nelson", "mixed"], default=["nelson", "mixed"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.3, help="seconds per timed block")
    ap.add_argument("--quick", action="store_true", help="small sizes, 2 rounds (smoke test)")
    ap.add_argument(
        "--no-malloc-tuning", action="store_true", help="leave glibc's allocator at its defaults"
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.points, args.naive_points = 200_000, 20_000
        args.sizes, args.rounds, args.min_time = [100, 1000], 2, 0.05
    tuned = False if args.no_malloc_tuning else _tune_malloc()
    batch = bench_batch(args.points, args.naive_points, args.rounds, args.min_time)
    stream = [
        bench_stream(run, K, args.rounds, args.min_time) for run in args.runs for K in args.sizes
    ]
    bank = rules.RuleBank([NELSON] * 1000)
    return {
        "benchmark": "rules",
        **_machine(),
        "rounds": args.rounds,
        "malloc_tuned": tuned,
        "batch": batch,
        "streaming": stream,
        "memory": {
            "bank_bytes_per_char_nelson": bank.nbytes / 1000,
            "naive_bytes_per_char_nelson": round(_naive_bytes(1000), 1),
        },
    }


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
