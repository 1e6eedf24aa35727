"""Running background of one lane, from the readings its portal monitor sends while unoccupied.

Gamma readings (cps per channel and energy window) and neutron readings (cps per channel) are averaged
with weights that halve every ``halflife_s`` of monotonic time. A reading is ignored (the update
returns False) when the device flags it as a fault, or when it is far above the current estimate: a
source parked near the lane must not become the background. If readings stay that high for
``reseed_after_s`` the level has really changed (rain washing out radon, moved equipment) and the
estimate restarts from the new readings.

The estimate also keeps its uncertainty, measured from how much the readings scatter around it (so
it covers both counting noise and drift the average lags behind), expressed as an equivalent Poisson
exposure (s): the detection tests use it as the uncertainty of the background itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

FAULT_FLAGS = frozenset({"fault_low", "fault_high"})
"""Record flags that mark a background reading as unusable."""
REJECT_Z = 6.0
"""A reading whose total exceeds the estimate by this many Poisson standard deviations is alarming background."""
NOMINAL_EXPOSURE_S = 1.0
"""Counting time (s) assumed behind one reading until the scatter of readings says otherwise (RPMs report 1 s)."""


@dataclass(frozen=True)
class BackgroundSnapshot:
    """The background handed to one occupancy: read-only copies, None for a sensor never seen.

    ``gamma_cps`` (channels, K) and ``neutron_cps`` (channels,) in counts per second;
    ``gamma_exposure_s`` and ``neutron_exposure_s`` the counting time (s) whose Poisson variance equals
    the estimate's variance (0 when unknown).
    """

    gamma_cps: np.ndarray | None = None
    neutron_cps: np.ndarray | None = None
    gamma_exposure_s: float = 0.0
    neutron_exposure_s: float = 0.0


class _Track:
    """Exponentially weighted mean of one sensor's readings, with the scatter of the readings around it.

    Each accepted reading gets weight 1, decaying by half every ``halflife_s``. ``s1`` and ``s2`` are the
    decayed sums of the weights and of their squares, so ``s1^2 / s2`` readings effectively stand behind
    the mean. ``scatter`` is the weighted mean square of the total's deviation from the estimate before
    each reading (cps^2): Poisson noise of one reading plus whatever drift the mean lags behind. It is
    seeded as the Poisson variance of a reading of ``NOMINAL_EXPOSURE_S``.
    """

    def __init__(self, shape: tuple[int, ...], halflife_s: float, reseed_after_s: float) -> None:
        self.shape = shape
        self.halflife_s = halflife_s
        self.reseed_after_s = reseed_after_s
        self.cps: np.ndarray | None = None
        self.s1 = 0.0
        self.s2 = 0.0
        self.scatter = 0.0
        self.t_accepted_ns = 0
        self.rejected_since_ns: int | None = None

    def update(self, cps: np.ndarray, t_mono_ns: int, flags: Iterable[str], what: str) -> bool:
        reading = np.asarray(cps, dtype=np.float64)
        if reading.shape != self.shape:
            raise ValueError(f"{what} background: expected shape {self.shape}, got {reading.shape}")
        if not np.all(np.isfinite(reading)) or np.any(reading < 0):
            raise ValueError(f"{what} background: counts must be finite and non-negative, got {reading.tolist()}")
        if FAULT_FLAGS.intersection(flags):
            return False
        if self.cps is None:
            self._seed(reading, t_mono_ns)
            return True
        level = float(self.cps.sum())
        deviation = float(reading.sum()) - level
        if deviation > REJECT_Z * math.sqrt(self.scatter):
            if self.rejected_since_ns is None:
                self.rejected_since_ns = t_mono_ns
            if (t_mono_ns - self.rejected_since_ns) / 1e9 < self.reseed_after_s:
                return False
            self._seed(reading, t_mono_ns)
            return True
        self.rejected_since_ns = None
        decay = 0.5 ** (max(t_mono_ns - self.t_accepted_ns, 0) / 1e9 / self.halflife_s)
        self.s1 = decay * self.s1 + 1.0
        self.s2 = decay * decay * self.s2 + 1.0
        self.cps = self.cps + (reading - self.cps) / self.s1
        self.scatter += (deviation * deviation - self.scatter) / self.s1
        self.t_accepted_ns = t_mono_ns
        return True

    def _seed(self, reading: np.ndarray, t_mono_ns: int) -> None:
        self.cps = reading.copy()
        self.s1 = self.s2 = 1.0
        self.scatter = max(float(reading.sum()), 1.0) / NOMINAL_EXPOSURE_S
        self.t_accepted_ns = t_mono_ns
        self.rejected_since_ns = None

    @property
    def exposure_s(self) -> float:
        """Counting time (s) that would give the estimate's variance by Poisson statistics alone."""
        if self.cps is None:
            return 0.0
        variance_of_mean = self.scatter * self.s2 / (self.s1 * self.s1)
        return max(float(self.cps.sum()), 1.0) / max(variance_of_mean, 1e-12)

    def frozen(self) -> np.ndarray | None:
        if self.cps is None:
            return None
        out = self.cps.copy()
        out.flags.writeable = False
        return out


class BackgroundEstimator:
    """Gamma and neutron background of one lane (see the module docstring).

    ``windows`` is K, the energy windows per gamma channel; ``halflife_s`` the half-life of the
    weights; ``reseed_after_s`` (default ten half-lives) how long readings must stay alarming before
    they are taken as the new level.
    """

    def __init__(
        self,
        gamma_channels: int,
        windows: int,
        neutron_channels: int,
        halflife_s: float,
        reseed_after_s: float | None = None,
    ) -> None:
        if gamma_channels < 1 or windows < 1 or neutron_channels < 0 or not halflife_s > 0:
            raise ValueError(
                f"background: need gamma_channels >= 1, windows >= 1, neutron_channels >= 0, halflife_s > 0; got "
                f"{gamma_channels}, {windows}, {neutron_channels}, {halflife_s}"
            )
        reseed = 10.0 * halflife_s if reseed_after_s is None else reseed_after_s
        self._gamma = _Track((gamma_channels, windows), halflife_s, reseed)
        self._neutron = _Track((neutron_channels,), halflife_s, reseed)

    def update_gamma(self, cps: np.ndarray, t_mono_ns: int, flags: Iterable[str] = ()) -> bool:
        """Fold in a gamma reading (channels, K) in cps; False if it was ignored. ValueError on a malformed one."""
        return self._gamma.update(cps, t_mono_ns, flags, "gamma")

    def update_neutron(self, cps: np.ndarray, t_mono_ns: int, flags: Iterable[str] = ()) -> bool:
        """Fold in a neutron reading (channels,) in cps; False if it was ignored. ValueError on a malformed one."""
        return self._neutron.update(cps, t_mono_ns, flags, "neutron")

    @property
    def gamma_cps(self) -> np.ndarray | None:
        """Current gamma background (channels, K) in cps, None before the first accepted reading."""
        return self._gamma.frozen()

    @property
    def neutron_cps(self) -> np.ndarray | None:
        """Current neutron background (channels,) in cps, None before the first accepted reading."""
        return self._neutron.frozen()

    def snapshot(self) -> BackgroundSnapshot:
        """Frozen copy of the current background for one occupancy."""
        return BackgroundSnapshot(
            gamma_cps=self._gamma.frozen(),
            neutron_cps=self._neutron.frozen(),
            gamma_exposure_s=self._gamma.exposure_s,
            neutron_exposure_s=self._neutron.exposure_s,
        )
