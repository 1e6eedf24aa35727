"""Local background level along the vehicle, for the shadow-shielding correction of the gross test.

A vehicle shields part of the natural background, by different amounts along its length (cab, gap,
cargo). The level at centre ``c`` is the ratio observed/expected on two flanks, the samples
``[c - gap - width, c - gap - 1]`` and ``[c + gap + 1, c + gap + width]``, where a point source
centred at ``c`` has faded to a fraction of its peak. The level used is the larger of the two flanks,
so a stretch is never judged against a more suppressed neighbour when a less suppressed one is at
hand: an unshielded cab in front of the cargo, or the gap behind the cab, keeps level ~1 from its
own side.

With ``pad`` true, samples beyond the data count as unshielded (ratio exactly 1, no variance), which is
what the lane sees before the vehicle enters and after it leaves. Otherwise only samples inside the
data count, and a flank without any is ignored. Between equal levels the flank of smaller variance
wins. The variance returned is the Poisson variance of the chosen ratio, ``(observed + 1) / expected^2``.
With no usable flank the level is NaN.

``softening_covariate_into`` gives, per sample, how shielded its surroundings are (from the plain ratio
observed/expected over a few samples around it): the covariate of the shape test's correction for the
way shielding changes the background spectrum (:mod:`lanewatch.kernels.shape`).

``span_levels`` gives the plain ratio observed/expected over longer spans (the neutron samples): how
much background the vehicle blocks there, the covariate of the ship-effect neutron null
(:mod:`lanewatch.kernels.poisson`).
"""

from __future__ import annotations

import numba
import numpy as np

_TIE = 1e-9
"""Relative difference below which two flank levels count as equal (the one of smaller variance wins)."""


@numba.njit(cache=True)
def _flank(x: np.ndarray, e: np.ndarray, n: int, lo: int, hi: int, pad: bool, e_pad: float) -> tuple[float, float]:
    obs = 0.0
    exp = 0.0
    padded = 0.0
    for j in range(lo, hi + 1):
        if 0 <= j < n:
            obs += x[j]
            exp += e[j]
        elif pad:
            padded += e_pad
    den = exp + padded
    if den <= 0.0:
        return np.nan, 0.0
    return (obs + padded) / den, (obs + 1.0) / (den * den) if exp > 0.0 else 0.0


@numba.njit(cache=True)
def flank_level_at(
    x: np.ndarray, e: np.ndarray, n: int, c: int, gap: int, width: int, pad: bool, e_pad: float
) -> tuple[float, float]:
    """``(level, variance)`` at centre ``c`` from samples ``[0, n)``; ``e_pad`` expected counts of a padded sample."""
    left, var_left = _flank(x, e, n, c - gap - width, c - gap - 1, pad, e_pad)
    right, var_right = _flank(x, e, n, c + gap + 1, c + gap + width, pad, e_pad)
    if np.isnan(right):
        return left, var_left
    if np.isnan(left):
        return right, var_right
    tie = abs(left - right) <= _TIE * max(abs(left), abs(right))
    if (left > right and not tie) or (tie and var_left <= var_right):
        return left, var_left
    return right, var_right


@numba.njit(cache=True)
def flank_level_series(
    x: np.ndarray, e: np.ndarray, gap: int, width: int, pad: bool, e_pad: float
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`flank_level_at` at every centre of complete data."""
    n = x.shape[0]
    level = np.empty(n)
    var = np.empty(n)
    for c in range(n):
        level[c], var[c] = flank_level_at(x, e, n, c, gap, width, pad, e_pad)
    return level, var


@numba.njit(cache=True)
def softening_covariate_into(x: np.ndarray, e: np.ndarray, n: int, lo: int, half: int, out: np.ndarray) -> None:
    """Write ``b_j = max(0, 1 / level_j - 1)`` into ``out[j]`` for ``j`` in ``[lo, n)``.

    ``level_j`` is observed/expected over samples ``[j - half, j + half]`` within ``[0, n)`` (1 when
    nothing is expected); ``b`` is the shielded fraction over the unshielded one, ``s / (1 - s)``.
    """
    for j in range(max(lo, 0), n):
        obs = 0.0
        exp = 0.0
        for k in range(max(0, j - half), min(n - 1, j + half) + 1):
            obs += x[k]
            exp += e[k]
        out[j] = max(0.0, exp / obs - 1.0) if obs > 0.0 else 0.0


@numba.njit(cache=True)
def span_levels(x: np.ndarray, e: np.ndarray, dts: np.ndarray, span_s: float, m: int) -> np.ndarray:
    """Observed/expected gross ratio over each of ``m`` consecutive spans of ``span_s`` seconds.

    ``x`` and ``e`` are observed and expected counts of samples lasting ``dts`` seconds, in time order
    from the start of the occupancy; a sample belongs to the span holding its midpoint. A span with
    nothing expected has level 1.
    """
    obs = np.zeros(m)
    exp = np.zeros(m)
    t = 0.0
    for i in range(x.shape[0]):
        j = int((t + 0.5 * dts[i]) / span_s)
        t += dts[i]
        if 0 <= j < m:
            obs[j] += x[i]
            exp[j] += e[i]
    out = np.ones(m)
    for j in range(m):
        if exp[j] > 0.0:
            out[j] = obs[j] / exp[j]
    return out


def span_levels_ref(x: np.ndarray, e: np.ndarray, dts: np.ndarray, span_s: float, m: int) -> np.ndarray:
    """Numpy twin of :func:`span_levels`."""
    dts = np.asarray(dts, dtype=np.float64)
    mid = np.concatenate(([0.0], np.cumsum(dts)[:-1])) + 0.5 * dts
    j = (mid / span_s).astype(np.int64)
    keep = (j >= 0) & (j < m)
    obs = np.bincount(j[keep], np.asarray(x, dtype=np.float64)[keep], minlength=m)[:m]
    exp = np.bincount(j[keep], np.asarray(e, dtype=np.float64)[keep], minlength=m)[:m]
    return np.where(exp > 0, obs / np.where(exp > 0, exp, 1.0), 1.0)


def softening_covariate_ref(x: np.ndarray, e: np.ndarray, half: int) -> np.ndarray:
    """Numpy twin of :func:`softening_covariate_into` over all samples of complete data."""
    kernel = np.ones(2 * half + 1)
    n = x.shape[0]
    obs = np.convolve(np.asarray(x, dtype=np.float64), kernel, mode="full")[half : half + n]
    exp = np.convolve(np.asarray(e, dtype=np.float64), kernel, mode="full")[half : half + n]
    return np.where(obs > 0, np.maximum(exp / np.where(obs > 0, obs, 1.0) - 1.0, 0.0), 0.0)


def _flank_ref(x: np.ndarray, e: np.ndarray, n: int, lo: int, hi: int, pad: bool, e_pad: float) -> tuple[float, float]:
    a, b = min(max(lo, 0), n), min(max(hi + 1, 0), n)
    inside = max(b - a, 0)
    obs, exp = float(np.sum(x[a:b])), float(np.sum(e[a:b]))
    padded = e_pad * ((hi - lo + 1) - inside) if pad else 0.0
    den = exp + padded
    if den <= 0:
        return float("nan"), 0.0
    return (obs + padded) / den, (obs + 1.0) / den**2 if exp > 0 else 0.0


def flank_level_at_ref(
    x: np.ndarray, e: np.ndarray, n: int, c: int, gap: int, width: int, pad: bool, e_pad: float
) -> tuple[float, float]:
    """Numpy twin of :func:`flank_level_at`."""
    left = _flank_ref(x, e, n, c - gap - width, c - gap - 1, pad, e_pad)
    right = _flank_ref(x, e, n, c + gap + 1, c + gap + width, pad, e_pad)
    return left if _take_left_ref(left[0], right[0], left[1], right[1]) else right


def _take_left_ref(left: object, right: object, var_left: object, var_right: object) -> object:
    """Whether the left flank wins (elementwise on arrays): the higher level, the smaller variance on a tie."""
    left, right = np.asarray(left, dtype=float), np.asarray(right, dtype=float)
    tie = np.abs(left - right) <= _TIE * np.maximum(np.abs(left), np.abs(right))
    with np.errstate(invalid="ignore"):
        better = ((left > right) & ~tie) | (tie & (np.asarray(var_left) <= np.asarray(var_right)))
    return np.isnan(right) | (~np.isnan(left) & better)


def flank_level_series_ref(
    x: np.ndarray, e: np.ndarray, gap: int, width: int, pad: bool, e_pad: float
) -> tuple[np.ndarray, np.ndarray]:
    """Numpy twin of :func:`flank_level_series` (cumulative sums, vectorized over centres)."""
    x = np.asarray(x, dtype=np.float64)
    e = np.asarray(e, dtype=np.float64)
    n = x.shape[0]
    cx = np.concatenate(([0.0], np.cumsum(x)))
    ce = np.concatenate(([0.0], np.cumsum(e)))
    c = np.arange(n)

    def side(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a, b = np.clip(lo, 0, n), np.clip(hi + 1, 0, n)
        inside = np.maximum(b - a, 0)
        obs = np.where(inside > 0, cx[b] - cx[a], 0.0)
        exp = np.where(inside > 0, ce[b] - ce[a], 0.0)
        padded = e_pad * (hi - lo + 1 - inside) if pad else np.zeros(n)
        den = exp + padded
        ok = den > 0
        safe = np.where(ok, den, 1.0)
        level = np.where(ok, (obs + padded) / safe, np.nan)
        var = np.where(ok & (exp > 0), (obs + 1.0) / safe**2, 0.0)
        return level, var

    left, var_left = side(c - gap - width, c - gap - 1)
    right, var_right = side(c + gap + 1, c + gap + width)
    take_left = _take_left_ref(left, right, var_left, var_right)
    return np.where(take_left, left, right), np.where(take_left, var_left, var_right)
