"""Train the anomaly model from simulated ordinary traffic and export it as ONNX.

::

    python -m lanewatch.models.train                       # the shipped model: models/anomaly.onnx
    lanewatch model train --out /tmp/m.onnx --train-vehicles 2000 --calibration-vehicles 1000

Steps: simulate a training corpus and a separate calibration corpus of ordinary traffic (benign loads,
NORM, medical isotopes; never a threat) with :mod:`lanewatch.models.corpus`; choose each kind of lane's
number of components by the likelihood of the last ``VALIDATION_FRACTION`` of the training chunks under a
fit of the others (:func:`lanewatch.models.mixture.select`); fit the Gaussian mixture
(:mod:`lanewatch.models.mixture`) to all training rows; calibrate its score per mode on the calibration rows;
write the ONNX graph (:mod:`lanewatch.models.export`) with its provenance in the model's metadata.

Seeds: chunk ``i`` of the training corpus uses seed ``SEED_STRIDE * seed + i``, of the calibration
corpus ``SEED_STRIDE * seed + CALIBRATION_OFFSET + i``. Evaluation (``benchmarks/model.py``) uses seeds
from ``HELD_OUT_BASE`` up, which no training seed below ``HELD_OUT_BASE / SEED_STRIDE`` reaches. The same
seed and sizes give the same file byte for byte (pass ``--date`` to fix the date it records).

Needs the ``train`` extra (``pip install -e '.[train]'``: scikit-learn, onnx, tqdm).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from lanewatch.edge.model import features
from lanewatch.models import corpus, export, mixture

log = logging.getLogger("lanewatch.model.train")

DEFAULT_OUT = Path(__file__).resolve().parent / "anomaly.onnx"
"""Where the shipped model lives."""
SEED_STRIDE = 100_000
"""Seeds of one training run's chunks are ``SEED_STRIDE * seed + i``."""
CALIBRATION_OFFSET = 50_000
"""Calibration chunks start this far after the training chunks of the same seed."""
HELD_OUT_BASE = 900_000_000
"""Evaluation seeds start here: beyond every training and calibration seed of a seed below 9000."""
CHUNK_VEHICLES = 250
"""Vehicles per simulated chunk (one traffic stream)."""
MODEL_NAME = "gaussian-mixture"
COMPONENT_CANDIDATES = (8, 12, 16)
"""Mixture components per kind of lane (mode) tried; each mode gets the count its held-back rows find likeliest."""
VALIDATION_FRACTION = 0.2
"""Share of the training chunks (the last ones) held back from the fits that choose the components."""


@dataclass
class Trained:
    """What a training run produced."""

    path: Path
    size_bytes: int
    metadata: dict[str, str]
    train_rows: int
    calibration_rows: int
    seconds: float
    selection: mixture.Selection | None


def plan(seed: int, vehicles: int, offset: int = 0, images: bool = True) -> list[corpus.Chunk]:
    """Chunks of ordinary traffic for ``vehicles`` vehicles (rounded up to whole chunks of at most CHUNK_VEHICLES)."""
    count = max(1, math.ceil(vehicles / CHUNK_VEHICLES))
    per = math.ceil(vehicles / count)
    seeds = [SEED_STRIDE * seed + offset + i for i in range(count)]
    return corpus.chunks(seeds, per, corpus.benign_mix(), images)


def _bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="veh", disable=not enabled, leave=False)


def _simulate(chunks: list[corpus.Chunk], workers: int, desc: str, progress: bool) -> corpus.Corpus:
    with _bar(sum(c.vehicles for c in chunks), desc, progress) as bar:
        return corpus.build(chunks, workers=workers, progress=bar.update)


def _check_vectors(model: mixture.Mixture, cal: corpus.Corpus) -> dict[str, Any]:
    """A typical calibration row and a synthetic anomaly, for ``lanewatch model check`` to reproduce."""
    nll = mixture.nll(model, cal.features)
    typical = cal.features[int(np.argsort(nll)[len(nll) // 2])]
    anomalous = typical.copy()
    names = features.FEATURE_NAMES
    for name, value in (("gross_peak_z", 25.0), ("mf_z_max", 25.0), ("soft_peak_z", 15.0), ("neutron_max_z", 8.0)):
        anomalous[names.index(name)] = value
    return {"typical": typical, "anomalous": anomalous}


def train(
    *,
    seed: int,
    train_vehicles: int,
    calibration_vehicles: int,
    components: int | None,
    out: Path,
    workers: int = 1,
    date: str | None = None,
    progress: bool = False,
    images: bool = True,
) -> Trained:
    """Run the whole pipeline and write the model to ``out``; see the module docstring.

    ``components`` None chooses each mode's number of components among ``COMPONENT_CANDIDATES`` (needs at least
    two training chunks); a number gives every mode that many. ``images`` False leaves the image variants out of
    both corpora (a quick run: the model then knows lanes without a scanner only, and scores every image as
    unusual).
    """
    import sklearn

    t0 = time.perf_counter()
    train_plan = plan(seed, train_vehicles, 0, images)
    cal_plan = plan(seed, calibration_vehicles, CALIBRATION_OFFSET, images)
    held_chunks = max(1, round(VALIDATION_FRACTION * len(train_plan))) if components is None else 0
    if held_chunks >= len(train_plan):
        raise ValueError(f"choosing the components needs at least 2 training chunks ({2 * CHUNK_VEHICLES} vehicles)")
    fit_set = _simulate(train_plan[: len(train_plan) - held_chunks], workers, "training vehicles", progress)
    train_set = fit_set
    if held_chunks:
        held_set = _simulate(train_plan[len(train_plan) - held_chunks :], workers, "held-back vehicles", progress)
        train_set = corpus.Corpus.join([fit_set, held_set])
    cal_set = _simulate(cal_plan, workers, "calibration vehicles", progress)
    train_modes = export.mode_index(train_set.features, features.FEATURE_NAMES)
    selection = None
    if components is None:
        held = np.arange(len(train_set)) >= len(fit_set)
        selection = mixture.select(
            train_set.features, held, COMPONENT_CANDIDATES, seed, groups=train_modes, workers=workers
        )
        log.info("components per mode %s: held-back log-likelihood %s", selection.chosen, selection.log_likelihood)
    counts = list(selection.chosen) if selection else components
    model = mixture.fit(train_set.features, counts, seed, groups=train_modes, workers=workers)
    log.info("mixture fitted: %d EM iterations, converged %s", model.iterations, model.converged)
    cal_nll = mixture.nll(model, cal_set.features)
    modes = export.mode_index(cal_set.features, features.FEATURE_NAMES)
    pooled = export.calibrate(cal_nll)
    curves = []
    calibrated = []
    for m in range(2 ** len(export.MODE_FLAGS)):
        rows = cal_nll[modes == m]
        if len(rows) * export.TAIL_FRACTION >= export.MIN_TAIL_ROWS:
            curves.append(export.calibrate(rows))
            calibrated.append(m)
        else:
            curves.append(pooled)
    checks = _check_vectors(model, cal_set)
    check_scores = {}
    for name, vector in checks.items():
        mode = int(export.mode_index(vector[None, :], features.FEATURE_NAMES)[0])
        check_scores[name] = float(curves[mode](mixture.nll(model, vector[None, :]))[0])
    digest = _combined_digest(train_set, cal_set)
    when = date or datetime.now(UTC).date().isoformat()
    metadata = {
        "lanewatch.schema": features.SCHEMA_VERSION,
        "lanewatch.features": json.dumps(list(features.FEATURE_NAMES)),
        "lanewatch.model": MODEL_NAME,
        "lanewatch.components": str(len(model.weights)),
        "lanewatch.seed": str(seed),
        "lanewatch.corpus_sha256": digest,
        "lanewatch.corpus": json.dumps(
            {
                "generator": "lanewatch.models.corpus (lanewatch.drivers.sim.physics.Traffic, benign mix: no threats)",
                "energy_windows_kev": list(corpus.WINDOWS_KEV),
                "variants": sorted(set(train_set.variant.tolist())),
                "image_pixels": corpus.IMAGE_PIXELS if images else None,
                "train_seeds": [c.seed for c in train_plan],
                "calibration_seeds": [c.seed for c in cal_plan],
                "train_rows": len(train_set),
                "calibration_rows": len(cal_set),
                "train_sources": dict(sorted(Counter(train_set.source.tolist()).items())),
            }
        ),
        "lanewatch.fit": json.dumps(
            {
                "library": f"scikit-learn {sklearn.__version__} GaussianMixture",
                "covariance": "full",
                "init": "k-means (k-means++ seeding, Lloyd iterations)",
                "per_mode": {
                    "flags": list(export.MODE_FLAGS),
                    "modes": np.unique(train_modes).tolist(),
                    "components": counts if selection else [components] * len(np.unique(train_modes)),
                },
                "selection": None
                if selection is None
                else {
                    "candidates": list(selection.candidates),
                    "held_back_chunks": held_chunks,
                    "held_back_log_likelihood": np.round(selection.log_likelihood, 4).tolist(),
                },
                "reg_covar": mixture.REG_COVAR,
                "n_init": mixture.N_INIT,
                "tol": mixture.TOL,
                "em_iterations": model.iterations,
                "converged": model.converged,
            }
        ),
        "lanewatch.trained": when,
        "lanewatch.score": "-log10 of the fraction of ordinary vehicles of the same mode scoring at least as high",
        "lanewatch.calibration": export.curves_json(curves),
        "lanewatch.calibrated_modes": json.dumps(
            {"flags": list(export.MODE_FLAGS), "modes": calibrated, "others": "all calibration rows pooled"}
        ),
        "lanewatch.check": json.dumps(
            {
                name: {"features": [float(v) for v in checks[name]], "score": round(check_scores[name], 4)}
                for name in checks
            }
        ),
    }
    doc = (
        f"lanewatch anomaly model: {len(model.weights)}-component Gaussian mixture of ordinary traffic "
        f"(feature schema {features.SCHEMA_VERSION}), seed {seed}, trained {when}."
    )
    blob = export.build(model, curves, features.FEATURE_NAMES, metadata, doc)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(blob)
    os.replace(tmp, out)
    return Trained(out, len(blob), metadata, len(train_set), len(cal_set), time.perf_counter() - t0, selection)


def _combined_digest(*sets: corpus.Corpus) -> str:
    import hashlib

    h = hashlib.sha256()
    for s in sets:
        h.update(s.digest().encode())
    return h.hexdigest()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m lanewatch.models.train`` and ``lanewatch model train``."""
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"model file to write (default {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=1, help="training seed (default 1)")
    parser.add_argument("--train-vehicles", type=int, default=8000, help="ordinary vehicles to train on (default 8000)")
    parser.add_argument(
        "--calibration-vehicles", type=int, default=8000, help="ordinary vehicles to calibrate on (default 8000)"
    )
    parser.add_argument(
        "--components",
        type=int,
        help=f"mixture components per kind of lane (default: each kind's likeliest of {COMPONENT_CANDIDATES} "
        f"on the last {VALIDATION_FRACTION:.0%} of the training chunks, held back from the fit)",
    )
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="simulation processes (default: one per core)"
    )
    parser.add_argument("--date", help="date recorded in the model (ISO, default today): fix it for byte-equal files")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--no-images",
        action="store_true",
        help="leave out the X-ray image variants (quick runs; lanes without scanner)",
    )


def run(args: argparse.Namespace) -> int:
    """Train as ``args`` say; print a summary. Returns the exit status."""
    if args.seed < 0 or args.seed * SEED_STRIDE + CALIBRATION_OFFSET + 10_000 >= HELD_OUT_BASE:
        print(f"train: --seed must be 0..{HELD_OUT_BASE // SEED_STRIDE - 1}", file=sys.stderr)
        return 2
    least = max(COMPONENT_CANDIDATES) if args.components is None else args.components
    if least < 1 or args.train_vehicles < 2 * least:
        print("train: need --components >= 1 and at least two training vehicles per component", file=sys.stderr)
        return 2
    try:
        import onnx  # noqa: F401
        import sklearn  # noqa: F401
        import tqdm  # noqa: F401
    except ImportError as exc:
        print(f"train: {exc.name} is missing; install the training extra: pip install -e '.[train]'", file=sys.stderr)
        return 2
    try:
        result = train(
            seed=args.seed,
            train_vehicles=args.train_vehicles,
            calibration_vehicles=args.calibration_vehicles,
            components=args.components,
            out=args.out,
            workers=max(1, args.workers),
            date=args.date,
            progress=not args.no_progress and sys.stderr.isatty(),
            images=not args.no_images,
        )
    except ValueError as exc:
        print(f"train: {exc}", file=sys.stderr)
        return 2
    meta = result.metadata
    print(
        f"wrote {result.path} ({result.size_bytes / 1024:.0f} KiB) in {result.seconds:.0f} s: "
        f"{meta['lanewatch.model']} of {meta['lanewatch.components']} components, schema {meta['lanewatch.schema']}, "
        f"seed {meta['lanewatch.seed']}, {result.train_rows} training and {result.calibration_rows} calibration rows, "
        f"corpus sha256 {meta['lanewatch.corpus_sha256'][:16]}...; fit {meta['lanewatch.fit']}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lanewatch.models.train", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
