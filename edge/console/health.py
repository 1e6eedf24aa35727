"""Lane health history: what each lane's health was, and when, as the consoles saw it; uptime and faults for reports.

The consoles read the service's and the drivers' /healthz every few seconds (:func:`~lanewatch.edge.console.live.
read_health`); each reading is folded into a table of the journal database, so it survives restarts of the
console and of the service, and every console on the journal adds to the same history:

``lane_health(id, lane, since, until, state, faults)``
    One row per run of one lane state: ``state`` is ``up`` (every sensor linked and fresh, no active fault) or
    ``down``; ``faults`` the JSON list of what was wrong (the service's faults, ``RPM link down``, ``X-ray
    stale``, ``service unreachable``...), sorted. A reading equal to the lane's latest row, taken at most
    :data:`GAP_S` after that row's ``until``, moves ``until`` on; any other starts a new row. Times are UTC
    journal text.

Time no console watched (longer than :data:`GAP_S` between readings) is neither up nor down: a report gives
it as unobserved, beside uptime, the time down and each fault's count and duration.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import msgspec

from lanewatch.edge.console.present import parse_utc
from lanewatch.edge.console.users import now_text
from lanewatch.edge.store import SqliteStore

GAP_S = 10.0
"""Readings further apart than this (s) leave the time between them unobserved (the consoles read every 2 s)."""

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS lane_health (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        lane TEXT NOT NULL,
        since TEXT NOT NULL,
        until TEXT NOT NULL,
        state TEXT NOT NULL,
        faults TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS lane_health_lane_until ON lane_health (lane, until)",
)


class SensorHealth(msgspec.Struct, kw_only=True):
    """One sensor of a lane as the console sees it."""

    name: str
    """RPM or X-ray."""
    connected: bool | None = None
    """Its driver is linked to the device (None: unknown)."""
    fresh: bool | None = None
    """Its data is fresh at the service (None: unknown)."""
    age_s: float | None = None
    """Age (s) of its newest record at the service."""
    ok: bool = False
    words: str = ""
    """What is wrong with it, for an operator ("link down", "no data for 35 s", "driver not answering"); "" when
    it is ok."""
    problem: str = ""
    """Why, in the service's and the driver's words."""


class LaneHealth(msgspec.Struct, kw_only=True):
    """One lane in a reading of :func:`~lanewatch.edge.console.live.read_health`."""

    occupied: bool = False
    faults: list[str] = []
    """The service's active faults of the lane."""
    sensors: list[SensorHealth] = []


class Health(msgspec.Struct, kw_only=True):
    """One reading of the lanes' health: the service's and the drivers' /healthz, as the wall and the history
    keep it."""

    reachable: bool | None = None
    """The service answered (None: not read yet)."""
    ok: bool | None = None
    """The service says it is healthy."""
    error: str | None = None
    """Why the service could not be read."""
    lanes: dict[str, LaneHealth] = {}


def lane_state(health: Health, lane: str) -> tuple[str, list[str]]:
    """(``up`` or ``down``, what is wrong) of ``lane`` in one reading of :func:`read_health`."""
    if not health.reachable:
        return "down", ["service unreachable"]
    seen = health.lanes.get(lane)
    if seen is None:
        return "down", ["not reported by the service"]
    faults = list(seen.faults)
    for sensor in seen.sensors:
        if sensor.connected is False:
            faults.append(f"{sensor.name} link down")
        elif sensor.fresh is False:
            faults.append(f"{sensor.name} stale")
        elif not sensor.ok:
            faults.append(f"{sensor.name} not ok")
    faults = sorted(set(faults))
    return ("down" if faults else "up"), faults


@dataclass
class Uptime:
    """One lane's health over a span (s)."""

    up_s: float = 0.0
    down_s: float = 0.0
    span_s: float = 0.0
    faults: Counter[str] = field(default_factory=Counter)
    """Times each fault began in the span (a fault already active when the span began counts once)."""
    fault_s: Counter[str] = field(default_factory=Counter)
    """Time (s) each fault was active within the span."""

    @property
    def unobserved_s(self) -> float:
        return max(0.0, self.span_s - self.up_s - self.down_s)

    @property
    def uptime(self) -> float | None:
        """Fraction of the observed time the lane was up (None when it was not observed)."""
        observed = self.up_s + self.down_s
        return self.up_s / observed if observed > 0 else None


class HealthHistory(SqliteStore):
    """The ``lane_health`` table of the journal at ``path`` (created there if missing)."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, SCHEMA)

    def record(self, health: Health, lanes: list[str], when: str | None = None) -> None:
        """Fold one reading of every lane's health (``when``: UTC journal text, default now) into the history."""
        when = when or now_text()
        at = parse_utc(when)
        assert at is not None
        with self._tx() as conn:
            for lane in lanes:
                state, faults = lane_state(health, lane)
                text = json.dumps(faults)
                last = conn.execute(
                    "SELECT id, until, state, faults FROM lane_health WHERE lane = ? ORDER BY until DESC LIMIT 1",
                    (lane,),
                ).fetchone()
                until = parse_utc(last[1]) if last else None
                if last and until and (at - until).total_seconds() <= GAP_S and (last[2], last[3]) == (state, text):
                    if when > last[1]:
                        conn.execute("UPDATE lane_health SET until = ? WHERE id = ?", (when, last[0]))
                    continue
                # a new run starts where the last one ended when they touch, so no second goes unaccounted
                since = last[1] if last and until and 0 <= (at - until).total_seconds() <= GAP_S else when
                conn.execute(
                    "INSERT INTO lane_health (lane, since, until, state, faults) VALUES (?, ?, ?, ?, ?)",
                    (lane, since, when, state, text),
                )

    def uptime(self, lane: str, since: str, until: str) -> Uptime:
        """``lane``'s health over [since, until) (UTC journal text)."""
        start, end = parse_utc(since), parse_utc(until)
        assert start is not None and end is not None
        now = datetime.now(start.tzinfo)
        result = Uptime(span_s=max(0.0, (min(end, now) - start).total_seconds()))
        rows = self._read(
            "SELECT since, until, state, faults FROM lane_health WHERE lane = ? AND until > ? AND since < ?"
            " ORDER BY since",
            (lane, since, until),
        )
        previous: set[str] = set()
        for run_since, run_until, state, faults in rows:
            a, b = parse_utc(run_since), parse_utc(run_until)
            if a is None or b is None:
                continue
            seconds = max(0.0, (min(b, end) - max(a, start)).total_seconds())
            if state == "up":
                result.up_s += seconds
            else:
                result.down_s += seconds
            active = set(json.loads(faults))
            for fault in active:
                result.fault_s[fault] += seconds
                if fault not in previous:
                    result.faults[fault] += 1
            previous = active
        return result
