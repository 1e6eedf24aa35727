"""Feature vectors from decision records: order, units, encodings of absent sensors, physical meaning."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lanewatch.edge.model import features
from lanewatch.edge.model.features import FEATURE_NAMES, FeatureError, extract
from lanewatch.models import corpus

CARD = Path(__file__).resolve().parents[1] / "models" / "README.md"


def _decisions(mix: dict[str, float], seed: int, vehicles: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(truth, decision) of simulated vehicles seen with energy windows, through the lane's own code path."""
    chunk = corpus.Chunk(seed, vehicles, mix)
    return [(truth, record) for truth, variant, record in corpus.simulate(chunk) if variant == "windows"]


@pytest.fixture(scope="module")
def benign() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return _decisions({"none": 1.0}, 11, 12)


def _value(vector: np.ndarray, name: str) -> float:
    return float(vector[FEATURE_NAMES.index(name)])


def test_schema_is_fixed_length_unique_and_documented_in_the_model_card() -> None:
    assert len(set(FEATURE_NAMES)) == features.N_FEATURES == len(features.describe())
    assert all(f.unit and f.meaning for f in features.FEATURES)
    card = CARD.read_text()
    assert features.SCHEMA_VERSION in card
    missing = [name for name in FEATURE_NAMES if f"`{name}`" not in card]
    assert not missing, f"models/README.md does not document {missing}"


def test_benign_vectors_are_finite_float32_and_centred(benign: list) -> None:
    vectors = np.array([extract(d) for _, d in benign])
    assert vectors.dtype == np.float32 and vectors.shape == (len(benign), features.N_FEATURES)
    assert np.all(np.isfinite(vectors))
    # Ordinary vehicles: no neutron excess, speed and length as simulated, windows and neutrons present.
    assert abs(np.median(vectors[:, FEATURE_NAMES.index("neutron_z")])) < 2.0
    truth_speed = np.array([t["speed_kmh"] for t, _ in benign])
    np.testing.assert_allclose(vectors[:, FEATURE_NAMES.index("speed_kmh")], truth_speed, rtol=0.02)
    length = np.array([t["length_m"] for t, _ in benign])
    occupancy = vectors[:, FEATURE_NAMES.index("occupancy_m")]
    assert np.all(occupancy >= length - 0.5) and np.all(occupancy <= length + 4.0)
    assert np.all(vectors[:, FEATURE_NAMES.index("windows_present")] == 1)
    assert np.all(vectors[:, FEATURE_NAMES.index("neutron_present")] == 1)
    assert np.all(vectors[:, FEATURE_NAMES.index("image_present")] == 0)
    # Shadow shielding: a vehicle blocks part of the background, never more than a third of it.
    suppression = vectors[:, FEATURE_NAMES.index("suppression_mean")]
    assert np.all(suppression > -0.05) and np.all(suppression < 0.35) and np.median(suppression) > 0.02


def test_a_point_source_is_located_and_concentrated() -> None:
    [(truth, record)] = _decisions({"cs137": 1.0}, 4, 1)
    v = extract(record)
    source = truth["sources"][0]
    assert source["peak_excess_cps"] > 300  # this seed gives a strong source
    where = source["position_m"] / (truth["speed_kmh"] / 3.6 * truth["duration_s"])
    assert abs(_value(v, "mf_peak_pos") - where) < 0.1
    assert _value(v, "gross_peak_z") > 5.0 and _value(v, "gross_peak_z") > 3 * abs(_value(v, "gross_off_peak_z"))
    # Cs-137 at 662 keV is softer than the background
    assert _value(v, "soft_peak_z") > 2.0 and _value(v, "shape_z_max") > 2.0
    bin_of_source = min(int(where * features.GROSS_BINS), features.GROSS_BINS - 1)
    profile = [_value(v, f"gross_z_{i}") for i in range(features.GROSS_BINS)]
    assert int(np.argmax(profile)) in (bin_of_source - 1, bin_of_source, bin_of_source + 1)


def test_norm_is_spread_and_harder() -> None:
    records = _decisions({"k40-fertilizer": 1.0}, 8, 6)
    _, record = max(records, key=lambda r: r[0]["sources"][0]["peak_excess_cps"])
    v = extract(record)
    assert _value(v, "gross_off_peak_z") > 3.0  # the excess is over the whole load, not one point
    assert _value(v, "soft_z") < 0.0  # K-40 at 1461 keV is harder than the background


def test_gross_portal_encodes_no_windows_as_zeros(benign: list) -> None:
    record = copy.deepcopy(benign[0][1])
    del record["profile"]["windows"], record["profile"]["shape_z"]
    v = extract(record)
    assert _value(v, "windows_present") == 0
    spectral = [n for n in FEATURE_NAMES if n.startswith(("soft_", "shape_"))]
    assert spectral and all(_value(v, n) == 0 for n in spectral)
    full = extract(benign[0][1])
    others = [i for i, n in enumerate(FEATURE_NAMES) if n not in spectral and n != "windows_present"]
    np.testing.assert_array_equal(v[others], full[others])


def test_no_neutrons_and_no_image_encode_as_zeros(benign: list) -> None:
    record = copy.deepcopy(benign[1][1])
    for key in ("neutron", "neutron_expected", "neutron_dt_s", "neutron_total", "neutron_total_expected"):
        record["profile"].pop(key)
    v = extract(record)
    neutron = [n for n in FEATURE_NAMES if n.startswith("neutron_")]
    assert all(_value(v, n) == 0 for n in neutron)
    image = [n for n in FEATURE_NAMES if n.startswith("image_")]
    assert image and all(_value(v, n) == 0 for n in image)
    assert _value(v, "gross_z") == _value(extract(benign[1][1]), "gross_z")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["profile"].update(gross=[]), "no gamma samples"),
        (lambda d: d.pop("profile"), "no gamma samples"),
        (lambda d: d["profile"].update(expected=d["profile"]["expected"][:-1]), "'expected' has"),
        (lambda d: d["profile"]["gross"].__setitem__(0, None), "non-finite"),
        (lambda d: d["profile"].update(dt_s=0), "dt_s must be"),
        (lambda d: d.update(speed_kmh=None) or d["profile"].update(speed_kmh=None), "speed_kmh"),
        (lambda d: d["profile"].update(windows=[[1.0]]), "'windows' has shape"),
        (lambda d: d["profile"].update(windows=[["a", "b"]]), "'windows' is not a table"),
    ],
)
def test_malformed_decisions_are_refused_with_the_reason(benign: list, edit: Any, message: str) -> None:
    record = copy.deepcopy(benign[2][1])
    edit(record)
    with pytest.raises(FeatureError, match=message):
        extract(record)


def test_features_do_not_depend_on_the_background_level(benign: list) -> None:
    """z-scores against the occupancy's own background: the same occupancy at twice the background and
    twice the counts has the same shielding and near the same z times sqrt(2)."""
    record = copy.deepcopy(benign[3][1])
    scaled = copy.deepcopy(record)
    p, b = scaled["profile"], scaled["background"]
    p["gross"] = [2 * x for x in p["gross"]]
    p["expected"] = [2 * x for x in p["expected"]]
    p["windows"] = [[2 * x for x in row] for row in p["windows"]]
    b["gamma_total_cps"] *= 2
    b["gamma_cps"] = [2 * x for x in b["gamma_cps"]]
    v, w = extract(record), extract(scaled)
    for name in ("suppression_mean", "suppression_2", "mf_peak_pos", "speed_kmh"):
        assert _value(w, name) == pytest.approx(_value(v, name), abs=1e-5)
    for name in ("gross_z", "gross_z_3", "soft_z", "soft_z_1"):
        assert _value(w, name) == pytest.approx(np.sqrt(2) * _value(v, name), rel=1e-4, abs=1e-4)


def test_image_block_from_the_fused_decision_of_a_lead_shielded_source() -> None:
    """A lead-shielded Cs-137: the image shows a high-Z object where the radiation peaks; without the image,
    the same vehicle's image block is all zeros and its radiation block the same."""
    seen = {
        variant: (truth, record)
        for truth, variant, record in corpus.simulate(corpus.Chunk(4, 1, {"shielded-cs137": 1.0}))
    }
    assert set(seen) == set(corpus.VARIANTS)
    truth, fused = seen["windows+image"]
    assert truth["sources"][0]["shielding"]["material"] == "lead"
    v, plain = extract(fused), extract(seen["windows"][1])
    image = [i for i, n in enumerate(FEATURE_NAMES) if n.startswith("image_")]
    radiation = [i for i in range(features.N_FEATURES) if i not in image]
    np.testing.assert_array_equal(v[radiation], plain[radiation])
    assert np.all(plain[image] == 0)
    assert _value(v, "image_present") == 1
    fractions = sum(_value(v, f"image_{c}") for c in features.IMAGE_CLASSES)
    assert 0.9 < fractions <= 1.001  # the rest is air seen between the vehicle's parts
    assert _value(v, "image_shield_objects") >= 1 and _value(v, "image_high_z_lead_mm") > 8.0
    assert _value(v, "image_lead_mm_at_peak") == _value(v, "image_high_z_lead_mm")
    assert abs(_value(v, "image_length_diff_m")) < 0.5
    assert 0.0 < _value(v, "image_att_mean") < _value(v, "image_att_max")
    # the gross portal's fused decision has the same image block
    np.testing.assert_array_equal(extract(seen["gross+image"][1])[image], v[image])


def test_an_xray_section_without_an_image_encodes_as_no_image(benign: list) -> None:
    record = copy.deepcopy(benign[4][1])
    for xray in ({"scan_id": 3, "status": "missing"}, {"profile": {"x_m": [], "mean_att": []}}, "junk"):
        record["xray"] = xray
        v = extract(record)
        assert all(_value(v, n) == 0 for n in FEATURE_NAMES if n.startswith("image_"))


def test_the_fielded_sigma_feature_stands_when_the_rule_was_not_evaluated(benign: list) -> None:
    """A decision whose fielded rule was not evaluated (no background from the portal) gives the model the same
    statistic against the background it was judged with, as in training, not a zero."""
    for _, decision in benign[:4]:
        unevaluated = copy.deepcopy(decision)
        unevaluated["baseline"].update(max_sigma=None, not_evaluated="background-rejected")
        unevaluated["baseline_verdict"] = None
        assert decision["baseline"]["max_sigma"] is not None
        expected = _value(extract(decision), "fielded_sigma")
        assert _value(extract(unevaluated), "fielded_sigma") == pytest.approx(expected, abs=2e-3)
