"""The obvious pure-Python run-rule engine: one object per characteristic, deques of recent points.

This is the baseline :mod:`benchmarks.bench_rules` measures :mod:`spc.rules`
against. It is written the way a first implementation would be: per point,
standardize, append to deques, and re-scan every rule's window. It follows
the same semantics (``spc-semantics.md``, "Run rules") and the benchmark
checks that it produces the same masks before timing anything.
"""

from __future__ import annotations

import itertools
import math
from collections import deque

from spc.rules import BITS, RuleConfig

__all__ = ["NaiveRules", "naive_evaluate"]


class NaiveRules:
    """Run rules for one characteristic, one point at a time."""

    def __init__(self, config: RuleConfig) -> None:
        self.rules = [
            (r.kind, 1 << BITS[r.code], r.run or 0, r.k or 0, r.m or 0, r.level or 0.0)
            for r in config.rules
        ]
        longest = max([2, *(max(r[2], r[4]) for r in self.rules)])
        self.z: deque[float] = deque(maxlen=longest)
        self.x: deque[float] = deque(maxlen=longest + 1)

    def update(self, x: float, center: float, sigma: float, lcl: float, ucl: float) -> int:
        """Add one point; return its violation mask (0 for a missing point)."""
        if math.isnan(x) or math.isnan(center) or math.isnan(sigma) or sigma < 0:
            return 0
        d = x - center
        if sigma == 0:
            z = math.inf if d > 0 else -math.inf if d < 0 else 0.0
        else:
            z = d / sigma
        if math.isnan(z):
            return 0
        self.z.append(z)
        self.x.append(x)
        zs = list(self.z)
        xs = list(self.x)
        mask = 0
        for kind, bit, run, k, m, level in self.rules:
            if kind == "limit":
                hit = x > ucl or x < lcl
            elif kind == "k_of_m":
                window = zs[-m:]
                hit = (z > level and sum(1 for v in window if v > level) >= k) or (
                    z < -level and sum(1 for v in window if v < -level) >= k
                )
            elif len(zs) < run:
                hit = False
            elif kind == "side":
                window = zs[-run:]
                hit = all(v > 0 for v in window) or all(v < 0 for v in window)
            elif kind == "within":
                hit = all(abs(v) <= level for v in zs[-run:])
            elif kind == "beyond_both":
                window = zs[-run:]
                hit = (
                    all(abs(v) > level for v in window)
                    and any(v > level for v in window)
                    and any(v < -level for v in window)
                )
            else:
                tail = xs[-run:]
                steps = [1 if b > a else -1 if b < a else 0 for a, b in itertools.pairwise(tail)]
                if kind == "trend":
                    hit = all(s == 1 for s in steps) or all(s == -1 for s in steps)
                else:
                    hit = all(s != 0 for s in steps) and all(
                        s != t for s, t in itertools.pairwise(steps)
                    )
            if hit:
                mask |= bit
        return mask


def naive_evaluate(
    x: list[float],
    center: list[float],
    sigma: list[float],
    lcl: list[float],
    ucl: list[float],
    config: RuleConfig,
) -> list[int]:
    """Masks of one whole series, point by point through a :class:`NaiveRules`."""
    engine = NaiveRules(config)
    return [engine.update(*p) for p in zip(x, center, sigma, lcl, ucl, strict=True)]
