"""Device conventions checked against the data: a lane whose background lines count over 5 s calibrates
itself, one whose lines match no known convention raises calibration-mismatch and does not test against them."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import zmq
from support import Running
from test_rpm_driver import LineServer
from test_service import _background, _collect, _config, _occupancy, _publisher

from lanewatch.drivers.sim.lane import LaneSimulator
from lanewatch.drivers.sim.physics import GAMMA_DT_S, NEUTRON_DT_S, VARIANTS, Physics, Traffic
from lanewatch.edge.bus.driver import load_driver
from lanewatch.edge.bus.records import Kind
from lanewatch.edge.lane.background import BackgroundEstimator
from lanewatch.edge.lane.calibration import LaneCalibration

BENIGN = {"none": 0.7, "k40-fertilizer": 0.15, "cs137": 0.15}
"""Mostly ordinary traffic, a few excesses the median must see through."""


def _calibrate(
    physics: Physics, vehicles: int, scale: float = 1.0, scaled: int | None = None
) -> tuple[LaneCalibration, list[dict]]:
    """A lane's calibration after ``vehicles`` simulated occupancies; lines multiplied by ``scale`` on the way (before
    the first ``scaled`` vehicles only, when given)."""
    traffic = Traffic(3, mix=BENIGN, physics=physics)
    est = BackgroundEstimator(4, 1, 4, 60.0)
    cal = LaneCalibration()
    states = []
    for v in range(vehicles):
        cal.on_occupancy_start()
        factor = scale if scaled is None or v < scaled else 1.0
        for _ in range(4):
            traffic.idle(5.0)
            gamma, neutron = traffic.background_line()
            est.update_gamma(gamma * factor, int(traffic.time_s * 1e9))
            est.update_neutron(neutron * factor, int(traffic.time_s * 1e9))
            cal.on_background_line(traffic.time_s)
        cal.background(est.snapshot())
        p = traffic.next_passage()
        cal.observe(p.gamma.sum(axis=(1, 2)).astype(float), GAMMA_DT_S, p.neutron.sum(axis=1).astype(float), 1.0)
        states.append(cal.as_dict())
    return cal, states


def test_lines_in_counts_per_second_are_consistent() -> None:
    cal, _ = _calibrate(VARIANTS["default"], 12)
    for sensor in ("gamma", "neutron"):
        state = cal.as_dict()[sensor]
        assert state["status"] == "consistent" and state["factor"] == 1.0
        assert 0.8 < state["ratio"] < 1.25
    assert cal.mismatch == {}


def test_lines_counting_over_their_interval_are_calibrated_to_counts_per_second() -> None:
    cal, states = _calibrate(VARIANTS["lines-5s"], 12)
    assert states[0]["gamma"]["status"] == "calibrated"  # one occupancy shows a factor of 5 in gamma
    for sensor in ("gamma", "neutron"):
        state = cal.as_dict()[sensor]
        assert state["status"] == "calibrated"
        assert state["factor"] == pytest.approx(0.2, rel=0.02)
        assert state["ratio"] == pytest.approx(0.2, rel=0.25)
    snap = BackgroundEstimator(4, 1, 4, 60.0)
    snap.update_gamma(np.full((4, 1), 1000.0), 0)
    snap.update_neutron(np.full(4, 20.0), 0)
    used = cal.background(snap.snapshot())
    assert used.gamma_cps is not None and used.neutron_cps is not None
    np.testing.assert_allclose(used.gamma_cps, 1000.0 * cal.gamma.factor)
    np.testing.assert_allclose(used.neutron_cps, 20.0 * cal.neutron.factor)


def test_lines_off_by_an_unknown_factor_are_a_mismatch_and_not_used() -> None:
    cal, _ = _calibrate(VARIANTS["default"], 12, scale=2.7)
    assert set(cal.mismatch) == {"gamma", "neutron"}
    assert cal.mismatch["gamma"] == pytest.approx(1 / 2.7, rel=0.15)
    est = BackgroundEstimator(4, 1, 4, 60.0)
    est.update_gamma(np.full((4, 1), 700.0), 0)
    est.update_neutron(np.full(4, 9.0), 0)
    used = cal.background(est.snapshot())
    assert used.gamma_cps is None and used.neutron_cps is None


def test_a_mismatch_is_raised_by_the_third_vehicle_and_clears_once_the_lines_agree_again() -> None:
    """What an operator sees: no fault from one or two vehicles (they could be sources), the fault with the ratio of
    the lines' error by the third, and the fault gone a few vehicles after the portal's lines are put right."""
    cal, states = _calibrate(VARIANTS["default"], 16, scale=2.7, scaled=8)
    gamma = [s["gamma"] for s in states]
    assert [g["status"] for g in gamma[:2]] == ["warming-up", "warming-up"]
    assert all(g["status"] == "mismatch" for g in gamma[2:8]), gamma
    assert gamma[7]["ratio"] == pytest.approx(1 / 2.7, rel=0.15)
    assert all(g["status"] == "consistent" for g in gamma[12:]), gamma
    assert cal.mismatch == {}


def test_neutron_counters_that_read_nothing_in_occupancies_refute_the_lines() -> None:
    """A portal whose neutron lines report 12 cps while its occupancies count nothing (Sandia's SRLS in auto mode):
    a ratio of 0 is evidence like any other, so by the third vehicle the neutron lines are a mismatch, with ratio 0,
    and not used; they had stayed warming-up, the neutron tests testing against 12 cps where there was nothing."""
    cal = LaneCalibration(interval_s=5.0)
    est = BackgroundEstimator(4, 1, 4, 60.0)
    est.update_gamma(np.full((4, 1), 100.0), 0)
    est.update_neutron(np.full(4, 3.0), 0)
    gross = np.full(40, 80.0)
    for vehicle in range(3):
        cal.background(est.snapshot())
        cal.observe(gross, GAMMA_DT_S, np.zeros(8), 1.0)
        assert cal.as_dict()["neutron"]["status"] == ("mismatch" if vehicle == 2 else "warming-up")
    assert cal.mismatch == {"neutron": 0.0}
    assert cal.background(est.snapshot()).neutron_cps is None
    assert cal.as_dict()["gamma"]["status"] == "consistent"


def test_the_portals_own_neutron_background_calibrates_at_once() -> None:
    cal = LaneCalibration(interval_s=5.0)
    cal.on_device_background(14.0, np.array([17.5, 17.5, 17.5, 17.5]))
    assert cal.neutron.status == "calibrated" and cal.neutron.factor == pytest.approx(0.2)
    cal.on_device_background(14.0, np.array([3.5, 3.5, 3.5, 3.5]))
    assert cal.neutron.status == "consistent" and cal.neutron.factor == 1.0


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    r = Running(_config(tmp_path))
    yield r
    r.close()


@contextmanager
def _linked_driver(running: Running, ctx: zmq.Context) -> Iterator[LineServer]:
    """A portal's TCP server with lanewatch's RPM driver reading it into the running service, once the driver's link
    is up (what the server sends from then on is read); the driver stopped and the server dropped on exit."""
    server = LineServer()
    driver = load_driver("rpm")(_publisher(ctx, running.service.config), server.url, backoff_max_s=0.2)
    stop = threading.Event()
    t = threading.Thread(target=driver.run, args=(stop,), daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 30.0
        while running.value("lanewatch_lane_link_up", lane="lane1") != 1:
            assert time.monotonic() < deadline, "the driver's link never came up"
            time.sleep(0.05)
        yield server
    finally:
        stop.set()
        t.join(5)
        server.drop()


def test_a_lane_whose_background_lines_count_over_5_s_calibrates_and_says_so(
    running: Running, ctx: zmq.Context
) -> None:
    """Real processes: the simulated portal's GB/NB lines carry 5 s sums; the lane's decisions report the
    calibration and test against counts per second: benign traffic stays clear and the neutron background used
    is the portal's own rate, not five times it."""
    config = running.service.config
    vehicles = 10
    sim = LaneSimulator(
        seed=9, mix={"none": 1.0}, gap_s=6.0, speedup=50.0, count=vehicles, physics=VARIANTS["lines-5s"]
    )
    port = sim.serve_tcp()
    driver = load_driver("rpm")(_publisher(ctx, config), f"socket://127.0.0.1:{port}", backoff_max_s=0.2)
    stop = threading.Event()
    t = threading.Thread(target=driver.run, args=(stop,), daemon=True)
    t.start()
    sim.start()
    try:
        decisions = _collect(ctx, config, vehicles, timeout_s=120.0)
    finally:
        stop.set()
        t.join(5)
        sim.stop()
    assert len(decisions) == vehicles
    true_neutron_cps = float(sim.traffic.background_mean()[1].sum())
    for d in decisions[2:]:
        calibration = d["background"]["calibration"]
        assert calibration["gamma"]["status"] == "calibrated", calibration
        assert calibration["neutron"]["status"] == "calibrated", calibration
        assert d["background"]["neutron_cps"] == pytest.approx(true_neutron_cps * NEUTRON_DT_S, rel=0.35)
        assert d["verdict"] == "CLEAR", d["alarms"]
    assert all(d["verdict"] != "ALARM" for d in decisions)


def test_sources_the_portal_alarmed_on_are_no_evidence_against_its_background_lines(
    running: Running, ctx: zmq.Context
) -> None:
    """A run of strong sources (the demo's traffic is mostly sources): each raises its occupancy's rates over the
    background, so taken as evidence their median made the lines a 'mismatch' and the next vehicles were decided
    without a background (their alarms withheld). The portal alarmed on each: no evidence about its lines."""
    config = running.service.config
    pub = _publisher(ctx, config)
    _background(pub)
    rng = np.random.default_rng(5)
    t = np.arange(30) * 0.2
    excess = 800.0 / (1.0 + ((t - 3.0) / 1.0) ** 2)  # counts per 0.2 s, all channels: about 4000 cps at the peak
    for _ in range(10):
        for e in excess:
            counts = rng.poisson(48.0 + e / 4, (4, 1)).astype(np.uint32)
            pub.emit(Kind.GAMMA_SCAN, dt_s=0.2, counts=counts, flags=("device_alarm",))
        pub.emit(Kind.OCCUPANCY_END, values={"device_occupancy": 0, "neutron_background_cps": 3.0})
        _background(pub, count=1)
    _occupancy(pub, 30, seed=6)
    decisions = _collect(ctx, config, 11, timeout_s=60.0)
    assert all(d["verdict"] == "ALARM" and d["device_alarm"] for d in decisions[:10])
    benign = decisions[10]
    assert benign["background"]["calibration"]["gamma"]["status"] != "mismatch", benign["background"]
    assert (benign["verdict"], benign["incomplete"], benign["baseline_verdict"]) == ("CLEAR", [], "CLEAR")


def test_a_portal_whose_end_line_carries_the_neutron_background_per_tube_is_not_taken_as_summing(
    running: Running, ctx: zmq.Context
) -> None:
    """Real TCP, driver and service: a portal whose background lines count per second and whose GX field 2 is the
    mean neutron background per tube (not all tubes) reads, with 4 tubes, like lines summed over 5 s. Taken so at
    once, the lane tested every later vehicle against a fifth of its neutron background (benign vehicles alarmed),
    and the occupancies that refute it were never counted as evidence: too few counts at the factor applied."""

    rng = np.random.default_rng(12)
    tube_cps, vehicles = 0.7, 8

    def background() -> bytes:
        gamma = ",".join(f"{c:06d}" for c in rng.poisson(240.0, 4))
        neutron = ",".join(f"{c:06d}" for c in rng.poisson(tube_cps, 4))
        return f"GB,{gamma}\r\nNB,{neutron}\r\n".encode()

    lines = [background() for _ in range(12)]  # sent at once: the lane keeps its default 5 s line interval
    for v in range(vehicles):
        for i in range(40):  # 8 s of gamma, a neutron line each second
            lines.append(("GS," + ",".join(f"{c:06d}" for c in rng.poisson(46.0, 4)) + "\r\n").encode())
            if i % 5 == 4:
                lines.append(("NS," + ",".join(f"{c:06d}" for c in rng.poisson(tube_cps, 4)) + "\r\n").encode())
        lines.append(f"GX,{v + 1:06d},{round(tube_cps * 1000):06d},000000,000000\r\n".encode())
        lines.append(background())
    with _linked_driver(running, ctx) as server:
        server.serve(lines)
        decisions = _collect(ctx, running.service.config, vehicles, timeout_s=60.0)
    assert len(decisions) == vehicles
    for d in decisions[1:]:
        assert d["background"]["calibration"]["neutron"]["status"] == "consistent", d["background"]
        assert d["background"]["neutron_cps"] == pytest.approx(4 * tube_cps, rel=0.35), d["background"]
        assert d["verdict"] == "CLEAR", d["alarms"]


def test_lines_summed_over_2_s_are_calibrated_from_the_first_intervals_seen(running: Running, ctx: zmq.Context) -> None:
    """Real TCP, driver and service: a portal whose background lines come every 2 s and carry their 2 s sums. The
    interval was an average creeping down from an assumed 5 s, so the lane's first vehicles were tested against
    lines divided by 3 or 4 (benign vehicles alarmed), or found them a mismatch and tested against nothing."""

    rng = np.random.default_rng(21)
    vehicles, period_s = 5, 2.0

    def line(kind: str, mean: float) -> bytes:
        return (kind + "," + ",".join(f"{c:06d}" for c in rng.poisson(mean, 4)) + "\r\n").encode()

    def portal(server: LineServer) -> None:
        conn = server.accept()
        for _ in range(4):  # idle: a line of 2 s sums every 2 s
            conn.sendall(line("GB", 230.0 * period_s))
            time.sleep(period_s)
        for v in range(vehicles):
            conn.sendall(
                b"".join(line("GS", 46.0) for _ in range(40)) + f"GX,{v + 1:06d},000000,000000,000000\r\n".encode()
            )
            conn.sendall(line("GB", 230.0 * period_s))

    with _linked_driver(running, ctx) as server:
        sender = threading.Thread(target=portal, args=(server,), daemon=True)
        sender.start()
        decisions = _collect(ctx, running.service.config, vehicles, timeout_s=60.0)
        sender.join(10)
    assert len(decisions) == vehicles
    for d in decisions[1:]:
        gamma = d["background"]["calibration"]["gamma"]
        assert gamma["status"] == "calibrated" and gamma["factor"] == pytest.approx(1 / period_s, rel=0.15), gamma
        assert sum(d["background"]["gamma_cps"]) == pytest.approx(4 * 230.0, rel=0.1), d["background"]
        assert d["verdict"] == "CLEAR", d["alarms"]


CHANNEL_CPS = 230.0
"""Gamma background per channel (cps) of the hand-written portals below."""


def _lines(kind: str, means: np.ndarray) -> bytes:
    """A protocol line of Poisson counts with ``means`` per channel."""
    return (kind + "," + ",".join(f"{c:06d}" for c in _RNG.poisson(means)) + "\r\n").encode()


_RNG = np.random.default_rng(31)


def _vehicle(level: np.ndarray, excess: np.ndarray | None = None, counter: int = 0) -> bytes:
    """One vehicle of a portal without an alarm rule of its own: GS lines whose channels count ``level`` times the
    background per 0.2 s sample (its shadow) plus a quarter of ``excess`` (counts per sample, all channels), then GX."""
    added = np.zeros(level.size) if excess is None else excess
    means = CHANNEL_CPS * GAMMA_DT_S * level + added / 4
    scan = b"".join(_lines("GS", np.full(4, m)) for m in means)
    return scan + f"GX,{counter:06d},000000,000000,000000\r\n".encode()


def _truck(seconds: float, shadow: float) -> np.ndarray:
    """A vehicle's level per gamma sample: 1 s ramps at the ends (front and rear under the panels) around a body that
    lets ``shadow`` of the background through."""
    n = round(seconds / GAMMA_DT_S)
    ramp = np.linspace(1.0, shadow, round(1.0 / GAMMA_DT_S))
    return np.concatenate([ramp, np.full(n - 2 * ramp.size, shadow), ramp[::-1]])


def _portal(vehicles: list[bytes]) -> list[bytes]:
    """Background lines in counts per second (sent at once: the lane keeps its default 5 s interval), then each
    vehicle followed by a background line."""
    background = [_lines("GB", np.full(4, CHANNEL_CPS)) for _ in range(12)]
    return background + [chunk for v in vehicles for chunk in (v, _lines("GB", np.full(4, CHANNEL_CPS)))]


def test_strong_sources_among_a_lanes_first_vehicles_do_not_make_its_background_a_mismatch(
    running: Running, ctx: zmq.Context
) -> None:
    """Real TCP, driver and service: a portal with no alarm rule of its own (no GA line to set its vehicles aside)
    whose first two vehicles carry strong sources. Taken as evidence, their raised rates were the lane's median: its
    background lines became a 'mismatch' at once and the next benign vehicles were decided INCOMPLETE without a
    background, the calibration-mismatch fault up, until benign vehicles outnumbered the two."""
    t = np.arange(40) * GAMMA_DT_S
    source = 900.0 / (1.0 + ((t - 4.0) / 1.5) ** 2)  # counts per 0.2 s, all channels: 4500 cps at the peak
    vehicles = [_vehicle(_truck(8.0, 0.9), source, i + 1) for i in range(2)]
    vehicles += [_vehicle(_truck(8.0, 0.9), counter=i + 3) for i in range(5)]
    with _linked_driver(running, ctx) as server:
        server.serve(_portal(vehicles))
        decisions = _collect(ctx, running.service.config, len(vehicles), timeout_s=60.0)
    assert len(decisions) == len(vehicles)
    assert all(d["verdict"] == "ALARM" for d in decisions[:2])
    for d in decisions[2:]:
        assert d["background"]["calibration"]["gamma"]["status"] == "consistent", d["background"]
        assert (d["verdict"], d["incomplete"]) == ("CLEAR", []), (d["incomplete"], d["alarms"])
    assert running.value("lanewatch_detector_fault", lane="lane1", fault="calibration-mismatch") == 0


def test_a_lane_whose_first_vehicles_shield_deeply_does_not_find_its_background_a_mismatch(
    running: Running, ctx: zmq.Context
) -> None:
    """Real TCP, driver and service: the first vehicles are long, heavily loaded trucks whose bodies let half the
    background through; only their ends, under the panels for a second, show it whole. The 90th percentile of their
    1 s rates read about 0.6 of the background lines: no convention (cps, or sums over 5 s), so the lane tested the next
    vehicles against no background at all."""
    vehicles = [_vehicle(_truck(14.0, 0.5), counter=i + 1) for i in range(4)]
    vehicles += [_vehicle(_truck(8.0, 0.9), counter=i + 5) for i in range(2)]
    with _linked_driver(running, ctx) as server:
        server.serve(_portal(vehicles))
        decisions = _collect(ctx, running.service.config, len(vehicles), timeout_s=60.0)
    assert len(decisions) == len(vehicles)
    for d in decisions:
        assert d["background"]["calibration"]["gamma"]["status"] in ("warming-up", "consistent"), d["background"]
        assert (d["verdict"], d["incomplete"]) == ("CLEAR", []), (d["incomplete"], d["alarms"])
    assert running.value("lanewatch_detector_fault", lane="lane1", fault="calibration-mismatch") == 0
