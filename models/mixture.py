"""A Gaussian mixture density of ordinary traffic, fitted by scikit-learn's EM: deterministic for a seed.

Features are first put on a common scale, robustly and with heavy tails compressed:
``u = asinh((x - median) / scale)`` with ``scale`` the interquartile range over 1.349 (the standard
deviation of a normal), floored so a nearly constant feature cannot blow up. The mixture of ``K`` full-
covariance Gaussians is fitted by ``sklearn.mixture.GaussianMixture``: expectation-maximisation started
from k-means clusters (k-means++ seeding, then Lloyd iterations; seeded), with ``reg`` added to every
covariance's diagonal. The anomaly statistic is the negative log-likelihood of ``u`` (nats): low for
traffic like the training corpus, high for what it never saw.

:func:`nll` is the plain-numpy scorer (no scikit-learn): the twin that the ONNX graph
(:mod:`lanewatch.models.export`) is checked against, which computes the same numbers.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

MIN_SCALE = 1e-3
"""Smallest feature scale (units of the feature) before the asinh compression."""
REG_COVAR = 1e-2
"""Added to every covariance's diagonal (scaled units squared): keeps thin components from collapsing."""


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
    iterations: int = 0
    """EM iterations the fit took."""
    converged: bool = True
    """Whether EM met its tolerance within its iteration limit."""

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


def fit(
    x: np.ndarray,
    components: int,
    seed: int,
    reg: float = REG_COVAR,
    iterations: int = 200,
    tol: float = 1e-6,
    groups: np.ndarray | None = None,
) -> Mixture:
    """Fit the mixture to the rows of ``x`` (ordinary traffic only) with scikit-learn's ``GaussianMixture``.

    Full covariances, started from k-means clusters (k-means++ seeding and Lloyd iterations, seeded by
    ``seed``, as the numpy EM this replaced was started), ``reg``
    added to every covariance's diagonal (``reg_covar``); EM stops after ``iterations`` or when the mean
    log-likelihood gains less than ``tol`` (nats per row). Needs the ``train`` extra; scoring (:func:`nll`)
    needs numpy only.

    ``groups`` (rows,) labels rows that never mix (the kinds of lane: in a group, the flags that name it
    are constant): each group then gets a mixture of ``components`` of its own, fitted to its rows alone,
    and the result joins them, each component's weight times its group's share of the rows. The scaling
    is common to all groups. A component sits at its group's flags with variance ``reg`` there, so a row
    of another group lies many standard deviations from it (the flags differ by the scale of a 0/1 feature).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    x = np.asarray(x, np.float64)
    labels = np.zeros(len(x), np.int64) if groups is None else np.asarray(groups)
    if x.ndim != 2 or labels.shape != (len(x),):
        raise ValueError(f"need a (rows, features) array and one group label per row, got {x.shape}, {labels.shape}")
    members = [labels == g for g in np.unique(labels)]
    if not members or min(int(m.sum()) for m in members) < 2 * components:
        raise ValueError(f"need at least {2 * components} rows in every group, got shape {x.shape}")
    loc, scale = scaling(x)
    u = transform(x, loc, scale)
    parts = []
    for rows in members:
        gm = GaussianMixture(
            components,
            covariance_type="full",
            tol=tol,
            reg_covar=reg,
            max_iter=iterations,
            init_params="kmeans",
            random_state=seed,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            gm.fit(u[rows])
        parts.append((gm.weights_ * rows.mean(), gm))
    return Mixture(
        loc,
        scale,
        np.concatenate([w for w, _ in parts]),
        np.concatenate([gm.means_ for _, gm in parts]),
        np.concatenate([gm.precisions_cholesky_ for _, gm in parts]),
        max(int(gm.n_iter_) for _, gm in parts),
        all(bool(gm.converged_) for _, gm in parts),
    )


def nll(model: Mixture, x: np.ndarray) -> np.ndarray:
    """Negative log-likelihood (nats) of each row of ``x`` under the mixture, in the scaled space."""
    u = transform(np.atleast_2d(x), model.loc, model.scale)
    return -_logsumexp(_log_components(u, model.means, model.precision_chol, model.log_norm))
