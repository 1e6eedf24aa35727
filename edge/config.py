"""The lanewatch configuration: one TOML file, checked key by key.

Every key is a field below; its docstring is the reference the README repeats. A wrong
key or value raises :class:`ConfigError` naming the file, the key and what was expected.
"""

from __future__ import annotations

import dataclasses
import itertools
import tomllib
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names file, key and expectation."""


@dataclass(frozen=True)
class ServiceConfig:
    journal: str = "lanewatch-journal.db"
    """Path of the SQLite alert journal (created if missing)."""
    http: str = "127.0.0.1:9730"
    """host:port of the service's HTTP endpoint: /metrics (Prometheus) and /healthz."""
    stale_after_s: float = 15.0
    """A lane whose driver sent nothing for this long (s) is reported stale by /healthz."""


@dataclass(frozen=True)
class BusConfig:
    ingest: str = "tcp://127.0.0.1:7600"
    """ZeroMQ endpoint the service binds (SUB) and drivers connect to (PUB)."""
    alerts: str = "tcp://127.0.0.1:7601"
    """ZeroMQ endpoint where the service publishes journaled decisions (PUB)."""
    query: str = "tcp://127.0.0.1:7602"
    """ZeroMQ endpoint where the journal answers queries for past decisions (ROUTER)."""


@dataclass(frozen=True)
class DetectionConfig:
    gamma_false_alarm_probability: float = 1e-4
    """False-alarm probability per occupancy for the gamma tests, all windows and templates together."""
    neutron_false_alarm_probability: float = 9e-4
    """False-alarm probability per occupancy for the neutron tests together (counts alone, and combined with the
    gamma evidence); with the gamma budget, one false alarm per 1000 vehicles."""
    baseline_n_sigma: float = 5.0
    """n of the fielded rule: alarm when the 1 s gross count exceeds BG + n*sqrt(BG)."""
    baseline_neutron_threshold: int = 12
    """Fielded neutron rule: alarm when one neutron sample (4 tubes summed) exceeds its background by more than this."""
    energy_windows_kev: list[float] = field(default_factory=list)
    """Energy window edges in keV (K+1 values for K windows); empty for gross counts (K = 1)."""
    source_standoff_m: float = 2.0
    """Distance (m) from the detector face to a source on the lane centre line; sets the filter width."""
    default_speed_kmh: float = 8.0
    """Speed assumed (km/h) until the device reports one."""
    norm_min_extent: float = 0.5
    """Smallest fraction of the vehicle length over which an excess must spread to be NORM-consistent."""
    occupancy_hold_in_s: float = 0.0
    """Time (s) the portal keeps an occupancy open after the vehicle has left (its hold-in); 0 if unknown."""
    occupancy_timeout_s: float = 120.0
    """An occupancy with no end-of-occupancy line after this long (s) ends with verdict INCOMPLETE."""
    sample_timeout_s: float = 10.0
    """An occupancy whose samples stop for this long (s) ends with verdict INCOMPLETE."""
    background_halflife_s: float = 60.0
    """Half-life (s) of the running background estimate while the lane is unoccupied."""


@dataclass(frozen=True)
class FusionConfig:
    scan_wait_s: float = 5.0
    """At a lane with an X-ray scanner, longest wait (s) after an occupancy ends for its scan to end; then the
    decision is made with the part of the scan that arrived, or without one."""
    scan_timeout_s: float = 120.0
    """A scan still open this long (s) after it started is closed incomplete (an occupancy that waited
    ``scan_wait_s`` for it cuts it sooner)."""
    match_tolerance_s: float = 2.0
    """A scan belongs to the occupancy whose time span its own overlaps, both widened by this much (s)."""
    hotspot_z: float = 3.0
    """Smallest matched-filter z at an image's high-Z object that makes a radiation hotspot there (below the alarm
    thresholds) a shielded source suspected."""
    colocation_sigma: float = 2.0
    """A radiation location and an image object are co-located within this many standard deviations of both."""
    shield_min_area_mm2: float = 2500.0
    """Smallest high-Z object (mm^2 as imaged) that could shield a source."""
    shield_min_lead_mm: float = 8.0
    """Smallest lead-equivalent thickness (mm) of a high-Z object that could shield a source."""
    too_dark_fraction: float = 0.3
    """image-too-dark when at least this fraction of the vehicle's image lets too few photons through to see."""


@dataclass(frozen=True)
class LaneConfig:
    id: str
    """Lane identifier, unique; used in topics, metrics labels and decisions."""
    rpm: str = ""
    """pyserial URL of the lane's portal monitor: /dev/ttyUSB0, socket://host:port, rfc2217://, loop://."""
    baudrate: int = 9600
    """Serial speed (baud) when ``rpm`` is a device path."""
    driver_http: str = ""
    """host:port where this lane's RPM driver serves /metrics and /healthz ("" for none)."""
    gamma_channels: int = 4
    """Gamma detector channels of the portal monitor."""
    neutron_channels: int = 4
    """Neutron detector channels of the portal monitor."""
    xray: str = ""
    """host:port of the lane's X-ray scanner line stream ("" for a lane without a scanner)."""
    xray_http: str = ""
    """host:port where this lane's X-ray driver serves /metrics and /healthz ("" for none); its ``--http`` default."""
    xray_detector_mm: float = 4600.0
    """Length (mm) of the X-ray scanner's detector column, top to bottom: the pixel pitch is this over the pixels."""


SHIPPED_MODEL = str(Path(__file__).resolve().parent.parent / "models" / "anomaly.onnx")
"""The anomaly model shipped with lanewatch (``models/anomaly.onnx`` beside the ``edge`` package)."""


@dataclass(frozen=True)
class ModelConfig:
    path: str = SHIPPED_MODEL
    """ONNX anomaly model file scored on every decision (default: the shipped model; "" for none)."""
    finding_threshold: float = 2.0
    """Anomaly score (-log10 of the fraction of ordinary vehicles as unusual) from which a decision has a finding."""
    alarm_threshold: float = 0.0
    """Anomaly score from which a model-anomaly finding is an alarm (verdict ALARM); 0 for none: findings only."""
    release_threshold: float = 2.0
    """A NORM-consistent finding is marked release recommended only when the anomaly score is below this."""


@dataclass(frozen=True)
class Config:
    service: ServiceConfig = field(default_factory=ServiceConfig)
    bus: BusConfig = field(default_factory=BusConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lanes: list[LaneConfig] = field(default_factory=list)
    source: str = "<defaults>"
    """Where this configuration came from (a path, or <defaults>)."""

    def lane(self, lane_id: str) -> LaneConfig:
        for lane in self.lanes:
            if lane.id == lane_id:
                return lane
        raise ConfigError(f"{self.source}: no [[lanes]] entry with id = {lane_id!r}")

    @property
    def windows(self) -> int:
        """K, the number of energy windows per gamma channel."""
        return max(1, len(self.detection.energy_windows_kev) - 1)


def _type_name(tp: Any) -> str:
    if get_origin(tp) is list:
        return f"a list of {_type_name(get_args(tp)[0])}"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(tp, str(tp))


def _check_value(where: str, tp: Any, value: Any) -> Any:
    if get_origin(tp) is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        return [_check_value(f"{where}[{i}]", get_args(tp)[0], v) for i, v in enumerate(value)]
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp in (str, bool) and isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def _build(cls: type, table: Any, where: str) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table, got {table!r}")
    hints = get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")
    kwargs = {}
    for name, f in known.items():
        if name not in table:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{where}.{name}: required key is missing")
            continue
        tp = hints[name]
        if isinstance(tp, types.GenericAlias) and get_args(tp) and dataclasses.is_dataclass(get_args(tp)[0]):
            items = table[name]
            if not isinstance(items, list):
                raise ConfigError(f"{where}.{name}: expected an array of tables, got {items!r}")
            kwargs[name] = [_build(get_args(tp)[0], item, f"{where}.{name}[{i}]") for i, item in enumerate(items)]
        elif dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, table[name], f"{where}.{name}" if where else name)
        else:
            kwargs[name] = _check_value(f"{where}.{name}" if where else name, tp, table[name])
    return cls(**kwargs)


def parse(text: str, source: str = "<string>") -> Config:
    """Parse TOML text into a checked :class:`Config`."""
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    try:
        cfg = _build(Config, table, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {str(exc).lstrip('.')}") from None
    ids = [lane.id for lane in cfg.lanes]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ConfigError(f"{source}: lanes.id: duplicate lane id {dup[0]!r}")
    for i, lane in enumerate(cfg.lanes):
        if not lane.id or "/" in lane.id or any(c.isspace() for c in lane.id):
            raise ConfigError(
                f"{source}: lanes[{i}].id: expected a non-empty id without '/' or spaces, got {lane.id!r}"
            )
    edges = cfg.detection.energy_windows_kev
    if edges and (len(edges) < 3 or any(b <= a for a, b in itertools.pairwise(edges))):
        raise ConfigError(
            f"{source}: detection.energy_windows_kev: expected at least 3 increasing edges (keV), got {edges!r}"
        )
    if not 0 < cfg.detection.gamma_false_alarm_probability < 1:
        raise ConfigError(f"{source}: detection.gamma_false_alarm_probability: expected a number in (0, 1)")
    if not 0 < cfg.detection.neutron_false_alarm_probability < 1:
        raise ConfigError(f"{source}: detection.neutron_false_alarm_probability: expected a number in (0, 1)")
    m = cfg.model
    for key in ("finding_threshold", "alarm_threshold", "release_threshold"):
        if not 0 <= getattr(m, key) < float("inf"):
            raise ConfigError(f"{source}: model.{key}: expected a finite non-negative score, got {getattr(m, key)!r}")
    if m.alarm_threshold and m.finding_threshold > m.alarm_threshold:
        raise ConfigError(
            f"{source}: model.finding_threshold: expected at most alarm_threshold ({m.alarm_threshold}), "
            f"got {m.finding_threshold}"
        )
    return dataclasses.replace(cfg, source=source)


def load(path: str | Path) -> Config:
    """Read and check a TOML configuration file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc.strerror}") from None
    return parse(text, str(path))
