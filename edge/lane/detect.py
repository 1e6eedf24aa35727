"""Radiation detection for one occupancy: streaming tests, provisional alarms, final analysis.

Tests (kernels in :mod:`kernels`):

- ``gamma``: point-source matched filter on the gross count profile (a small bank of widths around the
  one the speed and ``source_standoff_m`` give), in two versions. Against the tracked background as is
  (full sensitivity where nothing shields; a shadow only lowers it). And against the occupancy's own
  level: around each centre a straight-line shadow (any level, any slope) is fitted on sidebands together
  with the source, and the source is also held against the brighter sideband's level flat across it (a step
  of the shadow under the template; the smaller z counts: :mod:`lanewatch.kernels.sideband`), so the test
  holds under any shadow a line or a step follows over a few metres; where the shadow is rougher than that
  (patches), the z's of the occupancy are divided by their own spread below the median (at least 1), measured
  away from the strongest centre, which a source does not widen. The statistic is the larger z.
- ``gamma-shape`` (K >= 2 energy windows): conditional binomial test of the low-window fraction against
  the background's, corrected for the way shielding softens the background (fitted over the rest of the vehicle,
  allowing a section to soften otherwise, ``SHAPE_SECTION_SD``), matched-filter weighted
  (:mod:`lanewatch.kernels.shape`); two-sided: ``direction`` "softer" (Cs-137 and lighter emitters, HEU, Pu,
  medical isotopes) or "harder" (Co-60, and NORM: K-40, thorium).
- ``gamma-side`` (an even number of gamma channels, the first half one column of the portal and the second half
  the other, as RPMs number their panels): the same conditional binomial test and shielding correction
  (:mod:`lanewatch.kernels.shape`, its own prior ``SIDE_PRIOR_SD``) on the first half's share of the gross counts.
  A vehicle's shadow lowers both columns alike, or by a ratio the correction fits per occupancy, however deep it is
  along the vehicle; a load off-centre in some sections and not in others changes that ratio from section to
  section, which the test allows for (``SIDE_SECTION_SD``: its variance grows with the shadow's depth under the
  window). A source nearer one column, or shielded more toward the other by the cargo, changes the share where it
  passes. Two-sided: ``side`` "first" or "second", the
  half whose share rose. It finds sources whose excess does not make up the shadow's deficit in the gross counts.
- ``neutron``: tail test of the neutron counts on sliding windows about as long as a point source takes to pass,
  summed over all tubes and, with an even number of tubes and a tracked background per tube, over each column's
  tubes (the first half of the tubes one column of the portal, as RPMs number them; ``side`` names the column): a
  source near one column sends most of its neutrons to that column's tubes (inverse square and the tubes' cosine:
  about 3.5 to 1 at 1 m off the lane's centre line), while the background, and the spallation of steel between the
  columns, reach both alike, so a column's null is its share of the tracked background times the null of all tubes
  (the bursts' dispersion kept whole, which a column's share of them only lowers). The null
  (:mod:`lanewatch.kernels.poisson`): the tracked background (with its uncertainty) plus the He-3 ship effect
  of steel cargo, whose expected counts grow with the gamma shadow (the suppression of the gross gamma background
  over each neutron sample above ``SHIP_KNEE``, times the rate) and whose bursts and vehicle-to-vehicle spread
  widen it (``SHIP_DISPERSION``, ``SHIP_RATE_RELVAR``; fitted by :mod:`benchmarks.ship_effect`), as a negative
  binomial of matched moments, and a relative spread of the background under the vehicle (``NEUTRON_VEHICLE_SD``).
  The vehicle's steel makes bursts wherever it is, and they reach the tubes all along the occupancy: where the
  window's shadow is lighter than the occupancy's mean (the cab, the vehicle's ends, the hold-in; the mean taken above
  the gamma level's counting noise, :func:`_ship_spread`) the null adds the difference as bursts of geometric size
  (variance-to-mean ``SHIP_DISPERSION``), whose tail is far longer than a negative binomial's where they are rare.
  The rate is the vehicle's own: ``SHIP_RATE`` (spread ``SHIP_RATE_RELVAR``) updated with the occupancy's excess
  over the background away from each window (:func:`_ship_rate`). The whole-occupancy excess is reported, not
  alarmed on.
- ``neutron-gamma``: a plutonium source weak in both: each window's neutron z (its tail probability as a
  normal z, the largest over its tube sets), when at least ``JOINT_MIN_Z``, combined with the gamma z where the
  window is centred, ``sqrt(z_n^2 + z_gamma+^2)`` (``z_gamma+`` its positive part, the largest over the gamma
  samples within half a neutron sample of the centre): the softer-shape z with energy windows (NORM, being
  harder, adds nothing), else the gross z against the tracked background less the z the whole occupancy
  shares (the median z of the centres beyond the nominal template's reach from the strongest one, when
  positive: a gamma background that rose since it was tracked lifts every centre where nothing shields, and
  is no point source), none when that excess is norm-consistent; nominal template only.
  Reported only when no other test alarms.

A gamma, side or harder-shape alarm is ``norm-consistent`` when its excess (a side alarm's: the gross excess) is
spread (a uniform load, of any
length from ``norm_min_extent`` of the vehicle and ``NORM_MIN_LOAD_M`` up, explains it clearly better than any point
source at the standoff and speed can, an isotropic or a flat panel's profile, ``NORM_PREFERENCE``), holds no point
source on top of that load (``NORM_PEAK_Z``),
with energy windows is harder than background over the load (the low-window fraction at least ``NORM_HARD_Z`` standard
deviations below what background would give), and no softer-shape alarm stands; on gross counts the
spread alone decides. ``norm_verdict`` says whether such alarms are released (they stop alarming) or
stay alarms with the ``norm-consistent`` entry beside them. Softer excesses and point-like ones are
never released. The vehicle is the occupancy less the portal's ``occupancy_hold_in_s``.

Thresholds come from the configured false-alarm probabilities per occupancy. The gamma budget is split
evenly between the gross test (its two versions and their templates sharing that half, each version's
templates with their own lag-1 autocorrelation; ``SIDE_SHARE`` of that half goes to the side test, half per
side) and the shape test (half per side);
within a test the chance that the maximum over centres and templates crosses ``u`` is bounded by Rice's
up-crossing formula for the template's lag-1 autocorrelation (never more than Bonferroni over the
centres), and a Cornish-Fisher term corrects each z for the skewness of its counts. The neutron budget
is split between the two neutron tests (``JOINT_SHARE`` the neutron-gamma test's), each on its own threshold:
per window and tube set, the chance that the neutron z alone passes ``u`` (the neutron test's share), and the
chance that it stays below ``u`` and at least ``JOINT_MIN_Z`` while the combination passes ``u_joint`` (the
neutron-gamma test's), the gamma z independent of the neutrons and its largest value over the window's gamma
samples bounded by the same Rice formula; Bonferroni over windows and tube sets. (One threshold for both gave the
combined test 85-92 % of the budget, so the neutron test alone needed a z about 0.3 higher, and lost that power
where the gamma evidence at a window adds nothing, as the gross z under a shadow mostly does.) A window alarms as
``neutron`` when its count alone passes.
Provisional alarms use thresholds for the longest occupancy (``occupancy_timeout_s``), final ones for
the actual number of samples, so every provisional alarm is also a final one.

Without a tracked background (a file replay, a tracked gamma background below ``MIN_GAMMA_CPS``, or one
far above the occupancy's least shielded second, :func:`lanewatch.edge.lane.calibration.occupancy_ratio`:
then ``background.tracked_rejected_ratio`` says by how much), the background is estimated from the
occupancy itself: the lower quartile of the gross rate corrected
to a mean, the energy-window shape of the samples at or below it, and a sigma-clipped mean of the
neutron counts less their expected ship effect. Then only the sideband version of the gross test
runs, the ship effect is measured against the estimated gamma level (so it is underestimated under a
vehicle that shields throughout), and there are no provisional gamma or neutron alarms.

Times ``t_offset_s`` are seconds from the start of the occupancy to the evidence (the source's closest
approach); ``location_m`` is that time times the speed: metres from the vehicle's front, with
``location_sd_m`` its standard deviation (the neutron tests' too: :meth:`OccupancyAnalyzer._neutron_sd_m`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist
from typing import Any

import numpy as np

from lanewatch.edge.config import DetectionConfig
from lanewatch.edge.lane.background import BackgroundSnapshot
from lanewatch.edge.lane.calibration import TOLERANCE, occupancy_ratio
from lanewatch.kernels.baseline import nsigma_series
from lanewatch.kernels.locate import half_max_edges, peak_refine, smooth
from lanewatch.kernels.matched import mf_at, mf_series, point_templates
from lanewatch.kernels.poisson import ship_log_sf, ship_threshold, ship_window_log_sf, window_sum_at
from lanewatch.kernels.shape import shape_at, shape_series, shape_span, softening_fit
from lanewatch.kernels.sideband import projected_rho1, sideband_series
from lanewatch.kernels.suppression import flank_level_series, softening_covariate_into, span_levels

TEMPLATE_TRUNCATION = 2.5
"""Templates reach this many scales (source standoffs) either side of their centre."""
BANK_FACTORS = (0.6, 1.0, 1.6)
"""Template scales of the bank, as factors of the one from the speed and standoff."""
MAX_HALFWIDTH = 80
"""Cap on a template's half-width (samples), for very slow vehicles."""
FLANK_GAP_SCALES = 1.0
"""Distance from a centre to the start of its flanks, in template scales."""
FLANK_SCALES = 2.0
"""Length of each flank for the local shielding level (the excess a NORM check weighs), in template scales (at least
MIN_FLANK samples)."""
SIDEBAND_SCALES = 2.0
"""Length of each sideband of the sideband test beyond its template, in template scales."""
MIN_FLANK = 3
"""Shortest flank (samples)."""
LEVEL_HALF = 2
"""Half-width (samples) of the window over which a sample's shielding level is measured."""
SOFTENING_PRIOR_SD = 0.05
"""Prior spread of the shape test's shielding correction kappa (low-window fraction per unit s/(1-s))."""
SHAPE_SECTION_SD = 0.05
"""How far (standard deviation) the shape test's shielding correction kappa may differ from one section of a load to
the next, beyond its fit over the rest of the vehicle: sections of other materials soften the background by other
amounts (the cab's engine, a steel section, an organic one). As far as vehicles differ from each other
(``SOFTENING_PRIOR_SD``)."""
SIDE_SHARE = 0.25
"""Share of the gross test's false-alarm budget that the side test takes (half of it per side)."""
SIDE_PRIOR_SD = 0.1
"""Prior spread of the side test's shielding correction (first half's share per unit s/(1-s)): the two columns of a
portal may see a load's shadow differently by tens of percent."""
SIDE_SECTION_SD = 0.1
"""How far (standard deviation, first half's share per unit s/(1-s)) the side test's shielding correction may differ
from one section of a load to the next, beyond its fit over the rest of the vehicle: a load placed off-centre in some
sections and not in others shields the two columns by ratios that change along the vehicle. 0.1 allows the columns'
shielding to differ by about 30 % (one standard deviation per column) from section to section."""
MIN_GAMMA_CPS = 1.0
"""A tracked gamma background below this (cps, all channels) is a dead counter, not a background."""
MIN_NEUTRON_CPS = 0.1
"""A tracked neutron background below this (cps, all tubes) is a dead counter, not a background."""
ESTIMATE_QUARTILE_Z = 0.674
"""Standard deviations between the lower quartile and the mean of Poisson counts (background estimate)."""
MIN_SPEED_KMH = 1.0
"""Speeds below this (km/h; a vehicle stopped in the portal) are taken as this for the template widths."""
NORM_HARD_Z = 1.0
"""How many standard deviations harder than background an excess must be to be NORM-consistent."""
NORM_MODEL_ERROR = 0.1
"""Fraction of a uniform-load model of a NORM excess allowed as model error before a residual counts as a peak."""
NORM_MIN_LOAD_M = 2.0
"""Shortest load (m) an excess may be spread over to be NORM-consistent: bulk cargo, not a package."""
PANEL_WIDTHS = (0.6, 0.8, 1.0)
"""Half-maximum widths, as fractions of the nominal template's, of the flat-panel point-source profiles a NORM load
must beat besides the bank's (:func:`_point_gain`)."""
PANEL_HALF_MAX = 1.0 / math.sqrt(2.0 ** (2.0 / 3.0) - 1.0)
"""Scale of a flat-panel profile ``(1 + (u/s)^2)^-1.5`` as wide at half maximum as ``1 / (1 + u^2)`` (1.305)."""
NORM_PEAK_Z = 3.0
"""z of a point source on top of a NORM load above which the load is not released."""
NORM_PREFERENCE = 9.0
"""How much better (chi-square) a spread load must explain an excess than a point source for NORM release."""
NEUTRON_WINDOW_STANDOFFS = 2.8
"""Length of the neutron sliding window, in standoffs travelled: the box that best catches a point
source's 1/(1 + (x/d)^2) profile is 2.8 d long."""
MAX_NEUTRON_WINDOW = 5
"""Longest sliding window (samples) of the neutron test."""
JOINT_MIN_Z = 1.0
"""Smallest neutron z of a window for the gamma evidence at its place to count toward the neutron test."""
JOINT_SHARE = 0.5
"""Share of the neutron false-alarm budget the neutron-gamma test takes (where the neutron test alone does not
cross); the neutron test has the rest, on its own threshold. Even, as the gamma budget is split between its tests."""
MIN_NEUTRON_MEAN = 1e-3
"""Floor on the neutron background mean per sample (counts), so a dead counter cannot alarm on one count."""
SHIP_KNEE = 0.10
"""Ship effect: gamma suppression (fraction of the gross background a load blocks) that light loads (cab,
organics, empty containers) reach without steel; the covariate is the suppression above it. Fitted with
``SHIP_RATE``, ``SHIP_RATE_RELVAR`` and ``SHIP_DISPERSION`` on benign simulated traffic by
``python -m benchmarks.ship_effect --seeds 101-110 --n 2000`` (20000 vehicles, seeds disjoint from the
detection benchmark's; see that module for the moment fit and the tail check)."""
SHIP_RATE = 10.15
"""Ship effect: expected spallation neutrons (counts, all tubes) per second and unit of suppression above
``SHIP_KNEE``: a steel load blocking 25 % of the background adds about 1.5 cps."""
SHIP_RATE_RELVAR = 0.47
"""Ship effect: relative variance of that rate from vehicle to vehicle (how much steel a given suppression
means varies with the load)."""
SHIP_DISPERSION = 3.37
"""Ship effect: variance-to-mean ratio of the ship-effect counts (spallation comes in bursts of several
neutrons; Burr & Gavron 2012: non-Poisson at short counting times)."""
NEUTRON_VEHICLE_SD = 0.1
"""Relative standard deviation of the neutron background under a vehicle beyond the uncertainty of the level it is
tested against: spallation from steel whose gamma shadow does not show it (a shadow that lies elsewhere than the
steel, or none), and the vehicle's shielding of the cosmic-ray background. Both scale with the cosmic-ray flux, as
the background does. Chosen on the robustness benchmark's benign traffic (``benchmarks/README.md``): without it,
no-shadow and ramped-shadow lanes raised 2-3 neutron false alarms per 1000 at any neutron budget down to 2e-4."""
TAIL_STEP = 0.05
"""Grid step (z^2 units) of the distribution of the combined gamma evidence in the neutron threshold."""
TAIL_MAX = 100.0
"""End of that grid (z^2 units)."""
SHADOW_ROUGHNESS = 0.02
"""Fraction of the background by which a vehicle's shadow may depart from a straight line over a point source's
width (patches of cargo, the ends of sections): the sideband test's systematic uncertainty, which outweighs the
counting noise where counts are high (slow vehicles, high backgrounds)."""
SPREAD_QUANTILE = 0.1587
"""Quantile one standard deviation below the median of a normal: the sideband z's spread is measured down to it."""
SPREAD_MIN_CENTRES = 8
"""Fewest sideband z's from which their spread is measured (fewer: taken as 1)."""
_INITIAL_CAPACITY = 512


def _tail(u: float, n: int, rho1: tuple[float, ...]) -> float:
    """Upper bound on P(max over n centres and the templates of a unit normal process > u)."""
    q = 0.5 * math.erfc(u / math.sqrt(2.0))
    density = math.exp(-0.5 * u * u) / (2.0 * math.pi)
    return sum(min(n * q, q + (n - 1) * math.sqrt(2.0 * (1.0 - r)) * density) for r in rho1)


@lru_cache(maxsize=4096)
def max_threshold(alpha: float, n: int, rho1: tuple[float, ...]) -> float:
    """Threshold u with P(max z > u) <= alpha over ``n`` centres of templates with lag-1 autocorrelations ``rho1``."""
    lo, hi = 0.0, 40.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if _tail(mid, max(n, 1), rho1) > alpha:
            lo = mid
        else:
            hi = mid
    return hi


_erfc = np.frompyfunc(math.erfc, 1, 1)


@lru_cache(maxsize=64)
def _gamma_survival(g: int, rho1: tuple[float, ...]) -> np.ndarray:
    """Upper bound on ``P(z_gamma+^2 > v)`` at ``v = 0, TAIL_STEP, ...`` up to ``TAIL_MAX`` (zeros for ``g = 0``).

    ``z_gamma`` is the largest z over ``g`` consecutive centres of templates with lag-1
    autocorrelations ``rho1``: ``min(1, _tail(sqrt v, g, rho1))``.
    """
    v = np.arange(0.0, TAIL_MAX + 0.5 * TAIL_STEP, TAIL_STEP)
    if g == 0:
        return np.zeros(v.size)
    q = 0.5 * _erfc(np.sqrt(v) / math.sqrt(2.0)).astype(np.float64)
    density = np.exp(-0.5 * v) / (2.0 * math.pi)
    tail = sum(np.minimum(g * q, q + (g - 1) * math.sqrt(2.0 * (1.0 - r)) * density) for r in rho1)
    return np.minimum(tail, 1.0)


def _normal_threshold(p: float) -> float:
    """The z whose normal upper tail is ``p``."""
    lo, hi = 0.0, 40.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if 0.5 * math.erfc(mid / math.sqrt(2.0)) > p:
            lo = mid
        else:
            hi = mid
    return hi


def _joint_tail(u_alone: float, u: float, survival: np.ndarray) -> float:
    """Per-window probability that the neutron-gamma test crosses ``u`` where the neutron test alone stays below
    ``u_alone``: the neutron z in ``[JOINT_MIN_Z, u_alone)`` and ``z^2 + z_gamma+^2 > u^2`` (module docstring)."""
    if u_alone <= JOINT_MIN_Z:
        return 0.0
    z = np.linspace(JOINT_MIN_Z, u_alone, 257)
    v = u * u - z * z
    index = np.minimum((np.maximum(v, 0.0) / TAIL_STEP).astype(np.int64), survival.size - 1)
    f = np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi) * np.where(v < 0.0, 1.0, survival[index])
    return float(np.sum(f[1:] + f[:-1])) * 0.5 * (z[1] - z[0])


def neutron_threshold(alpha: float, windows: int, g: int, rho1: tuple[float, ...]) -> tuple[float, float]:
    """Thresholds (z) of the neutron test and of the neutron-gamma test: ``windows`` windows share ``alpha``,
    ``JOINT_SHARE`` of it the neutron-gamma test's; the gamma z of each window is the largest over ``g`` centres (0: no
    gamma evidence, no neutron-gamma test: its threshold infinite) of templates with lag-1 autocorrelations ``rho1``
    (rounded down to 0.005, which only widens the bound and lets nearby speeds share the result)."""
    return _neutron_threshold(alpha, windows, g, tuple(math.floor(200.0 * r) / 200.0 for r in rho1))


@lru_cache(maxsize=4096)
def _neutron_threshold(alpha: float, windows: int, g: int, rho1: tuple[float, ...]) -> tuple[float, float]:
    windows = max(windows, 1)
    if g == 0:
        return _normal_threshold(alpha / windows), math.inf
    u_alone = _normal_threshold((1.0 - JOINT_SHARE) * alpha / windows)
    survival = _gamma_survival(g, rho1)
    lo, hi = 0.0, 40.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if windows * _joint_tail(u_alone, mid, survival) > JOINT_SHARE * alpha:
            lo = mid
        else:
            hi = mid
    return u_alone, hi


def neutron_window(speed_kmh: float, standoff_m: float, dt_s: float) -> int:
    """Samples of ``dt_s`` seconds in the neutron sliding window at ``speed_kmh`` (``NEUTRON_WINDOW_STANDOFFS``)."""
    length = NEUTRON_WINDOW_STANDOFFS * standoff_m / (max(speed_kmh, MIN_SPEED_KMH) / 3.6 * dt_s)
    return int(min(MAX_NEUTRON_WINDOW, max(1, round(length))))


def ship_covariate(level: np.ndarray, dt_s: float, knee: float = SHIP_KNEE) -> np.ndarray:
    """Ship-effect covariate per neutron sample: gamma suppression above ``knee`` times ``dt_s`` (s).

    ``level`` is the gross gamma observed/expected over each neutron sample
    (:func:`lanewatch.kernels.suppression.span_levels`).
    """
    return np.maximum(1.0 - np.asarray(level, dtype=np.float64) - knee, 0.0) * dt_s


@dataclass(frozen=True)
class GammaPlan:
    """Template bank, flanks and sample counts for one sample interval and speed."""

    dt_s: float
    scale: float
    """Template scale (samples) from the speed and standoff."""
    bank: np.ndarray
    halfw: np.ndarray
    nominal: np.ndarray
    """The bank's middle template, trimmed to its own width (for smoothing an excess)."""
    panels: tuple[np.ndarray, ...]
    """Flat-panel point-source templates (:data:`PANEL_WIDTHS`), each trimmed to its own width."""
    rho1: tuple[float, ...]
    side_rho1: tuple[float, ...]
    """Lag-1 autocorrelations of the sideband statistics (:mod:`lanewatch.kernels.sideband`) of the bank."""
    mid: int
    """Index of the nominal template (scale factor 1) in the bank."""
    half: int
    """Largest template half-width: a centre is complete ``half`` samples after it."""
    gap: int
    width: int
    side: int
    """Sideband length (samples) of the sideband test, beyond the template."""
    n_1s: int
    """Samples in the fielded rule's 1 s window."""


@lru_cache(maxsize=256)
def gamma_plan(dt_s: float, speed_kmh: float, standoff_m: float) -> GammaPlan:
    """The :class:`GammaPlan` for a sample interval (s), speed (km/h) and source standoff (m)."""
    v = max(speed_kmh, MIN_SPEED_KMH) / 3.6
    scale = max(standoff_m / (v * dt_s), 0.25)
    bank, halfw = point_templates(np.array(BANK_FACTORS) * scale, TEMPLATE_TRUNCATION, MAX_HALFWIDTH)
    hmax = (bank.shape[1] - 1) // 2
    mid = len(BANK_FACTORS) // 2
    nominal = bank[mid, hmax - halfw[mid] : hmax + halfw[mid] + 1].copy()
    panel_bank, panel_halfw = point_templates(
        np.array(PANEL_WIDTHS) * PANEL_HALF_MAX * scale, TEMPLATE_TRUNCATION, MAX_HALFWIDTH, panel=True
    )
    panel_hmax = (panel_bank.shape[1] - 1) // 2
    panels = tuple(
        row[panel_hmax - h : panel_hmax + h + 1].copy() for row, h in zip(panel_bank, panel_halfw, strict=True)
    )
    width = max(MIN_FLANK, math.ceil(FLANK_SCALES * scale))
    side = max(MIN_FLANK, math.ceil(SIDEBAND_SCALES * scale))
    return GammaPlan(
        dt_s=dt_s,
        scale=scale,
        bank=bank,
        halfw=halfw,
        nominal=nominal,
        panels=panels,
        rho1=tuple(float(np.dot(row[:-1], row[1:]) / np.dot(row, row)) for row in bank),
        side_rho1=tuple(projected_rho1(row[hmax - h : hmax + h + 1], side) for row, h in zip(bank, halfw, strict=True)),
        mid=mid,
        half=int(halfw.max()),
        gap=max(1, math.ceil(FLANK_GAP_SCALES * scale)),
        width=width,
        side=side,
        n_1s=max(1, round(1.0 / dt_s)),
    )


@dataclass(frozen=True)
class Thresholds:
    """Alarm thresholds (z) of the gamma tests for a number of centres, and their skewness factors."""

    gross: float
    shape: float
    side: float

    @property
    def cf_gross(self) -> float:
        return (self.gross**2 - 1.0) / 6.0

    @property
    def cf_shape(self) -> float:
        return (self.shape**2 - 1.0) / 6.0

    @property
    def cf_side(self) -> float:
        return (self.side**2 - 1.0) / 6.0


def _finite_list(values: np.ndarray, digits: int = 3) -> list[float | None]:
    return [round(float(v), digits) if math.isfinite(v) else None for v in values]


class _Grow:
    """A preallocated array that doubles when full; ``view`` is the filled part."""

    def __init__(self, shape: tuple[int, ...] = ()) -> None:
        self.data = np.zeros((_INITIAL_CAPACITY, *shape))
        self.n = 0

    def append(self, value: Any) -> int:
        if self.n == self.data.shape[0]:
            self.data = np.concatenate((self.data, np.zeros_like(self.data)))
        self.data[self.n] = value
        self.n += 1
        return self.n - 1

    @property
    def view(self) -> np.ndarray:
        return self.data[: self.n]


def _alarm(
    reason: str, statistic: float, threshold: float, t_offset_s: float | None, speed_kmh: float, sd_m: float | None
) -> dict[str, Any]:
    return {
        "reason": reason,
        "statistic": round(float(statistic), 3),
        "threshold": round(float(threshold), 3),
        "location_m": None if t_offset_s is None else round(speed_kmh / 3.6 * t_offset_s, 2),
        "location_sd_m": None if sd_m is None else round(sd_m, 2),
        "t_offset_s": None if t_offset_s is None else round(t_offset_s, 3),
    }


@dataclass(frozen=True)
class _TubeSet:
    """Neutron tubes whose counts a neutron window sums: all of them, or one column of the portal."""

    side: str | None
    """None: all tubes; "first" or "second": the first or the second half of the tubes (one column of the portal, as
    RPMs number them)."""
    tubes: slice
    share: float
    """The set's share of the tracked neutron background, and of the ship effect (spallation in steel between the
    columns reaches both alike)."""
    relvar: float
    """Relative variance of the set's background level: its tracked counts' and the vehicle's
    (``NEUTRON_VEHICLE_SD``)."""


def _tube_sets(background_cps: np.ndarray, exposure_s: float) -> list[_TubeSet]:
    """The neutron tests' tube sets for a tracked background of ``background_cps`` per tube over ``exposure_s``: all
    tubes, and with an even number of them each column whose tubes count (module docstring)."""

    def relvar(cps: float) -> float:
        counts = cps * exposure_s
        return (1.0 / counts if counts > 0 else 0.0) + NEUTRON_VEHICLE_SD**2

    total = float(background_cps.sum())
    sets = [_TubeSet(None, slice(None), 1.0, relvar(total))]
    half = background_cps.size // 2
    if background_cps.size % 2 == 0 and half:
        for side, tubes in (("first", slice(0, half)), ("second", slice(half, None))):
            cps = float(background_cps[tubes].sum())
            if cps > 0:
                sets.append(_TubeSet(side, tubes, cps / total, relvar(cps)))
    return sets


def _with_side(entry: dict[str, Any], tube_set: _TubeSet) -> dict[str, Any]:
    """``entry`` with the column its neutron window counts (``side``), when not all tubes."""
    return entry if tube_set.side is None else {**entry, "side": tube_set.side}


@dataclass
class _GammaBackground:
    """What the gamma tests expect: counts per sample, its relative variance, the low-window fraction."""

    expected: np.ndarray
    relvar: float
    p0: float
    var_p0: float
    first: float
    """Share of the gross background in the first half of the channels (one column of the portal)."""
    var_first: float
    origin: str
    cps: list[float | None]


class OccupancyAnalyzer:
    """Streaming radiation analysis of one occupancy (see the module docstring).

    Feed samples in arrival order with :meth:`add_gamma` / :meth:`add_neutron`; each returns the
    provisional alarms its sample raised (at most one per reason per occupancy). :meth:`finish` returns
    the final analysis. Malformed samples raise ValueError and leave the analyzer unchanged.
    """

    def __init__(
        self, cfg: DetectionConfig, background: BackgroundSnapshot, gamma_channels: int, neutron_channels: int
    ) -> None:
        self.cfg = cfg
        self.gamma_channels = gamma_channels
        self.neutron_channels = neutron_channels
        self.windows = max(1, len(cfg.energy_windows_kev) - 1)
        self.speed_kmh = cfg.default_speed_kmh
        self.sides = gamma_channels >= 2 and gamma_channels % 2 == 0
        shape_share = 0.5 if self.windows >= 2 else 0.0
        gross_share = cfg.gamma_false_alarm_probability * (1.0 - shape_share)
        side_share = SIDE_SHARE if self.sides else 0.0
        self.alpha_gross = gross_share * (1.0 - side_share) / 2.0
        self.alpha_side = gross_share * side_share / 2.0
        self.alpha_shape_side = cfg.gamma_false_alarm_probability * shape_share / 2.0
        self.raised: dict[str, dict[str, Any]] = {}
        self.gamma_dt_s = 0.0
        self.neutron_dt_s = 0.0
        self._gross = _Grow()
        self._low = _Grow()
        self._first = _Grow()
        self._win = _Grow((self.windows,))
        self._channels = _Grow((gamma_channels, self.windows))
        self._dts = _Grow()
        self._expected = _Grow()
        self._softening = _Grow()
        self._neutron = _Grow()
        self._tubes = _Grow((neutron_channels,))
        self._plan: GammaPlan | None = None
        self._live: Thresholds | None = None
        self._neutron_live_u: float | None = None
        self._tracked: _GammaBackground | None = None
        self._neutron_cps: float | None = None
        self._tube_sets: list[_TubeSet] = []
        self._neutron_live_log_sf = 0.0
        self._joint_evidence: np.ndarray | None = None
        g = None if background.gamma_cps is None else np.asarray(background.gamma_cps, dtype=np.float64)
        if g is not None and g.shape != (gamma_channels, self.windows):
            raise ValueError(f"gamma background shape {g.shape} != ({gamma_channels}, {self.windows})")
        if g is not None and float(g.sum()) >= MIN_GAMMA_CPS:
            total = float(g.sum())
            counts = total * background.gamma_exposure_s
            p0 = float(g[:, 0].sum()) / total if self.windows >= 2 else 1.0
            first = float(g[: gamma_channels // 2].sum()) / total
            self._tracked = _GammaBackground(
                expected=np.empty(0),
                relvar=1.0 / counts if counts > 0 else 0.0,
                p0=p0,
                var_p0=p0 * (1.0 - p0) / counts if counts > 0 else 0.0,
                first=first,
                var_first=first * (1.0 - first) / counts if counts > 0 else 0.0,
                origin="tracked",
                cps=_finite_list(g.reshape(-1)),
            )
            self._gamma_total_cps = total
        if background.neutron_cps is not None:
            nb = np.asarray(background.neutron_cps, dtype=np.float64).reshape(-1)
            if nb.shape != (neutron_channels,):
                raise ValueError(f"neutron background shape {nb.shape} != ({neutron_channels},)")
            if float(nb.sum()) >= MIN_NEUTRON_CPS:
                self._neutron_cps = float(nb.sum())
                self._tube_sets = _tube_sets(nb, background.neutron_exposure_s)

    # ----------------------------------------------------------------- inputs
    def set_speed(self, speed_kmh: float) -> None:
        """Vehicle speed (km/h) from the device; templates follow it from the next sample."""
        if not math.isfinite(speed_kmh) or speed_kmh < 0:
            raise ValueError(f"speed must be a finite non-negative number of km/h, got {speed_kmh!r}")
        self.speed_kmh = max(float(speed_kmh), MIN_SPEED_KMH)
        self._plan = None

    def _gamma_plan(self) -> GammaPlan:
        if self._plan is None:
            self._plan = gamma_plan(self.gamma_dt_s, round(self.speed_kmh, 1), self.cfg.source_standoff_m)
            n_max = max(1, math.ceil(self.cfg.occupancy_timeout_s / self.gamma_dt_s))
            self._live = self._thresholds(n_max)
        return self._plan

    def _thresholds(self, n: int) -> Thresholds:
        plan = self._gamma_plan()
        shape = max_threshold(self.alpha_shape_side, n, plan.rho1) if self.windows >= 2 else math.inf
        side = max_threshold(self.alpha_side, n, plan.rho1) if self.sides else math.inf
        return Thresholds(
            gross=max_threshold(2.0 * self.alpha_gross, n, plan.rho1 + plan.side_rho1), shape=shape, side=side
        )

    def add_gamma(self, counts: np.ndarray, dt_s: float) -> list[dict[str, Any]]:
        """One gamma sample: counts (channels, K) (or (channels,) when K = 1) in counts per ``dt_s`` seconds."""
        sample = np.asarray(counts, dtype=np.float64)
        if sample.ndim == 1 and self.windows == 1:
            sample = sample.reshape(-1, 1)
        if sample.shape != (self.gamma_channels, self.windows):
            raise ValueError(
                f"gamma sample: expected shape ({self.gamma_channels}, {self.windows}), got {sample.shape}"
            )
        if not (sample.min() >= 0 and sample.max() < math.inf):
            raise ValueError(f"gamma sample: counts must be finite and non-negative, got {sample.tolist()}")
        if not (dt_s > 0 and math.isfinite(dt_s)):
            raise ValueError(f"gamma sample: dt_s must be a positive number of seconds, got {dt_s!r}")
        if self._gross.n == 0:
            self.gamma_dt_s = float(dt_s)
        per_window = sample.sum(axis=0)
        i = self._gross.append(per_window.sum())
        self._low.append(per_window[0])
        self._first.append(sample[: self.gamma_channels // 2].sum())
        self._win.append(per_window)
        self._channels.append(sample)
        self._dts.append(dt_s)
        self._softening.append(0.0)
        if self._tracked is None:
            self._expected.append(0.0)
            return []
        self._expected.append(self._gamma_total_cps * dt_s)
        return self._live_gamma(i, self._tracked)

    def _live_gamma(self, i: int, bg: _GammaBackground) -> list[dict[str, Any]]:
        plan = self._gamma_plan()
        thr = self._live
        assert thr is not None
        x, e, n = self._gross.data, self._expected.data, i + 1
        raised = []
        c = i - plan.half
        if c >= 0 and "gamma" not in self.raised:
            z, t = mf_at(x, e, n, c, 1.0, bg.relvar, plan.bank, plan.halfw, thr.cf_gross)
            if z > thr.gross:
                raised.append(self._raise("gamma", z, thr.gross, t, i))
        if self.windows >= 2:
            # Every sample's covariate, from the first: the fit below reads the samples before the window.
            softening_covariate_into(x, e, n, i - LEVEL_HALF, LEVEL_HALF, self._softening.data)
        if c >= 0 and self.windows >= 2 and "gamma-shape" not in self.raised:
            b = self._softening.data
            kappa, var_kappa = softening_fit(
                self._low.data, x, b, max(0, c - plan.half), -1, -1, bg.p0, SOFTENING_PRIOR_SD**2
            )
            var_kappa += SHAPE_SECTION_SD**2
            z, t = shape_at(
                self._low.data, x, b, n, c, bg.p0, bg.var_p0, kappa, var_kappa, plan.bank, plan.halfw, thr.cf_shape
            )
            if abs(z) > thr.shape:
                raised.append(self._raise("gamma-shape", z, thr.shape, t, i))
        return raised

    def _location_sd_m(self, template: int, z: float) -> float:
        """Location uncertainty (m): the matched filter's Cramér-Rao width 2 d / |z| and the sample interval."""
        plan = self._gamma_plan()
        step_m = self.speed_kmh / 3.6 * plan.dt_s
        scale_m = BANK_FACTORS[template] * plan.scale * step_m
        return math.hypot(2.0 * scale_m / max(abs(z), 1.0), step_m / math.sqrt(12.0))

    def _entry(self, reason: str, z: float, thr: float, c: float, template: int) -> dict[str, Any]:
        alarm = _alarm(
            reason, z, thr, (c + 0.5) * self._gamma_plan().dt_s, self.speed_kmh, self._location_sd_m(template, z)
        )
        if reason == "gamma-shape":
            alarm["direction"] = "softer" if z > 0 else "harder"
        if reason == "gamma-side":
            alarm["side"] = "first" if z > 0 else "second"
        return alarm

    def _raise(self, reason: str, z: float, thr: float, template: int, i: int) -> dict[str, Any]:
        """A provisional alarm, located at the strongest gross excess seen so far.

        The streaming test may cross on the flank of a strong source, before its window is centred on
        it, so the window centre can lie metres ahead of the source; the excess peak is where it is.
        """
        n = i + 1
        excess = np.convolve(self._gross.data[:n] - self._expected.data[:n], np.ones(3), "same")
        alarm = self._entry(reason, z, thr, int(np.argmax(excess)), template)
        alarm["raised_at_s"] = round((i + 1) * self.gamma_dt_s, 3)
        self.raised[reason] = alarm
        return alarm

    def add_neutron(self, counts: np.ndarray, dt_s: float) -> list[dict[str, Any]]:
        """One neutron sample: counts (channels,) per ``dt_s`` seconds."""
        sample = np.asarray(counts, dtype=np.float64).reshape(-1)
        if sample.shape != (self.neutron_channels,):
            raise ValueError(f"neutron sample: expected {self.neutron_channels} channels, got shape {sample.shape}")
        if sample.size and not (sample.min() >= 0 and sample.max() < math.inf):
            raise ValueError(f"neutron sample: counts must be finite and non-negative, got {sample.tolist()}")
        if not (dt_s > 0 and math.isfinite(dt_s)):
            raise ValueError(f"neutron sample: dt_s must be a positive number of seconds, got {dt_s!r}")
        if self._neutron.n == 0:
            self.neutron_dt_s = float(dt_s)
        i = self._neutron.append(sample.sum())
        self._tubes.append(sample)
        if self._neutron_cps is None or self._tracked is None or self._gross.n == 0 or "neutron" in self.raised:
            return []
        if self._neutron_live_u is None:
            n_max = max(1, math.ceil(self.cfg.occupancy_timeout_s / self.neutron_dt_s))
            self._neutron_live_u = self._neutron_u(n_max * len(self._tube_sets))[0]
        m = self.neutron_window()
        k = min(i + 1, m)
        local, spread = self._ship_covariates(i + 1)
        null = window_null(
            max(self._neutron_cps * self.neutron_dt_s, MIN_NEUTRON_MEAN) * k,
            self._tube_sets[0].relvar,
            SHIP_RATE * window_sum_at(local, i, m),
            SHIP_RATE * window_sum_at(spread, i, m),
            SHIP_RATE_RELVAR,
        )
        needed = ship_threshold(*null, SHIP_DISPERSION, _log_normal_sf(self._neutron_live_u))
        total = window_sum_at(self._neutron.data, i, m)
        if total < needed:
            return []
        self._neutron_live_log_sf = ship_log_sf(int(total), *null, SHIP_DISPERSION)
        z = _normal_quantile(self._neutron_live_log_sf)
        alarm = _alarm(
            "neutron", total, needed, (i + 1 - 0.5 * k) * self.neutron_dt_s, self.speed_kmh, self._neutron_sd_m(z)
        )
        alarm.update(
            expected=round(null[0] + null[2], 2),
            window_s=round(k * self.neutron_dt_s, 3),
            raised_at_s=round((i + 1) * self.neutron_dt_s, 3),
        )
        self.raised["neutron"] = alarm
        return [alarm]

    def counts(self) -> tuple[np.ndarray, float, np.ndarray, float]:
        """The occupancy's gross gamma counts per sample, its gamma sample interval (s), neutron counts per sample
        (all tubes) and the neutron sample interval (s): copies."""
        return self._gross.view.copy(), self.gamma_dt_s, self._neutron.view.copy(), self.neutron_dt_s

    # ------------------------------------------------------------- neutrons
    def neutron_window(self) -> int:
        """Samples in the neutron sliding window at the current speed (:func:`neutron_window`)."""
        return neutron_window(self.speed_kmh, self.cfg.source_standoff_m, self.neutron_dt_s)

    def _neutron_sd_m(self, z: float) -> float:
        """Location uncertainty (m) of a neutron window's centre found at ``z``: the width of a point source's
        response (``source_standoff_m``, as the gamma tests' 2 d / |z|) and half a neutron sample's travel (the window
        slides and sums whole samples, so its best centre is known to about half a sample either side)."""
        step_m = self.speed_kmh / 3.6 * self.neutron_dt_s
        return math.hypot(2.0 * self.cfg.source_standoff_m / max(abs(z), 1.0), 0.5 * step_m)

    def _joint_g(self) -> int:
        """Gamma centres per neutron window centre: the gamma samples within one neutron sample (0: no gamma z,
        without energy windows or a tracked background)."""
        if self.windows < 2 and self._tracked is None:
            return 0
        return max(1, math.ceil(self.neutron_dt_s / self._gamma_plan().dt_s - 1e-9))

    def _neutron_u(self, windows: int, g: int = 0) -> tuple[float, float]:
        """Thresholds (z) of the neutron test and the neutron-gamma test (:func:`neutron_threshold`) for ``windows``
        windows and at least ``g`` gamma centres per window."""
        alpha = self.cfg.neutron_false_alarm_probability
        if self.gamma_dt_s <= 0.0:
            return neutron_threshold(alpha, windows, 0, (0.0,))
        plan = self._gamma_plan()
        g = max(g, self._joint_g()) if self._joint_g() else 0
        return neutron_threshold(alpha, windows, g, (plan.rho1[plan.mid],))

    def _ship_covariates(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Ship-effect covariates of the first ``n`` neutron samples, from the gamma samples seen so far: the local
        one (:func:`ship_covariate`) and the spread one (:func:`_ship_spread`)."""
        g = self._gross.n
        if g == 0:
            return np.zeros(n), np.zeros(n)
        dts = self._dts.data[:g]
        level = span_levels(self._gross.data[:g], self._expected.data[:g], dts, self.neutron_dt_s, n)
        h = ship_covariate(level, self.neutron_dt_s)
        counts = float(self._expected.data[:g].sum()) * self.neutron_dt_s / max(float(dts.sum()), 1e-9)
        steel = ship_covariate(level, self.neutron_dt_s, SHIP_KNEE + 1.0 / math.sqrt(max(counts, 1.0)))
        return h, _ship_spread(h, steel)

    def _finish_neutron(self) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
        counts = self._neutron.view
        n = counts.shape[0]
        if n == 0:
            return [], {}, {"neutron_origin": None, "neutron_cps": None}
        dt = self.neutron_dt_s
        h, spread = self._ship_covariates(n)
        sets = self._tube_sets
        if self._neutron_cps is not None:
            mean, origin = self._neutron_cps * dt, "tracked"
        else:
            mean, used = _clipped_mean(counts - SHIP_RATE * h)
            relvar, origin = 1.0 / max(mean * used, 1.0) + NEUTRON_VEHICLE_SD**2, "estimated-from-occupancy"
            sets = [_TubeSet(None, slice(None), 1.0, relvar)]
        mean = max(mean, MIN_NEUTRON_MEAN)
        m = min(self.neutron_window(), n)
        windows = []
        for ts in sets:
            x = counts if ts.side is None else self._tubes.view[:, ts.tubes].sum(axis=1)
            mu = max(ts.share * mean, MIN_NEUTRON_MEAN)
            rate, rate_relvar = _ship_rate(x, h + spread, m, mu, ts.relvar, ts.share * SHIP_RATE)
            box = np.ones(m)
            null = window_null(
                mu * m,
                ts.relvar,
                rate * np.convolve(h, box, mode="valid"),
                rate * np.convolve(spread, box, mode="valid"),
                rate_relvar,
            )
            windows.append((ts, x, ship_window_log_sf(x, m, *null, SHIP_DISPERSION), null))
        log_sfs = np.stack([w[2] for w in windows])
        best = np.argmin(log_sfs, axis=0)
        log_sf = log_sfs[best, np.arange(log_sfs.shape[1])]
        gamma, g = self._gamma_by_window(log_sf.size, m)
        u, u_joint = self._neutron_u(len(sets) * log_sf.size, g)
        log_u = _log_normal_sf(u)
        k = int(np.argmin(log_sf))
        ts, x, _, null = windows[int(best[k])]
        total = float(np.sum(x[k : k + m]))
        null_k = tuple(float(v[k]) for v in null)
        needed = ship_threshold(*null_k, SHIP_DISPERSION, log_u)
        alarms = []
        prior = self.raised.get("neutron")
        if prior is not None and self._neutron_live_log_sf <= log_sf[k]:
            alarms.append({**prior, "alarm": True})
        elif total >= needed or prior is not None:
            sd = self._neutron_sd_m(_normal_quantile(float(log_sf[k])))
            entry = _alarm("neutron", total, needed, (k + 0.5 * m) * dt, self.speed_kmh, sd)
            entry.update(expected=round(null_k[0] + null_k[2], 2), window_s=round(m * dt, 3), alarm=True)
            alarms.append(_with_side(entry, ts))
        elif gamma is not None:
            joint = _joint(log_sf, gamma, u_joint)
            if joint is not None:
                z_neutron, z_gamma, k = joint
                z = math.hypot(z_neutron, z_gamma)
                entry = _alarm("neutron-gamma", z, u_joint, (k + 0.5 * m) * dt, self.speed_kmh, self._neutron_sd_m(z))
                entry.update(alarm=True, neutron_z=round(z_neutron, 3), gamma_z=round(z_gamma, 3))
                alarms.append(_with_side(entry, windows[int(best[k])][0]))
        profile = {
            "neutron": _finite_list(counts, 1),
            "neutron_channels": [_finite_list(sample, 1) for sample in self._tubes.view],
            "neutron_expected": round(mean, 3),
            "neutron_ship_expected": _finite_list(SHIP_RATE * h, 2),
            "neutron_dt_s": dt,
            "neutron_total": float(counts.sum()),
            "neutron_total_expected": round(mean * n, 2),
        }
        return alarms, profile, {"neutron_origin": origin, "neutron_cps": round(mean / dt, 3)}

    def _gamma_by_window(self, windows: int, m: int) -> tuple[np.ndarray | None, int]:
        """The neutron-gamma test's gamma evidence per neutron window, and the most gamma samples one window took.

        A window takes the gamma samples whose middle lies within half a neutron sample of its centre,
        and the largest of their evidence (:meth:`_joint_evidence_of`); None without gamma evidence.
        """
        evidence = self._joint_evidence
        if evidence is None or evidence.size == 0:
            return None, 0
        dts = self._dts.view
        mid = np.cumsum(dts) - 0.5 * dts
        window = np.floor(mid / self.neutron_dt_s - 0.5 * m + 0.5).astype(np.int64)
        inside = (window >= 0) & (window < windows)
        gamma = np.zeros(windows)
        np.maximum.at(gamma, window[inside], evidence[inside])
        return gamma, int(np.bincount(window[inside], minlength=1).max())

    # ---------------------------------------------------------------- gamma
    def _estimated_gamma(self) -> _GammaBackground:
        """Background from the occupancy itself (no tracked background).

        The gross rate is the lower quartile of the samples' rates, corrected for Poisson spread (the
        quartile of Poisson(mu) counts sits 0.674 sqrt(mu) below mu): a source, even one whose tail
        covers half the occupancy, does not raise it. The energy-window shape comes from the samples
        at or below that rate. Its uncertainty is that of a quartile of the samples.
        """
        x, dts = self._gross.view, self._dts.view
        rate = x / dts
        dt = float(dts.mean())
        quartile = float(np.quantile(rate, 0.25)) * dt
        level = (quartile + ESTIMATE_QUARTILE_Z * math.sqrt(max(quartile, 0.0))) / dt
        calm = self._win.view[rate <= level].sum(axis=0)
        total = float(calm.sum())
        p0 = float(calm[0] / total) if total > 0 and self.windows >= 2 else 1.0
        first = float(self._first.view[rate <= level].sum()) / total if total > 0 else 0.5
        # A quartile of n samples has the variance of a mean of about 0.54 n of them.
        counts = max(level * float(dts.sum()) * 0.54, 1.0)
        window_cps = calm / total * level if total > 0 else np.full(self.windows, level / self.windows)
        return _GammaBackground(
            expected=level * dts,
            relvar=1.0 / counts,
            p0=p0,
            var_p0=p0 * (1.0 - p0) / max(total, 1.0),
            first=first,
            var_first=first * (1.0 - first) / max(total, 1.0),
            origin="estimated-from-occupancy",
            cps=_finite_list(window_cps),
        )

    def _finish_gamma(self) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any], dict[str, Any]]:
        x = self._gross.view
        n = x.shape[0]
        if n == 0:
            return [], {}, {"origin": None}, {}
        plan = self._gamma_plan()
        rejected = self._tracked_off_by() if self._tracked is not None else None
        tracked = self._tracked is not None and rejected is None
        bg = self._tracked if tracked and self._tracked is not None else self._estimated_gamma()
        if not tracked:
            self._expected.data[:n] = bg.expected
        e = self._expected.view
        thr = self._thresholds(n)
        z_gamma, t_gamma, side_level, spread = self._sideband(x, e, plan, thr)
        if tracked:
            z_plain, t_plain = mf_series(x, e, np.ones(n), np.full(n, bg.relvar), plan.bank, plan.halfw, thr.cf_gross)
            t_gamma = np.where(z_plain >= z_gamma, t_plain, t_gamma)
            z_gamma = np.maximum(z_plain, z_gamma)
        level, _ = flank_level_series(x, e, plan.gap, plan.width, tracked, float(e.mean()))
        level = np.where(np.isnan(level), 1.0, level)
        local = np.minimum(level, 1.0) if tracked else level
        profile: dict[str, Any] = {
            "gross": _finite_list(x, 1),
            "expected": _finite_list(local * e, 2),
            "sideband_expected": _finite_list(side_level * e, 2),
            "mf_z": _finite_list(z_gamma),
            "sideband_spread": round(spread, 3),
            "gamma_threshold": round(thr.gross, 3),
            "channels": [[_finite_list(channel, 1) for channel in sample] for sample in self._channels.view],
        }
        if self.windows >= 2:
            profile["window_edges_kev"] = [float(edge) for edge in self.cfg.energy_windows_kev]
        alarms: list[dict[str, Any]] = []
        gamma = self._final("gamma", z_gamma, t_gamma, thr.gross)
        shape = side = None
        b = self._softening.data[:n]
        softening_covariate_into(x, e, n, 0, LEVEL_HALF, b)
        if self.sides:
            z_side, t_side = shape_series(
                self._first.view,
                x,
                b,
                bg.first,
                bg.var_first,
                SIDE_PRIOR_SD**2,
                plan.bank,
                plan.halfw,
                thr.cf_side,
                SIDE_SECTION_SD**2,
            )
            profile["side_z"] = _finite_list(z_side)
            profile["side_threshold"] = round(thr.side, 3)
            side = self._final("gamma-side", z_side, t_side, thr.side)
        spread = gamma is not None or side is not None
        profiles: list[tuple[np.ndarray, np.ndarray]] = [(x - local * e, e)] if spread else []
        if self.windows >= 2:
            low = self._low.view
            z_shape, t_shape = shape_series(
                low,
                x,
                b,
                bg.p0,
                bg.var_p0,
                SOFTENING_PRIOR_SD**2,
                plan.bank,
                plan.halfw,
                thr.cf_shape,
                SHAPE_SECTION_SD**2,
            )
            profile["windows"] = [[round(float(v), 1) for v in row] for row in self._win.view]
            profile["shape_z"] = _finite_list(z_shape)
            profile["shape_threshold"] = round(thr.shape, 3)
            shape = self._final("gamma-shape", z_shape, t_shape, thr.shape)
            if shape is not None and shape["direction"] == "softer":
                profiles = []
            elif shape is not None:
                kappa, _ = softening_fit(low, x, b, n, -1, -1, bg.p0, SOFTENING_PRIOR_SD**2)
                q = bg.p0 * (1.0 - bg.p0)
                profiles.append((bg.p0 * x + kappa * x * b - low, q * np.maximum(x, 1.0)))
        norm = self._norm_check(profiles, bg, plan) if profiles else None
        if norm is not None:
            release = self.cfg.norm_verdict == "release"
            for entry in (gamma, shape, side):
                if entry is not None:
                    entry["alarm"] = not release
                    if release:
                        entry["released_as"] = "norm-consistent"
            alarms.append(norm)
        # On gross counts a NORM-consistent excess is no evidence for a neutron source (with windows the softer
        # shape, which NORM does not raise, is the evidence).
        self._joint_evidence = None if norm is not None and self.windows < 2 else self._joint_evidence_of(bg, thr)
        alarms[:0] = [entry for entry in (gamma, shape, side) if entry is not None]
        base: dict[str, Any] = {"max_sigma": None, "n_sigma": self.cfg.baseline_n_sigma}
        if tracked:
            bg_1s = float(e.sum() / self._dts.view.sum()) * plan.n_1s * plan.dt_s
            base["max_sigma"] = round(float(nsigma_series(x, bg_1s, plan.n_1s).max()), 3)
        else:
            base["not_evaluated"] = "no-background" if rejected is None else "background-rejected"
        background = {
            "origin": bg.origin,
            "gamma_cps": bg.cps,
            "gamma_total_cps": round(float(e.sum() / self._dts.view.sum()), 3),
        }
        if rejected is not None:
            background["tracked_rejected_ratio"] = round(rejected, 3)
        return alarms, profile, background, base

    def _tracked_off_by(self) -> float | None:
        """The ratio of the occupancy's least shielded second to the tracked gross background when the tracked one is
        too high to be this lane's (by more than :data:`lanewatch.edge.lane.calibration.TOLERANCE`), else None.

        Shadow shielding keeps a vehicle's rates below the background, but not far below in its least shielded
        second (cab, gap, the hold-in after the rear); a tracked background far above that is in another unit
        (background lines counted over several seconds) and testing against it would hide every source.
        """
        ratio = occupancy_ratio(self._gross.view, self.gamma_dt_s, self._gamma_total_cps)
        return ratio if ratio is not None and ratio < 1.0 / TOLERANCE else None

    @staticmethod
    def _sideband(
        x: np.ndarray, e: np.ndarray, plan: GammaPlan, thr: Thresholds
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """The gross test against the occupancy's own level (:mod:`lanewatch.kernels.sideband`): z and template per
        centre, the fitted shadow level per centre (nominal template's window) and the spread the z's were divided by.

        The spread is how far the lower half of the nominal template's z's reaches below their median, as a
        standard deviation (at least 1): a shadow rougher than a line across each window widens the null
        both ways, a source only raises the upper tail.
        """
        z_line, z_step, level_all = sideband_series(
            x, e, plan.bank, plan.halfw, plan.side, thr.cf_gross, SHADOW_ROUGHNESS
        )
        # The spread of the line's z's: the step's are lowered on purpose wherever the shadow (or a source's own
        # flank) ramps, which is no roughness.
        nominal = z_line[plan.mid]
        nominal = nominal[np.isfinite(nominal)]
        spread = 1.0
        if nominal.size >= SPREAD_MIN_CENTRES:
            spread = max(1.0, float(np.median(nominal) - np.quantile(nominal, SPREAD_QUANTILE)))
        z_all = np.minimum(z_line, z_step)
        t = np.argmax(z_all, axis=0)
        z = z_all[t, np.arange(x.shape[0])] / spread
        level = level_all[plan.mid]
        return z, t, np.where(np.isfinite(level), level, 1.0), spread

    def _joint_evidence_of(self, bg: _GammaBackground, thr: Thresholds) -> np.ndarray | None:
        """Gamma evidence per sample for the neutron-gamma test: the squared positive part of the nominal
        template's z, of the shape test with energy windows (softer), else of the gross test against the
        tracked background less what the whole occupancy shares (:func:`_shared_offset`: a gamma background that
        rose since it was tracked is no point source); None without either."""
        plan = self._gamma_plan()
        x, n = self._gross.view, self._gross.n
        bank, halfw = plan.bank[plan.mid : plan.mid + 1], plan.halfw[plan.mid : plan.mid + 1]
        if self.windows >= 2:
            b = self._softening.data[:n]
            prior = SOFTENING_PRIOR_SD**2
            section = SHAPE_SECTION_SD**2
            z, _ = shape_series(self._low.view, x, b, bg.p0, bg.var_p0, prior, bank, halfw, thr.cf_shape, section)
        elif self._tracked is not None:
            z, _ = mf_series(x, self._expected.view, np.ones(n), np.full(n, bg.relvar), bank, halfw, thr.cf_gross)
            z = z - _shared_offset(z, int(halfw[0]))
        else:
            return None
        return np.maximum(z, 0.0) ** 2

    def _final(self, reason: str, z: np.ndarray, templates: np.ndarray, thr: float) -> dict[str, Any] | None:
        """The final entry of a test (its strongest centre, or the provisional alarm if stronger); None below threshold.

        The gross test is one-sided (an excess), the shape test two-sided.
        """
        strength = np.abs(z) if reason in ("gamma-shape", "gamma-side") else z
        c = int(np.argmax(strength))
        prior = self.raised.get(reason)
        if prior is not None and abs(prior["statistic"]) >= strength[c]:
            return {**prior, "alarm": True}
        if not strength[c] > thr and prior is None:
            return None
        where = peak_refine(z if z[c] > 0 else -z, c)
        return {**self._entry(reason, float(z[c]), thr, where, int(templates[c])), "alarm": True}

    def _norm_check(
        self, profiles: list[tuple[np.ndarray, np.ndarray]], bg: _GammaBackground, plan: GammaPlan
    ) -> dict[str, Any] | None:
        """The norm-consistent entry if the alarming excesses are NORM-like, else None.

        ``profiles`` holds each alarming test's excess (counts per sample) and its variance: the gross
        excess, and the hard excess (low-window counts missing against the background's fraction).
        Each must be NORM-like: a uniform load (covering at least ``norm_min_extent`` of the vehicle)
        explains it better than any point source by ``NORM_PREFERENCE`` (chi-square units, allowing
        ``NORM_MODEL_ERROR`` of either model), and no point source stands on top of that load (the
        matched filter on the residual stays below ``NORM_PEAK_Z``). With energy windows, the counts over the
        load must be harder than background by at least ``NORM_HARD_Z``; on gross counts the spread alone
        decides (the entry's statistic is then the chi-square by which the load beats a point source).
        """
        n = profiles[0][0].shape[0]
        vehicle = max(n - self.cfg.occupancy_hold_in_s / plan.dt_s, 0.5 * n)
        step_m = max(self.speed_kmh, MIN_SPEED_KMH) / 3.6 * plan.dt_s
        shortest = max(self.cfg.norm_min_extent * vehicle, NORM_MIN_LOAD_M / step_m)
        loads = []
        preference = math.inf
        for excess, variance in profiles:
            smoothed = smooth(excess, plan.nominal)
            left, right = half_max_edges(smoothed, int(np.argmax(smoothed)))
            width = _load_width(right - left, plan.nominal)
            middle = 0.5 * (left + right) + 0.5
            left, right = middle - width / 2, middle + width / 2
            step = 0.25 * plan.scale
            _, start, end = max(
                (_gain(smooth(_box(n, a, b), plan.nominal), excess, variance), a, b)
                for a in left + step * np.arange(-3, 4)
                for b in np.maximum(right + step * np.arange(-3, 4), a + shortest)
            )
            model = smooth(_box(n, start, end), plan.nominal)
            amplitude = float(np.dot(model, excess / variance) / max(np.dot(model, model / variance), 1e-300))
            allowed = variance + (NORM_MODEL_ERROR * amplitude * model) ** 2
            better = _gain(model, excess, allowed) - _point_gain(excess, allowed, plan)
            if better < NORM_PREFERENCE:
                return None
            preference = min(preference, better)
            if _point_on_load_z(excess - amplitude * model, allowed, model, plan) > NORM_PEAK_Z:
                return None
            loads.append((end - start, 0.5 * (start + end)))
        load, centre = max(loads)
        if self.windows >= 2:
            lo = max(0, math.floor(centre - load / 2))
            hi = min(n - 1, math.ceil(centre + load / 2) - 1)
            low, x, b = self._low.view, self._gross.view, self._softening.data[:n]
            kappa, var_kappa = softening_fit(low, x, b, n, lo, hi, bg.p0, SOFTENING_PRIOR_SD**2)
            statistic, needed = -shape_span(low, x, b, lo, hi, bg.p0, bg.var_p0, kappa, var_kappa), NORM_HARD_Z
            if statistic < needed:
                return None
        else:
            statistic, needed = preference, NORM_PREFERENCE
        norm = _alarm("norm-consistent", statistic, needed, float(centre) * plan.dt_s, self.speed_kmh, None)
        norm.update(
            alarm=False,
            extent=round(float(min(load / vehicle, 1.0)), 3),
            min_extent=self.cfg.norm_min_extent,
            basis="spread and spectrum" if self.windows >= 2 else "spread",
        )
        return norm

    # --------------------------------------------------------------- result
    def finish(self) -> dict[str, Any]:
        """The final analysis of the occupancy, JSON-serializable.

        Keys: ``alarms`` (entries with ``alarm`` true or false, see the module docstring), ``verdict``
        ("ALARM" iff an entry alarms, else "CLEAR"), ``baseline_verdict`` and ``baseline`` (the fielded
        rule on the same counts: ``max_sigma``, ``n_sigma``, ``neutron_max``, ``neutron_background``,
        ``neutron_threshold``; only against a tracked background, the portal's own: a part of the rule without one is
        not evaluated, its numbers null and ``not_evaluated`` saying why, see :func:`_fielded_verdict`),
        ``profile`` (per-sample evidence: ``gross``, ``windows``, ``expected`` (the
        background times the shadow's level on the flanks, at most 1 with a tracked background),
        ``sideband_expected`` (the background times the line the sideband test fitted around each sample: the
        level it tested against), ``sideband_spread``, ``mf_z``, ``shape_z``, ``side_z``, ``neutron``, with ``dt_s``,
        ``neutron_dt_s`` and ``speed_kmh``),
        ``background`` (cps used and ``origin``/``neutron_origin``: "tracked" or
        "estimated-from-occupancy") and ``provisional`` (the alarms raised mid-passage).
        """
        gamma_alarms, profile, background, baseline = self._finish_gamma()
        neutron_alarms, neutron_profile, neutron_background = self._finish_neutron()
        alarms = gamma_alarms + neutron_alarms
        if any(a["alarm"] and a["reason"] != "neutron-gamma" for a in alarms):
            alarms = [a for a in alarms if a["reason"] != "neutron-gamma"]
        profile.update(neutron_profile)
        profile.update(dt_s=self.gamma_dt_s or None, speed_kmh=round(self.speed_kmh, 2))
        background.update(neutron_background)
        counts = self._neutron.view
        neutron_max = float(counts.max()) if counts.size else None
        neutron_bg = profile.get("neutron_expected")
        if neutron_max is not None and background["neutron_origin"] != "tracked":
            neutron_bg = None
            baseline.setdefault("not_evaluated", "no-neutron-background")
        baseline.update(neutron_max=neutron_max, neutron_background=neutron_bg)
        baseline["neutron_threshold"] = self.cfg.baseline_neutron_threshold
        return {
            "alarms": alarms,
            "verdict": "ALARM" if any(a["alarm"] for a in alarms) else "CLEAR",
            "baseline_verdict": _fielded_verdict(baseline),
            "baseline": baseline,
            "profile": profile,
            "background": background,
            "provisional": list(self.raised.values()),
        }


def _fielded_verdict(baseline: dict[str, Any]) -> str | None:
    """The fielded rule's verdict from its numbers: ALARM when a part of it that was evaluated alarms (gamma:
    ``max_sigma`` over ``n_sigma``; neutrons: ``neutron_max`` over ``neutron_background`` by more than
    ``neutron_threshold``), else CLEAR when every part was evaluated, else None (``not_evaluated`` says why: a clear
    from the part evaluated is no clear of the vehicle)."""
    sigma, neutrons, neutron_bg = baseline.get("max_sigma"), baseline.get("neutron_max"), baseline["neutron_background"]
    if sigma is not None and sigma > baseline["n_sigma"]:
        return "ALARM"
    if neutrons is not None and neutron_bg is not None and neutrons - neutron_bg > baseline["neutron_threshold"]:
        return "ALARM"
    return None if "not_evaluated" in baseline else "CLEAR"


def _shared_offset(z: np.ndarray, reach: int) -> float:
    """The z an occupancy's centres share away from its strongest one: the median of the z's more than ``reach``
    centres from it (a source's own reach), when positive and from at least ``SPREAD_MIN_CENTRES`` of them, else 0."""
    far = np.abs(np.arange(z.shape[0]) - int(np.argmax(z))) > reach
    if int(far.sum()) < SPREAD_MIN_CENTRES:
        return 0.0
    return max(float(np.median(z[far])), 0.0)


def _log_normal_sf(u: float) -> float:
    """log P(Z > u) for a standard normal Z (asymptotic where the tail underflows)."""
    p = 0.5 * math.erfc(u / math.sqrt(2.0))
    return math.log(p) if p > 1e-300 else -0.5 * u * u - math.log(u * math.sqrt(2.0 * math.pi))


def _normal_quantile(log_p: float) -> float:
    """z with upper-tail probability exp(log_p) (capped at 37 where the normal tail underflows)."""
    p = math.exp(log_p)
    if p >= 1.0:
        return -37.0
    return (
        NormalDist().inv_cdf(1.0 - p)
        if p > 1e-15
        else min(37.0, math.sqrt(-2.0 * log_p - math.log(-4.0 * math.pi * log_p)))
    )


def _joint(log_sf: np.ndarray, gamma: np.ndarray, u: float) -> tuple[float, float, int] | None:
    """The strongest neutron-gamma combination above ``u``: (neutron z, gamma z, window), or None.

    ``log_sf`` is each window's neutron tail probability (log), ``gamma`` the gamma evidence at its
    centre (a sum of squared z's); a window counts when its neutron z is at least ``JOINT_MIN_Z``.
    """
    z_neutron = np.array([_normal_quantile(v) for v in log_sf])
    joint = np.where(z_neutron >= JOINT_MIN_Z, z_neutron**2 + gamma, -np.inf)
    k = int(np.argmax(joint))
    if not joint[k] > u * u:
        return None
    return float(z_neutron[k]), math.sqrt(float(gamma[k])), k


def _gain(model: np.ndarray, excess: np.ndarray, variance: np.ndarray) -> float:
    """Chi-square reduction from fitting ``amplitude * model`` (amplitude >= 0) to ``excess`` of ``variance``."""
    num = float(np.dot(model, excess / variance))
    return num * num / max(float(np.dot(model, model / variance)), 1e-300) if num > 0 else 0.0


def _point_gain(excess: np.ndarray, variance: np.ndarray, plan: GammaPlan) -> float:
    """The best :func:`_gain` of a point source: any centre, any shape a point source's profile can take up to the
    nominal width.

    The bank's wider templates stand for sources farther than the standoff, which cannot be: a source
    between the pillars is nearer one side than the lane centre line, so its profile is narrower. Its shape is
    the bank's (an isotropic detector) or that of flat panels facing the lane (:data:`PANEL_WIDTHS`), whose
    cosine response makes the tails fall faster: against the bank's shape alone, a strong point source seen by
    panels is fitted better by a short load, whose profile is flatter on top, and would pass for NORM.
    """
    hmax = (plan.bank.shape[1] - 1) // 2
    nearer = [
        row[hmax - h : hmax + h + 1]
        for factor, row, h in zip(BANK_FACTORS, plan.bank, plan.halfw, strict=True)
        if factor <= 1.0
    ]
    best = 0.0
    for w in nearer + list(plan.panels):
        num = smooth(excess / variance, w)
        den = smooth(1.0 / variance, w * w)
        best = max(best, float(np.max(np.where(num > 0, num * num / den, 0.0))))
    return best


def _point_on_load_z(residual: np.ndarray, variance: np.ndarray, model: np.ndarray, plan: GammaPlan) -> float:
    """Largest z of a point source (any bank template, any centre) fitted together with the load ``model``.

    ``residual`` is the excess minus the load fitted alone (so orthogonal to ``model`` in the metric
    1/variance); the point's z is its projection on the residual over its norm once the part along the
    load is taken out.
    """
    hmax = (plan.bank.shape[1] - 1) // 2
    load = float(np.dot(model, model / variance))
    best = -np.inf
    for row, h in zip(plan.bank, plan.halfw, strict=True):
        w = row[hmax - h : hmax + h + 1]
        num = smooth(residual / variance, w)
        along = smooth(model / variance, w)
        norm = smooth(1.0 / variance, w * w) - along * along / max(load, 1e-300)
        best = max(best, float(np.max(num / np.sqrt(np.maximum(norm, 1e-300)))))
    return best


def _box(n: int, lo: float, hi: float) -> np.ndarray:
    """Fraction of each sample ``[j, j + 1)`` of ``n`` covered by ``[lo, hi]`` (samples)."""
    j = np.arange(n, dtype=np.float64)
    return np.clip(np.minimum(j + 1.0, hi) - np.maximum(j, lo), 0.0, 1.0)


def _load_width(width: float, psf: np.ndarray) -> float:
    """Length (samples) of the uniform load whose profile, smoothed with ``psf``, is ``width`` wide at half maximum.

    The load is seen through ``psf`` (the point-source response) and smoothed once more with it, as the
    measured excess is. Bisection on the load length; 0 when ``width`` is no wider than a point source.
    """
    h = psf.shape[0] // 2

    def fwhm(length: float) -> float:
        size = math.ceil(length) + 8 * h + 4
        middle = size / 2
        profile = smooth(smooth(_box(size, middle - length / 2 - 1e-6, middle + length / 2 + 1e-6), psf), psf)
        left, right = half_max_edges(profile, int(np.argmax(profile)))
        return right - left

    if width <= fwhm(0.0):
        return 0.0
    lo, hi = 0.0, max(width, 1.0)
    while fwhm(hi) < width:
        lo, hi = hi, 2.0 * hi
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        if fwhm(mid) < width:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _ship_spread(h: np.ndarray, steel: np.ndarray) -> np.ndarray:
    """The spread ship-effect covariate per neutron sample: how far the local one ``h`` falls short of the vehicle's
    mean ``steel`` covariate.

    A vehicle's steel makes spallation bursts wherever it is, and they reach the tubes all along the occupancy, also
    where the shadow there is light (the cab, the vehicle's ends, the hold-in), in sizes with a long tail; so the
    vehicle's mean covariate counts everywhere, the part the local shadow does not show as bursts
    (:func:`window_null`). ``steel`` is the covariate with the knee raised by one standard deviation of the gamma
    level's counting noise over a neutron sample, so that the noise of a low gamma background, which lifts the local
    covariate where it happens to dip (and averages out of its effect on the mean), makes no bursts.
    """
    return np.maximum(float(steel.mean()) - h, 0.0) if h.size else h


def window_null(
    b: Any, b_relvar: float, local: Any, spread: Any, rate_relvar: Any, dispersion: float = SHIP_DISPERSION
) -> tuple[Any, Any, Any, Any]:
    """A neutron window's null for :func:`lanewatch.kernels.poisson.ship_log_sf` (scalars or arrays alike):
    background ``b`` counts (relative variance ``b_relvar``) with the ship effect the window's own shadow shows
    (``local`` counts) as one negative binomial of matched moments (its variance ``dispersion`` times its mean plus
    ``rate_relvar`` times its square), and the vehicle's spallation the shadow there does not show (``spread``
    counts) as bursts of geometric size (:func:`_ship_spread`)."""
    mean = b + local
    variance = b + b_relvar * b * b + dispersion * local + rate_relvar * local * local
    return mean, np.maximum(variance - mean, 0.0) / (mean * mean), spread, rate_relvar


def _ship_rate(
    x: np.ndarray, h: np.ndarray, m: int, mu: float, relvar: float, rate: float
) -> tuple[np.ndarray, np.ndarray]:
    """The vehicle's own ship-effect rate (counts per unit of covariate ``h``) for every window of ``m`` samples of
    ``x``, and its relative variance.

    The prior (``rate``, ``SHIP_RATE_RELVAR``) updated with the occupancy's excess over the background (``mu`` a
    sample, relative variance ``relvar``) away from the window and the sample either side of it, weighted as a
    normal estimate of variance ``(background + SHIP_DISPERSION * ship) / H^2``. The posterior's mean is at least
    its standard deviation: a vehicle quieter than its background is no proof of no steel.
    """
    n = x.size
    m = min(m, n)
    k = np.arange(n - m + 1)
    cx, ch = np.concatenate(([0.0], np.cumsum(x))), np.concatenate(([0.0], np.cumsum(h)))
    lo, hi = np.maximum(k - 1, 0), np.minimum(k + m + 1, n)
    n_out = n - (hi - lo)
    h_out = ch[n] - (ch[hi] - ch[lo])
    b_out = mu * n_out
    excess = cx[n] - (cx[hi] - cx[lo]) - b_out
    prior_var = SHIP_RATE_RELVAR * rate * rate
    seen = h_out > 0.0
    safe = np.where(seen, h_out, 1.0)
    data_var = (b_out * (1.0 + relvar * b_out) + SHIP_DISPERSION * rate * h_out) / safe**2
    weight = np.where(seen, prior_var / (prior_var + data_var), 0.0)
    post_var = prior_var * (1.0 - weight)
    post_mean = np.maximum(rate + weight * (excess / safe - rate), np.sqrt(post_var))
    return post_mean, np.where(post_mean > 0.0, post_var / np.where(post_mean > 0.0, post_mean, 1.0) ** 2, 0.0)


def _clipped_mean(counts: np.ndarray) -> tuple[float, int]:
    """Mean of counts after two passes of clipping above mean + 4 sqrt(mean), and how many samples it used."""
    keep = counts
    for _ in range(2):
        mean = float(keep.mean())
        clipped = counts[counts <= mean + 4.0 * math.sqrt(max(mean, 1.0))]
        if clipped.size == 0:
            break
        keep = clipped
    return float(keep.mean()), int(keep.size)


def device_alarm_entry(
    gamma: bool, neutron: bool, alarms: list[dict[str, Any]], cfg: DetectionConfig, no_background: bool = False
) -> dict[str, Any]:
    """The portal's own alarm (GA lines: ``gamma``, NA lines: ``neutron``) as an ``alarms`` entry ``device``.

    It alarms unless ``device_alarm`` is "report"; ``lanewatch`` gives lanewatch's own reading of the same
    occupancy beside it: "alarm" (``confirmed_by`` names the tests that alarm), "norm-consistent" (an excess
    released as NORM), "no-background" (the occupancy had no background before it, so lanewatch's tests were not
    run against one: what they found is withheld), or "not-significant" at the configured false-alarm probabilities.
    """
    confirmed = sorted({a["reason"] for a in alarms if a.get("alarm")})
    norm = any(a["reason"] == "norm-consistent" for a in alarms)
    reading = "alarm" if confirmed else "norm-consistent" if norm else "not-significant"
    return {
        "reason": "device",
        "alarm": cfg.device_alarm == "alarm",
        "gamma": gamma,
        "neutron": neutron,
        "statistic": None,
        "threshold": None,
        "location_m": None,
        "lanewatch": "no-background" if no_background and not confirmed else reading,
        "confirmed_by": confirmed,
        "false_alarm_probability": {
            "gamma": cfg.gamma_false_alarm_probability,
            "neutron": cfg.neutron_false_alarm_probability,
        },
    }


def analyze(
    cfg: DetectionConfig,
    background: BackgroundSnapshot,
    gamma: np.ndarray,
    neutron: np.ndarray,
    gamma_dt_s: float,
    neutron_dt_s: float,
    speed_kmh: float,
) -> dict[str, Any]:
    """One occupancy in one call through the streaming path: ``gamma`` (n, channels, K), ``neutron`` (m, channels).

    Samples are fed in time order (a neutron sample after the gamma samples it covers).
    """
    gamma = np.asarray(gamma, dtype=np.float64)
    neutron = np.asarray(neutron, dtype=np.float64)
    if gamma.ndim == 2:
        gamma = gamma[:, :, None]
    if neutron.ndim == 1:
        neutron = np.zeros((0, 0)) if neutron.size == 0 else neutron[:, None]
    analyzer = OccupancyAnalyzer(cfg, background, gamma.shape[1], neutron.shape[1])
    analyzer.set_speed(speed_kmh)
    j = 0
    for i in range(gamma.shape[0]):
        analyzer.add_gamma(gamma[i], gamma_dt_s)
        while j < neutron.shape[0] and (j + 1) * neutron_dt_s <= (i + 1) * gamma_dt_s + 1e-9:
            analyzer.add_neutron(neutron[j], neutron_dt_s)
            j += 1
    for k in range(j, neutron.shape[0]):
        analyzer.add_neutron(neutron[k], neutron_dt_s)
    return analyzer.finish()


def warm_up() -> None:
    """Compile every kernel on small inputs (call before serving, so the first occupancy is not slow)."""
    rng = np.random.default_rng(0)
    cfg = DetectionConfig(energy_windows_kev=[30.0, 400.0, 3000.0])
    bg = BackgroundSnapshot(
        gamma_cps=np.full((4, 2), 100.0), neutron_cps=np.full(4, 1.0), gamma_exposure_s=60.0, neutron_exposure_s=60.0
    )
    gamma = rng.poisson(20.0, size=(40, 4, 2)).astype(np.float64)
    neutron = rng.poisson(1.0, size=(8, 4)).astype(np.float64)
    analyze(cfg, bg, gamma, neutron, 0.2, 1.0, 8.0)
    analyze(cfg, BackgroundSnapshot(), gamma, neutron, 0.2, 1.0, 8.0)
    # The one kernel only a NORM-like occupancy reaches.
    half_max_edges(np.array([0.0, 1.0, 0.0]), 1)
