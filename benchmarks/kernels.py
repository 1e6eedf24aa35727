"""Benchmark: the radiation kernels against their numpy twins, on the same inputs in the same run.

    python -m benchmarks.kernels [--samples 60] [--batch 600] [--repeat 5]

Per-sample path: the calls an occupancy makes for each new 0.2 s gamma sample (or 1 s neutron sample)
while a vehicle passes, at realistic sizes: ``--samples`` samples so far (60 = 12 s), a bank of 3
templates about 25 samples wide (8 km/h, 2 m standoff). Batch path: the whole-occupancy forms the final
analysis runs, on ``--batch`` samples (600 = the 120 s occupancy limit). Each line prints the time per
call for Numba and numpy and their ratio (target >= 5 on the per-sample path). Finally the streaming
analyzer's own cost per gamma sample (neutron samples included), Python included, for 200 lanes at 5 Hz.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from lanewatch.edge.config import DetectionConfig
from lanewatch.edge.lane.background import BackgroundSnapshot
from lanewatch.edge.lane.detect import OccupancyAnalyzer, gamma_plan, ship_covariate, warm_up
from lanewatch.kernels import baseline, locate, matched, poisson, shape, suppression

SPEED_KMH = 8.0
DT_S = 0.2
STANDOFF_M = 2.0


def per_call(fn: Callable[[], Any], repeat: int) -> float:
    """Best over ``repeat`` rounds of the mean seconds per call (rounds of at least 0.05 s)."""
    fn()
    calls = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        if time.perf_counter() - t0 >= 0.05:
            break
        calls *= 4
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best


def inputs(n: int, seed: int = 0) -> dict[str, Any]:
    """Counts of a passing vehicle with a source: gross, low window, expected, softening covariate, neutrons
    (1 s samples) and their ship-effect covariate."""
    rng = np.random.default_rng(seed)
    e = np.full(n, 188.0)
    x = rng.poisson(e * 0.85 + 60.0 / (1.0 + ((np.arange(n) - n / 2) / 4.5) ** 2)).astype(np.float64)
    low = rng.binomial(x.astype(np.int64), 0.63).astype(np.float64)
    b = np.zeros(n)
    suppression.softening_covariate_into(x, e, n, 0, 2, b)
    plan = gamma_plan(DT_S, SPEED_KMH, STANDOFF_M)
    m = max(n // 5, 2)
    return {
        "x": x,
        "e": e,
        "low": low,
        "b": b,
        "neutron": rng.poisson(14.0, m).astype(np.float64),
        "ship": ship_covariate(suppression.span_levels(x, e, np.full(n, DT_S), 1.0, m), 1.0),
        "ship_null": tuple(np.full(m - 2, v) for v in (42.0, 0.01, 3.0, 0.5)),
        "bank": plan.bank,
        "halfw": plan.halfw,
        "w": plan.nominal,
    }


def per_sample_cases(n: int) -> list[tuple[str, Callable[[], Any], Callable[[], Any]]]:
    d = inputs(n)
    x, e, low, b, bank, halfw = d["x"], d["e"], d["low"], d["b"], d["bank"], d["halfw"]
    c = n - 1 - int(halfw.max())
    out = np.zeros(n)
    dts = np.full(n, DT_S)
    return [
        (
            "nsigma_at",
            lambda: baseline.nsigma_at(x, n - 1, 940.0, 5),
            lambda: baseline.nsigma_at_ref(x, n - 1, 940.0, 5),
        ),
        (
            "mf_at",
            lambda: matched.mf_at(x, e, n, c, 1.0, 1e-4, bank, halfw, 3.6),
            lambda: matched.mf_at_ref(x, e, n, c, 1.0, 1e-4, bank, halfw, 3.6),
        ),
        (
            "flank_level_at",
            lambda: suppression.flank_level_at(x, e, n, c, 5, 9, True, 188.0),
            lambda: suppression.flank_level_at_ref(x, e, n, c, 5, 9, True, 188.0),
        ),
        (
            "softening_covariate (3 newest)",
            lambda: suppression.softening_covariate_into(x, e, n, n - 3, 2, out),
            lambda: suppression.softening_covariate_ref(x[n - 5 :], e[n - 5 :], 2)[-3:],
        ),
        (
            "softening_fit",
            lambda: shape.softening_fit(low, x, b, c - 12, -1, -1, 0.63, 0.0025),
            lambda: shape.softening_fit_ref(low, x, b, c - 12, -1, -1, 0.63, 0.0025),
        ),
        (
            "shape_at",
            lambda: shape.shape_at(low, x, b, n, c, 0.63, 1e-6, 0.03, 1e-4, bank, halfw, 3.6),
            lambda: shape.shape_at_ref(low, x, b, n, c, 0.63, 1e-6, 0.03, 1e-4, bank, halfw, 3.6),
        ),
        (
            "window_sum_at (neutron)",
            lambda: poisson.window_sum_at(d["neutron"], d["neutron"].size - 1, 2),
            lambda: poisson.window_sum_at_ref(d["neutron"], d["neutron"].size - 1, 2),
        ),
        (
            "span_levels (neutron)",
            lambda: suppression.span_levels(x, e, dts, 1.0, d["ship"].size),
            lambda: suppression.span_levels_ref(x, e, dts, 1.0, d["ship"].size),
        ),
        (
            "ship_threshold (neutron)",
            lambda: poisson.ship_threshold(42.0, 0.01, 3.0, 0.5, 3.4, -11.0),
            lambda: poisson.ship_threshold_ref(42.0, 0.01, 3.0, 0.5, 3.4, -11.0),
        ),
        (
            "count_threshold (neutron)",
            lambda: poisson.count_threshold(45.0, 0.01, -11.0),
            lambda: poisson.count_threshold_ref(45.0, 0.01, -11.0),
        ),
    ]


def batch_cases(n: int) -> list[tuple[str, Callable[[], Any], Callable[[], Any]]]:
    d = inputs(n, seed=1)
    x, e, low, b, bank, halfw, w = d["x"], d["e"], d["low"], d["b"], d["bank"], d["halfw"], d["w"]
    ones, var = np.ones(n), np.full(n, 1e-4)
    smoothed = locate.smooth(x - e, w)
    peak = int(np.argmax(smoothed))
    out = np.zeros(n)
    return [
        ("nsigma_series", lambda: baseline.nsigma_series(x, 940.0, 5), lambda: baseline.nsigma_series_ref(x, 940.0, 5)),
        (
            "mf_series",
            lambda: matched.mf_series(x, e, ones, var, bank, halfw, 3.6),
            lambda: matched.mf_series_ref(x, e, ones, var, bank, halfw, 3.6),
        ),
        (
            "flank_level_series",
            lambda: suppression.flank_level_series(x, e, 5, 9, True, 188.0),
            lambda: suppression.flank_level_series_ref(x, e, 5, 9, True, 188.0),
        ),
        (
            "softening_covariate",
            lambda: suppression.softening_covariate_into(x, e, n, 0, 2, out),
            lambda: suppression.softening_covariate_ref(x, e, 2),
        ),
        (
            "shape_series",
            lambda: shape.shape_series(low, x, b, 0.63, 1e-6, 0.0025, bank, halfw, 3.6, 0.0),
            lambda: shape.shape_series_ref(low, x, b, 0.63, 1e-6, 0.0025, bank, halfw, 3.6, 0.0),
        ),
        (
            "ship_window_log_sf (neutron)",
            lambda: poisson.ship_window_log_sf(d["neutron"], 3, *d["ship_null"], 3.4),
            lambda: poisson.ship_window_log_sf_ref(d["neutron"], 3, *d["ship_null"], 3.4),
        ),
        ("smooth", lambda: locate.smooth(x - e, w), lambda: locate.smooth_ref(x - e, w)),
        (
            "half_max_edges",
            lambda: locate.half_max_edges(smoothed, peak),
            lambda: locate.half_max_edges_ref(smoothed, peak),
        ),
        ("peak_refine", lambda: locate.peak_refine(smoothed, peak), lambda: locate.peak_refine_ref(smoothed, peak)),
    ]


def table(title: str, cases: list[tuple[str, Callable[[], Any], Callable[[], Any]]], repeat: int) -> list[float]:
    print(f"\n{title}")
    print(f"{'kernel':32s} {'numba us':>10s} {'numpy us':>10s} {'ratio':>8s}")
    ratios = []
    for name, fast, ref in cases:
        t_fast, t_ref = per_call(fast, repeat), per_call(ref, repeat)
        ratios.append(t_ref / t_fast)
        print(f"{name:32s} {1e6 * t_fast:10.2f} {1e6 * t_ref:10.2f} {t_ref / t_fast:8.1f}")
    print(f"{'geometric mean ratio':32s} {'':10s} {'':10s} {float(np.exp(np.mean(np.log(ratios)))):8.1f}")
    return ratios


def analyzer_cost(repeat: int) -> float:
    """Seconds per gamma sample of the streaming analyzer (Python and kernels, a 1 s neutron sample every
    fifth gamma sample), finish included."""
    cfg = DetectionConfig(energy_windows_kev=[30.0, 400.0, 3000.0])
    bg = BackgroundSnapshot(np.full((4, 2), [150.0, 85.0]), np.full(4, 3.0), 60.0, 60.0)
    rng = np.random.default_rng(2)
    gamma = rng.poisson(np.full((60, 4, 2), [30.0, 17.0])).astype(np.float64)
    neutron = rng.poisson(3.0, (12, 4)).astype(np.float64)
    per_neutron = round(1.0 / DT_S)

    def occupancy() -> None:
        analyzer = OccupancyAnalyzer(cfg, bg, 4, 4)
        analyzer.set_speed(SPEED_KMH)
        for i, sample in enumerate(gamma):
            analyzer.add_gamma(sample, DT_S)
            if (i + 1) % per_neutron == 0:
                analyzer.add_neutron(neutron[i // per_neutron], 1.0)
        analyzer.finish()

    return per_call(occupancy, repeat) / gamma.shape[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=60, help="samples so far on the per-sample path (default 60)")
    parser.add_argument("--batch", type=int, default=600, help="samples in the batch (default 600)")
    parser.add_argument("--repeat", type=int, default=5, help="timing rounds, best kept (default 5)")
    args = parser.parse_args(argv)
    warm_up()
    table(f"per-sample path ({args.samples} samples so far, per call)", per_sample_cases(args.samples), args.repeat)
    table(f"batch path ({args.batch} samples, per call)", batch_cases(args.batch), args.repeat)
    cost = analyzer_cost(args.repeat)
    load = cost * 200 * 5
    print(
        f"\nstreaming analyzer: {1e6 * cost:.1f} us per gamma sample (finish included); "
        f"200 lanes at 5 Hz use {100 * load:.1f} % of one core"
    )


if __name__ == "__main__":
    main()
