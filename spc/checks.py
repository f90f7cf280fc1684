"""Input checks shared by the chart modules: each failure names its path."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from spc.errors import SpcInputError

__all__ = ["finite_numbers", "positive", "use_mask"]


def finite_numbers(values: Any, path: str) -> np.ndarray:
    """A non-empty 1-D float array of finite numbers, or SpcInputError naming the first bad entry."""
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise SpcInputError(path, "must be a list of numbers") from exc
    if arr.ndim != 1:
        raise SpcInputError(path, f"must be a flat list of numbers, got shape {arr.shape}")
    if arr.size == 0:
        raise SpcInputError(path, "is empty")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise SpcInputError(f"{path}[{bad[0]}]", f"must be a finite number, got {arr[bad[0]]}")
    return arr


def use_mask(count: int, exclude: Any, *, require_some: bool = True) -> np.ndarray:
    """The Phase I points used for estimation: ``~exclude`` (all when ``exclude`` is None).

    With ``require_some``, excluding every point leaves nothing to estimate
    and is an error (callers with a known centre may not need any point).
    """
    if exclude is None:
        return np.ones(count, dtype=bool)
    ex = np.asarray(exclude, dtype=bool)
    if ex.shape != (count,):
        raise SpcInputError(
            "exclude", f"needs one flag per Phase I point ({count}), got shape {ex.shape}"
        )
    if require_some and count and ex.all():
        raise SpcInputError("exclude", "excludes every Phase I point; nothing is left to estimate")
    return ~ex


def positive(value: Any, path: str) -> float:
    """A finite number > 0."""
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise SpcInputError(path, "must be a number") from exc
    if not math.isfinite(v) or v <= 0:
        raise SpcInputError(path, f"must be a finite number > 0, got {value!r}")
    return v
