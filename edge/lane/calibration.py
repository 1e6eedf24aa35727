"""Device conventions checked against the data: what a lane's background lines really count.

Portals differ in what their background lines carry (counts per second, or the sum over their reporting
interval of about 5 s) and in how long a neutron scan sample lasts, and nothing on the wire says which. A
wrong guess scales the background a test runs against by a factor: a neutron background taken five times
too high never alarms. So the lane measures, per sensor, the ratio of what the occupancies count to what
the tracked background predicts for them:

- gamma: the occupancy's highest 1 s gross rate over the tracked gross background (the least shielded second of a
  vehicle: its front or rear under the panels, the gap, the hold-in; shadow shielding keeps it a little below 1,
  never far below);
- neutron: the occupancy's neutron counts per sample over the tracked background's counts per sample (this
  folds in the scan sample's duration too).

Vehicles move these ratios one way each: a source, a NORM load, a neutron source or the ship effect of a heavy
steel vehicle raises one (without limit), a deep shadow lowers one (by a bounded factor). A convention (lines in
counts per second, factor 1; or summed over their observed reporting interval, factor 1/interval) is refuted only
by what such vehicles cannot make: the lower third of the last ``RECENT`` ratios above it by more than
``TOLERANCE`` (sources among the other two thirds do not lift it), or the upper third below it by more than
``TOLERANCE`` (deep shadows among the other two thirds do not pull it down). Occupancies the portal itself alarmed
on are not taken at all. The convention not refuted is the lane's, the one nearer the median ratio where both stand:
lines in counts per second (``consistent``) or summed over their interval (``calibrated``: the lane divides by it;
the nearer one tells a lane whose lines sum over 2 s from its heavy vehicles' ship effect). When both are refuted,
the tracked background of that sensor is not used and the lane raises the health fault ``calibration-mismatch`` with
the ratio (the median of the recent ratios); it clears once a third of the recent ratios agree with a convention
again. Without a gamma background an occupancy is decided as one without any (INCOMPLETE ``no-background``, its
tests' findings kept as evidence, the portal's own alarm standing); without a neutron background the neutron tests
use the occupancy's own level.

Before ``MIN_OCCUPANCIES`` occupancies a lane whose ratios refute both conventions keeps what it had (counts per
second at first) and raises no fault: two strong sources are not a lane. Lines summed over their interval are
calibrated from the first vehicle all the same (no vehicle counts a fifth of the background). The portal's own
neutron background, when its end-of-occupancy line carries one (GX field 2), is the first evidence: tracked over
reported is the factor at once, until ``MIN_OCCUPANCIES`` occupancies stand alone; nothing says whether that field
is all tubes or the mean per tube, so where the first occupancies point to another known convention, the one testing
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
"""Occupancies whose ratios are kept; the median of them is the lane's ratio. With nine, a convention is refuted only
when seven stand apart from it on the same side, and stands again once three agree with it: a lane's last minutes of
traffic, short enough to follow a portal reconfigured."""
MIN_OCCUPANCIES = 3
"""Occupancies before the lane raises ``calibration-mismatch`` (and before they alone decide the neutron convention
over the portal's own background): with three, the lower and upper thirds are one occupancy each, so one benign vehicle
among two strong sources keeps the convention."""
TOLERANCE = 1.6
"""Factor within which a ratio agrees with a convention. Benign vehicles' least shielded second lies within 0.66-1.16
of the background on an independent generator of five portals and 0.89-1.27 on lanewatch's own simulator variants
(benchmarks/portals.py, drivers/sim/physics.py); 1.6 leaves a factor of 2 (lines summed over 2 s) outside."""
MIN_NEUTRON_COUNTS = 5.0
"""An occupancy for which the lines, taken as counts per second, predict fewer neutron counts than this says nothing
about the neutron convention."""


def occupancy_ratio(gross: np.ndarray, dt_s: float, background_cps: float) -> float | None:
    """An occupancy's highest 1 s gross rate (cps) over ``background_cps``: about 1 when the background is in the
    occupancy's units, its least shielded second; None with less than 1 s of counts."""
    per_second = max(1, round(1.0 / dt_s)) if dt_s > 0 else 0
    if not per_second or gross.size < per_second or not background_cps > 0:
        return None
    rates = np.convolve(gross, np.ones(per_second), mode="valid") / (per_second * dt_s)
    return float(rates.max()) / background_cps


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
        ratios = np.sort(np.fromiter(self._ratios[sensor], dtype=np.float64))
        ratio = float(np.median(ratios)) if ratios.size else None
        decided = self._from_occupancies(ratios) if ratios.size else None
        if sensor == "neutron" and self._device_ratio is not None and ratios.size < MIN_OCCUPANCIES:
            device = self._convention(*[self._device_ratio] * 3)
            if device is not None and (decided is None or device[1] >= decided[1]):
                ratio, decided = self._device_ratio, device
            elif ratio is None:
                ratio = self._device_ratio
        # A ratio of 0 is evidence too: counters that read nothing in occupancies where the lines predict counts.
        if ratio is None or not ratio >= 0:
            return
        cal.ratio = ratio
        if decided is not None:
            cal.status, cal.factor = decided
        elif ratios.size >= MIN_OCCUPANCIES:
            cal.status, cal.factor = "mismatch", 1.0

    def _from_occupancies(self, ratios: np.ndarray) -> tuple[str, float] | None:
        """The convention the sorted occupancy ``ratios`` do not refute (module docstring): the bounds are the
        highest of their lower third and the lowest of their upper third; None where both conventions are refuted."""
        k = math.ceil(ratios.size / 3)
        return self._convention(float(ratios[k - 1]), float(ratios[-k]), float(np.median(ratios)))

    def _convention(self, low: float, high: float, centre: float) -> tuple[str, float] | None:
        """The status and factor of the convention (counts per second, or sums over the reporting interval) that a
        ratio's lower bound ``low`` does not exceed and its upper bound ``high`` does not fall short of by more than
        ``TOLERANCE``, the one nearer ``centre`` where both do; None where neither does."""
        fits = [
            (status, factor)
            for status, factor in (("consistent", 1.0), ("calibrated", 1.0 / self.interval_s))
            if low / factor <= TOLERANCE and high / factor >= 1.0 / TOLERANCE
        ]
        return min(fits, key=lambda fit: abs(math.log(max(centre, 1e-9) / fit[1])), default=None)

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
