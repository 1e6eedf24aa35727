"""The fielded n-sigma gamma rule of radiation portal monitors, the baseline lanewatch is measured against.

The foreground is the gross count summed over the newest ``n_1s`` samples (5 samples of 0.2 s on an RPM:
one second); the statistic is ``sigma = (FG - BG) / sqrt(BG)`` with BG the background expected in the
same time. While fewer than ``n_1s`` samples exist, the available ones are used with BG scaled to them.
"""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(cache=True)
def nsigma_at(gross: np.ndarray, i: int, bg_1s: float, n_1s: int) -> float:
    """Sigma of the window ending at sample ``i``; ``gross`` in counts per sample, ``bg_1s`` in counts per window."""
    m = min(i + 1, n_1s)
    fg = 0.0
    for j in range(i - m + 1, i + 1):
        fg += gross[j]
    bg = bg_1s * m / n_1s
    return (fg - bg) / math.sqrt(bg)


@numba.njit(cache=True)
def nsigma_series(gross: np.ndarray, bg_1s: float, n_1s: int) -> np.ndarray:
    """Sigma of the window ending at every sample (running sum, O(n))."""
    n = gross.shape[0]
    out = np.empty(n)
    fg = 0.0
    for i in range(n):
        fg += gross[i]
        if i >= n_1s:
            fg -= gross[i - n_1s]
        m = min(i + 1, n_1s)
        bg = bg_1s * m / n_1s
        out[i] = (fg - bg) / math.sqrt(bg)
    return out


def nsigma_at_ref(gross: np.ndarray, i: int, bg_1s: float, n_1s: int) -> float:
    """Numpy twin of :func:`nsigma_at`."""
    window = gross[max(0, i - n_1s + 1) : i + 1]
    bg = bg_1s * window.size / n_1s
    return float((window.sum() - bg) / np.sqrt(bg))


def nsigma_series_ref(gross: np.ndarray, bg_1s: float, n_1s: int) -> np.ndarray:
    """Numpy twin of :func:`nsigma_series`."""
    cum = np.concatenate(([0.0], np.cumsum(gross, dtype=np.float64)))
    idx = np.arange(gross.shape[0])
    lo = np.maximum(0, idx - n_1s + 1)
    fg = cum[idx + 1] - cum[lo]
    bg = bg_1s * (idx + 1 - lo) / n_1s
    return (fg - bg) / np.sqrt(bg)
