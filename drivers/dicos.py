"""DICOS import: security X-ray images (NEMA IIC 1, DICOM for security) as lane X-ray scans.

:func:`read_dicos` reads one DICOS file with pydicom and returns a :class:`DicosImage`, or
raises :class:`DicosError` saying why the file cannot be used:

================================================ ===================================================
SOP class                                         result
================================================ ===================================================
DX For Processing (1.2.840.10008.5.1.4.1.1.501.2.2) decoded (uncompressed or any codec pydicom has)
DX For Presentation (…501.2.1)                    decoded; JPEG Lossless needs python-gdcm, a runtime
                                                  dependency (the error names the codec if missing)
Threat Detection Report, TDR (…501.3)             refused: a report, not an image (PTOs counted)
other DICOS (CT …501.1, …501.4 and later)         refused: not a line-scan X-ray image
other DICOM, or not DICOM at all                  refused
================================================ ===================================================

Image layout: a DICOS DX image is ``Rows x Columns``; a line-scan scanner builds it one
column per pulse, with row 0 at the top of the detector. So column ``c`` is scan line ``c``
and row ``r`` is detector pixel ``r``: :meth:`DicosImage.lines` gives the ``(lines, 1,
pixels)`` uint16 array of an X-ray scan (one energy; a multi-frame image is refused, as
DICOS does not say which frame is which energy). Pixel values rise with detected intensity
(Pixel Intensity Relationship Sign +1, MONOCHROME2); images stored the other way round are
inverted on reading. Pixel Spacing (0028,0030), when present, gives the detector pitch (mm,
between rows) and the line spacing (mm, between columns).

:class:`DicosDropWatcher` imports every complete file dropped into a directory as one complete
scan of its lane, on the ingest bus, with the records of the X-ray line-scan driver:

* ``XRAY_SCAN_START``: ``scan_id`` (63 bits of a hash of the SOP Instance UID, so the same
  image always gets the same id), ``t_ns`` (import time), ``energies`` 1, ``pixels`` (rows), and
  the file's identifiers (``sop_instance_uid``, ``sop_class``, ``ooi_id``, ``acquired``, ``file``).
* ``XRAY_CALIBRATION`` twice, ``frame`` ``"dark"`` then ``"air"``, one line each, with
  ``estimated`` true: a DICOS image carries no calibration lines, so dark is 0 and air is the
  image's highest value (a flat-fielded image reaches its air level where the beam passes by the
  vehicle); ``--air-adu`` sets the air level instead.
* ``XRAY_LINES`` in batches of ``--batch-lines``: ``counts`` ``(lines, 1, pixels)`` uint16,
  ``scan_id``, ``first_line``, ``line_count``, per line ``t_ns`` (import time) and ``flags``
  (0), and ``encoder_mm`` (line x line spacing) when the file gives a pixel spacing.
* ``XRAY_SCAN_END``: ``scan_id``, ``lines``, ``missing`` 0, ``complete`` true, ``reason`` ``scan_end``.

A file is complete when its size and modification time did not change between two polls;
names starting with ``.`` or ending in ``.part`` or ``.tmp`` are never taken, so a writer that
renames a finished temporary file is imported on the next poll. An imported file is moved to
``DIR/done/``; a refused one to ``DIR/rejected/`` beside a ``<name>.why`` text saying why, so a
restart imports neither again (a crash between publishing and moving imports the file again
at the next start: at least once).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder

from lanewatch.edge.bus.driver import Driver, RecordPublisher
from lanewatch.edge.bus.records import Kind
from lanewatch.edge.config import Config, ConfigError

log = logging.getLogger("lanewatch.driver.dicos")

DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.501.2.1"
DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.501.2.2"
TDR = "1.2.840.10008.5.1.4.1.1.501.3"
DICOS_PREFIX = "1.2.840.10008.5.1.4.1.1.501."
IMAGE_CLASSES = (DX_PROCESSING, DX_PRESENTATION)
SKIP_SUFFIXES = (".part", ".tmp", ".why")
DONE_DIR = "done"
REJECTED_DIR = "rejected"


class DicosError(ValueError):
    """A file that cannot be imported; ``kind`` names why (a metrics label), the message says it in full.

    Kinds: ``io`` (cannot read), ``not_dicom``, ``corrupt`` (DICOM that does not parse), ``not_dicos``
    (DICOM of another domain), ``tdr`` (a threat detection report), ``not_image`` (another DICOS
    object), ``codec`` (no decoder for the transfer syntax), ``pixels`` (pixel data unusable).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class DicosImage:
    """One DICOS X-ray image, decoded."""

    path: str
    pixels: np.ndarray
    """uint16 ``(rows, columns)``: row = detector pixel (top first), column = scan line; rising with intensity."""
    sop_class_uid: str
    sop_class_name: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    ooi_id: str
    """Object of inspection id (the DICOM Patient ID element): a container, vehicle or bag id."""
    ooi_type: str
    """Object of inspection type (CARGO, BAGGAGE, ...) or ""."""
    acquired: str
    """Content date and time as written in the file (``YYYYMMDDHHMMSS.ffffff``, scanner local time) or ""."""
    pixel_spacing_mm: tuple[float, float] | None
    """(between rows = detector pitch, between columns = line spacing) in mm, when the file gives it."""
    energies_kv: tuple[float, ...]
    """Peak voltages (kV) from the KVP element, as written (may be a placeholder); () when absent."""
    bits_stored: int
    transfer_syntax: str

    @property
    def rows(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def cols(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def scan_id(self) -> int:
        """A stable 63-bit scan id derived from the SOP Instance UID."""
        digest = hashlib.blake2b(self.sop_instance_uid.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") >> 1

    def lines(self) -> np.ndarray:
        """The image as X-ray scan lines: uint16 ``(columns, 1, rows)``, C-contiguous."""
        return np.ascontiguousarray(self.pixels.T[:, None, :])


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def _numbers(ds: pydicom.Dataset, keyword: str) -> tuple[float, ...]:
    """A numeric element's values; () when absent, empty or not numbers."""
    value = ds.get(keyword)
    if value is None or value == "":
        return ()
    values = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    try:
        return tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return ()


def _threat_report_error(ds: pydicom.Dataset, where: str) -> DicosError:
    ptos = len(ds.get("ThreatSequence", None) or [])
    decision = _text(ds, "AlarmDecision") or "not given"
    return DicosError(
        "tdr",
        f"{where}: a DICOS threat detection report (TDR), not an image: {ptos} potential threat "
        f"object{'s' if ptos != 1 else ''} (PTO), alarm decision {decision}; reports are not imported as scans",
    )


def _decode(ds: pydicom.Dataset, where: str) -> np.ndarray:
    """The pixel data as uint16 ``(rows, columns)``, rising with intensity."""
    if "PixelData" not in ds:
        raise DicosError("pixels", f"{where}: the image has no pixel data")
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is None:
        raise DicosError("pixels", f"{where}: no transfer syntax in the file meta information")
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise DicosError("codec", f"{where}: no decoder exists for transfer syntax {syntax.name} ({syntax})") from None
    if not decoder.is_available:
        raise DicosError(
            "codec",
            f"{where}: pixel data is {syntax.name} ({syntax}) and no decoder for it is installed; "
            "install python-gdcm (pip install python-gdcm). pydicom's plugins: "
            + "; ".join(decoder.missing_dependencies),
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise DicosError("pixels", f"{where}: {frames} frames; only single-frame (one energy) images are imported")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise DicosError("pixels", f"{where}: {ds.SamplesPerPixel} samples per pixel; X-ray images have 1")
    if int(ds.get("PixelRepresentation", 0)) != 0 or int(ds.get("BitsAllocated", 0)) not in (8, 16):
        raise DicosError(
            "pixels",
            f"{where}: {ds.get('BitsAllocated')}-bit {'signed' if ds.get('PixelRepresentation') else 'unsigned'} "
            "pixels; only unsigned 8- or 16-bit images are imported",
        )
    try:
        array = ds.pixel_array
    except Exception as exc:  # pydicom raises ValueError, RuntimeError, AttributeError... for broken data
        raise DicosError("pixels", f"{where}: pixel data cannot be decoded: {exc}") from None
    if array.ndim != 2 or array.size == 0:
        raise DicosError("pixels", f"{where}: decoded pixel data has shape {array.shape}, expected (rows, columns)")
    pixels = array.astype(np.uint16, copy=False)
    bits = int(ds.get("BitsStored", 16))
    inverted = ds.get("PixelIntensityRelationshipSign") == -1 or (
        "PixelIntensityRelationshipSign" not in ds and _text(ds, "PhotometricInterpretation") == "MONOCHROME1"
    )
    if inverted:
        pixels = (np.uint16((1 << bits) - 1) - np.minimum(pixels, (1 << bits) - 1)).astype(np.uint16)
    return pixels


def _damaged(where: str, exc: Exception) -> DicosError:
    return DicosError("corrupt", f"{where}: damaged DICOM file: {type(exc).__name__}: {exc}")


def read_dicos(path: str | Path) -> DicosImage:
    """Read and decode one DICOS X-ray image; :class:`DicosError` says why a file is not one."""
    where = str(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError as exc:
            raise DicosError("not_dicom", f"{where}: not a DICOM file ({exc})") from None
        except OSError as exc:
            if exc.errno is None:  # pydicom reports a file that ends too soon as an OSError
                raise _damaged(where, exc) from None
            raise DicosError("io", f"{where}: cannot read: {exc.strerror}") from None
        except Exception as exc:  # a damaged file makes pydicom fail in many ways
            raise _damaged(where, exc) from None
        try:
            image = _image(ds, where)
        except DicosError:
            raise
        except Exception as exc:  # elements are parsed lazily: damage can show only now
            raise _damaged(where, exc) from None
    for w in caught:
        log.debug("%s: %s", where, w.message)
    return image


def _image(ds: pydicom.Dataset, where: str) -> DicosImage:
    """Check the SOP class of a parsed file and decode its image."""
    sop_class = ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID")
    if sop_class is None:
        raise DicosError("corrupt", f"{where}: DICOM file without a SOP class")
    name = sop_class.name if sop_class.name != str(sop_class) else "unknown"
    if sop_class == TDR:
        raise _threat_report_error(ds, where)
    if not str(sop_class).startswith(DICOS_PREFIX):
        raise DicosError("not_dicos", f"{where}: a DICOM {name} ({sop_class}), not a DICOS security image")
    if sop_class not in IMAGE_CLASSES:
        raise DicosError("not_image", f"{where}: a {name} ({sop_class}), not a line-scan X-ray (DX) image")
    pixels = _decode(ds, where)
    spacing = _numbers(ds, "PixelSpacing") or _numbers(ds, "ImagerPixelSpacing")
    return DicosImage(
        path=where,
        pixels=pixels,
        sop_class_uid=str(sop_class),
        sop_class_name=name,
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        study_uid=_text(ds, "StudyInstanceUID"),
        series_uid=_text(ds, "SeriesInstanceUID"),
        ooi_id=_text(ds, "PatientID"),
        ooi_type=_text(ds, "OOIType"),
        acquired=_text(ds, "ContentDate") + _text(ds, "ContentTime"),
        pixel_spacing_mm=(spacing[0], spacing[1]) if len(spacing) == 2 and min(spacing) > 0 else None,
        energies_kv=_numbers(ds, "KVP"),
        bits_stored=int(ds.get("BitsStored", 16)),
        transfer_syntax=str(ds.file_meta.get("TransferSyntaxUID", "")),
    )


def publish_scan(
    publisher: RecordPublisher, image: DicosImage, *, batch_lines: int = 64, air_adu: float | None = None
) -> int:
    """Publish ``image`` as one complete X-ray scan (records as in the module docstring); returns the records sent."""
    if batch_lines < 1:
        raise ValueError(f"batch_lines must be at least 1, got {batch_lines}")
    lines = image.lines()
    n, energies, pixels = lines.shape
    scan_id = image.scan_id
    now_ns = time.time_ns()
    spacing = image.pixel_spacing_mm[1] if image.pixel_spacing_mm else None
    emit = publisher.emit
    emit(
        Kind.XRAY_SCAN_START,
        values={
            "scan_id": scan_id,
            "t_ns": now_ns,
            "energies": energies,
            "pixels": pixels,
            "origin": "dicos",
            "file": Path(image.path).name,
            "sop_class": image.sop_class_name,
            "sop_instance_uid": image.sop_instance_uid,
            "ooi_id": image.ooi_id,
            "ooi_type": image.ooi_type,
            "acquired": image.acquired,
            "pixel_spacing_mm": list(image.pixel_spacing_mm) if image.pixel_spacing_mm else None,
            "energies_kv": list(image.energies_kv),
        },
    )
    air = float(lines.max()) if air_adu is None else float(air_adu)
    for frame, level in (("dark", 0.0), ("air", air)):
        emit(
            Kind.XRAY_CALIBRATION,
            counts=np.full((1, energies, pixels), min(round(level), 65535), np.uint16),
            values={"scan_id": scan_id, "frame": frame, "t_ns": [now_ns], "estimated": air_adu is None},
        )
    sent = 3
    for first in range(0, n, batch_lines):
        chunk = lines[first : first + batch_lines]
        count = len(chunk)
        values: dict[str, Any] = {
            "scan_id": scan_id,
            "first_line": first,
            "line_count": count,
            "t_ns": [now_ns] * count,
            "flags": [0] * count,
        }
        if spacing is not None:
            values["encoder_mm"] = [(first + k) * spacing for k in range(count)]
        emit(Kind.XRAY_LINES, counts=chunk, values=values)
        sent += 1
    emit(
        Kind.XRAY_SCAN_END,
        values={"scan_id": scan_id, "lines": n, "missing": 0, "complete": True, "reason": "scan_end"},
    )
    metrics = publisher.metrics
    metrics.lines.labels(publisher.lane, "line").inc(n)
    metrics.last_line.labels(publisher.lane).set(time.time())
    return sent + 1


def _free_name(directory: Path, name: str) -> Path:
    """``directory/name``, or ``directory/stem.N.suffix`` with the first N not taken."""
    target = directory / name
    stem, suffix = Path(name).stem, Path(name).suffix
    n = 1
    while target.exists():
        target = directory / f"{stem}.{n}{suffix}"
        n += 1
    return target


class DicosDropWatcher:
    """Imports each complete file dropped into ``directory`` as one scan of ``lane`` (see the module docstring)."""

    def __init__(
        self,
        directory: str | Path,
        lane: str,
        publisher: RecordPublisher,
        poll_s: float = 1.0,
        *,
        batch_lines: int = 64,
        air_adu: float | None = None,
    ) -> None:
        if lane != publisher.lane:
            raise ValueError(f"lane {lane!r} differs from the publisher's lane {publisher.lane!r}")
        if poll_s <= 0:
            raise ValueError(f"poll_s must be positive, got {poll_s}")
        self.directory = Path(directory)
        self.lane = lane
        self.publisher = publisher
        self.poll_s = poll_s
        self.batch_lines = batch_lines
        self.air_adu = air_adu
        self.imported = 0
        self.rejected = 0
        self.last_error = ""
        self.readable = self.directory.is_dir()
        self._sizes: dict[str, tuple[int, int]] = {}
        self._stuck: set[str] = set()

    def _candidates(self) -> dict[str, tuple[int, int]]:
        """Regular files that may be scans, with their (size, mtime ns)."""
        found = {}
        with os.scandir(self.directory) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith(".") or name.endswith(SKIP_SUFFIXES) or not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
                found[name] = (st.st_size, st.st_mtime_ns)
        return found

    def poll_once(self) -> list[Path]:
        """Import every file whose size and time did not change since the last poll; returns where each went."""
        metrics = self.publisher.metrics
        try:
            current = self._candidates()
        except OSError as exc:
            if self.readable or not self.last_error:
                log.error("lane %s: cannot list drop directory %s: %s", self.lane, self.directory, exc)
            self.readable = False
            self.last_error = f"cannot list {self.directory}: {exc.strerror or exc}"
            metrics.connected.labels(self.lane).set(0)
            return []
        self.readable = True
        metrics.connected.labels(self.lane).set(1)
        ready = sorted(name for name, stat in current.items() if self._sizes.get(name) == stat)
        self._sizes = {name: stat for name, stat in current.items() if name not in ready}
        moved = []
        for name in ready:
            if name in self._stuck:
                continue
            target = self._import(self.directory / name, current[name][0])
            if target is not None:
                moved.append(target)
        return moved

    def _import(self, path: Path, size: int) -> Path | None:
        metrics = self.publisher.metrics
        metrics.bytes_read.labels(self.lane).inc(size)
        try:
            image = read_dicos(path)
        except DicosError as exc:
            metrics.parse_errors.labels(self.lane, exc.kind).inc()
            log.warning("lane %s: rejected %s", self.lane, exc)
            self.rejected += 1
            self.last_error = str(exc)
            return self._move(path, REJECTED_DIR, why=f"{exc}\n")
        records = publish_scan(self.publisher, image, batch_lines=self.batch_lines, air_adu=self.air_adu)
        log.info(
            "lane %s: imported %s (%s, %d x %d) as scan %d in %d records",
            self.lane,
            path.name,
            image.sop_class_name,
            image.rows,
            image.cols,
            image.scan_id,
            records,
        )
        self.imported += 1
        return self._move(path, DONE_DIR)

    def _move(self, path: Path, sub: str, why: str | None = None) -> Path | None:
        """Move ``path`` into ``directory/sub`` (with its ``.why`` text); None, logged, if that fails."""
        directory = self.directory / sub
        try:
            directory.mkdir(exist_ok=True)
            target = _free_name(directory, path.name)
            os.replace(path, target)
            if why is not None:
                target.with_name(target.name + ".why").write_text(why, encoding="utf-8")
        except OSError as exc:
            self._stuck.add(path.name)
            self.last_error = f"cannot move {path} into {directory}: {exc.strerror or exc}"
            self.publisher.metrics.parse_errors.labels(self.lane, "io").inc()
            log.error("lane %s: %s; it will not be imported again until restart", self.lane, self.last_error)
            return None
        return target

    def run(self, stop: threading.Event) -> None:
        """Poll every ``poll_s`` until ``stop`` is set."""
        log.info("lane %s: watching %s for DICOS files every %g s", self.lane, self.directory, self.poll_s)
        while not stop.is_set():
            self.poll_once()
            stop.wait(self.poll_s)


class DicosDriver(Driver):
    """DICOS X-ray images from a drop directory (or one file) as X-ray scans."""

    name = "dicos"

    def __init__(
        self,
        publisher: RecordPublisher,
        *,
        watch: str | None = None,
        file: str | None = None,
        poll_s: float = 1.0,
        batch_lines: int = 64,
        air_adu: float | None = None,
    ) -> None:
        super().__init__(publisher)
        if (watch is None) == (file is None):
            raise ValueError("give exactly one of a directory to watch and a file")
        self.file = file
        self.batch_lines = batch_lines
        self.air_adu = air_adu
        self.image: DicosImage | None = None
        self.watcher = (
            DicosDropWatcher(watch, publisher.lane, publisher, poll_s, batch_lines=batch_lines, air_adu=air_adu)
            if watch is not None
            else None
        )
        if file is not None:
            try:
                self.image = read_dicos(file)
            except DicosError as exc:
                publisher.metrics.parse_errors.labels(publisher.lane, exc.kind).inc()
                log.error("lane %s: %s", publisher.lane, exc)
                raise

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--watch", metavar="DIR", help="drop directory: import each new complete file as a scan")
        source.add_argument("--file", metavar="PATH", help="import this one file as a scan, then exit")
        parser.add_argument(
            "--poll", type=float, default=1.0, metavar="S", help="seconds between looks at the directory (default 1)"
        )
        parser.add_argument(
            "--batch-lines", type=int, default=64, metavar="N", help="image lines per published record (default 64)"
        )
        parser.add_argument(
            "--air-adu",
            type=float,
            default=None,
            metavar="ADU",
            help="air level of the images (default: each image's highest value)",
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace, config: Config, publisher: RecordPublisher) -> DicosDriver:
        if args.poll <= 0:
            raise ConfigError(f"--poll: expected a positive number of seconds, got {args.poll}")
        if args.batch_lines < 1:
            raise ConfigError(f"--batch-lines: expected at least 1, got {args.batch_lines}")
        if args.watch is not None and not Path(args.watch).is_dir():
            raise ConfigError(f"--watch: {args.watch} is not a directory")
        try:
            return cls(
                publisher,
                watch=args.watch,
                file=args.file,
                poll_s=args.poll,
                batch_lines=args.batch_lines,
                air_adu=args.air_adu,
            )
        except DicosError as exc:
            raise ConfigError(f"--file: {exc}") from None

    def health(self) -> dict[str, Any]:
        report = super().health()
        if self.watcher is not None:
            w = self.watcher
            report.update(
                ok=w.readable,
                directory=str(w.directory),
                imported=w.imported,
                rejected=w.rejected,
                last_error=w.last_error,
            )
        else:
            report.update(file=self.file)
        return report

    def run(self, stop: threading.Event) -> None:
        if self.watcher is not None:
            self.watcher.run(stop)
        elif self.image is not None:
            records = publish_scan(self.publisher, self.image, batch_lines=self.batch_lines, air_adu=self.air_adu)
            log.info(
                "lane %s: published %s as scan %d (%d records)",
                self.publisher.lane,
                self.file,
                self.image.scan_id,
                records,
            )
