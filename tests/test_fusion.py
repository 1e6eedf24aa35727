"""Radiation/X-ray fusion: its kernels against their twins, registration against the simulator's truth,
and scans through the service over real sockets (simulator frames, the real DICOS sample).
"""

from __future__ import annotations

import base64
import io
import json
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image
from prometheus_client import CollectorRegistry
from scipy import ndimage
from support import Running, service_toml

from lanewatch.drivers.dicos import publish_scan, read_dicos
from lanewatch.drivers.sim.lane import LaneSimulator
from lanewatch.drivers.sim.physics import HOLD_IN_S, Passage, Traffic
from lanewatch.drivers.sim.xray import XrayScan, XrayScanner, XraySimulator
from lanewatch.drivers.xray import XrayDriver
from lanewatch.edge.bus import ingest
from lanewatch.edge.bus.driver import RecordPublisher, load_driver
from lanewatch.edge.bus.records import Kind
from lanewatch.edge.config import Config, FusionConfig, parse
from lanewatch.edge.decisions.subscriber import AlertSubscriber
from lanewatch.edge.ops.metrics import DriverMetrics
from lanewatch.edge.xray.fusion import register
from lanewatch.kernels.imaging import AIR
from lanewatch.kernels.morphology import cell_sums, cell_sums_ref, label4, label4_ref, opening_rows, opening_rows_ref

PROPERTY = settings(max_examples=150, deadline=None, derandomize=True)

grids = hnp.arrays(
    np.float32,
    st.tuples(st.integers(1, 40), st.integers(1, 8)),
    elements=st.floats(-5.0, 10.0, width=32),
)
masks = hnp.arrays(np.bool_, st.tuples(st.integers(1, 24), st.integers(1, 24)))


# ---- kernels ------------------------------------------------------------------------------------------
@PROPERTY
@given(grids, st.integers(0, 12))
def test_opening_matches_its_twin_and_scipy(a: np.ndarray, half: int) -> None:
    got = opening_rows(a, half)
    assert got.dtype == a.dtype and got.shape == a.shape
    np.testing.assert_array_equal(got, opening_rows_ref(a, half))
    # Windows clipped at the ends are scipy's "nearest" border: the edge value never changes a min or max.
    np.testing.assert_array_equal(got, ndimage.grey_opening(a, size=(2 * half + 1, 1), mode="nearest"))
    assert np.all(got <= a)
    np.testing.assert_array_equal(opening_rows(got, half), got)  # an opening is idempotent


def test_opening_removes_short_bumps_and_keeps_plateaus() -> None:
    a = np.zeros((60, 2), np.float32)
    a[10:14, 0] = 3.0  # 4 rows: shorter than a 7-row window
    a[30:50, 1] = 2.0  # 20 rows: longer
    got = opening_rows(a, 3)
    assert np.all(got[:, 0] == 0.0)
    np.testing.assert_array_equal(got[:, 1], a[:, 1])


@st.composite
def batches(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int]:
    lines, energies, pixels = draw(st.integers(0, 6)), draw(st.sampled_from([1, 2])), draw(st.integers(1, 30))
    att = draw(hnp.arrays(np.float32, (lines, energies, pixels), elements=st.floats(-0.25, 9.25, width=32)))
    classes = draw(hnp.arrays(np.uint8, (lines, pixels), elements=st.integers(0, 6)))
    return att, classes, draw(st.integers(1, 8))


@PROPERTY
@given(batches(), st.sampled_from([1.0, 5.3]))
def test_cell_sums_match_their_twin(batch: tuple[np.ndarray, np.ndarray, int], a_dark: float) -> None:
    att, classes, block = batch
    got, nonair = cell_sums(att, classes, block, a_dark, AIR)
    want, want_nonair = cell_sums_ref(att, classes, block, a_dark, AIR)
    assert got.shape == (att.shape[0], 4, -(-att.shape[2] // block)) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(nonair, want_nonair)
    # every pixel is measured or dark, air or not
    assert np.all(got[:, 2].sum(axis=1) == (att[:, 0, :].astype(np.float64) <= a_dark).sum(axis=1))
    assert np.all(got[:, 3].sum(axis=1) + nonair == att.shape[2])


@PROPERTY
@given(masks)
def test_labels_match_label_propagation_and_scipy(mask: np.ndarray) -> None:
    got = label4(mask)
    np.testing.assert_array_equal(got, label4_ref(mask))
    theirs, n = ndimage.label(mask)
    assert len(np.unique(got[mask])) == n
    # the same partition: each scipy component is one label here, and the other way round
    pairs = set(zip(theirs[mask].tolist(), got[mask].tolist(), strict=True))
    assert len(pairs) == n
    if mask.any():
        first = np.flatnonzero(mask.reshape(-1))[0]
        assert got.reshape(-1)[first] == first + 1


# ---- registration -------------------------------------------------------------------------------------
def test_registration_takes_the_encoder_else_time_times_speed_else_the_line_index() -> None:
    lines = 100
    nonair = np.r_[np.zeros(10), np.full(80, 50), np.zeros(10)]  # the vehicle fills lines 10..89
    t_ns = np.arange(lines) * 1_000_000  # a line per ms
    no_encoder = np.full(lines, np.nan)
    by_time = register(no_encoder, t_ns, nonair, 100, speed_kmh=36.0, nominal_spacing_mm=5.0)  # 10 mm per line
    assert by_time.method == "time" and by_time.spacing_mm == pytest.approx(10.0)
    assert by_time.front_line == 10 and by_time.rear_line == 89 and by_time.origin == "vehicle-front"
    assert by_time.front_mm == pytest.approx(95.0)  # between the last air line and the first vehicle line
    assert by_time.sd_m == pytest.approx(0.010 / math.sqrt(12))
    assert by_time.metres(10) == pytest.approx(0.005) and by_time.image_length_m() == pytest.approx(0.80)
    assert by_time.span_m(10, 19) == pytest.approx((0.0, 0.1))
    by_index = register(no_encoder, np.zeros(lines, np.int64), nonair, 100, 36.0, nominal_spacing_mm=5.0)
    assert by_index.method == "line" and by_index.image_length_m() == pytest.approx(0.40)
    encoder = np.arange(lines) * 6.5
    by_encoder = register(encoder, np.zeros(lines, np.int64), nonair, 100, 36.0, 5.0)
    assert by_encoder.method == "encoder" and by_encoder.image_length_m() == pytest.approx(80 * 0.0065)
    # a vehicle already in the beam at the first line: no front, no common axis with the radiation
    in_beam = register(encoder, t_ns, np.full(lines, 50), 100, 36.0, 5.0)
    assert in_beam.origin == "first-line" and in_beam.sd_m is None and in_beam.rear_line is None


# ---- through the service -------------------------------------------------------------------------------
WINDOWS = [30.0, 400.0, 3000.0]
SEED = 8
"""Simulator seed whose first three shielded Cs-137 vehicles all carry a lead shield the image shows."""
MIX = {"shielded-cs137": 1.0}
PIXELS = 256


def _config(tmp_path: Path, lanes: str, fusion: str = "") -> Config:
    text = (
        service_toml(tmp_path / "journal.db")
        + f"""
        [detection]
        energy_windows_kev = {WINDOWS}
        occupancy_hold_in_s = {HOLD_IN_S}
        sample_timeout_s = 2.0
        [fusion]
        {fusion}
        {lanes}
    """
    )
    path = tmp_path / "lanewatch.toml"
    path.write_text(text)
    return parse(text, str(path))


def _publisher(ctx: zmq.Context, config: Config, lane: str, source: str) -> RecordPublisher:
    sock = ingest.driver_publisher(ctx, config.bus.ingest)
    assert ingest.wait_for_subscriber(sock, 10.0), "the service did not subscribe"
    return RecordPublisher(sock, lane, source, DriverMetrics(CollectorRegistry()))


def _collect(ctx: zmq.Context, config: Config, count: int, timeout_s: float = 60.0) -> list[dict[str, Any]]:
    sub = AlertSubscriber(ctx, config.bus.alerts, config.bus.query, since=0, connect_timeout_s=timeout_s)
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    try:
        for item in sub.decisions(follow=True, timeout_s=0.5):
            if item is not None:
                got.append(json.loads(sub.journaled))  # as published
            if len(got) >= count or time.monotonic() > deadline:
                break
    finally:
        sub.close()
    return got


def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _run(target: Callable[[threading.Event], None], stops: list[threading.Event]) -> threading.Thread:
    stop = threading.Event()
    stops.append(stop)
    thread = threading.Thread(target=target, args=(stop,), daemon=True)
    thread.start()
    return thread


def test_simulated_lane_with_scanner_fuses_each_vehicle_at_its_place(tmp_path: Path, ctx: zmq.Context) -> None:
    """The lane and X-ray simulators with one seed image the same three vehicles; each decision carries its
    scan, registered on metres from the front, and the lead shield's place agrees with the truth."""
    count, speedup = 3, 4.0
    xray_sim = XraySimulator(SEED, MIX, speedup=speedup, count=count, pixels=PIXELS)
    lane_sim = LaneSimulator(SEED, WINDOWS, MIX, speedup=speedup, count=count)
    xray_port, rpm_port = xray_sim.serve_tcp(), lane_sim.serve_tcp()
    lanes = f'[[lanes]]\nid = "lane1"\nrpm = "socket://127.0.0.1:{rpm_port}"\nxray = "127.0.0.1:{xray_port}"'
    config = _config(tmp_path, lanes)
    running = Running(config)
    stops: list[threading.Event] = []
    threads = []
    try:
        rpm = load_driver("rpm")(
            _publisher(ctx, config, "lane1", "rpm"), f"socket://127.0.0.1:{rpm_port}", windows=len(WINDOWS) - 1
        )
        xray = XrayDriver(_publisher(ctx, config, "lane1", "xray"), f"127.0.0.1:{xray_port}")
        threads = [_run(rpm.run, stops), _run(xray.run, stops)]
        lane = running.service.lanes["lane1"]
        heard = lane.devices.sources
        _wait(lambda: all(s in heard and heard[s].link_up for s in ("rpm", "xray")), 10.0, "both drivers to connect")
        time.sleep(0.6)  # pyserial drops what arrives while it is still opening the port
        xray_sim.start()
        lane_sim.start()
        decisions = _collect(ctx, config, count)
    finally:
        for stop in stops:
            stop.set()
        for thread in threads:
            thread.join(10)
        xray_sim.stop()
        lane_sim.stop()
        running.close()
    assert len(decisions) == count
    assert running.value("lanewatch_lane_anomalies_total", lane="lane1", kind="xray-no-occupancy") == 0
    for decision, truth in zip(decisions, xray_sim.truths, strict=True):
        xray = decision["xray"]
        assert xray["scan_id"] == truth["scan_id"] and xray["status"] == "complete"
        registration = xray["registration"]
        assert registration["method"] == "encoder" and registration["origin"] == "vehicle-front"
        assert registration["front_line"] == pytest.approx(truth["front_encoder_mm"] / truth["line_spacing_mm"], abs=1)
        lengths = xray["vehicle_length_m"]
        assert lengths["image"] == pytest.approx(truth["passage"]["length_m"], abs=0.05)
        assert lengths["radiation"] == pytest.approx(truth["passage"]["length_m"], abs=0.6)
        shield = next(o for o in truth["objects"] if o["role"] == "shield")
        assert shield["material"] == "lead"
        found = [a for a in decision["alarms"] if a["reason"] in ("shielded-source-suspected", "image-review")]
        assert len(found) == 1 and found[0]["alarm"] and decision["verdict"] == "ALARM"
        centre_m = sum(shield["x_mm"]) / 2000.0
        # within two stated standard deviations, and the stated one is the registration's (the radiation's axis
        # is known to a sample's travel, not to the image's millimetres) with the object's cells
        assert abs(found[0]["location_m"] - centre_m) <= 2 * found[0]["location_sd_m"]
        assert registration["sd_m"] - 5e-4 <= found[0]["location_sd_m"] < registration["sd_m"] + 0.03  # 3 digits
        obj = found[0]["object"]
        assert obj["material"] == "high_z" and obj["shields"]
        assert obj["x_m"][0] <= shield["x_mm"][0] / 1000 + 0.03 and obj["x_m"][1] >= shield["x_mm"][1] / 1000 - 0.03
        source = truth["passage"]["sources"][0]["position_m"]
        for alarm in decision["alarms"]:
            if alarm["reason"] == "gamma" and alarm["alarm"]:
                sd = math.hypot(alarm["location_sd_m"], registration["radiation_origin_sd_m"])
                assert abs(alarm["location_m"] - source) <= 3 * sd
        if found[0]["reason"] == "shielded-source-suspected":
            assert found[0]["radiation"]["separation_sigma"] <= 2.0
        preview = Image.open(io.BytesIO(base64.b64decode(xray["preview"]["png_base64"])))
        assert preview.size == (xray["preview"]["width"], xray["preview"]["height"])


def test_dicos_sample_through_the_service_is_a_scan_without_an_occupancy(
    tmp_path: Path, ctx: zmq.Context, shared_data: Path
) -> None:
    config = _config(tmp_path, '[[lanes]]\nid = "lane1"', "scan_wait_s = 0.3\nmatch_tolerance_s = 0.2")
    running = Running(config)
    try:
        image = read_dicos(shared_data / "dicos" / "SimpleProcessingDX.dcs")
        publish_scan(_publisher(ctx, config, "lane1", "dicos"), image)
        decisions = _collect(ctx, config, 1, timeout_s=20.0)
    finally:
        running.close()
    assert len(decisions) == 1
    decision = decisions[0]
    assert decision["end_reason"] == "no-occupancy" and decision["verdict"] == "INCOMPLETE"
    assert decision["occupancy_id"].startswith("lane1-xray-") and decision["samples"] == 0
    xray = decision["xray"]
    assert xray["scan_id"] == image.scan_id and xray["source"] == "dicos" and xray["status"] == "complete"
    assert xray["lines"] == 256 and xray["pixels"] == 128 and xray["energies"] == 1
    assert xray["calibration"] == "estimated" and xray["meta"]["file"] == "SimpleProcessingDX.dcs"
    # the ramp is dark from its first column: no vehicle front, positions from the first line, no common axis
    assert xray["registration"]["origin"] == "first-line" and xray["registration"]["front_sd_m"] is None
    # one energy: the ramp's dense part is one unclassified region, and nothing is called high-Z
    assert [r["material"] for r in xray["regions"]] == ["unclassified"]
    assert xray["regions"][0]["lines"] == [0, 255] and xray["regions"][0]["pixels"] == [0, 47]
    assert not [a for a in decision["alarms"] if a["reason"] in ("image-review", "shielded-source-suspected")]
    preview = Image.open(io.BytesIO(base64.b64decode(xray["preview"]["png_base64"])))
    # no pixel spacing in the file: pitch 4600 mm / 128 = 36 mm, line spacing the same; cells of one pixel
    assert xray["pixel_pitch_mm"] == pytest.approx(4600.0 / 128) and xray["cell_mm"] == [35.9, 35.9]
    assert preview.size == (256, 128)
    column = np.asarray(preview)[:, 0].tolist()  # the ramp brightens down the detector: black at the top
    assert column == sorted(column) and column[0] == 0 and column[-1] > 200
    assert running.value("lanewatch_lane_anomalies_total", lane="lane1", kind="xray-no-occupancy") == 1


def _scan_lines(pub: RecordPublisher, scan: XrayScan, first: int, last: int) -> None:
    for a in range(first, last, 64):
        b = min(a + 64, last)
        pub.emit(
            Kind.XRAY_LINES,
            counts=scan.image[a:b],
            values={
                "scan_id": scan.scan_id,
                "first_line": a,
                "line_count": b - a,
                "encoder_mm": [float(v) for v in scan.encoder_mm[a:b]],
                "t_ns": [time.time_ns()] * (b - a),
                "flags": [0] * (b - a),
            },
        )


def _scan_start(pub: RecordPublisher, scan: XrayScan) -> None:
    pub.emit(
        Kind.XRAY_SCAN_START,
        values={"scan_id": scan.scan_id, "t_ns": time.time_ns(), "energies": 2, "pixels": scan.image.shape[2]},
    )
    for frame, lines in (("dark", scan.dark), ("air", scan.air)):
        pub.emit(Kind.XRAY_CALIBRATION, counts=lines, values={"scan_id": scan.scan_id, "frame": frame, "t_ns": [0]})


def _occupancy(pub: RecordPublisher, passage: Passage, end: bool = True) -> None:
    for j, sample in enumerate(passage.gamma):
        pub.emit(Kind.GAMMA_SCAN, dt_s=0.2, counts=sample.astype(np.uint32))
        if j % 5 == 4:
            pub.emit(Kind.NEUTRON_SCAN, dt_s=1.0, counts=passage.neutron[j // 5].reshape(-1, 1).astype(np.uint32))
        if j == 5:
            pub.emit(Kind.SPEED, values={"speed_kmh": passage.speed_kmh})
    if end:
        pub.emit(Kind.OCCUPANCY_END, values={"device_occupancy": passage.index})


def _background(pubs: list[RecordPublisher], traffic: Traffic) -> None:
    """Three background readings, the same to each publisher's lane."""
    for _ in range(3):
        gamma, neutron = traffic.background_reading(1.0)
        for pub in pubs:
            pub.emit(Kind.GAMMA_BACKGROUND, counts=gamma.astype(np.uint32))
            pub.emit(Kind.NEUTRON_BACKGROUND, counts=neutron.reshape(-1, 1).astype(np.uint32))


SCANNER_LANES = '[[lanes]]\nid = "lane1"\nxray = "127.0.0.1:1"\n[[lanes]]\nid = "lane2"'


def test_a_scan_that_never_ends_is_cut_for_its_occupancy_or_times_out_alone(tmp_path: Path, ctx: zmq.Context) -> None:
    config = _config(tmp_path, SCANNER_LANES, "scan_wait_s = 0.5\nmatch_tolerance_s = 0.3\nscan_timeout_s = 1.5")
    traffic = Traffic(SEED, WINDOWS, MIX)
    first, second = traffic.next_passage(), traffic.next_passage()
    scanner = XrayScanner(SEED, pixels=64)
    running = Running(config)
    try:
        rpm, xray = _publisher(ctx, config, "lane1", "rpm"), _publisher(ctx, config, "lane1", "xray")
        _background([rpm], traffic)
        scan = scanner.scan(first)
        _scan_start(xray, scan)
        _scan_lines(xray, scan, 0, 300)
        _occupancy(rpm, first)  # ends while its scan is still open, and the scan never ends
        cut = _collect(ctx, config, 1, timeout_s=20.0)
        _scan_lines(xray, scan, 300, 400)  # lines of the cut scan: dropped
        lone = scanner.scan(second)
        _scan_start(xray, lone)
        _scan_lines(xray, lone, 0, 200)  # no occupancy, no end
        decisions = _collect(ctx, config, 2, timeout_s=20.0)
    finally:
        running.close()
    assert len(cut) == 1 and len(decisions) == 2
    fused = cut[0]["xray"]
    assert fused["scan_id"] == scan.scan_id and fused["status"] == "incomplete" and fused["end_reason"] == "cut"
    assert fused["lines"] == 300 and cut[0]["end_reason"] == "gx" and cut[0]["samples"] > 0
    alone = decisions[1]
    assert alone["end_reason"] == "no-occupancy" and alone["verdict"] in ("INCOMPLETE", "ALARM")
    assert alone["xray"]["scan_id"] == lone.scan_id and alone["xray"]["end_reason"] == "timeout"
    assert alone["xray"]["lines"] == 200
    anomalies = {
        kind: running.value("lanewatch_lane_anomalies_total", lane="lane1", kind=kind)
        for kind in ("xray-incomplete", "xray-no-occupancy", "xray-no-scan")
    }
    assert anomalies == {"xray-incomplete": 2, "xray-no-occupancy": 1, "xray-no-scan": 0}


def test_occupancy_without_scan_and_lane_without_scanner(tmp_path: Path, ctx: zmq.Context) -> None:
    """At a scanner lane a missing scan is waited for, reported and the decision made on radiation alone; a lane
    without a scanner decides at once, with no ``xray`` section, as before."""
    config = _config(tmp_path, SCANNER_LANES, "scan_wait_s = 1.0")
    traffic = Traffic(SEED, WINDOWS, MIX)
    passage = traffic.next_passage()
    running = Running(config)
    try:
        with_scanner, plain = _publisher(ctx, config, "lane1", "rpm"), _publisher(ctx, config, "lane2", "rpm")
        _background([with_scanner, plain], traffic)
        t0 = time.monotonic()
        _occupancy(plain, passage)
        first = _collect(ctx, config, 1, timeout_s=20.0)
        plain_s = time.monotonic() - t0
        t0 = time.monotonic()
        _occupancy(with_scanner, passage)
        both = _collect(ctx, config, 2, timeout_s=20.0)
        waited_s = time.monotonic() - t0
    finally:
        running.close()
    assert first[0]["lane"] == "lane2" and "xray" not in first[0]
    assert plain_s < 1.0 <= waited_s
    missing = both[1]
    assert missing["lane"] == "lane1" and missing["xray"] == {"status": "missing"}
    assert missing["verdict"] == first[0]["verdict"] and missing["alarms"] == first[0]["alarms"]
    assert running.value("lanewatch_lane_anomalies_total", lane="lane1", kind="xray-scan-missing") == 1
    assert running.value("lanewatch_lane_anomalies_total", lane="lane2", kind="xray-scan-missing") == 0


def test_readme_documents_every_fusion_key() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### `[fusion]`", 1)[1].split("\n### ", 1)[0]
    keys = [f.name for f in msgspec.structs.fields(FusionConfig)]
    assert [key for key in keys if f"| `{key}` | `{getattr(FusionConfig(), key)}` |" not in section] == []


# ---- what counts as a shield, and what a NORM release pairs with ---------------------------------------
PITCH_MM, SPACING_MM = 10.0, 12.0
LEAD_BLOCK = (300, 307, 24, 33)  # lines, pixels: 96 mm along, 100 mm down, 2 cm of lead
FRAME = (600, 601, 20, 39)  # 24 mm along (one cell), 200 mm down, 1.2 cm of lead: a frame seen edge-on


def _bulk_scan_with(objects: list[tuple[int, int, int, int, float]]) -> Any:
    """A dual-energy scan (12 mm lines, 10 mm pixels) of 40 cm of water over lines 50..749, with lead
    ``(first line, last line, first pixel, last pixel, cm)`` in it, through the service's scan assembler."""
    from lanewatch.edge.bus.records import Record
    from lanewatch.edge.config import DetectionConfig, LaneConfig
    from lanewatch.edge.ops.metrics import ServiceMetrics
    from lanewatch.edge.xray.scan import ScanAssembler
    from lanewatch.kernels import imaging as im

    lines, pixels = 800, 64
    dark, air = np.full((2, pixels), 800.0), np.full((2, pixels), 30000.0)
    att = np.zeros((lines, 2, pixels))
    att[50:750, :, 8:56] = np.array(im.material_attenuation("water", 40.0)[::-1])[:, None]
    for first, last, top, bottom, cm in objects:
        att[first : last + 1, :, top : bottom + 1] += np.array(im.material_attenuation("lead", cm)[::-1])[:, None]
    assembler = ScanAssembler(
        LaneConfig(id="t"), DetectionConfig(), FusionConfig(), ServiceMetrics(CollectorRegistry())
    )
    start = {"scan_id": 1, "energies": 2, "pixels": pixels, "pixel_spacing_mm": [PITCH_MM, SPACING_MM]}
    lines_values = {
        "scan_id": 1,
        "first_line": 0,
        "encoder_mm": list(np.arange(lines) * SPACING_MM),
        "t_ns": (np.arange(lines) * 6_000_000).tolist(),
    }
    records = [
        (Kind.XRAY_SCAN_START, None, start),
        (Kind.XRAY_CALIBRATION, np.repeat(dark[None], 2, 0).astype(np.uint16), {"scan_id": 1, "frame": "dark"}),
        (Kind.XRAY_CALIBRATION, np.repeat(air[None], 2, 0).astype(np.uint16), {"scan_id": 1, "frame": "air"}),
        (Kind.XRAY_LINES, im.raw_from_attenuation(att, dark[None], air[None]), lines_values),
        (Kind.XRAY_SCAN_END, None, {"scan_id": 1, "lines": lines, "missing": 0, "complete": True}),
    ]
    ended = []
    for seq, (kind, counts, values) in enumerate(records):
        rec = Record(
            kind=kind, lane="t", source="t", seq=seq, t_wall_ns=seq, t_mono_ns=seq, counts=counts, values=values
        )
        ended += assembler.on_record(rec, seq)
    assert len(ended) == 1
    return ended[0]


def _spread_excess(released: bool) -> dict[str, Any]:
    """A radiation analysis whose gamma matched filter stands above ``hotspot_z`` all along the 8.4 m load
    (a plateau peaking at the lead block's place); ``released``: the excess alarmed and was released as NORM."""
    samples = 23  # 0.4 m each at 7.2 km/h; the vehicle starts with the first
    z = [3.6 + 0.4 * math.exp(-(((i + 0.5) * 0.4 - 3.1) ** 2)) for i in range(samples)]
    alarms: list[dict[str, Any]] = []
    if released:
        gamma = {"reason": "gamma", "statistic": 4.0, "threshold": 3.9, "location_m": 3.1, "location_sd_m": 0.5}
        norm = {"reason": "norm-consistent", "statistic": 4.2, "threshold": 3.0, "location_m": 4.2, "extent": 0.9}
        alarms = [{**gamma, "alarm": False, "released_as": "norm-consistent"}, {**norm, "alarm": False}]
    profile = {"dt_s": 0.2, "speed_kmh": 7.2, "gross": [900] * samples, "mf_z": z}
    return {"alarms": alarms, "profile": profile}


def test_a_thin_frame_seen_edge_on_is_not_a_shield_whatever_its_area() -> None:
    from lanewatch.edge.config import DetectionConfig
    from lanewatch.edge.xray.fusion import fuse
    from lanewatch.edge.xray.image import SHIELD_MIN_SIZE_MM

    scan = _bulk_scan_with([(*LEAD_BLOCK, 2.0), (*FRAME, 1.2)])
    cfg = FusionConfig()
    objects = sorted(scan.image.objects, key=lambda o: o.lines)
    assert [o.lines for o in objects] == [LEAD_BLOCK[:2], FRAME[:2]]
    block, frame = objects
    for obj in objects:  # both dense high-Z of shield area and thickness
        assert obj.material == "high_z" and obj.area_mm2 >= cfg.shield_min_area_mm2
        assert obj.lead_mm >= cfg.shield_min_lead_mm
    assert block.length_mm == pytest.approx(8 * SPACING_MM) and block.height_mm == pytest.approx(100.0)
    assert frame.length_mm == pytest.approx(2 * SPACING_MM) and frame.height_mm == pytest.approx(200.0)
    assert frame.length_mm < SHIELD_MIN_SIZE_MM <= min(block.length_mm, block.height_mm, frame.height_mm)
    assert block.shields(cfg) and not frame.shields(cfg)
    # even under a hotspot of its own, the frame raises nothing; the block is paired with the hotspot
    fused = fuse(_spread_excess(released=False), scan, cfg, DetectionConfig()).alarms
    found = [a for a in fused if a["reason"] in ("shielded-source-suspected", "image-review")]
    assert [(a["reason"], a["object"]["lines"]) for a in found] == [("shielded-source-suspected", list(block.lines))]


def test_an_excess_released_as_norm_is_no_hotspot_to_pair_a_shield_with() -> None:
    from lanewatch.edge.config import DetectionConfig
    from lanewatch.edge.xray.fusion import fuse

    scan = _bulk_scan_with([(*LEAD_BLOCK, 2.0)])
    fused = fuse(_spread_excess(released=True), scan, FusionConfig(), DetectionConfig())
    found = [a for a in fused.alarms if a["reason"] in ("shielded-source-suspected", "image-review")]
    # the shield still needs a look at its image, with the radiation z at it for the operator
    assert [a["reason"] for a in found] == ["image-review"] and found[0]["alarm"]
    assert found[0]["radiation_z"] >= FusionConfig().hotspot_z
    norm = next(a for a in fused.alarms if a["reason"] == "norm-consistent")
    assert "high-Z object in the load" in norm["image"]["disagrees_because"] and not norm["release_recommended"]


def test_a_radiation_alarm_says_which_image_object_lies_at_its_place() -> None:
    """A plutonium-like neutron alarm where the image shows a high-Z frame too thin to count as a shield: the alarm
    carries the frame, and its reason says it with its numbers. A gamma alarm at the lead block carries the block,
    which the shielded-source finding already says."""
    from types import SimpleNamespace

    from lanewatch.edge.config import DetectionConfig
    from lanewatch.edge.console.present import reasons
    from lanewatch.edge.decisions.decision import Alarm
    from lanewatch.edge.xray.fusion import fuse

    scan = _bulk_scan_with([(*LEAD_BLOCK, 2.0), (*FRAME, 1.2)])
    block, frame = sorted(scan.image.objects, key=lambda o: o.lines)
    analysis = _spread_excess(released=False)
    frame_m = (FRAME[0] - 50) * SPACING_MM / 1000.0  # the load (the vehicle's front) starts at line 50
    plutonium = {"reason": "neutron-gamma", "statistic": 4.4, "threshold": 4.1, "location_m": round(frame_m + 0.3, 2),
                 "location_sd_m": 0.9, "alarm": True}  # fmt: skip
    gamma = {"reason": "gamma", "statistic": 6.0, "threshold": 4.8, "location_m": 3.1, "location_sd_m": 0.4,
             "alarm": True}  # fmt: skip
    analysis["alarms"] = [plutonium, gamma]
    fused = fuse(analysis, scan, FusionConfig(), DetectionConfig()).alarms
    by_reason = {a["reason"]: a for a in fused}
    assert by_reason["neutron-gamma"]["object"]["lines"] == list(frame.lines)
    assert by_reason["gamma"]["object"]["lines"] == list(block.lines)
    assert by_reason["shielded-source-suspected"]["object"]["lines"] == list(block.lines)
    alarms = msgspec.convert(fused, list[Alarm])
    told = SimpleNamespace(
        verdict="ALARM", alarms=alarms, device_alarm=False, incomplete=[], end_reason="gx", model=None
    )
    said = reasons(told)
    lead = by_reason["neutron-gamma"]["object"]["lead_mm"]
    assert said[0] == (
        f"Neutrons with gamma evidence (plutonium-like) 4.4 sigma (threshold 4.1) {frame_m + 0.3:.1f} m behind the "
        f"front, ± 0.9 m; the X-ray image shows a high-Z object there, {lead:.0f} mm lead equivalent, 24 mm along by "
        "200 mm high (not large or thick enough to count as a shield)"
    )
    assert said[1] == "Gamma excess 6.0 sigma (threshold 4.8) 3.1 m behind the front, ± 0.4 m", "the finding says it"
