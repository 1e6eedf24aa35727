"""Dual-energy X-ray line-scan imaging: calibration, attenuation, material classes, profiles, dense regions, preview.

Data layout
-----------
A line-scan image arrives as uint16 arrays ``(lines, energies, pixels)``. One *line* is one linac
pulse: one column of the displayed image, across the vehicle's travel. A *pixel* is one detector
element along the detector array. ``energies`` is 2 for interleaved dual energy (index
:data:`HIGH` = 0 is the high-energy pulse, :data:`LOW` = 1 the low-energy pulse, as the scanners'
line streams order them) or 1 for a single-energy image (index 0, the only energy, with no
material information). Density and dense regions always use energy 0.

Every ``@njit`` kernel here has a plain-numpy twin named ``<kernel>_ref`` that computes the same
result by array operations (and, for connected components, by a different algorithm), so the
kernels can be checked against it on random inputs and benchmarked against it.

Pipeline, per batch of lines as they arrive (:class:`lanewatch.edge.xray.imaging.ScanProcessor` runs it):

1. :func:`calibrate`: transmission ``T = (raw - dark) / (air - dark)`` per pixel and energy,
   clipped to ``[eps, t_max]``; ``dark`` is the detector signal with the beam off, ``air`` the signal
   with nothing in the beam. A dead pixel (``air <= dark``) reads ``T = 1``: no information, shown
   as air, never as a dense object.
2. :func:`attenuation`: ``A = -ln T`` (dimensionless), the areal-density proxy ``mu * t``: for one
   material ``A = (mu/rho) * rho * t`` with ``mu/rho`` in cm^2/g and ``rho * t`` in g/cm^2.
3. :func:`classify`: one material class per pixel from the two attenuations (below).
4. :func:`column_profile`: per line, the sum and the mean of the attenuation over the pixels; the
   areal density along the vehicle that the lane matches against the radiation time profile.
5. :func:`preview`: a reduced uint8 image, block means of the attenuation (white = air,
   black = ``a_max`` or more).
6. Dense regions: :func:`label_lines` labels the pixels with ``A >= a_dense`` *incrementally*,
   batch by batch, with a union-find over labels that carries the last line of each batch into
   the next, and accumulates per-label statistics (area, attenuation sum and max, class
   histogram, bounding box) as it goes; :func:`resolve_regions` merges the labels at scan end,
   which costs O(labels), not O(pixels), so the scan-end latency does not grow with the image.
   The twin, :func:`regions_ref`, labels the whole accumulated mask at scan end by label
   propagation. Connectivity is 4 (edge neighbours), as ``scipy.ndimage.label``'s default.

Material classes
----------------
At MeV energies photons interact mostly by Compton scattering, whose mass attenuation falls with
energy almost independently of Z; pair production, which grows as Z^2 and with energy above
1.02 MeV, adds attenuation at the high energy for heavy elements. So the ratio

    R = A_low / A_high = ln T_low / ln T_high

is well above 1 for light (organic) matter and falls towards 1 as Z grows. This is the
dual-energy method of Chen et al., Physics Procedia 66 (2015) 68-74, and of the calibrated
"alpha curves" of MeV cargo scanners. The default thresholds are the midpoints between the
ratios of reference materials from NIST XCOM mass attenuation coefficients at effective energies
of 2 MeV (low beam) and 4 MeV (high beam), :data:`MASS_ATTENUATION_CM2_G`:

========== ============ ================ ===========================================
class      R range       reference        Z range (about)
========== ============ ================ ===========================================
organic    R >= 1.42     water 1.45, C 1.46  Z <= 10: food, wood, plastics, explosives
inorganic  1.34 .. 1.42  Al 1.39          Z 11..20: glass, ceramics, light alloys
metal      1.19 .. 1.34  Fe 1.29          Z 21..50: steel, copper, zinc
high-Z     R < 1.19      Pb 1.10          Z > 50: lead, tungsten, uranium (shielding)
========== ============ ================ ===========================================

Real bremsstrahlung beams are polychromatic and harden with thickness, so the measured ratios
are closer to 1 and depend on ``A_high``; a site calibrates them with step wedges of known
materials and sets :class:`lanewatch.edge.xray.imaging.ImagingParams`. Dual energy stays ambiguous
between high-Z and mid-Z behind thick cargo (Lalor & Danagoulian, arXiv 2301.05783): "high-Z" means "attenuates like
high-Z", a reason for review, not an identification. Two classes are not materials:

* ``air``: ``A_high < a_air`` (nothing in the beam, or too little to give a ratio).
* ``unresolvable``: ``A_low > a_dark`` or ``A_high > a_dark`` (transmission below ``exp(-a_dark)``):
  too few photons get through for the ratio to be told apart from its noise. Such pixels are
  dense by definition, and are the ones that can hide anything.

Single-energy images (``energies == 1``) give ``air``, ``unresolvable`` or ``unclassified``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

HIGH = 0
"""Energy index of the high-energy pulse in a dual-energy image (and of the only one in a single-energy image)."""
LOW = 1
"""Energy index of the low-energy pulse in a dual-energy image."""

AIR, ORGANIC, INORGANIC, METAL, HIGH_Z, UNRESOLVABLE, UNCLASSIFIED = range(7)
CLASS_NAMES: tuple[str, ...] = ("air", "organic", "inorganic", "metal", "high_z", "unresolvable", "unclassified")
"""Material class names, indexed by class code (uint8)."""
N_CLASSES = len(CLASS_NAMES)

MASS_ATTENUATION_CM2_G: dict[str, tuple[float, float]] = {
    "water": (0.04942, 0.03403),
    "carbon": (0.04442, 0.03047),
    "aluminium": (0.04324, 0.03105),
    "iron": (0.04265, 0.03312),
    "lead": (0.04606, 0.04197),
}
"""Total mass attenuation coefficients mu/rho (cm^2/g, with coherent scattering), NIST XCOM, at the
effective energies 2 MeV (low beam) and 4 MeV (high beam): ``(low, high)`` per reference material."""

DENSITY_G_CM3: dict[str, float] = {"water": 1.0, "carbon": 2.0, "aluminium": 2.70, "iron": 7.87, "lead": 11.35}
"""Densities (g/cm^3) of the reference materials, to turn a thickness (cm) into an areal density (g/cm^2)."""


def dual_energy_ratio(material: str) -> float:
    """Attenuation ratio ``A_low / A_high`` of a reference material (:data:`MASS_ATTENUATION_CM2_G`)."""
    low, high = MASS_ATTENUATION_CM2_G[material]
    return low / high


# ---- calibration ----------------------------------------------------------------------------------
@njit(cache=True, error_model="numpy")
def calibrate(raw: np.ndarray, dark: np.ndarray, air: np.ndarray, eps: float, t_max: float) -> np.ndarray:
    """Transmission (float32, shape of ``raw``) from raw uint16 ``(lines, energies, pixels)``.

    ``dark`` and ``air`` are float32 ``(energies, pixels)`` detector levels; ``T`` is clipped to
    ``[eps, t_max]``, and a pixel with ``air <= dark`` reads 1.
    """
    lines, energies, pixels = raw.shape
    lo = np.float32(eps)
    hi = np.float32(t_max)
    one = np.float32(1.0)
    out = np.empty((lines, energies, pixels), np.float32)
    for i in range(lines):
        for e in range(energies):
            for p in range(pixels):
                gain = air[e, p] - dark[e, p]
                if gain > 0:
                    t = (np.float32(raw[i, e, p]) - dark[e, p]) / gain
                    out[i, e, p] = min(max(t, lo), hi)
                else:
                    out[i, e, p] = one
    return out


def calibrate_ref(raw: np.ndarray, dark: np.ndarray, air: np.ndarray, eps: float, t_max: float) -> np.ndarray:
    """Numpy twin of :func:`calibrate`."""
    gain = air - dark
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        t = (raw.astype(np.float32) - dark) / gain
    t = np.clip(t, np.float32(eps), np.float32(t_max))
    return np.where(gain > 0, t, np.float32(1.0)).astype(np.float32, copy=False)


# ---- attenuation ----------------------------------------------------------------------------------
@njit(cache=True, error_model="numpy")
def attenuation(transmission: np.ndarray) -> np.ndarray:
    """``A = -ln T`` (float32, same shape): the areal-density proxy mu*t of each pixel and energy."""
    flat = transmission.reshape(-1)
    out = np.empty(flat.size, np.float32)
    for k in range(flat.size):
        out[k] = -np.log(flat[k])
    return out.reshape(transmission.shape)


def attenuation_ref(transmission: np.ndarray) -> np.ndarray:
    """Numpy twin of :func:`attenuation`."""
    return -np.log(transmission)


# ---- material classes -----------------------------------------------------------------------------
@njit(cache=True, error_model="numpy")
def classify(
    att: np.ndarray, a_air: float, a_dark: float, r_organic: float, r_inorganic: float, r_metal: float
) -> np.ndarray:
    """Material class codes (uint8 ``(lines, pixels)``) from attenuation ``(lines, energies, pixels)``.

    Two energies give air / organic / inorganic / metal / high-Z / unresolvable from the ratio
    ``A_low / A_high`` (computed in float64); one energy gives air / unresolvable / unclassified.
    """
    lines, energies, pixels = att.shape
    out = np.empty((lines, pixels), np.uint8)
    lo_e = energies - 1
    for i in range(lines):
        for p in range(pixels):
            a_hi = att[i, HIGH, p]
            a_lo = att[i, lo_e, p]
            if a_lo > a_dark or a_hi > a_dark:
                code = UNRESOLVABLE
            elif a_hi < a_air:
                code = AIR
            elif energies == 1:
                code = UNCLASSIFIED
            else:
                r = np.float64(a_lo) / np.float64(a_hi)
                if r >= r_organic:
                    code = ORGANIC
                elif r >= r_inorganic:
                    code = INORGANIC
                elif r >= r_metal:
                    code = METAL
                else:
                    code = HIGH_Z
            out[i, p] = code
    return out


def classify_ref(
    att: np.ndarray, a_air: float, a_dark: float, r_organic: float, r_inorganic: float, r_metal: float
) -> np.ndarray:
    """Numpy twin of :func:`classify`."""
    a_lo = att[:, -1, :].astype(np.float64)
    a_hi = att[:, HIGH, :].astype(np.float64)
    out = np.full(a_hi.shape, UNCLASSIFIED if att.shape[1] == 1 else HIGH_Z, np.uint8)
    if att.shape[1] == 2:
        with np.errstate(divide="ignore", invalid="ignore"):
            r = a_lo / a_hi
        for code, lowest in ((METAL, r_metal), (INORGANIC, r_inorganic), (ORGANIC, r_organic)):
            out[r >= lowest] = code
    out[a_hi < a_air] = AIR
    out[(a_lo > a_dark) | (a_hi > a_dark)] = UNRESOLVABLE
    return out


# ---- column profile -------------------------------------------------------------------------------
@njit(cache=True, error_model="numpy")
def column_profile(plane: np.ndarray) -> np.ndarray:
    """Per line of an attenuation plane ``(lines, pixels)``: float64 ``(lines, 2)`` of [sum, mean] over pixels."""
    lines, pixels = plane.shape
    out = np.empty((lines, 2), np.float64)
    for i in range(lines):
        s = 0.0
        for p in range(pixels):
            s += plane[i, p]
        out[i, 0] = s
        out[i, 1] = s / pixels if pixels else 0.0
    return out


def column_profile_ref(plane: np.ndarray) -> np.ndarray:
    """Numpy twin of :func:`column_profile`."""
    s = plane.astype(np.float64).sum(axis=1)
    mean = s / plane.shape[1] if plane.shape[1] else np.zeros_like(s)
    return np.stack([s, mean], axis=1)


# ---- preview --------------------------------------------------------------------------------------
@njit(cache=True, error_model="numpy")
def preview(plane: np.ndarray, block_lines: int, block_px: int, a_max: float) -> np.ndarray:
    """Block-mean preview (uint8 ``(ceil(lines/block_lines), ceil(pixels/block_px))``) of an attenuation plane.

    A block's mean attenuation ``m`` shows as ``round(255 * (1 - clip(m / a_max, 0, 1)))``: 255 is air,
    0 is ``a_max`` or denser. Blocks at the right and bottom edges may be partial.
    """
    lines, pixels = plane.shape
    out_l = (lines + block_lines - 1) // block_lines
    out_p = (pixels + block_px - 1) // block_px
    out = np.empty((out_l, out_p), np.uint8)
    colsum = np.empty(pixels, np.float64)
    for bi in range(out_l):
        first = bi * block_lines
        n_l = min(block_lines, lines - first)
        colsum[:] = 0.0
        for i in range(first, first + n_l):
            for p in range(pixels):
                colsum[p] += plane[i, p]
        for bp in range(out_p):
            s = 0.0
            for p in range(bp * block_px, min(pixels, (bp + 1) * block_px)):
                s += colsum[p]
            n = n_l * min(block_px, pixels - bp * block_px)
            c = min(max(s / n / a_max, 0.0), 1.0)
            out[bi, bp] = np.uint8(math.floor(255.0 * (1.0 - c) + 0.5))
    return out


def preview_ref(plane: np.ndarray, block_lines: int, block_px: int, a_max: float) -> np.ndarray:
    """Numpy twin of :func:`preview`."""
    lines, pixels = plane.shape
    line_starts = np.arange(0, lines, block_lines)
    px_starts = np.arange(0, pixels, block_px)
    sums = np.add.reduceat(np.add.reduceat(plane.astype(np.float64), line_starts, axis=0), px_starts, axis=1)
    counts = np.outer(np.diff(np.append(line_starts, lines)), np.diff(np.append(px_starts, pixels)))
    c = np.clip(sums / counts / a_max, 0.0, 1.0)
    return np.floor(255.0 * (1.0 - c) + 0.5).astype(np.uint8)


# ---- dense regions: incremental connected components ---------------------------------------------
@njit(cache=True, error_model="numpy")
def find_root(parent: np.ndarray, x: int) -> int:
    """Root of ``x`` in the union-find forest ``parent``, halving the path on the way."""
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


@njit(cache=True, error_model="numpy")
def label_lines(
    plane: np.ndarray,
    classes: np.ndarray,
    a_dense: float,
    line0: int,
    prev: np.ndarray,
    n_labels: int,
    parent: np.ndarray,
    area: np.ndarray,
    att_sum: np.ndarray,
    att_max: np.ndarray,
    hist: np.ndarray,
    bbox: np.ndarray,
) -> int:
    """Label the dense pixels (``plane >= a_dense``) of one batch of lines; returns the new label count.

    ``plane`` is the attenuation ``(lines, pixels)`` used for density, ``classes`` the class codes
    of the same pixels, ``line0`` the scan line index of the batch's first line. ``prev`` holds the
    labels of the scan's previous line (0 = not dense) and is updated to this batch's last line.
    Each run of dense pixels on a line joins the labels of the runs it touches on the line before
    (union by smaller label, path halving). Labels start at 1; ``parent`` is the union-find forest
    over them. Per label, ``area`` (px),
    ``att_sum``, ``att_max``, ``hist`` (pixels per class) and ``bbox`` (first line, last line,
    first pixel, last pixel) accumulate the pixels labelled while it was a root; they are merged
    into the final roots by :func:`resolve_regions`. The arrays must have room for
    ``n_labels + lines * ceil(pixels / 2) + 1`` labels (:class:`RegionLabeller` grows them).
    """
    lines, pixels = plane.shape
    cur = np.zeros(pixels, np.int64)
    for i in range(lines):
        line = line0 + i
        cur[:] = 0
        p = 0
        while p < pixels:
            if not plane[i, p] >= a_dense:
                p += 1
                continue
            start = p
            while p < pixels and plane[i, p] >= a_dense:
                p += 1
            # One run [start, p): join every label above it, then add its pixels to the root.
            lab = 0
            for q in range(start, p):
                up = prev[q]
                if up == 0 or (q > start and prev[q - 1] == up):
                    continue
                root = find_root(parent, up)
                if lab == 0:
                    lab = root
                elif root != lab:
                    parent[max(root, lab)] = min(root, lab)
                    lab = min(root, lab)
            if lab == 0:
                n_labels += 1
                lab = n_labels
                parent[lab] = lab
                area[lab] = 0
                att_sum[lab] = 0.0
                att_max[lab] = -np.inf
                hist[lab, :] = 0
                bbox[lab, 0] = line
                bbox[lab, 1] = line
                bbox[lab, 2] = start
                bbox[lab, 3] = p - 1
            s = 0.0
            m = att_max[lab]
            for q in range(start, p):
                a = plane[i, q]
                s += a
                m = max(m, a)
                hist[lab, classes[i, q]] += 1
                cur[q] = lab
            area[lab] += p - start
            att_sum[lab] += s
            att_max[lab] = m
            bbox[lab, 0] = min(bbox[lab, 0], line)
            bbox[lab, 1] = max(bbox[lab, 1], line)
            bbox[lab, 2] = min(bbox[lab, 2], start)
            bbox[lab, 3] = max(bbox[lab, 3], p - 1)
        prev[:] = cur
    return n_labels


@njit(cache=True, error_model="numpy")
def resolve_regions(
    n_labels: int,
    parent: np.ndarray,
    area: np.ndarray,
    att_sum: np.ndarray,
    att_max: np.ndarray,
    hist: np.ndarray,
    bbox: np.ndarray,
) -> np.ndarray:
    """Merge every label's statistics into its final root; returns the roots (int64), one per region.

    Costs O(labels): this is all that is left to do at scan end. A merged label's own statistics are
    zeroed, so resolving again, or labelling more lines afterwards, stays correct.
    """
    for lab in range(1, n_labels + 1):
        root = find_root(parent, lab)
        if root == lab:
            continue
        area[root] += area[lab]
        att_sum[root] += att_sum[lab]
        att_max[root] = max(att_max[root], att_max[lab])
        hist[root, :] += hist[lab, :]
        bbox[root, 0] = min(bbox[root, 0], bbox[lab, 0])
        bbox[root, 1] = max(bbox[root, 1], bbox[lab, 1])
        bbox[root, 2] = min(bbox[root, 2], bbox[lab, 2])
        bbox[root, 3] = max(bbox[root, 3], bbox[lab, 3])
        area[lab] = 0
        att_sum[lab] = 0.0
        att_max[lab] = -np.inf
        hist[lab, :] = 0
    roots = np.empty(n_labels, np.int64)
    n = 0
    for lab in range(1, n_labels + 1):
        if parent[lab] == lab:
            roots[n] = lab
            n += 1
    return roots[:n]


@dataclass
class RegionStats:
    """Statistics of dense regions, one row per region, in a canonical order (first line, first pixel, ...)."""

    area: np.ndarray
    """Pixels per region (int64)."""
    att_sum: np.ndarray
    """Sum of the density attenuation over the region (float64)."""
    att_max: np.ndarray
    """Largest attenuation in the region (float32)."""
    hist: np.ndarray
    """Pixels per material class (int64, regions x N_CLASSES)."""
    bbox: np.ndarray
    """First line, last line, first pixel, last pixel (int64, regions x 4), inclusive."""

    def __len__(self) -> int:
        return len(self.area)

    def sorted(self) -> RegionStats:
        """The same regions in canonical order: by bounding box, then area."""
        order = np.lexsort((self.area, self.bbox[:, 3], self.bbox[:, 1], self.bbox[:, 2], self.bbox[:, 0]))
        return RegionStats(
            self.area[order], self.att_sum[order], self.att_max[order], self.hist[order], self.bbox[order]
        )


def components_ref(mask: np.ndarray) -> np.ndarray:
    """4-connected component labels (int64, 0 = background) of a boolean mask, by label propagation.

    Each pixel starts with its own flat index + 1; rounds of (neighbour minimum, hooking the
    pixel a label points to, pointer jumping) run until no label changes. A label always names a
    pixel of the same component whose label is no larger, so the fixed point gives each component
    the smallest index + 1 of its pixels.
    """
    lines, pixels = mask.shape
    n = lines * pixels
    on = mask.reshape(-1)
    big = n + 1
    lab = np.where(on, np.arange(1, n + 1, dtype=np.int64), 0)
    idx = np.flatnonzero(on)
    while True:
        grid = np.where(mask, lab.reshape(lines, pixels), big)
        nb = grid.copy()
        np.minimum(nb[1:, :], grid[:-1, :], out=nb[1:, :])
        np.minimum(nb[:-1, :], grid[1:, :], out=nb[:-1, :])
        np.minimum(nb[:, 1:], grid[:, :-1], out=nb[:, 1:])
        np.minimum(nb[:, :-1], grid[:, 1:], out=nb[:, :-1])
        nb_on = nb.reshape(-1)[idx]
        if np.array_equal(nb_on, lab[idx]):
            return lab.reshape(lines, pixels)
        np.minimum.at(lab, lab[idx] - 1, nb_on)
        lab[idx] = np.minimum(lab[idx], nb_on)
        while True:
            jumped = lab[lab[idx] - 1]
            if np.array_equal(jumped, lab[idx]):
                break
            lab[idx] = jumped


def regions_ref(plane: np.ndarray, classes: np.ndarray, a_dense: float) -> RegionStats:
    """Numpy twin of :class:`RegionLabeller`: dense-region statistics of a whole scan at once."""
    labels = components_ref(plane >= a_dense)
    on = labels > 0
    comp_ids, comp = np.unique(labels[on], return_inverse=True)
    k = len(comp_ids)
    line_idx, px_idx = np.nonzero(on)
    a = plane[on]
    att_max = np.full(k, -np.inf, np.float32)
    np.maximum.at(att_max, comp, a)
    bbox = np.empty((k, 4), np.int64)
    bbox[:, 0] = np.iinfo(np.int64).max
    bbox[:, 1] = -1
    bbox[:, 2] = np.iinfo(np.int64).max
    bbox[:, 3] = -1
    np.minimum.at(bbox[:, 0], comp, line_idx)
    np.maximum.at(bbox[:, 1], comp, line_idx)
    np.minimum.at(bbox[:, 2], comp, px_idx)
    np.maximum.at(bbox[:, 3], comp, px_idx)
    return RegionStats(
        area=np.bincount(comp, minlength=k).astype(np.int64),
        att_sum=np.bincount(comp, weights=a.astype(np.float64), minlength=k),
        att_max=att_max,
        hist=np.bincount(comp * N_CLASSES + classes[on], minlength=k * N_CLASSES).reshape(k, N_CLASSES),
        bbox=bbox,
    ).sorted()


def raw_from_attenuation(att: np.ndarray, dark: np.ndarray, air: np.ndarray) -> np.ndarray:
    """Forward model: the raw uint16 lines ``(lines, energies, pixels)`` a detector reads for attenuation ``att``.

    ``raw = dark + (air - dark) * exp(-att)``, rounded and clipped to uint16; for simulators and tests.
    """
    raw = dark + (air - dark) * np.exp(-np.asarray(att, np.float64))
    return np.clip(np.rint(raw), 0, 65535).astype(np.uint16)


def material_attenuation(material: str, thickness_cm: float) -> tuple[float, float]:
    """Attenuation ``(A_low, A_high)`` of a slab of a reference material (:data:`MASS_ATTENUATION_CM2_G`)."""
    low, high = MASS_ATTENUATION_CM2_G[material]
    areal = DENSITY_G_CM3[material] * thickness_cm
    return low * areal, high * areal
