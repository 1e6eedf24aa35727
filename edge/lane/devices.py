"""Level-triggered device state of a lane: what each of its drivers last said about its device link.

A driver publishes a ``STATUS`` record every :data:`~lanewatch.edge.bus.records.STATUS_INTERVAL_S`
(and a ``LINK`` record on each change). The lane's link is what the newest of those says, as long
as they keep coming: a source heard from more than :data:`UNKNOWN_AFTER_S` ago makes the link
``unknown``, and one silent for the service's ``stale_after_s`` makes it ``stale``; a lane that has
heard from no driver at all is ``unknown``. Only ``up`` is healthy.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum

from lanewatch.edge.bus.records import STATUS_INTERVAL_S, LinkValues, Record, StatusValues

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


@dataclass(slots=True)
class SourceState:
    """The newest word from one driver (source) of a lane."""

    link_up: bool
    heard_mono_ns: int
    """Service monotonic clock (ns) when its last ``STATUS`` or ``LINK`` record arrived."""
    run_id: str = ""
    last_line_age_s: float | None = None
    lines: int = 0
    errors: int = 0


@dataclass
class DeviceStates:
    """The link state of each source of one lane, aged by the service's clock."""

    stale_after_s: float
    sources: dict[str, SourceState] = field(default_factory=dict)

    def observe(self, rec: Record, now_mono_ns: int) -> bool | None:
        """Take a ``LINK`` or ``STATUS`` record; returns the source's previous link (None if first heard)."""
        prev = self.sources.get(rec.source)
        values = rec.values
        if isinstance(values, StatusValues):
            state = SourceState(
                link_up=values.link_up,
                heard_mono_ns=now_mono_ns,
                run_id=rec.run_id,
                last_line_age_s=values.last_line_age_s,
                lines=values.lines,
                errors=values.errors,
            )
        else:
            assert isinstance(values, LinkValues)
            state = (
                SourceState(link_up=values.up, heard_mono_ns=now_mono_ns, run_id=rec.run_id)
                if prev is None
                else replace(prev, link_up=values.up, heard_mono_ns=now_mono_ns, run_id=rec.run_id)
            )
        self.sources[rec.source] = state
        return None if prev is None else prev.link_up

    def state(self, now_mono_ns: int) -> tuple[LinkState, list[str]]:
        """The lane's link and, unless it is up, why; safe to call from another thread than the one observing."""
        sources = list(self.sources.items())
        if not sources:
            return LinkState.UNKNOWN, ["no status from any driver of the lane yet"]
        states: list[LinkState] = []
        reasons: list[str] = []
        for source, s in sources:
            silent_s = (now_mono_ns - s.heard_mono_ns) / 1e9
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
        return next(state for state in _WORST_FIRST if state in states), reasons
