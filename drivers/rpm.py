"""Driver for radiation portal monitors that speak the Rapiscan-style ASCII line protocol.

The portal sends one comma-separated ASCII line per observation, ended by CR LF (a bare
LF is accepted too)::

    GS,000068,000068,000068,000068

The first field is the line type; the rest are counts zero-padded to 6 digits, one per
detector channel, or the type's own fields. :func:`parse_line` turns one line into a
:class:`ParsedLine`; :class:`RpmDriver` reads lines from any pyserial URL (a serial
device path, ``socket://host:port``, ``rfc2217://host:port``, ``loop://``), stamps each on
arrival and publishes it as an :class:`lanewatch.edge.bus.records.Record`.

Line types and what they become:

======== ====================== ==================================================================
type     record kind            content
======== ====================== ==================================================================
GB GL GH ``GAMMA_BACKGROUND``   counts (gamma channels, K) in counts per second (cps), ``dt_s`` 1;
                                GL flags ``fault_low``, GH ``fault_high``
NB NH    ``NEUTRON_BACKGROUND`` counts (neutron channels, 1) in cps, ``dt_s`` 1; NH ``fault_high``
GS GA    ``GAMMA_SCAN``         counts (gamma channels, K) per 0.2 s, ``dt_s`` 0.2; GA ``device_alarm``
NS NA    ``NEUTRON_SCAN``       counts (neutron channels, 1) per neutron interval (default 1 s);
                                NA ``device_alarm``
SP       ``SPEED``              ``crossing_s`` (s), ``speed_mph`` (mph), ``speed_kmh`` (km/h); an
                                optional fourth field is checked as a count and not reported
GX       ``OCCUPANCY_END``      ``device_occupancy`` (the device's counter, int) and
                                ``neutron_background_cps`` (field 2 / 1000); optional fields 3-4
                                are checked as counts
TT TC    ``TAMPER``             ``active`` True (TT) / False (TC); up to 4 fields, not interpreted
SG1-SG3  ``SETUP``              ``line`` (the type) and ``fields`` (the fields as strings)
SN1 SN2
======== ====================== ==================================================================

Energy windows (a lanewatch extension of the protocol): a portal that reports K energy
windows per gamma channel sends gamma_channels x K counts on its GB/GL/GH/GS/GA lines,
window-major: ``GS,c1w1,c2w1,c3w1,c4w1,c1w2,c2w2,c3w2,c4w2`` gives ``counts[channel, window]``.
With K = 1 this is the plain protocol.

Rules for a line, each broken rule raising :class:`LineError` with its ``kind``:

* ``overlong``: more than :data:`MAX_LINE_BYTES` bytes before the terminator.
* ``garbage``: any byte outside printable ASCII (0x20-0x7E).
* ``unknown-type``: a first field that is not one of the types above (types are upper case).
* ``truncated`` / ``extra-fields``: fewer / more fields than the type carries.
* ``negative``: a count or number with a leading minus sign.
* ``bad-count``: a count that is not exactly 6 decimal digits, or a number that is not decimal.
* ``overflow``: a count of more than 6 digits (the protocol's width: the largest count is
  999999, far inside uint32, so counts never wrap), or a number too large for a float.

The driver skips empty lines (a bare CR LF) without counting them as errors. A line cut
by a lost link is counted as ``truncated``. A line whose bytes arrive over several reads
is stamped when the read that completed it returned. pyserial discards input that
arrives while it opens a port (``reset_input_buffer``), so what a device sends before the
driver's ``LINK`` up record is not seen.
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import re
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import serial

from lanewatch.edge.bus.driver import Driver, RecordPublisher
from lanewatch.edge.bus.records import Kind
from lanewatch.edge.config import Config, ConfigError, LaneConfig

log = logging.getLogger("lanewatch.driver.rpm")

MAX_LINE_BYTES = 512
"""Longest line accepted, in bytes without the terminator; longer lines are discarded as ``overlong``."""
COUNT_DIGITS = 6
"""Width of a count field: counts are zero-padded to exactly this many decimal digits."""
GAMMA_SCAN_DT_S = 0.2
"""Duration (s) of one gamma scan sample (GS/GA)."""
BACKGROUND_DT_S = 1.0
"""Background lines carry counts per second, so their records have ``dt_s`` = 1 s."""
POLL_S = 0.1
"""Longest time (s) one read waits for data before the driver checks whether to stop."""
READ_CHUNK_BYTES = 65536
"""Most bytes taken from the port in one read."""
LOG_HEAD_BYTES = 80
"""Bytes of an offending line quoted in a log message."""

ERROR_KINDS = ("garbage", "truncated", "bad-count", "negative", "overflow", "unknown-type", "overlong", "extra-fields")
"""Every ``LineError.kind`` (and ``parse_errors`` label) this module produces."""

_COUNT = re.compile(rb"[0-9]+")
_NUMBER = re.compile(rb"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
_PRINTABLE = re.compile(rb"[\x20-\x7e]*")


class LineError(ValueError):
    """A protocol line that cannot be used; ``kind`` is one of :data:`ERROR_KINDS`."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class ParsedLine:
    """What one protocol line says, ready to become a record (the driver adds lane, seq and times)."""

    type: str
    """The line type as sent (``GS``, ``SG1``...)."""
    kind: Kind
    dt_s: float = 0.0
    """Duration (s) the counts cover; 0 for lines without counts."""
    counts: np.ndarray | None = None
    """uint32 counts, shape (channels, windows)."""
    values: dict[str, Any] = field(default_factory=dict)
    flags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _LineSpec:
    kind: Kind
    flags: tuple[str, ...] = ()


_GAMMA_BACKGROUND = {
    "GB": _LineSpec(Kind.GAMMA_BACKGROUND),
    "GL": _LineSpec(Kind.GAMMA_BACKGROUND, ("fault_low",)),
    "GH": _LineSpec(Kind.GAMMA_BACKGROUND, ("fault_high",)),
}
_NEUTRON_BACKGROUND = {
    "NB": _LineSpec(Kind.NEUTRON_BACKGROUND),
    "NH": _LineSpec(Kind.NEUTRON_BACKGROUND, ("fault_high",)),
}
_GAMMA_SCAN = {"GS": _LineSpec(Kind.GAMMA_SCAN), "GA": _LineSpec(Kind.GAMMA_SCAN, ("device_alarm",))}
_NEUTRON_SCAN = {"NS": _LineSpec(Kind.NEUTRON_SCAN), "NA": _LineSpec(Kind.NEUTRON_SCAN, ("device_alarm",))}
_TAMPER = {"TT": True, "TC": False}
_SETUP = frozenset({"SG1", "SG2", "SG3", "SN1", "SN2"})
LINE_TYPES = frozenset(
    {*_GAMMA_BACKGROUND, *_NEUTRON_BACKGROUND, *_GAMMA_SCAN, *_NEUTRON_SCAN, "SP", "GX", *_TAMPER, *_SETUP}
)
"""Every line type :func:`parse_line` accepts; also the bounded label set of ``metrics.lines``."""
_TAMPER_MAX_FIELDS = 4


def _count(text: bytes, line_type: str, index: int) -> int:
    """One count field: exactly :data:`COUNT_DIGITS` decimal digits."""
    if _COUNT.fullmatch(text):
        if len(text) > COUNT_DIGITS:
            raise LineError("overflow", f"{line_type} field {index}: count {text[:16]!r} has more than 6 digits")
        if len(text) < COUNT_DIGITS:
            raise LineError("bad-count", f"{line_type} field {index}: count {text!r} is not 6 digits")
        return int(text)
    if text[:1] == b"-" and _COUNT.fullmatch(text[1:]):
        raise LineError("negative", f"{line_type} field {index}: negative count {text!r}")
    raise LineError("bad-count", f"{line_type} field {index}: count {text[:16]!r} is not a decimal number")


def _number(text: bytes, line_type: str, index: int) -> float:
    """One non-negative decimal number field (``0.2249``, ``03.032``, ``000000``)."""
    if _NUMBER.fullmatch(text):
        value = float(text)
        if not math.isfinite(value):
            raise LineError("overflow", f"{line_type} field {index}: number {text[:16]!r} is too large")
        return value
    if text[:1] == b"-" and _NUMBER.fullmatch(text[1:]):
        raise LineError("negative", f"{line_type} field {index}: negative number {text!r}")
    raise LineError("bad-count", f"{line_type} field {index}: {text[:16]!r} is not a decimal number")


def _check_width(line_type: str, fields: list[bytes], least: int, most: int) -> None:
    """``fields`` (after the type) must number from ``least`` to ``most``."""
    expected = str(least) if least == most else f"{least} to {most}"
    if len(fields) < least:
        raise LineError("truncated", f"{line_type} line has {len(fields)} fields after the type, expected {expected}")
    if len(fields) > most:
        raise LineError(
            "extra-fields", f"{line_type} line has {len(fields)} fields after the type, expected {expected}"
        )


def _counts(line_type: str, fields: list[bytes], channels: int, windows: int) -> np.ndarray:
    """``channels * windows`` window-major count fields as a uint32 (channels, windows) array."""
    _check_width(line_type, fields, channels * windows, channels * windows)
    values = [_count(text, line_type, i) for i, text in enumerate(fields, start=1)]
    return np.array(values, dtype=np.uint32).reshape(windows, channels).T.copy()


def parse_line(
    raw: bytes, *, gamma_channels: int = 4, neutron_channels: int = 4, windows: int = 1, neutron_interval_s: float = 1.0
) -> ParsedLine:
    """Parse one protocol line (with or without its CR LF / LF terminator).

    ``windows`` is K, the energy windows per gamma channel; ``neutron_interval_s`` the
    duration (s) of one neutron scan sample. Raises :class:`LineError` for a line that
    breaks a rule of the protocol (see the module docstring).
    """
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    if len(raw) > MAX_LINE_BYTES:
        raise LineError("overlong", f"line of {len(raw)} bytes, longer than {MAX_LINE_BYTES}")
    if not _PRINTABLE.fullmatch(raw):
        raise LineError("garbage", "line holds bytes that are not printable ASCII")
    type_field, *fields = raw.split(b",")
    line_type = type_field.decode("ascii")
    if line_type not in LINE_TYPES:
        raise LineError("unknown-type", f"unknown line type {line_type[:16]!r}")
    if spec := _GAMMA_BACKGROUND.get(line_type):
        counts = _counts(line_type, fields, gamma_channels, windows)
        return ParsedLine(line_type, spec.kind, BACKGROUND_DT_S, counts, flags=spec.flags)
    if spec := _NEUTRON_BACKGROUND.get(line_type):
        counts = _counts(line_type, fields, neutron_channels, 1)
        return ParsedLine(line_type, spec.kind, BACKGROUND_DT_S, counts, flags=spec.flags)
    if spec := _GAMMA_SCAN.get(line_type):
        counts = _counts(line_type, fields, gamma_channels, windows)
        return ParsedLine(line_type, spec.kind, GAMMA_SCAN_DT_S, counts, flags=spec.flags)
    if spec := _NEUTRON_SCAN.get(line_type):
        counts = _counts(line_type, fields, neutron_channels, 1)
        return ParsedLine(line_type, spec.kind, neutron_interval_s, counts, flags=spec.flags)
    if line_type == "SP":
        _check_width(line_type, fields, 3, 4)
        crossing_s, speed_mph, speed_kmh = (_number(text, line_type, i) for i, text in enumerate(fields[:3], start=1))
        for i, text in enumerate(fields[3:], start=4):
            _count(text, line_type, i)
        values = {"crossing_s": crossing_s, "speed_mph": speed_mph, "speed_kmh": speed_kmh}
        return ParsedLine(line_type, Kind.SPEED, values=values)
    if line_type == "GX":
        _check_width(line_type, fields, 2, 4)
        occupancy = _count(fields[0], line_type, 1)
        neutron_background = _number(fields[1], line_type, 2) / 1000.0
        for i, text in enumerate(fields[2:], start=3):
            _count(text, line_type, i)
        values = {"device_occupancy": occupancy, "neutron_background_cps": neutron_background}
        return ParsedLine(line_type, Kind.OCCUPANCY_END, values=values)
    if line_type in _TAMPER:
        _check_width(line_type, fields, 0, _TAMPER_MAX_FIELDS)
        return ParsedLine(line_type, Kind.TAMPER, values={"active": _TAMPER[line_type]})
    return ParsedLine(
        line_type, Kind.SETUP, values={"line": line_type, "fields": [text.decode("ascii") for text in fields]}
    )


class LineSplitter:
    """Cuts a byte stream into lines, holding at most :data:`MAX_LINE_BYTES` + 1 bytes of a pending line.

    A pending line that grows past the limit is reported once as overlong (with its first
    bytes) and the rest of it, up to the next LF, is discarded, so a stream without newlines
    cannot grow memory.
    """

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self._pending = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[tuple[bytes, bool]]:
        """Complete lines in ``data`` (without LF) as ``(line, False)``; an overlong one as ``(head, True)``."""
        out: list[tuple[bytes, bool]] = []
        start = 0
        if self._discarding:
            newline = data.find(b"\n")
            if newline < 0:
                return out
            self._discarding = False
            start = newline + 1
        while (newline := data.find(b"\n", start)) >= 0:
            if self._pending:
                self._pending += data[start:newline]
                out.append((bytes(self._pending), False))
                self._pending.clear()
            else:
                out.append((data[start:newline], False))
            start = newline + 1
        self._pending += data[start:]
        # One byte more than the limit may be the CR of a line of exactly the limit.
        if len(self._pending) > self.max_line_bytes + 1:
            out.append((bytes(self._pending[:LOG_HEAD_BYTES]), True))
            self._pending.clear()
            self._discarding = True
        return out

    @property
    def pending_bytes(self) -> int:
        """Bytes held of the line not yet complete (never more than ``max_line_bytes`` + 1)."""
        return len(self._pending)

    def reset(self) -> bytes:
        """Forget the pending partial line (the link it came from is gone) and return it."""
        pending = bytes(self._pending)
        self._pending.clear()
        self._discarding = False
        return pending


class RpmDriver(Driver):
    """Reads a Rapiscan-style portal monitor over any pyserial URL and publishes its records.

    Every line is stamped (``time.time_ns``/``time.monotonic_ns``) when the read that
    completed it returned. A lost link is reopened with capped exponential backoff
    (``backoff_min_s`` doubling up to ``backoff_max_s``, back to the minimum after data
    arrives), and each change of the link is published as a ``LINK`` record.
    """

    name: ClassVar[str] = "rpm"
    keep_records: ClassVar[int] = 65536
    """About three hours of a portal's lines, a few MB: a service down that long still decides what passed."""

    def __init__(
        self,
        publisher: RecordPublisher,
        url: str,
        *,
        gamma_channels: int = 4,
        neutron_channels: int = 4,
        windows: int = 1,
        baudrate: int = 9600,
        neutron_interval_s: float = 1.0,
        backoff_max_s: float = 5.0,
        backoff_min_s: float = 0.1,
        stale_after_s: float = 15.0,
    ) -> None:
        super().__init__(publisher)
        if min(gamma_channels, neutron_channels, windows, baudrate) < 1:
            raise ValueError("gamma_channels, neutron_channels, windows and baudrate must be at least 1")
        if not 0 < backoff_min_s <= backoff_max_s:
            raise ValueError(f"need 0 < backoff_min_s <= backoff_max_s, got {backoff_min_s}, {backoff_max_s}")
        if neutron_interval_s <= 0 or stale_after_s <= 0:
            raise ValueError("neutron_interval_s and stale_after_s must be positive (s)")
        self.url = url
        self.gamma_channels = gamma_channels
        self.neutron_channels = neutron_channels
        self.windows = windows
        self.baudrate = baudrate
        self.neutron_interval_s = neutron_interval_s
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.stale_after_s = stale_after_s
        # The open pyserial port while the link is up, else None.
        self.port: serial.SerialBase | None = None
        self._splitter = LineSplitter()
        self._link_up: bool | None = None
        self._link_since_mono: float | None = None
        self._last_line_mono: float | None = None
        self._reconnects = 0
        self._backoff_s = backoff_min_s
        metrics = publisher.metrics
        self._lane = publisher.lane
        self._m_lines = metrics.lines
        self._m_errors = metrics.parse_errors
        self._m_bytes = metrics.bytes_read.labels(self._lane)
        self._m_reconnects = metrics.reconnects.labels(self._lane)
        self._m_connected = metrics.connected.labels(self._lane)
        self._m_last_line = metrics.last_line.labels(self._lane)
        self._m_connected.set(0)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """``--url``, ``--baudrate``, ``--neutron-interval`` (s) and ``--backoff-max`` (s)."""
        parser.add_argument("--url", help="pyserial URL of the portal monitor (default: the lane's rpm key)")
        parser.add_argument("--baudrate", type=_positive(int), help="serial speed in baud (default: the lane's)")
        parser.add_argument(
            "--neutron-interval",
            type=_positive(float),
            default=1.0,
            metavar="S",
            help="duration of one neutron scan sample (s, default 1)",
        )
        parser.add_argument(
            "--backoff-max",
            type=_positive(float),
            default=5.0,
            metavar="S",
            help="longest wait between attempts to reopen a lost link (s, default 5)",
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace, config: Config, publisher: RecordPublisher) -> RpmDriver:
        """Build from ``--lane`` and the lane's configuration; ``--url``/``--baudrate`` override it.

        With ``--url``, a lane missing from the configuration takes the default channel counts.
        """
        try:
            lane = config.lane(args.lane)
        except ConfigError:
            if not args.url:
                raise
            lane = LaneConfig(id=args.lane)
        url = args.url or lane.rpm
        if not url:
            raise ConfigError(f"{config.source}: lane {lane.id!r} has no rpm URL; set lanes.rpm or pass --url")
        return cls(
            publisher,
            url,
            gamma_channels=lane.gamma_channels,
            neutron_channels=lane.neutron_channels,
            windows=config.windows,
            baudrate=args.baudrate or lane.baudrate,
            neutron_interval_s=args.neutron_interval,
            backoff_max_s=args.backoff_max,
        )

    def run(self, stop: threading.Event) -> None:
        """Open, read and reopen the link until ``stop`` is set; returns within about :data:`POLL_S`."""
        first = True
        while not stop.is_set():
            if not first:
                self._reconnects += 1
                self._m_reconnects.inc()
            first = False
            try:
                port = serial.serial_for_url(self.url, baudrate=self.baudrate, timeout=POLL_S)
            except (serial.SerialException, OSError) as exc:
                self._link_down(f"cannot open: {exc}")
            else:
                self._serve(port, stop)
            if not self._wait(stop, self._backoff_s):
                self._backoff_s = min(2 * self._backoff_s, self.backoff_max_s)
        if self._link_up:
            self._set_link(False)

    def _wait(self, stop: threading.Event, seconds: float) -> bool:
        """Wait ``seconds`` (True if ``stop`` was set meanwhile), serving replay requests while the link is down."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.publisher.serve_replays()
            if stop.wait(min(left, POLL_S)):
                return True
        return stop.is_set()

    def health(self) -> dict[str, Any]:
        """``ok`` while the link is up and a line arrived within ``stale_after_s`` (or the link is that young)."""
        now = time.monotonic()
        connected = bool(self._link_up)
        age = None if self._last_line_mono is None else now - self._last_line_mono
        fresh_since = self._last_line_mono if self._last_line_mono is not None else self._link_since_mono
        ok = connected and fresh_since is not None and now - fresh_since <= self.stale_after_s
        return {
            "ok": ok,
            "lane": self._lane,
            "source": self.publisher.source,
            "url": self.url,
            "connected": connected,
            "last_line_age_s": age,
            "reconnects": self._reconnects,
        }

    def _serve(self, port: serial.SerialBase, stop: threading.Event) -> None:
        """Read an open port until ``stop`` or a link failure, then close it."""
        self.port = port
        self._set_link(True)
        try:
            self._pump(port, stop)
        except (serial.SerialException, OSError) as exc:
            # A peer that closed a socket:// link: SerialException("read failed: socket disconnected").
            self._link_down(str(exc))
        finally:
            self.port = None
            try:
                port.close()
            except (serial.SerialException, OSError) as exc:
                log.debug("lane %s: closing %s: %s", self._lane, self.url, exc)
            partial = self._splitter.reset()
            if partial:
                self._reject(partial, LineError("truncated", "partial line when the link closed"))

    def _pump(self, port: serial.SerialBase, stop: threading.Event) -> None:
        """Read, split, parse and publish until ``stop``; a link failure raises SerialException or OSError."""
        read = self._reader(port)
        while not stop.is_set():
            self.publisher.serve_replays()
            data = read()
            if not data:
                continue
            t_wall_ns = time.time_ns()
            t_mono_ns = time.monotonic_ns()
            self._backoff_s = self.backoff_min_s
            self._m_bytes.inc(len(data))
            for line, overlong in self._splitter.feed(data):
                if overlong:
                    self._reject(line, LineError("overlong", f"line longer than {MAX_LINE_BYTES} bytes, discarded"))
                elif line := line.removesuffix(b"\r"):
                    self._handle(line, t_wall_ns, t_mono_ns)

    @staticmethod
    def _reader(port: serial.SerialBase) -> Callable[[], bytes]:
        """A function returning the bytes available now, after waiting at most :data:`POLL_S` for some.

        Ports with a file descriptor (serial devices, ``socket://``) are waited on with
        ``select`` and then read without blocking, one chunk per call. The others
        (``loop://``, ``rfc2217://``) count exactly what they hold (``in_waiting``), so one
        byte is read with the port's timeout and the rest of what arrived after it.
        """
        try:
            fd = port.fileno()
        except (io.UnsupportedOperation, AttributeError):
            fd = None
        if fd is not None:
            port.timeout = 0

            def read_ready() -> bytes:
                ready, _, _ = select.select([fd], [], [], POLL_S)
                return port.read(READ_CHUNK_BYTES) if ready else b""

            return read_ready

        def read_waiting() -> bytes:
            head = port.read(1)
            waiting = port.in_waiting if head else 0
            return head + port.read(min(waiting, READ_CHUNK_BYTES)) if waiting else head

        return read_waiting

    def _handle(self, raw: bytes, t_wall_ns: int, t_mono_ns: int) -> None:
        try:
            parsed = parse_line(
                raw,
                gamma_channels=self.gamma_channels,
                neutron_channels=self.neutron_channels,
                windows=self.windows,
                neutron_interval_s=self.neutron_interval_s,
            )
        except LineError as exc:
            self._reject(raw, exc)
            return
        self._m_lines.labels(self._lane, parsed.type).inc()
        self._m_last_line.set(t_wall_ns / 1e9)
        self._last_line_mono = t_mono_ns / 1e9
        self.publisher.emit(
            parsed.kind,
            t_wall_ns=t_wall_ns,
            t_mono_ns=t_mono_ns,
            dt_s=parsed.dt_s,
            counts=parsed.counts,
            values=parsed.values,
            flags=parsed.flags,
        )

    def _reject(self, raw: bytes, exc: LineError) -> None:
        self._m_errors.labels(self._lane, exc.kind).inc()
        log.warning("lane %s: %s line %r: %s", self._lane, exc.kind, raw[:LOG_HEAD_BYTES], exc)

    def _link_down(self, reason: str) -> None:
        if self._link_up is False:
            log.debug("lane %s: %s still down: %s", self._lane, self.url, reason)
            return
        log.warning("lane %s: link to %s down: %s", self._lane, self.url, reason)
        self._set_link(False)

    def _set_link(self, up: bool) -> None:
        self._link_up = up
        self._link_since_mono = time.monotonic() if up else None
        self._m_connected.set(1 if up else 0)
        if up:
            log.info("lane %s: link to %s up", self._lane, self.url)
        self.publisher.emit(Kind.LINK, values={"up": up, "url": self.url})


def _positive(kind: type[int] | type[float]) -> Callable[[str], float]:
    """An argparse ``type`` accepting only numbers > 0 of ``kind``."""

    def convert(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value

    return convert
