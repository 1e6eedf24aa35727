"""A decision's plotted data on one metres-from-the-front axis: radiation profile, neutrons, image, findings.

Shared by the console's detail page, the evidence bundle and ``lanewatch evidence``.
"""

from __future__ import annotations

import math
from typing import Any

WHOLE_IMAGE = frozenset({"image-too-dark"})
"""Findings about the whole image, not a place on the vehicle: drawn as a condition of the image, never as a line
at a location (``image-too-dark`` carries the middle of its darkest stretch, but the whole image is what fails)."""
SCALE_REACH = 1.0
"""A threshold within this many data spans of a panel's data is taken into its value range; a farther one would
flatten the data, so it is drawn clipped at the panel's edge with its value."""


def findings(decision: dict[str, Any]) -> list[dict[str, Any]]:
    """Located entries of ``alarms``: reason, alarm flag, location and its standard deviation (m)."""
    return [
        {
            "reason": a.get("reason"),
            "alarm": bool(a.get("alarm")),
            "location_m": a["location_m"],
            "location_sd_m": a.get("location_sd_m"),
        }
        for a in decision.get("alarms") or []
        if isinstance(a, dict) and isinstance(a.get("location_m"), int | float) and a.get("reason") not in WHOLE_IMAGE
    ]


def too_dark(decision: dict[str, Any]) -> dict[str, Any] | None:
    """The decision's ``image-too-dark`` entry (share of the load that is dark, its limit), or None."""
    return next(
        (a for a in decision.get("alarms") or [] if isinstance(a, dict) and a.get("reason") == "image-too-dark"), None
    )


def stack(spans: list[tuple[float, float]], gap: float = 0.0) -> list[int]:
    """A row (0 first) for each label spanning ``(left, right)``, such that no two labels of a row overlap: in
    order of their left edges, each goes to the first row whose last label ends ``gap`` before it starts."""
    ends: list[float] = []
    rows = [0] * len(spans)
    for i in sorted(range(len(spans)), key=lambda k: spans[k][0]):
        left, right = spans[i]
        row = next((r for r, end in enumerate(ends) if end + gap <= left), len(ends))
        if row == len(ends):
            ends.append(right)
        ends[row] = right
        rows[i] = row
    return rows


Z_REACH = 8.0
"""A test statistic reads against its threshold: a z threshold within this many sigma of the data is taken into
the panel's range even when the data's span is small."""


def value_range(
    values: list[Any], thresholds: list[float] | None = None, from_zero: bool = False, reach: float = 0.0
) -> tuple[float, float]:
    """A panel's value range: its finite ``values`` (and 0 for counts, ``from_zero``), padded by 5%, taking in each
    of ``thresholds`` that lies within :data:`SCALE_REACH` data spans (or ``reach``) of them (a farther one is drawn
    clipped)."""
    finite = [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if from_zero:
        lo = min(lo, 0.0)
    span = hi - lo if hi > lo else max(abs(hi), 1.0)
    margin = max(SCALE_REACH * span, reach)
    near = [t for t in thresholds or [] if lo - margin <= t <= hi + margin]
    lo, hi = min([lo, *near]), max([hi, *near])
    if hi <= lo:
        hi = lo + 1.0
    pad = 0.05 * (hi - lo)
    return (lo if from_zero and lo == 0.0 else lo - pad), hi + pad


def profile_data(decision: dict[str, Any]) -> dict[str, Any]:
    """What the plots show, on the metres-from-the-front axis."""
    profile = decision.get("profile") or {}
    speed = decision.get("speed_kmh") or profile.get("speed_kmh")
    dt = profile.get("dt_s")
    gross = profile.get("gross") or []
    step = speed / 3.6 * dt if speed and dt else None
    radiation = {
        "dt_s": dt,
        "speed_kmh": speed,
        "location_m": [round((i + 0.5) * step, 3) for i in range(len(gross))] if step else [],
        **{key: profile.get(key) or [] for key in ("gross", "expected", "mf_z", "shape_z")},
    }
    neutron_dt = profile.get("neutron_dt_s")
    neutron = profile.get("neutron") or []
    nstep = speed / 3.6 * neutron_dt if speed and neutron_dt else None
    xray = decision.get("xray") or {}
    return {
        "seq": decision.get("seq"),
        "occupancy_id": decision.get("occupancy_id"),
        "axis": axis_name(decision),
        "radiation": {**radiation, "thresholds": z_thresholds(decision), "notes": z_notes(decision)},
        "neutron": {
            "dt_s": neutron_dt,
            "location_m": [round((i + 0.5) * nstep, 3) for i in range(len(neutron))] if nstep else [],
            "counts": neutron,
            "expected": profile.get("neutron_expected"),
            "thresholds": neutron_thresholds(decision),
        },
        "image": {
            "profile": xray.get("profile") or {"x_m": [], "mean_att": []},
            "preview_x_m": (xray.get("preview") or {}).get("x_m"),
            "registration": xray.get("registration"),
            "too_dark": too_dark(decision),
        },
        "findings": findings(decision),
    }


def _number(value: Any, otherwise: Any) -> Any:
    return value if isinstance(value, int | float) else otherwise


SHAPE_SERIES = "shape z (below 0: harder than background)"
"""The shape test's curve by name: its statistic is signed (negative where the counts are harder than background,
positive where softer), while the reasons in words give its size and name the side."""


def z_thresholds(decision: dict[str, Any]) -> list[tuple[float, str]]:
    """The thresholds of the test statistics (z) with their labels: the gamma test's, and the two-sided shape
    test's on the side its statistic lies (negative: harder than background), both sides when it did not cross.
    A test's entry carries its threshold; without one the profile's (recorded for every test that ran)."""
    profile = decision.get("profile") or {}
    entries = {a.get("reason"): a for a in decision.get("alarms") or [] if isinstance(a, dict)}
    out: list[tuple[float, str]] = []
    gamma = _number((entries.get("gamma") or {}).get("threshold"), profile.get("gamma_threshold"))
    if isinstance(gamma, int | float):
        out.append((float(gamma), f"alarm threshold {gamma:.3g}"))
    shape = entries.get("gamma-shape") or {}
    threshold, statistic = _number(shape.get("threshold"), profile.get("shape_threshold")), shape.get("statistic")
    if isinstance(threshold, int | float):
        sides = [statistic < 0] if isinstance(statistic, int | float) else [True, False]
        for harder in sides:
            value = -float(threshold) if harder else float(threshold)
            out.append((value, f"shape threshold {value:+.3g} ({'harder' if harder else 'softer'})"))
    return list(dict.fromkeys(out))


def z_notes(decision: dict[str, Any]) -> list[str]:
    """What the test-statistics panel lacks, in words: a test that did not run, a threshold not recorded."""
    profile = decision.get("profile") or {}
    if not profile.get("gross"):
        return ["no gamma samples: the gamma tests did not run"]
    drawn = {label.split()[0] for _, label in z_thresholds(decision)}
    notes = []
    if "alarm" not in drawn:
        notes.append("gamma threshold not recorded in this decision")
    if not profile.get("shape_z"):
        notes.append("shape test did not run (gross counts only)")
    elif "shape" not in drawn:
        notes.append("shape threshold not recorded in this decision")
    return notes


def neutron_thresholds(decision: dict[str, Any]) -> list[tuple[float, str]]:
    """The neutron test's threshold on the counts-per-sample axis, with its label: the window's sum it had to
    reach, as a mean per sample over that window (entries without ``window_s`` have none to draw)."""
    dt = (decision.get("profile") or {}).get("neutron_dt_s")
    out = []
    for a in decision.get("alarms") or []:
        if not isinstance(a, dict) or a.get("reason") != "neutron":
            continue
        threshold, window = a.get("threshold"), a.get("window_s")
        if isinstance(threshold, int | float) and isinstance(window, int | float) and window > 0 and dt:
            level = threshold * dt / window
            out.append((level, f"alarm threshold {threshold:.0f} counts in {window:g} s ({level:.3g} per {dt:g} s)"))
    return out


def axis_name(decision: dict[str, Any]) -> str:
    """What the metres count from: the vehicle front, or the scan's first line when its image shows no front."""
    registration = (decision.get("xray") or {}).get("registration") or {}
    if registration.get("origin") == "first-line":
        return "metres from the scan's first line"
    return "metres behind the vehicle front"
