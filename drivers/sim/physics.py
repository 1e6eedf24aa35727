"""Physics of a radiation portal lane: background, shadow shielding, sources, energy windows.

Pure numpy, no I/O. Every random draw comes from a seeded :class:`numpy.random.Generator`, so the
same seed gives the same passages. :class:`Traffic` produces one :class:`Passage` (gamma and neutron
count arrays plus the truth) per vehicle; the lane simulator (:mod:`lanewatch.drivers.sim.lane`) serves them
as the RPM line protocol, and the detection benchmark scores detectors against the truth.

Geometry (metres)
    x runs along the lane in the direction of travel, 0 at the pillar plane; y across the lane, 0 on
    its centre line; z up from the road. The master pillar stands at y = -2.5, the slave at y = +2.5
    (about 5 m between pillars). Each pillar holds an upper (z = 3 m) and a lower (z = 1 m) PVT gamma
    panel facing the lane; channel order is master-upper, master-lower, slave-upper, slave-lower
    (the Rapiscan line protocol's order: github.com/sandialabs/SRLS). The 4 He-3 neutron channels sit
    at the same four places. A vehicle of length L drives through at constant speed v: its front
    reaches the pillar plane at t = 0, so a point at position p (m behind the front) is at x = v t - p
    and passes the plane at t = p / v. The occupancy lasts from t = 0 until the rear has passed, L / v,
    plus a hold-in of ``HOLD_IN_S``.
    Speeds are 3-10 km/h, most near 7 (walking pace; about 8 km/h is ideal: P. E. Fehlau,
    "Vehicle SNM monitors: results of an evaluation", INMM annual meeting 1983).

Point-source response
    A panel counts a point source at rate proportional to cos(theta) / r^2 = |dy| / r^3 (inverse
    square times the panel's projected area), times the attenuation on the way, times a
    solid-angle/efficiency constant. The constant is folded into the source ``strength``: the excess
    (cps, gross window, 4 gamma panels summed) the unshielded source would give at the reference
    point, on the lane centre line 2 m high in the pillar plane. With the cosine factor the response
    along x has a full width at half maximum of about 4 m, so about 2 s at 7 km/h. Counts in a
    0.2 s sample are the mean of the rate at three instants in the sample, then Poisson-sampled.

Background (per channel)
    Gamma: 212-256 cps gross per channel (the range of Sandia's RPM Lane Simulator,
    github.com/sandialabs/SRLS, src/lib/RPMSimulator.ts), a
    fixed offset per channel; neutron: 2-5 cps per channel (same source). Both drift slowly: a few
    sinusoids with periods of 2-20 minutes move the gamma background by about +-3 % and the neutron
    background by about +-3 % (barometric), so a detector must keep tracking the background.
    The background pulse-height spectrum is the K-40 / U-238 / Th-232 lines of soil at UNSCEAR 2000
    world-median activities (400, 35, 30 Bq/kg), down-scattered through 30 g/cm^2 of soil and air,
    plus a skyshine continuum falling as 1/E and a flat cosmic-ray deposit (8 % of gross).

Shadow shielding (baseline suppression: Lo Presti et al., NIM A 562 (2006) 281-297, PNNL-SA-46730)
    While the vehicle is between the pillars it blocks part of the natural background. Each section
    along the vehicle has a suppression fraction (of the gross background): cab 5-9 %, gap between
    cab and trailer 1-3 %, empty container 2-5 %, organic bulk 10-15 %, metal machinery 20-30 %,
    potash fertilizer 12-18 %, ceramics 15-25 %, mixed loads as segments of 1-4 m of these. The
    profile is smoothed over the panels' view (about +-1 m at half weight), multiplied by a per-panel factor
    (0.85-1.15, vehicle to vehicle) and evaluated at the section between the pillars at each time.
    Per energy window the suppression is scaled by how a 10 g/cm^2 water-like body changes the
    background spectrum in that window (blocking removes more high-energy than low-energy counts,
    since the blocked photons partly come back down-scattered).

Pulse-height model (PVT) and energy windows
    Each emitter is a set of gamma lines (keV, emission probability). On the way to a panel the
    line intensities are attenuated as exp(-mu(E) rho x) with mass attenuation coefficients of
    water, aluminium (mineral cargo), iron and lead at 20-3000 keV (approximate NIST XCOM values;
    lead with its 88 keV K edge). The photons removed from the beam partly reach the panel
    down-scattered: a linear build-up b * mu rho x (b = 1 water, 0.8 aluminium, 0.6 iron, 0.2 lead;
    at most 80 % of what was removed), spread evenly between the 180-degree backscatter energy
    and the line energy, so down-scatter grows with shielding and cargo. In a 5 cm PVT panel a photon
    interacts with probability 1 - exp(-mu rho x); it deposits its full energy by photoabsorption
    (about 24 % at 30 keV, falling as E^-3.2), else a Klein-Nishina Compton continuum up to the
    Compton edge, or, after multiple scatters (10-20 %), an even spread between the edge and the
    line energy. Gaussian resolution sigma = sqrt(1.67^2 E + 3^2) keV (18 % FWHM at the 477 keV
    Cs-137 Compton edge). Counts in each window follow from this spectrum for any edges; K = 1 (gross)
    uses the 30-3000 keV ``GROSS_WINDOW_KEV``. Low lines (Tc-99m 140, HEU 186 keV, Cs-137 662 keV)
    put most counts in a low window; K-40 (1461) and Tl-208 (2614) put many in a high one, which is
    how energy windowing tells NORM from threats; Co-60 (1173 + 1332) looks like NORM (Ely et al.,
    NIM A 560 (2006) 373-387).

Scenarios (``SOURCES``; truth "source" and "category")
    none (benign); k40-fertilizer (potash: K-40) and ceramics (Th-232 chain, U-238 chain and K-40 of
    tiles and granite), distributed along the whole cargo, self-absorbed through 10-40 g/cm^2 of
    mineral: category norm; tc99m and i131, a nuclear-medicine patient in the cab behind 5-15 g/cm^2
    of tissue: medical; cs137, co60, heu (186 keV dominated, weak 1001 keV) and pu (weak 59-414 keV
    gammas plus neutrons) as a point source anywhere in the cargo, seen through the cargo (effective
    density times the path to each pillar) and the container wall; shielded-cs137 and shielded-co60
    inside 0.5-3 cm of lead or 2-8 cm of steel as well: threat.
    Strengths are log-uniform: threats 50-1500 cps (near the 5-sigma limit of the fielded rule,
    about 150 cps in one second over a 940 cps background), Pu gammas 20-300 cps and neutrons
    3-40 cps over the 4 tubes, shielded Cs-137 200-8000 and Co-60 100-4000 cps before shielding, medical 100-20000 cps
    before the body, NORM 40-3000 cps (for NORM the strength is the expected peak excess itself),
    so NORM and medical loads often trip a 5-sigma gross-count alarm and threats sometimes do.
    Neutrons are removed by hydrogenous cargo (exp(-rho x / 20 g/cm^2)), mineral (40), iron (60) and lead
    (150 g/cm^2).

He-3 ship effect (Oliveri et al., APS DNP 2007, abstract DA.00060; Burr & Gavron, Modern Instrumentation 1
(2012), doi:10.4236/mi.2012.13004)
    Cosmic rays make bursts of spallation neutrons in heavy steel. While metal cargo is between the
    pillars the neutron channels see extra bursts: 0.5-3 cps over the 4 tubes, each burst 1 +
    Poisson(1) neutrons spread over the tubes, so neutron counts are overdispersed (variance/mean
    about 2.5 for the excess).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

GAMMA_DT_S = 0.2
"""Gamma sample interval (s)."""
NEUTRON_DT_S = 1.0
"""Neutron sample interval (s)."""
HOLD_IN_S = 1.0
"""Occupancy hold-in (s) after the rear of the vehicle has passed the pillar plane."""
GROSS_WINDOW_KEV = (30.0, 3000.0)
"""Deposited-energy range (keV) counted when no energy windows are given (K = 1)."""
N_GAMMA = 4
"""Gamma channels: master-upper, master-lower, slave-upper, slave-lower."""
N_NEUTRON = 4
"""He-3 neutron channels, at the same places as the gamma panels."""

SOURCES: dict[str, str] = {
    "none": "benign",
    "k40-fertilizer": "norm",
    "ceramics": "norm",
    "tc99m": "medical",
    "i131": "medical",
    "cs137": "threat",
    "co60": "threat",
    "heu": "threat",
    "pu": "threat",
    "shielded-cs137": "threat",
    "shielded-co60": "threat",
}
"""Scenario name -> truth category."""

DEFAULT_MIX: dict[str, float] = {
    "none": 0.50,
    "k40-fertilizer": 0.08,
    "ceramics": 0.07,
    "tc99m": 0.03,
    "i131": 0.02,
    "cs137": 0.06,
    "co60": 0.05,
    "heu": 0.06,
    "pu": 0.05,
    "shielded-cs137": 0.04,
    "shielded-co60": 0.04,
}
"""Scenario probabilities: half benign, 15 % NORM, 5 % medical, 30 % threats."""

SHADOWS = ("sections", "uniform", "ramped", "patchy", "none")
"""Shadow-shielding profiles: per cargo section (the default), one level over the whole vehicle, a linear ramp
from front to rear, short patches of random depth, or no shielding at all."""


@dataclass(frozen=True)
class Physics:
    """How a lane's physics and its device's conventions are drawn; the default is the lane described above.

    Variants deliberately differ from it, so a detector can be scored on traffic it was not built on.
    """

    shadow: str = "sections"
    """One of :data:`SHADOWS`."""
    shadow_depth: tuple[float, float] = (0.0, 0.40)
    """Range of the suppression fraction drawn for the uniform, ramped and patchy profiles."""
    speed_kmh: tuple[float, float, float] = (3.0, 7.0, 10.0)
    """Triangular distribution (low, mode, high) of vehicle speeds (km/h)."""
    lateral_m: tuple[float, float] = (-1.0, 1.0)
    """Across-lane position (m) of a point source: uniform over the range, mirrored to either side at random when
    the range does not include 0."""
    height_m: tuple[float, float] = (1.3, 3.3)
    """Height (m) of a point source."""
    background_cps: tuple[float, float] | None = None
    """Range of the site's gross gamma background, 4 channels summed (cps), drawn log-uniform once per lane (the
    neutron background scales with it); None: the SRLS ranges per channel."""
    background_line_s: float = 1.0
    """What a background line carries: counts over this many seconds (1: counts per second)."""
    dead_gamma_channel: int | None = None
    """A gamma channel that counts nothing, in background and occupancy alike."""
    norm_span_m: tuple[float, float] | None = None
    """Length (m) of a NORM load, placed at random in the cargo; None: the whole cargo."""

    def __post_init__(self) -> None:
        if self.shadow not in SHADOWS:
            raise ValueError(f"shadow must be one of {', '.join(SHADOWS)}, got {self.shadow!r}")
        if not 0 < self.speed_kmh[0] <= self.speed_kmh[1] <= self.speed_kmh[2]:
            raise ValueError(f"speed_kmh must be 0 < low <= mode <= high, got {self.speed_kmh!r}")
        if not self.background_line_s > 0:
            raise ValueError(f"background_line_s must be positive, got {self.background_line_s!r}")
        if self.dead_gamma_channel is not None and not 0 <= self.dead_gamma_channel < N_GAMMA:
            raise ValueError(f"dead_gamma_channel must be 0..{N_GAMMA - 1}, got {self.dead_gamma_channel!r}")


DEFAULT_PHYSICS = Physics()

VARIANTS: dict[str, Physics] = {
    "default": DEFAULT_PHYSICS,
    "uniform-shadow": Physics(shadow="uniform"),
    "ramped-shadow": Physics(shadow="ramped"),
    "patchy-shadow": Physics(shadow="patchy"),
    "no-shadow": Physics(shadow="none"),
    "off-centre-low": Physics(lateral_m=(0.6, 1.1), height_m=(0.5, 1.2)),
    "high": Physics(height_m=(3.0, 3.8)),
    "slow": Physics(speed_kmh=(2.0, 2.5, 4.0)),
    "fast": Physics(speed_kmh=(9.0, 13.0, 15.0)),
    "background-100": Physics(background_cps=(100.0, 130.0)),
    "background-3000": Physics(background_cps=(2500.0, 3000.0)),
    "lines-5s": Physics(background_line_s=5.0),
    "dead-channel": Physics(dead_gamma_channel=1),
    "norm-short": Physics(norm_span_m=(3.0, 5.0)),
    "norm-long": Physics(norm_span_m=(9.0, 13.0)),
}
"""Named physics variants, each differing from the default on one axis (``default`` itself first)."""

# ---------------------------------------------------------------------------------------------
# Geometry
PANEL_Y_M = np.array([-2.5, -2.5, 2.5, 2.5])
"""Across-lane position (m) of each channel's panel: master pillar at -2.5, slave at +2.5."""
PANEL_Z_M = np.array([3.0, 1.0, 3.0, 1.0])
"""Height (m) of each channel's panel centre."""
_REFERENCE_Y_M, _REFERENCE_Z_M = 0.0, 2.0
_CARGO_HALF_WIDTH_M = 1.17  # inside half-width of an ISO container (2.35 m)


def panel_response(x_m: np.ndarray, y_m: np.ndarray | float, z_m: np.ndarray | float) -> np.ndarray:
    """Relative count rate of each panel for a unit point source at (x, y, z) m; shape (..., 4).

    ``|dy| / r^3`` per panel, normalised so that the 4 panels sum to 1 at the reference point
    (x = 0, on the lane centre line, 2 m high).
    """
    x = np.asarray(x_m, dtype=float)[..., None]
    dy = np.abs(np.asarray(y_m, dtype=float)[..., None] - PANEL_Y_M)
    dz = np.asarray(z_m, dtype=float)[..., None] - PANEL_Z_M
    r2 = x * x + dy * dy + dz * dz
    return dy / (r2 * np.sqrt(r2)) / _reference_norm()


@cache
def _reference_norm() -> float:
    dy = np.abs(_REFERENCE_Y_M - PANEL_Y_M)
    r2 = dy * dy + (_REFERENCE_Z_M - PANEL_Z_M) ** 2
    return float(np.sum(dy / (r2 * np.sqrt(r2))))


# ---------------------------------------------------------------------------------------------
# Attenuation: mass attenuation coefficients (cm^2/g), approximate NIST XCOM totals.
_MU_COLUMNS = ("water", "aluminium", "iron", "pvt")
_MU_ROWS = """
    20    0.809   3.44    25.7    0.425
    30    0.376   1.13    8.18    0.251
    40    0.268   0.569   3.63    0.209
    50    0.227   0.368   1.96    0.192
    60    0.206   0.278   1.21    0.182
    80    0.184   0.202   0.596   0.170
   100    0.171   0.170   0.372   0.162
   150    0.151   0.138   0.196   0.146
   200    0.137   0.122   0.146   0.133
   300    0.119   0.104   0.110   0.115
   400    0.106   0.0928  0.0940  0.103
   500    0.0969  0.0845  0.0840  0.0937
   600    0.0896  0.0780  0.0769  0.0866
   800    0.0786  0.0684  0.0669  0.0761
  1000    0.0707  0.0615  0.0599  0.0683
  1250    0.0632  0.0550  0.0534  0.0611
  1500    0.0575  0.0500  0.0488  0.0556
  2000    0.0494  0.0432  0.0426  0.0478
  3000    0.0397  0.0354  0.0362  0.0383
"""
"""keV, then mu/rho (cm^2/g) of water, aluminium, iron and PVT (polystyrene-like)."""
_LEAD_ROWS = """
    20  86.4     30  30.3     40  14.4     50  8.04     60  5.02     80  2.42    88.0  1.91   88.001  7.68
   100   5.55   150   2.01   200  0.999   300  0.403   400  0.232   500  0.161   600  0.125   800  0.0887
  1000   0.0710 1250  0.0588 1500  0.0522 2000  0.0461 3000  0.0423
"""
"""keV, mu/rho (cm^2/g) pairs of lead, with its K edge at 88 keV."""


def _mu_table() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rows = np.array(_MU_ROWS.split(), dtype=float).reshape(-1, 1 + len(_MU_COLUMNS))
    table = {name: (rows[:, 0], rows[:, 1 + i]) for i, name in enumerate(_MU_COLUMNS)}
    lead = np.array(_LEAD_ROWS.split(), dtype=float).reshape(-1, 2)
    table["lead"] = (lead[:, 0], lead[:, 1])
    return table


_MU_TABLE = _mu_table()
_BUILDUP = {"water": 1.0, "aluminium": 0.8, "iron": 0.6, "lead": 0.2}
"""Linear build-up coefficient b: scattered photons reaching the panel per mean free path."""
_DENSITY_G_CM3 = {"lead": 11.35, "iron": 7.87}
_NEUTRON_REMOVAL_G_CM2 = {"water": 20.0, "aluminium": 40.0, "iron": 60.0, "lead": 150.0}
"""Areal density (g/cm^2) that removes 1/e of a Pu neutron signal, per material (crude)."""

_E_INC_KEV = np.arange(20.0, 3001.0, 10.0)
"""Incident photon energy grid (keV)."""
_DEP_EDGES_KEV = np.arange(0.0, 3600.1, 5.0)
_DEP_CENTRES_KEV = 0.5 * (_DEP_EDGES_KEV[1:] + _DEP_EDGES_KEV[:-1])
_ELECTRON_KEV = 511.0
_PVT_THICKNESS_CM, _PVT_DENSITY_G_CM3 = 5.0, 1.03

Layers = Sequence[tuple[str, float]]
"""Shielding between a source and a panel: (material, areal density g/cm^2), source side first."""


def mass_attenuation(material: str, energy_kev: np.ndarray) -> np.ndarray:
    """Mass attenuation coefficient (cm^2/g) of ``material`` at ``energy_kev`` (log-log interpolation)."""
    try:
        e_tab, mu_tab = _MU_TABLE[material]
    except KeyError:
        raise ValueError(f"unknown material {material!r} (known: {', '.join(_MU_TABLE)})") from None
    return np.exp(np.interp(np.log(energy_kev), np.log(e_tab), np.log(mu_tab)))


@cache
def _mu_inc(material: str) -> np.ndarray:
    return mass_attenuation(material, _E_INC_KEV)


@cache
def _downscatter() -> np.ndarray:
    """(n_inc, n_inc) row-stochastic: where a photon of each incident energy lands after scattering."""
    e = _E_INC_KEV
    e_back = e / (1.0 + 2.0 * e / _ELECTRON_KEV)
    inside = (e[None, :] >= e_back[:, None]) & (e[None, :] < e[:, None])
    rows = inside.sum(axis=1, keepdims=True)
    return np.where(inside, 1.0 / np.maximum(rows, 1), 0.0)


def _attenuate(phi: np.ndarray, layers: Layers) -> np.ndarray:
    """Incident spectrum after passing ``layers``: unscattered part plus down-scattered build-up."""
    for material, areal in layers:
        if areal <= 0.0:
            continue
        mux = _mu_inc(material) * areal
        t = np.exp(-mux)
        scattered = phi * np.minimum(t * _BUILDUP[material] * mux, 0.8 * (1.0 - t))
        phi = phi * t + scattered @ _downscatter()
    return phi


@cache
def _pvt_response() -> np.ndarray:
    """(n_inc, n_dep): deposited-energy spectrum per incident photon in a 5 cm PVT panel, with resolution."""
    e = _E_INC_KEV[:, None]
    dep = _DEP_CENTRES_KEV[None, :]
    width = _DEP_EDGES_KEV[1] - _DEP_EDGES_KEV[0]
    eps = 1.0 - np.exp(-_mu_inc("pvt")[:, None] * _PVT_DENSITY_G_CM3 * _PVT_THICKNESS_CM)
    k = e / _ELECTRON_KEV
    t_max = e * 2.0 * k / (1.0 + 2.0 * k)
    s = np.clip(dep / e, 0.0, 0.999)
    klein_nishina = 2.0 + s * s / (k * k * (1.0 - s) ** 2) + s / (1.0 - s) * (s - 2.0 / k)
    compton = np.where(dep < t_max, np.maximum(klein_nishina, 0.0), 0.0)
    compton /= np.maximum(compton.sum(axis=1, keepdims=True), 1e-300)
    multiple = ((dep >= t_max) & (dep < e)).astype(float)
    multiple /= np.maximum(multiple.sum(axis=1, keepdims=True), 1.0)
    photo = np.zeros_like(compton)
    photo[np.arange(len(_E_INC_KEV)), np.minimum((_E_INC_KEV / width).astype(int), dep.shape[1] - 1)] = 1.0
    f_photo = np.minimum(0.6, 0.24 * (30.0 / e) ** 3.2)
    e_scattered = e - 0.5 * t_max
    f_multiple = 0.5 * (1.0 - np.exp(-mass_attenuation("pvt", e_scattered) * _PVT_DENSITY_G_CM3 * 3.0))
    ideal = eps * (f_photo * photo + (1.0 - f_photo) * ((1.0 - f_multiple) * compton + f_multiple * multiple))
    return ideal @ _resolution()


@cache
def _resolution() -> np.ndarray:
    """(n_dep, n_dep) Gaussian smearing of deposited energy, sigma = sqrt(1.67^2 E + 3^2) keV."""
    c = _DEP_CENTRES_KEV
    sigma = np.sqrt(1.67**2 * c + 9.0)
    g = np.exp(-0.5 * ((c[None, :] - c[:, None]) / sigma[:, None]) ** 2)
    return g / g.sum(axis=1, keepdims=True)


def _window_matrix(edges_kev: Sequence[float]) -> np.ndarray:
    """(n_dep, K): fraction of each deposited-energy bin inside each window."""
    lo, hi = _DEP_EDGES_KEV[:-1, None], _DEP_EDGES_KEV[1:, None]
    a, b = np.asarray(edges_kev[:-1])[None, :], np.asarray(edges_kev[1:])[None, :]
    return np.clip(np.minimum(hi, b) - np.maximum(lo, a), 0.0, None) / (hi - lo)


# ---------------------------------------------------------------------------------------------
# Emitters: gamma lines (keV, photons per decay or relative intensity)
_U238_CHAIN = ((295.2, 0.184), (351.9, 0.356), (609.3, 0.455), (1120.3, 0.149), (1238.1, 0.058), (1764.5, 0.153))
_TH232_CHAIN = ((238.6, 0.436), (338.3, 0.113), (583.2, 0.306), (911.2, 0.258), (969.0, 0.158), (2614.5, 0.359))
_K40 = ((1460.8, 0.1067),)


def _chain_mix(*parts: tuple[tuple[tuple[float, float], ...], float]) -> tuple[tuple[float, float], ...]:
    """Lines of several chains, each weighted by its activity (Bq/kg)."""
    return tuple((e, p * activity) for lines, activity in parts for e, p in lines)


EMITTERS: dict[str, tuple[tuple[float, float], ...]] = {
    "soil": _chain_mix((_K40, 400.0), (_U238_CHAIN, 35.0), (_TH232_CHAIN, 30.0)),
    "k40": _K40,
    "ceramics": _chain_mix((_TH232_CHAIN, 60.0), (_U238_CHAIN, 50.0), (_K40, 1000.0)),
    "tc99m": ((140.5, 0.89),),
    "i131": ((80.2, 0.026), (284.3, 0.061), (364.5, 0.815), (637.0, 0.072), (722.9, 0.018)),
    "cs137": ((32.1, 0.058), (36.4, 0.013), (661.7, 0.851)),
    "co60": ((1173.2, 0.9985), (1332.5, 0.9998)),
    "heu": ((143.8, 0.11), (163.3, 0.051), (185.7, 0.572), (205.3, 0.05), (1001.0, 0.01)),
    "pu": ((59.5, 0.3), (129.3, 0.2), (375.0, 0.15), (413.7, 0.3), (768.0, 0.02)),
}
"""Gamma lines per emitter. Soil and ceramics mix chains by activity (Bq/kg)."""


@cache
def _line_spectrum(emitter: str) -> np.ndarray:
    """Emitter lines on the incident grid (each line split between its two neighbours)."""
    try:
        lines = EMITTERS[emitter]
    except KeyError:
        raise ValueError(f"unknown emitter {emitter!r} (known: {', '.join(EMITTERS)})") from None
    phi = np.zeros_like(_E_INC_KEV)
    step = _E_INC_KEV[1] - _E_INC_KEV[0]
    for energy, intensity in lines:
        pos = np.clip((energy - _E_INC_KEV[0]) / step, 0.0, len(_E_INC_KEV) - 1.000001)
        i = int(pos)
        phi[i] += intensity * (1.0 - (pos - i))
        phi[i + 1] += intensity * (pos - i)
    return phi


@cache
def _background_incident() -> np.ndarray:
    """Natural background photons at a panel: soil lines through soil and air, plus skyshine."""
    lines = _attenuate(_line_spectrum("soil"), (("water", 30.0),))
    skyshine = np.where(_E_INC_KEV >= 30.0, 1.0 / _E_INC_KEV, 0.0)
    return lines + skyshine * (lines.sum() / skyshine.sum())


_COSMIC_FRACTION = 0.08


def _background_deposit(edges_kev: Sequence[float]) -> np.ndarray:
    """Background count rate per window (relative), cosmic flat deposit included."""
    dep = _background_incident() @ _pvt_response()
    gross = _window_matrix(GROSS_WINDOW_KEV)[:, 0]
    cosmic_level = _COSMIC_FRACTION / (1.0 - _COSMIC_FRACTION) * (dep @ gross) / gross.sum()
    return (dep + cosmic_level) @ _window_matrix(edges_kev)


def _response_matrix(edges_kev: Sequence[float]) -> np.ndarray:
    """(n_inc, K + 1): count rate per window per incident photon; last column is the gross window."""
    windows = np.concatenate([_window_matrix(edges_kev), _window_matrix(GROSS_WINDOW_KEV)], axis=1)
    return _pvt_response() @ windows


def window_response(emitter: str, windows_kev: Sequence[float] | None = None, layers: Layers = ()) -> np.ndarray:
    """Count rate per energy window, shape (K,), relative to the unshielded gross count rate.

    ``emitter`` is a key of :data:`EMITTERS`; ``layers`` the shielding on the way, source side
    first. Without shielding and with ``windows_kev`` covering ``GROSS_WINDOW_KEV`` the result
    sums to 1.
    """
    edges = window_edges(windows_kev)
    m = _response_matrix(edges)
    phi = _line_spectrum(emitter)
    return (_attenuate(phi, layers) @ m[:, :-1]) / (phi @ m[:, -1])


def window_edges(windows_kev: Sequence[float] | None) -> tuple[float, ...]:
    """Validated window edges (keV) as a tuple; ``GROSS_WINDOW_KEV`` when none are given."""
    if windows_kev is None or len(windows_kev) == 0:
        return GROSS_WINDOW_KEV
    edges = tuple(float(e) for e in windows_kev)
    if len(edges) < 2 or any(b <= a for a, b in itertools.pairwise(edges)) or edges[0] < 0:
        raise ValueError(f"energy window edges must be at least 2 increasing non-negative keV values, got {edges!r}")
    return edges


# ---------------------------------------------------------------------------------------------
# Vehicles and cargo
@dataclass(frozen=True)
class _CargoKind:
    suppression: tuple[float, float]
    """Fraction of the gross background blocked while this section is between the pillars."""
    material: str
    """Material whose attenuation stands for the load."""
    density_g_cm3: tuple[float, float]
    """Effective (averaged over the load volume) density range."""


_CARGO: dict[str, _CargoKind] = {
    "cab": _CargoKind((0.05, 0.09), "iron", (0.0, 0.0)),
    "gap": _CargoKind((0.01, 0.03), "water", (0.0, 0.0)),
    "empty": _CargoKind((0.02, 0.05), "water", (0.0, 0.005)),
    "organic": _CargoKind((0.10, 0.15), "water", (0.05, 0.20)),
    "metal": _CargoKind((0.20, 0.30), "iron", (0.03, 0.12)),
    "fertilizer": _CargoKind((0.12, 0.18), "aluminium", (0.15, 0.35)),
    "ceramics": _CargoKind((0.15, 0.25), "aluminium", (0.20, 0.45)),
}
_BENIGN_CARGO = {"empty": 0.2, "organic": 0.3, "metal": 0.2, "mixed": 0.3}


@dataclass(frozen=True)
class _VehicleKind:
    probability: float
    cab_m: tuple[float, float]
    gap_m: tuple[float, float]
    cargo_m: tuple[tuple[float, float], ...]
    """Cargo section length ranges (m), one picked at random."""
    wall: tuple[str, float]
    """Cargo wall (material, g/cm^2) between a load and the panels."""


_VEHICLES: dict[str, _VehicleKind] = {
    "tractor-trailer": _VehicleKind(
        0.6, (2.4, 3.2), (0.8, 1.6), ((12.5, 13.4), (12.5, 13.4), (6.4, 7.1)), ("iron", 1.6)
    ),
    "box-truck": _VehicleKind(0.3, (2.0, 2.6), (0.2, 0.5), ((4.5, 8.0),), ("aluminium", 0.5)),
    "van": _VehicleKind(0.1, (2.0, 2.5), (0.0, 0.0), ((2.0, 3.5),), ("iron", 0.8)),
}
_FREIGHT = ("tractor-trailer", "box-truck")

_PROFILE_STEP_M = 0.1
_PROFILE_MARGIN_M = 4.0
_VIEW_HALF_WIDTH_M = 1.2


@dataclass(frozen=True)
class _Segment:
    start_m: float
    end_m: float
    kind: str
    suppression: float
    density_g_cm3: float


@dataclass(frozen=True)
class _Vehicle:
    kind: str
    length_m: float
    cab_m: float
    gap_m: float
    cargo_kind: str
    segments: tuple[_Segment, ...]

    @property
    def cargo_start_m(self) -> float:
        return self.cab_m + self.gap_m

    def truth(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(vehicle, cargo) truth dictionaries."""
        cargo = [s for s in self.segments if s.kind not in ("cab", "gap")]
        weights = np.array([s.end_m - s.start_m for s in cargo])

        def mean(values: list[float]) -> float:
            return _r(float(np.average(values, weights=weights)))

        vehicle = {"type": self.kind, "cab_m": _r(self.cab_m), "gap_m": _r(self.gap_m), "length_m": _r(self.length_m)}
        cargo_truth: dict[str, Any] = {
            "type": self.cargo_kind,
            "suppression": mean([s.suppression for s in cargo]),
            "density_g_cm3": mean([s.density_g_cm3 for s in cargo]),
        }
        if self.cargo_kind == "mixed":
            cargo_truth["segments"] = [[_r(s.start_m), _r(s.end_m), s.kind] for s in cargo]
        return vehicle, cargo_truth

    def density_at(self, position_m: float) -> tuple[str, float]:
        """(attenuation material, effective density g/cm^3) of the load at ``position_m`` from the front."""
        for s in self.segments:
            if s.start_m <= position_m < s.end_m:
                return _CARGO[s.kind].material, s.density_g_cm3
        return "water", 0.0


def _r(value: float, digits: int = 4) -> float:
    return round(float(value), digits)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _make_vehicle(rng: np.random.Generator, kinds: Sequence[str], cargo_kind: str | None) -> _Vehicle:
    probs = np.array([_VEHICLES[k].probability for k in kinds])
    kind = kinds[int(rng.choice(len(kinds), p=probs / probs.sum()))]
    spec = _VEHICLES[kind]
    cab = rng.uniform(*spec.cab_m)
    gap = rng.uniform(*spec.gap_m)
    cargo_len = rng.uniform(*spec.cargo_m[int(rng.integers(len(spec.cargo_m)))])
    if cargo_kind is None:
        names = list(_BENIGN_CARGO)
        if kind == "van":
            names = ["empty", "mixed"]
        probs = np.array([_BENIGN_CARGO[n] for n in names])
        cargo_kind = names[int(rng.choice(len(names), p=probs / probs.sum()))]

    def segment(start: float, end: float, k: str) -> _Segment:
        c = _CARGO[k]
        return _Segment(start, end, k, rng.uniform(*c.suppression), rng.uniform(*c.density_g_cm3))

    segments = [segment(0.0, cab, "cab")]
    if gap > 0:
        segments.append(segment(cab, cab + gap, "gap"))
    start, end = cab + gap, cab + gap + cargo_len
    if cargo_kind == "mixed":
        pos = start
        while pos < end - 1e-9:
            nxt = pos + rng.uniform(1.0, 4.0)
            nxt = end if nxt > end - 0.5 else nxt
            segments.append(segment(pos, nxt, str(rng.choice(["empty", "organic", "metal"]))))
            pos = nxt
    else:
        segments.append(segment(start, end, cargo_kind))
    return _Vehicle(kind, end, cab, gap, cargo_kind, tuple(segments))


def _profile_grid(vehicle: _Vehicle) -> np.ndarray:
    """Distance (m) behind the vehicle front of the section between the pillars, v t, with margins."""
    return np.arange(-_PROFILE_MARGIN_M, vehicle.length_m + _PROFILE_MARGIN_M, _PROFILE_STEP_M)


def _view(raw: np.ndarray) -> np.ndarray:
    """A profile on :func:`_profile_grid` as the panels see it, smoothed over their view."""
    u = np.arange(-_PROFILE_MARGIN_M, _PROFILE_MARGIN_M + 1e-9, _PROFILE_STEP_M)
    kernel = (u * u + _VIEW_HALF_WIDTH_M**2) ** -1.5
    return np.convolve(raw, kernel / kernel.sum(), mode="same")


def _view_smoothed(vehicle: _Vehicle, value: Mapping[str, float] | None) -> tuple[np.ndarray, np.ndarray]:
    """(grid m, profile): suppression (or ``value`` per section kind) seen by the panels, smoothed over their view.

    The grid is the distance behind the vehicle front of the section between the pillars, v t.
    """
    grid = _profile_grid(vehicle)
    raw = np.zeros_like(grid)
    for s in vehicle.segments:
        inside = (grid >= s.start_m) & (grid < s.end_m)
        raw[inside] = s.suppression if value is None else value.get(s.kind, 0.0)
    return grid, _view(raw)


def _shadow(rng: np.random.Generator, vehicle: _Vehicle, physics: Physics) -> tuple[np.ndarray, np.ndarray]:
    """(grid m, suppression seen by the panels) for the physics' shadow profile (:data:`SHADOWS`)."""
    if physics.shadow == "sections":
        return _view_smoothed(vehicle, None)
    grid = _profile_grid(vehicle)
    on = (grid >= 0.0) & (grid < vehicle.length_m)
    raw = np.zeros_like(grid)
    lo, hi = physics.shadow_depth
    if physics.shadow == "uniform":
        raw[on] = rng.uniform(lo, hi)
    elif physics.shadow == "ramped":
        a, b = rng.uniform(lo, hi, 2)
        raw[on] = a + (b - a) * grid[on] / vehicle.length_m
    elif physics.shadow == "patchy":
        pos = 0.0
        while pos < vehicle.length_m:
            end = pos + rng.uniform(0.5, 2.0)
            raw[(grid >= pos) & (grid < min(end, vehicle.length_m))] = rng.uniform(lo, hi)
            pos = end
    return grid, _view(raw)


# ---------------------------------------------------------------------------------------------
@dataclass
class Passage:
    """One vehicle through the lane: the counts the RPM would report during the occupancy, and the truth."""

    index: int
    gamma: np.ndarray
    """(n, 4, K) int64 gamma counts per ``GAMMA_DT_S``, windows last."""
    neutron: np.ndarray
    """(m, 4) int64 neutron counts per ``NEUTRON_DT_S``."""
    speed_kmh: float
    length_m: float
    background_gamma_cps: np.ndarray
    """(4, K) true mean gamma background (cps) at the start of the passage, without shadow shielding."""
    background_neutron_cps: np.ndarray
    """(4,) true mean neutron background (cps)."""
    truth: dict
    """JSON-serialisable: index, category, source, sources, cargo, vehicle, length_m, speed_kmh."""
    expected_background: np.ndarray | None = None
    """(n, 4, K) expected background gamma counts per sample, shadow shielding included (what the counts would
    average without any source)."""
    expected_signal: np.ndarray | None = None
    """(n, 4, K) expected gamma counts from the sources."""
    expected_neutron_background: np.ndarray | None = None
    """(m, 4) expected neutron background counts per sample from the site (Poisson)."""
    expected_ship: np.ndarray | None = None
    """(m, 4) expected He-3 ship-effect counts per sample (bursts: variance about 2.5 times the mean)."""
    expected_neutron_signal: np.ndarray | None = None
    """(m, 4) expected neutron counts from the sources."""


@dataclass(frozen=True)
class _Emission:
    """One source's expected counts over a passage: gamma (n, 4, K+1) incl. gross, neutron (m, 4)."""

    gamma: np.ndarray
    neutron: np.ndarray | None
    truth: dict[str, Any]


class Traffic:
    """A stream of vehicles through one lane, with a drifting background. Seeded and reproducible.

    ``windows_kev`` are energy window edges (keV, K + 1 values); ``None`` counts gross (K = 1).
    ``mix`` maps scenario names (:data:`SOURCES`) to relative probabilities (default
    :data:`DEFAULT_MIX`). ``background_scale`` multiplies the site's gamma and neutron background
    (1 = the SRLS ranges; a granite-paved site might be 1.5).

    The same seed and the same sequence of calls give identical passages and readings; background
    readings draw from their own stream, so taking them does not change the passages.
    """

    def __init__(
        self,
        seed: int,
        windows_kev: Sequence[float] | None = None,
        mix: Mapping[str, float] | None = None,
        *,
        background_scale: float = 1.0,
        physics: Physics = DEFAULT_PHYSICS,
    ) -> None:
        self.seed = int(seed)
        self.physics = physics
        self.windows_kev = window_edges(windows_kev)
        self.K = len(self.windows_kev) - 1
        self.mix = dict(DEFAULT_MIX if mix is None else mix)
        unknown = sorted(set(self.mix) - set(SOURCES))
        if unknown:
            raise ValueError(f"unknown source(s) in mix: {', '.join(unknown)} (known: {', '.join(SOURCES)})")
        weights = np.array(list(self.mix.values()), dtype=float)
        if not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
            raise ValueError(f"mix weights must be non-negative with a positive sum, got {self.mix!r}")
        if not background_scale > 0:
            raise ValueError(f"background_scale must be positive, got {background_scale!r}")
        self._names = list(self.mix)
        self._probs = weights / weights.sum()

        site = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(2,)))
        self._reading_rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(1,)))
        self._index = 0
        self._t_s = 0.0

        self._response = _response_matrix(self.windows_kev)
        bg_windows = _background_deposit(self.windows_kev)
        bg_gross = float(_background_deposit(GROSS_WINDOW_KEV)[0])
        gross_cps = site.uniform(212.0, 256.0, N_GAMMA) * background_scale
        neutron_cps = site.uniform(2.0, 5.0, N_NEUTRON) * background_scale
        if physics.background_cps is not None:
            variant = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(4,)))
            factor = _log_uniform(variant, *physics.background_cps) / float(gross_cps.sum())
            gross_cps, neutron_cps = gross_cps * factor, neutron_cps * factor
        self._alive = np.ones(N_GAMMA)
        if physics.dead_gamma_channel is not None:
            self._alive[physics.dead_gamma_channel] = 0.0
        self._bg_gamma = (gross_cps * self._alive)[:, None] * (bg_windows / bg_gross)[None, :]
        self._bg_neutron = neutron_cps
        self._window_suppression = self._suppression_shape(bg_windows)
        # Drift: (amplitude, period s, phase) for the common gamma, per-channel gamma and neutron terms.
        self._drift_common = [(0.02, 420.0, site.uniform(0, 2 * np.pi)), (0.012, 1300.0, site.uniform(0, 2 * np.pi))]
        self._drift_channel = site.uniform(0, 2 * np.pi, N_GAMMA)
        self._drift_neutron = site.uniform(0, 2 * np.pi)

    # --- background -----------------------------------------------------------------------
    def _suppression_shape(self, bg_windows: np.ndarray) -> np.ndarray:
        """(K,) window suppression relative to gross, from a 10 g/cm^2 water-like blocker."""
        blocked = _attenuate(_background_incident(), (("water", 10.0),))
        m = self._response
        removed = 1.0 - (blocked @ m) / (_background_incident() @ m)
        return np.clip(removed[:-1] / removed[-1], 0.2, 3.0)

    def _gamma_drift(self, t_s: np.ndarray) -> np.ndarray:
        """(len(t), 4) multiplicative gamma background drift."""
        t = np.asarray(t_s, dtype=float)[:, None]
        common = sum(a * np.sin(2 * np.pi * t / p + ph) for a, p, ph in self._drift_common)
        return 1.0 + common + 0.006 * np.sin(2 * np.pi * t / 230.0 + self._drift_channel)

    def _neutron_drift(self, t_s: np.ndarray) -> np.ndarray:
        return 1.0 + 0.03 * np.sin(2 * np.pi * np.asarray(t_s, dtype=float) / 900.0 + self._drift_neutron)

    @property
    def time_s(self) -> float:
        """Simulated time (s) since the lane started."""
        return self._t_s

    def background_mean(self) -> tuple[np.ndarray, np.ndarray]:
        """True mean background now, unoccupied: gamma (4, K) cps, neutron (4,) cps."""
        t = np.array([self._t_s])
        return self._bg_gamma * self._gamma_drift(t)[0][:, None], self._bg_neutron * self._neutron_drift(t)[0]

    def background_reading(self, seconds: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """A measured unoccupied reading (Poisson over ``seconds``), returned in cps: gamma (4, K), neutron (4,).

        The reading is taken at the current simulated time and does not advance it (see :meth:`idle`).
        """
        if not seconds > 0:
            raise ValueError(f"seconds must be positive, got {seconds!r}")
        gamma, neutron = self.background_mean()
        rng = self._reading_rng
        return rng.poisson(gamma * seconds) / seconds, rng.poisson(neutron * seconds) / seconds

    def background_line(self) -> tuple[np.ndarray, np.ndarray]:
        """A background reading as the device's GB and NB lines carry it: counts over the physics'
        ``background_line_s`` (so counts per second when that is 1 s); gamma (4, K), neutron (4,)."""
        seconds = self.physics.background_line_s
        gamma, neutron = self.background_reading(seconds)
        return gamma * seconds, neutron * seconds

    def idle(self, seconds: float) -> None:
        """Advance time (drift) without a vehicle."""
        if seconds < 0:
            raise ValueError(f"seconds must be non-negative, got {seconds!r}")
        self._t_s += float(seconds)

    # --- passages -------------------------------------------------------------------------
    def next_passage(self) -> Passage:
        """The next vehicle: draws scenario, vehicle, cargo, speed and sources, and samples the counts."""
        index = self._index
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(0, index)))
        source = self._names[int(rng.choice(len(self._names), p=self._probs))]
        category = SOURCES[source]
        if category == "norm":
            vehicle = _make_vehicle(rng, _FREIGHT, "fertilizer" if source == "k40-fertilizer" else "ceramics")
        elif category == "threat":
            vehicle = _make_vehicle(rng, _FREIGHT, None)
        else:
            vehicle = _make_vehicle(rng, list(_VEHICLES), None)
        speed_kmh = float(rng.triangular(*self.physics.speed_kmh))
        v = speed_kmh / 3.6
        n = math.ceil((vehicle.length_m / v + HOLD_IN_S) / GAMMA_DT_S)
        m = math.ceil(n * GAMMA_DT_S / NEUTRON_DT_S)
        t_gamma = (np.arange(n)[:, None] + np.array([1.0, 3.0, 5.0]) / 6.0) * GAMMA_DT_S  # (n, 3) sub-instants
        t_neutron = (np.arange(m) + 0.5) * NEUTRON_DT_S

        variant = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(5, index)))
        emissions = self._emissions(rng, variant, source, vehicle, v, t_gamma, t_neutron)

        # Background, shadow-shielded by whatever is between the pillars.
        t_abs = self._t_s + t_gamma[:, 1]
        grid, supp = _shadow(variant, vehicle, self.physics)
        panel_factor = rng.uniform(0.85, 1.15, N_GAMMA)
        s_t = np.interp(v * t_gamma[:, 1], grid, supp)[:, None, None] * panel_factor[None, :, None]
        s_tk = np.clip(s_t * self._window_suppression[None, None, :], 0.0, 0.9)
        bg = self._bg_gamma[None, :, :] * self._gamma_drift(t_abs)[:, :, None]
        background = bg * (1.0 - s_tk) * GAMMA_DT_S
        neutron_background = (
            self._bg_neutron[None, :] * self._neutron_drift(self._t_s + t_neutron)[:, None]
        ) * NEUTRON_DT_S
        signal = np.zeros_like(background)
        neutron_signal = np.zeros_like(neutron_background)
        for e in emissions:
            signal = signal + e.gamma[:, :, :-1] * self._alive[None, :, None]
            if e.neutron is not None:
                neutron_signal = neutron_signal + e.neutron

        gamma = rng.poisson(background + signal).astype(np.int64)
        neutron = rng.poisson(neutron_background + neutron_signal).astype(np.int64)
        ship_cps, ship_mean = self._add_ship_effect(rng, vehicle, v, t_neutron, neutron)

        bg_gamma, bg_neutron = self.background_mean()
        vehicle_truth, cargo_truth = vehicle.truth()
        cargo_truth["ship_effect_cps"] = _r(ship_cps)
        truth = {
            "index": index,
            "category": category,
            "source": source,
            "sources": [e.truth for e in emissions],
            "cargo": cargo_truth,
            "vehicle": vehicle_truth,
            "length_m": _r(vehicle.length_m),
            "speed_kmh": _r(speed_kmh),
            "duration_s": _r(n * GAMMA_DT_S),
        }
        self._index += 1
        self._t_s += n * GAMMA_DT_S
        return Passage(
            index,
            gamma,
            neutron,
            speed_kmh,
            vehicle.length_m,
            bg_gamma,
            bg_neutron,
            truth,
            expected_background=background,
            expected_signal=signal,
            expected_neutron_background=neutron_background,
            expected_ship=ship_mean,
            expected_neutron_signal=neutron_signal,
        )

    def _add_ship_effect(
        self, rng: np.random.Generator, vehicle: _Vehicle, v: float, t_neutron: np.ndarray, neutron: np.ndarray
    ) -> tuple[float, np.ndarray]:
        """Add overdispersed spallation-neutron bursts from metal cargo in place; returns the full-load rate (cps)
        and the expected counts it adds, (m, 4)."""
        grid, metal = _view_smoothed(vehicle, {"metal": 1.0})
        if metal.max() <= 0.0:
            return 0.0, np.zeros_like(neutron, dtype=np.float64)
        ship_cps = rng.uniform(0.5, 3.0)
        mean_multiplicity = 2.0
        burst_rate = ship_cps / mean_multiplicity * np.interp(v * t_neutron, grid, metal) * NEUTRON_DT_S
        bursts = rng.poisson(burst_rate)
        total = bursts + rng.poisson(bursts * (mean_multiplicity - 1.0))
        neutron += rng.multinomial(total, np.full(N_NEUTRON, 1.0 / N_NEUTRON))
        return ship_cps, np.repeat((burst_rate * mean_multiplicity / N_NEUTRON)[:, None], N_NEUTRON, axis=1)

    def _emissions(
        self,
        rng: np.random.Generator,
        variant: np.random.Generator,
        source: str,
        vehicle: _Vehicle,
        v: float,
        t_gamma: np.ndarray,
        t_neutron: np.ndarray,
    ) -> list[_Emission]:
        if source == "none":
            return []
        if SOURCES[source] == "norm":
            return [self._distributed(rng, variant, source, vehicle, v, t_gamma)]
        wall = _VEHICLES[vehicle.kind].wall
        if SOURCES[source] == "medical":
            p = rng.uniform(0.8, max(0.9, vehicle.cab_m - 0.4))
            y, z = rng.uniform(-0.7, 0.7), rng.uniform(1.0, 1.5) if vehicle.kind == "van" else rng.uniform(1.6, 2.4)
            body = rng.uniform(5.0, 15.0)
            strength = _log_uniform(rng, 100.0, 20000.0)
            layers = [[("water", body), ("iron", 0.8)]] * N_GAMMA
            shielding = {"material": "tissue", "areal_density_g_cm2": _r(body)}
            return [self._point(source, source, strength, p, y, z, v, layers, shielding, t_gamma)]

        p = rng.uniform(vehicle.cargo_start_m + 0.3, vehicle.length_m - 0.3)
        y, z = rng.uniform(*self.physics.lateral_m), rng.uniform(*self.physics.height_m)
        if self.physics.lateral_m[0] > 0 and variant.random() < 0.5:
            y = -y
        material, density = vehicle.density_at(p)
        cargo_areal = density * 100.0 * np.clip(_CARGO_HALF_WIDTH_M - np.sign(PANEL_Y_M) * y, 0.0, None)
        shield: list[tuple[str, float]] = []
        shielding = None
        emitter = source.removeprefix("shielded-")
        if source.startswith("shielded-"):
            strength = _log_uniform(rng, 200.0, 8000.0) if emitter == "cs137" else _log_uniform(rng, 100.0, 4000.0)
            shield_material = "lead" if rng.random() < 0.6 else "iron"
            thickness = rng.uniform(0.5, 3.0) if shield_material == "lead" else rng.uniform(2.0, 8.0)
            areal = thickness * _DENSITY_G_CM3[shield_material]
            shield = [(shield_material, areal)]
            shielding = {
                "material": "lead" if shield_material == "lead" else "steel",
                "thickness_cm": _r(thickness),
                "areal_density_g_cm2": _r(areal),
            }
        elif source == "pu":
            strength = _log_uniform(rng, 20.0, 300.0)
        else:
            strength = _log_uniform(rng, 50.0, 1500.0)
        layers = [[*shield, (material, float(a)), wall] for a in cargo_areal]
        emission = self._point(emitter, source, strength, p, y, z, v, layers, shielding, t_gamma)
        emission.truth["cargo_areal_density_g_cm2"] = [_r(a, 2) for a in cargo_areal]
        if source != "pu":
            return [emission]
        n_strength = _log_uniform(rng, 3.0, 40.0)
        removal = np.array([sum(a / _NEUTRON_REMOVAL_G_CM2[mat] for mat, a in lay) for lay in layers])
        geom = panel_response(v * t_neutron - p, y, z)  # (m, 4)
        neutron = n_strength * geom * np.exp(-removal)[None, :] * NEUTRON_DT_S
        emission.truth["neutron_strength_cps"] = _r(n_strength)
        emission.truth["neutron_peak_excess_cps"] = _r(float(neutron.sum(axis=1).max()) / NEUTRON_DT_S)
        return [_Emission(emission.gamma, neutron, emission.truth)]

    def _point(
        self,
        emitter: str,
        source: str,
        strength: float,
        p: float,
        y: float,
        z: float,
        v: float,
        layers: Sequence[Layers],
        shielding: dict[str, Any] | None,
        t_gamma: np.ndarray,
    ) -> _Emission:
        """Expected counts of a point source at p m behind the front, (y, z) m, seen through ``layers`` per panel."""
        phi = _line_spectrum(emitter)
        norm = phi @ self._response[:, -1]
        weights = np.stack([_attenuate(phi, lay) @ self._response for lay in layers]) / norm  # (4, K+1)
        geom = panel_response(v * t_gamma - p, y, z).mean(axis=1)  # (n, 4)
        gamma = strength * geom[:, :, None] * weights[None, :, :] * GAMMA_DT_S
        truth = {
            "type": source.removeprefix("shielded-"),
            "position_m": _r(p),
            "lateral_m": _r(y),
            "height_m": _r(z),
            "strength": _r(strength),
            "shielding": shielding,
            "peak_excess_cps": _r(float(gamma[:, :, -1].sum(axis=1).max()) / GAMMA_DT_S),
        }
        return _Emission(gamma, None, truth)

    def _distributed(
        self,
        rng: np.random.Generator,
        variant: np.random.Generator,
        source: str,
        vehicle: _Vehicle,
        v: float,
        t_gamma: np.ndarray,
    ) -> _Emission:
        """NORM spread through the load (the whole cargo, or a span of the physics' ``norm_span_m`` in it); strength
        is the expected peak excess (cps, 4 panels, gross)."""
        emitter = "k40" if source == "k40-fertilizer" else "ceramics"
        start, end = vehicle.cargo_start_m, vehicle.length_m
        if self.physics.norm_span_m is not None:
            span = min(variant.uniform(*self.physics.norm_span_m), end - start)
            start += variant.uniform(0.0, max(end - start - span, 0.0))
            end = start + span
        material, density = vehicle.density_at(0.5 * (start + end))
        slices = np.arange(start + 0.15, end, 0.3)
        ys = np.array([-0.8, 0.0, 0.8])
        zs = np.array([1.5, 2.3]) if emitter == "k40" else np.array([1.4, 1.9])
        depth_cm = 100.0 * (_CARGO_HALF_WIDTH_M - np.sign(PANEL_Y_M)[None, :] * ys[:, None])  # (3, 4)
        depth_cm = 0.5 * np.clip(depth_cm, 20.0, None)  # mean path out of the bulk toward each panel
        wall = _VEHICLES[vehicle.kind].wall
        phi = _line_spectrum(emitter)
        norm = phi @ self._response[:, -1]
        weights = (
            np.array(
                [[_attenuate(phi, [(material, density * d), wall]) @ self._response for d in row] for row in depth_cm]
            )
            / norm
        )  # (3 y, 4 panels, K+1)
        x = v * t_gamma[:, :, None] - slices[None, None, :]  # (n, 3 sub, S)
        gamma = np.zeros((t_gamma.shape[0], N_GAMMA, self.K + 1))
        for iy, yy in enumerate(ys):
            for zz in zs:
                geom = panel_response(x, yy, zz).mean(axis=(1, 2))  # (n, 4)
                gamma += geom[:, :, None] * weights[iy][None, :, :]
        strength = _log_uniform(rng, 40.0, 3000.0)
        peak = gamma[:, :, -1].sum(axis=1).max()
        gamma *= strength / peak * GAMMA_DT_S
        truth = {
            "type": emitter,
            "position_m": _r(0.5 * (start + end)),
            "extent_m": [_r(start), _r(end)],
            "strength": _r(strength),
            "shielding": {"material": material, "areal_density_g_cm2": _r(float(density * depth_cm.mean()))},
            "peak_excess_cps": _r(strength),
        }
        return _Emission(gamma, None, truth)
