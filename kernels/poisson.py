"""Count tails for the neutron test: log survival function, alarm thresholds, sliding window sums.

A window's background count is Poisson with mean ``mu`` when the mean is known. When ``mu`` is only an
estimate with relative variance ``relvar`` (a background tracked from a few readings), the count is
negative binomial: Poisson over a gamma-distributed mean, variance ``mu + relvar mu^2``; ``relvar = 0``
is the Poisson case. ``count_threshold(mu, relvar, log_alpha)`` is the smallest count ``k`` with
``P(X >= k) <= alpha``; a window alarms when its count reaches it. Everything is in log space, so
false-alarm probabilities of 1e-12 at means of thousands of counts are exact to rounding.

Steel in a vehicle adds cosmic-ray spallation neutrons (the He-3 "ship effect"), in bursts, so the
counts are overdispersed. ``ship_window_null`` gives a window's null count as a negative binomial of
matched mean and variance: with ``B`` the background count of the window, ``H`` its summed ship
covariate (suppression above the knee times seconds, see :mod:`lanewatch.edge.lane.detect`), ``rate`` the expected
ship counts per unit of covariate, ``rate_relvar`` the relative variance of that rate from vehicle to
vehicle and ``dispersion`` the variance-to-mean ratio of the bursts::

    mean     = B + rate H
    variance = B + relvar B^2 + dispersion rate H + rate_relvar (rate H)^2

and the negative binomial's relative variance is ``(variance - mean) / mean^2`` (never below 0).
"""

from __future__ import annotations

import math

import numba
import numpy as np

_SERIES_EPS = 1e-17
_SUM_ABOVE = 1e4
"""Negative binomial size above which the rising factorial is summed term by term (see ``_log_pmf``)."""
_MAX_TERMS = 1_000_000


@numba.njit(cache=True)
def _log_pmf(k: int, mu: float, relvar: float) -> float:
    if relvar <= 0.0:
        return k * math.log(mu) - mu - math.lgamma(k + 1.0)
    a = 1.0 / relvar
    # log Gamma(k + a) - log Gamma(a) - k log a: as a sum when a is large (near-Poisson), where the
    # difference of log-gammas would lose about log10(a) digits.
    if a > max(k, _SUM_ABOVE):
        rising = 0.0
        for j in range(k):
            rising += math.log1p(j / a)
    else:
        rising = math.lgamma(k + a) - math.lgamma(a) - k * math.log(a)
    return rising - math.lgamma(k + 1.0) + k * math.log(mu) - (k + a) * math.log1p(mu / a)


@numba.njit(cache=True)
def _up_ratio(j: int, mu: float, relvar: float) -> float:
    """pmf(j + 1) / pmf(j)."""
    if relvar <= 0.0:
        return mu / (j + 1.0)
    a = 1.0 / relvar
    return (j + a) * (mu / (a + mu)) / (j + 1.0)


@numba.njit(cache=True)
def _mode(mu: float, relvar: float) -> float:
    if relvar <= 0.0:
        return math.floor(mu)
    a = 1.0 / relvar
    return max(0.0, math.floor((a - 1.0) * mu / a))


@numba.njit(cache=True)
def count_log_sf(k: int, mu: float, relvar: float) -> float:
    """``log P(X >= k)`` for a Poisson (``relvar = 0``) or negative binomial count of mean ``mu``."""
    if k <= 0:
        return 0.0
    if mu <= 0.0:
        return -np.inf
    if k > _mode(mu, relvar):
        # Above the mode every ratio pmf(j+1)/pmf(j) is below 1: sum the tail from k upwards.
        term = 1.0
        total = 1.0
        j = k
        for _ in range(_MAX_TERMS):
            term *= _up_ratio(j, mu, relvar)
            total += term
            j += 1
            if term <= _SERIES_EPS * total:
                break
        return _log_pmf(k, mu, relvar) + math.log(total)
    # At or below the mode: P(X >= k) = 1 - P(X <= k - 1), summed from k - 1 downwards.
    term = 1.0
    total = 1.0
    j = k - 1
    while j > 0 and term > _SERIES_EPS * total:
        term /= _up_ratio(j - 1, mu, relvar)
        total += term
        j -= 1
    log_cdf = _log_pmf(k - 1, mu, relvar) + math.log(total)
    return math.log1p(-math.exp(min(log_cdf, 0.0)))


@numba.njit(cache=True)
def count_threshold(mu: float, relvar: float, log_alpha: float) -> int:
    """Smallest ``k >= 1`` with ``log P(X >= k) <= log_alpha`` (galloping, then bisection)."""
    if count_log_sf(1, mu, relvar) <= log_alpha:
        return 1
    lo = 1
    hi = int(mu) + 2
    while count_log_sf(hi, mu, relvar) > log_alpha:
        lo = hi
        hi *= 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count_log_sf(mid, mu, relvar) > log_alpha:
            lo = mid
        else:
            hi = mid
    return hi


@numba.njit(cache=True)
def window_sum_at(x: np.ndarray, i: int, m: int) -> float:
    """Sum of the ``m`` samples ending at ``i`` (fewer at the start)."""
    s = 0.0
    for j in range(max(0, i - m + 1), i + 1):
        s += x[j]
    return s


@numba.njit(cache=True)
def ship_window_null(
    h: np.ndarray,
    i: int,
    m: int,
    mu: float,
    relvar: float,
    rate: float,
    rate_relvar: float,
    dispersion: float,
) -> tuple[float, float]:
    """``(mean, relvar)`` of the null count of the ``m`` samples ending at ``i`` (fewer at the start).

    ``h`` is the ship covariate per sample, ``mu`` the background mean per sample (relative variance
    ``relvar`` of its estimate); see the module docstring.
    """
    k = min(i + 1, m)
    cov = 0.0
    for j in range(i - k + 1, i + 1):
        cov += h[j]
    b = mu * k
    ship = rate * cov
    mean = b + ship
    variance = b + relvar * b * b + dispersion * ship + rate_relvar * ship * ship
    if mean <= 0.0:
        return 0.0, 0.0
    return mean, max(variance - mean, 0.0) / (mean * mean)


@numba.njit(cache=True)
def ship_window_log_sf(
    x: np.ndarray,
    h: np.ndarray,
    m: int,
    mu: float,
    relvar: float,
    rate: float,
    rate_relvar: float,
    dispersion: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every window of ``m`` samples (all of them when fewer): ``log P(X >= count)`` under the ship-effect null.

    Returns ``(log_sf, mean, relvar)`` per window; entry ``k`` is the window ending at ``k + m - 1``.
    """
    n = x.shape[0]
    m = min(m, n)
    out = np.empty(n - m + 1)
    means = np.empty(n - m + 1)
    relvars = np.empty(n - m + 1)
    s = 0.0
    for i in range(n):
        s += x[i]
        if i >= m:
            s -= x[i - m]
        if i >= m - 1:
            mean, r = ship_window_null(h, i, m, mu, relvar, rate, rate_relvar, dispersion)
            out[i - m + 1] = count_log_sf(int(s + 0.5), mean, r)
            means[i - m + 1] = mean
            relvars[i - m + 1] = r
    return out, means, relvars


_lgamma = np.frompyfunc(math.lgamma, 1, 1)


def _log_tails_ref(mu: float, relvar: float, top: int) -> np.ndarray:
    """log P(X >= k) for k = 0..top from explicit pmf terms over a range well past ``top``."""
    sd = math.sqrt(mu + relvar * mu * mu)
    j = np.arange(0, int(max(top, mu) + 60 + 60 * sd) + 1, dtype=np.float64)
    lg = _lgamma(j + 1).astype(np.float64)
    if relvar <= 0:
        logs = j * np.log(mu) - mu - lg
    else:
        a = 1 / relvar
        rising = np.concatenate(([0.0], np.cumsum(np.log1p(j[:-1] / a))))
        logs = rising - lg + j * np.log(mu) - (j + a) * np.log1p(mu / a)
    tails = np.logaddexp.accumulate(logs[::-1])[::-1]
    heads = np.concatenate(([-np.inf], np.logaddexp.accumulate(logs)[:-1]))
    with np.errstate(divide="ignore"):
        exact = np.log1p(-np.exp(np.minimum(heads, 0.0)))
    return np.where(tails < math.log(0.5), tails, exact)[: top + 1]


def count_log_sf_ref(k: int, mu: float, relvar: float) -> float:
    """Numpy twin of :func:`count_log_sf`: explicit pmf terms, summed with logaddexp."""
    if k <= 0:
        return 0.0
    if mu <= 0:
        return float("-inf")
    return float(_log_tails_ref(mu, relvar, k)[k])


def count_threshold_ref(mu: float, relvar: float, log_alpha: float) -> int:
    """Numpy twin of :func:`count_threshold`: the first crossing in a vector of log tails."""
    top = int(mu + 60 + 80 * math.sqrt(mu + relvar * mu * mu))
    tails = _log_tails_ref(mu, relvar, top)
    crossed = np.flatnonzero(tails[1:] <= log_alpha)
    if crossed.size == 0:
        raise ValueError(f"no threshold up to {top} for mu={mu}, relvar={relvar}, log_alpha={log_alpha}")
    return int(crossed[0]) + 1


def window_sum_at_ref(x: np.ndarray, i: int, m: int) -> float:
    """Numpy twin of :func:`window_sum_at`."""
    return float(np.sum(x[max(0, i - m + 1) : i + 1]))


def ship_window_null_ref(
    h: np.ndarray, i: int, m: int, mu: float, relvar: float, rate: float, rate_relvar: float, dispersion: float
) -> tuple[float, float]:
    """Numpy twin of :func:`ship_window_null`."""
    k = min(i + 1, m)
    b = mu * k
    ship = rate * float(np.sum(h[i - k + 1 : i + 1]))
    mean = b + ship
    variance = b + relvar * b**2 + dispersion * ship + rate_relvar * ship**2
    if mean <= 0:
        return 0.0, 0.0
    return mean, max(variance - mean, 0.0) / mean**2


def ship_window_log_sf_ref(
    x: np.ndarray, h: np.ndarray, m: int, mu: float, relvar: float, rate: float, rate_relvar: float, dispersion: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Numpy twin of :func:`ship_window_log_sf`: convolved window sums, moments from the summed covariate."""
    m = min(m, x.shape[0])
    sums = np.convolve(np.asarray(x, dtype=np.float64), np.ones(m), mode="valid")
    ship = rate * np.convolve(np.asarray(h, dtype=np.float64), np.ones(m), mode="valid")
    b = mu * m
    mean = b + ship
    variance = b + relvar * b**2 + dispersion * ship + rate_relvar * ship**2
    relvars = np.where(mean > 0, np.maximum(variance - mean, 0.0) / np.where(mean > 0, mean, 1.0) ** 2, 0.0)
    mean = np.maximum(mean, 0.0)
    log_sf = np.array([count_log_sf_ref(int(s + 0.5), mn, r) for s, mn, r in zip(sums, mean, relvars, strict=True)])
    return log_sf, mean, relvars
