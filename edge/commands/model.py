"""``lanewatch model``: train the anomaly model, or check a model file before deploying it.

::

    lanewatch model check [FILE]     load FILE (default: the configured [model] path) as the service would,
                                     print its provenance and timing; exit 1 with the reason if refused
    lanewatch model train [...]      simulate ordinary traffic, fit, calibrate and write an ONNX model
                                     (options of python -m lanewatch.models.train; needs the train extra)
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from lanewatch.edge.config import Config
from lanewatch.edge.model import features
from lanewatch.edge.model.runtime import ModelError, load

TIMING_RUNS = 2000
"""Inferences timed by ``check``."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``train`` and ``check`` sub-commands (the CLI adds ``--config``)."""
    sub = parser.add_subparsers(dest="model_command", required=True, metavar="{train,check}")
    check = sub.add_parser("check", help="load and check a model file as the service would")
    check.add_argument("file", nargs="?", help="model file (default: the configured [model] path)")
    check.add_argument("--json", action="store_true", help="print the result as one JSON object")
    train = sub.add_parser("train", help="train a model from simulated ordinary traffic (needs the train extra)")
    from lanewatch.models import train as train_mod

    train_mod.add_arguments(train)


def check(path: str, as_json: bool) -> int:
    """Load ``path`` with every start-up check, time it, and print what it says about itself."""
    try:
        model = load(path)
    except ModelError as exc:
        print(f"lanewatch model check: refused: {exc}", file=sys.stderr)
        return 1
    probe = np.zeros((1, features.N_FEATURES), np.float32)
    times = np.empty(TIMING_RUNS)
    for i in range(TIMING_RUNS):
        t0 = time.perf_counter()
        model.score_vectors(probe)
        times[i] = time.perf_counter() - t0
    meta = model.info.metadata
    corpus = json.loads(meta.get("lanewatch.corpus", "{}"))
    result = {
        "file": model.info.path,
        "ok": True,
        "version": model.version,
        "sha256": model.info.sha256,
        "size_bytes": model.info.size_bytes,
        "schema": model.info.schema,
        "features": features.N_FEATURES,
        "model": meta.get("lanewatch.model"),
        "components": meta.get("lanewatch.components"),
        "seed": meta.get("lanewatch.seed"),
        "trained": meta.get("lanewatch.trained"),
        "corpus_sha256": meta.get("lanewatch.corpus_sha256"),
        "train_rows": corpus.get("train_rows"),
        "calibration_rows": corpus.get("calibration_rows"),
        "inference_p50_us": round(float(np.percentile(times, 50)) * 1e6, 1),
        "inference_p99_us": round(float(np.percentile(times, 99)) * 1e6, 1),
    }
    if as_json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:18s} {value}")
    return 0


def run(args: argparse.Namespace, config: Config) -> int:
    """Run ``lanewatch model train`` or ``lanewatch model check``; returns the exit status."""
    if args.model_command == "check":
        path = args.file or config.model.path
        if not path:
            print("lanewatch model check: no file given and [model] path is empty (model disabled)", file=sys.stderr)
            return 2
        return check(path, args.json)
    from lanewatch.models import train as train_mod

    return train_mod.run(args)
