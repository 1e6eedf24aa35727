"""The anomaly model's input: one fixed-length feature vector per occupancy, from its decision record.

The same function, :func:`extract`, serves training (decisions built offline from simulated passages by
:func:`lanewatch.edge.lane.detect.analyze` and :func:`lanewatch.edge.decisions.decision.build`)
and the lane (the decision the service is
about to journal), so what the model learnt from is exactly what it is shown.

Everything is computed from the decision's ``profile``, ``background``, ``baseline``, ``speed_kmh`` and
``xray`` sections. Counting statistics are turned into z-scores against what the occupancy's own
background predicts, so the benign spread of a feature does not depend on a site's background level,
the vehicle's length or the energy windows chosen. Positions are fractions of the occupancy from the
vehicle's front (the profile resampled to the vehicle), so the cab is near 0 and the rear near 1.

Order, names and units are :data:`FEATURES` (a name, a unit, a meaning per entry); the vector is
float32 in that order. :data:`SCHEMA_VERSION` changes whenever the list or a definition changes, and
the model file records the version it was trained for (a mismatch refuses the model at load).

Blocks
    context (speed, occupancy length), which sensors and windows were there (0/1 flags), shadow
    shielding (fraction of background blocked, per quarter of the vehicle), gross-count excess (z per
    eighth of the vehicle, whole occupancy, near and away from the strongest point, matched-filter
    peak and where it is, the fielded rule's sigma), energy windows (low-window excess z: whole,
    near and away from the peak, per quarter, and the shape test's extremes), neutrons (excess z:
    whole occupancy, best 2 s, near the gamma peak), and the X-ray image: share of the attenuation
    per material class and too dark to see through, attenuation along the vehicle (mean, largest,
    per quarter, near the gamma peak), the objects standing out of the load (count, the largest
    lead-equivalent thickness and area, high-Z area and thickness, how many could shield a source,
    the thickest near the gamma peak), the dense regions (area, largest attenuation), and how the
    image's vehicle length compares with the radiation profile's.

Encodings of absent data
    Without energy windows (K = 1), ``windows_present`` is 0 and every energy-window feature is 0.
    Without neutron samples every neutron feature is 0. A lane without an X-ray scanner, or an
    occupancy the scanner did not image (no ``xray`` section, or one without an attenuation profile),
    has ``image_present`` 0 and every image feature 0. The model is trained on both encodings, so it
    scores a lane without a scanner against ordinary traffic seen without one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lanewatch.kernels.baseline import nsigma_series_ref

SCHEMA_VERSION = "lanewatch-features/1"
"""Name and version of the feature definitions below; recorded in every model file."""

GROSS_BINS = 8
"""Position bins of the gross-count excess profile (eighths of the occupancy)."""
COARSE_BINS = 4
"""Position bins of the shielding and energy-window profiles (quarters of the occupancy)."""
PEAK_HALF_M = 2.5
"""Half-length (m of vehicle) of the stretch around the strongest point counted as "near the peak"."""
NEUTRON_WINDOW_S = 2.0
"""Length (s) of the sliding window of the best neutron excess."""
IMAGE_CLASSES = ("organic", "inorganic", "metal", "high_z", "unresolvable")
"""Material classes (:data:`lanewatch.kernels.imaging.CLASS_NAMES`) whose share of the image is a feature."""


@dataclass(frozen=True)
class Feature:
    """One entry of the vector."""

    name: str
    unit: str
    meaning: str


def _bins(prefix: str, count: int, unit: str, meaning: str) -> list[Feature]:
    return [Feature(f"{prefix}_{i}", unit, f"{meaning}, bin {i + 1} of {count} from the front") for i in range(count)]


FEATURES: tuple[Feature, ...] = (
    # context
    Feature("speed_kmh", "km/h", "vehicle speed"),
    Feature("occupancy_m", "m", "occupancy length: speed times duration (vehicle plus hold-in)"),
    Feature("windows_present", "0/1", "energy windows (K >= 2) were measured"),
    Feature("neutron_present", "0/1", "neutron samples were measured"),
    Feature("image_present", "0/1", "an X-ray image of the occupancy is attached"),
    # shadow shielding
    Feature("suppression_mean", "fraction", "background blocked by the vehicle, whole occupancy"),
    *_bins("suppression", COARSE_BINS, "fraction", "background blocked by the vehicle"),
    # gross counts
    Feature("gross_z", "z", "gross excess over the expected background, whole occupancy"),
    *_bins("gross_z", GROSS_BINS, "z", "gross excess over the expected background"),
    Feature("gross_peak_z", "z", "gross excess within PEAK_HALF_M of the matched-filter peak"),
    Feature("gross_off_peak_z", "z", "gross excess away from the matched-filter peak"),
    Feature("mf_z_max", "z", "largest matched-filter z (point source)"),
    Feature("mf_peak_pos", "fraction", "where the matched-filter peak is, from the front"),
    Feature("fielded_sigma", "sigma", "largest 1 s sigma of the fielded n-sigma rule"),
    # energy windows
    Feature("soft_z", "z", "low-window excess against the background's low fraction, whole occupancy"),
    *_bins("soft_z", COARSE_BINS, "z", "low-window excess against the background's low fraction"),
    Feature("soft_peak_z", "z", "low-window excess within PEAK_HALF_M of the matched-filter peak"),
    Feature("soft_off_peak_z", "z", "low-window excess away from the matched-filter peak"),
    Feature("shape_z_max", "z", "largest shape-test z (softer than background)"),
    Feature("shape_z_min", "z", "smallest shape-test z (harder than background)"),
    # neutrons
    Feature("neutron_z", "z", "neutron excess over background, whole occupancy"),
    Feature("neutron_max_z", "z", "best neutron excess in a NEUTRON_WINDOW_S sliding window"),
    Feature("neutron_peak_z", "z", "neutron excess within PEAK_HALF_M of the gamma peak"),
    # X-ray image (the decision's xray section)
    *[
        Feature(f"image_{c}", "fraction", f"share of the vehicle's attenuation classed {c.replace('_', '-')}")
        for c in IMAGE_CLASSES
    ],
    Feature("image_dark_fraction", "fraction", "share of the vehicle's image too dark to see through"),
    Feature("image_att_mean", "-ln T", "mean high-energy attenuation over the vehicle"),
    Feature("image_att_max", "-ln T", "largest mean attenuation of a profile slice (0.1 m)"),
    *_bins("image_att", COARSE_BINS, "-ln T", "mean high-energy attenuation"),
    Feature("image_objects", "count", "compact objects standing out of the load"),
    Feature("image_object_lead_mm", "mm", "largest lead-equivalent thickness of an object"),
    Feature("image_object_area", "dm^2", "largest object area"),
    Feature("image_high_z_area", "dm^2", "total area of high-Z objects"),
    Feature("image_high_z_lead_mm", "mm", "largest lead-equivalent thickness of a high-Z object"),
    Feature("image_shield_objects", "count", "high-Z objects large enough to shield a source"),
    Feature("image_dense_area", "dm^2", "total area of dense regions (the imaging pipeline's)"),
    Feature("image_dense_max_att", "-ln T", "largest attenuation in a dense region"),
    Feature("image_att_at_peak", "-ln T", "mean attenuation within PEAK_HALF_M of the gamma peak"),
    Feature("image_lead_mm_at_peak", "mm", "largest lead-equivalent thickness of an object near the gamma peak"),
    Feature("image_length_diff_m", "m", "vehicle length in the image minus in the radiation profile"),
)
"""The feature vector, in order."""

FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
N_FEATURES = len(FEATURES)
_INDEX = {name: i for i, name in enumerate(FEATURE_NAMES)}


class FeatureError(ValueError):
    """A decision that cannot be turned into features (no gamma samples, malformed profile); says why."""


def _array(values: Sequence[float | None] | None) -> np.ndarray:
    """A profile list as float64, None (a non-finite value in the record) as NaN."""
    if not values:
        return np.zeros(0)
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _z(observed: float, expected: float) -> float:
    """Poisson excess z of a count total against its expectation (0 when nothing was expected)."""
    return (observed - expected) / math.sqrt(expected) if expected > 0 else 0.0


def _position_bins(n: int, count: int) -> np.ndarray:
    """Bin index of each of ``n`` samples when the occupancy is cut into ``count`` equal parts."""
    return np.minimum(((np.arange(n) + 0.5) / n * count).astype(np.int64), count - 1)


def _binned_sum(values: np.ndarray, bins: np.ndarray, count: int) -> np.ndarray:
    return np.bincount(bins, weights=values, minlength=count)


def _low_fraction(background: Mapping[str, Any], k: int) -> float | None:
    """Fraction of the background's gamma counts in the lowest window (None when unknown)."""
    cps = _array(background.get("gamma_cps"))
    if cps.size == 0 or cps.size % k or not np.all(np.isfinite(cps)):
        return None
    per_window = cps.reshape(-1, k).sum(axis=0)
    total = float(per_window.sum())
    return float(per_window[0]) / total if total > 0 else None


def _soft_z(low: float, gross: float, p0: float) -> float:
    """Binomial z of ``low`` low-window counts among ``gross`` against the background's fraction ``p0``."""
    variance = p0 * (1.0 - p0) * gross
    return (low - p0 * gross) / math.sqrt(variance) if variance > 0 else 0.0


def extract(decision: Mapping[str, Any]) -> np.ndarray:
    """The float32 feature vector (:data:`FEATURES` order) of one decision record.

    Raises :class:`FeatureError` for a decision without gamma samples or with a malformed profile.
    """
    out = np.zeros(N_FEATURES, dtype=np.float64)
    profile = decision.get("profile") or {}
    background = decision.get("background") or {}
    gross = _array(profile.get("gross"))
    expected = _array(profile.get("expected"))
    n = gross.size
    if n == 0:
        raise FeatureError("no gamma samples in the occupancy")
    if expected.size != n:
        raise FeatureError(f"profile 'expected' has {expected.size} samples, 'gross' {n}")
    if not (np.all(np.isfinite(gross)) and np.all(np.isfinite(expected))):
        raise FeatureError("non-finite gamma counts or expectation in the profile")
    dt = profile.get("dt_s")
    speed = decision.get("speed_kmh") or profile.get("speed_kmh")
    if not isinstance(dt, int | float) or not dt > 0:
        raise FeatureError(f"profile dt_s must be a positive number of seconds, got {dt!r}")
    if not isinstance(speed, int | float) or not speed > 0:
        raise FeatureError(f"speed_kmh must be a positive number, got {speed!r}")
    step_m = speed / 3.6 * dt
    out[_INDEX["speed_kmh"]] = speed
    out[_INDEX["occupancy_m"]] = step_m * n

    # shadow shielding: the expectation (shielding-corrected) against the unshielded background
    bins8, bins4 = _position_bins(n, GROSS_BINS), _position_bins(n, COARSE_BINS)
    total_cps = background.get("gamma_total_cps")
    if isinstance(total_cps, int | float) and total_cps > 0:
        open_beam = total_cps * dt
        out[_INDEX["suppression_mean"]] = 1.0 - float(expected.sum()) / (open_beam * n)
        per_bin = _binned_sum(expected, bins4, COARSE_BINS)
        counts = np.bincount(bins4, minlength=COARSE_BINS)
        for i in range(COARSE_BINS):
            if counts[i]:
                out[_INDEX[f"suppression_{i}"]] = 1.0 - per_bin[i] / (open_beam * counts[i])

    # gross counts
    out[_INDEX["gross_z"]] = _z(float(gross.sum()), float(expected.sum()))
    g8, e8 = _binned_sum(gross, bins8, GROSS_BINS), _binned_sum(expected, bins8, GROSS_BINS)
    for i in range(GROSS_BINS):
        out[_INDEX[f"gross_z_{i}"]] = _z(g8[i], e8[i])
    mf = _array(profile.get("mf_z"))
    mf = np.where(np.isfinite(mf), mf, -np.inf) if mf.size == n else np.full(n, -np.inf)
    peak = int(np.argmax(mf)) if np.any(np.isfinite(mf)) else int(np.argmax(gross - expected))
    if np.isfinite(mf[peak]):
        out[_INDEX["mf_z_max"]] = mf[peak]
    out[_INDEX["mf_peak_pos"]] = (peak + 0.5) / n
    half = max(1, math.ceil(PEAK_HALF_M / step_m))
    near = np.zeros(n, dtype=bool)
    near[max(0, peak - half) : peak + half + 1] = True
    out[_INDEX["gross_peak_z"]] = _z(float(gross[near].sum()), float(expected[near].sum()))
    out[_INDEX["gross_off_peak_z"]] = _z(float(gross[~near].sum()), float(expected[~near].sum()))
    sigma = (decision.get("baseline") or {}).get("max_sigma")
    if not (isinstance(sigma, int | float) and math.isfinite(sigma)) and isinstance(total_cps, int | float):
        # The fielded rule was not evaluated (no background from the portal): the model reads the same statistic
        # against the background the occupancy was judged with, as it was trained to.
        n_1s = max(1, round(1.0 / dt))
        sigma = float(nsigma_series_ref(gross, total_cps * n_1s * dt, n_1s).max()) if total_cps > 0 else None
    if isinstance(sigma, int | float) and math.isfinite(sigma):
        out[_INDEX["fielded_sigma"]] = sigma

    _windows(out, profile, background, gross, near, bins4)
    _neutrons(out, profile, (peak + 0.5) * dt, half * dt)
    _image(out, decision.get("xray"), (peak + 0.5) * step_m, step_m * n)
    return out.astype(np.float32)


def _windows(
    out: np.ndarray,
    profile: Mapping[str, Any],
    background: Mapping[str, Any],
    gross: np.ndarray,
    near: np.ndarray,
    bins4: np.ndarray,
) -> None:
    """The energy-window block, in place (left 0 without windows or a known background shape)."""
    windows = profile.get("windows")
    if not windows:
        return
    try:
        win = np.asarray(windows, dtype=np.float64)
    except (TypeError, ValueError):
        raise FeatureError("profile 'windows' is not a table of numbers") from None
    if win.ndim != 2 or win.shape[0] != gross.size or win.shape[1] < 2 or not np.all(np.isfinite(win)):
        raise FeatureError(f"profile 'windows' has shape {win.shape}, expected ({gross.size}, K >= 2)")
    p0 = _low_fraction(background, win.shape[1])
    if p0 is None or not 0.0 < p0 < 1.0:
        return
    low = win[:, 0]
    out[_INDEX["windows_present"]] = 1.0
    out[_INDEX["soft_z"]] = _soft_z(float(low.sum()), float(gross.sum()), p0)
    l4, g4 = _binned_sum(low, bins4, COARSE_BINS), _binned_sum(gross, bins4, COARSE_BINS)
    for i in range(COARSE_BINS):
        out[_INDEX[f"soft_z_{i}"]] = _soft_z(l4[i], g4[i], p0)
    out[_INDEX["soft_peak_z"]] = _soft_z(float(low[near].sum()), float(gross[near].sum()), p0)
    out[_INDEX["soft_off_peak_z"]] = _soft_z(float(low[~near].sum()), float(gross[~near].sum()), p0)
    shape = _array(profile.get("shape_z"))
    shape = shape[np.isfinite(shape)]
    if shape.size:
        out[_INDEX["shape_z_max"]] = max(float(shape.max()), 0.0)
        out[_INDEX["shape_z_min"]] = min(float(shape.min()), 0.0)


def _neutrons(out: np.ndarray, profile: Mapping[str, Any], peak_s: float, half_s: float) -> None:
    """The neutron block, in place (left 0 without neutron samples)."""
    counts = _array(profile.get("neutron"))
    mean = profile.get("neutron_expected")
    dt = profile.get("neutron_dt_s")
    if counts.size == 0 or not isinstance(mean, int | float) or not isinstance(dt, int | float) or not dt > 0:
        return
    if not np.all(np.isfinite(counts)):
        raise FeatureError("non-finite neutron counts in the profile")
    mean = max(float(mean), 1e-3)
    out[_INDEX["neutron_present"]] = 1.0
    out[_INDEX["neutron_z"]] = _z(float(counts.sum()), mean * counts.size)
    m = max(1, min(counts.size, round(NEUTRON_WINDOW_S / dt)))
    sums = np.convolve(counts, np.ones(m), mode="valid")
    out[_INDEX["neutron_max_z"]] = _z(float(sums.max()), mean * m)
    t = (np.arange(counts.size) + 0.5) * dt
    near = np.abs(t - peak_s) <= half_s + 0.5 * dt
    if near.any():
        out[_INDEX["neutron_peak_z"]] = _z(float(counts[near].sum()), mean * int(near.sum()))


def _number(value: Any) -> float:
    """A finite number from the record, else 0."""
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else 0.0


def _span(entry: Mapping[str, Any]) -> tuple[float, float] | None:
    span = entry.get("x_m")
    if isinstance(span, list | tuple) and len(span) == 2 and all(isinstance(v, int | float) for v in span):
        return float(span[0]), float(span[1])
    return None


def _image(out: np.ndarray, xray: Any, peak_m: float, occupancy_m: float) -> None:
    """The X-ray block, in place; left 0 ("no image") without an analysed image."""
    if not isinstance(xray, Mapping):
        return
    profile = xray.get("profile") or {}
    x = _array(profile.get("x_m"))
    att = _array(profile.get("mean_att"))
    if x.size == 0 or x.size != att.size:
        return
    ok = np.isfinite(x) & np.isfinite(att)
    x, att = x[ok], att[ok]
    if x.size == 0:
        return
    out[_INDEX["image_present"]] = 1.0
    fractions = xray.get("class_fractions") or {}
    for c in IMAGE_CLASSES:
        out[_INDEX[f"image_{c}"]] = _number(fractions.get(c))
    out[_INDEX["image_dark_fraction"]] = _number(xray.get("dark_fraction"))
    lengths = xray.get("vehicle_length_m") or {}
    image_length = _number(lengths.get("image"))
    radiation_length = _number(lengths.get("radiation"))
    length = image_length or radiation_length or occupancy_m
    on = (x >= 0.0) & (x <= length)
    vehicle = att[on] if on.any() else att
    out[_INDEX["image_att_mean"]] = float(vehicle.mean())
    out[_INDEX["image_att_max"]] = float(vehicle.max())
    quarter = np.minimum((np.clip(x, 0.0, length) / max(length, 1e-9) * COARSE_BINS).astype(np.int64), COARSE_BINS - 1)
    for i in range(COARSE_BINS):
        sel = on & (quarter == i)
        if sel.any():
            out[_INDEX[f"image_att_{i}"]] = float(att[sel].mean())
    near = np.abs(x - peak_m) <= PEAK_HALF_M
    if near.any():
        out[_INDEX["image_att_at_peak"]] = float(att[near].mean())
    if image_length and radiation_length:
        out[_INDEX["image_length_diff_m"]] = image_length - radiation_length
    objects = [o for o in xray.get("objects") or [] if isinstance(o, Mapping)]
    out[_INDEX["image_objects"]] = float(len(objects))
    lead = [_number(o.get("lead_mm")) for o in objects]
    area = [_number(o.get("area_mm2")) / 1e4 for o in objects]
    high_z = [i for i, o in enumerate(objects) if o.get("material") == "high_z"]
    out[_INDEX["image_object_lead_mm"]] = max(lead, default=0.0)
    out[_INDEX["image_object_area"]] = max(area, default=0.0)
    out[_INDEX["image_high_z_area"]] = sum(area[i] for i in high_z)
    out[_INDEX["image_high_z_lead_mm"]] = max((lead[i] for i in high_z), default=0.0)
    out[_INDEX["image_shield_objects"]] = float(sum(1 for o in objects if o.get("shields") is True))
    at_peak = [
        lead[i]
        for i, o in enumerate(objects)
        if (span := _span(o)) is not None and span[0] - PEAK_HALF_M <= peak_m <= span[1] + PEAK_HALF_M
    ]
    out[_INDEX["image_lead_mm_at_peak"]] = max(at_peak, default=0.0)
    regions = [r for r in xray.get("regions") or [] if isinstance(r, Mapping)]
    out[_INDEX["image_dense_area"]] = sum(_number(r.get("area_mm2")) for r in regions) / 1e4
    out[_INDEX["image_dense_max_att"]] = max((_number(r.get("max_att")) for r in regions), default=0.0)


def describe() -> list[dict[str, str]]:
    """The schema as a list of ``{"name", "unit", "meaning"}`` (for the model card and model metadata)."""
    return [{"name": f.name, "unit": f.unit, "meaning": f.meaning} for f in FEATURES]
