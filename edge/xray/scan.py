"""X-ray scan assembly at one lane: ``XRAY_*`` records into scans, processed batch by batch as they arrive.

A scan opens with ``XRAY_SCAN_START`` (``scan_id``, ``energies`` 1 or 2, ``pixels``; a DICOS import
adds the file's identifiers and ``pixel_spacing_mm``), one open scan per source (driver). Then:

* ``XRAY_CALIBRATION`` lines before the first image line set the detector levels: the mean of the
  ``dark`` lines (offset; 0 without any) and of the ``air`` lines (gain). Without air lines the air
  level of each pixel is the highest reading of the first image batch (a scan starts in air).
  ``calibration`` says which: ``measured`` (dark and air lines from the scanner), ``estimated`` (the
  source marked its levels ``estimated``, as a DICOS import does) or ``partial``. Calibration lines
  after the first image line (a recalibration) are counted in ``recalibrations`` and not applied: a
  scan is processed with one set of levels.
* ``XRAY_LINES`` batches go through :class:`lanewatch.kernels.imaging.ScanProcessor` at once (calibration,
  attenuation, classes, profile, dense regions, preview) and are reduced to analysis cells
  (:class:`lanewatch.edge.xray.image.ImageGrid`), so little is left to do when the scan ends. The line spacing
  comes from the first batch's encoder readings, else the source's pixel spacing, else the time
  between lines at ``default_speed_kmh``; the pixel pitch from the source's pixel spacing, else the
  lane's ``xray_detector_mm`` over the pixels. Lines skipped before a batch are counted in
  ``missing``; a batch at or before lines already processed is dropped.
* ``XRAY_SCAN_END`` closes it: ``complete`` when the driver says so and no line was lost on the way.

A scan also ends, incomplete, when its source starts another one (``restarted``), when a decision can
wait no longer for it (``cut``), when its driver restarts or loses the scanner (``driver-restart``,
``link-lost``), or when it stays open ``scan_timeout_s`` (``timeout``). Records of a
scan that is not open (no start seen, or already cut) are counted and dropped. Every input problem
is counted in ``lanewatch_lane_anomalies_total`` and logged with its context; kinds:
``xray-bad-record`` (a record whose arrays or values do not fit its scan), ``xray-no-scan``,
``xray-order`` (lines at or before lines already processed), ``xray-restart`` and
``xray-incomplete`` (a scan that ended incomplete, for any reason).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

from lanewatch.edge.bus.records import Kind, Record, iso_utc
from lanewatch.edge.config import DetectionConfig, FusionConfig, LaneConfig
from lanewatch.edge.ops.metrics import ServiceMetrics
from lanewatch.edge.xray import image, imaging

log = logging.getLogger("lanewatch.scan")

MAX_LOGGED = 5
"""Anomalies of one kind logged per scan before the rest are only counted."""


@dataclass
class Scan:
    """A finished (or cut short) X-ray scan, imaged and ready to fuse."""

    lane: str
    source: str
    scan_id: int
    meta: dict[str, Any]
    """The values of its ``XRAY_SCAN_START``, less the geometry."""
    start_wall_ns: int
    """Driver's stamp of the scan start record (ns since the epoch)."""
    end_wall_ns: int
    """Driver's stamp of the last record of the scan."""
    end_mono_ns: int
    """Service's monotonic clock when the scan ended."""
    energies: int
    pixels: int
    pitch_mm: float
    complete: bool
    end_reason: str
    lines_reported: int | None
    """Image lines the driver says it received (None when the scan did not end with an end record)."""
    missing: int
    """Image lines known lost (by the driver, or between batches here)."""
    calibration: str
    recalibrations: int
    encoder_mm: np.ndarray
    """float64 (lines,): encoder reading of each processed line (NaN where the source gave none)."""
    t_ns: np.ndarray
    """int64 (lines,): time stamp of each processed line (scanner clock, ns)."""
    result: imaging.ScanResult | None
    """The imaging pipeline's result; None for a scan without image lines."""
    image: image.ImageFindings | None
    finish_s: float = 0.0
    """Processing time (s) at the scan's end."""

    @property
    def lines(self) -> int:
        return int(self.encoder_mm.shape[0])

    def span_ns(self) -> tuple[int, int]:
        return self.start_wall_ns, self.end_wall_ns

    def summary(self) -> dict[str, Any]:
        """The scan's part of a decision's ``xray`` section."""
        out = {
            "scan_id": self.scan_id,
            "source": self.source,
            "status": "complete" if self.complete else "incomplete",
            "end_reason": self.end_reason,
            "start": iso_utc(self.start_wall_ns),
            "end": iso_utc(self.end_wall_ns),
            "start_ns": self.start_wall_ns,
            "end_ns": self.end_wall_ns,
            "lines": self.lines,
            "lines_reported": self.lines_reported,
            "missing": self.missing,
            "energies": self.energies,
            "pixels": self.pixels,
            "pixel_pitch_mm": round(self.pitch_mm, 4),
            "calibration": self.calibration,
            "recalibrations": self.recalibrations,
        }
        if self.meta:
            out["meta"] = self.meta
        return out


@dataclass
class _Open:
    """A scan being assembled."""

    source: str
    scan_id: int
    energies: int
    pixels: int
    meta: dict[str, Any]
    start_wall_ns: int
    started_mono_ns: int
    last_wall_ns: int
    calib_sum: dict[str, np.ndarray] = field(default_factory=dict)
    """Per calibration frame ("dark", "air"): sum of its lines (energies, pixels)."""
    calib_n: dict[str, int] = field(default_factory=dict)
    estimated: bool = False
    recalibrations: int = 0
    processor: imaging.ScanProcessor | None = None
    grid: image.ImageGrid | None = None
    calibration: str = "measured"
    pitch_mm: float = 0.0
    spacing_mm: float = 0.0
    next_line: int = 0
    missing: int = 0
    encoder: list[np.ndarray] = field(default_factory=list)
    times: list[np.ndarray] = field(default_factory=list)
    logged: dict[str, int] = field(default_factory=dict)


class ScanAssembler:
    """The scans of one lane, from its ``XRAY_*`` records (see the module docstring)."""

    def __init__(
        self, lane: LaneConfig, detection: DetectionConfig, cfg: FusionConfig, metrics: ServiceMetrics
    ) -> None:
        self.lane = lane
        self.detection = detection
        self.cfg = cfg
        self.metrics = metrics
        self.open: dict[str, _Open] = {}
        """Open scans by source."""
        self._closed: dict[str, int] = {}
        """Per source, the id of its last closed scan, whose stray records are dropped quietly."""

    # ---- records -----------------------------------------------------------------------------
    def on_record(self, rec: Record, now_mono_ns: int) -> list[Scan]:
        """Apply one ``XRAY_*`` record; returns the scans it ended."""
        if rec.kind is Kind.XRAY_SCAN_START:
            return self._start(rec, now_mono_ns)
        scan = self.open.get(rec.source)
        scan_id = rec.values.scan_id
        if scan is None or scan_id != scan.scan_id:
            if scan_id != self._closed.get(rec.source):
                self._anomaly(
                    None, "xray-no-scan", f"{rec.kind.value} of scan {scan_id!r} from {rec.source}, no such scan open"
                )
            return []
        scan.last_wall_ns = rec.t_wall_ns
        if rec.kind is Kind.XRAY_CALIBRATION:
            self._calibration(scan, rec)
        elif rec.kind is Kind.XRAY_LINES:
            self._lines(scan, rec)
        elif rec.kind is Kind.XRAY_SCAN_END:
            end = rec.values
            return [
                self._close(
                    scan,
                    end.reason or "scan_end",
                    now_mono_ns,
                    complete=end.complete,
                    lines_reported=end.lines,
                    lost=end.missing,
                )
            ]
        return []

    def on_tick(self, now_mono_ns: int) -> list[Scan]:
        """Close the scans open longer than ``scan_timeout_s``."""
        limit = self.cfg.scan_timeout_s * 1e9
        return [
            self._close(scan, "timeout", now_mono_ns)
            for scan in list(self.open.values())
            if now_mono_ns - scan.started_mono_ns > limit
        ]

    def cut(self, source: str, now_mono_ns: int, reason: str = "cut") -> Scan | None:
        """End the open scan of ``source`` now, incomplete: ``cut`` (a decision waited for it long enough),
        ``driver-restart`` or ``link-lost`` (its driver restarted or lost the scanner: the rest will not come)."""
        scan = self.open.get(source)
        return None if scan is None else self._close(scan, reason, now_mono_ns)

    def open_spans(self) -> list[tuple[str, int, int]]:
        """(source, start ns, last record ns) of each open scan."""
        return [(s.source, s.start_wall_ns, s.last_wall_ns) for s in self.open.values()]

    # ---- internals ---------------------------------------------------------------------------
    def _start(self, rec: Record, now_mono_ns: int) -> list[Scan]:
        ended = []
        previous = self.open.get(rec.source)
        if previous is not None:
            self._anomaly(
                previous,
                "xray-restart",
                f"scan {rec.values.scan_id!r} started before scan {previous.scan_id} ended",
            )
            ended.append(self._close(previous, "restarted", now_mono_ns))
        start = rec.values
        scan_id, energies, pixels = start.scan_id, start.energies, start.pixels
        values = {
            key: value
            for key, value in msgspec.structs.asdict(start).items()
            if value is not None and key not in ("scan_id", "energies", "pixels", "t_ns")
        }
        if energies not in (1, 2):
            self._anomaly(
                None,
                "xray-bad-record",
                f"scan start from {rec.source} with scan_id {scan_id!r}, "
                f"energies {energies!r}, pixels {pixels!r}: expected an int, 1 or 2, a positive int",
            )
            return ended
        self.open[rec.source] = _Open(
            rec.source, scan_id, energies, pixels, values, rec.t_wall_ns, now_mono_ns, rec.t_wall_ns
        )
        return ended

    def _calibration(self, scan: _Open, rec: Record) -> None:
        frame = rec.values.frame
        counts = rec.counts
        if (
            frame not in ("dark", "air")
            or counts is None
            or counts.ndim != 3
            or counts.shape[1:] != (scan.energies, scan.pixels)
        ):
            self._anomaly(
                scan,
                "xray-bad-record",
                f"calibration {frame!r} of shape "
                f"{None if counts is None else counts.shape}, expected (n, {scan.energies}, {scan.pixels})",
            )
            return
        if scan.processor is not None:
            scan.recalibrations += 1
            return
        scan.calib_sum[frame] = scan.calib_sum.get(frame, 0.0) + counts.astype(np.float64).sum(axis=0)
        scan.calib_n[frame] = scan.calib_n.get(frame, 0) + len(counts)
        scan.estimated |= rec.values.estimated

    def _levels(self, scan: _Open, first: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
        """(dark, air) detector levels (energies, pixels) and how they were obtained."""

        def mean(frame: str) -> np.ndarray | None:
            n = scan.calib_n.get(frame, 0)
            return scan.calib_sum[frame] / n if n else None

        dark, air = mean("dark"), mean("air")
        how = "estimated" if scan.estimated else "measured"
        if dark is None or air is None:
            how = "partial"
        if dark is None:
            dark = np.zeros((scan.energies, scan.pixels))
        if air is None:
            air = first.max(axis=0).astype(np.float64)
        return dark, air, how

    def _geometry(self, scan: _Open, encoder: np.ndarray, times: np.ndarray) -> tuple[float, float]:
        """(pixel pitch, line spacing) in mm for the scan, from its first batch and the source's values."""
        spacing = scan.meta.get("pixel_spacing_mm")
        given = (
            [float(v) for v in spacing]
            if isinstance(spacing, list)
            and len(spacing) == 2
            and all(isinstance(v, int | float) and v > 0 for v in spacing)
            else None
        )
        pitch = given[0] if given else self.lane.xray_detector_mm / scan.pixels
        steps = np.diff(encoder)
        if steps.size and np.all(np.isfinite(steps)) and np.median(steps) > 0:
            return pitch, float(np.median(steps))
        if given:
            return pitch, given[1]
        dt = np.diff(times)
        if dt.size and np.median(dt) > 0:
            return pitch, float(np.median(dt)) / 1e9 * self.detection.default_speed_kmh / 3.6 * 1000.0
        return pitch, pitch

    def _lines(self, scan: _Open, rec: Record) -> None:
        values = rec.values
        counts = rec.counts
        first = values.first_line
        n = 0 if counts is None else len(counts)
        encoder = values.encoder_mm
        times = values.t_ns
        if (
            counts is None
            or counts.ndim != 3
            or counts.shape[1:] != (scan.energies, scan.pixels)
            or (encoder is not None and len(encoder) != n)
            or len(times) != n
        ):
            self._anomaly(
                scan,
                "xray-bad-record",
                f"lines of shape {None if counts is None else counts.shape} "
                f"(first_line {first!r}) in a {scan.energies} x {scan.pixels} scan, or per-line values "
                "that do not match them",
            )
            return
        if not n:
            return
        if first < scan.next_line:
            self._anomaly(scan, "xray-order", f"lines {first}..{first + n - 1} after line {scan.next_line - 1}")
            return
        if first > scan.next_line:
            scan.missing += first - scan.next_line
        scan.next_line = first + n
        enc = (
            np.array([np.nan if v is None else float(v) for v in encoder], np.float64)
            if encoder
            else np.full(n, np.nan)
        )
        t = np.array(times, np.int64)
        if scan.processor is None:
            dark, air, scan.calibration = self._levels(scan, counts)
            scan.pitch_mm, scan.spacing_mm = self._geometry(scan, enc, t)
            block = image.grid_blocks(scan.spacing_mm, scan.pitch_mm)
            scan.processor = imaging.ScanProcessor(
                dark,
                air,
                pixel_pitch_mm=scan.pitch_mm,
                column_spacing_mm=scan.spacing_mm,
                params=imaging.ImagingParams(preview_block=block),
            )
            scan.grid = image.ImageGrid(scan.energies, scan.pixels, *block, scan.processor.params.a_dark)
        assert scan.grid is not None
        batch = scan.processor.process(counts)
        scan.grid.add(batch.attenuation, batch.classes)
        scan.encoder.append(enc)
        scan.times.append(t)

    def _close(
        self,
        scan: _Open,
        reason: str,
        now_mono_ns: int,
        *,
        complete: bool = False,
        lines_reported: int | None = None,
        lost: int = 0,
    ) -> Scan:
        del self.open[scan.source]
        self._closed[scan.source] = scan.scan_id
        t0 = time.perf_counter()
        result = findings = None
        if scan.processor is not None and scan.grid is not None:
            result = scan.processor.finish()
            findings = image.analyze_image(
                scan.grid.finish(), result, scan.pitch_mm, scan.spacing_mm, scan.processor.params
            )
        elapsed = time.perf_counter() - t0
        self.metrics.kernel_time.labels("xray-finish").observe(elapsed)
        missing = max(lost, scan.missing)
        lines = sum(len(e) for e in scan.encoder)
        done = Scan(
            lane=self.lane.id,
            source=scan.source,
            scan_id=scan.scan_id,
            meta=scan.meta,
            start_wall_ns=scan.start_wall_ns,
            end_wall_ns=scan.last_wall_ns,
            end_mono_ns=now_mono_ns,
            energies=scan.energies,
            pixels=scan.pixels,
            pitch_mm=scan.pitch_mm or self.lane.xray_detector_mm / scan.pixels,
            complete=complete and scan.missing == 0 and (lines_reported is None or lines_reported == lines),
            end_reason=reason,
            lines_reported=lines_reported,
            missing=missing,
            calibration=scan.calibration if scan.processor is not None else "none",
            recalibrations=scan.recalibrations,
            encoder_mm=np.concatenate(scan.encoder) if scan.encoder else np.zeros(0),
            t_ns=np.concatenate(scan.times) if scan.times else np.zeros(0, np.int64),
            result=result,
            image=findings,
            finish_s=elapsed,
        )
        if not done.complete:
            self.metrics.lane_anomalies.labels(self.lane.id, "xray-incomplete").inc()
            log.warning(
                "lane %s: X-ray scan %s from %s ended incomplete (%s): %d lines, %d missing",
                self.lane.id,
                scan.scan_id,
                scan.source,
                reason,
                lines,
                missing,
            )
        return done

    def _anomaly(self, scan: _Open | None, kind: str, message: str) -> None:
        self.metrics.lane_anomalies.labels(self.lane.id, kind).inc()
        if scan is not None:
            scan.logged[kind] = scan.logged.get(kind, 0) + 1
            if scan.logged[kind] > MAX_LOGGED:
                return
            message = f"scan {scan.scan_id} from {scan.source}: {message}"
        log.warning("lane %s: X-ray %s: %s", self.lane.id, kind, message)
