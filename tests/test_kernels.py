"""Radiation kernels: every Numba kernel against its numpy twin on random inputs, plus known values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from lanewatch.kernels import baseline, locate, matched, poisson, shape, sideband, suppression

SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def profiles(draw: st.DrawFn, min_size: int = 1, max_size: int = 60) -> np.ndarray:
    """Count profiles: whole numbers per sample, from a seeded Poisson draw around a random level."""
    n = draw(st.integers(min_size, max_size))
    level = draw(st.floats(0.5, 400.0))
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).poisson(level, n).astype(np.float64)


@st.composite
def banks(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    scales = np.array(sorted(draw(st.lists(st.floats(0.3, 8.0), min_size=1, max_size=3))))
    return matched.point_templates(scales, draw(st.floats(1.0, 3.0)), draw(st.integers(1, 30)))


def close(a: object, b: object) -> None:
    np.testing.assert_allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------- fielded rule
@SETTINGS
@given(x=profiles(), bg=st.floats(1.0, 5000.0), n_1s=st.integers(1, 8), data=st.data())
def test_nsigma_matches_reference(x: np.ndarray, bg: float, n_1s: int, data: st.DataObject) -> None:
    close(baseline.nsigma_series(x, bg, n_1s), baseline.nsigma_series_ref(x, bg, n_1s))
    i = data.draw(st.integers(0, x.size - 1))
    close(baseline.nsigma_at(x, i, bg, n_1s), baseline.nsigma_at_ref(x, i, bg, n_1s))


def test_nsigma_known_value() -> None:
    """Five samples of 250 counts against a 1 s background of 1000: (1250 - 1000) / sqrt(1000)."""
    x = np.full(7, 250.0)
    assert baseline.nsigma_at(x, 6, 1000.0, 5) == pytest.approx(250 / math.sqrt(1000))
    assert baseline.nsigma_at(x, 0, 1000.0, 5) == pytest.approx((250 - 200) / math.sqrt(200))


# --------------------------------------------------------------------------- matched filter
@SETTINGS
@given(x=profiles(), bank=banks(), level=st.floats(0.5, 1.0), var=st.floats(0.0, 1e-3), cf=st.floats(0.0, 5.0))
def test_matched_filter_matches_reference(
    x: np.ndarray, bank: tuple[np.ndarray, np.ndarray], level: float, var: float, cf: float
) -> None:
    e = np.full(x.size, max(float(x.mean()), 0.5))
    rows, halfw = bank
    levels, variances = np.full(x.size, level), np.full(x.size, var)
    close(
        matched.mf_series(x, e, levels, variances, rows, halfw, cf)[0],
        matched.mf_series_ref(x, e, levels, variances, rows, halfw, cf)[0],
    )
    for c in range(x.size):
        close(
            matched.mf_at(x, e, x.size, c, level, var, rows, halfw, cf)[0],
            matched.mf_at_ref(x, e, x.size, c, level, var, rows, halfw, cf)[0],
        )


# --------------------------------------------------------------------------- sideband matched filter
@SETTINGS
@given(
    x=profiles(min_size=1, max_size=80),
    bank=banks(),
    side=st.integers(1, 12),
    cf=st.floats(0.0, 5.0),
    slope=st.floats(-0.5, 0.5),
    roughness=st.floats(0.0, 0.1),
    seed=st.integers(0, 2**32 - 1),
)
def test_sideband_matches_reference(
    x: np.ndarray,
    bank: tuple[np.ndarray, np.ndarray],
    side: int,
    cf: float,
    slope: float,
    roughness: float,
    seed: int,
) -> None:
    rows, halfw = bank
    e = max(float(x.mean()), 0.5) * (1.0 + slope * np.linspace(-1.0, 1.0, x.size))
    e[np.random.default_rng(seed).random(x.size) < 0.05] = 0.0  # samples with nothing expected do not count
    z, step, level = sideband.sideband_series(x, e, rows, halfw, side, cf, roughness)
    z_ref, step_ref, level_ref = sideband.sideband_series_ref(x, e, rows, halfw, side, cf, roughness)
    for a, b in ((z, z_ref), (step, step_ref)):
        np.testing.assert_array_equal(np.isfinite(a), np.isfinite(b))
        close(np.where(np.isfinite(a), a, 0.0), np.where(np.isfinite(b), b, 0.0))
    np.testing.assert_array_equal(np.isnan(level), np.isnan(level_ref))
    close(np.nan_to_num(level), np.nan_to_num(level_ref))


def statistic(
    x: np.ndarray, e: np.ndarray, rows: np.ndarray, halfw: np.ndarray, roughness: float
) -> tuple[np.ndarray, np.ndarray]:
    """The sideband statistic (the smaller of its two z's, sidebands of 10 samples, no skewness term) and the level."""
    z, step, level = sideband.sideband_series(x, e, rows, halfw, 10, 0.0, roughness)
    return np.minimum(z, step), level


def test_sideband_ignores_a_linear_shadow_and_finds_the_source() -> None:
    """Noiseless counts under a shadow ramping from 40 % to 5 %: no excess wherever no source is (the line explains
    the ramp; against the brighter sideband held flat the centre is darker); a source on top of it is found where it
    is, with the line's level at the centre. Held against the brighter sideband, a source on a ramp keeps less of its
    evidence than on a flat shadow: the price of not taking a step of the shadow for a source."""
    n = 120
    rows, halfw = matched.point_templates(np.array([5.0]), 2.5, 30)
    e = np.full(n, 200.0)
    shadow = np.linspace(0.6, 0.95, n)
    z, level = statistic(e * shadow, e, rows, halfw, 0.0)
    inside = np.isfinite(z[0])
    assert inside.sum() > 40
    assert z[0][inside].max() <= 1e-8
    np.testing.assert_allclose(level[0][inside], shadow[inside], atol=1e-9)
    k = np.arange(n) - 60.0
    source = 40.0 * 5.0 * (np.arctan((k + 0.5) / 5.0) - np.arctan((k - 0.5) / 5.0))
    z, _ = statistic(e * shadow + source, e, rows, halfw, 0.0)
    flat, _ = statistic(e * 0.75 + source, e, rows, halfw, 0.0)
    # Within a sample: the flat null from the brighter sideband weighs centres toward the darker side a little more.
    assert abs(int(np.nanargmax(z[0])) - 60) <= 1
    assert int(np.nanargmax(flat[0])) == 60
    assert 2.0 < z[0][60] < flat[0][60]
    assert flat[0][60] > 4.0
    rough, _ = statistic(e * shadow + source, e, rows, halfw, 0.02)
    assert abs(int(np.nanargmax(rough[0])) - 60) <= 1
    assert 0.0 < rough[0][60] < z[0][60]  # a shadow allowed to depart from the line weakens the evidence


@pytest.mark.parametrize("up", [True, False])
def test_sideband_does_not_take_a_step_of_the_shadow_for_a_source(up: bool) -> None:
    """A shadow that steps from 50 % to 10 % of the background (a cab, then a light load; or a dense block starting)
    seen through a detector's response: a line across sidebands either side of the step passes below the bright
    side's first metres, which looked like a source (z up to 8 on Poisson counts); against the brighter sideband
    held flat it is none. Noiseless, so any positive z is the model's."""
    n, scale = 70, 5.0
    rows, halfw = matched.point_templates(np.array([0.6, 1.0]) * scale, 2.5, 30)
    e = np.full(n, 150.0)
    k = np.arange(n) - 0.5 * n
    step = 0.5 + 0.4 * (0.5 + np.arctan(k / 4.0) / np.pi)  # the step, smoothed by the panels' response
    shadow = step if up else step[::-1]
    z, _ = statistic(e * shadow, e, rows, halfw, 0.02)
    assert np.isfinite(z).sum() > 20
    assert np.nanmax(np.where(np.isfinite(z), z, np.nan)) < 0.5


@pytest.mark.parametrize("scale", [1.0, 3.0, 8.0])
def test_bank_picks_the_matching_width(scale: float) -> None:
    """A noiseless source of a bank member's width is best matched by that member, in both forms."""
    rows, halfw = matched.point_templates(np.array([1.0, 3.0, 8.0]), 2.5, 30)
    k = np.arange(-40, 41, dtype=np.float64)
    e = np.full(k.size, 100.0)
    x = e + 50.0 * (np.arctan((k + 0.5) / scale) - np.arctan((k - 0.5) / scale)) * scale
    expect = [1.0, 3.0, 8.0].index(scale)
    for series in (matched.mf_series, matched.mf_series_ref):
        assert series(x, e, np.ones(k.size), np.zeros(k.size), rows, halfw, 0.0)[1][40] == expect
    low = 0.6 * e + (x - e)
    for series in (shape.shape_series, shape.shape_series_ref):
        assert series(low, x, np.zeros(k.size), 0.6, 0.0, 1e-4, rows, halfw, 0.0, 0.0)[1][40] == expect


def test_matched_filter_known_value() -> None:
    """One template of one sample: z = (x - e) / sqrt(e) at the centre, Poisson skewness removed with cf."""
    rows, halfw = matched.point_templates(np.array([0.3]), 1.0, 1)
    x = np.array([100.0, 140.0, 100.0])
    e = np.full(3, 100.0)
    z, _ = matched.mf_at(x, e, 3, 1, 1.0, 0.0, rows, halfw, 0.0)
    w = rows[0]
    assert z == pytest.approx(w[1] * 40 / math.sqrt(np.sum(w**2) * 100))
    z_cf, _ = matched.mf_at(x, e, 3, 1, 1.0, 0.0, rows, halfw, 2.0)
    assert z_cf == pytest.approx(z - 2.0 * np.sum(w**3) * 100 / (np.sum(w**2) * 100) ** 1.5)


def test_panel_template_integrates_the_cosine_response() -> None:
    """With ``panel`` each value is the integral of (1 + (u/s)^2)^-1.5 over its sample, peak-normalised, and at the
    scale 1.305 s it is as wide at half maximum as the isotropic template of scale s."""
    rows, halfw = matched.point_templates(np.array([2.0]), 2.5, 40, panel=True)
    assert halfw[0] == 5
    k = np.arange(-5, 6)
    hi, lo = (k + 0.5) / 2, (k - 0.5) / 2
    expect = hi / np.sqrt(1 + hi * hi) - lo / np.sqrt(1 + lo * lo)
    close(rows[0], expect / expect.max())
    u = np.linspace(0.0, 5.0, 50001)
    s = 1.0 / math.sqrt(2.0 ** (2.0 / 3.0) - 1.0)
    half_panel = u[np.argmin(np.abs((1 + (u / s) ** 2) ** -1.5 - 0.5))]
    assert half_panel == pytest.approx(1.0, abs=1e-3)


def test_point_template_integrates_the_lorentzian() -> None:
    """Each template value is the integral of 1/(1 + (u/s)^2) over its sample, peak-normalised."""
    rows, halfw = matched.point_templates(np.array([2.0]), 2.5, 40)
    assert halfw[0] == 5
    k = np.arange(-5, 6)
    expect = np.arctan((k + 0.5) / 2) - np.arctan((k - 0.5) / 2)
    close(rows[0], expect / expect.max())


# --------------------------------------------------------------------------- shape test
@SETTINGS
@given(
    x=profiles(),
    p0=st.floats(0.2, 0.8),
    var_p0=st.floats(0.0, 1e-4),
    prior=st.floats(1e-4, 1e-2),
    bank=banks(),
    cf=st.floats(0.0, 5.0),
    section=st.sampled_from([0.0, 1e-3, 0.01]),
    seed=st.integers(0, 2**32 - 1),
)
def test_shape_matches_reference(
    x: np.ndarray,
    p0: float,
    var_p0: float,
    prior: float,
    bank: tuple[np.ndarray, np.ndarray],
    cf: float,
    section: float,
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    low = rng.binomial(x.astype(np.int64), p0).astype(np.float64)
    b = rng.uniform(0.0, 0.5, x.size)
    rows, halfw = bank
    # Templates can tie to rounding on small counts, so the index is checked where it is unambiguous.
    close(
        shape.shape_series(low, x, b, p0, var_p0, prior, rows, halfw, cf, section)[0],
        shape.shape_series_ref(low, x, b, p0, var_p0, prior, rows, halfw, cf, section)[0],
    )
    n = x.size
    lo, hi = sorted(rng.integers(0, n, 2).tolist())
    kappa = shape.softening_fit(low, x, b, n, lo, hi, p0, prior)
    close(kappa, shape.softening_fit_ref(low, x, b, n, lo, hi, p0, prior))
    close(
        shape.shape_span(low, x, b, lo, hi, p0, var_p0, *kappa),
        shape.shape_span_ref(low, x, b, lo, hi, p0, var_p0, *kappa),
    )
    for c in range(n):
        close(
            shape.shape_at(low, x, b, n, c, p0, var_p0, *kappa, rows, halfw, cf)[0],
            shape.shape_at_ref(low, x, b, n, c, p0, var_p0, *kappa, rows, halfw, cf)[0],
        )


def test_shape_known_value() -> None:
    """Uniform weights, no correction: z = (L - p0 N) / sqrt(p0 (1 - p0) N)."""
    low, total = np.array([70.0, 80.0]), np.array([100.0, 100.0])
    z = shape.shape_span(low, total, np.zeros(2), 0, 1, 0.6, 0.0, 0.0, 0.0)
    assert z == pytest.approx((150 - 120) / math.sqrt(0.24 * 200))


def test_softening_fit_recovers_kappa() -> None:
    """Samples whose low fraction rises as p0 + kappa b give kappa back within its standard deviation."""
    rng = np.random.default_rng(5)
    b = rng.uniform(0.0, 0.5, 400)
    total = np.full(400, 2000.0)
    low = rng.binomial(2000, 0.6 + 0.04 * b).astype(np.float64)
    kappa, var = shape.softening_fit(low, total, b, 400, -1, -1, 0.6, 0.05**2)
    assert abs(kappa - 0.04) < 3 * math.sqrt(var)


# --------------------------------------------------------------------------- shielding level
@SETTINGS
@given(x=profiles(), gap=st.integers(0, 6), width=st.integers(1, 10), pad=st.booleans(), e_pad=st.floats(1.0, 400.0))
def test_flank_level_matches_reference(x: np.ndarray, gap: int, width: int, pad: bool, e_pad: float) -> None:
    e = np.full(x.size, e_pad)
    close(
        suppression.flank_level_series(x, e, gap, width, pad, e_pad),
        suppression.flank_level_series_ref(x, e, gap, width, pad, e_pad),
    )
    for c in range(x.size):
        close(
            suppression.flank_level_at(x, e, x.size, c, gap, width, pad, e_pad),
            suppression.flank_level_at_ref(x, e, x.size, c, gap, width, pad, e_pad),
        )


def test_flank_level_takes_the_less_shielded_side() -> None:
    """An unshielded cab (ratio 1) before shielded cargo (0.7): the cab keeps level 1 from its padded front."""
    e = np.full(30, 100.0)
    x = np.concatenate((np.full(8, 100.0), np.full(22, 70.0)))
    level, _ = suppression.flank_level_series(x, e, 2, 4, True, 100.0)
    assert level[3] == pytest.approx(1.0)
    assert level[20] == pytest.approx(0.7)


@SETTINGS
@given(
    x=profiles(),
    dt=st.sampled_from([0.1, 0.2, 0.25, 0.5]),
    span=st.sampled_from([0.5, 1.0, 2.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_span_levels_match_reference(x: np.ndarray, dt: float, span: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    e = rng.uniform(0.0, 400.0, x.size) * (rng.random(x.size) > 0.1)
    dts = dt * rng.uniform(0.9, 1.1, x.size)
    m = int(dts.sum() / span) + 2
    close(suppression.span_levels(x, e, dts, span, m), suppression.span_levels_ref(x, e, dts, span, m))


def test_span_levels_known_value() -> None:
    """Ten samples of 0.2 s: the first second seen at 80 % of expectation, the second at 100 %, a third empty."""
    x = np.array([80.0] * 5 + [100.0] * 5)
    level = suppression.span_levels(x, np.full(10, 100.0), np.full(10, 0.2), 1.0, 3)
    assert level == pytest.approx([0.8, 1.0, 1.0])


@SETTINGS
@given(x=profiles(), half=st.integers(0, 4), seed=st.integers(0, 2**32 - 1))
def test_softening_covariate_matches_reference(x: np.ndarray, half: int, seed: int) -> None:
    e = np.random.default_rng(seed).uniform(1.0, 400.0, x.size)
    out = np.full(x.size, -1.0)
    suppression.softening_covariate_into(x, e, x.size, 0, half, out)
    close(out, suppression.softening_covariate_ref(x, e, half))


# --------------------------------------------------------------------------- counts and neutrons
@SETTINGS
@given(k=st.integers(0, 400), mu=st.floats(0.05, 300.0), relvar=st.sampled_from([0.0, 1e-3, 0.02, 0.3]))
def test_count_log_sf_matches_reference_and_scipy(k: int, mu: float, relvar: float) -> None:
    got = poisson.count_log_sf(k, mu, relvar)
    if relvar == 0:
        expect = stats.poisson.logsf(k - 1, mu)
    else:
        a = 1 / relvar
        expect = stats.nbinom.logsf(k - 1, a, a / (a + mu))
    assert got == pytest.approx(poisson.count_log_sf_ref(k, mu, relvar), rel=1e-9, abs=1e-12)
    if expect > -700:
        assert got == pytest.approx(expect, rel=1e-7, abs=1e-10)


@SETTINGS
@given(mu=st.floats(0.05, 300.0), relvar=st.sampled_from([0.0, 1e-3, 0.02]), log_alpha=st.floats(-25.0, -0.1))
def test_count_threshold_matches_reference(mu: float, relvar: float, log_alpha: float) -> None:
    k = poisson.count_threshold(mu, relvar, log_alpha)
    assert k == poisson.count_threshold_ref(mu, relvar, log_alpha)
    assert poisson.count_log_sf(k, mu, relvar) <= log_alpha
    assert k == 1 or poisson.count_log_sf(k - 1, mu, relvar) > log_alpha


@pytest.mark.parametrize("mu", [2.0, 8.0, 40.0])
def test_poisson_thresholds_known_values(mu: float) -> None:
    """False-alarm probability 0.001 at the background means of Burr & Gavron: the first k with sf(k-1) <= 0.001."""
    k = poisson.count_threshold(mu, 0.0, math.log(1e-3))
    assert stats.poisson.sf(k - 1, mu) <= 1e-3 < stats.poisson.sf(k - 2, mu)
    assert {2.0: 9, 8.0: 19, 40.0: 62}[mu] == k


@SETTINGS
@given(
    x=profiles(max_size=40),
    m=st.integers(1, 6),
    b=st.floats(0.5, 50.0),
    relvar=st.sampled_from([0.0, 0.01]),
    ship=st.tuples(st.floats(0.0, 20.0), st.floats(0.0, 1.0), st.floats(1.0, 5.0)),
)
def test_window_kernels_match_reference(
    x: np.ndarray, m: int, b: float, relvar: float, ship: tuple[float, float, float]
) -> None:
    windows = x.size - min(m, x.size) + 1
    spread = np.linspace(0.0, ship[0], windows)
    args = (np.full(windows, b), np.full(windows, relvar), spread, np.full(windows, ship[1]), ship[2])
    close(poisson.ship_window_log_sf(x, m, *args), poisson.ship_window_log_sf_ref(x, m, *args))
    for i in range(x.size):
        close(poisson.window_sum_at(x, i, m), poisson.window_sum_at_ref(x, i, m))


@SETTINGS
@given(
    k=st.integers(0, 120),
    b=st.floats(0.05, 60.0),
    b_relvar=st.sampled_from([0.0, 0.02]),
    ship=st.floats(0.0, 20.0),
    ship_relvar=st.sampled_from([0.0, 0.47]),
    dispersion=st.floats(1.0, 5.0),
)
def test_ship_log_sf_matches_reference(
    k: int, b: float, b_relvar: float, ship: float, ship_relvar: float, dispersion: float
) -> None:
    got = poisson.ship_log_sf(k, b, b_relvar, ship, ship_relvar, dispersion)
    assert got == pytest.approx(
        poisson.ship_log_sf_ref(k, b, b_relvar, ship, ship_relvar, dispersion), rel=1e-7, abs=1e-10
    )


@SETTINGS
@given(
    b=st.floats(0.05, 60.0),
    ship=st.floats(0.0, 20.0),
    ship_relvar=st.sampled_from([0.0, 0.47]),
    log_alpha=st.floats(-20.0, -0.1),
)
def test_ship_threshold_matches_reference(b: float, ship: float, ship_relvar: float, log_alpha: float) -> None:
    k = poisson.ship_threshold(b, 0.01, ship, ship_relvar, 3.4, log_alpha)
    assert k == poisson.ship_threshold_ref(b, 0.01, ship, ship_relvar, 3.4, log_alpha)
    assert poisson.ship_log_sf(k, b, 0.01, ship, ship_relvar, 3.4) <= log_alpha


def test_ship_bursts_known_values() -> None:
    """Without bursts the null is the background's (Poisson, or negative binomial with its uncertainty). With a
    Poisson number of bursts of geometric size (``p = 2 / (dispersion + 1)``) and no background, P(X >= 1) is the
    chance of at least one burst; where bursts are rare, P(X >= k) is that of one burst of k or more,
    ``lambda (1 - p)^(k - 1)``; the mean and the variance-to-mean ratio are the ship effect's."""
    assert poisson.ship_log_sf(9, 10.0, 0.0, 0.0, 0.5, 3.0) == pytest.approx(stats.poisson.logsf(8, 10.0))
    p = 2.0 / (3.0 + 1.0)
    assert poisson.ship_log_sf(1, 1e-9, 0.0, 2.0, 0.0, 3.0) == pytest.approx(
        math.log(1.0 - math.exp(-2.0 * p)), rel=1e-6
    )
    rare = 0.002 * p
    assert poisson.ship_log_sf(12, 1e-9, 0.0, 0.002, 0.0, 3.0) == pytest.approx(
        math.log(rare * (1.0 - p) ** 11), abs=0.01
    )
    k = np.arange(0, 200)
    log_sf = np.array([poisson.ship_log_sf(int(j), 1e-9, 0.0, 2.0, 0.0, 3.0) for j in k])
    pmf = -np.diff(np.exp(log_sf))
    mean = float(np.sum(k[:-1] * pmf))
    assert mean == pytest.approx(2.0, rel=1e-6)
    assert float(np.sum((k[:-1] - mean) ** 2 * pmf)) / mean == pytest.approx(3.0, rel=1e-6)


# --------------------------------------------------------------------------- location and extent
@SETTINGS
@given(x=profiles(min_size=2), scale=st.floats(0.3, 6.0), data=st.data())
def test_locate_kernels_match_reference(x: np.ndarray, scale: float, data: st.DataObject) -> None:
    w = matched.point_templates(np.array([scale]), 2.5, 20)[0][0]
    smoothed = locate.smooth(x, w)
    close(smoothed, locate.smooth_ref(x, w))
    c = data.draw(st.integers(0, x.size - 1))
    close(locate.peak_refine(smoothed, c), locate.peak_refine_ref(smoothed, c))
    close(locate.half_max_edges(smoothed, c), locate.half_max_edges_ref(smoothed, c))


def test_half_max_edges_known_value() -> None:
    """A triangle 0, 2, 4, 2, 0 crosses half its peak exactly at indices 1 and 3; the parabola through
    (0, 1), (1, 3), (2, 2) peaks at 1 + 1/6."""
    assert locate.half_max_edges(np.array([0.0, 2.0, 4.0, 2.0, 0.0]), 2) == pytest.approx((1.0, 3.0))
    assert locate.half_max_edges(np.array([3.0, 4.0, 1.0]), 1) == pytest.approx((-0.5, 1 + 2 / 3))
    assert locate.peak_refine(np.array([1.0, 3.0, 2.0]), 1) == pytest.approx(1 + 1 / 6)
