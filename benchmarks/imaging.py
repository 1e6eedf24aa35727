"""Benchmark: sustained per-batch imaging of 2048-pixel dual-energy lines on one core.

    python -m benchmarks.imaging [--lines 3000] [--pixels 2048] [--batch 64] [--repeat 3]

Runs :class:`lanewatch.kernels.imaging.ScanProcessor` (calibrate, attenuate, classify, profile, dense-region
labelling, preview) over a synthetic truck scan fed in batches, as a scanner delivers it, then
ends the scan (regions resolved, preview flushed). It prints lines per second and the multiple of
real time at 300 lines/s (one linac pulse per line) for the Numba kernels and for their numpy
twins measured in the same run, and, as the physical ceiling, a plain copy of the same raw bytes
batch by batch. Ratios: Numba over numpy (target >= 2) and real-time multiple (target >= 50).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from lanewatch.edge.xray import imaging
from lanewatch.kernels import imaging as im

REAL_TIME_LINES_S = 300.0
"""Lines per second of a scanner at 300 linac pulses per second."""
PIXEL_PITCH_MM = 5.0
COLUMN_SPACING_MM = 5.0


def synthetic_scan(lines: int, pixels: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw uint16 ``(lines, 2, pixels)`` of a truck: air, a container of organic cargo, steel and lead.

    Returns ``(raw, dark, air)``; dark and air vary per pixel as a real detector's do.
    """
    rng = np.random.default_rng(seed)
    att = np.zeros((lines, 2, pixels), np.float32)

    def slab(l0: float, l1: float, p0: float, p1: float, material: str, cm: float) -> None:
        low, high = im.material_attenuation(material, cm)
        rows = slice(int(l0 * lines), int(l1 * lines))
        cols = slice(int(p0 * pixels), int(p1 * pixels))
        att[rows, im.LOW, cols] += low
        att[rows, im.HIGH, cols] += high

    slab(0.05, 0.95, 0.05, 0.90, "iron", 0.6)  # container walls
    for k in range(8):  # pallets of organic goods
        slab(0.08 + 0.1 * k, 0.15 + 0.1 * k, 0.10, 0.85, "water", 10.0 + 5.0 * k)
    slab(0.30, 0.40, 0.40, 0.60, "iron", 8.0)  # machinery
    slab(0.60, 0.63, 0.50, 0.56, "lead", 6.0)  # a shielding block
    slab(0.75, 0.80, 0.20, 0.30, "iron", 40.0)  # too thick to see through
    dark = rng.normal(900.0, 20.0, (2, pixels))
    air = rng.normal(58000.0, 800.0, (2, pixels))
    raw = im.raw_from_attenuation(att, dark, air).astype(np.float64)
    raw += rng.normal(0.0, 1.0, raw.shape) * np.sqrt(np.maximum(raw, 1.0))
    return np.clip(raw, 0, 65535).astype(np.uint16), dark, air


def run_scan(
    raw: np.ndarray, dark: np.ndarray, air: np.ndarray, batch: int, backend: im.Backend
) -> tuple[float, float]:
    """Process one scan in batches; returns (total seconds, scan-end seconds)."""
    proc = imaging.ScanProcessor(
        dark, air, pixel_pitch_mm=PIXEL_PITCH_MM, column_spacing_mm=COLUMN_SPACING_MM, backend=backend
    )
    t0 = time.perf_counter()
    for first in range(0, len(raw), batch):
        proc.process(raw[first : first + batch])
    t1 = time.perf_counter()
    proc.finish()
    t2 = time.perf_counter()
    return t2 - t0, t2 - t1


def copy_scan(raw: np.ndarray, batch: int) -> float:
    """Seconds to copy the scan's raw bytes batch by batch into a preallocated buffer."""
    out = np.empty_like(raw[:batch])
    t0 = time.perf_counter()
    for first in range(0, len(raw), batch):
        chunk = raw[first : first + batch]
        np.copyto(out[: len(chunk)], chunk)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=3000, help="lines per scan (default 3000: 10 s at 300 lines/s)")
    parser.add_argument("--pixels", type=int, default=2048, help="detector pixels per line (default 2048)")
    parser.add_argument("--batch", type=int, default=64, help="lines per batch (default 64)")
    parser.add_argument("--repeat", type=int, default=3, help="timed scans per backend; the best is kept (default 3)")
    args = parser.parse_args(argv)

    raw, dark, air = synthetic_scan(args.lines, args.pixels)
    run_scan(raw[: 2 * args.batch], dark, air, args.batch, "numba")  # compile or load the kernel cache
    mb = raw.nbytes / 1e6
    print(f"scan: {args.lines} lines x 2 energies x {args.pixels} pixels uint16 ({mb:.1f} MB), batches of {args.batch}")
    results = {}
    for backend in ("numba", "numpy"):
        runs = [run_scan(raw, dark, air, args.batch, backend) for _ in range(args.repeat)]
        total, end = min(runs)
        results[backend] = args.lines / total
        print(
            f"{backend:6s} {results[backend]:10,.0f} lines/s  {results[backend] / REAL_TIME_LINES_S:7.1f} x real time"
            f"  (scan end {end * 1e3:.2f} ms)"
        )
    copy = args.lines / min(copy_scan(raw, args.batch) for _ in range(args.repeat))
    print(f"memcpy {copy:10,.0f} lines/s  {copy / REAL_TIME_LINES_S:7.1f} x real time  (physical ceiling)")
    print(f"numba / numpy:          {results['numba'] / results['numpy']:.1f} x  (target >= 2)")
    print(f"numba / real time:      {results['numba'] / REAL_TIME_LINES_S:.1f} x  (target >= 50)")
    print(f"numba / memcpy ceiling: {results['numba'] / copy:.3f}")


if __name__ == "__main__":
    main()
