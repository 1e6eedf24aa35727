"""Calibration of the ship-effect neutron null: fit its constants from benign simulated traffic.

Steel in a vehicle makes cosmic-ray spallation neutrons (the He-3 "ship effect": Oliveri et al., APS DNP
2007, abstract DA.00060, non-Poisson in 0.1 s bins; Burr & Gavron, Modern Instrumentation 1 (2012),
doi:10.4236/mi.2012.13004), in bursts, so a steel load raises the neutron counts and their scatter while it is
between the pillars. Steel also blocks natural gamma background, so the gamma shadow (the suppression
``s = 1 - observed / expected`` of the gross gamma count over each neutron sample, computed exactly as
:mod:`lanewatch.edge.lane.detect` does) is the covariate. The model, per neutron sample ``j`` of ``dt`` seconds::

    h_j = max(s_j - knee, 0) dt                  suppression-seconds above the knee
    X_j = background + ship_j,   E[ship_j] = k_v h_j,   Var[ship_j | k_v] = dispersion k_v h_j

with the vehicle's coefficient ``k_v`` (neutron counts per suppression-second, all tubes) varying
from vehicle to vehicle around ``rate`` with relative variance ``rate_relvar``. Light loads (cab,
organics, empty containers) block some background without steel: the knee is the suppression they
reach. The fit, on benign traffic only (every vehicle without a source), by moments:

1. ``knee`` and ``rate``: least squares of the excess ``X_j - background`` on ``h_j`` over all samples,
   for knees 0.00, 0.01, ... 0.20; the knee of smallest residual sum of squares.
2. ``dispersion``: within each vehicle, the coefficient from its other samples (leave one out, where
   they hold at least as much covariate as sample ``j``) predicts sample ``j``; the squared residual
   less the background's variance and the prediction's own variance is regressed on the prediction
   (through the origin): its slope is ``dispersion - 1``.
3. ``rate_relvar``: each vehicle's own least-squares coefficient scatters around ``rate`` by the
   vehicle-to-vehicle variance plus its counting noise; the noise is subtracted (weighted by each
   vehicle's information) and the rest divided by ``rate^2``.

The calibration traffic uses its own seeds (default 101-110), never the detection benchmark's. Then a
check: the tail of every neutron window's null (the ``lanewatch.kernels.poisson.ship_window_log_sf`` negative
binomial with the constants of :mod:`lanewatch.edge.lane.detect`) against the normal tail it should match, by
expected ship counts; and the whole neutron test per occupancy, through :func:`lanewatch.edge.lane.detect.analyze`, at
a few configured false-alarm probabilities. Run::

    python -m benchmarks.ship_effect --seeds 101-110 --n 2000

The constants in :mod:`lanewatch.edge.lane.detect` (``SHIP_KNEE``, ``SHIP_RATE``, ``SHIP_RATE_RELVAR``,
``SHIP_DISPERSION``) come from that command; it prints them beside the fit.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from statistics import NormalDist

import msgspec
import numpy as np

from benchmarks.detection import MEAN_GAP_S, READING_INTERVAL_S, WARM_UP_S, _feed
from lanewatch.drivers.sim.physics import GAMMA_DT_S, HOLD_IN_S, NEUTRON_DT_S, Traffic
from lanewatch.drivers.sim.physics import Passage as SimPassage
from lanewatch.edge.config import DetectionConfig
from lanewatch.edge.lane import detect
from lanewatch.edge.lane.background import BackgroundEstimator, BackgroundSnapshot
from lanewatch.kernels.poisson import ship_window_log_sf
from lanewatch.kernels.suppression import span_levels

WINDOWS_KEV = (30.0, 400.0, 3000.0)
"""Energy window edges (keV) of the calibration traffic, as in the detection benchmark."""
KNEES = np.round(np.arange(0.0, 0.2001, 0.01), 2)
"""Knees tried (fraction of the gross gamma background blocked)."""
CHECK_Z = (2.0, 2.5, 3.0, 3.5)
"""Normal quantiles at which the windows' tails are checked."""
OCCUPANCY_PROBABILITIES = (1e-3, 1e-2, 5e-2)
"""Configured neutron false-alarm probabilities at which the per-occupancy rate is checked."""


@dataclass(frozen=True)
class Passage:
    """What the fit needs of one benign vehicle: per neutron sample counts (all tubes), suppression, background."""

    vehicle: SimPassage
    """The simulated passage."""
    snapshot: BackgroundSnapshot
    counts: np.ndarray
    suppression: np.ndarray
    background: float
    """Tracked neutron background (counts per sample, all tubes)."""
    relvar: float
    """Relative variance of that background estimate."""
    window: int
    """Neutron window (samples) the analyzer uses at this vehicle's speed."""


@dataclass(frozen=True)
class ShipFit:
    """The fitted constants (see the module docstring)."""

    knee: float
    rate: float
    """Neutron counts (all tubes) per suppression-second above the knee."""
    rate_relvar: float
    dispersion: float


def passages(seeds: list[int], n: int) -> list[Passage]:
    """``n`` benign vehicles per seed through a lane with a tracked background, as the detection benchmark runs it."""
    out = []
    for seed in seeds:
        traffic = Traffic(seed, windows_kev=WINDOWS_KEV, mix={"none": 1.0})
        est = BackgroundEstimator(4, traffic.K, 4, DetectionConfig().background_halflife_s)
        rng = np.random.default_rng(seed + 1_000_003)
        _feed(traffic, est, WARM_UP_S)
        for _ in range(n):
            p = traffic.next_passage()
            snap = est.snapshot()
            gross = p.gamma.sum(axis=(1, 2)).astype(np.float64)
            expected = np.full(gross.shape, float(np.sum(snap.gamma_cps)) * GAMMA_DT_S)
            m = p.neutron.shape[0]
            level = span_levels(gross, expected, np.full(gross.shape, GAMMA_DT_S), NEUTRON_DT_S, m)
            background = float(np.sum(snap.neutron_cps))
            out.append(
                Passage(
                    vehicle=p,
                    snapshot=snap,
                    counts=p.neutron.sum(axis=1).astype(np.float64),
                    suppression=1.0 - level,
                    background=background * NEUTRON_DT_S,
                    relvar=1.0 / max(background * snap.neutron_exposure_s, 1e-9),
                    window=detect.neutron_window(p.speed_kmh, DetectionConfig().source_standoff_m, NEUTRON_DT_S),
                )
            )
            _feed(traffic, est, max(READING_INTERVAL_S, rng.exponential(MEAN_GAP_S)))
    return out


def _covariate(p: Passage, knee: float) -> np.ndarray:
    return detect.ship_covariate(1.0 - p.suppression, NEUTRON_DT_S, knee)


def fit(data: list[Passage]) -> ShipFit:
    """Fit the constants by the three moment steps of the module docstring."""
    excess = [p.counts - p.background for p in data]
    best = None
    for knee in KNEES:
        h = np.concatenate([_covariate(p, knee) for p in data])
        e = np.concatenate(excess)
        rate = float(h @ e / (h @ h))
        sse = float(np.sum((e - rate * h) ** 2))
        if best is None or sse < best[0]:
            best = (sse, float(knee), rate)
    _, knee, rate = best
    num = den = 0.0
    for p, e in zip(data, excess, strict=True):
        h = _covariate(p, knee)
        q, r = float(h @ h), float(h @ e)
        var_bg = p.background * (1.0 + p.relvar * p.background)
        for j in np.flatnonzero(h > 0):
            q_j = q - h[j] ** 2
            if q_j < h[j] ** 2:
                continue
            predicted = max((r - h[j] * e[j]) / q_j, 0.0) * h[j]
            residual = (e[j] - predicted) ** 2 - var_bg - h[j] ** 2 * var_bg / q_j
            num += predicted * residual
            den += predicted**2
    dispersion = 1.0 + num / den
    slopes, noises, weights = [], [], []
    for p, e in zip(data, excess, strict=True):
        h = _covariate(p, knee)
        q = float(h @ h)
        if q > 0.0:
            var_bg = p.background * (1.0 + p.relvar * p.background)
            slopes.append(float(h @ e) / q)
            noises.append(float(h**2 @ (var_bg + dispersion * rate * h)) / q**2)
            weights.append(q)
    w = np.array(weights)
    spread = np.array(slopes) - rate
    var_rate = float(np.sum(w * (spread**2 - np.array(noises))) / np.sum(w))
    return ShipFit(knee=knee, rate=rate, rate_relvar=max(var_rate, 0.0) / rate**2, dispersion=dispersion)


def check(data: list[Passage], ship: ShipFit) -> list[tuple[str, int, list[float]]]:
    """Per band of expected ship counts per window: windows, and observed over nominal tail fraction at CHECK_Z."""
    bands = [(0.0, 1e-9, "0"), (1e-9, 2.0, "(0, 2]"), (2.0, 5.0, "(2, 5]"), (5.0, math.inf, "> 5")]
    log_sf: list[list[float]] = [[] for _ in bands]
    for p in data:
        h = _covariate(p, ship.knee)
        m = min(p.window, p.counts.size)
        expected_ship = ship.rate * np.convolve(h, np.ones(m), mode="valid")
        none = np.zeros_like(expected_ship)
        null = detect.window_null(
            p.background * m, p.relvar, expected_ship, none, none + ship.rate_relvar, ship.dispersion
        )
        sf = ship_window_log_sf(p.counts, m, *null, ship.dispersion)
        for k, (lo, hi, _) in enumerate(bands):
            inside = (expected_ship >= lo) & (expected_ship < hi) if k else expected_ship < hi
            log_sf[k].extend(sf[inside].tolist())
    out = []
    for (_, _, name), values in zip(bands, log_sf, strict=True):
        v = np.array(values)
        ratios = []
        for z in CHECK_Z:
            tail = 1.0 - NormalDist().cdf(z)
            ratios.append(float(np.mean(v <= math.log(tail)) / tail) if v.size else math.nan)
        out.append((name, int(v.size), ratios))
    return out


def occupancy_rates(data: list[Passage], probabilities: tuple[float, ...]) -> list[tuple[float, float]]:
    """Per configured neutron false-alarm probability: the fraction of these benign vehicles with a neutron alarm.

    Each vehicle goes through :func:`lanewatch.edge.lane.detect.analyze` (gamma in ``WINDOWS_KEV``),
    counting alarms of the neutron tests only (``neutron``, ``neutron-gamma``).
    """
    base = DetectionConfig(energy_windows_kev=list(WINDOWS_KEV), occupancy_hold_in_s=HOLD_IN_S)
    out = []
    for probability in probabilities:
        cfg = msgspec.structs.replace(base, neutron_false_alarm_probability=probability)
        alarms = 0
        for p in data:
            v = p.vehicle
            result = detect.analyze(cfg, p.snapshot, v.gamma, v.neutron, GAMMA_DT_S, NEUTRON_DT_S, v.speed_kmh)
            alarms += any(a["alarm"] and a["reason"].startswith("neutron") for a in result["alarms"])
        out.append((probability, alarms / len(data)))
    return out


def _seeds(text: str) -> list[int]:
    if "-" in text:
        lo, hi = (int(v) for v in text.split("-"))
        return list(range(lo, hi + 1))
    return [int(v) for v in text.split(",")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="101-110", help="calibration traffic seeds, a-b or a,b,c (default 101-110)")
    parser.add_argument("--n", type=int, default=2000, help="benign vehicles per seed (default 2000)")
    args = parser.parse_args(argv)
    data = passages(_seeds(args.seeds), args.n)
    ship = fit(data)
    used = ShipFit(detect.SHIP_KNEE, detect.SHIP_RATE, detect.SHIP_RATE_RELVAR, detect.SHIP_DISPERSION)
    print(f"{len(data)} benign vehicles, seeds {args.seeds}")
    print(f"{'':22s} {'knee':>6s} {'rate':>8s} {'rate_relvar':>12s} {'dispersion':>11s}")
    for name, f in (("fitted", ship), ("lanewatch.edge.lane.detect constants", used)):
        print(f"{name:22s} {f.knee:6.2f} {f.rate:8.2f} {f.rate_relvar:12.2f} {f.dispersion:11.2f}")
    print("\nneutron windows (lanewatch.edge.lane.detect constants): observed / nominal tail fraction")
    print(f"{'expected ship counts':22s} {'windows':>8s} " + " ".join(f"{'z > ' + str(z):>8s}" for z in CHECK_Z))
    for name, count, ratios in check(data, used):
        print(f"{name:22s} {count:8d} " + " ".join(f"{r:8.2f}" for r in ratios))
    print("\nper occupancy (lanewatch.edge.lane.detect as configured): vehicles with a neutron alarm")
    for probability, rate in occupancy_rates(data, OCCUPANCY_PROBABILITIES):
        print(f"  neutron false-alarm probability {probability:g}: {rate:.5f} ({rate / probability:.2f} of it)")


if __name__ == "__main__":
    main()
