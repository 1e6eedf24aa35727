"""Point-source matched filter along the drive-through count profile.

A point source at standoff ``d`` passing the detectors at speed ``v`` adds a rate proportional to
``1 / (1 + (x/d)^2)`` with ``x = v t`` the distance from closest approach. In samples of ``dt`` the
template scale is ``s = d / (v dt)``; the template value of a sample is the integral of that shape over
the sample, truncated at ``truncation * s`` samples either side.

For a template ``w`` centred at sample ``c`` (truncated at the ends of the data), counts ``x`` and
expected background ``b * e`` (``b`` a level factor for shadow shielding, with variance ``var_b``)::

    z = (sum w x - b sum w e) / sqrt(b sum w^2 e + var_b (sum w e)^2)

minus a Cornish-Fisher skewness term ``cf * gamma`` with ``gamma = b sum w^3 e / sd^3``, the Poisson
skewness of the weighted sum (``cf = (u^2 - 1) / 6`` for a threshold ``u`` keeps the false-alarm
probability at ``u`` close to the normal one). A bank holds a few templates; the statistic is the
largest z over the bank.
"""

from __future__ import annotations

import math

import numba
import numpy as np


def point_templates(
    scales: np.ndarray, truncation: float, max_halfwidth: int, panel: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Template bank for scales ``s`` (samples): rows of width ``2 H + 1`` centred at column ``H``.

    Returns ``(bank (T, 2H+1), halfwidths (T,) int64)``; each row is zero beyond its own half-width,
    which is ``ceil(truncation * s)`` capped at ``max_halfwidth``. With ``panel`` the shape is a flat detector's
    ``(1 + (u/s)^2)^-1.5`` (inverse square times the cosine of the incidence on a panel facing the lane), whose
    tails fall faster than the isotropic ``1 / (1 + (u/s)^2)``; its half-maximum width is 0.766 of the latter's.
    """
    scales = np.asarray(scales, dtype=np.float64)
    halfw = np.minimum(np.ceil(truncation * scales), max_halfwidth).astype(np.int64)
    halfw = np.maximum(halfw, 1)
    hmax = int(halfw.max())
    bank = np.zeros((scales.size, 2 * hmax + 1))
    k = np.arange(-hmax, hmax + 1, dtype=np.float64)
    for t, (s, h) in enumerate(zip(scales, halfw, strict=True)):
        hi, lo = (k + 0.5) / s, (k - 0.5) / s
        if panel:
            row = hi / np.sqrt(1.0 + hi * hi) - lo / np.sqrt(1.0 + lo * lo)
        else:
            row = s * (np.arctan(hi) - np.arctan(lo))
        row[np.abs(k) > h] = 0.0
        bank[t] = row / row.max()
    return bank, halfw


@numba.njit(cache=True)
def _mf_one(
    x: np.ndarray,
    e: np.ndarray,
    n: int,
    c: int,
    level: float,
    var_level: float,
    bank: np.ndarray,
    halfw: np.ndarray,
    cf: float,
) -> tuple[float, int]:
    hmax = (bank.shape[1] - 1) // 2
    best = -np.inf
    best_t = -1
    for t in range(bank.shape[0]):
        h = halfw[t]
        lo = max(0, c - h)
        hi = min(n - 1, c + h)
        swx = 0.0
        swe = 0.0
        sw2e = 0.0
        sw3e = 0.0
        for j in range(lo, hi + 1):
            w = bank[t, j - c + hmax]
            ej = e[j]
            swx += w * x[j]
            swe += w * ej
            sw2e += w * w * ej
            sw3e += w * w * w * ej
        var = level * sw2e + var_level * swe * swe
        if var <= 0.0:
            continue
        sd = math.sqrt(var)
        z = (swx - level * swe) / sd - cf * level * sw3e / (sd * sd * sd)
        if z > best:
            best = z
            best_t = t
    return best, best_t


@numba.njit(cache=True)
def mf_at(
    x: np.ndarray,
    e: np.ndarray,
    n: int,
    c: int,
    level: float,
    var_level: float,
    bank: np.ndarray,
    halfw: np.ndarray,
    cf: float,
) -> tuple[float, int]:
    """Largest z over the bank for the template centred at sample ``c``, using samples ``[0, n)``.

    ``x`` counts per sample, ``e`` expected background counts per sample (both at least ``n`` long).
    Returns ``(z, template index)``; ``(-inf, -1)`` when no template has positive variance.
    """
    return _mf_one(x, e, n, c, level, var_level, bank, halfw, cf)


@numba.njit(cache=True)
def mf_series(
    x: np.ndarray,
    e: np.ndarray,
    level: np.ndarray,
    var_level: np.ndarray,
    bank: np.ndarray,
    halfw: np.ndarray,
    cf: float,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`mf_at` at every centre, with per-centre ``level`` and ``var_level``."""
    n = x.shape[0]
    z = np.empty(n)
    idx = np.empty(n, dtype=np.int64)
    for c in range(n):
        z[c], idx[c] = _mf_one(x, e, n, c, level[c], var_level[c], bank, halfw, cf)
    return z, idx


def _mf_sums_ref(
    x: np.ndarray, e: np.ndarray, w: np.ndarray, hmax: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Windowed sums of one template at every centre (zero beyond the data)."""
    xp = np.concatenate((np.zeros(hmax), x, np.zeros(hmax)))
    ep = np.concatenate((np.zeros(hmax), e, np.zeros(hmax)))
    rev = w[::-1]
    return (
        np.convolve(xp, rev, mode="valid"),
        np.convolve(ep, rev, mode="valid"),
        np.convolve(ep, rev**2, mode="valid"),
        np.convolve(ep, rev**3, mode="valid"),
    )


def mf_series_ref(
    x: np.ndarray,
    e: np.ndarray,
    level: np.ndarray,
    var_level: np.ndarray,
    bank: np.ndarray,
    halfw: np.ndarray,
    cf: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Numpy twin of :func:`mf_series` (convolutions, one per template)."""
    x = np.asarray(x, dtype=np.float64)
    e = np.asarray(e, dtype=np.float64)
    hmax = (bank.shape[1] - 1) // 2
    zs = np.full((bank.shape[0], x.shape[0]), -np.inf)
    for t in range(bank.shape[0]):
        swx, swe, sw2e, sw3e = _mf_sums_ref(x, e, bank[t], hmax)
        var = level * sw2e + var_level * swe**2
        ok = var > 0
        sd = np.sqrt(np.where(ok, var, 1.0))
        zs[t] = np.where(ok, (swx - level * swe) / sd - cf * level * sw3e / sd**3, -np.inf)
    idx = np.argmax(zs, axis=0)
    z = zs[idx, np.arange(x.shape[0])]
    return z, np.where(np.isfinite(z), idx, -1)


def mf_at_ref(
    x: np.ndarray,
    e: np.ndarray,
    n: int,
    c: int,
    level: float,
    var_level: float,
    bank: np.ndarray,
    halfw: np.ndarray,
    cf: float,
) -> tuple[float, int]:
    """Numpy twin of :func:`mf_at` (slices, one per template)."""
    hmax = (bank.shape[1] - 1) // 2
    best, best_t = -np.inf, -1
    for t in range(bank.shape[0]):
        lo, hi = max(0, c - int(halfw[t])), min(n - 1, c + int(halfw[t]))
        w = bank[t, lo - c + hmax : hi - c + hmax + 1]
        ej = e[lo : hi + 1]
        swe = float(np.dot(w, ej))
        var = level * float(np.dot(w * w, ej)) + var_level * swe * swe
        if var <= 0:
            continue
        sd = np.sqrt(var)
        z = (float(np.dot(w, x[lo : hi + 1])) - level * swe) / sd - cf * level * float(np.dot(w**3, ej)) / sd**3
        if z > best:
            best, best_t = z, t
    return float(best), best_t
