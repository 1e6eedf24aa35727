"""The LWXR X-ray line-stream protocol and its driver.

The frame reader is fed byte streams cut at every kind of boundary and broken in every
documented way; the driver reads a real TCP scanner on loopback and publishes over a real
ZeroMQ PUB/SUB pair, and the records it publishes are put back together and compared with
what the scanner sent.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import socket
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from support import IngestBus, free_port

from lanewatch.drivers.sim.physics import Traffic
from lanewatch.drivers.sim.xray import CALIBRATION_LINES, XraySimulator
from lanewatch.drivers.xray import (
    AIR,
    DARK,
    HEADER_LEN,
    JUNK_REPORT_BYTES,
    MAGIC,
    SCAN_END,
    SCAN_START,
    Frame,
    FrameError,
    FrameReader,
    XrayDriver,
    pack_frame,
)
from lanewatch.edge.bus.driver import load_driver
from lanewatch.edge.bus.records import Kind, Record, ScanEndValues, ScanStartValues
from lanewatch.edge.config import ConfigError, parse

LANE = "lane1"
TIMEOUT_S = 10.0
PIXELS = 24
ENERGIES = 2


# ----------------------------------------------------------------------------- helpers


def _lines(rng: np.random.Generator, n: int, pixels: int = PIXELS, energies: int = ENERGIES) -> np.ndarray:
    return rng.integers(0, 65536, size=(n, energies, pixels), dtype=np.uint16)


def scan_frames(
    scan_id: int,
    image: np.ndarray,
    *,
    dark: np.ndarray | None = None,
    air: np.ndarray | None = None,
    lane: str = LANE,
    line_numbers: list[int] | None = None,
    end: bool = True,
) -> list[bytes]:
    """The frames of one scan: SCAN_START, dark lines, air lines, image lines (the last with SCAN_END)."""
    frames: list[tuple[np.ndarray, int, int]] = []
    frames += [(d, DARK, 0) for d in ([] if dark is None else dark)]
    frames += [(a, AIR, 0) for a in ([] if air is None else air)]
    numbers = list(range(len(image))) if line_numbers is None else line_numbers
    frames += [(img, 0, n) for img, n in zip(image, numbers, strict=True)]
    out = []
    for i, (data, flags, line) in enumerate(frames):
        flags |= SCAN_START if i == 0 else 0
        flags |= SCAN_END if end and i == len(frames) - 1 else 0
        out.append(
            pack_frame(
                data,
                lane=lane,
                scan_id=scan_id,
                line=line,
                t_ns=1_700_000_000_000_000_000 + i * 3_333_333,
                encoder_mm=7.5 * line,
                flags=flags,
            )
        )
    return out


def feed_in_pieces(reader: FrameReader, stream: bytes, sizes: Callable[[], int]) -> list[Frame | FrameError]:
    out: list[Frame | FrameError] = []
    pos = 0
    while pos < len(stream):
        n = sizes()
        out += reader.feed(stream[pos : pos + n])
        pos += n
    return out + reader.finish()


def frames_of(events: list[Frame | FrameError]) -> list[Frame]:
    return [e for e in events if isinstance(e, Frame)]


def errors_of(events: list[Frame | FrameError]) -> list[str]:
    return [e.kind for e in events if isinstance(e, FrameError)]


# ----------------------------------------------------------------------------- pack and read


def test_round_trip_keeps_every_field() -> None:
    rng = np.random.default_rng(1)
    data = _lines(rng, 1, pixels=2048)[0]
    data[0, :3] = [0, 65535, 1]
    raw = pack_frame(
        data, lane="gate-7", scan_id=2**63 + 5, line=123456, t_ns=-5, encoder_mm=-12.25, flags=SCAN_START | AIR
    )
    assert len(raw) == HEADER_LEN + data.nbytes
    assert raw[:4] == MAGIC
    events = FrameReader().feed(raw)
    assert len(events) == 1
    frame = events[0]
    assert isinstance(frame, Frame)
    assert (frame.flags, frame.lane, frame.scan_id, frame.line) == (SCAN_START | AIR, "gate-7", 2**63 + 5, 123456)
    assert (frame.t_ns, frame.encoder_mm, frame.offset) == (-5, -12.25, 0)
    assert (frame.energies, frame.pixels, frame.calibration) == (2, 2048, "air")
    np.testing.assert_array_equal(frame.data, data)


def test_header_layout_is_the_documented_one() -> None:
    data = np.array([[1, 2, 3], [4, 5, 0xFFFF]], dtype=np.uint16)
    raw = pack_frame(data, lane="L", scan_id=9, line=4, t_ns=7, encoder_mm=2.5, flags=SCAN_END | DARK)
    assert HEADER_LEN == 66
    assert int.from_bytes(raw[4:6], "little") == 1
    assert int.from_bytes(raw[6:8], "little") == SCAN_END | DARK == 0x0006
    assert int.from_bytes(raw[8:10], "little") == 66
    assert raw[10:26] == b"L" + b"\0" * 15
    assert int.from_bytes(raw[26:34], "little") == 9
    assert int.from_bytes(raw[34:38], "little") == 4
    assert int.from_bytes(raw[38:46], "little", signed=True) == 7
    assert np.frombuffer(raw[46:54], "<f8")[0] == 2.5
    assert int.from_bytes(raw[54:56], "little") == 3
    assert raw[56] == 2 and raw[57] == 0
    assert int.from_bytes(raw[58:62], "little") == 12
    assert int.from_bytes(raw[62:66], "little") == zlib.crc32(raw[:62] + raw[66:])
    assert raw[66:] == bytes([1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 0xFF, 0xFF])


@pytest.mark.parametrize(
    ("data", "kwargs", "message"),
    [
        (np.zeros(5, np.uint16), {}, "shape"),
        (np.zeros((0, 5), np.uint16), {}, "shape"),
        (np.full((1, 2), 70000), {}, "0..65535"),
        (np.full((1, 2), -1), {}, "0..65535"),
        (np.zeros((1, 2), np.uint16), {"lane": "x" * 17}, "longer than 16"),
        (np.zeros((1, 2), np.uint16), {"flags": DARK | AIR}, "not both"),
    ],
)
def test_pack_rejects_what_the_protocol_cannot_carry(data: np.ndarray, kwargs: dict, message: str) -> None:
    args = {"lane": LANE, "scan_id": 1, "line": 0, "t_ns": 0, "encoder_mm": 0.0} | kwargs
    with pytest.raises(ValueError, match=message):
        pack_frame(data, **args)


def test_frames_split_anywhere_are_reassembled_and_whole_ones_are_not_copied() -> None:
    rng = np.random.default_rng(2)
    image = _lines(rng, 40)
    stream = b"".join(scan_frames(5, image, dark=_lines(rng, 2), air=_lines(rng, 2)))
    for sizes in (lambda: 1, lambda: 7, lambda: int(rng.integers(1, 400)), lambda: len(stream)):
        events = feed_in_pieces(FrameReader(), stream, sizes)
        assert errors_of(events) == []
        lines = [f for f in frames_of(events) if f.calibration is None]
        np.testing.assert_array_equal(np.stack([f.data for f in lines]), image)
        assert [f.calibration for f in frames_of(events)[:4]] == ["dark", "dark", "air", "air"]
    chunk = stream
    frame = frames_of(FrameReader().feed(chunk))[0]
    base = frame.data
    while isinstance(base, np.ndarray):
        base = base.base
    assert base is chunk, "a frame inside one chunk is a view of that chunk"


def _good(scan_id: int = 1, line: int = 0) -> bytes:
    data = np.arange(ENERGIES * PIXELS, dtype=np.uint16).reshape(ENERGIES, PIXELS) + line
    return pack_frame(data, lane=LANE, scan_id=scan_id, line=line, t_ns=line, encoder_mm=float(line))


def _set(raw: bytes, offset: int, value: bytes) -> bytes:
    return raw[:offset] + value + raw[offset + len(value) :]


def _recrc(raw: bytes) -> bytes:
    """Give a tampered frame a correct CRC again, so only the tampered field is wrong."""
    header_len = int.from_bytes(raw[8:10], "little")
    crc = zlib.crc32(raw[header_len:], zlib.crc32(raw[: header_len - 4]))
    return _set(raw, header_len - 4, crc.to_bytes(4, "little"))


BROKEN = {
    "magic": lambda _: b"\x00junk between frames\xff",
    "version": lambda f: _recrc(_set(f, 4, (2).to_bytes(2, "little"))),
    "size": lambda f: _recrc(_set(f, 58, (100).to_bytes(4, "little"))),
    "size-header": lambda f: _recrc(_set(f, 8, (20).to_bytes(2, "little"))),
    "size-pixels": lambda f: _recrc(_set(f, 54, (0).to_bytes(2, "little"))),
    "flags": lambda f: _recrc(_set(f, 6, (DARK | AIR).to_bytes(2, "little"))),
    "header": lambda f: _recrc(_set(f, 10, b"\xff\xfe")),
    "crc": lambda f: _set(f, 70, bytes([f[70] ^ 0x01])),
    "short": lambda f: f[: len(f) - 10],
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_each_broken_frame_is_reported_and_the_next_good_frame_delivered(case: str) -> None:
    kind = case.split("-")[0]
    stream = _good(line=0) + BROKEN[case](_good(line=1)) + _good(line=2)
    for sizes in (lambda: len(stream), lambda: 1, lambda: 13):
        events = feed_in_pieces(FrameReader(), stream, sizes)
        assert errors_of(events) == [kind]
        assert [f.line for f in frames_of(events)] == [0, 2]


def test_a_stream_that_ends_inside_a_frame_is_short() -> None:
    reader = FrameReader()
    raw = _good()
    assert reader.feed(raw + raw[:50]) and reader.feed(raw[50:70]) == []
    (error,) = reader.finish()
    assert (error.kind, error.offset) == ("short", len(raw))
    assert frames_of(reader.feed(raw)) != [], "a finished reader reads a new stream"


def test_garbage_between_frames_and_fake_magics_are_skipped() -> None:
    rng = np.random.default_rng(3)
    frames = [_good(line=i) for i in range(30)]
    pieces = []
    expected: Counter[str] = Counter()
    for i, raw in enumerate(frames):
        pieces.append(raw)
        if i % 3 == 0:
            pieces.append(rng.integers(0, 256, size=int(rng.integers(1, 300)), dtype=np.uint8).tobytes())
            expected["magic"] += 1
        if i % 5 == 0:
            pieces.append(MAGIC + rng.integers(0, 256, size=70, dtype=np.uint8).tobytes())
            expected["fake"] += 1
    events = feed_in_pieces(FrameReader(), b"".join(pieces), lambda: int(rng.integers(1, 2000)))
    assert [f.line for f in frames_of(events)] == list(range(30))
    kinds = Counter(errors_of(events))
    assert kinds["magic"] == expected["magic"]
    assert sum(kinds.values()) - kinds["magic"] == expected["fake"], kinds


def _plain(line: int, pixels: int) -> bytes:
    """A frame whose bytes outside the magic cannot form a magic (payload values below 0x4000)."""
    data = (np.arange(ENERGIES * pixels, dtype=np.uint16).reshape(ENERGIES, pixels) * 7 + line) % 0x4000
    return pack_frame(data, lane=LANE, scan_id=3, line=line, t_ns=line, encoder_mm=float(line))


@settings(max_examples=150, deadline=None)
@given(
    pixels=st.lists(st.integers(1, 40), min_size=2, max_size=8),
    broken=st.integers(0, 7),
    byte=st.integers(0, 10_000),
    flip=st.integers(1, 255),
    junk=st.binary(max_size=64).map(lambda b: b.replace(b"L", b"l")),
    cuts=st.lists(st.integers(0, 10_000), max_size=6),
)
def test_one_damaged_byte_costs_one_frame_and_one_error(
    pixels: list[int], broken: int, byte: int, flip: int, junk: bytes, cuts: list[int]
) -> None:
    frames = [_plain(i, p) for i, p in enumerate(pixels)]
    broken %= len(frames)
    damaged = bytearray(frames[broken])
    damaged[byte % len(damaged)] ^= flip
    stream = b"".join(frames[:broken]) + bytes(damaged) + b"".join(frames[broken + 1 :]) + junk
    reader = FrameReader()
    events: list[Frame | FrameError] = []
    last = 0
    for cut in sorted({c % (len(stream) + 1) for c in cuts} | {len(stream)}):
        events += reader.feed(stream[last:cut])
        last = cut
    events += reader.finish()
    assert [f.line for f in frames_of(events)] == [i for i in range(len(frames)) if i != broken]
    assert len(errors_of(events)) == 1 + (1 if junk and broken != len(frames) - 1 else 0), errors_of(events)


def test_a_damaged_length_at_the_end_of_the_stream_hides_no_frame() -> None:
    damaged = bytearray(_plain(1, 8))
    damaged[8] = 0xF0  # header_len 240: the reader waits for bytes that never come
    events = feed_in_pieces(FrameReader(), _plain(0, 8) + bytes(damaged) + _plain(2, 4), lambda: 50)
    assert [f.line for f in frames_of(events)] == [0, 2]
    assert errors_of(events) == ["short"]


def test_ten_megabytes_of_junk_then_a_good_frame() -> None:
    rng = np.random.default_rng(4)
    junk = rng.integers(0, 256, size=10 * 2**20, dtype=np.uint8).tobytes().replace(MAGIC, b"LWXr")
    stream = _good(line=0) + junk + _good(line=1)
    events = feed_in_pieces(FrameReader(), stream, lambda: 65536)
    assert [f.line for f in frames_of(events)] == [0, 1]
    errors = [e for e in events if isinstance(e, FrameError)]
    assert {e.kind for e in errors} == {"magic"}
    sizes = [int(e.message.split()[0]) for e in errors]
    assert sum(sizes) == len(junk)
    assert all(JUNK_REPORT_BYTES <= n < JUNK_REPORT_BYTES + 65536 for n in sizes[:-1]), sizes
    assert errors[0].offset == len(_good())


# ----------------------------------------------------------------------------- driver over TCP and ZeroMQ


class Scanner:
    """A TCP listener on loopback standing in for the scanner: each accepted client gets one script."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(TIMEOUT_S)
        self.port = self.listener.getsockname()[1]
        self._threads: list[threading.Thread] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def serve(self, *scripts: list[bytes | float], close: bool = True) -> None:
        """Accept one client per script and send it the script's chunks (a float pauses that many s)."""

        def run() -> None:
            for script in scripts:
                conn, _ = self.listener.accept()
                with conn:
                    for item in script:
                        if isinstance(item, float):
                            time.sleep(item)
                        else:
                            conn.sendall(item)
                    if not close:
                        conn.recv(1)

        thread = threading.Thread(target=run, name="scanner")
        thread.start()
        self._threads.append(thread)

    def close(self) -> None:
        self.listener.close()
        for thread in self._threads:
            thread.join(TIMEOUT_S)


@pytest.fixture
def scanner() -> Iterator[Scanner]:
    s = Scanner()
    yield s
    s.close()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def zbus(registry: CollectorRegistry) -> Iterator[IngestBus]:
    b = IngestBus(LANE, "xray", registry)
    yield b
    b.close()


@contextlib.contextmanager
def running(driver: XrayDriver) -> Iterator[threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=driver.run, args=(stop,), name="xray-driver")
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(2.0)
        assert not thread.is_alive(), "driver did not stop within 2 s"


def _driver(zbus: IngestBus, scanner: Scanner, **kwargs: float) -> XrayDriver:
    options = {"backoff_min_s": 0.05, "backoff_max_s": 0.2} | kwargs
    return XrayDriver(zbus.publisher, scanner.address, **options)


def _errors(registry: CollectorRegistry) -> Counter[str]:
    out: Counter[str] = Counter()
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == "lanewatch_driver_parse_errors_total" and sample.value:
                out[sample.labels["kind"]] += int(sample.value)
    return out


def ended(n: int) -> Callable[[list[Record]], bool]:
    return lambda records: sum(r.kind is Kind.XRAY_SCAN_END for r in records) >= n


def reassemble(records: list[Record], scan_id: int) -> tuple[np.ndarray, list[int]]:
    """The image lines of one scan put back together from its XRAY_LINES batches, and their line numbers."""
    batches = [r for r in records if r.kind is Kind.XRAY_LINES and r.values.scan_id == scan_id]
    numbers = [n for b in batches for n in range(b.values.first_line, b.values.first_line + b.counts.shape[0])]
    for b in batches:
        assert b.values.line_count == b.counts.shape[0] == len(b.values.encoder_mm) == len(b.values.t_ns)
    return np.concatenate([b.counts for b in batches]), numbers


def _of(records: list[Record], kind: Kind) -> list[Record]:
    return [r for r in records if r.kind is kind]


def test_scans_cross_the_bus_whole_in_batches(scanner: Scanner, zbus: IngestBus, registry: CollectorRegistry) -> None:
    rng = np.random.default_rng(5)
    images = [_lines(rng, 150), _lines(rng, 64), _lines(rng, 1)]
    darks, airs = [_lines(rng, 3) for _ in images], [_lines(rng, 4) for _ in images]
    stream = b"".join(
        b"".join(scan_frames(10 + i, img, dark=d, air=a))
        for i, (img, d, a) in enumerate(zip(images, darks, airs, strict=True))
    )
    scanner.serve([stream[i : i + 4093] for i in range(0, len(stream), 4093)], close=False)
    with running(_driver(zbus, scanner, batch_lines=64)):
        records = zbus.collect(ended(3))
    assert [r.values.up for r in _of(records, Kind.LINK)] == [True]
    assert _errors(registry) == Counter()
    for i, (image, dark, air) in enumerate(zip(images, darks, airs, strict=True)):
        scan = [r for r in records if getattr(r.values, "scan_id", None) == 10 + i]
        kinds = [r.kind for r in scan]
        assert kinds[0] is Kind.XRAY_SCAN_START and kinds[-1] is Kind.XRAY_SCAN_END
        assert scan[0].values == ScanStartValues(scan_id=10 + i, t_ns=1_700_000_000_000_000_000, energies=2, pixels=24)
        calib = {r.values.frame: r.counts for r in _of(scan, Kind.XRAY_CALIBRATION)}
        np.testing.assert_array_equal(calib["dark"], dark)
        np.testing.assert_array_equal(calib["air"], air)
        got, numbers = reassemble(scan, 10 + i)
        np.testing.assert_array_equal(got, image)
        assert numbers == list(range(len(image)))
        assert all(r.counts.shape[0] <= 64 for r in _of(scan, Kind.XRAY_LINES))
        lines = _of(scan, Kind.XRAY_LINES)
        assert [e for r in lines for e in r.values.encoder_mm] == [7.5 * n for n in range(len(image))]
        assert lines[-1].values.flags[-1] & SCAN_END
        end = ScanEndValues(scan_id=10 + i, lines=len(image), missing=0, complete=True, reason="scan_end")
        assert scan[-1].values == end
    assert [r.seq for r in records] == list(range(len(records)))
    assert registry.get_sample_value("lanewatch_driver_lines_total", {"lane": LANE, "type": "line"}) == 215
    assert registry.get_sample_value("lanewatch_driver_read_bytes_total", {"lane": LANE}) == len(stream)


def test_simulated_scans_reach_the_bus_exactly(zbus: IngestBus, registry: CollectorRegistry) -> None:
    with XraySimulator(seed=21, count=3, speedup=math.inf, pixels=128) as sim:
        driver = XrayDriver(zbus.publisher, f"127.0.0.1:{sim.serve_tcp()}", batch_lines=100)
        with running(driver):
            deadline = time.monotonic() + TIMEOUT_S
            while sim.clients() < 1:
                assert time.monotonic() < deadline, "the driver never connected"
                time.sleep(0.01)
            sim.start()
            records = zbus.collect(ended(3), timeout_s=60.0)
    assert _errors(registry) == Counter()
    traffic = Traffic(21)
    for _ in range(3):
        scan = sim.scan(traffic.next_passage())
        mine = [r for r in records if getattr(r.values, "scan_id", None) == scan.scan_id]
        calib = {r.values.frame: r.counts for r in _of(mine, Kind.XRAY_CALIBRATION)}
        assert calib["dark"].shape == (CALIBRATION_LINES, 2, 128)
        np.testing.assert_array_equal(calib["dark"], scan.dark)
        np.testing.assert_array_equal(calib["air"], scan.air)
        image, numbers = reassemble(mine, scan.scan_id)
        np.testing.assert_array_equal(image, scan.image)
        assert numbers == list(range(len(scan.image)))
        encoder = [e for r in _of(mine, Kind.XRAY_LINES) for e in r.values.encoder_mm]
        np.testing.assert_array_equal(encoder, scan.encoder_mm)
        assert msgspec.structs.asdict(mine[-1].values) == {
            "scan_id": scan.scan_id,
            "lines": len(scan.image),
            "missing": 0,
            "complete": True,
            "reason": "scan_end",
        }


def test_a_pause_mid_scan_publishes_the_lines_so_far(scanner: Scanner, zbus: IngestBus) -> None:
    rng = np.random.default_rng(6)
    frames = scan_frames(1, _lines(rng, 10))
    scanner.serve([b"".join(frames[:4]), 1.0, b"".join(frames[4:])], close=False)
    with running(_driver(zbus, scanner, batch_lines=64, batch_s=0.05)):
        early = zbus.collect(lambda rs: any(r.kind is Kind.XRAY_LINES for r in rs), timeout_s=0.9)
        assert early[-1].values.line_count == 4 and early[-1].values.first_line == 0
        records = zbus.collect(ended(1))
    assert [r.values.first_line for r in _of(records, Kind.XRAY_LINES)] == [0, 4]


def test_sequence_errors_are_counted_and_the_stream_goes_on(
    scanner: Scanner, zbus: IngestBus, registry: CollectorRegistry
) -> None:
    rng = np.random.default_rng(7)
    img = _lines(rng, 8)
    orphan = scan_frames(1, img[:2])[1:]  # lines of a scan whose start was never seen
    reordered = scan_frames(2, img[:6], line_numbers=[0, 1, 2, 1, 4, 5])  # 1 again (order), 3 skipped (missing)
    restarted = scan_frames(3, img[:3], end=False)  # cut off by scan 4's start
    other = scan_frames(4, img[:4])
    other[2] = scan_frames(99, img[:4])[2]  # a frame of another scan inside scan 4
    wrong = scan_frames(5, img[:4])
    wrong[1] = pack_frame(_lines(rng, 1, pixels=PIXELS + 1)[0], lane=LANE, scan_id=5, line=1, t_ns=0, encoder_mm=0)
    wrong[2] = scan_frames(5, img[:3], lane="lane2")[2]
    whole = scan_frames(6, img)
    scanner.serve([b"".join(orphan + reordered + restarted + other + wrong + whole)], close=False)
    with running(_driver(zbus, scanner)):
        records = zbus.collect(lambda rs: any(r.values.scan_id == 6 for r in _of(rs, Kind.XRAY_SCAN_END)))
    assert _errors(registry) == Counter(no_scan=1, order=1, missing=2, scan_restart=1, scan_id=1, geometry=1, lane=1), (
        "missing: line 3 of scan 2, lines 1-2 of scan 5 (one wrong size, one for another lane)"
    )
    ends = {r.values.scan_id: msgspec.structs.asdict(r.values) for r in _of(records, Kind.XRAY_SCAN_END)}
    assert ends[2] == {"scan_id": 2, "lines": 5, "missing": 1, "complete": True, "reason": "scan_end"}
    assert ends[3]["complete"] is False and ends[3]["reason"] == "restarted" and ends[3]["lines"] == 3
    assert ends[4]["reason"] == "scan_id" and ends[4]["lines"] == 2
    assert ends[5]["lines"] == 2 and ends[5]["missing"] == 2
    got, numbers = reassemble(records, 2)
    assert numbers == [0, 1, 2, 4, 5]
    np.testing.assert_array_equal(got, img[[0, 1, 2, 4, 5]])
    np.testing.assert_array_equal(reassemble(records, 6)[0], img)


def test_byte_errors_on_the_wire_are_counted_and_survived(
    scanner: Scanner, zbus: IngestBus, registry: CollectorRegistry
) -> None:
    rng = np.random.default_rng(8)
    img = _lines(rng, 12)
    frames = scan_frames(1, img)
    broken = {"magic": 1, "crc": 4, "short": 7, "size": 9}
    for kind, i in broken.items():
        frames[i] = BROKEN[kind](frames[i])
    scanner.serve([b"".join(frames) + b"".join(scan_frames(2, img))], close=False)
    with running(_driver(zbus, scanner)):
        records = zbus.collect(ended(2))
    assert _errors(registry) == Counter({k: 1 for k in broken}) + Counter(missing=4)
    assert reassemble(records, 1)[1] == [0, 2, 3, 5, 6, 8, 10, 11]
    np.testing.assert_array_equal(reassemble(records, 2)[0], img)


def test_reconnects_after_the_scanner_closes_mid_scan(
    scanner: Scanner, zbus: IngestBus, registry: CollectorRegistry
) -> None:
    rng = np.random.default_rng(9)
    first, second = _lines(rng, 40), _lines(rng, 30)
    cut = scan_frames(1, first, dark=_lines(rng, 2))
    scanner.serve([b"".join(cut[:20]) + cut[20][:100]], [b"".join(scan_frames(2, second))])
    with running(_driver(zbus, scanner, batch_lines=8)):
        records = zbus.collect(ended(2))
    assert [r.values.up for r in _of(records, Kind.LINK)] == [True, False, True]
    down = _of(records, Kind.LINK)[1]
    assert down.values.reason == "closed by the scanner"
    ends = _of(records, Kind.XRAY_SCAN_END)
    assert ends[0].values == ScanEndValues(scan_id=1, lines=18, complete=False, reason="link_down")
    np.testing.assert_array_equal(reassemble(records, 1)[0], first[:18])
    assert records.index(ends[0]) < records.index(down), "the partial scan is closed before the link goes down"
    assert ends[1].values.complete is True
    np.testing.assert_array_equal(reassemble(records, 2)[0], second)
    assert _errors(registry) == Counter(short=1)
    assert registry.get_sample_value("lanewatch_driver_reconnects_total", {"lane": LANE}) >= 1


def test_link_down_while_the_scanner_refuses_and_stops_promptly(zbus: IngestBus, registry: CollectorRegistry) -> None:
    driver = XrayDriver(zbus.publisher, f"127.0.0.1:{free_port()}", backoff_min_s=0.05, backoff_max_s=0.1)
    with running(driver):
        records = zbus.collect(lambda rs: len(rs) >= 1)
        time.sleep(0.5)
        assert driver.health()["ok"] is False
    assert [r.values.up for r in _of(records, Kind.LINK)] == [False]
    assert "connect failed" in records[0].values.reason
    assert registry.get_sample_value("lanewatch_driver_reconnects_total", {"lane": LANE}) >= 3
    assert registry.get_sample_value("lanewatch_driver_connected", {"lane": LANE}) == 0


def test_health_follows_the_link(scanner: Scanner, zbus: IngestBus) -> None:
    scanner.serve([b"".join(scan_frames(3, _lines(np.random.default_rng(10), 2), end=False))], close=False)
    driver = _driver(zbus, scanner)
    with running(driver):
        zbus.collect(lambda rs: any(r.kind is Kind.XRAY_LINES for r in rs))
        health = driver.health()
    assert health == {
        "ok": True,
        "lane": LANE,
        "source": "xray",
        "scanner": f"tcp://{scanner.address}",
        "connected": True,
        "scan_open": 3,
        "scans": 1,
    }


# ----------------------------------------------------------------------------- configuration and registry


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lane", required=True)
    XrayDriver.add_arguments(parser)
    return parser.parse_args(argv)


def test_from_args_takes_the_lane_key_or_the_option(zbus: IngestBus) -> None:
    config = parse('[[lanes]]\nid = "lane1"\nxray = "10.0.0.5:4001"\n[[lanes]]\nid = "lane2"\n', "test.toml")
    driver = XrayDriver.from_args(_args(["--lane", "lane1", "--batch-lines", "8"]), config, zbus.publisher)
    assert (driver.host, driver.port, driver.assembler.batch_lines) == ("10.0.0.5", 4001, 8)
    driver = XrayDriver.from_args(_args(["--lane", "lane2", "--scanner", "[::1]:9"]), config, zbus.publisher)
    assert (driver.host, driver.port) == ("::1", 9)
    with pytest.raises(ConfigError, match="lane 'lane2' has no xray scanner"):
        XrayDriver.from_args(_args(["--lane", "lane2"]), config, zbus.publisher)
    with pytest.raises(ConfigError, match="expected host:port"):
        XrayDriver.from_args(_args(["--lane", "lane1", "--scanner", "nohost"]), config, zbus.publisher)
    with pytest.raises(ConfigError, match="batch-lines"):
        XrayDriver.from_args(_args(["--lane", "lane1", "--batch-lines", "0"]), config, zbus.publisher)


def test_registered_as_xray() -> None:
    assert load_driver("xray") is XrayDriver
