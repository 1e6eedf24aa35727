"""Detection quality: lanewatch against the fielded n-sigma rule on simulated traffic.

Vehicles come from the lane simulator's physics (:class:`lanewatch.drivers.sim.physics.Traffic`): benign loads,
NORM (potash, ceramics), medical patients and threat sources, with shadow shielding, drifting
background and the He-3 ship effect. Between vehicles the lane sits empty for a while and the
background estimator is fed 1 s readings every 5 s, as a lane would be. Each occupancy goes through
:func:`lanewatch.edge.lane.detect.analyze`, which also reports what the fielded rule (5 samples of 0.2 s summed over
the gamma channels against BG + n sqrt(BG), and the fixed neutron threshold) says on the same counts.

Prints, per source type: vehicles, probability of alarm for lanewatch and for the fielded rule (and
how often each half of the fielded rule, gamma and neutron, fired), and for benign, NORM and medical
traffic the alarms per 1000 vehicles, side by side. The two run at very different benign alarm rates,
so a last table compares them at the same one: lanewatch re-run on the same occupancies with its
false-alarm probabilities scaled up until it alarms on as many benign vehicles as the fielded rule
did (:func:`matched`), and each one's detection probability per threat type there. Run::

    python -m benchmarks.detection --n 2000 --seed 1
    python -m benchmarks.detection --n 2000 --seed 2 --gross
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
from msgspec.structs import replace

from lanewatch.drivers.sim.physics import GAMMA_DT_S, HOLD_IN_S, NEUTRON_DT_S, SOURCES, Traffic
from lanewatch.edge.config import DetectionConfig
from lanewatch.edge.lane.background import BackgroundEstimator, BackgroundSnapshot
from lanewatch.edge.lane.detect import analyze, warm_up

READING_INTERVAL_S = 5.0
"""Background readings while the lane is empty, one every this many seconds (s), each a 1 s count."""
MEAN_GAP_S = 20.0
"""Mean empty time between vehicles (s), exponential, at least one reading interval."""
WARM_UP_S = 120.0
"""Empty time before the first vehicle (s), so the estimator starts from a settled background."""


def _feed(traffic: Traffic, est: BackgroundEstimator, seconds: float) -> None:
    """Keep the lane empty for ``seconds``, with a background reading every interval."""
    for _ in range(max(1, round(seconds / READING_INTERVAL_S))):
        traffic.idle(READING_INTERVAL_S)
        gamma, neutron = traffic.background_reading(1.0)
        t_ns = int(traffic.time_s * 1e9)
        est.update_gamma(gamma, t_ns)
        est.update_neutron(neutron, t_ns)


@dataclass(frozen=True)
class Occupancy:
    """One simulated occupancy as the analyzer saw it, kept for re-analysis at other thresholds."""

    source: str
    background: BackgroundSnapshot
    gamma: np.ndarray
    neutron: np.ndarray
    speed_kmh: float

    def alarms(self, cfg: DetectionConfig) -> bool:
        """Whether lanewatch alarms on this occupancy with ``cfg``."""
        result = analyze(cfg, self.background, self.gamma, self.neutron, GAMMA_DT_S, NEUTRON_DT_S, self.speed_kmh)
        return result["verdict"] == "ALARM"


def run(cfg: DetectionConfig, n: int, seed: int) -> dict[str, Any]:
    """Score ``n`` simulated occupancies; returns per-source tallies, timing and the occupancies."""
    windows = cfg.energy_windows_kev or None
    traffic = Traffic(seed, windows_kev=windows)
    est = BackgroundEstimator(4, traffic.K, 4, cfg.background_halflife_s)
    rng = np.random.default_rng(seed + 1_000_003)
    _feed(traffic, est, WARM_UP_S)
    tally: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    seconds = 0.0
    samples = 0
    occupancies = []
    for _ in range(n):
        passage = traffic.next_passage()
        snapshot = est.snapshot()
        occupancies.append(
            Occupancy(passage.truth["source"], snapshot, passage.gamma, passage.neutron, passage.speed_kmh)
        )
        start = time.perf_counter()
        result = analyze(
            cfg,
            snapshot,
            passage.gamma,
            passage.neutron,
            GAMMA_DT_S,
            NEUTRON_DT_S,
            passage.speed_kmh,
        )
        seconds += time.perf_counter() - start
        samples += passage.gamma.shape[0]
        row = tally[passage.truth["source"]]
        row["n"] += 1
        row["lanewatch"] += result["verdict"] == "ALARM"
        row["baseline"] += result["baseline_verdict"] == "ALARM"
        base = result["baseline"]
        row["baseline gamma"] += base["max_sigma"] is not None and base["max_sigma"] > base["n_sigma"]
        row["baseline neutron"] += (
            base["neutron_max"] is not None
            and base["neutron_background"] is not None
            and base["neutron_max"] - base["neutron_background"] > base["neutron_threshold"]
        )
        for alarm in result["alarms"]:
            if alarm["alarm"]:
                row[f"by {alarm['reason']}"] += 1
            if alarm.get("released_as"):
                row["released"] += 1
        _feed(traffic, est, max(READING_INTERVAL_S, rng.exponential(MEAN_GAP_S)))
    return {"tally": tally, "seconds": seconds, "samples": samples, "occupancies": occupancies}


def matched(cfg: DetectionConfig, out: dict[str, Any], steps: int = 12) -> tuple[float, float, dict[str, float]]:
    """Lanewatch at the fielded rule's own benign alarm rate, on the same occupancies.

    Both false-alarm probabilities are multiplied by a common factor, the largest (bisection on its
    logarithm, up to 10^4) at which lanewatch alarms on no more benign vehicles than the fielded rule did.
    Returns the factor, lanewatch's benign alarm rate there and its detection probability per threat type.
    """
    benign = [o for o in out["occupancies"] if SOURCES[o.source] == "benign"]
    allowed = out["tally"]["none"]["baseline"]

    def scaled(factor: float) -> DetectionConfig:
        return replace(
            cfg,
            gamma_false_alarm_probability=min(cfg.gamma_false_alarm_probability * factor, 0.5),
            neutron_false_alarm_probability=min(cfg.neutron_false_alarm_probability * factor, 0.5),
        )

    lo, hi = 0.0, 4.0
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        if sum(o.alarms(scaled(10.0**mid)) for o in benign) <= allowed:
            lo = mid
        else:
            hi = mid
    best = scaled(10.0**lo)
    rate = sum(o.alarms(best) for o in benign) / max(len(benign), 1)
    detected: dict[str, list[bool]] = defaultdict(list)
    for o in out["occupancies"]:
        if SOURCES[o.source] == "threat":
            detected[o.source].append(o.alarms(best))
    return 10.0**lo, rate, {s: float(np.mean(v)) for s, v in detected.items()}


def report(cfg: DetectionConfig, n: int, seed: int, out: dict[str, Any]) -> None:
    """Print the per-source table and the summary lines."""
    tally = out["tally"]
    windows = cfg.energy_windows_kev or "gross (K = 1)"
    print(f"seed {seed}, {n} occupancies, energy windows {windows}")
    print(
        f"gamma false-alarm probability {cfg.gamma_false_alarm_probability:g}, neutron "
        f"{cfg.neutron_false_alarm_probability:g}; fielded rule n = {cfg.baseline_n_sigma:g}, "
        f"neutron > {cfg.baseline_neutron_threshold}"
    )
    header = (
        f"{'source':16s} {'category':9s} {'n':>5s} {'lanewatch':>10s} {'fielded':>8s} {'(gamma':>7s} {'neutron)':>8s}"
        "  lanewatch alarms by reason"
    )
    print(header)
    print("-" * len(header))
    for source, category in SOURCES.items():
        row = tally.get(source)
        if not row:
            continue
        reasons = ", ".join(f"{k[3:]} {v}" for k, v in sorted(row.items()) if k.startswith("by "))
        if row["released"]:
            reasons += f"; released as NORM {row['released']}"
        n = row["n"]
        print(
            f"{source:16s} {category:9s} {n:5d} {row['lanewatch'] / n:10.3f} {row['baseline'] / n:8.3f} "
            f"{row['baseline gamma'] / n:7.3f} {row['baseline neutron'] / n:8.3f}  {reasons}"
        )
    print()
    for category in ("benign", "norm", "medical"):
        rows = [tally[s] for s, c in SOURCES.items() if c == category and s in tally]
        total = sum(r["n"] for r in rows)
        if total:
            lw = 1000 * sum(r["lanewatch"] for r in rows) / total
            base = 1000 * sum(r["baseline"] for r in rows) / total
            print(
                f"{category:8s} alarms per 1000 vehicles: lanewatch {lw:7.1f}  fielded {base:7.1f}  ({total} vehicles)"
            )
    threats = [s for s, c in SOURCES.items() if c == "threat" and s in tally]
    worse = [s for s in threats if tally[s]["lanewatch"] < tally[s]["baseline"]]
    print(f"threat types where lanewatch detects less than the fielded rule: {', '.join(worse) or 'none'}")
    per = out["seconds"] / max(out["samples"], 1)
    print(f"analysis time: {1e6 * per:.1f} us per 0.2 s gamma sample ({out['seconds']:.2f} s in all)")
    if "none" in tally:
        factor, rate, detected = matched(cfg, out)
        fielded_rate = tally["none"]["baseline"] / tally["none"]["n"]
        print(
            f"\nmatched false-alarm rate: the fielded rule alarms on {1000 * fielded_rate:.1f} benign vehicles per "
            f"1000; lanewatch with its false-alarm probabilities x {factor:.3g} on {1000 * rate:.1f}"
        )
        print(f"{'source':16s} {'fielded':>8s} {'lanewatch':>10s}")
        for source in threats:
            print(f"{source:16s} {tally[source]['baseline'] / tally[source]['n']:8.3f} {detected[source]:10.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="occupancies to simulate (default 2000)")
    parser.add_argument("--seed", type=int, default=1, help="traffic seed (default 1)")
    parser.add_argument("--gross", action="store_true", help="gross counts only (K = 1) instead of energy windows")
    parser.add_argument(
        "--windows", type=float, nargs="+", default=[30.0, 400.0, 3000.0], help="energy window edges, keV"
    )
    parser.add_argument("--gamma-fap", type=float, default=None, help="gamma false-alarm probability per occupancy")
    parser.add_argument("--neutron-fap", type=float, default=None, help="neutron false-alarm probability per occupancy")
    args = parser.parse_args(argv)
    cfg = DetectionConfig(energy_windows_kev=[] if args.gross else list(args.windows), occupancy_hold_in_s=HOLD_IN_S)
    if args.gamma_fap is not None:
        cfg = replace(cfg, gamma_false_alarm_probability=args.gamma_fap)
    if args.neutron_fap is not None:
        cfg = replace(cfg, neutron_false_alarm_probability=args.neutron_fap)
    warm_up()
    report(cfg, args.n, args.seed, run(cfg, args.n, args.seed))


if __name__ == "__main__":
    main()
