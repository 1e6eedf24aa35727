"""Image morphology for X-ray fusion: grey opening along the vehicle, and 4-connected labelling.

The fusion looks for compact objects in a reduced dual-energy attenuation image (rows along the
vehicle, columns down the detector). A load is mostly uniform along the vehicle over lengths
longer than a shield, so the *opening* along the rows (a running minimum, then a running maximum,
over a window longer than the objects sought) is the load around an object, and the image minus
its opening (the white top-hat) is what lies on top of the load: objects shorter than the window.

Every ``@njit`` kernel has a plain-numpy twin named ``<kernel>_ref``; the labelling's twin is a
different algorithm (label propagation, :func:`lanewatch.kernels.imaging.components_ref`).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from lanewatch.kernels.imaging import components_ref, find_root


@njit(cache=True, error_model="numpy")
def _running(a: np.ndarray, half: int, minimum: bool) -> np.ndarray:
    """Running minimum (or maximum) along axis 0 over rows ``[i - half, i + half]`` clipped to the array.

    Van Herk / Gil-Werman: with window ``w = 2 half + 1`` over the sequence padded by ``half`` neutral
    rows each side, blocks of ``w`` rows get prefix and suffix extremes, and each window is the
    extreme of one suffix and one prefix: O(rows) per column whatever the window.
    """
    n, m = a.shape
    w = 2 * half + 1
    size = (n + 2 * half + w - 1) // w * w
    neutral = np.inf if minimum else -np.inf
    padded = np.full((size, m), neutral, a.dtype)
    padded[half : half + n] = a
    pre = padded.copy()
    suf = padded.copy()
    for start in range(0, size, w):
        for k in range(start + 1, start + w):
            for j in range(m):
                pre[k, j] = min(pre[k, j], pre[k - 1, j]) if minimum else max(pre[k, j], pre[k - 1, j])
        for k in range(start + w - 2, start - 1, -1):
            for j in range(m):
                suf[k, j] = min(suf[k, j], suf[k + 1, j]) if minimum else max(suf[k, j], suf[k + 1, j])
    out = np.empty((n, m), a.dtype)
    for i in range(n):
        for j in range(m):
            x, y = suf[i, j], pre[i + w - 1, j]
            out[i, j] = min(x, y) if minimum else max(x, y)
    return out


@njit(cache=True, error_model="numpy")
def opening_rows(a: np.ndarray, half: int) -> np.ndarray:
    """Grey opening of ``a`` (rows, columns) along its rows with a flat window of ``2 half + 1`` rows.

    Windows are clipped at the first and last row. The result never exceeds ``a``; a bump shorter
    than the window is removed, a plateau at least as long is kept.
    """
    return _running(_running(a, half, True), half, False)


def opening_rows_ref(a: np.ndarray, half: int) -> np.ndarray:
    """Numpy twin of :func:`opening_rows` (sliding windows over the padded array)."""

    def running(x: np.ndarray, minimum: bool) -> np.ndarray:
        fill = np.inf if minimum else -np.inf
        padded = np.pad(x.astype(np.float64), ((half, half), (0, 0)), constant_values=fill)
        windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1, axis=0)
        return (windows.min(axis=-1) if minimum else windows.max(axis=-1)).astype(x.dtype)

    return running(running(a, True), False)


@njit(cache=True, error_model="numpy")
def label4(mask: np.ndarray) -> np.ndarray:
    """4-connected component labels (int64, 0 = background) of a boolean ``(rows, columns)`` mask.

    Each component is labelled with the smallest flat index of its pixels plus one, as
    :func:`label4_ref` does: one raster pass joining each pixel to its upper and left neighbours
    (union-find, roots the smallest index), then every pixel gets its root.
    """
    rows, cols = mask.shape
    parent = np.arange(rows * cols, dtype=np.int64)
    for i in range(rows):
        for j in range(cols):
            if not mask[i, j]:
                continue
            k = i * cols + j
            if i > 0 and mask[i - 1, j]:
                a, b = find_root(parent, k - cols), find_root(parent, k)
                parent[max(a, b)] = min(a, b)
            if j > 0 and mask[i, j - 1]:
                a, b = find_root(parent, k - 1), find_root(parent, k)
                parent[max(a, b)] = min(a, b)
    out = np.zeros((rows, cols), np.int64)
    for i in range(rows):
        for j in range(cols):
            if mask[i, j]:
                out[i, j] = find_root(parent, i * cols + j) + 1
    return out


def label4_ref(mask: np.ndarray) -> np.ndarray:
    """Numpy twin of :func:`label4`: label propagation (:func:`lanewatch.kernels.imaging.components_ref`)."""
    return components_ref(np.asarray(mask, bool))


@njit(cache=True, error_model="numpy")
def cell_sums(
    att: np.ndarray, classes: np.ndarray, block_px: int, a_dark: float, air_code: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per line and cell of ``block_px`` pixels, the sums a reduced image is made of; and each line's non-air pixels.

    ``att`` is attenuation ``(lines, energies, pixels)`` (energy 0 high, the last low), ``classes`` the class codes
    ``(lines, pixels)``. A pixel is measured when its high-energy attenuation is at most ``a_dark``. Returns float32
    ``(lines, 4, cells)``: high-energy and low-energy attenuation summed over the measured pixels, measured pixels,
    and air pixels (class ``air_code``); and int64 ``(lines,)``: the pixels of each line that are not air.
    """
    lines, energies, pixels = att.shape
    cells = (pixels + block_px - 1) // block_px
    out = np.zeros((lines, 4, cells), np.float32)
    nonair = np.zeros(lines, np.int64)
    for i in range(lines):
        for p in range(pixels):
            c = p // block_px
            high = att[i, 0, p]
            if high <= a_dark:
                out[i, 0, c] += high
                out[i, 1, c] += att[i, energies - 1, p]
                out[i, 2, c] += 1.0
            if classes[i, p] == air_code:
                out[i, 3, c] += 1.0
            else:
                nonair[i] += 1
    return out, nonair


def cell_sums_ref(
    att: np.ndarray, classes: np.ndarray, block_px: int, a_dark: float, air_code: int
) -> tuple[np.ndarray, np.ndarray]:
    """Numpy twin of :func:`cell_sums` (sums by ``np.add.reduceat`` over the cells' first pixels)."""
    high, low = att[:, 0, :], att[:, -1, :]
    measured = high.astype(np.float64) <= a_dark  # compared in float64, as the kernel does
    air = classes == air_code
    starts = np.arange(0, att.shape[2], block_px)
    parts = [np.where(measured, high, 0.0), np.where(measured, low, 0.0), measured, air]
    out = np.stack([np.add.reduceat(np.asarray(part, np.float64), starts, axis=1) for part in parts], axis=1)
    return out.astype(np.float32), (~air).sum(axis=1).astype(np.int64)
