"""Typed records that drivers publish on the ingest bus, and their wire encoding.

A record is one observation from one device at one lane: a gamma or neutron sample, a
background reading, a speed, the end of an occupancy, a tamper or link event.

Wire format (one ZeroMQ multipart message per record)::

    frame 0  topic   b"<source>/<lane>"            (UTF-8; SUB filters on it)
    frame 1  header  JSON object, a :class:`Header` (``lanewatch schema record`` prints its JSON Schema)
    frame 2+ arrays  raw little-endian bytes, one frame per entry of header["arrays"]

Array frames carry counts without a JSON round trip, so a spectroscopic portal's
16384-channel spectra cross the bus as one buffer each.

The header is a msgspec Struct tagged by ``kind``, and ``values`` has one Struct per kind
(:data:`VALUES`), so decoding checks every field's type and range in one pass: finite numbers,
integers in range, an allow-listed dtype, a sane shape, bounded sizes. Anything else is a
:class:`DecodeError`, never another exception.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

import msgspec
import numpy as np
from msgspec import Meta

WIRE_VERSION = 1
STATUS_INTERVAL_S = 1.0
"""How often (s) a driver publishes its ``STATUS`` record."""
_ARRAY_FIELDS = ("counts", "spectra")
MAX_RUN_ID = 64
"""Longest ``run_id`` (characters) a record may carry."""
MAX_HEADER_BYTES = 1 << 20
"""Largest header frame (bytes) decoded; a bigger one is refused unread."""
MAX_ARRAY_BYTES = 1 << 28
"""Largest array frame (bytes) a header may announce."""
DTYPES = ("|u1", "<u2", "<u4", "<u8", "|i1", "<i2", "<i4", "<i8", "<f4", "<f8")
"""Array dtypes (numpy ``dtype.str``, little-endian) a record may carry."""


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
    STATUS = "status"
    """The driver's state, published every :data:`STATUS_INTERVAL_S` whether or not it changed, so a
    consumer that missed a ``LINK`` edge (or restarted) learns the link within a second, and the
    header's ``run_id`` tells which run of the driver speaks; values ``link_up`` (bool),
    ``last_line_age_s`` (s), ``lines``, ``errors`` and ``published`` (see :class:`StatusValues`)."""
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


Finite = Annotated[float, Meta(ge=-1e300, le=1e300)]
"""A finite number (JSON has no NaN or infinity; a value out of this range is refused)."""
Count = Annotated[int, Meta(ge=0, le=2**63 - 1)]
Ns = Annotated[int, Meta(ge=0, le=2**63 - 1)]
"""An instant or duration in ns."""
Name = Annotated[str, Meta(max_length=256)]
Strings = Annotated[list[Name], Meta(max_length=1024)]
PerLine = Meta(max_length=1 << 16)
"""Per-line lists are bounded: one record carries at most this many X-ray lines."""


class Values(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """The ``values`` of a record; one subclass per :class:`Kind` (see :data:`VALUES`). Values at their default
    are left out on the wire."""


class SampleValues(Values):
    """Gamma and neutron samples and backgrounds (the counts are in the ``counts`` array)."""

    sample: Count | None = None
    """The device's sample number, when it numbers them (N42 files do)."""
    live_time_s: Annotated[list[Finite], Meta(max_length=1024)] | None = None
    """Live time (s) per gamma channel, when the device reports it."""


class SpeedValues(Values):
    speed_kmh: Finite
    """Vehicle speed (km/h)."""
    speed_mph: Finite | None = None
    """The same speed in mph, as the device sent it."""
    crossing_s: Finite | None = None
    """Time (s) the vehicle took between the speed sensors, when the device gives it."""


class OccupancyEndValues(Values):
    device_occupancy: Count | None = None
    """The portal's own occupancy counter (GX), or null."""
    neutron_background_cps: Finite | None = None
    """The neutron background (cps) the portal reports with the end of occupancy."""


class TamperValues(Values):
    active: bool
    """True when the tamper state begins, false when it clears."""


class SetupValues(Values):
    line: Name
    """The setup line type (SG1..SG3, SN1, SN2)."""
    fields: Strings = []
    """Its fields, as text."""


class LinkValues(Values):
    up: bool
    """True when the driver's link to its device came up, false when it went down."""
    url: Name = ""
    """The device's address."""
    reason: Annotated[str, Meta(max_length=1024)] = ""
    """Why the link went down."""


class StatusValues(Values):
    link_up: bool
    """True while the driver has its device link open."""
    last_line_age_s: Annotated[float, Meta(ge=0, le=1e12)] | None = None
    """s since the driver read its last line from the device; null before the first."""
    lines: Count = 0
    """Device lines read since the driver started."""
    errors: Count = 0
    """Device input rejected (parse errors) since the driver started."""
    published: Count = 0
    """Records published before this one (this record's own seq)."""


class ScanStartValues(Values):
    scan_id: Count
    """The scanner's scan number."""
    energies: Annotated[int, Meta(ge=1, le=16)]
    """Energies per image line (1 or 2)."""
    pixels: Annotated[int, Meta(ge=1, le=1 << 16)]
    """Pixels per detector column."""
    t_ns: Ns | None = None
    """Scanner clock at the start (ns UTC), when the scanner gives it."""
    origin: Name | None = None
    """Where the image came from when not a live scanner (``dicos``)."""
    file: Annotated[str, Meta(max_length=4096)] | None = None
    sop_class: Name | None = None
    sop_instance_uid: Name | None = None
    ooi_id: Name | None = None
    ooi_type: Name | None = None
    acquired: Name | None = None
    pixel_spacing_mm: Annotated[list[Finite], Meta(max_length=2)] | None = None
    """(across, along) pixel spacing (mm) when the image states it."""
    energies_kv: Annotated[list[Finite], Meta(max_length=16)] | None = None
    """Tube voltage (kV) of each energy, when known."""


class CalibrationValues(Values):
    scan_id: Count
    frame: Literal["dark", "air"]
    """``dark``: offset, beam off; ``air``: gain, beam on through air."""
    t_ns: Annotated[list[Ns], PerLine] = []
    """Acquisition time (ns UTC) of each calibration line."""
    estimated: bool = False
    """True when the levels are estimated from the image rather than measured."""


class LinesValues(Values):
    scan_id: Count
    first_line: Count
    """Number of the first line of the batch within the scan."""
    t_ns: Annotated[list[Ns], PerLine]
    """Acquisition time (ns UTC) of each line."""
    line_count: Count | None = None
    """Lines in the batch (as many as the ``counts`` array has)."""
    encoder_mm: Annotated[list[float | None], PerLine] | None = None
    """Vehicle travel since the scan began (mm) at each line; null where the encoder gave no number."""
    flags: Annotated[list[Count], PerLine] = []
    """Frame flags of each line."""


class ScanEndValues(Values):
    scan_id: Count
    lines: Count | None = None
    """Image lines received."""
    missing: Count = 0
    """Lines lost."""
    complete: bool = False
    """False when the scan was cut short."""
    reason: Name = "scan_end"
    """scan_end, link_down, restarted, scan_id or stopped."""


VALUES: dict[Kind, type[Values]] = {
    Kind.GAMMA_BACKGROUND: SampleValues,
    Kind.NEUTRON_BACKGROUND: SampleValues,
    Kind.GAMMA_SCAN: SampleValues,
    Kind.NEUTRON_SCAN: SampleValues,
    Kind.SPEED: SpeedValues,
    Kind.OCCUPANCY_END: OccupancyEndValues,
    Kind.TAMPER: TamperValues,
    Kind.SETUP: SetupValues,
    Kind.LINK: LinkValues,
    Kind.STATUS: StatusValues,
    Kind.XRAY_SCAN_START: ScanStartValues,
    Kind.XRAY_CALIBRATION: CalibrationValues,
    Kind.XRAY_LINES: LinesValues,
    Kind.XRAY_SCAN_END: ScanEndValues,
}
"""The Struct of ``values`` for each kind of record."""


class ArraySpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One array frame: which field it fills, its dtype and its shape."""

    name: Literal["counts", "spectra"]
    dtype: Literal[DTYPES]  # type: ignore[valid-type]
    shape: Annotated[list[Annotated[int, Meta(ge=0, le=MAX_ARRAY_BYTES)]], Meta(min_length=1, max_length=4)]


class Header(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="kind"):
    """Frame 1 of a record: who sent it, when, what it says (``values``, typed by ``kind``), and its arrays."""

    v: Literal[1]
    """Wire version."""
    lane: Name
    source: Name
    run_id: Annotated[str, Meta(max_length=MAX_RUN_ID)] = ""
    """Random per driver start: tells two runs of one source apart (a restart, or two drivers on one lane)."""
    seq: Count
    """Per-source sequence number, from 0, +1 per record published."""
    t_wall_ns: Ns
    """UTC wall clock (ns since the epoch) when the line arrived at the driver."""
    t_mono_ns: Ns
    """The driver's monotonic clock (ns) at the same instant."""
    dt_s: Annotated[float, Meta(ge=0, le=86400)] = 0.0
    """Duration (s) the counts cover."""
    flags: Strings = []
    """Device states carried by the line type: device_alarm, fault_low, fault_high; occupancy_start on the first
    sample of an occupancy when the source knows it saw its start (a file replay)."""
    arrays: Annotated[list[ArraySpec], Meta(max_length=len(_ARRAY_FIELDS))] = []


def _header_class(kind: Kind) -> type[Header]:
    """The header Struct of one kind, tagged ``kind`` on the wire, with that kind's ``values``."""
    cls = msgspec.defstruct(
        f"{kind.name.title().replace('_', '')}Header",
        [("values", VALUES[kind])],
        bases=(Header,),
        tag=kind.value,
        module=__name__,
    )
    cls.__doc__ = f"A ``{kind.value}`` record: its ``values`` are a {VALUES[kind].__name__}."
    return cls


HEADERS: dict[Kind, type[Header]] = {kind: _header_class(kind) for kind in Kind}
AnyHeader = Annotated[
    functools.reduce(operator.or_, HEADERS.values()),
    Meta(title="Record header", description="Frame 1 of a lanewatch bus record; one form per kind."),
]
"""Any record header, told apart by its ``kind``."""
_KIND_OF = {cls: kind for kind, cls in HEADERS.items()}
_DECODER = msgspec.json.Decoder(AnyHeader)
_ENCODER = msgspec.json.Encoder()


def _numpy_scalar(obj: object) -> object:
    """A numpy scalar as the Python number it holds (drivers compute values with numpy)."""
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not a record value")


@dataclass(slots=True)
class Record:
    """One observation from one device, stamped on arrival at the driver.

    ``seq`` is the driver's own per-source sequence number, starting at 0 and increasing
    by exactly 1 per record published, so a consumer can count what it missed; ``run_id``
    is random per driver start.
    ``t_wall_ns`` is UTC wall clock (ns since the epoch) and ``t_mono_ns`` the driver's
    monotonic clock (ns), both taken when the line arrived.
    ``values`` is the kind's :class:`Values` Struct (a dict given here, numpy scalars included, is checked and
    converted, raising :class:`msgspec.ValidationError` when it does not fit).
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
    values: Values | dict | None = None
    flags: tuple[str, ...] = ()
    run_id: str = ""
    """The driver's run: random per start of the driver, so a consumer tells a restart from a jump in ``seq``."""

    def __post_init__(self) -> None:
        cls = VALUES[self.kind]
        if isinstance(self.values, Values):
            if type(self.values) is not cls:
                raise TypeError(f"a {self.kind.value} record has {cls.__name__}, not {type(self.values).__name__}")
        else:
            try:
                plain = msgspec.to_builtins(self.values or {}, enc_hook=_numpy_scalar)
            except TypeError as exc:
                raise msgspec.ValidationError(f"values of a {self.kind.value} record: {exc}") from None
            self.values = msgspec.convert(plain, cls)

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
            little = arr.dtype.newbyteorder("<")
            arrays.append(ArraySpec(name, little.str, list(arr.shape)))
            frames.append(memoryview(arr.astype(little, copy=False)).cast("B"))
        header = HEADERS[self.kind](
            v=WIRE_VERSION,
            lane=self.lane,
            source=self.source,
            run_id=self.run_id,
            seq=self.seq,
            t_wall_ns=self.t_wall_ns,
            t_mono_ns=self.t_mono_ns,
            dt_s=self.dt_s,
            flags=list(self.flags),
            arrays=arrays,
            values=self.values,
        )
        return [self.topic, _ENCODER.encode(header), *frames]


class DecodeError(ValueError):
    """A bus message that is not a well-formed record; ``kind`` names what was wrong."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _header(frame: bytes) -> Header:
    if len(frame) > MAX_HEADER_BYTES:
        raise DecodeError("header", f"header of {len(frame)} bytes, more than {MAX_HEADER_BYTES}")
    try:
        return _DECODER.decode(frame)
    except msgspec.ValidationError as exc:
        text = str(exc)
        if text.endswith("`$.v`"):
            raise DecodeError("version", f"unsupported wire version: {text}") from None
        raise DecodeError("field", f"bad record field: {text}") from None
    except msgspec.DecodeError as exc:
        raise DecodeError("header", f"header is not JSON: {exc}") from None
    except RecursionError:
        raise DecodeError("header", "header nested too deeply") from None


def decode(frames: list[bytes]) -> Record:
    """Parse multipart frames into a :class:`Record`; raises :class:`DecodeError` and nothing else."""
    if len(frames) < 2:
        raise DecodeError("frames", f"expected at least 2 frames, got {len(frames)}")
    header = _header(frames[1])
    if len(header.arrays) != len(frames) - 2:
        raise DecodeError("frames", f"header names {len(header.arrays)} arrays, message has {len(frames) - 2}")
    arrays: dict[str, np.ndarray] = {}
    for spec, buf in zip(header.arrays, frames[2:], strict=True):
        dtype = np.dtype(spec.dtype)
        size = dtype.itemsize
        for n in spec.shape:
            size *= n
        if size != len(buf) or size > MAX_ARRAY_BYTES:
            raise DecodeError("array", f"array {spec.name} {spec.shape} {dtype} does not match {len(buf)} bytes")
        if spec.name in arrays:
            raise DecodeError("array", f"array {spec.name} sent twice")
        arrays[spec.name] = np.frombuffer(buf, dtype=dtype).reshape(spec.shape)
    return Record(
        kind=_KIND_OF[type(header)],
        lane=header.lane,
        source=header.source,
        seq=header.seq,
        t_wall_ns=header.t_wall_ns,
        t_mono_ns=header.t_mono_ns,
        dt_s=header.dt_s,
        counts=arrays.get("counts"),
        spectra=arrays.get("spectra"),
        values=header.values,  # type: ignore[attr-defined]
        flags=tuple(header.flags),
        run_id=header.run_id,
    )


def iso_utc(t_wall_ns: int) -> str:
    """ISO 8601 UTC with millisecond precision, e.g. ``2026-11-28T03:30:16.123Z``."""
    return datetime.fromtimestamp(t_wall_ns / 1e9, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
