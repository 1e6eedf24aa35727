"""Radiation/X-ray fusion: its kernels against their twins, registration against the simulator's truth,
and scans through the service over real sockets (simulator frames, the real DICOS sample).
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import ndimage

from kernels.fusion import label4, label4_ref, opening_rows, opening_rows_ref

PROPERTY = settings(max_examples=150, deadline=None, derandomize=True)

grids = hnp.arrays(
    np.float32,
    st.tuples(st.integers(1, 40), st.integers(1, 8)),
    elements=st.floats(-5.0, 10.0, width=32),
)
masks = hnp.arrays(np.bool_, st.tuples(st.integers(1, 24), st.integers(1, 24)))


# ---- kernels ------------------------------------------------------------------------------------------
@PROPERTY
@given(grids, st.integers(0, 12))
def test_opening_matches_its_twin_and_scipy(a: np.ndarray, half: int) -> None:
    got = opening_rows(a, half)
    assert got.dtype == a.dtype and got.shape == a.shape
    np.testing.assert_array_equal(got, opening_rows_ref(a, half))
    # Windows clipped at the ends are scipy's "nearest" border: the edge value never changes a min or max.
    np.testing.assert_array_equal(got, ndimage.grey_opening(a, size=(2 * half + 1, 1), mode="nearest"))
    assert np.all(got <= a)
    np.testing.assert_array_equal(opening_rows(got, half), got)  # an opening is idempotent


def test_opening_removes_short_bumps_and_keeps_plateaus() -> None:
    a = np.zeros((60, 2), np.float32)
    a[10:14, 0] = 3.0  # 4 rows: shorter than a 7-row window
    a[30:50, 1] = 2.0  # 20 rows: longer
    got = opening_rows(a, 3)
    assert np.all(got[:, 0] == 0.0)
    np.testing.assert_array_equal(got[:, 1], a[:, 1])


@PROPERTY
@given(masks)
def test_labels_match_label_propagation_and_scipy(mask: np.ndarray) -> None:
    got = label4(mask)
    np.testing.assert_array_equal(got, label4_ref(mask))
    theirs, n = ndimage.label(mask)
    assert len(np.unique(got[mask])) == n
    # the same partition: each scipy component is one label here, and the other way round
    pairs = set(zip(theirs[mask].tolist(), got[mask].tolist(), strict=True))
    assert len(pairs) == n
    if mask.any():
        first = np.flatnonzero(mask.reshape(-1))[0]
        assert got.reshape(-1)[first] == first + 1
