"""Dual-energy X-ray line-scan scanners: the ``LWXR`` line-stream protocol and its driver.

A cargo scanner images a vehicle one detector column ("line") per linac pulse as the vehicle
moves through the beam, at each of its beam energies (interleaved dual energy, e.g. 6 and
4 MV). The scanner serves its lines over TCP as a stream of binary frames, one frame per
line. The driver connects to the scanner, checks every frame, and publishes the lines on
the ingest bus in batches: one contiguous ``(lines, energies, pixels)`` uint16 array per
record, sent as a zero-copy bus frame.

Protocol
--------
One frame per detector line, all integers little-endian, no padding::

    offset  size  type      field          meaning
    ------  ----  --------  -------------  ------------------------------------------------------
         0     4  bytes     magic          b"LWXR"
         4     2  uint16    version        1
         6     2  uint16    flags          bit 0 SCAN_START: first frame of a scan
                                           bit 1 SCAN_END: last frame of a scan
                                           bit 2 DARK: offset calibration line (beam off)
                                           bit 3 AIR: gain calibration line (beam on, nothing in it)
                                           bits 4-15 reserved, sent as 0 and ignored on reading
         8     2  uint16    header_len     bytes before the payload, CRC included: 66 in version 1
        10    16  bytes     lane           lane id, UTF-8, NUL-padded ("" = not set)
        26     8  uint64    scan_id        scanner's scan number, new for every scan
        34     4  uint32    line           image line index within the scan, from 0, +1 per line
                                           (0 and ignored on DARK and AIR lines)
        38     8  int64     t_ns           acquisition time of the line, ns since the epoch, UTC
        46     8  float64   encoder_mm     vehicle travel through the beam plane since the scan
                                           started (mm)
        54     2  uint16    pixels         detector pixels per line, P (pixel 0 at the top)
        56     1  uint8     energies       beam energies per line, E (index 0 the highest energy)
        57     1  uint8     reserved       0
        58     4  uint32    payload_len    2 * E * P
        62     4  uint32    crc32          zlib CRC-32 of header bytes [0, header_len - 4) + payload
        66   2EP  uint16[E][P]  payload    detector readings (ADU), energy-major: E rows of P pixels

A later version may append fields between offset 62 and the CRC; it raises ``header_len``,
and the CRC stays the header's last 4 bytes, so a version-1 reader can skip them.

A scan is: a SCAN_START frame, DARK lines, AIR lines, image lines 0, 1, ... N-1, the last
one flagged SCAN_END (a scan without calibration starts on its line 0). DARK and AIR lines
may also come later in a scan, when the scanner recalibrates.

Reading errors (the ``kind`` label of ``lanewatch_driver_parse_errors_total``):

``magic``        bytes where a frame should begin that are not a frame (one per junk run)
``version``      a frame of an unknown protocol version
``size``         header_len, pixels, energies and payload_len that do not agree, or exceed the
                 reader's limits (by default 8192 pixels, 4 energies, header_len 1024)
``flags``        DARK and AIR both set
``header``       a lane id that is not UTF-8
``crc``          a frame whose CRC does not match
``short``        a frame cut off: the stream ended inside it, or the next frame began inside it
``order``        an image line at or before one already received (dropped)
``missing``      image lines skipped (one per gap; the gap size is logged)
``scan_restart`` a SCAN_START while the previous scan had no SCAN_END
``scan_id``      a frame of another scan without its SCAN_START
``no_scan``      frames outside any scan (one per run), e.g. after connecting mid-scan
``geometry``     a frame whose pixels or energies differ from its scan's first frame
``lane``         a frame whose lane id is set and is not the driver's lane

After a byte-level error the reader resynchronises on the next magic after the first byte
of the bad frame, so a good frame is never lost to a broken one before it.
"""

from __future__ import annotations

import argparse
import logging
import socket
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lanewatch.edge.bus.driver import Driver, RecordPublisher
from lanewatch.edge.bus.records import Kind
from lanewatch.edge.config import Config, ConfigError

log = logging.getLogger(__name__)

MAGIC = b"LWXR"
VERSION = 1
SCAN_START = 0x0001
SCAN_END = 0x0002
DARK = 0x0004
AIR = 0x0008

_FIXED = struct.Struct("<4sHHH16sQIqdHBBI")  # header fields before the CRC, offsets 0-61
_CRC = struct.Struct("<I")
HEADER_LEN = _FIXED.size + _CRC.size
MAX_HEADER_LEN = 1024
"""Largest ``header_len`` a reader accepts (bytes)."""
JUNK_REPORT_BYTES = 1 << 20
"""A run of junk is reported at the next frame, or every this many bytes (1 MiB) while it lasts."""
PIXEL_DTYPE = np.dtype("<u2")
LANE_BYTES = 16


@dataclass(frozen=True, slots=True)
class Frame:
    """One checked frame. ``data`` is (energies, pixels) uint16 ADU, often a view into the received bytes."""

    flags: int
    lane: str
    scan_id: int
    line: int
    t_ns: int
    encoder_mm: float
    data: np.ndarray
    offset: int = 0
    """Stream offset (bytes) where the frame began."""

    @property
    def calibration(self) -> str | None:
        """``"dark"`` or ``"air"`` for a calibration line, ``None`` for an image line."""
        if self.flags & DARK:
            return "dark"
        if self.flags & AIR:
            return "air"
        return None

    @property
    def pixels(self) -> int:
        return int(self.data.shape[1])

    @property
    def energies(self) -> int:
        return int(self.data.shape[0])


@dataclass(frozen=True, slots=True)
class FrameError:
    """Bytes that are not a good frame. ``kind`` is the metrics label (see the module docstring)."""

    kind: str
    message: str
    offset: int
    """Stream offset (bytes) where the problem began."""


def pack_frame(
    data: np.ndarray,
    *,
    lane: str,
    scan_id: int,
    line: int,
    t_ns: int,
    encoder_mm: float,
    flags: int = 0,
) -> bytes:
    """Encode one line: ``data`` is (energies, pixels) readings in ADU, 0-65535."""
    arr = np.asarray(data)
    if arr.ndim != 2 or not 0 < arr.shape[0] < 256 or not 0 < arr.shape[1] < 65536:
        raise ValueError(f"expected (energies < 256, pixels < 65536) readings, got shape {arr.shape}")
    if arr.dtype != PIXEL_DTYPE:
        if arr.size and (arr.min() < 0 or arr.max() > 0xFFFF):
            raise ValueError("readings must lie in 0..65535")
        arr = arr.astype(PIXEL_DTYPE)
    lane_raw = lane.encode()
    if len(lane_raw) > LANE_BYTES:
        raise ValueError(f"lane id {lane!r} is longer than {LANE_BYTES} bytes")
    if (flags & DARK) and (flags & AIR):
        raise ValueError("a frame is a DARK or an AIR line, not both")
    payload = np.ascontiguousarray(arr).tobytes()
    fixed = _FIXED.pack(
        MAGIC,
        VERSION,
        flags,
        HEADER_LEN,
        lane_raw,
        scan_id,
        line,
        t_ns,
        encoder_mm,
        arr.shape[1],
        arr.shape[0],
        0,
        len(payload),
    )
    crc = zlib.crc32(payload, zlib.crc32(fixed))
    return fixed + _CRC.pack(crc) + payload


def _magic_prefix_suffix(buf: bytes | bytearray, start: int, end: int) -> int:
    """Length (0-3) of the longest tail of ``buf[start:end]`` that could begin a magic."""
    for k in range(min(len(MAGIC) - 1, end - start), 0, -1):
        if buf[end - k : end] == MAGIC[:k]:
            return k
    return 0


class FrameReader:
    """Streaming frame parser: feed it bytes as they arrive, get frames and errors back.

    Frames may be split anywhere across ``feed`` calls. A frame that lies whole in one
    chunk is returned as a view into that chunk (no copy); only the bytes of a frame split
    across chunks are gathered into a small pending buffer. Call :meth:`finish` when the
    stream ends, to learn of a frame it cut off.
    """

    def __init__(self, max_pixels: int = 8192, max_energies: int = 4) -> None:
        self.max_pixels = max_pixels
        self.max_energies = max_energies
        self._pending = bytearray()
        self._pending_offset = 0
        self._fed = 0
        self._need = len(MAGIC)
        self._junk = 0
        self._junk_offset = 0
        self._resyncing = False

    @property
    def bytes_fed(self) -> int:
        """Bytes fed since construction."""
        return self._fed

    def feed(self, data: bytes) -> list[Frame | FrameError]:
        """Parse ``data`` (appended to what came before); frames and errors in stream order."""
        if not isinstance(data, bytes):
            data = bytes(data)  # frames are views into what was fed: it must not change under them
        out: list[Frame | FrameError] = []
        view = memoryview(data)
        used = 0
        while self._pending:
            pos = self._parse(self._pending, 0, self._pending_offset, out)
            if pos:
                del self._pending[:pos]
                self._pending_offset += pos
                continue
            take = min(self._need - len(self._pending), len(data) - used)
            if take <= 0:
                break
            self._pending += view[used : used + take]
            used += take
        if not self._pending:
            pos = self._parse(data, used, self._fed, out)
            self._pending += view[pos:]
            self._pending_offset = self._fed + pos
        self._fed += len(data)
        return out

    def finish(self) -> list[Frame | FrameError]:
        """The stream ended: report a cut-off frame or trailing junk, and start afresh.

        A frame cut off by the end is reported as ``short``, and what followed its first byte
        is searched for whole frames, as after any other error (so a corrupted length cannot
        hide the frames behind it); those are returned too.
        """
        out: list[Frame | FrameError] = []
        while self._pending.startswith(MAGIC):
            out.append(
                FrameError(
                    "short",
                    f"stream ended {len(self._pending)} bytes into a frame (needs {self._need})",
                    self._pending_offset,
                )
            )
            self._resyncing = True
            pos = self._parse(self._pending, 1, self._pending_offset, out)
            del self._pending[:pos]
            self._pending_offset += pos
        self._junk += len(self._pending)
        if self._junk and not self._resyncing:
            out.append(self._junk_error())
        self._pending.clear()
        self._pending_offset = self._fed
        self._need = len(MAGIC)
        self._junk = 0
        self._resyncing = False
        return out

    def _junk_error(self) -> FrameError:
        return FrameError("magic", f"{self._junk} bytes without a frame magic", self._junk_offset)

    def _fail(self, out: list[Frame | FrameError], kind: str, message: str, offset: int) -> None:
        out.append(FrameError(kind, message, offset))
        self._resyncing = True

    def _parse(self, buf: bytes | bytearray, pos: int, base: int, out: list[Frame | FrameError]) -> int:
        """Parse ``buf`` from ``pos`` (stream offset of ``buf[0]`` is ``base``); return where it stopped.

        On return ``self._need`` is how many bytes from the returned position are needed to go on.
        Frames parsed out of a ``bytearray`` (the pending buffer, which changes) get a copy of their
        payload; frames in immutable ``bytes`` are views into them.
        """
        end = len(buf)
        copy = isinstance(buf, bytearray)
        while True:
            if end - pos < len(MAGIC):
                self._need = len(MAGIC)
                return pos
            if not buf.startswith(MAGIC, pos):
                found = buf.find(MAGIC, pos, end)
                if self._junk == 0:
                    self._junk_offset = base + pos
                if found < 0:
                    keep = _magic_prefix_suffix(buf, pos, end)
                    self._junk += end - keep - pos
                    if self._junk >= JUNK_REPORT_BYTES:
                        out.append(self._junk_error())
                        self._junk = 0
                        self._resyncing = False
                    self._need = len(MAGIC)
                    return end - keep
                self._junk += found - pos
                pos = found
            if self._junk:
                if not self._resyncing:
                    out.append(self._junk_error())
                self._junk = 0
            if end - pos < HEADER_LEN:
                self._need = HEADER_LEN
                return pos
            (_, version, flags, header_len, lane_raw, scan_id, line, t_ns, encoder_mm, pixels, energies, _, size) = (
                _FIXED.unpack_from(buf, pos)
            )
            at = base + pos
            if version != VERSION:
                self._fail(out, "version", f"frame version {version}, this reader knows {VERSION}", at)
                pos += 1
                continue
            if not HEADER_LEN <= header_len <= MAX_HEADER_LEN:
                self._fail(out, "size", f"header_len {header_len} outside {HEADER_LEN}..{MAX_HEADER_LEN}", at)
                pos += 1
                continue
            if not (0 < pixels <= self.max_pixels and 0 < energies <= self.max_energies):
                self._fail(
                    out,
                    "size",
                    f"{energies} energies x {pixels} pixels outside 1..{self.max_energies} x 1..{self.max_pixels}",
                    at,
                )
                pos += 1
                continue
            if size != PIXEL_DTYPE.itemsize * energies * pixels:
                self._fail(out, "size", f"payload_len {size} is not 2 x {energies} x {pixels}", at)
                pos += 1
                continue
            if (flags & DARK) and (flags & AIR):
                self._fail(out, "flags", f"flags {flags:#06x} mark both a DARK and an AIR line", at)
                pos += 1
                continue
            total = header_len + size
            if end - pos < total:
                self._need = total
                return pos
            mv = memoryview(buf)
            crc = zlib.crc32(mv[pos + header_len : pos + total], zlib.crc32(mv[pos : pos + header_len - 4]))
            (sent,) = _CRC.unpack_from(buf, pos + header_len - 4)
            if crc != sent:
                if buf.find(MAGIC, pos + len(MAGIC), pos + total) >= 0:
                    self._fail(out, "short", f"frame cut off by the next frame (scan {scan_id} line {line})", at)
                else:
                    self._fail(out, "crc", f"CRC {crc:#010x} != {sent:#010x} (scan {scan_id} line {line})", at)
                pos += 1
                continue
            try:
                lane = lane_raw.rstrip(b"\0").decode()
            except UnicodeDecodeError:
                self._fail(out, "header", f"lane id {lane_raw!r} is not UTF-8", at)
                pos += total
                continue
            if copy:
                data = np.frombuffer(bytes(mv[pos + header_len : pos + total]), PIXEL_DTYPE)
            else:
                data = np.frombuffer(buf, PIXEL_DTYPE, energies * pixels, pos + header_len)
            out.append(
                Frame(
                    flags=flags,
                    lane=lane,
                    scan_id=scan_id,
                    line=line,
                    t_ns=t_ns,
                    encoder_mm=encoder_mm,
                    data=data.reshape(energies, pixels),
                    offset=at,
                )
            )
            self._resyncing = False
            pos += total


# ---- scans and batches ----------------------------------------------------------------------
@dataclass(slots=True)
class _Scan:
    scan_id: int
    energies: int
    pixels: int
    next_line: int = 0
    lines: int = 0
    missing: int = 0


@dataclass(slots=True)
class _Batch:
    """Lines of one kind ("line", "dark" or "air") of one scan, gathered into one array."""

    kind: str
    scan_id: int
    first_line: int
    array: np.ndarray
    started_s: float
    n: int = 0
    encoder_mm: list[float] = field(default_factory=list)
    t_ns: list[int] = field(default_factory=list)
    flags: list[int] = field(default_factory=list)

    def add(self, frame: Frame) -> None:
        self.array[self.n] = frame.data
        self.encoder_mm.append(frame.encoder_mm)
        self.t_ns.append(frame.t_ns)
        self.flags.append(frame.flags)
        self.n += 1


class ScanAssembler:
    """Turns checked frames into scan records, one scan at a time, image lines in batches.

    Records, in order: ``XRAY_SCAN_START``; ``XRAY_CALIBRATION`` and ``XRAY_LINES`` batches as
    the lines come (a batch holds consecutive lines of one kind and is published when full,
    when ``batch_s`` old, when the kind changes, when a line is missing, and at scan end);
    ``XRAY_SCAN_END``, with ``complete`` false when the scan was cut short.
    """

    def __init__(self, publisher: RecordPublisher, batch_lines: int = 64, batch_s: float = 0.1) -> None:
        if batch_lines < 1:
            raise ValueError(f"batch_lines must be at least 1, got {batch_lines}")
        self.publisher = publisher
        self.batch_lines = batch_lines
        self.batch_s = batch_s
        self.scan: _Scan | None = None
        self.scans = 0
        """Scans started since construction."""
        self._batch: _Batch | None = None
        self._orphan = False
        self._logged: dict[str, tuple[float, int]] = {}

    # errors -----------------------------------------------------------------------------------
    def error(self, kind: str, message: str) -> None:
        """Count one input error of ``kind`` and log it (at most once a second per kind)."""
        lane = self.publisher.lane
        self.publisher.metrics.parse_errors.labels(lane, kind).inc()
        now = time.monotonic()
        last, suppressed = self._logged.get(kind, (-1e9, 0))
        if now - last < 1.0:
            self._logged[kind] = (last, suppressed + 1)
            return
        more = f" ({suppressed} more {kind} errors since the last report)" if suppressed else ""
        log.warning("lane %s: X-ray %s error: %s%s", lane, kind, message, more)
        self._logged[kind] = (now, 0)

    # frames -----------------------------------------------------------------------------------
    def frame(self, frame: Frame, now_s: float | None = None) -> None:
        """Take one checked frame (``now_s``: monotonic time of arrival, s)."""
        now_s = time.monotonic() if now_s is None else now_s
        where = f"scan {frame.scan_id} line {frame.line} at stream offset {frame.offset}"
        if frame.lane and frame.lane != self.publisher.lane:
            self.error("lane", f"frame for lane {frame.lane!r} ({where})")
            return
        if frame.flags & SCAN_START:
            if self.scan is not None:
                self.error("scan_restart", f"scan {frame.scan_id} started before scan {self.scan.scan_id} ended")
                self.end("restarted")
            self._start(frame)
        elif self.scan is None:
            if not self._orphan:
                self.error("no_scan", f"frames outside a scan, dropped until the next scan start ({where})")
                self._orphan = True
            return
        elif frame.scan_id != self.scan.scan_id:
            self.error("scan_id", f"frame of scan {frame.scan_id} inside scan {self.scan.scan_id} ({where})")
            self.end("scan_id")
            self._orphan = True
            return
        scan = self.scan
        if (frame.energies, frame.pixels) != (scan.energies, scan.pixels):
            self.error(
                "geometry",
                f"{frame.energies} x {frame.pixels} frame in a {scan.energies} x {scan.pixels} scan ({where})",
            )
        else:
            self._add(scan, frame, now_s)
        if frame.flags & SCAN_END:
            self.end("scan_end")

    def _start(self, frame: Frame) -> None:
        self.scan = _Scan(frame.scan_id, frame.energies, frame.pixels)
        self.scans += 1
        self._orphan = False
        self.publisher.emit(
            Kind.XRAY_SCAN_START,
            values={
                "scan_id": frame.scan_id,
                "t_ns": frame.t_ns,
                "energies": frame.energies,
                "pixels": frame.pixels,
            },
        )

    def _add(self, scan: _Scan, frame: Frame, now_s: float) -> None:
        kind = frame.calibration or "line"
        if kind == "line":
            if frame.line < scan.next_line:
                self.error("order", f"line {frame.line} after line {scan.next_line - 1}, dropped (scan {scan.scan_id})")
                return
            if frame.line > scan.next_line:
                gap = frame.line - scan.next_line
                self.error("missing", f"{gap} lines missing before line {frame.line} (scan {scan.scan_id})")
                scan.missing += gap
                self.flush()
            scan.next_line = frame.line + 1
            scan.lines += 1
        batch = self._batch
        if batch is not None and batch.kind != kind:
            self.flush()
            batch = None
        if batch is None:
            array = np.empty((self.batch_lines, scan.energies, scan.pixels), PIXEL_DTYPE)
            batch = self._batch = _Batch(kind, scan.scan_id, frame.line, array, now_s)
        batch.add(frame)
        self.publisher.metrics.lines.labels(self.publisher.lane, kind).inc()
        if batch.n == self.batch_lines:
            self.flush()

    def tick(self, now_s: float | None = None) -> None:
        """Publish the open batch if it is ``batch_s`` old (call this while no frames come)."""
        now_s = time.monotonic() if now_s is None else now_s
        if self._batch is not None and now_s - self._batch.started_s >= self.batch_s:
            self.flush()

    def flush(self) -> None:
        """Publish the open batch, if any: one record whose counts are a view of the batch array."""
        batch, self._batch = self._batch, None
        if batch is None:
            return
        counts = batch.array[: batch.n]
        if batch.kind == "line":
            self.publisher.emit(
                Kind.XRAY_LINES,
                counts=counts,
                values={
                    "scan_id": batch.scan_id,
                    "first_line": batch.first_line,
                    "line_count": batch.n,
                    "encoder_mm": batch.encoder_mm,
                    "t_ns": batch.t_ns,
                    "flags": batch.flags,
                },
            )
        else:
            self.publisher.emit(
                Kind.XRAY_CALIBRATION,
                counts=counts,
                values={"scan_id": batch.scan_id, "frame": batch.kind, "t_ns": batch.t_ns},
            )

    def end(self, reason: str) -> None:
        """Close the open scan (if any): publish its last batch and ``XRAY_SCAN_END``.

        ``reason`` is ``scan_end`` for a scan the scanner ended; anything else (``link_down``,
        ``restarted``, ``scan_id``, ``stopped``) marks the scan incomplete.
        """
        self.flush()
        self._orphan = False
        scan, self.scan = self.scan, None
        if scan is None:
            return
        self.publisher.emit(
            Kind.XRAY_SCAN_END,
            values={
                "scan_id": scan.scan_id,
                "lines": scan.lines,
                "missing": scan.missing,
                "complete": reason == "scan_end",
                "reason": reason,
            },
        )


# ---- the driver -----------------------------------------------------------------------------
CONNECT_TIMEOUT_S = 2.0
RECV_BYTES = 1 << 18
POLL_S = 0.02
"""Socket read timeout (s): how often a quiet link checks ``stop`` and batch age."""


def parse_hostport(text: str) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``) as a pair; ``ValueError`` names what is wrong."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port, got {text!r}")
    return host, int(port)


class XrayDriver(Driver):
    """Dual-energy X-ray line-scan scanner over TCP (LWXR frames)."""

    name = "xray"

    def __init__(
        self,
        publisher: RecordPublisher,
        scanner: str,
        *,
        batch_lines: int = 64,
        batch_s: float = 0.1,
        backoff_min_s: float = 0.1,
        backoff_max_s: float = 10.0,
    ) -> None:
        super().__init__(publisher)
        if not 0 < backoff_min_s <= backoff_max_s:
            raise ValueError(f"need 0 < backoff_min_s <= backoff_max_s, got {backoff_min_s}, {backoff_max_s}")
        self.host, self.port = parse_hostport(scanner)
        self.url = f"tcp://{scanner}"
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.assembler = ScanAssembler(publisher, batch_lines, batch_s)
        self.connected = False
        self._link_up: bool | None = None
        publisher.metrics.connected.labels(publisher.lane).set(0)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--scanner", metavar="HOST:PORT", help="the scanner's line stream (default: the lane's xray key)"
        )
        parser.add_argument(
            "--batch-lines", type=int, default=64, metavar="N", help="image lines per published record (default 64)"
        )
        parser.add_argument(
            "--batch-ms",
            type=float,
            default=100.0,
            metavar="MS",
            help="publish a batch at most this long (ms) after its first line (default 100)",
        )
        parser.add_argument(
            "--backoff-max",
            type=float,
            default=10.0,
            metavar="S",
            help="longest wait (s) between reconnection attempts (default 10)",
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace, config: Config, publisher: RecordPublisher) -> XrayDriver:
        scanner = args.scanner or config.lane(args.lane).xray
        if not scanner:
            raise ConfigError(f"{config.source}: lane {args.lane!r} has no xray scanner; set xray or pass --scanner")
        if args.batch_lines < 1 or args.batch_ms < 0:
            raise ConfigError(
                f"--batch-lines must be >= 1 and --batch-ms >= 0, got {args.batch_lines}, {args.batch_ms}"
            )
        try:
            return cls(
                publisher,
                scanner,
                batch_lines=args.batch_lines,
                batch_s=args.batch_ms / 1000.0,
                backoff_max_s=args.backoff_max,
            )
        except ValueError as exc:
            raise ConfigError(f"{config.source}: lane {args.lane!r} xray scanner: {exc}") from None

    def health(self) -> dict[str, Any]:
        scan = self.assembler.scan
        return {
            "ok": self.connected,
            "lane": self.publisher.lane,
            "source": self.publisher.source,
            "scanner": self.url,
            "connected": self.connected,
            "scan_open": None if scan is None else scan.scan_id,
            "scans": self.assembler.scans,
        }

    def run(self, stop: threading.Event) -> None:
        """Connect, read and publish until ``stop``; returns within about :data:`POLL_S` of it.

        A lost or refused connection is retried after ``backoff_min_s``, doubling per failure up
        to ``backoff_max_s``, back to the minimum after a connection that carried good frames.
        """
        delay = self.backoff_min_s
        attempts = 0
        while not stop.is_set():
            if attempts:
                self.publisher.metrics.reconnects.labels(self.publisher.lane).inc()
            attempts += 1
            try:
                sock = socket.create_connection((self.host, self.port), timeout=CONNECT_TIMEOUT_S)
            except OSError as exc:
                self._link(False, f"connect failed: {exc}")
            else:
                if self._session(sock, stop):
                    delay = self.backoff_min_s
            if stop.wait(delay):
                break
            delay = min(delay * 2.0, self.backoff_max_s)

    def _link(self, up: bool, reason: str = "") -> None:
        self.connected = up
        self.publisher.metrics.connected.labels(self.publisher.lane).set(1 if up else 0)
        if up == self._link_up:
            log.debug("lane %s: X-ray scanner %s still down: %s", self.publisher.lane, self.url, reason)
            return
        self._link_up = up
        values: dict[str, Any] = {"up": up, "url": self.url}
        if up:
            log.info("lane %s: X-ray scanner %s connected", self.publisher.lane, self.url)
        else:
            values["reason"] = reason
            log.warning("lane %s: X-ray scanner %s down: %s", self.publisher.lane, self.url, reason)
        self.publisher.emit(Kind.LINK, values=values)

    def _session(self, sock: socket.socket, stop: threading.Event) -> bool:
        """Read one connection until it ends or ``stop``; True when it carried at least one good frame."""
        self._link(True)
        metrics, lane = self.publisher.metrics, self.publisher.lane
        reader = FrameReader()
        good = False
        reason = "stopped"
        sock.settimeout(POLL_S)
        try:
            while not stop.is_set():
                try:
                    chunk = sock.recv(RECV_BYTES)
                except TimeoutError:
                    self.assembler.tick()
                    continue
                except OSError as exc:
                    reason = f"read error: {exc}"
                    break
                if not chunk:
                    reason = "closed by the scanner"
                    break
                metrics.bytes_read.labels(lane).inc(len(chunk))
                for event in reader.feed(chunk):
                    good |= self._handle(event)
                self.assembler.tick()
        finally:
            sock.close()
            for event in reader.finish():
                self._handle(event)
            self.assembler.end("stopped" if stop.is_set() else "link_down")
            self._link(False, reason)
        return good

    def _handle(self, event: Frame | FrameError) -> bool:
        if isinstance(event, FrameError):
            self.assembler.error(event.kind, f"{event.message} (stream offset {event.offset}, {self.url})")
            return False
        self.publisher.metrics.last_line.labels(self.publisher.lane).set(time.time())
        self.assembler.frame(event)
        return True
