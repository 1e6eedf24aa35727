"""A decision's plotted data on one metres-from-the-front axis: radiation profile, neutrons, image, findings.

Shared by the console's detail page, the evidence bundle and ``lanewatch evidence``.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from lanewatch.edge.decisions.decision import Alarm, Decision, ImageProfile, Numbers, Registration

WHOLE_IMAGE = frozenset({"image-too-dark"})
"""Findings about the whole image, not a place on the vehicle: drawn as a condition of the image, never as a line
at a location (``image-too-dark`` carries the middle of its darkest stretch, but the whole image is what fails)."""
SCALE_REACH = 1.0
"""A threshold within this many data spans of a panel's data is taken into its value range; a farther one would
flatten the data, so it is drawn clipped at the panel's edge with its value."""


class Located(msgspec.Struct, frozen=True):
    """A located entry of ``alarms``, as the figures draw it."""

    reason: str
    alarm: bool
    location_m: float
    """Where (m on the figure's axis)."""
    location_sd_m: float | None
    """Its standard deviation (m)."""


def findings(decision: Decision) -> list[Located]:
    """Located entries of ``alarms``: reason, alarm flag, location and its standard deviation (m)."""
    return [
        Located(a.reason, a.alarm, a.location_m, a.location_sd_m)
        for a in decision.alarms
        if a.location_m is not None and a.reason not in WHOLE_IMAGE
    ]


def too_dark(decision: Decision) -> Alarm | None:
    """The decision's ``image-too-dark`` entry (share of the load that is dark, its limit), or None."""
    return next((a for a in decision.alarms if a.reason == "image-too-dark"), None)


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


class RadiationPlot(msgspec.Struct, kw_only=True):
    """The gamma panels: counts and test statistics per sample, at ``location_m``."""

    dt_s: float | None
    """Sample interval (s)."""
    speed_kmh: float | None
    location_m: list[float]
    """Each sample's place (m); empty without a speed."""
    gross: Numbers
    expected: Numbers
    mf_z: Numbers
    shape_z: Numbers
    side_z: Numbers
    """The side test's z (the first column's share of the gross counts); empty where it did not run."""
    thresholds: list[tuple[float, str]]
    """The test statistics' thresholds (z) and their labels (:func:`z_thresholds`)."""
    notes: list[str]
    """What the statistics panel lacks, in words (:func:`z_notes`)."""


class NeutronPlot(msgspec.Struct, kw_only=True):
    """The neutron panel: counts per neutron sample at ``location_m``."""

    dt_s: float | None
    location_m: list[float]
    counts: Numbers
    expected: float | None
    """Background (counts per sample)."""
    thresholds: list[tuple[float, str]]
    """The neutron test's threshold per sample and its label (:func:`neutron_thresholds`)."""


class ImagePlot(msgspec.Struct, kw_only=True):
    """The X-ray image's part."""

    profile: ImageProfile
    preview_x_m: Numbers | None
    registration: Registration | None
    too_dark: Alarm | None
    """The ``image-too-dark`` entry: the whole image fails, drawn as a frame round it."""


class PlotData(msgspec.Struct, kw_only=True):
    """What the plots of a decision show, on one metres axis."""

    seq: int
    occupancy_id: str
    axis: str
    """What the metres count from (:func:`axis_name`)."""
    radiation: RadiationPlot
    neutron: NeutronPlot
    image: ImagePlot
    findings: list[Located]


def profile_data(decision: Decision) -> PlotData:
    """What the plots show, on the metres-from-the-front axis."""
    profile = decision.profile
    speed = decision.speed_kmh or profile.speed_kmh
    dt = profile.dt_s
    gross = profile.gross or []
    step = speed / 3.6 * dt if speed and dt else None
    radiation = RadiationPlot(
        dt_s=dt,
        speed_kmh=speed,
        location_m=[round((i + 0.5) * step, 3) for i in range(len(gross))] if step else [],
        gross=gross,
        expected=profile.expected or [],
        mf_z=profile.mf_z or [],
        shape_z=profile.shape_z or [],
        side_z=profile.side_z or [],
        thresholds=z_thresholds(decision),
        notes=z_notes(decision),
    )
    neutron_dt = profile.neutron_dt_s
    neutron = profile.neutron or []
    nstep = speed / 3.6 * neutron_dt if speed and neutron_dt else None
    xray = decision.xray
    return PlotData(
        seq=decision.seq,
        occupancy_id=decision.occupancy_id,
        axis=axis_name(decision),
        radiation=radiation,
        neutron=NeutronPlot(
            dt_s=neutron_dt,
            location_m=[round((i + 0.5) * nstep, 3) for i in range(len(neutron))] if nstep else [],
            counts=neutron,
            expected=profile.neutron_expected,
            thresholds=neutron_thresholds(decision),
        ),
        image=ImagePlot(
            profile=(xray.profile if xray is not None else None) or ImageProfile(),
            preview_x_m=xray.preview.x_m if xray is not None and xray.preview is not None else None,
            registration=xray.registration if xray is not None else None,
            too_dark=too_dark(decision),
        ),
        findings=findings(decision),
    )


def _number(value: float | None, otherwise: float | None) -> float | None:
    return value if value is not None else otherwise


SHAPE_SERIES = "shape z (below 0: harder than background)"
"""The shape test's curve by name: its statistic is signed (negative where the counts are harder than background,
positive where softer), while the reasons in words give its size and name the side."""


SIDE_SERIES = "column share z (below 0: second column)"
"""The side test's curve by name: its statistic is signed (positive where the first column's share of the counts
rose, negative where the second's did)."""


def z_thresholds(decision: Decision) -> list[tuple[float, str]]:
    """The thresholds of the test statistics (z) with their labels: the gamma test's, and each two-sided test's (shape:
    negative is harder than background; side: negative is the second column) on the side its statistic lies, both
    sides when it did not cross. A test's entry carries its threshold; without one the profile's (recorded for every
    test that ran)."""
    profile = decision.profile
    entries = {a.reason: a for a in decision.alarms}
    out: list[tuple[float, str]] = []
    gamma_entry = entries.get("gamma")
    gamma = _number(gamma_entry.threshold if gamma_entry else None, profile.gamma_threshold)
    if gamma is not None:
        out.append((float(gamma), f"alarm threshold {gamma:.3g}"))
    two_sided = (
        ("gamma-shape", "shape", profile.shape_threshold, ("softer", "harder")),
        ("gamma-side", "side", profile.side_threshold, ("first column", "second column")),
    )
    for reason, name, recorded, (above, below) in two_sided:
        entry = entries.get(reason)
        threshold = _number(entry.threshold if entry else None, recorded)
        statistic = entry.statistic if entry else None
        if threshold is None:
            continue
        for negative in [statistic < 0] if statistic is not None else [True, False]:
            value = -float(threshold) if negative else float(threshold)
            out.append((value, f"{name} threshold {value:+.3g} ({below if negative else above})"))
    return list(dict.fromkeys(out))


def z_notes(decision: Decision) -> list[str]:
    """What the test-statistics panel lacks, in words: a test that did not run, a threshold not recorded, a
    background estimated from the vehicle itself (and the tests withheld when there was none before it)."""
    profile = decision.profile
    if not profile.gross:
        return ["no gamma samples: the gamma tests did not run"]
    drawn = {label.split()[0] for _, label in z_thresholds(decision)}
    notes = []
    if "no-background" in decision.incomplete:
        notes.append("no background before the vehicle: expected from the vehicle itself, tests withheld")
    elif decision.background is not None and decision.background.origin == "estimated-from-occupancy":
        notes.append("expected from the vehicle itself (no usable background line)")
    if "alarm" not in drawn:
        notes.append("gamma threshold not recorded in this decision")
    if not profile.shape_z:
        notes.append("shape test did not run (gross counts only)")
    elif "shape" not in drawn:
        notes.append("shape threshold not recorded in this decision")
    if profile.side_z and "side" not in drawn:
        notes.append("side threshold not recorded in this decision")
    return notes


def neutron_thresholds(decision: Decision) -> list[tuple[float, str]]:
    """The neutron test's threshold on the counts-per-sample axis, with its label: the window's sum it had to
    reach, as a mean per sample over that window (entries without ``window_s`` have none to draw, nor those of one
    column's tubes, ``side``: the profile plots all tubes)."""
    dt = decision.profile.neutron_dt_s
    out = []
    for a in decision.alarms:
        if a.reason != "neutron" or a.side is not None:
            continue
        threshold, window = a.threshold, a.window_s
        if threshold is not None and window is not None and window > 0 and dt:
            level = threshold * dt / window
            out.append((level, f"alarm threshold {threshold:.0f} counts in {window:g} s ({level:.3g} per {dt:g} s)"))
    return out


def axis_name(decision: Decision) -> str:
    """What the metres count from: the vehicle front, or the scan's first line when its image shows no front."""
    registration = decision.xray.registration if decision.xray is not None else None
    if registration is not None and registration.origin == "first-line":
        return "metres from the scan's first line"
    return "metres behind the vehicle front"
