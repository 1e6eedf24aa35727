"""Level-triggered device state of a lane: what each of its drivers last said about its device link, and how old each
sensor's data is.

A driver publishes a ``STATUS`` record every :data:`~lanewatch.edge.bus.records.STATUS_INTERVAL_S`
(and a ``LINK`` record on each change). A source's link is what the newest of those says, as long
as they keep coming: a source heard from more than :data:`UNKNOWN_AFTER_S` ago makes the link
``unknown``, and one silent for the service's ``stale_after_s`` makes it ``stale``; a sensor whose
driver was never heard is ``unknown``. Only ``up`` is healthy.

A lane has sensors (:class:`Sensor`): its radiation portal monitor and, when it has one, its X-ray scanner; each
is read by its own driver (a source). Each sensor's link and the age of its data come from its own sources only,
so a dead portal driver is seen as such while the scanner's driver goes on talking. The portal sends lines all
the time (background while unoccupied), so its data is its samples: the driver's heartbeat does not count. The
scanner sends lines only while a vehicle passes, so its data is any word from its driver.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from lanewatch.edge.bus.records import STATUS_INTERVAL_S, Kind, LinkValues, Record, StatusValues

UNKNOWN_AFTER_S = 3 * STATUS_INTERVAL_S
"""A source whose last status or link record is older than this (s) leaves the link unknown."""


class LinkState(StrEnum):
    """A lane's device link as the service knows it; also the ``state`` label of ``lanewatch_lane_link_state``."""

    UP = "up"
    DOWN = "down"
    UNKNOWN = "unknown"
    STALE = "stale"

    @property
    def up(self) -> bool | None:
        """True when up, False when down, None while unknown or stale."""
        return True if self is LinkState.UP else False if self is LinkState.DOWN else None


_WORST_FIRST = (LinkState.DOWN, LinkState.STALE, LinkState.UNKNOWN, LinkState.UP)


class Sensor(StrEnum):
    """A sensor of a lane; also the ``sensor`` label of the per-sensor metrics and the key in ``/healthz``."""

    RPM = "rpm"
    XRAY = "xray"

    @property
    def title(self) -> str:
        """Its name as operators read it."""
        return "RPM" if self is Sensor.RPM else "X-ray"


XRAY_KINDS = frozenset({Kind.XRAY_SCAN_START, Kind.XRAY_CALIBRATION, Kind.XRAY_LINES, Kind.XRAY_SCAN_END})
XRAY_SOURCES = frozenset({"xray", "dicos"})
"""Sources (a source is its driver's registry name) that read an X-ray scanner; any other is taken for the portal
monitor until it sends X-ray records."""
_NOT_DATA = frozenset({Kind.STATUS, Kind.LINK})


def sensor_of(source: str) -> Sensor:
    """The sensor a source reads, from its name (until its records say otherwise)."""
    return Sensor.XRAY if source in XRAY_SOURCES else Sensor.RPM


@dataclass(slots=True)
class SourceState:
    """What the service last heard from one driver (source) of a lane."""

    sensor: Sensor
    link_up: bool | None = None
    """What its last ``STATUS`` or ``LINK`` record said (None before the first)."""
    heard_mono_ns: int | None = None
    """Service monotonic clock (ns) when its last ``STATUS`` or ``LINK`` record arrived."""
    data_mono_ns: int | None = None
    """Service monotonic clock (ns) when its newest data arrived (see the module's docstring)."""
    run_id: str = ""
    last_line_age_s: float | None = None
    lines: int = 0
    errors: int = 0


@dataclass(frozen=True, slots=True)
class SensorState:
    """One sensor of a lane as the service knows it."""

    sensor: Sensor
    link: LinkState
    problems: list[str]
    """Why its link is not up, in words."""
    age_s: float | None
    """Age (s) of its newest data at the service (None: none yet)."""
    silent_s: float | None
    """Time (s) since its driver last spoke (None: never)."""
    fresh: bool
    """Its newest data is within the service's ``stale_after_s``."""

    @property
    def words(self) -> str:
        """What is wrong with it, for an operator ("link down", "no data for 35 s"); "" when it is ok."""
        if self.link is LinkState.DOWN:
            return "link down"
        if not self.fresh:
            return "no data yet" if self.age_s is None else f"no data for {self.age_s:.0f} s"
        if self.link is not LinkState.UP:
            return "driver never heard" if self.silent_s is None else f"driver silent for {self.silent_s:.0f} s"
        return ""


@dataclass
class DeviceStates:
    """The link state of each source of one lane, and the age of each sensor's data, by the service's clock."""

    stale_after_s: float
    sensors: tuple[Sensor, ...] = (Sensor.RPM,)
    """The lane's sensors (those it has even when nothing is heard from them)."""
    sources: dict[str, SourceState] = field(default_factory=dict)

    def heard(self, rec: Record, now_mono_ns: int) -> None:
        """Take any record of the lane: the age of its sensor's data (and which sensor its source reads)."""
        state = self.sources.get(rec.source)
        if state is None:
            state = self.sources[rec.source] = SourceState(sensor_of(rec.source))
        if rec.kind in XRAY_KINDS:
            state.sensor = Sensor.XRAY
        if state.sensor is Sensor.XRAY or rec.kind not in _NOT_DATA:
            state.data_mono_ns = now_mono_ns

    def observe(self, rec: Record, now_mono_ns: int) -> bool | None:
        """Take a ``LINK`` or ``STATUS`` record; returns the source's previous link (None if first heard)."""
        state = self.sources.get(rec.source)
        if state is None:
            state = self.sources[rec.source] = SourceState(sensor_of(rec.source))
        prev = state.link_up
        values = rec.values
        if isinstance(values, StatusValues):
            state.link_up = values.link_up
            state.last_line_age_s, state.lines, state.errors = values.last_line_age_s, values.lines, values.errors
        else:
            assert isinstance(values, LinkValues)
            state.link_up = values.up
        state.heard_mono_ns, state.run_id = now_mono_ns, rec.run_id
        return prev

    def sensor_states(self, now_mono_ns: int) -> list[SensorState]:
        """Each sensor of the lane (and any other a source of it reads); safe to call from another thread."""
        sources = list(self.sources.items())
        names = list(self.sensors) + sorted({s.sensor for _, s in sources} - set(self.sensors))
        return [self._sensor(each, [(n, s) for n, s in sources if s.sensor is each], now_mono_ns) for each in names]

    def _sensor(self, sensor: Sensor, sources: list[tuple[str, SourceState]], now_mono_ns: int) -> SensorState:
        states: list[LinkState] = []
        reasons: list[str] = []
        silent: list[float] = []
        for source, s in sources:
            if s.heard_mono_ns is None:
                continue
            silent_s = (now_mono_ns - s.heard_mono_ns) / 1e9
            silent.append(silent_s)
            if silent_s > self.stale_after_s:
                states.append(LinkState.STALE)
                reasons.append(f"{source} driver: no status for {silent_s:.1f} s (stale)")
            elif silent_s > UNKNOWN_AFTER_S:
                states.append(LinkState.UNKNOWN)
                reasons.append(f"{source} driver: no status for {silent_s:.1f} s")
            elif not s.link_up:
                states.append(LinkState.DOWN)
                reasons.append(f"{source} driver: device link down")
            else:
                states.append(LinkState.UP)
        if not states:
            states, reasons = [LinkState.UNKNOWN], [f"no status from the {sensor.title} driver yet"]
        data = [s.data_mono_ns for _, s in sources if s.data_mono_ns is not None]
        age_s = (now_mono_ns - max(data)) / 1e9 if data else None
        return SensorState(
            sensor=sensor,
            link=next(state for state in _WORST_FIRST if state in states),
            problems=reasons,
            age_s=age_s,
            silent_s=min(silent) if silent else None,
            fresh=age_s is not None and age_s <= self.stale_after_s,
        )

    def state(self, now_mono_ns: int) -> tuple[LinkState, list[str]]:
        """The lane's link and, unless it is up, why (see :func:`lane_link`); safe to call from another thread."""
        return lane_link(self.sensor_states(now_mono_ns))


def lane_link(sensors: list[SensorState]) -> tuple[LinkState, list[str]]:
    """A lane's link, its worst sensor's, and why it is not up."""
    worst = next(state for state in _WORST_FIRST if any(s.link is state for s in sensors))
    return worst, [reason for s in sensors for reason in s.problems]
