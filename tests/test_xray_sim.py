"""The simulated dual-energy X-ray scanner: the same vehicles as the radiation lane, its physics, its stream.

Scans are checked against their own truth (objects at their lines and pixels, load mass, shield
size, material classes by the dual-energy ratio) and against the radiation lane simulator run
with the same seed; the stream is read over real TCP with the protocol's own frame reader.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lanewatch.drivers.sim.lane import LaneSimulator
from lanewatch.drivers.sim.physics import Passage, Traffic
from lanewatch.drivers.sim.xray import (
    CALIBRATION_LINES,
    LEAD_MM,
    LINE_RATE_HZ,
    MATERIALS,
    SHIELD_CAVITY_MM,
    SceneObject,
    XrayScan,
    XrayScanner,
    XraySimulator,
    add_arguments,
    look_alikes,
    run,
)
from lanewatch.drivers.xray import AIR, DARK, SCAN_END, SCAN_START, Frame, FrameError, FrameReader
from lanewatch.edge.bus.driver import SIMULATOR_GROUP, load_driver

SEED = 11
PIXELS = 256


@pytest.fixture(scope="module")
def passages() -> list[Passage]:
    traffic = Traffic(SEED)
    return [traffic.next_passage() for _ in range(40)]


@pytest.fixture(scope="module")
def scanner() -> XrayScanner:
    return XrayScanner(SEED, pixels=PIXELS)


@pytest.fixture(scope="module")
def scans(scanner: XrayScanner, passages: list[Passage]) -> list[XrayScan]:
    return [scanner.scan(p) for p in passages]


def transmission(scan: XrayScan) -> np.ndarray:
    """(lines, energies, pixels) transmission from the scan's own calibration lines."""
    dark = scan.dark.mean(axis=0)
    air = scan.air.mean(axis=0)
    return (scan.image.astype(np.float64) - dark) / (air - dark)


# ----------------------------------------------------------------------------- same vehicles


def test_scans_show_the_vehicles_the_radiation_lane_reports(tmp_path: Path) -> None:
    lane_truth, xray_truth = tmp_path / "lane.jsonl", tmp_path / "xray.jsonl"
    mix = {"none": 1.0, "shielded-cs137": 1.0, "k40-fertilizer": 1.0, "heu": 1.0}
    with LaneSimulator(
        seed=SEED, windows_kev=[30, 400, 1400, 3000], mix=mix, count=4, speedup=math.inf, truth_path=lane_truth
    ) as lane:
        lane.start()
        assert lane.wait(60)
    with XraySimulator(seed=SEED, mix=mix, count=4, speedup=math.inf, truth_path=xray_truth, pixels=64) as sim:
        sim.start()
        assert sim.wait(60)
    lanes = [json.loads(line) for line in lane_truth.read_text().splitlines()]
    xrays = [json.loads(line) for line in xray_truth.read_text().splitlines()]
    assert len(lanes) == len(xrays) == 4
    for rad, xr in zip(lanes, xrays, strict=True):
        assert xr["occupancy_index"] == rad["index"] and xr["scan_id"] == rad["index"] + 1
        for key in ("vehicle", "source", "category", "length_m", "speed_kmh"):
            assert xr["passage"][key] == rad[key]
        assert [(s["type"], s["position_m"], s.get("shielding")) for s in xr["passage"]["sources"]] == [
            (s["type"], s["position_m"], s.get("shielding")) for s in rad["sources"]
        ]
        assert xr["passage"]["cargo"]["type"] == rad["cargo"]["type"]


# ----------------------------------------------------------------------------- pure and seeded


def test_a_scan_depends_only_on_the_seed_and_the_passage(
    scanner: XrayScanner, passages: list[Passage], scans: list[XrayScan]
) -> None:
    again = XrayScanner(SEED, pixels=PIXELS).scan(passages[7])
    np.testing.assert_array_equal(again.image, scans[7].image)
    np.testing.assert_array_equal(again.dark, scans[7].dark)
    assert again.truth == scans[7].truth
    other = XrayScanner(SEED + 1, pixels=PIXELS).scan(passages[7])
    assert other.image.shape == scans[7].image.shape and not np.array_equal(other.image, scans[7].image)
    assert b"".join(scans[3].frames(5)) == b"".join(scanner.scan(passages[3]).frames(5))


def test_geometry_follows_speed_and_length(scans: list[XrayScan]) -> None:
    for scan in scans:
        truth = scan.truth
        spacing = truth["passage"]["speed_kmh"] / 3.6 * 1000.0 / LINE_RATE_HZ
        assert truth["line_spacing_mm"] == pytest.approx(spacing, abs=1e-3)
        assert np.diff(scan.encoder_mm) == pytest.approx(spacing, abs=0.011)
        assert scan.encoder_mm[-1] >= 1000.0 * truth["passage"]["length_m"] + 2 * LEAD_MM
        assert truth["front_encoder_mm"] == LEAD_MM
        assert scan.image.shape == (truth["lines"], 2, PIXELS) and scan.image.dtype == np.uint16
        assert scan.dark.shape == scan.air.shape == (CALIBRATION_LINES, 2, PIXELS)


def test_objects_sit_at_the_lines_and_pixels_their_truth_names(scans: list[XrayScan]) -> None:
    checked = 0
    for scan in scans:
        t = transmission(scan)[:, 0, :]
        for obj in scan.truth["objects"]:
            if obj["role"] == "structure" or obj["lines"] is None or obj["areal_g_cm2"] < 60:
                continue
            (l0, l1), (p0, p1) = obj["lines"], obj["pixels"]
            assert scan.encoder_mm[l0] >= obj["encoder_mm"][0] - 0.1
            assert scan.encoder_mm[l1 - 1] <= obj["encoder_mm"][1] + 0.1
            assert t[l0:l1, p0:p1].min() < 0.2, obj
            checked += 1
    assert checked > 20
    lead_in = round(0.8 * LEAD_MM / scans[0].truth["line_spacing_mm"])
    t = transmission(scans[0])
    assert np.abs(t[:lead_in].mean(axis=(0, 2)) - 1.0).max() < 0.01, "air before the vehicle"
    assert np.abs(t[:, :, : PIXELS // 10].mean() - 1.0) < 0.01, "air above the vehicle"


def test_calibration_lines_and_detector_noise(scans: list[XrayScan], scanner: XrayScanner) -> None:
    scan = scans[0]
    det = scanner.detector
    dark = scan.dark.astype(np.float64)
    air = scan.air.astype(np.float64)
    assert np.abs(dark.mean(axis=0) - det.dark).max() < 6.0
    assert dark.std(axis=0).mean() == pytest.approx(6.0, rel=0.15)
    assert np.abs(air.mean(axis=0) / (det.dark + det.air) - 1.0).max() < 0.02
    signal = air - det.dark
    pulse = signal.mean(axis=2, keepdims=True) / signal.mean(axis=(0, 2), keepdims=True)
    assert pulse.std() == pytest.approx(0.005, rel=0.5), "the linac dose varies from pulse to pulse"
    spread = (signal / pulse).std(axis=0) / np.sqrt(2.0 * det.air + 36.0)
    assert spread.mean() == pytest.approx(1.0, rel=0.1), "quantum and electronic noise"
    assert 30000 < air.max() < 65535, "the open beam does not saturate the 16-bit readings"


def test_dual_energy_ratio_orders_the_material_classes(scans: list[XrayScan]) -> None:
    ratios: dict[str, list[float]] = {}
    for scan in scans:
        t = np.clip(transmission(scan), 1e-6, None)
        for obj in scan.truth["objects"]:
            if obj["lines"] is None or obj["role"] == "structure":
                continue
            (l0, l1), (p0, p1) = obj["lines"], obj["pixels"]
            hi, lo = t[l0:l1, 0, p0:p1], t[l0:l1, 1, p0:p1]
            ok = (hi > 0.02) & (hi < 0.6)
            if ok.sum() >= 20:
                ratios.setdefault(obj["class"], []).append(float(np.median(np.log(lo[ok]) / np.log(hi[ok]))))
    median = {k: float(np.median(v)) for k, v in ratios.items()}
    assert set(median) >= {"organic", "inorganic", "metal", "high_z"}, median
    assert median["organic"] > median["inorganic"] > median["metal"] > median["high_z"], median
    for klass, reference in (("organic", "organic"), ("metal", "steel"), ("high_z", "lead")):
        m = MATERIALS[reference]
        assert median[klass] == pytest.approx(m.mu_low / m.mu_high, abs=0.06), (klass, median)


# ----------------------------------------------------------------------------- the scene from the truth


def test_shields_are_sized_from_the_truth_and_placed_at_the_source(scans: list[XrayScan]) -> None:
    shields = 0
    for scan in scans:
        sources = scan.truth["passage"]["sources"]
        for obj in scan.truth["objects"]:
            if obj["role"] != "shield":
                continue
            src = sources[obj["source"]]
            wall = 10.0 * src["shielding"]["thickness_cm"]
            assert obj["material"] == src["shielding"]["material"]
            assert obj["x_mm"][1] - obj["x_mm"][0] == pytest.approx(SHIELD_CAVITY_MM + 2 * wall, abs=0.2)
            assert 0.5 * sum(obj["x_mm"]) == pytest.approx(1000.0 * src["position_m"], abs=0.1)
            assert obj["path_mm"] == pytest.approx(SHIELD_CAVITY_MM + 2 * wall, rel=0.02), "through the closed ends"
            shields += 1
    threats = sum(s.truth["passage"]["source"].startswith("shielded-") for s in scans)
    assert shields == threats > 0


def test_load_mass_matches_the_truth_density(scans: list[XrayScan]) -> None:
    checked = 0
    for scan in scans:
        passage = scan.truth["passage"]
        cargo = passage["cargo"]
        if cargo["type"] in ("mixed", "empty"):
            continue
        objs = [o for o in scan.truth["objects"] if o["role"] == "cargo"]
        vehicle = passage["vehicle"]
        mass = sum((o["x_mm"][1] - o["x_mm"][0]) * (o["z_mm"][1] - o["z_mm"][0]) * o["areal_g_cm2"] for o in objs)
        if cargo["type"] == "metal":  # frame plus a core of a quarter of its area
            assert {o["material"] for o in objs} == {"steel"}
        length = 1000.0 * (vehicle["length_m"] - vehicle["cab_m"] - vehicle["gap_m"]) - 120.0
        floor_to_roof = {"tractor-trailer": 2552.0, "box-truck": 2355.0, "van": 1770.0}[vehicle["type"]]
        width_cm = {"tractor-trailer": 235.0, "box-truck": 240.0, "van": 170.0}[vehicle["type"]]
        expected = cargo["density_g_cm3"] * length * floor_to_roof * width_cm
        assert mass == pytest.approx(expected, rel=0.03), (cargo, vehicle)
        checked += 1
    assert checked >= 10


def test_look_alikes_appear_sometimes_and_never_in_vans(scanner: XrayScanner, passages: list[Passage]) -> None:
    rng = np.random.default_rng(1)
    freight = [p for p in passages if p.truth["vehicle"]["type"] != "van"]
    counts = [len(look_alikes(rng, p.truth)) > 0 for p in freight * 5]
    assert 0.1 < np.mean(counts) < 0.35
    assert all(look_alikes(rng, p.truth, rate=1.0) for p in freight)
    vans = [p for p in passages if p.truth["vehicle"]["type"] == "van"]
    assert vans and not any(look_alikes(rng, p.truth, rate=1.0) for p in vans)
    names = {o.name for p in freight for _ in range(10) for o in look_alikes(rng, p.truth, rate=1.0)}
    assert {"steel coil", "engine block", "lead bricks", "tungsten bars", "lead-acid batteries"} <= names


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (SceneObject("b", "cargo", "steel", "box", 0, 100, 0, 100, 40.0), 40.0),
        (SceneObject("c", "cargo", "steel", "vcyl", 0, 100, 0, 100), 100.0),
        (SceneObject("h", "cargo", "steel", "hcyl", 0, 100, 0, 60), 60.0),
        (SceneObject("s", "cargo", "lead", "sphere", 0, 50, 0, 50), 50.0),
        (SceneObject("pig", "shield", "lead", "vcyl", 0, 100, 0, 100, wall_mm=20.0), 100.0),
        (SceneObject("coil", "cargo", "steel", "vcyl", 0, 100, 0, 100, wall_mm=20.0, open_ends=True), 80.0),
        (SceneObject("tyre", "cargo", "organic", "disc", 0, 100, 0, 100, 300.0, wall_mm=30.0, open_ends=True), 300.0),
    ],
)
def test_path_lengths_of_the_shapes(obj: SceneObject, expected: float) -> None:
    assert obj.max_path_mm() == pytest.approx(expected, rel=0.01)


def test_hollow_shapes_are_empty_inside() -> None:
    centre = (np.array([50.0]), np.array([50.0]))
    pig = SceneObject("pig", "shield", "lead", "vcyl", 0, 100, 0, 100, wall_mm=20.0)
    assert pig.path(*centre)[0, 0] == pytest.approx(40.0), "two walls of 20 mm on the ray through the cavity"
    coil = SceneObject("coil", "cargo", "steel", "vcyl", 0, 100, 0, 100, wall_mm=20.0, open_ends=True)
    assert coil.path(*centre)[0, 0] == pytest.approx(40.0)
    assert coil.path(np.array([50.0]), np.array([5.0]))[0, 0] == pytest.approx(40.0), "open at the top and bottom"
    tyre = SceneObject("tyre", "cargo", "organic", "disc", 0, 100, 0, 100, 300.0, wall_mm=30.0, open_ends=True)
    assert tyre.path(*centre)[0, 0] == 0.0
    with pytest.raises(ValueError, match="open-ended"):
        SceneObject("x", "cargo", "steel", "box", 0, 10, 0, 10, 5.0, wall_mm=2.0, open_ends=True).path(*centre)


# ----------------------------------------------------------------------------- the stream


def _read_stream(port: int, until_scans: int, timeout_s: float = 30.0) -> list[Frame | FrameError]:
    reader = FrameReader()
    events: list[Frame | FrameError] = []
    deadline = time.monotonic() + timeout_s
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        while sum(isinstance(e, Frame) and bool(e.flags & SCAN_END) for e in events) < until_scans:
            assert time.monotonic() < deadline, "stream too slow"
            chunk = sock.recv(1 << 16)
            assert chunk, "simulator closed the stream"
            events += reader.feed(chunk)
    return events


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[XraySimulator]:
    sim = XraySimulator(seed=SEED, count=3, speedup=math.inf, truth_path=tmp_path / "truth.jsonl", pixels=128)
    yield sim
    sim.stop()


def _wait_for_client(sim: XraySimulator) -> None:
    deadline = time.monotonic() + 10.0
    while sim.clients() < 1:
        assert time.monotonic() < deadline, "client never connected"
        time.sleep(0.01)


def test_the_tcp_stream_carries_each_scan_exactly(simulator: XraySimulator, tmp_path: Path) -> None:
    port = simulator.serve_tcp()
    result: list[list[Frame | FrameError]] = []
    reader = threading.Thread(target=lambda: result.append(_read_stream(port, 3)))
    reader.start()
    _wait_for_client(simulator)
    simulator.start()
    reader.join(60)
    assert simulator.wait(10)
    events = result[0]
    assert not [e for e in events if isinstance(e, FrameError)]
    traffic = Traffic(SEED)
    expected = [simulator.scan(traffic.next_passage()) for _ in range(3)]
    for scan in expected:
        frames = [e for e in events if isinstance(e, Frame) and e.scan_id == scan.scan_id]
        assert frames[0].flags & SCAN_START and frames[-1].flags & SCAN_END
        assert [f.flags & (DARK | AIR) for f in frames[: 2 * CALIBRATION_LINES]] == [DARK] * 16 + [AIR] * 16
        image = [f for f in frames if f.calibration is None]
        np.testing.assert_array_equal(np.stack([f.data for f in image]), scan.image)
        np.testing.assert_array_equal(np.stack([f.data for f in frames[:16]]), scan.dark)
        np.testing.assert_array_equal([f.encoder_mm for f in image], scan.encoder_mm)
        assert [f.line for f in image] == list(range(len(scan.image)))
        t = np.array([f.t_ns for f in frames])
        assert np.diff(t) == pytest.approx(1e9 / LINE_RATE_HZ, abs=1.0)
    truths = [json.loads(line) for line in (tmp_path / "truth.jsonl").read_text().splitlines()]
    assert [t["scan_id"] for t in truths] == [s.scan_id for s in expected]
    assert truths[0]["objects"] == expected[0].truth["objects"]
    assert simulator.truths[2]["scan_id"] == expected[2].scan_id


def test_time_stamps_follow_the_simulated_timeline(passages: list[Passage]) -> None:
    scan = XrayScanner(SEED, pixels=16).scan(passages[0])
    t = np.array([int.from_bytes(f[38:46], "little", signed=True) for f in scan.frames(10**18, time_scale=10.0)])
    assert t[2 * CALIBRATION_LINES] == 10**18, "image line 0 at t0"
    assert t[0] == 10**18 - round(2 * CALIBRATION_LINES / LINE_RATE_HZ / 10.0 * 1e9)
    assert np.diff(t) == pytest.approx(1e9 / LINE_RATE_HZ / 10.0, abs=1.0)


def test_slow_vehicle_scan_keeps_its_shape(passages: list[Passage]) -> None:
    truth = copy.deepcopy(passages[1].truth)
    truth["speed_kmh"] = 1.0
    slow = XrayScanner(SEED, pixels=32).scan(dataclasses.replace(passages[1], truth=truth))
    fast = XrayScanner(SEED, pixels=32).scan(passages[1])
    assert slow.image.shape[0] == pytest.approx(fast.image.shape[0] * passages[1].truth["speed_kmh"], rel=0.01)


# ----------------------------------------------------------------------------- command line


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_command_line_runs_a_counted_simulation(tmp_path: Path) -> None:
    assert load_driver("xray", SIMULATOR_GROUP).run is run
    truth = tmp_path / "t.jsonl"
    args = _args(["--port", "0", "--count", "2", "--speedup", "1000", "--pixels", "32", "--lanes", "2"])
    args.truth = truth
    assert run(args) == 0
    for lane in range(2):
        lines = (tmp_path / f"t-{lane}.jsonl").read_text().splitlines()
        assert [json.loads(line)["occupancy_index"] for line in lines] == [0, 1]
    assert run(_args(["--count", "-1"])) == 2
    assert run(_args(["--port", "0", "--pixels", "8"])) == 1
