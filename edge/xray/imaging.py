"""The dual-energy imaging pipeline of one scan, batch by batch: calibration, attenuation, material
classes, column profile, preview and dense regions, with the state a scan carries between batches.

The per-pixel work is done by the Numba kernels of :mod:`lanewatch.kernels.imaging` (whose docstring
derives the thresholds below); this module keeps what one scan accumulates: the region labeller's
union-find over lines, the previews and profiles of the batches so far, and the final
:class:`ScanResult`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from lanewatch.kernels import imaging as im


@dataclass(frozen=True)
class ImagingParams:
    """Thresholds of the imaging pipeline; defaults derived as documented in the module docstring."""

    eps: float = 1e-4
    """Lowest transmission kept (calibration clips below it): attenuation is at most -ln(eps) = 9.2."""
    t_max: float = 1.25
    """Highest transmission kept: detector noise above the air level, clipped here."""
    a_air: float = 0.05
    """High-energy attenuation below which a pixel is air (transmission above 95%)."""
    a_dark: float = 5.3
    """Attenuation above which (at either energy) a pixel is unresolvable (transmission below 0.5%)."""
    r_organic: float = round((im.dual_energy_ratio("water") + im.dual_energy_ratio("aluminium")) / 2, 2)
    """Lowest attenuation ratio A_low/A_high of organic matter (1.42, between water and aluminium)."""
    r_inorganic: float = round((im.dual_energy_ratio("aluminium") + im.dual_energy_ratio("iron")) / 2, 2)
    """Lowest ratio of inorganic matter (1.34, between aluminium and iron)."""
    r_metal: float = round((im.dual_energy_ratio("iron") + im.dual_energy_ratio("lead")) / 2, 2)
    """Lowest ratio of metal (1.19, between iron and lead); below it, high-Z."""
    a_dense: float = 1.0
    """High-energy attenuation from which a pixel is dense (T <= 37%: about 4 cm of steel or 2 cm of lead)."""
    preview_block: tuple[int, int] = (4, 4)
    """Preview block size (lines, pixels): each preview pixel is the mean of one block."""
    preview_a_max: float = 6.0
    """Attenuation shown black in the preview (0 is white)."""
    min_region_px: int = 1
    """Smallest dense region reported, in pixels."""


class RegionLabeller:
    """Incremental dense-region labelling of one scan, batch by batch (state for :func:`label_lines`)."""

    def __init__(self, pixels: int, a_dense: float) -> None:
        self.pixels = pixels
        self.a_dense = float(a_dense)
        self.lines = 0
        self.n_labels = 0
        self.prev = np.zeros(pixels, np.int64)
        self._alloc(1024)

    def _alloc(self, capacity: int) -> None:
        old = getattr(self, "parent", None)
        arrays = {
            "parent": np.zeros(capacity, np.int64),
            "area": np.zeros(capacity, np.int64),
            "att_sum": np.zeros(capacity, np.float64),
            "att_max": np.zeros(capacity, np.float32),
            "hist": np.zeros((capacity, im.N_CLASSES), np.int64),
            "bbox": np.zeros((capacity, 4), np.int64),
        }
        for name, arr in arrays.items():
            if old is not None:
                arr[: self.n_labels + 1] = getattr(self, name)[: self.n_labels + 1]
            setattr(self, name, arr)

    def add(self, plane: np.ndarray, classes: np.ndarray) -> None:
        """Label one batch: attenuation plane ``(lines, pixels)`` and its class codes ``(lines, pixels)``."""
        lines = plane.shape[0]
        need = self.n_labels + lines * ((self.pixels + 1) // 2) + 1
        if need > len(self.parent):
            self._alloc(max(need, 2 * len(self.parent)))
        self.n_labels = im.label_lines(
            plane,
            classes,
            self.a_dense,
            self.lines,
            self.prev,
            self.n_labels,
            self.parent,
            self.area,
            self.att_sum,
            self.att_max,
            self.hist,
            self.bbox,
        )
        self.lines += lines

    def finish(self) -> im.RegionStats:
        """Statistics of every dense region of the scan so far (canonical order)."""
        roots = im.resolve_regions(
            self.n_labels, self.parent, self.area, self.att_sum, self.att_max, self.hist, self.bbox
        )
        return im.RegionStats(
            self.area[roots], self.att_sum[roots], self.att_max[roots], self.hist[roots], self.bbox[roots]
        ).sorted()


# ---- scan processing ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Region:
    """One dense region of a scan, in pixels and in millimetres."""

    area_px: int
    area_mm2: float
    """Area (mm^2): pixels x pixel pitch (mm) x column spacing (mm)."""
    mean_att: float
    """Mean attenuation -ln T (high energy) over the region."""
    max_att: float
    material: str
    """Majority material class of the region's pixels (a name of :data:`CLASS_NAMES`)."""
    class_px: dict[str, int]
    """Pixels of the region per material class (classes with none left out)."""
    lines: tuple[int, int]
    """First and last scan line (inclusive)."""
    pixels: tuple[int, int]
    """First and last detector pixel (inclusive)."""
    bbox_mm: tuple[float, float, float, float]
    """Bounding box (mm): start and end along the vehicle (lines x column spacing), start and end
    along the detector (pixels x pixel pitch); ends are exclusive edges."""


def regions_from_stats(
    stats: im.RegionStats, pixel_pitch_mm: float, column_spacing_mm: float, min_px: int
) -> list[Region]:
    """:class:`Region`\\ s of at least ``min_px`` pixels from region statistics, with sizes in mm."""
    out = []
    for k in range(len(stats)):
        area = int(stats.area[k])
        if area < min_px:
            continue
        l0, l1, p0, p1 = (int(v) for v in stats.bbox[k])
        hist = stats.hist[k]
        out.append(
            Region(
                area_px=area,
                area_mm2=area * pixel_pitch_mm * column_spacing_mm,
                mean_att=float(stats.att_sum[k]) / area,
                max_att=float(stats.att_max[k]),
                material=im.CLASS_NAMES[int(np.argmax(hist))],
                class_px={im.CLASS_NAMES[c]: int(hist[c]) for c in range(im.N_CLASSES) if hist[c]},
                lines=(l0, l1),
                pixels=(p0, p1),
                bbox_mm=(
                    l0 * column_spacing_mm,
                    (l1 + 1) * column_spacing_mm,
                    p0 * pixel_pitch_mm,
                    (p1 + 1) * pixel_pitch_mm,
                ),
            )
        )
    return out


@dataclass
class BatchResult:
    """What one batch of lines gives, as soon as it arrives."""

    first_line: int
    attenuation: np.ndarray
    """float32 ``(lines, energies, pixels)``: -ln T."""
    classes: np.ndarray
    """uint8 ``(lines, pixels)`` material class codes."""
    profile: np.ndarray
    """float64 ``(lines, 2)``: sum and mean attenuation (density energy) per line."""


@dataclass
class ScanResult:
    """What a whole scan gives at its end."""

    lines: int
    regions: list[Region]
    profile: np.ndarray
    """float64 ``(lines, 2)``: sum and mean attenuation per line, the whole scan."""
    preview: np.ndarray
    """uint8 block-mean preview of the whole scan, ``(lines / block, pixels / block)``, lines first."""
    class_px: dict[str, int] = field(default_factory=dict)
    """Pixels of the whole scan per material class."""


Backend = Literal["numba", "numpy"]


class ScanProcessor:
    """Runs the imaging pipeline on one scan, batch by batch as lines arrive.

    ``dark`` and ``air`` are the detector's levels ``(energies, pixels)`` (any real dtype);
    ``pixel_pitch_mm`` the detector pixel size and ``column_spacing_mm`` the distance the vehicle
    moves between pulses (speed in mm/s divided by the pulse rate in 1/s). ``backend="numpy"``
    runs the numpy twins (regions then are labelled at :meth:`finish` over the accumulated mask).
    """

    def __init__(
        self,
        dark: np.ndarray,
        air: np.ndarray,
        *,
        pixel_pitch_mm: float,
        column_spacing_mm: float,
        params: ImagingParams | None = None,
        backend: Backend = "numba",
    ) -> None:
        if backend not in ("numba", "numpy"):
            raise ValueError(f"backend must be 'numba' or 'numpy', got {backend!r}")
        self.dark = np.ascontiguousarray(dark, np.float32)
        self.air = np.ascontiguousarray(air, np.float32)
        if self.dark.ndim != 2 or self.dark.shape != self.air.shape or self.dark.shape[0] not in (1, 2):
            raise ValueError(f"dark and air must both be (energies 1 or 2, pixels), got {dark.shape} and {air.shape}")
        self.energies, self.pixels = self.dark.shape
        self.pixel_pitch_mm = pixel_pitch_mm
        self.column_spacing_mm = column_spacing_mm
        self.params = params or ImagingParams()
        self.backend = backend
        self.lines = 0
        self._profiles: list[np.ndarray] = []
        self._previews: list[np.ndarray] = []
        self._pending = np.empty((0, self.pixels), np.float32)
        self._class_px = np.zeros(im.N_CLASSES, np.int64)
        self._labeller = RegionLabeller(self.pixels, self.params.a_dense) if backend == "numba" else None
        self._planes: list[np.ndarray] = []
        self._classes: list[np.ndarray] = []

    def process(self, raw: np.ndarray) -> BatchResult:
        """Process one batch of raw lines ``(lines, energies, pixels)`` (uint16)."""
        if raw.ndim != 3 or raw.shape[1:] != (self.energies, self.pixels):
            raise ValueError(f"batch must be (lines, {self.energies}, {self.pixels}), got {raw.shape}")
        raw = np.ascontiguousarray(raw, np.uint16)
        pr = self.params
        numba = self.backend == "numba"
        t = (im.calibrate if numba else im.calibrate_ref)(raw, self.dark, self.air, pr.eps, pr.t_max)
        att = (im.attenuation if numba else im.attenuation_ref)(t)
        classes = (im.classify if numba else im.classify_ref)(
            att, pr.a_air, pr.a_dark, pr.r_organic, pr.r_inorganic, pr.r_metal
        )
        plane = np.ascontiguousarray(att[:, im.HIGH, :])
        profile = (im.column_profile if numba else im.column_profile_ref)(plane)
        self._class_px += np.bincount(classes.reshape(-1), minlength=im.N_CLASSES)
        self._add_preview(plane)
        if self._labeller is not None:
            self._labeller.add(plane, classes)
        else:
            self._planes.append(plane)
            self._classes.append(classes)
        self._profiles.append(profile)
        first = self.lines
        self.lines += raw.shape[0]
        return BatchResult(first_line=first, attenuation=att, classes=classes, profile=profile)

    def _add_preview(self, plane: np.ndarray) -> None:
        """Preview the whole blocks of lines so far; keep the remainder for the next batch."""
        block_lines = self.params.preview_block[0]
        pending = np.concatenate([self._pending, plane]) if len(self._pending) else plane
        whole = len(pending) // block_lines * block_lines
        if whole:
            self._previews.append(self._preview(pending[:whole]))
        self._pending = pending[whole:].copy()

    def _preview(self, plane: np.ndarray) -> np.ndarray:
        block_lines, block_px = self.params.preview_block
        fn = im.preview if self.backend == "numba" else im.preview_ref
        return fn(np.ascontiguousarray(plane), block_lines, block_px, self.params.preview_a_max)

    def finish(self) -> ScanResult:
        """End the scan: resolve the dense regions, flush the preview, gather the profile."""
        if len(self._pending):
            self._previews.append(self._preview(self._pending))
            self._pending = self._pending[:0]
        if self._labeller is not None:
            stats = self._labeller.finish()
        else:
            planes = [np.zeros((0, self.pixels), np.float32), *self._planes]
            classes = [np.zeros((0, self.pixels), np.uint8), *self._classes]
            stats = im.regions_ref(np.concatenate(planes), np.concatenate(classes), self.params.a_dense)
        block_px = self.params.preview_block[1]
        return ScanResult(
            lines=self.lines,
            regions=regions_from_stats(stats, self.pixel_pitch_mm, self.column_spacing_mm, self.params.min_region_px),
            profile=np.concatenate(self._profiles) if self._profiles else np.zeros((0, 2)),
            preview=np.concatenate(self._previews)
            if self._previews
            else np.zeros((0, -(-self.pixels // block_px)), np.uint8),
            class_px={im.CLASS_NAMES[c]: int(n) for c, n in enumerate(self._class_px) if n},
        )
