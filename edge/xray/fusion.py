"""Registration and fusion: one lane's radiation analysis and its X-ray scan on one axis, and what they say together.

The axis
--------
Every location is in metres behind the vehicle's front (``location_m``), as the radiation analysis
already gives it (:mod:`lanewatch.edge.lane.detect`: the time from the first occupied sample to the evidence, times
the speed; the first sample begins when the front reaches the portal). An image line gets its metres
from the scanner's encoder (vehicle travel, mm), or, without one, from its time stamp times the
portal's speed (``time``), or from its index times the nominal line spacing (``line``). The vehicle
front is the first pair of lines in which at least :data:`FRONT_MIN_FRACTION` of the detector sees
something other than air; it lies between that line and the one before.

Uncertainty (one standard deviation, m), stated in every fused finding:

* image origin: the front lies somewhere between two lines, ``spacing / sqrt(12)``;
* radiation origin: the occupancy starts somewhere in its first sample, ``speed * dt / sqrt(12)``;
* an image object's edges are known to one analysis cell, ``cell / sqrt(12)``;
* a radiation location: the analysis' own ``location_sd_m`` (matched filter width over z); a weak
  hotspot found here gets the same formula, ``hypot(2 standoff / z, speed * dt / sqrt(12))``; a
  location without one (a decision journaled before the neutron tests gave theirs) gets ``source_standoff_m``.

A fused finding's ``location_sd_m`` is where its object lies on the radiation's axis: the object's
edges and the registration of the two axes (both origins), ``hypot(cell, image origin, radiation
origin)``; the registration term dominates, so a finding never claims the image's millimetres
against a profile sampled every ``speed * dt``.

Two locations are co-located when they lie within ``colocation_sigma`` times the root sum of squares
of these. Speed is taken as constant through the passage; with the ``time`` method a speed error
scales every image position.

Image analysis
--------------
The imaging pipeline (:mod:`lanewatch.kernels.imaging`) classifies each pixel by its dual-energy ratio, but a
shield inside a load is seen *through* the load: the ratio of the sum is mostly the load's. So the
fusion works on the excess over the load. The scan is reduced to cells of about :data:`GRID_MM`:
the mean attenuation of both energies over the cell's pixels the high energy gets through (at most
the imaging ``a_dark``), the share of the other pixels (``dark``) and the share of air. The load
under each cell is the grey opening of the image along the vehicle over :data:`OBJECT_MAX_M`
(:func:`lanewatch.kernels.morphology.opening_rows`); the excess (image minus opening) of at least
:data:`EXCESS_MIN` in cells that are not dark forms objects (4-connected), and an object's material
is its excess ratio ``sum(excess low) / sum(excess high)`` against the imaging thresholds: below
``r_metal`` it attenuates like high-Z. Its lead-equivalent
thickness is the mean high-energy excess over lead's attenuation per mm (:data:`LEAD_ATT_PER_MM`).
A single-energy image has no ratio: its objects are ``dense`` of unknown material, never high-Z.

Fused findings (``alarms`` entries of the decision; see :mod:`lanewatch.edge.decisions.decision` for the verdict)
----------------------------------------------------------------------------------------------
``shielded-source-suspected`` (alarm)
    A high-Z object large enough to shield a source (``shield_min_area_mm2``, ``shield_min_lead_mm``,
    :data:`SHIELD_MIN_SIZE_MM` along and across) co-located with a radiation alarm's location, or with a
    weak hotspot: the gamma matched filter (or the softer-shape test) reaching ``hotspot_z`` at the
    object, below the alarm thresholds. Not with a weak hotspot when the radiation analysis released the
    excess as ``norm-consistent``: that release found no point source on top of the spread load anywhere
    in the vehicle, so the matched filter's peak there is the load's plateau, not a localized source.
``image-review`` (alarm)
    Such an object with no radiation excess at it: the image must be looked at.
``norm-consistent`` (the radiation analysis' own entry, released)
    gains ``release_recommended``: true when the image agrees that the excess lies over homogeneous
    low-Z bulk cargo. Over the load (the entry's extent around its location): the dual-energy ratio
    of the cells holding cargo (:data:`LOAD_MIN`) at least the imaging ``r_inorganic`` (organic or
    inorganic), the mean attenuation of its :data:`HOMOGENEITY_BIN_M` stretches spread by at most
    :data:`HOMOGENEITY_MAX` (interquartile range over median), less than ``too_dark_fraction`` of
    it dark, and no high-Z object of shield size in it. ``image`` gives the numbers and what failed.
A radiation test's alarm (gamma, gamma-shape, gamma-side, neutron, neutron-gamma)
    gains ``object``: the nearest listed high-Z or dense image object co-located with its location, whether or not
    it is large enough to shield a source, so that what the image shows there is said with the alarm.
``image-too-dark`` (no alarm)
    At least ``too_dark_fraction`` of the vehicle's image is dark: the image cannot clear the load,
    and says so, with where the longest stretch lies whose height is mostly dark.
"""

from __future__ import annotations

import base64
import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from lanewatch.edge.bus.records import Kind, Record
from lanewatch.edge.config import DetectionConfig, FusionConfig, LaneConfig
from lanewatch.edge.ops.metrics import ServiceMetrics
from lanewatch.edge.xray import imaging
from lanewatch.edge.xray.image import DARK_CELL, ImageObject
from lanewatch.edge.xray.scan import Scan, ScanAssembler
from lanewatch.kernels import imaging as im

FRONT_MIN_FRACTION = 0.01
"""Share of the detector pixels (at least :data:`FRONT_MIN_PX`) not air from which a line shows the vehicle."""
FRONT_MIN_PX = 3
LOAD_MIN = 0.5
"""High-energy attenuation from which a cell counts toward a load's dual-energy ratio (walls alone stay below)."""
HOMOGENEITY_BIN_M = 0.5
"""Length (m) of the stretches whose mean attenuation a homogeneous load keeps about the same."""
HOMOGENEITY_MAX = 0.6
"""Largest spread (interquartile range over median) of a load's per-stretch mean attenuation for NORM release."""
PROFILE_BIN_M = 0.1
"""Bin (m) of the image's attenuation profile in the decision."""
MAX_REGIONS = 20
"""Most dense regions and image objects listed in a decision (the largest)."""
REGION_MIN_MM2 = 10_000.0
"""Smallest dense region of the imaging pipeline listed in a decision (mm^2): 10 cm x 10 cm."""
RADIATION_TESTS = ("gamma", "gamma-shape", "gamma-side", "neutron", "neutron-gamma")
"""The radiation analysis' tests (``alarms`` reasons) whose alarm can have an image object at its place."""
VEHICLE_CELL = 0.5
"""A cell with less than this share of air pixels is part of the vehicle."""
_SQRT12 = math.sqrt(12.0)


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


# ---- registration --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Registration:
    """Image lines on the axis of metres behind the vehicle front (see the module docstring)."""

    method: str
    """``encoder``, ``time`` or ``line``: where the lines' positions come from."""
    position_mm: np.ndarray
    """float64 (lines,): position of each line along the scan (mm), from the method."""
    front_mm: float
    """Scan position (mm) of the origin: the vehicle front, or line 0 when the front was not imaged."""
    front_line: int | None
    """First line showing the vehicle; None when the vehicle was in the beam from line 0 (or never)."""
    rear_line: int | None
    """Last line showing the vehicle; None when the vehicle was still in the beam at the last line (or never)."""
    spacing_mm: float
    """Median line spacing (mm)."""
    sd_m: float | None
    """Standard deviation (m) of the origin; None when the front was not imaged (no common axis)."""
    speed_kmh: float | None = None
    """Speed used by the ``time`` method."""

    @property
    def origin(self) -> str:
        return "vehicle-front" if self.front_line is not None else "first-line"

    def metres(self, line: float) -> float:
        """Position (m from the origin) of a (fractional) line index."""
        lines = np.arange(len(self.position_mm), dtype=np.float64)
        pos = float(np.interp(line, lines, self.position_mm)) if len(lines) > 1 else 0.0
        if len(lines) > 1 and not 0 <= line <= lines[-1]:
            pos += (line - np.clip(line, 0, lines[-1])) * self.spacing_mm
        return (pos - self.front_mm) / 1000.0

    def span_m(self, first: int, last: int) -> tuple[float, float]:
        """Extent (m) of lines ``first``..``last``, from half a line before the first to half a line after the last."""
        return self.metres(first - 0.5), self.metres(last + 0.5)

    def image_length_m(self) -> float | None:
        """Vehicle length (m) imaged from front to rear, when both were seen."""
        if self.front_line is None or self.rear_line is None:
            return None
        return self.metres(self.rear_line + 0.5)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": self.method,
            "origin": self.origin,
            "front_line": self.front_line,
            "rear_line": self.rear_line,
            "line_spacing_mm": _r(self.spacing_mm),
            "front_sd_m": _r(self.sd_m, 4),
        }
        if self.speed_kmh is not None:
            out["speed_kmh"] = _r(self.speed_kmh, 2)
        return out


def register(
    encoder_mm: np.ndarray,
    t_ns: np.ndarray,
    nonair: np.ndarray,
    pixels: int,
    speed_kmh: float,
    nominal_spacing_mm: float,
) -> Registration:
    """Place each image line on the vehicle axis: encoder if it advances, else time x speed, else index x spacing."""
    n = len(nonair)
    encoder_mm = np.asarray(encoder_mm, np.float64)
    t_ns = np.asarray(t_ns, np.int64)
    speed = None
    if (
        n >= 2
        and np.all(np.isfinite(encoder_mm))
        and encoder_mm[-1] > encoder_mm[0]
        and np.all(np.diff(encoder_mm) >= 0)
    ):
        method, pos = "encoder", encoder_mm
    elif n >= 2 and t_ns[-1] > t_ns[0] and np.all(np.diff(t_ns) >= 0):
        method, speed = "time", speed_kmh
        pos = (t_ns - t_ns[0]) / 1e9 * (speed_kmh / 3.6) * 1000.0
    else:
        method, pos = "line", np.arange(n) * nominal_spacing_mm
    spacing = float(np.median(np.diff(pos))) if n >= 2 else nominal_spacing_mm
    seen = nonair >= max(FRONT_MIN_PX, FRONT_MIN_FRACTION * pixels)
    pairs = np.flatnonzero(seen[:-1] & seen[1:])
    front = rear = None
    front_mm, sd = (float(pos[0]) if n else 0.0), None
    if pairs.size:
        first, last = int(pairs[0]), int(pairs[-1]) + 1
        if first > 0:
            front, front_mm = first, float(pos[first - 1] + pos[first]) / 2.0
            sd = float(pos[first] - pos[first - 1]) / 1000.0 / _SQRT12
        rear = last if last < n - 1 else None
    return Registration(method, pos, front_mm, front, rear, spacing, sd, speed)


# ---- fusion --------------------------------------------------------------------------------------
@dataclass
class Fusion:
    """The decision's ``alarms`` (radiation entries, NORM entries completed, then the fused findings) and ``xray``."""

    alarms: list[dict[str, Any]]
    xray: dict[str, Any]


def _norm_released(alarms: list[dict[str, Any]]) -> bool:
    """Whether the radiation analysis released an excess as NORM (a spread load with no point source on it)."""
    return any(a.get("reason") == "norm-consistent" or a.get("released_as") == "norm-consistent" for a in alarms)


def _distance(x: float, span: tuple[float, float]) -> float:
    """Distance (m) from ``x`` to the interval ``span`` (0 inside)."""
    return max(span[0] - x, 0.0, x - span[1])


class _Context:
    """What the findings share: the scan's registration and image, the radiation profile and the settings."""

    def __init__(
        self, analysis: dict[str, Any] | None, scan: Scan, cfg: FusionConfig, detection: DetectionConfig
    ) -> None:
        assert scan.image is not None
        self.cfg = cfg
        self.detection = detection
        self.image = scan.image
        self.grid = scan.image.grid
        profile = analysis["profile"] if analysis else {}
        self.dt_s: float | None = profile.get("dt_s")
        self.speed_kmh = float(profile.get("speed_kmh") or detection.default_speed_kmh)
        self.profile = profile
        self.reg = register(
            scan.encoder_mm, scan.t_ns, self.grid.nonair, scan.pixels, self.speed_kmh, scan.image.spacing_mm
        )
        step = self.speed_kmh / 3.6 * self.dt_s if self.dt_s else 0.0
        self.step_m = step
        self.radiation_origin_sd = step / _SQRT12
        self.cell_sd = self.grid.block_lines * self.reg.spacing_mm / 1000.0 / _SQRT12
        self.common_axis = analysis is not None and self.reg.sd_m is not None
        result = scan.result
        self.profile_lines = result.profile[:, 1] if result is not None and len(result.profile) else np.zeros(0)
        self.class_px = result.class_px if result is not None else {}

    def object_span(self, obj: ImageObject) -> tuple[float, float]:
        return self.reg.span_m(*obj.lines)

    def object_sd(self) -> float:
        """Standard deviation (m) of an object's edges on the image's axis (front and cell)."""
        return math.hypot(self.reg.sd_m or 0.0, self.cell_sd)

    def registered_sd(self) -> float:
        """Standard deviation (m) of an object's place on the radiation's axis: :meth:`object_sd` and the
        radiation origin (the registration of the two axes)."""
        return math.hypot(self.object_sd(), self.radiation_origin_sd)

    def rows(self, span: tuple[float, float]) -> slice:
        """Cell rows whose lines lie in ``span`` (m)."""
        lines = np.arange(self.grid.lines)
        centres = (self.reg.position_mm - self.reg.front_mm) / 1000.0 if self.grid.lines else lines
        inside = lines[(centres >= span[0]) & (centres <= span[1])]
        if not inside.size:
            return slice(0, 0)
        return slice(int(inside[0]) // self.grid.block_lines, int(inside[-1]) // self.grid.block_lines + 1)

    def vehicle_rows(self) -> slice:
        first = self.reg.front_line or 0
        last = self.reg.rear_line if self.reg.rear_line is not None else self.grid.lines - 1
        return slice(first // self.grid.block_lines, last // self.grid.block_lines + 1)

    def object_entry(self, obj: ImageObject) -> dict[str, Any]:
        a, b = self.object_span(obj)
        pitch = self.image.pitch_mm
        return {
            "x_m": [_r(a), _r(b)],
            "lines": list(obj.lines),
            "pixels": list(obj.pixels),
            "z_mm": [_r(obj.pixels[0] * pitch, 1), _r((obj.pixels[1] + 1) * pitch, 1)],
            "material": obj.material,
            "ratio": _r(obj.ratio),
            "excess": _r(obj.excess),
            "max_excess": _r(obj.max_excess),
            "lead_mm": _r(obj.lead_mm, 1),
            "area_mm2": _r(obj.area_mm2, 0),
            "shields": obj.shields(self.cfg),
        }

    # ---- radiation evidence at an object ------------------------------------------------------
    def sample_z(self) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
        """(location m, best z, which test) per gamma sample: the gross matched filter or the softer-shape test."""
        if not self.dt_s:
            return None
        series = [(name, self.profile.get(key)) for name, key in (("gamma", "mf_z"), ("gamma-shape", "shape_z"))]
        series = [(name, np.array([-np.inf if v is None else v for v in z], float)) for name, z in series if z]
        if not series:
            return None
        stack = np.stack([z for _, z in series])
        which = np.argmax(stack, axis=0)
        x = (np.arange(stack.shape[1]) + 0.5) * self.step_m
        return x, stack.max(axis=0), [series[k][0] for k in which]

    def weak_sd(self, z: float) -> float:
        """Location sd (m) of a matched-filter peak of z (the radiation analysis' formula)."""
        return math.hypot(2.0 * self.detection.source_standoff_m / max(abs(z), 1.0), self.step_m / _SQRT12)

    def radiation_sd(self, alarm: dict[str, Any]) -> float:
        """Standard deviation (m) of an alarm's location on the radiation's axis (``source_standoff_m`` without
        one)."""
        return alarm.get("location_sd_m") or self.detection.source_standoff_m

    def colocated(self, alarm: dict[str, Any], obj: ImageObject) -> tuple[float, float] | None:
        """(distance m, standard deviation m of the two places combined) when ``alarm`` alarms at a location
        within ``colocation_sigma`` of ``obj``; else None."""
        if not alarm.get("alarm") or alarm.get("location_m") is None:
            return None
        sd = math.sqrt(self.radiation_sd(alarm) ** 2 + self.radiation_origin_sd**2 + self.object_sd() ** 2)
        d = _distance(float(alarm["location_m"]), self.object_span(obj))
        return (d, sd) if d <= self.cfg.colocation_sigma * sd else None

    def place_objects(self, alarms: list[dict[str, Any]]) -> None:
        """Give each radiation alarm the image object at its place (``object``: the nearest listed high-Z or dense
        object within ``colocation_sigma``), so its reason can say what the image shows there."""
        for alarm in alarms:
            if alarm.get("reason") not in RADIATION_TESTS:
                continue
            near = [(c[0] / c[1], o) for o in self.listed_objects() if (c := self.colocated(alarm, o)) is not None]
            if near:
                alarm["object"] = self.object_entry(min(near, key=lambda pair: pair[0])[1])

    def listed_objects(self) -> list[ImageObject]:
        """The high-Z and dense objects the decision lists (:data:`MAX_REGIONS`, the largest and densest first)."""
        objects = (o for o in self.image.objects if o.material in ("high_z", "dense"))
        return sorted(objects, key=lambda o: -o.lead_mm * o.area_mm2)[:MAX_REGIONS]

    def evidence(self, obj: ImageObject, alarms: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The radiation evidence co-located with ``obj``: the closest alarm, else the strongest weak hotspot
        (none when the analysis released its excess as NORM: the hotspot would be the spread load's plateau)."""
        best: dict[str, Any] | None = None
        for alarm in alarms:
            near = self.colocated(alarm, obj)
            if near is not None and (best is None or near[0] / near[1] < best["separation_sigma"]):
                d, sd = near
                best = {
                    "reason": alarm["reason"],
                    "statistic": alarm.get("statistic"),
                    "threshold": alarm.get("threshold"),
                    "location_m": alarm["location_m"],
                    "location_sd_m": _r(self.radiation_sd(alarm)),
                    "separation_m": _r(d),
                    "separation_sigma": _r(d / sd),
                }
        if best is not None or _norm_released(alarms):
            return best
        window = self.window(obj)
        if window is None:
            return None
        x, z, which, near, sd = window
        i = int(near[np.argmax(z[near])])
        if not z[i] >= self.cfg.hotspot_z:
            return None
        d = _distance(float(x[i]), self.object_span(obj))
        return {
            "reason": f"{which[i]} (below threshold)",
            "statistic": _r(z[i]),
            "threshold": self.cfg.hotspot_z,
            "location_m": _r(x[i], 2),
            "location_sd_m": _r(self.weak_sd(float(z[i]))),
            "separation_m": _r(d),
            "separation_sigma": _r(d / sd),
        }

    def window(self, obj: ImageObject) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray, float] | None:
        """The gamma samples co-located with ``obj`` for a hotspot of ``hotspot_z``: :meth:`sample_z`'s arrays,
        the indices of the samples within ``colocation_sigma`` standard deviations, and that deviation (m);
        None without a profile or when no sample is that near."""
        samples = self.sample_z()
        if samples is None:
            return None
        x, z, which = samples
        span = self.object_span(obj)
        sd = math.sqrt(self.weak_sd(self.cfg.hotspot_z) ** 2 + self.radiation_origin_sd**2 + self.object_sd() ** 2)
        near = np.flatnonzero([_distance(float(v), span) <= self.cfg.colocation_sigma * sd for v in x])
        return (x, z, which, near, sd) if near.size else None

    def max_z_at(self, obj: ImageObject) -> float | None:
        """Largest gamma z (gross or softer shape) co-located with ``obj``."""
        window = self.window(obj)
        return None if window is None else _r(float(np.max(window[1][window[3]])))

    # ---- findings -----------------------------------------------------------------------------
    def object_findings(self, alarms: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        sd_obj = self.registered_sd() if self.reg.sd_m is not None else None
        for obj in self.image.objects:
            if not obj.shields(self.cfg):
                continue
            a, b = self.object_span(obj)
            common = {
                "alarm": True,
                "location_m": _r(0.5 * (a + b), 2),
                "location_sd_m": _r(sd_obj),
                "object": self.object_entry(obj),
            }
            evidence = self.evidence(obj, alarms) if self.common_axis else None
            if evidence is not None:
                out.append(
                    {
                        "reason": "shielded-source-suspected",
                        "statistic": evidence["statistic"],
                        "threshold": evidence["threshold"],
                        **common,
                        "radiation": evidence,
                    }
                )
            else:
                out.append(
                    {
                        "reason": "image-review",
                        "statistic": _r(obj.lead_mm, 1),
                        "threshold": self.cfg.shield_min_lead_mm,
                        **common,
                        "radiation_z": self.max_z_at(obj) if self.common_axis else None,
                    }
                )
        return out

    def dark(self) -> tuple[float, tuple[float, float] | None]:
        """Share of the vehicle's cells that are dark, and the longest stretch (m) where most of its height is."""
        rows = self.vehicle_rows()
        vehicle = self.grid.air[rows] < VEHICLE_CELL
        dark = vehicle & (self.grid.dark[rows] >= DARK_CELL)
        if not vehicle.any():
            return 0.0, None
        share = dark.sum(axis=1) / np.maximum(vehicle.sum(axis=1), 1)
        mostly = np.concatenate([[False], share >= 0.5, [False]])
        edges = np.flatnonzero(np.diff(mostly.astype(np.int8)))
        stretch = None
        if edges.size:
            starts, ends = edges[0::2], edges[1::2]
            k = int(np.argmax(ends - starts))
            first, last = self.grid.row_lines(rows.start + int(starts[k]), rows.start + int(ends[k]) - 1)
            stretch = self.reg.span_m(first, last)
        return float(dark.sum() / vehicle.sum()), stretch

    def dark_finding(self) -> dict[str, Any] | None:
        fraction, stretch = self.dark()
        if fraction < self.cfg.too_dark_fraction:
            return None
        return {
            "reason": "image-too-dark",
            "alarm": False,
            "statistic": _r(fraction),
            "threshold": self.cfg.too_dark_fraction,
            "location_m": None if stretch is None else _r(0.5 * (stretch[0] + stretch[1]), 2),
            "location_sd_m": _r(math.hypot(self.reg.sd_m, self.radiation_origin_sd)) if self.reg.sd_m else None,
            "extent_m": None if stretch is None else [_r(stretch[0], 2), _r(stretch[1], 2)],
        }

    def norm_image(self, entry: dict[str, Any], length_m: float) -> dict[str, Any]:
        """Whether the image shows homogeneous low-Z bulk cargo where a NORM-consistent excess lies."""
        centre = float(entry.get("location_m") or 0.5 * length_m)
        half = 0.5 * float(entry.get("extent") or 1.0) * length_m
        span = (centre - half, centre + half)
        rows = self.rows(span)
        vehicle = self.grid.air[rows] < VEHICLE_CELL
        dark = float((vehicle & (self.grid.dark[rows] >= DARK_CELL)).sum() / max(vehicle.sum(), 1))
        load = vehicle & (self.grid.dark[rows] < DARK_CELL) & (self.grid.high[rows] >= LOAD_MIN)
        high = float(self.grid.high[rows][load].sum())
        ratio = float(self.grid.low[rows][load].sum()) / high if high > 0 and self.grid.energies == 2 else None
        x = (self.reg.position_mm - self.reg.front_mm) / 1000.0
        inside = (x >= span[0]) & (x <= span[1])
        bins = [
            part.mean()
            for part in np.array_split(self.profile_lines[inside], max(1, round(2 * half / HOMOGENEITY_BIN_M)))
            if part.size
        ]
        q25, q50, q75 = np.percentile(bins, [25, 50, 75]) if bins else (0.0, 0.0, 0.0)
        spread = float((q75 - q25) / q50) if q50 > 0 else math.inf
        shields = [
            obj
            for obj in self.image.objects
            if obj.shields(self.cfg) and _distance(0.5 * sum(self.object_span(obj)), span) == 0.0
        ]
        r_low_z = self.image.params.r_inorganic
        checks = {
            "no dual-energy ratio of the load": ratio is None,
            "load attenuates like metal or high-Z": ratio is not None and ratio < r_low_z,
            "load not homogeneous": spread > HOMOGENEITY_MAX,
            "image too dark over the load": dark >= self.cfg.too_dark_fraction,
            "high-Z object in the load": bool(shields),
        }
        return {
            "extent_m": [_r(span[0], 2), _r(span[1], 2)],
            "load_ratio": _r(ratio),
            "load_ratio_min": r_low_z,
            "spread": _r(spread),
            "spread_max": HOMOGENEITY_MAX,
            "dark_fraction": _r(dark),
            "agrees": not any(checks.values()),
            "disagrees_because": [why for why, failed in checks.items() if failed],
        }

    # ---- what the decision shows --------------------------------------------------------------
    def section(self, length_rad: float | None) -> dict[str, Any]:
        reg, image, grid = self.reg, self.image, self.grid
        counts = self.class_px
        total = sum(v for k, v in counts.items() if k != "air")
        objects = self.listed_objects()
        out: dict[str, Any] = {
            "registration": {
                **reg.summary(),
                "radiation_origin_sd_m": _r(self.radiation_origin_sd, 4) if self.dt_s else None,
                "sd_m": _r(math.hypot(reg.sd_m, self.radiation_origin_sd), 4) if self.common_axis else None,
            },
            "vehicle_length_m": {"image": _r(reg.image_length_m(), 2), "radiation": _r(length_rad, 2)},
            "cell_mm": [_r(grid.block_lines * reg.spacing_mm, 1), _r(grid.block_px * image.pitch_mm, 1)],
            "class_fractions": {k: _r(v / total) for k, v in counts.items() if k != "air" and total > 0},
            "dark_fraction": _r(self.dark()[0]),
            "objects": [self.object_entry(o) for o in objects],
            "profile": self.image_profile(),
        }
        if image.preview is not None:
            p = image.preview
            out["preview"] = {
                "png_base64": base64.b64encode(p.png).decode(),
                "width": p.width,
                "height": p.height,
                "x_m": [_r(reg.metres(-0.5)), _r(reg.metres(grid.lines - 0.5))],
                "z_mm": [0.0, _r(grid.pixels * image.pitch_mm, 1)],
                "lines_per_px": _r(p.lines_per_px),
                "pixels_per_px": _r(p.pixels_per_px),
            }
        return out

    def image_profile(self) -> dict[str, Any]:
        """Mean high-energy attenuation of the vehicle per :data:`PROFILE_BIN_M` along the axis."""
        if not self.grid.lines:
            return {"x_m": [], "mean_att": []}
        x = (self.reg.position_mm - self.reg.front_mm) / 1000.0
        profile = self.profile_lines
        edges = np.arange(math.floor(x[0] / PROFILE_BIN_M), math.ceil(x[-1] / PROFILE_BIN_M) + 1) * PROFILE_BIN_M
        if len(edges) < 2:
            edges = np.array([x[0], x[0] + PROFILE_BIN_M])
        sums, _ = np.histogram(x, edges, weights=profile)
        counts, _ = np.histogram(x, edges)
        keep = counts > 0
        centres = 0.5 * (edges[:-1] + edges[1:])
        return {
            "x_m": [_r(v, 2) for v in centres[keep]],
            "mean_att": [_r(v) for v in sums[keep] / counts[keep]],
        }


def fuse(analysis: dict[str, Any] | None, scan: Scan, cfg: FusionConfig, detection: DetectionConfig) -> Fusion:
    """Fuse one occupancy's radiation ``analysis`` (None for a scan without one) with its ``scan``."""
    alarms = [dict(a) for a in analysis["alarms"]] if analysis else []
    xray = scan.summary()
    if scan.image is None or scan.result is None:
        return Fusion(alarms, xray)
    ctx = _Context(analysis, scan, cfg, detection)
    length_rad = None
    if analysis and ctx.dt_s:
        n = len(ctx.profile.get("gross") or [])
        length_rad = max(0.0, n * ctx.dt_s - detection.occupancy_hold_in_s) * ctx.speed_kmh / 3.6
    length = ctx.reg.image_length_m() or length_rad or ctx.reg.metres(ctx.grid.lines - 0.5)
    if ctx.common_axis:
        for entry in alarms:
            if entry.get("reason") == "norm-consistent":
                entry["image"] = ctx.norm_image(entry, length)
                entry["release_recommended"] = entry["image"]["agrees"]
        ctx.place_objects(alarms)
    fused = ctx.object_findings(alarms)
    dark = ctx.dark_finding()
    if dark is not None:
        fused.append(dark)
    xray.update(ctx.section(length_rad))
    xray["regions"] = _regions(scan.result, ctx)
    return Fusion(alarms + fused, xray)


def _regions(result: imaging.ScanResult, ctx: _Context) -> list[dict[str, Any]]:
    """The imaging pipeline's dense regions (largest first) on the vehicle axis, for overlays."""
    out = []
    cell_mm2 = ctx.image.pitch_mm * ctx.reg.spacing_mm
    large = [r for r in result.regions if r.area_px * cell_mm2 >= REGION_MIN_MM2]
    for region in sorted(large, key=lambda r: -r.area_px)[:MAX_REGIONS]:
        a, b = ctx.reg.span_m(*region.lines)
        out.append(
            {
                "x_m": [_r(a), _r(b)],
                "lines": list(region.lines),
                "pixels": list(region.pixels),
                "material": region.material,
                "area_mm2": _r(region.area_px * cell_mm2, 0),
                "mean_att": _r(region.mean_att),
                "max_att": _r(region.max_att),
            }
        )
    return out


@functools.cache
def warm_up() -> None:
    """Load (or compile) the imaging and fusion kernels and the PNG encoder once per process, on a small
    synthetic dual-energy scan with a lead block, so that a lane's first scan is decided as fast as the rest."""
    lines, pixels = 96, 48
    dark, air = np.full((2, pixels), 800.0), np.full((2, pixels), 30000.0)
    att = np.zeros((lines, 2, pixels))
    att[:, :, 8:40] = np.array(im.material_attenuation("water", 40.0)[::-1])[:, None]
    att[40:50, :, 20:28] += np.array(im.material_attenuation("lead", 2.0)[::-1])[:, None]
    raw = im.raw_from_attenuation(att, dark[None], air[None])
    assembler = ScanAssembler(
        LaneConfig(id="warm-up"), DetectionConfig(), FusionConfig(), ServiceMetrics(CollectorRegistry())
    )
    ended: list[Scan] = []
    records = [
        (Kind.XRAY_SCAN_START, None, {"scan_id": 1, "energies": 2, "pixels": pixels}),
        (Kind.XRAY_CALIBRATION, np.repeat(dark[None], 2, 0).astype(np.uint16), {"scan_id": 1, "frame": "dark"}),
        (Kind.XRAY_CALIBRATION, np.repeat(air[None], 2, 0).astype(np.uint16), {"scan_id": 1, "frame": "air"}),
        (
            Kind.XRAY_LINES,
            raw,
            {"scan_id": 1, "first_line": 0, "encoder_mm": list(np.arange(lines) * 5.0), "t_ns": [0] * lines},
        ),
        (Kind.XRAY_SCAN_END, None, {"scan_id": 1, "lines": lines, "missing": 0, "complete": True}),
    ]
    for seq, (kind, counts, values) in enumerate(records):
        rec = Record(
            kind=kind,
            lane="warm-up",
            source="warm-up",
            seq=seq,
            t_wall_ns=seq,
            t_mono_ns=seq,
            counts=counts,
            values=values,
        )
        ended += assembler.on_record(rec, seq)
    fuse(None, ended[0], FusionConfig(), DetectionConfig())
