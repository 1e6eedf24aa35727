"""The anomaly model at the lane: load and check an ONNX model, score decisions, combine with the rules.

The model (trained by :mod:`lanewatch.models.train`, described in ``models/README.md``) scores how unusual an
occupancy is against ordinary traffic, as ``-log10`` of the fraction of ordinary vehicles at least as
unusual on the same kind of lane in its training traffic: the decision's ``model.raw_score``. Each lane reads
that raw score against its own recent ordinary traffic (:mod:`lanewatch.edge.model.calibration`): the decision's
``model.score`` is ``-log10`` of the fraction of the lane's ordinary vehicles scoring at least as high, 2 one
vehicle in a hundred at this lane, 3 one in a thousand. Until the lane has seen ``min_occupancies`` ordinary
vehicles, ``model.calibration`` is ``warming-up`` and there is no score.

Loading (:func:`load`) checks, and refuses with a :class:`ModelError` that says why: that the file is
readable and a valid ONNX model; that it was trained for this lanewatch's feature schema
(:data:`lanewatch.edge.model.features.SCHEMA_VERSION`, same feature names in the same order); that its input and
outputs are the expected ones; and that it reproduces the check scores recorded in it at training (a
damaged weight shows there). The session runs on one thread with spinning off (the service loop is
single-threaded and a decision is one small matrix product), and is warmed before it is used.

Combination policy (:func:`apply_policy`), explainable tests first:

- a rule alarm always stands: the model never clears a decision;
- a score at or above ``finding_threshold`` is a finding for review: ``model.finding`` is true. At or
  above ``alarm_threshold``, when that is set (above 0), it is also an alarm: a ``model-anomaly`` entry
  joins the alarms and the verdict is ALARM. By default it is 0: a model trained on simulated traffic
  flags what a real site does differently, so a site turns model alarms on once it has checked the
  model on its own traffic;
- a ``norm-consistent`` entry (an excess the rules released as NORM) gets ``model_agrees``: the score
  is below ``release_threshold``, the vehicle looks like ordinary traffic. It stays (or becomes)
  ``release_recommended`` only when the model agrees, and when the image agrees too if the fusion
  judged it (its own ``release_recommended``). Without a score it is never recommended;
- every scored decision records ``model``: version, score, raw score, the lane's calibration (``lane`` or
  ``warming-up``, and its occupancies) and thresholds (or why it has no score). While the lane warms up there is
  no finding, no model alarm and no release recommended: a raw score from another domain means nothing here.

Decisions whose radiation data is not whole (an occupancy ended by timeout or stalled samples, a scan
with no occupancy) and those without gamma samples are not scored: ``model.score`` is None and
``model.unscored`` says why (``ended by <end reason>``, ``no usable profile``).

:class:`ModelRunner` is what the service holds: it owns the session, scores each decision before it
is journaled, counts and logs what goes wrong without ever failing a decision, and swaps in a new
model file on request (SIGHUP) between loop steps, keeping the old one when the new one is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from lanewatch.edge.config import ConfigError, ModelConfig
from lanewatch.edge.decisions.decision import COMPLETE_ENDS
from lanewatch.edge.model import features
from lanewatch.edge.model.calibration import Calibrated, LaneCalibration
from lanewatch.edge.ops.metrics import ModelMetrics

log = logging.getLogger("lanewatch.model")

MAX_MODEL_BYTES = 64 << 20
"""Largest model file read (bytes); the shipped one is well under 1 MiB."""
CHECK_TOLERANCE = 1e-3
"""Largest difference allowed between a check score recorded at training and the one computed at load."""
INPUT = "features"
OUTPUT = "score"
FINDING = "model-anomaly"
"""Reason of the model's entry in a decision's alarms."""
WARM_RUNS = 20
"""Inferences run at load so the first decision does not pay for allocation."""


class ModelError(ConfigError):
    """A model file that cannot be used; the message names the file and what is wrong with it."""


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model says about itself."""

    path: str
    version: str
    """``<model>-<first 12 hex of the file's SHA-256>``: recorded in every decision it scores."""
    sha256: str
    size_bytes: int
    schema: str
    metadata: dict[str, str]


class AnomalyModel:
    """One checked, warmed onnxruntime session of an anomaly model. Use :func:`load`."""

    def __init__(self, session: Any, info: ModelInfo) -> None:
        self._session = session
        self.info = info

    @property
    def version(self) -> str:
        return self.info.version

    def score_vectors(self, vectors: np.ndarray) -> np.ndarray:
        """Scores of feature vectors ``(rows, N_FEATURES)``."""
        x = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        return self._session.run([OUTPUT], {INPUT: x})[0]

    def score(self, decision: dict[str, Any]) -> float:
        """Score of one decision; raises :class:`lanewatch.edge.model.features.FeatureError` when it has no
        usable profile."""
        return float(self.score_vectors(features.extract(decision)[None, :])[0])


def _session(blob: bytes, where: str) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(blob, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for every kind of bad file
        raise ModelError(f"{where}: not a valid ONNX model: {str(exc).strip().splitlines()[0]}") from None


def _json_meta(meta: dict[str, str], key: str, where: str) -> Any:
    try:
        return json.loads(meta[key])
    except KeyError:
        raise ModelError(f"{where}: metadata has no {key!r}: not a lanewatch anomaly model") from None
    except json.JSONDecodeError as exc:
        raise ModelError(f"{where}: metadata {key!r} is not valid JSON: {exc}") from None


def load(path: str | Path) -> AnomalyModel:
    """Read, check and warm the model at ``path``; :class:`ModelError` says why one is refused."""
    where = f"model {path}"
    try:
        with open(path, "rb") as f:
            blob = f.read(MAX_MODEL_BYTES + 1)
    except OSError as exc:
        raise ModelError(f"{where}: cannot read: {exc.strerror}") from None
    if len(blob) > MAX_MODEL_BYTES:
        raise ModelError(f"{where}: larger than {MAX_MODEL_BYTES >> 20} MiB")
    session = _session(blob, where)
    meta = dict(session.get_modelmeta().custom_metadata_map)
    schema = meta.get("lanewatch.schema")
    if schema is None:
        raise ModelError(f"{where}: metadata has no 'lanewatch.schema': not a lanewatch anomaly model")
    if schema != features.SCHEMA_VERSION:
        raise ModelError(
            f"{where}: trained for feature schema {schema!r}, this lanewatch computes {features.SCHEMA_VERSION!r}: "
            "retrain it (lanewatch model train) or use a model of this version"
        )
    names = _json_meta(meta, "lanewatch.features", where)
    if list(names) != list(features.FEATURE_NAMES):
        pairs = enumerate(zip(names, features.FEATURE_NAMES, strict=False))
        differ = next((i for i, (a, b) in pairs if a != b), None)
        detail = f"first difference at {differ}" if differ is not None else f"{len(names)} != {features.N_FEATURES}"
        raise ModelError(f"{where}: feature names differ from schema {schema} ({detail})")
    inputs, outputs = session.get_inputs(), [o.name for o in session.get_outputs()]
    if len(inputs) != 1 or inputs[0].name != INPUT or inputs[0].type != "tensor(float)":
        got = ", ".join(f"{i.name} {i.type}" for i in inputs)
        raise ModelError(f"{where}: expected one float input {INPUT!r}, got {got}")
    width = inputs[0].shape[-1] if inputs[0].shape else None
    if len(inputs[0].shape) != 2 or width != features.N_FEATURES:
        raise ModelError(f"{where}: input shape {inputs[0].shape}, expected [N, {features.N_FEATURES}]")
    if OUTPUT not in outputs:
        raise ModelError(f"{where}: no output {OUTPUT!r} (outputs: {', '.join(outputs)})")
    sha = hashlib.sha256(blob).hexdigest()
    info = ModelInfo(
        path=str(path),
        version=f"{meta.get('lanewatch.model', 'model')}-{sha[:12]}",
        sha256=sha,
        size_bytes=len(blob),
        schema=schema,
        metadata=meta,
    )
    model = AnomalyModel(session, info)
    checks = _json_meta(meta, "lanewatch.check", where)
    try:
        for name, check in checks.items():
            vector = np.asarray(check["features"], dtype=np.float32)
            got = float(model.score_vectors(vector)[0])
            if not math.isfinite(got) or abs(got - float(check["score"])) > CHECK_TOLERANCE:
                raise ModelError(
                    f"{where}: check vector {name!r} scores {got:.4f}, the model recorded {check['score']}: "
                    "the file is damaged or was altered"
                )
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{where}: cannot run the model on its check vectors: {exc}") from None
    probe = np.zeros((1, features.N_FEATURES), np.float32)
    for _ in range(WARM_RUNS):
        model.score_vectors(probe)
    return model


def apply_policy(
    decision: dict[str, Any],
    score: float | None,
    cfg: ModelConfig,
    version: str = "",
    reason: str | None = None,
    raw: float | None = None,
    calibrated: Calibrated | None = None,
) -> dict[str, Any]:
    """Combine the model's ``score`` with the rule tests' decision, in place (see the module docstring).

    ``score`` None means no score: ``reason`` says why, unless the model's ``raw`` score is there and the lane's
    calibration (``calibrated``, as it read ``raw``) is warming up. Returns ``decision``.
    """
    entry: dict[str, Any] = {
        "version": version,
        "score": None if score is None else round(float(score), 3),
        "finding": False,
        "finding_threshold": cfg.finding_threshold,
        "alarm_threshold": cfg.alarm_threshold,
        "release_threshold": cfg.release_threshold,
    }
    if raw is not None:
        entry["raw_score"] = round(float(raw), 3)
    if calibrated is not None:
        entry["calibration"] = "warming-up" if calibrated.warming_up else "lane"
        entry["calibration_occupancies"] = calibrated.occupancies
        entry["min_occupancies"] = cfg.min_occupancies
    if score is None and raw is None:
        entry["unscored"] = reason or "no score"
    decision["model"] = entry
    agrees = score is not None and score < cfg.release_threshold
    for alarm in decision.get("alarms", []):
        if alarm.get("reason") == "norm-consistent":
            alarm["model_agrees"] = agrees
            alarm["release_recommended"] = bool(alarm.get("release_recommended", True)) and agrees
    entry["finding"] = score is not None and score >= cfg.finding_threshold
    if score is not None and 0 < cfg.alarm_threshold <= score:
        decision.setdefault("alarms", []).append(
            {
                "reason": FINDING,
                "alarm": True,
                "statistic": round(float(score), 3),
                "threshold": cfg.alarm_threshold,
                "location_m": None,
                "model_version": version,
            }
        )
        decision["verdict"] = "ALARM"
    return decision


class ModelRunner:
    """The service's model: optional (``cfg.path`` empty disables it), reloadable, never fails a decision."""

    def __init__(self, cfg: ModelConfig, registry: CollectorRegistry, state: Path | None = None) -> None:
        """``state``: the file that keeps the lanes' calibration across restarts (None: kept in memory only)."""
        self.cfg = cfg
        self.metrics = ModelMetrics(registry)
        self.model: AnomalyModel | None = None
        self._reload = threading.Event()
        self._state = state
        self.calibration: LaneCalibration | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.cfg.path)

    def start(self, lanes: Iterable[str] = ()) -> None:
        """Load, check and warm the configured model, and read the ``lanes``' calibration; :class:`ModelError` (a
        start-up error) if the model is refused."""
        if not self.enabled:
            log.info("anomaly model disabled ([model] path is empty)")
            return
        t0 = time.perf_counter()
        self._use(load(self.cfg.path))
        self.calibration = LaneCalibration(self.cfg, self._state, self.metrics)
        for lane in lanes:
            self.calibration.window(lane, self.model.version)
        log.info(
            "anomaly model %s (schema %s) ready in %.0f ms",
            self.model.version,
            self.model.info.schema,
            1e3 * (time.perf_counter() - t0),
        )

    def save(self) -> None:
        """Keep the lanes' calibration learnt since the last call in the state file (off the alert's path)."""
        if self.calibration is not None:
            self.calibration.save()

    def close(self) -> None:
        if self.calibration is not None:
            self.calibration.close()

    def faults(self, lane: str) -> set[str]:
        """The model's faults at ``lane``: ``model-drift`` while its traffic is out of the training domain."""
        return {"model-drift"} if self.calibration is not None and lane in self.calibration.drifting else set()

    def health(self) -> dict[str, Any]:
        """The model's part of /healthz: the version in use and its calibration state's file and problem."""
        calibration = self.calibration
        return {
            "version": self.model.version if self.model else None,
            "state": str(self._state) if self._state else None,
            "state_problem": calibration.problem if calibration else "",
        }

    def _use(self, model: AnomalyModel) -> None:
        if self.model is not None:
            self.metrics.loaded.remove(self.model.version, self.model.info.schema)
        self.model = model
        self.metrics.loaded.labels(model.version, model.info.schema).set(1)

    def request_reload(self) -> None:
        """Ask for the model file to be read again at the next loop step (safe from a signal handler)."""
        self._reload.set()

    def maybe_reload(self) -> None:
        """If asked, load the model file again and swap it in; a refused file keeps the current model."""
        if not self._reload.is_set():
            return
        self._reload.clear()
        if not self.enabled:
            log.info("reload requested, but the anomaly model is disabled")
            return
        try:
            model = load(self.cfg.path)
        except ModelError as exc:
            self.metrics.reloads.labels("refused").inc()
            kept = self.model.version if self.model else "none"
            log.error("model reload refused, keeping %s: %s", kept, exc)
            return
        old = self.model.version if self.model else "none"
        self._use(model)
        self.metrics.reloads.labels("loaded").inc()
        log.info("anomaly model reloaded: %s -> %s", old, model.version)

    def review(self, decision: dict[str, Any]) -> dict[str, Any]:
        """Score ``decision`` and :meth:`judge` it, in place; a no-op when the model is disabled."""
        model = self.model
        if model is None:
            return decision
        lane = str(decision.get("lane", ""))
        raw: float | None = None
        reason: str | None = None
        t0 = time.perf_counter()
        if decision.get("end_reason") not in COMPLETE_ENDS:
            reason = f"ended by {decision.get('end_reason')}"
        elif decision.get("incomplete"):
            reason = f"incomplete: {', '.join(decision['incomplete'])}"
        else:
            try:
                raw = model.score(decision)
            except features.FeatureError as exc:
                reason = "no usable profile"
                log.warning("lane %s occupancy %s not scored: %s", lane, decision.get("occupancy_id"), exc)
            except Exception as exc:  # a failing session must not lose the decision
                reason = "inference error"
                log.error("lane %s occupancy %s: model failed: %r", lane, decision.get("occupancy_id"), exc)
            else:
                if not math.isfinite(raw):
                    reason, raw = "non-finite score", None
        self.metrics.inference.observe(time.perf_counter() - t0)
        return self.judge(decision, raw, reason)

    def judge(self, decision: dict[str, Any], raw: float | None, reason: str | None = None) -> dict[str, Any]:
        """Read the model's ``raw`` score of ``decision`` with its lane's calibration and apply the policy, in place
        (``raw`` None: not scored, ``reason`` says why); then a scored occupancy not alarmed joins the lane's
        calibration. Needs a started runner."""
        assert self.model is not None and self.calibration is not None, "judge needs a started runner"
        lane, version = str(decision.get("lane", "")), self.model.version
        if raw is None:
            self.metrics.unscored.labels(lane, reason or "no score").inc()
            return apply_policy(decision, None, self.cfg, version, reason)
        calibrated = self.calibration.read(lane, version, raw)
        apply_policy(decision, calibrated.score, self.cfg, version, raw=raw, calibrated=calibrated)
        finding = bool(decision["model"]["finding"])
        if calibrated.score is not None:
            self.metrics.scores.labels(lane).observe(calibrated.score)
            if finding:
                self.metrics.findings.labels(lane, str(0 < self.cfg.alarm_threshold <= calibrated.score).lower()).inc()
        if decision.get("verdict") != "ALARM":
            self.calibration.learn(lane, version, str(decision.get("occupancy_id")), raw, finding)
        return decision
