"""Typed records that drivers publish on the ingest bus, and their wire encoding.

A record is one observation from one device at one lane: a gamma or neutron sample, a
background reading, a speed, the end of an occupancy, a tamper or link event.

Wire format (one ZeroMQ multipart message per record)::

    frame 0  topic   b"<source>/<lane>"            (UTF-8; SUB filters on it)
    frame 1  header  JSON object, see ``Record.header``
    frame 2+ arrays  raw little-endian bytes, one frame per entry of header["arrays"]

Array frames carry counts without a JSON round trip, so a spectroscopic portal's
16384-channel spectra cross the bus as one buffer each.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import numpy as np

WIRE_VERSION = 1
_ARRAY_FIELDS = ("counts", "spectra")
MAX_RUN_ID = 64
"""Longest ``run_id`` (characters) a record may carry."""


class Kind(StrEnum):
    """What a record says. Values are stable wire names."""

    GAMMA_BACKGROUND = "gamma_background"
    """Unoccupied gamma background; ``counts`` (channels, K) in counts per second (cps)."""
    NEUTRON_BACKGROUND = "neutron_background"
    """Unoccupied neutron background; ``counts`` (channels, 1) in counts per second (cps)."""
    GAMMA_SCAN = "gamma_scan"
    """Occupied gamma sample; ``counts`` (channels, K) in counts per ``dt_s`` (0.2 s on an RPM)."""
    NEUTRON_SCAN = "neutron_scan"
    """Occupied neutron sample; ``counts`` (channels, 1) in counts per ``dt_s`` (1 s on an RPM)."""
    SPEED = "speed"
    """Vehicle speed; values ``speed_kmh`` (km/h) and, when the device gives it, ``crossing_s``."""
    OCCUPANCY_END = "occupancy_end"
    """End of occupancy (GX); values ``device_occupancy`` (int) and ``neutron_background_cps``."""
    TAMPER = "tamper"
    """Tamper state change; values ``active`` (bool)."""
    SETUP = "setup"
    """Device setup line (SG1..SG3, SN1, SN2); values ``line`` (str) and ``fields`` (list of str)."""
    LINK = "link"
    """Driver link to its device went up or down; values ``up`` (bool) and ``url`` (str)."""
    XRAY_SCAN_START = "xray_scan_start"
    """An X-ray scan began; values ``scan_id``, ``t_ns`` (scanner clock, ns UTC), ``energies``, ``pixels``."""
    XRAY_CALIBRATION = "xray_calibration"
    """X-ray calibration lines; ``counts`` (lines, energies, pixels) uint16 ADU; values ``scan_id``,
    ``frame`` ("dark": offset, beam off; "air": gain, beam on through air) and ``t_ns`` (list, ns UTC)."""
    XRAY_LINES = "xray_lines"
    """Consecutive X-ray image lines; ``counts`` (lines, energies, pixels) uint16 ADU, energy 0 the highest,
    pixel 0 at the top; values ``scan_id``, ``first_line``, ``line_count``, and per line ``encoder_mm``
    (vehicle travel since the scan began, mm), ``t_ns`` (ns UTC) and ``flags`` (frame flags)."""
    XRAY_SCAN_END = "xray_scan_end"
    """An X-ray scan ended; values ``scan_id``, ``lines`` (image lines received), ``missing`` (lines lost),
    ``complete`` (false when cut short) and ``reason`` (scan_end, link_down, restarted, scan_id, stopped)."""


@dataclass(slots=True)
class Record:
    """One observation from one device, stamped on arrival at the driver.

    ``seq`` is the driver's own per-source sequence number, starting at 0 and increasing
    by exactly 1 per record published, so a consumer can count what it missed.
    ``t_wall_ns`` is UTC wall clock (ns since the epoch) and ``t_mono_ns`` the driver's
    monotonic clock (ns), both taken when the line arrived.
    ``flags`` holds device states carried by the line type: ``device_alarm`` (GA, NA),
    ``fault_low``/``fault_high`` (GL, GH, NH), and ``occupancy_start`` on the first sample of an occupancy
    when the source knows it saw its start (a file replay).
    """

    kind: Kind
    lane: str
    source: str
    seq: int
    t_wall_ns: int
    t_mono_ns: int
    dt_s: float = 0.0
    counts: np.ndarray | None = None
    spectra: np.ndarray | None = None
    values: dict[str, Any] = field(default_factory=dict)
    flags: tuple[str, ...] = ()
    run_id: str = ""
    """The driver's run: random per start of the driver, so a consumer tells a restart from a jump in ``seq``."""

    @property
    def topic(self) -> bytes:
        return f"{self.source}/{self.lane}".encode()

    def encode(self) -> list[bytes | memoryview]:
        """Multipart frames for ``socket.send_multipart``."""
        arrays = []
        frames: list[bytes | memoryview] = []
        for name in _ARRAY_FIELDS:
            arr = getattr(self, name)
            if arr is None:
                continue
            arr = np.ascontiguousarray(arr)
            arrays.append({"name": name, "dtype": arr.dtype.newbyteorder("<").str, "shape": list(arr.shape)})
            frames.append(memoryview(arr.astype(arr.dtype.newbyteorder("<"), copy=False)).cast("B"))
        header = {
            "v": WIRE_VERSION,
            "kind": self.kind.value,
            "lane": self.lane,
            "source": self.source,
            "seq": self.seq,
            "run_id": self.run_id,
            "t_wall_ns": self.t_wall_ns,
            "t_mono_ns": self.t_mono_ns,
            "dt_s": self.dt_s,
            "values": self.values,
            "flags": list(self.flags),
            "arrays": arrays,
        }
        return [self.topic, json.dumps(header, separators=(",", ":")).encode(), *frames]


class DecodeError(ValueError):
    """A bus message that is not a well-formed record; ``kind`` names what was wrong."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def decode(frames: list[bytes]) -> Record:
    """Parse multipart frames into a :class:`Record`; raises :class:`DecodeError`."""
    if len(frames) < 2:
        raise DecodeError("frames", f"expected at least 2 frames, got {len(frames)}")
    try:
        header = json.loads(frames[1])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DecodeError("header", f"header is not JSON: {exc}") from None
    if not isinstance(header, dict) or header.get("v") != WIRE_VERSION:
        raise DecodeError(
            "version", f"unsupported wire version {header.get('v') if isinstance(header, dict) else None!r}"
        )
    try:
        kind = Kind(header["kind"])
        specs = header["arrays"]
        if len(specs) != len(frames) - 2:
            raise DecodeError("frames", f"header names {len(specs)} arrays, message has {len(frames) - 2}")
        arrays: dict[str, np.ndarray] = {}
        for spec, buf in zip(specs, frames[2:], strict=True):
            if spec["name"] not in _ARRAY_FIELDS:
                raise DecodeError("array", f"unknown array {spec['name']!r}")
            dtype = np.dtype(spec["dtype"])
            shape = tuple(int(n) for n in spec["shape"])
            if int(np.prod(shape)) * dtype.itemsize != len(buf):
                raise DecodeError("array", f"array {spec['name']} {shape} {dtype} does not match {len(buf)} bytes")
            arrays[spec["name"]] = np.frombuffer(buf, dtype=dtype).reshape(shape)
        return Record(
            kind=kind,
            lane=str(header["lane"]),
            source=str(header["source"]),
            seq=int(header["seq"]),
            t_wall_ns=int(header["t_wall_ns"]),
            t_mono_ns=int(header["t_mono_ns"]),
            dt_s=float(header["dt_s"]),
            counts=arrays.get("counts"),
            spectra=arrays.get("spectra"),
            values=dict(header["values"]),
            flags=tuple(header["flags"]),
            run_id=_run_id(header.get("run_id", "")),
        )
    except DecodeError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise DecodeError("field", f"bad record field: {exc!r}") from None


def _run_id(value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_RUN_ID:
        raise DecodeError("field", f"run_id must be a string of at most {MAX_RUN_ID} characters")
    return value


def iso_utc(t_wall_ns: int) -> str:
    """ISO 8601 UTC with millisecond precision, e.g. ``2026-11-28T03:30:16.123Z``."""
    return datetime.fromtimestamp(t_wall_ns / 1e9, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
