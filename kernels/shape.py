"""Energy-window shape test: is the low-window fraction different from what the background would give?

Given the total count ``N_j`` of sample ``j`` over all windows, its low-window count ``L_j`` is binomial
``(N_j, p_j)`` under background, whatever the total rate: shadow shielding changes the rate far more than
the shape, so the test is robust to it. Far more, not entirely: a vehicle removes a different fraction of
the background in each window, so a shielded stretch has a slightly different low-window fraction. With
``s`` the fraction of the gross background a stretch removes and each window losing a fixed multiple of
it, the fraction is exactly ``p = p0 + kappa * b`` with ``b = s / (1 - s) = 1 / level - 1`` (``level``
the observed/expected gross ratio) and ``kappa`` a property of the site and its traffic. ``kappa`` is
fitted per occupancy from the samples outside the stretch under test (weighted least squares of
``L - p0 N`` on ``N b``, with a normal prior of variance ``prior_var`` around 0), so a source never
fits its own null.

With matched-filter weights ``w``::

    num = sum w (L - p0 N) - kappa sum w N b
    var = p0 (1 - p0) sum w^2 N + var_p0 (sum w N)^2 + var_kappa (sum w N b)^2
    z   = num / sqrt(var)

``var_p0`` is the variance of the background fraction estimate. Positive z: softer than background
(Cs-137 in some windows, HEU, Pu, medical isotopes); negative: harder (NORM: K-40, thorium; Co-60).
A Cornish-Fisher term ``cf * gamma`` with the binomial skewness ``gamma`` moves z toward zero on both
sides (the ``_at`` and ``_series`` forms return the z of largest magnitude over the bank).
"""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(cache=True)
def softening_fit(
    low: np.ndarray, total: np.ndarray, b: np.ndarray, n: int, lo: int, hi: int, p0: float, prior_var: float
) -> tuple[float, float]:
    """``(kappa, variance)`` from samples ``[0, n)`` outside ``[lo, hi]``; ``b`` the softening covariate."""
    q = p0 * (1.0 - p0)
    sby = 0.0
    snb2 = 0.0
    for j in range(n):
        if lo <= j <= hi:
            continue
        sby += b[j] * (low[j] - p0 * total[j])
        snb2 += total[j] * b[j] * b[j]
    precision = snb2 / q + 1.0 / prior_var
    return sby / q / precision, 1.0 / precision


@numba.njit(cache=True)
def _span(
    low: np.ndarray,
    total: np.ndarray,
    b: np.ndarray,
    w: np.ndarray,
    w0: int,
    lo: int,
    hi: int,
    p0: float,
    var_p0: float,
    kappa: float,
    var_kappa: float,
    cf: float,
) -> float:
    q = p0 * (1.0 - p0)
    num = 0.0
    swn = 0.0
    swnb = 0.0
    sw2n = 0.0
    sw3n = 0.0
    for j in range(lo, hi + 1):
        wj = w[j - w0]
        nj = total[j]
        num += wj * (low[j] - p0 * nj)
        swn += wj * nj
        swnb += wj * nj * b[j]
        sw2n += wj * wj * nj
        sw3n += wj * wj * wj * nj
    num -= kappa * swnb
    var = q * sw2n + var_p0 * swn * swn + var_kappa * swnb * swnb
    if var <= 0.0:
        return 0.0
    sd = math.sqrt(var)
    z = num / sd
    skew = cf * q * abs(1.0 - 2.0 * p0) * sw3n / (sd * sd * sd)
    if z > 0.0:
        return max(z - skew, 0.0)
    return min(z + skew, 0.0)


@numba.njit(cache=True)
def shape_span(
    low: np.ndarray,
    total: np.ndarray,
    b: np.ndarray,
    lo: int,
    hi: int,
    p0: float,
    var_p0: float,
    kappa: float,
    var_kappa: float,
) -> float:
    """Unweighted shape z over samples ``[lo, hi]`` (no skewness term); 0 when there are no counts."""
    return _span(low, total, b, np.ones(hi - lo + 1), lo, lo, hi, p0, var_p0, kappa, var_kappa, 0.0)


@numba.njit(cache=True)
def shape_at(
    low: np.ndarray,
    total: np.ndarray,
    b: np.ndarray,
    n: int,
    c: int,
    p0: float,
    var_p0: float,
    kappa: float,
    var_kappa: float,
    bank: np.ndarray,
    halfw: np.ndarray,
    cf: float,
) -> tuple[float, int]:
    """Shape z of largest magnitude over the bank for templates centred at ``c``, using samples ``[0, n)``.

    ``low`` counts in the lowest window and ``total`` in all windows per sample; ``b`` the softening
    covariate; ``kappa`` and ``var_kappa`` from :func:`softening_fit`. Returns ``(z, template index)``.
    """
    hmax = (bank.shape[1] - 1) // 2
    best = 0.0
    best_t = 0
    for t in range(bank.shape[0]):
        h = halfw[t]
        z = _span(low, total, b, bank[t], c - hmax, max(0, c - h), min(n - 1, c + h), p0, var_p0, kappa, var_kappa, cf)
        if abs(z) > abs(best):
            best = z
            best_t = t
    return best, best_t


@numba.njit(cache=True)
def shape_series(
    low: np.ndarray,
    total: np.ndarray,
    b: np.ndarray,
    p0: float,
    var_p0: float,
    prior_var: float,
    bank: np.ndarray,
    halfw: np.ndarray,
    cf: float,
    section_var: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Shape z at every centre of complete data, each template's ``kappa`` fitted outside its own window.

    ``section_var`` is the variance by which ``kappa`` under the window may differ from the one fitted outside it
    (a load whose sections soften, or shield the portal's columns, differently); it adds to ``kappa``'s own."""
    n = low.shape[0]
    hmax = (bank.shape[1] - 1) // 2
    q = p0 * (1.0 - p0)
    cum_by = np.zeros(n + 1)
    cum_nb2 = np.zeros(n + 1)
    for j in range(n):
        cum_by[j + 1] = cum_by[j] + b[j] * (low[j] - p0 * total[j])
        cum_nb2[j + 1] = cum_nb2[j] + total[j] * b[j] * b[j]
    z = np.zeros(n)
    idx = np.zeros(n, dtype=np.int64)
    for c in range(n):
        for t in range(bank.shape[0]):
            h = halfw[t]
            lo = max(0, c - h)
            hi = min(n - 1, c + h)
            precision = (cum_nb2[n] - cum_nb2[hi + 1] + cum_nb2[lo]) / q + 1.0 / prior_var
            kappa = (cum_by[n] - cum_by[hi + 1] + cum_by[lo]) / q / precision
            zt = _span(low, total, b, bank[t], c - hmax, lo, hi, p0, var_p0, kappa, 1.0 / precision + section_var, cf)
            if abs(zt) > abs(z[c]):
                z[c] = zt
                idx[c] = t
    return z, idx


def softening_fit_ref(
    low: np.ndarray, total: np.ndarray, b: np.ndarray, n: int, lo: int, hi: int, p0: float, prior_var: float
) -> tuple[float, float]:
    """Numpy twin of :func:`softening_fit`."""
    keep = np.ones(n, dtype=bool)
    keep[max(lo, 0) : max(hi + 1, 0)] = False
    q = p0 * (1 - p0)
    sby = float(np.sum(b[:n][keep] * (low[:n][keep] - p0 * total[:n][keep])))
    precision = float(np.sum(total[:n][keep] * b[:n][keep] ** 2)) / q + 1 / prior_var
    return sby / q / precision, 1 / precision


def _span_ref(
    low: np.ndarray,
    total: np.ndarray,
    b: np.ndarray,
    w: np.ndarray,
    p0: float,
    var_p0: float,
    kappa: float,
    var_kappa: float,
    cf: float,
) -> float:
    """Shape z of aligned slices (numpy)."""
    q = p0 * (1 - p0)
    swn, swnb = float(np.dot(w, total)), float(np.dot(w, total * b))
    var = q * float(np.dot(w * w, total)) + var_p0 * swn**2 + var_kappa * swnb**2
    if var <= 0:
        return 0.0
    sd = np.sqrt(var)
    z = (float(np.dot(w, low - p0 * total)) - kappa * swnb) / sd
    skew = cf * q * abs(1 - 2 * p0) * float(np.dot(w**3, total)) / sd**3
    return float(np.sign(z) * max(abs(z) - skew, 0.0))


def shape_span_ref(
    low: np.ndarray,
    total: np.ndarray,
    b: np.ndarray,
    lo: int,
    hi: int,
    p0: float,
    var_p0: float,
    kappa: float,
    var_kappa: float,
) -> float:
    """Numpy twin of :func:`shape_span`."""
    s = slice(lo, hi + 1)
    return _span_ref(low[s], total[s], b[s], np.ones(hi - lo + 1), p0, var_p0, kappa, var_kappa, 0.0)


def shape_at_ref(
    low: np.ndarray,
    total: np.ndarray,
    b: np.ndarray,
    n: int,
    c: int,
    p0: float,
    var_p0: float,
    kappa: float,
    var_kappa: float,
    bank: np.ndarray,
    halfw: np.ndarray,
    cf: float,
) -> tuple[float, int]:
    """Numpy twin of :func:`shape_at` (slices, one per template)."""
    hmax = (bank.shape[1] - 1) // 2
    best, best_t = 0.0, 0
    for t in range(bank.shape[0]):
        lo, hi = max(0, c - int(halfw[t])), min(n - 1, c + int(halfw[t]))
        s = slice(lo, hi + 1)
        w = bank[t, lo - c + hmax : hi - c + hmax + 1]
        z = _span_ref(low[s], total[s], b[s], w, p0, var_p0, kappa, var_kappa, cf)
        if abs(z) > abs(best):
            best, best_t = z, t
    return best, best_t


def shape_series_ref(
    low: np.ndarray,
    total: np.ndarray,
    b: np.ndarray,
    p0: float,
    var_p0: float,
    prior_var: float,
    bank: np.ndarray,
    halfw: np.ndarray,
    cf: float,
    section_var: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Numpy twin of :func:`shape_series`: a fit and a span per centre and template."""
    n = low.shape[0]
    z = np.zeros(n)
    idx = np.zeros(n, dtype=np.int64)
    hmax = (bank.shape[1] - 1) // 2
    for c in range(n):
        for t in range(bank.shape[0]):
            lo, hi = max(0, c - int(halfw[t])), min(n - 1, c + int(halfw[t]))
            kappa, var_kappa = softening_fit_ref(low, total, b, n, lo, hi, p0, prior_var)
            s = slice(lo, hi + 1)
            w = bank[t, lo - c + hmax : hi - c + hmax + 1]
            zt = _span_ref(low[s], total[s], b[s], w, p0, var_p0, kappa, var_kappa + section_var, cf)
            if abs(zt) > abs(z[c]):
                z[c], idx[c] = zt, t
    return z, idx
