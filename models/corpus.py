"""Labelled corpora of occupancies from the lane simulator, as feature vectors and rule outcomes.

One corpus is a list of *chunks*; a chunk is one seeded stream of simulated traffic
(:class:`lanewatch.drivers.sim.physics.Traffic`) through one lane: 120 s of empty lane to settle the background
estimator, then vehicles with exponential gaps (mean 20 s) during which the estimator is fed a 1 s
background reading every 5 s, as a lane feeds it. Each vehicle's counts go through the lane's own code
path, :func:`lanewatch.edge.lane.detect.analyze` then :func:`lanewatch.edge.decisions.decision.build`, and the decision
through
:func:`lanewatch.edge.model.features.extract`.

Every vehicle is seen by two portals: one measuring the energy windows ``WINDOWS_KEV`` and one
counting gross only (K = 1). The gross counts are the sum of the windows (they cover the gross range
30-3000 keV), so both see the same photons. Each portal's decision is taken twice: alone, as at a lane
without an X-ray scanner, and fused with the vehicle's X-ray scan (:class:`lanewatch.drivers.sim.xray.XrayScanner`
with ``IMAGE_PIXELS`` detector pixels) as at a lane with one: the scan's lines go as the X-ray driver
publishes them through the lane's :class:`lanewatch.edge.xray.scan.ScanAssembler` (imaging pipeline) and
:func:`lanewatch.edge.xray.fusion.fuse`, into the decision's ``xray`` section. A model trained on all four works on
every kind of lane.

Chunks are independent given their seed, so they run in parallel processes and the result does not
depend on how many: rows come back in chunk order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from lanewatch.edge.config import DetectionConfig
from lanewatch.edge.decisions import decision as decision_mod
from lanewatch.edge.lane.background import BackgroundEstimator, BackgroundSnapshot
from lanewatch.edge.lane.detect import analyze
from lanewatch.edge.model.features import FeatureError, extract

if TYPE_CHECKING:
    from lanewatch.drivers.sim import physics

WINDOWS_KEV = (30.0, 400.0, 3000.0)
"""Energy window edges (keV) of the windowed portal."""
VARIANTS = ("windows", "windows+image", "gross", "gross+image")
"""How each vehicle is seen: with energy windows or gross counts only, without and with its X-ray image."""
IMAGE_PIXELS = 256
"""Detector pixels of the corpus' scanner (18 mm pitch over its 4.6 m; the simulator's default is 1024). The
image features are in physical units (fractions, mm, dm^2), so a coarser detector renders four times faster
and gives the same features within the fusion's 20 mm analysis cells."""
BATCH_LINES = 256
"""Image lines per record, as the X-ray driver batches them."""
READING_INTERVAL_S = 5.0
"""Background readings while the lane is empty, one every this many seconds (s), each a 1 s count."""
MEAN_GAP_S = 20.0
"""Mean empty time (s) between vehicles, exponential, at least one reading interval."""
WARM_UP_S = 120.0
"""Empty time (s) before the first vehicle of a chunk."""


def benign_mix() -> dict[str, float]:
    """The simulator's traffic mix without threats: empty and loaded vehicles, NORM, medical isotopes."""
    from lanewatch.drivers.sim.physics import DEFAULT_MIX, SOURCES

    return {name: p for name, p in DEFAULT_MIX.items() if SOURCES[name] != "threat"}


def threat_mix() -> dict[str, float]:
    """The simulator's threat scenarios, in their default proportions."""
    from lanewatch.drivers.sim.physics import DEFAULT_MIX, SOURCES

    return {name: p for name, p in DEFAULT_MIX.items() if SOURCES[name] == "threat"}


@dataclass(frozen=True)
class Chunk:
    """One seeded stream of ``vehicles`` vehicles drawn from ``mix``; ``images`` False leaves out the image variants."""

    seed: int
    vehicles: int
    mix: Mapping[str, float]
    images: bool = True


@dataclass
class Corpus:
    """Rows of a corpus: one per vehicle and variant, in chunk order."""

    features: np.ndarray
    """(rows, N_FEATURES) float32."""
    source: np.ndarray
    """(rows,) scenario name of each row (:data:`lanewatch.drivers.sim.physics.SOURCES`)."""
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

    @staticmethod
    def join(parts: Sequence[Corpus]) -> Corpus:
        """The rows of ``parts``, in order: the corpus of their chunks built at once."""
        return Corpus(
            np.concatenate([c.features for c in parts]),
            np.concatenate([c.source for c in parts]),
            np.concatenate([c.category for c in parts]),
            np.concatenate([c.variant for c in parts]),
            [d for c in parts for d in c.decisions],
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


def _record(kind: Any, seq: int, stamp_ns: int, counts: np.ndarray | None = None, **values: Any) -> Any:
    from lanewatch.edge.bus.records import Record

    return Record(kind, "sim", "xray", seq, stamp_ns, stamp_ns, counts=counts, values=values)


def scan_records(scan: Any, t0_ns: int) -> list[Any]:
    """The records the X-ray driver publishes for a simulated scan (:class:`lanewatch.drivers.sim.xray.XrayScan`)."""
    from lanewatch.edge.bus.records import Kind

    t_ns = t0_ns + np.round(scan.frame_offsets_s() * 1e9).astype(np.int64)
    k = len(scan.dark)
    energies, pixels = scan.image.shape[1:]
    out = [_record(Kind.XRAY_SCAN_START, 0, int(t_ns[0]), scan_id=scan.scan_id, energies=energies, pixels=pixels)]
    for i, (frame, lines) in enumerate((("dark", scan.dark), ("air", scan.air))):
        times = [int(v) for v in t_ns[i * k : (i + 1) * k]]
        out.append(
            _record(Kind.XRAY_CALIBRATION, len(out), times[-1], lines, scan_id=scan.scan_id, frame=frame, t_ns=times)
        )
    image_t = t_ns[2 * k :]
    for a in range(0, len(scan.image), BATCH_LINES):
        b = min(a + BATCH_LINES, len(scan.image))
        out.append(
            _record(
                Kind.XRAY_LINES,
                len(out),
                int(image_t[b - 1]),
                scan.image[a:b],
                scan_id=scan.scan_id,
                first_line=a,
                line_count=b - a,
                encoder_mm=[float(v) for v in scan.encoder_mm[a:b]],
                t_ns=[int(v) for v in image_t[a:b]],
                flags=[0] * (b - a),
            )
        )
    lines = len(scan.image)
    out.append(
        _record(
            Kind.XRAY_SCAN_END,
            len(out),
            int(t_ns[-1]),
            scan_id=scan.scan_id,
            lines=lines,
            missing=0,
            complete=True,
            reason="scan_end",
        )
    )
    return out


class _Imager:
    """Scans a chunk's passages and assembles them as a lane does."""

    def __init__(self, seed: int, detection: DetectionConfig) -> None:
        from prometheus_client import CollectorRegistry

        from lanewatch.drivers.sim.xray import XrayScanner
        from lanewatch.edge.config import FusionConfig, LaneConfig
        from lanewatch.edge.ops.metrics import ServiceMetrics
        from lanewatch.edge.xray.scan import ScanAssembler

        self.scanner = XrayScanner(seed=seed, pixels=IMAGE_PIXELS, lane="sim")
        self.fusion = FusionConfig()
        self.assembler = ScanAssembler(
            LaneConfig(id="sim", xray="sim"), detection, self.fusion, ServiceMetrics(CollectorRegistry())
        )

    def scan(self, passage: Any, t0_ns: int) -> Any:
        ended = []
        for rec in scan_records(self.scanner.scan(passage), t0_ns):
            ended += self.assembler.on_record(rec, rec.t_mono_ns)
        if len(ended) != 1 or ended[0].result is None:
            raise RuntimeError(f"simulated scan of vehicle {passage.index} did not assemble into one imaged scan")
        return ended[0]


def simulate(chunk: Chunk) -> Iterator[tuple[dict[str, Any], str, dict[str, Any]]]:
    """The chunk's vehicles as ``(truth, variant, decision)``, one per vehicle and variant, in order."""
    from lanewatch.drivers.sim.physics import GAMMA_DT_S, HOLD_IN_S, NEUTRON_DT_S, Traffic

    configs = {
        "windows": DetectionConfig(energy_windows_kev=list(WINDOWS_KEV), occupancy_hold_in_s=HOLD_IN_S),
        "gross": DetectionConfig(energy_windows_kev=[], occupancy_hold_in_s=HOLD_IN_S),
    }
    traffic = Traffic(chunk.seed, windows_kev=WINDOWS_KEV, mix=chunk.mix)
    est = BackgroundEstimator(4, traffic.K, 4, configs["windows"].background_halflife_s)
    gaps = np.random.default_rng(np.random.SeedSequence(chunk.seed, spawn_key=(99,)))
    imager = _Imager(chunk.seed, configs["windows"]) if chunk.images else None
    _feed(traffic, est, WARM_UP_S)
    for _ in range(chunk.vehicles):
        passage = traffic.next_passage()
        start_ns = int(traffic.time_s * 1e9)
        scan = imager.scan(passage, start_ns) if imager is not None else None
        snap = est.snapshot()
        inputs = {
            "windows": (snap, passage.gamma),
            "gross": (_gross_snapshot(snap), passage.gamma.sum(axis=2, keepdims=True)),
        }
        for portal, (background, gamma) in inputs.items():
            cfg = configs[portal]
            analysis = analyze(cfg, background, gamma, passage.neutron, GAMMA_DT_S, NEUTRON_DT_S, passage.speed_kmh)
            seen = [(portal, analysis, None)]
            if scan is not None:
                from lanewatch.edge.xray.fusion import fuse

                fused = fuse(analysis, scan, imager.fusion, cfg)
                seen.append((f"{portal}+image", {**analysis, "alarms": fused.alarms}, fused.xray))
            for variant, result, xray in seen:
                yield (
                    passage.truth,
                    variant,
                    passage_decision(
                        "sim", f"sim-{chunk.seed}-{passage.index}-{variant}", start_ns, result, passage, gamma, xray
                    ),
                )
        _feed(traffic, est, max(READING_INTERVAL_S, float(gaps.exponential(MEAN_GAP_S))))


def passage_decision(
    lane: str,
    occupancy_id: str,
    start_ns: int,
    analysis: dict[str, Any],
    passage: physics.Passage,
    gamma: np.ndarray,
    xray: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The decision a lane builds from ``analysis`` of a whole simulated ``passage`` (``gamma``: the samples the
    analysis read, counts per 0.2 s) that started at ``start_ns`` (ns, UTC) and ended with its GX."""
    from lanewatch.drivers.sim.physics import GAMMA_DT_S

    return decision_mod.build(
        lane=lane,
        occupancy_id=occupancy_id,
        start_wall_ns=start_ns,
        end_wall_ns=start_ns + int(gamma.shape[0] * GAMMA_DT_S * 1e9),
        end_reason="gx",
        device_occupancy=None,
        analysis=analysis,
        samples=gamma.shape[0] + passage.neutron.shape[0],
        device_alarm=False,
        tamper=False,
        link_interruptions=0,
        xray=xray,
    )


def run_chunk(chunk: Chunk) -> tuple[np.ndarray, list[str], list[str], list[str], list[dict[str, Any]]]:
    """Simulate one chunk; returns its features, sources, categories, variants and slim decisions."""
    from lanewatch.drivers.sim.physics import SOURCES

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


def chunks(seeds: Sequence[int], vehicles_per_chunk: int, mix: Mapping[str, float], images: bool = True) -> list[Chunk]:
    """One :class:`Chunk` per seed."""
    return [Chunk(int(s), vehicles_per_chunk, dict(mix), images) for s in seeds]


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
