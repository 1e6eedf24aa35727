"""Device conventions checked against the data: what a lane's background lines really count.

Portals differ in what their background lines carry (counts per second, or the sum over their reporting
interval of about 5 s) and in how long a neutron scan sample lasts, and nothing on the wire says which. A
wrong guess scales the background a test runs against by a factor: a neutron background taken five times
too high never alarms. So the lane measures, per sensor, the ratio of what the occupancies count to what
the tracked background predicts for them:

- gamma: the 90th percentile of the occupancy's 1 s gross rates over the tracked gross background (the
  least shielded second of a vehicle: the cab, the gap, the hold-in after the rear; shadow shielding keeps
  it a little below 1, never far below);
- neutron: the occupancy's neutron counts per sample over the tracked background's counts per sample (this
  folds in the scan sample's duration too).

The median over the last ``RECENT`` occupancies is the lane's ratio (sources and the ship effect raise a
few; the median ignores them; occupancies the portal itself alarmed on are not taken, so a run of sources does not
make the median). Within ``TOLERANCE`` of 1 (``NOMINAL_GAMMA_RATIO`` for gamma) the
conventions agree (``consistent``). Otherwise, if the ratio matches the background lines holding counts
summed over their observed reporting interval, the lane divides by that interval (``calibrated``); failing
that, the tracked background of that sensor is not used at all and the lane raises the health fault
``calibration-mismatch`` with the ratio: without a gamma background the occupancy is decided as one
without any (INCOMPLETE ``no-background``, its tests' findings kept as evidence, the portal's own alarm
standing), without a neutron background the neutron tests use the occupancy's own level. The portal's own
neutron background, when its end-of-occupancy line carries one (GX field 2), is the first evidence: tracked
over reported is the factor at once, until three occupancies stand alone; nothing says whether that field is all
tubes or the mean per tube, so where the first occupancies point to another known convention, the one testing
against the higher background wins meanwhile.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from lanewatch.edge.lane.background import BackgroundSnapshot

RECENT = 9
"""Occupancies whose ratios are kept; the median of them is the lane's ratio."""
TOLERANCE = 1.6
"""Factor within which a measured ratio agrees with a convention."""
NOMINAL_GAMMA_RATIO = 0.95
"""Typical 90th-percentile gross rate of a vehicle over the unoccupied background (shadow shielding)."""
MIN_NEUTRON_COUNTS = 5.0
"""An occupancy for which the lines, taken as counts per second, predict fewer neutron counts than this says nothing
about the neutron convention."""


def occupancy_ratio(gross: np.ndarray, dt_s: float, background_cps: float) -> float | None:
    """The 90th percentile of an occupancy's 1 s gross rates over ``background_cps`` times ``NOMINAL_GAMMA_RATIO``
    (about 1 when the background is in the occupancy's units); None with less than 1 s of counts."""
    per_second = max(1, round(1.0 / dt_s)) if dt_s > 0 else 0
    if not per_second or gross.size < per_second or not background_cps > 0:
        return None
    rates = np.convolve(gross, np.ones(per_second), mode="valid") / (per_second * dt_s)
    return float(np.quantile(rates, 0.9)) / background_cps / NOMINAL_GAMMA_RATIO


@dataclass
class SensorCalibration:
    """One sensor's convention check: its status, measured ratio and the factor applied to the tracked background."""

    status: str = "warming-up"
    """``warming-up`` (no evidence yet; factor 1), ``consistent``, ``calibrated`` or ``mismatch``."""
    ratio: float | None = None
    """Measured over predicted (median of recent occupancies)."""
    factor: float = 1.0
    """Multiplies the tracked background (cps) before an occupancy uses it."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "ratio": None if self.ratio is None else round(self.ratio, 3),
            "factor": round(self.factor, 4),
        }


class LaneCalibration:
    """The convention checks of one lane's gamma and neutron background (module docstring).

    ``interval_s`` is the lane's background reporting interval (s) until it is measured from the lines
    (:meth:`on_background_line`).
    """

    def __init__(self, interval_s: float = 5.0) -> None:
        self.interval_s = float(interval_s)
        self.gamma = SensorCalibration()
        self.neutron = SensorCalibration()
        self._ratios: dict[str, deque[float]] = {"gamma": deque(maxlen=RECENT), "neutron": deque(maxlen=RECENT)}
        self._last_line_s: float | None = None
        self._steps: deque[float] = deque(maxlen=RECENT)
        self._raw: BackgroundSnapshot | None = None
        self._device_ratio: float | None = None

    # ------------------------------------------------------------------ evidence
    def on_background_line(self, t_s: float) -> None:
        """A background line arrived at ``t_s`` (s, monotonic) while unoccupied: measures the reporting interval.

        The interval is the median of the last ``RECENT`` steps between lines, so the first step already replaces the
        assumed one (a lane whose lines come every 2 s is not divided by 5 while an average creeps down to 2), and a
        sensor calibrated to lines summed over their interval follows it at once."""
        if self._last_line_s is not None:
            step = t_s - self._last_line_s
            if 0.5 <= step <= 30.0:
                self._steps.append(step)
                self.interval_s = float(np.median(self._steps))
                for cal in (self.gamma, self.neutron):
                    if cal.status == "calibrated":
                        cal.factor = 1.0 / self.interval_s
        self._last_line_s = t_s

    def on_occupancy_start(self) -> None:
        """Lines around an occupancy are not evenly spaced: the next interval is not measured."""
        self._last_line_s = None

    def on_device_background(self, neutron_cps: float, tracked: np.ndarray | None) -> None:
        """The portal's own neutron background (GX, cps, all tubes) against the tracked one per tube (as the lines
        carry it)."""
        total = 0.0 if tracked is None else float(np.sum(tracked))
        if neutron_cps > 0 and total > 0:
            self._device_ratio = neutron_cps / total
            self._decide("neutron")

    def background(self, snap: BackgroundSnapshot) -> BackgroundSnapshot:
        """The background an occupancy tests against: the tracked one with each sensor's factor applied, or without
        that sensor where its convention is a mismatch. Remembers ``snap`` for :meth:`observe`."""
        self._raw = snap
        gamma, neutron = snap.gamma_cps, snap.neutron_cps
        out = snap
        if gamma is not None:
            out = replace(
                out,
                gamma_cps=None if self.gamma.status == "mismatch" else gamma * self.gamma.factor,
                gamma_exposure_s=snap.gamma_exposure_s / self.gamma.factor,
            )
        if neutron is not None:
            out = replace(
                out,
                neutron_cps=None if self.neutron.status == "mismatch" else neutron * self.neutron.factor,
                neutron_exposure_s=snap.neutron_exposure_s / self.neutron.factor,
            )
        return out

    def observe(self, gross: np.ndarray, gamma_dt_s: float, neutron: np.ndarray, neutron_dt_s: float) -> None:
        """An ended occupancy's gross counts per gamma sample and neutron counts per sample (all tubes)."""
        raw = self._raw
        if raw is None:
            return
        if raw.gamma_cps is not None:
            ratio = occupancy_ratio(gross, gamma_dt_s, float(raw.gamma_cps.sum()))
            if ratio is not None:
                self._ratios["gamma"].append(ratio)
                self._decide("gamma")
        if raw.neutron_cps is not None and neutron.size and neutron_dt_s > 0:
            predicted = float(raw.neutron_cps.sum()) * neutron_dt_s * neutron.size
            # Evidence where the lines taken as counts per second predict enough counts, whatever factor is applied
            # now: counting it against the factor would keep a wrong 1/interval from meeting the occupancies that
            # refute it (a few counts where a factor 1/interval predicts one, or none where 1 predicts several).
            if predicted >= MIN_NEUTRON_COUNTS:
                self._ratios["neutron"].append(float(neutron.sum()) / predicted)
                self._decide("neutron")

    # ----------------------------------------------------------------- decisions
    def _decide(self, sensor: str) -> None:
        cal: SensorCalibration = getattr(self, sensor)
        ratios = self._ratios[sensor]
        ratio = float(np.median(ratios)) if ratios else None
        if sensor == "neutron" and self._device_ratio is not None and (ratio is None or len(ratios) < 3):
            ratio = self._device_ratio if ratio is None else self._device_or_occupancies(self._device_ratio, ratio)
        if ratio is None or not ratio > 0:
            return
        cal.ratio = ratio
        cal.status, cal.factor = self._convention(ratio)

    def _convention(self, ratio: float) -> tuple[str, float]:
        """The status and factor a measured-over-predicted ``ratio`` stands for."""
        if abs(math.log(ratio)) <= math.log(TOLERANCE):
            return "consistent", 1.0
        if abs(math.log(ratio * self.interval_s)) <= math.log(TOLERANCE):
            return "calibrated", 1.0 / self.interval_s
        return "mismatch", 1.0

    def _device_or_occupancies(self, device: float, occupancies: float) -> float:
        """Of the portal's own neutron background (GX field 2) and the first occupancies, the ratio to go by while
        the occupancies are too few to stand alone.

        Nothing says whether GX field 2 is all tubes or the mean per tube: with 4 tubes the mean per tube reads like
        lines summed over 5 s. So where both point to a known convention but not the same one, the one that tests
        against the higher background wins (a background taken a factor too low alarms on every vehicle; one a
        factor too high only loses sensitivity until the occupancies decide); where the occupancies match no
        convention (a source among the first vehicles), the device's ratio stands."""
        (device_status, device_factor), (status, factor) = self._convention(device), self._convention(occupancies)
        if status == "mismatch" or (device_status != "mismatch" and device_factor >= factor):
            return device
        return occupancies

    @property
    def mismatch(self) -> dict[str, float]:
        """Sensors whose convention matches none known, with their measured ratio."""
        return {
            name: cal.ratio
            for name, cal in (("gamma", self.gamma), ("neutron", self.neutron))
            if cal.status == "mismatch" and cal.ratio is not None
        }

    def as_dict(self) -> dict[str, Any]:
        """What a decision reports: per sensor status, ratio and factor, and the reporting interval (s)."""
        return {
            "gamma": self.gamma.as_dict(),
            "neutron": self.neutron.as_dict(),
            "interval_s": round(self.interval_s, 2),
        }
