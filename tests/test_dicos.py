"""DICOS import: the real sample files, refused inputs, and the drop-directory watcher on a real ingest."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import msgspec
import numpy as np
import pydicom
import pytest
import zmq
from prometheus_client import CollectorRegistry

from lanewatch.drivers.dicos import DicosDriver, DicosDropWatcher, DicosError, publish_scan, read_dicos
from lanewatch.edge.bus import ingest
from lanewatch.edge.bus.driver import RecordPublisher, load_driver
from lanewatch.edge.bus.records import Kind, Record, ScanStartValues, decode
from lanewatch.edge.ops.metrics import DriverMetrics
from lanewatch.edge.xray import imaging

REPO = Path(__file__).resolve().parents[1]
LANE = "lane-7"
PROCESSING = "SimpleProcessingDX.dcs"
PRESENTATION = "SimplePresentationDX.dcs"
TDRS = {"SimpleBaggageTDR.dcs": 1, "SimpleBaggageNoThreatTDR.dcs": 0, "MultiplePTOsTDR.dcs": 2}


@pytest.fixture
def dicos(shared_data: Path) -> Path:
    return shared_data / "dicos"


# ---- reading -------------------------------------------------------------------------------------------
def test_processing_dx_decodes_with_the_documented_shape_and_range(dicos: Path) -> None:
    image = read_dicos(dicos / PROCESSING)
    assert image.pixels.dtype == np.uint16
    assert (image.rows, image.cols) == (128, 256)
    assert (int(image.pixels.min()), int(image.pixels.max())) == (0, 32767)
    assert image.sop_class_uid == "1.2.840.10008.5.1.4.1.1.501.2.2"
    assert image.sop_class_name == "DICOS Digital X-Ray Image Storage - For Processing"
    assert image.ooi_type == "CARGO"
    assert image.pixel_spacing_mm is None
    assert image.acquired.startswith("20240103")
    assert image.scan_id == read_dicos(dicos / PROCESSING).scan_id < 2**63
    # The sample is a ramp: pixel (row r, column c) holds 256 r + c.
    np.testing.assert_array_equal(image.pixels, np.arange(128 * 256).reshape(128, 256))
    lines = image.lines()
    assert lines.shape == (256, 1, 128) and lines.flags.c_contiguous
    assert lines[200, 0, 17] == image.pixels[17, 200] == 17 * 256 + 200


def test_a_dicos_image_goes_through_the_imaging_pipeline(dicos: Path) -> None:
    """Single energy, dark 0, air at the ramp's top: the dense region is every pixel with T <= 1/e."""
    lines = read_dicos(dicos / PROCESSING).lines()
    air = float(lines.max())
    proc = imaging.ScanProcessor(np.zeros((1, 128)), np.full((1, 128), air), pixel_pitch_mm=2.0, column_spacing_mm=3.0)
    proc.process(lines)
    result = proc.finish()
    value = np.arange(128 * 256) / air
    dense, dark, clear = (value <= np.exp(-1.0)).sum(), (value < np.exp(-5.3)).sum(), (value > np.exp(-0.05)).sum()
    assert [(r.area_px, r.lines, r.pixels, r.material) for r in result.regions] == [
        (dense, (0, 255), (0, 47), "unclassified")
    ]
    assert result.regions[0].class_px == {"unresolvable": dark, "unclassified": dense - dark}
    assert result.class_px == {"air": clear, "unresolvable": dark, "unclassified": 128 * 256 - clear - dark}


def test_presentation_dx_jpeg_lossless_decodes_to_the_same_image(dicos: Path) -> None:
    presentation = read_dicos(dicos / PRESENTATION)
    assert presentation.transfer_syntax == "1.2.840.10008.1.2.4.70"  # JPEG Lossless SV1
    assert presentation.sop_class_uid == "1.2.840.10008.5.1.4.1.1.501.2.1"
    np.testing.assert_array_equal(presentation.pixels, read_dicos(dicos / PROCESSING).pixels)


def test_presentation_dx_without_a_jpeg_decoder_is_refused_naming_the_codec(dicos: Path) -> None:
    script = (
        "import sys\n"
        "sys.modules['gdcm'] = None\n"
        "sys.modules['pylibjpeg'] = None\n"
        "from lanewatch.drivers.dicos import DicosError, read_dicos\n"
        "try:\n"
        "    read_dicos(sys.argv[1])\n"
        "except DicosError as exc:\n"
        "    print(exc.kind)\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(dicos / PRESENTATION)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    kind, message = out.split("\n", 1)
    assert kind == "codec"
    assert "JPEG Lossless" in message and "python-gdcm" in message


@pytest.mark.parametrize(("name", "ptos"), sorted(TDRS.items()))
def test_threat_detection_reports_are_refused_with_their_pto_count(dicos: Path, name: str, ptos: int) -> None:
    with pytest.raises(DicosError, match="threat detection report") as err:
        read_dicos(dicos / name)
    assert err.value.kind == "tdr"
    assert f"{ptos} potential threat object" in str(err.value)


def test_garbage_empty_truncated_and_missing_files_are_refused(dicos: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "noise.dcs"
    garbage.write_bytes(np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    empty = tmp_path / "empty.dcs"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.dcs"
    truncated.write_bytes((dicos / PROCESSING).read_bytes()[:30000])
    cases = {
        garbage: ("not_dicom", "not a DICOM file"),
        empty: ("not_dicom", "not a DICOM file"),
        dicos.parent / "README.md": ("not_dicom", "not a DICOM file"),
        truncated: ("pixels", "cannot be decoded"),
        tmp_path / "absent.dcs": ("io", "cannot read"),
    }
    for path, (kind, words) in cases.items():
        with pytest.raises(DicosError, match=words) as err:
            read_dicos(path)
        assert err.value.kind == kind, path
        assert str(path) in str(err.value)


@pytest.mark.parametrize("name", [PROCESSING, PRESENTATION, "MultiplePTOsTDR.dcs"])
def test_damaged_files_give_a_dicos_error_and_nothing_else(dicos: Path, tmp_path: Path, name: str) -> None:
    data = (dicos / name).read_bytes()
    rng = np.random.default_rng(11)
    path = tmp_path / name
    outcomes = set()
    for _ in range(40):
        damaged = bytearray(data)
        at = rng.integers(128, len(data), 8)  # keep the preamble: damage inside the DICOM stream
        damaged[at[0] : at[0] + 4] = rng.integers(0, 256, 4, dtype=np.uint8).tobytes()
        for k in at[1:]:
            damaged[k] ^= 0xFF
        path.write_bytes(bytes(damaged[: rng.integers(len(data) // 2, len(data) + 1)]))
        try:
            read_dicos(path)
            outcomes.add("read")
        except DicosError as exc:
            outcomes.add(exc.kind)
    assert outcomes - {"read"}, "no damage was detected at all"


def _variant(dicos: Path, tmp_path: Path, name: str, **changes: object) -> Path:
    """The processing DX with some elements changed, saved as a new file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the sample's UIDs have leading zeros
        ds = pydicom.dcmread(dicos / PROCESSING)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
        if keyword == "SOPClassUID":
            ds.file_meta.MediaStorageSOPClassUID = value
    path = tmp_path / name
    ds.save_as(path)
    return path


def test_other_dicom_and_dicos_objects_are_refused(dicos: Path, tmp_path: Path) -> None:
    ct = _variant(dicos, tmp_path, "ct.dcs", SOPClassUID="1.2.840.10008.5.1.4.1.1.501.1")
    medical = _variant(dicos, tmp_path, "medical.dcm", SOPClassUID="1.2.840.10008.5.1.4.1.1.2")
    two = _variant(
        dicos, tmp_path, "two.dcs", NumberOfFrames=2, PixelData=read_dicos(dicos / PROCESSING).pixels.tobytes() * 2
    )
    signed = _variant(dicos, tmp_path, "signed.dcs", PixelRepresentation=1)
    for path, kind, words in [
        (ct, "not_image", "DICOS CT Image Storage"),
        (medical, "not_dicos", "not a DICOS security image"),
        (two, "pixels", "2 frames"),
        (signed, "pixels", "signed"),
    ]:
        with pytest.raises(DicosError, match=words) as err:
            read_dicos(path)
        assert err.value.kind == kind


def test_spacing_and_inverted_intensity_are_honoured(dicos: Path, tmp_path: Path) -> None:
    path = _variant(dicos, tmp_path, "spaced.dcs", PixelSpacing=[3.5, 5.0], PixelIntensityRelationshipSign=-1)
    image = read_dicos(path)
    assert image.pixel_spacing_mm == (3.5, 5.0)
    np.testing.assert_array_equal(image.pixels, 65535 - read_dicos(dicos / PROCESSING).pixels)


# ---- the bus -------------------------------------------------------------------------------------------
class Bus:
    """A SUB bound on a free loopback port and a driver publisher connected to it."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.sub = _service_sub(self.ctx)
        self.pub = ingest.driver_publisher(self.ctx, self.sub.getsockopt_string(zmq.LAST_ENDPOINT))
        self.pub.setsockopt(zmq.LINGER, 0)
        deadline = time.monotonic() + 5.0
        # The bound SUB sends its subscription only once it is used, so poll it while waiting.
        while not ingest.wait_for_subscriber(self.pub, 0.02):
            if self.sub.poll(0) or time.monotonic() > deadline:
                self.close()
                raise AssertionError("the SUB never subscribed")
        self.registry = CollectorRegistry()
        self.publisher = RecordPublisher(self.pub, LANE, "dicos", DriverMetrics(self.registry))

    def receive(self, timeout_s: float = 5.0) -> Record:
        assert self.sub.poll(timeout_s * 1000), "no record on the bus"
        return decode(self.sub.recv_multipart())

    def scan(self, timeout_s: float = 5.0) -> list[Record]:
        """Records up to and including the next XRAY_SCAN_END."""
        records = [self.receive(timeout_s)]
        while records[-1].kind != Kind.XRAY_SCAN_END:
            records.append(self.receive(timeout_s))
        return records

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, {"lane": LANE, **labels}) or 0.0

    def close(self) -> None:
        self.pub.close(0)
        self.sub.close(0)
        self.ctx.term()


def _service_sub(ctx: zmq.Context) -> zmq.Socket:
    """The service's ingest SUB, bound on a free loopback port."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return ingest.service_ingest(ctx, f"tcp://127.0.0.1:{port}")


@pytest.fixture
def zbus() -> Iterator[Bus]:
    b = Bus()
    yield b
    b.close()


def _check_scan(records: list[Record], image_lines: np.ndarray, batch: int, contiguous: bool = True) -> ScanStartValues:
    kinds = [r.kind for r in records]
    n_batches = -(-len(image_lines) // batch)
    calibration = [Kind.XRAY_CALIBRATION] * 2
    assert kinds == [Kind.XRAY_SCAN_START, *calibration, *[Kind.XRAY_LINES] * n_batches, Kind.XRAY_SCAN_END]
    start, dark, air, *batches, end = records
    scan_id = start.values.scan_id
    assert start.values.energies == 1 and start.values.pixels == image_lines.shape[2]
    assert [dark.values.frame, air.values.frame] == ["dark", "air"]
    assert np.all(dark.counts == 0) and np.all(air.counts == image_lines.max())
    assert air.counts.shape == (1, 1, image_lines.shape[2])
    assert [b.values.first_line for b in batches] == list(range(0, len(image_lines), batch))
    assert all(b.values.line_count == len(b.counts) == len(b.values.t_ns) for b in batches)
    np.testing.assert_array_equal(np.concatenate([b.counts for b in batches]), image_lines)
    assert {r.values.scan_id for r in records} == {scan_id}
    assert msgspec.structs.asdict(end.values) == {
        "scan_id": scan_id,
        "lines": len(image_lines),
        "missing": 0,
        "complete": True,
        "reason": "scan_end",
    }
    seqs = [r.seq for r in records]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) if contiguous else seqs == sorted(set(seqs))
    assert all(r.lane == LANE and r.source == "dicos" for r in records)
    return start.values


def test_publish_scan_carries_spacing_as_encoder_travel(dicos: Path, tmp_path: Path, zbus: Bus) -> None:
    image = read_dicos(_variant(dicos, tmp_path, "spaced.dcs", PixelSpacing=[3.5, 5.0]))
    assert publish_scan(zbus.publisher, image, batch_lines=100) == 3 + 3 + 1
    records = zbus.scan()
    start = _check_scan(records, image.lines(), 100)
    assert start.pixel_spacing_mm == [3.5, 5.0]
    assert records[4].values.encoder_mm[:2] == [500.0, 505.0]
    assert zbus.metric("lanewatch_driver_lines_total", type="line") == 256


def _drop(src: Path, directory: Path, name: str | None = None) -> Path:
    """Copy ``src`` into ``directory`` the atomic way: a hidden temporary name, then a rename."""
    target = directory / (name or src.name)
    tmp = directory / f".{target.name}.incoming"
    shutil.copyfile(src, tmp)
    os.replace(tmp, target)
    return target


def test_drop_directory_imports_scans_and_rejects_the_rest(dicos: Path, tmp_path: Path, zbus: Bus) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    watcher = DicosDropWatcher(drop, LANE, zbus.publisher, poll_s=0.05, batch_lines=64)
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,))
    thread.start()
    try:
        _drop(dicos / "MultiplePTOsTDR.dcs", drop)
        (drop / "junk.dcs").write_bytes(b"\x00not dicom at all" * 40)
        _drop(dicos / PROCESSING, drop)
        records = zbus.scan()
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
    start = _check_scan(records, read_dicos(dicos / PROCESSING).lines(), 64)
    assert start.file == PROCESSING and start.origin == "dicos"
    assert start.sop_class == "DICOS Digital X-Ray Image Storage - For Processing"
    assert sorted(p.name for p in drop.iterdir()) == ["done", "rejected"]
    assert [p.name for p in (drop / "done").iterdir()] == [PROCESSING]
    rejected = drop / "rejected"
    assert sorted(p.name for p in rejected.iterdir()) == sorted(
        ["MultiplePTOsTDR.dcs", "MultiplePTOsTDR.dcs.why", "junk.dcs", "junk.dcs.why"]
    )
    assert "threat detection report" in (rejected / "MultiplePTOsTDR.dcs.why").read_text()
    assert "not a DICOM file" in (rejected / "junk.dcs.why").read_text()
    assert zbus.metric("lanewatch_driver_parse_errors_total", kind="tdr") == 1
    assert zbus.metric("lanewatch_driver_parse_errors_total", kind="not_dicom") == 1
    assert (watcher.imported, watcher.rejected) == (1, 2)
    # A restart finds nothing left to import.
    again = DicosDropWatcher(drop, LANE, zbus.publisher, poll_s=0.05)
    assert again.poll_once() == [] and again.poll_once() == []
    assert not zbus.sub.poll(200)


def test_a_file_is_taken_only_once_its_size_stops_changing(dicos: Path, tmp_path: Path, zbus: Bus) -> None:
    data = (dicos / PROCESSING).read_bytes()
    watcher = DicosDropWatcher(tmp_path, LANE, zbus.publisher, poll_s=0.05)
    path = tmp_path / "scan.dcs"
    path.write_bytes(data[:20000])
    (tmp_path / "other.part").write_bytes(data)
    (tmp_path / ".hidden.dcs").write_bytes(data)
    assert watcher.poll_once() == []  # first sight
    with path.open("ab") as f:
        f.write(data[20000:])
    assert watcher.poll_once() == []  # still growing
    assert watcher.poll_once() == [tmp_path / "done" / "scan.dcs"]
    assert len(zbus.scan()) == 3 + 4 + 1
    assert watcher.poll_once() == [] and watcher.poll_once() == []
    assert (tmp_path / "other.part").exists() and (tmp_path / ".hidden.dcs").exists()
    # The same name again goes beside the first, never over it.
    _drop(dicos / PROCESSING, tmp_path, "scan.dcs")
    watcher.poll_once()
    assert watcher.poll_once() == [tmp_path / "done" / "scan.1.dcs"]


def test_an_unreadable_directory_is_reported_not_fatal(tmp_path: Path, zbus: Bus) -> None:
    watcher = DicosDropWatcher(tmp_path / "gone", LANE, zbus.publisher)
    assert watcher.poll_once() == []
    assert not watcher.readable and "cannot list" in watcher.last_error
    assert zbus.metric("lanewatch_driver_connected") == 0


# ---- the driver ----------------------------------------------------------------------------------------
def test_registered_as_the_dicos_driver() -> None:
    assert load_driver("dicos") is DicosDriver


def test_driver_health_reports_the_watch(tmp_path: Path, zbus: Bus) -> None:
    driver = DicosDriver(zbus.publisher, watch=str(tmp_path), poll_s=0.05)
    assert driver.health() == {
        "ok": True,
        "lane": LANE,
        "source": "dicos",
        "directory": str(tmp_path),
        "imported": 0,
        "rejected": 0,
        "last_error": "",
    }
    with pytest.raises(ValueError, match="exactly one"):
        DicosDriver(zbus.publisher, watch=str(tmp_path), file="x.dcs")


CLI = [
    sys.executable,
    "-m",
    "lanewatch.edge",
    "driver",
    "dicos",
    "--lane",
    LANE,
    "--config",
    str(REPO / "tests" / "plaintext.toml"),
]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_command_line_file_import_publishes_one_scan(dicos: Path) -> None:
    ctx = zmq.Context()
    sub = _service_sub(ctx)
    endpoint = sub.getsockopt_string(zmq.LAST_ENDPOINT)
    args = ["--file", str(dicos / PROCESSING), "--ingest", endpoint, "--batch-lines", "128", "--wait-service", "20"]
    proc = subprocess.Popen([*CLI, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    records: list[Record] = []
    try:
        deadline = time.monotonic() + 60
        kinds = [Kind.XRAY_SCAN_END, Kind.STATUS]  # the driver's last status follows the end of its scan
        while [r.kind for r in records][-2:] != kinds and time.monotonic() < deadline:
            if sub.poll(100):
                records.append(decode(sub.recv_multipart()))
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
        sub.close(0)
        ctx.term()
    assert proc.returncode == 0, stderr
    assert [r.seq for r in records] == list(range(records[0].seq, records[0].seq + len(records)))
    status = [r for r in records if r.kind is Kind.STATUS]
    assert status[-1].values.errors == 0 and status[-1].values.published == records[-1].seq
    scan = [r for r in records if r.kind is not Kind.STATUS]
    _check_scan(scan, read_dicos(dicos / PROCESSING).lines(), 128, contiguous=len(scan) == len(records))


def test_command_line_refuses_a_report_and_a_missing_directory(dicos: Path, tmp_path: Path) -> None:
    refused = _cli("--file", str(dicos / "SimpleBaggageTDR.dcs"), "--wait-service", "0")
    assert refused.returncode == 2
    assert "threat detection report" in refused.stderr
    missing = _cli("--watch", str(tmp_path / "nowhere"), "--wait-service", "0")
    assert missing.returncode == 2
    assert "is not a directory" in missing.stderr
