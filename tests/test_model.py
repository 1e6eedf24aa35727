"""The anomaly model: shipped file, training determinism, ONNX against numpy, refusals, policy, service reload."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from support import service_toml

from lanewatch.edge.config import SHIPPED_MODEL, ModelConfig, parse
from lanewatch.edge.model import features
from lanewatch.edge.model.runtime import ModelError, ModelRunner, apply_policy, load
from lanewatch.models import export, mixture, train

REPO = Path(__file__).resolve().parents[1]
MAX_MODEL_BYTES = 5 << 20
"""The model size budget (bytes)."""


@pytest.fixture(scope="module")
def shipped() -> Any:
    return load(SHIPPED_MODEL)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model retrained from a tiny corpus (the smallest calibration set allowed; two training chunks, one of them
    held back to choose the components)."""
    out = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    train.train(
        seed=7,
        train_vehicles=300,
        calibration_vehicles=1000,
        components=None,
        out=out,
        workers=2,
        date="2026-01-01",
        images=False,
    )
    return out


def _check(model: Any, name: str) -> np.ndarray:
    return np.asarray(json.loads(model.info.metadata["lanewatch.check"])[name]["features"], np.float32)


# ---- the shipped model ------------------------------------------------------------------------------
def test_shipped_model_loads_matches_the_schema_and_fits_the_budget(shipped: Any) -> None:
    assert Path(SHIPPED_MODEL).stat().st_size <= MAX_MODEL_BYTES
    meta = shipped.info.metadata
    assert meta["lanewatch.schema"] == features.SCHEMA_VERSION
    assert json.loads(meta["lanewatch.features"]) == list(features.FEATURE_NAMES)
    assert re.fullmatch(r"gaussian-mixture-[0-9a-f]{12}", shipped.version)
    assert re.fullmatch(r"[0-9a-f]{64}", meta["lanewatch.corpus_sha256"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", meta["lanewatch.trained"])
    corpus = json.loads(meta["lanewatch.corpus"])
    assert set(corpus["train_sources"]) <= {"none", "k40-fertilizer", "ceramics", "tc99m", "i131"}
    held_out = train.HELD_OUT_BASE
    assert max(corpus["train_seeds"] + corpus["calibration_seeds"]) < held_out


def test_shipped_model_orders_benign_below_anomalous(shipped: Any) -> None:
    typical, anomalous = _check(shipped, "typical"), _check(shipped, "anomalous")
    scores = shipped.score_vectors(np.stack([typical, anomalous]))
    assert scores[0] < 2.0 < 3.0 < scores[1]
    # Stronger evidence of a point source scores higher still.
    stronger = anomalous.copy()
    stronger[features.FEATURE_NAMES.index("gross_peak_z")] *= 2
    assert shipped.score_vectors(stronger)[0] > scores[1]


def test_shipped_model_scores_simulated_traffic_in_order(shipped: Any) -> None:
    """Held-out simulated vehicles: ordinary ones mostly below 2, strong unshielded threats above."""
    from lanewatch.models import corpus

    ordinary = corpus.build(corpus.chunks([train.HELD_OUT_BASE + 1], 40, corpus.benign_mix()))
    threats = corpus.build(corpus.chunks([train.HELD_OUT_BASE + 2], 40, {"cs137": 1.0, "co60": 1.0}))
    benign = shipped.score_vectors(ordinary.features)
    assert np.mean(benign < 2.0) > 0.9
    strong = [i for i, d in enumerate(threats.decisions) if d["verdict"] == "ALARM"]
    assert len(strong) > 10
    assert np.median(shipped.score_vectors(threats.features[strong])) > np.quantile(benign, 0.9)


# ---- training ------------------------------------------------------------------------------------
def test_tiny_retraining_is_deterministic_and_valid(tiny: Path, tmp_path: Path) -> None:
    import onnx

    again = tmp_path / "again.onnx"
    train.train(
        seed=7,
        train_vehicles=300,
        calibration_vehicles=1000,
        components=None,
        out=again,
        workers=1,
        date="2026-01-01",
        images=False,
    )
    assert again.read_bytes() == tiny.read_bytes()  # same seed: same file, whatever the worker count
    onnx.checker.check_model(onnx.load(str(tiny)), full_check=True)
    model = load(tiny)
    meta = model.info.metadata
    assert meta["lanewatch.seed"] == "7" and meta["lanewatch.trained"] == "2026-01-01"
    assert json.loads(meta["lanewatch.corpus"])["train_rows"] == 600  # 300 vehicles, windows and gross
    fit = json.loads(meta["lanewatch.fit"])
    chosen, table = fit["per_mode"]["components"], fit["selection"]["held_back_log_likelihood"]
    assert fit["selection"]["candidates"] == list(train.COMPONENT_CANDIDATES) and fit["n_init"] >= 2
    assert len(chosen) == len(table) == 2  # the gross and the windows lanes
    assert chosen == [train.COMPONENT_CANDIDATES[int(np.argmax(row))] for row in table]
    assert int(meta["lanewatch.components"]) == sum(chosen)


def sklearn_fit(u: np.ndarray, k: int, seed: int) -> Any:
    """scikit-learn's own fit of the scaled rows ``u`` with ``k`` components, as :func:`mixture.fit` asks for it."""
    from sklearn.mixture import GaussianMixture
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return GaussianMixture(
            k,
            covariance_type="full",
            reg_covar=mixture.REG_COVAR,
            tol=mixture.TOL,
            n_init=mixture.N_INIT,
            max_iter=200,
            init_params="kmeans",
            random_state=seed,
        ).fit(u)


def test_numpy_scorer_agrees_with_scikit_learn_and_keeps_the_regularisation() -> None:
    """The plain-numpy scorer (the ONNX graph's twin) against GaussianMixture's own log-likelihood."""
    rng = np.random.default_rng(5)
    # Two groups, one of them nearly flat in two features: the regularisation must keep it from collapsing.
    x = np.concatenate([rng.normal(size=(600, 6)), rng.normal(5.0, 1.0, size=(400, 6)) * [1, 1, 1, 1, 1e-4, 1e-4]])
    model = mixture.fit(x, 2, seed=4)
    u = mixture.transform(x, model.loc, model.scale)
    reference = sklearn_fit(u, 2, seed=4)
    np.testing.assert_allclose(mixture.nll(model, x), -reference.score_samples(u), rtol=1e-9, atol=1e-9)
    assert model.converged and 1 <= model.iterations <= 200
    for chol in model.precision_chol:
        covariance = np.linalg.inv(chol @ chol.T)
        assert np.linalg.eigvalsh(covariance).min() >= mixture.REG_COVAR * (1 - 1e-9)
    again = mixture.fit(x, 2, seed=4)
    assert np.array_equal(again.means, model.means) and np.array_equal(again.precision_chol, model.precision_chol)


def test_one_mixture_per_group_is_each_group_fitted_alone() -> None:
    """With ``groups``, each group's components are scikit-learn's fit of that group's rows alone, weighted by its
    share, and a row's likelihood comes from its own group's components (the flags keep the others far away)."""
    rng = np.random.default_rng(8)
    flag = (rng.random(3000) < 0.3).astype(np.float64)
    # The groups differ in a flag and in the shape of the rest: one mixture for both would have to share components.
    x = np.column_stack([flag, rng.normal(size=(3000, 4)) * np.where(flag[:, None] > 0, [3.0, 0.2, 1, 1], 1.0)])
    model = mixture.fit(x, [3, 2], seed=2, groups=flag.astype(np.int64))
    assert model.means.shape == (5, 5) and model.weights.sum() == pytest.approx(1.0)
    # The groups are fitted in separate processes when there are workers: the same numbers.
    parallel = mixture.fit(x, [3, 2], seed=2, groups=flag.astype(np.int64), workers=2)
    assert np.array_equal(parallel.means, model.means) and np.array_equal(parallel.precision_chol, model.precision_chol)
    u = mixture.transform(x, model.loc, model.scale)
    nll = mixture.nll(model, x)
    for g, first, k in ((0, 0, 3), (1, 3, 2)):
        rows = flag == g
        alone = sklearn_fit(u[rows], k, seed=2)
        np.testing.assert_array_equal(model.means[first : first + k], alone.means_)
        np.testing.assert_allclose(model.weights[first : first + k], alone.weights_ * rows.mean(), rtol=1e-12)
        want = -alone.score_samples(u[rows]) - np.log(rows.mean())
        np.testing.assert_allclose(nll[rows], want, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="at least 6 rows in every group"):
        mixture.fit(x, 3, seed=2, groups=np.r_[np.zeros(2995, np.int64), np.ones(5, np.int64)])
    with pytest.raises(ValueError, match="a component count >= 1 for each of the 2 groups"):
        mixture.fit(x, [3], seed=2, groups=flag.astype(np.int64))


def test_selection_scores_held_back_rows_under_each_fit_and_picks_the_likeliest() -> None:
    """Each group's count is the candidate whose fit of the other rows gives its held-back rows the highest mean
    log-likelihood; a group of three clusters is found to need three, not one."""
    rng = np.random.default_rng(11)
    flag = (rng.random(2400) < 0.5).astype(np.float64)
    centres = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 0.0], [0.0, 6.0, 0.0]])[rng.integers(0, 3, 2400)]
    x = np.column_stack([flag, rng.normal(size=(2400, 3)) + np.where(flag[:, None] > 0, centres, 0.0)])
    held = np.arange(2400) >= 1800
    sel = mixture.select(x, held, (1, 3), seed=5, groups=flag.astype(np.int64))
    assert sel.log_likelihood.shape == (2, 2)
    loc, scale = mixture.scaling(x[~held])
    u = mixture.transform(x, loc, scale)
    for g in (0, 1):
        for j, k in enumerate((1, 3)):
            gm = sklearn_fit(u[(flag == g) & ~held], k, seed=5)
            assert sel.log_likelihood[g, j] == pytest.approx(gm.score(u[(flag == g) & held]), rel=1e-12)
    assert sel.chosen[1] == 3 and sel.log_likelihood[1, 1] > sel.log_likelihood[1, 0] + 0.5
    assert sel.chosen == tuple((1, 3)[int(np.argmax(row))] for row in sel.log_likelihood)
    with pytest.raises(ValueError, match="ascending candidates"):
        mixture.select(x, held, (3, 1), seed=5, groups=flag.astype(np.int64))


def test_onnx_graph_computes_what_numpy_computes(tmp_path: Path) -> None:
    """The exported graph against the numpy mixture and calibration curves, on every mode."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3000, features.N_FEATURES)).astype(np.float32)
    flags = [features.FEATURE_NAMES.index(f) for f in export.MODE_FLAGS]
    x[:, flags] = rng.integers(0, 2, size=(3000, len(flags)))
    model = mixture.fit(x[:2000], 3, seed=1)
    nll = mixture.nll(model, x)
    modes = export.mode_index(x, features.FEATURE_NAMES)
    curves = [export.calibrate(np.concatenate([nll[modes == m], nll[modes == m] + 0.1])) for m in range(4)]
    blob = export.build(model, curves, features.FEATURE_NAMES, {}, "test")
    import onnxruntime as ort

    session = ort.InferenceSession(blob)
    probe = np.concatenate([x, x[:50] * 4.0]).astype(np.float32)
    score, got_nll = session.run(["score", "nll"], {"features": probe})
    want_nll = mixture.nll(model, probe)
    np.testing.assert_allclose(got_nll, want_nll, rtol=1e-4, atol=2e-3)
    probe_modes = export.mode_index(probe, features.FEATURE_NAMES)
    want = np.array([curves[m](v) for m, v in zip(probe_modes, want_nll, strict=True)])
    np.testing.assert_allclose(score, want, rtol=1e-4, atol=2e-3)
    assert np.all(np.diff(curves[0](np.linspace(-50, 500, 200))) >= 0)  # scores rise with nll


def test_calibration_reads_as_benign_exceedance() -> None:
    """On the calibration rows themselves, about 1 % score above 2 and 10 % above 1."""
    nll = np.random.default_rng(5).gamma(4.0, 3.0, size=20000)
    curve = export.calibrate(nll)
    s = curve(nll)
    assert np.mean(s >= 1.0) == pytest.approx(0.1, abs=0.01)
    assert np.mean(s >= 2.0) == pytest.approx(0.01, abs=0.002)
    assert np.mean(s >= 3.0) == pytest.approx(0.001, abs=0.0008)  # from the fitted tail


def test_training_refuses_bad_options(tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    assert train.main(["--out", str(out), "--seed", "-1"]) == 2
    assert train.main(["--out", str(out), "--components", "0"]) == 2
    # Choosing the components holds back whole training chunks: one chunk is not enough.
    assert train.main(["--out", str(out), "--train-vehicles", "200", "--no-progress"]) == 2
    with pytest.raises(ValueError, match="calibration needs at least 1000 rows"):
        export.calibrate(np.arange(500.0))
    assert not out.exists()


# ---- refusals ------------------------------------------------------------------------------------
def _rewrite(src: Path, dst: Path, edit: Any) -> Path:
    import onnx

    model = onnx.load(str(src))
    edit(model)
    dst.write_bytes(model.SerializeToString())
    return dst


def _set_meta(model: Any, key: str, value: str) -> None:
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda src, dst: dst.write_bytes(b"not a model"), "not a valid ONNX model"),
        (lambda src, dst: dst.write_bytes(src.read_bytes()[:5000]), "not a valid ONNX model"),
        (lambda src, dst: None, "cannot read"),
        (
            lambda src, dst: _rewrite(src, dst, lambda m: _set_meta(m, "lanewatch.schema", "lanewatch-features/0")),
            r"trained for feature schema 'lanewatch-features/0', this lanewatch computes",
        ),
        (
            lambda src, dst: _rewrite(
                src, dst, lambda m: _set_meta(m, "lanewatch.features", json.dumps(["x", *features.FEATURE_NAMES[1:]]))
            ),
            "feature names differ",
        ),
        (
            lambda src, dst: _rewrite(src, dst, lambda m: m.metadata_props.clear()),
            "not a lanewatch anomaly model",
        ),
        (
            lambda src, dst: _rewrite(src, dst, _perturb_weights),
            "the file is damaged or was altered",
        ),
        (
            lambda src, dst: _wider_model(src, dst),
            rf"input shape \['N', {features.N_FEATURES + 1}\], expected \[N, {features.N_FEATURES}\]",
        ),
    ],
)
def test_bad_model_files_are_refused_with_a_clear_message(
    tiny: Path, tmp_path: Path, damage: Any, message: str
) -> None:
    bad = tmp_path / "bad.onnx"
    damage(tiny, bad)
    with pytest.raises(ModelError, match=message) as info:
        load(bad)
    assert str(bad) in str(info.value)


def _perturb_weights(model: Any) -> None:
    from onnx import numpy_helper

    for i, init in enumerate(model.graph.initializer):
        if init.name == "p_side":
            arr = numpy_helper.to_array(init).copy()
            arr *= 1.01
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, init.name))


def _wider_model(src: Path, dst: Path) -> None:
    """A model of one feature more than the schema, whose metadata claims the schema."""
    import onnx

    names = [*features.FEATURE_NAMES, "extra"]
    x = np.random.default_rng(1).normal(size=(2000, len(names)))
    model = mixture.fit(x, 1, seed=1)
    curve = export.calibrate(mixture.nll(model, x))
    meta = {p.key: p.value for p in onnx.load(str(src)).metadata_props}
    dst.write_bytes(export.build(model, [curve] * 4, names, meta, "wider"))


def test_model_check_command(tiny: Path, tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "lanewatch.edge", "model", "check", str(tiny), "--json"], capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    info = json.loads(ok.stdout)
    assert info["schema"] == features.SCHEMA_VERSION and info["seed"] == "7" and info["inference_p99_us"] > 0
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(tiny.read_bytes()[:-100])
    refused = subprocess.run(
        [sys.executable, "-m", "lanewatch.edge", "model", "check", str(bad)], capture_output=True, text=True
    )
    assert refused.returncode == 1 and "refused" in refused.stderr and str(bad) in refused.stderr


# ---- policy ----------------------------------------------------------------------------------------
def _decision(verdict: str = "CLEAR", alarms: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"lane": "l", "verdict": verdict, "alarms": alarms or [], "end_reason": "gx"}


NORM = {"reason": "norm-consistent", "alarm": False, "statistic": 2.0, "threshold": 1.0}
GAMMA = {"reason": "gamma", "alarm": True, "statistic": 9.0, "threshold": 4.8}


def test_a_rule_alarm_always_stands() -> None:
    cfg = ModelConfig(alarm_threshold=3.0)
    d = apply_policy(_decision("ALARM", [dict(GAMMA)]), 0.1, cfg, "v1")
    assert d["verdict"] == "ALARM" and d["alarms"] == [GAMMA]
    assert d["model"] == {
        "version": "v1",
        "score": 0.1,
        "finding": False,
        "finding_threshold": 2.0,
        "alarm_threshold": 3.0,
        "release_threshold": 2.0,
    }


def test_findings_and_configured_alarms() -> None:
    findings_only = ModelConfig()
    d = apply_policy(_decision(), 5.0, findings_only, "v1")
    assert d["verdict"] == "CLEAR" and d["model"]["finding"] is True and d["alarms"] == []
    d = apply_policy(_decision(), 1.9, findings_only, "v1")
    assert d["model"]["finding"] is False
    alarms_on = ModelConfig(finding_threshold=2.0, alarm_threshold=3.0)
    d = apply_policy(_decision(), 2.5, alarms_on, "v1")
    assert d["verdict"] == "CLEAR" and d["model"]["finding"] is True and d["alarms"] == []
    d = apply_policy(_decision(), 3.0, alarms_on, "v1")
    assert d["verdict"] == "ALARM"
    assert d["alarms"] == [
        {
            "reason": "model-anomaly",
            "alarm": True,
            "statistic": 3.0,
            "threshold": 3.0,
            "location_m": None,
            "model_version": "v1",
        }
    ]


def test_norm_release_is_recommended_only_when_the_model_agrees() -> None:
    cfg = ModelConfig(release_threshold=2.0)
    agreed = apply_policy(_decision(alarms=[dict(NORM)]), 0.5, cfg, "v1")["alarms"][0]
    assert agreed["release_recommended"] is True and agreed["model_agrees"] is True
    refused = apply_policy(_decision(alarms=[dict(NORM)]), 2.5, cfg, "v1")["alarms"][0]
    assert refused["release_recommended"] is False and refused["model_agrees"] is False
    unscored = apply_policy(_decision(alarms=[dict(NORM)]), None, cfg, "v1", "incomplete occupancy")
    assert unscored["alarms"][0]["release_recommended"] is False
    assert unscored["model"]["score"] is None and unscored["model"]["unscored"] == "incomplete occupancy"
    image_says_no = dict(NORM, release_recommended=False)
    assert apply_policy(_decision(alarms=[image_says_no]), 0.5, cfg, "v1")["alarms"][0]["release_recommended"] is False


# ---- the runner in the service ------------------------------------------------------------------
@pytest.fixture(scope="module")
def benign_decision() -> dict[str, Any]:
    """One ordinary vehicle's decision (energy windows), from the corpus generator."""
    from lanewatch.models import corpus

    chunk = corpus.Chunk(train.HELD_OUT_BASE + 3, 1, {"none": 1.0})
    return next(record for _, variant, record in corpus.simulate(chunk) if variant == "windows") | {"lane": "t"}


def _runner(path: str, **kw: Any) -> tuple[ModelRunner, CollectorRegistry]:
    registry = CollectorRegistry()
    runner = ModelRunner(ModelConfig(path=path, **kw), registry)
    runner.start()
    return runner, registry


def test_runner_scores_skips_and_counts(tiny: Path, benign_decision: dict[str, Any]) -> None:
    runner, registry = _runner(str(tiny))
    d = runner.review(copy.deepcopy(benign_decision))
    assert d["model"]["version"] == runner.model.version and isinstance(d["model"]["raw_score"], float)
    assert d["model"]["calibration"] == "warming-up" and d["model"]["score"] is None, "the lane's first vehicle"
    assert registry.get_sample_value("lanewatch_model_calibration_occupancies", {"lane": "t"}) == 1
    incomplete = runner.review(dict(copy.deepcopy(benign_decision), end_reason="stalled", verdict="INCOMPLETE"))
    assert incomplete["model"]["score"] is None and incomplete["verdict"] == "INCOMPLETE"
    assert incomplete["model"]["unscored"] == "ended by stalled"
    empty = copy.deepcopy(benign_decision)
    empty["profile"] = {}
    assert runner.review(empty)["model"]["unscored"] == "no usable profile"
    assert (
        registry.get_sample_value("lanewatch_model_unscored_total", {"lane": "t", "reason": "no usable profile"}) == 1
    )
    disabled = ModelRunner(ModelConfig(path=""), CollectorRegistry())
    disabled.start()
    assert "model" not in disabled.review(copy.deepcopy(benign_decision))


def test_reload_swaps_a_good_file_and_keeps_the_old_model_on_a_bad_one(tiny: Path, tmp_path: Path) -> None:
    live = tmp_path / "live.onnx"
    shutil.copy(tiny, live)
    runner, registry = _runner(str(live))
    first = runner.model.version
    runner.maybe_reload()  # nothing asked: nothing done
    assert registry.get_sample_value("lanewatch_model_reloads_total", {"result": "loaded"}) is None
    shutil.copy(SHIPPED_MODEL, live)
    runner.request_reload()
    runner.maybe_reload()
    assert runner.model.version != first and runner.model.version == load(SHIPPED_MODEL).version
    live.write_bytes(b"garbage")
    runner.request_reload()
    runner.maybe_reload()
    assert runner.model.version == load(SHIPPED_MODEL).version
    assert registry.get_sample_value("lanewatch_model_reloads_total", {"result": "refused"}) == 1
    assert registry.get_sample_value("lanewatch_model_reloads_total", {"result": "loaded"}) == 1
    assert (
        registry.get_sample_value("lanewatch_model_info", {"version": first, "schema": features.SCHEMA_VERSION}) is None
    )


def test_config_model_section_and_readme() -> None:
    cfg = parse('[model]\npath = ""\nalarm_threshold = 3.5\n')
    assert cfg.model.path == "" and cfg.model.alarm_threshold == 3.5
    assert parse("").model.path == SHIPPED_MODEL
    readme = (REPO / "README.md").read_text()
    section = readme.split("### `[model]`", 1)[1].split("\n## ", 1)[0]
    for f in msgspec.structs.fields(ModelConfig):
        assert f"`{f.name}`" in section, f"README [model] table lacks {f.name}"


def test_service_refuses_to_start_with_a_bad_model(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x01garbage")
    proc = subprocess.run(
        [sys.executable, "-m", "lanewatch.edge", "run", "--config", str(_service_config(tmp_path, bad))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert f"configuration error: model {bad}: not a valid ONNX model" in proc.stderr


def _service_config(tmp_path: Path, model: Path) -> Path:
    path = tmp_path / "lanewatch.toml"
    path.write_text(
        service_toml(tmp_path / "journal.db")
        + f"""
        [detection]
        energy_windows_kev = [30, 400, 3000]
        occupancy_hold_in_s = 1.0
        [model]
        path = "{model}"
        [[lanes]]
        id = "lane1"
        """
    )
    return path


@pytest.mark.slow
def test_sighup_reloads_the_model_without_losing_an_occupancy(tiny: Path, tmp_path: Path) -> None:
    """A service process scores simulated passages; SIGHUP swaps in a new model, then refuses a bad one.

    Every occupancy sent is decided, each by the model in place when it ended."""
    import zmq

    from lanewatch.drivers.sim.physics import GAMMA_DT_S, NEUTRON_DT_S, Traffic
    from lanewatch.edge.bus import ingest
    from lanewatch.edge.bus.driver import RecordPublisher
    from lanewatch.edge.bus.records import Kind
    from lanewatch.edge.config import load as load_config
    from lanewatch.edge.decisions.subscriber import AlertSubscriber
    from lanewatch.edge.ops.metrics import DriverMetrics

    live = tmp_path / "live.onnx"
    shutil.copy(tiny, live)
    config_path = _service_config(tmp_path, live)
    config = load_config(config_path)
    log = open(tmp_path / "service.log", "wb")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "lanewatch.edge", "--log-level", "INFO", "run", "--config", str(config_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    ctx = zmq.Context()
    sock = ingest.driver_publisher(ctx, config.bus.ingest)
    sub = None
    try:
        assert ingest.wait_for_subscriber(sock, 120.0), "service did not subscribe"
        pub = RecordPublisher(sock, "lane1", "rpm", DriverMetrics(CollectorRegistry()))
        sub = AlertSubscriber(ctx, config.bus.alerts, config.bus.query, since=0)
        traffic = Traffic(21, windows_kev=[30.0, 400.0, 3000.0], mix={"none": 1.0})
        decisions: list[dict[str, Any]] = []

        def background() -> None:
            for _ in range(3):
                gamma, neutron = traffic.background_reading(1.0)
                pub.emit(Kind.GAMMA_BACKGROUND, counts=np.rint(gamma).astype(np.uint32))
                pub.emit(Kind.NEUTRON_BACKGROUND, counts=np.rint(neutron).astype(np.uint32).reshape(4, 1))

        def passage() -> None:
            p = traffic.next_passage()
            pub.emit(Kind.SPEED, values={"speed_kmh": p.speed_kmh})
            per = round(NEUTRON_DT_S / GAMMA_DT_S)
            for i in range(p.gamma.shape[0]):
                pub.emit(Kind.GAMMA_SCAN, dt_s=GAMMA_DT_S, counts=p.gamma[i].astype(np.uint32))
                if (i + 1) % per == 0 and (i + 1) // per <= p.neutron.shape[0]:
                    pub.emit(
                        Kind.NEUTRON_SCAN, dt_s=NEUTRON_DT_S, counts=p.neutron[(i + 1) // per - 1].astype(np.uint32)
                    )
            pub.emit(Kind.OCCUPANCY_END, values={"device_occupancy": p.index})

        def metrics_text() -> str:
            return urllib.request.urlopen(f"http://{config.service.http}/metrics", timeout=5).read().decode()

        def collect(count: int) -> None:
            deadline = time.monotonic() + 60
            for item in sub.decisions(follow=True, timeout_s=0.5):
                if item is not None:
                    decisions.append(json.loads(sub.journaled))  # as published
                if len(decisions) >= count or time.monotonic() > deadline:
                    return

        background()
        for _ in range(2):
            passage()
        collect(2)
        shutil.copy(SHIPPED_MODEL, tmp_path / "next.onnx")
        os.replace(tmp_path / "next.onnx", live)
        proc.send_signal(signal.SIGHUP)
        for _ in range(2):  # sent straight after the signal: buffered while the model loads
            passage()
        reloaded = 'lanewatch_model_reloads_total{result="loaded"} 1.0'
        deadline = time.monotonic() + 60
        while reloaded not in metrics_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        passage()  # after the reload: scored by the new model
        collect(5)
        live.write_bytes(b"garbage")
        proc.send_signal(signal.SIGHUP)
        for _ in range(2):
            background()
            passage()
        collect(7)
        assert len(decisions) == 7, (tmp_path / "service.log").read_text()
        versions = [d["model"]["version"] for d in decisions]
        old, new = load(tiny).version, load(SHIPPED_MODEL).version
        assert versions[:2] == [old, old] and versions[-2:] == [new, new]
        assert set(versions[2:4]) <= {old, new} and versions[4] == new
        assert all(isinstance(d["model"]["raw_score"], float) for d in decisions)
        metrics = metrics_text()
        assert 'lanewatch_model_reloads_total{result="loaded"} 1.0' in metrics
        assert 'lanewatch_model_reloads_total{result="refused"} 1.0' in metrics
        assert f'lanewatch_model_info{{schema="{features.SCHEMA_VERSION}",version="{new}"}} 1.0' in metrics
    finally:
        if sub is not None:
            sub.close()
        sock.close(linger=0)
        ctx.term()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    text = (tmp_path / "service.log").read_text()
    assert "model reload refused, keeping" in text and "not a valid ONNX model" in text
