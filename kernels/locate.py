"""Where along the vehicle an excess sits, and how far it spreads.

``peak_refine`` turns the arg-max of a statistic series into a fractional sample index by a parabola
through the peak and its neighbours. ``smooth`` correlates a profile with a template (zero beyond the
data). ``half_max_edges`` finds where (samples, with linear interpolation at the crossings) the
contiguous stretch around a peak, where a smoothed excess stays above half its peak value, begins and
ends.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def peak_refine(z: np.ndarray, c: int) -> float:
    """Fractional index of the peak at ``c`` from a parabola through ``z[c-1], z[c], z[c+1]``."""
    n = z.shape[0]
    if c <= 0 or c >= n - 1:
        return float(c)
    a, b, d = z[c - 1], z[c], z[c + 1]
    if not (np.isfinite(a) and np.isfinite(b) and np.isfinite(d)):
        return float(c)
    den = a - 2.0 * b + d
    if den >= 0.0:
        return float(c)
    return c + min(0.5, max(-0.5, 0.5 * (a - d) / den))


@numba.njit(cache=True)
def smooth(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``out[c] = sum_k w[k] x[c + k - H]`` for a template of odd length ``2H + 1``, zero beyond the data."""
    n = x.shape[0]
    h = (w.shape[0] - 1) // 2
    out = np.zeros(n)
    for c in range(n):
        s = 0.0
        for j in range(max(0, c - h), min(n - 1, c + h) + 1):
            s += w[j - c + h] * x[j]
        out[c] = s
    return out


@numba.njit(cache=True)
def half_max_edges(x: np.ndarray, c: int) -> tuple[float, float]:
    """Edges (fractional samples) of the stretch around ``c`` where ``x >= x[c] / 2``; ``(c, c)`` if ``x[c] <= 0``.

    A stretch reaching the end of the data ends half a sample beyond its last sample.
    """
    n = x.shape[0]
    peak = x[c]
    if not peak > 0.0:
        return float(c), float(c)
    half = 0.5 * peak
    lo = c
    while lo > 0 and x[lo - 1] >= half:
        lo -= 1
    hi = c
    while hi < n - 1 and x[hi + 1] >= half:
        hi += 1
    left = lo - 0.5
    if lo > 0:
        left = lo - (x[lo] - half) / (x[lo] - x[lo - 1])
    right = hi + 0.5
    if hi < n - 1:
        right = hi + (x[hi] - half) / (x[hi] - x[hi + 1])
    return left, right


def peak_refine_ref(z: np.ndarray, c: int) -> float:
    """Numpy twin of :func:`peak_refine` (least-squares parabola through three points)."""
    if c <= 0 or c >= z.shape[0] - 1 or not np.all(np.isfinite(z[c - 1 : c + 2])):
        return float(c)
    a2, a1, _ = np.polyfit([-1.0, 0.0, 1.0], z[c - 1 : c + 2], 2)
    if a2 >= 0:
        return float(c)
    return float(c + np.clip(-a1 / (2 * a2), -0.5, 0.5))


def smooth_ref(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Numpy twin of :func:`smooth`."""
    h = (w.shape[0] - 1) // 2
    padded = np.concatenate((np.zeros(h), np.asarray(x, dtype=np.float64), np.zeros(h)))
    return np.convolve(padded, w[::-1], mode="valid")


def half_max_edges_ref(x: np.ndarray, c: int) -> tuple[float, float]:
    """Numpy twin of :func:`half_max_edges` (boolean runs)."""
    peak = x[c]
    if not peak > 0:
        return float(c), float(c)
    half = 0.5 * peak
    below = np.flatnonzero(x < half)
    lo = int(below[below < c].max()) + 1 if np.any(below < c) else 0
    hi = int(below[below > c].min()) - 1 if np.any(below > c) else x.shape[0] - 1
    left = lo - 0.5 if lo == 0 else lo - (x[lo] - half) / (x[lo] - x[lo - 1])
    right = hi + 0.5 if hi == x.shape[0] - 1 else hi + (x[hi] - half) / (x[hi] - x[hi + 1])
    return float(left), float(right)
