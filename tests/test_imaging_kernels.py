"""Imaging kernels: every Numba kernel against its numpy twin on random inputs, and known images.

The phantoms are built from the reference materials' NIST XCOM attenuation (lanewatch.kernels.imaging's
table) through the forward model, so a known thickness of lead must come out as high-Z.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import ndimage

from lanewatch.edge.xray import imaging
from lanewatch.kernels import imaging as im

PROPERTY = settings(max_examples=120, deadline=None, derandomize=True)
PARAMS = imaging.ImagingParams()
CLASS_ARGS = (PARAMS.a_air, PARAMS.a_dark, PARAMS.r_organic, PARAMS.r_inorganic, PARAMS.r_metal)

shapes3 = st.tuples(st.integers(0, 12), st.sampled_from([1, 2]), st.integers(1, 24))
att_values = st.one_of(
    st.floats(-0.25, 10.0, width=32),
    st.sampled_from([float(np.float32(v)) for v in (0.0, PARAMS.a_air, PARAMS.a_dark, 1.0, 9.21)]),
)


@st.composite
def raw_and_levels(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lines, energies, pixels = draw(shapes3)
    raw = draw(hnp.arrays(np.uint16, (lines, energies, pixels)))
    level = st.floats(0, 70000, width=32)
    dark = draw(hnp.arrays(np.float32, (energies, pixels), elements=level))
    air = draw(hnp.arrays(np.float32, (energies, pixels), elements=level))
    return raw, dark, air


# ---- twins agree on random inputs -------------------------------------------------------------------
@PROPERTY
@given(raw_and_levels(), st.sampled_from([1e-4, 1e-3]), st.sampled_from([1.0, 1.25]))
def test_calibrate_matches_numpy_exactly(data: tuple, eps: float, t_max: float) -> None:
    raw, dark, air = data
    got = im.calibrate(raw, dark, air, eps, t_max)
    want = im.calibrate_ref(raw, dark, air, eps, t_max)
    assert got.dtype == np.float32 and got.shape == raw.shape
    np.testing.assert_array_equal(got, want)
    assert np.all(got >= np.float32(eps)) and np.all(got <= np.float32(t_max))
    dead = np.broadcast_to(air <= dark, raw.shape)
    assert np.all(got[dead] == 1.0)


@PROPERTY
@given(hnp.arrays(np.float32, shapes3, elements=st.floats(float(np.float32(1e-4)), 1.25, width=32)))
def test_attenuation_matches_numpy(t: np.ndarray) -> None:
    got = im.attenuation(t)
    assert got.dtype == np.float32 and got.shape == t.shape
    # Both use a float32 logarithm; libm and numpy's SIMD log may differ in the last bit.
    np.testing.assert_allclose(got, im.attenuation_ref(t), rtol=1e-6, atol=1e-7)


@PROPERTY
@given(
    hnp.arrays(np.float32, shapes3, elements=att_values),
    st.tuples(st.floats(0.01, 0.2), st.floats(3, 8), st.floats(1.0, 1.6), st.floats(0.1, 0.3), st.floats(0.1, 0.3)),
)
def test_classify_matches_numpy_exactly(att: np.ndarray, p: tuple) -> None:
    a_air, a_dark, r_org, gap1, gap2 = p
    args = (a_air, a_dark, r_org, r_org - gap1, r_org - gap1 - gap2)
    got = im.classify(att, *args)
    np.testing.assert_array_equal(got, im.classify_ref(att, *args))
    np.testing.assert_array_equal(im.classify(att, *CLASS_ARGS), im.classify_ref(att, *CLASS_ARGS))
    allowed = {im.AIR, im.UNRESOLVABLE, im.UNCLASSIFIED} if att.shape[1] == 1 else set(range(im.UNCLASSIFIED))
    assert set(np.unique(got).tolist()) <= allowed


@PROPERTY
@given(hnp.arrays(np.float32, st.tuples(st.integers(0, 30), st.integers(1, 40)), elements=att_values))
def test_column_profile_matches_numpy(plane: np.ndarray) -> None:
    got = im.column_profile(plane)
    assert got.shape == (plane.shape[0], 2)
    np.testing.assert_allclose(got, im.column_profile_ref(plane), rtol=1e-12, atol=1e-9)


@PROPERTY
@given(
    hnp.arrays(np.float32, st.tuples(st.integers(1, 30), st.integers(1, 40)), elements=att_values),
    st.integers(1, 8),
    st.integers(1, 8),
    st.sampled_from([1.0, 6.0]),
)
def test_preview_matches_numpy(plane: np.ndarray, bl: int, bp: int, a_max: float) -> None:
    got = im.preview(plane, bl, bp, a_max)
    want = im.preview_ref(plane, bl, bp, a_max)
    assert got.dtype == np.uint8 and got.shape == (-(-plane.shape[0] // bl), -(-plane.shape[1] // bp))
    np.testing.assert_array_equal(got, want)


@st.composite
def dense_planes(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """An attenuation plane whose dense mask is random, its class codes, and batch boundaries."""
    lines = draw(st.integers(0, 30))
    pixels = draw(st.integers(1, 30))
    mask = draw(hnp.arrays(np.bool_, (lines, pixels)))
    values = draw(hnp.arrays(np.float32, (lines, pixels), elements=st.floats(1.0, 9.0, width=32)))
    plane = np.where(mask, values, np.float32(0.5)).astype(np.float32)
    classes = draw(hnp.arrays(np.uint8, (lines, pixels), elements=st.integers(0, im.N_CLASSES - 1)))
    cuts = sorted(draw(st.lists(st.integers(0, lines), max_size=5)))
    return plane, classes, cuts


def _label_in_batches(plane: np.ndarray, classes: np.ndarray, cuts: list[int]) -> im.RegionStats:
    labeller = imaging.RegionLabeller(plane.shape[1], 1.0)
    for a, b in zip([0, *cuts], [*cuts, plane.shape[0]], strict=True):
        labeller.add(plane[a:b], classes[a:b])
    return labeller.finish()


def _as_set(stats: im.RegionStats) -> set[tuple]:
    return {
        (int(stats.area[k]), tuple(stats.bbox[k].tolist()), tuple(stats.hist[k].tolist()), float(stats.att_max[k]))
        for k in range(len(stats))
    }


@PROPERTY
@given(dense_planes())
def test_incremental_labelling_matches_numpy_and_scipy(case: tuple) -> None:
    plane, classes, cuts = case
    got = _label_in_batches(plane, classes, cuts)
    want = im.regions_ref(plane, classes, 1.0)
    assert _as_set(got) == _as_set(want)
    np.testing.assert_allclose(got.att_sum, want.att_sum, rtol=1e-9)
    # An independent third opinion on the components: scipy's labelling (4-connectivity).
    labels, n = ndimage.label(plane >= 1.0)
    assert len(got) == n
    if n:
        areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        boxes = [(s[0].start, s[0].stop - 1, s[1].start, s[1].stop - 1) for s in ndimage.find_objects(labels)]
        assert sorted(zip(areas.tolist(), boxes, strict=True)) == sorted(
            zip(got.area.tolist(), [tuple(b) for b in got.bbox.tolist()], strict=True)
        )


@PROPERTY
@given(hnp.arrays(np.bool_, st.tuples(st.integers(0, 40), st.integers(1, 40))))
def test_components_ref_partitions_like_scipy(mask: np.ndarray) -> None:
    ours = im.components_ref(mask)
    theirs, n = ndimage.label(mask)
    assert np.array_equal(ours > 0, mask)
    pairs = set(zip(ours[mask].tolist(), theirs[mask].tolist(), strict=True))
    assert len(pairs) == n == len({a for a, _ in pairs}) == len({b for _, b in pairs})


def test_labelling_joins_a_u_shape_across_batches() -> None:
    """Two arms that only meet in a later batch become one region, with the merged statistics."""
    mask = np.zeros((6, 7), bool)
    mask[0:5, 1] = True
    mask[0:5, 5] = True
    mask[5, 1:6] = True
    plane = np.where(mask, np.float32(2.0), np.float32(0.0))
    classes = np.full(mask.shape, im.METAL, np.uint8)
    stats = _label_in_batches(plane, classes, [2, 5])
    assert len(stats) == 1
    assert stats.area[0] == mask.sum() == 15
    assert stats.bbox[0].tolist() == [0, 5, 1, 5]
    assert stats.hist[0, im.METAL] == 15
    assert stats.att_sum[0] == pytest.approx(30.0)


def test_resolving_twice_or_continuing_after_resolving_is_consistent() -> None:
    rng = np.random.default_rng(7)
    plane = rng.uniform(0, 2, (40, 50)).astype(np.float32)
    classes = rng.integers(0, im.N_CLASSES, plane.shape).astype(np.uint8)
    labeller = imaging.RegionLabeller(50, 1.0)
    labeller.add(plane[:20], classes[:20])
    first = labeller.finish()
    assert _as_set(labeller.finish()) == _as_set(first)
    labeller.add(plane[20:], classes[20:])
    assert _as_set(labeller.finish()) == _as_set(im.regions_ref(plane, classes, 1.0))


# ---- known images ------------------------------------------------------------------------------------
P = 96
DARK = np.full((2, P), 800.0, np.float32)
AIR = np.full((2, P), 58000.0, np.float32)
PITCH_MM, SPACING_MM = 5.0, 4.0


def _slab(att: np.ndarray, lines: slice, pixels: slice, material: str, cm: float) -> None:
    low, high = im.material_attenuation(material, cm)
    att[lines, im.LOW, pixels] += low
    att[lines, im.HIGH, pixels] += high


def _scan(att: np.ndarray, batch: int = 16, seed: int = 1, backend: im.Backend = "numba") -> imaging.ScanResult:
    raw = im.raw_from_attenuation(att, DARK, AIR)
    noise = np.random.default_rng(seed).normal(0.0, 20.0, raw.shape)
    raw = np.clip(raw + noise, 0, 65535).astype(np.uint16)
    proc = imaging.ScanProcessor(DARK, AIR, pixel_pitch_mm=PITCH_MM, column_spacing_mm=SPACING_MM, backend=backend)
    for first in range(0, len(raw), batch):
        proc.process(raw[first : first + batch])
    return proc.finish()


def _phantom() -> np.ndarray:
    """A truck of organic cargo (15 cm of water) with a 6 cm lead block (lines 40-49, pixels 30-41) in it."""
    att = np.zeros((120, 2, P), np.float32)
    _slab(att, slice(10, 110), slice(8, 88), "water", 15.0)
    _slab(att, slice(40, 50), slice(30, 42), "lead", 6.0)
    return att


def test_lead_block_in_organic_cargo_is_one_high_z_region() -> None:
    result = _scan(_phantom())
    assert len(result.regions) == 1
    region = result.regions[0]
    assert region.material == "high_z"
    assert region.lines == (40, 49) and region.pixels == (30, 41)
    assert region.area_px == 120 and region.area_mm2 == pytest.approx(120 * PITCH_MM * SPACING_MM)
    assert region.bbox_mm == pytest.approx((40 * SPACING_MM, 50 * SPACING_MM, 30 * PITCH_MM, 42 * PITCH_MM))
    _low, high = np.add(im.material_attenuation("lead", 6.0), im.material_attenuation("water", 15.0))
    assert region.mean_att == pytest.approx(high, rel=0.02)
    assert region.max_att >= region.mean_att
    # The cargo around the block is organic; outside the truck is air.
    assert result.class_px["organic"] == 100 * 80 - 120
    assert result.class_px["air"] == 120 * P - 100 * 80
    assert result.lines == 120 and result.profile.shape == (120, 2)
    assert result.profile[45, 0] == pytest.approx(12 * high + 68 * im.material_attenuation("water", 15.0)[1], rel=0.01)
    assert result.profile[0, 1] == pytest.approx(0.0, abs=0.01)


def test_steel_and_aluminium_are_told_apart_from_lead() -> None:
    att = np.zeros((60, 2, P), np.float32)
    _slab(att, slice(5, 20), slice(10, 30), "iron", 8.0)
    _slab(att, slice(5, 20), slice(50, 70), "aluminium", 25.0)
    _slab(att, slice(30, 45), slice(10, 30), "lead", 5.0)
    materials = {r.lines + r.pixels: r.material for r in _scan(att).regions}
    assert materials == {(5, 19, 10, 29): "metal", (5, 19, 50, 69): "inorganic", (30, 44, 10, 29): "high_z"}


def test_air_only_scan_has_no_regions() -> None:
    result = _scan(np.zeros((50, 2, P), np.float32))
    assert result.regions == []
    assert result.class_px == {"air": 50 * P}
    assert np.all(result.preview == 255)


def test_too_dark_is_unresolvable_not_a_material() -> None:
    att = np.zeros((40, 2, P), np.float32)
    _slab(att, slice(10, 30), slice(20, 60), "iron", 30.0)  # 236 g/cm^2: T_high = 4e-4
    result = _scan(att)
    assert [r.material for r in result.regions] == ["unresolvable"]
    assert result.regions[0].class_px == {"unresolvable": 20 * 40}
    assert result.class_px["unresolvable"] == 20 * 40


def test_batching_and_backend_do_not_change_the_result() -> None:
    att = _phantom()
    whole = _scan(att, batch=len(att))
    for batch, backend in [(1, "numba"), (7, "numba"), (13, "numpy"), (len(att), "numpy")]:
        other = _scan(att, batch=batch, backend=backend)
        assert [(r.area_px, r.material, r.lines, r.pixels, r.class_px) for r in other.regions] == [
            (r.area_px, r.material, r.lines, r.pixels, r.class_px) for r in whole.regions
        ]
        assert other.class_px == whole.class_px
        np.testing.assert_array_equal(other.preview, whole.preview)
        # The numpy backend's logarithm may differ from libm's in the last bit of float32.
        np.testing.assert_allclose(other.profile, whole.profile, rtol=1e-6, atol=1e-5)


def test_preview_is_block_means_of_the_scan() -> None:
    att = _phantom()
    result = _scan(att, batch=5)
    assert result.preview.shape == (30, 24)
    block = result.preview[40 // 4 : 50 // 4, 32 // 4 : 40 // 4]
    expected = 255 * (1 - (att[40:48, im.HIGH, 32:40].mean()) / PARAMS.preview_a_max)
    assert np.all(np.abs(block.astype(float) - expected) <= 3)
    assert result.preview[0, 0] >= 250


def test_forward_model_round_trips_through_calibration() -> None:
    att = _phantom()
    raw = im.raw_from_attenuation(att, DARK, AIR)
    back = im.attenuation(im.calibrate(raw, DARK, AIR, PARAMS.eps, PARAMS.t_max))
    np.testing.assert_allclose(back, att, atol=2e-3)


def test_single_energy_scan_finds_dense_regions_without_materials() -> None:
    att = _phantom()[:, im.HIGH : im.HIGH + 1, :]
    raw = im.raw_from_attenuation(att, DARK[:1], AIR[:1])
    proc = imaging.ScanProcessor(DARK[:1], AIR[:1], pixel_pitch_mm=PITCH_MM, column_spacing_mm=SPACING_MM)
    proc.process(raw)
    result = proc.finish()
    assert [(r.material, r.lines, r.pixels) for r in result.regions] == [("unclassified", (40, 49), (30, 41))]


def test_bad_shapes_are_refused_with_the_expected_shape() -> None:
    proc = imaging.ScanProcessor(DARK, AIR, pixel_pitch_mm=PITCH_MM, column_spacing_mm=SPACING_MM)
    with pytest.raises(ValueError, match=r"\(lines, 2, 96\)"):
        proc.process(np.zeros((4, 2, 95), np.uint16))
    with pytest.raises(ValueError, match="energies 1 or 2"):
        imaging.ScanProcessor(np.zeros((3, 4)), np.ones((3, 4)), pixel_pitch_mm=1, column_spacing_mm=1)
    with pytest.raises(ValueError, match="backend"):
        imaging.ScanProcessor(DARK, AIR, pixel_pitch_mm=1, column_spacing_mm=1, backend="cuda")  # type: ignore[arg-type]


def test_default_thresholds_follow_the_reference_materials() -> None:
    ratios = {m: lo / hi for m, (lo, hi) in im.MASS_ATTENUATION_CM2_G.items()}
    assert ratios["water"] > PARAMS.r_organic > ratios["aluminium"] > PARAMS.r_inorganic > ratios["iron"]
    assert ratios["iron"] > PARAMS.r_metal > ratios["lead"]
    assert (PARAMS.r_organic, PARAMS.r_inorganic, PARAMS.r_metal) == (1.42, 1.34, 1.19)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_a_scan_without_lines_ends_empty(backend: im.Backend) -> None:
    proc = imaging.ScanProcessor(DARK, AIR, pixel_pitch_mm=PITCH_MM, column_spacing_mm=SPACING_MM, backend=backend)
    result = proc.finish()
    assert (result.lines, result.regions, result.class_px) == (0, [], {})
    assert result.profile.shape == (0, 2) and result.preview.shape == (0, P // 4)
