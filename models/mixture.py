"""A Gaussian mixture density of ordinary traffic, fitted by EM in numpy: deterministic for a seed.

Features are first put on a common scale, robustly and with heavy tails compressed:
``u = asinh((x - median) / scale)`` with ``scale`` the interquartile range over 1.349 (the standard
deviation of a normal), floored so a nearly constant feature cannot blow up. The mixture of ``K`` full-
covariance Gaussians is started from k-means++ centres (seeded) and refined by expectation-maximisation
with ``reg`` added to every covariance's diagonal. The anomaly statistic is the negative log-likelihood
of ``u`` (nats): low for traffic like the training corpus, high for what it never saw.

:func:`nll` is the plain-numpy scorer; the ONNX graph (:mod:`lanewatch.models.export`) computes the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MIN_SCALE = 1e-3
"""Smallest feature scale (units of the feature) before the asinh compression."""


@dataclass(frozen=True)
class Mixture:
    """A fitted model: the scaling, then the mixture in the scaled space."""

    loc: np.ndarray
    """(D,) feature medians."""
    scale: np.ndarray
    """(D,) feature scales."""
    weights: np.ndarray
    """(K,) component weights, summing to 1."""
    means: np.ndarray
    """(K, D) component means (scaled space)."""
    precision_chol: np.ndarray
    """(K, D, D) upper-triangular P with P P^T the inverse covariance: the Mahalanobis term is |(u - mean) P|^2."""

    @property
    def log_norm(self) -> np.ndarray:
        """(K,) log weight + log det P - D/2 log(2 pi) per component."""
        d = self.means.shape[1]
        logdet = np.log(np.abs(np.diagonal(self.precision_chol, axis1=1, axis2=2))).sum(axis=1)
        return np.log(self.weights) + logdet - 0.5 * d * math.log(2.0 * math.pi)


def scaling(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Robust location and scale of each feature column."""
    loc = np.median(x, axis=0)
    q75, q25 = np.percentile(x, [75, 25], axis=0)
    scale = (q75 - q25) / 1.349
    fallback = 0.1 * x.std(axis=0)
    scale = np.where(scale > MIN_SCALE, scale, np.maximum(fallback, MIN_SCALE))
    return loc, scale


def transform(x: np.ndarray, loc: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The scaled space: asinh of the standardised features."""
    return np.arcsinh((np.asarray(x, np.float64) - loc) / scale)


def _log_components(u: np.ndarray, means: np.ndarray, chol: np.ndarray, log_norm: np.ndarray) -> np.ndarray:
    """(N, K) log weight + log density of each row under each component."""
    out = np.empty((u.shape[0], means.shape[0]))
    for k in range(means.shape[0]):
        y = u @ chol[k] - means[k] @ chol[k]
        out[:, k] = log_norm[k] - 0.5 * np.einsum("ij,ij->i", y, y)
    return out


def _logsumexp(a: np.ndarray) -> np.ndarray:
    m = a.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis=1, keepdims=True)))[:, 0]


def _precision_chol(cov: np.ndarray) -> np.ndarray:
    """Upper-triangular P with P P^T = cov^-1 (from the Cholesky factor of cov)."""
    lower = np.linalg.cholesky(cov)
    inv = np.linalg.solve(lower, np.eye(cov.shape[0]))
    return inv.T


def _kmeans_pp(u: np.ndarray, k: int, rng: np.random.Generator, iterations: int = 20) -> np.ndarray:
    """k-means++ centres refined by Lloyd iterations; (k, D)."""
    centres = [u[int(rng.integers(len(u)))]]
    d2 = ((u - centres[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        p = d2 / d2.sum()
        centres.append(u[int(rng.choice(len(u), p=p))])
        d2 = np.minimum(d2, ((u - centres[-1]) ** 2).sum(axis=1))
    c = np.array(centres)
    for _ in range(iterations):
        dist = (u * u).sum(axis=1)[:, None] - 2.0 * u @ c.T + (c * c).sum(axis=1)[None, :]
        label = np.argmin(dist, axis=1)
        for j in range(k):
            members = u[label == j]
            if len(members):
                c[j] = members.mean(axis=0)
    return c


def fit(
    x: np.ndarray,
    components: int,
    seed: int,
    reg: float = 1e-2,
    iterations: int = 200,
    tol: float = 1e-6,
    step: Callable[[float], None] | None = None,
) -> Mixture:
    """Fit the mixture to the rows of ``x`` (ordinary traffic only).

    EM stops after ``iterations`` or when the mean log-likelihood gains less than ``tol`` (nats per row);
    ``step`` is called with the mean log-likelihood after each iteration.
    """
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or len(x) < 2 * components:
        raise ValueError(f"need a (rows, features) array with at least {2 * components} rows, got shape {x.shape}")
    loc, scale = scaling(x)
    u = transform(x, loc, scale)
    n, d = u.shape
    rng = np.random.default_rng(seed)
    means = _kmeans_pp(u, components, rng)
    dist = (u * u).sum(axis=1)[:, None] - 2.0 * u @ means.T + (means * means).sum(axis=1)[None, :]
    resp = np.zeros((n, components))
    resp[np.arange(n), np.argmin(dist, axis=1)] = 1.0
    previous = -np.inf
    eye = np.eye(d)
    for _ in range(iterations):
        nk = resp.sum(axis=0) + 1e-10
        weights = nk / n
        means = (resp.T @ u) / nk[:, None]
        chol = np.empty((components, d, d))
        for k in range(components):
            c = u - means[k]
            cov = (resp[:, k, None] * c).T @ c / nk[k] + reg * eye
            chol[k] = _precision_chol(cov)
        model = Mixture(loc, scale, weights, means, chol)
        log_p = _log_components(u, means, chol, model.log_norm)
        total = _logsumexp(log_p)
        mean_ll = float(total.mean())
        resp = np.exp(log_p - total[:, None])
        if step is not None:
            step(mean_ll)
        if mean_ll - previous < tol:
            break
        previous = mean_ll
    return model


def nll(model: Mixture, x: np.ndarray) -> np.ndarray:
    """Negative log-likelihood (nats) of each row of ``x`` under the mixture, in the scaled space."""
    u = transform(np.atleast_2d(x), model.loc, model.scale)
    return -_logsumexp(_log_components(u, model.means, model.precision_chol, model.log_norm))
