"""The model's per-lane calibration: conformal scores, warm-up, the state file, drift, and the real service on
traffic from a generator built independently of lanewatch's simulator."""

from __future__ import annotations

import copy
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from independent_lane import IndependentLane, passages, publish_background
from prometheus_client import CollectorRegistry
from support import Running, service_toml, typed

from lanewatch.edge.bus import ingest
from lanewatch.edge.bus.driver import RecordPublisher
from lanewatch.edge.commands import alerts
from lanewatch.edge.config import Config, ConfigError, ModelConfig, parse
from lanewatch.edge.console import present
from lanewatch.edge.decisions import decision
from lanewatch.edge.decisions.journal import Journal
from lanewatch.edge.model.calibration import LaneCalibration, Window
from lanewatch.edge.model.runtime import ModelRunner
from lanewatch.edge.ops.metrics import DriverMetrics, ModelMetrics

TIMEOUT_S = 900.0
"""Longest wait for the service to decide what was sent (a loaded 2-core machine)."""


def _training_like(rng: np.random.Generator, n: int) -> np.ndarray:
    """Raw scores as the model gives them on its training traffic: P(raw >= s) = 10^-s."""
    return -np.log10(rng.uniform(size=n))


# ---- the window ------------------------------------------------------------------------------------
def test_window_scores_are_conformal_whatever_the_scale_of_the_raw_score() -> None:
    rng = np.random.default_rng(3)
    for draw in (lambda n: rng.gamma(2.0, 4.0, n), lambda n: 0.2 * rng.standard_normal(n) + 7.0):
        window = Window("m", 1000)
        for i, raw in enumerate(draw(1000)):
            window.add(str(i), float(raw), False)
        scores = np.array([window.score(float(r)) for r in draw(20_000)])
        for level in (1.0, 2.0):
            share = float(np.mean(scores >= level))
            assert 0.5 * 10**-level <= share <= 2 * 10**-level, (level, share)
    assert window.score(-1e9) == 0.0


def test_window_is_bounded_keeps_each_occupancy_once_and_extends_its_tail() -> None:
    window = Window("m", 100)
    for i in range(250):
        assert window.add(f"o{i}", float(i % 100), finding=i % 10 == 0)
    assert not window.add("o249", 5.0, False), "an occupancy decided again is not counted twice"
    assert len(window) == 100 and window.ids == {f"o{i}" for i in range(150, 250)}
    assert window.finding_rate == pytest.approx(0.1)
    top = window.score(99.0)
    assert top == pytest.approx(-np.log10(2 / 101))
    # beyond the largest raw score: the model's own tail (a decade per unit) from the 10th largest (90)
    assert window.score(100.0) == pytest.approx(max(np.log10(101), -np.log10(11 / 101) + 10.0))
    assert window.score(110.0) - window.score(100.0) == pytest.approx(10.0)


def test_drift_is_raised_when_a_lanes_raw_scores_leave_the_training_distribution() -> None:
    rng = np.random.default_rng(5)
    registry = CollectorRegistry()
    cfg = ModelConfig(min_occupancies=200, calibration_window=500)
    calibration = LaneCalibration(cfg, None, ModelMetrics(registry))
    for i, raw in enumerate(_training_like(rng, 500)):
        calibration.learn("home", "m", f"h{i}", float(raw), False)
        calibration.learn("away", "m", f"a{i}", float(raw) + 1.5, False)
    assert registry.get_sample_value("lanewatch_model_drift_ratio", {"lane": "home"}) < 2.5
    assert calibration.drifting == {"away"}
    assert registry.get_sample_value("lanewatch_model_drift", {"lane": "away"}) == 1
    assert registry.get_sample_value("lanewatch_model_drift", {"lane": "home"}) == 0
    for i, raw in enumerate(_training_like(rng, 500)):  # the lane's traffic comes back into the domain
        calibration.learn("away", "m", f"b{i}", float(raw), False)
    assert calibration.drifting == set()


# ---- the state file ---------------------------------------------------------------------------------
def _calibration(path: Path, **kw: Any) -> tuple[LaneCalibration, CollectorRegistry]:
    registry = CollectorRegistry()
    cfg = ModelConfig(**{"min_occupancies": 20, "calibration_window": 100, **kw})
    return LaneCalibration(cfg, path, ModelMetrics(registry)), registry


def test_state_survives_a_restart_bounded_and_per_model(tmp_path: Path) -> None:
    path = tmp_path / "state" / "model.db"
    first, _ = _calibration(path)
    for i in range(130):
        first.learn("l1", "m1", f"o{i}", i / 10, i % 50 == 0)
    first.learn("l2", "m1", "x", 1.0, False)
    before = first.window("l1", "m1")
    first.close()
    again, registry = _calibration(path)
    window = again.window("l1", "m1")
    assert list(window.rows) == list(before.rows) and len(window) == 100
    assert again.read("l1", "m1", 12.95).score == before.score(12.95)
    assert registry.get_sample_value("lanewatch_model_calibration_occupancies", {"lane": "l1"}) == 100
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM window WHERE lane = 'l1'").fetchone()[0] == 100
    # a new model starts a new window, and the old model's rows of that lane go
    assert again.read("l1", "m2", 3.0).warming_up and len(again.window("l1", "m2")) == 0
    again.learn("l1", "m2", "n0", 1.0, False)
    count = "SELECT lane, model, count(*) FROM window GROUP BY lane, model ORDER BY lane"
    with sqlite3.connect(path) as conn:  # learnt, not yet kept: the file is written after the decision is out
        assert conn.execute(count).fetchall() == [("l1", "m1", 100), ("l2", "m1", 1)]
    again.save()
    with sqlite3.connect(path) as conn:
        assert conn.execute(count).fetchall() == [("l1", "m2", 1), ("l2", "m1", 1)]
    again.close()


def test_a_corrupt_state_file_is_moved_aside_and_reported_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "model.db"
    path.write_bytes(b"this is not an SQLite database, it is a damaged file" * 100)
    calibration, registry = _calibration(path)
    assert "not a calibration state" in calibration.problem and str(path) + ".corrupt" in calibration.problem
    assert registry.get_sample_value("lanewatch_model_state_errors_total", {"op": "open"}) == 1
    assert (tmp_path / "model.db.corrupt").read_bytes().startswith(b"this is not")
    calibration.learn("l1", "m", "o1", 1.0, False)
    calibration.close()
    again, _ = _calibration(path)
    assert again.problem == "" and len(again.window("l1", "m")) == 1
    again.close()


def test_a_state_file_that_cannot_be_written_keeps_the_calibration_in_memory(tmp_path: Path) -> None:
    path = tmp_path / "model.db"
    calibration, registry = _calibration(path)
    calibration.store._conn.execute("PRAGMA query_only = ON")  # every write now fails, as on a full disk
    for i in range(3):
        calibration.learn("l1", "m", f"o{i}", 1.0, False)
    calibration.save()
    assert len(calibration.window("l1", "m")) == 3 and "cannot keep lane l1's window" in calibration.problem
    assert registry.get_sample_value("lanewatch_model_state_errors_total", {"op": "write"}) == 3
    calibration.close()


def test_calibration_keys_are_checked() -> None:
    cfg = parse("[model]\nmin_occupancies = 50\ncalibration_window = 500\ndrift_ratio = 3\n")
    assert (cfg.model.min_occupancies, cfg.model.calibration_window, cfg.model.drift_ratio) == (50, 500, 3.0)
    for text, message in (
        ("min_occupancies = 600\ncalibration_window = 500", "model.min_occupancies: expected at most"),
        ("calibration_window = 10", "model.calibration_window: expected"),
        ("min_occupancies = 0", "model.min_occupancies: expected"),
        ("drift_ratio = 1", "model.drift_ratio: expected"),
        ('state = ""', "model.state: expected"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse(f"[model]\n{text}\n")


# ---- the runner: warm-up, what is learnt -----------------------------------------------------------------
@pytest.fixture(scope="module")
def ordinary() -> dict[str, Any]:
    """One ordinary vehicle's decision (energy windows), from the corpus generator."""
    from lanewatch.models import corpus, train

    chunk = corpus.Chunk(train.HELD_OUT_BASE + 3, 1, {"none": 1.0})
    return next(record for _, variant, record in corpus.simulate(chunk) if variant == "windows") | {"lane": "t"}


def test_decisions_say_warming_up_until_the_lane_has_enough_ordinary_occupancies(
    ordinary: dict[str, Any], tmp_path: Path
) -> None:
    registry = CollectorRegistry()
    runner = ModelRunner(ModelConfig(min_occupancies=20, calibration_window=100), registry, tmp_path / "m.db")
    runner.start(["t"])
    seen = []
    for i in range(25):
        d = copy.deepcopy(ordinary) | {"occupancy_id": f"t-{i}", "verdict": "CLEAR"}
        if i == 3:
            d["verdict"] = "ALARM"  # a rule alarm: not learnt from
        seen.append(runner.review(d)["model"])
    warm = [m for m in seen if m["calibration"] == "warming-up"]
    assert len(warm) == 21 and [m["calibration_occupancies"] for m in warm] == [*range(4), *range(3, 20)]
    assert all(m["score"] is None and not m["finding"] and "unscored" not in m for m in warm)
    assert all(isinstance(m["raw_score"], float) and m["min_occupancies"] == 20 for m in seen)
    shown, scored = (typed({**ordinary, "seq": 1, "model": m}) for m in (warm[-1], seen[-1]))
    assert present.model_text(shown) == "warming up: 19 of 20 ordinary vehicles seen at this lane, no score yet"
    assert alerts._model(shown) == "warming" and alerts._model(scored) == f"{seen[-1]['score']:.3g}"
    ready = seen[21:]
    assert all(m["calibration"] == "lane" and isinstance(m["score"], float) for m in ready)
    # the same vehicle again and again: the lane has learnt that it is ordinary there
    assert all(m["score"] < 0.1 for m in ready)
    assert registry.get_sample_value("lanewatch_model_calibration_occupancies", {"lane": "t"}) == 24
    assert registry.get_sample_value("lanewatch_model_score_count", {"lane": "t"}) == 4
    stored = {**runner.review(copy.deepcopy(ordinary) | {"occupancy_id": "t-99"}), "seq": 1}
    stored["model"]["calibration"] = "warming-up"
    assert decision.problems({**stored, "schema_version": decision.SCHEMA_VERSION}) is None
    runner.close()


# ---- the service on independent traffic --------------------------------------------------------------------
def _config(tmp_path: Path) -> Config:
    tables = """
        [model]
        finding_threshold = 1.0
        min_occupancies = 100
        calibration_window = 400
        [[lanes]]
        id = "lane1"
        """
    return parse(service_toml(tmp_path / "journal.db") + tables, "calibration-test")


def _drive(config: Config, lane: IndependentLane, count: int, seq0: int) -> Running:
    """Start the service, send ``count`` vehicles of ``lane`` through the bus, wait for their decisions."""
    running = Running(config)
    ctx = zmq.Context()
    sock = ingest.driver_publisher(ctx, config.bus.ingest)
    try:
        assert ingest.wait_for_subscriber(sock, 60.0), "the service did not subscribe"
        pub = RecordPublisher(sock, "lane1", "rpm", DriverMetrics(CollectorRegistry()))
        publish_background(pub, lane, 5)
        deadline = time.monotonic() + TIMEOUT_S
        for i, _ in enumerate(passages(lane, pub, count)):
            while running.service.last_seq < seq0 + i - 20:  # keep the service's queue short
                assert time.monotonic() < deadline, f"decided {running.service.last_seq - seq0} of {i}"
                time.sleep(0.02)
        while running.service.last_seq < seq0 + count:
            assert time.monotonic() < deadline, f"decided {running.service.last_seq - seq0} of {count}"
            time.sleep(0.05)
    except BaseException:
        running.close()
        raise
    finally:
        sock.close(linger=0)
        ctx.term()
    return running


@pytest.mark.slow
def test_independent_traffic_finding_rate_is_nominal_after_warm_up_and_survives_a_restart(tmp_path: Path) -> None:
    """1000 ordinary vehicles of a lane unlike the training traffic, through the real bus and service: after the
    warm-up, the share of findings among ordinary vehicles is within 2x of the nominal 10^-finding_threshold,
    where the model's own score is not; the lane reports model-drift; a restart keeps the calibration."""
    config = _config(tmp_path)
    lane = IndependentLane(11)
    running = _drive(config, lane, 1000, 0)
    health = running.service.health()
    rate_metric = running.value("lanewatch_model_finding_rate", lane="lane1")
    drift_metric = running.value("lanewatch_model_drift", lane="lane1")
    running.close()
    with Journal(str(tmp_path / "journal.db"), readonly=True) as journal:
        decided = [json.loads(raw) for raw in journal.query_json(lane="lane1", limit=10_000)]
    assert len(decided) == 1000 and all(decision.problems(d) is None for d in decided)
    assert all(d["end_reason"] == "gx" and not d["incomplete"] for d in decided)
    models = [d["model"] for d in decided]
    ordinary = [d["model"] for d in decided if d["verdict"] != "ALARM"]
    # warm-up: the first 100 ordinary vehicles have no score and no finding
    warm = [m for m in models if m["calibration"] == "warming-up"]
    assert len(warm) >= 100 and models[: len(warm)] == warm
    assert all(m["score"] is None and m["finding"] is False for m in warm)
    calibrated = [m for m in ordinary if m["calibration"] == "lane"]
    assert len(calibrated) > 800
    nominal = 10**-config.model.finding_threshold
    findings = sum(m["finding"] for m in calibrated) / len(calibrated)
    raw = sum(m["raw_score"] >= config.model.finding_threshold for m in calibrated) / len(calibrated)
    print(f"finding rate {findings:.3f} (nominal {nominal}), model's own score {raw:.3f}")
    assert nominal / 2 <= findings <= 2 * nominal
    assert not nominal / 2 <= raw <= 2 * nominal, "this traffic should be unlike the training traffic"
    assert rate_metric == pytest.approx(np.mean([m["finding"] for m in ordinary[-400:]]), abs=0.02)
    assert drift_metric == 1 and "model-drift" in health["lanes"]["lane1"]["faults"]
    assert health["model"]["state_problem"] == ""

    # restart: the calibration is read back, so the next vehicles are scored at once, against the same window
    before = calibrated[-1]["calibration_occupancies"]
    running = _drive(config, lane, 5, 1000)
    assert running.value("lanewatch_model_calibration_occupancies", lane="lane1") == 400
    running.close()
    with Journal(str(tmp_path / "journal.db"), readonly=True) as journal:
        after = [json.loads(raw)["model"] for raw in journal.query_json(lane="lane1", limit=10_000)[1000:]]
    assert len(after) == 5 and before == 400
    assert all(m["calibration"] == "lane" and isinstance(m["score"], float) for m in after)
    assert [m["calibration_occupancies"] for m in after] == [400] * 5
