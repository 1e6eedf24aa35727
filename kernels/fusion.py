"""Image kernels of radiation/X-ray fusion: grey opening along the vehicle, and 4-connected labelling.

The fusion looks for compact objects in a reduced dual-energy attenuation image (rows along the
vehicle, columns down the detector). A load is mostly uniform along the vehicle over lengths
longer than a shield, so the *opening* along the rows (a running minimum, then a running maximum,
over a window longer than the objects sought) is the load around an object, and the image minus
its opening (the white top-hat) is what lies on top of the load: objects shorter than the window.

Every ``@njit`` kernel has a plain-numpy twin named ``<kernel>_ref``; the labelling's twin is a
different algorithm (label propagation, :func:`kernels.imaging.components_ref`).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from kernels.imaging import components_ref


@njit(cache=True, error_model="numpy")
def _running(a: np.ndarray, half: int, minimum: bool) -> np.ndarray:
    """Running minimum (or maximum) along axis 0 over rows ``[i - half, i + half]`` clipped to the array.

    Van Herk / Gil-Werman: with window ``w = 2 half + 1`` over the sequence padded by ``half`` neutral
    rows each side, blocks of ``w`` rows get prefix and suffix extremes, and each window is the
    extreme of one suffix and one prefix: O(rows) per column whatever the window.
    """
    n, m = a.shape
    w = 2 * half + 1
    size = n + 2 * half
    size = (size + w - 1) // w * w
    neutral = np.inf if minimum else -np.inf
    pre = np.empty((size, m), np.float64)
    suf = np.empty((size, m), np.float64)
    for k in range(size):
        src = k - half
        for j in range(m):
            v = a[src, j] if 0 <= src < n else neutral
            if k % w != 0:
                prev = pre[k - 1, j]
                v = min(v, prev) if minimum else max(v, prev)
            pre[k, j] = v
    for k in range(size - 1, -1, -1):
        src = k - half
        for j in range(m):
            v = a[src, j] if 0 <= src < n else neutral
            if (k + 1) % w != 0:
                nxt = suf[k + 1, j]
                v = min(v, nxt) if minimum else max(v, nxt)
            suf[k, j] = v
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
    n = rows * cols
    parent = np.arange(n, dtype=np.int64)
    for i in range(rows):
        for j in range(cols):
            if not mask[i, j]:
                continue
            k = i * cols + j
            for nb in (k - cols if i > 0 else -1, k - 1 if j > 0 else -1):
                if nb < 0 or not mask[nb // cols, nb % cols]:
                    continue
                a = nb
                while parent[a] != a:
                    parent[a] = parent[parent[a]]
                    a = parent[a]
                b = k
                while parent[b] != b:
                    parent[b] = parent[parent[b]]
                    b = parent[b]
                if a < b:
                    parent[b] = a
                elif b < a:
                    parent[a] = b
    out = np.zeros((rows, cols), np.int64)
    for i in range(rows):
        for j in range(cols):
            if mask[i, j]:
                k = i * cols + j
                r = k
                while parent[r] != r:
                    r = parent[r]
                parent[k] = r
                out[i, j] = r + 1
    return out


def label4_ref(mask: np.ndarray) -> np.ndarray:
    """Numpy twin of :func:`label4`: label propagation (:func:`kernels.imaging.components_ref`)."""
    return components_ref(np.asarray(mask, bool))
