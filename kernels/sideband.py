"""Point-source matched filter against the occupancy's own level: a linear shadow fitted on sidebands.

A vehicle shields part of the natural background, by an amount that changes along it (cab, gap, cargo,
loads of any kind), so the expected background ``e`` (the tracked one, or the occupancy's own estimate)
is off by a level that varies. Around each candidate centre ``c`` the counts of the samples
``[c - R, c + R]`` (within the data; ``R`` = the template's half-width plus ``side`` samples of sideband
either side, at least half of each sideband inside the data: a line cannot be told from a step at the
data's ends, where the vehicle enters and leaves) are fitted as

    x_j = e_j (a + b u_j) + A w_j,     u_j = (j - c) / R

by least squares with weights ``1 / e_j`` (Poisson), ``w`` the point-source template centred at ``c``: the
shadow is a straight line across the window (any level, any slope), the source its amplitude ``A`` on top.
By the Schur complement the source's statistic is

    z = (sum g_j x_j) / sqrt(level * sum g_j^2 e_j),     g_j = w_j / e_j - (1, u_j) M^-1 (sum w, sum w u)

with ``M`` the 2x2 normal matrix of the line (``sum e``, ``sum e u``, ``sum e u^2``) and ``level`` the line's
value at the centre fitted together with the source (at least ``LEVEL_FLOOR``). The level returned is the
line fitted without the source. A Cornish-Fisher
term ``cf * level * sum g^3 e / sd^3`` corrects for the counts' skewness, as in :mod:`lanewatch.kernels.matched`.
A shadow is never exactly a line: with ``roughness`` the fraction of the background by which it may depart
from one over the template's width, the statistic's variance gains ``(roughness * level * sum |g| e)^2``
(z multiplied by ``sd / sqrt(sd^2 + that)``), which outweighs the counting noise where counts are high.
The statistic does not depend on the shadow's level or slope; it loses what of the template a line
explains. Where the sidebands themselves do not follow the line (a step of the shadow in the window, a
patch), their chi-square per degree of freedom ``q`` (residuals of the joint fit, Poisson variance
``level * e``; ``dof`` = sideband samples less 2) widens the statistic's null: z is divided by
``sqrt(1 + max(0, q - 1 - sqrt(2 / dof)))``, so only misfit beyond a standard deviation of chi-square
noise counts. Samples with nothing expected do not count. A window whose line and template cannot be told
apart (``sum g^2 e`` below ``1e-9`` of ``sum w^2 / e``) has no statistic (``-inf``).

A step of the shadow under the template (a cab then a light load, a dense block starting, seen through the
panels' response) is no line: the line across flat sidebands either side passes below the bright side's first
metres, which then stands out as a source would (z 5-8 on benign vehicles of an independent lane generator,
whose sidebands were flat enough to leave ``q`` near 1). So the statistic is the smaller of the line's z and
the template's z against the brighter sideband's level held flat across the template (the step placed at the
template's edge, the worst place for the source; its variance gains that level's uncertainty, the roughness
term and the Cornish-Fisher term as above); both are returned. Under a line this costs what the brighter
side stands above the centre; a step, up or down, anywhere under the template, never raises the statistic above
zero; a brighter stretch between two darker ones (a light block between dense ones) still can, as a source
would.
"""

from __future__ import annotations

import math

import numba
import numpy as np

LEVEL_FLOOR = 0.05
"""Smallest shadow level (fraction of the expected background) used in a statistic's variance."""


@numba.njit(cache=True)
def _side_one(
    x: np.ndarray,
    e: np.ndarray,
    n: int,
    c: int,
    w: np.ndarray,
    h: int,
    hmax: int,
    side: int,
    cf: float,
    roughness: float,
) -> tuple[float, float, float]:
    reach = h + side
    if c - h - side // 2 < 0 or c + h + side // 2 > n - 1:
        return -np.inf, -np.inf, np.nan
    lo = max(0, c - reach)
    hi = min(n - 1, c + reach)
    s11 = 0.0
    s12 = 0.0
    s22 = 0.0
    s13 = 0.0
    s23 = 0.0
    s33 = 0.0
    b1 = 0.0
    b2 = 0.0
    b3 = 0.0
    for j in range(lo, hi + 1):
        ej = e[j]
        if ej <= 0.0:
            continue
        u = (j - c) / reach
        k = j - c
        wj = w[k + hmax] if -h <= k <= h else 0.0
        s11 += ej
        s12 += ej * u
        s22 += ej * u * u
        s13 += wj
        s23 += wj * u
        s33 += wj * wj / ej
        b1 += x[j]
        b2 += x[j] * u
        b3 += x[j] * wj / ej
    det = s11 * s22 - s12 * s12
    if s33 <= 0.0 or det <= 1e-12 * s11 * s22:
        return -np.inf, -np.inf, np.nan
    # Line through the window without the source: (a, b) = M^-1 (b1, b2).
    a = (s22 * b1 - s12 * b2) / det
    # Projection coefficients of the template on the line: (p1, p2) = M^-1 (s13, s23).
    p1 = (s22 * s13 - s12 * s23) / det
    p2 = (s11 * s23 - s12 * s13) / det
    norm = s33 - (p1 * s13 + p2 * s23)
    if norm <= 1e-9 * s33:
        return -np.inf, -np.inf, a
    num = b3 - (p1 * b1 + p2 * b2)
    amplitude = num / norm
    line_a = a - p1 * amplitude
    line_b = (s11 * b2 - s12 * b1) / det - p2 * amplitude
    level = max(line_a, LEVEL_FLOOR)
    g3e = 0.0
    gae = 0.0
    chi2 = 0.0
    dof = -2
    for j in range(lo, hi + 1):
        ej = e[j]
        if ej <= 0.0:
            continue
        u = (j - c) / reach
        k = j - c
        wj = w[k + hmax] if -h <= k <= h else 0.0
        g = wj / ej - p1 - p2 * u
        g3e += g * g * g * ej
        gae += abs(g) * ej
        if k < -h or k > h:
            r = x[j] - ej * (line_a + line_b * u)
            chi2 += r * r / (level * ej)
            dof += 1
    poisson = math.sqrt(level * norm)
    z = num / poisson - cf * level * g3e / (poisson * poisson * poisson)
    z *= poisson / math.sqrt(level * norm + (roughness * level * gae) ** 2)
    if dof > 0:
        z /= math.sqrt(1.0 + max(0.0, chi2 / dof - 1.0 - math.sqrt(2.0 / dof)))
    return z, _step_z(x, e, c, w, h, hmax, lo, hi, cf, roughness), a


@numba.njit(cache=True)
def _step_z(
    x: np.ndarray,
    e: np.ndarray,
    c: int,
    w: np.ndarray,
    h: int,
    hmax: int,
    lo: int,
    hi: int,
    cf: float,
    roughness: float,
) -> float:
    """z of the template against the brighter sideband's level held flat across it (module docstring)."""
    # Left and right sidebands' counts and expected counts; the template's sums over the window.
    xl = el = xr = er = num = s1 = s2 = s3 = 0.0
    for j in range(lo, hi + 1):
        ej = e[j]
        if ej <= 0.0:
            continue
        k = j - c
        if k < -h:
            xl += x[j]
            el += ej
        elif k > h:
            xr += x[j]
            er += ej
        else:
            wj = w[k + hmax]
            num += wj * x[j] / ej
            s1 += wj
            s2 += wj * wj / ej
            s3 += wj * wj * wj / (ej * ej)
    if el <= 0.0 or er <= 0.0 or s2 <= 0.0:
        return np.inf
    top, top_e = (xl / el, el) if xl / el >= xr / er else (xr / er, er)
    top = max(top, LEVEL_FLOOR)
    poisson = math.sqrt(top * s2)
    sd = math.sqrt(top * s2 + s1 * s1 * top / top_e + (roughness * top * s1) ** 2)
    return (num - top * s1) / sd - cf * top * s3 / (poisson * poisson * sd)


@numba.njit(cache=True)
def sideband_series(
    x: np.ndarray, e: np.ndarray, bank: np.ndarray, halfw: np.ndarray, side: int, cf: float, roughness: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """z of every template (rows of ``bank``, half-widths ``halfw``) at every centre against the line, its z against
    the brighter sideband held flat (the statistic is the smaller), and the line's level at the centre (observed
    over expected, fitted without the source; NaN where the line is undetermined): all (templates, n)."""
    n = x.shape[0]
    hmax = (bank.shape[1] - 1) // 2
    out = np.empty((bank.shape[0], n))
    step = np.empty((bank.shape[0], n))
    level = np.empty((bank.shape[0], n))
    for t in range(bank.shape[0]):
        for c in range(n):
            out[t, c], step[t, c], level[t, c] = _side_one(x, e, n, c, bank[t], halfw[t], hmax, side, cf, roughness)
    return out, step, level


def sideband_series_ref(
    x: np.ndarray, e: np.ndarray, bank: np.ndarray, halfw: np.ndarray, side: int, cf: float, roughness: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Numpy twin of :func:`sideband_series` (a weighted least-squares solve per centre and template)."""
    x = np.asarray(x, dtype=np.float64)
    e = np.asarray(e, dtype=np.float64)
    n = x.shape[0]
    hmax = (bank.shape[1] - 1) // 2
    out = np.full((bank.shape[0], n), -np.inf)
    step = np.full((bank.shape[0], n), -np.inf)
    levels = np.full((bank.shape[0], n), np.nan)
    for t in range(bank.shape[0]):
        h = int(halfw[t])
        reach = h + side
        for c in range(n):
            if c - h - side // 2 < 0 or c + h + side // 2 > n - 1:
                continue
            j = np.arange(max(0, c - reach), min(n - 1, c + reach) + 1)
            j = j[e[j] > 0]
            if j.size == 0:
                continue
            k = j - c
            w = np.where(np.abs(k) <= h, bank[t, np.clip(k, -h, h) + hmax], 0.0)
            u = k / reach
            line = np.stack([e[j], e[j] * u], axis=1)
            m = line.T @ (line / e[j][:, None])
            if w @ (w / e[j]) <= 0 or np.linalg.det(m) <= 1e-12 * m[0, 0] * m[1, 1]:
                continue
            coef = np.linalg.solve(m, line.T @ (x[j] / e[j]))
            levels[t, c] = coef[0]
            p = np.linalg.solve(m, line.T @ (w / e[j]))
            g = w / e[j] - p[0] - p[1] * u
            norm = float(g @ (g * e[j]))
            if norm <= 1e-9 * float(w @ (w / e[j])):
                continue
            amplitude = float(g @ x[j]) / norm
            line = coef - p * amplitude
            level = max(float(line[0]), LEVEL_FLOOR)
            sd = math.sqrt(level * norm)
            z = float(g @ x[j]) / sd - cf * level * float(g**3 @ e[j]) / sd**3
            z *= sd / math.sqrt(level * norm + (roughness * level * float(np.abs(g) @ e[j])) ** 2)
            outside = np.abs(k) > h
            dof = int(outside.sum()) - 2
            if dof > 0:
                fit = e[j][outside] * (line[0] + line[1] * u[outside])
                chi2 = float(np.sum((x[j][outside] - fit) ** 2 / (level * e[j][outside])))
                z /= math.sqrt(1.0 + max(0.0, chi2 / dof - 1.0 - math.sqrt(2.0 / dof)))
            out[t, c] = z
            step[t, c] = _step_z_ref(x[j], e[j], w, k, h, cf, roughness)
    return out, step, levels


def _step_z_ref(
    x: np.ndarray, e: np.ndarray, w: np.ndarray, k: np.ndarray, h: int, cf: float, roughness: float
) -> float:
    """Numpy twin of :func:`_step_z` over one window's samples with something expected (offsets ``k`` from the
    centre, template values ``w``)."""
    left, right, inside = k < -h, k > h, np.abs(k) <= h
    el, er = float(e[left].sum()), float(e[right].sum())
    wi, ei = w[inside], e[inside]
    s1, s2 = float(wi.sum()), float(wi @ (wi / ei))
    if el <= 0 or er <= 0 or s2 <= 0:
        return math.inf
    levels = (float(x[left].sum()) / el, float(x[right].sum()) / er)
    top, top_e = (levels[0], el) if levels[0] >= levels[1] else (levels[1], er)
    top = max(top, LEVEL_FLOOR)
    sd = math.sqrt(top * s2 + s1 * s1 * top / top_e + (roughness * top * s1) ** 2)
    z = float(wi @ (x[inside] / ei) - top * s1) / sd
    return z - cf * top * float(np.sum(wi**3 / ei**2)) / (top * s2 * sd)


def projected_rho1(template: np.ndarray, side: int) -> float:
    """Lag-1 autocorrelation of a template's sideband statistic in the interior, under a constant background.

    ``template`` is the template trimmed to its own width (odd length); the window adds ``side`` samples
    either side and the weights are the template less its projection on a line across the window.
    """
    h = (template.shape[0] - 1) // 2
    reach = h + side
    w = np.zeros(2 * reach + 1)
    w[side : side + template.shape[0]] = template
    u = np.arange(-reach, reach + 1) / reach
    line = np.stack([np.ones_like(u), u], axis=1)
    g = w - line @ np.linalg.lstsq(line, w, rcond=None)[0]
    # The statistic at the next centre uses the window shifted by one: its weights are g shifted.
    return float(np.dot(g[:-1], g[1:]) / np.dot(g, g))
