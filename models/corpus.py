"""Labelled corpora of occupancies from the lane simulator, as feature vectors and rule outcomes.

One corpus is a list of *chunks*; a chunk is one seeded stream of simulated traffic
(:class:`drivers.sim.physics.Traffic`) through one lane: 120 s of empty lane to settle the background
estimator, then vehicles with exponential gaps (mean 20 s) during which the estimator is fed a 1 s
background reading every 5 s, as a lane feeds it. Each vehicle's counts go through the lane's own code
path, :func:`edge.detect.analyze` then :func:`edge.decision.build`, and the decision through
:func:`edge.features.extract`.

Every vehicle is seen by two portals: one measuring the energy windows ``WINDOWS_KEV`` and one
counting gross only (K = 1). The gross counts are the sum of the windows (they cover the gross range
30-3000 keV), so both see the same photons. A model trained on both works on either kind of lane.

Chunks are independent given their seed, so they run in parallel processes and the result does not
depend on how many: rows come back in chunk order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from edge import decision as decision_mod
from edge.background import BackgroundEstimator, BackgroundSnapshot
from edge.config import DetectionConfig
from edge.detect import analyze
from edge.features import FeatureError, extract

WINDOWS_KEV = (30.0, 400.0, 3000.0)
"""Energy window edges (keV) of the windowed portal."""
VARIANTS = ("windows", "gross")
"""How each vehicle is seen: with energy windows, and gross counts only."""
READING_INTERVAL_S = 5.0
"""Background readings while the lane is empty, one every this many seconds (s), each a 1 s count."""
MEAN_GAP_S = 20.0
"""Mean empty time (s) between vehicles, exponential, at least one reading interval."""
WARM_UP_S = 120.0
"""Empty time (s) before the first vehicle of a chunk."""


def benign_mix() -> dict[str, float]:
    """The simulator's traffic mix without threats: empty and loaded vehicles, NORM, medical isotopes."""
    from drivers.sim.physics import DEFAULT_MIX, SOURCES

    return {name: p for name, p in DEFAULT_MIX.items() if SOURCES[name] != "threat"}


def threat_mix() -> dict[str, float]:
    """The simulator's threat scenarios, in their default proportions."""
    from drivers.sim.physics import DEFAULT_MIX, SOURCES

    return {name: p for name, p in DEFAULT_MIX.items() if SOURCES[name] == "threat"}


@dataclass(frozen=True)
class Chunk:
    """One seeded stream of ``vehicles`` vehicles drawn from ``mix``."""

    seed: int
    vehicles: int
    mix: Mapping[str, float]


@dataclass
class Corpus:
    """Rows of a corpus: one per vehicle and variant, in chunk order."""

    features: np.ndarray
    """(rows, N_FEATURES) float32."""
    source: np.ndarray
    """(rows,) scenario name of each row (:data:`drivers.sim.physics.SOURCES`)."""
    category: np.ndarray
    """(rows,) benign, norm, medical or threat."""
    variant: np.ndarray
    """(rows,) one of :data:`VARIANTS`."""
    decisions: list[dict[str, Any]]
    """Per row, the decision without its profile: verdict, alarms, baseline verdict."""

    def __len__(self) -> int:
        return len(self.source)

    def select(self, mask: np.ndarray) -> Corpus:
        """The rows where ``mask`` is true."""
        idx = np.nonzero(mask)[0]
        return Corpus(
            self.features[idx],
            self.source[idx],
            self.category[idx],
            self.variant[idx],
            [self.decisions[i] for i in idx],
        )

    def digest(self) -> str:
        """SHA-256 (hex) of the features and labels: two corpora with the same rows have the same digest."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.features, dtype="<f4").tobytes())
        for column in (self.source, self.variant):
            h.update("\n".join(column.tolist()).encode())
        return h.hexdigest()


def _feed(traffic: Any, est: BackgroundEstimator, seconds: float) -> None:
    """Keep the lane empty for ``seconds``, with a background reading every interval."""
    for _ in range(max(1, round(seconds / READING_INTERVAL_S))):
        traffic.idle(READING_INTERVAL_S)
        gamma, neutron = traffic.background_reading(1.0)
        t_ns = int(traffic.time_s * 1e9)
        est.update_gamma(gamma, t_ns)
        est.update_neutron(neutron, t_ns)


def _gross_snapshot(snap: BackgroundSnapshot) -> BackgroundSnapshot:
    """The background a gross-counting portal would have: the windows summed."""
    assert snap.gamma_cps is not None
    return replace(snap, gamma_cps=snap.gamma_cps.sum(axis=1, keepdims=True))


def _slim(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record[k] for k in ("verdict", "alarms", "baseline_verdict", "end_reason")}


def simulate(chunk: Chunk) -> Iterator[tuple[dict[str, Any], str, dict[str, Any]]]:
    """The chunk's vehicles as ``(truth, variant, decision)``, one per vehicle and variant, in order."""
    from drivers.sim.physics import GAMMA_DT_S, HOLD_IN_S, NEUTRON_DT_S, Traffic

    configs = {
        "windows": DetectionConfig(energy_windows_kev=list(WINDOWS_KEV), occupancy_hold_in_s=HOLD_IN_S),
        "gross": DetectionConfig(energy_windows_kev=[], occupancy_hold_in_s=HOLD_IN_S),
    }
    traffic = Traffic(chunk.seed, windows_kev=WINDOWS_KEV, mix=chunk.mix)
    est = BackgroundEstimator(4, traffic.K, 4, configs["windows"].background_halflife_s)
    gaps = np.random.default_rng(np.random.SeedSequence(chunk.seed, spawn_key=(99,)))
    _feed(traffic, est, WARM_UP_S)
    for _ in range(chunk.vehicles):
        passage = traffic.next_passage()
        start_ns = int(traffic.time_s * 1e9)
        snap = est.snapshot()
        inputs = {
            "windows": (snap, passage.gamma),
            "gross": (_gross_snapshot(snap), passage.gamma.sum(axis=2, keepdims=True)),
        }
        for variant in VARIANTS:
            background, gamma = inputs[variant]
            analysis = analyze(
                configs[variant], background, gamma, passage.neutron, GAMMA_DT_S, NEUTRON_DT_S, passage.speed_kmh
            )
            record = decision_mod.build(
                lane="sim",
                occupancy_id=f"sim-{chunk.seed}-{passage.index}-{variant}",
                start_wall_ns=start_ns,
                end_wall_ns=start_ns + int(gamma.shape[0] * GAMMA_DT_S * 1e9),
                end_reason="gx",
                device_occupancy=None,
                analysis=analysis,
                samples=gamma.shape[0] + passage.neutron.shape[0],
                device_alarm=False,
                tamper=False,
                link_interruptions=0,
            )
            yield passage.truth, variant, record
        _feed(traffic, est, max(READING_INTERVAL_S, float(gaps.exponential(MEAN_GAP_S))))


def run_chunk(chunk: Chunk) -> tuple[np.ndarray, list[str], list[str], list[str], list[dict[str, Any]]]:
    """Simulate one chunk; returns its features, sources, categories, variants and slim decisions."""
    from drivers.sim.physics import SOURCES

    rows: list[np.ndarray] = []
    sources: list[str] = []
    variants: list[str] = []
    slim: list[dict[str, Any]] = []
    for truth, variant, record in simulate(chunk):
        try:
            rows.append(extract(record))
        except FeatureError as exc:
            raise RuntimeError(f"chunk seed {chunk.seed}, vehicle {truth['index']}: {exc}") from exc
        sources.append(truth["source"])
        variants.append(variant)
        slim.append(_slim(record))
    categories = [SOURCES[s] for s in sources]
    return np.array(rows, dtype=np.float32).reshape(len(rows), -1), sources, categories, variants, slim


def chunks(seeds: Sequence[int], vehicles_per_chunk: int, mix: Mapping[str, float]) -> list[Chunk]:
    """One :class:`Chunk` per seed."""
    return [Chunk(int(s), vehicles_per_chunk, dict(mix)) for s in seeds]


def build(plan: Sequence[Chunk], workers: int = 1, progress: Callable[[int], None] | None = None) -> Corpus:
    """Simulate every chunk (in ``workers`` processes) and gather the rows in chunk order.

    ``progress`` is called with the number of vehicles of each chunk as it completes.
    """
    results: list[Any] = [None] * len(plan)
    if workers <= 1:
        for i, chunk in enumerate(plan):
            results[i] = run_chunk(chunk)
            if progress:
                progress(chunk.vehicles)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(run_chunk, chunk): i for i, chunk in enumerate(plan)}
            for future in as_completed(futures):
                i = futures[future]
                results[i] = future.result()
                if progress:
                    progress(plan[i].vehicles)
    features = np.concatenate([r[0] for r in results]) if results else np.zeros((0, 0), np.float32)
    return Corpus(
        features=features,
        source=np.array([s for r in results for s in r[1]], dtype=object).astype(str),
        category=np.array([c for r in results for c in r[2]], dtype=object).astype(str),
        variant=np.array([v for r in results for v in r[3]], dtype=object).astype(str),
        decisions=[d for r in results for d in r[4]],
    )
