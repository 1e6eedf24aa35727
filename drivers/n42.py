"""Replay of an ANSI N42.42 portal-monitor file as if its portal were live.

A spectroscopic portal monitor records each passage (occupancy) as an N42.42 XML file:
one sample every fraction of a second, each with one spectrum per gamma detector and,
on most portals, neutron counts. :func:`load_portal` reads such a file with Sandia's
SpecUtils (the reference reader of every N42 dialect) into a :class:`PortalFile`, and
:class:`N42ReplayDriver` streams it onto the ingest bus sample by sample, paced by the
samples' real times, exactly as a live driver would publish the portal.

Records published (see :class:`lanewatch.edge.bus.records.Kind`):

* background samples (source type Background, or foreground samples taken while the lane
  is unoccupied): ``GAMMA_BACKGROUND`` with ``counts`` (detectors, K) in cps, and
  ``NEUTRON_BACKGROUND`` (neutron detectors, 1) in cps when the sample has neutron counts;
* occupied samples: ``GAMMA_SCAN`` with ``counts`` (detectors, K) per ``dt_s`` (the sample's
  real time, s) and ``spectra`` (detectors, channels) uint32, then ``NEUTRON_SCAN``
  (neutron detectors, 1) per ``dt_s`` when the sample has neutron counts;
* ``SPEED`` (``speed_kmh``) after the first occupied sample when the file records a speed;
* ``OCCUPANCY_END`` (``device_occupancy``: the file's occupancy number, null when it gives none) right
  after the last sample of each occupied run.

Records carry the file's own times (``t_wall_ns``: a sample's start; its end for the neutron counts and the
end of occupancy), so decisions are dated as the portal measured; a file without sample times is stamped as
it is replayed. The first occupied sample of each run is flagged ``occupancy_start``.

K is the number of energy windows: the configured window edges (keV) select the channels
whose centre energy lies in each window, per detector through the file's own energy
calibration; a file without energy calibration (or no windows configured) gives K = 1,
the gross count of the whole spectrum.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import re
import threading
import time
import xml.parsers.expat
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import SpecUtils

from lanewatch.edge.bus.driver import Driver, RecordPublisher
from lanewatch.edge.bus.records import Kind
from lanewatch.edge.config import Config

log = logging.getLogger("lanewatch.driver.n42")

MPS_TO_KMH = 3.6
"""SpecUtils gives speeds in m/s; records carry km/h."""

_UINT32_MAX = np.iinfo(np.uint32).max
_OCCUPANCY_REMARK = re.compile(r"occupancy\s+number\s*[=:]\s*(\d+)", re.IGNORECASE)
_ISO_DURATION = re.compile(
    r"^\s*P(?:(?P<d>\d+(?:\.\d*)?)D)?(?:T(?:(?P<h>\d+(?:\.\d*)?)H)?(?:(?P<m>\d+(?:\.\d*)?)M)?(?:(?P<s>\d+(?:\.\d*)?)S)?)?\s*$"
)
_SKIPPED_SOURCES = (SpecUtils.SourceType.Calibration, SpecUtils.SourceType.IntrinsicActivity)
# Each reads both dialects; the second is tried only if the first gives up.
_N42_PARSERS = (SpecUtils.ParserType.N42_2006, SpecUtils.ParserType.N42_2012)


class N42Error(ValueError):
    """An N42 file that cannot be replayed; the message names the file and the reason."""


@dataclass(frozen=True, slots=True, eq=False)
class PortalSample:
    """One sample of a portal file: what every detector measured over the same interval."""

    number: int
    """Sample number in the file."""
    start: datetime | None
    """Start of the sample (UTC), None when the file does not record it."""
    real_time_s: float
    """Duration of the sample (s): the file's sample real time, else the longest detector real time."""
    live_time_s: np.ndarray
    """(detectors,) float64 gamma live time (s) of each detector."""
    spectra: np.ndarray
    """(detectors, channels) uint32 gamma counts per channel."""
    gross: np.ndarray
    """(detectors,) int64 gamma counts over the whole spectrum."""
    neutrons: np.ndarray | None
    """(neutron detectors,) int64 neutron counts, None when the sample has none."""
    occupied: bool
    """True when the file marks the lane occupied during this sample."""
    background: bool
    """True for a background measurement (N42 source type Background), False for foreground."""


@dataclass(frozen=True, slots=True, eq=False)
class PortalFile:
    """A portal-monitor N42 file read into plain arrays."""

    path: Path
    instrument: str
    """Manufacturer and model as the file names them (may be empty)."""
    detectors: tuple[str, ...]
    """Gamma detector names, in the order of the spectra rows."""
    neutron_detectors: tuple[str, ...]
    """Neutron detector names, in the order of ``PortalSample.neutrons`` (empty when none)."""
    channels: int
    """Channels per gamma spectrum."""
    samples: tuple[PortalSample, ...]
    """Samples sorted by sample number."""
    speed_kmh: float | None
    """Vehicle speed (km/h) when the file records one."""
    occupancy: int | None
    """The portal's occupancy number when the file gives one."""
    energy_edges_kev: np.ndarray | None
    """(detectors, channels + 1) float64 channel edge energies (keV), None without energy calibration."""


def _parse_iso_duration(text: str) -> float | None:
    """Seconds of an ISO 8601 duration such as ``PT0.250S``; None if it is not one."""
    match = _ISO_DURATION.match(text)
    if match is None:
        return None
    parts = {k: float(v) for k, v in match.groupdict().items() if v is not None}
    return parts.get("d", 0.0) * 86400 + parts.get("h", 0.0) * 3600 + parts.get("m", 0.0) * 60 + parts.get("s", 0.0)


def _utc(moment: datetime) -> datetime:
    """An aware UTC datetime; a naive one is taken as UTC already (as SpecUtils gives it)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _scan_xml(path: Path) -> tuple[str, dict[datetime, float | None]]:
    """Check that ``path`` is one complete XML document; return its root element and N42-2006 sample real times.

    SpecUtils reads whatever it can of a truncated file without complaint, so completeness is
    checked here, in one streaming pass of expat. The same pass collects what SpecUtils does
    not expose: each ``DetectorData``'s ``SampleRealTime`` (s), keyed by its ``StartTime``
    (UTC); a start time seen with two different real times maps to None.
    """
    parser = xml.parsers.expat.ParserCreate()
    parser.buffer_text = True
    stack: list[str] = []
    texts: dict[str, list[str]] = {}
    capturing: list[str] = []
    found: dict[datetime, float | None] = {}
    roots: list[str] = []

    def start(name: str, attrs: dict[str, str]) -> None:
        local = name.rpartition(":")[2]
        if not stack:
            roots.append(name)
        if local == "DetectorData":
            texts.clear()
        elif local in ("StartTime", "SampleRealTime") and stack and stack[-1] == "DetectorData":
            texts[local] = []
            capturing.append(local)
        stack.append(local)

    def end(name: str) -> None:
        local = stack.pop()
        if capturing and capturing[-1] == local:
            capturing.pop()
        if local != "DetectorData" or len(texts) != 2:
            return
        seconds = _parse_iso_duration("".join(texts["SampleRealTime"]))
        try:
            moment = _utc(datetime.fromisoformat("".join(texts["StartTime"]).strip()))
        except ValueError:
            return
        if seconds is not None and seconds > 0:
            found[moment] = seconds if found.get(moment, seconds) == seconds else None

    def chars(data: str) -> None:
        if capturing:
            texts[capturing[-1]].append(data)

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    try:
        with path.open("rb") as f:
            parser.ParseFile(f)
    except OSError as exc:
        raise N42Error(f"{path}: cannot read N42 file: {exc.strerror or exc}") from None
    except xml.parsers.expat.ExpatError as exc:
        what = xml.parsers.expat.ErrorString(exc.code)
        raise N42Error(
            f"{path}: not a complete N42 XML document ({what} at line {exc.lineno}, column {exc.offset}); "
            "the file is truncated, corrupt or not N42"
        ) from None
    return roots[0], found


def _integral(values: np.ndarray, what: str, path: Path, sample: int) -> np.ndarray:
    """``values`` as int64 after checking they are whole, non-negative counts that fit in uint32."""
    if values.size and (
        not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > _UINT32_MAX or np.any(values % 1)
    ):
        raise N42Error(f"{path}: sample {sample}: {what} are not whole non-negative counts")
    return values.astype(np.int64)


def _calibration_key(m: Any) -> tuple[Any, ...]:
    return (m.energyCalibrationModel(), tuple(m.calibrationCoeffs()))


def _not_a_portal(path: Path, measurements: list[Any], samples: int) -> N42Error:
    longest = max(m.realTime() for m in measurements)
    titles = sorted({m.title() for m in measurements if m.title()})
    described = f"{len(measurements)} spectra in {samples} samples, longest real time {longest:g} s"
    if len(measurements) == 1:
        described = f"1 spectrum of {longest:g} s real time"
    if titles:
        described += ", titled " + ", ".join(repr(t) for t in titles[:3])
    return N42Error(
        f"{path}: not a portal occupancy, cannot replay it: it holds {described}, and no sample is marked "
        "occupied; replay needs the occupied samples of a portal monitor passage"
    )


def load_portal(path: str | Path) -> PortalFile:
    """Read a portal-monitor N42.42 file (2006 or 2012 dialect) into a :class:`PortalFile`.

    Raises :class:`N42Error`, naming the file and the reason, for a file that cannot be read,
    is not complete XML, is not radiation data SpecUtils can read, or is not a portal
    occupancy (no sample marked occupied, e.g. a single long-dwell laboratory spectrum).
    Calibration and intrinsic-activity measurements and derived sums are left out.
    """
    path = Path(path)
    root, sample_real_times = _scan_xml(path)
    spec = SpecUtils.SpecFile()
    for parser in _N42_PARSERS:
        try:
            spec.loadFile(str(path), parser)
            break
        except RuntimeError:
            continue
    else:
        raise N42Error(f"{path}: SpecUtils reads no N42 radiation data from it (XML root element <{root}>)")
    try:
        return _portal(path, spec, sample_real_times)
    except (RuntimeError, TypeError) as exc:
        raise N42Error(f"{path}: SpecUtils cannot read the N42 content: {exc}") from None


def _portal(path: Path, spec: Any, sample_real_times: dict[datetime, float | None]) -> PortalFile:
    measurements = [
        m for m in spec.measurements() if m.derivedDataProperties() == 0 and m.sourceType() not in _SKIPPED_SOURCES
    ]
    if not measurements:
        raise N42Error(f"{path}: no measured spectra or counts in the file")
    by_sample: dict[int, list[Any]] = {}
    for m in measurements:
        by_sample.setdefault(m.sampleNumber(), []).append(m)
    if not any(m.occupied() == SpecUtils.OccupancyStatus.Occupied for m in measurements):
        raise _not_a_portal(path, measurements, len(by_sample))

    detectors = tuple(spec.gammaDetectorNames())
    neutron_detectors = tuple(spec.neutronDetectorNames())
    if not detectors:
        raise N42Error(f"{path}: no gamma spectra in the file")
    channel_counts = {m.numGammaChannels() for m in measurements if m.detectorName() in detectors} - {0}
    if len(channel_counts) != 1:
        raise N42Error(f"{path}: gamma spectra differ in channel count ({sorted(channel_counts)}); cannot stack them")
    channels = channel_counts.pop()

    calibrations: dict[str, tuple[Any, ...]] = {}
    edges: list[np.ndarray] = []
    samples = []
    for number in sorted(by_sample):
        group = by_sample[number]
        gamma: dict[str, Any] = {}
        neutron: dict[str, float] = {}
        for m in group:
            name = m.detectorName()
            if name in detectors and m.numGammaChannels() > 0:
                if name in gamma:
                    raise N42Error(f"{path}: sample {number}: detector {name!r} appears twice")
                gamma[name] = m
            if m.containedNeutron() and name in neutron_detectors:
                neutron[name] = m.neutronCountsSum()
        missing = [d for d in detectors if d not in gamma]
        if missing:
            raise N42Error(f"{path}: sample {number}: no spectrum from detector(s) {', '.join(missing)}")
        if neutron and len(neutron) != len(neutron_detectors):
            absent = [d for d in neutron_detectors if d not in neutron]
            raise N42Error(f"{path}: sample {number}: no neutron counts from detector(s) {', '.join(absent)}")
        rows = [gamma[d] for d in detectors]
        for d, m in zip(detectors, rows, strict=True):
            key = _calibration_key(m)
            if d not in calibrations:
                calibrations[d] = key
                edges.append(np.asarray(m.channelEnergies(), dtype=np.float64))
            elif calibrations[d] != key:
                raise N42Error(
                    f"{path}: sample {number}: the energy calibration of detector {d!r} changes within the file; "
                    "replay supports one calibration per detector"
                )
        counts = _integral(np.array([m.gammaCounts() for m in rows], dtype=np.float64), "gamma counts", path, number)
        start = next((m.startTime() for m in rows if m.startTime() is not None), None)
        start = _utc(start) if start is not None else None
        real_time = sample_real_times.get(start) if start is not None else None
        occupied = {m.occupied() for m in group} == {SpecUtils.OccupancyStatus.Occupied}
        real_time = real_time or max(m.realTime() for m in rows)
        if not real_time > 0:
            raise N42Error(f"{path}: sample {number}: no real time; cannot pace or scale its counts")
        samples.append(
            PortalSample(
                number=number,
                start=start,
                real_time_s=real_time,
                live_time_s=np.array([m.liveTime() for m in rows], dtype=np.float64),
                spectra=counts.astype(np.uint32),
                gross=counts.sum(axis=1),
                neutrons=_integral(
                    np.array([neutron[d] for d in neutron_detectors], dtype=np.float64), "neutron counts", path, number
                )
                if neutron
                else None,
                occupied=occupied,
                background=any(m.sourceType() == SpecUtils.SourceType.Background for m in group),
            )
        )

    energy_edges = None
    if all(e.shape == (channels + 1,) and np.all(np.diff(e) > 0) for e in edges):
        energy_edges = np.stack(edges)
    speed = next((m.speed() for m in measurements if m.speed() > 0), None)
    occupancy = next((int(match[1]) for r in spec.remarks() if (match := _OCCUPANCY_REMARK.search(r))), None)
    return PortalFile(
        path=path,
        instrument=f"{spec.manufacturer()} {spec.instrumentModel()}".strip(),
        detectors=detectors,
        neutron_detectors=neutron_detectors,
        channels=channels,
        samples=tuple(samples),
        speed_kmh=speed * MPS_TO_KMH if speed is not None else None,
        occupancy=occupancy,
        energy_edges_kev=energy_edges,
    )


def check_windows_kev(edges: Sequence[float]) -> tuple[float, ...]:
    """Energy window edges (keV) as a tuple: empty, or at least 2 finite increasing values; else ValueError."""
    edges = tuple(float(e) for e in edges)
    if edges and (
        len(edges) < 2 or not all(math.isfinite(e) for e in edges) or any(b <= a for a, b in itertools.pairwise(edges))
    ):
        raise ValueError(f"energy window edges must be at least 2 increasing values in keV, got {list(edges)}")
    return edges


def window_bounds(energy_edges_kev: np.ndarray, windows_kev: Sequence[float]) -> np.ndarray:
    """(detectors, K + 1) channel indices: window k of detector d holds channels ``[b[d, k], b[d, k + 1])``.

    A channel belongs to the window that holds its centre energy, ``[edge_k, edge_k+1)`` keV.
    """
    centres = (energy_edges_kev[:, :-1] + energy_edges_kev[:, 1:]) / 2
    return np.stack([np.searchsorted(c, windows_kev, side="left") for c in centres])


def window_counts(spectra: np.ndarray, bounds: np.ndarray | None) -> np.ndarray:
    """(detectors, K) int64 counts per window of (detectors, channels) spectra; K = 1 gross when ``bounds`` is None."""
    if bounds is None:
        return spectra.sum(axis=1, dtype=np.int64)[:, None]
    cumulative = np.zeros((spectra.shape[0], spectra.shape[1] + 1), dtype=np.int64)
    np.cumsum(spectra, axis=1, dtype=np.int64, out=cumulative[:, 1:])
    return np.diff(np.take_along_axis(cumulative, bounds, axis=1), axis=1)


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _windows_arg(text: str) -> tuple[float, ...]:
    try:
        return check_windows_kev(float(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


class N42ReplayDriver(Driver):
    """Streams a :class:`PortalFile` onto the bus as if its portal were live.

    Sample i is published once the real times of samples 0..i have elapsed, divided by
    ``speedup`` (0 publishes as fast as possible); records are stamped when published.
    Background samples go first, as a live lane measures background before the vehicle comes.
    """

    name: ClassVar[str] = "n42"

    def __init__(
        self,
        publisher: RecordPublisher,
        portal: PortalFile,
        *,
        speedup: float = 1.0,
        windows_kev: Sequence[float] = (),
        file_times: bool = True,
    ) -> None:
        super().__init__(publisher)
        self.file_times = file_times
        """Stamp records with the file's own times (else with the replay's clock, for a live service)."""
        if not speedup >= 0 or math.isinf(speedup):
            raise ValueError(f"speedup must be a finite number >= 0, got {speedup!r}")
        self.portal = portal
        self.speedup = speedup
        self.windows_kev = check_windows_kev(windows_kev)
        self.bounds = (
            window_bounds(portal.energy_edges_kev, self.windows_kev)
            if self.windows_kev and portal.energy_edges_kev is not None
            else None
        )
        self.sent = 0
        """Samples published so far."""
        self.done = False
        """True once the whole file has been published."""

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--file", type=Path, required=True, help="N42.42 portal file to replay")
        parser.add_argument(
            "--speedup",
            type=_non_negative_float,
            default=1.0,
            help="replay this many times faster than recorded; 0 for as fast as possible (default 1)",
        )
        parser.add_argument(
            "--windows-kev",
            type=_windows_arg,
            default=None,
            help="energy window edges in keV, e.g. 30,400,3000 (default: detection.energy_windows_kev)",
        )
        parser.add_argument(
            "--stamp",
            choices=["file", "now"],
            default="file",
            help="stamp records with the file's own times (default) or as they are replayed (for a live service, "
            "which refuses records older than its max_record_age_s)",
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace, config: Config, publisher: RecordPublisher) -> N42ReplayDriver:
        windows = config.detection.energy_windows_kev if args.windows_kev is None else args.windows_kev
        try:
            portal = load_portal(args.file)
        except N42Error as exc:
            publisher.metrics.parse_errors.labels(publisher.lane, "n42-file").inc()
            log.error("lane %s: %s", publisher.lane, exc)
            raise
        return cls(publisher, portal, speedup=args.speedup, windows_kev=windows, file_times=args.stamp == "file")

    def health(self) -> dict[str, Any]:
        return {
            **super().health(),
            "file": str(self.portal.path),
            "samples": len(self.portal.samples),
            "sent": self.sent,
            "done": self.done,
        }

    def run(self, stop: threading.Event) -> None:
        lane = self.publisher.lane
        metrics = self.publisher.metrics
        order = [s for s in self.portal.samples if s.background] + [s for s in self.portal.samples if not s.background]
        log.info(
            "lane %s: replaying %s (%d samples, %s) at speedup %g",
            lane,
            self.portal.path,
            len(order),
            self.portal.instrument or "unknown instrument",
            self.speedup,
        )
        metrics.connected.labels(lane).set(1)
        started = time.monotonic()
        elapsed_s = 0.0
        scans = [s.occupied and not s.background for s in order]
        speed_sent = False
        neutron_background_cps: float | None = None
        try:
            for i, (sample, scan) in enumerate(zip(order, scans, strict=True)):
                elapsed_s += sample.real_time_s
                wait_s = started + elapsed_s / self.speedup - time.monotonic() if self.speedup else 0.0
                if stop.wait(max(0.0, wait_s)):
                    return
                if scan:
                    self._scan(sample, first=i == 0 or not scans[i - 1])
                    if not speed_sent and self.portal.speed_kmh is not None:
                        values = {"speed_kmh": self.portal.speed_kmh}
                        self.publisher.emit(Kind.SPEED, t_wall_ns=self._stamp(sample), values=values)
                        speed_sent = True
                    if i + 1 == len(order) or not scans[i + 1]:
                        values: dict[str, Any] = {"device_occupancy": self.portal.occupancy}
                        if neutron_background_cps is not None:
                            values["neutron_background_cps"] = neutron_background_cps
                        self.publisher.emit(Kind.OCCUPANCY_END, t_wall_ns=self._stamp(sample, end=True), values=values)
                else:
                    neutron_background_cps = self._background(sample) or neutron_background_cps
                self.sent += 1
                metrics.lines.labels(lane, "occupied" if scan else "background").inc()
                metrics.last_line.labels(lane).set(time.time())
            self.done = True
            log.info("lane %s: replay of %s done (%d samples)", lane, self.portal.path, self.sent)
        finally:
            metrics.connected.labels(lane).set(0)

    def _stamp(self, sample: PortalSample, end: bool = False) -> int | None:
        """The file's own time (ns since the epoch) of ``sample``'s start, or of its ``end``; None (stamped as it
        is replayed) when the file does not record it or ``file_times`` is off."""
        if sample.start is None or not self.file_times:
            return None
        return round(sample.start.timestamp() * 1e9) + (round(sample.real_time_s * 1e9) if end else 0)

    def _scan(self, sample: PortalSample, first: bool) -> None:
        """Publish an occupied sample; the ``first`` of an occupancy is flagged ``occupancy_start`` (the file holds
        the occupancy from its start)."""
        self.publisher.emit(
            Kind.GAMMA_SCAN,
            t_wall_ns=self._stamp(sample),
            dt_s=sample.real_time_s,
            counts=window_counts(sample.spectra, self.bounds),
            spectra=sample.spectra,
            values={"sample": sample.number, "live_time_s": sample.live_time_s.tolist()},
            flags=("occupancy_start",) if first else (),
        )
        if sample.neutrons is not None:
            self.publisher.emit(
                Kind.NEUTRON_SCAN,
                t_wall_ns=self._stamp(sample, end=True),
                dt_s=sample.real_time_s,
                counts=sample.neutrons[:, None],
                values={"sample": sample.number},
            )

    def _background(self, sample: PortalSample) -> float | None:
        """Publish a background sample as rates (cps); return its total neutron rate (cps) if it has neutrons."""
        self.publisher.emit(
            Kind.GAMMA_BACKGROUND,
            t_wall_ns=self._stamp(sample),
            dt_s=sample.real_time_s,
            counts=window_counts(sample.spectra, self.bounds) / sample.real_time_s,
            values={"sample": sample.number},
        )
        if sample.neutrons is None:
            return None
        cps = sample.neutrons[:, None] / sample.real_time_s
        self.publisher.emit(
            Kind.NEUTRON_BACKGROUND,
            t_wall_ns=self._stamp(sample),
            dt_s=sample.real_time_s,
            counts=cps,
            values={"sample": sample.number},
        )
        return float(cps.sum())
