"""The N42.42 replay driver: reading real portal files and streaming them over the real ingest ingest."""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import SpecUtils
import zmq
from prometheus_client import CollectorRegistry

from lanewatch.drivers.n42 import MPS_TO_KMH, N42Error, N42ReplayDriver, PortalFile, load_portal
from lanewatch.edge.bus import ingest as bus
from lanewatch.edge.bus.driver import RecordPublisher, load_driver
from lanewatch.edge.bus.records import Kind, OccupancyEndValues, Record, decode, iso_utc
from lanewatch.edge.config import parse
from lanewatch.edge.ops.metrics import DriverMetrics

PORTAL_FILE = "spectroscopic_portal_passthrough.n42"
GAMMA_SUM = 600266
DETECTORS = ("A1", "A2", "A3", "A4", "B1", "B2", "B3", "B4")
LANE = "lane1"
BACKGROUND_SAMPLES = (1, 2, 3, 4)
UNOCCUPIED_SAMPLES = (130, 131, 132, 133)


@pytest.fixture(scope="module")
def portal_path(shared_data: Path) -> Path:
    return shared_data / "n42" / PORTAL_FILE


@pytest.fixture(scope="module")
def portal(portal_path: Path) -> PortalFile:
    return load_portal(portal_path)


@pytest.fixture(scope="module")
def derived(portal_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[tuple[int, str], int]]:
    """The real portal file re-written by SpecUtils as N42-2012 with background samples and neutron counts.

    Samples 1-4 become Background (unoccupied), samples 130-133 unoccupied Foreground, and every
    detector gets a seeded Poisson neutron count; returns the file and those counts by (sample, detector).
    """
    spec = SpecUtils.SpecFile()
    spec.loadFile(str(portal_path), SpecUtils.ParserType.N42_2006)
    rng = np.random.default_rng(42)
    neutrons = {}
    for m in spec.measurements():
        number = m.sampleNumber()
        if number in BACKGROUND_SAMPLES:
            m.setSourceType(SpecUtils.SourceType.Background)
        if number in BACKGROUND_SAMPLES + UNOCCUPIED_SAMPLES:
            m.setOccupancyStatus(SpecUtils.OccupancyStatus.NotOccupied)
        count = int(rng.poisson(2.0))
        neutrons[number, m.detectorName()] = count
        m.setNeutronCounts([float(count)], 0.0)
    spec.cleanupAfterLoad(True, False, False)
    path = tmp_path_factory.mktemp("n42") / "derived_2012.n42"
    with path.open("wb") as f:
        spec.writeToStream(f, spec.sampleNumbers(), spec.detectorNames(), SpecUtils.SaveSpectrumAsType.N42_2012)
    return path, neutrons


@pytest.fixture
def ingest() -> Iterator[tuple[zmq.Socket, zmq.Socket]]:
    """The service's ingest SUB bound on a free loopback port, and a driver publisher already subscribed to."""
    ctx = zmq.Context()
    sub = bus.service_ingest(ctx, "tcp://127.0.0.1:*")
    pub = bus.driver_publisher(ctx, sub.getsockopt(zmq.LAST_ENDPOINT).decode())
    try:
        deadline = time.monotonic() + 5.0
        # A bound SUB attaches a new peer (and sends it the subscription) only when used, as the service's loop does.
        while not bus.wait_for_subscriber(pub, 0.05):
            sub.poll(0)
            assert time.monotonic() < deadline, "the ingest socket never subscribed"
        yield pub, sub
    finally:
        pub.close(linger=0)
        sub.close(linger=0)
        ctx.term()


def replay(
    ingest: tuple[zmq.Socket, zmq.Socket], portal: PortalFile, **options: object
) -> tuple[list[Record], N42ReplayDriver]:
    """Run the driver in a thread and collect every record it published, decoded from the SUB socket."""
    pub, sub = ingest
    publisher = RecordPublisher(pub, LANE, "n42", DriverMetrics(CollectorRegistry()))
    driver = N42ReplayDriver(publisher, portal, **options)  # type: ignore[arg-type]
    stop = threading.Event()
    thread = threading.Thread(target=driver.run, args=(stop,), name="n42-replay")
    thread.start()
    records: list[Record] = []
    deadline = time.monotonic() + 60
    try:
        while thread.is_alive() or len(records) < publisher.seq:
            assert time.monotonic() < deadline, f"received {len(records)} of {publisher.seq} records"
            if sub.poll(100):
                records.append(decode(sub.recv_multipart()))
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    return records, driver


def window_sum(spectra: np.ndarray, edges_kev: np.ndarray, low: float, high: float) -> np.ndarray:
    """Counts per detector in the channels whose centre energy is in [low, high) keV."""
    centres = (edges_kev[:, :-1] + edges_kev[:, 1:]) / 2
    return np.where((centres >= low) & (centres < high), spectra, 0).sum(axis=1)


# ---- reading ------------------------------------------------------------------------------


def test_load_portal_reads_the_real_passthrough_file(portal: PortalFile) -> None:
    assert len(portal.samples) == 133
    assert [s.number for s in portal.samples] == list(range(1, 134))
    assert portal.detectors == DETECTORS
    assert portal.neutron_detectors == ()
    assert portal.channels == 16384
    assert portal.instrument == "ORTEC OSASP"
    assert portal.occupancy == 1
    assert portal.speed_kmh == pytest.approx(2.4 * 1.609344, abs=1e-3)
    for s in portal.samples:
        assert s.spectra.shape == (8, 16384) and s.spectra.dtype == np.uint32
        assert s.real_time_s == pytest.approx(0.25)
        assert s.occupied and not s.background and s.neutrons is None
        assert np.array_equal(s.gross, s.spectra.sum(axis=1))
        assert np.all((s.live_time_s > 0) & (s.live_time_s <= 0.27 + 1e-6))
    assert sum(int(s.gross.sum()) for s in portal.samples) == GAMMA_SUM
    assert portal.samples[0].start == datetime(2010, 1, 24, 0, 8, 24, 78000, tzinfo=UTC)
    assert portal.samples[-1].start == datetime(2010, 1, 24, 0, 8, 57, 78000, tzinfo=UTC)
    assert portal.energy_edges_kev is not None and portal.energy_edges_kev.shape == (8, 16385)
    # The file's polynomial for A1: 0.1401463 + 0.187422 ch - 2.07732e-09 ch^2 keV.
    assert portal.energy_edges_kev[0, 0] == pytest.approx(0.1401463, abs=1e-5)
    assert portal.energy_edges_kev[0, -1] == pytest.approx(
        0.1401463 + 0.187422 * 16384 - 2.07732e-09 * 16384**2, rel=1e-5
    )


def test_load_portal_reads_background_neutrons_and_unoccupied_samples(
    derived: tuple[Path, dict[tuple[int, str], int]],
) -> None:
    path, neutrons = derived
    portal = load_portal(path)
    assert portal.neutron_detectors == DETECTORS
    assert [s.number for s in portal.samples if s.background] == list(BACKGROUND_SAMPLES)
    assert [s.number for s in portal.samples if not s.occupied] == list(BACKGROUND_SAMPLES + UNOCCUPIED_SAMPLES)
    for s in portal.samples:
        assert s.neutrons is not None
        assert s.neutrons.tolist() == [neutrons[s.number, d] for d in DETECTORS]
    assert sum(int(s.gross.sum()) for s in portal.samples) == GAMMA_SUM
    assert portal.occupancy == 1


def test_a_single_laboratory_spectrum_is_not_a_portal_occupancy(shared_data: Path) -> None:
    path = shared_data / "n42" / "Mn56_DetX_Shielded.n42"
    with pytest.raises(N42Error) as err:
        load_portal(path)
    message = str(err.value)
    assert str(path) in message
    assert "not a portal occupancy" in message
    assert "1824.65 s" in message and "Mn56 Shielded" in message


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(np.random.default_rng(7).bytes(4096), id="random-bytes"),
        pytest.param(b"channel,counts\n0,12\n1,15\n", id="csv-text"),
        pytest.param(b'<?xml version="1.0"?>\n<inventory><item>3</item></inventory>\n', id="other-xml"),
        pytest.param(
            b'<?xml version="1.0"?>\n<N42InstrumentData xmlns="http://physics.nist.gov/Divisions/Div846/Gp4/'
            b'ANSIN4242/2005/ANSIN4242"></N42InstrumentData>\n',
            id="n42-without-data",
        ),
    ],
)
def test_files_that_are_not_n42_raise_n42error_naming_the_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "input.n42"
    path.write_bytes(content)
    with pytest.raises(N42Error, match=str(path)):
        load_portal(path)


@pytest.mark.parametrize("keep", [0.5, 0.9999], ids=["half", "all-but-the-closing-tag"])
def test_a_truncated_portal_file_raises_n42error(portal_path: Path, tmp_path: Path, keep: float) -> None:
    data = portal_path.read_bytes()
    path = tmp_path / "truncated.n42"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(N42Error, match="truncated") as err:
        load_portal(path)
    assert str(path) in str(err.value)


def test_a_missing_file_raises_n42error(tmp_path: Path) -> None:
    with pytest.raises(N42Error, match="cannot read"):
        load_portal(tmp_path / "absent.n42")


# ---- replay over the bus ----------------------------------------------------------------


def test_replay_publishes_every_sample_speed_and_end_over_the_bus(
    ingest: tuple[zmq.Socket, zmq.Socket], portal: PortalFile
) -> None:
    records, driver = replay(ingest, portal, speedup=0)
    assert [r.seq for r in records] == list(range(len(records)))
    assert Counter(r.kind for r in records) == {Kind.GAMMA_SCAN: 133, Kind.SPEED: 1, Kind.OCCUPANCY_END: 1}
    assert {(r.lane, r.source) for r in records} == {(LANE, "n42")}
    assert records[0].kind is Kind.GAMMA_SCAN and records[1].kind is Kind.SPEED
    assert records[1].values.speed_kmh == pytest.approx(1.0728960037 * MPS_TO_KMH)
    assert records[-1].kind is Kind.OCCUPANCY_END and records[-1].values == OccupancyEndValues(device_occupancy=1)
    scans = [r for r in records if r.kind is Kind.GAMMA_SCAN]
    for record, sample in zip(scans, portal.samples, strict=True):
        assert record.values.sample == sample.number
        assert record.dt_s == pytest.approx(0.25)
        assert record.spectra is not None and record.spectra.dtype == np.uint32
        assert np.array_equal(record.spectra, sample.spectra)
        assert record.counts is not None and record.counts.shape == (8, 1)
        assert np.array_equal(record.counts[:, 0], sample.gross)
    assert sum(int(r.spectra.sum()) for r in scans if r.spectra is not None) == GAMMA_SUM
    assert all(b.t_mono_ns >= a.t_mono_ns for a, b in itertools.pairwise(records))
    assert driver.done and driver.health()["ok"] and driver.health()["done"]
    assert driver.health()["sent"] == 133
    metrics = driver.publisher.metrics.registry
    assert metrics.get_sample_value("lanewatch_driver_records_published_total", {"lane": LANE}) == 135
    assert metrics.get_sample_value("lanewatch_driver_lines_total", {"lane": LANE, "type": "occupied"}) == 133
    assert metrics.get_sample_value("lanewatch_driver_connected", {"lane": LANE}) == 0


def test_energy_windows_count_the_channels_inside_each_window(
    ingest: tuple[zmq.Socket, zmq.Socket], portal: PortalFile
) -> None:
    edges = (30.0, 400.0, 3000.0)
    records, _ = replay(ingest, portal, speedup=0, windows_kev=edges)
    scans = [r for r in records if r.kind is Kind.GAMMA_SCAN]
    assert len(scans) == 133
    assert portal.energy_edges_kev is not None
    inside = outside = 0
    for record, sample in zip(scans, portal.samples, strict=True):
        assert record.counts is not None and record.counts.shape == (8, 2)
        for k in range(2):
            expected = window_sum(sample.spectra, portal.energy_edges_kev, edges[k], edges[k + 1])
            assert np.array_equal(record.counts[:, k], expected)
        in_range = window_sum(sample.spectra, portal.energy_edges_kev, edges[0], edges[-1])
        assert np.array_equal(record.counts.sum(axis=1), in_range)
        inside += int(in_range.sum())
        outside += int(sample.gross.sum() - in_range.sum())
    assert inside + outside == GAMMA_SUM
    assert inside > 0 and outside > 0  # the windows leave out counts below 30 keV and above 3000 keV


def test_replay_publishes_background_and_neutrons_as_a_live_lane_would(
    ingest: tuple[zmq.Socket, zmq.Socket], derived: tuple[Path, dict[tuple[int, str], int]]
) -> None:
    path, neutrons = derived
    portal = load_portal(path)
    records, _ = replay(ingest, portal, speedup=0)
    assert [r.seq for r in records] == list(range(len(records)))
    kinds = [r.kind for r in records]
    background = [Kind.GAMMA_BACKGROUND, Kind.NEUTRON_BACKGROUND]
    scan = [Kind.GAMMA_SCAN, Kind.NEUTRON_SCAN]
    assert kinds == (
        background * 4 + scan + [Kind.SPEED] + scan * 124 + [Kind.OCCUPANCY_END] + background * len(UNOCCUPIED_SAMPLES)
    )
    by_sample = {s.number: s for s in portal.samples}
    for r in records:
        if r.kind in (Kind.GAMMA_BACKGROUND, Kind.NEUTRON_BACKGROUND, Kind.GAMMA_SCAN, Kind.NEUTRON_SCAN):
            sample = by_sample[r.values.sample]
            assert r.dt_s == sample.real_time_s
        if r.kind is Kind.GAMMA_BACKGROUND:
            assert r.counts is not None and r.spectra is None
            assert np.allclose(r.counts[:, 0], sample.gross / sample.real_time_s)
        elif r.kind in (Kind.NEUTRON_SCAN, Kind.NEUTRON_BACKGROUND):
            expected = np.array([neutrons[sample.number, d] for d in DETECTORS], dtype=np.float64)
            rate = 1.0 if r.kind is Kind.NEUTRON_SCAN else 1.0 / sample.real_time_s
            assert r.counts is not None and r.counts.shape == (8, 1)
            assert np.allclose(r.counts[:, 0], expected * rate)
    end = records[kinds.index(Kind.OCCUPANCY_END)]
    last_background = by_sample[BACKGROUND_SAMPLES[-1]]
    assert end.values.device_occupancy == 1
    assert last_background.neutrons is not None
    assert end.values.neutron_background_cps == pytest.approx(
        last_background.neutrons.sum() / last_background.real_time_s
    )


def test_replay_is_paced_by_the_sample_real_times(ingest: tuple[zmq.Socket, zmq.Socket], portal: PortalFile) -> None:
    speedup = 100.0
    before_ns = time.monotonic_ns()
    records, _ = replay(ingest, portal, speedup=speedup)
    scans = [r for r in records if r.kind is Kind.GAMMA_SCAN]
    # Never early: the last sample goes out no sooner than the whole recording, sped up, after the start
    # (a late start or a slow machine only makes it later).
    recorded_s = sum(s.real_time_s for s in portal.samples)
    assert (scans[-1].t_mono_ns - before_ns) / 1e9 >= recorded_s / speedup * 0.999
    assert (scans[-1].t_wall_ns - scans[0].t_wall_ns) / 1e9 > 0


def test_stop_ends_a_live_paced_replay_early(ingest: tuple[zmq.Socket, zmq.Socket], portal: PortalFile) -> None:
    pub, sub = ingest
    driver = N42ReplayDriver(RecordPublisher(pub, LANE, "n42", DriverMetrics(CollectorRegistry())), portal, speedup=1)
    stop = threading.Event()
    thread = threading.Thread(target=driver.run, args=(stop,))
    thread.start()
    try:
        assert sub.poll(5000), "no record within 5 s of a 0.25 s sample"
        first = decode(sub.recv_multipart())
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
    assert first.kind is Kind.GAMMA_SCAN and first.seq == 0
    assert not driver.done and driver.sent < len(portal.samples)


# ---- command line and registry -------------------------------------------------------------


def driver_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lanewatch driver n42", exit_on_error=False)
    N42ReplayDriver.add_arguments(parser)
    return parser


def test_from_args_takes_windows_from_the_option_or_the_configuration(portal_path: Path) -> None:
    config = parse("[detection]\nenergy_windows_kev = [50.0, 200.0, 1500.0, 2800.0]\n")
    ctx = zmq.Context()
    sock = ctx.socket(zmq.XPUB)
    try:
        publisher = RecordPublisher(sock, LANE, "n42", DriverMetrics(CollectorRegistry()))
        args = driver_parser().parse_args(["--file", str(portal_path)])
        driver = N42ReplayDriver.from_args(args, config, publisher)
        assert driver.windows_kev == (50.0, 200.0, 1500.0, 2800.0) and driver.speedup == 1.0
        assert driver.bounds is not None and driver.bounds.shape == (8, 4)
        args = driver_parser().parse_args(["--file", str(portal_path), "--speedup", "0", "--windows-kev", "30,3000"])
        driver = N42ReplayDriver(publisher, driver.portal, speedup=args.speedup, windows_kev=args.windows_kev)
        assert driver.windows_kev == (30.0, 3000.0) and driver.speedup == 0.0
    finally:
        sock.close(linger=0)
        ctx.term()


@pytest.mark.parametrize(
    "argv",
    [["--speedup", "-1"], ["--speedup", "fast"], ["--windows-kev", "400,30"], ["--windows-kev", "30"], []],
    ids=["negative-speedup", "speedup-word", "decreasing-windows", "one-edge", "no-file"],
)
def test_bad_options_are_refused(argv: list[str]) -> None:
    with pytest.raises((argparse.ArgumentError, SystemExit)):
        driver_parser().parse_args(["--file", "x.n42", *argv] if argv else [])


def test_from_args_counts_and_reports_a_file_it_cannot_replay(shared_data: Path) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.XPUB)
    try:
        metrics = DriverMetrics(CollectorRegistry())
        args = driver_parser().parse_args(["--file", str(shared_data / "n42" / "Mn56_DetX_Shielded.n42")])
        with pytest.raises(N42Error, match="not a portal occupancy"):
            N42ReplayDriver.from_args(args, parse(""), RecordPublisher(sock, LANE, "n42", metrics))
        assert (
            metrics.registry.get_sample_value("lanewatch_driver_parse_errors_total", {"lane": LANE, "kind": "n42-file"})
            == 1
        )
    finally:
        sock.close(linger=0)
        ctx.term()


def test_constructor_refuses_bad_pacing_and_windows(portal: PortalFile) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.XPUB)
    try:
        publisher = RecordPublisher(sock, LANE, "n42", DriverMetrics(CollectorRegistry()))
        with pytest.raises(ValueError, match="speedup"):
            N42ReplayDriver(publisher, portal, speedup=float("nan"))
        with pytest.raises(ValueError, match="increasing"):
            N42ReplayDriver(publisher, portal, windows_kev=(30.0, 30.0, 400.0))
    finally:
        sock.close(linger=0)
        ctx.term()


def test_the_driver_is_registered_as_n42() -> None:
    assert load_driver("n42") is N42ReplayDriver


def test_lanewatch_replay_dates_the_decision_by_the_file(portal_path: Path, portal: PortalFile) -> None:
    """The decision of a replayed file carries the file's own times, not the replay's."""
    proc = subprocess.run(
        [sys.executable, "-m", "lanewatch.edge", "replay", str(portal_path), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    decision = json.loads(proc.stdout.strip().splitlines()[-1])
    first, last = portal.samples[0], portal.samples[-1]
    assert first.start is not None and last.start is not None
    assert decision["start"] == iso_utc(round(first.start.timestamp() * 1e9))
    assert decision["start"] == "2010-01-24T00:08:24.078Z"
    assert decision["end"] == iso_utc(round((last.start.timestamp() + last.real_time_s) * 1e9))
    command = [sys.executable, "-m", "lanewatch.edge", "replay", str(portal_path)]
    table = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert table.returncode == 0, table.stdout + table.stderr
    head, row = table.stdout.splitlines()
    assert head.split()[:6] == ["SEQ", "END", "(UTC)", "LANE", "VERDICT", "FIELDED"], "the columns have titles"
    assert row.split()[:5] == ["1", "2010-01-24", "00:08:57", "replay", "INCOMPLETE"]
    missing = subprocess.run(
        [sys.executable, "-m", "lanewatch.edge", "replay", str(portal_path) + ".gone"], capture_output=True, text=True
    )
    assert missing.returncode == 2 and missing.stdout == "" and "cannot read N42 file" in missing.stderr
