"""A Gaussian mixture density of ordinary traffic, fitted by scikit-learn's EM: deterministic for a seed.

Features are first put on a common scale, robustly and with heavy tails compressed:
``u = asinh((x - median) / scale)`` with ``scale`` the interquartile range over 1.349 (the standard
deviation of a normal), floored so a nearly constant feature cannot blow up. The mixture of ``K`` full-
covariance Gaussians is fitted by ``sklearn.mixture.GaussianMixture``: expectation-maximisation started
from k-means clusters (k-means++ seeding, then Lloyd iterations; seeded), with ``reg`` added to every
covariance's diagonal, from ``N_INIT`` seeded starts (the best on its own rows is kept). :func:`select`
chooses the number of components of each group by the likelihood of rows held back from the fit. The
anomaly statistic is the negative log-likelihood of ``u`` (nats): low for traffic like the training corpus,
high for what it never saw.

:func:`nll` is the plain-numpy scorer (no scikit-learn): the twin that the ONNX graph
(:mod:`lanewatch.models.export`) is checked against, which computes the same numbers.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sklearn.mixture import GaussianMixture

MIN_SCALE = 1e-3
"""Smallest feature scale (units of the feature) before the asinh compression."""
REG_COVAR = 1e-2
"""Added to every covariance's diagonal (scaled units squared): keeps thin components from collapsing."""
TOL = 1e-3
"""EM stops when the mean log-likelihood gains less than this (nats per row): scikit-learn's default."""
N_INIT = 2
"""EM runs from this many seeded k-means starts and keeps the one that fits its own rows best, so that one start
does not decide the fit."""


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


def _fit_one(
    u: np.ndarray, components: int, seed: int, reg: float, iterations: int, tol: float, n_init: int
) -> GaussianMixture:
    """scikit-learn's fit of the rows ``u`` (scaled space), on one BLAS thread: the same numbers on any machine."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture
    from threadpoolctl import threadpool_limits

    gm = GaussianMixture(
        components,
        covariance_type="full",
        tol=tol,
        reg_covar=reg,
        max_iter=iterations,
        n_init=n_init,
        init_params="kmeans",
        random_state=seed,
    )
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return gm.fit(u)


def _fit_many(
    jobs: Sequence[tuple[np.ndarray, int]],
    seed: int,
    reg: float,
    iterations: int,
    tol: float,
    n_init: int,
    workers: int,
) -> list[GaussianMixture]:
    """:func:`_fit_one` of each (rows, components) job, in ``workers`` processes; results in job order."""
    args = [(u, k, seed, reg, iterations, tol, n_init) for u, k in jobs]
    if workers <= 1 or len(jobs) <= 1:
        return [_fit_one(*a) for a in args]
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        # Largest fits first, so that the last one to finish is a small one.
        order = sorted(range(len(args)), key=lambda i: -args[i][0].shape[0] * args[i][1])
        futures = {i: pool.submit(_fit_one, *args[i]) for i in order}
        return [futures[i].result() for i in range(len(args))]


def _group_rows(x: np.ndarray, groups: np.ndarray | None) -> tuple[np.ndarray, list[np.ndarray]]:
    """The rows as float64 and a mask of each group's rows, groups in ascending label order."""
    x = np.asarray(x, np.float64)
    labels = np.zeros(len(x), np.int64) if groups is None else np.asarray(groups)
    if x.ndim != 2 or labels.shape != (len(x),):
        raise ValueError(f"need a (rows, features) array and one group label per row, got {x.shape}, {labels.shape}")
    return x, [labels == g for g in np.unique(labels)]


def fit(
    x: np.ndarray,
    components: int | Sequence[int],
    seed: int,
    reg: float = REG_COVAR,
    iterations: int = 200,
    tol: float = TOL,
    groups: np.ndarray | None = None,
    n_init: int = N_INIT,
    workers: int = 1,
) -> Mixture:
    """Fit the mixture to the rows of ``x`` (ordinary traffic only) with scikit-learn's ``GaussianMixture``.

    Full covariances, started from k-means clusters (k-means++ seeding and Lloyd iterations, seeded by
    ``seed``; ``n_init`` starts, the best kept), ``reg`` added to every covariance's diagonal (``reg_covar``);
    EM stops after ``iterations`` or when the mean log-likelihood gains less than ``tol`` (nats per row). Needs
    the ``train`` extra; scoring (:func:`nll`) needs numpy only. ``workers`` processes fit the groups; the
    result does not depend on how many.

    ``groups`` (rows,) labels rows that never mix (the kinds of lane: in a group, the flags that name it
    are constant): each group then gets a mixture of its own, fitted to its rows alone, and the result joins
    them, each component's weight times its group's share of the rows. ``components`` is one count for every
    group or one per group (ascending label order). The scaling is common to all groups. A component sits at
    its group's flags with variance ``reg`` there, so a row of another group lies many standard deviations
    from it (the flags differ by the scale of a 0/1 feature).
    """
    x, members = _group_rows(x, groups)
    counts = [components] * len(members) if isinstance(components, int) else [int(k) for k in components]
    if len(counts) != len(members) or min(counts, default=0) < 1:
        raise ValueError(f"need a component count >= 1 for each of the {len(members)} groups, got {components}")
    if not members or any(int(m.sum()) < 2 * k for m, k in zip(members, counts, strict=True)):
        raise ValueError(f"need at least {2 * max(counts)} rows in every group, got shape {x.shape}")
    loc, scale = scaling(x)
    u = transform(x, loc, scale)
    fits = _fit_many(
        [(u[m], k) for m, k in zip(members, counts, strict=True)], seed, reg, iterations, tol, n_init, workers
    )
    shares = [float(m.mean()) for m in members]
    return Mixture(
        loc,
        scale,
        np.concatenate([gm.weights_ * share for gm, share in zip(fits, shares, strict=True)]),
        np.concatenate([gm.means_ for gm in fits]),
        np.concatenate([gm.precisions_cholesky_ for gm in fits]),
        max(int(gm.n_iter_) for gm in fits),
        all(bool(gm.converged_) for gm in fits),
    )


@dataclass(frozen=True)
class Selection:
    """Components per group chosen by the mean log-likelihood of held-back rows."""

    candidates: tuple[int, ...]
    """The component counts tried."""
    log_likelihood: np.ndarray
    """(groups, candidates) mean log-likelihood of each group's held-back rows (nats per row) under the fit of
    its other rows with that many components."""

    @property
    def chosen(self) -> tuple[int, ...]:
        """Per group, the count whose held-back rows are likeliest (the fewest on a tie)."""
        return tuple(self.candidates[int(np.argmax(row))] for row in self.log_likelihood)


def select(
    x: np.ndarray,
    held_back: np.ndarray,
    candidates: Sequence[int],
    seed: int,
    reg: float = REG_COVAR,
    iterations: int = 200,
    tol: float = TOL,
    groups: np.ndarray | None = None,
    n_init: int = N_INIT,
    workers: int = 1,
) -> Selection:
    """Choose each group's number of components without looking beyond ``x``: fit the rows not ``held_back``
    (bool, rows,) with every count of ``candidates`` (as :func:`fit` would, scaled by those rows alone) and
    score the held-back rows of the same group. ``candidates`` must be ascending."""
    x, members = _group_rows(x, groups)
    held = np.asarray(held_back, bool)
    ks = tuple(int(k) for k in candidates)
    if held.shape != (len(x),) or not ks or list(ks) != sorted(set(ks)) or ks[0] < 1:
        raise ValueError(f"need one held-back flag per row and ascending candidates >= 1, got {held.shape}, {ks}")
    if any(int((m & held).sum()) < 1 or int((m & ~held).sum()) < 2 * ks[-1] for m in members):
        raise ValueError(f"every group needs held-back rows and at least {2 * ks[-1]} rows to fit")
    loc, scale = scaling(x[~held])
    u = transform(x, loc, scale)
    jobs = [(u[m & ~held], k) for m in members for k in ks]
    fits = _fit_many(jobs, seed, reg, iterations, tol, n_init, workers)
    scores = [gm.score(u[m & held]) for m, gm in zip([m for m in members for _ in ks], fits, strict=True)]
    return Selection(ks, np.array(scores, np.float64).reshape(len(members), len(ks)))


def nll(model: Mixture, x: np.ndarray) -> np.ndarray:
    """Negative log-likelihood (nats) of each row of ``x`` under the mixture, in the scaled space."""
    u = transform(np.atleast_2d(x), model.loc, model.scale)
    return -_logsumexp(_log_components(u, model.means, model.precision_chol, model.log_norm))
