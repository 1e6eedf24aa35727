"""What a finished scan's image shows: analysis cells, dense objects and their materials, the preview.

Computed once at scan end from the imaging pipeline's result (:mod:`lanewatch.kernels.imaging`) and
the scan's reduced image, independent of any radiation: :mod:`lanewatch.edge.xray.fusion` places these
findings on the vehicle's metres axis and reads them together with the radiation analysis.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from lanewatch.edge.config import FusionConfig
from lanewatch.edge.xray import imaging
from lanewatch.kernels import imaging as im
from lanewatch.kernels.morphology import cell_sums, label4, opening_rows

GRID_MM = 20.0
"""Target size (mm, along the vehicle and down the detector) of an analysis cell."""
OBJECT_MAX_M = 0.6
"""Longest object (m along the vehicle) the excess over the load brings out; longer ones count as load."""
EXCESS_MIN = 0.25
"""High-energy attenuation excess over the load from which a cell belongs to an object (about 5 mm of lead)."""
DARK_CELL = 0.5
"""A cell with at least this share of pixels the high energy does not get through is dark: not searched for
objects, and counted as unseeable."""
LEAD_ATT_PER_MM = im.MASS_ATTENUATION_CM2_G["lead"][1] * im.DENSITY_G_CM3["lead"] / 10.0
"""High-energy attenuation of 1 mm of lead (0.0476)."""
PREVIEW_MAX_PX = (640, 160)
"""Largest preview (width along the vehicle, height down the detector) kept in a decision, in pixels."""
PREVIEW_MAX_BYTES = 100_000
"""Largest preview PNG (bytes) kept in a decision; a larger one is made smaller until it fits."""
SHIELD_MIN_SIZE_MM = 50.0
"""Smallest extent (mm, as imaged) of a high-Z object along the vehicle and down the detector for it to shield a
source. A shield must enclose the source on every side the portal's detectors see: a Cs-137 capsule (about 1 cm)
in a pig with walls of ``shield_min_lead_mm`` or more is some 6 cm across or more, and an object's imaged extent
can fall one analysis cell (:data:`GRID_MM`) short of its true one when its edge cells are only partly covered.
A thin wall or frame seen edge-on (one cell along the vehicle, tall down the detector) is dense and high-Z but
encloses nothing, so it is not a shield whatever its area."""


# ---- the reduced image ---------------------------------------------------------------------------
def grid_blocks(spacing_mm: float, pitch_mm: float) -> tuple[int, int]:
    """Cell size (lines, pixels) of about :data:`GRID_MM` for a line spacing and pixel pitch (mm)."""
    return max(1, round(GRID_MM / spacing_mm)), max(1, round(GRID_MM / pitch_mm))


@dataclass
class GridImage:
    """A scan reduced to analysis cells: rows along the vehicle (``block_lines`` lines each), columns down it."""

    high: np.ndarray
    """float32 (rows, columns): mean high-energy attenuation of the cell's measured pixels (0 if none)."""
    low: np.ndarray
    """float32 (rows, columns): the same at the low energy (equal to ``high`` in a single-energy scan)."""
    dark: np.ndarray
    """float32 (rows, columns): share of the cell's pixels the high energy does not get through
    (attenuation above the imaging ``a_dark``)."""
    air: np.ndarray
    """float32 (rows, columns): share of the cell's pixels that are air."""
    nonair: np.ndarray
    """int64 (lines,): pixels of each scan line that are not air."""
    block_lines: int
    block_px: int
    energies: int
    pixels: int
    """Detector pixels of the scan."""

    @property
    def lines(self) -> int:
        return int(self.nonair.shape[0])

    def row_lines(self, row0: int, row1: int) -> tuple[int, int]:
        """First and last scan line (inclusive) of cell rows ``row0``..``row1``."""
        return row0 * self.block_lines, min((row1 + 1) * self.block_lines, self.lines) - 1


class ImageGrid:
    """Builds the :class:`GridImage` of one scan batch by batch, from what the imaging pipeline gives.

    A pixel enters its cell's means while the high energy gets through (attenuation at most ``a_dark``),
    whatever the low energy does: the pipeline calls a pixel unresolvable when either energy is dark
    (its own ratio too noisy), but a cell's mean over many pixels still measures the low energy, and
    choosing pixels by the high energy alone does not bias it (choosing by the low would: near the
    limit, the pixels whose noise went down would stay).
    """

    def __init__(self, energies: int, pixels: int, block_lines: int, block_px: int, a_dark: float) -> None:
        self.energies = energies
        self.pixels = pixels
        self.block_lines = block_lines
        self.block_px = block_px
        self.a_dark = a_dark
        self._starts = np.arange(0, pixels, block_px)
        self._px = np.diff(np.append(self._starts, pixels)).astype(np.float32)
        self._pending: np.ndarray | None = None
        self._rows: list[tuple[np.ndarray, ...]] = []
        self._nonair: list[np.ndarray] = []

    def add(self, attenuation: np.ndarray, classes: np.ndarray) -> None:
        """One batch: attenuation ``(lines, energies, pixels)`` and class codes ``(lines, pixels)``."""
        per_line, nonair = cell_sums(attenuation, classes, self.block_px, self.a_dark, im.AIR)
        self._nonair.append(nonair)
        stacked = per_line if self._pending is None else np.concatenate([self._pending, per_line])
        whole = len(stacked) // self.block_lines * self.block_lines
        if whole:
            self._rows.append(self._reduce(stacked[:whole]))
        self._pending = stacked[whole:] if whole < len(stacked) else None

    def _reduce(self, lines: np.ndarray) -> tuple[np.ndarray, ...]:
        """Cells (high, low, dark, air) of whole rows of lines ``(lines, 4, columns)`` of per-line sums."""
        starts = np.arange(0, len(lines), self.block_lines)
        sums = np.add.reduceat(lines, starts, axis=0)
        total = np.diff(np.append(starts, len(lines)))[:, None].astype(np.float32) * self._px[None, :]
        measured = np.maximum(sums[:, 2], 1.0)
        return sums[:, 0] / measured, sums[:, 1] / measured, 1.0 - sums[:, 2] / total, sums[:, 3] / total

    def finish(self) -> GridImage:
        """The reduced image of the lines so far (a last partial row of cells included)."""
        if self._pending is not None:
            self._rows.append(self._reduce(self._pending))
            self._pending = None
        if self._rows:
            high, low, dark, air = (np.concatenate(part) for part in zip(*self._rows, strict=True))
        else:
            high = low = dark = air = np.zeros((0, len(self._starts)), np.float32)
        return GridImage(
            high=np.ascontiguousarray(high, np.float32),
            low=np.ascontiguousarray(high if self.energies == 1 else low, np.float32),
            dark=np.ascontiguousarray(dark, np.float32),
            air=np.ascontiguousarray(air, np.float32),
            nonair=np.concatenate(self._nonair) if self._nonair else np.zeros(0, np.int64),
            block_lines=self.block_lines,
            block_px=self.block_px,
            energies=self.energies,
            pixels=self.pixels,
        )


# ---- objects on top of the load -----------------------------------------------------------------
@dataclass(frozen=True)
class ImageObject:
    """A compact object standing out of the load, in scan lines and detector pixels."""

    lines: tuple[int, int]
    """First and last scan line (inclusive)."""
    pixels: tuple[int, int]
    """First and last detector pixel (inclusive)."""
    area_mm2: float
    excess: float
    """Mean high-energy attenuation excess over the load."""
    max_excess: float
    ratio: float | None
    """Excess ratio low/high; None in a single-energy scan."""
    material: str
    """Class of the excess ratio (:data:`lanewatch.kernels.imaging.CLASS_NAMES`), ``dense`` in a single-energy scan."""
    length_mm: float
    """Extent along the vehicle (mm): its cell rows' lines times the line spacing."""
    height_mm: float
    """Extent down the detector (mm): its cell columns' pixels times the pixel pitch."""

    @property
    def lead_mm(self) -> float:
        """Lead-equivalent thickness (mm) of the mean excess."""
        return self.excess / LEAD_ATT_PER_MM

    def shields(self, cfg: FusionConfig) -> bool:
        """High-Z and large enough to shield a source: area, lead equivalent, :data:`SHIELD_MIN_SIZE_MM` both ways."""
        return (
            self.material == "high_z"
            and self.area_mm2 >= cfg.shield_min_area_mm2
            and self.lead_mm >= cfg.shield_min_lead_mm
            and min(self.length_mm, self.height_mm) >= SHIELD_MIN_SIZE_MM
        )


def _material(ratio: float, params: imaging.ImagingParams) -> str:
    if ratio >= params.r_organic:
        return "organic"
    if ratio >= params.r_inorganic:
        return "inorganic"
    return "metal" if ratio >= params.r_metal else "high_z"


def find_objects(
    grid: GridImage, pitch_mm: float, spacing_mm: float, params: imaging.ImagingParams
) -> list[ImageObject]:
    """Objects (two cells or more) shorter than :data:`OBJECT_MAX_M` standing :data:`EXCESS_MIN` out of the load."""
    if grid.high.shape[0] == 0:
        return []
    half = max(1, round(OBJECT_MAX_M * 1000.0 / (grid.block_lines * spacing_mm) / 2))
    excess_high = grid.high - opening_rows(grid.high, half)
    excess_low = grid.low - opening_rows(grid.low, half)
    mask = (excess_high >= EXCESS_MIN) & (grid.dark < DARK_CELL)
    labels = label4(mask)
    ids, index = np.unique(labels[mask], return_inverse=True)
    if not len(ids):
        return []
    rows, cols = np.nonzero(mask)
    n = len(ids)
    cells = np.bincount(index, minlength=n)
    sum_high = np.bincount(index, weights=excess_high[mask], minlength=n)
    sum_low = np.bincount(index, weights=excess_low[mask], minlength=n)
    peak = np.full(n, -np.inf)
    np.maximum.at(peak, index, excess_high[mask])
    first_row, first_col = np.full(n, rows.max()), np.full(n, cols.max())
    last_row, last_col = np.zeros(n, np.int64), np.zeros(n, np.int64)
    np.minimum.at(first_row, index, rows)
    np.minimum.at(first_col, index, cols)
    np.maximum.at(last_row, index, rows)
    np.maximum.at(last_col, index, cols)
    cell_mm2 = grid.block_lines * spacing_mm * grid.block_px * pitch_mm
    out = []
    for k in np.flatnonzero(cells >= 2):
        ratio = float(sum_low[k] / sum_high[k]) if grid.energies == 2 else None
        lines = grid.row_lines(int(first_row[k]), int(last_row[k]))
        pixels = int(first_col[k]) * grid.block_px, min((int(last_col[k]) + 1) * grid.block_px, grid.pixels) - 1
        out.append(
            ImageObject(
                lines=lines,
                pixels=pixels,
                area_mm2=float(cells[k] * cell_mm2),
                excess=float(sum_high[k] / cells[k]),
                max_excess=float(peak[k]),
                ratio=ratio,
                material="dense" if ratio is None else _material(ratio, params),
                length_mm=(lines[1] - lines[0] + 1) * spacing_mm,
                height_mm=(pixels[1] - pixels[0] + 1) * pitch_mm,
            )
        )
    return out


# ---- preview -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preview:
    """The scan's preview as a PNG: width along the vehicle (line 0 on the left), height down the detector."""

    png: bytes
    width: int
    height: int
    lines_per_px: float
    pixels_per_px: float


def encode_preview(preview: np.ndarray, lines: int, pixels: int) -> Preview | None:
    """PNG of the imaging preview ``(lines / block, pixels / block)``, reduced to :data:`PREVIEW_MAX_PX` and bytes."""
    if preview.size == 0:
        return None
    img = Image.fromarray(np.ascontiguousarray(preview.T))
    scale = min(1.0, PREVIEW_MAX_PX[0] / img.width, PREVIEW_MAX_PX[1] / img.height)
    while True:
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        small = img.resize(size, Image.Resampling.BOX) if size != img.size else img
        buf = io.BytesIO()
        small.save(buf, format="PNG", compress_level=3)
        if buf.tell() <= PREVIEW_MAX_BYTES or min(size) == 1:
            return Preview(buf.getvalue(), size[0], size[1], lines / size[0], pixels / size[1])
        scale *= 0.75


@dataclass
class ImageFindings:
    """Everything the fusion needs from a finished scan's image, computed once at scan end."""

    grid: GridImage
    objects: list[ImageObject]
    preview: Preview | None
    pitch_mm: float
    spacing_mm: float
    params: imaging.ImagingParams


def analyze_image(
    grid: GridImage,
    result: imaging.ScanResult,
    pitch_mm: float,
    spacing_mm: float,
    params: imaging.ImagingParams,
) -> ImageFindings:
    """Objects and preview of a finished scan (its reduced image ``grid`` and the imaging pipeline's ``result``)."""
    return ImageFindings(
        grid=grid,
        objects=find_objects(grid, pitch_mm, spacing_mm, params),
        preview=encode_preview(result.preview, result.lines, grid.pixels),
        pitch_mm=pitch_mm,
        spacing_mm=spacing_mm,
        params=params,
    )
