"""A simulated dual-energy X-ray cargo scanner that images the simulated lane's vehicles, over TCP.

The vehicles are the radiation lane's own: :class:`lanewatch.drivers.sim.physics.Traffic` with the same
seed and mix gives the same passages in the same order, so the X-ray scan of occupancy *n* shows
the vehicle, cargo, sources and shielding whose radiation :mod:`lanewatch.drivers.sim.lane` reports for it.
This module draws each passage's truth as objects, projects them onto a line-scan detector, and
serves the lines in the LWXR protocol of :mod:`lanewatch.drivers.xray`, paced like a real scanner.

Geometry (mm)
    x along the vehicle from its front (as the truth's ``position_m``, times 1000); z up from the
    road. A vertical fan beam crosses the lane; a column of ``pixels`` detectors 4600 mm tall
    (4.5 mm pitch at 1024 pixels, pixel 0 at the top) reads one line per linac pulse, 300 per second.
    Projection is parallel (no fan magnification). The scan starts 300 mm before the vehicle front
    reaches the beam and ends 300 mm after its rear; the encoder counts the vehicle's travel since
    the scan started, so the front crosses the beam at ``front_encoder_mm`` = 300 and a point x mm
    behind the front is imaged by the line whose encoder reading is 300 + x. Line spacing is the
    speed divided by the line rate: 6.5 mm at 7 km/h.

Physics
    Transmission per pixel and beam energy, T_E = exp(-sum over objects of (mu/rho)_E(material) *
    rho * path), with the path length of the ray through each object (boxes, cylinders, spheres,
    hollow shells). Single-energy stand-ins for the two bremsstrahlung spectra: the 6 MV beam
    attenuates like 4 MeV photons, the 4 MV beam like 2 MeV photons (approximate NIST XCOM
    totals). That keeps the material dependence of the low/high attenuation ratio that dual-energy
    discrimination relies on (Chen et al., Physics Procedia 66 (2015) 68-74): about 1.45
    for organic (water-like), 1.39 inorganic (aluminium-like), 1.29 steel, 1.10 lead, tungsten and
    uranium. Steel penetration is about 300 mm (fielded systems: 200-450 mm, "X-Ray Cargo
    Inspection: Status and Trends", Varian, AIP Conf. Proc., OSTI 21289597).

Detector
    reading = dark + air * T * pulse + noise, rounded and clipped to 16 bits (ADU). dark: a fixed
    offset per pixel (600-1000 ADU); air: the open-beam level per pixel and energy (about 48000 ADU
    at 6 MV and 30000 at 4 MV in the beam centre, 25 % less at the fan edges, times a gain of
    1 +- 3 %); pulse: the linac's pulse-to-pulse dose, 1 +- 0.5 % per line; noise: Gaussian with the
    variance of the detected quanta (2 ADU per quantum) plus 6 ADU of electronic noise. Each scan
    starts with 16 dark lines (beam off) and 16 air lines (beam on, nothing in it).

What is drawn
    Structure: the cab (sheet steel, engine block, seats, the driver), fuel tank, chassis rails,
    axles, wheels and tyres, and the load space: an ISO container (corrugated steel walls, wooden
    floor, roof and end frames) on a tractor-trailer, an aluminium box on a box truck, a steel body
    on a van. Cargo by the truth's type: empty (sometimes a few empty pallets), organic (pallets of
    goods), metal (machines: a steel frame around a denser core), fertilizer (bulk bags) and
    ceramics (pallets of tiles), both inorganic, mixed by the truth's segments; the load's mass
    matches the truth's effective density. Sources at their truth positions: the lead or steel
    shield of a shielded source, a hollow cylinder with the truth's wall thickness around a 60 mm
    cavity; a metal HEU (2-12 kg) or plutonium (1-4 kg) object; the capsule of an unshielded
    Cs-137 or Co-60 source (too small to see, as in life). Benign dense objects on one freight
    vehicle in five: engine blocks, steel coils, pallets of lead-acid batteries, and rarely lead
    bricks or tungsten bars (dense high-Z blocks with nothing inside), so image review has look-alikes.

Truth
    :attr:`XrayScan.truth` (and one JSON line per scan in ``truth_path``): scan id, occupancy index,
    the passage truth, geometry (lines, pixels, pitch, line spacing, front encoder reading), and
    every object: name, role (structure, cargo, shield, source, benign_dense, person), material,
    class (organic, inorganic, metal, high_z), extent along the vehicle and in height (mm), image
    lines and pixels it covers, largest path length (mm) and areal density (g/cm^2) along a ray,
    and the index of the truth source it shields or is.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from lanewatch.drivers.sim.fanout import StreamingDevice, TcpFanout
from lanewatch.drivers.sim.lane import parse_mix, truth_path_for
from lanewatch.drivers.sim.physics import Passage, Traffic
from lanewatch.drivers.xray import AIR, DARK, SCAN_END, SCAN_START, pack_frame

log = logging.getLogger(__name__)

LINE_RATE_HZ = 300.0
"""Lines (linac pulses) per second."""
ENERGIES_MV = (6.0, 4.0)
"""Beam energies (MV), in the order of the energy axis of a line (highest first, as the protocol says)."""
DETECTOR_HEIGHT_MM = 4600.0
"""Height (mm) the detector column covers, from the road up."""
LEAD_MM = 300.0
"""Air (mm of vehicle travel) imaged before the front and after the rear of a vehicle."""
CALIBRATION_LINES = 16
"""Dark lines and air lines at the start of each scan (each)."""
CHUNK_LINES = 2048
"""Lines rendered at a time (bounds memory: 2048 x 2 x 1024 float32 is 16 MB)."""
ADU_PER_QUANTUM = 2.0
ELECTRONIC_NOISE_ADU = 6.0
AIR_ADU = (48000.0, 30000.0)
"""Open-beam reading (ADU) in the beam centre, per energy."""
PULSE_JITTER = 0.005
"""Relative standard deviation of the linac dose from pulse to pulse."""


@dataclass(frozen=True)
class Material:
    """Attenuation of one material: mass attenuation (cm^2/g) for the 6 MV and the 4 MV beam."""

    klass: str
    """organic, inorganic, metal or high_z: the classes dual-energy imaging tells apart."""
    density_g_cm3: float
    mu_high: float
    mu_low: float


MATERIALS: dict[str, Material] = {
    "organic": Material("organic", 1.00, 0.0340, 0.0494),
    "inorganic": Material("inorganic", 2.70, 0.0311, 0.0432),
    "steel": Material("metal", 7.87, 0.0331, 0.0426),
    "lead": Material("high_z", 11.35, 0.0420, 0.0461),
    "tungsten": Material("high_z", 19.3, 0.0403, 0.0444),
    "uranium": Material("high_z", 19.05, 0.0436, 0.0478),
    "plutonium": Material("high_z", 19.8, 0.0440, 0.0482),
}
"""Water-like organics, aluminium-like inorganics, steel and high-Z metals (approximate NIST XCOM at 4 and 2 MeV)."""


# ---------------------------------------------------------------------------------------------
# Objects and their path lengths
@dataclass(frozen=True)
class SceneObject:
    """One solid in the beam. The box [x0, x1] x [z0, z1] (mm) bounds it; ``shape`` gives the path.

    box: ``depth_mm`` across the lane everywhere in the box. disc: an ellipse in the image (a
    cylinder whose axis crosses the lane: wheels, axles, coils lying eye-to-side), ``depth_mm``
    long. vcyl: a cylinder with a vertical axis (coils eye-to-sky, lead pigs), diameter x1 - x0.
    hcyl: a cylinder lying along the vehicle (pipes, tanks), diameter z1 - z0. sphere: diameter
    the smaller side of the box. ``wall_mm`` > 0 makes it hollow with walls that thick: a closed
    shell, or with ``open_ends`` a tube open along its axis (disc: across the lane; vcyl: up).
    """

    name: str
    role: str
    material: str
    shape: str
    x0: float
    x1: float
    z0: float
    z1: float
    depth_mm: float = 0.0
    density_g_cm3: float | None = None
    """Density (g/cm^3); None for the material's own (bulk loads are less dense than their material)."""
    wall_mm: float = 0.0
    open_ends: bool = False
    source: int | None = None
    """Index into the passage truth's ``sources`` of the source this object is or shields."""

    @property
    def density(self) -> float:
        return MATERIALS[self.material].density_g_cm3 if self.density_g_cm3 is None else self.density_g_cm3

    def path(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Path length (mm) through the object of the rays at columns ``x`` and heights ``z`` (mm): (len(x), len(z))."""
        full = _path(self.shape, x, z, self.x0, self.x1, self.z0, self.z1, self.depth_mm)
        w = self.wall_mm
        if w <= 0:
            return full
        z0, z1, depth = self.z0 + w, self.z1 - w, self.depth_mm - 2 * w
        if self.open_ends and self.shape == "disc":
            depth = self.depth_mm
        elif self.open_ends and self.shape == "vcyl":
            z0, z1 = self.z0, self.z1
        elif self.open_ends:
            raise ValueError(f"{self.name}: only disc and vcyl tubes can be open-ended")
        return full - _path(self.shape, x, z, self.x0 + w, self.x1 - w, z0, z1, depth)

    def max_path_mm(self) -> float:
        """The longest ray through the object (mm), sampled on a 257 x 257 grid over its box."""
        x = np.linspace(self.x0, self.x1, 257)
        z = np.linspace(self.z0, self.z1, 257)
        return float(self.path(x, z).max())


def _chord(u: np.ndarray, centre: float, radius: float) -> np.ndarray:
    return 2.0 * np.sqrt(np.clip(radius * radius - (u - centre) ** 2, 0.0, None))


def _path(
    shape: str, x: np.ndarray, z: np.ndarray, x0: float, x1: float, z0: float, z1: float, depth: float
) -> np.ndarray:
    if x1 <= x0 or z1 <= z0:
        return np.zeros((x.size, z.size), np.float32)
    in_x = (x >= x0) & (x <= x1)
    in_z = (z >= z0) & (z <= z1)
    xc, zc, a, b = 0.5 * (x0 + x1), 0.5 * (z0 + z1), 0.5 * (x1 - x0), 0.5 * (z1 - z0)
    if shape == "box":
        return (depth * np.outer(in_x, in_z)).astype(np.float32)
    if shape == "disc":
        inside = ((x[:, None] - xc) / a) ** 2 + ((z[None, :] - zc) / b) ** 2 <= 1.0
        return (depth * inside).astype(np.float32)
    if shape == "vcyl":
        return np.outer(_chord(x, xc, a), in_z).astype(np.float32)
    if shape == "hcyl":
        return np.outer(in_x, _chord(z, zc, b)).astype(np.float32)
    if shape == "sphere":
        r = min(a, b)
        d2 = (x[:, None] - xc) ** 2 + (z[None, :] - zc) ** 2
        return (2.0 * np.sqrt(np.clip(r * r - d2, 0.0, None))).astype(np.float32)
    raise ValueError(f"unknown shape {shape!r}")


# ---------------------------------------------------------------------------------------------
# Vehicles
@dataclass(frozen=True)
class _Body:
    """Heights (mm) and build of one vehicle type."""

    cab_z: tuple[float, float]
    deck_z: float
    """Top of the chassis: the load space's floor rests on it."""
    roof_z: float
    tyre_r: float
    wall: tuple[str, float]
    """Side walls of the load space: material and total thickness of both walls (mm)."""
    floor: tuple[str, float, float]
    """Floor: material, thickness (mm) and density (g/cm^3)."""
    end_wall: tuple[str, float]
    """Front and rear walls of the load space (they lie across the beam): material, thickness (mm)."""
    width_mm: float
    """Inside width of the load space across the lane."""


BODIES: dict[str, _Body] = {
    "tractor-trailer": _Body(
        (1000.0, 3800.0), 1300.0, 3900.0, 520.0, ("steel", 5.2), ("organic", 28.0, 0.7), ("steel", 2.0), 2350.0
    ),
    "box-truck": _Body(
        (850.0, 3100.0), 1100.0, 3500.0, 480.0, ("inorganic", 5.0), ("organic", 25.0, 0.7), ("inorganic", 3.0), 2400.0
    ),
    "van": _Body((450.0, 2400.0), 500.0, 2300.0, 330.0, ("steel", 2.0), ("steel", 1.5, 7.87), ("steel", 1.0), 1700.0),
}


def _edge_on(
    name: str,
    material: str,
    x0: float,
    x1: float,
    z0: float,
    thickness: float,
    across: float,
    density: float | None = None,
) -> SceneObject:
    """A horizontal plate seen edge-on (floor, roof): at least 10 mm tall, its areal density along the ray kept."""
    height = max(thickness, 10.0)
    return SceneObject(
        name, "structure", material, "box", x0, x1, z0, z0 + height, across * thickness / height, density
    )


def _across(name: str, material: str, x0: float, z0: float, z1: float, thickness: float, across: float) -> SceneObject:
    """A wall across the beam (front or rear wall): at least 40 mm wide along x, its areal density kept."""
    width = max(thickness, 40.0)
    return SceneObject(name, "structure", material, "box", x0, x0 + width, z0, z1, across * thickness / width)


def _wheel(x: float, r: float, tyres: int) -> list[SceneObject]:
    """Tyres, rim and hollow axle tube of one axle at x (mm)."""
    return [
        SceneObject(
            f"tyres@{x:.0f}",
            "structure",
            "organic",
            "disc",
            x - r,
            x + r,
            0.0,
            2 * r,
            290.0 * tyres,
            1.15,
            wall_mm=0.45 * r,
            open_ends=True,
        ),
        SceneObject(
            f"rims@{x:.0f}", "structure", "steel", "disc", x - 0.55 * r, x + 0.55 * r, 0.45 * r, 1.55 * r, 14.0 * tyres
        ),
        SceneObject(
            f"axle@{x:.0f}",
            "structure",
            "steel",
            "disc",
            x - 60.0,
            x + 60.0,
            r - 60.0,
            r + 60.0,
            1900.0,
            wall_mm=15.0,
            open_ends=True,
        ),
    ]


def vehicle_structure(vehicle: Mapping[str, Any]) -> list[SceneObject]:
    """The vehicle itself from the passage truth's ``vehicle``: cab, chassis, wheels and load space."""
    kind = vehicle["type"]
    body = BODIES[kind]
    length = 1000.0 * vehicle["length_m"]
    cab = 1000.0 * vehicle["cab_m"]
    start = cab + 1000.0 * vehicle["gap_m"]
    cz0, cz1 = body.cab_z
    r = body.tyre_r
    objs = [
        SceneObject("cab shell", "structure", "steel", "box", 0.0, cab, cz0, cz1, 3.0),
        _edge_on("cab floor", "steel", 0.0, cab, cz0, 4.0, 2200.0),
        _edge_on("cab roof", "steel", 0.0, cab, cz1 - 10.0, 2.0, 2200.0),
        SceneObject(
            "engine", "structure", "steel", "box", 150.0, min(1100.0, 0.45 * cab), cz0 - 300.0, cz0 + 500.0, 220.0
        ),
        SceneObject(
            "seats and dashboard", "structure", "organic", "box", 0.35 * cab, 0.95 * cab, cz0, cz0 + 900.0, 1600.0, 0.12
        ),
        SceneObject(
            "driver", "person", "organic", "disc", 0.55 * cab, 0.55 * cab + 380.0, cz0 + 350.0, cz0 + 1250.0, 300.0
        ),
        SceneObject("chassis rails", "structure", "steel", "box", 0.0, length, body.deck_z - 250.0, body.deck_z, 18.0),
    ]
    if kind != "van":
        objs += [
            SceneObject(
                "fuel tank",
                "structure",
                "organic",
                "hcyl",
                0.5 * cab,
                0.5 * cab + 700.0,
                body.deck_z - 800.0,
                body.deck_z - 250.0,
                0.0,
                0.84,
            ),
        ]
    # The load space.
    inner_top = body.roof_z - 20.0
    wall_mat, wall_mm = body.wall
    floor_mat, floor_mm, floor_rho = body.floor
    end_mat, end_mm = body.end_wall
    objs += [
        SceneObject("side walls", "structure", wall_mat, "box", start, length, body.deck_z, body.roof_z, wall_mm),
        _edge_on("floor", floor_mat, start, length, body.deck_z, floor_mm, body.width_mm, floor_rho),
        _edge_on("roof", wall_mat, start, length, inner_top, 2.0, body.width_mm),
        _across("front wall", end_mat, start, body.deck_z, body.roof_z, end_mm, body.width_mm),
        _across("rear doors", end_mat, length - 40.0, body.deck_z, body.roof_z, 2 * end_mm, body.width_mm),
    ]
    if kind == "tractor-trailer":
        objs += [
            SceneObject(
                "front corner posts", "structure", "steel", "box", start, start + 150.0, body.deck_z, body.roof_z, 24.0
            ),
            SceneObject(
                "door frame", "structure", "steel", "box", length - 150.0, length, body.deck_z, body.roof_z, 60.0
            ),
            SceneObject(
                "cross members", "structure", "steel", "box", start, length, body.deck_z - 120.0, body.deck_z, 36.0
            ),
        ]
        axles = [(1200.0, 2), (cab + 400.0, 4), (cab + 1700.0, 4)]
        axles += [(length - 1000.0 - 1300.0 * i, 4) for i in range(3 if length - start > 9000.0 else 2)]
    elif kind == "box-truck":
        axles = [(1000.0, 2), (length - 1600.0, 4)]
    else:
        axles = [(800.0, 2), (length - 900.0, 2)]
    for x, tyres in axles:
        objs += _wheel(x, r, tyres)
    return objs


# ---------------------------------------------------------------------------------------------
# Cargo
_MIXED_DENSITY = {"empty": (0.0, 0.005), "organic": (0.05, 0.20), "metal": (0.03, 0.12)}
"""Effective density ranges (g/cm^3) of mixed-load segments, as the radiation physics draws them."""


def _stacks(
    rng: np.random.Generator, x0: float, x1: float, length: tuple[float, float], gap: tuple[float, float]
) -> list[tuple[float, float]]:
    """Consecutive (start, end) mm of items of the given length range with gaps between them."""
    out = []
    pos = x0 + rng.uniform(*gap)
    while pos < x1 - 300.0:
        end = min(pos + rng.uniform(*length), x1)
        out.append((pos, end))
        pos = end + rng.uniform(*gap)
    return out


def _fill(
    rng: np.random.Generator,
    kind: str,
    density: float,
    x0: float,
    x1: float,
    body: _Body,
) -> list[SceneObject]:
    """The load of one section [x0, x1] (mm) of the load space, ``density`` its effective density (g/cm^3)."""
    floor = body.deck_z + max(body.floor[1], 10.0)
    height = body.roof_z - 20.0 - floor
    width = body.width_mm
    mass = density * (x1 - x0) * height * width  # g/cm^3 * mm^3, only ratios matter
    objs: list[SceneObject] = []
    if x1 - x0 < 400.0:
        return objs
    if kind == "empty":
        if rng.random() < 0.5:
            for a, b in _stacks(rng, x0, x1, (1000.0, 1200.0), (800.0, 3000.0)):
                objs.append(
                    SceneObject(
                        "empty pallet", "cargo", "organic", "box", a, b, floor, floor + 150.0, width * 0.5, 0.35
                    )
                )
        return objs
    if kind == "metal":
        n = max(1, round((x1 - x0) / 2500.0 * rng.uniform(0.7, 1.3)))
        bounds = np.linspace(x0, x1, n + 1)
        for i, share in enumerate(rng.dirichlet(np.full(n, 4.0))):
            slot = bounds[i + 1] - bounds[i]
            ln = min(slot - 100.0, rng.uniform(1000.0, 2200.0))
            a = bounds[i] + rng.uniform(50.0, max(50.0, slot - ln - 50.0))
            h = rng.uniform(0.3, 0.75) * height
            steel_mm = share * mass / (ln * h * MATERIALS["steel"].density_g_cm3)  # mean path in solid steel
            core_l, core_h = 0.5 * ln, 0.5 * h
            ca = a + rng.uniform(0.0, ln - core_l)
            objs.append(
                SceneObject(
                    f"machine {i + 1} frame", "cargo", "steel", "box", a, a + ln, floor, floor + h, 0.4 * steel_mm
                )
            )
            objs.append(
                SceneObject(
                    f"machine {i + 1} core",
                    "cargo",
                    "steel",
                    "box",
                    ca,
                    ca + core_l,
                    floor,
                    floor + core_h,
                    0.6 * steel_mm * 4.0,
                )
            )
        return objs
    spec = {
        "organic": ("pallet of goods", "organic", (1000.0, 1250.0), (30.0, 150.0), (0.55, 0.95)),
        "fertilizer": ("bulk bag", "inorganic", (950.0, 1150.0), (50.0, 200.0), (0.40, 0.55)),
        "ceramics": ("pallet of tiles", "inorganic", (1000.0, 1250.0), (80.0, 200.0), (0.30, 0.50)),
    }
    name, material, length, gap, fill = spec[kind]
    items = _stacks(rng, x0, x1, length, gap)
    heights = rng.uniform(*fill, size=len(items)) * height
    weights = rng.uniform(0.8, 1.2, size=len(items))
    volume = sum((b - a) * h * w for (a, b), h, w in zip(items, heights, weights, strict=True)) * width
    for (a, b), h, w in zip(items, heights, weights, strict=True):
        rho = density * (x1 - x0) * height * width / max(volume, 1.0) * w
        objs.append(SceneObject(name, "cargo", material, "box", a, b, floor, floor + h, width, rho))
    return objs


def cargo_objects(rng: np.random.Generator, truth: Mapping[str, Any]) -> list[SceneObject]:
    """The load from the passage truth's ``cargo`` (type, effective density, mixed segments)."""
    vehicle, cargo = truth["vehicle"], truth["cargo"]
    body = BODIES[vehicle["type"]]
    start = 1000.0 * (vehicle["cab_m"] + vehicle["gap_m"]) + 60.0
    end = 1000.0 * vehicle["length_m"] - 60.0
    if cargo["type"] != "mixed":
        return _fill(rng, cargo["type"], cargo["density_g_cm3"], start, end, body)
    objs = []
    for s, e, kind in cargo["segments"]:
        lo, hi = _MIXED_DENSITY[kind]
        objs += _fill(rng, kind, rng.uniform(lo, hi), max(start, 1000.0 * s), min(end, 1000.0 * e), body)
    return objs


# ---------------------------------------------------------------------------------------------
# Sources, shields and look-alikes
SHIELD_CAVITY_MM = 60.0
_SNM = {"heu": ("uranium", (2000.0, 12000.0)), "pu": ("plutonium", (1000.0, 4000.0))}
"""Metal special nuclear material: material and mass range (g)."""


def source_objects(rng: np.random.Generator, truth: Mapping[str, Any]) -> list[SceneObject]:
    """What can be seen of the truth's point sources: shields, SNM metal, capsules."""
    body = BODIES[truth["vehicle"]["type"]]
    objs = []
    for i, src in enumerate(truth["sources"]):
        if "height_m" not in src or "extent_m" in src:
            continue  # distributed NORM is the load itself
        x, z = 1000.0 * src["position_m"], 1000.0 * src["height_m"]
        shielding = src.get("shielding") or {}
        if src["type"] in _SNM:
            material, (lo, hi) = _SNM[src["type"]]
            mass = math.exp(rng.uniform(math.log(lo), math.log(hi)))
            radius = 10.0 * (3.0 * mass / (4.0 * math.pi * MATERIALS[material].density_g_cm3)) ** (1 / 3)
            objs.append(
                SceneObject(
                    f"{src['type']} metal",
                    "source",
                    material,
                    "sphere",
                    x - radius,
                    x + radius,
                    z - radius,
                    z + radius,
                    source=i,
                )
            )
        elif shielding.get("material") in ("lead", "steel"):
            wall = 10.0 * shielding["thickness_cm"]
            half = 0.5 * SHIELD_CAVITY_MM + wall
            z = float(np.clip(z, body.deck_z + half + 30.0, body.roof_z - half - 30.0))
            objs.append(
                SceneObject(
                    f"{shielding['material']} shield",
                    "shield",
                    shielding["material"],
                    "vcyl",
                    x - half,
                    x + half,
                    z - half,
                    z + half,
                    wall_mm=wall,
                    source=i,
                )
            )
        if src["type"] in ("cs137", "co60"):
            objs.append(
                SceneObject(
                    f"{src['type']} capsule", "source", "steel", "vcyl", x - 5.0, x + 5.0, z - 15.0, z + 15.0, source=i
                )
            )
    return objs


def _look_alike(rng: np.random.Generator, x: float, floor: float) -> list[SceneObject]:
    kind = rng.choice(
        ["steel coil", "engine block", "batteries", "lead bricks", "tungsten bars"], p=[0.35, 0.30, 0.15, 0.10, 0.10]
    )
    if kind == "steel coil":
        r = rng.uniform(550.0, 900.0)
        return [
            SceneObject(
                "steel coil",
                "benign_dense",
                "steel",
                "vcyl",
                x,
                x + 2 * r,
                floor,
                floor + rng.uniform(900.0, 1500.0),
                wall_mm=r - rng.uniform(230.0, 320.0),
                open_ends=True,
            )
        ]
    if kind == "engine block":
        return [
            SceneObject(
                "engine block",
                "benign_dense",
                "steel",
                "box",
                x,
                x + rng.uniform(550.0, 800.0),
                floor,
                floor + rng.uniform(450.0, 650.0),
                rng.uniform(120.0, 260.0),
            )
        ]
    if kind == "batteries":
        length, h = rng.uniform(1000.0, 1200.0), rng.uniform(700.0, 1000.0)
        return [
            SceneObject(
                "lead-acid batteries",
                "benign_dense",
                "lead",
                "box",
                x,
                x + length,
                floor,
                floor + h,
                1000.0,
                rng.uniform(1.2, 1.8),
            ),
            SceneObject(
                "battery cases and acid", "benign_dense", "organic", "box", x, x + length, floor, floor + h, 1000.0, 0.9
            ),
        ]
    if kind == "lead bricks":
        return [
            SceneObject(
                "lead bricks",
                "benign_dense",
                "lead",
                "box",
                x,
                x + rng.uniform(200.0, 450.0),
                floor,
                floor + rng.uniform(100.0, 300.0),
                rng.uniform(100.0, 300.0),
            )
        ]
    return [
        SceneObject(
            "tungsten bars",
            "benign_dense",
            "tungsten",
            "box",
            x,
            x + rng.uniform(300.0, 600.0),
            floor,
            floor + rng.uniform(50.0, 120.0),
            rng.uniform(60.0, 200.0),
        )
    ]


def look_alikes(rng: np.random.Generator, truth: Mapping[str, Any], rate: float = 0.2) -> list[SceneObject]:
    """Benign dense objects in a freight load: one with probability ``rate``, a second sometimes."""
    vehicle = truth["vehicle"]
    if vehicle["type"] == "van":
        return []
    body = BODIES[vehicle["type"]]
    start = 1000.0 * (vehicle["cab_m"] + vehicle["gap_m"]) + 100.0
    end = 1000.0 * vehicle["length_m"] - 2000.0
    floor = body.deck_z + max(body.floor[1], 10.0)
    objs: list[SceneObject] = []
    while end > start and rng.random() < (rate if not objs else 0.25 * rate):
        objs += _look_alike(rng, rng.uniform(start, end), floor)
    return objs


def scene(rng: np.random.Generator, truth: Mapping[str, Any], look_alike_rate: float = 0.2) -> list[SceneObject]:
    """Every object of one passage, from its truth: vehicle, load, sources, look-alikes."""
    return [
        *vehicle_structure(truth["vehicle"]),
        *cargo_objects(rng, truth),
        *source_objects(rng, truth),
        *look_alikes(rng, truth, look_alike_rate),
    ]


# ---------------------------------------------------------------------------------------------
# Detector and scans
@dataclass(frozen=True)
class Detector:
    """A scanner's fixed pattern: dark offset and open-beam level per energy and pixel (ADU)."""

    dark: np.ndarray
    """(energies, pixels) float32 ADU."""
    air: np.ndarray
    """(energies, pixels) float32 ADU: the reading above dark with nothing in the beam."""

    @classmethod
    def make(cls, rng: np.random.Generator, pixels: int) -> Detector:
        """Offsets 600-1000 ADU, gains 1 +- 3 %, beam 25 % weaker at the fan edges than in its centre."""
        u = np.linspace(-1.0, 1.0, pixels)
        profile = 1.0 - 0.25 * u * u
        dark = np.repeat(rng.uniform(600.0, 1000.0, (1, pixels)), len(ENERGIES_MV), axis=0)
        gain = 1.0 + 0.03 * rng.standard_normal((len(ENERGIES_MV), pixels))
        air = np.asarray(AIR_ADU)[:, None] * profile[None, :] * gain
        return cls(dark.astype(np.float32), air.astype(np.float32))

    def read(self, rng: np.random.Generator, transmission: np.ndarray, beam: bool = True) -> np.ndarray:
        """Readings (lines, energies, pixels) uint16 for transmissions of that shape (overwritten)."""
        signal_adu = transmission
        if beam:
            pulse = 1.0 + PULSE_JITTER * rng.standard_normal(len(signal_adu), dtype=np.float32)
            signal_adu *= self.air[None, :, :]
            signal_adu *= pulse[:, None, None]
        else:
            signal_adu[:] = 0.0
        sigma = np.sqrt(signal_adu * ADU_PER_QUANTUM + ELECTRONIC_NOISE_ADU**2)
        sigma *= rng.standard_normal(signal_adu.shape, dtype=np.float32)
        signal_adu += sigma
        signal_adu += self.dark[None, :, :]
        np.rint(signal_adu, out=signal_adu)
        np.clip(signal_adu, 0.0, 65535.0, out=signal_adu)
        return signal_adu.astype(np.uint16)


@dataclass
class XrayScan:
    """One scan: calibration lines, image lines and encoder readings, and its truth."""

    scan_id: int
    lane: str
    dark: np.ndarray
    """(CALIBRATION_LINES, energies, pixels) uint16: beam off."""
    air: np.ndarray
    """(CALIBRATION_LINES, energies, pixels) uint16: beam on, nothing in it."""
    image: np.ndarray
    """(lines, energies, pixels) uint16: energy 0 is 6 MV, pixel 0 the top."""
    encoder_mm: np.ndarray
    """(lines,) vehicle travel since the scan started (mm)."""
    truth: dict[str, Any]
    line_rate_hz: float = LINE_RATE_HZ

    @property
    def frame_count(self) -> int:
        return len(self.dark) + len(self.air) + len(self.image)

    def frame_offsets_s(self) -> np.ndarray:
        """Time (s) of each frame relative to image line 0: calibration lines come just before it."""
        return (np.arange(self.frame_count) - len(self.dark) - len(self.air)) / self.line_rate_hz

    def frames(self, t0_ns: int = 0, time_scale: float = 1.0) -> Iterator[bytes]:
        """The scan's LWXR frames in order; image line 0 is stamped ``t0_ns``, the others a line period
        (divided by ``time_scale``, for a simulator running faster than real time) apart."""
        t_ns = t0_ns + np.round(self.frame_offsets_s() / time_scale * 1e9).astype(np.int64)
        last = self.frame_count - 1
        lines = [(d, DARK, 0, 0.0) for d in self.dark] + [(a, AIR, 0, 0.0) for a in self.air]
        lines += [(img, 0, i, float(e)) for i, (img, e) in enumerate(zip(self.image, self.encoder_mm, strict=True))]
        for j, (data, flags, line, encoder) in enumerate(lines):
            flags |= (SCAN_START if j == 0 else 0) | (SCAN_END if j == last else 0)
            yield pack_frame(
                data,
                lane=self.lane,
                scan_id=self.scan_id,
                line=line,
                t_ns=int(t_ns[j]),
                encoder_mm=encoder,
                flags=flags,
            )


def _object_truth(obj: SceneObject, xv: np.ndarray, zr: np.ndarray, front: float) -> dict[str, Any]:
    lines = np.nonzero((xv >= obj.x0) & (xv <= obj.x1))[0]
    rows = np.nonzero((zr >= obj.z0) & (zr <= obj.z1))[0]
    path = obj.max_path_mm()
    return {
        "name": obj.name,
        "role": obj.role,
        "material": obj.material,
        "class": MATERIALS[obj.material].klass,
        "x_mm": [round(obj.x0, 1), round(obj.x1, 1)],
        "z_mm": [round(obj.z0, 1), round(obj.z1, 1)],
        "encoder_mm": [round(front + obj.x0, 1), round(front + obj.x1, 1)],
        "lines": [int(lines[0]), int(lines[-1]) + 1] if lines.size else None,
        "pixels": [int(rows[0]), int(rows[-1]) + 1] if rows.size else None,
        "path_mm": round(path, 1),
        "areal_g_cm2": round(path / 10.0 * obj.density, 2),
        "source": obj.source,
    }


class XrayScanner:
    """Renders passages into scans: a fixed detector (from ``seed``) and pure, seeded scans.

    ``scan(passage)`` depends only on the seed, the options and the passage, never on earlier
    calls, so a scan can be made again exactly.
    """

    def __init__(self, seed: int = 0, pixels: int = 1024, lane: str = "", look_alike_rate: float = 0.2) -> None:
        if not 16 <= pixels <= 4096:
            raise ValueError(f"pixels must be 16-4096, got {pixels}")
        self.seed = seed
        self.pixels = pixels
        self.lane = lane
        self.look_alike_rate = look_alike_rate
        self.pitch_mm = DETECTOR_HEIGHT_MM / pixels
        self.z_mm = ((pixels - np.arange(pixels) - 0.5) * self.pitch_mm).astype(np.float64)
        """Height (mm) of each pixel's centre."""
        self.detector = Detector.make(np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(12,))), pixels)
        self._mu = {
            name: np.array([m.mu_high, m.mu_low], np.float32) / 10.0 for name, m in MATERIALS.items()
        }  # per mm at 1 g/cm^3

    def scan(self, passage: Passage, scan_id: int | None = None) -> XrayScan:
        """The scan of one passage (``scan_id`` defaults to the occupancy index + 1)."""
        truth = passage.truth
        index = int(truth["index"])
        scene_rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(10, index)))
        noise_rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(11, index)))
        objects = scene(scene_rng, truth, self.look_alike_rate)
        speed_mm_s = truth["speed_kmh"] / 3.6 * 1000.0
        spacing = speed_mm_s / LINE_RATE_HZ
        length = 1000.0 * truth["length_m"]
        n = math.ceil((length + 2 * LEAD_MM) / spacing) + 1
        encoder = np.round(np.arange(n) * spacing, 2)
        xv = encoder - LEAD_MM  # position on the vehicle (mm behind the front) under the beam, per line
        image = np.empty((n, len(ENERGIES_MV), self.pixels), np.uint16)
        for a in range(0, n, CHUNK_LINES):
            b = min(n, a + CHUNK_LINES)
            image[a:b] = self.detector.read(noise_rng, self._transmission(objects, xv[a:b]))
        shape = (CALIBRATION_LINES, len(ENERGIES_MV), self.pixels)
        dark = self.detector.read(noise_rng, np.ones(shape, np.float32), beam=False)
        air = self.detector.read(noise_rng, np.ones(shape, np.float32))
        scan_id = index + 1 if scan_id is None else scan_id
        scan_truth = {
            "scan_id": scan_id,
            "occupancy_index": index,
            "lines": n,
            "pixels": self.pixels,
            "energies_mv": list(ENERGIES_MV),
            "line_rate_hz": LINE_RATE_HZ,
            "pixel_pitch_mm": round(self.pitch_mm, 4),
            "line_spacing_mm": round(spacing, 4),
            "front_encoder_mm": LEAD_MM,
            "speed_kmh": truth["speed_kmh"],
            "passage": truth,
            "objects": [_object_truth(o, xv, self.z_mm, LEAD_MM) for o in objects],
        }
        return XrayScan(scan_id, self.lane, dark, air, image, encoder, scan_truth)

    def _transmission(self, objects: list[SceneObject], xv: np.ndarray) -> np.ndarray:
        """(lines, energies, pixels) float32 transmission of the lines at vehicle positions ``xv`` (mm)."""
        att = np.zeros((len(xv), len(ENERGIES_MV), self.pixels), np.float32)
        z = self.z_mm
        for obj in objects:
            cols = np.nonzero((xv >= obj.x0) & (xv <= obj.x1))[0]
            rows = np.nonzero((z >= obj.z0) & (z <= obj.z1))[0]
            if not cols.size or not rows.size:
                continue
            c0, c1, r0, r1 = cols[0], cols[-1] + 1, rows[0], rows[-1] + 1
            path = obj.path(xv[c0:c1], z[r0:r1])
            k = self._mu[obj.material] * np.float32(obj.density)
            att[c0:c1, :, r0:r1] += path[:, None, :] * k[None, :, None]
        np.negative(att, out=att)
        return np.exp(att, out=att)


# ---------------------------------------------------------------------------------------------
# Serving
PACE_S = 0.01
"""Lines are sent in bursts at most this late (s of wall time) after they were acquired."""
MAX_SEND_FRAMES = 512
"""Most frames joined into one send (bounds memory when running as fast as the clients read)."""


class XraySimulator(StreamingDevice):
    """A simulated scanner on a lane, serving LWXR frames to every TCP client, paced in real time.

    The timeline follows :class:`lanewatch.drivers.sim.lane.LaneSimulator` with the same ``seed``, ``mix``,
    ``gap_s`` and ``speedup``: after each gap the next passage's scan starts when its occupancy
    starts, its calibration lines just before. ``speedup`` compresses time (``math.inf``: as fast
    as the clients read); ``count`` stops after that many scans; ``truth_path`` gets one JSON line
    per scan (:attr:`XrayScan.truth` plus ``start``/``end`` wall clock, ISO 8601 UTC).
    """

    thread_name = "xray-sim"

    def __init__(
        self,
        seed: int = 0,
        mix: Mapping[str, float] | None = None,
        gap_s: float = 4.0,
        speedup: float = 1.0,
        count: int | None = None,
        truth_path: str | os.PathLike[str] | None = None,
        *,
        pixels: int = 1024,
        lane: str = "",
        look_alike_rate: float = 0.2,
    ) -> None:
        if not speedup > 0 or gap_s < 0 or (count is not None and count < 0):
            raise ValueError("speedup must be positive, gap_s and count non-negative")
        self.seed = seed
        self.traffic = Traffic(seed, None, mix)
        self.scanner = XrayScanner(seed, pixels, lane, look_alike_rate)
        self.gap_s = float(gap_s)
        self.speedup = float(speedup)
        self.count = count
        self.truth_path = Path(truth_path) if truth_path is not None else None
        self.scans_sent = 0
        """Scans whose last frame has been sent."""
        self.truths: list[dict[str, Any]] = []
        """Truth of every scan sent, in order."""
        super().__init__()
        self._tcp = TcpFanout(f"X-ray simulator (seed {seed})")
        self._done = threading.Event()

    def scan(self, passage: Passage) -> XrayScan:
        """The scan of ``passage`` (pure: same seed and passage, same scan)."""
        return self.scanner.scan(passage)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until ``count`` scans were sent; False on timeout or when stopped first."""
        return self._done.wait(timeout)

    def _sleep_until(self, t0: float, t_sim: float) -> bool:
        """Wait until simulated time ``t_sim`` (s); False when stopped."""
        if math.isfinite(self.speedup):
            delay = t0 + t_sim / self.speedup - time.monotonic()
            if delay > 0:
                return not self._stop.wait(delay)
        return not self._stop.is_set()

    def _run(self) -> None:
        truth_file: TextIO | None = None
        t0 = time.monotonic()
        wall0_ns = time.time_ns()
        t_sim = 0.0
        try:
            if self.truth_path is not None:
                truth_file = self.truth_path.open("a", encoding="utf-8")
            while self.count is None or self.scans_sent < self.count:
                passage = self.traffic.next_passage()
                scan = self.scan(passage)
                t_sim += self.gap_s
                if not self._send_scan(scan, t0, wall0_ns, t_sim, truth_file):
                    return
                t_sim += float(passage.truth["duration_s"])
            self._done.set()
        finally:
            if truth_file is not None:
                truth_file.close()

    def _send_scan(self, scan: XrayScan, t0: float, wall0_ns: int, t_sim: float, truth_file: TextIO | None) -> bool:
        """Send one scan's frames paced at the line rate from simulated time ``t_sim``; False when stopped."""
        scale = self.speedup if math.isfinite(self.speedup) else 1.0
        due = t_sim + scan.frame_offsets_s()
        start = datetime.now(UTC).isoformat(timespec="milliseconds")
        frames = scan.frames(wall0_ns + round(t_sim / scale * 1e9), scale)
        j = 0
        while j < scan.frame_count:
            if not self._sleep_until(t0, due[j] + PACE_S * scale):
                return False
            now_sim = (time.monotonic() - t0) * self.speedup
            k = int(np.searchsorted(due, now_sim, side="right")) if math.isfinite(self.speedup) else scan.frame_count
            k = min(max(k, j + 1), j + MAX_SEND_FRAMES)
            self._tcp.broadcast(b"".join(next(frames) for _ in range(j, k)))
            j = k
        record = {**scan.truth, "start": start, "end": datetime.now(UTC).isoformat(timespec="milliseconds")}
        self.truths.append(record)
        if truth_file is not None:
            truth_file.write(json.dumps(record) + "\n")
            truth_file.flush()
        self.scans_sent += 1
        return True


# --- command line --------------------------------------------------------------------------
DEFAULT_PORT = 7800


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lanewatch sim xray``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"TCP port of the first lane (default {DEFAULT_PORT})"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the first lane; use the lane simulator's (default 0)"
    )
    parser.add_argument("--mix", type=parse_mix, default=None, help="scenario weights, as for the lane simulator")
    parser.add_argument("--gap", type=float, default=4.0, help="seconds between vehicles (default 4)")
    parser.add_argument("--speedup", type=float, default=1.0, help="time compression, 1 = real time (default 1)")
    parser.add_argument("--count", type=int, default=None, help="stop after this many scans per lane")
    parser.add_argument("--truth", type=Path, default=None, help="JSON-lines ground truth file, one line per scan")
    parser.add_argument("--pixels", type=int, default=1024, help="detector pixels per line, 16-4096 (default 1024)")
    parser.add_argument("--lane-id", default="", help="lane id written into every frame (default: none)")
    parser.add_argument("--lanes", type=int, default=1, help="independent lanes on consecutive ports and seeds")


def run(args: argparse.Namespace) -> int:
    """Serve ``args.lanes`` simulated scanners until ``--count`` scans were sent, or SIGINT/SIGTERM."""
    if args.lanes < 1 or (args.count is not None and args.count < 0) or not args.speedup > 0:
        print("lanewatch sim xray: --lanes must be >= 1, --count >= 0 and --speedup > 0")
        return 2
    sims: list[XraySimulator] = []
    try:
        for lane in range(args.lanes):
            sim = XraySimulator(
                seed=args.seed + lane,
                mix=args.mix,
                gap_s=args.gap,
                speedup=args.speedup,
                count=args.count,
                truth_path=truth_path_for(args.truth, lane, args.lanes),
                pixels=args.pixels,
                lane=args.lane_id,
            )
            sims.append(sim)
            port = sim.serve_tcp(args.host, args.port + lane if args.port else 0)
            truth = f", truth {sim.truth_path}" if sim.truth_path else ""
            print(f"lane {lane}: {args.host}:{port} (seed {sim.seed}{truth})", flush=True)
    except (OSError, ValueError) as exc:
        print(f"lanewatch sim xray: {exc}")
        for sim in sims:
            sim.stop()
        return 1
    stop = threading.Event()
    previous: dict[int, Callable[..., Any] | int | None] = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    for sim in sims:
        sim.start()
    try:
        while not stop.is_set():
            if args.count is not None and all(sim.wait(timeout=0) for sim in sims):
                break
            stop.wait(0.1)
    finally:
        for sim in sims:
            sim.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0
