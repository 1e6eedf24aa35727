"""Count tails for the neutron test: log survival function, alarm thresholds, sliding window sums.

A window's background count is Poisson with mean ``mu`` when the mean is known. When ``mu`` is only an
estimate with relative variance ``relvar`` (a background tracked from a few readings), the count is
negative binomial: Poisson over a gamma-distributed mean, variance ``mu + relvar mu^2``; ``relvar = 0``
is the Poisson case. ``count_threshold(mu, relvar, log_alpha)`` is the smallest count ``k`` with
``P(X >= k) <= alpha``; a window alarms when its count reaches it. Everything is in log space, so
false-alarm probabilities of 1e-12 at means of thousands of counts are exact to rounding.

Steel in a vehicle adds cosmic-ray spallation neutrons (the He-3 "ship effect"), in bursts, so the
counts are overdispersed. ``ship_log_sf(k, b, b_relvar, ship, ship_relvar, dispersion)`` is a window's tail
when ``b`` counts of background (a negative binomial, relative variance ``b_relvar``) add to ``ship`` counts
of bursts: a negative binomial number of them (relative variance ``ship_relvar``: the rate varies from vehicle to
vehicle) of geometric size on 1, 2, ... with ``p = 2 / (dispersion + 1)``, so that a Poisson number of them has
variance ``dispersion`` times its mean. Where bursts are rare their tail, ``lambda (1 - p)^(k - 1)``, is far longer
than that of a negative binomial of the same mean and variance. It is computed exactly (Panjer's recursion for the
bursts, convolved with the background) up to a window mean of ``_EXACT_MAX_MEAN``; beyond, and without bursts, the
negative binomial of matched moments stands::

    mean     = b + ship
    variance = b + b_relvar b^2 + dispersion ship + ship_relvar ship^2

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


_EXACT_MAX_MEAN = 1000.0
"""Window mean (counts) above which the compound tail gives way to the negative binomial of matched moments: the
pmf's first term, exp(-mean), would underflow near 700, and at such means the burst tail is far out."""
_TAIL_FLOOR = 1e-300
"""Smallest tail probability the compound null resolves (its pmf is summed in linear space): smaller ones are
reported as this, far beyond any threshold."""
_EXACT_FLOOR = 1e-20
"""Relative size of the last pmf term computed to the tail it ends (the rest is geometric and negligible)."""


@numba.njit(cache=True)
def _burst_p(dispersion: float) -> float:
    """Parameter of the geometric burst size (1, 2, ...) whose variance-to-mean ratio of a Poisson number of bursts is
    ``dispersion``: ``(2 - p) / p``."""
    return 2.0 / (max(dispersion, 1.0) + 1.0)


@numba.njit(cache=True)
def _panjer_count(lam: float, relvar: float) -> tuple[float, float, float]:
    """Panjer's ``(a, b)`` class of a number of bursts of mean ``lam``: Poisson (``relvar`` 0) or negative binomial of
    relative variance ``relvar``; returns ``a``, ``b`` and the probability of none."""
    if relvar <= 0.0:
        return 0.0, lam, math.exp(-lam)
    alpha = 1.0 / relvar
    q = lam / (lam + alpha)
    return q, (alpha - 1.0) * q, math.exp(-alpha * math.log1p(lam * relvar))


@numba.njit(cache=True)
def _ship_parts(
    top: int, b: float, b_relvar: float, ship: float, ship_relvar: float, p: float
) -> tuple[np.ndarray, np.ndarray]:
    """pmfs at 0..top of the background (negative binomial) and of the bursts (negative binomial number, geometric
    sizes)."""
    f = np.empty(top + 1)
    if b_relvar <= 0.0:
        f[0] = math.exp(-b)
    else:
        f[0] = math.exp(-math.log1p(b * b_relvar) / b_relvar)
    for j in range(top):
        f[j + 1] = f[j] * _up_ratio(j, b, b_relvar)
    lam, r = ship * p, 1.0 - p
    # Panjer's recursion, s(k) = sum_j (a + c j / k) g(j) s(k - j), in O(1) a step for geometric g(j) = p r^(j-1):
    # t(k) = sum_j g(j) s(k - j), u(k) = sum_j j g(j) s(k - j).
    a, c, s0 = _panjer_count(lam, ship_relvar)
    s = np.empty(top + 1)
    s[0] = s0
    t = 0.0
    u = 0.0
    for k in range(1, top + 1):
        u = p * s[k - 1] + r * (u + t)
        t = p * s[k - 1] + r * t
        s[k] = a * t + c / k * u
    return f, s


@numba.njit(cache=True)
def _moments(b: float, b_relvar: float, ship: float, ship_relvar: float, dispersion: float) -> tuple[float, float]:
    """Mean and negative binomial relative variance of matched moments (the module docstring's)."""
    mean = b + ship
    variance = b + b_relvar * b * b + dispersion * ship + ship_relvar * ship * ship
    return mean, max(variance - mean, 0.0) / (mean * mean)


@numba.njit(cache=True)
def _ship_sf(k: int, b: float, b_relvar: float, ship: float, ship_relvar: float, dispersion: float) -> float:
    """``P(X >= k) = P(B >= k) + sum_{j < k} P(B = j) P(S >= k - j)``, B the background and S the bursts, with both
    pmfs computed until their last terms are negligible (sums of positive terms only, summed from the far end)."""
    mean, relvar = _moments(b, b_relvar, ship, ship_relvar, dispersion)
    top = max(k, int(mean + 10.0 * math.sqrt(mean + relvar * mean * mean)) + 20)
    while True:
        f, s = _ship_parts(top, b, b_relvar, ship, ship_relvar, _burst_p(dispersion))
        s_tail = np.empty(top + 2)
        s_tail[top + 1] = 0.0
        for j in range(top, -1, -1):
            s_tail[j] = s_tail[j + 1] + s[j]
        f_tail = 0.0
        for j in range(top, k - 1, -1):
            f_tail += f[j]
        total = f_tail
        for j in range(k - 1, -1, -1):
            total += f[j] * s_tail[k - j]
        small = _EXACT_FLOOR * total
        if (f[top] <= small and s[top] <= small and f[top] <= f[top - 1] and s[top] <= s[top - 1]) or top > _MAX_TERMS:
            return total
        top *= 2


@numba.njit(cache=True)
def ship_log_sf(k: int, b: float, b_relvar: float, ship: float, ship_relvar: float, dispersion: float) -> float:
    """``log P(X >= k)`` for a window's count: background of mean ``b`` (relative variance ``b_relvar`` of its
    estimate) plus ship-effect bursts of mean ``ship`` counts (see the module docstring)."""
    if k <= 0:
        return 0.0
    mean, relvar = _moments(b, b_relvar, ship, ship_relvar, dispersion)
    if ship <= 0.0 or mean > _EXACT_MAX_MEAN:
        return count_log_sf(k, mean, relvar)
    return math.log(max(_ship_sf(k, b, b_relvar, ship, ship_relvar, dispersion), _TAIL_FLOOR))


@numba.njit(cache=True)
def ship_threshold(
    b: float, b_relvar: float, ship: float, ship_relvar: float, dispersion: float, log_alpha: float
) -> int:
    """Smallest ``k >= 1`` with ``log P(X >= k) <= log_alpha`` for :func:`ship_log_sf`'s count (galloping, then
    bisection)."""
    mean, relvar = _moments(b, b_relvar, ship, ship_relvar, dispersion)
    if ship <= 0.0 or mean > _EXACT_MAX_MEAN:
        return count_threshold(mean, relvar, log_alpha)
    lo = 0
    hi = int(mean) + 2
    while ship_log_sf(hi, b, b_relvar, ship, ship_relvar, dispersion) > log_alpha:
        lo = hi
        hi *= 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ship_log_sf(mid, b, b_relvar, ship, ship_relvar, dispersion) > log_alpha:
            lo = mid
        else:
            hi = mid
    return hi


@numba.njit(cache=True)
def ship_window_log_sf(
    x: np.ndarray,
    m: int,
    b: np.ndarray,
    b_relvar: np.ndarray,
    ship: np.ndarray,
    ship_relvar: np.ndarray,
    dispersion: float,
) -> np.ndarray:
    """Every window of ``m`` samples (all of them when fewer): ``log P(X >= count)`` under :func:`ship_log_sf`'s null
    with the window's own parameters (entry ``k`` of each array: the window starting at sample ``k``)."""
    n = x.shape[0]
    m = min(m, n)
    out = np.empty(n - m + 1)
    s = 0.0
    for i in range(n):
        s += x[i]
        if i >= m:
            s -= x[i - m]
        if i >= m - 1:
            k = i - m + 1
            out[k] = ship_log_sf(int(s + 0.5), b[k], b_relvar[k], ship[k], ship_relvar[k], dispersion)
    return out


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


def ship_log_sf_ref(k: int, b: float, b_relvar: float, ship: float, ship_relvar: float, dispersion: float) -> float:
    """Numpy twin of :func:`ship_log_sf`: the compound pmf by Panjer's general recursion (every burst size), convolved
    with the background's pmf, summed with logaddexp."""
    mean = b + ship
    variance = b + b_relvar * b * b + dispersion * ship + ship_relvar * ship * ship
    relvar = max(variance - mean, 0.0) / mean**2
    if k <= 0:
        return 0.0
    if ship <= 0 or mean > _EXACT_MAX_MEAN:
        return count_log_sf_ref(k, mean, relvar)
    top = int(max(k, mean) + 60 + 60 * math.sqrt(variance) + 60 / _burst_p(dispersion))
    return float(_ship_log_tails_ref(top, b, b_relvar, ship, ship_relvar, dispersion)[k])


def _ship_log_tails_ref(
    top: int, b: float, b_relvar: float, ship: float, ship_relvar: float, dispersion: float
) -> np.ndarray:
    p = _burst_p(dispersion)
    j = np.arange(1, top + 1, dtype=np.float64)
    g = p * (1.0 - p) ** (j - 1.0)
    a, c, s0 = _panjer_count(ship * p, ship_relvar)
    s = np.zeros(top + 1)
    s[0] = s0
    for k in range(1, top + 1):
        s[k] = float(np.sum((a + c * j[:k] / k) * g[:k] * s[k - 1 :: -1][:k]))
    background = np.exp(_log_tails_pmf_ref(b, b_relvar, top))
    pmf = np.convolve(background, s)[: top + 1]
    return np.log(np.maximum(np.cumsum(pmf[::-1])[::-1], _TAIL_FLOOR))


def _log_tails_pmf_ref(mu: float, relvar: float, top: int) -> np.ndarray:
    """log pmf at 0..top of a Poisson (``relvar = 0``) or negative binomial count of mean ``mu``."""
    k = np.arange(0, top + 1, dtype=np.float64)
    lg = _lgamma(k + 1).astype(np.float64)
    if relvar <= 0:
        return k * np.log(mu) - mu - lg
    a = 1 / relvar
    rising = np.concatenate(([0.0], np.cumsum(np.log1p(k[:-1] / a))))
    return rising - lg + k * np.log(mu) - (k + a) * np.log1p(mu / a)


def ship_threshold_ref(
    b: float, b_relvar: float, ship: float, ship_relvar: float, dispersion: float, log_alpha: float
) -> int:
    """Numpy twin of :func:`ship_threshold`: the first crossing in a vector of log tails."""
    mean = b + ship
    variance = b + b_relvar * b * b + dispersion * ship + ship_relvar * ship * ship
    if ship <= 0 or mean > _EXACT_MAX_MEAN:
        return count_threshold_ref(mean, max(variance - mean, 0.0) / mean**2, log_alpha)
    top = int(mean + 60 + 80 * math.sqrt(variance) + 80 / _burst_p(dispersion))
    tails = _ship_log_tails_ref(top, b, b_relvar, ship, ship_relvar, dispersion)
    return int(np.flatnonzero(tails[1:] <= log_alpha)[0]) + 1


def ship_window_log_sf_ref(
    x: np.ndarray,
    m: int,
    b: np.ndarray,
    b_relvar: np.ndarray,
    ship: np.ndarray,
    ship_relvar: np.ndarray,
    dispersion: float,
) -> np.ndarray:
    """Numpy twin of :func:`ship_window_log_sf`: convolved window sums, tails of :func:`ship_log_sf_ref`."""
    m = min(m, x.shape[0])
    sums = np.convolve(np.asarray(x, dtype=np.float64), np.ones(m), mode="valid")
    return np.array(
        [
            ship_log_sf_ref(
                int(s + 0.5), float(b[k]), float(b_relvar[k]), float(ship[k]), float(ship_relvar[k]), dispersion
            )
            for k, s in enumerate(sums)
        ]
    )
