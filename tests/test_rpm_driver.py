"""The RPM line-protocol driver: the parser line by line, and the driver over real transports.

Transports are real: a TCP server on loopback (``socket://``), a pty as a serial port,
pyserial's ``loop://``; records cross a real ZeroMQ PUB/SUB pair on loopback TCP.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import msgspec
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from support import IngestBus, free_port

from lanewatch.drivers.rpm import ERROR_KINDS, MAX_LINE_BYTES, LineError, LineSplitter, RpmDriver, parse_line
from lanewatch.edge.bus.driver import load_driver
from lanewatch.edge.bus.records import Kind, LinkValues, OccupancyEndValues, Record, TamperValues
from lanewatch.edge.config import ConfigError, parse

LANE = "lane1"
TIMEOUT_S = 10.0
SRLS_TYPES = {"GA": 21, "GB": 6, "GS": 231, "GX": 7, "NA": 5, "NB": 7, "NS": 41, "SP": 35}

# ----------------------------------------------------------------------------- parser


def _counts(*rows: list[int]) -> np.ndarray:
    return np.array(rows, dtype=np.uint32)


PARSE_TABLE = [
    (b"GB,000246,000258,000262,000250\r\n", Kind.GAMMA_BACKGROUND, 1.0, _counts([246], [258], [262], [250]), {}, ()),
    (
        b"GL,000010,000011,000012,000013\r\n",
        Kind.GAMMA_BACKGROUND,
        1.0,
        _counts([10], [11], [12], [13]),
        {},
        ("fault_low",),
    ),
    (
        b"GH,000500,000501,000502,000503\n",
        Kind.GAMMA_BACKGROUND,
        1.0,
        _counts([500], [501], [502], [503]),
        {},
        ("fault_high",),
    ),
    (b"NB,000002,000002,000003,000004\r\n", Kind.NEUTRON_BACKGROUND, 1.0, _counts([2], [2], [3], [4]), {}, ()),
    (
        b"NH,000021,000022,000023,000024\r\n",
        Kind.NEUTRON_BACKGROUND,
        1.0,
        _counts([21], [22], [23], [24]),
        {},
        ("fault_high",),
    ),
    (b"GS,000068,000069,000070,000071\r\n", Kind.GAMMA_SCAN, 0.2, _counts([68], [69], [70], [71]), {}, ()),
    (
        b"GA,000076,000077,000078,999999\r\n",
        Kind.GAMMA_SCAN,
        0.2,
        _counts([76], [77], [78], [999999]),
        {},
        ("device_alarm",),
    ),
    (b"NS,000001,000000,000001,000000\r\n", Kind.NEUTRON_SCAN, 1.0, _counts([1], [0], [1], [0]), {}, ()),
    (b"NA,000003,000002,000009,000001\r\n", Kind.NEUTRON_SCAN, 1.0, _counts([3], [2], [9], [1]), {}, ("device_alarm",)),
    (
        b"SP,0.2249,03.032,004.88,000000\r\n",
        Kind.SPEED,
        0.0,
        None,
        {"crossing_s": 0.2249, "speed_mph": 3.032, "speed_kmh": 4.88},
        (),
    ),
    (b"SP,0.5,2,3.25\r\n", Kind.SPEED, 0.0, None, {"crossing_s": 0.5, "speed_mph": 2.0, "speed_kmh": 3.25}, ()),
    (
        b"GX,000042,002500,000000,000000\r\n",
        Kind.OCCUPANCY_END,
        0.0,
        None,
        {"device_occupancy": 42, "neutron_background_cps": 2.5},
        (),
    ),
    (b"TT,000000,000000,000000,000000\r\n", Kind.TAMPER, 0.0, None, {"active": True}, ()),
    (b"TC\r\n", Kind.TAMPER, 0.0, None, {"active": False}, ()),
    (
        b"SG1,000400,000050,000005,005.00\r\n",
        Kind.SETUP,
        0.0,
        None,
        {"line": "SG1", "fields": ["000400", "000050", "000005", "005.00"]},
        (),
    ),
    (
        b"SG2,4,LLD 40,ULD 3000,v1.2\r\n",
        Kind.SETUP,
        0.0,
        None,
        {"line": "SG2", "fields": ["4", "LLD 40", "ULD 3000", "v1.2"]},
        (),
    ),
    (b"SG3,x\r\n", Kind.SETUP, 0.0, None, {"line": "SG3", "fields": ["x"]}, ()),
    (b"SN1,000020,5,0.1\r\n", Kind.SETUP, 0.0, None, {"line": "SN1", "fields": ["000020", "5", "0.1"]}, ()),
    (b"SN2\r\n", Kind.SETUP, 0.0, None, {"line": "SN2", "fields": []}, ()),
]


@pytest.mark.parametrize(("raw", "kind", "dt_s", "counts", "values", "flags"), PARSE_TABLE, ids=lambda v: None)
def test_parse_every_line_type(
    raw: bytes, kind: Kind, dt_s: float, counts: np.ndarray | None, values: dict, flags: tuple[str, ...]
) -> None:
    parsed = parse_line(raw)
    assert parsed.type == raw.split(b",")[0].strip().decode()
    assert parsed.kind is kind
    assert parsed.dt_s == dt_s
    assert parsed.values == values
    assert parsed.flags == flags
    if counts is None:
        assert parsed.counts is None
    else:
        assert parsed.counts.dtype == np.uint32
        np.testing.assert_array_equal(parsed.counts, counts)


def test_parse_covers_every_documented_line_type() -> None:
    types = {raw.split(b",")[0].strip().decode() for raw, *_ in PARSE_TABLE}
    expected = [
        "GB",
        "GL",
        "GH",
        "NB",
        "NH",
        "GS",
        "GA",
        "NS",
        "NA",
        "SP",
        "GX",
        "TT",
        "TC",
        "SG1",
        "SG2",
        "SG3",
        "SN1",
        "SN2",
    ]
    assert types == set(expected)


def test_parse_options_set_shapes_and_neutron_interval() -> None:
    gamma = parse_line(b"GS,000001,000002\r\n", gamma_channels=2)
    assert gamma.counts.shape == (2, 1)
    neutron = parse_line(b"NS,000001,000002,000003\r\n", neutron_channels=3, neutron_interval_s=0.5)
    assert neutron.counts.shape == (3, 1)
    assert neutron.dt_s == 0.5


def test_parse_energy_windows_are_window_major() -> None:
    raw = b"GS,000011,000021,000031,000041,000012,000022,000032,000042\r\n"
    parsed = parse_line(raw, windows=2)
    np.testing.assert_array_equal(parsed.counts, [[11, 12], [21, 22], [31, 32], [41, 42]])
    background = parse_line(raw.replace(b"GS", b"GB"), windows=2)
    assert background.kind is Kind.GAMMA_BACKGROUND
    np.testing.assert_array_equal(background.counts[:, 1], [12, 22, 32, 42])
    # Neutron lines have no windows.
    assert parse_line(b"NS,000001,000002,000003,000004", windows=2).counts.shape == (4, 1)
    with pytest.raises(LineError) as short:
        parse_line(b"GS,000011,000021,000031,000041\r\n", windows=2)
    assert short.value.kind == "truncated"


ERROR_TABLE = [
    (b"GS,000001,\xff00002,000003,000004\r\n", "garbage"),
    (b"GS,000001,000002,000003,000004\x00\r\n", "garbage"),
    (b"GS,000001\r\000002,000003,000004\r\n", "garbage"),
    (b"GS,000001,000002,000003\r\n", "truncated"),
    (b"GS\r\n", "truncated"),
    (b"SP,0.2249,03.032\r\n", "truncated"),
    (b"GX,000000\r\n", "truncated"),
    (b"GS,000001,000002,000003,00000A\r\n", "bad-count"),
    (b"GS,000001,000002,000003,0004\r\n", "bad-count"),
    (b"GS,000001,000002,,000004\r\n", "bad-count"),
    (b"GS,000001, 00002,000003,000004\r\n", "bad-count"),
    (b"SP,abc,03.032,004.88,000000\r\n", "bad-count"),
    (b"SP,nan,03.032,004.88,000000\r\n", "bad-count"),
    (b"GX,00000x,000000,000000,000000\r\n", "bad-count"),
    (b"GS,000001,-00002,000003,000004\r\n", "negative"),
    (b"SP,-0.2249,03.032,004.88,000000\r\n", "negative"),
    (b"GS,000001,000002,4294967296,000004\r\n", "overflow"),
    (b"NS,1000000,000000,000000,000000\r\n", "overflow"),
    (b"SP," + b"9" * 400 + b",03.032,004.88\r\n", "overflow"),
    (b"XX,000001,000002,000003,000004\r\n", "unknown-type"),
    (b"gs,000001,000002,000003,000004\r\n", "unknown-type"),
    (b"SG4,1\r\n", "unknown-type"),
    (b",000001\r\n", "unknown-type"),
    (b"GS," + b"000001," * 100 + b"000001\r\n", "overlong"),
    (b"GS,000001,000002,000003,000004,000005\r\n", "extra-fields"),
    (b"SP,0.2249,03.032,004.88,000000,000000\r\n", "extra-fields"),
    (b"TT,0,0,0,0,0\r\n", "extra-fields"),
]


@pytest.mark.parametrize(("raw", "kind"), ERROR_TABLE, ids=[f"{k}-{i}" for i, (_, k) in enumerate(ERROR_TABLE)])
def test_parse_errors(raw: bytes, kind: str) -> None:
    with pytest.raises(LineError) as info:
        parse_line(raw)
    assert info.value.kind == kind
    assert str(info.value)


def test_error_table_covers_every_error_kind() -> None:
    assert {kind for _, kind in ERROR_TABLE} == set(ERROR_KINDS)


def test_line_limit_is_inclusive() -> None:
    body = b"SG1," + b"x" * (MAX_LINE_BYTES - 4)
    assert len(body) == MAX_LINE_BYTES
    assert parse_line(body + b"\r\n").kind is Kind.SETUP
    with pytest.raises(LineError, match="longer"):
        parse_line(body + b"x\r\n")


def test_splitter_joins_pieces_and_bounds_memory() -> None:
    rng = random.Random(7)
    text = b"GS,000001,000002,000003,000004\r\nNB,000002,000002,000003,000004\nTT\r\n"
    splitter = LineSplitter()
    lines: list[bytes] = []
    pos = 0
    while pos < len(text):
        step = rng.randint(1, 9)
        lines += [line for line, overlong in splitter.feed(text[pos : pos + step]) if not overlong]
        pos += step
    assert lines == [b"GS,000001,000002,000003,000004\r", b"NB,000002,000002,000003,000004", b"TT\r"]

    chunk = b"A" * 65536
    reports = []
    for _ in range(160):  # 10 MiB without a newline
        reports += splitter.feed(chunk)
        assert splitter.pending_bytes <= MAX_LINE_BYTES + 1
    reports += splitter.feed(b"AAAA\r\nTC\r\n")
    assert reports == [(b"A" * 80, True), (b"TC\r", False)]
    assert splitter.pending_bytes == 0


# ----------------------------------------------------------------------------- transports


class LineServer:
    """A plain TCP server on loopback standing in for the portal's TCP port; it can go away and come back."""

    def __init__(self) -> None:
        self.port = 0
        self.conn: socket.socket | None = None
        self.listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self.listen()

    @property
    def url(self) -> str:
        return f"socket://127.0.0.1:{self.port}"

    def listen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(1)
        self.port = listener.getsockname()[1]
        self.listener = listener

    def accept(self) -> socket.socket:
        assert self.listener is not None
        self.listener.settimeout(TIMEOUT_S)
        self.conn, _ = self.listener.accept()
        return self.conn

    def serve(self, chunks: list[bytes]) -> None:
        """In a thread: accept one client and send it ``chunks``.

        Call it once the driver reported its link up: pyserial discards what arrives
        while it opens a port (``reset_input_buffer``).
        """

        def run() -> None:
            conn = self.accept()
            for chunk in chunks:
                conn.sendall(chunk)

        thread = threading.Thread(target=run, name="line-server")
        thread.start()
        self._threads.append(thread)

    def drop(self) -> None:
        """Close the client connection and stop listening (connections are refused until ``listen``)."""
        for thread in self._threads:
            thread.join(TIMEOUT_S)
        self._threads.clear()
        for sock in (self.conn, self.listener):
            if sock is not None:
                sock.close()
        self.conn = self.listener = None


@pytest.fixture
def server() -> Iterator[LineServer]:
    srv = LineServer()
    yield srv
    srv.drop()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def zbus(registry: CollectorRegistry) -> Iterator[IngestBus]:
    b = IngestBus(LANE, "rpm", registry)
    yield b
    b.close()


@contextlib.contextmanager
def running(driver: RpmDriver) -> Iterator[threading.Event]:
    """Run ``driver`` in a thread; on exit stop it and check it returned."""
    stop = threading.Event()
    thread = threading.Thread(target=driver.run, args=(stop,), name="rpm-driver")
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(2.0)
        assert not thread.is_alive(), "driver did not stop within 2 s"


def _links(records: list[Record]) -> list[bool]:
    return [r.values.up for r in records if r.kind is Kind.LINK]


def _data(records: list[Record]) -> list[Record]:
    return [r for r in records if r.kind is not Kind.LINK]


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, {"lane": LANE, **labels}) or 0.0


def _errors(registry: CollectorRegistry, kind: str) -> float:
    return _sample(registry, "lanewatch_driver_parse_errors_total", kind=kind)


def _driver(zbus: IngestBus, url: str, **kwargs: float) -> RpmDriver:
    options = {"backoff_max_s": 0.3, "backoff_min_s": 0.05} | kwargs
    return RpmDriver(zbus.publisher, url, **options)


def test_srls_capture_over_tcp(
    shared_data: Path, server: LineServer, zbus: IngestBus, registry: CollectorRegistry
) -> None:
    capture = (shared_data / "rpm" / "srls_auto_capture.txt").read_bytes()
    lines = capture.splitlines(keepends=True)
    assert len(lines) == 353
    rng = random.Random(353)
    chunks, pos = [], 0
    while pos < len(capture):  # pieces that cut lines anywhere
        step = rng.randint(1, 200)
        chunks.append(capture[pos : pos + step])
        pos += step
    driver = _driver(zbus, server.url)
    with running(driver):
        zbus.collect(lambda rs: _links(rs) == [True])
        server.serve(chunks)
        records = zbus.collect(lambda rs: len(_data(rs)) >= len(lines))
        health = driver.health()
        assert _sample(registry, "lanewatch_driver_connected") == 1
    assert _sample(registry, "lanewatch_driver_connected") == 0
    records = zbus.collect(lambda rs: len(_links(rs)) == 2)
    assert [r.seq for r in records] == list(range(len(records)))
    assert _links(records) == [True, False]
    assert records[0].kind is Kind.LINK and records[0].values.url == server.url
    data = _data(records)
    assert len(data) == 353
    for record, raw in zip(data, lines, strict=True):
        expected = parse_line(raw)
        assert (record.kind, record.dt_s, record.values, record.flags) == (
            expected.kind,
            expected.dt_s,
            msgspec.convert(expected.values, type(record.values)),
            expected.flags,
        )
        if expected.counts is None:
            assert record.counts is None
        else:
            np.testing.assert_array_equal(record.counts, expected.counts)
        assert record.lane == LANE and record.source == "rpm"
    assert [r.t_mono_ns for r in data] == sorted(r.t_mono_ns for r in data)
    assert all(abs(r.t_wall_ns - time.time_ns()) < 60e9 for r in data)
    by_type = Counter(raw.split(b",")[0].decode() for raw in lines)
    assert by_type == SRLS_TYPES
    for line_type, n in SRLS_TYPES.items():
        assert _sample(registry, "lanewatch_driver_lines_total", type=line_type) == n
    kinds = Counter(r.kind for r in data)
    assert kinds[Kind.GAMMA_SCAN] == 231 + 21
    assert sum("device_alarm" in r.flags for r in data) == 21 + 5
    assert _sample(registry, "lanewatch_driver_read_bytes_total") == len(capture)
    assert all(_errors(registry, kind) == 0 for kind in ERROR_KINDS)
    assert _sample(registry, "lanewatch_driver_records_published_total") == len(records)
    assert abs(_sample(registry, "lanewatch_driver_last_line_timestamp_seconds") - data[-1].t_wall_ns / 1e9) < 1e-6
    assert health["ok"] and health["connected"] and health["reconnects"] == 0
    assert health["last_line_age_s"] >= 0 and health["url"] == server.url and health["lane"] == LANE


def test_pty_serial_port(zbus: IngestBus, registry: CollectorRegistry) -> None:
    master, slave = os.openpty()
    try:
        driver = _driver(zbus, os.ttyname(slave), baudrate=19200)
        with running(driver):
            zbus.collect(lambda rs: _links(rs) == [True])
            os.write(master, b"GB,000250,000251,000252,000253\r\nGS,000051,000052,000053,000054\r\nGX,000007,003000,0")
            os.write(master, b"00000,000000\r\n")
            records = zbus.collect(lambda rs: len(_data(rs)) >= 3)
        data = _data(records)
        assert [r.kind for r in data] == [Kind.GAMMA_BACKGROUND, Kind.GAMMA_SCAN, Kind.OCCUPANCY_END]
        np.testing.assert_array_equal(data[1].counts[:, 0], [51, 52, 53, 54])
        assert data[2].values == OccupancyEndValues(device_occupancy=7, neutron_background_cps=3.0)
        assert _sample(registry, "lanewatch_driver_lines_total", type="GX") == 1
    finally:
        os.close(master)
        os.close(slave)


def test_loop_url(zbus: IngestBus, registry: CollectorRegistry) -> None:
    driver = _driver(zbus, "loop://")
    with running(driver):
        zbus.collect(lambda rs: _links(rs) == [True])
        assert driver.port is not None
        driver.port.write(b"NS,000001,000002,000003,000004\r\nTT\r\n")
        zbus.collect(lambda rs: len(_data(rs)) >= 2)
    records = zbus.collect(lambda rs: len(_links(rs)) >= 2)
    data = _data(records)
    assert [r.kind for r in data] == [Kind.NEUTRON_SCAN, Kind.TAMPER]
    np.testing.assert_array_equal(data[0].counts[:, 0], [1, 2, 3, 4])
    assert data[1].values == TamperValues(active=True)
    assert _links(records) == [True, False]  # the driver reports its link down when it stops
    assert _sample(registry, "lanewatch_driver_connected") == 0


def test_bad_lines_are_counted_logged_and_skipped(
    server: LineServer, zbus: IngestBus, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    good = b"GS,000001,000002,000003,000004\r\n"
    bad = {
        "garbage": b"\x00\xff\xfeGS,000001\x1b[2J\r\n",
        "negative": b"GS,000001,-00002,000003,000004\r\n",
        "bad-count": b"NS,000001,0000x2,000003,000004\r\n",
        "overflow": b"GA,000001,000002,1000000,000004\r\n",
        "unknown-type": b"QQ,000001,000002,000003,000004\r\n",
        "truncated": b"NB,000001\r\n",
        "extra-fields": b"NB,000001,000002,000003,000004,000005\r\n",
    }
    driver = _driver(zbus, server.url)
    with caplog.at_level(logging.WARNING, logger="lanewatch.driver.rpm"), running(driver):
        zbus.collect(lambda rs: _links(rs) == [True])
        server.serve([good, *bad.values(), b"\r\n", good])
        records = zbus.collect(lambda rs: len(_data(rs)) >= 2)
        # 10 MB without a newline, then a line that must still parse
        server.conn.sendall(b"7" * 10_000_000)
        server.conn.sendall(b"\r\nGS,000009,000008,000007,000006\r\n")
        records = zbus.collect(lambda rs: len(_data(rs)) >= 3)
    data = _data(records)
    assert [r.seq for r in records] == list(range(len(records)))
    np.testing.assert_array_equal(data[2].counts[:, 0], [9, 8, 7, 6])
    for kind in bad:
        assert _errors(registry, kind) == 1, kind
    assert _errors(registry, "overlong") == 1
    assert _sample(registry, "lanewatch_driver_lines_total", type="GS") == 3
    assert _sample(registry, "lanewatch_driver_read_bytes_total") > 10_000_000
    warnings = [r.getMessage() for r in caplog.records if r.name == "lanewatch.driver.rpm"]
    assert len(warnings) == len(bad) + 1
    assert all(f"lane {LANE}" in message for message in warnings)
    assert any(repr(bad["garbage"].removesuffix(b"\r\n")) in message for message in warnings)
    assert any(repr(b"7" * 80) in message for message in warnings)


def test_reconnects_after_the_portal_drops_mid_occupancy(
    shared_data: Path, server: LineServer, zbus: IngestBus, registry: CollectorRegistry
) -> None:
    lines = (shared_data / "rpm" / "srls_auto_capture.txt").read_bytes().splitlines(keepends=True)
    before, after = lines[:12], lines[12:40]  # line 12 is inside the first occupancy
    assert all(line[:2] in (b"GS", b"GA", b"NS", b"NA", b"SP") for line in before[-3:] + after[:3])
    driver = _driver(zbus, server.url)
    with running(driver):
        zbus.collect(lambda rs: _links(rs) == [True])
        server.serve([*before, after[0][:7]])  # the drop cuts a line
        zbus.collect(lambda rs: len(_data(rs)) >= len(before))
        server.drop()
        zbus.collect(lambda rs: _links(rs) == [True, False])
        deadline = time.monotonic() + TIMEOUT_S
        while _sample(registry, "lanewatch_driver_reconnects_total") < 2:  # refused while the portal is away
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert not driver.health()["ok"]
        server.listen()
        zbus.collect(lambda rs: _links(rs) == [True, False, True])
        server.serve(after)
        records = zbus.collect(lambda rs: len(_data(rs)) >= len(before) + len(after))
        health = driver.health()
    assert [r.seq for r in records] == list(range(len(records)))
    assert _links(records) == [True, False, True]
    link_down = next(i for i, r in enumerate(records) if r.kind is Kind.LINK and not r.values.up)
    assert len(_data(records[:link_down])) == len(before)
    expected = [parse_line(line).counts for line in before + after]
    got = [r.counts for r in _data(records)]
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert (g is None and e is None) or np.array_equal(g, e)
    assert _errors(registry, "truncated") == 1
    reconnects = _sample(registry, "lanewatch_driver_reconnects_total")
    assert reconnects >= 2 and health["reconnects"] == reconnects
    assert health["ok"] and health["connected"]


def test_link_down_when_the_device_cannot_be_opened(zbus: IngestBus, registry: CollectorRegistry) -> None:
    url = f"socket://127.0.0.1:{free_port()}"
    driver = _driver(zbus, url, backoff_min_s=0.01, backoff_max_s=0.02)
    with running(driver):
        records = zbus.collect(lambda rs: len(rs) >= 1)
        deadline = time.monotonic() + TIMEOUT_S
        while _sample(registry, "lanewatch_driver_reconnects_total") < 3:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        health = driver.health()
    zbus.drain(0.2)
    assert records[0].kind is Kind.LINK and records[0].values == LinkValues(up=False, url=url)
    assert _links(zbus.records) == [False]  # repeated failures publish no further LINK records
    assert not health["ok"] and not health["connected"] and health["last_line_age_s"] is None
    assert _sample(registry, "lanewatch_driver_connected") == 0


def test_stops_promptly_while_backing_off(zbus: IngestBus) -> None:
    driver = _driver(zbus, f"socket://127.0.0.1:{free_port()}", backoff_min_s=30.0, backoff_max_s=30.0)
    with running(driver):  # joins with a 2 s limit, far below the 30 s backoff
        zbus.collect(lambda rs: _links(rs) == [False])


def test_stops_promptly_while_blocked_in_read(server: LineServer, zbus: IngestBus) -> None:
    driver = _driver(zbus, server.url)
    with running(driver):
        zbus.collect(lambda rs: _links(rs) == [True])
        server.accept()  # a portal that never sends


def test_health_goes_stale_without_lines(server: LineServer, zbus: IngestBus) -> None:
    driver = _driver(zbus, server.url, stale_after_s=0.3)
    assert driver.health()["ok"] is False and driver.health()["connected"] is False
    with running(driver):
        zbus.collect(lambda rs: _links(rs) == [True])
        conn = server.accept()
        assert driver.health()["ok"] and driver.health()["last_line_age_s"] is None
        conn.sendall(b"TC\r\n")
        zbus.collect(lambda rs: len(_data(rs)) == 1)
        assert driver.health()["ok"]
        deadline = time.monotonic() + TIMEOUT_S
        while driver.health()["ok"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        health = driver.health()
    assert health["connected"] and health["last_line_age_s"] > 0.3


CONFIG = """
[detection]
energy_windows_kev = [30.0, 300.0, 3000.0]

[[lanes]]
id = "lane1"
rpm = "socket://10.0.0.5:1600"
baudrate = 19200
gamma_channels = 2
neutron_channels = 1

[[lanes]]
id = "lane2"
"""


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lane", required=True)
    RpmDriver.add_arguments(parser)
    return parser.parse_args(argv)


def test_from_args_reads_the_lane_and_options(zbus: IngestBus) -> None:
    config = parse(CONFIG)
    driver = RpmDriver.from_args(_parse_args(["--lane", "lane1"]), config, zbus.publisher)
    assert (driver.url, driver.baudrate, driver.gamma_channels, driver.neutron_channels, driver.windows) == (
        "socket://10.0.0.5:1600",
        19200,
        2,
        1,
        2,
    )
    assert (driver.neutron_interval_s, driver.backoff_max_s) == (1.0, 5.0)
    argv = [
        "--lane",
        "lane2",
        "--url",
        "loop://",
        "--baudrate",
        "300",
        "--neutron-interval",
        "0.5",
        "--backoff-max",
        "2",
    ]
    driver = RpmDriver.from_args(_parse_args(argv), config, zbus.publisher)
    assert (driver.url, driver.baudrate, driver.neutron_interval_s, driver.backoff_max_s) == ("loop://", 300, 0.5, 2.0)
    with pytest.raises(ConfigError, match="no rpm URL"):
        RpmDriver.from_args(_parse_args(["--lane", "lane2"]), config, zbus.publisher)
    with pytest.raises(SystemExit):
        _parse_args(["--lane", "lane1", "--backoff-max", "-1"])
    with pytest.raises(ConfigError, match="lane9"):
        RpmDriver.from_args(_parse_args(["--lane", "lane9"]), config, zbus.publisher)
    unconfigured = RpmDriver.from_args(_parse_args(["--lane", "lane9", "--url", "loop://"]), parse(""), zbus.publisher)
    assert (unconfigured.url, unconfigured.gamma_channels, unconfigured.windows) == ("loop://", 4, 1)


def test_registered_as_rpm() -> None:
    assert load_driver("rpm") is RpmDriver
    assert RpmDriver.name == "rpm"


def test_serve_publishes_the_driver_status_every_interval(
    server: LineServer, zbus: IngestBus, registry: CollectorRegistry
) -> None:
    """The level-triggered state: link, run id, lines and errors, at start, every interval and at the end."""
    driver = _driver(zbus, server.url)
    stop = threading.Event()
    thread = threading.Thread(target=driver.serve, args=(stop, 0.05), name="rpm-driver")
    thread.start()
    try:
        zbus.collect(lambda rs: _links(rs) == [True])
        server.serve([b"GB,000100,000100,000100,000100\r\n", b"XX,1\r\n", b"GB,000101,000101,000101,000101\r\n"])

        def statuses(rs: list[Record]) -> list[Record]:
            return [r for r in rs if r.kind is Kind.STATUS]

        records = zbus.collect(lambda rs: any(s.values.lines == 2 and s.values.errors == 1 for s in statuses(rs)))
    finally:
        stop.set()
        thread.join(5)
    records = zbus.collect(lambda rs: not statuses(rs)[-1].values.link_up)
    seen = statuses(records)
    assert not seen[-1].values.link_up and seen[-1].values.lines == 2  # the last: published when the driver stopped
    assert {s.run_id for s in seen} == {driver.publisher.run_id} and len(seen[0].run_id) == 16
    up = next(s for s in seen if s.values.lines == 2)
    assert up.values.link_up and up.values.errors == 1 and 0 <= up.values.last_line_age_s < 60
    assert all(s.values.published == s.seq for s in seen)
    assert [r.seq for r in records] == list(range(len(records)))
