"""A lane of ordinary traffic built independently of lanewatch's simulator, for tests of the model's calibration.

Nothing here comes from ``drivers/sim``: other background levels and drift, another shadow model (a cab and a
cargo of 2-6 blocks, each with its own shielding, seen through a detector response of about 1.5 m and with the
two sides of the portal shielded differently), speeds from a log-normal distribution, empty lane before and
after each vehicle at the portal's gate, a neutron rate that rises with the vehicle's mass, and one vehicle in
seven carrying a naturally radioactive load spread over part of its cargo. Gross counts only, as many portals
send. It produces the records a portal monitor driver publishes (the bus contract of
:mod:`lanewatch.edge.bus.records`), so the real service decides its vehicles.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from lanewatch.edge.bus.driver import RecordPublisher
from lanewatch.edge.bus.records import Kind

SAMPLE_S = 0.2
"""Gamma sample length (s), as an RPM sends them."""
NEUTRON_S = 1.0
"""Neutron sample length (s)."""
CHANNELS = 4


@dataclass(frozen=True)
class Vehicle:
    index: int
    speed_kmh: float
    gamma: np.ndarray
    """Counts per sample, (samples, CHANNELS)."""
    neutron: np.ndarray
    """Counts per neutron sample, (samples, CHANNELS)."""
    norm: bool


class IndependentLane:
    """A seeded stream of ordinary vehicles through one portal.

    ``background_cps`` is the gamma background per channel; ``bulk`` multiplies every vehicle's shielding (a
    lane of heavier or lighter loads); ``hot`` adds a flat excess (a fraction of the background) over every
    vehicle, for traffic far from anything the model was trained on.
    """

    def __init__(
        self, seed: int, background_cps: float = 310.0, bulk: float = 1.0, hot: float = 0.0, norm_share: float = 1 / 7
    ) -> None:
        self.rng = np.random.default_rng(seed)
        self.background_cps = background_cps
        self.neutron_cps = 0.9
        self.bulk = bulk
        self.hot = hot
        self.norm_share = norm_share
        self.t_s = 0.0
        self.count = 0

    def _level(self) -> float:
        """Gamma background per channel (cps) now: a slow daily-like swing of 4 %."""
        return self.background_cps * (1.0 + 0.04 * math.sin(self.t_s / 3000.0))

    def background(self) -> tuple[np.ndarray, np.ndarray]:
        """One second of empty lane in cps: gamma (CHANNELS, 1), neutron (CHANNELS, 1)."""
        self.t_s += 1.0
        gamma = self.rng.poisson(self._level(), CHANNELS).reshape(CHANNELS, 1)
        neutron = self.rng.poisson(self.neutron_cps, CHANNELS).reshape(CHANNELS, 1)
        return gamma.astype(np.uint32), neutron.astype(np.uint32)

    def vehicle(self) -> Vehicle:
        rng = self.rng
        self.count += 1
        speed = float(np.clip(rng.lognormal(math.log(6.5), 0.35), 2.5, 15.0))
        step_m = speed / 3.6 * SAMPLE_S
        cab_m = rng.uniform(1.8, 3.2)
        cargo_m = rng.choice([0.0, rng.uniform(3.0, 7.0), rng.uniform(9.0, 16.5)], p=[0.15, 0.35, 0.5])
        gate_m = rng.uniform(0.6, 1.6)  # empty lane seen at each end while the gate is occupied
        length_m = gate_m + cab_m + cargo_m + gate_m
        x = (np.arange(max(4, math.ceil(length_m / step_m))) + 0.5) * step_m
        # shielding profile: cab, then 2-6 blocks of cargo with their own fill
        shield = np.zeros_like(x)
        shield[(x >= gate_m) & (x < gate_m + cab_m)] = rng.uniform(0.04, 0.14)
        mass = 0.1
        if cargo_m > 0:
            edges = np.sort(rng.uniform(0, cargo_m, rng.integers(1, 6)))
            bounds = np.concatenate([[0.0], edges, [cargo_m]]) + gate_m + cab_m
            fill = rng.beta(1.3, 3.0)
            for lo, hi in itertools.pairwise(bounds):
                block = float(np.clip(fill + rng.normal(0, 0.07), 0.0, 0.6))
                shield[(x >= lo) & (x < hi)] = block * 0.55
            mass += fill * cargo_m / 10.0
        shield = np.clip(shield * self.bulk, 0.0, 0.9)
        width = max(1, round(1.5 / step_m))
        shield = np.convolve(np.pad(shield, width, mode="edge"), np.ones(width) / width, mode="same")[width:-width]
        sides = np.clip(1.0 + rng.normal(0, 0.12, 2), 0.6, 1.4)  # the portal's two columns see the load differently
        level = self._level()
        rate = level * (1.0 - np.clip(shield[:, None] * np.repeat(sides, 2)[None, :], 0.0, 0.95))
        norm = bool(rng.random() < self.norm_share)
        on_vehicle = (x >= gate_m) & (x < length_m - gate_m)
        if norm and cargo_m > 0:
            lo = gate_m + cab_m + rng.uniform(0, 0.4) * cargo_m
            hi = lo + rng.uniform(0.4, 0.9) * (gate_m + cab_m + cargo_m - lo)
            rate += (level * rng.uniform(0.04, 0.3) * ((x >= lo) & (x < hi)))[:, None]
        if self.hot:
            rate += (level * self.hot * on_vehicle)[:, None]
        duration_s = len(x) * SAMPLE_S
        self.t_s += duration_s
        gamma = rng.poisson(rate * SAMPLE_S).astype(np.uint32)
        neutron_rate = self.neutron_cps * (1.0 + 0.08 * mass)
        neutron = rng.poisson(neutron_rate * NEUTRON_S, (max(1, int(duration_s // NEUTRON_S)), CHANNELS))
        return Vehicle(self.count, speed, gamma, neutron.astype(np.uint32), norm)

    def gap_seconds(self) -> int:
        """Seconds of empty lane before the next vehicle (background readings, one a second)."""
        return int(self.rng.integers(2, 6))


def publish_background(pub: RecordPublisher, lane: IndependentLane, seconds: int) -> None:
    for _ in range(seconds):
        gamma, neutron = lane.background()
        pub.emit(Kind.GAMMA_BACKGROUND, counts=gamma)
        pub.emit(Kind.NEUTRON_BACKGROUND, counts=neutron)


def publish_vehicle(pub: RecordPublisher, vehicle: Vehicle) -> None:
    """The records of one passage: speed, gamma samples with a neutron sample each second, end of occupancy."""
    pub.emit(Kind.SPEED, values={"speed_kmh": round(vehicle.speed_kmh, 2)})
    per = round(NEUTRON_S / SAMPLE_S)
    for i, row in enumerate(vehicle.gamma):
        pub.emit(Kind.GAMMA_SCAN, dt_s=SAMPLE_S, counts=row.reshape(CHANNELS, 1))
        if (i + 1) % per == 0 and (i + 1) // per <= len(vehicle.neutron):
            pub.emit(Kind.NEUTRON_SCAN, dt_s=NEUTRON_S, counts=vehicle.neutron[(i + 1) // per - 1].reshape(CHANNELS, 1))
    pub.emit(Kind.OCCUPANCY_END, values={"device_occupancy": vehicle.index})


def passages(lane: IndependentLane, pub: RecordPublisher, count: int) -> Iterator[Vehicle]:
    """Publish ``count`` vehicles with empty lane between them; yields each vehicle once it is sent."""
    for _ in range(count):
        publish_background(pub, lane, lane.gap_seconds())
        vehicle = lane.vehicle()
        publish_vehicle(pub, vehicle)
        yield vehicle
