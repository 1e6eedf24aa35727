"""Anomaly model: inference time per occupancy, model size, and its quality on held-out simulated traffic.

One command gives the figures of the model card (``models/README.md``)::

    python -m benchmarks.model                       # the shipped model, 10000 ordinary and 3000 threat vehicles
    python -m benchmarks.model --model F.onnx --ordinary 2000 --threats 600
    python -m benchmarks.model --model F.onnx --baseline G.onnx     # both on the same held-out data, compared

Held-out data: the training corpus generator (:mod:`lanewatch.models.corpus`) on seeds from
``lanewatch.models.train.HELD_OUT_BASE`` up, which no training or calibration run uses: ordinary traffic (the
training mix: benign, NORM, medical) and threat traffic (the simulator's threat scenarios). Every
vehicle is seen by a portal with energy windows and by a gross-counting one; each kind of lane gets
its own table.

Quality, per threat type: the model's ROC AUC against ordinary vehicles; its probability of detection
at 1 and 10 false alarms per 1000 ordinary vehicles (thresholds: the held-out ordinary scores'
quantiles); the rule tests alone (their fixed operating point, with their own alarm rate on ordinary
traffic, NORM and medical nuisance alarms included); and the rules plus the model alarming from those
two thresholds (an alarm when either does). Then the combination policy as configured
(:func:`lanewatch.edge.model.runtime.apply_policy` with ``alarm_threshold`` 3 and 2): what it gains
(threats alarmed only
by the model, threats released as NORM that it holds back) and loses (ordinary vehicles it alarms on,
NORM releases it does not recommend).

Uncertainty of the all-threats detection: how many held-out ordinary vehicles score above the 1/1000
threshold (the few that set it), and a bootstrap interval (``BOOTSTRAP`` resamplings of the ordinary and the
threat vehicles, the threshold recomputed each time).

Timing: feature extraction plus one onnxruntime run per occupancy, and the onnxruntime run alone, on one core
(the process is pinned), p50 and p99 of the wall time, and of the thread's CPU time for the first (which the
preemption by other processes on a shared machine does not inflate), against the rule tests' analysis of the
same occupancies (``lanewatch.edge.lane.detect.analyze``) in the same run; with baselines, every model in turn
on each occupancy.

With ``--baseline`` (once or more), other models (the ones being replaced, say) are scored on the same held-out
vehicles and timed in the same run, and a last table sets each beside the model per kind of lane, with the
bootstrap interval of the difference in detection (the same resamplings for both: paired).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from lanewatch.edge.config import SHIPPED_MODEL, ModelConfig
from lanewatch.edge.model.runtime import AnomalyModel, apply_policy, load
from lanewatch.models import corpus
from lanewatch.models.train import CHUNK_VEHICLES, HELD_OUT_BASE

ORDINARY_OFFSET = 0
THREAT_OFFSET = 10_000
TIMING_OFFSET = 20_000
"""Seed offsets (from HELD_OUT_BASE) of the held-out ordinary, threat and timing corpora."""
RATES = (1, 10)
"""False alarms per 1000 ordinary vehicles at which detection is reported."""
POLICY_THRESHOLDS = (3.0, 2.0)
"""``alarm_threshold`` values the policy is scored at (nominally 1 and 10 ordinary vehicles in 1000)."""
BOOTSTRAP = 2000
"""Bootstrap resamplings of the held-out vehicles behind each detection interval (95 %, percentile)."""


def _chunks(offset: int, vehicles: int, mix: dict[str, float]) -> list[corpus.Chunk]:
    count = max(1, math.ceil(vehicles / CHUNK_VEHICLES))
    seeds = [HELD_OUT_BASE + offset + i for i in range(count)]
    return corpus.chunks(seeds, math.ceil(vehicles / count), mix)


def auc(negative: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve: P(positive scores above negative), ties counted half."""
    if len(negative) == 0 or len(positive) == 0:
        return math.nan
    both = np.concatenate([negative, positive])
    order = both.argsort(kind="stable")
    ranks = np.empty(len(both))
    ranks[order] = np.arange(1, len(both) + 1)
    for value in np.unique(both):  # average ranks of ties
        tie = both == value
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    r = ranks[len(negative) :].sum()
    return float((r - len(positive) * (len(positive) + 1) / 2) / (len(negative) * len(positive)))


def bootstrap_pd(ordinary: list[np.ndarray], threats: list[np.ndarray], rate: int, seed: int = 0) -> np.ndarray:
    """(BOOTSTRAP, models) detection at ``rate`` false alarms per 1000 of each model (its ordinary and threat
    scores, one array per model over the same vehicles), the vehicles resampled with replacement and the
    threshold recomputed each time; the same resampling for every model."""
    rng = np.random.default_rng(seed)
    n_o, n_t = len(ordinary[0]), len(threats[0])
    out = np.empty((BOOTSTRAP, len(ordinary)))
    for b in range(BOOTSTRAP):
        io, it = rng.integers(0, n_o, n_o), rng.integers(0, n_t, n_t)
        for m, (o, t) in enumerate(zip(ordinary, threats, strict=True)):
            out[b, m] = np.mean(t[it] > np.quantile(o[io], 1.0 - rate / 1000.0))
    return out


def _interval(values: np.ndarray) -> str:
    lo, hi = np.percentile(values, [2.5, 97.5])
    return f"[{100 * lo:.1f}, {100 * hi:.1f}]"


def _rule_alarm(decisions: list[dict[str, Any]]) -> np.ndarray:
    return np.array([d["verdict"] == "ALARM" for d in decisions])


def quality(model: AnomalyModel, ordinary: corpus.Corpus, threats: corpus.Corpus, variant: str) -> dict[str, Any]:
    """The quality table of one kind of lane (``variant``)."""
    o = ordinary.select(ordinary.variant == variant)
    t = threats.select(threats.variant == variant)
    o_score, t_score = model.score_vectors(o.features), model.score_vectors(t.features)
    o_rule, t_rule = _rule_alarm(o.decisions), _rule_alarm(t.decisions)
    thresholds = {rate: float(np.quantile(o_score, 1.0 - rate / 1000.0)) for rate in RATES}
    rows = []
    for source in sorted(set(t.source.tolist())):
        m = t.source == source
        s, rule = t_score[m], t_rule[m]
        row = {"source": source, "n": int(m.sum()), "auc": auc(o_score, s), "rules": float(rule.mean())}
        for rate, thr in thresholds.items():
            row[f"model@{rate}"] = float(np.mean(s > thr))
            row[f"both@{rate}"] = float(np.mean(rule | (s > thr)))
        rows.append(row)
    all_threats = {"source": "all threats", "n": len(t), "auc": auc(o_score, t_score), "rules": float(t_rule.mean())}
    for rate, thr in thresholds.items():
        all_threats[f"model@{rate}"] = float(np.mean(t_score > thr))
        all_threats[f"both@{rate}"] = float(np.mean(t_rule | (t_score > thr)))
    rows.append(all_threats)
    intervals = {rate: bootstrap_pd([o_score], [t_score], rate)[:, 0] for rate in RATES}
    ordinary_rates = {"rules": 1000 * float(o_rule.mean())}
    for rate, thr in thresholds.items():
        ordinary_rates[f"model@{rate}"] = 1000 * float(np.mean(o_score > thr))
        ordinary_rates[f"both@{rate}"] = 1000 * float(np.mean(o_rule | (o_score > thr)))
    return {
        "variant": variant,
        "ordinary": len(o),
        "thresholds": thresholds,
        "rows": rows,
        "ordinary_per_1000": ordinary_rates,
        "ordinary_above": {rate: int(np.sum(o_score > thr)) for rate, thr in thresholds.items()},
        "intervals": {rate: _interval(v) for rate, v in intervals.items()},
        "scores": (o_score, t_score),
        "policy": [policy(o, o_score, t, t_score, thr) for thr in POLICY_THRESHOLDS],
    }


def policy(
    o: corpus.Corpus, o_score: np.ndarray, t: corpus.Corpus, t_score: np.ndarray, alarm_threshold: float
) -> dict[str, Any]:
    """What :func:`lanewatch.edge.model.runtime.apply_policy` with ``alarm_threshold`` gains and loses against
    the rules alone."""
    cfg = ModelConfig(alarm_threshold=alarm_threshold, finding_threshold=min(2.0, alarm_threshold))

    def run(c: corpus.Corpus, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
        before = _rule_alarm(c.decisions)
        after = [
            apply_policy(copy.deepcopy(d), float(s), cfg, "bench") for d, s in zip(c.decisions, scores, strict=True)
        ]
        return before, np.array([d["verdict"] == "ALARM" for d in after]), after

    o_before, o_after, o_dec = run(o, o_score)
    t_before, t_after, t_dec = run(t, t_score)

    def released(decisions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [a for d in decisions for a in d["alarms"] if a.get("reason") == "norm-consistent"]

    o_norm = released(o_dec)
    t_masked = [i for i, d in enumerate(t.decisions) if any(a.get("reason") == "norm-consistent" for a in d["alarms"])]
    return {
        "alarm_threshold": alarm_threshold,
        "threats_gained": int(np.sum(t_after & ~t_before)),
        "threats": len(t),
        "threats_rules": int(t_before.sum()),
        "ordinary_added": int(np.sum(o_after & ~o_before)),
        "ordinary": len(o),
        "norm_releases": len(o_norm),
        "norm_release_recommended": sum(bool(a["release_recommended"]) for a in o_norm),
        "norm_model_disagrees": sum(not a["model_agrees"] for a in o_norm),
        "norm_image_disagrees": sum(not a.get("image", {}).get("agrees", True) for a in o_norm),
        "threats_released_as_norm": len(t_masked),
        "masked_threats_alarmed": int(sum(t_after[i] for i in t_masked)),
        "masked_threats_not_recommended": sum(
            1 for i in t_masked for a in released([t_dec[i]]) if not a["release_recommended"]
        ),
    }


def timing(models: list[AnomalyModel], vehicles: int) -> list[dict[str, Any]]:
    """Per model, feature extraction plus inference per occupancy and inference alone, against the radiation
    analysis (p50, p99 in us). The models take turns on each occupancy, each first in turn, so a change of load
    touches all alike."""
    from lanewatch.drivers.sim.physics import GAMMA_DT_S, HOLD_IN_S, NEUTRON_DT_S, Traffic
    from lanewatch.edge.config import DetectionConfig
    from lanewatch.edge.lane.background import BackgroundEstimator
    from lanewatch.edge.lane.detect import analyze
    from lanewatch.edge.model.features import extract

    chunk = _chunks(TIMING_OFFSET, vehicles, corpus.benign_mix())[0]
    records = [record for _, variant, record in corpus.simulate(chunk) if variant == "windows"]
    cfg = DetectionConfig(energy_windows_kev=list(corpus.WINDOWS_KEV), occupancy_hold_in_s=HOLD_IN_S)
    traffic = Traffic(chunk.seed, windows_kev=corpus.WINDOWS_KEV, mix=chunk.mix)
    est = BackgroundEstimator(4, traffic.K, 4, cfg.background_halflife_s)
    corpus._feed(traffic, est, corpus.WARM_UP_S)
    passages = [traffic.next_passage() for _ in range(len(records))]
    snap = est.snapshot()
    analyze(cfg, snap, passages[0].gamma, passages[0].neutron, GAMMA_DT_S, NEUTRON_DT_S, passages[0].speed_kmh)
    vectors = [extract(record)[None, :] for record in records]
    model_s: list[list[float]] = [[] for _ in models]
    onnx_s: list[list[float]] = [[] for _ in models]
    cpu_s: list[list[float]] = [[] for _ in models]
    rules_s: list[float] = []
    for _ in range(5):
        for j, (record, vector, p) in enumerate(zip(records, vectors, passages, strict=True)):
            # Each model goes first in turn: the first to touch an occupancy finds it out of the caches.
            for i in [(j + k) % len(models) for k in range(len(models))]:
                model = models[i]
                c0 = time.thread_time()
                t0 = time.perf_counter()
                model.score(record)
                t1 = time.perf_counter()
                cpu_s[i].append(time.thread_time() - c0)
                model.score_vectors(vector)
                t2 = time.perf_counter()
                model_s[i].append(t1 - t0)
                onnx_s[i].append(t2 - t1)
            t0 = time.perf_counter()
            analyze(cfg, snap, p.gamma, p.neutron, GAMMA_DT_S, NEUTRON_DT_S, p.speed_kmh)
            rules_s.append(time.perf_counter() - t0)
    r = np.array(rules_s) * 1e6
    out = []
    for m, x, c in zip(model_s, onnx_s, cpu_s, strict=True):
        m, x, c = np.array(m) * 1e6, np.array(x) * 1e6, np.array(c) * 1e6
        out.append(
            {
                "occupancies": len(m),
                "model_p50_us": float(np.percentile(m, 50)),
                "model_p99_us": float(np.percentile(m, 99)),
                "model_cpu_p50_us": float(np.percentile(c, 50)),
                "model_cpu_p99_us": float(np.percentile(c, 99)),
                "onnx_p50_us": float(np.percentile(x, 50)),
                "onnx_p99_us": float(np.percentile(x, 99)),
                "rules_p50_us": float(np.percentile(r, 50)),
                "rules_p99_us": float(np.percentile(r, 99)),
                "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan,
            }
        )
    return out


def _pct(v: float) -> str:
    return f"{100 * v:5.1f}"


def report(path: str, model: AnomalyModel, tables: list[dict[str, Any]], times: dict[str, Any]) -> None:
    """Print the figures (markdown tables, as in the model card)."""
    size = Path(path).stat().st_size
    print(f"model {model.version} ({path}), schema {model.info.schema}")
    print(f"size: {size / 1024:.0f} KiB ({size} bytes; budget 5 MiB: {size / (5 << 20):.1%} of it)")
    print(
        f"inference per occupancy (features + onnxruntime, one core, {times['occupancies']} runs): "
        f"p50 {times['model_p50_us']:.0f} us, p99 {times['model_p99_us']:.0f} us (budget p99 1000 us); "
        f"onnxruntime alone: p50 {times['onnx_p50_us']:.0f} us, p99 {times['onnx_p99_us']:.0f} us; "
        f"the thread's CPU time for features + onnxruntime (what other processes' load does not add): "
        f"p50 {times['model_cpu_p50_us']:.0f} us, p99 {times['model_cpu_p99_us']:.0f} us; "
        f"radiation analysis of the same occupancies: p50 {times['rules_p50_us']:.0f} us, "
        f"p99 {times['rules_p99_us']:.0f} us; model / analysis at p50: "
        f"{times['model_p50_us'] / times['rules_p50_us']:.2f} (load average {times['load_average']:.1f}, the models "
        f"taking turns on each occupancy)"
    )
    for table in tables:
        rates = table["ordinary_per_1000"]
        thr = table["thresholds"]
        print(f"\n### {table['variant']} lane: {table['ordinary']} held-out ordinary vehicles")
        print(
            f"thresholds (score): {thr[1]:.2f} at 1 and {thr[10]:.2f} at 10 per 1000 ordinary vehicles; "
            f"alarms per 1000 ordinary vehicles: rules {rates['rules']:.1f}, rules + model "
            f"{rates['both@1']:.1f} (at 1) and {rates['both@10']:.1f} (at 10)"
        )
        above, ci = table["ordinary_above"], table["intervals"]
        print(
            f"all threats: the 1/1000 threshold has {above[1]} ordinary vehicles above it, the 10/1000 one "
            f"{above[10]}; model Pd 95 % bootstrap interval {ci[1]} % at 1/1000, {ci[10]} % at 10/1000\n"
        )
        print(
            "| threat | n | model AUC | model Pd @1/1000 | model Pd @10/1000 | rules Pd | rules + model @1 "
            "| rules + model @10 |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for row in table["rows"]:
            print(
                f"| {row['source']} | {row['n']} | {row['auc']:.3f} | {_pct(row['model@1'])} % | "
                f"{_pct(row['model@10'])} % | {_pct(row['rules'])} % | {_pct(row['both@1'])} % | "
                f"{_pct(row['both@10'])} % |"
            )
        print()
        for p in table["policy"]:
            print(
                f"policy, alarm_threshold {p['alarm_threshold']:g}: gains {p['threats_gained']} of {p['threats']} "
                f"threats (rules alone: {p['threats_rules']}); of {p['threats_released_as_norm']} threats the rules "
                f"released as NORM, alarms {p['masked_threats_alarmed']} and withholds the release recommendation "
                f"from {p['masked_threats_not_recommended']}; loses: {p['ordinary_added']} of {p['ordinary']} "
                f"ordinary vehicles alarmed ({1000 * p['ordinary_added'] / p['ordinary']:.1f} per 1000), "
                f"{p['norm_releases'] - p['norm_release_recommended']} of {p['norm_releases']} NORM releases "
                f"not recommended (the model disagrees on {p['norm_model_disagrees']}, the image on "
                f"{p['norm_image_disagrees']})"
            )


def compare(tables: list[dict[str, Any]], base_tables: list[dict[str, Any]], name: str) -> None:
    """Print the all-threats figures of the model against the baseline ``name``, per kind of lane, and the
    bootstrap interval of the difference in detection (model minus baseline, paired resamplings)."""
    print(f"\n### model against {name} (all threats; thresholds: score at 10 and 1 per 1000 ordinary)\n")
    print(
        "| lane | AUC | Pd @1/1000 | Pd @10/1000 | rules + model @1 | rules + model @10 | score @10/1000 "
        "| score @1/1000 | difference @1/1000 (95 %) | difference @10/1000 (95 %) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for new, old in zip(tables, base_tables, strict=True):
        a, b = new["rows"][-1], old["rows"][-1]
        diffs = []
        for rate in RATES:
            both = bootstrap_pd(
                [new["scores"][0], old["scores"][0]], [new["scores"][1], old["scores"][1]], rate, seed=rate
            )
            diffs.append(_interval(both[:, 0] - both[:, 1]))
        print(
            f"| {new['variant']} | {a['auc']:.3f} ({b['auc']:.3f}) | {_pct(a['model@1'])} % ({_pct(b['model@1'])} %) "
            f"| {_pct(a['model@10'])} % ({_pct(b['model@10'])} %) | {_pct(a['both@1'])} % ({_pct(b['both@1'])} %) "
            f"| {_pct(a['both@10'])} % ({_pct(b['both@10'])} %) | {new['thresholds'][10]:.2f} "
            f"({old['thresholds'][10]:.2f}) | {new['thresholds'][1]:.2f} ({old['thresholds'][1]:.2f}) "
            f"| {diffs[0]} points | {diffs[1]} points |"
        )
    print(f"\n({name} in parentheses)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=SHIPPED_MODEL, help="model file (default: the shipped model)")
    parser.add_argument("--ordinary", type=int, default=10_000, help="held-out ordinary vehicles (default 10000)")
    parser.add_argument("--threats", type=int, default=3000, help="held-out threat vehicles (default 3000)")
    parser.add_argument("--timing", type=int, default=200, help="occupancies timed (default 200)")
    parser.add_argument(
        "--baseline", action="append", default=[], help="another model file, measured on the same data and compared"
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="simulation processes")
    args = parser.parse_args(argv)
    paths = [args.model, *args.baseline]
    models = [load(path) for path in paths]
    ordinary = corpus.build(_chunks(ORDINARY_OFFSET, args.ordinary, corpus.benign_mix()), workers=args.workers)
    threats = corpus.build(_chunks(THREAT_OFFSET, args.threats, corpus.threat_mix()), workers=args.workers)
    tables = [[quality(model, ordinary, threats, variant) for variant in corpus.VARIANTS] for model in models]
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    times = timing(models, args.timing)
    for i, (path, model) in enumerate(zip(paths, models, strict=True)):
        if i:
            print("\n## baseline\n")
        report(path, model, tables[i], times[i])
    for path, base_tables in zip(args.baseline, tables[1:], strict=True):
        compare(tables[0], base_tables, path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
