"""The lanewatch configuration: one TOML file, checked key by key.

Every key is a field of a :class:`msgspec.Struct` below, with its type, its range
(``msgspec.Meta``) and, in the docstring under it, its meaning and unit; the README and the
example configuration repeat those docstrings, and ``lanewatch schema config`` publishes them as a
JSON Schema. A wrong key or value raises :class:`ConfigError` naming the file, the key path (e.g.
``lanes[1].gamma_channels``) and what was expected, before anything is created or bound.
"""

from __future__ import annotations

import ipaddress
import itertools
import math
import re
import tomllib
import zoneinfo
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names file, key and expectation."""


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A TOML table: every key known, every value checked."""


Seconds = Annotated[float, Meta(gt=0, le=86400)]
"""A duration (s), more than 0 and at most a day."""
Wait = Annotated[float, Meta(ge=0, le=86400)]
"""A duration (s) that may be 0, at most a day."""
Probability = Annotated[float, Meta(gt=0, lt=1)]
Fraction = Annotated[float, Meta(ge=0, le=1)]
Score = Annotated[float, Meta(ge=0, le=1000)]
"""An anomaly score: -log10 of a fraction, so 0 and up."""
Channels = Annotated[int, Meta(ge=1, le=256)]


class ServiceConfig(_Section):
    journal: Annotated[str, Meta(min_length=1)] = "lanewatch-journal.db"
    """Path of the SQLite alert journal (created if missing)."""
    http: str = "127.0.0.1:9730"
    """host:port of the service's HTTP endpoint: /metrics (Prometheus) and /healthz."""
    stale_after_s: Seconds = 15.0
    """A sensor (RPM, X-ray) whose driver sent no data for this long (s) is reported stale by /healthz, and its lane."""
    clock_skew_s: Seconds = 5.0
    """A record stamped more than this (s) ahead of the service's clock is rejected (and counted, and the lane
    reported not ok): a driver's clock that runs ahead would otherwise make the lane's real samples look late."""
    max_record_age_s: Seconds = 300.0
    """A record stamped more than this (s) behind the service's clock is rejected the same way (a driver
    holds records while the service is away, so this bounds how long that may be, not the clock skew)."""
    rejected_health_s: Seconds = 10.0
    """A lane is reported not ok for this long (s) after one of its records was rejected."""


class BusConfig(_Section):
    ingest: str = "tcp://127.0.0.1:7600"
    """ZeroMQ endpoint the service binds (SUB) and drivers connect to (PUB)."""
    alerts: str = "tcp://127.0.0.1:7601"
    """ZeroMQ endpoint where the service publishes journaled decisions (PUB)."""
    query: str = "tcp://127.0.0.1:7602"
    """ZeroMQ endpoint where the journal answers queries for past decisions (ROUTER)."""
    keys: Annotated[str, Meta(min_length=1)] = "/etc/lanewatch/keys"
    """Directory of the CURVE keys made by `lanewatch keys` (public/ and secret/); under systemd, the keys a unit
    is given with LoadCredential= are found in its credentials directory first."""
    plaintext: bool = False
    """Carry the bus without CURVE authentication and encryption; accepted only when every endpoint is on the
    loopback interface (tcp://127.0.0.1, tcp://[::1], tcp://localhost) or an ipc:// path."""


class DetectionConfig(_Section):
    gamma_false_alarm_probability: Probability = 2e-4
    """False-alarm probability per occupancy for the gamma tests, all windows and templates together. With the neutron
    budget, 5e-4: half the target of one false alarm per 1000 vehicles, the other half a margin for a portal whose
    physics puts a test's null off. The split gives the gamma tests more than their former 1e-4 because they detect
    more per unit of budget (on the robustness benchmark, 1e-4 -> 3e-4 raised detection by 0.02, neutron 9e-4 -> 4e-4
    cost 0.003-0.007); not more, because it also sets how often NORM loads alarm."""
    neutron_false_alarm_probability: Probability = 3e-4
    """False-alarm probability per occupancy for the neutron tests together (counts alone, and combined with the
    gamma evidence); with the gamma budget, 5e-4: half the target of one false alarm per 1000 vehicles."""
    baseline_n_sigma: Annotated[float, Meta(gt=0, le=100)] = 5.0
    """n of the fielded rule: alarm when the 1 s gross count exceeds BG + n*sqrt(BG)."""
    baseline_neutron_threshold: Annotated[int, Meta(ge=0, le=1_000_000)] = 12
    """Fielded neutron rule: alarm when one neutron sample (4 tubes summed) exceeds its background by more than this."""
    energy_windows_kev: list[Annotated[float, Meta(ge=0, le=100_000)]] = []
    """Energy window edges in keV (K+1 values for K windows); empty for gross counts (K = 1)."""
    source_standoff_m: Annotated[float, Meta(gt=0, le=100)] = 2.0
    """Distance (m) from the detector face to a source on the lane centre line; sets the filter width."""
    default_speed_kmh: Annotated[float, Meta(gt=0, le=200)] = 8.0
    """Speed assumed (km/h) until the device reports one."""
    norm_min_extent: Fraction = 0.0
    """Smallest fraction of the vehicle length over which an excess must spread to be NORM-consistent, besides being
    wider than a point source can be at the standoff and speed (a load explaining it clearly better than any point
    source); 0: that alone, so short loads (a pallet of fertilizer, a few metres of tiles) can be NORM-consistent."""
    norm_verdict: Literal["release", "alarm"] = "release"
    """What a NORM-consistent excess (spread along the vehicle wider than a point source can be, no point source on
    top of it, and harder than background where energy windows tell) does to the verdict: "release" (its gamma
    entries do not alarm; the ``norm-consistent`` entry explains, with ``release_recommended`` when the model and the
    image agree) or "alarm" (the verdict stays ALARM and the ``norm-consistent`` entry stands beside the alarms as
    the officer's evidence)."""
    occupancy_hold_in_s: Wait = 0.0
    """Time (s) the portal keeps an occupancy open after the vehicle has left (its hold-in); 0 if unknown."""
    occupancy_timeout_s: Seconds = 120.0
    """An occupancy with no end-of-occupancy line after this long (s) ends with verdict INCOMPLETE."""
    sample_timeout_s: Seconds = 10.0
    """An occupancy whose samples stop for this long (s) ends with verdict INCOMPLETE."""
    background_halflife_s: Seconds = 60.0
    """Half-life (s) of the running background estimate while the lane is unoccupied."""
    device_alarm: Literal["alarm", "report"] = "alarm"
    """What the portal's own alarm (GA/NA lines) does to a decision: "alarm" makes the verdict ALARM whatever
    lanewatch's own tests say; "report" shows it as an entry that does not alarm."""


class FusionConfig(_Section):
    scan_wait_s: Wait = 5.0
    """At a lane with an X-ray scanner, longest wait (s) after an occupancy ends for its scan to end; then the
    decision is made with the part of the scan that arrived, or without one."""
    scan_timeout_s: Seconds = 120.0
    """A scan still open this long (s) after it started is closed incomplete (an occupancy that waited
    ``scan_wait_s`` for it cuts it sooner)."""
    match_tolerance_s: Wait = 2.0
    """A scan belongs to the occupancy whose time span, widened by this much (s) at both ends, it overlaps: a scan that
    starts later than the occupancy's end plus this is never its scan."""
    hotspot_z: Annotated[float, Meta(gt=0, le=1000)] = 3.0
    """Smallest matched-filter z at an image's high-Z object that makes a radiation hotspot there (below the alarm
    thresholds) a shielded source suspected."""
    colocation_sigma: Annotated[float, Meta(gt=0, le=100)] = 2.0
    """A radiation location and an image object are co-located within this many standard deviations of both."""
    shield_min_area_mm2: Annotated[float, Meta(ge=0, le=1e8)] = 2500.0
    """Smallest high-Z object (mm^2 as imaged) that could shield a source."""
    shield_min_lead_mm: Annotated[float, Meta(ge=0, le=1000)] = 8.0
    """Smallest lead-equivalent thickness (mm) of a high-Z object that could shield a source."""
    too_dark_fraction: Annotated[float, Meta(gt=0, le=1)] = 0.3
    """image-too-dark when at least this fraction of the vehicle's image lets too few photons through to see."""


LANE_ID = r"^[^/\s]+$"
"""A lane id: not empty, no '/' (it is part of bus topics) and no white space."""


class LaneConfig(_Section):
    id: Annotated[str, Meta(pattern=LANE_ID)]
    """Lane identifier, unique; used in topics, metrics labels and decisions."""
    rpm: str = ""
    """pyserial URL of the lane's portal monitor: /dev/ttyUSB0, socket://host:port, rfc2217://, loop://."""
    baudrate: Annotated[int, Meta(gt=0, le=10_000_000)] = 9600
    """Serial speed (baud) when ``rpm`` is a device path."""
    driver_http: str = ""
    """host:port where this lane's RPM driver serves /metrics and /healthz ("" for none)."""
    gamma_channels: Channels = 4
    """Gamma detector channels of the portal monitor."""
    neutron_channels: Channels = 4
    """Neutron detector channels of the portal monitor."""
    xray: str = ""
    """host:port of the lane's X-ray scanner line stream ("" for a lane without a scanner)."""
    xray_http: str = ""
    """host:port where this lane's X-ray driver serves /metrics and /healthz ("" for none); its ``--http`` default."""
    xray_detector_mm: Annotated[float, Meta(gt=0, le=100_000)] = 4600.0
    """Length (mm) of the X-ray scanner's detector column, top to bottom: the pixel pitch is this over the pixels."""


class ConsoleConfig(_Section):
    listen: str = "127.0.0.1:8443"
    """host:port where ``lanewatch console`` serves the operators' web console (HTTPS unless ``plain_http``)."""
    http: str = "127.0.0.1:9739"
    """host:port where the console serves /metrics (Prometheus) and /healthz, as every lanewatch process does
    ("" for none)."""
    certificate: str = "console-cert.pem"
    """PEM certificate of the console's HTTPS; a relative path is looked up in systemd's credentials directory
    when the console runs under systemd, else in the working directory. ``install-units`` creates a self-signed
    pair for the first start."""
    key: str = "console-key.pem"
    """PEM private key of ``certificate``; found like it."""
    plain_http: bool = False
    """Serve plain HTTP instead of HTTPS; refused unless ``listen`` is a loopback address."""
    users: Annotated[str, Meta(min_length=1)] = "lanewatch-console.db"
    """SQLite file of the console's users, sessions and audit log (created if missing), relative to the journal's
    folder."""
    timezone: str = "UTC"
    """The site's IANA time zone (e.g. Europe/Amsterdam): times are shown and date filters read in it."""
    idle_timeout_s: Seconds = 900.0
    """A session unused for this long (s) is closed; the next request asks to log in again. A lane wall open in a
    visible browser tab is in use (an alarm station's wall is watched, not clicked): it keeps its session open (a sign
    every third of this, at most every 60 s). A wall in a hidden tab or a minimised window does not; its live stream
    then ends with the session and it shows the login page. A form sent after its session ended is not recorded:
    after logging in the officer is back on the page it was sent from, which says so."""
    login_attempts: Annotated[int, Meta(ge=1, le=1000)] = 5
    """Failed logins allowed for a user name from one client address within ``login_window_s`` (then that name is
    refused from that address until the oldest failure is that old), and in a row for a user name from any address
    (then each further try waits a backoff doubling from 1 s up to ``login_window_s``). Other names and a right
    password after the wait are never refused."""
    login_window_s: Seconds = 300.0
    """Window (s) over which failed logins are counted, and the longest backoff (s)."""
    max_mute_s: Seconds = 300.0
    """How long (s) a user's mute lasts: it silences the alarms sounding when it was pressed, which sound again after
    it; an alarm journaled after it sounds at once. The user can unmute before."""
    page_size: Annotated[int, Meta(ge=1, le=500)] = 15
    """Rows per page of the event table."""
    adjudication_resync_s: Seconds = 5.0
    """Acts on decisions reach every console at once on the alert bus; the journal is also read this often (s) for
    any whose message was lost (the service was down, the console was reconnecting)."""


SHIPPED_MODEL = str(Path(__file__).resolve().parent.parent / "models" / "anomaly.onnx")
"""The anomaly model shipped with lanewatch (``models/anomaly.onnx`` beside the ``edge`` package)."""


class ModelConfig(_Section):
    path: str = SHIPPED_MODEL
    """ONNX anomaly model file scored on every decision (default: the shipped model; "" for none)."""
    finding_threshold: Score = 2.0
    """Anomaly score (-log10 of the fraction of the lane's ordinary vehicles as unusual) from which a decision has a
    finding."""
    alarm_threshold: Score = 0.0
    """Anomaly score from which a model-anomaly finding is an alarm (verdict ALARM); 0 for none: findings only."""
    release_threshold: Score = 2.0
    """A NORM-consistent finding is marked release recommended only when the anomaly score is below this."""
    state: Annotated[str, Meta(min_length=1)] = "lanewatch-model.db"
    """SQLite file (created if missing) where each lane's calibration window is kept across restarts, relative to
    the journal's folder."""
    calibration_window: Annotated[int, Meta(ge=100, le=100_000)] = 2000
    """Ordinary occupancies (complete, scored, not alarmed) a lane's calibration keeps, the most recent: the score
    of an occupancy is -log10 of the fraction of them whose model score is at least its own."""
    min_occupancies: Annotated[int, Meta(ge=20, le=100_000)] = 200
    """Ordinary occupancies a lane's calibration needs before its scores mean anything: until then decisions say
    the model is warming up, have no score and no finding (at most calibration_window)."""
    drift_ratio: Annotated[float, Meta(gt=1, le=100)] = 5.0
    """A lane's traffic has left the model's training domain (fault model-drift) when the share of its ordinary
    occupancies that the model scores 2 or more is at least this many times the 1 in 100 of its training traffic."""


class Config(_Section):
    """A lanewatch configuration file (TOML): the service, its buses, detection, fusion, the model, the operators'
    console and the lanes."""

    service: ServiceConfig = ServiceConfig()
    bus: BusConfig = BusConfig()
    detection: DetectionConfig = DetectionConfig()
    fusion: FusionConfig = FusionConfig()
    model: ModelConfig = ModelConfig()
    console: ConsoleConfig = ConsoleConfig()
    lanes: list[LaneConfig] = []
    source: str = "<defaults>"
    """Where this configuration came from (a path, or <defaults>); set by :func:`load`, not a key of the file."""

    def lane(self, lane_id: str) -> LaneConfig:
        for lane in self.lanes:
            if lane.id == lane_id:
                return lane
        raise ConfigError(f"{self.source}: no [[lanes]] entry with id = {lane_id!r}")

    @property
    def windows(self) -> int:
        """K, the number of energy windows per gamma channel."""
        return max(1, len(self.detection.energy_windows_kev) - 1)

    def require_lanes(self) -> None:
        """Raise :class:`ConfigError` unless at least one lane is configured (the service fuses lanes)."""
        if not self.lanes:
            raise ConfigError(f"{self.source}: lanes: expected at least one [[lanes]] table, the file has none")


NOT_KEYS = frozenset({"source"})
"""Fields of :class:`Config` that are not keys of the file."""

# ---- endpoints ----------------------------------------------------------------------------------
WILDCARD_HOSTS = frozenset({"", "*", "0.0.0.0", "::", "[::]"})
_LOOPBACK_NAMES = {"localhost": "127.0.0.1", "[::1]": "::1"}


def host_port(value: str) -> tuple[str, int]:
    """``(host, port)`` of ``host:port`` (IPv6 hosts in brackets); ValueError says what is wrong."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host or (":" in host and not host.startswith("[")):
        raise ValueError(f"expected host:port, got {value!r}")
    if not 0 <= int(port) <= 65535:
        raise ValueError(f"expected a port in 0..65535, got {value!r}")
    return host, int(port)


def zmq_endpoint(value: str) -> tuple[str, str, int]:
    """``(transport, host or path, port)`` of a ZeroMQ endpoint ``tcp://host:port``, ``ipc://path`` or
    ``inproc://name`` (port 0 when it has none); ValueError says what is wrong."""
    transport, sep, rest = value.partition("://")
    if sep and transport == "tcp":
        host, port = host_port(rest.replace(":*", ":0") if rest.endswith(":*") else rest)
        return transport, host, port
    if sep and transport in ("ipc", "inproc") and rest:
        return transport, rest, 0
    raise ValueError(f"expected tcp://host:port, ipc://path or inproc://name, got {value!r}")


def loopback(endpoint: str) -> bool:
    """True for a ZeroMQ endpoint only this computer can reach: ``ipc://``, ``inproc://``, or ``tcp://`` on a
    loopback address (``127.0.0.0/8``, ``::1``, ``localhost``)."""
    try:
        transport, host, _ = zmq_endpoint(endpoint)
    except ValueError:
        return False
    if transport != "tcp":
        return True
    host = _LOOPBACK_NAMES.get(host, host).strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _same_address(a: tuple[str, str, int], b: tuple[str, str, int]) -> bool:
    if a[0] != b[0]:
        return False
    if a[0] != "tcp":
        return a[1] == b[1]
    hosts = {_LOOPBACK_NAMES.get(a[1], a[1]), _LOOPBACK_NAMES.get(b[1], b[1])}
    return a[2] == b[2] != 0 and (len(hosts) == 1 or bool(hosts & WILDCARD_HOSTS))


def bound_addresses(cfg: Config) -> list[tuple[str, str]]:
    """``(key path, address)`` of every socket lanewatch binds as this configuration says."""
    bus = cfg.bus
    out = [("service.http", cfg.service.http), ("bus.ingest", bus.ingest), ("bus.alerts", bus.alerts)]
    out += [("bus.query", bus.query), ("console.listen", cfg.console.listen), ("console.http", cfg.console.http)]
    for i, lane in enumerate(cfg.lanes):
        out += [(f"lanes[{i}].driver_http", lane.driver_http), (f"lanes[{i}].xray_http", lane.xray_http)]
    return [(key, address) for key, address in out if address]


def _check_addresses(cfg: Config) -> None:
    seen: list[tuple[str, tuple[str, str, int]]] = []
    for key, address in bound_addresses(cfg):
        try:
            parsed = zmq_endpoint(address) if key.startswith("bus.") else ("tcp", *host_port(address))
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}") from None
        for other_key, other_parsed in seen:
            if _same_address(parsed, other_parsed):
                raise ConfigError(f"{key}: expected an address of its own, got {address!r}, which {other_key} binds")
        seen.append((key, parsed))
    for i, lane in enumerate(cfg.lanes):
        if lane.xray:
            try:
                host_port(lane.xray)
            except ValueError as exc:
                raise ConfigError(f"lanes[{i}].xray: {exc}") from None


# ---- checks -------------------------------------------------------------------------------------
_MSGSPEC_TYPES = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "array": "an array",
    "object": "a table",
}
_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_TOKEN = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


def _lookup(table: Any, path: str) -> tuple[Any, type | None]:
    """The raw value at a msgspec path (``.lanes[1].id``) and the Struct type holding it (None if not one)."""
    value: Any = table
    tp: Any = Config
    for name, index in _TOKEN.findall(path):
        if name:
            value = value.get(name) if isinstance(value, dict) else None
            fields = {f.name: f.type for f in msgspec.structs.fields(tp)} if isinstance(tp, type) else {}
            tp = fields.get(name)
        else:
            value = value[int(index)] if isinstance(value, list) and int(index) < len(value) else None
            tp = getattr(tp, "__args__", (None,))[0]
    return value, tp if isinstance(tp, type) and issubclass(tp, msgspec.Struct) else None


def _explain(exc: msgspec.ValidationError, table: dict[str, Any]) -> str:
    """``key.path: expected ..., got ...`` from a msgspec validation error."""
    match = _AT.match(str(exc))
    assert match is not None
    what, path = match["what"], match["path"] or ""
    if m := re.match(r"Object contains unknown field `(.*)`", what):
        _, holder = _lookup(table, path)
        known = sorted(f.name for f in msgspec.structs.fields(holder) if f.name not in NOT_KEYS) if holder else []
        return f"{path}.{m[1]}: unknown key (known: {', '.join(known)})".lstrip(".")
    if m := re.match(r"Object missing required field `(.*)`", what):
        return f"{path}.{m[1]}: required key is missing".lstrip(".")
    expected = re.sub(r"^Expected `(\w+)`", lambda t: "expected " + _MSGSPEC_TYPES.get(t[1], t[1]), what)
    expected = re.sub(r", got `\w+`$", "", expected)
    if "matching regex" in expected and re.fullmatch(r"\.lanes\[\d+\]\.id", path):  # LANE_ID, in words
        expected = "expected a non-empty id without '/' or spaces"
    value, _ = _lookup(table, path)
    return f"{path.lstrip('.')}: {expected}, got {value!r}"


def _check_finite(section: msgspec.Struct, where: str) -> None:
    for name in section.__struct_fields__:
        value = getattr(section, name)
        key = f"{where}.{name}".lstrip(".")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        if isinstance(value, msgspec.Struct):
            _check_finite(value, key)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, msgspec.Struct):
                    _check_finite(item, f"{key}[{i}]")


def _check(cfg: Config) -> None:
    _check_finite(cfg, "")
    ids = [lane.id for lane in cfg.lanes]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ConfigError(f"lanes[{ids.index(dup[0], ids.index(dup[0]) + 1)}].id: duplicate lane id {dup[0]!r}")
    edges = cfg.detection.energy_windows_kev
    if edges and (len(edges) < 3 or any(b <= a for a, b in itertools.pairwise(edges))):
        raise ConfigError(f"detection.energy_windows_kev: expected at least 3 increasing edges (keV), got {edges!r}")
    m = cfg.model
    if m.alarm_threshold and m.finding_threshold > m.alarm_threshold:
        raise ConfigError(
            f"model.finding_threshold: expected at most alarm_threshold ({m.alarm_threshold}), "
            f"got {m.finding_threshold}"
        )
    if m.min_occupancies > m.calibration_window:
        raise ConfigError(
            f"model.min_occupancies: expected at most calibration_window ({m.calibration_window}), "
            f"got {m.min_occupancies}"
        )
    _check_addresses(cfg)
    if cfg.bus.plaintext:
        for key in ("ingest", "alerts", "query"):
            if not loopback(getattr(cfg.bus, key)):
                raise ConfigError(
                    f"bus.{key}: plaintext = true is allowed only on loopback or ipc:// endpoints, got "
                    f"{getattr(cfg.bus, key)!r} (make keys with `lanewatch keys` instead)"
                )
    _check_console(cfg.console)


def _check_console(console: ConsoleConfig) -> None:
    if console.plain_http and not loopback(f"tcp://{console.listen}"):
        raise ConfigError(
            f"console.plain_http: plain HTTP is allowed only on a loopback address, but console.listen is "
            f"{console.listen!r}"
        )
    try:
        zoneinfo.ZoneInfo(console.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"console.timezone: expected an IANA time zone name such as Europe/Amsterdam, got {console.timezone!r}"
        ) from None


def parse(text: str, source: str = "<string>") -> Config:
    """Parse TOML text into a checked :class:`Config`."""
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    try:
        for key in sorted(NOT_KEYS & set(table)):
            raise ConfigError(f"{key}: unknown key (it is not read from the file)")
        try:
            cfg = msgspec.convert({**table, "source": source}, Config)
        except msgspec.ValidationError as exc:
            raise ConfigError(_explain(exc, table)) from None
        _check(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return cfg


def load(path: str | Path) -> Config:
    """Read and check a TOML configuration file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc.strerror}") from None
    return parse(text, str(path))
