"""Detection robustness: lanewatch on lanes whose physics and conventions differ on purpose from the default.

Each physics variant of the lane simulator (:data:`lanewatch.drivers.sim.physics.VARIANTS`) changes one thing:
the shadow-shielding profile (uniform, ramped, patchy, none), where a point source sits (near a wall and
low, or high), vehicle speeds (2-4 or 9-15 km/h), the site background (100 or 3,000 cps in all), the
background lines' counting interval (5 s instead of 1 s), a dead gamma channel, or the length of NORM
loads. Vehicles go through the lane's own code path offline, as :mod:`lanewatch.models.corpus` runs it:
between vehicles the lane sits empty and gets a background line every 5 s (as the device writes it, in
its own convention), the lane's calibration (:class:`lanewatch.edge.lane.calibration.LaneCalibration`)
turns the tracked background into the one handed to the occupancy, and
:func:`lanewatch.edge.lane.detect.analyze` decides, once with energy windows and once on gross counts
(the windows summed: the same photons).

Printed per variant and portal, and overall: false alarms per 1000 benign vehicles, detection per threat
kind, NORM loads alarmed against the fielded rule (5 sigma on 1 s of gross counts, and the neutron rule)
on the same counts, and detection as a fraction of a known-signal bound. Then the anomaly model's findings:
each variant and portal is one lane, its vehicles in order through the service's
:class:`lanewatch.edge.model.runtime.ModelRunner` (the shipped model, the lane's own calibration, default
``[model]`` keys): after the warm-up, the share of ordinary vehicles (benign and NORM, not alarmed) with a
finding against its nominal ``10^-finding_threshold``, at a lane of this mix (30 % threats, those the rules miss
learnt as ordinary) and at one where threats are as rare as at a real site; the same with the model's own
(training-calibrated) score; the lane's drift ratio; and the threats the rules missed that the model flags.

The bound is the Neyman-Pearson test of each threat vehicle's own expected signal against its true
background, on the same counts the analysis gets (per channel, and per window for the windowed portal;
the neutron counts per tube): the log-likelihood ratio ``sum x log(1 + s / b)`` over every gamma bin and
``sum x s / var`` over the neutron bins (variance ``b`` plus the ship effect's burst spread), against its
threshold at the analysis' own false-alarm probability per occupancy (gamma plus neutron), from the null's
first three cumulants (Cornish-Fisher). It knows the signal's shape and place and the true shadowed
background, nothing else: no better counts, no lower false-alarm rate. What it knows that the analysis
cannot is therefore the source's place and strength, the vehicle's own shadow and its ship effect; the
targets are set against it as it is. Four columns beside it say where the rest goes:

- ``searched``: the same test told the signal but not its place, taking its largest statistic over every
  place the closest approach could be in the occupancy, its threshold for that maximum by the Rice
  formula lanewatch uses (:func:`lanewatch.edge.lane.detect.max_threshold`, lag-1 autocorrelation of the
  statistic from one place to the next): what not knowing the place costs;
- ``shadow known``: lanewatch's own gross matched filter (its template bank for the speed, summed
  channels and windows) against the true shadowed background, its maximum over the occupancy against
  the same Rice threshold at the whole false-alarm probability: what not knowing the shadow costs the
  gross test;
- ``depth fit``: the same filter told the shape of the vehicle's shadow along the occupancy (the true
  deficit under the unshadowed background) but not its depth, which it fits together with the source at
  each centre (weighted least squares): what not knowing one number of the shadow costs a test that must
  search the occupancy;
- ``blind``: the bound itself, blind to the shadow's depth and to the ship effect's size: its weights less
  their projection on the shadow's deficit (per sample, channel and window) and on the ship effect's
  expected counts, so its statistic's mean does not move with either. It still knows their shapes and the
  source's place and strength; ``of it`` is lanewatch's detection as a fraction of it.

Run (``--variants`` and ``--n`` for a quick subset)::

    python -m benchmarks.robustness --n 2000
    python -m benchmarks.robustness --n 300 --variants default no-shadow norm-short
    python -m benchmarks.robustness --n 8000 --benign-only --no-model

The false-alarm column carries its 95 % (Clopper-Pearson) interval: a variant's 550 benign vehicles of the
default mix cannot show 1 per 1000, so ``--benign-only`` runs benign traffic alone for the rate.
"""

from __future__ import annotations

import argparse
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from statistics import NormalDist
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from lanewatch.drivers.sim.physics import (
    DEFAULT_MIX,
    GAMMA_DT_S,
    HOLD_IN_S,
    NEUTRON_DT_S,
    SOURCES,
    VARIANTS,
    Passage,
    Traffic,
)
from lanewatch.edge.config import SHIPPED_MODEL, DetectionConfig, ModelConfig
from lanewatch.edge.lane.background import BackgroundEstimator, BackgroundSnapshot
from lanewatch.edge.lane.calibration import LaneCalibration
from lanewatch.edge.lane.detect import analyze, gamma_plan, max_threshold, warm_up
from lanewatch.edge.model import runtime
from lanewatch.edge.model.calibration import TRAINING_LEVEL
from lanewatch.edge.model.features import FeatureError
from lanewatch.kernels.matched import mf_series
from lanewatch.models.corpus import MEAN_GAP_S, READING_INTERVAL_S, WARM_UP_S, WINDOWS_KEV, passage_decision

MEDICAL = ("tc99m", "i131")
MIX: dict[str, float] = {
    kind: share + (sum(DEFAULT_MIX[m] for m in MEDICAL) if kind == "none" else 0.0)
    for kind, share in DEFAULT_MIX.items()
    if kind not in MEDICAL
}
"""The simulator's default mix with medical patients left out (alarming on them is right), their share benign."""
PORTALS = ("windows", "gross")
SHIP_DISPERSION = 2.5
"""Variance-to-mean ratio of the simulator's ship-effect counts (bursts of 1 + Poisson(1) neutrons)."""
CHUNK = 250
"""Vehicles per chunk (one seeded lane stream); chunks run in parallel."""


def configs() -> dict[str, DetectionConfig]:
    return {
        "windows": DetectionConfig(energy_windows_kev=list(WINDOWS_KEV), occupancy_hold_in_s=HOLD_IN_S),
        "gross": DetectionConfig(energy_windows_kev=[], occupancy_hold_in_s=HOLD_IN_S),
    }


def _invariant(w: np.ndarray, nuisance: np.ndarray, var: np.ndarray) -> np.ndarray:
    """``w`` less its projection on ``nuisance`` (weights ``1 / var``): a statistic ``sum w x`` whose mean does not move
    when the expected counts move along ``nuisance`` by any amount (unchanged when ``nuisance`` is negligible)."""
    ok = var > 0
    norm = float(np.sum(nuisance[ok] ** 2 / var[ok]))
    if norm <= 1e-9 * max(float(np.sum(var[ok])), 1e-300):
        return w
    beta = float(np.sum(w[ok] * nuisance[ok])) / norm
    return np.where(ok, w - beta * nuisance / np.where(ok, var, 1.0), 0.0)


def bound_detects(passage: Passage, gross: bool, alpha: float, search: bool = False, blind: bool = False) -> bool:
    """Whether the known-signal likelihood-ratio test detects ``passage``'s source at false-alarm probability ``alpha``
    (module docstring); with ``search`` the test is told the signal but not where along the vehicle it is, and
    takes the largest statistic over every place the source's closest approach could be in the occupancy."""
    assert passage.expected_background is not None and passage.expected_signal is not None
    b, s, x = passage.expected_background, passage.expected_signal, passage.gamma.astype(np.float64)
    if gross:
        b, s, x = b.sum(axis=2), s.sum(axis=2), x.sum(axis=2)
    n = b.shape[0]
    nb, ship, ns = passage.expected_neutron_background, passage.expected_ship, passage.expected_neutron_signal
    if nb is None or ship is None or ns is None or float(ns.sum()) <= 0:
        nb = ship = ns = np.zeros((0, 1))
    spread = nb + SHIP_DISPERSION * ship
    ratio = ns.shape[0] / n
    # The shadow: what the vehicle takes from the unshadowed background, per sample, channel and window.
    unshadowed = np.broadcast_to(passage.background_gamma_cps * GAMMA_DT_S, passage.expected_background.shape)
    deficit = unshadowed.sum(axis=2) - b if gross else unshadowed - b

    def weights(k: int) -> tuple[np.ndarray, np.ndarray]:
        """The statistic's gamma and neutron weights for the source ``k`` gamma samples later than it is."""
        w = np.log1p(_shifted(s, k) / np.maximum(b, 1e-300)) * (b > 0)
        wn = _shifted(ns, round(k * ratio)) / np.maximum(spread, 1e-9)
        if blind:
            w = _invariant(w, deficit, b)
            wn = _invariant(wn, ship, spread) if wn.size else wn
        return w, wn

    z = NormalDist().inv_cdf(1.0 - alpha)
    shifts = [0]
    if search:
        peak = int(np.argmax(s.reshape(n, -1).sum(axis=1)))
        shifts = list(range(-peak, n - peak))
        (w0, n0), (w1, n1) = weights(0), weights(1)
        cov = float(np.sum(w0 * w1 * b) + np.sum(n0 * n1 * spread))
        var0 = float(np.sum(w0 * w0 * b) + np.sum(n0 * n0 * spread))
        var1 = float(np.sum(w1 * w1 * b) + np.sum(n1 * n1 * spread))
        rho1 = cov / math.sqrt(var0 * var1) if var0 > 0 and var1 > 0 else 0.0
        z = max_threshold(alpha, len(shifts), (rho1,))
    for k in shifts:
        w, wn = weights(k)
        t = float(np.sum(w * x) + np.sum(wn * passage.neutron)) if wn.size else float(np.sum(w * x))
        mean = float(np.sum(w * b) + np.sum(wn * (nb + ship)))
        var = float(np.sum(w * w * b) + np.sum(wn * wn * spread))
        k3 = float(np.sum(w**3 * b) + np.sum(wn**3 * spread))
        if var > 0 and t > mean + math.sqrt(var) * (z + (z * z - 1.0) / 6.0 * k3 / var**1.5):
            return True
    return False


def shadow_known_detects(passage: Passage, cfg: DetectionConfig, alpha: float) -> bool:
    """Whether lanewatch's gross matched filter, told the vehicle's true shadowed background, finds ``passage``'s
    source at false-alarm probability ``alpha`` (module docstring, ``shadow known``)."""
    assert passage.expected_background is not None
    x = passage.gamma.sum(axis=(1, 2)).astype(np.float64)
    e = passage.expected_background.sum(axis=(1, 2))
    n = x.shape[0]
    plan = gamma_plan(GAMMA_DT_S, round(passage.speed_kmh, 1), cfg.source_standoff_m)
    u = max_threshold(alpha, n, plan.rho1)
    z, _ = mf_series(x, e, np.ones(n), np.zeros(n), plan.bank, plan.halfw, (u * u - 1.0) / 6.0)
    return bool(z.max() > u)


def depth_fitted_detects(passage: Passage, cfg: DetectionConfig, alpha: float) -> bool:
    """Whether lanewatch's gross matched filter finds ``passage``'s source at false-alarm probability ``alpha`` when it
    is told the shape of the vehicle's shadow along the occupancy but not its depth: at each centre the depth is
    fitted together with the source (weighted least squares, Poisson weights), as any test must that does not know
    it (module docstring, ``depth fitted``)."""
    assert passage.expected_background is not None
    x = passage.gamma.sum(axis=(1, 2)).astype(np.float64)
    shadowed = passage.expected_background.sum(axis=(1, 2))
    unshadowed = np.full_like(shadowed, float(passage.background_gamma_cps.sum()) * GAMMA_DT_S)
    deficit = unshadowed - shadowed
    n = x.shape[0]
    plan = gamma_plan(GAMMA_DT_S, round(passage.speed_kmh, 1), cfg.source_standoff_m)
    u = max_threshold(alpha, n, plan.rho1)
    weight = np.where(shadowed > 0, 1.0 / np.maximum(shadowed, 1e-300), 0.0)
    residual = x - unshadowed
    s_ss = float(np.sum(deficit * deficit * weight))
    b_s = float(np.sum(deficit * residual * weight))
    hmax = (plan.bank.shape[1] - 1) // 2

    def along(f: np.ndarray, w: np.ndarray) -> np.ndarray:
        """``sum_j f_j w_{j - c}`` for every centre ``c`` (zero beyond the data)."""
        return np.convolve(np.concatenate((np.zeros(hmax), f, np.zeros(hmax))), w[::-1], mode="valid")

    best = -math.inf
    for w in plan.bank:
        s_ww, s_ws, b_w = along(weight, w * w), along(deficit * weight, w), along(residual * weight, w)
        if s_ss <= 1e-9 * float(np.sum(shadowed)):
            z = (b_w + along(deficit * weight, w)) / np.sqrt(np.maximum(s_ww, 1e-300))
        else:
            det = s_ss * s_ww - s_ws * s_ws
            ok = det > 1e-12 * s_ss * np.maximum(s_ww, 1e-300)
            z = np.where(ok, (s_ss * b_w - s_ws * b_s) / np.sqrt(np.maximum(s_ss * det, 1e-300)), -math.inf)
        best = max(best, float(z.max()))
    return best > u


def _shifted(a: np.ndarray, k: int) -> np.ndarray:
    """``a`` moved ``k`` samples later along its first axis, zeros shifted in."""
    out = np.zeros_like(a)
    if k >= a.shape[0] or -k >= a.shape[0]:
        return out
    if k >= 0:
        out[k:] = a[: a.shape[0] - k]
    else:
        out[:k] = a[-k:]
    return out


@dataclass(frozen=True)
class Chunk:
    variant: str
    seed: int
    vehicles: int
    calibrate: bool = True
    """False: take the background lines as counts per second, unchecked."""
    benign_only: bool = False
    """Benign vehicles only (no source): to measure a false-alarm rate of 1 per 1000 with its interval."""
    score: bool = True
    """Score every decision with the shipped model (for the model's findings)."""


def _idle(traffic: Traffic, est: BackgroundEstimator, calibrations: list[LaneCalibration], seconds: float) -> None:
    """Keep the lane empty for ``seconds``: a background line every reading interval, as the device writes it."""
    for cal in calibrations:
        cal.on_occupancy_start()
    for _ in range(max(1, round(seconds / READING_INTERVAL_S))):
        traffic.idle(READING_INTERVAL_S)
        gamma, neutron = traffic.background_line()
        t_ns = int(traffic.time_s * 1e9)
        est.update_gamma(gamma, t_ns)
        est.update_neutron(neutron, t_ns)
        for cal in calibrations:
            cal.on_background_line(traffic.time_s)


_MODELS: list[runtime.AnomalyModel] = []
"""The shipped model, loaded once per worker process."""


def raw_score(result: dict[str, Any], passage: Passage, gamma: np.ndarray, occupancy_id: str) -> float | None:
    """The shipped model's own score of the decision built from ``result`` as a lane builds it (None: no profile)."""
    if not _MODELS:
        _MODELS.append(runtime.load(SHIPPED_MODEL))
    decision = passage_decision("robustness", occupancy_id, 0, result, passage, gamma)
    try:
        return _MODELS[0].score(decision)
    except FeatureError:
        return None


def run_chunk(chunk: Chunk) -> list[dict[str, Any]]:
    """One seeded lane stream of a variant; one row per vehicle and portal."""
    cfgs = configs()
    mix = {"none": 1.0} if chunk.benign_only else MIX
    traffic = Traffic(chunk.seed, windows_kev=WINDOWS_KEV, mix=mix, physics=VARIANTS[chunk.variant])
    est = BackgroundEstimator(4, traffic.K, 4, cfgs["windows"].background_halflife_s)
    calibrations = {portal: LaneCalibration() for portal in PORTALS}
    gaps = np.random.default_rng(np.random.SeedSequence(chunk.seed, spawn_key=(99,)))
    _idle(traffic, est, list(calibrations.values()), WARM_UP_S)
    rows = []
    for _ in range(chunk.vehicles):
        passage = traffic.next_passage()
        snap = est.snapshot()
        category = SOURCES[passage.truth["source"]]
        for portal in PORTALS:
            cfg = cfgs[portal]
            calibration = calibrations[portal]
            gamma = passage.gamma if portal == "windows" else passage.gamma.sum(axis=2, keepdims=True)
            background = snap if portal == "windows" else _gross(snap)
            if chunk.calibrate:
                background = calibration.background(background)
            result = analyze(cfg, background, gamma, passage.neutron, GAMMA_DT_S, NEUTRON_DT_S, passage.speed_kmh)
            calibration.observe(gamma.sum(axis=(1, 2)), GAMMA_DT_S, passage.neutron.sum(axis=1), NEUTRON_DT_S)
            alpha = cfg.gamma_false_alarm_probability + cfg.neutron_false_alarm_probability
            rows.append(
                {
                    "variant": chunk.variant,
                    "portal": portal,
                    "source": passage.truth["source"],
                    "category": category,
                    "alarm": result["verdict"] == "ALARM",
                    "reasons": sorted({a["reason"] for a in result["alarms"] if a["alarm"]}),
                    "fielded": result["baseline_verdict"] == "ALARM",
                    "released": any(a["reason"] == "norm-consistent" for a in result["alarms"]),
                    "bound": category == "threat" and bound_detects(passage, portal == "gross", alpha),
                    "blind_bound": category == "threat"
                    and bound_detects(passage, portal == "gross", alpha, blind=True),
                    "search_bound": category == "threat" and bound_detects(passage, portal == "gross", alpha, True),
                    "shadow_known": category == "threat" and shadow_known_detects(passage, cfg, alpha),
                    "depth_fitted": category == "threat" and depth_fitted_detects(passage, cfg, alpha),
                    "id": f"{chunk.seed}-{passage.index}",
                    "raw": raw_score(result, passage, gamma, f"{chunk.seed}-{passage.index}-{portal}")
                    if chunk.score
                    else None,
                }
            )
        _idle(traffic, est, list(calibrations.values()), max(READING_INTERVAL_S, float(gaps.exponential(MEAN_GAP_S))))
    return rows


def _gross(snap: BackgroundSnapshot) -> BackgroundSnapshot:
    """The background of a gross-counting portal: the windows summed."""
    assert snap.gamma_cps is not None
    return replace(snap, gamma_cps=snap.gamma_cps.sum(axis=1, keepdims=True))


def plan(
    variants: Sequence[str], n: int, seed: int, calibrate: bool = True, benign_only: bool = False, score: bool = True
) -> list[Chunk]:
    chunks = []
    for v, name in enumerate(variants):
        for c in range(math.ceil(n / CHUNK)):
            size = min(CHUNK, n - c * CHUNK)
            chunks.append(Chunk(name, seed + 1000 * v + c, size, calibrate, benign_only, score))
    return chunks


def rate_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson interval of a rate of ``k`` events in ``n`` trials, per 1000."""
    from scipy.stats import beta

    tail = 0.5 * (1.0 - level)
    lo = float(beta.ppf(tail, k, n - k + 1)) if k > 0 else 0.0
    hi = float(beta.ppf(1.0 - tail, k + 1, n - k)) if k < n else 1.0
    return 1000.0 * lo, 1000.0 * hi


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Figures of a set of rows: benign false alarms per 1000, detection per threat kind and its bound, NORM alarms."""
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by[r["category"]].append(r)
    threats = by["threat"]
    kinds: dict[str, tuple[float, float, int]] = {}
    for kind in sorted({r["source"] for r in threats}):
        sel = [r for r in threats if r["source"] == kind]
        kinds[kind] = (float(np.mean([r["alarm"] for r in sel])), float(np.mean([r["bound"] for r in sel])), len(sel))
    detected = sum(r["alarm"] for r in threats)
    bound = sum(r["bound"] for r in threats)
    search = sum(r["search_bound"] for r in threats)
    known = sum(r["shadow_known"] for r in threats)
    blind = sum(r["blind_bound"] for r in threats)
    fitted = sum(r["depth_fitted"] for r in threats)
    false = sum(r["alarm"] for r in by["benign"])
    return {
        "benign": len(by["benign"]),
        "false_alarms": false,
        "false_alarms_per_1000": 1000.0 * false / max(len(by["benign"]), 1),
        "false_alarms_interval": rate_interval(false, len(by["benign"])) if by["benign"] else (0.0, 1000.0),
        "kinds": kinds,
        "detection": detected / max(len(threats), 1),
        "bound": bound / max(len(threats), 1),
        "of_bound": detected / max(bound, 1),
        "search_bound": search / max(len(threats), 1),
        "of_search_bound": detected / max(search, 1),
        "shadow_known": known / max(len(threats), 1),
        "depth_fitted": fitted / max(len(threats), 1),
        "blind_bound": blind / max(len(threats), 1),
        "of_blind_bound": detected / max(blind, 1),
        "norm": len(by["norm"]),
        "norm_alarms": sum(r["alarm"] for r in by["norm"]) / max(len(by["norm"]), 1),
        "norm_fielded": sum(r["fielded"] for r in by["norm"]) / max(len(by["norm"]), 1),
        "norm_released": sum(r["released"] for r in by["norm"]) / max(len(by["norm"]), 1),
        "threats_released": sum(r["released"] for r in threats),
        "co60_released": sum(r["released"] for r in threats if "co60" in r["source"]),
    }


def _rate(s: dict[str, Any]) -> str:
    lo, hi = s["false_alarms_interval"]
    return f"{s['false_alarms_per_1000']:.1f} [{lo:.1f}-{hi:.1f}]"


def _released(s: dict[str, Any]) -> str:
    return f"{s['threats_released']} ({s['co60_released']} Co-60)"


def _verdict(s: dict[str, Any]) -> str:
    misses = []
    if s["false_alarms_per_1000"] > 1.0:
        misses.append("false alarms")
    if s["kinds"] and s["of_bound"] < 0.9:
        misses.append("detection")
    if s["norm_fielded"] > 0 and s["norm_alarms"] > 0.5 * s["norm_fielded"]:
        misses.append("NORM")
    return "ok" if not misses else "MISSES " + ", ".join(misses)


def report(rows: list[dict[str, Any]], variants: Sequence[str]) -> None:
    kinds = sorted({r["source"] for r in rows if r["category"] == "threat"})
    for portal in PORTALS:
        print(f"\n{portal} portal: lanewatch detection / known-signal bound per threat kind")
        header = (
            f"{'variant':16s} {'benign':>6s} {'FA/1000 [95 %]':>18s} "
            + " ".join(f"{k[:14]:>14s}" for k in kinds)
            + f" {'overall':>11s} {'of bound':>8s} {'searched':>8s} {'of it':>6s} {'shadow kn':>9s} "
            + f"{'depth fit':>9s} {'blind':>5s} {'of it':>6s} "
            + f"{'NORM lw/fielded':>16s} {'threats released':>16s}  targets"
        )
        print(header)
        print("-" * len(header))
        for name in [*variants, "all"]:
            sel = [r for r in rows if r["portal"] == portal and (name == "all" or r["variant"] == name)]
            if not sel:
                continue
            s = summarize(sel)
            cells = " ".join(
                f"{s['kinds'][k][0]:6.2f} / {s['kinds'][k][1]:4.2f}" if k in s["kinds"] else f"{'':>14s}" for k in kinds
            )
            print(
                f"{name:16s} {s['benign']:6d} {_rate(s):>18s} {cells} "
                f"{s['detection']:5.2f}/{s['bound']:4.2f} {s['of_bound']:8.3f} {s['search_bound']:8.2f} "
                f"{s['of_search_bound']:6.3f} {s['shadow_known']:9.2f} {s['depth_fitted']:9.2f} "
                f"{s['blind_bound']:5.2f} {s['of_blind_bound']:6.3f} "
                f"{s['norm_alarms']:7.3f}/{s['norm_fielded']:6.3f} "
                f"{_released(s):>16s}  {_verdict(s)}"
            )
        false = defaultdict(int)
        for r in rows:
            if r["portal"] == portal and r["category"] == "benign" and r["alarm"]:
                false[f"{r['variant']}: {'+'.join(r['reasons'])}"] += 1
        print("benign false alarms by variant and test: " + (", ".join(f"{k} {v}" for k, v in false.items()) or "none"))


def model_findings(rows: list[dict[str, Any]]) -> None:
    """Judge every row's raw score as the service does, one lane per variant and portal, in stream order. Adds the
    decision's model section twice: ``model``, the lane as this mix makes it (its window learns from every vehicle
    not alarmed, the threats the rules miss included: about a fifth of it here), and ``model_rare``, a lane where
    threats are as rare as at a real site (kept out of its window: marked alarmed, which is what keeps a vehicle
    out; their findings are read all the same)."""
    for key, rare in (("model", False), ("model_rare", True)):
        runner = runtime.ModelRunner(ModelConfig(), CollectorRegistry())
        runner.start()
        for r in rows:
            alarmed = r["alarm"] or (rare and r["category"] == "threat")
            decision = {
                "lane": f"{r['variant']}/{r['portal']}",
                "occupancy_id": r["id"],
                "verdict": "ALARM" if alarmed else "CLEAR",
                "alarms": [],
            }
            r[key] = runner.judge(decision, r["raw"], "no usable profile")["model"]


def report_model(rows: list[dict[str, Any]], variants: Sequence[str]) -> None:
    cfg = ModelConfig()
    levels = (1.0, cfg.finding_threshold)
    print(
        f"\nanomaly model, one lane per variant and portal (min_occupancies {cfg.min_occupancies}, window "
        f"{cfg.calibration_window}): ordinary vehicles (benign and NORM, not alarmed) after the warm-up, share "
        "scoring at least s (nominal 10^-s) at the lane of this mix / at a lane where threats are rare / with the "
        f"model's own score; threats the rules missed that have a finding (score >= {cfg.finding_threshold:g}), "
        "at either lane; drift ratio (lanewatch_model_drift_ratio over all vehicles not alarmed)"
    )
    header = (
        f"{'variant':16s} {'portal':7s} {'ordinary':>8s} "
        + " ".join(f"{f's >= {s:g}: mix / rare / own':>26s}" for s in levels)
        + f" {'drift':>6s} {'missed threats flagged':>22s}"
    )
    print(header)
    print("-" * len(header))
    for name in [*variants, "all"]:
        for portal in PORTALS:
            sel = [r for r in rows if r["portal"] == portal and (name == "all" or r["variant"] == name)]
            ready = [r for r in sel if r["model"].get("calibration") == r["model_rare"].get("calibration") == "lane"]
            ordinary = [r for r in ready if r["category"] in ("benign", "norm") and not r["alarm"]]
            if not ordinary:
                continue
            cells = []
            for s in levels:
                mix = np.mean([r["model"]["score"] >= s for r in ordinary])
                rare = np.mean([r["model_rare"]["score"] >= s for r in ordinary])
                own = np.mean([r["model"]["raw_score"] >= s for r in ordinary])
                cells.append(f"{mix:.4f} / {rare:.4f} / {own:.4f}")
            scored = [r for r in sel if r["raw"] is not None]
            drift = np.mean([r["raw"] >= TRAINING_LEVEL for r in scored if not r["alarm"]]) / 10**-TRAINING_LEVEL
            missed = [r for r in ready if r["category"] == "threat" and not r["alarm"]]
            flagged = " / ".join(str(sum(r[key]["finding"] for r in missed)) for key in ("model", "model_rare"))
            print(
                f"{name:16s} {portal:7s} {len(ordinary):8d} {' '.join(f'{c:>26s}' for c in cells)} "
                f"{drift:6.1f} {f'{flagged} of {len(missed)}':>22s}"
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="vehicles per variant (default 2000)")
    parser.add_argument("--seed", type=int, default=500, help="first traffic seed (default 500)")
    parser.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="VARIANT")
    parser.add_argument(
        "--benign-only", action="store_true", help="benign vehicles only: the false-alarm rate with its interval"
    )
    parser.add_argument("--no-model", action="store_true", help="skip the anomaly model's findings")
    parser.add_argument(
        "--trust-lines", action="store_true", help="take background lines as counts per second, without calibration"
    )
    args = parser.parse_args(argv)
    warm_up()
    t0 = time.perf_counter()
    chunks = plan(args.variants, args.n, args.seed, not args.trust_lines, args.benign_only, not args.no_model)
    rows: list[dict[str, Any]] = []
    if args.workers <= 1:
        for chunk in chunks:
            rows += run_chunk(chunk)
    else:
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            for part in pool.map(run_chunk, chunks):
                rows += part
    print(
        f"{args.n} vehicles per variant, {len(args.variants)} variants, seeds from {args.seed}, "
        f"mix {', '.join(f'{k} {v:g}' for k, v in MIX.items())}"
    )
    report(rows, args.variants)
    if not args.no_model:
        model_findings(rows)
        report_model(rows, args.variants)
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
