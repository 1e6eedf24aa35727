"""Detection through the real service on portals lanewatch was not built on: an independent lane generator.

Every lane here is a TCP server that speaks the Rapiscan-style line protocol as a portal does; the real
``lanewatch run`` and one real ``lanewatch driver rpm`` per lane read them, in real time. Nothing comes from
lanewatch's own simulator: the physics and the conventions are written here from first principles, and the
conventions deliberately differ from portal to portal, as real ones do:

- background lines every 1, 2 or 5 s, counting per second or summed over their reporting interval; one portal
  sends its first background line at once when a vehicle leaves, the others on their own clock;
- the end of an occupancy: a GX with an incrementing counter (one starting just below the 6-digit wrap), a GX
  whose counter is always 0, or no GX at all (the background line that resumes ends it); GX field 2 the total
  neutron background (x1000), the mean per tube, or 0;
- hold-in after the vehicle left (0-3 s of background-level samples), occupancy sensors ahead of or behind the
  detector plane, a speed line after six samples or just before the end;
- per-channel gains (one panel aged to a quarter of the others), a slow background drift, a neutron background of
  1-5 cps in all, and a ship effect (bursts of neutrons from cosmic spallation in the vehicle's steel);
- the portal's own alarm (GA/NA lines) from its own 1 s n-sigma rule, on some portals only;
- a vehicle's shadow built from its cab, gaps and cargo blocks, each of its own density, seen through a detector
  response about 1-1.5 m wide, upper and lower panels shadowed differently; speeds 3-15 km/h, changing during the
  passage; vehicles that arrive within seconds of the one before, and long gaps.

Vehicles are benign, NORM (a load spread over metres of cargo), or threats: Cs-137, Co-60 and HEU point sources
of several strengths anywhere in the cargo (off-centre, high or low), shielded Cs-137, and a neutron source
with little gamma. Sources are given as the peak excess a centred, unshielded source would make, in standard
deviations of the 1 s gross background, so each lane's strengths scale with its background.

Ground truth is kept per vehicle (its lane, kind, when its first sample and its end were sent, whether the
portal alarmed); decisions are read from the journal and matched to vehicles by time. Printed: decisions
against vehicles (each vehicle exactly one decision: lost, split, merged, phantom, INCOMPLETE and why), benign
false alarms (lanewatch's own tests, and the verdict with the portal's own alarm), detection per kind, NORM
alarms against the fielded rule (``baseline_verdict``), and every vehicle the portal alarmed on whose decision is
not ALARM.

    python -m benchmarks.portals                    # 10 lanes, 11 min, about 280 vehicles
    python -m benchmarks.portals --lanes 4 --minutes 3
    python -m benchmarks.portals --offline 400 --seeds 1-6   # 12,000 vehicles in about a minute

``--offline`` draws the same portals' vehicles without sockets or real time and hands each straight to the
detector (:func:`lanewatch.edge.lane.detect.analyze`, the lines read with the RPM driver's parser) against the
portal's true background (per channel, with its drift; what the service's tracker converges to), so false-alarm
rates can be measured on thousands of benign vehicles. Beside lanewatch and the fielded rule it prints two
detectors that know what no analysis of the counts can: the matched filter of lanewatch's template bank searched
over the occupancy against each vehicle's true expected counts (its shadow known), and the known-signal
likelihood-ratio test (shadow and source profile known), both at the configured gamma false-alarm probability;
the gap between lanewatch and the first is what not knowing the shadow costs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from statistics import NormalDist

import numpy as np

from benchmarks.harness import Deployment
from lanewatch.drivers.rpm import parse_line
from lanewatch.edge.bus.records import Kind
from lanewatch.edge.config import DetectionConfig
from lanewatch.edge.lane.background import BackgroundSnapshot
from lanewatch.edge.lane.detect import analyze, gamma_plan, max_threshold
from lanewatch.kernels.matched import mf_series

GAMMA_DT_S = 0.2
"""A gamma scan line covers 0.2 s (the protocol's)."""
CHANNELS = 4
"""Gamma channels: master upper, master lower, slave upper, slave lower; as many neutron tubes."""
KINDS = ("benign", "norm", "cs137", "co60", "heu", "cs137-shielded", "neutron")
MIX = (0.45, 0.15, 0.09, 0.08, 0.08, 0.08, 0.07)
"""Share of each kind among vehicles."""


@dataclass(frozen=True)
class Portal:
    """One portal's conventions."""

    name: str
    background_cps: tuple[float, ...]
    """Gamma background per channel (cps), unshadowed."""
    neutron_cps: float
    """Neutron background per tube (cps)."""
    line_period_s: float
    """Background lines come this often while unoccupied."""
    line_sums: bool
    """Background lines carry the sum over their period (else counts per second)."""
    gx: str
    """``count`` (incrementing counter), ``zero`` (always 0) or ``none`` (no GX: a background line ends)."""
    gx_neutron: str
    """GX field 2: ``total`` (all tubes, cps x 1000), ``per-tube`` (mean per tube x 1000) or ``zero``."""
    counter_start: int
    hold_in_s: float
    sensor_offset_m: float
    """Where the occupancy beam is, ahead (< 0) of or behind the detector plane (m)."""
    speed_early: bool
    """SP after six gamma samples (else just before the end)."""
    device_alarms: bool
    """The portal sends GA/NA when its own rule alarms."""
    n_sigma: float
    neutron_alarm_counts: int
    """The portal's neutron alarm: one NS line (all tubes) over background by more than this."""
    half_width_m: float
    """Lateral distance from the lane's centre to the panels (m)."""
    response_m: float
    """Half-width of a panel's view of the background along the lane (m)."""


PORTALS = (
    Portal("A", (260, 240, 255, 230), 0.8, 5.0, False, "count", "total", 1, 1.0, -0.4, True, True, 5.0, 12, 2.2, 1.2),
    Portal("B", (410, 380, 100, 390), 0.5, 5.0, True, "count", "zero", 500, 2.5, 0.3, False, True, 5.0, 11, 2.5, 1.4),
    Portal("C", (150, 130, 160, 140), 0.3, 1.0, False, "zero", "zero", 0, 0.0, 0.0, True, False, 5.0, 7, 1.9, 1.0),
    Portal("D", (600, 640, 620, 580), 1.2, 2.0, True, "none", "zero", 0, 1.5, -0.2, False, True, 4.5, 14, 2.4, 1.5),
    Portal(
        "E",
        (330, 300, 310, 350),
        0.7,
        5.0,
        False,
        "count",
        "per-tube",
        999_990,
        3.0,
        0.5,
        True,
        True,
        5.5,
        12,
        2.1,
        1.1,
    ),
)


@dataclass
class Vehicle:
    """One vehicle's ground truth and what the portal sent for it."""

    lane: str
    index: int
    kind: str
    strength_sigma: float
    speed_kmh: float
    length_m: float
    span_m: float = 0.0
    """Length of a NORM load (m)."""
    lines: list[tuple[float, str]] = field(default_factory=list)
    """(offset s from the occupancy start, line) to send."""
    device_alarm: bool = False
    expected_gross: np.ndarray | None = None
    """Expected counts per gamma sample (all channels) without the source: the background under the shadow."""
    source_gross: np.ndarray | None = None
    """Expected counts per gamma sample (all channels) from the source."""
    duration_s: float = 0.0
    sent_start_ns: int = 0
    sent_end_ns: int = 0
    sent: bool = False


def _fmt(kind: str, counts: np.ndarray) -> str:
    return kind + "," + ",".join(f"{min(int(c), 999_999):06d}" for c in counts)


class Generator:
    """A portal's vehicles and background, drawn from one seed."""

    def __init__(self, portal: Portal, lane: str, seed: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.p = portal
        self.lane = lane
        self.rng = np.random.default_rng(seed)
        self.bg = np.asarray(portal.background_cps, dtype=np.float64)
        self.counter = portal.counter_start
        self.count = 0
        self._clock = clock
        self.t0 = clock()

    def drift(self) -> float:
        """The site's slow background drift (radon, weather): a factor near 1."""
        t = self._clock() - self.t0
        return 1.0 + 0.05 * math.sin(t / 170.0) + 0.02 * math.sin(t / 23.0)

    def background_lines(self, period_s: float) -> list[str]:
        """The background lines the portal sends after ``period_s`` unoccupied."""
        scale = period_s if self.p.line_sums else 1.0
        gamma = self.rng.poisson(self.bg * self.drift() * scale)
        neutron = self.rng.poisson(np.full(CHANNELS, self.p.neutron_cps * scale))
        return [_fmt("GB", gamma), _fmt("NB", neutron)]

    def gap_s(self) -> float:
        """Seconds from one vehicle's end to the next one's start: close behind, ordinary, or a lull."""
        rng = self.rng
        return float(
            rng.choice([rng.uniform(0.5, 3.0), rng.uniform(6.0, 25.0), rng.uniform(40.0, 100.0)], p=[0.25, 0.65, 0.1])
        )

    def vehicle(self) -> Vehicle:
        rng = self.rng
        self.count += 1
        kind = str(rng.choice(KINDS, p=MIX))
        speed = float(np.clip(rng.lognormal(math.log(7.0), 0.4), 3.0, 15.0))
        # The vehicle along its length (m from the front): cab, gap, cargo blocks, each with its density.
        cab = rng.uniform(1.8, 3.0)
        cargo = float(rng.choice([0.0, rng.uniform(4.0, 8.0), rng.uniform(10.0, 14.5)], p=[0.1, 0.4, 0.5]))
        length = cab + (rng.uniform(0.4, 1.2) + cargo if cargo else 0.0)
        du = 0.1
        u = np.arange(0.0, length, du)
        density = np.where(u < cab, rng.uniform(0.04, 0.12), 0.01)
        if cargo:
            start = length - cargo
            edges = np.sort(rng.uniform(start, length, int(rng.integers(1, 6))))
            bounds = np.concatenate([[start], edges, [length]])
            for a, b in itertools.pairwise(bounds):
                density[(u >= a) & (u < b)] = rng.choice([0.01, rng.uniform(0.03, 0.1), rng.uniform(0.1, 0.28)])
        density = density + rng.normal(0, 0.01, u.size).clip(-0.01, 0.02)
        # Passage: the front crosses the beam at t = 0; speed changes by up to 25 % along the way.
        v0 = speed / 3.6
        accel = rng.uniform(-0.25, 0.25) * v0 / max(length / v0, 1.0)
        span_m = length + 0.2
        t_pass = _time_to(span_m, v0, accel)
        duration = t_pass + self.p.hold_in_s
        t = np.arange(0.0, duration, GAMMA_DT_S) + GAMMA_DT_S
        travelled = np.array([_dist(min(ti, t_pass), v0, accel) for ti in t])
        travelled[t > t_pass] = span_m + 50.0  # left
        front_x = self.p.sensor_offset_m + travelled  # detector plane at x = 0
        # Shadow at each sample: the vehicle's density seen through a panel's response; lower panels see more.
        x = front_x[:, None] - u[None, :]
        w = self.p.response_m
        kernel = 1.0 / (1.0 + (x / w) ** 2) / (math.pi * w)
        shadow = (kernel * density[None, :]).sum(axis=1) * du * 3.2
        upper, lower = rng.uniform(0.6, 1.0), rng.uniform(0.9, 1.3)
        suppress = np.clip(np.outer(shadow, [upper, lower, upper, lower]), 0.0, 0.6)
        expected = (self.bg * self.drift())[None, :] * (1.0 - suppress) * GAMMA_DT_S
        # The source.
        strength = 0.0
        source = np.zeros_like(expected)
        sigma_1s = math.sqrt(float(self.bg.sum() * self.drift()))
        neutron_peak = 0.0
        positions, y, z = np.zeros(1), 0.0, 1.8
        if kind != "benign":
            if kind == "norm":
                a = rng.uniform(length - cargo, length - 2.0) if cargo > 2.5 else cab * 0.5
                span = rng.uniform(2.0, max(2.5, length - a))
                positions = np.arange(a, min(a + span, length), 0.25)
                strength = float(rng.uniform(2.0, 10.0))
                y, z = 0.0, rng.uniform(0.8, 2.0)
            else:
                positions = np.array([rng.uniform(0.5, length - 0.3)])
                strength = float(
                    {
                        "cs137": rng.uniform(6.0, 15.0),
                        "co60": rng.uniform(6.0, 15.0),
                        "heu": rng.uniform(5.0, 13.0),
                    }.get(kind, rng.uniform(0.3, 1.5))
                )
                if kind == "cs137-shielded":
                    strength = float(rng.uniform(20.0, 50.0)) * rng.uniform(0.2, 0.4)
                y, z = rng.uniform(-0.9, 0.9), rng.uniform(0.5, 3.0)
            profile = self._point_profile(front_x, positions, y, z)
            peak = profile.sum(axis=1).max() if profile.size else 0.0
            if peak > 0:
                # strength: a point source's in sigma of 1 s of background were it centred and unshielded; a
                # NORM load's at its own peak
                centred = peak if kind == "norm" else self._point_profile(np.zeros(1), np.zeros(1), 0.0, 1.8).sum()
                source = profile / centred * strength * sigma_1s * GAMMA_DT_S
            if kind == "neutron":
                neutron_peak = float(rng.uniform(6.0, 25.0))  # cps at closest approach, all tubes
        counts = rng.poisson(expected + source)
        veh = Vehicle(
            self.lane,
            self.count,
            kind,
            strength,
            speed,
            length,
            float(np.ptp(positions)),
            expected_gross=expected.sum(axis=1),
            source_gross=source.sum(axis=1),
            duration_s=duration,
        )
        # The portal's own 1 s rule against its unshadowed background.
        bg_1s = float(self.bg.sum() * self.drift())
        gross = counts.sum(axis=1)
        window = np.convolve(gross, np.ones(5), mode="full")[: gross.size]
        gamma_alarm = (window - bg_1s) > self.p.n_sigma * math.sqrt(bg_1s)
        gamma_alarm[:4] = False
        # Neutrons: one NS line a second; ship effect bursts scale with the vehicle's mass.
        n_times = np.arange(1.0, duration + 1e-9, 1.0)
        mass = float(density.sum() * du)
        neutron_lines: list[tuple[float, str]] = []
        neutron_alarm = False
        for tn in n_times:
            idx = min(int(tn / GAMMA_DT_S) - 1, len(front_x) - 1)
            mean = np.full(CHANNELS, self.p.neutron_cps * (1.0 + 0.15 * mass))
            if neutron_peak:
                prof = self._point_profile(front_x[idx : idx + 1], positions, y, z, shield=False)[0]
                centred = self._point_profile(np.array([0.0]), positions[:1] * 0, 0.0, 1.8, shield=False).sum()
                mean = mean + prof / centred * neutron_peak
            n = rng.poisson(mean)
            for _ in range(rng.poisson(0.08 * mass)):  # spallation bursts
                n[rng.integers(CHANNELS)] += int(rng.geometric(0.45))
            alarm = self.p.device_alarms and n.sum() - CHANNELS * self.p.neutron_cps > self.p.neutron_alarm_counts
            neutron_alarm |= alarm
            neutron_lines.append((tn, _fmt("NA" if alarm else "NS", n)))
        lines: list[tuple[float, str]] = []
        for i, ti in enumerate(t):
            device = self.p.device_alarms and bool(gamma_alarm[i])
            lines.append((float(ti), _fmt("GA" if device else "GS", counts[i])))
        veh.device_alarm = bool(self.p.device_alarms and gamma_alarm.any()) or bool(neutron_alarm)
        lines += neutron_lines
        sp_t = float(t[min(5, len(t) - 1)]) if self.p.speed_early else float(t[-1])
        sp = f"SP,{0.3048 / v0:.4f},{speed / 1.609344:06.3f},{speed:07.3f},000000"
        lines.append((sp_t + 1e-3, sp))
        if self.p.gx != "none":
            self.counter = (self.counter + 1) % 1_000_000
            counter = self.counter if self.p.gx == "count" else 0
            total_n = self.p.neutron_cps * CHANNELS
            f2 = {"total": total_n, "per-tube": self.p.neutron_cps, "zero": 0.0}[self.p.gx_neutron]
            lines.append((float(t[-1]) + 2e-3, f"GX,{counter:06d},{round(f2 * 1000):06d},000000,000000"))
        lines.sort(key=lambda item: item[0])
        veh.lines = lines
        return veh

    def _point_profile(
        self, front_x: np.ndarray, positions: np.ndarray, y: float, z: float, shield: bool = True
    ) -> np.ndarray:
        """Relative rate at each panel (samples, CHANNELS) from sources at ``positions`` (m from the front)."""
        panels_y = np.array([-1, -1, 1, 1]) * self.p.half_width_m
        panels_z = np.array([2.6, 1.0, 2.6, 1.0])
        x = front_x[:, None] - positions[None, :]  # (samples, sources)
        out = np.zeros((front_x.size, CHANNELS))
        for c in range(CHANNELS):
            r2 = x**2 + (panels_y[c] - y) ** 2 + (panels_z[c] - z) ** 2
            through = max(0.0, 1.25 + np.sign(panels_y[c]) * -y) if shield else 0.0  # cargo between source and side
            out[:, c] = (np.exp(-0.35 * through) / r2).sum(axis=1)
        return out


def _dist(t: float, v0: float, a: float) -> float:
    return v0 * t + 0.5 * a * t * t


def _time_to(d: float, v0: float, a: float) -> float:
    if abs(a) < 1e-9:
        return d / v0
    disc = v0 * v0 + 2 * a * d
    return (-v0 + math.sqrt(disc)) / a if disc > 0 else d / v0


class Lane(threading.Thread):
    """A portal on a loopback TCP port: waits for the driver, then sends its day in real time."""

    def __init__(self, portal: Portal, lane: str, seed: int, until_mono: float, first_after_s: float) -> None:
        super().__init__(daemon=True, name=f"portal-{lane}")
        self.gen = Generator(portal, lane, seed)
        self.portal = portal
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.until_mono = until_mono
        self.first_after_s = first_after_s
        self.vehicles: list[Vehicle] = []
        self.conn: socket.socket | None = None
        self.error: str | None = None

    def _send(self, line: str) -> int:
        assert self.conn is not None
        self.conn.sendall(line.encode() + b"\r\n")
        return time.time_ns()

    def _idle(self, seconds: float, first_line_in: float) -> float:
        """Unoccupied for ``seconds``, background lines on the portal's clock; returns when its next line is due."""
        end = time.monotonic() + seconds
        due = time.monotonic() + first_line_in
        while due <= end:
            time.sleep(max(0.0, due - time.monotonic()))
            for line in self.gen.background_lines(self.portal.line_period_s):
                self._send(line)
            due += self.portal.line_period_s
        time.sleep(max(0.0, end - time.monotonic()))
        return due - end

    def run(self) -> None:
        try:
            self.server.settimeout(120)
            self.conn, _ = self.server.accept()
            time.sleep(1.0)  # pyserial drops what arrives while it opens the port
            next_line = self._idle(self.first_after_s, self.portal.line_period_s)
            while time.monotonic() < self.until_mono:
                veh = self.gen.vehicle()
                start = time.monotonic()
                for offset, line in veh.lines:
                    time.sleep(max(0.0, start + offset - time.monotonic()))
                    stamp = self._send(line)
                    if not veh.sent_start_ns:
                        veh.sent_start_ns = stamp
                    veh.sent_end_ns = stamp
                veh.sent = True
                self.vehicles.append(veh)
                gap = self.gen.gap_s()
                if self.portal.gx == "none":
                    # Without GX, the portal's background line says the vehicle left; then its own clock.
                    for line in self.gen.background_lines(self.portal.line_period_s):
                        self._send(line)
                    next_line = self.portal.line_period_s
                next_line = self._idle(gap, next_line)
            self._idle(8.0, next_line)
        except OSError as exc:
            self.error = str(exc)


# --------------------------------------------------------------------------------------------------- offline
class _SimClock:
    """Seconds of a simulated day, for the generator's drift without real time."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _read(veh: Vehicle) -> tuple[np.ndarray, np.ndarray, float]:
    """A vehicle's gamma samples (n, channels), neutron samples (m, channels) and speed (km/h), read from its lines
    with the RPM driver's parser."""
    gamma, neutron, speed = [], [], 0.0
    for _, line in veh.lines:
        parsed = parse_line(line.encode(), gamma_channels=CHANNELS, neutron_channels=CHANNELS)
        if parsed.kind == Kind.GAMMA_SCAN and parsed.counts is not None:
            gamma.append(parsed.counts[:, 0])
        elif parsed.kind == Kind.NEUTRON_SCAN and parsed.counts is not None:
            neutron.append(parsed.counts[:, 0])
        elif parsed.kind == Kind.SPEED:
            speed = float(parsed.values["speed_kmh"])
    return np.array(gamma, dtype=np.float64), np.array(neutron, dtype=np.float64).reshape(-1, CHANNELS), speed


def _known(veh: Vehicle, gross: np.ndarray, speed_kmh: float, cfg: DetectionConfig) -> tuple[bool, bool]:
    """Whether the matched filter with the shadow known (lanewatch's bank, searched over the occupancy), and the
    known-signal likelihood-ratio test, pass at the configured gamma false-alarm probability."""
    expected, source = veh.expected_gross, veh.source_gross
    assert expected is not None and source is not None
    alpha = cfg.gamma_false_alarm_probability
    plan = gamma_plan(GAMMA_DT_S, round(speed_kmh, 1), cfg.source_standoff_m)
    n = gross.size
    z, _ = mf_series(gross, expected, np.ones(n), np.zeros(n), plan.bank, plan.halfw, 0.0)
    searched = float(np.max(z)) > max_threshold(alpha, n, plan.rho1)
    norm = float(np.dot(source, source / expected))
    lr = float(np.dot(source, (gross - expected) / expected)) / math.sqrt(norm) if norm > 0 else -math.inf
    return searched, lr > NormalDist().inv_cdf(1.0 - alpha)


def offline(seeds: list[int], per_portal: int) -> list[dict]:
    """``per_portal`` vehicles of every portal for every seed, decided without sockets (module docstring)."""
    cfg = DetectionConfig()
    rows = []
    for seed in seeds:
        for i, portal in enumerate(PORTALS):
            clock = _SimClock()
            gen = Generator(portal, portal.name, seed * 1000 + i, clock)
            for _ in range(per_portal):
                bg = BackgroundSnapshot(
                    gamma_cps=(gen.bg * gen.drift()).reshape(CHANNELS, 1),
                    neutron_cps=np.full(CHANNELS, portal.neutron_cps),
                    gamma_exposure_s=60.0,
                    neutron_exposure_s=60.0,
                )
                veh = gen.vehicle()
                clock.t += veh.duration_s + gen.gap_s()
                gamma, neutron, speed = _read(veh)
                result = analyze(cfg, bg, gamma, neutron, GAMMA_DT_S, 1.0, speed)
                searched, bound = _known(veh, gamma.sum(axis=1), speed, cfg)
                alarms = [a for a in result["alarms"] if a["alarm"]]
                rows.append(
                    {
                        "portal": portal.name,
                        "kind": veh.kind,
                        "alarm": result["verdict"] == "ALARM",
                        "tests": sorted({a["reason"] for a in alarms}),
                        "fielded": result["baseline_verdict"] == "ALARM",
                        "released": any(a.get("released_as") == "norm-consistent" for a in result["alarms"]),
                        "known_shadow": searched,
                        "bound": bound,
                    }
                )
    return rows


def _print_offline(rows: list[dict], seeds: list[int]) -> None:
    print(f"offline: {len(rows)} vehicles, {len(PORTALS)} portals, seeds {seeds}")
    benign = [r for r in rows if r["kind"] == "benign"]
    false = [r for r in benign if r["alarm"]]
    fielded = sum(r["fielded"] for r in benign)
    print(
        f"benign {len(benign)}: lanewatch false alarms {len(false)} ({1000 * len(false) / max(len(benign), 1):.1f} "
        f"per 1000; by test {dict(Counter(t for r in false for t in r['tests']))}), fielded rule {fielded}"
    )
    print(f"{'kind':16} {'n':>5} {'lanewatch':>10} {'fielded':>8} {'shadow known':>13} {'bound':>6} {'released':>9}")
    for kind in KINDS[1:]:
        group = [r for r in rows if r["kind"] == kind]
        if not group:
            continue
        n = len(group)

        def share(key: str, group: list[dict] = group, n: int = n) -> float:
            return sum(r[key] for r in group) / n

        gamma = kind not in ("neutron", "norm")
        known = f"{share('known_shadow'):13.3f}" if gamma else f"{'-':>13}"
        bound = f"{share('bound'):6.3f}" if gamma else f"{'-':>6}"
        print(
            f"{kind:16} {n:5d} {share('alarm'):10.3f} {share('fielded'):8.3f} {known} {bound} "
            f"{sum(r['released'] for r in group):9d}"
        )
    threats = [r for r in rows if r["kind"] not in ("benign", "norm")]
    print(
        f"threats {len(threats)}: lanewatch {sum(r['alarm'] for r in threats) / max(len(threats), 1):.3f}, "
        f"fielded rule {sum(r['fielded'] for r in threats) / max(len(threats), 1):.3f}; released as NORM "
        f"{sum(r['released'] for r in threats)}"
    )


# --------------------------------------------------------------------------------------------------- scoring
def _own_alarm(decision: dict) -> bool:
    return any(a["alarm"] and a["reason"] != "device" for a in decision["alarms"])


def match(vehicles: list[Vehicle], decisions: list[dict]) -> tuple[dict[int, list[dict]], list[dict], list[dict]]:
    """Decisions per vehicle (by id), decisions of more than one vehicle (merged), and of none (phantom)."""
    per_vehicle: dict[int, list[dict]] = defaultdict(list)
    merged, phantom = [], []
    by_lane: dict[str, list[Vehicle]] = defaultdict(list)
    for v in vehicles:
        by_lane[v.lane].append(v)
    slack = 0.5e9
    for d in decisions:
        hits = [
            v
            for v in by_lane[d["lane"]]
            if d["start_ns"] <= v.sent_end_ns + slack and d["end_ns"] >= v.sent_start_ns - slack
        ]
        if not hits:
            phantom.append(d)
        elif len(hits) > 1:
            merged.append(d)
        for v in hits:
            per_vehicle[id(v)].append(d)
    return per_vehicle, merged, phantom


def score(vehicles: list[Vehicle], decisions: list[dict]) -> dict:
    per_vehicle, merged, phantom = match(vehicles, decisions)
    out: dict = {
        "vehicles": len(vehicles),
        "decisions": len(decisions),
        "merged": len(merged),
        "phantom": [(d["lane"], d["verdict"], d["end_reason"], d["samples"]) for d in phantom],
    }
    lost = [v for v in vehicles if not per_vehicle[id(v)]]
    split = [v for v in vehicles if len(per_vehicle[id(v)]) > 1]
    out["lost"] = [(v.lane, v.index, v.kind) for v in lost]
    out["split"] = [(v.lane, v.index, v.kind, [d["end_reason"] for d in per_vehicle[id(v)]]) for v in split]
    one = [(v, per_vehicle[id(v)][0]) for v in vehicles if len(per_vehicle[id(v)]) == 1]
    out["incomplete"] = Counter(
        (v.lane, d["end_reason"], ",".join(d["incomplete"])) for v, d in one if d["verdict"] == "INCOMPLETE"
    )
    kinds: dict[str, dict[str, float]] = {}
    for kind in KINDS:
        rows = [(v, d) for v, d in one if v.kind == kind and d["verdict"] != "INCOMPLETE"]
        if not rows:
            continue
        n = len(rows)
        kinds[kind] = {
            "n": n,
            "verdict_alarm": sum(d["verdict"] == "ALARM" for _, d in rows) / n,
            "own_alarm": sum(_own_alarm(d) for _, d in rows) / n,
            "fielded": sum(d["baseline_verdict"] == "ALARM" for _, d in rows) / n,
            "device": sum(v.device_alarm for v, _ in rows) / n,
            "norm_consistent": sum(any(a["reason"] == "norm-consistent" for a in d["alarms"]) for _, d in rows) / n,
        }
    out["kinds"] = kinds
    threats = [(v, d) for v, d in one if v.kind not in ("benign", "norm") and d["verdict"] != "INCOMPLETE"]
    out["threat_detection"] = sum(d["verdict"] == "ALARM" for _, d in threats) / max(len(threats), 1)
    out["threat_own"] = sum(_own_alarm(d) for _, d in threats) / max(len(threats), 1)
    out["threat_fielded"] = sum(d["baseline_verdict"] == "ALARM" for _, d in threats) / max(len(threats), 1)
    out["device_cleared"] = [
        (v.lane, v.index, v.kind, d["verdict"], d["device_alarm"])
        for v, d in one
        if v.device_alarm and (d["verdict"] != "ALARM" or not d["device_alarm"])
    ]
    out["benign_false"] = [
        (v.lane, v.index, [a["reason"] for a in d["alarms"] if a["alarm"]])
        for v, d in one
        if v.kind == "benign" and d["verdict"] == "ALARM"
    ]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lanes", type=int, default=10)
    ap.add_argument("--minutes", type=float, default=11.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="print the deployment's directory and keep it")
    ap.add_argument("--offline", type=int, metavar="N", help="N vehicles per portal and seed, without sockets")
    ap.add_argument("--seeds", default="1-2", help="seeds of --offline: a range A-B or a list A,B,...")
    args = ap.parse_args(argv)
    if args.offline:
        if "-" in args.seeds:
            first, last = (int(part) for part in args.seeds.split("-"))
            seeds = list(range(first, last + 1))
        else:
            seeds = [int(part) for part in args.seeds.split(",")]
        _print_offline(offline(seeds, args.offline), seeds)
        return 0
    until = time.monotonic() + 60.0 + args.minutes * 60.0
    lanes = [
        Lane(PORTALS[i % len(PORTALS)], f"lane{i + 1}", args.seed * 1000 + i, until, 1.5 if i == 0 else 8.0 + 3 * i)
        for i in range(args.lanes)
    ]
    dep = Deployment(args.lanes, [f"socket://127.0.0.1:{lane.port}" for lane in lanes])
    try:
        dep.start_service()
        for i in range(args.lanes):
            dep.spawn(f"rpm-lane{i + 1}", "driver", "rpm", "--config", str(dep.config_path), "--lane", f"lane{i + 1}")
        for lane in lanes:
            lane.start()
        for lane in lanes:
            lane.join()
        time.sleep(15.0)  # the last vehicles' decisions
        journal = dep.dir / "journal.db"
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "lanewatch.edge",
                "alerts",
                "--journal",
                str(journal),
                "--since",
                "0",
                "--format",
                "jsonl",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        decisions = [json.loads(line) for line in out.splitlines() if line.strip()]
    finally:
        dep.close()
    vehicles = [v for lane in lanes for v in lane.vehicles]
    for lane in lanes:
        if lane.error:
            print(f"{lane.name}: {lane.error}")
    result = score(vehicles, decisions)
    if args.keep:
        print("deployment:", dep.dir)
        truth = [
            {k: value for k, value in asdict(v).items() if k not in ("lines", "expected_gross", "source_gross")}
            for v in vehicles
        ]
        (dep.dir / "truth.json").write_text(json.dumps(truth, default=lambda o: o.item()))
    _print(result)
    return 0


def _print(r: dict) -> None:
    print(
        f"vehicles {r['vehicles']}, decisions {r['decisions']}: lost {len(r['lost'])}, split {len(r['split'])}, "
        f"merged {r['merged']}, phantom {len(r['phantom'])}"
    )
    for what in ("lost", "split", "phantom"):
        for row in r[what]:
            print(f"  {what}: {row}")
    for key, n in sorted(r["incomplete"].items()):
        print(f"  INCOMPLETE {key}: {n}")
    print(f"{'kind':16} {'n':>4} {'verdict':>8} {'own':>6} {'fielded':>8} {'portal':>7} {'norm-c':>7}")
    for kind, k in r["kinds"].items():
        print(
            f"{kind:16} {k['n']:4d} {k['verdict_alarm']:8.2f} {k['own_alarm']:6.2f} {k['fielded']:8.2f} "
            f"{k['device']:7.2f} {k['norm_consistent']:7.2f}"
        )
    print(
        f"threats: detection {r['threat_detection']:.2f} (own tests {r['threat_own']:.2f}, fielded rule "
        f"{r['threat_fielded']:.2f})"
    )
    benign = r["kinds"].get("benign", {"n": 0})
    print(f"benign false alarms: {len(r['benign_false'])} of {benign['n']}")
    for row in r["benign_false"]:
        print(f"  false alarm: {row}")
    print(f"portal alarms not ALARM: {len(r['device_cleared'])}")
    for row in r["device_cleared"]:
        print(f"  {row}")


if __name__ == "__main__":
    raise SystemExit(main())
